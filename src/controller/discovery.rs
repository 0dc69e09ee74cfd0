//! Which of the routers' kinds the API server serves: a kind whose CRD is not installed
//! is not watched, and its router's Canaries are reported blocked until it is.

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;

use crate::router::Kind;

/// The kinds among `kinds` the API server serves. A group version it does not know
/// (404) serves none; one that cannot be looked up now is taken as served, so that a
/// passing discovery failure never blocks Canaries (the watch retries on its own).
pub(super) async fn served_kinds(client: &Client, kinds: &[Kind]) -> BTreeSet<Kind> {
    let mut served = BTreeSet::new();
    let mut by_version: BTreeMap<String, Vec<Kind>> = Default::default();
    for kind in kinds {
        by_version
            .entry(kind.api_version())
            .or_default()
            .push(*kind);
    }
    for (api_version, kinds) in by_version {
        let listed = if api_version.contains('/') {
            client.list_api_group_resources(&api_version).await
        } else {
            client.list_core_api_resources(&api_version).await
        };
        match listed {
            Ok(list) => served.extend(
                kinds
                    .into_iter()
                    .filter(|k| list.resources.iter().any(|r| r.name == k.plural)),
            ),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                tracing::warn!(%api_version, error = %err, "API discovery failed; watching its kinds anyway");
                served.extend(kinds);
            }
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kinds_are_served_when_discovery_lists_them_or_cannot_say() {
        use crate::controller::mock_api::{mock_client, not_found};
        let list = |group_version: &str, plurals: &[&str]| {
            let resources: Vec<serde_json::Value> = plurals
                .iter()
                .map(|p| serde_json::json!({"name": p, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["get"]}))
                .collect();
            (
                200,
                serde_json::json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}),
            )
        };
        let (client, seen) = mock_client(move |req| match req.path.as_str() {
            // Istio is not installed.
            "/apis/networking.istio.io/v1beta1" => not_found(),
            "/apis/apps/v1" => list("apps/v1", &["deployments", "deployments/status"]),
            "/api/v1" => list("v1", &["pods", "services"]),
            "/apis/rbac.authorization.k8s.io/v1" => {
                list("rbac.authorization.k8s.io/v1", &["roles", "rolebindings"])
            }
            // A passing failure: taken as served.
            _ => (
                500,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "etcd timeout"}),
            ),
        });
        let kinds = [
            Kind::VIRTUAL_SERVICE,
            Kind::DESTINATION_RULE,
            Kind::DEPLOYMENT,
            Kind::SERVICE_ACCOUNT,
            Kind::ROLE,
            Kind::ROLE_BINDING,
            Kind::POD_DISRUPTION_BUDGET,
        ];
        let served = served_kinds(&client, &kinds).await;
        let want: std::collections::BTreeSet<Kind> = [
            Kind::DEPLOYMENT,
            Kind::ROLE,
            Kind::ROLE_BINDING,
            Kind::POD_DISRUPTION_BUDGET,
        ]
        .into_iter()
        .collect();
        assert_eq!(served, want);
        // One lookup per group version.
        assert_eq!(seen.lock().unwrap().len(), 5);
    }
}
