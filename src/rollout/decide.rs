//! The release decision: (Canary, observations, now) -> Plan. No IO happens here.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::spec::{ReleaseSpec, SpecError, Strategy};
use crate::api::{
    AlertSeverity, Canary, CanaryCondition, CanaryStatus, MetricResult, NoDataPolicy, Phase,
    ThresholdRange, WebhookType,
};

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
    /// The built-in scrape has not watched long enough to measure a window (a fresh
    /// controller after a restart or a leader change): not judged, looked at again.
    Warming(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricOutcome {
    pub name: String,
    pub range: ThresholdRange,
    pub value: Result<f64, MetricError>,
    pub on_no_data: NoDataPolicy,
}

/// Outcome of the webhooks of one type: Ok when every hook answered 2xx, else why not.
pub type GateResult = Result<(), String>;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// Revision of the target: hash of its pod template and the configs it uses.
    pub revision: String,
    pub target: Option<WorkloadState>,
    pub primary: Option<WorkloadState>,
    /// Results of the metric checks, present once the decision asked for them.
    pub metrics: Option<Vec<MetricOutcome>>,
    /// Results of the webhooks the decision asked for, by type.
    pub gates: BTreeMap<WebhookType, GateResult>,
    /// Hashes of the ConfigMaps and Secrets the target uses, by `Kind/name`.
    pub tracked_configs: BTreeMap<String, String>,
}

// === Runtime control ===

/// Annotations users (or `kubectl sluice`) set on a Canary to act on the current run.
/// The value of the one-shot actions is the revision (`status.lastAppliedSpec`) they are
/// meant for, so an action never applies to a release it was not written for.
pub mod actions {
    pub const PROMOTE: &str = "sluice.dev/promote";
    pub const ABORT: &str = "sluice.dev/abort";
    pub const RETRY: &str = "sluice.dev/retry";
    /// `"true"` holds the run where it is; removing it resumes.
    pub const PAUSED: &str = "sluice.dev/paused";
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

/// What the routes carry: the weights of the analysed route, and the share of requests
/// mirrored to the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    pub weights: Weights,
    /// Percent of the primary's requests copied to the canary (responses discarded).
    pub mirror: Option<i32>,
    /// Session-affinity cookie value of the current release (with `sessionAffinity`).
    pub session: Option<String>,
}

impl Routes {
    pub const ALL_PRIMARY: Routes = Routes {
        weights: Weights::ALL_PRIMARY,
        mirror: None,
        session: None,
    };

    pub fn canary(weight: i32) -> Routes {
        Routes {
            weights: Weights::canary(weight),
            mirror: None,
            session: None,
        }
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
    /// Severity for the Canary's alert providers; None is not alerted.
    pub alert: Option<AlertSeverity>,
}

/// An observation the decision needs before it can go on. The controller gathers it and
/// decides again; nothing of a plan with a need is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Call the webhooks of this type.
    Hooks(WebhookType),
    /// Run the metric checks.
    Metrics,
}

/// The effects of one reconcile, applied in order by the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Set when the decision is incomplete: gather this and decide again.
    pub need: Option<Need>,
    /// Create or update the Services and DestinationRules (false while the spec is invalid).
    pub ensure_objects: bool,
    pub primary: PrimaryAction,
    /// Replicas to set on the target Deployment.
    pub target_replicas: Option<i32>,
    /// What to write to the routes; None leaves them as they are.
    pub routes: Option<Routes>,
    pub status: CanaryStatus,
    pub events: Vec<Event>,
    /// Action annotations handled (or stale) to remove from the Canary.
    pub consumed_actions: Vec<&'static str>,
    /// The run ended (Succeeded or Failed): call the post-rollout webhooks.
    pub post_rollout: bool,
    pub requeue_after: Duration,
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

pub(super) fn empty_plan(status: CanaryStatus, requeue_after: Duration) -> Plan {
    Plan {
        need: None,
        ensure_objects: false,
        primary: PrimaryAction::Keep,
        target_replicas: None,
        routes: None,
        status,
        events: vec![],
        consumed_actions: vec![],
        post_rollout: false,
        requeue_after,
    }
}

