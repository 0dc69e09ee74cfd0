//! Kubernetes mode: reflectors over VirtualServices, DestinationRules, EndpointSlices and
//! Pods in the proxy's namespace feed the same validation as file mode. The translation
//! from cluster objects to a `ConfigFile` is a pure function; the watch loop is a thin
//! shell that rebuilds (debounced) whenever a store changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta as KubeMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::api::gateway::{HTTPRoute, HttpRouteSpec};
use crate::api::istio::{DestinationRule, DestinationRuleSpec, VirtualService, VirtualServiceSpec};
use crate::proxy::config::{self, CallerEntry, ConfigFile, EndpointEntry, Object, ObjectMeta};
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
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
}

/// Translates cluster objects into the file-mode config (pure).
pub fn config_from_cluster(namespace: &str, state: &ClusterState) -> ConfigFile {
    let meta = |m: &kube::api::ObjectMeta| ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().or_else(|| Some(namespace.to_string())),
        creation_timestamp: m.creation_timestamp.as_ref().map(|t| t.0.to_string()),
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
    let http_routes = state
        .http_routes
        .iter()
        .map(|route| Object {
            api_version: Some("gateway.networking.k8s.io/v1".into()),
            kind: Some("HTTPRoute".into()),
            metadata: meta(&route.metadata),
            spec: route.spec.clone(),
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
        http_routes,
        endpoints,
        callers: state.pods.iter().flat_map(|p| callers_of(p)).collect(),
    }
}

/// The addresses a pod calls from. Host-network pods share the node's address, and a
/// finished pod's address may already be another pod's: neither identifies anyone.
fn callers_of(pod: &Pod) -> Vec<CallerEntry> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if host_network || finished {
        return Vec::new();
    }
    let mut addresses: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    if addresses.is_empty() {
        addresses.extend(status.pod_ip.as_deref());
    }
    addresses
        .into_iter()
        .map(|address| CallerEntry {
            address: address.to_string(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
        })
        .collect()
}

/// Keeps only what `config_from_cluster` reads of a pod, so a namespace of many pods
/// costs the proxy little memory.
pub fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.spec = pod
        .spec
        .take()
        .map(|spec| k8s_openapi::api::core::v1::PodSpec {
            host_network: spec.host_network,
            containers: Vec::new(),
            ..Default::default()
        });
    pod.status = pod
        .status
        .take()
        .map(|status| k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..Default::default()
        });
}

// === Invalid objects ===

/// An object left out of the update because it is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `VirtualService`, `DestinationRule` or `HTTPRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The validation error: object, field at fault and reason.
    pub message: String,
    /// Its last valid version is still applied.
    pub kept_previous: bool,
}

/// The last valid version of each VirtualService and DestinationRule (by namespace and
/// name), so an invalid edit of one object leaves that object as it was.
#[derive(Default)]
pub struct LastGood {
    virtual_services: HashMap<(String, String), Object<VirtualServiceSpec>>,
    destination_rules: HashMap<(String, String), Object<DestinationRuleSpec>>,
    http_routes: HashMap<(String, String), Object<HttpRouteSpec>>,
}

/// Replaces each invalid VirtualService/DestinationRule in `file` by its last valid
/// version, or leaves it out when it never was valid, so one bad object does not block
/// the others (pure apart from `last_good`, which it updates).
pub fn keep_valid(file: &mut ConfigFile, last_good: &mut LastGood) -> Vec<Rejected> {
    let default_ns = file.namespace.clone().unwrap_or_default();
    let mut rejected = Vec::new();
    keep_valid_objects(
        "VirtualService",
        &mut file.virtual_services,
        &mut last_good.virtual_services,
        &default_ns,
        config::check_virtual_service,
        &mut rejected,
    );
    keep_valid_objects(
        "DestinationRule",
        &mut file.destination_rules,
        &mut last_good.destination_rules,
        &default_ns,
        config::check_destination_rule,
        &mut rejected,
    );
    keep_valid_objects(
        "HTTPRoute",
        &mut file.http_routes,
        &mut last_good.http_routes,
        &default_ns,
        config::check_http_route,
        &mut rejected,
    );
    rejected
}

