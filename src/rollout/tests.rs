//! Table-driven tests of the release decision, and a walk through whole releases in which
//! a small in-memory world plays the cluster's part.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use std::collections::BTreeMap;

use crate::api::{Canary, CanaryStatus, NoDataPolicy, Phase, ThresholdRange, WebhookType};

const SCENARIO_B: &str = r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {name: catalog-release, namespace: istioinaction, generation: 1}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: catalog}
  progressDeadlineSeconds: 60
  service: {name: catalog, port: 80, targetPort: 3000, gateways: [mesh], hosts: [catalog]}
  analysis:
    interval: 45s
    threshold: 5
    maxWeight: 50
    stepWeight: 10
    match: [{sourceLabels: {app: webapp}}]
    metrics:
    - {name: request-success-rate, thresholdRange: {min: 99}, interval: 1m}
    - {name: request-duration, thresholdRange: {max: 500}, interval: 30s}
"#;

pub(super) fn canary() -> Canary {
    serde_yaml::from_str(SCENARIO_B).expect("scenario B parses")
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub(super) fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

pub(super) fn ready(revision: &str, replicas: i32) -> WorkloadState {
    WorkloadState {
        revision: Some(revision.into()),
        replicas,
        updated_replicas: replicas,
        available_replicas: replicas,
        rollout_observed: true,
    }
}

fn not_ready(revision: &str, replicas: i32) -> WorkloadState {
    WorkloadState {
        available_replicas: 0,
        ..ready(revision, replicas)
    }
}

fn good_metrics() -> Vec<MetricOutcome> {
    vec![
        MetricOutcome {
            name: "request-success-rate".into(),
            range: ThresholdRange {
                min: Some(99.0),
                max: None,
            },
            value: Ok(100.0),
            on_no_data: NoDataPolicy::Fail,
        },
        MetricOutcome {
            name: "request-duration".into(),
            range: ThresholdRange {
                min: None,
                max: Some(500.0),
            },
            value: Ok(120.0),
            on_no_data: NoDataPolicy::Fail,
        },
    ]
}

pub(super) fn with_status(status: CanaryStatus) -> Canary {
    let mut c = canary();
    c.status = Some(status);
    c
}

fn status(phase: Phase, weight: i32, failed: i32, last_step: Timestamp) -> CanaryStatus {
    CanaryStatus {
        phase: Some(phase),
        canary_weight: weight,
        failed_checks: failed,
        last_applied_spec: Some("v2".into()),
        last_promoted_spec: Some("v1".into()),
        last_transition_time: Some(Time(last_step)),
        last_step_time: Some(Time(last_step)),
        target_replicas: Some(2),
        ..Default::default()
    }
}

fn messages(plan: &Plan) -> Vec<&str> {
    plan.events.iter().map(|e| e.message.as_str()).collect()
}

/// One transition: a status, what was observed, and what the plan must say.
struct Case {
    name: &'static str,
    status: Option<CanaryStatus>,
    observed: Observed,
    now: Timestamp,
    phase: Phase,
    weight: i32,
    failed_checks: i32,
    routes: Option<Weights>,
    primary: PrimaryAction,
    target_replicas: Option<i32>,
    event: Option<&'static str>,
}

fn observed(revision: &str, target: WorkloadState, primary: Option<WorkloadState>) -> Observed {
    Observed {
        revision: revision.into(),
        target: Some(target),
        primary,
        metrics: None,
        gates: Default::default(),
        tracked_configs: Default::default(),
    }
}

#[test]
fn transitions() {
    let step = 45;
    let progressing = |w, f| Some(status(Phase::Progressing, w, f, t0()));
    let with_metrics = |mut o: Observed, m: Vec<MetricOutcome>| {
        o.metrics = Some(m);
        o
    };
    let mut failing = good_metrics();
    failing[0].value = Ok(90.0);
    let mut no_data = good_metrics();
    no_data[1].value = Err(MetricError::NoData("empty result".into()));
    let v2_running = || observed("v2", ready("v2", 2), Some(ready("v1", 2)));

    let cases = vec![
        Case {
            name: "first sight creates the primary and routes all to it",
            status: None,
            observed: observed("v1", ready("v1", 2), None),
            now: t0(),
            phase: Phase::Initializing,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Create { replicas: 2 },
            target_replicas: None,
            event: None,
        },
        Case {
            name: "primary not ready keeps initializing",
            status: Some(CanaryStatus {
                phase: Some(Phase::Initializing),
                ..Default::default()
            }),
            observed: observed("v1", ready("v1", 2), Some(not_ready("v1", 2))),
            now: t0(),
            phase: Phase::Initializing,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: None,
        },
        Case {
            name: "primary ready: target scaled to zero, initialized",
            status: Some(CanaryStatus {
                phase: Some(Phase::Initializing),
                ..Default::default()
            }),
            observed: observed("v1", ready("v1", 2), Some(ready("v1", 2))),
            now: t0(),
            phase: Phase::Initialized,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: Some("Initialization done! catalog-release.istioinaction"),
        },
        Case {
            name: "same revision stays idle",
            status: Some(CanaryStatus {
                last_applied_spec: Some("v1".into()),
                last_promoted_spec: Some("v1".into()),
                ..status(Phase::Initialized, 0, 0, t0())
            }),
            observed: observed("v1", ready("v1", 0), Some(ready("v1", 2))),
            now: at(1000),
            phase: Phase::Initialized,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: None,
        },
        Case {
            name: "new revision scales the target up",
            status: Some(CanaryStatus {
                last_applied_spec: Some("v1".into()),
                last_promoted_spec: Some("v1".into()),
                ..status(Phase::Initialized, 0, 0, t0())
            }),
            observed: observed("v2", ready("v2", 0), Some(ready("v1", 2))),
            now: at(1000),
            phase: Phase::Progressing,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(2),
            event: Some("New revision detected! Scaling up catalog.istioinaction"),
        },
        Case {
            name: "a failed revision is not retried",
            status: Some(CanaryStatus {
                last_applied_spec: Some("v2".into()),
                last_promoted_spec: Some("v1".into()),
                ..status(Phase::Failed, 0, 5, t0())
            }),
            observed: observed("v2", ready("v2", 0), Some(ready("v1", 2))),
            now: at(1000),
            phase: Phase::Failed,
            weight: 0,
            failed_checks: 5,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: None,
        },
        Case {
            name: "between steps nothing moves",
            status: progressing(20, 0),
            observed: v2_running(),
            now: at(step - 1),
            phase: Phase::Progressing,
            weight: 20,
            failed_checks: 0,
            routes: Some(Weights::canary(20)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: None,
        },
        Case {
            name: "first step starts the analysis at stepWeight",
            status: progressing(0, 0),
            observed: v2_running(),
            now: at(step),
            phase: Phase::Progressing,
            weight: 10,
            failed_checks: 0,
            routes: Some(Weights::canary(10)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some("Advance catalog-release.istioinaction canary weight 10"),
        },
        Case {
            name: "passing checks advance",
            status: progressing(20, 0),
            observed: with_metrics(v2_running(), good_metrics()),
            now: at(step),
            phase: Phase::Progressing,
            weight: 30,
            failed_checks: 0,
            routes: Some(Weights::canary(30)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some("Advance catalog-release.istioinaction canary weight 30"),
        },
        Case {
            name: "a failing check halts and counts",
            status: progressing(20, 1),
            observed: with_metrics(v2_running(), failing),
            now: at(step),
            phase: Phase::Progressing,
            weight: 20,
            failed_checks: 2,
            routes: Some(Weights::canary(20)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some(
                "Halt catalog.istioinaction advancement request-success-rate 90.00 < 99",
            ),
        },
        Case {
            name: "no data says no traffic reached the canary",
            status: progressing(20, 0),
            observed: with_metrics(v2_running(), no_data),
            now: at(step),
            phase: Phase::Progressing,
            weight: 20,
            failed_checks: 1,
            routes: Some(Weights::canary(20)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some("Halt advancement no values found for metric request-duration: no traffic reached the canary catalog.istioinaction (empty result)"),
        },
        Case {
            name: "threshold reached rolls back",
            status: progressing(30, 5),
            observed: v2_running(),
            now: at(step),
            phase: Phase::Failed,
            weight: 0,
            failed_checks: 5,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: Some("Rolling back catalog-release.istioinaction failed checks threshold reached 5"),
        },
        Case {
            name: "canary not ready waits without a failed check",
            status: progressing(10, 0),
            observed: observed("v2", not_ready("v2", 2), Some(ready("v1", 2))),
            now: at(step),
            phase: Phase::Progressing,
            weight: 10,
            failed_checks: 0,
            routes: Some(Weights::canary(10)),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some("canary deployment catalog.istioinaction not ready: waiting for rollout to finish: 0 of 2 updated replicas are available"),
        },
        Case {
            name: "not ready past the progress deadline rolls back",
            status: progressing(10, 0),
            observed: observed("v2", not_ready("v2", 2), Some(ready("v1", 2))),
            now: at(61),
            phase: Phase::Failed,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: Some("Rolling back catalog-release.istioinaction progress deadline exceeded: canary deployment catalog.istioinaction not ready: waiting for rollout to finish: 0 of 2 updated replicas are available"),
        },
        Case {
            name: "a new revision mid-run restarts the analysis",
            status: progressing(30, 2),
            observed: observed("v3", ready("v3", 2), Some(ready("v1", 2))),
            now: at(10),
            phase: Phase::Progressing,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(2),
            event: Some("New revision detected! Restarting analysis for catalog.istioinaction"),
        },
        Case {
            name: "max weight reached promotes",
            status: progressing(50, 0),
            observed: with_metrics(v2_running(), good_metrics()),
            now: at(step),
            phase: Phase::Promoting,
            weight: 0,
            failed_checks: 0,
            routes: None,
            primary: PrimaryAction::Promote,
            target_replicas: None,
            event: Some("Copying catalog.istioinaction template spec to catalog-primary.istioinaction"),
        },
        Case {
            name: "promoted primary ready routes all traffic to it",
            status: Some(status(Phase::Promoting, 0, 0, t0())),
            observed: observed("v2", ready("v2", 2), Some(ready("v2", 2))),
            now: at(step),
            phase: Phase::Finalising,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: None,
            event: Some("Routing all traffic to primary catalog-release.istioinaction"),
        },
        Case {
            name: "primary still on the old revision keeps promoting",
            status: Some(status(Phase::Promoting, 0, 0, t0())),
            observed: observed("v2", ready("v2", 2), Some(ready("v1", 2))),
            now: at(step),
            phase: Phase::Promoting,
            weight: 0,
            failed_checks: 0,
            routes: None,
            primary: PrimaryAction::Promote,
            target_replicas: None,
            event: Some("catalog-primary.istioinaction not ready: primary rollout not started"),
        },
        Case {
            name: "finalising scales the canary down",
            status: Some(status(Phase::Finalising, 0, 0, t0())),
            observed: observed("v2", ready("v2", 2), Some(ready("v2", 2))),
            now: at(step),
            phase: Phase::Succeeded,
            weight: 0,
            failed_checks: 0,
            routes: Some(Weights::ALL_PRIMARY),
            primary: PrimaryAction::Keep,
            target_replicas: Some(0),
            event: Some("Promotion completed! Scaling down catalog.istioinaction"),
        },
    ];

    for case in cases {
        let mut c = canary();
        c.status = case.status.clone();
        let plan = decide(&c, &case.observed, case.now);
        let name = case.name;
        assert_eq!(plan.status.phase, Some(case.phase), "{name}: phase");
        assert_eq!(plan.status.canary_weight, case.weight, "{name}: weight");
        assert_eq!(
            plan.status.failed_checks, case.failed_checks,
            "{name}: failed checks"
        );
        assert_eq!(plan.need, None, "{name}: need");
        assert_eq!(
            plan.routes.as_ref().map(|r| r.weights),
            case.routes,
            "{name}: routes"
        );
        assert_eq!(plan.primary, case.primary, "{name}: primary");
        assert_eq!(
            plan.target_replicas, case.target_replicas,
            "{name}: target replicas"
        );
        match case.event {
            Some(msg) => assert!(
                messages(&plan).contains(&msg),
                "{name}: event {msg:?} not in {:?}",
                messages(&plan)
            ),
            None => assert!(
                plan.events.is_empty(),
                "{name}: events {:?}",
                messages(&plan)
            ),
        }
    }
}

#[test]
fn promoted_condition_follows_the_phase() {
    let cases = [
        (Phase::Initializing, None, "Unknown"),
        (Phase::Succeeded, Some(Phase::Finalising), "True"),
        (Phase::Failed, Some(Phase::Progressing), "False"),
    ];
    for (want_phase, from, want) in cases {
        let (c, obs, now) = match from {
            None => (canary(), observed("v1", ready("v1", 2), None), t0()),
            Some(Phase::Finalising) => (
                with_status(status(Phase::Finalising, 0, 0, t0())),
                observed("v2", ready("v2", 2), Some(ready("v2", 2))),
                at(45),
            ),
            Some(_) => (
                with_status(status(Phase::Progressing, 10, 5, t0())),
                observed("v2", ready("v2", 2), Some(ready("v1", 2))),
                at(45),
            ),
        };
        let plan = decide(&c, &obs, now);
        assert_eq!(plan.status.phase, Some(want_phase));
        let cond = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Promoted")
            .expect("Promoted condition");
        assert_eq!(cond.status, want, "{want_phase:?}");
        assert_eq!(cond.reason, want_phase.as_str());
    }
}

#[test]
fn invalid_spec_is_reported_once_and_changes_nothing() {
    let mut c = canary();
    c.spec.analysis.step_weight = Some(0);
    let plan = decide(&c, &observed("v1", ready("v1", 2), None), t0());
    assert!(!plan.ensure_objects);
    assert_eq!(plan.routes, None);
    assert_eq!(plan.target_replicas, None);
    assert_eq!(plan.primary, PrimaryAction::Keep);
    assert_eq!(plan.events.len(), 1);
    assert!(plan.events[0].message.contains("spec.analysis.stepWeight"));
    c.status = Some(plan.status);
    let again = decide(&c, &observed("v1", ready("v1", 2), None), at(5));
    assert!(
        again.events.is_empty(),
        "reported again: {:?}",
        messages(&again)
    );
}

#[test]
fn missing_target_is_reported_without_touching_anything() {
    let mut obs = observed("v1", ready("v1", 2), None);
    obs.target = None;
    let plan = decide(&canary(), &obs, t0());
    assert!(!plan.ensure_objects);
    assert_eq!(plan.primary, PrimaryAction::Keep);
    assert_eq!(
        messages(&plan),
        vec!["target Deployment catalog.istioinaction not found"]
    );
}

#[test]
fn suspended_canary_does_nothing() {
    let mut c = with_status(status(Phase::Progressing, 20, 0, t0()));
    c.spec.suspend = Some(true);
    let plan = decide(
        &c,
        &observed("v2", ready("v2", 2), Some(ready("v1", 2))),
        at(500),
    );
    assert_eq!(plan.routes, None);
    assert_eq!(plan.target_replicas, None);
    assert!(plan.events.is_empty());
    assert_eq!(plan.status.canary_weight, 20);
}

#[test]
fn metrics_are_asked_for_only_on_a_step_with_traffic() {
    let cases = [
        (
            status(Phase::Progressing, 10, 0, t0()),
            at(45),
            Some(Need::Metrics),
        ),
        (status(Phase::Progressing, 10, 0, t0()), at(44), None),
        (status(Phase::Progressing, 0, 0, t0()), at(45), None),
        (status(Phase::Promoting, 0, 0, t0()), at(45), None),
    ];
    for (s, now, want) in cases {
        let phase = s.phase;
        let weight = s.canary_weight;
        let o = observed("v2", ready("v2", 2), Some(ready("v1", 2)));
        let plan = decide(&with_status(s), &o, now);
        assert_eq!(plan.need, want, "{phase:?} weight {weight} at {now}");
    }
}

// === whole releases ===

/// A stand-in for the cluster: applies plans the way the executor and Deployment
/// controller would, instantly.
struct World {
    canary: Canary,
    target_revision: String,
    target_replicas: i32,
    primary: Option<WorkloadState>,
    routes: Routes,
    /// Success rate the canary's metrics report.
    canary_success: f64,
    /// What the webhooks answer, by type (absent: every hook passes).
    hooks: BTreeMap<WebhookType, GateResult>,
    /// Webhook types called, in order.
    calls: Vec<WebhookType>,
    /// Action annotations the executor removed.
    consumed: Vec<&'static str>,
    events: Vec<String>,
    /// Time of the last reconcile of `follow`.
    now: Timestamp,
}

impl World {
    fn new() -> Self {
        World {
            canary: canary(),
            target_revision: "v1".into(),
            target_replicas: 2,
            primary: None,
            routes: Routes::ALL_PRIMARY,
            canary_success: 100.0,
            hooks: BTreeMap::new(),
            calls: vec![],
            consumed: vec![],
            events: vec![],
            now: t0(),
        }
    }

    fn observe(&self) -> Observed {
        Observed {
            revision: self.target_revision.clone(),
            target: Some(ready(&self.target_revision, self.target_replicas)),
            primary: self.primary.clone(),
            metrics: None,
            gates: BTreeMap::new(),
            tracked_configs: Default::default(),
        }
    }

    /// Decides as the controller does: gathers what the decision asks for and decides again.
    fn decide(&mut self, now: Timestamp) -> Plan {
        let mut obs = self.observe();
        loop {
            let plan = decide(&self.canary, &obs, now);
            match plan.need {
                None => return plan,
                Some(Need::Metrics) => {
                    assert!(obs.metrics.is_none(), "metrics asked twice");
                    let mut m = good_metrics();
                    m[0].value = Ok(self.canary_success);
                    obs.metrics = Some(m);
                }
                Some(Need::Hooks(kind)) => {
                    assert!(!obs.gates.contains_key(&kind), "{kind:?} asked twice");
                    self.calls.push(kind);
                    let answer = self.hooks.get(&kind).cloned().unwrap_or(Ok(()));
                    obs.gates.insert(kind, answer);
                }
            }
        }
    }

    /// Reconciles once; returns the (phase, weight) the status shows afterwards.
    fn tick(&mut self, now: Timestamp) -> (Phase, i32, Duration) {
        let plan = self.decide(now);
        self.events
            .extend(plan.events.iter().map(|e| e.message.clone()));
        if let Some(annotations) = self.canary.metadata.annotations.as_mut() {
            for key in &plan.consumed_actions {
                annotations.remove(*key);
            }
        }
        self.consumed.extend(plan.consumed_actions.iter().copied());
        match plan.primary {
            PrimaryAction::Create { replicas } => {
                self.primary = Some(ready(&self.target_revision, replicas))
            }
            PrimaryAction::Promote => {
                let replicas = self.primary.as_ref().map(|p| p.replicas).unwrap_or(1);
                self.primary = Some(ready(&self.target_revision, replicas));
            }
            PrimaryAction::Keep => {}
        }
        if let Some(r) = plan.target_replicas {
            self.target_replicas = r;
        }
        if let Some(r) = plan.routes {
            self.routes = r;
        }
        let phase = plan.status.phase.expect("phase set");
        let weight = plan.status.canary_weight;
        self.canary.status = Some(plan.status);
        (phase, weight, plan.requeue_after)
    }

    /// Reconciles at each requeue until `until`, collecting distinct (phase, weight) lines as
    /// `kubectl get canary -w` would print them.
    fn run(&mut self, from: Timestamp, until: Timestamp) -> (Vec<(Phase, i32)>, Timestamp) {
        let mut lines: Vec<(Phase, i32)> = vec![];
        let mut now = from;
        while now < until {
            let (phase, weight, requeue) = self.tick(now);
            if phase.is_active() {
                // A spurious reconcile right after a step must change nothing.
                let again = self.tick(now);
                assert_eq!(
                    (again.0, again.1),
                    (phase, weight),
                    "reconcile is not idempotent"
                );
            }
            if lines.last() != Some(&(phase, weight)) {
                lines.push((phase, weight));
            }
            if matches!(phase, Phase::Succeeded | Phase::Failed)
                && lines.iter().any(|(p, _)| *p == Phase::Progressing)
            {
                break;
            }
            now += SignedDuration::try_from(requeue).unwrap();
        }
        (lines, now)
    }
}

#[test]
fn scenario_b_promotes_step_by_step() {
    let mut world = World::new();
    let (lines, now) = world.run(t0(), at(60));
    assert_eq!(lines.last(), Some(&(Phase::Initialized, 0)));
    assert_eq!(world.target_replicas, 0);

    world.target_revision = "v2".into();
    let (lines, _) = world.run(now, now + SignedDuration::from_secs(3600));
    use Phase::*;
    assert_eq!(
        lines,
        vec![
            (Progressing, 0),
            (Progressing, 10),
            (Progressing, 20),
            (Progressing, 30),
            (Progressing, 40),
            (Progressing, 50),
            (Promoting, 0),
            (Finalising, 0),
            (Succeeded, 0),
        ]
    );
    assert_eq!(
        world.primary.as_ref().unwrap().revision.as_deref(),
        Some("v2")
    );
    assert_eq!(world.routes, Routes::ALL_PRIMARY);
    assert_eq!(world.target_replicas, 0);
}

#[test]
fn scenario_b_rolls_back_a_failing_version() {
    let mut world = World::new();
    let (_, now) = world.run(t0(), at(60));
    world.target_revision = "v3".into();
    world.canary_success = 80.0;
    let (lines, _) = world.run(now, now + SignedDuration::from_secs(3600));
    use Phase::*;
    assert_eq!(
        lines,
        vec![(Progressing, 0), (Progressing, 10), (Failed, 0)]
    );
    let status = world.canary.status.as_ref().unwrap();
    assert_eq!(status.failed_checks, 5);
    assert_eq!(
        world.primary.as_ref().unwrap().revision.as_deref(),
        Some("v1")
    );
    assert_eq!(world.routes, Routes::ALL_PRIMARY);
    assert_eq!(world.target_replicas, 0);
}

#[test]
fn decision_does_not_depend_on_the_client_or_runtime() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rollout");
    let forbidden = ["kube::", "use kube", "tokio::", "reqwest::"];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(!text.contains(word), "{} uses {word}", path.display());
        }
    }
}

// === strategies, gates, runtime control ===

fn edited(edit: impl FnOnce(&mut Canary)) -> World {
    let mut world = World::new();
    edit(&mut world.canary);
    world
}

fn hook(kind: WebhookType) -> crate::api::CanaryWebhook {
    crate::api::CanaryWebhook {
        name: format!("{kind:?}"),
        webhook_type: Some(kind),
        url: "http://gate.test/".into(),
        ..Default::default()
    }
}

/// One line per change of what `kubectl get canary -w` and the routes show.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    phase: Phase,
    weight: i32,
    iterations: i32,
    routes: Routes,
}

impl World {
    /// Initialises, then releases v2 and reconciles until it ends or `secs` pass.
    fn release(&mut self, secs: i64) -> Vec<Line> {
        let (_, now) = self.run(t0(), at(60));
        self.target_revision = "v2".into();
        self.follow(now, secs)
    }

    fn follow(&mut self, from: Timestamp, secs: i64) -> Vec<Line> {
        let mut lines: Vec<Line> = vec![];
        let mut now = from;
        let until = from + SignedDuration::from_secs(secs);
        while now < until {
            let (phase, weight, requeue) = self.tick(now);
            let line = Line {
                phase,
                weight,
                iterations: self.canary.status.as_ref().unwrap().iterations,
                routes: self.routes.clone(),
            };
            if lines.last() != Some(&line) {
                lines.push(line);
            }
            if matches!(phase, Phase::Succeeded | Phase::Failed)
                && lines.iter().any(|l| l.phase == Phase::Progressing)
            {
                break;
            }
            now += SignedDuration::try_from(requeue).unwrap();
        }
        self.now = now;
        lines
    }

    fn annotate(&mut self, key: &str, value: &str) {
        self.canary
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
    }
}

fn mirrored(percent: i32) -> Routes {
    Routes {
        mirror: Some(percent),
        ..Routes::ALL_PRIMARY
    }
}

fn summary(lines: &[Line]) -> Vec<(Phase, i32, i32)> {
    lines
        .iter()
        .map(|l| (l.phase, l.weight, l.iterations))
        .collect()
}

#[test]
fn ab_testing_sends_the_match_to_the_canary_for_its_iterations() {
    let mut world = edited(|c| c.spec.analysis.iterations = Some(3));
    let lines = world.release(3600);
    use Phase::*;
    assert_eq!(
        summary(&lines),
        vec![
            (Progressing, 0, 0),
            (Progressing, 0, 1),
            (Progressing, 0, 2),
            (Progressing, 0, 3),
            (Promoting, 0, 0),
            (Finalising, 0, 0),
            (Succeeded, 0, 0),
        ]
    );
    // The router applies these weights to the match route; the rest stays on the primary.
    assert!(lines[1..4].iter().all(|l| l.routes == Routes::canary(100)));
    assert_eq!(world.routes, Routes::ALL_PRIMARY);
}

#[test]
fn blue_green_mirrors_then_switches_all_traffic_before_promoting() {
    let mut world = edited(|c| {
        c.spec.analysis.iterations = Some(2);
        c.spec.analysis.matches.clear();
        c.spec.analysis.mirror = Some(true);
    });
    let lines = world.release(3600);
    let routes: Vec<(Phase, Routes)> = lines.iter().map(|l| (l.phase, l.routes.clone())).collect();
    use Phase::*;
    assert_eq!(
        routes,
        vec![
            (Progressing, Routes::ALL_PRIMARY),
            (Progressing, mirrored(100)),
            (Progressing, mirrored(100)),
            (Promoting, Routes::canary(100)),
            (Finalising, Routes::ALL_PRIMARY),
            (Succeeded, Routes::ALL_PRIMARY),
        ]
    );
    assert!(world
        .events
        .iter()
        .any(|e| e == "Routing all traffic to canary catalog-release.istioinaction"));
}

#[test]
fn canary_mirrors_for_one_step_before_shifting() {
    let mut world = edited(|c| {
        c.spec.analysis.mirror = Some(true);
        c.spec.analysis.mirror_weight = Some(50);
    });
    let lines = world.release(3600);
    assert_eq!(lines[0].routes, Routes::ALL_PRIMARY);
    assert_eq!(lines[1].routes, mirrored(50));
    assert_eq!(lines[1].weight, 0);
    assert_eq!(lines[2].routes, Routes::canary(10));
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);
}

#[test]
fn step_weight_promotion_moves_traffic_back_step_by_step() {
    let mut world = edited(|c| c.spec.analysis.step_weight_promotion = Some(20));
    let lines = world.release(3600);
    let promoting: Vec<(Phase, i32)> = lines
        .iter()
        .filter(|l| !matches!(l.phase, Phase::Progressing))
        .map(|l| (l.phase, l.routes.weights.canary_weight()))
        .collect();
    use Phase::*;
    // The routes stay at 50 until the primary runs v2, then move 20 per interval.
    assert_eq!(
        promoting,
        vec![
            (Promoting, 50),
            (Promoting, 30),
            (Promoting, 10),
            (Finalising, 0),
            (Succeeded, 0)
        ]
    );
}

#[test]
fn gates_hold_where_flagger_holds() {
    // confirm-rollout closed: Waiting, nothing scaled; opened: the run starts.
    let mut world = edited(|c| c.spec.analysis.webhooks = vec![hook(WebhookType::ConfirmRollout)]);
    world
        .hooks
        .insert(WebhookType::ConfirmRollout, Err("gate closed".into()));
    let lines = world.release(200);
    assert_eq!(summary(&lines), vec![(Phase::Waiting, 0, 0)]);
    assert_eq!(world.target_replicas, 0);
    world.hooks.clear();
    let lines = world.follow(world.now, 3600);
    assert_eq!(lines[0].phase, Phase::Progressing);
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);

    // confirm-promotion closed: WaitingPromotion at max weight, analysis goes on.
    let mut world =
        edited(|c| c.spec.analysis.webhooks = vec![hook(WebhookType::ConfirmPromotion)]);
    world
        .hooks
        .insert(WebhookType::ConfirmPromotion, Err("not yet".into()));
    let lines = world.release(600);
    assert_eq!(
        lines.last().map(|l| (l.phase, l.weight)),
        Some((Phase::WaitingPromotion, 50))
    );
    assert_eq!(world.routes, Routes::canary(50));
    world.hooks.clear();
    let lines = world.follow(world.now, 3600);
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);

    // confirm-traffic-increase closed: the weight stays, no failed check.
    let mut world =
        edited(|c| c.spec.analysis.webhooks = vec![hook(WebhookType::ConfirmTrafficIncrease)]);
    world
        .hooks
        .insert(WebhookType::ConfirmTrafficIncrease, Err("hold".into()));
    let lines = world.release(600);
    assert_eq!(summary(&lines), vec![(Phase::Progressing, 0, 0)]);
    assert_eq!(world.canary.status.as_ref().unwrap().failed_checks, 0);
}

