//! The release decision: (Canary, observations, now) -> Plan. No IO happens here.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::spec::{ReleaseSpec, SpecError};
use crate::api::{Canary, CanaryCondition, CanaryStatus, MetricResult, Phase, ThresholdRange};

/// How long to wait before looking again while objects are being created.
const SETTLE: Duration = Duration::from_secs(5);

// === Observations ===

/// What the controller saw of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadState {
    /// The revision (pod template hash) it runs: computed for the target, recorded in an
    /// annotation for the primary.
    pub revision: Option<String>,
    /// `spec.replicas`.
    pub replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    /// The Deployment controller has seen the latest spec (`observedGeneration >= generation`).
    pub rollout_observed: bool,
}

impl WorkloadState {
    /// Ok when at least `percent` % of the wanted replicas run the latest template and are
    /// available; otherwise why not, in the words of the message users read.
    pub fn readiness(&self, percent: i32) -> Result<(), String> {
        if !self.rollout_observed {
            return Err("waiting for the rollout to be observed".into());
        }
        let wanted = (self.replicas.max(1) * percent + 99) / 100;
        if self.updated_replicas < wanted.min(self.replicas) || self.available_replicas < wanted {
            return Err(format!(
                "waiting for rollout to finish: {} of {} updated replicas are available",
                self.available_replicas.min(self.updated_replicas),
                self.replicas
            ));
        }
        Ok(())
    }
}

/// Why a metric has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricError {
    /// The query returned nothing: no traffic reached the canary.
    NoData(String),
    /// The provider failed or the query is wrong.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricOutcome {
    pub name: String,
    pub range: ThresholdRange,
    pub value: Result<f64, MetricError>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Revision of the target: hash of its pod template and the configs it uses.
    pub revision: String,
    pub target: Option<WorkloadState>,
    pub primary: Option<WorkloadState>,
    /// Results of the metric checks, present when [`analysis_due`] asked for them.
    pub metrics: Option<Vec<MetricOutcome>>,
    /// Hashes of the ConfigMaps and Secrets the target uses, by `Kind/name`.
    pub tracked_configs: BTreeMap<String, String>,
}

// === Plan ===

/// Traffic shares of one route; they always add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    primary: i32,
    canary: i32,
}

impl Weights {
    pub const ALL_PRIMARY: Weights = Weights {
        primary: 100,
        canary: 0,
    };

    /// Canary share in percent, clamped to 0..=100.
    pub fn canary(canary: i32) -> Weights {
        let canary = canary.clamp(0, 100);
        Weights {
            primary: 100 - canary,
            canary,
        }
    }

    pub fn primary_weight(self) -> i32 {
        self.primary
    }

