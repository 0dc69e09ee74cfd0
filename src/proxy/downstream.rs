//! The traffic port's defences against hostile and careless clients, after Envoy's
//! downstream limits: a cap on open connections (a listener's `connection_limit`), a
//! header timeout (`request_headers_timeout`), an idle timeout (`idle_timeout`), a body
//! timeout (`request_timeout`, answered 408), header count and size limits, and a budget
//! for the request bodies buffered across all requests (the overload manager, 503 `OM`).
//!
//! hyper's own `header_read_timeout` is not used: its clock starts when a connection is
//! ready for its next request, so on a keep-alive connection it would end idle time at
//! the header timeout, and it does not run while the first bytes are read to tell
//! HTTP/1.1 from h2c. `Activity` times the two phases apart instead, from what the
//! connection reads (`Watched`) and from the requests in flight (`RequestGuard`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::ProxyOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body buffers are full ({budget} bytes)")]
    BudgetExhausted { budget: usize },
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("request body read failed")]
    BodyRead(#[source] BoxError),
}

/// hyper keeps up to this many request headers on the stack; another limit moves them to
/// the heap on every request, so it is only set when it differs.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// hyper's smallest HTTP/1 buffer (it panics below it).
const MIN_HEADER_BUFFER: usize = 8 * 1024;
/// After this long without a frame, an HTTP/2 ping finds a peer that vanished (say while
/// a long answer streams); no answer within the timeout closes the connection.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `4096`, `60KiB`, `16MiB`, `1GiB` (binary units; `KB`/`MB`/`GB` are read the same).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("{text:?} is not a size like 60KiB, 16MiB or 4096");
    let number: usize = number.parse().map_err(|_| invalid())?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(factor).ok_or_else(invalid)
}

