//! Removes a router's per-namespace objects (sluice-router's Deployment, RBAC, PDB) once
//! no Canary in the namespace uses that router.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use kube::runtime::reflector;
use kube::{Api, Client, ResourceExt};

use super::context::Context;
use crate::api::Canary;
use crate::router::SharedObjects;

/// How often namespaces are checked for a router that no Canary uses.
const ROUTER_SWEEP: Duration = Duration::from_secs(30);

/// The namespaces among `present` (those holding shared objects) where no Canary uses
/// them, as `uses` judges each (a Canary being deleted still counts: its Service may
/// still lead to the router until it is reverted).
pub fn unused_shared(
    canaries: &[Arc<Canary>],
    present: &BTreeSet<String>,
    uses: impl Fn(&Canary) -> bool,
) -> BTreeSet<String> {
    let used: BTreeSet<String> = canaries
        .iter()
        .filter(|c| uses(c))
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
    let mut suspects: HashMap<&'static str, BTreeSet<String>> = Default::default();
    loop {
        tokio::time::sleep(ROUTER_SWEEP).await;
        // Two routers may share the same objects (sluice-router serves `provider: sluice`
        // and Gateway API Service parents): they are in use while either router uses them.
        let mut shared_sets: Vec<SharedObjects> = ctx
            .routers
            .all()
            .iter()
            .filter_map(|r| r.shared_objects())
            .collect();
        shared_sets.dedup_by_key(|s| s.name);
        for shared in shared_sets {
            let present = namespaces_holding(&ctx, &shared);
            let uses = |c: &Canary| {
                let router = ctx
                    .routers
                    .for_kind(c.spec.provider.unwrap_or(ctx.config.default_provider));
                router
                    .shared_objects()
                    .is_some_and(|s| s.name == shared.name)
                    && router.uses_shared_objects(c)
            };
            let unused = unused_shared(&canaries.state(), &present, uses);
            let before = suspects.entry(shared.name).or_default();
            for ns in unused.intersection(before) {
                tracing::info!(namespace = %ns, objects = shared.name, "removing a router's shared objects: no Canary here uses them");
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
        let service = if provider.contains("service:") {
            ""
        } else {
            "service: {port: 80}, "
        };
        Arc::new(
            serde_yaml::from_str(&format!(
                "apiVersion: sluice.dev/v1beta1\nkind: Canary\nmetadata: {{name: c, namespace: {ns}}}\nspec: {{{provider}{service}targetRef: {{kind: Deployment, name: app}}, analysis: {{stepWeight: 10}}}}\n"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn shared_objects_without_a_canary_of_their_router_in_the_namespace_are_unused() {
        use crate::api::RouterKind;
        use crate::router::Routers;
        let routers = Routers::new("img".into(), 1);
        let canaries = [
            canary("shop", "provider: sluice, "),
            canary("mesh", "provider: istio, "),
            canary("plain", ""),
            canary(
                "gamma",
                "provider: \"gatewayapi:v1\", service: {port: 80, gatewayRefs: [{kind: Service, name: app}]}, ",
            ),
            canary(
                "edge",
                "provider: \"gatewayapi:v1\", service: {port: 80, gatewayRefs: [{name: public}]}, ",
            ),
        ];
        let present: std::collections::BTreeSet<String> =
            ["shop", "mesh", "plain", "empty", "gamma", "edge"]
                .into_iter()
                .map(String::from)
                .collect();
        // (default provider, namespaces whose sluice-router is unused)
        let cases: [(RouterKind, &[&str]); 2] = [
            (RouterKind::Istio, &["edge", "empty", "mesh", "plain"]),
            (RouterKind::Sluice, &["edge", "empty", "mesh"]),
        ];
        for (default, want) in cases {
            let uses = |c: &Canary| {
                let router = routers.for_kind(c.spec.provider.unwrap_or(default));
                router.shared_objects().is_some() && router.uses_shared_objects(c)
            };
            let got = unused_shared(&canaries, &present, uses);
            assert_eq!(
                got.iter().map(String::as_str).collect::<Vec<_>>(),
                want,
                "default {default:?}"
            );
        }
    }
}
