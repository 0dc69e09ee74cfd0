//! The metrics side of canary analysis: *where* a query runs (a provider: Prometheus,
//! or the built-in scrape of sluice-proxy) and *what* runs (the built-in queries per
//! router, MetricTemplate rendering).
//!
//! Nothing here depends on kube: the controller maps its CRD types onto these and
//! decides what a result means for the rollout. In particular [`Error::NoData`] is kept
//! apart from every other failure so the controller can say "no traffic reached the
//! canary" instead of reporting a broken check.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::duration::{self, DurationError};

pub mod builtin;
pub mod history;
pub mod prometheus;
pub mod scrape;
pub mod template;

pub use builtin::BuiltinMetric;
pub use prometheus::{PrometheusAuth, PrometheusConfig, PrometheusProvider};
pub use scrape::{SampleReport, ScrapeConfig, ScrapeProvider, ScrapeValue};
pub use template::{render_template, TemplateVars};

// === Error ===

/// Why a metric has no value. Every variant has a short [`Error::label`] for metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The query ran but matched nothing (empty vector, NaN, zero requests, not enough
    /// history). For a built-in metric this means no traffic reached the canary.
    #[error("no values found: {reason}")]
    NoData { reason: String },
    /// The built-in scrape has not watched the routers long enough to measure a window
    /// (after a controller restart or a leader change, or new router pods). Nothing is
    /// wrong with the canary: the check waits instead of failing.
    #[error("not enough history yet: {reason}")]
    Warming { reason: String },
    /// The provider could not be reached or answered that it is unavailable.
    #[error("metrics provider {provider} is offline: {reason}")]
    Offline { provider: String, reason: String },
    /// The provider refused the request because of missing or wrong credentials.
    #[error("metrics provider {provider} refused the credentials (HTTP {status})")]
    Unauthorized { provider: String, status: u16 },
    /// The provider rejected the query (syntax, evaluation), or it returns no number.
    #[error("bad query: {reason}")]
    BadQuery { reason: String },
    /// The MetricTemplate's query text is malformed.
    #[error("bad metric template: {reason}")]
    BadTemplate { reason: String },
    /// The MetricTemplate uses a variable that does not exist.
    #[error("unknown template variable `{name}`")]
    UnknownVariable { name: String },
    /// A provider type outside the closed set (see [`ProviderKind`]).
    #[error("unknown metrics provider type `{name}` (supported: prometheus)")]
    UnknownProvider { name: String },
    /// A metric name that is not a built-in and has no template.
    #[error(
        "unknown built-in metric `{name}` (built-ins: request-success-rate, request-duration)"
    )]
    UnknownMetric { name: String },
    #[error("bad interval: {0}")]
    BadInterval(#[from] DurationError),
    /// Invalid provider settings (address, header, TLS client).
    #[error("bad metrics provider configuration: {reason}")]
    BadConfig { reason: String },
    /// The provider answered, but not in the expected format.
    #[error("unexpected answer from metrics provider {provider}: {reason}")]
    BadResponse { provider: String, reason: String },
    /// The provider cannot answer this kind of query (e.g. PromQL to the scrape provider).
    #[error("metrics provider {provider} cannot run this query: {reason}")]
    Unsupported { provider: String, reason: String },
}

impl Error {
    /// A short, stable label (snake_case) for metric labels and status reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::NoData { .. } => "no_data",
            Error::Warming { .. } => "warming",
            Error::Offline { .. } => "offline",
            Error::Unauthorized { .. } => "unauthorized",
            Error::BadQuery { .. } => "bad_query",
            Error::BadTemplate { .. } => "bad_template",
            Error::UnknownVariable { .. } => "unknown_variable",
            Error::UnknownProvider { .. } => "unknown_provider",
            Error::UnknownMetric { .. } => "unknown_metric",
            Error::BadInterval(_) => "bad_interval",
            Error::BadConfig { .. } => "bad_config",
            Error::BadResponse { .. } => "bad_response",
            Error::Unsupported { .. } => "unsupported",
        }
    }

    /// True when the query found nothing to measure (see [`Error::NoData`]).
    pub fn is_no_data(&self) -> bool {
        matches!(self, Error::NoData { .. })
    }

    /// True when the scrape has watched too briefly to judge (see [`Error::Warming`]).
    pub fn is_warming(&self) -> bool {
        matches!(self, Error::Warming { .. })
    }

    pub(crate) fn no_data(reason: impl Into<String>) -> Self {
        Error::NoData {
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and its causes on one line ("error sending request: ... Connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A Canary metric's window when `interval` is not set (as in Flagger).
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// A Canary metric's `interval`, or the default when unset.
pub fn metric_interval(interval: Option<&str>) -> Result<Duration> {
    match interval {
        None => Ok(DEFAULT_METRIC_INTERVAL),
        Some(text) => Ok(duration::positive(text, duration::parse_prometheus)?),
    }
}

// === Closed sets ===

/// Who reports the series the built-in metrics read; each traffic router says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The serving workload's sidecar (`reporter="destination"`), as with Istio; the
    /// workload label is matched as Flagger matches it, as a regex.
    Destination,
    /// A router in front of the workloads reports what it sent (`reporter="source"`), the
    /// workload named exactly.
    Source,
}

impl Reporter {
    /// The value of the `reporter` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Destination => "destination",
            Reporter::Source => "source",
        }
    }
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MetricTemplate `spec.provider.type`. A closed set: an unknown type is a validation
/// error, never a silent fallback to Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Prometheus,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Prometheus => "prometheus",
        }
    }
}

