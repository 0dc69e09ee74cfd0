//! The built-in metrics (`request-success-rate`, `request-duration`) per router: the
//! PromQL for a Prometheus provider, and the same series selection for the scrape
//! provider, so both read exactly the same series.
//!
//! Both routers expose Istio's metric names. They differ in who reports:
//! - `istio`: Flagger's queries, the serving sidecar (`reporter="destination"`), with
//!   `destination_workload=~"<target>"` as Flagger writes it.
//! - `sluice`: sluice-proxy reports from the router's side (`reporter="source"`) and
//!   knows the exact workload it routed to, so the match is an equality.
//!
//! One deliberate difference from Flagger for both routers: the success-rate numerator
//! falls back to `vector(0)`. Without it, a canary answering *only* 5xx has no non-5xx
//! series, the division yields an empty vector, and "every request failed" would be
//! reported as "no values found", which sluice reads as "no traffic".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use regex::Regex;

use super::{Error, Reporter, Result};
use crate::duration::{format_prometheus, DurationError};

pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";
/// The family name of the duration histogram (without `_bucket`).
pub const DURATION_HISTOGRAM: &str = "istio_request_duration_milliseconds";

/// The quantile `request-duration` reports.
pub const DURATION_QUANTILE: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinMetric {
    /// Percentage (0-100) of requests answered with a non-5xx code.
    RequestSuccessRate,
    /// 99th percentile of request duration, in milliseconds.
    RequestDuration,
}

impl BuiltinMetric {
    pub const ALL: [BuiltinMetric; 2] = [
        BuiltinMetric::RequestSuccessRate,
        BuiltinMetric::RequestDuration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinMetric::RequestSuccessRate => "request-success-rate",
            BuiltinMetric::RequestDuration => "request-duration",
        }
    }
}

impl FromStr for BuiltinMetric {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        BuiltinMetric::ALL
            .into_iter()
            .find(|metric| metric.as_str() == name)
            .ok_or_else(|| Error::UnknownMetric { name: name.into() })
    }
}

impl fmt::Display for BuiltinMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the workload label is matched.
#[derive(Debug, Clone)]
pub enum WorkloadMatch {
    Exact(String),
    /// A fully anchored regular expression, as PromQL's `=~`.
    Regex {
        source: String,
        anchored: Regex,
    },
}

/// The series a built-in metric reads: reporter, namespace and workload labels.
#[derive(Debug, Clone)]
pub struct Selector {
    pub reporter: &'static str,
    pub namespace: String,
    pub workload: WorkloadMatch,
}

impl Selector {
    /// The selector for `reporter`; `namespace` and `workload` must be Kubernetes names,
    /// which also keeps them from breaking out of a PromQL string.
    pub fn new(reporter: Reporter, namespace: &str, workload: &str) -> Result<Self> {
        check_kubernetes_name("namespace", namespace)?;
        check_kubernetes_name("workload", workload)?;
        let workload = match reporter {
            Reporter::Destination => {
                let anchored =
                    Regex::new(&format!("^(?:{workload})$")).map_err(|e| Error::BadQuery {
                        reason: format!("workload `{workload}` is not a valid regex: {e}"),
                    })?;
                WorkloadMatch::Regex {
                    source: workload.to_string(),
                    anchored,
                }
            }
            Reporter::Source => WorkloadMatch::Exact(workload.to_string()),
        };
        let reporter = reporter.as_str();
        Ok(Selector {
            reporter,
            namespace: namespace.to_string(),
            workload,
        })
    }

