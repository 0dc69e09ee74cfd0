//! The Prometheus provider and the built-in queries against a real Prometheus
//! (Debian package `prometheus`, installed by `hack/ensure-prometheus.sh`).
//!
//! The test serves Istio-format series on 127.0.0.1 that grow over time, starts
//! Prometheus on 127.0.0.1 scraping them every second (with basic auth on its API),
//! and reads the built-in metrics back through `PrometheusProvider`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, routing::get, Router as HttpRouter};
use sluice::analysis::{
    render_template, BuiltinMetric, BuiltinQuery, Error, MetricQuery, MetricsProvider,
    PrometheusAuth, PrometheusConfig, PrometheusProvider, Reporter, TemplateVars,
};
use tokio::time::Instant;

const USERNAME: &str = "sluice";
const PASSWORD: &str = "sluice-test-password";
/// bcrypt (cost 4) of PASSWORD, for Prometheus's web config.
const PASSWORD_BCRYPT: &str = "$2a$04$QPUR2.IGZcNXX1a9pIU/7e/Efu9JiWfjb6Dk.zp9o3Zmi3Ka..aPq";

/// The window of the queries; Prometheus scrapes every second, so it holds ~5 samples.
const INTERVAL: Duration = Duration::from_secs(5);
/// How long the test waits for Prometheus to start and collect enough samples.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// The served counters take one step every STEP.
const STEP: Duration = Duration::from_millis(100);

/// Per step and per series group: requests by (code, duration bucket upper bound).
/// Every series of a group grows in fixed proportion and is read in the same scrape,
/// so `rate()`'s extrapolation scales them alike: the ratios below are exact up to
/// float rounding, whatever the scrape timing.
struct Workload {
    reporter: &'static str,
    workload: &'static str,
    /// (response code, requests per step, le of the bucket they fall in)
    traffic: &'static [(&'static str, u64, &'static str)],
}

const BUCKETS: [&str; 9] = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500"];

const WORKLOADS: [Workload; 7] = [
    // Istio, serving side: 90% success; 9 of 10 in (25,50], 1 in (250,500] -> p99 475.
    Workload {
        reporter: "destination",
        workload: "podinfo",
        traffic: &[("200", 9, "50"), ("503", 1, "500")],
    },
    // The primary must not leak into the canary's numbers (=~ is anchored).
    Workload {
        reporter: "destination",
        workload: "podinfo-primary",
        traffic: &[("200", 1, "1"), ("500", 1, "1")],
    },
    // sluice-proxy, router side: 80% success; 8 in (5,10], 2 in (100,250] -> p99 242.5.
    Workload {
        reporter: "source",
        workload: "podinfo",
        traffic: &[("200", 8, "10"), ("500", 2, "250")],
    },
    Workload {
        reporter: "source",
        workload: "podinfo-primary",
        traffic: &[("200", 1, "1"), ("500", 3, "1")],
    },
    // Every request fails: 0%, not "no data".
    Workload {
        reporter: "source",
        workload: "broken",
        traffic: &[("503", 5, "5")],
    },
    // Counters that never move: no traffic in the window.
    Workload {
        reporter: "source",
        workload: "idle",
        traffic: &[("200", 0, "5")],
    },
    // 404s are not failures.
    Workload {
        reporter: "source",
        workload: "notfound",
        traffic: &[("404", 3, "1"), ("200", 1, "1")],
    },
];

/// The exposition after `steps` steps; `idle` starts at 100 requests and stays there.
fn exposition(steps: u64) -> String {
    let mut text = String::from(
        "# TYPE istio_requests_total counter\n\
         # TYPE istio_request_duration_milliseconds histogram\n",
    );
    let mut histograms = String::new();
    for w in WORKLOADS {
        let labels = format!(
            r#"reporter="{}",destination_workload="{}",destination_workload_namespace="test",destination_service_name="podinfo""#,
            w.reporter, w.workload
        );
        let base = if w.workload == "idle" { 100 } else { 0 };
        for (code, per_step, _) in w.traffic {
            let count = base + per_step * steps;
            text += &format!("istio_requests_total{{{labels},response_code=\"{code}\"}} {count}\n");
        }
        let mut cumulative = 0;
        for le in BUCKETS.iter().chain(&["+Inf"]) {
            cumulative = w
                .traffic
                .iter()
                .filter(|(_, _, bucket)| le == &"+Inf" || bound(bucket) <= bound(le))
                .map(|(_, per_step, _)| base + per_step * steps)
                .sum::<u64>()
                .max(cumulative);
            histograms += &format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {cumulative}\n"
            );
        }
    }
    text + &histograms
}

