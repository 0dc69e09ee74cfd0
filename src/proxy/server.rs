//! The data path: accept, route, apply faults and mirrors, forward with retries under
//! the route timeout and the cluster's connection pool, record metrics and access logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::RngExt;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::balance::{self, Cluster, Endpoint, InFlight, IssuedCookie, PickOptions};
use crate::proxy::config::Snapshot;
use crate::proxy::downstream::{self, Activity, BodyLimits, ConnectionSlot, Timeout, Watched};
use crate::proxy::metrics::{
    EjectionLabels, HandleKey, OverflowLabels, ProtocolErrorLabels, ProxyMetrics, RequestHandles,
    RequestLabels, UNKNOWN,
};
use crate::proxy::resilience::{Overflow, PoolGuard, RetryPolicy, TryOutcome};
use crate::proxy::routes::{
    authority_port, ClusterKey, LocalReply, Mirror, RequestView, Route, RouteDestination, Selection,
};
use crate::proxy::Proxy;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Headers that describe one hop's connection and must not be forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// How long a mirrored copy may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection's graceful close may take before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// === Accepting ===

/// Serves the proxy port (HTTP/1.1 and h2c) until the task is dropped.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    serve_until(proxy, listener, shutdown).await;
}

/// Serves the proxy port until `shutdown` turns true; then stops accepting (the
/// listener closes) and asks each open connection to finish politely: an HTTP/1.1
/// connection closes after the response in flight (`connection: close`), an HTTP/2 one
/// gets a GOAWAY and ends after its open streams. Returns once accepting has stopped;
/// `Limits::open` tells when the last connection is gone.
pub async fn serve_until(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let http = Arc::new(downstream::http_builder(&proxy.options));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = crate::shutdown::flagged(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap the connection is closed unread: cheaper than any answer, and an
        // HTTP/1 answer would be garbage to an h2c client.
        let Some(slot) = proxy.downstream.admit() else {
            proxy.metrics.downstream_cx_overflow.inc();
            tracing::debug!(%peer, "connection limit reached, connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            proxy.clone(),
            http.clone(),
            stream,
            peer,
            local_port,
            slot,
            shutdown.clone(),
        ));
    }
}

/// One downstream connection, closed when a request's headers or the next request are
/// overdue (`downstream::Activity`).
async fn serve_connection(
    proxy: Arc<Proxy>,
    http: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    local_port: u16,
    _slot: ConnectionSlot,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let activity = Activity::new(
        proxy.options.request_headers_timeout,
        proxy.options.idle_timeout,
    );
    let service = {
        let (proxy, activity) = (proxy.clone(), activity.clone());
        hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            let request = activity.request_started();
            async move {
                let response = proxy.handle(req, local_port, peer).await;
                Ok::<_, std::convert::Infallible>(response.map(|body| request.track(body)))
            }
        })
    };
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let mut connection = std::pin::pin!(http.serve_connection(io, service));
    let check = tokio::time::sleep(Duration::ZERO);
    let mut check = std::pin::pin!(check);
    let timeout = loop {
        let next = activity.next_check(tokio::time::Instant::now());
        if let Some(at) = next {
            check.as_mut().reset(at);
        }
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    proxy.count_protocol_error(&*error);
                    tracing::debug!(%error, %peer, "downstream connection ended with an error");
                }
                return;
            }
            () = activity.sooner() => {}
            () = crate::shutdown::flagged(&mut shutdown) => {
                connection.as_mut().graceful_shutdown();
                if let Err(error) = connection.as_mut().await {
                    tracing::debug!(%error, %peer, "downstream connection ended with an error while draining");
                }
                return;
            }
            () = &mut check, if next.is_some() => {
                if let Some(timeout) = activity.expired(tokio::time::Instant::now()) {
                    break timeout;
                }
            }
        }
    };
    proxy.metrics.count_timeout(timeout.label());
    tracing::debug!(%peer, timeout = timeout.label(), "downstream connection timed out");
    if timeout == Timeout::Idle {
        // HTTP/2 gets a GOAWAY (an idle HTTP/1 connection just closes); a request racing
        // it may still finish.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
    }
}

