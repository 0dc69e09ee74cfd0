//! The release settings of a Canary, validated once so the decision never meets a bad value.

use std::time::Duration;

pub use crate::analysis::BuiltinMetric;
use std::collections::BTreeSet;

use crate::api::{
    CanaryMetric, CanarySpec, NoDataPolicy, ThresholdRange, WebhookType, DEFAULT_INTERVAL,
    DEFAULT_PROGRESS_DEADLINE_SECONDS,
};
use crate::duration::{self, parse_prometheus};

/// A spec the controller cannot act on: the field at fault and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

impl SpecError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// How traffic moves from the primary to the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steps {
    /// `stepWeight` added until `maxWeight`.
    Linear { step: i32, max: i32 },
    /// Explicit ascending weights; the last one is the maximum.
    Explicit(Vec<i32>),
}

impl Steps {
    /// The weight after `current`, or None when the maximum is reached.
    pub fn next(&self, current: i32) -> Option<i32> {
        match self {
            Steps::Linear { step, max } => (current < *max).then(|| (current + step).min(*max)),
            Steps::Explicit(weights) => weights.iter().copied().find(|w| *w > current),
        }
    }

    pub fn max(&self) -> i32 {
        match self {
            Steps::Linear { max, .. } => *max,
            Steps::Explicit(weights) => weights.last().copied().unwrap_or(0),
        }
    }
}

/// How a release moves traffic, inferred from the analysis fields as Flagger does:
/// `iterations` with `match` is A/B testing, `iterations` alone is Blue/Green,
/// otherwise weights move step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Canary {
        steps: Steps,
        /// Percent of requests mirrored to the canary during one step before shifting.
        mirror: Option<i32>,
    },
    /// The `match`ed requests go to the canary for `iterations` checks.
    AbTesting { iterations: i32 },
    /// The canary gets no routed traffic (a mirrored copy with `mirror`) for `iterations`
    /// checks, then all traffic switches to it while the primary is promoted.
    BlueGreen {
        iterations: i32,
        mirror: Option<i32>,
    },
}

/// A metric check with its accepted range.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricCheck {
    pub name: String,
    /// Query window.
    pub interval: Duration,
    pub range: ThresholdRange,
    pub source: MetricSource,
    pub on_no_data: NoDataPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricSource {
    Builtin(BuiltinMetric),
    Template {
        name: String,
        namespace: Option<String>,
    },
    /// Flagger's deprecated inline query.
    Query(String),
}

/// The validated settings the decision works with.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSpec {
    pub interval: Duration,
    pub threshold: i32,
    pub strategy: Strategy,
    /// Weight moved back to the primary per step once it runs the new version.
    pub step_weight_promotion: Option<i32>,
    pub progress_deadline: Duration,
    pub primary_ready_percent: i32,
    pub canary_ready_percent: i32,
    pub skip_analysis: bool,
    pub suspended: bool,
    pub metrics: Vec<MetricCheck>,
    /// Webhook types the Canary declares; a gate without hooks passes.
    pub hooks: BTreeSet<WebhookType>,
    /// Gate types with `muteAlert: true`: waiting on them is not alerted.
    pub muted_gates: BTreeSet<WebhookType>,
}

impl ReleaseSpec {
    pub fn has_hooks(&self, kind: WebhookType) -> bool {
        self.hooks.contains(&kind)
    }
}