/// The HTTP/1.1 + h2c connection builder with the header, stream and ping limits.
pub fn http_builder(options: &ProxyOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper's default header timeout is inactive; it stays off explicitly
    // so that setting a timer later does not turn it on (see the module comment).
    // The read buffer bounds the request line and headers: beyond it hyper answers 431.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(options.max_request_headers_bytes.max(MIN_HEADER_BUFFER));
    if options.max_request_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(options.max_request_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_header_list_size(u32::try_from(options.max_request_headers_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

// === Shared limits ===

/// The limits shared by every connection: open connections and buffered body bytes.
pub struct Limits {
    max_connections: usize,
    connections: Arc<AtomicUsize>,
    active: Gauge,
    pub body_budget: BodyBudget,
}

impl Limits {
    pub fn new(options: &ProxyOptions, metrics: &ProxyMetrics) -> Self {
        Limits {
            max_connections: options.max_connections,
            connections: Arc::new(AtomicUsize::new(0)),
            active: metrics.downstream_cx_active.clone(),
            body_budget: BodyBudget {
                used: Arc::new(AtomicUsize::new(0)),
                limit: options.request_body_budget,
                gauge: metrics.downstream_rq_buffered_bytes.clone(),
            },
        }
    }

    /// Downstream connections open now.
    pub fn open(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// A slot for one more connection, or `None` at the cap.
    pub fn admit(&self) -> Option<ConnectionSlot> {
        let max = self.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.active.inc();
        Some(ConnectionSlot {
            connections: self.connections.clone(),
            active: self.active.clone(),
        })
    }
}

/// One open downstream connection; dropping it frees the slot.
pub struct ConnectionSlot {
    connections: Arc<AtomicUsize>,
    active: Gauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.active.dec();
    }
}

/// Request-body bytes held in memory across all requests, with a limit.
#[derive(Clone)]
pub struct BodyBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
    gauge: Gauge,
}

/// A request's share of the budget, returned when the last copy of its body is dropped
/// (retries and mirrors hold the body after the request has been answered).
struct Reservation {
    budget: BodyBudget,
    bytes: usize,
}

impl Reservation {
    fn grow(&mut self, n: usize) -> bool {
        let limit = self.budget.limit;
        let granted = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok();
        if granted {
            self.bytes += n;
            self.budget
                .gauge
                .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
        granted
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            self.budget
                .gauge
                .dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
    }
}

/// A body's bytes together with their reservation.
struct Held {
    bytes: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// How much of a request body may be read, for how long.
pub struct BodyLimits<'a> {
    pub max_bytes: usize,
    pub timeout: Option<Duration>,
    pub budget: &'a BodyBudget,
}

/// Reads a whole request body into memory within the limits; the bytes count against the
/// budget until their last copy is dropped.
pub async fn read_body<B>(mut body: B, limits: BodyLimits<'_>) -> Result<Bytes, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let collect = async {
        let mut reservation = Reservation {
            budget: limits.budget.clone(),
            bytes: 0,
        };
        let mut chunks: Vec<Bytes> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::BodyRead(e.into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            if reservation.bytes.saturating_add(data.len()) > limits.max_bytes {
                return Err(Error::BodyTooLarge {
                    limit: limits.max_bytes,
                });
            }
            if !reservation.grow(data.len()) {
                return Err(Error::BudgetExhausted {
                    budget: limits.budget.limit,
                });
            }
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => return Ok(Bytes::new()),
            1 => chunks.swap_remove(0),
            _ => {
                let mut joined = BytesMut::with_capacity(reservation.bytes);
                chunks.iter().for_each(|c| joined.extend_from_slice(c));
                joined.freeze()
            }
        };
        Ok(Bytes::from_owner(Held {
            bytes,
            _reservation: reservation,
        }))
    };
    match limits.timeout {
        Some(limit) => tokio::time::timeout(limit, collect)
            .await
            .unwrap_or(Err(Error::BodyTimeout(limit))),
        None => collect.await,
    }
}

// === Per-connection timeouts ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Headers,
    Idle,
    Body,
}

impl Timeout {
    pub fn label(self) -> &'static str {
        match self {
            Timeout::Headers => "headers",
            Timeout::Idle => "idle",
            Timeout::Body => "body",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request is arriving (or should: a new connection); its headers are due a header
    /// timeout after `since`.
    Headers { since: Instant },
    /// Requests between their headers and the end of their response.
    Active { requests: usize },
    /// No request in flight since `since`.
    Idle { since: Instant },
}

struct State {
    phase: Phase,
    http2: bool,
}

/// What one connection is doing, for its header and idle timeouts. The first request's
/// header clock starts at the accept (a client that connects and says nothing is gone
/// after the header timeout); a later one's at its first byte, as in Envoy.
pub struct Activity {
    state: Mutex<State>,
    /// Idle on HTTP/1: the next byte read starts a request's header clock.
    listening: AtomicBool,
    /// Woken when the next deadline moves earlier.
    sooner: Notify,
    headers_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Activity {
    pub fn new(headers_timeout: Option<Duration>, idle_timeout: Option<Duration>) -> Arc<Self> {
        let since = Instant::now();
        let phase = match headers_timeout {
            Some(_) => Phase::Headers { since },
            None => Phase::Idle { since },
        };
        Arc::new(Activity {
            state: Mutex::new(State {
                phase,
                http2: false,
            }),
            listening: AtomicBool::new(false),
            sooner: Notify::new(),
            headers_timeout,
            idle_timeout,
        })
    }

    /// A request's headers are in; it is in flight until the guard (moved into its
    /// response body) is dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut state = self.state.lock();
        state.phase = match state.phase {
            Phase::Active { requests } => Phase::Active {
                requests: requests + 1,
            },
            _ => Phase::Active { requests: 1 },
        };
        self.listening.store(false, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
        }
    }

    fn request_finished(&self) {
        let mut state = self.state.lock();
        if let Phase::Active { requests } = state.phase {
            state.phase = if requests > 1 {
                Phase::Active {
                    requests: requests - 1,
                }
            } else {
                Phase::Idle {
                    since: Instant::now(),
                }
            };
            let listen = requests == 1 && !state.http2 && self.headers_timeout.is_some();
            self.listening.store(listen, Ordering::Relaxed);
        }
    }

    fn bytes_arrived(&self) {
        let mut state = self.state.lock();
        self.listening.store(false, Ordering::Relaxed);
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::Headers {
                since: Instant::now(),
            };
            self.sooner.notify_one();
        }
    }

    /// HTTP/2 frames between streams (pings, settings) are not a request being read, so
    /// only the idle timeout applies to an h2c connection.
    fn http2_detected(&self) {
        let mut state = self.state.lock();
        state.http2 = true;
        self.listening.store(false, Ordering::Relaxed);
        if let Phase::Headers { since } = state.phase {
            state.phase = Phase::Idle { since };
            self.sooner.notify_one();
        }
    }

    /// The earliest instant a timeout can fire given what the connection does now; it is
    /// checked again then (deadlines that move earlier wake `sooner`).
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        let after = |start: Instant, limit: Option<Duration>| start.checked_add(limit?);
        match self.state.lock().phase {
            Phase::Headers { since } => after(since, self.headers_timeout),
            Phase::Idle { since } => after(since, self.idle_timeout),
            // The idle clock cannot start before now.
            Phase::Active { .. } => after(now, self.idle_timeout),
        }
    }

    /// The timeout that has expired at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<Timeout> {
        let past = |start: Instant, limit: Option<Duration>| {
            limit.is_some_and(|limit| now.saturating_duration_since(start) >= limit)
        };
        match self.state.lock().phase {
            Phase::Headers { since } if past(since, self.headers_timeout) => Some(Timeout::Headers),
            Phase::Idle { since } if past(since, self.idle_timeout) => Some(Timeout::Idle),
            _ => None,
        }
    }

    /// Resolves when a deadline moved earlier than the last `next_check`.
    pub async fn sooner(&self) {
        self.sooner.notified().await
    }
}

