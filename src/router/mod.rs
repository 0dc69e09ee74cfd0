//! Traffic routers: how a Canary's weights become objects in the cluster. Each router
//! renders its objects purely and says what the controller needs to know about them: the
//! kinds to watch, when a live copy has drifted, where the built-in metrics come from and
//! which objects it shares between the Canaries of a namespace. The controller applies
//! what a router renders with server-side apply and knows no router by name.
//! A new router is one new file implementing [`TrafficRouter`], listed in [`Routers`].

pub mod gateway_api;
pub mod istio;
pub mod sluice;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use crate::analysis::Reporter;
use crate::api::{Canary, RouterKind};
use crate::rollout::Routes;
use crate::workloads::AppLabel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering {kind} {name}: {source}")]
    Render {
        kind: &'static str,
        name: String,
        source: serde_json::Error,
    },
    /// The Canary asks for what this router cannot express: the field at fault.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// A live object's spec is not of the shape its kind has.
    #[error("reading {kind} {name} back: {source}")]
    ReadBack {
        kind: &'static str,
        name: String,
        source: serde_json::Error,
    },
}

impl Error {
    /// A spec the user must change; retrying does not help.
    pub fn is_spec_error(&self) -> bool {
        matches!(self, Error::Invalid { .. })
    }
}

/// Selects the objects sluice wrote.
pub(crate) const MANAGED_BY_SLUICE: &str = "app.kubernetes.io/managed-by=sluice";

/// A kind of object a router writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub const DEPLOYMENT: Kind = Kind::new("apps", "v1", "Deployment", "deployments");
    pub const SERVICE_ACCOUNT: Kind = Kind::new("", "v1", "ServiceAccount", "serviceaccounts");
    pub const ROLE: Kind = Kind::new("rbac.authorization.k8s.io", "v1", "Role", "roles");
    pub const ROLE_BINDING: Kind = Kind::new(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    );
    pub const POD_DISRUPTION_BUDGET: Kind = Kind::new(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
    );
    pub const VIRTUAL_SERVICE: Kind = Kind::new(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
    );
    pub const DESTINATION_RULE: Kind = Kind::new(
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
        "destinationrules",
    );

    pub const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Kind {
            group,
            version,
            kind,
            plural,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// Whether `object` (as rendered, with its `apiVersion` and `kind`) is of this kind.
    pub fn is_kind_of(&self, object: &DynamicObject) -> bool {
        object
            .types
            .as_ref()
            .is_some_and(|t| t.kind == self.kind && t.api_version == self.api_version())
    }
}

/// A kind the controller caches for a router, and the label selector that picks the
/// objects the router wrote (so the cache holds nothing else of the kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    pub kind: Kind,
    pub selector: &'static str,
}

/// Objects a router keeps once per namespace for all its Canaries there: one name, these
/// kinds, applied in this order and deleted in reverse once no Canary there uses the
/// router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedObjects {
    pub name: &'static str,
    pub kinds: &'static [Kind],
}

/// Pods in the Canary's namespace that serve the built-in metrics' series themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsPods {
    pub selector: &'static str,
    /// Their metrics port, unless a pod annotates `prometheus.io/port`.
    pub port: u16,
}

/// The routes a live object holds, read back as the data plane will apply them.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveRoutes {
    /// The field that lists the rules: `http` in a VirtualService, `rules` in an HTTPRoute.
    pub rules_field: &'static str,
    pub rules: Vec<LiveRule>,
}

/// One rule of [`LiveRoutes`], in the order the object lists them.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LiveRule {
    pub name: Option<String>,
    /// Each match block in a short form (`{header x-user=alice, uri^=/api}`); any one
    /// selects the rule, and none selects every request.
    pub matches: Vec<String>,
    /// Backends with their weights as written: each takes its share of their sum.
    pub backends: Vec<(String, u32)>,
    /// Backends that get a copy of a percentage of the requests.
    pub mirrors: Vec<(String, f64)>,
}

