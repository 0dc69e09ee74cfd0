//! sluice-proxy as the router: the same VirtualService and DestinationRules as with Istio,
//! enforced by a `sluice-router` Deployment in the Canary's namespace (one per namespace,
//! like a waypoint). The apex Service points at the router; `<svc>-primary` and
//! `<svc>-canary` keep selecting the app's pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, ServiceAccount, TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::ResourceExt;

use super::istio::{self, IstioRouter};
use super::{
    spec_differs, to_dynamic, Error, Kind, LiveRoutes, MetricsPods, SharedObjects, TrafficRouter,
    Watched,
};
use crate::analysis::Reporter;
use crate::api::{Canary, RouterKind};
use crate::rollout::Routes;
use crate::workloads::AppLabel;

pub const ROUTER_NAME: &str = "sluice-router";
pub const ROUTER_LABEL_KEY: &str = "app.kubernetes.io/name";
/// sluice-proxy's traffic port in the router pods.
pub const TRAFFIC_PORT: i32 = 15001;
/// sluice-proxy's admin port: `/metrics`, `/config/*`, `/healthz`, `/readyz`.
pub const ADMIN_PORT: i32 = 15000;
/// After SIGTERM the router stays up, not ready, this long: endpoints and kube-proxy
/// stop sending new connections to it meanwhile.
pub const DRAIN_SECONDS: u32 = 5;

/// Marks the router objects the controller made for Canaries (not those of
/// `--print-router-manifest`): only these are removed when no Canary uses them.
pub const MANAGED_LABEL_KEY: &str = "sluice.dev/router";
pub const MANAGED_LABEL_VALUE: &str = "for-canaries";
/// [`MANAGED_LABEL_KEY`]=[`MANAGED_LABEL_VALUE`] as a label selector.
const MANAGED_SELECTOR: &str = "sluice.dev/router=for-canaries";
/// The router pods, whose admin port serves the metrics the built-in checks read.
pub const ROUTER_SELECTOR: &str = "app.kubernetes.io/name=sluice-router";

pub struct SluiceRouter {
    /// Image of sluice-proxy.
    pub image: String,
    /// Router pods per namespace.
    pub replicas: i32,
}

/// How the router Deployment is run.
#[derive(Clone, Debug)]
pub struct RouterSpec<'a> {
    pub namespace: &'a str,
    pub image: &'a str,
    pub replicas: i32,
    /// Made for Canaries: carries [`MANAGED_LABEL_KEY`].
    pub managed: bool,
}

impl SluiceRouter {
    /// The router's own objects in the Canary's namespace.
    pub fn router_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        let ns = canary.namespace().unwrap_or_default();
        router_objects(&RouterSpec {
            namespace: &ns,
            image: &self.image,
            replicas: self.replicas,
            managed: true,
        })
    }
}

impl TrafficRouter for SluiceRouter {
    fn kind(&self) -> RouterKind {
        RouterKind::Sluice
    }

    fn apex_selector(&self, _canary: &Canary, _app: &AppLabel) -> BTreeMap<String, String> {
        router_labels()
    }

    fn apex_target_port(&self, _canary: &Canary) -> Option<IntOrString> {
        Some(IntOrString::Int(TRAFFIC_PORT))
    }

    fn apex_backend(&self, _canary: &Canary) -> Option<&'static str> {
        Some(ROUTER_NAME)
    }

    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        let mut objects = IstioRouter.static_objects(canary)?;
        objects.extend(self.router_objects(canary)?);
        Ok(objects)
    }

    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error> {
        let vs = istio::virtual_service(canary, routes);
        Ok(vec![to_dynamic("VirtualService", &vs.name_any(), &vs)?])
    }

    fn route_kind(&self) -> Kind {
        Kind::VIRTUAL_SERVICE
    }

    fn read_routes(&self, live: &DynamicObject) -> Result<LiveRoutes, Error> {
        istio::read_virtual_service(live)
    }

    /// A gateway's VirtualService stays, as with Istio; sluice-router itself serves only
    /// the mesh, which needs nothing once the apex selects the app again.
    fn finalize(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        IstioRouter.finalize(canary)
    }

    fn watched(&self) -> Vec<Watched> {
        istio::WATCHED.into_iter().chain(router_watched()).collect()
    }

    /// The routes' specs get no defaults from the API server; the router's own objects
    /// (a Deployment above all) do, so for them only the applied hash counts.
    fn drifted(&self, desired: &DynamicObject, live: &DynamicObject) -> bool {
        istio::WATCHED.iter().any(|w| w.kind.is_kind_of(desired)) && spec_differs(desired, live)
    }

    fn reporter(&self, _canary: &Canary) -> Reporter {
        Reporter::Source
    }

    fn metrics_pods(&self, _canary: &Canary) -> Option<MetricsPods> {
        Some(MetricsPods {
            selector: ROUTER_SELECTOR,
            port: ADMIN_PORT as u16,
        })
    }

    fn metrics_pod_selector(&self) -> Option<&'static str> {
        Some(ROUTER_SELECTOR)
    }

    fn shared_objects(&self) -> Option<SharedObjects> {
        Some(SharedObjects {
            name: ROUTER_NAME,
            kinds: &ROUTER_KINDS,
        })
    }
}