fn invalid_spec(canary: &Canary, err: SpecError, now: Timestamp) -> Plan {
    let mut status = canary.status.clone().unwrap_or_default();
    let message = format!("invalid spec: {err}");
    let changed = set_condition(&mut status, "Ready", "False", "InvalidSpec", &message, now);
    // A spec change reconciles at once; nothing to do until then.
    let mut plan = empty_plan(status, Duration::from_secs(300));
    // Report once per distinct problem, not on every reconcile.
    if changed {
        plan.events.push(Event {
            type_: EventType::Warning,
            reason: "InvalidSpec",
            message,
            alert: Some(AlertSeverity::Error),
        });
    }
    plan
}

/// A gate's answer: pass, fail with the reason, or not asked yet (the plan needs it).
enum Gate {
    Pass,
    Fail(String),
    Pending,
}

/// The analysis of one step.
enum Checks {
    Pass,
    /// A failed check was recorded.
    Failed,
    /// Wait for data without counting a failure.
    Hold(String),
    /// The plan needs an observation first.
    Pending,
    /// Not judged yet (the metrics cannot cover a window); run again on the next reconcile.
    Wait(String),
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
        let mut plan = empty_plan(status, spec.interval);
        plan.ensure_objects = true;
        Decision {
            canary,
            spec,
            observed,
            now,
            plan,
        }
    }

    fn run(mut self) -> Plan {
        if self.spec.suspended {
            self.plan.ensure_objects = false;
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
        let paused = self.paused();
        let was_paused = self
            .plan
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Paused" && c.status == "True");
        if paused != was_paused {
            let (value, reason, message, verb) = if paused {
                (
                    "True",
                    "Paused",
                    "held by the sluice.dev/paused annotation",
                    "Paused",
                )
            } else {
                ("False", "Resumed", "", "Resumed")
            };
            set_condition(
                &mut self.plan.status,
                "Paused",
                value,
                reason,
                message,
                self.now,
            );
            self.info("Synced", format!("{verb} {}", self.id()));
        }
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
        // Session cookies are named after the release they pin clients to.
        if self.canary.spec.analysis.session_affinity.is_some() {
            if let (Some(routes), Strategy::Canary { .. }) =
                (&mut self.plan.routes, &self.spec.strategy)
            {
                routes.session = self.plan.status.last_applied_spec.clone();
            }
        }
        self.plan
    }

    // --- phases ---

    fn initialize(&mut self, target: &WorkloadState) {
        self.plan.routes = Some(Routes::ALL_PRIMARY);
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
            // Nothing to roll back to yet: past the deadline, say so once and keep waiting.
            if self.past_deadline() {
                let message = format!(
                    "{}-primary.{} not ready after progressDeadlineSeconds ({}s): {why}",
                    self.canary.spec.target_ref.name,
                    self.namespace(),
                    self.spec.progress_deadline.as_secs()
                );
                self.report_deadline(message);
            }
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
        self.plan.routes = Some(Routes::ALL_PRIMARY);
        // Promote and abort only act on a running release.
        self.consume_stale(&[actions::PROMOTE, actions::ABORT]);
        let revision = self.observed.revision.clone();
        let status = &self.plan.status;
        let applied = status.last_applied_spec.as_deref() == Some(revision.as_str());
        let promoted = status.last_promoted_spec.as_deref() == Some(revision.as_str());
        let retry = self.plan.status.phase == Some(Phase::Failed)
            && applied
            && self.action(actions::RETRY) == Some(revision.as_str());
        if !retry {
            self.consume_stale(&[actions::RETRY]);
        }
        if (applied || promoted) && !retry {
            if !applied {
                // The target went back to what the primary runs: nothing to release.
                self.plan.status.last_applied_spec = Some(revision.clone());
                if self.plan.status.phase == Some(Phase::Waiting) {
                    self.set_phase(Phase::Succeeded);
                }
            }
            self.plan.target_replicas = Some(0);
            return;
        }
        if self.paused() {
            return;
        }
        // A new revision (or a retry): the confirm-rollout gate comes before any scaling.
        match self.gate(WebhookType::ConfirmRollout) {
            Gate::Pending => return,
            Gate::Fail(why) => {
                if self.plan.status.phase != Some(Phase::Waiting) {
                    self.set_phase(Phase::Waiting);
                    self.gate_notice(
                        WebhookType::ConfirmRollout,
                        format!("Halt {} advancement waiting for approval: {why}", self.id()),
                    );
                }
                return;
            }
            Gate::Pass => {}
        }
        let replicas = self
            .plan
            .status
            .target_replicas
            .or(self.observed.primary.as_ref().map(|p| p.replicas))
            .unwrap_or(target.replicas)
            .max(1);
        self.plan.target_replicas = Some(replicas);
        self.start_run(revision);
        if retry {
            self.plan.consumed_actions.push(actions::RETRY);
            self.alert(
                "Synced",
                format!(
                    "Retrying revision of {}.{} on request",
                    self.canary.spec.target_ref.name,
                    self.namespace()
                ),
                AlertSeverity::Info,
            );
        } else {
            self.alert(
                "Synced",
                format!(
                    "New revision detected! Scaling up {}.{}",
                    self.canary.spec.target_ref.name,
                    self.namespace()
                ),
                AlertSeverity::Info,
            );
        }
    }

    fn start_run(&mut self, revision: String) {
        let status = &mut self.plan.status;
        status.last_applied_spec = Some(revision);
        status.canary_weight = 0;
        status.failed_checks = 0;
        status.iterations = 0;
        status.mirrored = false;
        status.last_analysis.clear();
        status.last_step_time = Some(Time(self.now));
        self.set_phase(Phase::Progressing);
        self.plan.routes = Some(Routes::ALL_PRIMARY);
    }

    fn progress(&mut self, target: &WorkloadState) {
        // Keep the routes as the status says, so a reconcile between steps changes nothing.
        self.plan.routes = Some(self.running_routes());
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
        self.consume_stale(&[actions::RETRY]);
        if self.action(actions::ABORT) == Some(revision.as_str()) {
            self.plan.consumed_actions.push(actions::ABORT);
            return self.roll_back(format!("Rolling back {} aborted on request", self.id()));
        }
        self.consume_stale(&[actions::ABORT]);
        if self.paused() {
            // Held: no step, no check, no deadline; the next step is a full interval after resuming.
            self.plan.status.last_step_time = Some(Time(self.now));
            self.plan.status.last_transition_time = Some(Time(self.now));
            return;
        }
        // A requested promotion acts at once, still gated by readiness.
        if self.action(actions::PROMOTE) == Some(revision.as_str()) {
            if let Some(why) = self.not_ready(target) {
                self.plan.requeue_after = SETTLE;
                return self.info("Synced", format!("Promotion requested, waiting: {why}"));
            }
            self.plan.consumed_actions.push(actions::PROMOTE);
            self.plan.status.last_step_time = Some(Time(self.now));
            self.info(
                "Synced",
                format!(
                    "Promotion of {} requested: skipping the remaining steps",
                    self.id()
                ),
            );
            return self.start_promotion();
        }
        if let Some(wait) = step_wait(&self.plan.status, self.spec, self.now) {
            self.plan.requeue_after = wait;
            return;
        }
        let previous_step = self.plan.status.last_step_time.clone();
        self.plan.status.last_step_time = Some(Time(self.now));

        match self.gate(WebhookType::Rollback) {
            Gate::Pending => return,
            // A rollback hook answering 2xx asks for the rollback.
            Gate::Pass if self.spec.has_hooks(WebhookType::Rollback) => {
                return self
                    .roll_back(format!("Rolling back {} manual webhook invoked", self.id()));
            }
            _ => {}
        }
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
        self.consume_stale(&[actions::PROMOTE]);
        let checks = if self.analysis_running() {
            self.run_checks()
        } else {
            // Before any traffic reaches the canary only the pre-rollout hooks run.
            match self.gate(WebhookType::PreRollout) {
                Gate::Pass => Checks::Pass,
                Gate::Pending => Checks::Pending,
                Gate::Fail(why) => {
                    self.plan.status.failed_checks += 1;
                    self.warn(
                        "Synced",
                        format!(
                            "Halt {} advancement pre-rollout check failed: {why}",
                            self.id()
                        ),
                    );
                    Checks::Failed
                }
            }
        };
        match checks {
            Checks::Pass => {}
            Checks::Failed => return,
            Checks::Pending => {
                self.plan.status.last_step_time = previous_step;
                return;
            }
            Checks::Hold(why) => return self.wait_or_roll_back(why),
            Checks::Wait(why) => {
                self.plan.status.last_step_time = previous_step;
                return self.wait_or_roll_back(why);
            }
        }
        self.advance();
    }

    /// One step of the strategy after a passed analysis.
    fn advance(&mut self) {
        let status = &self.plan.status;
        let (weight, iterations, mirrored) =
            (status.canary_weight, status.iterations, status.mirrored);
        match &self.spec.strategy {
            Strategy::Canary { steps, mirror } => {
                let Some(next) = steps.next(weight) else {
                    return self.request_promotion();
                };
                // Before any traffic increase, the mirroring step included (as Flagger).
                match self.gate(WebhookType::ConfirmTrafficIncrease) {
                    Gate::Pass => {}
                    Gate::Pending => return,
                    Gate::Fail(why) => {
                        return self.info(
                            "Synced",
                            format!(
                                "Halt {} advancement waiting for traffic increase approval: {why}",
                                self.id()
                            ),
                        )
                    }
                }
                if let (Some(percent), 0, false) = (mirror, weight, mirrored) {
                    self.plan.status.mirrored = true;
                    self.plan.status.last_transition_time = Some(Time(self.now));
                    self.plan.routes = Some(self.running_routes());
                    self.info(
                        "Synced",
                        format!(
                            "Starting canary analysis for {}.{}: mirroring {percent}% of the traffic",
                            self.canary.spec.target_ref.name,
                            self.namespace()
                        ),
                    );
                    return;
                }
                if weight == 0 && !mirrored {
                    self.info(
                        "Synced",
                        format!(
                            "Starting canary analysis for {}.{}",
                            self.canary.spec.target_ref.name,
                            self.namespace()
                        ),
                    );
                }
                self.plan.status.mirrored = false;
                self.plan.status.canary_weight = next;
                self.plan.status.last_transition_time = Some(Time(self.now));
                self.plan.routes = Some(self.running_routes());
                self.info(
                    "Synced",
                    format!("Advance {} canary weight {next}", self.id()),
                );
            }
            Strategy::AbTesting { iterations: total }
            | Strategy::BlueGreen {
                iterations: total, ..
            } => {
                if iterations >= *total {
                    return self.request_promotion();
                }
                if iterations == 0 {
                    self.info(
                        "Synced",
                        format!(
                            "Starting canary analysis for {}.{}",
                            self.canary.spec.target_ref.name,
                            self.namespace()
                        ),
                    );
                }
                self.plan.status.iterations = iterations + 1;
                self.plan.status.last_transition_time = Some(Time(self.now));
                self.plan.routes = Some(self.running_routes());
                self.info(
                    "Synced",
                    format!(
                        "Advance {} canary iteration {}/{total}",
                        self.id(),
                        iterations + 1
                    ),
                );
            }
        }
    }

    /// The analysis is complete: the confirm-promotion gate, then promotion.
    fn request_promotion(&mut self) {
        match self.gate(WebhookType::ConfirmPromotion) {
            Gate::Pass => self.start_promotion(),
            Gate::Pending => {}
            Gate::Fail(why) => {
                if self.plan.status.phase != Some(Phase::WaitingPromotion) {
                    self.set_phase(Phase::WaitingPromotion);
                    self.gate_notice(
                        WebhookType::ConfirmPromotion,
                        format!(
                            "Halt {} advancement waiting for promotion approval: {why}",
                            self.id()
                        ),
                    );
                }
            }
        }
    }

    fn start_promotion(&mut self) {
        self.plan.primary = PrimaryAction::Promote;
        // Traffic stays as it is until the primary runs the new template, except that
        // Blue/Green switches everything to the canary (the new version) first.
        self.plan.routes = None;
        if let Strategy::BlueGreen { .. } = self.spec.strategy {
            self.plan.routes = Some(Routes::canary(100));
            self.info(
                "Synced",
                format!("Routing all traffic to canary {}", self.id()),
            );
        }
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
        let shift_weight = match self.spec.strategy {
            Strategy::Canary { .. } => self.plan.status.canary_weight,
            Strategy::BlueGreen { .. } => 100,
            Strategy::AbTesting { .. } => 0,
        };
        self.set_phase(Phase::Promoting);
        self.plan.status.mirrored = false;
        if self.spec.step_weight_promotion.is_some() {
            // The weight moves back to the primary step by step once it runs the new version.
            self.plan.status.canary_weight = shift_weight;
        }
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
            let message = format!(
                "{}-primary.{} not ready: {why}",
                self.canary.spec.target_ref.name,
                self.namespace()
            );
            // The primary already runs the new template, so there is nothing to roll back
            // to: past the deadline this is reported (condition, alert) and waited out.
            if self.past_deadline() {
                let message = format!(
                    "{message} after progressDeadlineSeconds ({}s)",
                    self.spec.progress_deadline.as_secs()
                );
                self.report_deadline(message);
            } else {
                self.info("Synced", message);
            }
            return;
        }
        if let Some(step) = self.spec.step_weight_promotion {
            let remaining = (self.plan.status.canary_weight - step).max(0);
            if remaining > 0 {
                self.plan.status.canary_weight = remaining;
                self.plan.routes = Some(Routes::canary(remaining));
                self.info(
                    "Synced",
                    format!("Advance {} primary weight {}", self.id(), 100 - remaining),
                );
                return;
            }
        }
        self.plan.routes = Some(Routes::ALL_PRIMARY);
        self.info(
            "Synced",
            format!("Routing all traffic to primary {}", self.id()),
        );
        self.set_phase(Phase::Finalising);
    }

    fn finalise(&mut self) {
        self.plan.routes = Some(Routes::ALL_PRIMARY);
        if let Some(wait) = step_wait(&self.plan.status, self.spec, self.now) {
            self.plan.requeue_after = wait;
            return;
        }
        self.plan.status.last_step_time = Some(Time(self.now));
        self.plan.target_replicas = Some(0);
        self.plan.status.last_promoted_spec = self.plan.status.last_applied_spec.clone();
        self.plan.status.tracked_configs = self.observed.tracked_configs.clone();
        self.set_phase(Phase::Succeeded);
        self.plan.post_rollout = true;
        self.alert(
            "Synced",
            format!(
                "Promotion completed! Scaling down {}.{}",
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
            AlertSeverity::Info,
        );
    }

    // --- steps ---

    /// Traffic reaches the canary: analysis runs on it (else only pre-rollout hooks).
    fn analysis_running(&self) -> bool {
        let s = &self.plan.status;
        s.canary_weight > 0 || s.iterations > 0 || s.mirrored
    }

    /// The routes of a running release, from the strategy and the status.
    fn running_routes(&self) -> Routes {
        let s = &self.plan.status;
        match self.spec.strategy {
            Strategy::Canary { mirror, .. } => Routes {
                weights: Weights::canary(s.canary_weight),
                mirror: mirror.filter(|_| s.mirrored && s.canary_weight == 0),
                session: None,
            },
            // The router sends the matched requests to the canary, the rest to the primary.
            Strategy::AbTesting { .. } if s.iterations > 0 => Routes::canary(100),
            Strategy::AbTesting { .. } => Routes::ALL_PRIMARY,
            Strategy::BlueGreen { mirror, .. } => Routes {
                weights: Weights::ALL_PRIMARY,
                mirror: mirror.filter(|_| s.iterations > 0),
                session: None,
            },
        }
    }

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

    /// Time since the last transition (phase change or step) exceeds the deadline.
    fn past_deadline(&self) -> bool {
        let since = self
            .plan
            .status
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(self.now);
        let waited = Duration::try_from(self.now.duration_since(since)).unwrap_or_default();
        waited > self.spec.progress_deadline
    }

    /// Waiting is not a failed check; past the progress deadline it is a rollback.
    fn wait_or_roll_back(&mut self, why: String) {
        if self.past_deadline() {
            let message = format!(
                "Rolling back {} progress deadline exceeded: {why}",
                self.id()
            );
            self.roll_back(message);
        } else {
            self.info("Synced", why);
        }
    }

    /// Rollout hooks, then every metric. Records a failed check on any failure.
    fn run_checks(&mut self) -> Checks {
        match self.gate(WebhookType::Rollout) {
            Gate::Pass => {}
            Gate::Pending => return Checks::Pending,
            Gate::Fail(why) => {
                self.plan.status.failed_checks += 1;
                self.warn(
                    "Synced",
                    format!("Halt {} advancement rollout check failed: {why}", self.id()),
                );
                return Checks::Failed;
            }
        }
        if self.spec.metrics.is_empty() {
            return Checks::Pass;
        }
        let Some(outcomes) = &self.observed.metrics else {
            self.plan.need = Some(Need::Metrics);
            return Checks::Pending;
        };
        // A takeover must not cost the canary a check: no verdict until the metrics
        // cover a window, one analysis interval later.
        if let Some(detail) = outcomes.iter().find_map(|o| match &o.value {
            Err(MetricError::Warming(detail)) => Some(detail),
            _ => None,
        }) {
            return Checks::Wait(format!("Waiting for {}'s metrics: {detail}", self.id()));
        }
        let mut results = Vec::with_capacity(outcomes.len());
        let mut failures = Vec::new();
        let mut holds = Vec::new();
        for outcome in outcomes {
            let verdict = judge(outcome, &self.canary_label());
            let (passed, message) = match verdict {
                Verdict::Pass(m) => (true, m),
                Verdict::Fail(m) => {
                    failures.push(m.clone());
                    (false, m)
                }
                Verdict::Hold(m) => {
                    holds.push(m.clone());
                    (false, m)
                }
            };
            results.push(MetricResult {
                name: outcome.name.clone(),
                value: outcome.value.as_ref().ok().copied(),
                passed,
                message,
            });
        }
        self.plan.status.last_analysis = results;
        if !failures.is_empty() {
            self.plan.status.failed_checks += 1;
            let count = failures.len();
            for (i, message) in failures.into_iter().enumerate() {
                // One alert per failed check, on its first message.
                if i == 0 {
                    self.alert("Synced", message, AlertSeverity::Warn);
                } else {
                    self.warn("Synced", message);
                }
            }
            debug_assert!(count > 0);
            return Checks::Failed;
        }
        if !holds.is_empty() {
            return Checks::Hold(holds.join("; "));
        }
        Checks::Pass
    }

    /// The answer of the webhooks of one type; asks for them when not observed yet.
    fn gate(&mut self, kind: WebhookType) -> Gate {
        if !self.spec.has_hooks(kind) {
            return Gate::Pass;
        }
        match self.observed.gates.get(&kind) {
            Some(Ok(())) => Gate::Pass,
            Some(Err(why)) => Gate::Fail(why.clone()),
            None => {
                self.plan.need = Some(Need::Hooks(kind));
                Gate::Pending
            }
        }
    }

    fn roll_back(&mut self, message: String) {
        self.alert("Synced", message, AlertSeverity::Error);
        self.plan.routes = Some(Routes::ALL_PRIMARY);
        self.plan.target_replicas = Some(0);
        self.plan.status.canary_weight = 0;
        self.plan.status.mirrored = false;
        self.set_phase(Phase::Failed);
        self.plan.post_rollout = true;
        self.warn(
            "Synced",
            format!(
                "Canary failed! Scaling down {}.{}",
                self.canary.spec.target_ref.name,
                self.namespace()
            ),
        );
    }

    /// A deadline passed where nothing can be rolled back: condition Ready=False and one
    /// alert per distinct message.
    fn report_deadline(&mut self, message: String) {
        let reported = self.canary.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.reason == "ProgressDeadlineExceeded" && c.message == message
            })
        });
        set_condition(
            &mut self.plan.status,
            "Ready",
            "False",
            "ProgressDeadlineExceeded",
            &message,
            self.now,
        );
        if !reported {
            self.alert("Synced", message, AlertSeverity::Error);
        }
    }

    // --- runtime control ---

    fn annotation(&self, key: &str) -> Option<&str> {
        self.canary
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The revision an action annotation names (its value, trimmed).
    fn action(&self, key: &str) -> Option<&str> {
        self.annotation(key).map(str::trim)
    }

    fn paused(&self) -> bool {
        self.annotation(actions::PAUSED)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Action annotations that cannot apply now are removed, with a word on why, so a
    /// stale one never fires on a later release.
    fn consume_stale(&mut self, keys: &[&'static str]) {
        for key in keys {
            let Some(value) = self.action(key).map(str::to_string) else {
                continue;
            };
            if self.plan.consumed_actions.contains(key) {
                continue;
            }
            let current = self
                .plan
                .status
                .last_applied_spec
                .clone()
                .unwrap_or_default();
            let phase = self.plan.status.phase.unwrap_or_default().as_str();
            self.plan.consumed_actions.push(key);
            let what = key.trim_start_matches("sluice.dev/");
            let message = if value != current {
                format!(
                    "Ignored {what} of {}: revision {value} is not the current one ({current})",
                    self.id()
                )
            } else {
                format!(
                    "Ignored {what} of {}: not possible in phase {phase}",
                    self.id()
                )
            };
            self.warn("Synced", message);
        }
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
            Phase::WaitingPromotion => "Canary analysis completed, waiting for promotion approval.",
            Phase::Waiting => "New revision detected, waiting for approval.",
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
            alert: None,
        });
    }

    fn warn(&mut self, reason: &'static str, message: String) {
        self.plan.events.push(Event {
            type_: EventType::Warning,
            reason,
            message,
            alert: None,
        });
    }

    /// A wait on a gate: alerted unless the gate's hooks say `muteAlert`.
    fn gate_notice(&mut self, kind: WebhookType, message: String) {
        if self.spec.muted_gates.contains(&kind) {
            self.info("Synced", message);
        } else {
            self.alert("Synced", message, AlertSeverity::Info);
        }
    }

    /// An event that also goes to the Canary's alert providers.
    fn alert(&mut self, reason: &'static str, message: String, severity: AlertSeverity) {
        let type_ = match severity {
            AlertSeverity::Info => EventType::Normal,
            AlertSeverity::Warn | AlertSeverity::Error => EventType::Warning,
        };
        self.plan.events.push(Event {
            type_,
            reason,
            message,
            alert: Some(severity),
        });
    }
}

