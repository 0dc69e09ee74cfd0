//! The executor's writes: server-side apply under one field manager, skipped when the
//! cached copy already holds what would be written. Both the release (`reconcile`) and
//! the revert on deletion (`revert`) write through here.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::Context;
use crate::api::{Canary, CanaryStatus};
use crate::router::{self, TrafficRouter};
use crate::workloads;

/// The one field manager for everything sluice writes.
pub const FIELD_MANAGER: &str = "sluice";
/// Hash of the content sluice last applied to an object; an equal hash skips the write.
pub const APPLIED_HASH: &str = "sluice.dev/applied-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Workload(#[from] workloads::Error),
    #[error(transparent)]
    Router(#[from] router::Error),
    #[error("serializing {0}: {1}")]
    Serialize(&'static str, serde_json::Error),
    #[error("Canary has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(_) => "kube",
            Error::Workload(e) => e.label(),
            Error::Router(_) => "router",
            Error::Serialize(..) => "serialize",
            Error::NoNamespace => "no_namespace",
        }
    }

    /// Spec problems the user must fix: reported on the Canary, retried slowly.
    pub(super) fn is_user_error(&self) -> bool {
        matches!(self, Error::Workload(_))
    }
}

/// Applies `obj` unless the cached copy already carries the same content hash.
pub(super) async fn apply<K>(
    ctx: &Context,
    store: &Store<K>,
    api: Api<K>,
    mut obj: K,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let hash = content_hash(&obj)?;
    let name = obj.name_any();
    let cached = store.get(&ObjectRef::new(&name).within(&obj.namespace().unwrap_or_default()));
    if cached
        .as_ref()
        .and_then(|c| c.annotations().get(APPLIED_HASH))
        == Some(&hash)
    {
        return Ok(false);
    }
    obj.annotations_mut().insert(APPLIED_HASH.into(), hash);
    ctx.metrics.api_calls.inc();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(true)
}

/// Applies a router's object unless its cached copy carries the same content hash and
/// has not drifted. Every kind a router writes is watched, so one deleted or edited by
/// hand is put back by the next reconcile.
pub(super) async fn apply_dynamic(
    ctx: &Context,
    router: &dyn TrafficRouter,
    ns: &str,
    mut obj: DynamicObject,
) -> Result<bool, Error> {
    obj.metadata.namespace = Some(ns.to_string());
    let types = obj.types.clone().unwrap_or_default();
    let hash = content_hash(&obj)?;
    let unchanged = ctx.stores.routed_copy(&obj).is_some_and(|live| {
        live.annotations().get(APPLIED_HASH) == Some(&hash) && !router.drifted(&obj, &live)
    });
    if unchanged {
        return Ok(false);
    }
    obj.annotations_mut().insert(APPLIED_HASH.into(), hash);
    let (group, version) = match types.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), types.api_version.clone()),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &types.kind));
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    ctx.metrics.api_calls.inc();
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(true)
}

fn content_hash<T: Serialize>(obj: &T) -> Result<String, Error> {
    use std::hash::Hasher;
    let bytes = serde_json::to_vec(obj).map_err(|e| Error::Serialize("object", e))?;
    let mut h = fnv::FnvHasher::default();
    h.write(&bytes);
    Ok(format!("{:016x}", h.finish()))
}

pub(super) async fn write_status(
    canary: &Canary,
    status: &CanaryStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if canary.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Canary> = Api::namespaced(
        ctx.client.clone(),
        &canary.namespace().ok_or(Error::NoNamespace)?,
    );
    // Server-side apply of the whole status: fields the decision cleared are removed.
    let patch = serde_json::json!({
        "apiVersion": "sluice.dev/v1beta1",
        "kind": "Canary",
        "status": status,
    });
    ctx.metrics.api_calls.inc();
    let written = api
        .patch_status(
            &canary.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.remember_written(canary, written);
    Ok(())
}