impl LiveRoutes {
    /// The weight of `backend` in the first rule that has it among several backends (the
    /// weighted split), as a percentage of that rule's weights.
    pub fn percent_of(&self, backend: &str) -> Option<f64> {
        self.rules.iter().find_map(|rule| {
            let total: u64 = rule.backends.iter().map(|(_, w)| u64::from(*w)).sum();
            let (_, weight) = rule.backends.iter().find(|(b, _)| b == backend)?;
            (rule.backends.len() > 1 && total > 0)
                .then(|| f64::from(*weight) * 100.0 / total as f64)
        })
    }
}

/// One traffic router (a `spec.provider`).
pub trait TrafficRouter: Send + Sync {
    fn kind(&self) -> RouterKind;

    /// Labels the apex Service selects: the primary pods, or a proxy in front of them.
    fn apex_selector(&self, canary: &Canary, app: &AppLabel) -> BTreeMap<String, String>;

    /// Port the apex Service targets when it is not the app's (a proxy's port).
    fn apex_target_port(&self, _canary: &Canary) -> Option<IntOrString> {
        None
    }

    /// The Deployment (in the Canary's namespace) that serves the apex Service when it is
    /// not the app: the apex is pointed at it only once it is available.
    fn apex_backend(&self, _canary: &Canary) -> Option<&'static str> {
        None
    }

    /// Whether the router can express the Canary's spec, whatever the weights: the
    /// controller asks before it writes anything, even when no route changes, so a spec
    /// error is reported at once and nothing is half-applied.
    fn validate(&self, _canary: &Canary) -> Result<(), Error> {
        Ok(())
    }

    /// Objects that do not change with the weights (e.g. DestinationRules).
    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error>;

    /// Objects that carry the weights, mirroring and session cookies (e.g. the VirtualService).
    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error>;

    /// The kind of the object [`route_objects`](Self::route_objects) renders for the
    /// weights; it is named after the apex Service.
    fn route_kind(&self) -> Kind;

    /// The routes the live copy of that object holds.
    fn read_routes(&self, live: &DynamicObject) -> Result<LiveRoutes, Error>;

    /// Objects handed back, rendered without the Canary's owner reference, when the
    /// Canary is deleted with `revertOnDeletion`, after the apex Service selects the app's pods
    /// again. Routes from outside the mesh (a Gateway) keep the app reachable through
    /// them; mesh callers of the apex Service need nothing, so by default nothing is kept.
    fn finalize(&self, _canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        Ok(vec![])
    }

    /// Every kind [`static_objects`](Self::static_objects) and
    /// [`route_objects`](Self::route_objects) render. The controller watches them, so a
    /// change or a deletion by hand is seen at once and put back.
    fn watched(&self) -> Vec<Watched>;

    /// Whether the live copy of an object this router rendered differs from `desired` in
    /// what the router owns. Only meaningful where the API server adds no defaults to
    /// those fields; by default only the content hash sluice wrote is compared.
    fn drifted(&self, _desired: &DynamicObject, _live: &DynamicObject) -> bool {
        false
    }

    /// Who reports the series the built-in metrics read.
    fn reporter(&self, canary: &Canary) -> Reporter;

    /// Pods that can be scraped for those series when no Prometheus is set.
    fn metrics_pods(&self, _canary: &Canary) -> Option<MetricsPods> {
        None
    }

    /// The label selector of every pod `metrics_pods` can name, for any Canary: the
    /// controller watches those pods instead of listing them on every check.
    fn metrics_pod_selector(&self) -> Option<&'static str> {
        None
    }

    /// Objects shared by the namespace's Canaries of this router.
    fn shared_objects(&self) -> Option<SharedObjects> {
        None
    }

    /// Whether this Canary keeps the [`shared_objects`](Self::shared_objects) of its
    /// namespace in use.
    fn uses_shared_objects(&self, _canary: &Canary) -> bool {
        self.shared_objects().is_some()
    }
}

