//! Kubernetes mode: reflectors over VirtualServices, DestinationRules, EndpointSlices and
//! Pods in the proxy's namespace feed the same validation as file mode. The translation
//! from cluster objects to a `ConfigFile` is a pure function; the watch loop is a thin
//! shell that rebuilds (debounced) whenever a store changes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::api::istio::{DestinationRule, VirtualService};
use crate::proxy::config::{ConfigFile, EndpointEntry, Object, ObjectMeta};
use crate::proxy::Proxy;

/// Changes arriving within this window are applied as one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Istio's pod label for locality: `region.zone.subzone`.
const ISTIO_LOCALITY_LABEL: &str = "istio-locality";
const REGION_LABEL: &str = "topology.kubernetes.io/region";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a reflector store was dropped before it became ready")]
    StoreDropped,
}

/// Everything the proxy reads from the cluster, as the reflectors hold it.
#[derive(Default)]
pub struct ClusterState {
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
}

/// Translates cluster objects into the file-mode config (pure).
pub fn config_from_cluster(namespace: &str, state: &ClusterState) -> ConfigFile {
    let meta = |m: &kube::api::ObjectMeta| ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().or_else(|| Some(namespace.to_string())),
    };
    let virtual_services = state
        .virtual_services
        .iter()
        .map(|vs| Object {
            api_version: Some("networking.istio.io/v1beta1".into()),
            kind: Some("VirtualService".into()),
            metadata: meta(&vs.metadata),
            spec: vs.spec.clone(),
        })
        .collect();
    let destination_rules = state
        .destination_rules
        .iter()
        .map(|dr| Object {
            api_version: Some("networking.istio.io/v1beta1".into()),
            kind: Some("DestinationRule".into()),
            metadata: meta(&dr.metadata),
            spec: dr.spec.clone(),
        })
        .collect();
    let pods: HashMap<&str, &Pod> = state
        .pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, p.as_ref())))
        .collect();
    let mut endpoints = Vec::new();
    for slice in &state.endpoint_slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let slice_ns = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_string());
        // Services with several ports: prefer the one named http*, else the first.
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref().is_some_and(|n| n.starts_with("http")))
            .or_else(|| ports.first());
        let Some((port_number, http2)) = port.and_then(|p| {
            let number = u16::try_from(p.port?).ok()?;
            let h2 = p.app_protocol.as_deref() == Some("kubernetes.io/h2c")
                || p.name.as_deref().is_some_and(|n| {
                    n.starts_with("grpc") || n.starts_with("http2") || n.starts_with("h2c")
                });
            Some((number, h2))
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| pods.get(r.name.as_deref()?).copied());
            let labels: BTreeMap<String, String> = pod
                .and_then(|p| p.metadata.labels.clone())
                .unwrap_or_default();
            let zone = locality(&labels, endpoint.zone.as_deref());
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                endpoints.push(EndpointEntry {
                    service: service.clone(),
                    namespace: Some(slice_ns.clone()),
                    address: SocketAddr::new(ip, port_number).to_string(),
                    labels: labels.clone(),
                    zone: zone.clone(),
                    workload: pod.and_then(workload_name),
                    protocol: http2.then(|| "h2c".to_string()),
                });
            }
        }
    }
    ConfigFile {
        namespace: Some(namespace.to_string()),
        virtual_services,
        destination_rules,
        endpoints,
    }
}

/// `region/zone[/subzone]` from Istio's pod label, else the topology region label and
/// the EndpointSlice's zone.
fn locality(labels: &BTreeMap<String, String>, slice_zone: Option<&str>) -> Option<String> {
    if let Some(l) = labels.get(ISTIO_LOCALITY_LABEL) {
        return Some(l.replace('.', "/"));
    }
    match (labels.get(REGION_LABEL), slice_zone) {
        (Some(region), Some(zone)) => Some(format!("{region}/{zone}")),
        (None, Some(zone)) => Some(format!("/{zone}")),
        _ => None,
    }
}

/// The Deployment behind a pod: its ReplicaSet's name minus the pod-template-hash.
fn workload_name(pod: &Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(stripped) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return Some(stripped.to_string());
        }
    }
    Some(owner.name.clone())
}

// === Watch shell ===

async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => tracing::warn!(%error, "watch error; retrying with backoff"),
        }
    }
}

fn spawn_reflector<K>(client: &Client, namespace: &str, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let api = Api::<K>::namespaced(client.clone(), namespace);
    tokio::spawn(reflect(api, writer, changed.clone()));
    store
}

