//! `kubectl sluice status NAME --timeout 10m`: wait for the run of the revision the target
//! runs now, and turn its outcome into an exit code for CI pipelines.
//!
//! A Canary that says Succeeded may describe the previous release: the controller has not
//! yet seen a pod template (or ConfigMap) applied a moment ago, or a Canary spec edit.
//! So a run counts as ended only when
//! - `status.observedGeneration` has caught up with `metadata.generation`, and
//! - `status.lastAppliedSpec` is the revision the target runs now, computed here as the
//!   controller computes it (pod template plus tracked ConfigMaps/Secrets), and
//! - Succeeded/Initialized: `lastAppliedSpec == lastPromotedSpec` (the primary runs it);
//!   Failed: the run of `lastAppliedSpec` was rolled back and no retry of it is pending.
//!
//! When the target's revision cannot be computed (no target, or Secrets this user may not
//! read) only the status is used.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;

use super::cluster::{ClusterError, Connection};
use super::{annotation, is_paused, RETRY};
use crate::api::{Canary, Phase};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("canary {name} was deleted while waiting")]
    Deleted { name: String },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Where the run for the target's current revision stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still going (or not started); why, for the log.
    Running(String),
    Succeeded(String),
    Failed(String),
    /// It cannot run until the Canary is fixed.
    Invalid(String),
}

impl Outcome {
    /// The exit code of `status` (2 is the timeout).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Succeeded(_) => 0,
            Outcome::Failed(_) => 1,
            Outcome::Running(_) => 2,
            Outcome::Invalid(_) => 3,
        }
    }
}

/// The outcome for the revision the target runs (`target_revision`, None if unknown).
pub fn outcome(canary: &Canary, target_revision: Option<&str>) -> Outcome {
    let Some(status) = &canary.status else {
        return Outcome::Running("the controller has not reported on this Canary yet".into());
    };
    if let Some(generation) = canary.metadata.generation {
        if status.observed_generation.unwrap_or(0) < generation {
            return Outcome::Running(format!(
                "the controller has not yet seen generation {generation} of the Canary"
            ));
        }
    }
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    if let Some(c) = ready.filter(|c| c.status == "False" && c.reason == "InvalidSpec") {
        return Outcome::Invalid(format!("invalid spec: {}", c.message));
    }
    let applied = status.last_applied_spec.as_deref().unwrap_or_default();
    let promoted = status.last_promoted_spec.as_deref().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    if let Some(target) = target_revision {
        if target != applied {
            return Outcome::Running(format!(
                "revision {target} not picked up yet (last applied: {})",
                if applied.is_empty() { "none" } else { applied }
            ));
        }
    }
    let settled = !applied.is_empty() && applied == promoted;
    match phase {
        Phase::Succeeded if settled => Outcome::Succeeded(format!("revision {applied} promoted")),
        Phase::Initialized if settled => Outcome::Succeeded(format!(
            "initialized on revision {applied}: nothing to release"
        )),
        // The target was set back to what the primary runs after a failure.
        Phase::Failed if settled => Outcome::Succeeded(format!(
            "nothing to release: the target runs the promoted revision {applied}"
        )),
        Phase::Failed if annotation(canary, RETRY) == Some(applied) => {
            Outcome::Running(format!("retry of revision {applied} requested"))
        }
        Phase::Failed => {
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Promoted")
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Outcome::Failed(format!("revision {applied} rolled back{why}"))
        }
        other => Outcome::Running(other.as_str().to_string()),
    }
}

/// One log line for the run's state; `status` prints it whenever it changes.
pub fn progress_line(canary: &Canary, outcome: &Outcome) -> String {
    let status = canary.status.clone().unwrap_or_default();
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("Unknown");
    let threshold = canary.spec.analysis.threshold.unwrap_or(1);
    let mut line = format!(
        "{phase}  weight {}  failed checks {}/{threshold}",
        status.canary_weight, status.failed_checks
    );
    if is_paused(canary) {
        line.push_str("  [paused]");
    }
    if let Outcome::Running(why) = outcome {
        if why != phase {
            line.push_str(&format!("  ({why})"));
        }
    }
    line
}

