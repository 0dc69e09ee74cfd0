//! The built-in scrape provider, used when no Prometheus is configured: it reads
//! sluice-proxy's `/metrics` directly and computes the built-in metrics from deltas.
//!
//! History is driven by the controller: on every analysis tick it calls
//! [`ScrapeProvider::sample`] with the router pods' metrics URLs, then queries. Each
//! successful scrape is kept as a timestamped snapshot per target URL; a query uses,
//! per target, the newest snapshot and the one whose age is closest to the metric's
//! interval (see [`TargetHistory::window`]). So the first tick yields
//! [`Error::NoData`] ("only one sample so far"), and values start on the second.
//! The math lives in [`super::history`]; this file only fetches and stores.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use reqwest::{Client, StatusCode};
use tokio::time::Instant;

pub use super::history::ScrapeValue;
use super::history::{evaluate, RouterMetrics, Snapshot, TargetHistory};
use super::{error_chain, BuiltinQuery, Error, MetricQuery, MetricsProvider, Result};

const PROVIDER_NAME: &str = "sluice-scrape";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// Bound on one target's scrape.
    pub timeout: Duration,
    /// How long snapshots are kept: at least the longest metric interval plus a tick.
    pub retention: Duration,
    /// Cap per target, whatever the sampling frequency.
    pub max_snapshots_per_target: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            timeout: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            max_snapshots_per_target: 720,
        }
    }
}

/// What one [`ScrapeProvider::sample`] call reached.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleReport {
    /// Target URLs scraped and stored.
    pub sampled: Vec<String>,
    /// Target URLs that failed, with why ([`Error::Offline`], [`Error::BadConfig`] ...).
    pub failed: Vec<(String, Error)>,
}

#[derive(Debug, Default)]
struct State {
    histories: HashMap<String, TargetHistory>,
    last_report: Option<SampleReport>,
}

/// Share one instance (in an `Arc`) across Canaries: targets are keyed by URL.
#[derive(Debug)]
pub struct ScrapeProvider {
    client: Client,
    config: ScrapeConfig,
    state: Mutex<State>,
}

impl ScrapeProvider {
    pub fn new(config: ScrapeConfig) -> Result<Self> {
        if config.timeout.is_zero() || config.max_snapshots_per_target < 2 {
            return Err(Error::BadConfig {
                reason: "scrape timeout must be positive and at least 2 snapshots kept".into(),
            });
        }
        let client = Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::BadConfig {
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(ScrapeProvider {
            client,
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// Scrapes every target now and stores a snapshot per successful scrape.
    pub async fn sample(&self, targets: &[String]) -> SampleReport {
        self.sample_with_clock(targets, None).await
    }

    /// As [`Self::sample`], with snapshots stamped `at` (for tests and replays).
    pub async fn sample_at(&self, targets: &[String], at: Instant) -> SampleReport {
        self.sample_with_clock(targets, Some(at)).await
    }

    async fn sample_with_clock(&self, targets: &[String], at: Option<Instant>) -> SampleReport {
        let fetches = targets.iter().map(|url| async move {
            let result = self.fetch(url).await;
            // Stamp when the answer arrived, which is when the counters were read.
            (url, result, at.unwrap_or_else(Instant::now))
        });
        let results = join_all(fetches).await;

        let mut report = SampleReport::default();
        let mut state = self.state.lock();
        let mut newest = at;
        for (url, result, taken_at) in results {
            match result {
                Ok(metrics) => {
                    state
                        .histories
                        .entry(url.clone())
                        .or_default()
                        .push(Snapshot { taken_at, metrics });
                    report.sampled.push(url.clone());
                }
                Err(error) => report.failed.push((url.clone(), error)),
            }
            newest = newest.max(Some(taken_at));
        }
        if let Some(cutoff) = newest.and_then(|n| n.checked_sub(self.config.retention)) {
            let max = self.config.max_snapshots_per_target;
            state.histories.retain(|_, history| {
                history.prune(cutoff, max);
                !history.is_empty()
            });
        }
        state.last_report = Some(report.clone());
        report
    }

    async fn fetch(&self, url: &str) -> Result<RouterMetrics> {
        let offline = |reason: String| Error::Offline {
            provider: format!("{PROVIDER_NAME} target {url}"),
            reason,
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| match e.is_builder() {
                true => Error::BadConfig {
                    reason: format!("scrape target `{url}`: {e}"),
                },
                false => offline(error_chain(&e)),
            })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                provider: format!("{PROVIDER_NAME} target {url}"),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(offline(format!("HTTP {status}")));
        }
        let text = response
            .text()
            .await
            .map_err(|e| offline(error_chain(&e)))?;
        Ok(RouterMetrics::parse(&text))
    }

    /// A built-in metric from the stored history, now.
    pub fn evaluate(&self, query: &BuiltinQuery) -> Result<ScrapeValue> {
        self.evaluate_at(query, Instant::now())
    }

    /// A built-in metric from the stored history, as of `now`.
    pub fn evaluate_at(&self, query: &BuiltinQuery, now: Instant) -> Result<ScrapeValue> {
        let state = self.state.lock();
        evaluate(state.histories.values(), query, now)
    }

    /// Target URLs with stored snapshots, and how many each.
    pub fn targets(&self) -> Vec<(String, usize)> {
        let state = self.state.lock();
        let mut targets: Vec<_> = state
            .histories
            .iter()
            .map(|(url, history)| (url.clone(), history.len()))
            .collect();
        targets.sort();
        targets
    }
}

impl MetricsProvider for ScrapeProvider {
    async fn query(&self, query: &MetricQuery) -> Result<f64> {
        match query {
            MetricQuery::Builtin(q) => self.evaluate(q).map(|v| v.value),
            MetricQuery::PromQl(_) => Err(Error::Unsupported {
                provider: PROVIDER_NAME.into(),
                reason: "it computes only the built-in metrics; MetricTemplate queries \
                         need a Prometheus (spec.provider.address or metricsServer)"
                    .into(),
            }),
        }
    }

    /// Online when the last [`ScrapeProvider::sample`] reached at least one target.
    async fn is_online(&self) -> Result<()> {
        let state = self.state.lock();
        let offline = |reason: String| Error::Offline {
            provider: PROVIDER_NAME.into(),
            reason,
        };
        match &state.last_report {
            None => Err(offline("no target sampled yet".into())),
            Some(report) if !report.sampled.is_empty() => Ok(()),
            Some(report) => match report.failed.first() {
                Some((url, error)) => Err(offline(format!(
                    "no target answered; {url}: {error} ({} failed)",
                    report.failed.len()
                ))),
                None => Err(offline("the last sample had no targets".into())),
            },
        }
    }
}