#[test]
fn failing_checks_from_hooks_count_and_roll_back() {
    for kind in [WebhookType::PreRollout, WebhookType::Rollout] {
        let mut world = edited(|c| c.spec.analysis.webhooks = vec![hook(kind)]);
        world.hooks.insert(kind, Err("tests failed".into()));
        let lines = world.release(3600);
        let last = lines.last().unwrap();
        assert_eq!(last.phase, Phase::Failed, "{kind:?}");
        assert_eq!(world.canary.status.as_ref().unwrap().failed_checks, 5);
        // Pre-rollout hooks run before any traffic; rollout hooks only with traffic.
        let weights: Vec<i32> = lines.iter().map(|l| l.weight).collect();
        let want: &[i32] = if kind == WebhookType::PreRollout {
            &[0, 0]
        } else {
            &[0, 10, 0]
        };
        assert_eq!(weights, want, "{kind:?}");
        assert!(!world.calls.contains(&WebhookType::Rollout) || kind == WebhookType::Rollout);
    }
    // A rollback hook answering 2xx aborts the run.
    let mut world = edited(|c| c.spec.analysis.webhooks = vec![hook(WebhookType::Rollback)]);
    let lines = world.release(3600);
    assert_eq!(
        summary(&lines),
        vec![(Phase::Progressing, 0, 0), (Phase::Failed, 0, 0)]
    );
    assert!(world
        .events
        .iter()
        .any(|e| e.contains("manual webhook invoked")));
}

