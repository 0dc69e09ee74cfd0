//! Pure renders of the Kubernetes objects a Canary owns: the primary Deployment, the
//! primary/canary/apex Services and the primary autoscaler, and the revision a pod
//! template (with its configs) hashes to. The controller, the routers and the kubectl
//! plugin all build on these; this module depends on none of them.

pub mod configs;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::{Canary, CustomMetadata};

/// Label keys that may carry the app name in the target's selector, in order of preference.
pub const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];
/// Annotation on the primary recording the revision it runs.
pub const REVISION_ANNOTATION: &str = "sluice.dev/revision";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("target Deployment {0} has no spec.selector.matchLabels with one of app, name or app.kubernetes.io/name: add one (e.g. app: {0})")]
    NoSelectorLabel(String),
    #[error("target Deployment {0} has no pod template")]
    NoTemplate(String),
    #[error("Canary has no namespace or name")]
    Unnamed,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::NoSelectorLabel(_) => "no_selector_label",
            Error::NoTemplate(_) => "no_template",
            Error::Unnamed => "unnamed",
        }
    }
}

/// The label that selects the app's pods: key and the target's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLabel {
    pub key: String,
    pub value: String,
}

impl AppLabel {
    pub fn of(target: &Deployment) -> Result<Self, Error> {
        let labels = target
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref());
        SELECTOR_LABELS
            .iter()
            .find_map(|key| {
                labels.and_then(|l| l.get(*key)).map(|value| AppLabel {
                    key: key.to_string(),
                    value: value.clone(),
                })
            })
            .ok_or_else(|| Error::NoSelectorLabel(target.name_any()))
    }

    pub fn primary_value(&self) -> String {
        format!("{}-primary", self.value)
    }

    pub fn canary_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), self.value.clone())])
    }

    pub fn primary_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), self.primary_value())])
    }
}

pub fn owner_reference(canary: &Canary) -> Option<OwnerReference> {
    canary.controller_owner_ref(&())
}

/// Metadata for an object the Canary owns.
pub fn owned_meta(canary: &Canary, name: String, extra: Option<&CustomMetadata>) -> ObjectMeta {
    let mut labels = BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "sluice".to_string(),
    )]);
    let mut annotations = BTreeMap::new();
    if let Some(extra) = extra {
        labels.extend(extra.labels.clone());
        annotations.extend(extra.annotations.clone());
    }
    ObjectMeta {
        name: Some(name),
        namespace: canary.namespace(),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: owner_reference(canary).map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn primary_name(canary: &Canary) -> String {
    format!("{}-primary", canary.spec.target_ref.name)
}

/// The primary Deployment: the target's spec with the app label renamed to `<value>-primary`,
/// running `template` (the target's current template when promoting).
pub fn primary_deployment(
    canary: &Canary,
    target: &Deployment,
    template: &PodTemplateSpec,
    revision: &str,
    replicas: Option<i32>,
) -> Result<Deployment, Error> {
    let app = AppLabel::of(target)?;
    let target_spec = target
        .spec
        .as_ref()
        .ok_or_else(|| Error::NoTemplate(target.name_any()))?;
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(app.key.clone(), app.primary_value());

    let mut metadata = owned_meta(canary, primary_name(canary), None);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in target.labels() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    labels.insert(app.key.clone(), app.primary_value());
    metadata.annotations = Some(BTreeMap::from([(
        REVISION_ANNOTATION.to_string(),
        revision.to_string(),
    )]));

    Ok(Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(app.primary_selector()),
                match_expressions: None,
            },
            template,
            strategy: target_spec.strategy.clone(),
            min_ready_seconds: target_spec.min_ready_seconds,
            revision_history_limit: target_spec.revision_history_limit,
            progress_deadline_seconds: target_spec.progress_deadline_seconds,
            paused: None,
        }),
        status: None,
    })
}

/// A patch that sets only the replicas of the target Deployment.
pub fn target_scale(canary: &Canary, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": canary.spec.target_ref.name, "namespace": canary.namespace()},
        "spec": {"replicas": replicas},
    })
}

