//! Hostile and careless clients against the real proxy and a real sluice-demo backend on
//! loopback: slowloris and silent connections, idle keep-alive connections, oversized
//! header blocks, bodies that never end, a flood over the connection cap and the global
//! body budget. The limits are configured small so the file runs in seconds; every test
//! also checks that a well-behaved client is still served. Times appear only as
//! generous bounds on behaviour.
mod proxy_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxy_common::*;
use sluice::proxy::ProxyOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "simple-backend";

fn backend_yaml(backend: SocketAddr) -> String {
    format!(
        r#"
namespace: istioinaction
virtualServices:
- metadata: {{name: simple-backend}}
  spec:
    hosts: [simple-backend]
    http:
    - route:
      - destination: {{host: simple-backend}}
endpoints:
- {{service: simple-backend, address: "{backend}", labels: {{app: simple-backend}}}}
"#
    )
}

async fn proxy_with(
    tweak: impl FnOnce(&mut ProxyOptions),
) -> (sluice::demo::DemoHandle, RunningProxy) {
    let backend = demo(HOST, "v1", |_| {}).await;
    let proxy = start_proxy_with(
        &backend_yaml(backend.addr),
        settings("istioinaction", false),
        tweak,
    )
    .await;
    (backend, proxy)
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

async fn metrics(client: &HttpClient, proxy: &RunningProxy) -> String {
    client.admin(proxy, "/metrics").await.body
}

/// Polls the metrics until `done` holds; panics with the last text after `bound`.
async fn wait_for_metrics(
    client: &HttpClient,
    proxy: &RunningProxy,
    bound: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let text = metrics(client, proxy).await;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < bound,
            "{what} within {bound:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn timeouts(text: &str, kind: &str) -> f64 {
    metric_sum(
        text,
        "sluice_proxy_downstream_timeouts_total",
        &[("kind", kind)],
    )
}

/// A hand-driven HTTP/1.1 connection: what a hostile (or simply slow) client sends.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        assert!(addr.ip().is_loopback(), "tests talk to loopback only");
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next response (head and a `content-length` body), or `None` if the proxy
    /// closed the connection first.
    async fn reply(&mut self) -> Option<RawReply> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            if !self.fill().await {
                return None;
            }
        }
        self.buf.drain(..head_end + length);
        Some(RawReply { status, head })
    }

    /// Reads until the proxy closes the connection (EOF or reset), within `bound`.
    async fn closed_within(&mut self, bound: Duration) -> bool {
        tokio::time::timeout(bound, async { while self.fill().await {} })
            .await
            .is_ok()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

fn get_request() -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_closed_by_the_header_timeout() {
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| {
        o.request_headers_timeout = secs(1);
        o.idle_timeout = secs(30);
    })
    .await;

    let mut silent = Raw::connect(proxy.addr).await;
    let silent_since = Instant::now();
    // One header byte every 200 ms: the header block would take minutes to finish.
    let slow = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0usize;
        let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ");
        let bytes = head.bytes().chain(std::iter::repeat(b'a'));
        for byte in bytes.take(600) {
            if slow_write.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (started, sent)
    });

    // A well-behaved client is served all along.
    for _ in 0..10 {
        let reply = client.get(proxy.addr, HOST, "/", &[]).await;
        assert_eq!(reply.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut answer = Vec::new();
    let slow_closed =
        tokio::time::timeout(Duration::from_secs(5), slow_read.read_to_end(&mut answer)).await;
    assert!(slow_closed.is_ok(), "the slow header block is cut off");
    assert!(answer.is_empty(), "no answer to a half request: {answer:?}");
    let (started, sent) = trickle.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed well before the header block could finish"
    );
    assert!(
        (2..600).contains(&sent),
        "sent {sent} bytes before the close"
    );
    assert!(silent.closed_within(Duration::from_secs(5)).await);
    assert!(silent_since.elapsed() < Duration::from_secs(6));

    let text = metrics(&client, &proxy).await;
    assert_eq!(timeouts(&text, "headers"), 2.0, "{text}");
    assert_eq!(timeouts(&text, "idle"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_idle_past_the_header_timeout_until_the_idle_timeout() {
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| {
        o.request_headers_timeout = secs(1);
        o.idle_timeout = secs(3);
    })
    .await;
    let mut conn = Raw::connect(proxy.addr).await;
    conn.send(&get_request()).await.unwrap();
    assert_eq!(conn.reply().await.expect("first answer").status, 200);
    // Twice the header timeout without a byte: idle, not a slow request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    conn.send(&get_request()).await.unwrap();
    assert_eq!(conn.reply().await.expect("second answer").status, 200);
    let idle_since = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(8)).await);
    assert!(
        idle_since.elapsed() >= Duration::from_secs(2),
        "closed by the idle timeout, not earlier"
    );
    let text = metrics(&client, &proxy).await;
    assert_eq!(timeouts(&text, "idle"), 1.0, "{text}");
    assert_eq!(timeouts(&text, "headers"), 0.0, "{text}");
    assert_eq!(client.get(proxy.addr, HOST, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_blocks_are_answered_431() {
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| {
        o.max_request_headers_bytes = 16 * 1024;
        o.max_request_headers = 40;
    })
    .await;

    let big = "b".repeat(20 * 1024);
    let mut conn = Raw::connect(proxy.addr).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n");
    conn.send(request.as_bytes()).await.unwrap();
    let reply = conn.reply().await.expect("an answer");
    assert_eq!(reply.status, 431, "{}", reply.head);
    assert!(conn.closed_within(Duration::from_secs(5)).await);

    let many: String = (0..41).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut conn = Raw::connect(proxy.addr).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n");
    conn.send(request.as_bytes()).await.unwrap();
    let reply = conn.reply().await.expect("an answer");
    assert_eq!(reply.status, 431, "{}", reply.head);
    assert!(conn.closed_within(Duration::from_secs(5)).await);

    // Under both limits: served.
    let value = "v".repeat(8 * 1024);
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    headers.push(("x-big", &value));
    let reply = client.get(proxy.addr, HOST, "/", &headers).await;
    assert_eq!(reply.status, 200);

    let text = metrics(&client, &proxy).await;
    assert_eq!(
        metric_sum(
            &text,
            "sluice_proxy_downstream_cx_protocol_error_total",
            &[("reason", "headers_too_large")]
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_ends_is_answered_408() {
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| o.request_body_timeout = secs(1)).await;

    let mut conn = Raw::connect(proxy.addr).await;
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n");
    conn.send(head.as_bytes()).await.unwrap();
    conn.send(&[b'x'; 10]).await.unwrap();
    let started = Instant::now();

    let small = client
        .post(proxy.addr, HOST, "/", Bytes::from_static(b"{\"ok\":true}"))
        .await;
    assert_eq!(small.status, 200, "a complete body is served meanwhile");

    let reply = tokio::time::timeout(Duration::from_secs(5), conn.reply())
        .await
        .expect("answered within 5s")
        .expect("an answer");
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        reply.head
    );
    assert!(conn.closed_within(Duration::from_secs(5)).await);

    let text = metrics(&client, &proxy).await;
    assert_eq!(timeouts(&text, "body"), 1.0, "{text}");
    assert_eq!(
        metric_sum(&text, "istio_requests_total", &[("response_code", "408")]),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_held_clients_keep_working() {
    const CAP: usize = 20;
    let client = HttpClient::default();
    // Long header and idle timeouts: the flood holds its slots for the whole test.
    let (_backend, proxy) = proxy_with(|o| {
        o.max_connections = CAP;
        o.request_headers_timeout = secs(30);
        o.idle_timeout = secs(30);
    })
    .await;
    // A keep-alive client connected before the flood.
    let mut regular = Raw::connect(proxy.addr).await;
    regular.send(&get_request()).await.unwrap();
    assert_eq!(regular.reply().await.expect("answer").status, 200);

    let mut flood = Vec::new();
    for _ in 0..10 * CAP {
        flood.push(Raw::connect(proxy.addr).await);
    }
    let refused = (10 * CAP - (CAP - 1)) as f64;
    let text = wait_for_metrics(
        &client,
        &proxy,
        Duration::from_secs(10),
        "the flood accepted",
        |t| metric_sum(t, "sluice_proxy_downstream_cx_overflow_total", &[]) == refused,
    )
    .await;
    assert_eq!(
        metric_sum(&text, "sluice_proxy_downstream_cx_active", &[]),
        CAP as f64,
        "{text}"
    );
    // The refused ones are closed by now; the admitted ones stay open (their header
    // timeout is 30 s away), so this window only has to let the closes arrive.
    let closes = futures::future::join_all(
        flood
            .iter_mut()
            .map(|conn| conn.closed_within(Duration::from_millis(500))),
    )
    .await;
    let closed = closes.into_iter().filter(|c| *c).count();
    assert_eq!(
        closed as f64, refused,
        "every connection over the cap is closed"
    );

    // The held client is served while the cap is full; a new one is not.
    let started = Instant::now();
    for _ in 0..20 {
        regular.send(&get_request()).await.unwrap();
        assert_eq!(regular.reply().await.expect("answer").status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut late = Raw::connect(proxy.addr).await;
    let _ = late.send(&get_request()).await;
    assert!(
        late.reply().await.is_none(),
        "over the cap: closed unanswered"
    );

    // Once the flood goes, new clients are admitted again.
    drop(flood);
    wait_for_metrics(
        &client,
        &proxy,
        Duration::from_secs(10),
        "the flood closed",
        |t| metric_sum(t, "sluice_proxy_downstream_cx_active", &[]) == 1.0,
    )
    .await;
    assert_eq!(client.get(proxy.addr, HOST, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_budget_turns_away_what_would_exceed_it() {
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| {
        o.request_body_budget = 64 * 1024;
        o.request_body_timeout = secs(20);
    })
    .await;
    // A client that sends 48 KiB of a 100 KiB body and stops: the proxy holds it.
    let mut hog = Raw::connect(proxy.addr).await;
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 102400\r\n\r\n");
    hog.send(head.as_bytes()).await.unwrap();
    hog.send(&vec![b'h'; 48 * 1024]).await.unwrap();
    wait_for_metrics(
        &client,
        &proxy,
        Duration::from_secs(5),
        "48 KiB buffered",
        |t| metric_sum(t, "sluice_proxy_downstream_rq_buffered_bytes", &[]) == (48 * 1024) as f64,
    )
    .await;

    let small = client
        .post(proxy.addr, HOST, "/", Bytes::from(vec![b's'; 1024]))
        .await;
    assert_eq!(small.status, 200, "small bodies still fit");
    let large = client
        .post(proxy.addr, HOST, "/", Bytes::from(vec![b'l'; 32 * 1024]))
        .await;
    assert_eq!(large.status, 503, "{}", large.body);
    assert_eq!(
        large
            .headers
            .get("x-envoy-overloaded")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(client.get(proxy.addr, HOST, "/", &[]).await.status, 200);

    // The hog leaves; its share comes back.
    drop(hog);
    wait_for_metrics(
        &client,
        &proxy,
        Duration::from_secs(5),
        "the budget freed",
        |t| metric_sum(t, "sluice_proxy_downstream_rq_buffered_bytes", &[]) == 0.0,
    )
    .await;
    let large = client
        .post(proxy.addr, HOST, "/", Bytes::from(vec![b'l'; 32 * 1024]))
        .await;
    assert_eq!(large.status, 200);

    let text = metrics(&client, &proxy).await;
    assert_eq!(
        metric_sum(&text, "sluice_proxy_downstream_rq_overload_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "OM")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_pings_between_streams_are_not_a_slow_request_but_idle_time_ends() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let client = HttpClient::default();
    let (_backend, proxy) = proxy_with(|o| {
        o.request_headers_timeout = secs(1);
        o.idle_timeout = secs(4);
    })
    .await;
    // An h2c client that pings every 250 ms, also with no stream open.
    let h2c: Client<_, http_body_util::Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_millis(250))
        .http2_keep_alive_while_idle(true)
        .build_http();
    let get = || async {
        let request = http::Request::get(format!("http://{}/", proxy.addr))
            .header("host", HOST)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), h2c.request(request))
            .await
            .expect("within 10s")
            .expect("answered");
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.status()
    };
    assert_eq!(get().await, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get().await, 200);
    let text = metrics(&client, &proxy).await;
    assert_eq!(timeouts(&text, "headers"), 0.0, "{text}");
    assert_eq!(
        metric_sum(&text, "sluice_proxy_downstream_cx_active", &[]),
        1.0,
        "both requests on one connection: {text}"
    );
    // Pings keep coming, but without a stream the connection is idle and goes.
    let text = wait_for_metrics(
        &client,
        &proxy,
        Duration::from_secs(10),
        "idle close",
        |t| metric_sum(t, "sluice_proxy_downstream_cx_active", &[]) == 0.0,
    )
    .await;
    assert_eq!(timeouts(&text, "idle"), 1.0, "{text}");
    assert_eq!(timeouts(&text, "headers"), 0.0, "{text}");
}
