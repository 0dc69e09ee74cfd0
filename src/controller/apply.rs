//! The executor's writes: server-side apply under one field manager, skipped when the
//! cached copy already holds what would be written. Both the release (`reconcile`) and
//! the revert on deletion (`revert`) write through here.

use kube::api::{DynamicObject, Patch, PatchParams};
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
    /// A router rendered a kind it does not list among its watched kinds: the controller
    /// could not see it edited or deleted, so it is not written.
    #[error("provider {provider} rendered {api_version} {kind}, which it does not list among the kinds it watches")]
    UnwatchedKind {
        provider: &'static str,
        api_version: String,
        kind: String,
    },
    /// The router writes kinds whose CRDs are not installed.
    #[error("provider {provider} writes {kinds}, which this cluster does not serve: install the CRDs (for Istio's kinds, Istio or the chart's istio-crds; for HTTPRoutes, the Gateway API's standard channel); the controller starts watching them within a minute")]
    NotServed {
        provider: &'static str,
        kinds: String,
    },
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
            Error::NotServed { .. } => "not_served",
            Error::UnwatchedKind { .. } => "unwatched_kind",
        }
    }

    /// How soon a reconcile that failed with this error runs again: soon after a
    /// conflict (another writer raced us, the next read is fresh), later otherwise.
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => std::time::Duration::from_secs(1),
            _ => std::time::Duration::from_secs(10),
        }
    }

    /// Spec problems the user must fix: reported on the Canary, retried slowly.
    pub(super) fn is_user_error(&self) -> bool {
        match self {
            Error::Workload(_) | Error::NotServed { .. } => true,
            Error::Router(e) => e.is_spec_error(),
            _ => false,
        }
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
    let Some(kind) = router
        .watched()
        .into_iter()
        .map(|w| w.kind)
        .find(|k| k.is_kind_of(&obj))
    else {
        let types = obj.types.unwrap_or_default();
        return Err(Error::UnwatchedKind {
            provider: router.kind().as_str(),
            api_version: types.api_version,
            kind: types.kind,
        });
    };
    let hash = content_hash(&obj)?;
    let unchanged = ctx.stores.routed_copy(&obj).is_some_and(|live| {
        live.annotations().get(APPLIED_HASH) == Some(&hash) && !router.drifted(&obj, &live)
    });
    if unchanged {
        return Ok(false);
    }
    obj.annotations_mut().insert(APPLIED_HASH.into(), hash);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
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

/// The executor's requests, against a mock API server that records them: what is
/// written, where, with which field manager, and what is skipped.
#[cfg(test)]
mod tests {

    use super::*;
    use crate::controller::mock_api::{context, mock_client};
    use crate::rollout::{Routes, Weights};
    use crate::router::{Kind, Routers};

    /// Server-side apply, forced, as the one field manager.
    fn assert_one_field_manager(query: &str) {
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort();
        assert_eq!(params, ["fieldManager=sluice", "force=true"], "{query}");
    }

    fn canary() -> Canary {
        serde_yaml::from_str(
            "apiVersion: sluice.dev/v1beta1\nkind: Canary\nmetadata: {name: web, namespace: shop, uid: u1}\nspec: {targetRef: {kind: Deployment, name: web}, service: {port: 80}, analysis: {stepWeight: 10}}\n",
        )
        .unwrap()
    }

    fn routes(canary_weight: i32) -> Routes {
        Routes {
            weights: Weights::canary(canary_weight),
            mirror: None,
            session: None,
        }
    }

    /// The live copy the API server would hold after applying `desired`, then `edit`.
    fn live(desired: &DynamicObject, edit: impl Fn(&mut serde_json::Value)) -> DynamicObject {
        let mut o = desired.clone();
        o.metadata.namespace = Some("shop".into());
        let hash = content_hash(&o).unwrap();
        o.annotations_mut().insert(APPLIED_HASH.into(), hash);
        let mut value = serde_json::to_value(&o).unwrap();
        edit(&mut value);
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_conflict_is_retried_soon_other_errors_later() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        let cases = [
            (api(409), 1, "conflict"),
            (api(500), 10, "kube"),
            (api(404), 10, "kube"),
            (Error::NoNamespace, 10, "no_namespace"),
        ];
        for (err, secs, label) in cases {
            assert_eq!(
                err.retry_after(),
                std::time::Duration::from_secs(secs),
                "{err}"
            );
            assert_eq!(err.label(), label, "{err}");
        }
    }

    #[tokio::test]
    async fn a_route_is_written_only_when_missing_changed_or_edited_by_hand() {
        let c = canary();
        let routers = Routers::new("sluice-proxy:test".into(), 2);
        let istio = routers.for_kind(crate::api::RouterKind::Istio);
        let vs = |w| istio.route_objects(&c, routes(w)).unwrap().remove(0);
        let vs_path = "/apis/networking.istio.io/v1beta1/namespaces/shop/virtualservices/web";
        // (cached copy, desired, written)
        let cases: Vec<(&str, Option<DynamicObject>, DynamicObject, bool)> = vec![
            ("nothing cached", None, vs(10), true),
            ("applied as is", Some(live(&vs(10), |_| {})), vs(10), false),
            ("new weights", Some(live(&vs(10), |_| {})), vs(20), true),
            (
                "weight edited by hand",
                Some(live(&vs(10), |v| {
                    v["spec"]["http"][0]["route"][1]["weight"] = 50.into()
                })),
                vs(10),
                true,
            ),
            (
                "a field another manager added",
                Some(live(&vs(10), |v| {
                    v["spec"]["gateways"] = serde_json::json!(["mesh"])
                })),
                vs(10),
                false,
            ),
        ];
        for (name, cached, desired, want_write) in cases {
            let (client, seen) = mock_client(|req| (200, req.body.clone()));
            let ctx = context(client, cached.into_iter().collect());
            let wrote = apply_dynamic(&ctx, istio, "shop", desired).await.unwrap();
            let seen = seen.lock().unwrap();
            assert_eq!(wrote, want_write, "{name}");
            assert_eq!(seen.len(), usize::from(want_write), "{name}: {seen:?}");
            if let Some(req) = seen.first() {
                assert_eq!(req.method, "PATCH", "{name}");
                assert_eq!(req.path, vs_path, "{name}");
                assert_one_field_manager(&req.query);
                assert_eq!(req.content_type, "application/apply-patch+yaml", "{name}");
                assert!(
                    req.body["metadata"]["annotations"][APPLIED_HASH].is_string(),
                    "{name}: the applied hash is written with the object"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_routers_deployment_is_compared_by_hash_only() {
        // The API server fills a Deployment's spec with defaults: a live copy that differs
        // from the rendered one only there is not written again; one deleted is.
        let c = canary();
        let routers = Routers::new("sluice-proxy:test".into(), 2);
        let sluice = routers.for_kind(crate::api::RouterKind::Sluice);
        let deployment = sluice
            .static_objects(&c)
            .unwrap()
            .into_iter()
            .find(|o| Kind::DEPLOYMENT.is_kind_of(o))
            .unwrap();
        let defaulted = live(&deployment, |v| {
            v["spec"]["revisionHistoryLimit"] = 10.into();
            v["spec"]["progressDeadlineSeconds"] = 600.into();
        });
        for (name, cached, want_write) in [
            ("defaulted", Some(defaulted), false),
            ("deleted", None, true),
        ] {
            let (client, seen) = mock_client(|req| (200, req.body.clone()));
            let ctx = context(client, cached.into_iter().collect());
            let wrote = apply_dynamic(&ctx, sluice, "shop", deployment.clone())
                .await
                .unwrap();
            assert_eq!(wrote, want_write, "{name}");
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), usize::from(want_write), "{name}: {seen:?}");
            if let Some(req) = seen.first() {
                assert_eq!(
                    req.path,
                    "/apis/apps/v1/namespaces/shop/deployments/sluice-router"
                );
                assert_one_field_manager(&req.query);
            }
        }
    }

    #[tokio::test]
    async fn a_kind_the_router_does_not_watch_is_not_written() {
        let c = canary();
        let routers = Routers::new("sluice-proxy:test".into(), 2);
        let deployment = routers
            .for_kind(crate::api::RouterKind::Sluice)
            .static_objects(&c)
            .unwrap()
            .into_iter()
            .find(|o| Kind::DEPLOYMENT.is_kind_of(o))
            .unwrap();
        let (client, seen) = mock_client(|req| (200, req.body.clone()));
        let ctx = context(client, Vec::new());
        let istio = routers.for_kind(crate::api::RouterKind::Istio);
        let err = apply_dynamic(&ctx, istio, "shop", deployment)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider istio rendered apps/v1 Deployment, which it does not list among the kinds it watches"
        );
        assert_eq!(err.label(), "unwatched_kind");
        assert!(seen.lock().unwrap().is_empty(), "no request is made");
    }

    #[tokio::test]
    async fn the_status_is_applied_whole_and_only_when_it_changed() {
        let mut c = canary();
        c.status = Some(CanaryStatus {
            canary_weight: 5,
            ..Default::default()
        });
        let unchanged = c.status.clone().unwrap();
        let mut changed = unchanged.clone();
        changed.canary_weight = 10;
        for (name, status, want_write) in
            [("unchanged", unchanged, false), ("changed", changed, true)]
        {
            let answer = serde_json::to_value(&c).unwrap();
            let (client, seen) = mock_client(move |_| (200, answer.clone()));
            let ctx = context(client, vec![]);
            write_status(&c, &status, &ctx).await.unwrap();
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), usize::from(want_write), "{name}: {seen:?}");
            if let Some(req) = seen.first() {
                assert_eq!(req.method, "PATCH");
                assert_eq!(
                    req.path,
                    "/apis/sluice.dev/v1beta1/namespaces/shop/canaries/web/status"
                );
                assert_one_field_manager(&req.query);
                assert_eq!(req.content_type, "application/apply-patch+yaml");
                assert_eq!(req.body["kind"], "Canary");
                assert_eq!(req.body["status"]["canaryWeight"], 10);
            }
        }
    }
}
