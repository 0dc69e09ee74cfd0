//! The built-in scrape provider against real HTTP servers on 127.0.0.1 serving
//! sluice-proxy's Istio-format metrics, changed between samples.
//!
//! Snapshots are stamped with explicit instants (`sample_at`/`evaluate_at`), so the
//! windows are exact and no assertion depends on how fast the machine is.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::get,
    Router as HttpRouter,
};
use parking_lot::Mutex;
use sluice::analysis::{
    BuiltinMetric, BuiltinQuery, Error, MetricQuery, MetricsProvider, Provider, Reporter,
    ScrapeConfig, ScrapeProvider,
};
use tokio::time::Instant;

/// What each `/{target}/metrics` answers; the test edits it between samples.
type Pages = Arc<Mutex<HashMap<String, (StatusCode, String)>>>;

async fn serve(pages: Pages) -> SocketAddr {
    let app = HttpRouter::new()
        .route(
            "/{target}/metrics",
            get(
                |State(pages): State<Pages>, Path(target): Path<String>| async move {
                    let pages = pages.lock();
                    pages
                        .get(&target)
                        .cloned()
                        .unwrap_or((StatusCode::NOT_FOUND, String::new()))
                },
            ),
        )
        .with_state(pages);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One router pod's counters for `shop/cart`: `ok` 200s observed in the `ok_le`
/// bucket, `failed` 503s in the `failed_le` bucket, plus the primary's traffic.
struct Pod {
    ok: u64,
    failed: u64,
    ok_le: f64,
    failed_le: f64,
}

const BUCKETS: [f64; 10] = [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 2500.0];

fn exposition(pod: &Pod) -> String {
    let cart = r#"reporter="source",destination_workload_namespace="shop",destination_workload="cart",destination_service_name="cart""#;
    let primary = r#"reporter="source",destination_workload_namespace="shop",destination_workload="cart-primary",destination_service_name="cart""#;
    let mut text = String::from(
        "# HELP istio_requests_total Requests.\n# TYPE istio_requests_total counter\n",
    );
    text += &format!(
        "istio_requests_total{{{cart},response_code=\"200\",response_flags=\"-\"}} {}\n",
        pod.ok
    );
    // Like a real proxy, a series exists only once a request produced it.
    if pod.failed > 0 {
        text += &format!(
            "istio_requests_total{{{cart},response_code=\"503\",response_flags=\"UO\"}} {}\n",
            pod.failed
        );
    }
    text += &format!(
        "istio_requests_total{{{primary},response_code=\"500\",response_flags=\"-\"}} 777\n"
    );
    text += "# TYPE istio_request_duration_milliseconds histogram\n";
    for le in BUCKETS.iter().copied().chain([f64::INFINITY]) {
        let count = [(pod.ok, pod.ok_le), (pod.failed, pod.failed_le)]
            .iter()
            .filter(|(_, bucket)| *bucket <= le)
            .map(|(n, _)| n)
            .sum::<u64>();
        let le = if le.is_infinite() {
            "+Inf".to_string()
        } else {
            le.to_string()
        };
        text +=
            &format!("istio_request_duration_milliseconds_bucket{{{cart},le=\"{le}\"}} {count}\n");
        text +=
            &format!("istio_request_duration_milliseconds_bucket{{{primary},le=\"{le}\"}} 777\n");
    }
    text += &format!("istio_request_duration_milliseconds_sum{{{cart}}} 1\n");
    text += &format!(
        "istio_request_duration_milliseconds_count{{{cart}}} {}\n",
        pod.ok + pod.failed
    );
    text
}

fn set(pages: &Pages, target: &str, pod: &Pod) {
    pages
        .lock()
        .insert(target.into(), (StatusCode::OK, exposition(pod)));
}

fn query(reporter: Reporter, metric: BuiltinMetric, interval_secs: u64) -> BuiltinQuery {
    BuiltinQuery {
        reporter,
        metric,
        namespace: "shop".into(),
        workload: "cart".into(),
        interval: Duration::from_secs(interval_secs),
        min_window: Duration::from_secs(interval_secs),
    }
}

fn closed_port_url() -> String {
    let port = StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/metrics")
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-9, "{what}: got {got}, want {want}");
}

