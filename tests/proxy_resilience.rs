//! Resilience through the real proxy: retries, route timeout, circuit breaking, outlier
//! ejection and return, the mesh default retry switch. Backends are real sluice-demo
//! servers on loopback; timings appear only in assertions about behaviour.
mod proxy_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxy_common::*;
use sluice::demo::CycleStep;

/// One service `simple-backend` with the given endpoints, a VirtualService with `route`
/// (extra route fields, indented for the http entry) and a DestinationRule `policy`.
fn backend_yaml(endpoints: &[SocketAddr], route_extra: &str, policy: &str) -> String {
    let endpoints: String = endpoints
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!("- {{service: simple-backend, address: \"{a}\", labels: {{app: simple-backend, version: v{i}}}, workload: simple-backend-{i}}}\n")
        })
        .collect();
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
{route_extra}
destinationRules:
- metadata: {{name: simple-backend}}
  spec:
    host: simple-backend
    trafficPolicy:
{policy}
endpoints:
{endpoints}"#
    )
}

fn cycle(code: u16) -> Vec<CycleStep> {
    vec![
        CycleStep::Fail(http::StatusCode::from_u16(code).unwrap()),
        CycleStep::Ok,
    ]
}

async fn failures(client: &HttpClient, proxy: &RunningProxy, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if client
            .get(proxy.addr, "simple-backend", "/", &[])
            .await
            .status
            != 200
        {
            failed += 1;
        }
    }
    failed
}

