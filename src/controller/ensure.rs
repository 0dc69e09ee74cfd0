//! The objects a plan ensures, in the order that keeps traffic flowing: the primary
//! (with copies of its configs) and its autoscaler, the router's objects and routes, then
//! the Services, the apex last and only once its new backend can answer.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::apply::{apply, apply_dynamic, Error};
use super::context::Context;
use super::observe::Observation;
use crate::api::Canary;
use crate::rollout::{Plan, PrimaryAction};
use crate::router::TrafficRouter;
use crate::workloads::configs;
use crate::workloads::{self, AppLabel};

/// What `execute` got done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Complete,
    /// Everything but the switch of the apex Service, whose new backend (the router) is
    /// not available yet.
    ApexWaiting,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn ensure_objects(
    canary: &Canary,
    ns: &str,
    target: &Deployment,
    app: &AppLabel,
    router: &dyn TrafficRouter,
    observation: &Observation,
    plan: &Plan,
    ctx: &Context,
) -> Result<Applied, Error> {
    let client = &ctx.client;
    // Judged and rendered before anything is written: a spec the router cannot express
    // writes nothing.
    router.validate(canary)?;
    let static_objects = router.static_objects(canary)?;
    let route_objects = match &plan.routes {
        Some(routes) => router.route_objects(canary, routes.clone())?,
        None => vec![],
    };
    // Primary first: the Services and routes point at it.
    let mut template = target
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    if plan.primary != PrimaryAction::Keep {
        // The primary runs on copies, so the canary's configs can change under it.
        copy_configs(canary, ns, &observation.tracked, ctx).await?;
        configs::point_at_primary_copies(&mut template, &observation.tracked);
    }
    let primary = match plan.primary {
        PrimaryAction::Keep => None,
        PrimaryAction::Create { replicas } => Some(workloads::primary_deployment(
            canary,
            target,
            &template,
            &observation.observed.revision,
            Some(replicas),
        )?),
        PrimaryAction::Promote => {
            let replicas = observation
                .primary
                .as_ref()
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.replicas);
            let revision = plan
                .status
                .last_applied_spec
                .clone()
                .unwrap_or_else(|| observation.observed.revision.clone());
            Some(workloads::primary_deployment(
                canary, target, &template, &revision, replicas,
            )?)
        }
    };
    if let Some(primary) = primary {
        apply(
            ctx,
            &ctx.stores.deployments,
            Api::namespaced(client.clone(), ns),
            primary,
        )
        .await?;
    }
    if let Some(hpa_ref) = &canary.spec.autoscaler_ref {
        let key = ObjectRef::new(&hpa_ref.name).within(ns);
        if let Some(source) = ctx.stores.autoscalers.get(&key) {
            let copy = workloads::primary_autoscaler(canary, &source);
            apply(
                ctx,
                &ctx.stores.autoscalers,
                Api::namespaced(client.clone(), ns),
                copy,
            )
            .await?;
        }
    }
    // The router and its routes before the Services: the apex must not lead to a router
    // that does not exist yet.
    for obj in static_objects.into_iter().chain(route_objects) {
        apply_dynamic(ctx, router, ns, obj).await?;
    }
    let apex_selector = router.apex_selector(canary, app);
    let apex_name = canary.service_name().to_string();
    let mut applied = Applied::Complete;
    for svc in workloads::services(
        canary,
        app,
        apex_selector.clone(),
        router.apex_target_port(canary),
    ) {
        if svc.name_any() == apex_name {
            let current = ctx
                .stores
                .services
                .get(&ObjectRef::new(&apex_name).within(ns));
            if !apex_may_switch(ctx, ns, canary, router, current.as_deref(), &apex_selector) {
                tracing::info!(
                    canary = %canary.name_any(),
                    namespace = ns,
                    service = %apex_name,
                    "waiting for the router and the primary to be available before the Service points at the router"
                );
                applied = Applied::ApexWaiting;
                continue;
            }
        }
        apply(
            ctx,
            &ctx.stores.services,
            Api::<Service>::namespaced(client.clone(), ns),
            svc,
        )
        .await?;
    }
    Ok(applied)
}

/// Whether the apex Service may be pointed at its router now: it already is, or the
/// router Deployment and the primary both have an available pod. Switching earlier would
/// send the Service's callers to a router or a primary that cannot answer yet.
fn apex_may_switch(
    ctx: &Context,
    ns: &str,
    canary: &Canary,
    router: &dyn TrafficRouter,
    current: Option<&Service>,
    apex_selector: &std::collections::BTreeMap<String, String>,
) -> bool {
    let Some(backend) = router.apex_backend(canary) else {
        return true;
    };
    let already = current
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|selector| selector == apex_selector);
    let available = |name: &str| {
        ctx.stores
            .deployments
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|d| deployment_available(&d))
    };
    already || (available(backend) && available(&workloads::primary_name(canary)))
}

/// At least one pod of the Deployment's current spec is available.
fn deployment_available(d: &Deployment) -> bool {
    let status = d.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    observed.is_some()
        && observed >= d.metadata.generation
        && status.and_then(|s| s.available_replicas).unwrap_or(0) > 0
}

async fn copy_configs(
    canary: &Canary,
    ns: &str,
    tracked: &BTreeSet<configs::ConfigRef>,
    ctx: &Context,
) -> Result<(), Error> {
    for r in tracked {
        match r.kind {
            configs::ConfigKind::ConfigMap => {
                if let Some(source) = ctx
                    .stores
                    .config_maps
                    .get(&ObjectRef::new(&r.name).within(ns))
                {
                    let copy = configs::primary_config_map(canary, &source);
                    apply(
                        ctx,
                        &ctx.stores.config_maps,
                        Api::namespaced(ctx.client.clone(), ns),
                        copy,
                    )
                    .await?;
                }
            }
            configs::ConfigKind::Secret => {
                if let Some(source) = ctx.stores.secrets.get(&ObjectRef::new(&r.name).within(ns)) {
                    let copy = configs::primary_secret(canary, &source);
                    apply(
                        ctx,
                        &ctx.stores.secrets,
                        Api::namespaced(ctx.client.clone(), ns),
                        copy,
                    )
                    .await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_available_once_its_current_spec_has_an_available_pod() {
        let deployment =
            |generation: i64, observed: Option<i64>, available: Option<i32>| -> Deployment {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "sluice-router", "generation": generation},
                    "status": {"observedGeneration": observed, "availableReplicas": available},
                }))
                .unwrap()
            };
        // (generation, observedGeneration, availableReplicas, available)
        let cases = [
            (2, Some(2), Some(1), true),
            (2, Some(3), Some(2), true),
            (2, Some(2), Some(0), false),
            (2, Some(2), None, false),
            // The Deployment controller has not seen the latest spec: its pods may be old.
            (3, Some(2), Some(2), false),
            (1, None, Some(1), false),
        ];
        for (generation, observed, available, want) in cases {
            assert_eq!(
                deployment_available(&deployment(generation, observed, available)),
                want,
                "generation {generation}, observed {observed:?}, available {available:?}"
            );
        }
    }
}
