//! Removes a router's per-namespace objects (sluice-router's Deployment, RBAC, PDB) once
//! no Canary in the namespace uses that router.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use kube::runtime::reflector;
use kube::{Api, Client, ResourceExt};

use super::context::Context;
use crate::api::{Canary, RouterKind};
use crate::router::SharedObjects;

/// How often namespaces are checked for a router that no Canary uses.
const ROUTER_SWEEP: Duration = Duration::from_secs(30);

/// The namespaces among `present` (those holding a router's shared objects) where no
/// Canary uses that router (a Canary being deleted still counts: its Service may still
/// lead to the router until it is reverted).
pub fn unused_shared(
    canaries: &[Arc<Canary>],
    present: &BTreeSet<String>,
    router: RouterKind,
    default_provider: RouterKind,
) -> BTreeSet<String> {
    let used: BTreeSet<String> = canaries
        .iter()
        .filter(|c| c.spec.provider.unwrap_or(default_provider) == router)
        .filter_map(|c| c.namespace())
        .collect();
    present.difference(&used).cloned().collect()
}

/// The namespaces holding `shared` (its last kind, applied last, named `shared.name`).
fn namespaces_holding(ctx: &Context, shared: &SharedObjects) -> BTreeSet<String> {
    let Some(last) = shared.kinds.last() else {
        return Default::default();
    };
    ctx.stores
        .routed
        .iter()
        .filter(|(watched, _)| watched.kind == *last)
        .flat_map(|(_, store)| store.state())
        .filter(|o| o.metadata.name.as_deref() == Some(shared.name))
        .filter_map(|o| o.namespace())
        .collect()
}

/// Deletes a router's shared objects in namespaces found unused in two sweeps in a row,
/// so a Canary that is being created (or switching provider) is not raced.
pub(super) async fn remove_unused_shared_objects(
    ctx: Arc<Context>,
    canaries: reflector::Store<Canary>,
) {
    let mut suspects: HashMap<RouterKind, BTreeSet<String>> = Default::default();
    loop {
        tokio::time::sleep(ROUTER_SWEEP).await;
        for router in ctx.routers.all() {
            let Some(shared) = router.shared_objects() else {
                continue;
            };
            let present = namespaces_holding(&ctx, &shared);
            let unused = unused_shared(
                &canaries.state(),
                &present,
                router.kind(),
                ctx.config.default_provider,
            );
            let before = suspects.entry(router.kind()).or_default();
            for ns in unused.intersection(before) {
                tracing::info!(namespace = %ns, router = router.kind().as_str(), objects = shared.name, "removing a router's objects: no Canary here uses it");
                if let Err(err) = delete_shared(&ctx.client, ns, &shared).await {
                    tracing::warn!(namespace = %ns, error = %err, "removing a router's objects");
                }
            }
            *before = unused;
        }
    }
}

async fn delete_shared(
    client: &Client,
    ns: &str,
    shared: &SharedObjects,
) -> Result<(), kube::Error> {
    use kube::api::DeleteParams;
    // In reverse order of creation: a Deployment's pods stop before their permissions go.
    for kind in shared.kinds.iter().rev() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &kind.api_resource());
        match api.delete(shared.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(ns: &str, provider: &str) -> Arc<Canary> {
        Arc::new(
            serde_yaml::from_str(&format!(
                "apiVersion: sluice.dev/v1beta1\nkind: Canary\nmetadata: {{name: c, namespace: {ns}}}\nspec: {{{provider}targetRef: {{kind: Deployment, name: app}}, service: {{port: 80}}, analysis: {{stepWeight: 10}}}}\n"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn shared_objects_without_a_canary_of_their_router_in_the_namespace_are_unused() {
        let canaries = [
            canary("shop", "provider: sluice, "),
            canary("mesh", "provider: istio, "),
            canary("plain", ""),
        ];
        let present: std::collections::BTreeSet<String> = ["shop", "mesh", "plain", "empty"]
            .into_iter()
            .map(String::from)
            .collect();
        // (default provider, namespaces whose sluice-router is unused)
        let cases: [(RouterKind, &[&str]); 2] = [
            (RouterKind::Istio, &["empty", "mesh", "plain"]),
            (RouterKind::Sluice, &["empty", "mesh"]),
        ];
        for (default, want) in cases {
            let got = unused_shared(&canaries, &present, RouterKind::Sluice, default);
            assert_eq!(
                got.iter().map(String::as_str).collect::<Vec<_>>(),
                want,
                "default {default:?}"
            );
        }
    }
}
