//! `revertOnDeletion` as a decision: from the Canary being deleted and what is seen of its
//! target, the next step that gives the app back as it was before sluice managed it. The
//! controller's `revert` module carries the steps out.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::decide::{Event, EventType, WorkloadState};
use crate::api::{Canary, DEFAULT_PROGRESS_DEADLINE_SECONDS};

/// The finalizer that holds a Canary's deletion until the revert is done.
pub const FINALIZER: &str = "sluice.dev/revert-on-deletion";

/// The next step of a revert.
#[derive(Clone, Debug, PartialEq)]
pub enum RevertStep {
    /// Nothing holds the deletion: the garbage collector removes what the Canary owns.
    Nothing,
    /// Give the target its replicas back, then look again after `requeue_after`.
    ScaleTarget {
        replicas: i32,
        requeue_after: Duration,
    },
    /// Wait for the target's pods before traffic moves to them.
    WaitForTarget {
        why: String,
        requeue_after: Duration,
    },
    /// Point the apex Service at the target (unowned, so it stays), report `event`, and
    /// remove the finalizer.
    Restore { event: Event },
    /// The target is gone: remove the finalizer, nothing to give back.
    Release,
}

pub fn has_finalizer(canary: &Canary) -> bool {
    canary
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

/// The finalizer list `spec.revertOnDeletion` asks for, when it differs from the
/// Canary's (other finalizers kept in their order).
pub fn wanted_finalizers(canary: &Canary) -> Option<Vec<String>> {
    let wanted = canary.spec.revert_on_deletion == Some(true);
    if wanted == has_finalizer(canary) {
        return None;
    }
    let mut finalizers = finalizers_without_ours(canary);
    if wanted {
        finalizers.push(FINALIZER.to_string());
    }
    Some(finalizers)
}

/// The Canary's finalizers in their order, without [`FINALIZER`]: the list that releases
/// the deletion once the revert is done.
pub fn finalizers_without_ours(canary: &Canary) -> Vec<String> {
    canary
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

/// The next step for a Canary being deleted; `target` is its Deployment as cached.
pub fn revert_step(canary: &Canary, target: Option<&WorkloadState>, now: Timestamp) -> RevertStep {
    if !has_finalizer(canary) {
        return RevertStep::Nothing;
    }
    let Some(target) = target else {
        return RevertStep::Release;
    };
    // The replicas the target ran before sluice scaled it to zero.
    let replicas = canary
        .status
        .as_ref()
        .and_then(|s| s.target_replicas)
        .unwrap_or(1)
        .max(1);
    if target.replicas != replicas {
        return RevertStep::ScaleTarget {
            replicas,
            requeue_after: Duration::from_secs(1),
        };
    }
    // Traffic moves to the target once it is ready, or once waiting is pointless.
    let deadline = canary
        .spec
        .progress_deadline_seconds
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
        .max(1) as i64;
    let deleting_for = canary
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| now.duration_since(t.0).as_secs())
        .unwrap_or(0);
    if let Err(why) = target.readiness(100) {
        if deleting_for < deadline {
            return RevertStep::WaitForTarget {
                why,
                requeue_after: Duration::from_secs(2),
            };
        }
    }
    let ns = canary.metadata.namespace.as_deref().unwrap_or_default();
    RevertStep::Restore {
        event: Event {
            type_: EventType::Normal,
            reason: "Reverted",
            message: format!(
                "Canary deleted: {}.{ns} restored to {replicas} replicas and Service {} selects it again",
                canary.spec.target_ref.name,
                canary.service_name()
            ),
            alert: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::rollout::tests::{at, ready};

    /// Scenario B's Canary (progressDeadlineSeconds 60), being deleted since `at(0)`.
    fn canary(finalizer: bool, revert: Option<bool>, target_replicas: Option<i32>) -> Canary {
        let mut c = crate::rollout::tests::canary();
        c.spec.revert_on_deletion = revert;
        c.metadata.finalizers = Some(if finalizer {
            vec!["other".into(), FINALIZER.into()]
        } else {
            vec!["other".into()]
        });
        c.metadata.deletion_timestamp = Some(Time(at(0)));
        c.status = Some(crate::api::CanaryStatus {
            target_replicas,
            ..Default::default()
        });
        c
    }

    fn target(replicas: i32, available: i32) -> WorkloadState {
        WorkloadState {
            available_replicas: available,
            ..ready("v1", replicas)
        }
    }

    #[test]
    fn the_finalizer_follows_revert_on_deletion() {
        // (has the finalizer, revertOnDeletion, wanted list)
        type Case = (bool, Option<bool>, Option<Vec<&'static str>>);
        let cases: [Case; 4] = [
            (false, Some(true), Some(vec!["other", FINALIZER])),
            (true, Some(true), None),
            (true, None, Some(vec!["other"])),
            (false, Some(false), None),
        ];
        for (has, revert, want) in cases {
            let got = wanted_finalizers(&canary(has, revert, None));
            let want: Option<Vec<String>> = want.map(|w| w.into_iter().map(String::from).collect());
            assert_eq!(got, want, "finalizer {has}, revertOnDeletion {revert:?}");
        }
    }

    #[test]
    fn a_revert_scales_the_target_back_waits_for_it_and_restores_the_service() {
        let scale = |replicas| RevertStep::ScaleTarget {
            replicas,
            requeue_after: Duration::from_secs(1),
        };
        // (finalizer, status.targetReplicas, target, seconds since deletion, step)
        let cases = [
            (
                false,
                Some(3),
                Some(target(0, 0)),
                0,
                Some(RevertStep::Nothing),
            ),
            (true, Some(3), None, 0, Some(RevertStep::Release)),
            (true, Some(3), Some(target(0, 0)), 0, Some(scale(3))),
            // Never to zero: a target scaled from nothing gets one replica.
            (true, None, Some(target(0, 0)), 0, Some(scale(1))),
            (true, Some(0), Some(target(0, 0)), 0, Some(scale(1))),
            (true, Some(3), Some(target(3, 1)), 10, None),
            (
                true,
                Some(3),
                Some(target(3, 3)),
                10,
                Some(RevertStep::Restore { event: restored(3) }),
            ),
            // Past the progress deadline the Service moves even to a target not ready.
            (
                true,
                Some(3),
                Some(target(3, 1)),
                60,
                Some(RevertStep::Restore { event: restored(3) }),
            ),
        ];
        for (finalizer, replicas, target, after, want) in cases {
            let got = revert_step(
                &canary(finalizer, Some(true), replicas),
                target.as_ref(),
                at(after),
            );
            match want {
                Some(want) => assert_eq!(got, want, "{replicas:?} {target:?} after {after}s"),
                None => assert!(
                    matches!(&got, RevertStep::WaitForTarget { why, requeue_after }
                        if why.contains("1 of 3") && *requeue_after == Duration::from_secs(2)),
                    "{got:?}"
                ),
            }
        }
    }

    fn restored(replicas: i32) -> Event {
        Event {
            type_: EventType::Normal,
            reason: "Reverted",
            message: format!("Canary deleted: catalog.istioinaction restored to {replicas} replicas and Service catalog selects it again"),
            alert: None,
        }
    }
}