// === Per-request record ===

/// What the access log and metrics say about one request.
struct Record {
    method: Method,
    path: PathAndQuery,
    protocol: &'static str,
    authority: String,
    service: Option<String>,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<Arc<Endpoint>>,
    flags: Vec<&'static str>,
    retries: u32,
    request_bytes: u64,
}

impl Record {
    fn flag(&mut self, flag: &'static str) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    fn flags(&self) -> String {
        if self.flags.is_empty() {
            "-".into()
        } else {
            self.flags.join(",")
        }
    }
}

fn local_reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

/// A route's own answer: a redirect's `Location` is worked out from the request.
fn answer(
    reply: &LocalReply,
    view: &RequestView<'_>,
    route: &Route,
    block: usize,
) -> Response<ProxyBody> {
    match reply {
        LocalReply::Status(status) => local_reply(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "no backend",
        ),
        LocalReply::Redirect(redirect) => {
            let matched = route.matches.get(block).and_then(|m| m.uri.as_ref());
            let location = redirect.location(view, matched);
            let mut response = local_reply(
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND),
                "redirect",
            );
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(http::header::LOCATION, value);
            }
            response
        }
    }
}

fn full_body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A router is a hop the application did not have before: it passes its caller's address
/// on, as Envoy does with `use_remote_address`, so the application still sees who called.
fn append_forwarded_for(headers: &mut HeaderMap, peer: std::net::IpAddr) {
    let peer = peer.to_canonical().to_string();
    let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {peer}"),
        _ => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Envoy's shadow host: `-shadow` goes after the host, before any port.
pub fn shadow_host(authority: &str) -> String {
    let (host, port) = if authority.starts_with('[') {
        match authority.rsplit_once("]:") {
            Some((h, p)) => (&authority[..=h.len()], Some(p)),
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (authority, None),
        }
    };
    match port {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    }
}

// === Response body that releases pool slots when done ===

/// The upstream body, holding the connection-pool slot and the in-flight mark until the
/// client has read it (so limits and least-request see the whole exchange).
struct GuardedBody {
    inner: Incoming,
    _pool: PoolGuard,
    _in_flight: InFlight,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way to the client; records `istio_response_bytes` when it
/// is done (or dropped, e.g. when the client goes away).
struct CountingBody {
    inner: ProxyBody,
    bytes: u64,
    sizes: prometheus_client::metrics::histogram::Histogram,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.sizes.observe(self.bytes as f64);
    }
}

/// What the retry loop needs to build each try.
struct Upstream<'a> {
    method: &'a Method,
    path_and_query: &'a PathAndQuery,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    /// Session-affinity key from the cluster's consistentHash, if the request has one.
    affinity: Option<u64>,
}

// === impl Proxy (data path) ===

impl Proxy {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        local_port: u16,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let authority = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(String::from)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let mut record = Record {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            protocol,
            authority,
            service: None,
            cluster: None,
            endpoint: None,
            flags: Vec::new(),
            retries: 0,
            request_bytes: 0,
        };
        let http1 = req.version() != http::Version::HTTP_2;
        let mut response = self.route_request(req, local_port, peer, &mut record).await;
        // While draining, HTTP/1.1 clients are told to reconnect (by then to another
        // replica), each after an answered request, so no idle connection is cut under
        // a request the client is sending.
        if http1 && self.is_draining() {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let handles = self.finish(&record, &response, started, peer);
        handles.request_bytes.observe(record.request_bytes as f64);
        let sizes = handles.response_bytes;
        response.map(|inner| {
            CountingBody {
                inner,
                bytes: 0,
                sizes,
            }
            .boxed()
        })
    }