#[test]
fn runtime_actions_apply_to_their_revision_once() {
    use actions::*;
    // promote: skips the remaining steps.
    let mut world = World::new();
    let (_, now) = world.run(t0(), at(60));
    world.target_revision = "v2".into();
    let lines = world.follow(now, 100);
    assert_eq!(lines.last().unwrap().weight, 20);
    world.annotate(PROMOTE, "v2");
    let lines = world.follow(world.now, 3600);
    assert_eq!((lines[0].phase, lines[0].weight), (Phase::Promoting, 0));
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);
    assert_eq!(world.consumed, vec![PROMOTE]);

    // abort: rolls back at once; retry: runs the same revision again.
    let mut world = World::new();
    let (_, now) = world.run(t0(), at(60));
    world.target_revision = "v2".into();
    world.follow(now, 100);
    world.annotate(ABORT, "v2");
    let lines = world.follow(world.now, 10);
    assert_eq!(lines[0].phase, Phase::Failed);
    assert!(world
        .events
        .iter()
        .any(|e| e.contains("aborted on request")));
    world.annotate(RETRY, "v2");
    let lines = world.follow(world.now + SignedDuration::from_secs(1), 3600);
    assert_eq!(lines[0].phase, Phase::Progressing);
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);
    assert_eq!(world.consumed, vec![ABORT, RETRY]);

    // A stale action is removed with a warning and changes nothing.
    let mut world = World::new();
    let (_, now) = world.run(t0(), at(60));
    world.target_revision = "v2".into();
    world.annotate(ABORT, "v1");
    let lines = world.follow(now, 3600);
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);
    assert_eq!(world.consumed, vec![ABORT]);
    assert!(world.events.iter().any(|e| e.contains("Ignored abort")));
}

