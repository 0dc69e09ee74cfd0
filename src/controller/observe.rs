//! Observation: what the decision needs, read from the caches and the metrics providers.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::context::Context;
use super::workloads::{primary_name, revision_hash, REVISION_ANNOTATION};
use crate::api::Canary;
use crate::rollout::{analysis_due, Observed, ReleaseSpec, WorkloadState};

/// The observation plus the objects the executor renders from.
pub struct Observation {
    pub observed: Observed,
    pub target: Option<std::sync::Arc<Deployment>>,
    pub primary: Option<std::sync::Arc<Deployment>>,
}

pub fn workload_state(deployment: &Deployment, revision: Option<String>) -> WorkloadState {
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    WorkloadState {
        revision,
        replicas: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        rollout_observed: status.observed_generation.unwrap_or(0) >= generation,
    }
}

pub async fn observe(canary: &Canary, ctx: &Context, now: Timestamp) -> Observation {
    let ns = canary.namespace().unwrap_or_default();
    let target = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&canary.spec.target_ref.name).within(&ns));
    let primary = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&primary_name(canary)).within(&ns));
    let tracked = BTreeMap::new();
    let revision = target
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .map(|s| revision_hash(&s.template, &tracked))
        .unwrap_or_default();
    let mut observed = Observed {
        target: target
            .as_ref()
            .map(|t| workload_state(t, Some(revision.clone()))),
        primary: primary
            .as_ref()
            .map(|p| workload_state(p, p.annotations().get(REVISION_ANNOTATION).cloned())),
        revision,
        metrics: None,
    };
    if canary.phase() == Some(crate::api::Phase::Progressing) {
        ctx.analysis.sample(canary).await;
    }
    if analysis_due(canary, now) {
        if let Ok(spec) = ReleaseSpec::from_spec(&canary.spec) {
            observed.metrics = Some(ctx.analysis.evaluate(canary, &spec).await);
        }
    }
    Observation {
        observed,
        target,
        primary,
    }
}