impl ReleaseSpec {
    pub fn from_spec(spec: &CanarySpec) -> Result<Self, SpecError> {
        if spec.target_ref.kind != "Deployment" {
            return Err(SpecError::new(
                "spec.targetRef.kind",
                format!(
                    "kind {:?} is not supported: write Deployment",
                    spec.target_ref.kind
                ),
            ));
        }
        let analysis = &spec.analysis;
        let interval = analysis.interval.as_deref().unwrap_or(DEFAULT_INTERVAL);
        let interval = duration::positive(interval, parse_prometheus)
            .map_err(|e| SpecError::new("spec.analysis.interval", e.to_string()))?;
        let strategy = strategy_from(spec)?;
        let deadline = spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS);
        if deadline < 1 {
            return Err(SpecError::new(
                "spec.progressDeadlineSeconds",
                "write a number of seconds of at least 1",
            ));
        }
        let metrics = analysis
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| metric_check(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReleaseSpec {
            interval,
            threshold: analysis.threshold.unwrap_or(1).max(1),
            strategy,
            step_weight_promotion: match analysis.step_weight_promotion {
                None | Some(0) => None,
                Some(w) if (1..=100).contains(&w) => Some(w),
                Some(w) => {
                    return Err(SpecError::new(
                        "spec.analysis.stepWeightPromotion",
                        format!("{w} is not a weight: write 1 to 100"),
                    ))
                }
            },
            progress_deadline: Duration::from_secs(deadline as u64),
            primary_ready_percent: percent(
                "primaryReadyThreshold",
                analysis.primary_ready_threshold,
            )?,
            canary_ready_percent: percent("canaryReadyThreshold", analysis.canary_ready_threshold)?,
            skip_analysis: spec.skip_analysis.unwrap_or(false),
            suspended: spec.suspend.unwrap_or(false),
            metrics,
            hooks: analysis
                .webhooks
                .iter()
                .map(|h| h.webhook_type.unwrap_or_default())
                .collect(),
            muted_gates: analysis
                .webhooks
                .iter()
                .filter(|h| h.mute_alert == Some(true))
                .map(|h| h.webhook_type.unwrap_or_default())
                .collect(),
        })
    }
}

fn strategy_from(spec: &CanarySpec) -> Result<Strategy, SpecError> {
    let analysis = &spec.analysis;
    let mirror = match (analysis.mirror.unwrap_or(false), analysis.mirror_weight) {
        (false, _) => None,
        (true, None | Some(0)) => Some(100),
        (true, Some(w)) if (1..=100).contains(&w) => Some(w),
        (true, Some(w)) => {
            return Err(SpecError::new(
                "spec.analysis.mirrorWeight",
                format!("{w} is not a percentage: write 1 to 100"),
            ))
        }
    };
    match analysis.iterations {
        None | Some(0) => Ok(Strategy::Canary {
            steps: steps_from(spec)?,
            mirror,
        }),
        Some(n) if n < 0 => Err(SpecError::new(
            "spec.analysis.iterations",
            "write a number of checks of at least 1",
        )),
        Some(iterations) if !analysis.matches.is_empty() => {
            if mirror.is_some() {
                return Err(SpecError::new(
                    "spec.analysis.mirror",
                    "A/B testing (iterations with match) sends the matched requests to the canary: remove mirror, or remove match for Blue/Green with mirroring",
                ));
            }
            Ok(Strategy::AbTesting { iterations })
        }
        Some(iterations) => Ok(Strategy::BlueGreen { iterations, mirror }),
    }
}

fn percent(field: &str, value: Option<i32>) -> Result<i32, SpecError> {
    match value {
        None => Ok(100),
        Some(v) if (0..=100).contains(&v) => Ok(v),
        Some(v) => Err(SpecError::new(
            format!("spec.analysis.{field}"),
            format!("{v} is not a percentage: write 0 to 100"),
        )),
    }
}

fn steps_from(spec: &CanarySpec) -> Result<Steps, SpecError> {
    let analysis = &spec.analysis;
    if !analysis.step_weights.is_empty() {
        let weights = &analysis.step_weights;
        if weights.iter().any(|w| !(1..=100).contains(w)) {
            return Err(SpecError::new(
                "spec.analysis.stepWeights",
                "every weight must be between 1 and 100",
            ));
        }
        if weights.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SpecError::new(
                "spec.analysis.stepWeights",
                format!("weights must ascend, e.g. [1, 10, 50]; got {weights:?}"),
            ));
        }
        return Ok(Steps::Explicit(weights.clone()));
    }
    let max = analysis.max_weight.unwrap_or(100);
    if !(1..=100).contains(&max) {
        return Err(SpecError::new(
            "spec.analysis.maxWeight",
            "write a weight between 1 and 100",
        ));
    }
    match analysis.step_weight {
        Some(step) if step >= 1 && step <= max => Ok(Steps::Linear { step, max }),
        Some(step) => Err(SpecError::new(
            "spec.analysis.stepWeight",
            format!("{step} must be between 1 and maxWeight ({max})"),
        )),
        None => Err(SpecError::new(
            "spec.analysis.stepWeight",
            "write stepWeight (e.g. 10) or stepWeights (e.g. [5, 10, 50])",
        )),
    }
}

