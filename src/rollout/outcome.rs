//! Plans the shell used to build by hand, and what a plan means for the metrics: a
//! problem found only while applying (`blocked`), a pass that acts on nothing (`idle`),
//! and the end of a run (`run_ended`).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::decide::{empty_plan, set_condition, Event, EventType, Plan};
use crate::api::{Canary, CanaryStatus, Phase};

/// How soon a blocked Canary is looked at again; fixing the spec triggers a reconcile
/// at once anyway.
pub const BLOCKED_REQUEUE: Duration = Duration::from_secs(60);

/// A plan that acts on nothing, keeps the status and looks again after `requeue_after`.
pub fn idle(canary: &Canary, requeue_after: Duration) -> Plan {
    empty_plan(canary.status.clone().unwrap_or_default(), requeue_after)
}

/// A problem the user must fix that applying the plan ran into (the target has no app
/// label, ...): condition `Ready=False` with reason `Blocked` and one Warning event per
/// distinct message. `planned` is the status to start from when the Canary has none yet.
/// None when this message is already reported.
pub fn blocked(
    canary: &Canary,
    planned: &CanaryStatus,
    message: &str,
    now: Timestamp,
) -> Option<Plan> {
    let mut status = canary.status.clone().unwrap_or_else(|| planned.clone());
    if !set_condition(&mut status, "Ready", "False", "Blocked", message, now) {
        return None;
    }
    let mut plan = empty_plan(status, BLOCKED_REQUEUE);
    plan.events.push(Event {
        type_: EventType::Warning,
        reason: "Blocked",
        message: message.to_string(),
        alert: None,
    });
    Some(plan)
}

/// A run that ended in this plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunEnd {
    pub phase: Phase,
    /// Since the run started (the `Promoted` condition turned Unknown), when known.
    pub took: Option<Duration>,
}

/// Whether the plan ends a run: the phase becomes Succeeded or Failed now.
pub fn run_ended(
    before: Option<&CanaryStatus>,
    after: &CanaryStatus,
    now: Timestamp,
) -> Option<RunEnd> {
    let phase = after.phase.unwrap_or_default();
    let was = before.and_then(|s| s.phase);
    if was == Some(phase) || !matches!(phase, Phase::Succeeded | Phase::Failed) {
        return None;
    }
    let started = before
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Promoted"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let took = started.map(|t| Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO));
    Some(RunEnd { phase, took })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::CanaryCondition;
    use crate::rollout::tests::{at, canary, with_status};

    fn status(phase: Option<Phase>, promoted_since: Option<i64>) -> CanaryStatus {
        let mut s = CanaryStatus {
            phase,
            ..Default::default()
        };
        if let Some(t) = promoted_since {
            s.conditions.push(CanaryCondition {
                type_: "Promoted".into(),
                status: "Unknown".into(),
                last_update_time: Some(Time(at(t))),
                last_transition_time: Some(Time(at(t))),
                reason: "Progressing".into(),
                message: String::new(),
            });
        }
        s
    }

    #[test]
    fn a_run_ends_when_the_phase_becomes_terminal() {
        use Phase::*;
        // (before, after, ended)
        let cases = [
            (
                Some(status(Some(Progressing), Some(0))),
                Succeeded,
                Some(RunEnd {
                    phase: Succeeded,
                    took: Some(Duration::from_secs(90)),
                }),
            ),
            (
                Some(status(Some(Progressing), Some(30))),
                Failed,
                Some(RunEnd {
                    phase: Failed,
                    took: Some(Duration::from_secs(60)),
                }),
            ),
            (
                Some(status(Some(Progressing), None)),
                Failed,
                Some(RunEnd {
                    phase: Failed,
                    took: None,
                }),
            ),
            // Already terminal: counted when it became so, not again.
            (Some(status(Some(Succeeded), Some(0))), Succeeded, None),
            (Some(status(Some(Progressing), Some(0))), Progressing, None),
            (None, Initialized, None),
            // A run's start after the decision's clock counts as zero, not negative.
            (
                Some(status(Some(Progressing), Some(500))),
                Succeeded,
                Some(RunEnd {
                    phase: Succeeded,
                    took: Some(Duration::ZERO),
                }),
            ),
        ];
        for (before, after, want) in cases {
            let got = run_ended(before.as_ref(), &status(Some(after), None), at(90));
            assert_eq!(got, want, "{before:?} -> {after:?}");
        }
    }

    #[test]
    fn a_blocked_canary_is_reported_once_per_message() {
        let first = blocked(
            &canary(),
            &status(Some(Phase::Initializing), None),
            "no app label",
            at(0),
        )
        .expect("reported");
        let ready = first
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "Blocked", "no app label")
        );
        assert_eq!(
            first.status.phase,
            Some(Phase::Initializing),
            "the planned status is the base"
        );
        assert_eq!(first.events.len(), 1);
        assert_eq!(
            (first.events[0].type_, first.events[0].reason),
            (EventType::Warning, "Blocked")
        );
        assert!(!first.ensure_objects && first.routes.is_none() && first.target_replicas.is_none());
        assert_eq!(first.requeue_after, BLOCKED_REQUEUE);

        let again = with_status(first.status.clone());
        assert!(blocked(&again, &CanaryStatus::default(), "no app label", at(5)).is_none());
        let other =
            blocked(&again, &CanaryStatus::default(), "no port", at(5)).expect("a new message");
        let ready = other
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.message, "no port");
        assert_eq!(
            ready.last_transition_time,
            Some(Time(at(0))),
            "still False since the first report"
        );
    }

    #[test]
    fn an_idle_plan_acts_on_nothing() {
        let c = with_status(status(Some(Phase::Progressing), Some(0)));
        let plan = idle(&c, Duration::from_secs(5));
        assert_eq!(plan.status, c.status.clone().unwrap());
        assert!(plan.need.is_none() && !plan.ensure_objects && plan.routes.is_none());
        assert!(plan.events.is_empty() && plan.consumed_actions.is_empty() && !plan.post_rollout);
        assert_eq!(plan.requeue_after, Duration::from_secs(5));
    }
}
