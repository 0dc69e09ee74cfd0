//! One reconcile: observe, decide, execute. The plan's writes go through
//! [`super::apply`]: server-side apply under one field manager, skipped when unchanged.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::apply::{apply, apply_dynamic, write_status, Error, FIELD_MANAGER};
use super::context::Context;
use super::gates;
use super::metrics::{CanaryLabels, MetricLabels, WorkloadLabels};
use super::observe::{observe, Observation};
use super::revert;
use crate::api::{Canary, CanaryStatus, Phase};
use crate::rollout::{self, EventType, Need, Plan, PrimaryAction, ReleaseSpec};
use crate::router::TrafficRouter;
use crate::workloads::configs;
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
    record_metrics(&canary, &plan, &ctx);
    Ok(Action::requeue(requeue_after))
}

/// What `execute` got done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    Complete,
    /// Everything but the switch of the apex Service, whose new backend (the router) is
    /// not available yet.
    ApexWaiting,
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
                observed.metrics = Some(ctx.analysis.evaluate(canary, &spec, router).await);
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
        applied = ensure_objects(canary, &ns, target, &app, router, observation, plan, ctx).await?;
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

#[allow(clippy::too_many_arguments)]
async fn ensure_objects(
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
    for obj in router.static_objects(canary)? {
        apply_dynamic(ctx, router, ns, obj).await?;
    }
    if let Some(routes) = &plan.routes {
        for obj in router.route_objects(canary, routes.clone())? {
            apply_dynamic(ctx, router, ns, obj).await?;
        }
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
    tracked: &std::collections::BTreeSet<configs::ConfigRef>,
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

fn record_metrics(canary: &Canary, plan: &Plan, ctx: &Context) {
    let name = canary.name_any();
    let namespace = canary.namespace().unwrap_or_default();
    let labels = CanaryLabels {
        name: name.clone(),
        namespace: namespace.clone(),
    };
    let phase = plan.status.phase.unwrap_or_default();
    ctx.metrics
        .status
        .get_or_create(&labels)
        .set(phase.status_code());
    ctx.metrics
        .weight
        .get_or_create(&WorkloadLabels {
            workload: canary.spec.target_ref.name.clone(),
            namespace: namespace.clone(),
        })
        .set(plan.status.canary_weight as i64);
    for result in &plan.status.last_analysis {
        if let Some(value) = result.value {
            ctx.metrics
                .metric_analysis
                .get_or_create(&MetricLabels {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    metric: result.name.clone(),
                })
                .set(value);
        }
    }
    if let Some(end) = rollout::run_ended(canary.status.as_ref(), &plan.status, Timestamp::now()) {
        let counter = if end.phase == Phase::Succeeded {
            &ctx.metrics.successes
        } else {
            &ctx.metrics.failures
        };
        counter.get_or_create(&labels).inc();
        if let Some(took) = end.took {
            ctx.metrics
                .duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
    }
}