const ROUND_ROBIN: &str = "      loadBalancer: {simple: ROUND_ROBIN}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_fix_503_then_500_needs_5xx_then_408_needs_its_code() {
    let client = HttpClient::default();
    // Every other call fails; sequential requests make the pattern deterministic.
    let b503 = demo("simple-backend", "v1", |c| c.error_cycle = cycle(503)).await;
    let proxy = start_proxy(
        &backend_yaml(&[b503.addr], "", ROUND_ROBIN),
        settings("istioinaction", false),
    )
    .await;
    assert_eq!(
        failures(&client, &proxy, 20).await,
        10,
        "no retries: half fail"
    );
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &[b503.addr],
            "      retries: {attempts: 2}",
            ROUND_ROBIN,
        )))
        .unwrap();
    // `attempts` without `retryOn` takes the mesh default's conditions, which since
    // Istio 1.24 list no retriable code; `default_retry_503` puts 503 back.
    assert_eq!(
        failures(&client, &proxy, 20).await,
        10,
        "attempts: 2 leaves 503 alone by default"
    );
    let mut with_503 = settings("istioinaction", false);
    with_503.default_retry_503 = true;
    let proxy_503 = start_proxy(
        &backend_yaml(&[b503.addr], "      retries: {attempts: 2}", ROUND_ROBIN),
        with_503,
    )
    .await;
    assert_eq!(
        failures(&client, &proxy_503, 20).await,
        0,
        "attempts: 2 retries 503 with default_retry_503"
    );

    let b500 = demo("simple-backend", "v1", |c| c.error_cycle = cycle(500)).await;
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &[b500.addr],
            "      retries: {attempts: 2}",
            ROUND_ROBIN,
        )))
        .unwrap();
    assert_eq!(
        failures(&client, &proxy, 20).await,
        10,
        "500 is not retried by default"
    );
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &[b500.addr],
            "      retries: {attempts: 2, retryOn: 5xx}",
            ROUND_ROBIN,
        )))
        .unwrap();
    assert_eq!(
        failures(&client, &proxy, 20).await,
        0,
        "retryOn 5xx fixes 500"
    );

    let b408 = demo("simple-backend", "v1", |c| c.error_cycle = cycle(408)).await;
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &[b408.addr],
            "      retries: {attempts: 2, retryOn: 5xx}",
            ROUND_ROBIN,
        )))
        .unwrap();
    assert_eq!(failures(&client, &proxy, 20).await, 10, "408 is not a 5xx");
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &[b408.addr],
            "      retries: {attempts: 2, retryOn: \"5xx,retriable-status-codes,408\"}",
            ROUND_ROBIN,
        )))
        .unwrap();
    assert_eq!(
        failures(&client, &proxy, 20).await,
        0,
        "retriable status code 408"
    );
    // The admin view prints the conditions as Istio writes them.
    let routes = client.admin(&proxy, "/config/routes").await.body;
    assert!(
        routes.contains(r#""retryOn": "5xx,retriable-status-codes,408""#),
        "{routes}"
    );

    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert!(
        metric_sum(&metrics, "sluice_proxy_upstream_retries_total", &[]) >= 20.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_flagged_urx() {
    let client = HttpClient::default();
    let always = demo("simple-backend", "v1", |c| c.error_rate = 1.0).await;
    let proxy = start_proxy(
        &backend_yaml(
            &[always.addr],
            "      retries: {attempts: 2, retryOn: 5xx}",
            ROUND_ROBIN,
        ),
        settings("istioinaction", false),
    )
    .await;
    let reply = client.get(proxy.addr, "simple-backend", "/", &[]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(always.served(), 3, "one try and two retries");
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_flags", "URX")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_before_the_slow_backend() {
    let client = HttpClient::default();
    let slow = demo("simple-backend", "v1", |c| {
        c.latency.p50 = Duration::from_secs(1);
        c.latency.p90 = Duration::from_secs(1);
        c.latency.p99 = Duration::from_secs(1);
    })
    .await;
    let proxy = start_proxy(
        &backend_yaml(&[slow.addr], "      timeout: 0.5s", ROUND_ROBIN),
        settings("istioinaction", false),
    )
    .await;
    let started = Instant::now();
    let reply = client.get(proxy.addr, "simple-backend", "/", &[]).await;
    assert_eq!(reply.status, 504);
    assert!(reply.body.contains("upstream request timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the proxy did not wait for the backend"
    );
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflows_with_503_uo() {
    let client = HttpClient::default();
    let slow = demo("simple-backend", "v1", |c| {
        c.latency.p50 = Duration::from_millis(300);
        c.latency.p90 = Duration::from_millis(300);
        c.latency.p99 = Duration::from_millis(300);
    })
    .await;
    let policy = "      connectionPool:
        tcp: {maxConnections: 1}
        http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, maxRetries: 1, http2MaxRequests: 1}";
    let proxy = start_proxy(
        &backend_yaml(&[slow.addr], "", policy),
        settings("istioinaction", false),
    )
    .await;

    // One at a time: everything passes.
    for _ in 0..3 {
        assert_eq!(
            client
                .get(proxy.addr, "simple-backend", "/", &[])
                .await
                .status,
            200
        );
    }
    // Two at a time, three rounds: some are answered locally with 503 UO.
    let mut overloaded = 0;
    let mut ok = 0;
    for _ in 0..3 {
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let client = client.clone();
                let addr = proxy.addr;
                tokio::spawn(async move { client.get(addr, "simple-backend", "/", &[]).await })
            })
            .collect();
        for call in calls {
            let reply = call.await.unwrap();
            if reply.status == 503 {
                assert_eq!(
                    reply
                        .headers
                        .get("x-envoy-overloaded")
                        .map(|v| v.as_bytes()),
                    Some(&b"true"[..])
                );
                overloaded += 1;
            } else {
                assert_eq!(reply.status, 200);
                ok += 1;
            }
        }
    }
    assert!(overloaded > 0 && ok > 0, "overloaded {overloaded}, ok {ok}");
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert!(metric_sum(&metrics, "sluice_proxy_upstream_overflow_total", &[]) >= overloaded as f64);
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")]
        ),
        overloaded as f64
    );
    let stats = client.admin(&proxy, "/stats").await.body;
    assert!(stats.contains("upstream_rq_overflow: "), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_queue_overflow_at_one_connection() {
    let client = HttpClient::default();
    let slow = demo("simple-backend", "v1", |c| {
        c.latency.p50 = Duration::from_millis(300);
        c.latency.p90 = Duration::from_millis(300);
        c.latency.p99 = Duration::from_millis(300);
    })
    .await;
    // No request limit: one request runs, one waits, the third overflows the queue.
    let policy = "      connectionPool:
        tcp: {maxConnections: 1}
        http: {http1MaxPendingRequests: 1}";
    let proxy = start_proxy(
        &backend_yaml(&[slow.addr], "", policy),
        settings("istioinaction", false),
    )
    .await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let addr = proxy.addr;
            tokio::spawn(async move {
                client
                    .get(addr, "simple-backend", "/", &[])
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [200, 200, 503]);
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "sluice_proxy_upstream_overflow_total",
            &[("kind", "pending")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_returns_and_retries_hide_the_rest() {
    let client = HttpClient::default();
    let good1 = demo("simple-backend", "v1", |_| {}).await;
    let good2 = demo("simple-backend", "v2", |_| {}).await;
    let bad = demo("simple-backend", "v3", |c| c.error_rate = 1.0).await;
    let endpoints = [good1.addr, good2.addr, bad.addr];
    let policy = "      loadBalancer: {simple: ROUND_ROBIN}
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}";
    let proxy = start_proxy(
        &backend_yaml(&endpoints, "", policy),
        settings("istioinaction", false),
    )
    .await;

    let failed = failures(&client, &proxy, 30).await;
    assert_eq!(failed, 1, "the first failure ejects the bad endpoint");
    let health = |list: &serde_json::Value, addr: SocketAddr| -> String {
        list.as_array()
            .and_then(|l| l.iter().find(|e| e["endpoint"] == addr.to_string()))
            .map(|e| e["health"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let endpoints_view = client.admin(&proxy, "/config/endpoints").await.json();
    assert_eq!(health(&endpoints_view, bad.addr), "FAILED");
    assert_eq!(health(&endpoints_view, good1.addr), "HEALTHY");

    // It returns after the ejection time and is ejected again (now for 2 x base).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let endpoints_view = client.admin(&proxy, "/config/endpoints").await.json();
    assert_eq!(health(&endpoints_view, bad.addr), "HEALTHY");
    let failed = failures(&client, &proxy, 30).await;
    assert_eq!(failed, 1);
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(&metrics, "sluice_proxy_outlier_ejections_total", &[]),
        2.0
    );

    // With retries on 5xx (another host is picked), nothing fails at all.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &endpoints,
            "      retries: {attempts: 2, retryOn: 5xx}",
            policy,
        )))
        .unwrap();
    assert_eq!(failures(&client, &proxy, 60).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_default_retries_cover_connect_failures_and_can_be_turned_off() {
    let client = HttpClient::default();
    let good = demo("simple-backend", "v1", |_| {}).await;
    let refused = closed_port().await;
    let yaml = backend_yaml(&[refused, good.addr], "", ROUND_ROBIN);

    let with_default = start_proxy(&yaml, settings("istioinaction", true)).await;
    assert_eq!(failures(&client, &with_default, 20).await, 0);

    let without_default = start_proxy(&yaml, settings("istioinaction", false)).await;
    let failed = failures(&client, &without_default, 20).await;
    assert_eq!(
        failed, 10,
        "round robin hits the refusing endpoint every other call"
    );
    let metrics = client.admin(&without_default, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UF")]
        ),
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_default_retries_503_only_when_configured_to() {
    let client = HttpClient::default();
    // Every other call answers 503; sequential requests make the pattern deterministic.
    let b503 = demo("simple-backend", "v1", |c| c.error_cycle = cycle(503)).await;
    let yaml = backend_yaml(&[b503.addr], "", ROUND_ROBIN);

    let current = start_proxy(&yaml, settings("istioinaction", true)).await;
    assert_eq!(
        failures(&client, &current, 20).await,
        10,
        "Istio 1.24+: the mesh default does not retry 503"
    );

    let mut with_503 = settings("istioinaction", true);
    with_503.default_retry_503 = true;
    let before_1_24 = start_proxy(&yaml, with_503).await;
    assert_eq!(
        failures(&client, &before_1_24, 20).await,
        0,
        "with default_retry_503 the mesh default retries 503"
    );
    let metrics = client.admin(&before_1_24, "/metrics").await.body;
    assert_eq!(
        metric_sum(&metrics, "sluice_proxy_upstream_retries_total", &[]),
        20.0,
        "each first try meets a 503 (the retry takes the cycle's next step): {metrics}"
    );
    for (proxy, retry_on) in [
        (
            &current,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        ),
        (
            &before_1_24,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503",
        ),
    ] {
        let status = client.admin(proxy, "/config/status").await.body;
        assert!(
            status.contains(&format!(r#""retryOn": "{retry_on}""#)),
            "{status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_flagged_uc_and_retried_on_reset() {
    let client = HttpClient::default();
    let good = demo("simple-backend", "v1", |_| {}).await;
    let resetting = demo("simple-backend", "v2", |c| {
        c.error_rate = 1.0;
        c.error_kind = sluice::demo::ErrorKind::Reset;
    })
    .await;
    let endpoints = [good.addr, resetting.addr];
    let proxy = start_proxy(
        &backend_yaml(&endpoints, "", ROUND_ROBIN),
        settings("istioinaction", false),
    )
    .await;
    assert_eq!(failures(&client, &proxy, 10).await, 5);
    let metrics = client.admin(&proxy, "/metrics").await.body;
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UC")]
        ),
        5.0
    );
    proxy
        .proxy
        .apply(&parse(&backend_yaml(
            &endpoints,
            "      retries: {attempts: 1, retryOn: reset}",
            ROUND_ROBIN,
        )))
        .unwrap();
    assert_eq!(failures(&client, &proxy, 10).await, 0);
}
