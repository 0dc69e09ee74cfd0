//! One reconcile: observe, decide (gathering what the decision asks for), execute. The
//! objects a plan ensures are in [`super::ensure`]; every write goes through
//! [`super::apply`]: server-side apply under one field manager, skipped when unchanged.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{write_status, Error, FIELD_MANAGER};
use super::context::Context;
use super::ensure::{self, Applied};
use super::gates;
use super::observe::{observe, Observation};
use super::revert;
use crate::api::{Canary, CanaryStatus};
use crate::rollout::{self, EventType, Need, Plan, ReleaseSpec};
use crate::workloads::{self, AppLabel};

/// How soon a reconcile that waits for a router to become available looks again.
const APEX_WAIT_REQUEUE: Duration = Duration::from_secs(2);

pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile();
    if !ctx.diagnostics.read().await.caches_synced {
        // Deciding on a partial cache would report objects as missing.
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if canary.metadata.deletion_timestamp.is_some() {
        return revert::on_deletion(&canary, &ctx).await;
    }
    revert::sync_finalizer(&canary, &ctx).await?;
    let canary = ctx.freshest(canary);
    let now = Timestamp::now();
    let mut observation = observe(&canary, &ctx).await;
    let plan = decide_gathering(&canary, &mut observation, now, &ctx).await;
    {
        let mut diag = ctx.diagnostics.write().await;
        diag.last_reconcile = Some(format!(
            "{}.{} at {now}",
            canary.name_any(),
            canary.namespace().unwrap_or_default()
        ));
    }
    let mut requeue_after = plan.requeue_after;
    match execute(&canary, &observation, &plan, &ctx).await {
        Ok(Applied::Complete) => {}
        Ok(Applied::ApexWaiting) => requeue_after = requeue_after.min(APEX_WAIT_REQUEUE),
        Err(err) if err.is_user_error() => {
            report_blocked(&canary, &plan.status, &err, &ctx, now).await?;
            return Ok(Action::requeue(rollout::BLOCKED_REQUEUE));
        }
        Err(err) => return Err(err),
    }
    ctx.metrics.record(&canary, &plan);
    Ok(Action::requeue(requeue_after))
}

/// Decides, gathering what the decision asks for (webhook answers, metric checks) and
/// deciding again, so each hook and query runs only when the decision reaches it.
async fn decide_gathering(
    canary: &Canary,
    observation: &mut Observation,
    now: Timestamp,
    ctx: &Context,
) -> Plan {
    // Each pass adds one answer; a release step needs at most a handful.
    for _ in 0..12 {
        let plan = rollout::decide(canary, &observation.observed, now);
        let observed = &mut observation.observed;
        match plan.need {
            None => return plan,
            Some(Need::Metrics) if observed.metrics.is_none() => {
                let spec = match ReleaseSpec::from_spec(&canary.spec) {
                    Ok(spec) => spec,
                    Err(_) => return plan,
                };
                let router = ctx.router(canary);
                observed.metrics = Some(
                    ctx.analysis
                        .evaluate(canary, &spec, router, &ctx.stores)
                        .await,
                );
            }
            Some(Need::Hooks(kind)) if !observed.gates.contains_key(&kind) => {
                let result = gates::call(ctx, canary, kind, &observed.revision).await;
                observed.gates.insert(kind, result);
            }
            Some(need) => {
                tracing::error!(canary = %canary.name_any(), ?need, "decision asked twice for the same observation");
                break;
            }
        }
    }
    // Unreachable with a sound decision; act on nothing and look again soon.
    rollout::idle(canary, Duration::from_secs(5))
}

/// Retries after an error, sooner for conflicts (another writer raced us).
pub fn error_policy(canary: Arc<Canary>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&super::metrics::ErrorLabels {
            error: err.label().into(),
        })
        .inc();
    tracing::warn!(canary = %canary.name_any(), error = %err, "reconcile failed");
    Action::requeue(err.retry_after())
}

async fn execute(
    canary: &Canary,
    observation: &Observation,
    plan: &Plan,
    ctx: &Context,
) -> Result<Applied, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    let mut applied = Applied::Complete;
    if let (true, Some(target)) = (plan.ensure_objects, observation.target.as_deref()) {
        let router = ctx.router(canary);
        let missing = crate::router::missing_kinds(router, &ctx.stores.served);
        if !missing.is_empty() {
            let kinds: Vec<String> = missing
                .iter()
                .map(|k| format!("{} ({})", k.kind, k.api_version()))
                .collect();
            return Err(Error::NotServed {
                provider: router.kind().as_str(),
                kinds: kinds.join(", "),
            });
        }
        let app = AppLabel::of(target)?;
        applied = ensure::ensure_objects(canary, &ns, target, &app, router, observation, plan, ctx)
            .await?;
    }
    if let Some(replicas) = plan.target_replicas {
        let current = observation
            .target
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.replicas);
        if current != Some(replicas) {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            ctx.metrics.api_calls.inc();
            api.patch(
                &canary.spec.target_ref.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(workloads::target_scale(canary, replicas)),
            )
            .await?;
        }
    }
    write_status(canary, &plan.status, ctx).await?;
    consume_actions(canary, plan, ctx).await?;
    publish_events(canary, plan, ctx).await;
    gates::notify(ctx, canary, plan).await;
    Ok(applied)
}

/// Removes the action annotations the plan handled, after the status that records their
/// effect is written: a failure here repeats only an action the status already shows done.
async fn consume_actions(canary: &Canary, plan: &Plan, ctx: &Context) -> Result<(), Error> {
    if plan.consumed_actions.is_empty() {
        return Ok(());
    }
    let annotations: serde_json::Map<String, serde_json::Value> = plan
        .consumed_actions
        .iter()
        .map(|key| (key.to_string(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    let api: Api<Canary> = Api::namespaced(
        ctx.client.clone(),
        &canary.namespace().ok_or(Error::NoNamespace)?,
    );
    ctx.metrics.api_calls.inc();
    api.patch(
        &canary.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn publish_events(canary: &Canary, plan: &Plan, ctx: &Context) {
    let reference = workloads::canary_object_ref(canary);
    for event in &plan.events {
        match event.type_ {
            EventType::Normal => tracing::info!(canary = %canary.name_any(), "{}", event.message),
            EventType::Warning => tracing::warn!(canary = %canary.name_any(), "{}", event.message),
        }
        ctx.metrics.api_calls.inc();
        // An event that cannot be written must not stop the release.
        if let Err(err) = ctx.events.publish(&reference, event).await {
            tracing::warn!(error = %err, "publishing event failed");
        }
    }
}

/// Reports an error the user must fix as a condition and a Warning event, once per
/// distinct message.
async fn report_blocked(
    canary: &Canary,
    planned: &CanaryStatus,
    err: &Error,
    ctx: &Context,
    now: Timestamp,
) -> Result<(), Error> {
    if let Some(plan) = rollout::blocked(canary, planned, &err.to_string(), now) {
        write_status(canary, &plan.status, ctx).await?;
        publish_events(canary, &plan, ctx).await;
    }
    Ok(())
}
