//! The pure half of the scrape provider: parsed router metrics, timestamped snapshots
//! per target, and the built-in metrics computed from counter deltas, as Prometheus's
//! `rate()` and `histogram_quantile()` would over the same samples.
//!
//! Time is passed in, never read here, so every rule is a table test.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tokio::time::Instant;

use super::builtin::{
    is_server_error, Selector, DURATION_BUCKET, DURATION_HISTOGRAM, DURATION_QUANTILE,
    REQUESTS_TOTAL,
};
use super::{BuiltinMetric, BuiltinQuery, Error, Result};
use crate::duration::format_prometheus;

/// A series' labels, sorted (so they can key a map).
pub type Labels = BTreeMap<String, String>;

// === Parsed metrics ===

/// A histogram bucket's upper bound (`le`), usable as a map key.
#[derive(Debug, Clone, Copy)]
pub struct UpperBound(pub f64);

impl PartialEq for UpperBound {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for UpperBound {}
impl PartialOrd for UpperBound {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for UpperBound {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for UpperBound {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// The series of one scrape that the built-in metrics read; everything else is dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterMetrics {
    /// `istio_requests_total` by label set.
    pub requests: HashMap<Labels, f64>,
    /// `istio_request_duration_milliseconds_bucket` by label set (without `le`) and `le`.
    pub duration_buckets: HashMap<(Labels, UpperBound), f64>,
}

impl RouterMetrics {
    /// Parses Prometheus text exposition. Lines that are not samples of the two
    /// families are ignored, and so are NaN values and `le`s that are not numbers.
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|line| Ok(line.to_string()));
        // Reading from a &str cannot fail; a malformed line is skipped by the parser.
        let Ok(scrape) = Scrape::parse(lines) else {
            return Self::default();
        };
        let mut metrics = RouterMetrics::default();
        for sample in scrape.samples {
            let labels: Labels = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match (sample.metric.as_str(), sample.value) {
                (REQUESTS_TOTAL, Value::Counter(v) | Value::Untyped(v)) if !v.is_nan() => {
                    metrics.requests.insert(labels, v);
                }
                // With a `# TYPE ... histogram` line the parser groups the buckets.
                (DURATION_HISTOGRAM, Value::Histogram(buckets)) => {
                    for bucket in buckets {
                        if !bucket.less_than.is_nan() && !bucket.count.is_nan() {
                            metrics.duration_buckets.insert(
                                (labels.clone(), UpperBound(bucket.less_than)),
                                bucket.count,
                            );
                        }
                    }
                }
                // Without one, each bucket is a plain sample carrying `le`.
                (DURATION_BUCKET, Value::Counter(v) | Value::Untyped(v)) if !v.is_nan() => {
                    let mut labels = labels;
                    let le = labels.remove("le").and_then(|le| parse_upper_bound(&le));
                    if let Some(le) = le {
                        metrics.duration_buckets.insert((labels, le), v);
                    }
                }
                _ => {}
            }
        }
        metrics
    }
}

fn parse_upper_bound(text: &str) -> Option<UpperBound> {
    let value = match text {
        "+Inf" | "Inf" | "+inf" | "inf" => f64::INFINITY,
        _ => text.parse::<f64>().ok()?,
    };
    (!value.is_nan()).then_some(UpperBound(value))
}

// === History ===

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub taken_at: Instant,
    pub metrics: RouterMetrics,
}

/// Why a target contributes nothing to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// A single snapshot: a delta needs two.
    OneSnapshot,
    /// The newest snapshot is older than the interval: the target is no longer sampled.
    Stale,
}

/// Successful scrapes of one target, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetHistory {
    snapshots: VecDeque<Snapshot>,
}

impl TargetHistory {
    /// Appends a snapshot; one taken before the newest is dropped (clocks only go
    /// forward, and a delta over a reordered history would be wrong).
    pub fn push(&mut self, snapshot: Snapshot) {
        if let Some(newest) = self.snapshots.back() {
            if snapshot.taken_at < newest.taken_at {
                return;
            }
        }
        self.snapshots.push_back(snapshot);
    }