fn bound(le: &str) -> f64 {
    le.parse().unwrap_or(f64::INFINITY)
}

async fn serve_metrics() -> SocketAddr {
    let started = Arc::new(Instant::now());
    let app = HttpRouter::new()
        .route(
            "/metrics",
            get(|State(started): State<Arc<Instant>>| async move {
                let steps = started.elapsed().as_millis() / STEP.as_millis();
                exposition(steps as u64)
            }),
        )
        .with_state(started);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// === Prometheus process ===

/// Kills Prometheus and removes its files when the test ends, whatever happens.
struct PrometheusGuard {
    child: Child,
    dir: PathBuf,
    address: String,
    /// Serving HTTPS with a self-signed certificate.
    tls: bool,
}

impl Drop for PrometheusGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|path| path.is_file())
    })
}

fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn start_prometheus(binary: &Path, target: SocketAddr) -> PrometheusGuard {
    let dir = std::env::temp_dir().join(format!(
        "sluice-analysis-prometheus-{}-{}",
        std::process::id(),
        target.port()
    ));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut web = format!("basic_auth_users:\n  {USERNAME}: {PASSWORD_BCRYPT}\n");
    let tls = self_signed_certificate(&dir);
    if let Some((cert, key)) = &tls {
        web += &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        );
    } else {
        loud(
            "no `openssl` to make a certificate: Prometheus serves plain HTTP and the \
              insecureSkipVerify checks are SKIPPED",
        );
    }
    std::fs::write(dir.join("web.yml"), web).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--web.config.file={}",
            dir.join("web.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    PrometheusGuard {
        child,
        dir,
        address: format!(
            "{}://127.0.0.1:{port}",
            if tls.is_some() { "https" } else { "http" }
        ),
        tls: tls.is_some(),
    }
}

/// A self-signed certificate for 127.0.0.1 (cert, key), made with the openssl CLI.
fn self_signed_certificate(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let openssl = find_on_path("openssl")?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    made.then_some((cert, key))
}

/// Straight to stderr: libtest captures eprintln! output of passing tests.
fn loud(message: &str) {
    let bar = "!".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{message}\n{bar}\n");
}

fn provider(address: &str, auth: bool, insecure_skip_verify: bool) -> PrometheusProvider {
    let mut config = PrometheusConfig::new(address);
    config.timeout = Duration::from_secs(5);
    config.insecure_skip_verify = insecure_skip_verify;
    if auth {
        config.auth = Some(PrometheusAuth::Basic {
            username: USERNAME.into(),
            password: PASSWORD.into(),
        });
    }
    PrometheusProvider::new(config).unwrap()
}

fn builtin(reporter: Reporter, metric: BuiltinMetric, workload: &str) -> MetricQuery {
    MetricQuery::Builtin(BuiltinQuery {
        reporter,
        metric,
        namespace: "test".into(),
        workload: workload.into(),
        interval: INTERVAL,
        min_window: INTERVAL,
    })
}

