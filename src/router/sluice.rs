//! sluice-proxy as the router: the same VirtualService and DestinationRules as with Istio,
//! enforced by a `sluice-router` Deployment in the Canary's namespace (one per namespace,
//! like a waypoint). The apex Service points at the router; `<svc>-primary` and
//! `<svc>-canary` keep selecting the app's pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::ResourceExt;

use super::istio::{self, IstioRouter};
use super::{to_dynamic, Error, TrafficRouter};
use crate::api::{Canary, RouterKind};
use crate::controller::workloads::AppLabel;
use crate::rollout::Routes;

pub const ROUTER_NAME: &str = "sluice-router";
pub const ROUTER_LABEL_KEY: &str = "app.kubernetes.io/name";
/// sluice-proxy's traffic port in the router pods.
pub const TRAFFIC_PORT: i32 = 15001;
/// sluice-proxy's admin port: `/metrics`, `/config/*`, `/healthz`.
pub const ADMIN_PORT: i32 = 15000;

pub struct SluiceRouter {
    /// Image of sluice-proxy.
    pub image: String,
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

    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        let ns = canary.namespace().unwrap_or_default();
        let mut objects = IstioRouter.static_objects(canary)?;
        objects.push(to_dynamic(
            "ServiceAccount",
            ROUTER_NAME,
            &service_account(&ns),
        )?);
        objects.push(to_dynamic("Role", ROUTER_NAME, &role(&ns))?);
        objects.push(to_dynamic("RoleBinding", ROUTER_NAME, &role_binding(&ns))?);
        objects.push(to_dynamic(
            "Deployment",
            ROUTER_NAME,
            &deployment(&ns, &self.image),
        )?);
        Ok(objects)
    }

    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error> {
        let vs = istio::virtual_service(canary, routes);
        Ok(vec![to_dynamic("VirtualService", &vs.name_any(), &vs)?])
    }
}

/// The router's objects as YAML, for running sluice-proxy in a namespace without a Canary
/// (`sluice-controller --print-router-manifest NAMESPACE`).
pub fn router_manifest(ns: &str, image: &str) -> Result<String, serde_yaml::Error> {
    let docs = [
        serde_yaml::to_string(&service_account(ns))?,
        serde_yaml::to_string(&role(ns))?,
        serde_yaml::to_string(&role_binding(ns))?,
        serde_yaml::to_string(&deployment(ns, image))?,
    ];
    Ok(docs.join("---\n"))
}

pub fn router_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(ROUTER_LABEL_KEY.to_string(), ROUTER_NAME.to_string())])
}

/// The router serves every Canary of its namespace, so it is owned by none of them: it
/// stays when one Canary is deleted. Its labels say who made it.
fn meta(ns: &str) -> ObjectMeta {
    let mut labels = router_labels();
    labels.insert("app.kubernetes.io/managed-by".into(), "sluice".into());
    labels.insert("app.kubernetes.io/component".into(), "router".into());
    ObjectMeta {
        name: Some(ROUTER_NAME.into()),
        namespace: Some(ns.into()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn service_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ns),
        ..Default::default()
    }
}

/// What sluice-proxy watches in its own namespace (read-only), plus the Warning events it
/// writes about objects it cannot enforce.
fn role(ns: &str) -> Role {
    let read = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    };
    Role {
        metadata: meta(ns),
        rules: Some(vec![
            read(
                "networking.istio.io",
                &["virtualservices", "destinationrules"],
            ),
            read("discovery.k8s.io", &["endpointslices"]),
            read("", &["pods"]),
            PolicyRule {
                api_groups: Some(vec!["events.k8s.io".into()]),
                resources: Some(vec!["events".into()]),
                verbs: vec!["create".into()],
                ..Default::default()
            },
        ]),
    }
}

fn role_binding(ns: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(ns),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ROUTER_NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ROUTER_NAME.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    }
}

fn deployment(ns: &str, image: &str) -> Deployment {
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
        image: Some(image.into()),
        args: Some(vec![
            "--kube".into(),
            "--router".into(),
            "--namespace=$(POD_NAMESPACE)".into(),
            format!("--listen=0.0.0.0:{TRAFFIC_PORT}"),
            format!("--admin=0.0.0.0:{ADMIN_PORT}"),
            format!("--workload={ROUTER_NAME}"),
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
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(2),
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
        metadata: meta(ns),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
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
                    termination_grace_period_seconds: Some(10),
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
                "Deployment"
            ]
        );
        for o in &objs[2..] {
            assert_eq!(o.metadata.namespace.as_deref(), Some("shop"));
            assert!(
                o.metadata.owner_references.is_none(),
                "shared by the namespace's canaries"
            );
        }
        let role = role("shop");
        for rule in role.rules.unwrap() {
            let writes_events = rule.resources == Some(vec!["events".to_string()]);
            let want: &[&str] = if writes_events {
                &["create"]
            } else {
                &["get", "list", "watch"]
            };
            assert_eq!(rule.verbs, want);
        }
        let d = deployment("shop", "img");
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(c.args.as_ref().unwrap().contains(&"--kube".to_string()));
    }

    #[test]
    fn apex_points_at_the_router() {
        let router = SluiceRouter { image: "x".into() };
        let app = AppLabel {
            key: "app".into(),
            value: "catalog".into(),
        };
        assert_eq!(router.apex_selector(&canary(), &app), router_labels());
        assert_eq!(
            router.apex_target_port(&canary()),
            Some(IntOrString::Int(TRAFFIC_PORT))
        );
    }
}