/// The kinds `router` writes that are not among `served` (their CRDs are not installed):
/// its Canaries cannot be routed until they are.
pub fn missing_kinds(
    router: &dyn TrafficRouter,
    served: &std::collections::BTreeSet<Kind>,
) -> Vec<Kind> {
    let mut missing: Vec<Kind> = router
        .watched()
        .into_iter()
        .map(|w| w.kind)
        .filter(|k| !served.contains(k))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// The routers a controller drives, one per provider.
pub struct Routers {
    pub istio: istio::IstioRouter,
    pub sluice: sluice::SluiceRouter,
    pub gateway_api: gateway_api::GatewayApiRouter,
}

impl Routers {
    pub fn new(proxy_image: String, router_replicas: i32) -> Self {
        Routers {
            istio: istio::IstioRouter,
            sluice: sluice::SluiceRouter {
                image: proxy_image.clone(),
                replicas: router_replicas,
            },
            gateway_api: gateway_api::GatewayApiRouter {
                service_parents: Some(sluice::SluiceRouter {
                    image: proxy_image,
                    replicas: router_replicas,
                }),
            },
        }
    }

    /// Routers for reading live objects back, where the router's image and replicas do
    /// not matter.
    pub fn for_reading() -> Self {
        Routers::new(String::new(), 1)
    }

    /// Every router, in the order of [`RouterKind::ALL`].
    pub fn all(&self) -> [&dyn TrafficRouter; RouterKind::ALL.len()] {
        [&self.istio, &self.sluice, &self.gateway_api]
    }

    pub fn for_kind(&self, kind: RouterKind) -> &dyn TrafficRouter {
        let routers = self.all();
        let i = RouterKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        routers[i]
    }

    /// Every kind any router writes, once, each with the selectors of the routers that
    /// watch it (a kind two routers write is cached once with each selector).
    /// The selectors of the pods the built-in scrape reads, each once.
    pub fn metrics_pod_selectors(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = self
            .all()
            .iter()
            .filter_map(|r| r.metrics_pod_selector())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn watched(&self) -> Vec<Watched> {
        let mut all: Vec<Watched> = self.all().iter().flat_map(|r| r.watched()).collect();
        all.sort_by(|a, b| (a.kind, a.selector).cmp(&(b.kind, b.selector)));
        all.dedup();
        all
    }
}

/// Converts a typed object into the dynamic form the executor applies.
pub(crate) fn to_dynamic<T: serde::Serialize>(
    kind: &'static str,
    name: &str,
    object: &T,
) -> Result<DynamicObject, Error> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::Render {
            kind,
            name: name.to_string(),
            source,
        })
}

/// The `spec` of a live object of `kind`, in the shape a router reads it.
pub(crate) fn live_spec<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    live: &DynamicObject,
) -> Result<T, Error> {
    let spec = live.data.get("spec").cloned().unwrap_or_default();
    serde_json::from_value(spec).map_err(|source| Error::ReadBack {
        kind,
        name: kube::ResourceExt::name_any(live),
        source,
    })
}

/// The live `spec` does not hold every field of the desired one with its value. Fields
/// only the live copy has (another field manager's) do not count, and numbers compare
/// by value: the API server writes `50.0` back as `50`.
pub(crate) fn spec_differs(desired: &DynamicObject, live: &DynamicObject) -> bool {
    match (desired.data.get("spec"), live.data.get("spec")) {
        (None, _) => false,
        (Some(want), Some(have)) => !covers(have, want),
        (Some(_), None) => true,
    }
}