    pub fn canary_weight(self) -> i32 {
        self.canary
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryAction {
    /// Leave the primary as it is.
    Keep,
    /// Create the primary from the target's template with this many replicas.
    Create { replicas: i32 },
    /// Copy the target's template (and configs) to the primary.
    Promote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// The effects of one reconcile, applied in order by the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Create or update the Services and DestinationRules (false while the spec is invalid).
    pub ensure_objects: bool,
    pub primary: PrimaryAction,
    /// Replicas to set on the target Deployment.
    pub target_replicas: Option<i32>,
    /// Weights to write to the routes; None leaves them as they are.
    pub routes: Option<Weights>,
    pub status: CanaryStatus,
    pub events: Vec<Event>,
    pub requeue_after: Duration,
}

/// True when the next reconcile should run the metric checks: a step is due and the
/// canary receives traffic. The controller queries metrics only then.
pub fn analysis_due(canary: &Canary, now: Timestamp) -> bool {
    let Ok(spec) = ReleaseSpec::from_spec(&canary.spec) else {
        return false;
    };
    let status = canary.status.clone().unwrap_or_default();
    status.phase == Some(Phase::Progressing)
        && status.canary_weight > 0
        && !spec.skip_analysis
        && !spec.suspended
        && step_wait(&status, &spec, now).is_none()
}

/// Time left until the next step, None when one is due.
fn step_wait(status: &CanaryStatus, spec: &ReleaseSpec, now: Timestamp) -> Option<Duration> {
    let last = status.last_step_time.as_ref()?.0;
    let elapsed = now.duration_since(last);
    let interval = SignedDuration::try_from(spec.interval).unwrap_or(SignedDuration::MAX);
    (elapsed < interval).then(|| {
        Duration::try_from(interval - elapsed)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(100))
    })
}

// === decide ===

pub fn decide(canary: &Canary, observed: &Observed, now: Timestamp) -> Plan {
    let spec = match ReleaseSpec::from_spec(&canary.spec) {
        Ok(spec) => spec,
        Err(err) => return invalid_spec(canary, err, now),
    };
    Decision::new(canary, &spec, observed, now).run()
}

fn invalid_spec(canary: &Canary, err: SpecError, now: Timestamp) -> Plan {
    let mut status = canary.status.clone().unwrap_or_default();
    let message = format!("invalid spec: {err}");
    let changed = set_condition(&mut status, "Ready", "False", "InvalidSpec", &message, now);
    Plan {
        ensure_objects: false,
        primary: PrimaryAction::Keep,
        target_replicas: None,
        routes: None,
        status,
        // Report once per distinct problem, not on every reconcile.
        events: if changed {
            vec![Event {
                type_: EventType::Warning,
                reason: "InvalidSpec",
                message,
            }]
        } else {
            vec![]
        },
        // A spec change reconciles at once; nothing to do until then.
        requeue_after: Duration::from_secs(300),
    }
}

struct Decision<'a> {
    canary: &'a Canary,
    spec: &'a ReleaseSpec,
    observed: &'a Observed,
    now: Timestamp,
    plan: Plan,
}

impl<'a> Decision<'a> {
    fn new(
        canary: &'a Canary,
        spec: &'a ReleaseSpec,
        observed: &'a Observed,
        now: Timestamp,
    ) -> Self {
        let mut status = canary.status.clone().unwrap_or_default();
        status.observed_generation = canary.metadata.generation;
        set_condition(&mut status, "Ready", "True", "Valid", "", now);
        Decision {
            canary,
            spec,
            observed,
            now,
            plan: Plan {
                ensure_objects: true,
                primary: PrimaryAction::Keep,
                target_replicas: None,
                routes: None,
                status,
                events: vec![],
                requeue_after: spec.interval,
            },
        }
    }

    fn run(mut self) -> Plan {
        if self.spec.suspended {
            return self.plan;
        }
        let Some(target) = self.observed.target.clone() else {
            let message = format!(
                "target Deployment {}.{} not found",
                self.canary.spec.target_ref.name,
                self.namespace()
            );
            if set_condition(
                &mut self.plan.status,
                "Ready",
                "False",
                "TargetNotFound",
                &message,
                self.now,
            ) {
                self.warn("TargetNotFound", message);
            }
            self.plan.ensure_objects = false;
            return self.plan;
        };
        match self.plan.status.phase {
            None | Some(Phase::Initializing) => self.initialize(&target),
            Some(Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting) => {
                self.idle(&target)
            }
            Some(Phase::Progressing | Phase::WaitingPromotion) => self.progress(&target),
            Some(Phase::Promoting) => self.promote(),
            Some(Phase::Finalising) => self.finalise(),
            Some(Phase::Terminating | Phase::Terminated) => {}
        }
        self.plan
    }

    // --- phases ---

    fn initialize(&mut self, target: &WorkloadState) {
        self.plan.routes = Some(Weights::ALL_PRIMARY);
        let Some(primary) = &self.observed.primary else {
            self.plan.primary = PrimaryAction::Create {
                replicas: target.replicas.max(1),
            };
            self.plan.status.target_replicas = Some(target.replicas.max(1));
            self.set_phase(Phase::Initializing);
            self.plan.requeue_after = SETTLE;
            return;
        };
        if let Err(why) = primary.readiness(self.spec.primary_ready_percent) {
            if self.plan.status.phase.is_none() {
                self.set_phase(Phase::Initializing);
            }
            self.plan.requeue_after = SETTLE;
            tracing::debug!(canary = %self.id(), "primary not ready: {why}");
            return;
        }
        let revision = self.observed.revision.clone();
        let status = &mut self.plan.status;
        status.last_applied_spec = Some(revision.clone());
        status.last_promoted_spec = Some(revision);
        status.tracked_configs = self.observed.tracked_configs.clone();
        status.target_replicas.get_or_insert(target.replicas.max(1));
        self.plan.target_replicas = Some(0);
        self.set_phase(Phase::Initialized);
        self.info("Synced", format!("Initialization done! {}", self.id()));
    }