#[test]
fn pause_holds_the_weight_and_resume_goes_on() {
    let mut world = World::new();
    let (_, now) = world.run(t0(), at(60));
    world.target_revision = "v2".into();
    world.follow(now, 100);
    let weight = world.canary.status.as_ref().unwrap().canary_weight;
    world.annotate(actions::PAUSED, "true");
    let lines = world.follow(world.now, 1200);
    assert!(lines
        .iter()
        .all(|l| l.weight == weight && l.phase == Phase::Progressing));
    let paused = world
        .canary
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused")
        .cloned();
    assert_eq!(paused.map(|c| c.status), Some("True".into()));
    world
        .canary
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(actions::PAUSED);
    let lines = world.follow(world.now, 3600);
    assert_eq!(lines.last().unwrap().phase, Phase::Succeeded);
    assert!(world.events.iter().any(|e| e.starts_with("Resumed")));
}

#[test]
fn no_data_policy_decides_what_an_empty_result_means() {
    let no_data = |policy: NoDataPolicy| {
        let mut c = canary();
        c.status = Some(status(Phase::Progressing, 20, 0, t0()));
        let mut o = observed("v2", ready("v2", 2), Some(ready("v1", 2)));
        let mut m = good_metrics();
        m[1].value = Err(MetricError::NoData("empty result".into()));
        m[1].on_no_data = policy;
        o.metrics = Some(m);
        (c, o)
    };
    let (c, o) = no_data(NoDataPolicy::Skip);
    let plan = decide(&c, &o, at(45));
    assert_eq!(
        (plan.status.canary_weight, plan.status.failed_checks),
        (30, 0)
    );

    let (c, o) = no_data(NoDataPolicy::Hold);
    let plan = decide(&c, &o, at(45));
    assert_eq!(
        (plan.status.canary_weight, plan.status.failed_checks),
        (20, 0)
    );
    assert!(messages(&plan)[0].starts_with("Holding catalog.istioinaction advancement"));
    // Held past progressDeadlineSeconds (60 s here): rolled back.
    let plan = decide(&c, &o, at(90));
    assert_eq!(plan.status.phase, Some(Phase::Failed));

    let (c, o) = no_data(NoDataPolicy::Fail);
    let plan = decide(&c, &o, at(45));
    assert_eq!(
        (plan.status.canary_weight, plan.status.failed_checks),
        (20, 1)
    );
}