/// `have` holds everything `want` says; lists must match item by item.
fn covers(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (_, Value::Null) => true,
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| w.is_null() || have.get(k).is_some_and(|h| covers(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
        }
        (Value::Number(have), Value::Number(want)) => have.as_f64() == want.as_f64(),
        (have, want) => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_has_its_router() {
        let routers = Routers::new("img".into(), 1);
        for kind in RouterKind::ALL {
            assert_eq!(routers.for_kind(kind).kind(), kind);
        }
    }

    #[test]
    fn a_router_misses_the_kinds_the_cluster_does_not_serve() {
        let routers = Routers::new("img".into(), 1);
        let core = [
            Kind::DEPLOYMENT,
            Kind::SERVICE_ACCOUNT,
            Kind::ROLE,
            Kind::ROLE_BINDING,
            Kind::POD_DISRUPTION_BUDGET,
        ];
        let istio = [Kind::VIRTUAL_SERVICE, Kind::DESTINATION_RULE];
        let gateway = [gateway_api::HTTP_ROUTE];
        let all: std::collections::BTreeSet<Kind> =
            core.into_iter().chain(istio).chain(gateway).collect();
        let without_istio: std::collections::BTreeSet<Kind> =
            core.into_iter().chain(gateway).collect();
        let without_gateway: std::collections::BTreeSet<Kind> =
            core.into_iter().chain(istio).collect();
        // (provider, served, missing)
        let cases = [
            (RouterKind::Istio, &all, vec![]),
            (RouterKind::Sluice, &all, vec![]),
            (RouterKind::GatewayApiV1, &all, vec![]),
            (RouterKind::GatewayApiV1, &without_istio, vec![]),
            (RouterKind::Istio, &without_gateway, vec![]),
            (
                RouterKind::GatewayApiV1,
                &without_gateway,
                vec![gateway_api::HTTP_ROUTE],
            ),
            (
                RouterKind::Istio,
                &without_istio,
                vec![Kind::DESTINATION_RULE, Kind::VIRTUAL_SERVICE],
            ),
            (
                RouterKind::Sluice,
                &without_istio,
                vec![Kind::DESTINATION_RULE, Kind::VIRTUAL_SERVICE],
            ),
        ];
        for (kind, served, want) in cases {
            let mut want = want;
            want.sort();
            assert_eq!(
                missing_kinds(routers.for_kind(kind), served),
                want,
                "{kind:?}"
            );
        }
    }

    /// Whether an equality-based label selector (`k=v,k2=v2`) selects `labels`.
    fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
        selector.split(',').all(|term| {
            let (k, v) = term.split_once('=').expect("k=v");
            labels.get(k).map(String::as_str) == Some(v)
        })
    }

    #[test]
    fn every_object_a_router_renders_is_of_a_kind_it_watches() {
        // The controller writes only watched kinds (it could not see the others edited
        // or deleted), so each router must list every kind it renders.
        // A Gateway parent, and a Service parent (sluice-router serves it).
        for parent in ["{name: public}", "{kind: Service, name: web}"] {
            let canary: Canary = serde_yaml::from_str(&format!(
                r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: web, namespace: shop, uid: u1}}
spec:
  targetRef: {{kind: Deployment, name: web}}
  service: {{port: 80, gatewayRefs: [{parent}]}}
  analysis: {{stepWeight: 10, sessionAffinity: {{cookieName: web-canary}}}}
"#
            ))
            .unwrap();
            renders_only_watched_objects(&canary);
        }
    }

    fn renders_only_watched_objects(canary: &Canary) {
        let routers = Routers::new("img".into(), 1);
        let mirrored = Routes {
            mirror: Some(50),
            ..Routes::canary(0)
        };
        let sticky = Routes {
            session: Some("web-canary=abc".into()),
            ..Routes::canary(20)
        };
        for router in routers.all() {
            let mut objects = router.static_objects(canary).unwrap();
            for routes in [Routes::canary(20), mirrored.clone(), sticky.clone()] {
                objects.extend(router.route_objects(canary, routes).unwrap());
            }
            assert!(!objects.is_empty(), "{:?}", router.kind());
            let watched = router.watched();
            for o in &objects {
                // Of a watched kind and inside its selector: an object the cache never
                // holds would be written again on every reconcile.
                let labels = o.metadata.labels.clone().unwrap_or_default();
                assert!(
                    watched
                        .iter()
                        .any(|w| w.kind.is_kind_of(o) && selects(w.selector, &labels)),
                    "{:?} renders {:?} {:?} ({labels:?}) without watching it",
                    router.kind(),
                    o.types,
                    o.metadata.name
                );
            }
            // The pods the built-in scrape reads are inside the pod watch's selector.
            if let Some(pods) = router.metrics_pods(canary) {
                let selector = pods.selector;
                let deployment = objects
                    .iter()
                    .find(|o| Kind::DEPLOYMENT.is_kind_of(o))
                    .expect("a router with pods deploys them");
                let pod_labels: BTreeMap<String, String> = serde_json::from_value(
                    deployment.data["spec"]["template"]["metadata"]["labels"].clone(),
                )
                .unwrap();
                assert!(selects(selector, &pod_labels), "{pod_labels:?}");
            }
            assert!(objects.iter().any(|o| router.route_kind().is_kind_of(o)));
        }
    }

    #[test]
    fn every_pod_a_router_names_for_metrics_is_watched() {
        // The controller reads the scraped pods from a watch per selector: a router that
        // named pods outside its `metrics_pod_selector` would be scraped from nowhere.
        let canary = |refs: &str| -> Canary {
            serde_yaml::from_str(&format!(
                "metadata: {{name: c, namespace: shop}}\nspec: {{targetRef: {{kind: Deployment, name: app}}, service: {{port: 80{refs}}}, analysis: {{stepWeight: 10}}}}"
            ))
            .unwrap()
        };
        let canaries = [
            canary(""),
            canary(", gatewayRefs: [{kind: Service, name: app}]"),
            canary(", gatewayRefs: [{name: public, namespace: edge}]"),
        ];
        let mut without_gamma = Routers::new("img".into(), 1);
        without_gamma.gateway_api.service_parents = None;
        for routers in [Routers::new("img".into(), 1), without_gamma] {
            let selectors = routers.metrics_pod_selectors();
            for router in routers.all() {
                for c in &canaries {
                    if let Some(pods) = router.metrics_pods(c) {
                        assert_eq!(router.metrics_pod_selector(), Some(pods.selector));
                        assert!(selectors.contains(&pods.selector), "{:?}", router.kind());
                    }
                }
            }
        }
        assert_eq!(
            Routers::new("img".into(), 1).metrics_pod_selectors(),
            [sluice::ROUTER_SELECTOR]
        );
    }

    #[test]
    fn kinds_name_their_api_group() {
        let cases = [
            (Kind::DEPLOYMENT, "apps/v1", "deployments"),
            (Kind::SERVICE_ACCOUNT, "v1", "serviceaccounts"),
            (
                Kind::VIRTUAL_SERVICE,
                "networking.istio.io/v1beta1",
                "virtualservices",
            ),
            (
                gateway_api::HTTP_ROUTE,
                "gateway.networking.k8s.io/v1",
                "httproutes",
            ),
        ];
        for (kind, api_version, plural) in cases {
            assert_eq!(kind.api_version(), api_version);
            let ar = kind.api_resource();
            assert_eq!(
                (ar.api_version.as_str(), ar.plural.as_str()),
                (api_version, plural)
            );
        }
    }

    #[test]
    fn drift_is_a_desired_field_missing_or_changed() {
        let object = |spec: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "VirtualService",
                "metadata": {"name": "app"},
                "spec": spec,
            }))
            .unwrap()
        };
        use serde_json::json;
        let desired = json!({"hosts": ["app"], "http": [{"mirrorPercentage": {"value": 50.0}, "route": [{"weight": 90}, {"weight": 10}]}]});
        // (live spec, drifted)
        let cases = [
            (desired.clone(), false),
            (
                json!({"hosts": ["app"], "http": [{"mirrorPercentage": {"value": 50}, "route": [{"weight": 90}, {"weight": 10}]}]}),
                false,
            ),
            (
                json!({"hosts": ["app"], "gateways": ["mesh"], "http": [{"mirrorPercentage": {"value": 50}, "route": [{"weight": 90}, {"weight": 10}]}]}),
                false,
            ),
            (
                json!({"hosts": ["app"], "http": [{"mirrorPercentage": {"value": 50}, "route": [{"weight": 100}, {"weight": 0}]}]}),
                true,
            ),
            (
                json!({"hosts": ["app"], "http": [{"route": [{"weight": 90}, {"weight": 10}]}]}),
                true,
            ),
            (
                json!({"hosts": ["app", "other"], "http": [{"mirrorPercentage": {"value": 50}, "route": [{"weight": 90}, {"weight": 10}]}]}),
                true,
            ),
            (json!(null), true),
        ];
        for (live, want) in cases {
            assert_eq!(
                spec_differs(&object(desired.clone()), &object(live.clone())),
                want,
                "{live}"
            );
        }
    }

    #[test]
    fn a_kind_two_routers_write_is_watched_once_per_selector() {
        let watched = Routers::new("img".into(), 1).watched();
        let vs: Vec<&Watched> = watched
            .iter()
            .filter(|w| w.kind == Kind::VIRTUAL_SERVICE)
            .collect();
        assert_eq!(vs.len(), 1, "{watched:?}");
    }
}