fn keep_valid_objects<S: Clone>(
    kind: &'static str,
    objects: &mut Vec<Object<S>>,
    last_good: &mut HashMap<(String, String), Object<S>>,
    default_ns: &str,
    check: fn(&Object<S>, &str) -> Result<(), config::Error>,
    rejected: &mut Vec<Rejected>,
) {
    let key = |o: &Object<S>| {
        (
            o.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| default_ns.to_string()),
            o.metadata.name.clone(),
        )
    };
    // A deleted object's last version must not come back.
    let present: HashSet<(String, String)> = objects.iter().map(key).collect();
    last_good.retain(|k, _| present.contains(k));
    let mut kept = Vec::with_capacity(objects.len());
    for object in objects.drain(..) {
        let k = key(&object);
        match check(&object, default_ns) {
            Ok(()) => {
                last_good.insert(k, object.clone());
                kept.push(object);
            }
            Err(error) => {
                let previous = last_good.get(&k).cloned();
                rejected.push(Rejected {
                    kind,
                    namespace: k.0,
                    name: k.1,
                    message: error.to_string(),
                    kept_previous: previous.is_some(),
                });
                kept.extend(previous);
            }
        }
    }
    *objects = kept;
}

/// The `reportingController` of the proxy's events.
pub const REPORTING_CONTROLLER: &str = "sluice.dev/sluice-proxy";

/// The Warning event (events.k8s.io/v1) about an invalid object; `uid` and
/// `resource_version` pin it to the offending version of the object.
pub fn warning_event(
    rejected: &Rejected,
    uid: Option<String>,
    resource_version: Option<String>,
    reporting_instance: &str,
    now: Timestamp,
) -> Event {
    let kept = if rejected.kept_previous {
        "its last valid version stays applied"
    } else {
        "it is not applied"
    };
    Event {
        metadata: KubeMeta {
            name: Some(format!(
                "{}.{:x}",
                truncate(&rejected.name, 200),
                now.as_nanosecond()
            )),
            namespace: Some(rejected.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some("InvalidConfig".into()),
        action: Some("Validate".into()),
        note: Some(truncate(&format!("{}; {kept}", rejected.message), 1024)),
        regarding: Some(ObjectReference {
            api_version: Some(
                match rejected.kind {
                    "HTTPRoute" => "gateway.networking.k8s.io/v1",
                    _ => "networking.istio.io/v1beta1",
                }
                .into(),
            ),
            kind: Some(rejected.kind.into()),
            name: Some(rejected.name.clone()),
            namespace: Some(rejected.namespace.clone()),
            uid,
            resource_version,
            ..Default::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(truncate(reporting_instance, 128)),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
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

/// The cluster object a rejection is about.
fn object_meta<'a>(state: &'a ClusterState, r: &Rejected) -> Option<&'a kube::api::ObjectMeta> {
    let matches = |m: &kube::api::ObjectMeta| {
        m.name.as_deref() == Some(r.name.as_str())
            && m.namespace.as_deref().is_none_or(|ns| ns == r.namespace)
    };
    match r.kind {
        "VirtualService" => state
            .virtual_services
            .iter()
            .map(|o| &o.metadata)
            .find(|m| matches(m)),
        "HTTPRoute" => state
            .http_routes
            .iter()
            .map(|o| &o.metadata)
            .find(|m| matches(m)),
        _ => state
            .destination_rules
            .iter()
            .map(|o| &o.metadata)
            .find(|m| matches(m)),
    }
}

// === HTTPRoute status ===

/// The `controllerName` sluice-proxy writes in the HTTPRoutes it serves.
pub const GATEWAY_CONTROLLER_NAME: &str = "sluice.dev/sluice-proxy";

/// A backend the proxy cannot send to, as the Gateway API's ResolvedRefs reason says it.
fn unresolved_backend(
    namespace: &str,
    backend: &crate::api::gateway::HttpBackendRef,
    services: &HashSet<String>,
) -> Option<(&'static str, String)> {
    let group_ok = matches!(backend.group.as_deref(), None | Some("") | Some("core"));
    if !group_ok || backend.kind.as_deref().is_some_and(|k| k != "Service") {
        return Some((
            "InvalidKind",
            format!("backend {} is not a Service", backend.name),
        ));
    }
    if backend
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != namespace)
    {
        return Some((
            "RefNotPermitted",
            format!(
                "backend {} is in another namespace; sluice-proxy serves its own",
                backend.name
            ),
        ));
    }
    let fqdn = crate::proxy::routes::qualify_host(&backend.name, namespace);
    (!services.contains(&fqdn)).then(|| {
        (
            "BackendNotFound",
            format!("Service {} has no EndpointSlice", backend.name),
        )
    })
}

/// The route's `status.parents` once this proxy has judged it: entries of other
/// controllers are kept, one entry per Service parent in `namespace` is this proxy's.
/// None when that is what the route already says. A condition keeps its
/// `lastTransitionTime` while its status stays the same (pure).
pub fn route_parent_statuses(
    route: &HTTPRoute,
    namespace: &str,
    rejected: Option<&str>,
    services: &HashSet<String>,
    now: Timestamp,
) -> Option<Vec<crate::api::gateway::RouteParentStatus>> {
    use crate::api::gateway::RouteParentStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    let parents = config::service_parents(namespace, &route.spec);
    let live: Vec<RouteParentStatus> = route
        .status
        .as_ref()
        .map(|s| s.parents.clone())
        .unwrap_or_default();
    let generation = route.metadata.generation;
    let unresolved = route
        .spec
        .rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .find_map(|b| unresolved_backend(namespace, b, services));
    let mut desired: Vec<RouteParentStatus> = live
        .iter()
        .filter(|p| p.controller_name != GATEWAY_CONTROLLER_NAME)
        .cloned()
        .collect();
    for (index, _) in &parents {
        let parent_ref = route.spec.parent_refs[*index].clone();
        let previous = live
            .iter()
            .find(|p| p.controller_name == GATEWAY_CONTROLLER_NAME && p.parent_ref == parent_ref);
        let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time: since,
            }
        };
        let accepted = match rejected {
            None => condition("Accepted", true, "Accepted", "served by sluice-proxy"),
            Some(message) => condition("Accepted", false, "UnsupportedValue", message),
        };
        let resolved = match &unresolved {
            None => condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend resolved",
            ),
            Some((reason, message)) => condition("ResolvedRefs", false, reason, message),
        };
        desired.push(RouteParentStatus {
            parent_ref,
            controller_name: GATEWAY_CONTROLLER_NAME.into(),
            conditions: vec![accepted, resolved],
        });
    }
    (desired != live).then_some(desired)
}