/// The router's own objects in a namespace, in the order they are applied.
pub fn router_objects(spec: &RouterSpec) -> Result<Vec<DynamicObject>, Error> {
    Ok(vec![
        to_dynamic("ServiceAccount", ROUTER_NAME, &service_account(spec))?,
        to_dynamic("Role", ROUTER_NAME, &role(spec))?,
        to_dynamic("RoleBinding", ROUTER_NAME, &role_binding(spec))?,
        to_dynamic("PodDisruptionBudget", ROUTER_NAME, &disruption_budget(spec))?,
        to_dynamic("Deployment", ROUTER_NAME, &deployment(spec))?,
    ])
}

/// The router's kinds, as the controller caches them (only those made for Canaries).
pub fn router_watched() -> impl Iterator<Item = Watched> {
    ROUTER_KINDS.iter().map(|&kind| Watched {
        kind,
        selector: MANAGED_SELECTOR,
    })
}

/// The router's objects as YAML, for running sluice-proxy in a namespace without a Canary
/// (`sluice-controller --print-router-manifest NAMESPACE`).
pub fn router_manifest(ns: &str, image: &str, replicas: i32) -> Result<String, serde_yaml::Error> {
    let spec = RouterSpec {
        namespace: ns,
        image,
        replicas,
        managed: false,
    };
    let docs = [
        serde_yaml::to_string(&service_account(&spec))?,
        serde_yaml::to_string(&role(&spec))?,
        serde_yaml::to_string(&role_binding(&spec))?,
        serde_yaml::to_string(&disruption_budget(&spec))?,
        serde_yaml::to_string(&deployment(&spec))?,
    ];
    Ok(docs.join("---\n"))
}

/// The kinds of the router objects, in the order they are applied (the Deployment last,
/// so its pods start with their permissions in place).
pub const ROUTER_KINDS: [Kind; 5] = [
    Kind::SERVICE_ACCOUNT,
    Kind::ROLE,
    Kind::ROLE_BINDING,
    Kind::POD_DISRUPTION_BUDGET,
    Kind::DEPLOYMENT,
];

pub fn router_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(ROUTER_LABEL_KEY.to_string(), ROUTER_NAME.to_string())])
}

/// The router serves every Canary of its namespace, so it is owned by none of them: it
/// stays when one Canary is deleted. Its labels say who made it.
fn meta(spec: &RouterSpec) -> ObjectMeta {
    let mut labels = router_labels();
    labels.insert("app.kubernetes.io/managed-by".into(), "sluice".into());
    labels.insert("app.kubernetes.io/component".into(), "router".into());
    if spec.managed {
        labels.insert(MANAGED_LABEL_KEY.into(), MANAGED_LABEL_VALUE.into());
    }
    ObjectMeta {
        name: Some(ROUTER_NAME.into()),
        namespace: Some(spec.namespace.into()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn service_account(spec: &RouterSpec) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(spec),
        ..Default::default()
    }
}

/// Voluntary disruptions (a node drain) take one router pod at a time. maxUnavailable,
/// not minAvailable: with one replica a drain can still proceed.
fn disruption_budget(spec: &RouterSpec) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(spec),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(router_labels()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What sluice-proxy watches in its own namespace (read-only), plus the Warning events it
/// writes about objects it cannot enforce.
fn role(spec: &RouterSpec) -> Role {
    let read = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    };
    Role {
        metadata: meta(spec),
        rules: Some(vec![
            read(
                "networking.istio.io",
                &["virtualservices", "destinationrules"],
            ),
            read("gateway.networking.k8s.io", &["httproutes"]),
            read("discovery.k8s.io", &["endpointslices"]),
            read("", &["pods"]),
            // The HTTPRoutes it serves get their Accepted and ResolvedRefs conditions.
            PolicyRule {
                api_groups: Some(vec!["gateway.networking.k8s.io".into()]),
                resources: Some(vec!["httproutes/status".into()]),
                verbs: vec!["patch".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["events.k8s.io".into()]),
                resources: Some(vec!["events".into()]),
                verbs: vec!["create".into()],
                ..Default::default()
            },
        ]),
    }
}

fn role_binding(spec: &RouterSpec) -> RoleBinding {
    RoleBinding {
        metadata: meta(spec),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ROUTER_NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ROUTER_NAME.into(),
            namespace: Some(spec.namespace.into()),
            ..Default::default()
        }]),
    }
}