/// Waits until every built-in query of the test has data: Prometheus is up, has
/// scraped the target, and holds enough samples for `rate()` over INTERVAL.
async fn wait_for_data(prometheus: &PrometheusProvider, guard: &mut PrometheusGuard) {
    let deadline = Instant::now() + READY_DEADLINE;
    let probes = [
        builtin(
            Reporter::Destination,
            BuiltinMetric::RequestDuration,
            "podinfo",
        ),
        builtin(
            Reporter::Source,
            BuiltinMetric::RequestSuccessRate,
            "podinfo",
        ),
    ];
    loop {
        let mut last = None;
        for probe in &probes {
            if let Err(e) = prometheus.query(probe).await {
                last = Some(e);
            }
        }
        let Some(error) = last else { return };
        if let Ok(Some(status)) = guard.child.try_wait() {
            let log = std::fs::read_to_string(guard.dir.join("prometheus.log")).unwrap_or_default();
            panic!("prometheus exited with {status}:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "no data from prometheus within {READY_DEADLINE:?}; last error: {error}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_close(got: Result<f64, Error>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    // Exact up to float rounding (see Workload).
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_metrics_through_a_real_prometheus() {
    // SLUICE_PROMETHEUS_BIN picks another build, e.g. one downloaded by other tooling.
    let binary = std::env::var_os("SLUICE_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .or_else(|| find_on_path("prometheus"));
    let Some(binary) = binary else {
        let message = "no `prometheus` on PATH; run ./hack/ensure-prometheus.sh \
                       (Debian package `prometheus`) first";
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PROMETHEUS").is_none(),
            "{message}"
        );
        loud(&format!(
            "SKIPPED builtin_metrics_through_a_real_prometheus: {message}.\n\
             Set SLUICE_REQUIRE_PROMETHEUS=1 to make this a failure."
        ));
        return;
    };
    let target = serve_metrics().await;
    let mut guard = start_prometheus(&binary, target);
    // With TLS, the certificate is self-signed: only insecureSkipVerify accepts it.
    let prometheus = provider(&guard.address, true, guard.tls);
    wait_for_data(&prometheus, &mut guard).await;

    prometheus.is_online().await.expect("online");

    use BuiltinMetric::{RequestDuration as P99, RequestSuccessRate as Success};
    let expected = [
        (Reporter::Destination, Success, "podinfo", 90.0),
        (Reporter::Destination, P99, "podinfo", 475.0),
        (Reporter::Source, Success, "podinfo", 80.0),
        (Reporter::Source, P99, "podinfo", 242.5),
        (Reporter::Source, Success, "broken", 0.0),
        (Reporter::Source, Success, "notfound", 100.0),
        (Reporter::Source, P99, "notfound", 0.995),
    ];
    for (reporter, metric, workload, want) in expected {
        let got = prometheus.query(&builtin(reporter, metric, workload)).await;
        assert_close(got, want, &format!("{reporter} {metric} {workload}"));
    }

    // No traffic, or no series at all: the no-data error, never a value or a failure.
    let no_data = [
        (Reporter::Source, Success, "idle"),
        (Reporter::Source, P99, "idle"),
        (Reporter::Source, Success, "absent"),
        (Reporter::Source, P99, "absent"),
        // The istio router reads the serving side, which never saw `broken`.
        (Reporter::Destination, Success, "broken"),
    ];
    for (reporter, metric, workload) in no_data {
        let got = prometheus.query(&builtin(reporter, metric, workload)).await;
        assert!(
            got.as_ref().is_err_and(Error::is_no_data),
            "{reporter} {metric} {workload}: {got:?}"
        );
    }

    // A MetricTemplate query, rendered then run.
    let vars = TemplateVars {
        name: "podinfo".into(),
        namespace: "test".into(),
        target: "podinfo".into(),
        service: "podinfo".into(),
        interval: INTERVAL,
        variables: BTreeMap::from([("reporter".to_string(), "source".to_string())]),
    };
    let template = r#"count(istio_requests_total{reporter="{{ variables.reporter }}", destination_workload_namespace="{{namespace}}", destination_workload="{{ target }}"})"#;
    let query = MetricQuery::PromQl(render_template(template, &vars).unwrap());
    assert_close(prometheus.query(&query).await, 2.0, "template");

    let bad = prometheus.query(&MetricQuery::PromQl("sum(".into())).await;
    assert_eq!(bad.map_err(|e| e.label()), Err("bad_query"));

    if guard.tls {
        let verifying = provider(&guard.address, true, false);
        let err = verifying.is_online().await.unwrap_err();
        assert_eq!(err.label(), "offline", "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    let anonymous = provider(&guard.address, false, guard.tls);
    let denied = anonymous.is_online().await;
    assert_eq!(denied.map_err(|e| e.label()), Err("unauthorized"));

    // Prometheus gone: the same provider now reports offline.
    let address = guard.address.clone();
    drop(guard);
    for result in [
        prometheus.is_online().await,
        prometheus
            .query(&builtin(Reporter::Destination, Success, "podinfo"))
            .await
            .map(|_| ()),
    ] {
        let err = result.expect_err("prometheus was stopped");
        assert_eq!(err.label(), "offline", "{err}");
        assert!(err.to_string().contains(&address), "{err}");
    }
}

#[tokio::test]
async fn unreachable_prometheus_is_offline() {
    // A port that was free a moment ago: nothing listens there.
    let address = format!("http://127.0.0.1:{}", free_port());
    let prometheus = provider(&address, false, false);
    let err = prometheus.is_online().await.unwrap_err();
    assert!(matches!(err, Error::Offline { .. }), "{err}");
    let err = prometheus
        .query(&builtin(
            Reporter::Source,
            BuiltinMetric::RequestDuration,
            "podinfo",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.label(), "offline", "{err}");
}