    /// Drops snapshots taken before `cutoff`, and the oldest beyond `max_snapshots`.
    pub fn prune(&mut self, cutoff: Instant, max_snapshots: usize) {
        while self
            .snapshots
            .front()
            .is_some_and(|oldest| oldest.taken_at < cutoff)
        {
            self.snapshots.pop_front();
        }
        while self.snapshots.len() > max_snapshots {
            self.snapshots.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The snapshots spanning about `interval` up to the newest one.
    ///
    /// The baseline is the snapshot whose age (relative to the newest) is closest to
    /// `interval`, ties going to the older. Samples taken on a controller tick are a
    /// little early or late, so "within the interval" alone would miss the previous
    /// tick's sample half of the time; "closest" does not.
    pub fn window(&self, interval: Duration, now: Instant) -> Result<Vec<&Snapshot>, Gap> {
        let Some(newest) = self.snapshots.back() else {
            return Err(Gap::OneSnapshot);
        };
        if now.saturating_duration_since(newest.taken_at) > interval {
            return Err(Gap::Stale);
        }
        let last = self.snapshots.len() - 1;
        let distance = |i: usize| {
            let age = newest
                .taken_at
                .saturating_duration_since(self.snapshots[i].taken_at);
            age.abs_diff(interval)
        };
        let baseline = (0..last)
            .min_by(|&a, &b| distance(a).cmp(&distance(b)).then(a.cmp(&b)))
            .ok_or(Gap::OneSnapshot)?;
        Ok(self.snapshots.range(baseline..).collect())
    }
}

// === Delta math ===

/// How much a counter grew over consecutive samples, counting a decrease as a restart
/// from zero (as Prometheus's `rate()` does).
pub fn counter_increase(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values = values.into_iter();
    let Some(mut previous) = values.next() else {
        return 0.0;
    };
    let mut increase = 0.0;
    for value in values {
        increase += if value >= previous {
            value - previous
        } else {
            value
        };
        previous = value;
    }
    increase
}

/// The `quantile` of a cumulative histogram, by linear interpolation inside the bucket
/// holding the rank, like Prometheus's `histogram_quantile()`. `None` where Prometheus
/// returns NaN: no `+Inf` bucket, fewer than two buckets, no observations.
pub fn histogram_quantile(quantile: f64, buckets: &BTreeMap<UpperBound, f64>) -> Option<f64> {
    if !(0.0..=1.0).contains(&quantile) || buckets.len() < 2 {
        return None;
    }
    let (last_bound, _) = buckets.last_key_value()?;
    if last_bound.0 != f64::INFINITY {
        return None;
    }
    // Cumulative counts must not decrease; sums of float deltas can, slightly.
    let mut running_max = 0.0_f64;
    let buckets: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(bound, &count)| {
            running_max = running_max.max(count);
            (bound.0, running_max)
        })
        .collect();
    let observations = buckets.last()?.1;
    if observations <= 0.0 {
        return None;
    }
    let rank = quantile * observations;
    let index = buckets.iter().position(|&(_, count)| count >= rank)?;
    if index == buckets.len() - 1 {
        // In the +Inf bucket: the best answer is the highest finite bound.
        return Some(buckets[index - 1].0);
    }
    let (upper, count) = buckets[index];
    if index == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, below) = if index == 0 {
        (0.0, 0.0)
    } else {
        buckets[index - 1]
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(lower);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

/// Sums of counter increases over a window, for one selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub server_errors: f64,
    pub duration_buckets: BTreeMap<UpperBound, f64>,
}

impl Totals {
    /// Adds the increases of the selected series over `window` (oldest first). A series
    /// missing from a snapshot counts as 0 there: it was created (first request with
    /// those labels) or its process restarted.
    pub fn add_window(&mut self, window: &[&Snapshot], selector: &Selector) {
        let selected =
            |labels: &Labels| selector.matches(|name| labels.get(name).map(|v| v.as_str()));

        let request_keys: HashSet<&Labels> = window
            .iter()
            .flat_map(|s| s.metrics.requests.keys())
            .filter(|labels| selected(labels))
            .collect();
        for labels in request_keys {
            let values = window
                .iter()
                .map(|s| s.metrics.requests.get(labels).copied().unwrap_or(0.0));
            let increase = counter_increase(values);
            self.requests += increase;
            if labels
                .get("response_code")
                .is_some_and(|code| is_server_error(code))
            {
                self.server_errors += increase;
            }
        }

        let bucket_keys: HashSet<&(Labels, UpperBound)> = window
            .iter()
            .flat_map(|s| s.metrics.duration_buckets.keys())
            .filter(|(labels, _)| selected(labels))
            .collect();
        for key in bucket_keys {
            let values = window
                .iter()
                .map(|s| s.metrics.duration_buckets.get(key).copied().unwrap_or(0.0));
            *self.duration_buckets.entry(key.1).or_insert(0.0) += counter_increase(values);
        }
    }