    async fn route_request(
        &self,
        req: Request<Incoming>,
        local_port: u16,
        peer: SocketAddr,
        record: &mut Record,
    ) -> Response<ProxyBody> {
        let snapshot = self.snapshot();
        let (mut parts, body) = req.into_parts();
        let view = RequestView {
            authority: &record.authority,
            path: parts.uri.path(),
            query: parts.uri.query(),
            method: parts.method.as_str(),
            scheme: "http",
            port: authority_port(&record.authority).or(Some(local_port)),
            headers: &parts.headers,
        };
        let weight_draw = rand::rng().random::<u64>();
        let (route, block, destination): (_, _, Option<&RouteDestination>) = match snapshot
            .table
            .select(&view, snapshot.source(&self.settings, peer.ip()))
        {
            Selection::Route { route, block, .. } => {
                if let Some(reply) = &route.reply {
                    return answer(reply, &view, route, block);
                }
                (Some(route), block, route.destinations.pick(weight_draw))
            }
            Selection::Service(service) => {
                record.service = Some(service.to_string());
                (None, usize::MAX, None)
            }
            Selection::NoRoute => {
                record.flag("NR");
                return local_reply(StatusCode::NOT_FOUND, "no route");
            }
        };
        let service_key;
        let cluster_key: &ClusterKey = match (destination, &record.service) {
            (Some(d), _) => &d.cluster,
            (None, Some(service)) => {
                service_key = ClusterKey {
                    service: service.clone(),
                    subset: None,
                };
                &service_key
            }
            (None, None) => return local_reply(StatusCode::NOT_FOUND, "no route"),
        };
        // Until a cluster is found, the metrics name the service from here; afterwards
        // `finish` takes it from the cluster, without a copy on the common path.
        let unserved = |record: &mut Record| record.service = Some(cluster_key.service.clone());

        let limits = BodyLimits {
            max_bytes: self.options.max_body_bytes,
            timeout: self.options.request_body_timeout,
            budget: &self.downstream.body_budget,
        };
        let body = match downstream::read_body(body, limits).await {
            Ok(bytes) => {
                record.request_bytes = bytes.len() as u64;
                bytes
            }
            Err(error) => {
                unserved(record);
                return self.body_error_reply(&error, record);
            }
        };

        if let Some(fault) = route.and_then(|r| r.fault.as_ref()) {
            let (delay_draw, abort_draw) = {
                let mut rng = rand::rng();
                (rng.random::<f64>() * 100.0, rng.random::<f64>() * 100.0)
            };
            if let Some((delay, percent)) = fault.delay {
                if delay_draw < percent {
                    record.flag("DI");
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((status, percent)) = fault.abort {
                if abort_draw < percent {
                    record.flag("FI");
                    unserved(record);
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    return local_reply(status, "fault filter abort");
                }
            }
        }

        let Some(cluster) = snapshot.cluster(cluster_key).cloned() else {
            record.flag("NC");
            unserved(record);
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no cluster");
        };
        record.cluster = Some(cluster.clone());

        let path_and_query = match route.and_then(|r| r.rewritten_path(block, parts.uri.path())) {
            Some(path) => {
                let joined = match parts.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                match PathAndQuery::try_from(joined) {
                    Ok(pq) => pq,
                    Err(_) => {
                        return local_reply(StatusCode::BAD_REQUEST, "invalid rewritten path")
                    }
                }
            }
            None => record.path.clone(),
        };
        let mut set_cookie = None;
        let affinity = match cluster
            .hash_policy
            .as_ref()
            .and_then(|p| p.key(&parts.headers, parts.uri.query(), peer.ip()))
        {
            Some(key) => Some(key),
            None => cluster.issued_cookie.as_ref().map(|cookie| {
                let value = IssuedCookie::value(rand::rng().random::<u64>());
                set_cookie = HeaderValue::from_str(&cookie.header(&value)).ok();
                balance::hash_key(&value)
            }),
        };
        // The request's own header map goes upstream: nothing else reads it from here on.
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        if self.settings.router {
            append_forwarded_for(&mut headers, peer.ip());
        }
        if let Some(route) = route {
            route.request_headers.apply(&mut headers);
        }
        if let Some(d) = destination {
            d.request_headers.apply(&mut headers);
        }
        let host = route
            .and_then(|r| r.rewrite.as_ref())
            .and_then(|r| r.authority.clone())
            .unwrap_or_else(|| record.authority.clone());
        if let Ok(value) = HeaderValue::from_str(&host) {
            headers.insert(HOST, value);
        }

        if let Some(route) = route {
            for mirror in &route.mirrors {
                let draw = rand::rng().random::<f64>() * 100.0;
                if draw < mirror.percent {
                    self.spawn_mirror(
                        &snapshot,
                        mirror,
                        &parts.method,
                        &path_and_query,
                        &headers,
                        &body,
                        &host,
                    );
                }
            }
        }

        let off;
        let policy = match route
            .and_then(|r| r.retries.as_ref())
            .or(snapshot.default_retry.as_ref())
        {
            Some(policy) => policy,
            None => {
                off = RetryPolicy::off();
                &off
            }
        };
        let upstream = Upstream {
            method: &parts.method,
            path_and_query: &path_and_query,
            headers: &headers,
            body: &body,
            affinity,
        };
        let forward = self.forward_with_retries(&cluster, policy, &upstream, record);
        let mut response = match route.and_then(|r| r.timeout) {
            Some(timeout) => match tokio::time::timeout(timeout, forward).await {
                Ok(response) => response,
                Err(_) => {
                    record.flag("UT");
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
            },
            None => forward.await,
        };
        strip_hop_by_hop(response.headers_mut());
        if let Some(route) = route {
            route.response_headers.apply(response.headers_mut());
        }
        if let Some(d) = destination {
            d.response_headers.apply(response.headers_mut());
        }
        if let Some(cookie) = set_cookie {
            response
                .headers_mut()
                .append(http::header::SET_COOKIE, cookie);
        }
        response
    }

    async fn forward_with_retries(
        &self,
        cluster: &Arc<Cluster>,
        policy: &RetryPolicy,
        upstream: &Upstream<'_>,
        record: &mut Record,
    ) -> Response<ProxyBody> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut _retry_slot = None;
        let mut try_number = 0u32;
        loop {
            try_number += 1;
            let draws = {
                let mut rng = rand::rng();
                (rng.random::<u64>(), rng.random::<u64>())
            };
            let options = PickOptions {
                affinity: upstream.affinity,
                remote_localities: policy.remote_localities,
            };
            let Some(endpoint) =
                cluster.pick_with(Instant::now(), &self.settings.zone, &tried, draws, options)
            else {
                record.flag("UH");
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            };
            record.endpoint = Some(endpoint.clone());
            let pool_slot = match cluster.pool.admit().await {
                Ok(slot) => slot,
                Err(kind) => {
                    self.count_overflow(&cluster.key.to_string(), kind);
                    record.flag("UO");
                    let mut response = local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: overflow");
                    response
                        .headers_mut()
                        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                    return response;
                }
            };
            tried.push(endpoint.info.address);
            let in_flight = InFlight::new(endpoint.clone());

            let (outcome, response) = self.try_once(cluster, &endpoint, policy, upstream).await;
            let now = Instant::now();
            if let Some(ejected_for) = cluster.record_outcome(&endpoint, outcome, now) {
                self.metrics
                    .ejections
                    .get_or_create(&EjectionLabels {
                        cluster: cluster.key.to_string(),
                        endpoint: endpoint.info.address.to_string(),
                    })
                    .inc();
                tracing::warn!(cluster = %cluster.key, endpoint = %endpoint.info.address, ?ejected_for, "outlier detection ejected an endpoint");
            }

            let mut retry = policy.allows_retry(try_number, outcome);
            if retry {
                match cluster.pool.admit_retry() {
                    Ok(slot) => _retry_slot = Some(slot),
                    Err(kind) => {
                        self.count_overflow(&cluster.key.to_string(), kind);
                        retry = false;
                    }
                }
            }
            if !retry {
                if try_number > 1 && policy.conditions.should_retry(outcome) {
                    record.flag("URX");
                }
                return match (response, outcome) {
                    (Some(response), _) => response.map(|inner| {
                        GuardedBody {
                            inner,
                            _pool: pool_slot,
                            _in_flight: in_flight,
                        }
                        .boxed()
                    }),
                    (None, TryOutcome::ConnectFailure) => {
                        record.flag("UF");
                        local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
                    }
                    (None, TryOutcome::Timeout) => {
                        record.flag("UT");
                        local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                    }
                    (None, _) => {
                        record.flag("UC");
                        local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
                    }
                };
            }
            record.retries += 1;
            ProxyMetrics::count_cluster(&self.metrics.retries, &cluster.key.to_string());
            drop((response, pool_slot, in_flight));
            let delay = policy
                .backoff
                .delay(try_number, rand::rng().random::<f64>());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// One try against one endpoint, under the per-try timeout.
    async fn try_once(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        policy: &RetryPolicy,
        upstream: &Upstream<'_>,
    ) -> (TryOutcome, Option<Response<Incoming>>) {
        let uri = upstream_uri(endpoint, upstream.path_and_query);
        let mut builder = Request::builder().method(upstream.method.clone()).uri(uri);
        if let Some(headers) = builder.headers_mut() {
            *headers = upstream.headers.clone();
        }
        let Ok(request) = builder.body(Full::new(upstream.body.clone())) else {
            return (TryOutcome::Reset, None);
        };
        let client = if endpoint.info.http2 {
            &self.client_h2c
        } else if cluster.pool.limits().max_requests_per_connection == Some(1) {
            &self.client_without_keepalive
        } else {
            &self.client
        };
        let started = Instant::now();
        let send = client.request(request);
        let result = match policy.per_try_timeout {
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(result) => result,
                Err(_) => return (TryOutcome::Timeout, None),
            },
            None => send.await,
        };
        match result {
            Ok(response) => {
                endpoint.observe_latency(started.elapsed(), Instant::now());
                (
                    TryOutcome::Response(response.status().as_u16()),
                    Some(response),
                )
            }
            Err(error) if error.is_connect() => {
                tracing::debug!(%error, endpoint = %endpoint.info.address, "connect failure");
                (TryOutcome::ConnectFailure, None)
            }
            Err(error) => {
                tracing::debug!(%error, endpoint = %endpoint.info.address, "upstream reset");
                (TryOutcome::Reset, None)
            }
        }
    }

    /// The local answer to a request whose body could not be read whole.
    fn body_error_reply(
        &self,
        error: &downstream::Error,
        record: &mut Record,
    ) -> Response<ProxyBody> {
        match error {
            downstream::Error::BodyTooLarge { .. } => {
                local_reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            downstream::Error::BudgetExhausted { .. } => {
                self.metrics.downstream_rq_overload.inc();
                record.flag("OM");
                let mut response = local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded: request body buffers are full",
                );
                response
                    .headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                response
            }
            downstream::Error::BodyTimeout(_) => {
                self.metrics.count_timeout(Timeout::Body.label());
                // The rest of the body may still be on its way: this connection is done.
                let mut response = local_reply(StatusCode::REQUEST_TIMEOUT, "request timeout");
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            downstream::Error::BodyRead(_) => {
                record.flag("DC");
                local_reply(StatusCode::BAD_REQUEST, "downstream disconnected")
            }
        }
    }

    /// Counts a connection that hyper ended over a request it rejected itself.
    fn count_protocol_error(&self, error: &(dyn std::error::Error + 'static)) {
        let Some(error) = error.downcast_ref::<hyper::Error>() else {
            return;
        };
        let reason = if error.is_parse_too_large() {
            "headers_too_large"
        } else if error.is_parse() {
            "malformed"
        } else {
            return;
        };
        self.metrics
            .downstream_protocol_errors
            .get_or_create(&ProtocolErrorLabels {
                reason: reason.into(),
            })
            .inc();
    }

    fn count_overflow(&self, cluster: &str, kind: Overflow) {
        self.metrics
            .overflows
            .get_or_create(&OverflowLabels {
                cluster: cluster.to_string(),
                kind: kind.label().to_string(),
            })
            .inc();
    }

    /// Fire and forget: the copy's response and failure are invisible to the client.
    #[allow(clippy::too_many_arguments)]
    fn spawn_mirror(
        &self,
        snapshot: &Snapshot,
        mirror: &Mirror,
        method: &Method,
        path_and_query: &PathAndQuery,
        headers: &HeaderMap,
        body: &Bytes,
        host: &str,
    ) {
        let Some(cluster) = snapshot.cluster(&mirror.cluster).cloned() else {
            return;
        };
        let draws = {
            let mut rng = rand::rng();
            (rng.random::<u64>(), rng.random::<u64>())
        };
        let Some(endpoint) = cluster.pick(Instant::now(), &self.settings.zone, &[], draws) else {
            return;
        };
        let mut headers = headers.clone();
        let copy_host = if self.options.shadow_host_suffix {
            shadow_host(host)
        } else {
            host.to_string()
        };
        if let Ok(value) = HeaderValue::from_str(&copy_host) {
            headers.insert(HOST, value);
        }
        let uri = upstream_uri(&endpoint, path_and_query);
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let Ok(request) = builder.body(Full::new(body.clone())) else {
            return;
        };
        ProxyMetrics::count_cluster(&self.metrics.mirrored, &cluster.key.to_string());
        let client = if endpoint.info.http2 {
            self.client_h2c.clone()
        } else {
            self.client.clone()
        };
        tokio::spawn(async move {
            let send = async {
                let response = client.request(request).await.ok()?;
                // Drain so the connection can be reused.
                response.into_body().collect().await.ok()
            };
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, send).await;
        });
    }

    /// Records the request's count and duration and writes the access log line; returns
    /// the metric handles so the body sizes land in the same series.
    fn finish(
        &self,
        record: &Record,
        response: &Response<ProxyBody>,
        started: Instant,
        peer: SocketAddr,
    ) -> RequestHandles {
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        let grpc = record.protocol == "HTTP/2" && is_grpc(response);
        // With an endpoint, every label but code, protocol and flags is fixed by the
        // endpoint (its service, its info) and this proxy, so the handles are cached on it.
        let handles = match &record.endpoint {
            Some(endpoint) => match endpoint.metric_handles.get(status, grpc, &record.flags) {
                Some(handles) => handles,
                None => {
                    let handles = self.metrics.handles(&self.labels(record, status, grpc));
                    endpoint.metric_handles.insert(
                        HandleKey {
                            response_code: status,
                            grpc,
                            flags: record.flags.clone(),
                        },
                        handles.clone(),
                    );
                    handles
                }
            },
            None => self.metrics.handles(&self.labels(record, status, grpc)),
        };
        handles.requests.inc();
        handles.duration_ms.observe(elapsed.as_secs_f64() * 1000.0);
        if self.options.access_log {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let line = access_log_line(record, &now, status, elapsed, peer);
            tracing::info!(target: "sluice::access", "{line}");
        }
        handles
    }

    fn labels(&self, record: &Record, status: u16, grpc: bool) -> RequestLabels {
        let service = match (&record.cluster, &record.service) {
            (Some(cluster), _) => cluster.key.service.clone(),
            (None, Some(service)) => service.clone(),
            (None, None) => {
                let host = crate::proxy::routes::host_without_port(&record.authority);
                if host.is_empty() {
                    UNKNOWN.to_string()
                } else {
                    host
                }
            }
        };
        let (service_name, service_namespace) = split_service(&service);
        let endpoint = record.endpoint.as_ref().map(|e| &e.info);
        RequestLabels {
            reporter: "source".into(),
            source_workload: self.settings_workload().to_string(),
            source_workload_namespace: self.settings.identity.namespace.clone(),
            destination_workload: endpoint
                .and_then(|e| e.workload.clone())
                .unwrap_or_else(|| UNKNOWN.into()),
            destination_workload_namespace: endpoint
                .map_or_else(|| UNKNOWN.into(), |e| e.namespace.clone()),
            destination_service: service.clone(),
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            destination_version: endpoint
                .and_then(|e| e.labels.get("version").cloned())
                .unwrap_or_else(|| UNKNOWN.into()),
            request_protocol: if grpc { "grpc" } else { "http" }.into(),
            response_code: status.to_string(),
            response_flags: record.flags(),
            connection_security_policy: UNKNOWN.into(),
        }
    }

    fn settings_workload(&self) -> &str {
        self.options.workload.as_deref().unwrap_or(UNKNOWN)
    }
}

/// One access log line, Envoy-like: time, request line, status, response flags, retries,
/// duration, Host, peer, upstream endpoint and cluster.
fn access_log_line(
    record: &Record,
    now: &str,
    status: u16,
    elapsed: Duration,
    peer: SocketAddr,
) -> String {
    let upstream = record
        .endpoint
        .as_ref()
        .map_or_else(|| "-".to_string(), |e| e.info.address.to_string());
    let cluster = record
        .cluster
        .as_ref()
        .map_or_else(|| "-".to_string(), |c| c.key.to_string());
    format!(
        "[{now}] \"{} {} {}\" {status} {} retries={} {}ms \"{}\" peer={peer} upstream={upstream} cluster={cluster}",
        record.method,
        record.path,
        record.protocol,
        record.flags(),
        record.retries,
        elapsed.as_millis(),
        record.authority,
    )
}

/// `http://ip:port/path?query` without formatting and re-parsing a string.
fn upstream_uri(endpoint: &Endpoint, path_and_query: &PathAndQuery) -> Uri {
    let built = endpoint.uri_authority.as_ref().and_then(|authority| {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path_and_query.clone())
            .build()
            .ok()
    });
    match built {
        Some(uri) => uri,
        None => format!("http://{}{}", endpoint.info.address, path_and_query)
            .parse()
            .unwrap_or_default(),
    }
}

fn is_grpc(response: &Response<ProxyBody>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `catalog.istioinaction.svc.cluster.local` -> (`catalog`, `istioinaction`).
fn split_service(service: &str) -> (String, String) {
    match service.strip_suffix(".svc.cluster.local") {
        Some(rest) => match rest.split_once('.') {
            Some((name, ns)) => (name.to_string(), ns.to_string()),
            None => (rest.to_string(), UNKNOWN.to_string()),
        },
        None => (service.to_string(), UNKNOWN.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_line_names_flags() {
        let mut record = Record {
            method: Method::GET,
            path: PathAndQuery::from_static("/items"),
            protocol: "HTTP/1.1",
            authority: "catalog".into(),
            service: None,
            cluster: None,
            endpoint: None,
            flags: Vec::new(),
            retries: 2,
            request_bytes: 0,
        };
        record.flag("UO");
        record.flag("URX");
        record.flag("UO");
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        assert_eq!(
            access_log_line(&record, "T", 503, Duration::from_millis(7), peer),
            "[T] \"GET /items HTTP/1.1\" 503 UO,URX retries=2 7ms \"catalog\" peer=127.0.0.1:5000 upstream=- cluster=-"
        );
    }

    #[test]
    fn the_callers_address_is_appended_to_x_forwarded_for() {
        let peer: std::net::IpAddr = "10.244.0.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.244.0.7".parse().unwrap();
        for (before, ip, after, proto) in [
            (None, peer, "10.244.0.7", "http"),
            (Some("203.0.113.9"), peer, "203.0.113.9, 10.244.0.7", "http"),
            (Some(" "), mapped, "10.244.0.7", "http"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(v) = before {
                headers.insert(X_FORWARDED_FOR, HeaderValue::from_static(v));
            }
            append_forwarded_for(&mut headers, ip);
            assert_eq!(headers[X_FORWARDED_FOR], after, "from {before:?}");
            assert_eq!(headers[X_FORWARDED_PROTO], proto);
        }
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        append_forwarded_for(&mut headers, peer);
        assert_eq!(
            headers[X_FORWARDED_PROTO], "https",
            "an existing proto is kept"
        );
    }

    #[test]
    fn shadow_suffix_goes_before_the_port() {
        let cases = [
            ("catalog", "catalog-shadow"),
            ("catalog:80", "catalog-shadow:80"),
            (
                "catalog.istioinaction.svc.cluster.local",
                "catalog.istioinaction.svc.cluster.local-shadow",
            ),
            ("[::1]:8080", "[::1]-shadow:8080"),
        ];
        for (host, want) in cases {
            assert_eq!(shadow_host(host), want, "{host}");
        }
    }

    #[test]
    fn service_names_split_into_name_and_namespace() {
        assert_eq!(
            split_service("catalog.istioinaction.svc.cluster.local"),
            ("catalog".to_string(), "istioinaction".to_string())
        );
        assert_eq!(
            split_service("example.com"),
            ("example.com".to_string(), UNKNOWN.to_string())
        );
    }
}
