//! sluice-demo: a small configurable HTTP service for examples, tests and benchmarks.
//!
//! It plays the material's `simple-backend` (message, latency percentiles, error rate and
//! code), `catalog` (`/items`; v2 adds `imageUrl`) and `webapp` (calls upstreams and embeds
//! their answers). Every answer is JSON naming the service, version, pod and the Host
//! header received, so a split or a mirror can be counted from the outside.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::RngExt;
use serde_json::json;
use tokio::net::TcpListener;

use crate::duration::parse_go_or_seconds;

/// How many received requests `/_demo/received` remembers.
const RECEIVED_LOG_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

// === Settings ===

/// How a failing answer fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Answer with the configured status code.
    HttpError,
    /// Drop the connection without an answer (the caller sees a reset).
    Reset,
}

/// One step of an `ERROR_CYCLE`: answer normally or fail with this status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CycleStep {
    Ok,
    Fail(StatusCode),
}

/// Latency by percentile: a request draws a percentile uniformly and gets the latency of
/// the band it falls in, spread by `variance` (a fraction, 0.1 = +-10 %).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyProfile {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub variance: f64,
}

impl LatencyProfile {
    pub fn is_zero(&self) -> bool {
        self.p50.is_zero() && self.p90.is_zero() && self.p99.is_zero()
    }

    /// The latency for a draw `u` in [0,1) and a spread draw `s` in [-1,1].
    pub fn sample(&self, u: f64, s: f64) -> Duration {
        let base = if u < 0.5 {
            self.p50
        } else if u < 0.9 {
            self.p90.max(self.p50)
        } else {
            self.p99.max(self.p90).max(self.p50)
        };
        let factor = (1.0 + self.variance * s.clamp(-1.0, 1.0)).max(0.0);
        base.mul_f64(factor)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub name: String,
    pub message: String,
    pub version: String,
    pub pod: String,
    pub latency: LatencyProfile,
    /// Probability (0..=1) that an answer fails.
    pub error_rate: f64,
    pub error_code: StatusCode,
    pub error_kind: ErrorKind,
    /// Deterministic failures, cycled per request (takes precedence over `error_rate`).
    pub error_cycle: Vec<CycleStep>,
    pub upstream_uris: Vec<String>,
    pub upstream_timeout: Duration,
    /// Send upstream calls to this address (a sidecar sluice-proxy), keeping the URI's
    /// host as the Host header, the way an intercepted call reaches Envoy.
    pub upstream_proxy: Option<SocketAddr>,
    /// Serve `/items` like the material's catalog service.
    pub catalog: bool,
    /// Whether `/items` carries `imageUrl` (the catalog's v2 feature); unset = when the
    /// major version is 2 or more.
    pub catalog_image_url: Option<bool>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            name: "demo".into(),
            message: "Hello from sluice-demo".into(),
            version: "v1".into(),
            pod: "unknown".into(),
            latency: LatencyProfile::default(),
            error_rate: 0.0,
            error_code: StatusCode::INTERNAL_SERVER_ERROR,
            error_kind: ErrorKind::HttpError,
            error_cycle: Vec::new(),
            upstream_uris: Vec::new(),
            upstream_timeout: Duration::from_secs(5),
            upstream_proxy: None,
            catalog: false,
            catalog_image_url: None,
        }
    }
}

