//! `promote`, `abort`, `retry`, `pause`, `resume`: which annotation to write, or why not.

use kube::ResourceExt;
use serde_json::{json, Value};

use super::{annotation, is_paused, ABORT, PAUSED, PROMOTE, RETRY};
use crate::api::{Canary, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Abort,
    Retry,
    Pause,
    Resume,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The action makes no sense in the Canary's current state.
    #[error("{0}")]
    Refused(String),
    #[error("canary {0} kept changing while it was being annotated; try again")]
    Conflict(String),
    #[error(transparent)]
    Cluster(#[from] super::cluster::ClusterError),
}

/// What to do: a merge patch of the annotations (None: nothing to change) and what to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub patch: Option<Value>,
    pub message: String,
}

/// Phases in which a run can be promoted or aborted (the contract with the controller).
const RUNNING: [Phase; 3] = [Phase::Progressing, Phase::WaitingPromotion, Phase::Waiting];

/// Decides the patch for `action` on `canary` as it is now.
pub fn plan(canary: &Canary, action: Action) -> Result<Plan, ControlError> {
    let name = canary.name_any();
    let status = canary.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let revision = status.last_applied_spec.clone().unwrap_or_default();
    let verb = action.verb();
    let state = format!("phase {}, weight {}", phase.as_str(), status.canary_weight);
    let one_shot = |key: &str| -> Result<Plan, ControlError> {
        if revision.is_empty() {
            return Err(ControlError::Refused(format!(
                "cannot {verb} canary {name}: it has no current revision yet (status.lastAppliedSpec is empty)"
            )));
        }
        if annotation(canary, key) == Some(revision.as_str()) {
            return Ok(Plan {
                patch: None,
                message: format!(
                    "canary.sluice.dev/{name}: {verb} of revision {revision} already requested ({state})"
                ),
            });
        }
        Ok(Plan {
            patch: Some(annotations_patch(canary, key, Some(&revision))),
            message: format!(
                "canary.sluice.dev/{name}: {verb} requested for revision {revision} ({state})"
            ),
        })
    };
    match action {
        Action::Promote | Action::Abort => {
            if !RUNNING.contains(&phase) {
                return Err(ControlError::Refused(format!(
                    "cannot {verb} canary {name}: phase is {}; only a running release \
                     (Progressing, WaitingPromotion or Waiting) can be {}",
                    phase.as_str(),
                    if action == Action::Promote {
                        "promoted"
                    } else {
                        "aborted"
                    }
                )));
            }
            if action == Action::Promote && annotation(canary, ABORT) == Some(revision.as_str()) {
                return Err(ControlError::Refused(format!(
                    "cannot promote canary {name}: an abort of revision {revision} is pending"
                )));
            }
            one_shot(if action == Action::Promote {
                PROMOTE
            } else {
                ABORT
            })
        }
        Action::Retry => {
            if phase != Phase::Failed {
                return Err(ControlError::Refused(format!(
                    "cannot retry canary {name}: phase is {}; only a Failed release can be retried",
                    phase.as_str()
                )));
            }
            one_shot(RETRY)
        }
        Action::Pause => {
            if is_paused(canary) {
                return Ok(Plan {
                    patch: None,
                    message: format!("canary.sluice.dev/{name}: already paused ({state})"),
                });
            }
            Ok(Plan {
                patch: Some(annotations_patch(canary, PAUSED, Some("true"))),
                message: format!("canary.sluice.dev/{name}: paused ({state})"),
            })
        }
        Action::Resume => {
            if annotation(canary, PAUSED).is_none() {
                return Ok(Plan {
                    patch: None,
                    message: format!("canary.sluice.dev/{name}: not paused ({state})"),
                });
            }
            Ok(Plan {
                patch: Some(annotations_patch(canary, PAUSED, None)),
                message: format!("canary.sluice.dev/{name}: resumed ({state})"),
            })
        }
    }
}

