//! `revertOnDeletion`: deleting the Canary gives the app back as it was before sluice
//! managed it. A finalizer holds the deletion until the target runs its replicas again
//! and the apex Service selects its pods (and is no longer owned, so it stays); then the
//! garbage collector removes the primary, the routes and the other Services.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::apply::{apply, Error, FIELD_MANAGER};
use super::context::Context;
use super::observe::workload_state;
use crate::api::{Canary, DEFAULT_PROGRESS_DEADLINE_SECONDS};
use crate::rollout::{Event, EventType};
use crate::workloads::{self, AppLabel};

pub const FINALIZER: &str = "sluice.dev/revert-on-deletion";

fn has_finalizer(canary: &Canary) -> bool {
    canary.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer to match `spec.revertOnDeletion`.
pub async fn sync_finalizer(canary: &Canary, ctx: &Context) -> Result<(), Error> {
    let wanted = canary.spec.revert_on_deletion == Some(true);
    if wanted == has_finalizer(canary) {
        return Ok(());
    }
    let mut finalizers: Vec<String> = canary
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if wanted {
        finalizers.push(FINALIZER.to_string());
    }
    write_finalizers(canary, finalizers, ctx).await
}

/// The whole list, guarded by the resourceVersion read, so another finalizer added
/// meanwhile is not lost (a conflict is retried by the error policy).
async fn write_finalizers(
    canary: &Canary,
    finalizers: Vec<String>,
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<Canary> = Api::namespaced(
        ctx.client.clone(),
        &canary.namespace().ok_or(Error::NoNamespace)?,
    );
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": canary.resource_version(),
        }
    });
    ctx.metrics.api_calls.inc();
    api.patch(
        &canary.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Handles a Canary being deleted.
pub async fn on_deletion(canary: &Canary, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(canary) {
        // Owned objects are removed by the garbage collector through owner references.
        return Ok(Action::await_change());
    }
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    let key = ObjectRef::new(&canary.spec.target_ref.name).within(&ns);
    if let Some(target) = ctx.stores.deployments.get(&key) {
        let replicas = canary
            .status
            .as_ref()
            .and_then(|s| s.target_replicas)
            .unwrap_or(1)
            .max(1);
        let current = target.spec.as_ref().and_then(|s| s.replicas);
        if current != Some(replicas) {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            ctx.metrics.api_calls.inc();
            api.patch(
                &canary.spec.target_ref.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(workloads::target_scale(canary, replicas)),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
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
            .map(|t| Timestamp::now().duration_since(t.0).as_secs())
            .unwrap_or(0);
        if let Err(why) = workload_state(&target, None).readiness(100) {
            if deleting_for < deadline {
                tracing::info!(canary = %canary.name_any(), "revert waits for the target: {why}");
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
        }
        let app = AppLabel::of(&target)?;
        let apex = workloads::services(canary, &app, app.canary_selector(), None)
            .into_iter()
            .find(|s| s.name_any() == canary.service_name());
        if let Some(mut apex) = apex {
            // Unowned, so the garbage collector leaves the app's Service in place.
            apex.metadata.owner_references = None;
            apply(
                ctx,
                &ctx.stores.services,
                Api::<Service>::namespaced(ctx.client.clone(), &ns),
                apex,
            )
            .await?;
        }
        let event = Event {
            type_: EventType::Normal,
            reason: "Reverted",
            message: format!(
                "Canary deleted: {}.{ns} restored to {replicas} replicas and Service {} selects it again",
                canary.spec.target_ref.name,
                canary.service_name()
            ),
            alert: None,
        };
        ctx.metrics.api_calls.inc();
        if let Err(err) = ctx
            .events
            .publish(&workloads::canary_object_ref(canary), &event)
            .await
        {
            tracing::warn!(error = %err, "publishing event failed");
        }
    }
    let finalizers = canary
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    write_finalizers(canary, finalizers, ctx).await?;
    Ok(Action::await_change())
}