#[test]
fn session_affinity_names_the_cookie_after_the_release() {
    let mut world = edited(|c| {
        c.spec.analysis.session_affinity = Some(crate::api::SessionAffinity {
            cookie_name: "canary".into(),
            ..Default::default()
        })
    });
    let lines = world.release(3600);
    assert!(lines
        .iter()
        .all(|l| l.routes.session.as_deref() == Some("v2")));
}

#[test]
fn deadline_in_phases_that_cannot_roll_back_is_reported_once() {
    let mut c = canary();
    c.status = Some(CanaryStatus {
        phase: Some(Phase::Initializing),
        last_transition_time: Some(Time(t0())),
        ..Default::default()
    });
    let o = observed("v1", ready("v1", 2), Some(not_ready("v1", 2)));
    let plan = decide(&c, &o, at(61));
    let ready = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "ProgressDeadlineExceeded");
    assert_eq!(plan.events.len(), 1);
    c.status = Some(plan.status);
    assert!(decide(&c, &o, at(70)).events.is_empty());
}

#[test]
fn a_muted_gate_waits_without_alerting() {
    for mute in [false, true] {
        let mut c = canary();
        c.spec.analysis.webhooks = vec![crate::api::CanaryWebhook {
            mute_alert: Some(mute),
            ..hook(WebhookType::ConfirmRollout)
        }];
        c.status = Some(status(Phase::Succeeded, 0, 0, t0()));
        let mut o = observed("v3", ready("v3", 0), Some(ready("v2", 2)));
        o.gates
            .insert(WebhookType::ConfirmRollout, Err("closed".into()));
        let plan = decide(&c, &o, at(10));
        assert_eq!(plan.status.phase, Some(Phase::Waiting));
        let alerted = plan.events.iter().any(|e| e.alert.is_some());
        assert_eq!(alerted, !mute, "muteAlert {mute}");
    }
}