#[tokio::test]
async fn builtins_from_deltas_of_scraped_counters() {
    let pages: Pages = Arc::default();
    let addr = serve(pages.clone()).await;
    let url = |target: &str| format!("http://{addr}/{target}/metrics");
    pages.lock().insert(
        "broken".into(),
        (StatusCode::INTERNAL_SERVER_ERROR, "oops".into()),
    );
    let (a, b) = (url("a"), url("b"));
    let targets = vec![a.clone(), b.clone(), url("broken"), closed_port_url()];
    let provider = ScrapeProvider::new(ScrapeConfig::default()).unwrap();
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let pod = |ok, failed, ok_le, failed_le| Pod {
        ok,
        failed,
        ok_le,
        failed_le,
    };

    // Tick 1: a baseline, no value yet.
    set(&pages, "a", &pod(100, 0, 50.0, 500.0));
    set(&pages, "b", &pod(50, 0, 10.0, 2500.0));
    let report = provider.sample_at(&targets, at(0)).await;
    assert_eq!(report.sampled, [a.clone(), b.clone()]);
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|(url, e)| (url.as_str(), e.label()))
        .collect();
    assert_eq!(
        failed,
        [
            (targets[2].as_str(), "offline"),
            (targets[3].as_str(), "offline")
        ]
    );
    provider.is_online().await.expect("two targets answered");
    let first = provider.evaluate_at(
        &query(Reporter::Source, BuiltinMetric::RequestSuccessRate, 60),
        at(0),
    );
    let err = first.unwrap_err();
    assert!(
        err.is_warming() && err.to_string().contains("only one sample"),
        "{err}"
    );

    // Tick 2: a +90 ok / +10 failed; b restarted (counters back near zero).
    set(&pages, "a", &pod(190, 10, 50.0, 500.0));
    set(&pages, "b", &pod(20, 0, 10.0, 2500.0));
    provider.sample_at(&targets, at(30)).await;

    // Tick 3: a +90 / +10 again; b +20 ok and its first 20 failures.
    set(&pages, "a", &pod(280, 20, 50.0, 500.0));
    set(&pages, "b", &pod(40, 20, 10.0, 2500.0));
    provider.sample_at(&targets, at(60)).await;
    assert_eq!(provider.targets(), [(a.clone(), 3), (b.clone(), 3)]);

    // Over 60s: a 180 ok + 20 failed; b 20 (since restart) + 20 ok, 20 failed.
    let success = provider
        .evaluate_at(
            &query(Reporter::Source, BuiltinMetric::RequestSuccessRate, 60),
            at(60),
        )
        .unwrap();
    assert_close(
        success.value,
        100.0 * 220.0 / 260.0,
        "success rate over 60s",
    );
    assert_eq!((success.targets, success.requests), (2, 260.0));
    assert_eq!(success.covered, Duration::from_secs(60));
    // Buckets: <=10: 40, <=50: 220, <=500: 240, <=2500: 260. Rank 257.4 lies in
    // (500, 2500]: 500 + 2000 * (257.4 - 240) / 20.
    let p99 = provider
        .evaluate_at(
            &query(Reporter::Source, BuiltinMetric::RequestDuration, 60),
            at(60),
        )
        .unwrap();
    assert_close(p99.value, 500.0 + 2000.0 * 17.4 / 20.0, "p99 over 60s");

    // Over 30s only the last tick counts: a 90 / 10, b 20 / 20.
    let success = provider
        .evaluate_at(
            &query(Reporter::Source, BuiltinMetric::RequestSuccessRate, 30),
            at(61),
        )
        .unwrap();
    assert_close(
        success.value,
        100.0 * 110.0 / 140.0,
        "success rate over 30s",
    );

    // The Istio router reads the serving side, which this proxy does not report.
    let istio = provider.evaluate_at(
        &query(Reporter::Destination, BuiltinMetric::RequestSuccessRate, 60),
        at(60),
    );
    assert!(istio.as_ref().is_err_and(Error::is_no_data), "{istio:?}");

    // No new traffic: no data, with the reason.
    provider.sample_at(&targets, at(120)).await;
    let idle = provider.evaluate_at(
        &query(Reporter::Source, BuiltinMetric::RequestSuccessRate, 60),
        at(120),
    );
    let err = idle.unwrap_err();
    assert!(
        err.is_no_data() && err.to_string().contains("no requests to shop/cart"),
        "{err}"
    );

    // Old snapshots are pruned after the retention (default 1h).
    provider.sample_at(&targets, at(4000)).await;
    assert_eq!(provider.targets(), [(a, 1), (b, 1)]);
}

#[tokio::test]
async fn provider_interface_with_the_real_clock() {
    let pages: Pages = Arc::default();
    let addr = serve(pages.clone()).await;
    let targets = vec![format!("http://{addr}/a/metrics")];
    let scrape = Arc::new(ScrapeProvider::new(ScrapeConfig::default()).unwrap());
    // What the controller holds: the closed provider enum.
    let provider = Provider::from(scrape.clone());

    let offline = provider.is_online().await.unwrap_err();
    assert_eq!(offline.label(), "offline", "never sampled: {offline}");

    // No minimum window: the two samples below are a moment apart.
    let builtin = |metric| {
        MetricQuery::Builtin(BuiltinQuery {
            min_window: Duration::ZERO,
            ..query(Reporter::Source, metric, 60)
        })
    };
    set(
        &pages,
        "a",
        &Pod {
            ok: 10,
            failed: 0,
            ok_le: 25.0,
            failed_le: 25.0,
        },
    );
    scrape.sample(&targets).await;
    let first = provider
        .query(&builtin(BuiltinMetric::RequestSuccessRate))
        .await;
    assert!(first.as_ref().is_err_and(Error::is_warming), "{first:?}");

    // The values depend only on the counters, not on when the samples were taken.
    set(
        &pages,
        "a",
        &Pod {
            ok: 19,
            failed: 1,
            ok_le: 25.0,
            failed_le: 25.0,
        },
    );
    scrape.sample(&targets).await;
    let success = provider
        .query(&builtin(BuiltinMetric::RequestSuccessRate))
        .await;
    assert_eq!(success, Ok(90.0));
    // All 10 new requests in (10, 25]: rank 9.9 -> 10 + 15 * 9.9 / 10.
    let p99 = provider
        .query(&builtin(BuiltinMetric::RequestDuration))
        .await
        .unwrap();
    assert_close(p99, 10.0 + 15.0 * 0.99, "p99");

    let promql = provider.query(&MetricQuery::PromQl("up".into())).await;
    assert_eq!(promql.map_err(|e| e.label()), Err("unsupported"));

    // Every target down: offline, naming one.
    let down = closed_port_url();
    scrape.sample(std::slice::from_ref(&down)).await;
    let err = provider.is_online().await.unwrap_err();
    assert!(
        err.label() == "offline" && err.to_string().contains(&down),
        "{err}"
    );
}