fn service(
    canary: &Canary,
    name: String,
    selector: BTreeMap<String, String>,
    target_port: Option<IntOrString>,
    extra: Option<&CustomMetadata>,
) -> Service {
    let svc = &canary.spec.service;
    let target_port = target_port
        .or_else(|| svc.target_port.clone())
        .unwrap_or(IntOrString::Int(svc.port));
    Service {
        metadata: owned_meta(canary, name, extra),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(svc.port_name.clone().unwrap_or_else(|| "http".into())),
                port: svc.port,
                target_port: Some(target_port),
                protocol: Some("TCP".into()),
                app_protocol: svc.app_protocol.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// `<svc>-primary`, `<svc>-canary`, and the apex `<svc>` selecting `apex_selector`
/// (on `apex_target_port` when a proxy serves it).
pub fn services(
    canary: &Canary,
    app: &AppLabel,
    apex_selector: BTreeMap<String, String>,
    apex_target_port: Option<IntOrString>,
) -> Vec<Service> {
    let name = canary.service_name();
    let svc = &canary.spec.service;
    vec![
        service(
            canary,
            format!("{name}-primary"),
            app.primary_selector(),
            None,
            svc.primary.as_ref(),
        ),
        service(
            canary,
            format!("{name}-canary"),
            app.canary_selector(),
            None,
            svc.canary.as_ref(),
        ),
        service(
            canary,
            name.to_string(),
            apex_selector,
            apex_target_port,
            svc.apex.as_ref(),
        ),
    ]
}

/// A copy of the target's autoscaler that scales the primary.
pub fn primary_autoscaler(
    canary: &Canary,
    source: &HorizontalPodAutoscaler,
) -> HorizontalPodAutoscaler {
    let mut spec: HorizontalPodAutoscalerSpec = source.spec.clone().unwrap_or_default();
    spec.scale_target_ref = CrossVersionObjectReference {
        api_version: Some("apps/v1".into()),
        kind: "Deployment".into(),
        name: primary_name(canary),
    };
    HorizontalPodAutoscaler {
        metadata: owned_meta(canary, format!("{}-primary", source.name_any()), None),
        spec: Some(spec),
        status: None,
    }
}

/// Stable hash of a pod template (and the configs it uses), the revision identity.
pub fn revision_hash(
    template: &PodTemplateSpec,
    tracked_configs: &BTreeMap<String, String>,
) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    for (k, v) in tracked_configs {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", fnv1a64(&bytes))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// The group/kind/name reference events are attached to.
pub fn canary_object_ref(canary: &Canary) -> k8s_openapi::api::core::v1::ObjectReference {
    canary.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Deployment {
        serde_yaml::from_str(
            r#"
metadata: {name: catalog, namespace: istioinaction, labels: {app: catalog, team: a}}
spec:
  replicas: 2
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog, version: v1}}
    spec: {containers: [{name: catalog, image: "catalog:v1"}]}
"#,
        )
        .unwrap()
    }

    fn canary() -> Canary {
        serde_yaml::from_str(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {name: catalog-release, namespace: istioinaction, uid: "1234"}
spec:
  targetRef: {kind: Deployment, name: catalog}
  service: {name: catalog, port: 80, targetPort: 3000, primary: {labels: {tier: p}}}
  analysis: {stepWeight: 10}
"#,
        )
        .unwrap()
    }

    #[test]
    fn primary_renames_the_app_label() {
        let t = target();
        let tpl = t.spec.as_ref().unwrap().template.clone();
        let p = primary_deployment(&canary(), &t, &tpl, "abc", Some(2)).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("catalog-primary"));
        let spec = p.spec.unwrap();
        assert_eq!(
            spec.selector.match_labels.unwrap()["app"],
            "catalog-primary"
        );
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "catalog-primary");
        assert_eq!(labels["version"], "v1");
        assert_eq!(p.metadata.annotations.unwrap()[REVISION_ANNOTATION], "abc");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "Canary");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(p.metadata.labels.unwrap()["team"], "a");
    }

    #[test]
    fn selector_label_is_required() {
        let mut t = target();
        t.spec.as_mut().unwrap().selector.match_labels =
            Some(BTreeMap::from([("tier".into(), "x".into())]));
        assert_eq!(
            AppLabel::of(&t),
            Err(Error::NoSelectorLabel("catalog".into()))
        );
        let mut t = target();
        t.spec.as_mut().unwrap().selector.match_labels = Some(BTreeMap::from([(
            "app.kubernetes.io/name".into(),
            "cat".into(),
        )]));
        assert_eq!(AppLabel::of(&t).unwrap().key, "app.kubernetes.io/name");
    }

    #[test]
    fn services_select_primary_canary_and_apex() {
        let c = canary();
        let app = AppLabel::of(&target()).unwrap();
        let svcs = services(&c, &app, app.primary_selector(), None);
        let by_name: BTreeMap<_, _> = svcs
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s.spec.clone().unwrap()))
            .collect();
        assert_eq!(
            by_name["catalog-primary"].selector.as_ref().unwrap()["app"],
            "catalog-primary"
        );
        assert_eq!(
            by_name["catalog-canary"].selector.as_ref().unwrap()["app"],
            "catalog"
        );
        assert_eq!(
            by_name["catalog"].selector.as_ref().unwrap()["app"],
            "catalog-primary"
        );
        let port = &by_name["catalog"].ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::Int(3000)));
        assert_eq!(port.name.as_deref(), Some("http"));
        let primary = svcs
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("catalog-primary"))
            .unwrap();
        assert_eq!(primary.metadata.labels.as_ref().unwrap()["tier"], "p");
    }

    #[test]
    fn revision_hash_changes_with_template_and_configs() {
        let t = target();
        let tpl = t.spec.as_ref().unwrap().template.clone();
        let none = BTreeMap::new();
        let base = revision_hash(&tpl, &none);
        assert_eq!(base, revision_hash(&tpl.clone(), &none), "stable");
        let mut v2 = tpl.clone();
        v2.spec.as_mut().unwrap().containers[0].image = Some("catalog:v2".into());
        assert_ne!(base, revision_hash(&v2, &none));
        let configs = BTreeMap::from([("ConfigMap/settings".to_string(), "h1".to_string())]);
        assert_ne!(base, revision_hash(&tpl, &configs));
    }
}