impl DemoConfig {
    /// Reads the settings from a variable lookup (the environment in the binary).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut cfg = DemoConfig::default();
        if let Some(v) = get("LISTEN") {
            cfg.listen = parse_setting("LISTEN", &v, |s| s.parse::<SocketAddr>())?;
        }
        if let Some(v) = get("NAME") {
            cfg.name = v;
        }
        if let Some(v) = get("MESSAGE") {
            cfg.message = v;
        }
        cfg.version = get("VERSION")
            .or_else(|| get("IMAGE_TAG"))
            .unwrap_or_else(|| "v1".into());
        cfg.pod = get("POD_NAME")
            .or_else(|| get("HOSTNAME"))
            .unwrap_or_else(|| "unknown".into());
        let duration = |name: &'static str| -> Result<Option<Duration>, Error> {
            get(name)
                .map(|v| parse_setting(name, &v, parse_go_or_seconds))
                .transpose()
        };
        let p50 = duration("TIMING_50_PERCENTILE")?.or(duration("LATENCY_P50")?);
        let p90 = duration("TIMING_90_PERCENTILE")?.or(duration("LATENCY_P90")?);
        let p99 = duration("TIMING_99_PERCENTILE")?.or(duration("LATENCY_P99")?);
        let p50 = p50.unwrap_or_default();
        let p90 = p90.unwrap_or(p50);
        cfg.latency = LatencyProfile {
            p50,
            p90,
            p99: p99.unwrap_or(p90),
            variance: 0.0,
        };
        if let Some(v) = get("TIMING_VARIANCE").or_else(|| get("LATENCY_VARIANCE")) {
            // Percent, like the material's simple-backend (TIMING_VARIANCE=10 -> +-10 %).
            let pct = parse_setting("TIMING_VARIANCE", &v, |s| s.parse::<f64>())?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(invalid("TIMING_VARIANCE", &v, "must be 0..100 (percent)"));
            }
            cfg.latency.variance = pct / 100.0;
        }
        if let Some(v) = get("ERROR_RATE") {
            let rate = parse_setting("ERROR_RATE", &v, |s| s.parse::<f64>())?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid("ERROR_RATE", &v, "must be between 0 and 1"));
            }
            cfg.error_rate = rate;
        }
        if let Some(v) = get("ERROR_CODE") {
            cfg.error_code = parse_status("ERROR_CODE", &v)?;
        }
        if let Some(v) = get("ERROR_TYPE") {
            cfg.error_kind = match v.as_str() {
                "http_error" | "http" => ErrorKind::HttpError,
                "reset" => ErrorKind::Reset,
                _ => return Err(invalid("ERROR_TYPE", &v, "expected http_error or reset")),
            };
        }
        if let Some(v) = get("ERROR_CYCLE") {
            cfg.error_cycle = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|step| match step {
                    "ok" => Ok(CycleStep::Ok),
                    code => parse_status("ERROR_CYCLE", code).map(CycleStep::Fail),
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("UPSTREAM_URIS") {
            cfg.upstream_uris = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            for uri in &cfg.upstream_uris {
                parse_setting("UPSTREAM_URIS", uri, |s| s.parse::<http::Uri>())?;
            }
        }
        if let Some(d) = duration("UPSTREAM_TIMEOUT")? {
            cfg.upstream_timeout = d;
        }
        if let Some(v) = get("UPSTREAM_PROXY") {
            cfg.upstream_proxy = Some(parse_setting("UPSTREAM_PROXY", &v, |s| {
                s.parse::<SocketAddr>()
            })?);
        }
        if let Some(v) = get("CATALOG") {
            cfg.catalog = parse_bool("CATALOG", &v)?;
        }
        if let Some(v) = get("CATALOG_IMAGE_URL") {
            cfg.catalog_image_url = Some(parse_bool("CATALOG_IMAGE_URL", &v)?);
        }
        Ok(cfg)
    }
}

impl DemoConfig {
    pub fn serves_image_url(&self) -> bool {
        self.catalog_image_url
            .unwrap_or_else(|| major_version(&self.version).is_some_and(|major| major >= 2))
    }
}

