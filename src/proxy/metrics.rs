//! Istio-compatible request metrics plus the proxy's own counters, in one registry that
//! the admin port serves at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's bucket boundaries for request duration, in milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's bucket boundaries for request and response sizes, in bytes.
pub const SIZE_BUCKETS_BYTES: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

pub const UNKNOWN: &str = "unknown";

/// Istio's standard request labels. Values that are not known are `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_version: String,
    pub request_protocol: String,
    pub response_code: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub cluster: String,
    /// connections | pending | requests | retries
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// headers | idle | body
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolErrorLabels {
    /// headers_too_large | malformed
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// ok | rejected
    pub result: String,
    /// Short error label, `-` when ok.
    pub reason: String,
}

pub type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS_BYTES)
}

/// The request metrics of one label set. Clones share the series registered in the
/// families, so updates through a handle are what `/metrics` shows.
#[derive(Clone, Debug)]
pub struct RequestHandles {
    pub requests: Counter,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// What varies per request among the labels of one endpoint (the other labels are fixed
/// by the endpoint, its service and this proxy's identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleKey {
    pub response_code: u16,
    pub grpc: bool,
    pub flags: Vec<&'static str>,
}

/// Per-endpoint cache of resolved handles. Small: a handful of response codes and flag
/// combinations per endpoint; past `HANDLE_CACHE_MAX` the caller resolves each time.
#[derive(Debug, Default)]
pub struct HandleCache {
    entries: std::sync::RwLock<Vec<(HandleKey, RequestHandles)>>,
}

const HANDLE_CACHE_MAX: usize = 32;

impl HandleCache {
    pub fn get(&self, code: u16, grpc: bool, flags: &[&'static str]) -> Option<RequestHandles> {
        let entries = self.entries.read().ok()?;
        entries
            .iter()
            .find(|(k, _)| k.response_code == code && k.grpc == grpc && k.flags == flags)
            .map(|(_, h)| h.clone())
    }

    pub fn insert(&self, key: HandleKey, handles: RequestHandles) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() < HANDLE_CACHE_MAX && !entries.iter().any(|(k, _)| *k == key) {
                entries.push((key, handles));
            }
        }
    }
}