/// A merge patch setting (or, with None, removing) one annotation. It carries the
/// resourceVersion that was read, so the API server refuses it if the Canary changed in
/// between, and the revision written is the one that was checked.
fn annotations_patch(canary: &Canary, key: &str, value: Option<&str>) -> Value {
    let mut metadata = json!({ "annotations": { key: value } });
    if let Some(rv) = &canary.metadata.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({ "metadata": metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(phase: &str, annotations: &str) -> Canary {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: web, namespace: shop, resourceVersion: "42", annotations: {{{annotations}}}}}
spec:
  targetRef: {{kind: Deployment, name: web}}
  service: {{port: 80}}
  analysis: {{}}
status: {{phase: {phase}, canaryWeight: 20, lastAppliedSpec: rev2, lastPromotedSpec: rev1}}
"#
        ))
        .expect("canary yaml")
    }

    enum Want {
        Patch(Value),
        NoChange(&'static str),
        Refused(&'static str),
    }

    #[test]
    fn plans() {
        let set = |key: &str, value: &str| json!({"metadata": {"resourceVersion": "42", "annotations": {key: value}}});
        let cases = vec![
            (
                "Progressing",
                "",
                Action::Promote,
                Want::Patch(set(PROMOTE, "rev2")),
            ),
            (
                "WaitingPromotion",
                "",
                Action::Promote,
                Want::Patch(set(PROMOTE, "rev2")),
            ),
            (
                "Waiting",
                "",
                Action::Abort,
                Want::Patch(set(ABORT, "rev2")),
            ),
            (
                "Progressing",
                "",
                Action::Abort,
                Want::Patch(set(ABORT, "rev2")),
            ),
            (
                "Succeeded",
                "",
                Action::Promote,
                Want::Refused("phase is Succeeded"),
            ),
            (
                "Failed",
                "",
                Action::Abort,
                Want::Refused("phase is Failed"),
            ),
            (
                "Promoting",
                "",
                Action::Abort,
                Want::Refused("phase is Promoting"),
            ),
            (
                "Progressing",
                "sluice.dev/abort: rev2",
                Action::Promote,
                Want::Refused("an abort of revision rev2 is pending"),
            ),
            (
                "Progressing",
                "sluice.dev/promote: rev2",
                Action::Promote,
                Want::NoChange("already requested"),
            ),
            // A promote left from another revision is replaced.
            (
                "Progressing",
                "sluice.dev/promote: rev1",
                Action::Promote,
                Want::Patch(set(PROMOTE, "rev2")),
            ),
            ("Failed", "", Action::Retry, Want::Patch(set(RETRY, "rev2"))),
            (
                "Progressing",
                "",
                Action::Retry,
                Want::Refused("only a Failed release"),
            ),
            (
                "Succeeded",
                "",
                Action::Retry,
                Want::Refused("phase is Succeeded"),
            ),
            (
                "Succeeded",
                "",
                Action::Pause,
                Want::Patch(set(PAUSED, "true")),
            ),
            (
                "Progressing",
                r#"sluice.dev/paused: "true""#,
                Action::Pause,
                Want::NoChange("already paused"),
            ),
            (
                "Progressing",
                r#"sluice.dev/paused: "true""#,
                Action::Resume,
                Want::Patch(
                    json!({"metadata": {"resourceVersion": "42", "annotations": {PAUSED: null}}}),
                ),
            ),
            // Any value is removed on resume, not only "true".
            (
                "Progressing",
                r#"sluice.dev/paused: "yes""#,
                Action::Resume,
                Want::Patch(
                    json!({"metadata": {"resourceVersion": "42", "annotations": {PAUSED: null}}}),
                ),
            ),
            (
                "Progressing",
                "",
                Action::Resume,
                Want::NoChange("not paused"),
            ),
        ];
        for (phase, annotations, action, want) in cases {
            let c = canary(phase, annotations);
            let got = plan(&c, action);
            let what = format!("{action:?} in {phase} with {{{annotations}}}");
            match (want, got) {
                (Want::Patch(p), Ok(plan)) => assert_eq!(plan.patch, Some(p), "{what}"),
                (Want::NoChange(m), Ok(plan)) => {
                    assert_eq!(plan.patch, None, "{what}");
                    assert!(plan.message.contains(m), "{what}: {}", plan.message);
                }
                (Want::Refused(m), Err(ControlError::Refused(msg))) => {
                    assert!(msg.contains(m), "{what}: {msg}")
                }
                (_, got) => panic!("{what}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn no_revision_yet_is_refused() {
        let mut c = canary("Progressing", "");
        if let Some(s) = c.status.as_mut() {
            s.last_applied_spec = None;
        }
        let err = plan(&c, Action::Promote).expect_err("refused");
        assert!(err.to_string().contains("no current revision"), "{err}");
    }
}