/// Waits up to `timeout` for the run to end, calling `log` with a line for each change.
/// Ok(outcome): ended (or still Running at the timeout). Err: could not follow it at all.
pub async fn wait(
    conn: &Connection,
    name: &str,
    timeout: Duration,
    mut log: impl FnMut(&str),
) -> Result<Outcome, StatusError> {
    let deadline = Instant::now() + timeout;
    let mut canary = conn.canary(name).await?;
    let mut target = conn.target_revision(&canary).await?;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(conn.canaries(), config).default_backoff();
    futures::pin_mut!(stream);
    // The target's revision is not on the Canary: look at it again now and then.
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_line = String::new();
    let mut last_error = String::new();
    loop {
        let now = outcome(&canary, target.as_deref());
        let line = progress_line(&canary, &now);
        if line != last_line {
            log(&line);
            last_line = line;
        }
        if !matches!(now, Outcome::Running(_)) {
            return Ok(now);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(left) => return Ok(now),
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => canary = c,
                Some(Ok(watcher::Event::Delete(_))) => {
                    return Err(StatusError::Deleted { name: name.to_string() })
                }
                Some(Ok(_)) | None => {}
                // The watch retries with backoff; say why once.
                Some(Err(e)) => {
                    let e = e.to_string();
                    if e != last_error {
                        log(&format!("watch error (retrying): {e}"));
                        last_error = e;
                    }
                }
            },
            _ = tick.tick() => match conn.target_revision(&canary).await {
                Ok(t) => target = t,
                Err(e) => {
                    let e = e.to_string();
                    if e != last_error {
                        log(&format!("reading the target (retrying): {e}"));
                        last_error = e;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(generation: i64, status: &str, annotations: &str) -> Canary {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: web, namespace: shop, generation: {generation}, annotations: {{{annotations}}}}}
spec:
  targetRef: {{kind: Deployment, name: web}}
  service: {{port: 80}}
  analysis: {{threshold: 2}}
status: {status}
"#
        ))
        .expect("canary yaml")
    }

    /// What, Canary generation, status, annotations, target revision, exit code, text.
    type Case<'a> = (&'a str, i64, String, &'a str, Option<&'a str>, i32, &'a str);

    #[test]
    fn outcomes() {
        use Outcome::*;
        let st = |phase: &str, applied: &str, promoted: &str| {
            format!(
                "{{phase: {phase}, observedGeneration: 3, lastAppliedSpec: {applied}, lastPromotedSpec: {promoted}}}"
            )
        };
        let failed_with_reason = "{phase: Failed, observedGeneration: 3, lastAppliedSpec: r2, \
            lastPromotedSpec: r1, conditions: [{type: Promoted, status: \"False\", reason: Failed, \
            message: Canary analysis failed}]}";
        let invalid = "{phase: Initializing, observedGeneration: 3, conditions: [{type: Ready, \
            status: \"False\", reason: InvalidSpec, message: bad stepWeights}]}";
        let cases: Vec<Case> = vec![
            (
                "promoted",
                3,
                st("Succeeded", "r2", "r2"),
                "",
                Some("r2"),
                0,
                "revision r2 promoted",
            ),
            (
                "nothing to release",
                3,
                st("Initialized", "r1", "r1"),
                "",
                Some("r1"),
                0,
                "nothing to release",
            ),
            (
                "rolled back",
                3,
                failed_with_reason.into(),
                "",
                Some("r2"),
                1,
                "rolled back: Canary analysis failed",
            ),
            (
                "running",
                3,
                st("Progressing", "r2", "r1"),
                "",
                Some("r2"),
                2,
                "Progressing",
            ),
            (
                "waiting for promotion",
                3,
                st("WaitingPromotion", "r2", "r1"),
                "",
                Some("r2"),
                2,
                "WaitingPromotion",
            ),
            (
                "template changed after the success",
                3,
                st("Succeeded", "r2", "r2"),
                "",
                Some("r3"),
                2,
                "revision r3 not picked up",
            ),
            (
                "template changed after a failure",
                3,
                st("Failed", "r2", "r1"),
                "",
                Some("r3"),
                2,
                "revision r3 not picked up",
            ),
            (
                "Canary spec edited, not yet seen",
                4,
                st("Succeeded", "r2", "r2"),
                "",
                Some("r2"),
                2,
                "generation 4",
            ),
            (
                "no status yet",
                3,
                "null".into(),
                "",
                Some("r1"),
                2,
                "not reported",
            ),
            (
                "retry pending",
                3,
                st("Failed", "r2", "r1"),
                "sluice.dev/retry: r2",
                Some("r2"),
                2,
                "retry of revision r2",
            ),
            (
                "stale retry does not hold",
                3,
                st("Failed", "r2", "r1"),
                "sluice.dev/retry: r0",
                Some("r2"),
                1,
                "rolled back",
            ),
            (
                "reverted after a failure",
                3,
                st("Failed", "r1", "r1"),
                "",
                Some("r1"),
                0,
                "nothing to release",
            ),
            (
                "invalid spec",
                3,
                invalid.into(),
                "",
                Some("r1"),
                3,
                "bad stepWeights",
            ),
            (
                "target unknown: status only",
                3,
                st("Succeeded", "r2", "r2"),
                "",
                None,
                0,
                "promoted",
            ),
            (
                "target unknown, failed",
                3,
                st("Failed", "r2", "r1"),
                "",
                None,
                1,
                "rolled back",
            ),
        ];
        for (what, generation, status, annotations, target, code, text) in cases {
            let c = canary(generation, &status, annotations);
            let got = outcome(&c, target);
            assert_eq!(got.exit_code(), code, "{what}: {got:?}");
            let message = match &got {
                Running(m) | Succeeded(m) | Failed(m) | Invalid(m) => m,
            };
            assert!(message.contains(text), "{what}: {got:?}");
        }
    }

    #[test]
    fn progress_lines() {
        let c = canary(
            3,
            "{phase: Progressing, observedGeneration: 3, canaryWeight: 30, failedChecks: 1, lastAppliedSpec: r2}",
            r#"sluice.dev/paused: "true""#,
        );
        let o = outcome(&c, Some("r2"));
        assert_eq!(
            progress_line(&c, &o),
            "Progressing  weight 30  failed checks 1/2  [paused]"
        );
        let o = outcome(&c, Some("r3"));
        assert_eq!(
            progress_line(&c, &o),
            "Progressing  weight 30  failed checks 1/2  [paused]  (revision r3 not picked up yet (last applied: r2))"
        );
    }
}