/// Writes what changed in the status of the HTTPRoutes this proxy serves. A failed write
/// is retried at the next rebuild; the content is the same from every replica.
async fn write_route_statuses(
    api: &Api<HTTPRoute>,
    namespace: &str,
    state: &ClusterState,
    rejected: &[Rejected],
) {
    let services: HashSet<String> = state
        .endpoint_slices
        .iter()
        .filter_map(|s| {
            let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            let ns = s.metadata.namespace.as_deref().unwrap_or(namespace);
            Some(crate::proxy::routes::qualify_host(name, ns))
        })
        .collect();
    for route in &state.http_routes {
        let name = route.metadata.name.clone().unwrap_or_default();
        let message = rejected
            .iter()
            .find(|r| r.kind == "HTTPRoute" && r.name == name)
            .map(|r| r.message.as_str());
        let Some(parents) =
            route_parent_statuses(route, namespace, message, &services, Timestamp::now())
        else {
            continue;
        };
        let patch = serde_json::json!({ "status": { "parents": parents } });
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%error, route = %name, "cannot write the HTTPRoute's status");
        }
    }
}

// === Watch shell ===

async fn reflect<K>(
    proxy: Arc<Proxy>,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    strip: fn(&mut K),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip),
    );
    futures::pin_mut!(stream);
    let kind = K::kind(&Default::default()).into_owned();
    while let Some(event) = stream.next().await {
        proxy.watch_result(&kind, event.is_ok());
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => tracing::warn!(%error, %kind, "watch error; retrying with backoff"),
        }
    }
}

fn spawn_reflector<K>(
    proxy: &Arc<Proxy>,
    client: &Client,
    namespace: &str,
    changed: &Arc<Notify>,
    strip: fn(&mut K),
) -> Store<K>
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
    tokio::spawn(reflect(proxy.clone(), api, writer, changed.clone(), strip));
    store
}

