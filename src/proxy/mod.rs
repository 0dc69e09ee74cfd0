//! sluice-proxy: enforces Istio VirtualService/DestinationRule objects without Istio.
//!
//! `config` validates objects into an immutable `Snapshot`; `routes` matches requests
//! (pure); `balance` picks endpoints; `resilience` decides retries, limits and ejections;
//! `server` is the data path, `downstream` its limits against hostile clients; `admin`
//! serves metrics and the live config. The snapshot
//! lives in an `ArcSwap`: a reload builds a new one and swaps it in atomically, and an
//! invalid config leaves the last good one in place.

pub mod admin;
pub mod balance;
pub mod config;
pub mod downstream;
#[cfg(feature = "kube")]
pub mod k8s;
pub mod metrics;
pub mod resilience;
pub mod routes;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::proxy::config::{ConfigFile, ProxySettings, Snapshot};
use crate::proxy::metrics::{ProxyMetrics, ReloadLabels};

/// Behaviour switches of the proxy that are not Istio objects.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Append `-shadow` to a mirrored copy's Host (Istio <= 1.27 behaviour).
    pub shadow_host_suffix: bool,
    /// Requests are buffered (retries and mirrors replay them) up to this size.
    pub max_body_bytes: usize,
    /// This proxy's workload name, reported as `source_workload`.
    pub workload: Option<String>,
    pub access_log: bool,
    pub connect_timeout: Duration,
    /// Kubernetes mode: not ready once a watch has failed for longer than this (None =
    /// never, the last routes keep serving whatever happens to the API server).
    pub max_watch_outage: Option<Duration>,
    /// A request's headers must be in this long after its first byte (after the accept
    /// for a connection's first request); `None` = no limit.
    pub request_headers_timeout: Option<Duration>,
    /// A connection without a request in flight this long is closed; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// A request's whole body must be in this long after its headers (else 408).
    pub request_body_timeout: Option<Duration>,
    /// Open traffic-port connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Request line and headers of an HTTP/1 request, the header list of an HTTP/2 one
    /// (431 beyond); at least 8 KiB.
    pub max_request_headers_bytes: usize,
    /// Headers of an HTTP/1 request (431 beyond).
    pub max_request_headers: usize,
    /// Request-body bytes buffered across all requests (503 `OM` beyond).
    pub request_body_budget: usize,
    /// Streams open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// The admin port's `/config/*` answers any client, not only local ones.
    pub admin_config_open: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            shadow_host_suffix: true,
            max_body_bytes: 16 * 1024 * 1024,
            workload: None,
            access_log: true,
            connect_timeout: Duration::from_secs(10),
            max_watch_outage: Some(Duration::from_secs(300)),
            request_headers_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            request_body_timeout: Some(Duration::from_secs(60)),
            max_connections: 4096,
            max_request_headers_bytes: 60 * 1024,
            max_request_headers: 100,
            request_body_budget: 128 * 1024 * 1024,
            max_concurrent_streams: 100,
            admin_config_open: false,
        }
    }
}

pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    pub settings: ProxySettings,
    pub options: ProxyOptions,
    pub metrics: ProxyMetrics,
    /// Open connections and buffered body bytes, across the traffic port.
    downstream: downstream::Limits,
    /// Pooled keep-alive client.
    client: Client<HttpConnector, Full<Bytes>>,
    /// For clusters with `maxRequestsPerConnection: 1`.
    client_without_keepalive: Client<HttpConnector, Full<Bytes>>,
    /// For endpoints declared `protocol: h2c`.
    client_h2c: Client<HttpConnector, Full<Bytes>>,
    last_error: Mutex<Option<String>>,
    /// Kubernetes mode: objects skipped as invalid in the last update (their errors).
    rejected_objects: Mutex<Vec<String>>,
    /// A configuration was applied since the start.
    loaded: AtomicBool,
    /// Kubernetes mode: watches failing without a success since, by kind.
    broken_watches: Mutex<BTreeMap<String, Instant>>,
    /// Shutting down: not ready, so endpoints stop sending here.
    draining: AtomicBool,
}

/// Why the proxy is not ready, for `/readyz` (empty = ready).
pub fn readiness_problems(
    loaded: bool,
    draining: bool,
    broken_watches: &BTreeMap<String, Instant>,
    max_watch_outage: Option<Duration>,
    now: Instant,
) -> Vec<String> {
    let mut problems = Vec::new();
    if draining {
        problems.push("draining: shutting down".to_string());
    }
    if !loaded {
        problems.push("no configuration loaded yet".to_string());
    }
    if let Some(bound) = max_watch_outage {
        for (kind, since) in broken_watches {
            let broken_for = now.saturating_duration_since(*since);
            if broken_for > bound {
                problems.push(format!(
                    "the {kind} watch has failed for {}s (bound {}s); routes may be stale",
                    broken_for.as_secs(),
                    bound.as_secs()
                ));
            }
        }
    }
    problems
}