    /// The label matchers inside `{...}`, in Flagger's order.
    pub fn promql_matchers(&self) -> String {
        let workload = match &self.workload {
            WorkloadMatch::Exact(name) => format!(r#"destination_workload="{name}""#),
            WorkloadMatch::Regex { source, .. } => {
                format!(r#"destination_workload=~"{source}""#)
            }
        };
        format!(
            r#"reporter="{}",destination_workload_namespace="{}",{workload}"#,
            self.reporter, self.namespace
        )
    }

    /// Whether a series with these labels is selected (`label` returns a label's value).
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        // PromQL treats a missing label as the empty string.
        let value = |name: &str| label(name).unwrap_or("");
        value("reporter") == self.reporter
            && value("destination_workload_namespace") == self.namespace
            && match &self.workload {
                WorkloadMatch::Exact(name) => value("destination_workload") == name,
                WorkloadMatch::Regex { anchored, .. } => {
                    anchored.is_match(value("destination_workload"))
                }
            }
    }
}

/// Whether a response code counts as a failure for `request-success-rate` (`5.*`).
pub fn is_server_error(response_code: &str) -> bool {
    response_code.starts_with('5')
}

/// The PromQL of a built-in metric for one workload over `interval`.
pub fn promql(
    reporter: Reporter,
    metric: BuiltinMetric,
    namespace: &str,
    workload: &str,
    interval: Duration,
) -> Result<String> {
    if interval.as_millis() == 0 {
        // PromQL has no unit below 1ms: the window would be empty.
        return Err(Error::BadInterval(DurationError::Zero {
            text: format_prometheus(interval),
        }));
    }
    let matchers = Selector::new(reporter, namespace, workload)?.promql_matchers();
    let window = format_prometheus(interval);
    Ok(match metric {
        BuiltinMetric::RequestSuccessRate => format!(
            "(sum(rate({REQUESTS_TOTAL}{{{matchers},response_code!~\"5.*\"}}[{window}])) or vector(0)) \
             / sum(rate({REQUESTS_TOTAL}{{{matchers}}}[{window}])) * 100"
        ),
        BuiltinMetric::RequestDuration => format!(
            "histogram_quantile({DURATION_QUANTILE}, \
             sum(rate({DURATION_BUCKET}{{{matchers}}}[{window}])) by (le))"
        ),
    })
}

/// DNS-1123 subdomain characters: lowercase alphanumerics, `-` and `.`.
fn check_kubernetes_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(Error::BadQuery {
            reason: format!("{what} `{name}` is not a Kubernetes name"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn istio_queries_are_flaggers_with_the_all_5xx_guard() {
        let cases = [
            (
                BuiltinMetric::RequestSuccessRate,
                r#"(sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo",response_code!~"5.*"}[1m])) or vector(0)) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo"}[1m])) * 100"#,
            ),
            (
                BuiltinMetric::RequestDuration,
                r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo"}[1m])) by (le))"#,
            ),
        ];
        for (metric, want) in cases {
            let got = promql(Reporter::Destination, metric, "test", "podinfo", MINUTE).unwrap();
            assert_eq!(got, want, "{metric}");
        }
    }

    #[test]
    fn sluice_queries_read_the_routers_side() {
        let cases = [
            (
                BuiltinMetric::RequestSuccessRate,
                Duration::from_secs(90),
                r#"(sum(rate(istio_requests_total{reporter="source",destination_workload_namespace="shop",destination_workload="cart",response_code!~"5.*"}[1m30s])) or vector(0)) / sum(rate(istio_requests_total{reporter="source",destination_workload_namespace="shop",destination_workload="cart"}[1m30s])) * 100"#,
            ),
            (
                BuiltinMetric::RequestDuration,
                Duration::from_secs(30),
                r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="source",destination_workload_namespace="shop",destination_workload="cart"}[30s])) by (le))"#,
            ),
        ];
        for (metric, interval, want) in cases {
            let got = promql(Reporter::Source, metric, "shop", "cart", interval).unwrap();
            assert_eq!(got, want, "{metric}");
        }
    }

    #[test]
    fn builtin_names() {
        assert_eq!(
            "request-success-rate".parse(),
            Ok(BuiltinMetric::RequestSuccessRate)
        );
        assert_eq!(
            "request-duration".parse(),
            Ok(BuiltinMetric::RequestDuration)
        );
        for name in ["request-latency", "", "Request-Duration"] {
            let err = name.parse::<BuiltinMetric>().unwrap_err();
            assert_eq!(err, Error::UnknownMetric { name: name.into() });
        }
    }

    #[test]
    fn names_that_could_break_the_query_are_rejected() {
        let cases = [
            ("test", r#"x"} or vector(1) #"#),
            ("test", ""),
            (r#"a",x="b"#, "podinfo"),
            ("Test", "podinfo"),
            ("test", "pod\\info"),
        ];
        for (namespace, workload) in cases {
            for reporter in [Reporter::Destination, Reporter::Source] {
                let err = promql(
                    reporter,
                    BuiltinMetric::RequestDuration,
                    namespace,
                    workload,
                    MINUTE,
                )
                .unwrap_err();
                assert_eq!(err.label(), "bad_query", "{namespace}/{workload}");
            }
        }
        let err = promql(
            Reporter::Source,
            BuiltinMetric::RequestDuration,
            "a",
            "b",
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(err.label(), "bad_interval");
    }

    #[test]
    fn selector_matches_like_promql() {
        let series = |reporter: &str, ns: &str, workload: Option<&str>| {
            let mut labels = HashMap::from([
                ("reporter".to_string(), reporter.to_string()),
                ("destination_workload_namespace".to_string(), ns.to_string()),
            ]);
            if let Some(w) = workload {
                labels.insert("destination_workload".into(), w.into());
            }
            labels
        };
        let cases = [
            (
                Reporter::Destination,
                series("destination", "test", Some("podinfo")),
                true,
            ),
            // `=~` is anchored: the primary is not the canary.
            (
                Reporter::Destination,
                series("destination", "test", Some("podinfo-primary")),
                false,
            ),
            (
                Reporter::Destination,
                series("source", "test", Some("podinfo")),
                false,
            ),
            (
                Reporter::Destination,
                series("destination", "prod", Some("podinfo")),
                false,
            ),
            (
                Reporter::Destination,
                series("destination", "test", None),
                false,
            ),
            (
                Reporter::Source,
                series("source", "test", Some("podinfo")),
                true,
            ),
            (
                Reporter::Source,
                series("destination", "test", Some("podinfo")),
                false,
            ),
            (
                Reporter::Source,
                series("source", "test", Some("podinfo-primary")),
                false,
            ),
        ];
        for (reporter, labels, want) in cases {
            let selector = Selector::new(reporter, "test", "podinfo").unwrap();
            assert_eq!(
                selector.matches(|name| labels.get(name).map(String::as_str)),
                want,
                "{reporter} {labels:?}"
            );
        }
    }

    #[test]
    fn server_errors() {
        for (code, want) in [
            ("500", true),
            ("503", true),
            ("200", false),
            ("404", false),
            ("", false),
        ] {
            assert_eq!(is_server_error(code), want, "{code}");
        }
    }
}