    fn idle(&mut self, target: &WorkloadState) {
        self.plan.routes = Some(Weights::ALL_PRIMARY);
        let revision = &self.observed.revision;
        let status = &self.plan.status;
        let applied = status.last_applied_spec.as_deref() == Some(revision);
        let promoted = status.last_promoted_spec.as_deref() == Some(revision);
        if applied || promoted {
            if !applied {
                // The target went back to what the primary runs: nothing to release.
                self.plan.status.last_applied_spec = Some(revision.clone());
            }
            self.plan.target_replicas = Some(0);
            return;
        }
        // New revision.
        let replicas = self
            .plan
            .status
            .target_replicas
            .or(self.observed.primary.as_ref().map(|p| p.replicas))
            .unwrap_or(target.replicas)
            .max(1);
        self.plan.target_replicas = Some(replicas);
        self.start_run(revision.clone());
        self.info(
            "Synced",
            format!(
                "New revision detected! Scaling up {}.{}",
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
        );
    }

    fn start_run(&mut self, revision: String) {
        let status = &mut self.plan.status;
        status.last_applied_spec = Some(revision);
        status.canary_weight = 0;
        status.failed_checks = 0;
        status.iterations = 0;
        status.last_analysis.clear();
        status.last_step_time = Some(Time(self.now));
        self.set_phase(Phase::Progressing);
        self.plan.routes = Some(Weights::ALL_PRIMARY);
    }

    fn progress(&mut self, target: &WorkloadState) {
        let weight = self.plan.status.canary_weight;
        // Keep the routes as the status says, so a reconcile between steps changes nothing.
        self.plan.routes = Some(Weights::canary(weight));
        let revision = self.observed.revision.clone();
        if self.plan.status.last_applied_spec.as_deref() != Some(revision.as_str()) {
            self.plan.target_replicas = Some(target.replicas.max(1));
            self.start_run(revision);
            self.info(
                "Synced",
                format!(
                    "New revision detected! Restarting analysis for {}.{}",
                    self.canary.spec.target_ref.name,
                    self.namespace()
                ),
            );
            return;
        }
        if let Some(wait) = step_wait(&self.plan.status, self.spec, self.now) {
            self.plan.requeue_after = wait;
            return;
        }
        self.plan.status.last_step_time = Some(Time(self.now));

        if self.plan.status.failed_checks >= self.spec.threshold {
            let message = format!(
                "Rolling back {} failed checks threshold reached {}",
                self.id(),
                self.plan.status.failed_checks
            );
            return self.roll_back(message);
        }
        if let Some(why) = self.not_ready(target) {
            return self.wait_or_roll_back(why);
        }
        if self.spec.skip_analysis {
            self.info("Synced", format!("Skipping analysis for {}", self.id()));
            return self.start_promotion();
        }
        if weight > 0 && !self.checks_pass() {
            return;
        }
        match self.spec.steps.next(weight) {
            Some(next) => {
                if weight == 0 {
                    self.info(
                        "Synced",
                        format!(
                            "Starting canary analysis for {}.{}",
                            self.canary.spec.target_ref.name,
                            self.namespace()
                        ),
                    );
                }
                self.plan.status.canary_weight = next;
                self.plan.status.last_transition_time = Some(Time(self.now));
                self.plan.routes = Some(Weights::canary(next));
                self.info(
                    "Synced",
                    format!("Advance {} canary weight {next}", self.id()),
                );
            }
            None => self.start_promotion(),
        }
    }

    fn start_promotion(&mut self) {
        self.plan.primary = PrimaryAction::Promote;
        // Traffic stays split until the primary runs the new template.
        self.plan.routes = None;
        self.info(
            "Synced",
            format!(
                "Copying {}.{} template spec to {}-primary.{}",
                self.canary.spec.target_ref.name,
                self.namespace(),
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
        );
        self.set_phase(Phase::Promoting);
    }

    fn promote(&mut self) {
        if let Some(wait) = step_wait(&self.plan.status, self.spec, self.now) {
            self.plan.requeue_after = wait;
            return;
        }
        self.plan.status.last_step_time = Some(Time(self.now));
        let promoted = self.plan.status.last_applied_spec.clone();
        let primary_ready = match &self.observed.primary {
            None => Err("primary Deployment not found".to_string()),
            Some(p) if p.revision != promoted => Err("primary rollout not started".to_string()),
            Some(p) => p.readiness(self.spec.primary_ready_percent),
        };
        if let Err(why) = primary_ready {
            // Re-copy in case the first copy was lost; the apply is idempotent.
            self.plan.primary = PrimaryAction::Promote;
            self.info(
                "Synced",
                format!(
                    "{}-primary.{} not ready: {why}",
                    self.canary.spec.target_ref.name,
                    self.namespace()
                ),
            );
            return;
        }
        self.plan.routes = Some(Weights::ALL_PRIMARY);
        self.info(
            "Synced",
            format!("Routing all traffic to primary {}", self.id()),
        );
        self.set_phase(Phase::Finalising);
    }

    fn finalise(&mut self) {
        self.plan.routes = Some(Weights::ALL_PRIMARY);
        if let Some(wait) = step_wait(&self.plan.status, self.spec, self.now) {
            self.plan.requeue_after = wait;
            return;
        }
        self.plan.status.last_step_time = Some(Time(self.now));
        self.plan.target_replicas = Some(0);
        self.plan.status.last_promoted_spec = self.plan.status.last_applied_spec.clone();
        self.plan.status.tracked_configs = self.observed.tracked_configs.clone();
        self.set_phase(Phase::Succeeded);
        self.info(
            "Synced",
            format!(
                "Promotion completed! Scaling down {}.{}",
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
        );
    }

    // --- steps ---

    fn not_ready(&self, target: &WorkloadState) -> Option<String> {
        let name = &self.canary.spec.target_ref.name;
        let ns = self.namespace();
        if let Err(why) = target.readiness(self.spec.canary_ready_percent) {
            return Some(format!("canary deployment {name}.{ns} not ready: {why}"));
        }
        match &self.observed.primary {
            None => Some(format!("primary deployment {name}-primary.{ns} not found")),
            Some(p) => p
                .readiness(self.spec.primary_ready_percent)
                .err()
                .map(|why| format!("primary deployment {name}-primary.{ns} not ready: {why}")),
        }
    }

    /// Not ready is not a failed check; past the progress deadline it is a rollback.
    fn wait_or_roll_back(&mut self, why: String) {
        let since = self
            .plan
            .status
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(self.now);
        let waited = Duration::try_from(self.now.duration_since(since)).unwrap_or_default();
        if waited > self.spec.progress_deadline {
            let message = format!(
                "Rolling back {} progress deadline exceeded: {why}",
                self.id()
            );
            self.roll_back(message);
        } else {
            self.info("Synced", why);
        }
    }

    /// Judges the metric outcomes; records a failed check and returns false on any failure.
    fn checks_pass(&mut self) -> bool {
        let Some(outcomes) = &self.observed.metrics else {
            // The controller did not run the checks (e.g. they were not due when it looked);
            // take the step at the next reconcile.
            self.plan.status.last_step_time = self
                .canary
                .status
                .as_ref()
                .and_then(|s| s.last_step_time.clone());
            self.plan.requeue_after = SETTLE;
            return false;
        };
        let mut results = Vec::with_capacity(outcomes.len());
        let mut failures = Vec::new();
        for outcome in outcomes {
            let (passed, message) = judge(outcome, &self.canary_label());
            if !passed {
                failures.push(message.clone());
            }
            results.push(MetricResult {
                name: outcome.name.clone(),
                value: outcome.value.as_ref().ok().copied(),
                passed,
                message,
            });
        }
        self.plan.status.last_analysis = results;
        if failures.is_empty() {
            return true;
        }
        self.plan.status.failed_checks += 1;
        for message in failures {
            self.warn("Synced", message);
        }
        false
    }

    fn roll_back(&mut self, message: String) {
        self.warn("Synced", message);
        self.plan.routes = Some(Weights::ALL_PRIMARY);
        self.plan.target_replicas = Some(0);
        self.plan.status.canary_weight = 0;
        self.set_phase(Phase::Failed);
        self.warn(
            "Synced",
            format!(
                "Canary failed! Scaling down {}.{}",
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
        );
    }

    // --- helpers ---

    fn set_phase(&mut self, phase: Phase) {
        let status = &mut self.plan.status;
        if status.phase != Some(phase) {
            status.phase = Some(phase);
            status.last_transition_time = Some(Time(self.now));
            status.last_step_time = Some(Time(self.now));
        }
        if !matches!(phase, Phase::Progressing | Phase::WaitingPromotion) {
            // Flagger shows weight 0 outside the analysis; the routes keep their own weights.
            status.canary_weight = 0;
            status.iterations = 0;
        }
        let (value, reason) = match phase {
            Phase::Initialized | Phase::Succeeded => ("True", phase.as_str()),
            Phase::Failed => ("False", phase.as_str()),
            _ => ("Unknown", phase.as_str()),
        };
        let message = match phase {
            Phase::Initialized => "Deployment initialization completed.",
            Phase::Succeeded => "Canary analysis completed successfully, promotion finished.",
            Phase::Failed => "Canary analysis failed, Deployment scaled to zero.",
            Phase::Progressing => "New revision detected, progressing canary analysis.",
            Phase::Promoting => "Canary analysis completed, starting primary rolling update.",
            Phase::Finalising => "Canary analysis completed, routing all traffic to primary.",
            _ => "",
        };
        set_condition(status, "Promoted", value, reason, message, self.now);
    }

    fn namespace(&self) -> &str {
        self.canary
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    fn id(&self) -> String {
        format!(
            "{}.{}",
            self.canary.metadata.name.as_deref().unwrap_or(""),
            self.namespace()
        )
    }

    fn canary_label(&self) -> String {
        format!("{}.{}", self.canary.spec.target_ref.name, self.namespace())
    }

    fn info(&mut self, reason: &'static str, message: String) {
        self.plan.events.push(Event {
            type_: EventType::Normal,
            reason,
            message,
        });
    }

    fn warn(&mut self, reason: &'static str, message: String) {
        self.plan.events.push(Event {
            type_: EventType::Warning,
            reason,
            message,
        });
    }
}

/// Pass or fail for one metric, with the message users read in events.
fn judge(outcome: &MetricOutcome, workload: &str) -> (bool, String) {
    let name = &outcome.name;
    match &outcome.value {
        Err(MetricError::NoData(detail)) => (
            false,
            format!(
                "Halt advancement no values found for metric {name}: no traffic reached the canary {workload} ({detail})"
            ),
        ),
        Err(MetricError::Failed(detail)) => (
            false,
            format!("Metric query failed for {name}: {detail}"),
        ),
        Ok(value) => {
            if let Some(min) = outcome.range.min {
                if *value < min {
                    return (
                        false,
                        format!("Halt {workload} advancement {name} {value:.2} < {min}"),
                    );
                }
            }
            if let Some(max) = outcome.range.max {
                if *value > max {
                    return (
                        false,
                        format!("Halt {workload} advancement {name} {value:.2} > {max}"),
                    );
                }
            }
            (true, format!("{name} {value:.2} within range"))
        }
    }
}

/// Sets a condition; returns true when its status, reason or message changed.
fn set_condition(
    status: &mut CanaryStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let now = Time(now);
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == value && c.reason == reason && c.message == message => false,
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now.clone());
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
            c.last_update_time = Some(now);
            true
        }
        None => {
            status.conditions.push(CanaryCondition {
                type_: type_.into(),
                status: value.into(),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
                reason: reason.into(),
                message: message.into(),
            });
            true
        }
    }
}