fn metric_check(index: usize, metric: &CanaryMetric) -> Result<MetricCheck, SpecError> {
    let field = format!("spec.analysis.metrics[{index}]");
    let interval = match metric.interval.as_deref() {
        None => Duration::from_secs(60),
        Some(text) => duration::positive(text, parse_prometheus)
            .map_err(|e| SpecError::new(format!("{field}.interval"), e.to_string()))?,
    };
    let source = if let Some(template) = &metric.template_ref {
        MetricSource::Template {
            name: template.name.clone(),
            namespace: template.namespace.clone(),
        }
    } else if let Some(query) = &metric.query {
        MetricSource::Query(query.clone())
    } else if let Ok(builtin) = metric.name.parse::<BuiltinMetric>() {
        MetricSource::Builtin(builtin)
    } else {
        return Err(SpecError::new(
            format!("{field}.name"),
            format!(
                "{:?} is not a built-in metric: use request-success-rate or request-duration, or set templateRef",
                metric.name
            ),
        ));
    };
    // Flagger's deprecated `threshold` is a minimum for the success rate and a maximum otherwise.
    let range = match (metric.threshold_range, metric.threshold) {
        (Some(range), _) => range,
        (None, Some(t)) if source == MetricSource::Builtin(BuiltinMetric::RequestSuccessRate) => {
            ThresholdRange {
                min: Some(t),
                max: None,
            }
        }
        (None, Some(t)) => ThresholdRange {
            min: None,
            max: Some(t),
        },
        (None, None) => {
            return Err(SpecError::new(
                format!("{field}.thresholdRange"),
                "write thresholdRange with min and/or max, e.g. {min: 99}",
            ))
        }
    };
    if range.min.is_none() && range.max.is_none() {
        return Err(SpecError::new(
            format!("{field}.thresholdRange"),
            "set min and/or max",
        ));
    }
    if let (Some(min), Some(max)) = (range.min, range.max) {
        if min > max {
            return Err(SpecError::new(
                format!("{field}.thresholdRange"),
                format!("min ({min}) is above max ({max})"),
            ));
        }
    }
    Ok(MetricCheck {
        name: metric.name.clone(),
        interval,
        range,
        source,
        on_no_data: metric.on_no_data.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_math() {
        let linear = Steps::Linear { step: 10, max: 50 };
        let explicit = Steps::Explicit(vec![1, 10, 60]);
        let odd = Steps::Linear { step: 30, max: 50 };
        let cases: [(&Steps, i32, Option<i32>); 9] = [
            (&linear, 0, Some(10)),
            (&linear, 40, Some(50)),
            (&linear, 50, None),
            (&odd, 30, Some(50)),
            (&odd, 50, None),
            (&explicit, 0, Some(1)),
            (&explicit, 1, Some(10)),
            (&explicit, 10, Some(60)),
            (&explicit, 60, None),
        ];
        for (steps, current, want) in cases {
            assert_eq!(steps.next(current), want, "{steps:?} after {current}");
        }
        assert_eq!(explicit.max(), 60);
        assert_eq!(linear.max(), 50);
    }

    fn spec(yaml: &str) -> CanarySpec {
        serde_yaml::from_str(yaml).expect("test spec parses")
    }

    const BASE: &str = "targetRef: {kind: Deployment, name: catalog}\nservice: {port: 80}\n";

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            ("analysis: {interval: 10s}", "spec.analysis.stepWeight"),
            ("analysis: {stepWeight: 60, maxWeight: 50}", "spec.analysis.stepWeight"),
            ("analysis: {stepWeights: [10, 5]}", "spec.analysis.stepWeights"),
            ("analysis: {stepWeight: 10, interval: 0s}", "spec.analysis.interval"),
            ("analysis: {iterations: -1}", "spec.analysis.iterations"),
            (
                "analysis: {iterations: 5, mirror: true, match: [{headers: {x: {exact: y}}}]}",
                "spec.analysis.mirror",
            ),
            ("analysis: {stepWeight: 10, mirror: true, mirrorWeight: 101}", "spec.analysis.mirrorWeight"),
            ("analysis: {stepWeight: 10, stepWeightPromotion: 120}", "spec.analysis.stepWeightPromotion"),
            (
                "analysis: {stepWeight: 10, metrics: [{name: cpu, thresholdRange: {max: 1}}]}",
                "spec.analysis.metrics[0].name",
            ),
            (
                "analysis: {stepWeight: 10, metrics: [{name: request-duration}]}",
                "spec.analysis.metrics[0].thresholdRange",
            ),
            (
                "analysis: {stepWeight: 10, metrics: [{name: request-duration, thresholdRange: {min: 5, max: 1}}]}",
                "spec.analysis.metrics[0].thresholdRange",
            ),
        ];
        for (analysis, field) in cases {
            let err =
                ReleaseSpec::from_spec(&spec(&format!("{BASE}{analysis}"))).expect_err(analysis);
            assert_eq!(err.field, field, "{analysis}: {err}");
        }
        let mut wrong_kind = spec(&format!("{BASE}analysis: {{stepWeight: 10}}"));
        wrong_kind.target_ref.kind = "DaemonSet".into();
        assert_eq!(
            ReleaseSpec::from_spec(&wrong_kind).unwrap_err().field,
            "spec.targetRef.kind"
        );
    }

    #[test]
    fn scenario_b_spec() {
        let s = ReleaseSpec::from_spec(&spec(&format!(
            "{BASE}analysis:
  interval: 45s
  threshold: 5
  maxWeight: 50
  stepWeight: 10
  metrics:
  - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 1m}}
  - {{name: request-duration, threshold: 500, interval: 30s}}
"
        )))
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(45));
        assert_eq!(s.threshold, 5);
        assert_eq!(
            s.strategy,
            Strategy::Canary {
                steps: Steps::Linear { step: 10, max: 50 },
                mirror: None
            }
        );
        assert_eq!(s.progress_deadline, Duration::from_secs(600));
        assert_eq!(
            s.metrics[0].source,
            MetricSource::Builtin(BuiltinMetric::RequestSuccessRate)
        );
        assert_eq!(s.metrics[1].range.max, Some(500.0));
        assert_eq!(s.metrics[1].interval, Duration::from_secs(30));
    }

    #[test]
    fn strategy_is_inferred_as_flagger_does() {
        let cases = [
            (
                "analysis: {stepWeight: 20, mirror: true}",
                Strategy::Canary {
                    steps: Steps::Linear { step: 20, max: 100 },
                    mirror: Some(100),
                },
            ),
            (
                "analysis: {stepWeights: [5, 50], mirror: true, mirrorWeight: 30}",
                Strategy::Canary {
                    steps: Steps::Explicit(vec![5, 50]),
                    mirror: Some(30),
                },
            ),
            (
                "analysis: {iterations: 4, match: [{headers: {x-canary: {exact: insider}}}]}",
                Strategy::AbTesting { iterations: 4 },
            ),
            (
                "analysis: {iterations: 3}",
                Strategy::BlueGreen {
                    iterations: 3,
                    mirror: None,
                },
            ),
            (
                // iterations win over stepWeight, as in Flagger.
                "analysis: {iterations: 3, stepWeight: 10, mirror: true}",
                Strategy::BlueGreen {
                    iterations: 3,
                    mirror: Some(100),
                },
            ),
        ];
        for (analysis, want) in cases {
            let got = ReleaseSpec::from_spec(&spec(&format!("{BASE}{analysis}"))).unwrap();
            assert_eq!(got.strategy, want, "{analysis}");
        }
    }
}