impl FromStr for ProviderKind {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "prometheus" => Ok(ProviderKind::Prometheus),
            _ => Err(Error::UnknownProvider { name: name.into() }),
        }
    }
}

// === Queries and providers ===

/// A built-in metric for one workload over one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinQuery {
    pub reporter: Reporter,
    pub metric: BuiltinMetric,
    /// Namespace of the canary workload.
    pub namespace: String,
    /// The canary workload (Deployment) name, i.e. the Canary's `targetRef.name`.
    pub workload: String,
    pub interval: Duration,
    /// The built-in scrape judges no window shorter than half of this while its history
    /// is that young: a check right after a restart would otherwise measure a moment.
    /// The controller sets the shorter of the metric's and the analysis' interval, the
    /// window a release's first check has. Prometheus keeps its own history and ignores it.
    pub min_window: Duration,
}

/// What to ask a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricQuery {
    /// A rendered MetricTemplate query (or a deprecated inline `query`).
    PromQl(String),
    Builtin(BuiltinQuery),
}

/// Where metrics come from: one value per query, and a liveness check.
pub trait MetricsProvider {
    /// The query's value; [`Error::NoData`] when it matches nothing.
    fn query(&self, query: &MetricQuery) -> impl Future<Output = Result<f64>> + Send;
    /// `Ok` when the provider answers; [`Error::Offline`] (or another error) otherwise.
    fn is_online(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Every provider sluice supports. The scrape provider is shared (it keeps history).
#[derive(Debug, Clone)]
pub enum Provider {
    Prometheus(Box<PrometheusProvider>),
    Scrape(Arc<ScrapeProvider>),
}

impl From<PrometheusProvider> for Provider {
    fn from(provider: PrometheusProvider) -> Self {
        Provider::Prometheus(Box::new(provider))
    }
}

impl From<Arc<ScrapeProvider>> for Provider {
    fn from(provider: Arc<ScrapeProvider>) -> Self {
        Provider::Scrape(provider)
    }
}

impl MetricsProvider for Provider {
    async fn query(&self, query: &MetricQuery) -> Result<f64> {
        match self {
            Provider::Prometheus(p) => p.query(query).await,
            Provider::Scrape(p) => p.query(query).await,
        }
    }

    async fn is_online(&self) -> Result<()> {
        match self {
            Provider::Prometheus(p) => p.is_online().await,
            Provider::Scrape(p) => p.is_online().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sets_reject_unknown_names() {
        assert_eq!(
            "prometheus".parse::<ProviderKind>(),
            Ok(ProviderKind::Prometheus)
        );
        let err = "datadog".parse::<ProviderKind>().unwrap_err();
        assert_eq!(err.label(), "unknown_provider");
        assert!(err.to_string().contains("datadog"));
    }

    #[test]
    fn no_data_is_distinct() {
        let err = Error::no_data("empty vector");
        assert!(err.is_no_data());
        assert_eq!(err.label(), "no_data");
        assert!(!Error::BadQuery { reason: "x".into() }.is_no_data());
    }

    #[test]
    fn metric_interval_defaults_to_a_minute() {
        assert_eq!(metric_interval(None), Ok(Duration::from_secs(60)));
        assert_eq!(metric_interval(Some("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(
            metric_interval(Some("30")).unwrap_err().label(),
            "bad_interval"
        );
    }

    #[test]
    fn providers_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Provider>();
        shareable::<Error>();
    }

    /// The pure modules must stay free of kube and sockets (style: the core does not
    /// depend on the world).
    #[test]
    fn pure_modules_import_no_kube_or_sockets() {
        let pure = [
            ("builtin.rs", include_str!("builtin.rs")),
            ("../duration.rs", include_str!("../duration.rs")),
            ("history.rs", include_str!("history.rs")),
            ("template.rs", include_str!("template.rs")),
        ];
        for (file, source) in pure {
            for banned in ["kube::", "k8s_openapi", "tokio::net", "reqwest"] {
                assert!(!source.contains(banned), "{file} mentions {banned}");
            }
        }
    }
}