pub struct ProxyMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration_ms: HistogramFamily,
    pub request_bytes: HistogramFamily,
    pub response_bytes: HistogramFamily,
    pub retries: Family<ClusterLabels, Counter>,
    pub overflows: Family<OverflowLabels, Counter>,
    pub ejections: Family<EjectionLabels, Counter>,
    pub mirrored: Family<ClusterLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// Warnings of the live config (unsupported fields, subsets without endpoints).
    pub config_warnings: Gauge,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_overflow: Counter,
    pub downstream_timeouts: Family<TimeoutLabels, Counter>,
    pub downstream_protocol_errors: Family<ProtocolErrorLabels, Counter>,
    pub downstream_rq_overload: Counter,
    pub downstream_rq_buffered_bytes: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration_ms: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let retries = Family::<ClusterLabels, Counter>::default();
        let overflows = Family::<OverflowLabels, Counter>::default();
        let ejections = Family::<EjectionLabels, Counter>::default();
        let mirrored = Family::<ClusterLabels, Counter>::default();
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let config_warnings = Gauge::default();
        let downstream_cx_active = Gauge::default();
        let downstream_cx_overflow = Counter::default();
        let downstream_timeouts = Family::<TimeoutLabels, Counter>::default();
        let downstream_protocol_errors = Family::<ProtocolErrorLabels, Counter>::default();
        let downstream_rq_overload = Counter::default();
        let downstream_rq_buffered_bytes = Gauge::default();
        // Counter names get `_total` appended by the encoder.
        registry.register(
            "istio_requests",
            "Requests handled, Istio's standard metric",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds, Istio's standard metric",
            duration_ms.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes, Istio's standard metric",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes, Istio's standard metric",
            response_bytes.clone(),
        );
        registry.register(
            "sluice_proxy_upstream_retries",
            "Retries sent to a cluster",
            retries.clone(),
        );
        registry.register(
            "sluice_proxy_upstream_overflow",
            "Requests answered locally with 503 UO because a connectionPool limit overflowed",
            overflows.clone(),
        );
        registry.register(
            "sluice_proxy_outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "sluice_proxy_mirrored_requests",
            "Copies of requests sent to a mirror cluster",
            mirrored.clone(),
        );
        registry.register(
            "sluice_proxy_config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        registry.register(
            "sluice_proxy_config_warnings",
            "Warnings of the live configuration, e.g. fields accepted but not enforced",
            config_warnings.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_cx_active",
            "Open connections on the traffic port",
            downstream_cx_active.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_cx_overflow",
            "Connections closed at once because --max-connections were open",
            downstream_cx_overflow.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_timeouts",
            "Downstream timeouts: headers and idle close the connection, body answers 408",
            downstream_timeouts.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_cx_protocol_error",
            "Connections ended by a request hyper rejected (431 too large, 400 malformed)",
            downstream_protocol_errors.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_rq_overload",
            "Requests answered 503 OM because the request-body budget was used up",
            downstream_rq_overload.clone(),
        );
        registry.register(
            "sluice_proxy_downstream_rq_buffered_bytes",
            "Request-body bytes held in memory (counted against --request-body-budget)",
            downstream_rq_buffered_bytes.clone(),
        );
        ProxyMetrics {
            registry,
            requests,
            duration_ms,
            request_bytes,
            response_bytes,
            retries,
            overflows,
            ejections,
            mirrored,
            config_reloads,
            config_warnings,
            downstream_cx_active,
            downstream_cx_overflow,
            downstream_timeouts,
            downstream_protocol_errors,
            downstream_rq_overload,
            downstream_rq_buffered_bytes,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The four request metrics of one label set, resolved once so the data path can
    /// update them without building labels or hashing them again.
    pub fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration_ms: self.duration_ms.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }

    pub fn count_timeout(&self, kind: &str) {
        self.downstream_timeouts
            .get_or_create(&TimeoutLabels { kind: kind.into() })
            .inc();
    }

    pub fn count_cluster(family: &Family<ClusterLabels, Counter>, cluster: &str) {
        family
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_istio_names_and_buckets() {
        let m = ProxyMetrics::new();
        let labels = RequestLabels {
            reporter: "source".into(),
            source_workload: UNKNOWN.into(),
            source_workload_namespace: UNKNOWN.into(),
            destination_workload: "catalog-v1".into(),
            destination_workload_namespace: "istioinaction".into(),
            destination_service: "catalog.istioinaction.svc.cluster.local".into(),
            destination_service_name: "catalog".into(),
            destination_service_namespace: "istioinaction".into(),
            destination_version: "v1".into(),
            request_protocol: "http".into(),
            response_code: "200".into(),
            response_flags: "-".into(),
            connection_security_policy: UNKNOWN.into(),
        };
        m.requests.get_or_create(&labels).inc();
        m.duration_ms.get_or_create(&labels).observe(3.0);
        let text = m.encode();
        assert!(
            text.contains("istio_requests_total{reporter=\"source\""),
            "{text}"
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("le=\"3600000.0\""), "{text}");
        assert!(text.contains("response_flags=\"-\""), "{text}");
    }

    #[test]
    fn cached_handles_update_the_registered_series() {
        let labels = |code: &str| RequestLabels {
            reporter: "source".into(),
            source_workload: UNKNOWN.into(),
            source_workload_namespace: "istioinaction".into(),
            destination_workload: "catalog-v1".into(),
            destination_workload_namespace: "istioinaction".into(),
            destination_service: "catalog.istioinaction.svc.cluster.local".into(),
            destination_service_name: "catalog".into(),
            destination_service_namespace: "istioinaction".into(),
            destination_version: "v1".into(),
            request_protocol: "http".into(),
            response_code: code.into(),
            response_flags: "-".into(),
            connection_security_policy: UNKNOWN.into(),
        };
        // The series a handle updates is the one the label set names, line for line.
        let via_handles = ProxyMetrics::new();
        let h = via_handles.handles(&labels("200"));
        let cache = HandleCache::default();
        let key = HandleKey {
            response_code: 200,
            grpc: false,
            flags: Vec::new(),
        };
        cache.insert(key.clone(), h);
        for _ in 0..2 {
            let h = cache.get(200, false, &[]).expect("cached");
            h.requests.inc();
            h.duration_ms.observe(3.0);
            h.request_bytes.observe(0.0);
            h.response_bytes.observe(250.0);
        }
        assert!(cache.get(503, false, &[]).is_none());
        assert!(cache.get(200, false, &["UO"]).is_none());
        assert!(cache.get(200, true, &[]).is_none());

        let via_labels = ProxyMetrics::new();
        for _ in 0..2 {
            let l = labels("200");
            via_labels.requests.get_or_create(&l).inc();
            via_labels.duration_ms.get_or_create(&l).observe(3.0);
            via_labels.request_bytes.get_or_create(&l).observe(0.0);
            via_labels.response_bytes.get_or_create(&l).observe(250.0);
        }
        let text = via_handles.encode();
        assert!(text.contains("response_code=\"200\""), "{text}");
        assert_eq!(text, via_labels.encode());
    }
}