fn invalid(name: &'static str, value: &str, reason: impl ToString) -> Error {
    Error::InvalidSetting {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_setting<T, E: std::fmt::Display>(
    name: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, Error> {
    parse(value.trim()).map_err(|e| invalid(name, value, e))
}

fn parse_status(name: &'static str, value: &str) -> Result<StatusCode, Error> {
    parse_setting(name, value, |s| {
        s.parse::<u16>()
            .map_err(|e| e.to_string())
            .and_then(|c| StatusCode::from_u16(c).map_err(|e| e.to_string()))
    })
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, Error> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(invalid(name, value, "expected true or false")),
    }
}

/// `v2`, `2.1.0`, `v2-beta` -> 2.
fn major_version(version: &str) -> Option<u32> {
    let digits: String = version
        .trim_start_matches(['v', 'V'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// === Server ===

/// A request as the demo saw it; `/_demo/received` lists the latest ones so tests and
/// users can check what arrived (for example a mirrored copy's Host).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    pub host: String,
}

struct DemoState {
    config: DemoConfig,
    /// Shutting down: HTTP/1.1 answers say `connection: close`.
    closing: std::sync::atomic::AtomicBool,
    /// Set once the port must close and the connections finish.
    stop: tokio::sync::watch::Sender<bool>,
    served: AtomicU64,
    received: Mutex<VecDeque<ReceivedRequest>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A running demo server.
pub struct DemoHandle {
    pub addr: SocketAddr,
    state: Arc<DemoState>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoHandle {
    /// Requests answered so far (health checks excluded).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state
            .received
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    /// Stops politely, as an app should on SIGTERM: for `linger`, every HTTP/1.1 answer
    /// says `connection: close`, so busy keep-alive clients reconnect elsewhere after an
    /// answered request; then the port closes and each connection finishes its request in
    /// flight (HTTP/2: GOAWAY). Returns when all are done or `timeout` passed.
    pub async fn shutdown(mut self, linger: Duration, timeout: Duration) {
        self.state
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(linger).await;
        let _ = self.state.stop.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        let _ = tokio::time::timeout_at(deadline, &mut self.task).await;
        while self.state.stop.receiver_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DemoHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds and serves in a background task (HTTP/1.1 and h2c).
pub async fn spawn(config: DemoConfig) -> Result<DemoHandle, Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let state = Arc::new(DemoState {
        config,
        closing: std::sync::atomic::AtomicBool::new(false),
        stop: tokio::sync::watch::channel(false).0,
        served: AtomicU64::new(0),
        received: Mutex::new(VecDeque::new()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let task = tokio::spawn(accept_loop(listener, state.clone()));
    Ok(DemoHandle { addr, state, task })
}

async fn accept_loop(listener: TcpListener, state: Arc<DemoState>) {
    let mut stop = state.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = crate::shutdown::flagged(&mut stop) => return,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        // Held by the connection: the shutdown waits until every one is gone.
        let mut stop = state.stop.subscribe();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    let http1 = req.version() != http::Version::HTTP_2;
                    let closing = state.closing.load(std::sync::atomic::Ordering::Relaxed);
                    let mut response = handle(state, req).await?;
                    if http1 && closing {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, DeliberateReset>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            // Connection errors include the deliberate resets of ERROR_TYPE=reset.
            tokio::select! {
                _ = connection.as_mut() => {}
                () = crate::shutdown::flagged(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Returned as the service error to drop the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("deliberate reset (ERROR_TYPE=reset)")]
struct DeliberateReset;

async fn handle(
    state: Arc<DemoState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DeliberateReset> {
    let path = req.uri().path().to_string();
    if path == "/healthz" || path == "/readyz" {
        return Ok(text_response(StatusCode::OK, "ok\n"));
    }
    if path == "/_demo/received" {
        let received: Vec<_> = state
            .received
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default();
        let body = json!({ "served": state.served.load(Ordering::Relaxed), "received": received });
        return Ok(json_response(StatusCode::OK, &body));
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = req.method().to_string();
    let sequence = state.served.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut log) = state.received.lock() {
        if log.len() == RECEIVED_LOG_LEN {
            log.pop_front();
        }
        log.push_back(ReceivedRequest {
            method: method.clone(),
            path: path.clone(),
            host: host.clone(),
        });
    }
    let cfg = &state.config;
    let started = tokio::time::Instant::now();

    let (delay, fail_draw) = {
        let mut rng = rand::rng();
        let delay = if cfg.latency.is_zero() {
            Duration::ZERO
        } else {
            cfg.latency
                .sample(rng.random::<f64>(), rng.random_range(-1.0..=1.0))
        };
        (delay, rng.random::<f64>())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let failure = if cfg.error_cycle.is_empty() {
        (fail_draw < cfg.error_rate).then_some(cfg.error_code)
    } else {
        match cfg.error_cycle[(sequence % cfg.error_cycle.len() as u64) as usize] {
            CycleStep::Ok => None,
            CycleStep::Fail(code) => Some(code),
        }
    };
    if let Some(code) = failure {
        if cfg.error_kind == ErrorKind::Reset {
            return Err(DeliberateReset);
        }
        let body = json!({
            "name": cfg.name, "version": cfg.version, "pod": cfg.pod, "host": host,
            "uri": path, "code": code.as_u16(), "error": "injected error",
        });
        return Ok(json_response(code, &body));
    }

    let mut upstream_calls = Vec::new();
    for uri in &cfg.upstream_uris {
        upstream_calls.push(call_upstream(&state, uri).await);
    }

    let mut body = json!({
        "name": cfg.name,
        "version": cfg.version,
        "pod": cfg.pod,
        "host": host,
        "method": method,
        "uri": path,
        "message": cfg.message,
        "code": 200,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    if !upstream_calls.is_empty() {
        body["upstream_calls"] = serde_json::Value::Array(upstream_calls);
    }
    if cfg.catalog && (path == "/items" || path.starts_with("/items/")) {
        body = catalog_items(cfg.serves_image_url());
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// A GET for `uri`, sent directly or through `via` with the URI's host as Host.
fn upstream_request(uri: &str, via: Option<SocketAddr>) -> Result<Request<Full<Bytes>>, String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let builder = match via {
        None => Request::get(parsed),
        Some(proxy) => {
            let host = parsed
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let path = parsed.path_and_query().map_or("/", |pq| pq.as_str());
            Request::get(format!("http://{proxy}{path}")).header(http::header::HOST, host)
        }
    };
    builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())
}

async fn call_upstream(state: &DemoState, uri: &str) -> serde_json::Value {
    let request = match upstream_request(uri, state.config.upstream_proxy) {
        Ok(r) => r,
        Err(e) => return json!({ "uri": uri, "code": -1, "error": e.to_string() }),
    };
    let call = async {
        let response = state.client.request(request).await?;
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((code, bytes))
    };
    match tokio::time::timeout(state.config.upstream_timeout, call).await {
        Ok(Ok((code, bytes))) => {
            let body = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            });
            json!({ "uri": uri, "code": code, "response": body })
        }
        Ok(Err(e)) => json!({ "uri": uri, "code": -1, "error": e.to_string() }),
        Err(_) => json!({ "uri": uri, "code": -1, "error": "timeout" }),
    }
}

/// The material's catalog: v2 adds `imageUrl` to every item.
fn catalog_items(with_image_url: bool) -> serde_json::Value {
    let items = [
        (1, "Hammock", "Outdoors", 32.5),
        (2, "Mug", "Kitchen", 12.0),
        (3, "Lamp", "Home", 24.0),
    ];
    let list: Vec<_> = items
        .iter()
        .map(|(id, name, category, price)| {
            let mut item = json!({ "id": id, "color": "teal", "department": category, "name": name, "price": price.to_string() });
            if with_image_url {
                item["imageUrl"] = json!(format!("http://lorempixel.com/640/480/{id}"));
            }
            item
        })
        .collect();
    serde_json::Value::Array(list)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<DemoConfig, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DemoConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn version_comes_from_image_tag_when_unset() {
        assert_eq!(config(&[]).unwrap().version, "v1");
        assert_eq!(config(&[("IMAGE_TAG", "v2")]).unwrap().version, "v2");
        assert_eq!(
            config(&[("IMAGE_TAG", "v2"), ("VERSION", "v3")])
                .unwrap()
                .version,
            "v3"
        );
    }

    #[test]
    fn catalog_v2_has_image_url() {
        assert!(!config(&[("VERSION", "v1")]).unwrap().serves_image_url());
        assert!(config(&[("VERSION", "v2")]).unwrap().serves_image_url());
        let forced = config(&[("VERSION", "v2"), ("CATALOG_IMAGE_URL", "false")]).unwrap();
        assert!(!forced.serves_image_url());
        assert!(catalog_items(true)[0].get("imageUrl").is_some());
        assert!(catalog_items(false)[0].get("imageUrl").is_none());
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let err = config(&[("ERROR_RATE", "1.5")]).unwrap_err().to_string();
        assert!(err.contains("ERROR_RATE"), "{err}");
        let err = config(&[("ERROR_CYCLE", "503,banana")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ERROR_CYCLE"), "{err}");
        let err = config(&[("TIMING_50_PERCENTILE", "fast")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIMING_50_PERCENTILE"), "{err}");
    }

    #[test]
    fn latency_bands_follow_percentiles() {
        let profile = LatencyProfile {
            p50: Duration::from_millis(10),
            p90: Duration::from_millis(100),
            p99: Duration::from_secs(1),
            variance: 0.1,
        };
        assert_eq!(profile.sample(0.2, 0.0), Duration::from_millis(10));
        assert_eq!(profile.sample(0.7, 0.0), Duration::from_millis(100));
        assert_eq!(profile.sample(0.95, 0.0), Duration::from_secs(1));
        assert_eq!(profile.sample(0.2, 1.0), Duration::from_millis(11));
        assert_eq!(profile.sample(0.2, -1.0), Duration::from_millis(9));
    }

    #[test]
    fn error_cycle_parses() {
        let cfg = config(&[("ERROR_CYCLE", "503, 503,ok")]).unwrap();
        assert_eq!(
            cfg.error_cycle,
            vec![
                CycleStep::Fail(StatusCode::SERVICE_UNAVAILABLE),
                CycleStep::Fail(StatusCode::SERVICE_UNAVAILABLE),
                CycleStep::Ok
            ]
        );
    }
}