fn deployment(spec: &RouterSpec) -> Deployment {
    let field = |path: &str| {
        Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), ADMIN_PORT.to_string()),
    ]);
    let container = Container {
        name: "proxy".into(),
        image: Some(spec.image.into()),
        args: Some(vec![
            "--kube".into(),
            "--router".into(),
            "--namespace=$(POD_NAMESPACE)".into(),
            format!("--listen=0.0.0.0:{TRAFFIC_PORT}"),
            format!("--admin=0.0.0.0:{ADMIN_PORT}"),
            format!("--workload={ROUTER_NAME}"),
            format!("--drain-period={DRAIN_SECONDS}s"),
        ]),
        env: Some(vec![
            EnvVar {
                name: "POD_NAMESPACE".into(),
                value_from: field("metadata.namespace"),
                ..Default::default()
            },
            EnvVar {
                name: "POD_NAME".into(),
                value_from: field("metadata.name"),
                ..Default::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: TRAFFIC_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                ..Default::default()
            },
        ]),
        // Ready once its first configuration is loaded, not while it drains.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // Measured at 9 MB idle and 12 MB after load (docs/benchmarks.md); the limit
        // leaves room for many connections without letting one router starve the node.
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("128Mi".into()),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(spec),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            // One new pod at a time, and none taken away before its successor is ready.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            selector: LabelSelector {
                match_labels: Some(router_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(router_labels()),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ROUTER_NAME.into()),
                    containers: vec![container],
                    // On different nodes where there are several; one node still works.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(router_labels()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    // The drain period, then up to 20 s for requests in flight.
                    termination_grace_period_seconds: Some(i64::from(DRAIN_SECONDS) + 20 + 5),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> Canary {
        serde_yaml::from_str(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {name: catalog-release, namespace: shop, uid: "1"}
spec:
  provider: sluice
  targetRef: {kind: Deployment, name: catalog}
  service: {name: catalog, port: 80, targetPort: 3000}
  analysis: {stepWeight: 10}
"#,
        )
        .unwrap()
    }

    #[test]
    fn router_objects_live_in_the_namespace_and_read_only_what_the_proxy_watches() {
        let router = SluiceRouter {
            image: "sluice-proxy:test".into(),
            replicas: 2,
        };
        let objs = router.static_objects(&canary()).unwrap();
        let kinds: Vec<String> = objs
            .iter()
            .map(|o| o.types.as_ref().unwrap().kind.clone())
            .collect();
        assert_eq!(
            kinds,
            [
                "DestinationRule",
                "DestinationRule",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "PodDisruptionBudget",
                "Deployment"
            ]
        );
        assert_eq!(kinds[2..], ROUTER_KINDS.map(|k| k.kind));
        for (o, kind) in objs[2..].iter().zip(ROUTER_KINDS) {
            assert!(kind.is_kind_of(o), "{kind:?}");
        }
        for o in &objs[2..] {
            assert_eq!(o.metadata.namespace.as_deref(), Some("shop"));
            assert!(
                o.metadata.owner_references.is_none(),
                "shared by the namespace's canaries"
            );
            assert_eq!(
                o.labels().get(MANAGED_LABEL_KEY).map(String::as_str),
                Some(MANAGED_LABEL_VALUE)
            );
        }
        let spec = RouterSpec {
            namespace: "shop",
            image: "img",
            replicas: 2,
            managed: true,
        };
        let role = role(&spec);
        for rule in role.rules.unwrap() {
            let resources = rule.resources.clone().unwrap_or_default();
            // Writes only events and the status of the HTTPRoutes it serves.
            let want: &[&str] = match resources.as_slice() {
                [r] if r == "events" => &["create"],
                [r] if r == "httproutes/status" => &["patch"],
                _ => &["get", "list", "watch"],
            };
            assert_eq!(rule.verbs, want, "{resources:?}");
        }
        let d = deployment(&spec).spec.unwrap();
        let pod = d.template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.contains(&"--kube".to_string()));
        assert!(args.contains(&"--router".to_string()));
        assert_eq!(d.replicas, Some(2));
        let rolling = d.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            (rolling.max_surge, rolling.max_unavailable),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))),
            "one pod at a time, never fewer ready"
        );
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].topology_key,
            "kubernetes.io/hostname"
        );
        let budget = disruption_budget(&spec).spec.unwrap();
        assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn a_printed_manifest_is_not_marked_as_the_controllers() {
        let text = router_manifest("shop", "img", 2).unwrap();
        assert!(!text.contains(MANAGED_LABEL_KEY), "{text}");
        assert!(text.contains("kind: PodDisruptionBudget"), "{text}");
    }

    #[test]
    fn apex_points_at_the_router() {
        let router = SluiceRouter {
            image: "x".into(),
            replicas: 2,
        };
        let app = AppLabel {
            key: "app".into(),
            value: "catalog".into(),
        };
        assert_eq!(router.apex_selector(&canary(), &app), router_labels());
        assert_eq!(
            router.apex_target_port(&canary()),
            Some(IntOrString::Int(TRAFFIC_PORT))
        );
        assert_eq!(router.apex_backend(&canary()), Some(ROUTER_NAME));
    }
}