#[test]
fn a_scrape_that_has_watched_too_briefly_costs_no_check_whatever_the_policy() {
    // A new controller (restart, leader change) has one sample: not a verdict.
    for policy in [NoDataPolicy::Fail, NoDataPolicy::Hold, NoDataPolicy::Skip] {
        let mut c = canary();
        c.status = Some(status(Phase::Progressing, 20, 1, t0()));
        let mut o = observed("v2", ready("v2", 2), Some(ready("v1", 2)));
        let mut m = good_metrics();
        m[1].value = Err(MetricError::Warming("only one sample".into()));
        m[1].on_no_data = policy;
        o.metrics = Some(m);
        let plan = decide(&c, &o, at(45));
        let s = &plan.status;
        assert_eq!(
            (s.phase, s.canary_weight, s.failed_checks),
            (Some(Phase::Progressing), 20, 1),
            "{policy:?}"
        );
        // The step is not taken: the check runs again at the next reconcile.
        assert_eq!(s.last_step_time, Some(Time(t0())), "{policy:?}");
        assert_eq!(plan.requeue_after, Duration::from_secs(45), "{policy:?}");
        assert!(
            messages(&plan)[0].starts_with(
                "Waiting for catalog-release.istioinaction's metrics: only one sample"
            ),
            "{policy:?}: {:?}",
            messages(&plan)
        );
        // A wait like any other: past progressDeadlineSeconds (60 s) it is a rollback.
        let plan = decide(&c, &o, at(90));
        assert_eq!(plan.status.phase, Some(Phase::Failed), "{policy:?}");
    }
}
