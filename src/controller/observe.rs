//! Observation: what the decision needs, read from the caches and the metrics providers.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::context::Context;
use crate::api::Canary;
use crate::rollout::{Observed, WorkloadState};
use crate::workloads::configs::{self, ConfigKind, ConfigRef};
use crate::workloads::{primary_name, revision_hash, REVISION_ANNOTATION};

/// The observation plus the objects the executor renders from.
pub struct Observation {
    pub observed: Observed,
    pub target: Option<std::sync::Arc<Deployment>>,
    pub primary: Option<std::sync::Arc<Deployment>>,
    /// Configs the primary runs on `-primary` copies of.
    pub tracked: BTreeSet<ConfigRef>,
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

/// Reads the caches; metric checks and webhooks run later, when the decision asks.
pub async fn observe(canary: &Canary, ctx: &Context) -> Observation {
    let ns = canary.namespace().unwrap_or_default();
    let target = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&canary.spec.target_ref.name).within(&ns));
    let primary = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&primary_name(canary)).within(&ns));
    let template = target
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .map(|s| &s.template);
    let (tracked, tracked_configs) = match template {
        Some(template) => tracked_configs(ctx, &ns, template),
        None => Default::default(),
    };
    let revision = template
        .map(|t| revision_hash(t, &tracked_configs))
        .unwrap_or_default();
    let observed = Observed {
        target: target
            .as_ref()
            .map(|t| workload_state(t, Some(revision.clone()))),
        primary: primary
            .as_ref()
            .map(|p| workload_state(p, p.annotations().get(REVISION_ANNOTATION).cloned())),
        revision,
        metrics: None,
        gates: Default::default(),
        tracked_configs,
    };
    if canary.phase() == Some(crate::api::Phase::Progressing) {
        ctx.analysis
            .sample(canary, ctx.router(canary), &ctx.stores)
            .await;
    }
    Observation {
        observed,
        target,
        primary,
        tracked,
    }
}

/// The configs the template uses that exist and are tracked, with their content hashes.
fn tracked_configs(
    ctx: &Context,
    ns: &str,
    template: &PodTemplateSpec,
) -> (BTreeSet<ConfigRef>, BTreeMap<String, String>) {
    let mut tracked = BTreeSet::new();
    let mut hashes = BTreeMap::new();
    for r in configs::referenced(template) {
        let hash = match r.kind {
            ConfigKind::ConfigMap => ctx
                .stores
                .config_maps
                .get(&ObjectRef::new(&r.name).within(ns))
                .filter(|c| configs::is_trackable(c.metadata.annotations.as_ref()))
                .map(|c| configs::config_map_hash(&c)),
            ConfigKind::Secret => ctx
                .stores
                .secrets
                .get(&ObjectRef::new(&r.name).within(ns))
                .filter(|s| configs::is_trackable(s.metadata.annotations.as_ref()))
                .map(|s| configs::secret_hash(&s)),
        };
        if let Some(hash) = hash {
            hashes.insert(r.key(), hash);
            tracked.insert(r);
        }
    }
    (tracked, hashes)
}