enum Verdict {
    Pass(String),
    Fail(String),
    Hold(String),
}

/// The verdict on one metric, with the message users read in events.
fn judge(outcome: &MetricOutcome, workload: &str) -> Verdict {
    let name = &outcome.name;
    match &outcome.value {
        Err(MetricError::NoData(detail)) => match outcome.on_no_data {
            NoDataPolicy::Fail => Verdict::Fail(format!(
                "Halt advancement no values found for metric {name}: no traffic reached the canary {workload} ({detail})"
            )),
            NoDataPolicy::Skip => Verdict::Pass(format!(
                "no values found for metric {name}, skipped (onNoData: skip)"
            )),
            NoDataPolicy::Hold => Verdict::Hold(format!(
                "Holding {workload} advancement: no values found for metric {name}, no traffic reached the canary (onNoData: hold)"
            )),
        },
        Err(MetricError::Failed(detail)) => {
            Verdict::Fail(format!("Metric query failed for {name}: {detail}"))
        }
        // `run_checks` waits before judging any of these.
        Err(MetricError::Warming(detail)) => Verdict::Hold(format!(
            "Holding {workload} advancement: {name} {detail}"
        )),
        Ok(value) => {
            if let Some(min) = outcome.range.min {
                if *value < min {
                    return Verdict::Fail(format!(
                        "Halt {workload} advancement {name} {value:.2} < {min}"
                    ));
                }
            }
            if let Some(max) = outcome.range.max {
                if *value > max {
                    return Verdict::Fail(format!(
                        "Halt {workload} advancement {name} {value:.2} > {max}"
                    ));
                }
            }
            Verdict::Pass(format!("{name} {value:.2} within range"))
        }
    }
}

/// Sets a condition; returns true when its status, reason or message changed.
pub(super) fn set_condition(
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