/// Watches the namespace and applies every change; runs until the process ends.
pub async fn run(proxy: Arc<Proxy>, client: Client, namespace: String) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());
    let vs = spawn_reflector::<VirtualService>(&client, &namespace, &changed);
    let dr = spawn_reflector::<DestinationRule>(&client, &namespace, &changed);
    let slices = spawn_reflector::<EndpointSlice>(&client, &namespace, &changed);
    let pods = spawn_reflector::<Pod>(&client, &namespace, &changed);
    for ready in [
        vs.wait_until_ready().await,
        dr.wait_until_ready().await,
        slices.wait_until_ready().await,
        pods.wait_until_ready().await,
    ] {
        ready.map_err(|_| Error::StoreDropped)?;
    }
    tracing::info!(%namespace, "kubernetes stores ready");
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        let state = ClusterState {
            virtual_services: vs.state(),
            destination_rules: dr.state(),
            endpoint_slices: slices.state(),
            pods: pods.state(),
        };
        let file = config_from_cluster(&namespace, &state);
        match proxy.apply(&file) {
            Ok(()) => tracing::info!(
                virtual_services = state.virtual_services.len(),
                destination_rules = state.destination_rules.len(),
                endpoints = file.endpoints.len(),
                "configuration applied from the cluster"
            ),
            Err(error) => {
                tracing::error!(%error, "cluster configuration rejected; keeping the last good one")
            }
        }
        changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::{build, ProxySettings};
    use crate::proxy::routes::ClusterKey;

    fn yaml<T: DeserializeOwned>(text: &str) -> Arc<T> {
        Arc::new(serde_yaml::from_str(text).unwrap())
    }

    #[test]
    fn cluster_objects_become_a_route_table() {
        let state = ClusterState {
            virtual_services: vec![yaml(
                r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: catalog, namespace: istioinaction}
spec:
  hosts: [catalog]
  http:
  - route:
    - {destination: {host: catalog, subset: version-v1}, weight: 90}
    - {destination: {host: catalog, subset: version-v2}, weight: 10}
"#,
            )],
            destination_rules: vec![yaml(
                r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: catalog, namespace: istioinaction}
spec:
  host: catalog
  subsets:
  - {name: version-v1, labels: {version: v1}}
  - {name: version-v2, labels: {version: v2}}
"#,
            )],
            endpoint_slices: vec![yaml(
                r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: catalog-abcde
  namespace: istioinaction
  labels: {kubernetes.io/service-name: catalog}
addressType: IPv4
ports: [{name: http, port: 3000, protocol: TCP}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  zone: us-west1-a
  targetRef: {kind: Pod, name: catalog-v1-5d8f7-x1, namespace: istioinaction}
- addresses: [10.0.0.2]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: catalog-v2-6c9a1-y2, namespace: istioinaction}
- addresses: [10.0.0.3]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: catalog-v2-6c9a1-z3, namespace: istioinaction}
"#,
            )],
            pods: vec![
                yaml(
                    r#"
metadata:
  name: catalog-v1-5d8f7-x1
  namespace: istioinaction
  labels: {app: catalog, version: v1, pod-template-hash: 5d8f7, topology.kubernetes.io/region: us-west1}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: catalog-v1-5d8f7, uid: u1, controller: true}]
"#,
                ),
                yaml(
                    r#"
metadata:
  name: catalog-v2-6c9a1-y2
  namespace: istioinaction
  labels: {app: catalog, version: v2, pod-template-hash: 6c9a1, istio-locality: us-west1.us-west1-b}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: catalog-v2-6c9a1, uid: u2, controller: true}]
"#,
                ),
            ],
        };
        let file = config_from_cluster("istioinaction", &state);
        let summary: Vec<(String, Option<String>, Option<String>)> = file
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.workload.clone(), e.zone.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "10.0.0.1:3000".to_string(),
                    Some("catalog-v1".to_string()),
                    Some("us-west1/us-west1-a".to_string())
                ),
                (
                    "10.0.0.2:3000".to_string(),
                    Some("catalog-v2".to_string()),
                    Some("us-west1/us-west1-b".to_string())
                ),
            ]
        );
        let snapshot = build(&file, &ProxySettings::default(), None).unwrap();
        let v2 = ClusterKey {
            service: "catalog.istioinaction.svc.cluster.local".into(),
            subset: Some("version-v2".into()),
        };
        assert_eq!(snapshot.clusters[&v2].endpoints.len(), 1);
    }
}