/// Watches the namespace and applies every change; runs until the process ends.
pub async fn run(proxy: Arc<Proxy>, client: Client, namespace: String) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());
    let vs = spawn_reflector::<VirtualService>(&proxy, &client, &namespace, &changed, |_| {});
    let dr = spawn_reflector::<DestinationRule>(&proxy, &client, &namespace, &changed, |_| {});
    let slices = spawn_reflector::<EndpointSlice>(&proxy, &client, &namespace, &changed, |s| {
        s.metadata.managed_fields = None;
    });
    let pods = spawn_reflector::<Pod>(&proxy, &client, &namespace, &changed, strip_pod);
    // HTTPRoutes only where the Gateway API is installed and the proxy may read them.
    let route_api = Api::<HTTPRoute>::namespaced(client.clone(), &namespace);
    let routes = match route_api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Some(spawn_reflector::<HTTPRoute>(
            &proxy,
            &client,
            &namespace,
            &changed,
            |r| r.metadata.managed_fields = None,
        )),
        Err(error) => {
            tracing::info!(%error, "HTTPRoutes are not read: the Gateway API is not served here or not readable");
            None
        }
    };
    for ready in [
        vs.wait_until_ready().await,
        dr.wait_until_ready().await,
        slices.wait_until_ready().await,
        pods.wait_until_ready().await,
    ] {
        ready.map_err(|_| Error::StoreDropped)?;
    }
    if let Some(routes) = &routes {
        routes
            .wait_until_ready()
            .await
            .map_err(|_| Error::StoreDropped)?;
    }
    tracing::info!(%namespace, "kubernetes stores ready");
    let events = Api::<Event>::namespaced(client.clone(), &namespace);
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "sluice-proxy".into());
    let mut last_good = LastGood::default();
    // Events already sent, by object version and message: one event per bad version.
    let mut reported: HashSet<(String, String, Option<String>, String)> = HashSet::new();
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        let state = ClusterState {
            virtual_services: vs.state(),
            destination_rules: dr.state(),
            http_routes: routes.as_ref().map(Store::state).unwrap_or_default(),
            endpoint_slices: slices.state(),
            pods: pods.state(),
        };
        let mut file = config_from_cluster(&namespace, &state);
        let rejected = keep_valid(&mut file, &mut last_good);
        let mut still_reported = HashSet::new();
        for r in &rejected {
            tracing::error!(
                kind = r.kind,
                object = %format!("{}/{}", r.namespace, r.name),
                kept_previous = r.kept_previous,
                "invalid object skipped: {}",
                r.message
            );
            let meta = object_meta(&state, r);
            let version = meta.and_then(|m| m.resource_version.clone());
            let key = (
                r.kind.to_string(),
                r.name.clone(),
                version.clone(),
                r.message.clone(),
            );
            still_reported.insert(key.clone());
            if reported.contains(&key) {
                continue;
            }
            let event = warning_event(
                r,
                meta.and_then(|m| m.uid.clone()),
                version,
                &instance,
                Timestamp::now(),
            );
            match events.create(&PostParams::default(), &event).await {
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot create the Warning event"),
            }
        }
        reported = still_reported;
        proxy.set_rejected_objects(rejected.iter().map(|r| r.message.clone()).collect());
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
        write_route_statuses(&route_api, &namespace, &state, &rejected).await;
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
    fn served_routes_get_their_conditions_and_others_keep_theirs() {
        let route = |extra: &str| -> HTTPRoute {
            serde_yaml::from_str(&format!(
                r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: shop, generation: 3}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews}}, {{name: public}}]
  rules: [{{backendRefs: [{{name: reviews-primary, port: 80}}, {{name: reviews-canary, port: 80}}]}}]
{extra}"#
            ))
            .unwrap()
        };
        let services: HashSet<String> = ["reviews-primary", "reviews-canary"]
            .iter()
            .map(|s| format!("{s}.shop.svc.cluster.local"))
            .collect();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let t1 = Timestamp::from_second(1_800_000_100).unwrap();
        let fresh = route("");
        let parents = route_parent_statuses(&fresh, "shop", None, &services, t0).unwrap();
        assert_eq!(parents.len(), 1, "only the Service parent is ours");
        assert_eq!(parents[0].parent_ref.name, "reviews");
        assert_eq!(parents[0].controller_name, GATEWAY_CONTROLLER_NAME);
        let summary = |p: &crate::api::gateway::RouteParentStatus| -> Vec<(String, String, String, Option<i64>)> {
            p.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.observed_generation))
                .collect()
        };
        let accepted = |status: &str, reason: &str| {
            (
                "Accepted".to_string(),
                status.to_string(),
                reason.to_string(),
                Some(3),
            )
        };
        let resolved = |status: &str, reason: &str| {
            (
                "ResolvedRefs".to_string(),
                status.to_string(),
                reason.to_string(),
                Some(3),
            )
        };
        assert_eq!(
            summary(&parents[0]),
            [
                accepted("True", "Accepted"),
                resolved("True", "ResolvedRefs")
            ]
        );

        // Written back, nothing changes; another controller's entry stays.
        let mut written = fresh.clone();
        let other = crate::api::gateway::RouteParentStatus {
            parent_ref: written.spec.parent_refs[1].clone(),
            controller_name: "example.com/gateway".into(),
            conditions: vec![],
        };
        written.status = Some(crate::api::gateway::HttpRouteStatus {
            parents: vec![other.clone(), parents[0].clone()],
        });
        assert!(route_parent_statuses(&written, "shop", None, &services, t1).is_none());

        // Rejected, and a backend gone: both conditions turn False at t1, others kept.
        let fewer: HashSet<String> = services.iter().take(0).cloned().collect();
        let changed =
            route_parent_statuses(&written, "shop", Some("bad field"), &fewer, t1).unwrap();
        assert_eq!(changed[0], other);
        assert_eq!(
            summary(&changed[1]),
            [
                accepted("False", "UnsupportedValue"),
                resolved("False", "BackendNotFound")
            ]
        );
        assert!(changed[1]
            .conditions
            .iter()
            .all(|c| c.last_transition_time.0 == t1));
        assert_eq!(changed[1].conditions[0].message, "bad field");

        // A route with only a Gateway parent is not ours.
        let mut edge = fresh.clone();
        edge.spec.parent_refs.remove(0);
        assert!(route_parent_statuses(&edge, "shop", None, &services, t0).is_none());
    }

    #[test]
    fn running_pods_are_callers_by_each_address() {
        let pod = |extra: &str| -> Arc<Pod> {
            yaml(&format!(
                "metadata: {{name: p, namespace: istioinaction, labels: {{app: webapp}}, annotations: {{a: b}}}}\n{extra}"
            ))
        };
        // (pod, the caller addresses it yields)
        let cases: [(Arc<Pod>, &[&str]); 6] = [
            (pod("status: {phase: Running, podIP: 10.244.0.5, podIPs: [{ip: 10.244.0.5}, {ip: \"fd00::5\"}]}"), &["10.244.0.5", "fd00::5"]),
            (pod("status: {phase: Running, podIP: 10.244.0.5}"), &["10.244.0.5"]),
            (pod("status: {phase: Pending}"), &[]),
            (pod("status: {phase: Succeeded, podIP: 10.244.0.5}"), &[]),
            (pod("status: {phase: Failed, podIP: 10.244.0.5}"), &[]),
            (pod("spec: {hostNetwork: true, containers: []}\nstatus: {phase: Running, podIP: 10.0.0.1}"), &[]),
        ];
        for (pod, want) in cases {
            let mut stripped = (*pod).clone();
            strip_pod(&mut stripped);
            assert!(stripped.metadata.annotations.is_none());
            for p in [pod.as_ref(), &stripped] {
                let got: Vec<String> = callers_of(p).into_iter().map(|c| c.address).collect();
                assert_eq!(got, want, "{:?}", pod.status);
            }
        }
        let callers = callers_of(&pod("status: {phase: Running, podIP: 10.244.0.5}"));
        assert_eq!(callers[0].labels["app"], "webapp");
        assert_eq!(callers[0].namespace.as_deref(), Some("istioinaction"));
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
            ..Default::default()
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

    fn vs(name: &str, host: &str, w1: i64, w2: i64) -> Arc<VirtualService> {
        yaml(&format!(
            r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: shop, uid: uid-{name}, resourceVersion: "7"}}
spec:
  hosts: [{host}]
  http:
  - route:
    - {{destination: {{host: {host}}}, weight: {w1}}}
    - {{destination: {{host: {host}}}, weight: {w2}}}
"#
        ))
    }

    fn weights(file: &ConfigFile, name: &str) -> Option<Vec<Option<i64>>> {
        let vs = file
            .virtual_services
            .iter()
            .find(|o| o.metadata.name == name)?;
        Some(
            vs.spec.http[0]
                .route
                .iter()
                .map(|d| d.weight.map(i64::from))
                .collect(),
        )
    }

    #[test]
    fn an_invalid_object_is_skipped_and_its_last_valid_version_kept() {
        let mut last_good = LastGood::default();
        let state =
            |objects: Vec<Arc<VirtualService>>, rules: Vec<Arc<DestinationRule>>| ClusterState {
                virtual_services: objects,
                destination_rules: rules,
                ..Default::default()
            };
        let bad_rule: Arc<DestinationRule> = yaml(
            r#"
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}
"#,
        );

        // 1. catalog valid, reviews VS and the DestinationRule never valid: both left
        //    out, catalog applies.
        let mut file = config_from_cluster(
            "shop",
            &state(
                vec![
                    vs("catalog", "catalog", 90, 10),
                    vs("reviews", "reviews", -5, 10),
                ],
                vec![bad_rule.clone()],
            ),
        );
        let rejected = keep_valid(&mut file, &mut last_good);
        let summary: Vec<(&str, &str, bool)> = rejected
            .iter()
            .map(|r| (r.kind, r.name.as_str(), r.kept_previous))
            .collect();
        assert_eq!(
            summary,
            [
                ("VirtualService", "reviews", false),
                ("DestinationRule", "reviews", false)
            ]
        );
        assert!(
            rejected[0].message.contains("spec.http[0].route[0].weight"),
            "{}",
            rejected[0].message
        );
        assert_eq!(weights(&file, "catalog"), Some(vec![Some(90), Some(10)]));
        assert_eq!(weights(&file, "reviews"), None);
        assert!(file.destination_rules.is_empty());
        let snapshot = build(&file, &ProxySettings::default(), None).unwrap();
        assert_eq!(snapshot.table.virtual_hosts.len(), 1);

        // 2. catalog edited into an invalid version: its 90/10 stays; reviews fixed.
        let mut file = config_from_cluster(
            "shop",
            &state(
                vec![
                    vs("catalog", "catalog", 0, 0),
                    vs("reviews", "reviews", 50, 50),
                ],
                Vec::new(),
            ),
        );
        let rejected = keep_valid(&mut file, &mut last_good);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "catalog");
        assert!(rejected[0].kept_previous);
        assert_eq!(weights(&file, "catalog"), Some(vec![Some(90), Some(10)]));
        assert_eq!(weights(&file, "reviews"), Some(vec![Some(50), Some(50)]));
        let snapshot = build(&file, &ProxySettings::default(), None).unwrap();
        assert_eq!(snapshot.table.virtual_hosts.len(), 2);

        // 3. catalog deleted, then created again invalid: the old version is forgotten.
        let mut file = config_from_cluster(
            "shop",
            &state(vec![vs("reviews", "reviews", 50, 50)], Vec::new()),
        );
        assert!(keep_valid(&mut file, &mut last_good).is_empty());
        let mut file = config_from_cluster(
            "shop",
            &state(vec![vs("catalog", "catalog", 0, 0)], Vec::new()),
        );
        let rejected = keep_valid(&mut file, &mut last_good);
        assert!(!rejected[0].kept_previous);
        assert!(file.virtual_services.is_empty());
    }

    #[test]
    fn the_warning_event_names_the_object_and_the_field() {
        let state = ClusterState {
            virtual_services: vec![vs("catalog", "catalog", -5, 10)],
            ..Default::default()
        };
        let mut file = config_from_cluster("shop", &state);
        let rejected = keep_valid(&mut file, &mut LastGood::default());
        let meta = object_meta(&state, &rejected[0]).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let event = warning_event(
            &rejected[0],
            meta.uid.clone(),
            meta.resource_version.clone(),
            "sluice-router-abc",
            now,
        );
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("InvalidConfig"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            event.metadata.name.as_deref(),
            Some(format!("catalog.{:x}", now.as_nanosecond()).as_str())
        );
        assert_eq!(event.event_time, Some(MicroTime(now)));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some(REPORTING_CONTROLLER)
        );
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("sluice-router-abc")
        );
        let regarding = event.regarding.unwrap();
        assert_eq!(
            (
                regarding.api_version.as_deref(),
                regarding.kind.as_deref(),
                regarding.namespace.as_deref(),
                regarding.name.as_deref(),
                regarding.uid.as_deref(),
                regarding.resource_version.as_deref(),
            ),
            (
                Some("networking.istio.io/v1beta1"),
                Some("VirtualService"),
                Some("shop"),
                Some("catalog"),
                Some("uid-catalog"),
                Some("7"),
            )
        );
        assert_eq!(
            event.note.as_deref(),
            Some(
                "VirtualService shop/catalog: spec.http[0].route[0].weight: weight -5 is \
                 negative; it is not applied"
            )
        );
    }
}
