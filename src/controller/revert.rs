//! `revertOnDeletion`: deleting the Canary gives the app back as it was before sluice
//! managed it. A finalizer holds the deletion until the target runs its replicas again
//! and the apex Service selects its pods (and is no longer owned, so it stays); then the
//! garbage collector removes the primary, the routes and the other Services. What to do
//! next is decided by [`rollout::revert_step`]; this module carries it out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::apply::{apply, apply_dynamic, Error, FIELD_MANAGER};
use super::context::Context;
use super::observe::workload_state;
use crate::api::Canary;
use crate::rollout::{self, RevertStep};
use crate::workloads::{self, AppLabel};

/// Adds or removes the finalizer to match `spec.revertOnDeletion`.
pub async fn sync_finalizer(canary: &Canary, ctx: &Context) -> Result<(), Error> {
    match rollout::wanted_finalizers(canary) {
        Some(finalizers) => write_finalizers(canary, finalizers, ctx).await,
        None => Ok(()),
    }
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

/// Handles a Canary being deleted: one step of the revert per reconcile.
pub async fn on_deletion(canary: &Canary, ctx: &Context) -> Result<Action, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    let key = ObjectRef::new(&canary.spec.target_ref.name).within(&ns);
    let target = ctx.stores.deployments.get(&key);
    let seen = target.as_deref().map(|t| workload_state(t, None));
    match rollout::revert_step(canary, seen.as_ref(), Timestamp::now()) {
        // Owned objects are removed by the garbage collector through owner references.
        RevertStep::Nothing => return Ok(Action::await_change()),
        RevertStep::ScaleTarget {
            replicas,
            requeue_after,
        } => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            ctx.metrics.api_calls.inc();
            api.patch(
                &canary.spec.target_ref.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(workloads::target_scale(canary, replicas)),
            )
            .await?;
            return Ok(Action::requeue(requeue_after));
        }
        RevertStep::WaitForTarget { why, requeue_after } => {
            tracing::info!(canary = %canary.name_any(), "revert waits for the target: {why}");
            return Ok(Action::requeue(requeue_after));
        }
        RevertStep::Restore { event } => {
            if let Some(target) = &target {
                restore_apex(canary, &ns, target, ctx).await?;
            }
            hand_back_routes(canary, &ns, ctx).await?;
            ctx.metrics.api_calls.inc();
            if let Err(err) = ctx
                .events
                .publish(&workloads::canary_object_ref(canary), &event)
                .await
            {
                tracing::warn!(error = %err, "publishing event failed");
            }
        }
        RevertStep::Release => {}
    }
    write_finalizers(canary, rollout::finalizers_without_ours(canary), ctx).await?;
    Ok(Action::await_change())
}

/// Writes the objects the router keeps once the Canary is gone. They are rendered
/// without the owner reference, and the field manager dropping it removes it. A spec the
/// router cannot render any more does not hold the deletion: the routes then go with the
/// Canary.
async fn hand_back_routes(canary: &Canary, ns: &str, ctx: &Context) -> Result<(), Error> {
    let router = ctx.router(canary);
    let objects = match router.finalize(canary) {
        Ok(objects) => objects,
        Err(err) => {
            tracing::warn!(canary = %canary.name_any(), error = %err, "no routes handed back");
            return Ok(());
        }
    };
    for obj in objects {
        apply_dynamic(ctx, router, ns, obj).await?;
    }
    Ok(())
}

/// The apex Service selects the target's pods again, and is unowned, so the garbage
/// collector leaves the app's Service in place.
async fn restore_apex(
    canary: &Canary,
    ns: &str,
    target: &Deployment,
    ctx: &Context,
) -> Result<(), Error> {
    let app = AppLabel::of(target)?;
    let apex = workloads::services(canary, &app, app.canary_selector(), None)
        .into_iter()
        .find(|s| s.name_any() == canary.service_name());
    if let Some(mut apex) = apex {
        apex.metadata.owner_references = None;
        apply(
            ctx,
            &ctx.stores.services,
            Api::<Service>::namespaced(ctx.client.clone(), ns),
            apex,
        )
        .await?;
    }
    Ok(())
}