    /// Percent of non-5xx requests; `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| 100.0 * (self.requests - self.server_errors) / self.requests)
    }

    /// The p99 request duration in ms; `None` without observations.
    pub fn duration_p99(&self) -> Option<f64> {
        histogram_quantile(DURATION_QUANTILE, &self.duration_buckets)
    }
}

// === Evaluation ===

/// A built-in metric computed from scrapes, with what it covered (for logs and events).
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeValue {
    pub value: f64,
    /// The longest span between baseline and newest snapshot among the targets used.
    pub covered: Duration,
    /// Targets with a usable window.
    pub targets: usize,
    /// Requests to the workload counted in the window.
    pub requests: f64,
}

/// Computes `query` over the histories of all targets at `now`.
pub fn evaluate<'a>(
    histories: impl IntoIterator<Item = &'a TargetHistory>,
    query: &BuiltinQuery,
    now: Instant,
) -> Result<ScrapeValue> {
    let selector = Selector::new(query.reporter, &query.namespace, &query.workload)?;
    let mut totals = Totals::default();
    let (mut targets, mut one_snapshot, mut stale) = (0, 0, 0);
    let mut covered = Duration::ZERO;
    for history in histories {
        match history.window(query.interval, now) {
            Ok(window) => {
                if let (Some(first), Some(last)) = (window.first(), window.last()) {
                    covered = covered.max(last.taken_at.saturating_duration_since(first.taken_at));
                }
                totals.add_window(&window, &selector);
                targets += 1;
            }
            Err(Gap::OneSnapshot) => one_snapshot += 1,
            Err(Gap::Stale) => stale += 1,
        }
    }
    let interval = format_prometheus(query.interval);
    if targets == 0 && one_snapshot > 0 {
        return Err(Error::Warming {
            reason: "only one sample of the router metrics so far; a value needs a second \
                     sample (sample again on the next tick)"
                .into(),
        });
    }
    // Every window is short because the histories are: this process has not watched the
    // routers long enough (a restart, a new leader, new router pods). A long history
    // always yields a window of about `interval`.
    if targets > 0 && covered * 2 < query.min_window {
        return Err(Error::Warming {
            reason: format!(
                "the router metrics have been sampled for {} only; a check needs {}",
                format_prometheus(covered),
                format_prometheus(query.min_window / 2)
            ),
        });
    }
    if targets == 0 {
        let reason = if stale > 0 {
            format!("the newest samples of the router metrics are older than {interval}")
        } else {
            "no samples of the router metrics (no target sampled successfully yet)".to_string()
        };
        return Err(Error::no_data(reason));
    }
    let value = match query.metric {
        BuiltinMetric::RequestSuccessRate => totals.success_rate(),
        BuiltinMetric::RequestDuration => totals.duration_p99(),
    };
    let value = value.ok_or_else(|| {
        Error::no_data(format!(
            "no requests to {}/{} reported by {} target(s) over the last {} (covered {})",
            query.namespace,
            query.workload,
            targets,
            interval,
            format_prometheus(covered)
        ))
    })?;
    Ok(ScrapeValue {
        value,
        covered,
        targets,
        requests: totals.requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Reporter;

    const INF: f64 = f64::INFINITY;

    fn buckets(pairs: &[(f64, f64)]) -> BTreeMap<UpperBound, f64> {
        pairs.iter().map(|&(le, c)| (UpperBound(le), c)).collect()
    }

    #[test]
    fn counter_increase_handles_resets() {
        let cases: [(&[f64], f64); 9] = [
            (&[], 0.0),
            (&[5.0], 0.0),
            (&[5.0, 5.0], 0.0),
            (&[5.0, 8.0, 12.0], 7.0),
            // Restart between samples: 10 -> 3 means 3 new since the restart.
            (&[10.0, 3.0], 3.0),
            (&[10.0, 12.0, 2.0, 6.0], 8.0),
            // Restarted to zero, then grew.
            (&[4.0, 0.0, 0.0, 5.0], 5.0),
            // Series absent in the baseline (0): created within the window.
            (&[0.0, 7.0], 7.0),
            (&[1.0, 0.5, 0.25], 0.75),
        ];
        for (values, want) in cases {
            assert_eq!(counter_increase(values.iter().copied()), want, "{values:?}");
        }
    }

    /// (case, quantile, (le, cumulative count) pairs, expected)
    type QuantileCase = (&'static str, f64, &'static [(f64, f64)], Option<f64>);

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let cases: [QuantileCase; 11] = [
            (
                "middle of a bucket",
                0.5,
                &[(10.0, 0.0), (20.0, 10.0), (INF, 10.0)],
                Some(15.0),
            ),
            (
                "first bucket from 0",
                0.5,
                &[(10.0, 10.0), (INF, 10.0)],
                Some(5.0),
            ),
            (
                "p99 in the 250-500 bucket",
                0.99,
                &[
                    (25.0, 0.0),
                    (50.0, 90.0),
                    (100.0, 90.0),
                    (250.0, 90.0),
                    (500.0, 100.0),
                    (INF, 100.0),
                ],
                Some(475.0),
            ),
            (
                "rank in +Inf bucket",
                0.99,
                &[(10.0, 50.0), (100.0, 90.0), (INF, 100.0)],
                Some(100.0),
            ),
            (
                "exact upper bound",
                0.5,
                &[(10.0, 5.0), (20.0, 10.0), (INF, 10.0)],
                Some(10.0),
            ),
            (
                "non-positive first bound",
                0.1,
                &[(0.0, 5.0), (10.0, 10.0), (INF, 10.0)],
                Some(0.0),
            ),
            (
                "non-monotonic fixed",
                0.5,
                &[(10.0, 4.0), (20.0, 3.9), (30.0, 8.0), (INF, 8.0)],
                Some(10.0),
            ),
            ("no observations", 0.99, &[(10.0, 0.0), (INF, 0.0)], None),
            ("no +Inf bucket", 0.99, &[(10.0, 1.0), (20.0, 2.0)], None),
            ("single bucket", 0.99, &[(INF, 2.0)], None),
            (
                "quantile out of range",
                1.5,
                &[(10.0, 1.0), (INF, 1.0)],
                None,
            ),
        ];
        for (name, q, pairs, want) in cases {
            let got = histogram_quantile(q, &buckets(pairs));
            match (got, want) {
                (Some(got), Some(want)) => {
                    assert!((got - want).abs() < 1e-9, "{name}: {got} != {want}")
                }
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }

    const TEXT_TYPED: &str = r#"
# HELP istio_requests_total Total requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="source",destination_workload="cart",destination_workload_namespace="shop",response_code="200"} 90
istio_requests_total{reporter="source",destination_workload="cart",destination_workload_namespace="shop",response_code="503"} 10
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="cart",destination_workload_namespace="shop",le="50"} 90
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="cart",destination_workload_namespace="shop",le="500"} 100
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="cart",destination_workload_namespace="shop",le="+Inf"} 100
istio_request_duration_milliseconds_sum{reporter="source",destination_workload="cart",destination_workload_namespace="shop"} 9000
istio_request_duration_milliseconds_count{reporter="source",destination_workload="cart",destination_workload_namespace="shop"} 100
other_metric 1
"#;

    #[test]
    fn parses_typed_and_untyped_exposition() {
        let untyped: String = TEXT_TYPED
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for text in [TEXT_TYPED, untyped.as_str()] {
            let metrics = RouterMetrics::parse(text);
            assert_eq!(metrics.requests.len(), 2);
            assert_eq!(metrics.requests.values().sum::<f64>(), 100.0);
            assert_eq!(metrics.duration_buckets.len(), 3);
            let inf = metrics
                .duration_buckets
                .iter()
                .find(|((_, le), _)| le.0 == INF)
                .map(|(_, v)| *v);
            assert_eq!(inf, Some(100.0));
            assert!(metrics
                .duration_buckets
                .keys()
                .all(|(labels, _)| !labels.contains_key("le")));
        }
        assert_eq!(
            RouterMetrics::parse("<html>not metrics</html>"),
            RouterMetrics::default()
        );
        assert_eq!(RouterMetrics::parse(""), RouterMetrics::default());
    }

    /// Exposition for `cart` with cumulative `ok`/`failed` counts and their durations
    /// (ok in (25,50], failed in (250,500]), plus noise for the primary.
    fn exposition(ok: u64, failed: u64) -> String {
        let l = r#"reporter="source",destination_workload_namespace="shop",destination_workload"#;
        let mut text = format!(
            "istio_requests_total{{{l}=\"cart\",response_code=\"200\"}} {ok}\n\
             istio_requests_total{{{l}=\"cart-primary\",response_code=\"500\"}} 1000\n"
        );
        if failed > 0 {
            text +=
                &format!("istio_requests_total{{{l}=\"cart\",response_code=\"500\"}} {failed}\n");
        }
        for (le, count) in [
            ("25", 0),
            ("50", ok),
            ("250", ok),
            ("500", ok + failed),
            ("+Inf", ok + failed),
        ] {
            text += &format!(
                "istio_request_duration_milliseconds_bucket{{{l}=\"cart\",le=\"{le}\"}} {count}\n"
            );
        }
        text
    }

    fn history(t0: Instant, samples: &[(u64, u64, u64)]) -> TargetHistory {
        let mut history = TargetHistory::default();
        for &(secs, ok, failed) in samples {
            history.push(Snapshot {
                taken_at: t0 + Duration::from_secs(secs),
                metrics: RouterMetrics::parse(&exposition(ok, failed)),
            });
        }
        history
    }

    /// A query whose metric and analysis intervals are both `interval_secs`.
    fn query(metric: BuiltinMetric, interval_secs: u64) -> BuiltinQuery {
        BuiltinQuery {
            reporter: Reporter::Source,
            metric,
            namespace: "shop".into(),
            workload: "cart".into(),
            interval: Duration::from_secs(interval_secs),
            min_window: Duration::from_secs(interval_secs),
        }
    }

    /// (case, samples as (secs, ok, failed), metric, (metric interval, min window) secs,
    /// now secs, the value or the error's label)
    type EvalCase = (
        &'static str,
        &'static [(u64, u64, u64)],
        BuiltinMetric,
        (u64, u64),
        u64,
        Result<f64, &'static str>,
    );

    #[test]
    fn evaluates_builtins_from_deltas() {
        use BuiltinMetric::*;
        let cases: [EvalCase; 13] = [
            (
                "90% over one minute",
                &[(0, 100, 0), (60, 190, 10)],
                RequestSuccessRate,
                (60, 60),
                60,
                Ok(90.0),
            ),
            (
                "p99 over one minute",
                &[(0, 100, 0), (60, 190, 10)],
                RequestDuration,
                (60, 60),
                60,
                Ok(475.0),
            ),
            // Only the last minute counts: the first minute had 50% failures.
            (
                "window picks the sample closest to the interval",
                &[(0, 0, 0), (60, 50, 50), (119, 140, 60)],
                RequestSuccessRate,
                (60, 60),
                120,
                Ok(90.0),
            ),
            (
                "all failing is 0, not no-data",
                &[(0, 10, 0), (60, 10, 40)],
                RequestSuccessRate,
                (60, 60),
                60,
                Ok(0.0),
            ),
            (
                "restart in the window counts from zero",
                &[(0, 500, 0), (30, 10, 0), (60, 28, 2)],
                RequestSuccessRate,
                (60, 60),
                60,
                Ok(28.0 / 30.0 * 100.0),
            ),
            (
                "idle counters are no data",
                &[(0, 100, 5), (60, 100, 5)],
                RequestSuccessRate,
                (60, 60),
                60,
                Err("no_data"),
            ),
            (
                "idle histogram is no data",
                &[(0, 100, 5), (60, 100, 5)],
                RequestDuration,
                (60, 60),
                60,
                Err("no_data"),
            ),
            (
                "one snapshot waits for a second",
                &[(0, 100, 5)],
                RequestSuccessRate,
                (60, 60),
                0,
                Err("warming"),
            ),
            (
                "stale target is no data",
                &[(0, 0, 0), (60, 90, 10)],
                RequestSuccessRate,
                (60, 60),
                200,
                Err("no_data"),
            ),
            (
                "a history of half the window is judged on what there is",
                &[(0, 0, 0), (30, 9, 1)],
                RequestSuccessRate,
                (60, 60),
                30,
                Ok(90.0),
            ),
            // A restart: the new process has sampled for 20 s of a 60 s window.
            (
                "a younger history waits",
                &[(0, 0, 0), (20, 9, 1)],
                RequestSuccessRate,
                (60, 60),
                20,
                Err("warming"),
            ),
            (
                "a moment after a restart waits",
                &[(0, 0, 0), (1, 9, 1)],
                RequestSuccessRate,
                (60, 10),
                1,
                Err("warming"),
            ),
            // A release's first check: 10 s analysis interval, 60 s metric interval.
            (
                "a short analysis interval lowers the bar",
                &[(0, 0, 0), (10, 9, 1)],
                RequestSuccessRate,
                (60, 10),
                10,
                Ok(90.0),
            ),
        ];
        let t0 = Instant::now();
        for (name, samples, metric, (interval, min_window), now, want) in cases {
            let query = BuiltinQuery {
                min_window: Duration::from_secs(min_window),
                ..query(metric, interval)
            };
            let got = evaluate(
                [&history(t0, samples)],
                &query,
                t0 + Duration::from_secs(now),
            );
            match want {
                Ok(want) => {
                    let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        (got.value - want).abs() < 1e-9,
                        "{name}: {} != {want}",
                        got.value
                    );
                }
                Err(label) => assert_eq!(
                    got.as_ref().map_err(Error::label),
                    Err(label),
                    "{name}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn targets_add_up() {
        let t0 = Instant::now();
        let a = history(t0, &[(0, 0, 0), (60, 100, 0)]);
        let b = history(t0, &[(0, 0, 0), (60, 0, 100)]);
        let lonely = history(t0, &[(60, 5000, 0)]);
        let got = evaluate(
            [&a, &b, &lonely],
            &query(BuiltinMetric::RequestSuccessRate, 60),
            t0 + Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(got.value, 50.0);
        assert_eq!(got.targets, 2);
        assert_eq!(got.requests, 200.0);
        assert_eq!(got.covered, Duration::from_secs(60));
    }

    #[test]
    fn no_data_and_warming_reasons_say_why() {
        let t0 = Instant::now();
        let q = query(BuiltinMetric::RequestSuccessRate, 60);
        let cases = [
            (vec![], "no_data", "no samples"),
            (
                vec![history(t0, &[(100, 1, 0)])],
                "warming",
                "only one sample",
            ),
            (
                vec![history(t0, &[(90, 1, 0), (100, 2, 0)])],
                "warming",
                "sampled for 10s only; a check needs 30s",
            ),
            (
                vec![history(t0, &[(0, 1, 0), (10, 2, 0)])],
                "no_data",
                "older than 1m",
            ),
            (
                vec![history(t0, &[(0, 1, 0), (100, 1, 0)])],
                "no_data",
                "no requests to shop/cart",
            ),
        ];
        for (histories, label, want) in cases {
            let err = evaluate(histories.iter(), &q, t0 + Duration::from_secs(100)).unwrap_err();
            assert_eq!(err.label(), label, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn history_keeps_order_and_prunes() {
        let t0 = Instant::now();
        let mut h = history(t0, &[(0, 0, 0), (10, 1, 0), (20, 2, 0)]);
        h.push(Snapshot {
            taken_at: t0 + Duration::from_secs(5),
            metrics: RouterMetrics::default(),
        });
        assert_eq!(h.len(), 3, "an out-of-order snapshot is dropped");
        h.prune(t0 + Duration::from_secs(5), 10);
        assert_eq!(h.len(), 2);
        h.prune(t0, 1);
        assert_eq!(h.len(), 1);
    }
}