/// One request in flight on a connection.
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl RequestGuard {
    pub fn track<B>(self, inner: B) -> TrackedBody<B> {
        TrackedBody {
            inner,
            _request: self,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.request_finished();
    }
}

/// A response body that keeps its request in flight until it has been sent or dropped.
pub struct TrackedBody<B> {
    inner: B,
    _request: RequestGuard,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, telling `Activity` when bytes arrive while idle and when the
/// client opened with the h2c preface.
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Bytes of the h2c preface matched so far; `None` once the protocol is known.
    preface: Option<usize>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            preface: Some(0),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if let Some(matched) = self.preface {
            let want = &H2_PREFACE[matched..];
            let n = want.len().min(bytes.len());
            self.preface = if bytes[..n] != want[..n] {
                None
            } else if matched + n == H2_PREFACE.len() {
                self.activity.http2_detected();
                None
            } else {
                Some(matched + n)
            };
        }
        if self.activity.listening.load(Ordering::Relaxed) {
            self.activity.bytes_arrived();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.saw(read);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use tokio::io::AsyncReadExt;

    fn budget(limit: usize) -> BodyBudget {
        BodyBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
            gauge: Gauge::default(),
        }
    }

    fn limits(budget: &BodyBudget) -> BodyLimits<'_> {
        BodyLimits {
            max_bytes: 1024,
            timeout: Some(Duration::from_secs(1)),
            budget,
        }
    }

    #[test]
    fn sizes_read_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("60KiB"), Ok(60 * 1024));
        assert_eq!(parse_size(" 16MiB "), Ok(16 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        for bad in ["", "KiB", "1.5MiB", "-1", "12XB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bodies_hold_their_budget_until_the_last_copy_is_dropped() {
        let budget = budget(100);
        let body = read_body(Full::new(Bytes::from(vec![1u8; 60])), limits(&budget))
            .await
            .expect("fits");
        let copy = body.clone();
        assert_eq!(budget.gauge.get(), 60);
        let over = read_body(Full::new(Bytes::from(vec![2u8; 50])), limits(&budget)).await;
        assert!(matches!(over, Err(Error::BudgetExhausted { budget: 100 })));
        assert_eq!(budget.gauge.get(), 60, "a refused body holds nothing");
        drop(body);
        assert_eq!(
            budget.used.load(Ordering::Acquire),
            60,
            "a copy still holds it"
        );
        drop(copy);
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
        assert_eq!(budget.gauge.get(), 0);
        let fits = read_body(Full::new(Bytes::from(vec![2u8; 50])), limits(&budget)).await;
        assert_eq!(fits.expect("fits now").len(), 50);
    }

    #[tokio::test]
    async fn bodies_join_their_frames_and_respect_the_size_limit() {
        let budget = budget(1 << 20);
        let frames = |sizes: Vec<usize>| {
            StreamBody::new(futures::stream::iter(sizes.into_iter().map(|n| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![7u8; n])))
            })))
        };
        let body = read_body(frames(vec![300, 300, 300]), limits(&budget))
            .await
            .expect("under 1024 bytes");
        assert_eq!(body.len(), 900);
        let big = read_body(frames(vec![600, 600]), limits(&budget)).await;
        assert!(matches!(big, Err(Error::BodyTooLarge { limit: 1024 })));
        assert!(read_body(Full::new(Bytes::new()), limits(&budget))
            .await
            .expect("empty")
            .is_empty());
        drop(body);
        assert_eq!(budget.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out_and_frees_its_share() {
        let budget = budget(1 << 20);
        let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"partial"),
        ))]);
        let stalled = StreamBody::new(futures::StreamExt::chain(first, futures::stream::pending()));
        let result = read_body(stalled, limits(&budget)).await;
        assert!(matches!(result, Err(Error::BodyTimeout(t)) if t == Duration::from_secs(1)));
        assert_eq!(budget.gauge.get(), 0);
    }

    #[test]
    fn connections_are_capped() {
        let metrics = ProxyMetrics::new();
        let options = ProxyOptions {
            max_connections: 2,
            ..ProxyOptions::default()
        };
        let limits = Limits::new(&options, &metrics);
        let a = limits.admit().expect("first");
        let _b = limits.admit().expect("second");
        assert!(limits.admit().is_none());
        assert_eq!(metrics.downstream_cx_active.get(), 2);
        drop(a);
        assert!(
            limits.admit().is_some(),
            "a closed connection frees its slot"
        );
        assert_eq!(metrics.downstream_cx_active.get(), 1);
    }

    const HEADERS: Option<Duration> = Some(Duration::from_secs(10));
    const IDLE: Option<Duration> = Some(Duration::from_secs(60));

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_send_its_headers_in_time() {
        let activity = Activity::new(HEADERS, IDLE);
        let start = Instant::now();
        assert_eq!(
            activity.next_check(start),
            Some(start + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(activity.expired(Instant::now()), Some(Timeout::Headers));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_not_header_time() {
        let activity = Activity::new(HEADERS, IDLE);
        let request = activity.request_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(activity.expired(Instant::now()), None, "a slow answer");
        drop(request);
        let idle_since = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        // Longer than the header timeout, without a byte: still just idle.
        assert_eq!(activity.expired(Instant::now()), None);
        assert_eq!(
            activity.next_check(Instant::now()),
            Some(idle_since + Duration::from_secs(60))
        );

        let mut watched = Watched::new(&b"GET / HTTP/1.1\r\n"[..], activity.clone());
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.expect("bytes");
        let first_byte = Instant::now();
        // The deadline moved earlier: the watcher is told.
        tokio::time::timeout(Duration::from_millis(1), activity.sooner())
            .await
            .expect("notified");
        assert_eq!(
            activity.next_check(Instant::now()),
            Some(first_byte + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(activity.expired(Instant::now()), Some(Timeout::Headers));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_keep_a_connection_busy_until_the_last_one_ends() {
        let activity = Activity::new(HEADERS, IDLE);
        let a = activity.request_started();
        let b = activity.request_started();
        drop(a);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(activity.expired(Instant::now()), None);
        drop(b);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(activity.expired(Instant::now()), Some(Timeout::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn h2c_connections_only_have_the_idle_timeout() {
        use tokio::io::AsyncWriteExt;
        let activity = Activity::new(HEADERS, IDLE);
        let start = Instant::now();
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, activity.clone());
        let mut byte = [0u8; 1];
        // One byte at a time, as a slow client would send it.
        for b in H2_PREFACE {
            client.write_all(&[*b]).await.expect("write");
            watched.read_exact(&mut byte).await.expect("read");
        }
        assert_eq!(
            activity.next_check(Instant::now()),
            Some(start + Duration::from_secs(60)),
            "the header clock stopped at the preface"
        );
        drop(activity.request_started());
        // A ping between streams is not a request arriving.
        let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0];
        client.write_all(&ping).await.expect("write");
        let mut frame = [0u8; 9];
        watched.read_exact(&mut frame).await.expect("read");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(activity.expired(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(activity.expired(Instant::now()), Some(Timeout::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_can_be_off() {
        let activity = Activity::new(None, None);
        assert_eq!(activity.next_check(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(activity.expired(Instant::now()), None);
        let huge = Activity::new(Some(Duration::MAX), Some(Duration::MAX));
        assert_eq!(huge.next_check(Instant::now()), None, "no overflow");
        assert_eq!(huge.expired(Instant::now()), None);
    }
}