impl Proxy {
    /// Starts with an empty route table (every request is NR until a config is applied).
    pub fn new(settings: ProxySettings, options: ProxyOptions) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let client_h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector.clone());
        let client_without_keepalive = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let empty = Snapshot {
            table: routes::RouteTable::new(settings.namespace.clone(), Vec::new(), Vec::new()),
            ..Default::default()
        };
        let metrics = ProxyMetrics::new();
        let downstream = downstream::Limits::new(&options, &metrics);
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(empty),
            settings,
            options,
            metrics,
            downstream,
            client,
            client_without_keepalive,
            client_h2c,
            last_error: Mutex::new(None),
            rejected_objects: Mutex::new(Vec::new()),
            loaded: AtomicBool::new(false),
            broken_watches: Mutex::new(BTreeMap::new()),
            draining: AtomicBool::new(false),
        })
    }

    /// Why this proxy should get no traffic now; empty when it is ready.
    pub fn readiness(&self) -> Vec<String> {
        let broken = self
            .broken_watches
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        readiness_problems(
            self.loaded.load(Ordering::Relaxed),
            self.draining.load(Ordering::Relaxed),
            &broken,
            self.options.max_watch_outage,
            Instant::now(),
        )
    }

    /// Turns not ready for good: the process is shutting down.
    /// Downstream connections open now (they end after a shutdown).
    pub fn open_connections(&self) -> usize {
        self.downstream.open()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Records a watch's health: a failure starts its outage, a success ends it.
    pub fn watch_result(&self, kind: &str, ok: bool) {
        if let Ok(mut broken) = self.broken_watches.lock() {
            if ok {
                broken.remove(kind);
            } else if !broken.contains_key(kind) {
                broken.insert(kind.to_string(), Instant::now());
            }
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Validates and swaps in a config; on error the current one stays.
    pub fn apply(&self, file: &ConfigFile) -> Result<(), config::Error> {
        let current = self.snapshot.load_full();
        let result = config::build(file, &self.settings, Some(&current));
        let (result_label, reason) = match &result {
            Ok(_) => ("ok", "-"),
            Err(e) => ("rejected", e.label()),
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                result: result_label.into(),
                reason: reason.into(),
            })
            .inc();
        match result {
            Ok(snapshot) => {
                for warning in &snapshot.warnings {
                    tracing::warn!("{warning}");
                }
                self.metrics
                    .config_warnings
                    .set(i64::try_from(snapshot.warnings.len()).unwrap_or(i64::MAX));
                self.snapshot.store(Arc::new(snapshot));
                self.loaded.store(true, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = None;
                }
                Ok(())
            }
            Err(error) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(error.to_string());
                }
                Err(error)
            }
        }
    }

    pub fn apply_file(&self, path: &Path) -> Result<(), config::Error> {
        let file = config::read_file(path).inspect_err(|error| {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
            self.metrics
                .config_reloads
                .get_or_create(&ReloadLabels {
                    result: "rejected".into(),
                    reason: error.label().into(),
                })
                .inc();
        })?;
        self.apply(&file)
    }

    pub fn set_rejected_objects(&self, errors: Vec<String>) {
        if let Ok(mut rejected) = self.rejected_objects.lock() {
            *rejected = errors;
        }
    }

    /// Objects left out of the live config because they are invalid (Kubernetes mode).
    pub fn rejected_objects(&self) -> Vec<String> {
        self.rejected_objects
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The error of the last rejected config, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// Re-applies `path` when its content changes (polled) or on SIGHUP. The first poll
/// applies the file once more, so a change made while the watcher was starting is seen.
pub async fn watch_file(proxy: Arc<Proxy>, path: PathBuf, poll: Duration) {
    let mut last: Option<Vec<u8>> = None;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = {
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(poll) => false,
                _ = sighup => true,
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(poll).await;
            false
        };
        let current = std::fs::read(&path).ok();
        if !forced && current == last {
            continue;
        }
        last = current;
        match proxy.apply_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
            Err(error) => {
                tracing::error!(%error, "configuration rejected; keeping the last good one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_why_not() {
        let now = Instant::now();
        let since = |secs| now - Duration::from_secs(secs);
        let bound = Some(Duration::from_secs(60));
        let broken = |secs| BTreeMap::from([("EndpointSlice".to_string(), since(secs))]);
        // (loaded, draining, broken watches, bound, problems)
        type Case = (
            bool,
            bool,
            BTreeMap<String, Instant>,
            Option<Duration>,
            &'static [&'static str],
        );
        let cases: [Case; 6] = [
            (true, false, BTreeMap::new(), bound, &[]),
            (
                false,
                false,
                BTreeMap::new(),
                bound,
                &["no configuration loaded yet"],
            ),
            (
                true,
                true,
                BTreeMap::new(),
                bound,
                &["draining: shutting down"],
            ),
            (true, false, broken(30), bound, &[]),
            (
                true,
                false,
                broken(90),
                bound,
                &["the EndpointSlice watch has failed for 90s (bound 60s); routes may be stale"],
            ),
            (true, false, broken(900), None, &[]),
        ];
        for (loaded, draining, watches, bound, want) in cases {
            assert_eq!(
                readiness_problems(loaded, draining, &watches, bound, now),
                want,
                "loaded {loaded}, draining {draining}, {watches:?}"
            );
        }
    }
}
