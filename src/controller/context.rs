//! What the reconciler is handed: the client, the caches it reads from, and its outputs.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::RwLock;

use super::metrics::Metrics;
use crate::api::{AlertProvider, Canary, MetricTemplate, RouterKind};
use crate::router::{TrafficRouter, Watched};

/// Settings of the controller process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Router for Canaries that do not name one.
    pub default_provider: RouterKind,
    /// Prometheus address for built-in metrics when the Canary names none.
    pub metrics_server: Option<String>,
    /// Image of sluice-proxy for `provider: sluice` routers.
    pub proxy_image: String,
    /// sluice-router pods per namespace.
    pub router_replicas: i32,
    /// A mesh implements HTTPRoutes with Service parents (GAMMA): sluice-router is not
    /// deployed for `gatewayapi:v1` Canaries.
    pub gamma_by_mesh: bool,
}

/// Caches of the objects the controller reads, filled by watches.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    /// Read on every check that names one, with their Secrets from `secrets`.
    pub metric_templates: Store<MetricTemplate>,
    /// Read on every alert, with their Secrets from `secrets`.
    pub alert_providers: Store<AlertProvider>,
    /// The routers' pods the built-in scrape reads, per label selector
    /// (`Routers::metrics_pod_selectors`).
    pub metrics_pods: Vec<(&'static str, Store<Pod>)>,
    /// The objects the routers wrote, one cache per watched kind and selector (of the
    /// kinds the API server serves).
    pub routed: Vec<(Watched, Store<DynamicObject>)>,
    /// The routers' kinds the API server served when the watches started.
    pub served: std::collections::BTreeSet<crate::router::Kind>,
}

impl Stores {
    /// The cached pods in `namespace` that match `selector`, one of the routers'
    /// `metrics_pod_selector`s.
    pub fn metrics_pods_in(&self, selector: &str, namespace: &str) -> Vec<Arc<Pod>> {
        self.metrics_pods
            .iter()
            .filter(|(s, _)| *s == selector)
            .flat_map(|(_, store)| store.state())
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// The cached copy of a router's object of the same kind, namespace and name as
    /// `object`.
    pub fn routed_copy(&self, object: &DynamicObject) -> Option<Arc<DynamicObject>> {
        let name = object.metadata.name.as_deref()?;
        let ns = object.metadata.namespace.as_deref().unwrap_or_default();
        self.routed
            .iter()
            .filter(|(watched, _)| watched.kind.is_kind_of(object))
            .find_map(|(watched, store)| {
                store.get(&ObjectRef::new_with(name, watched.kind.api_resource()).within(ns))
            })
    }
}

/// Shared with the HTTP server: diagnostics and the metrics registry.
#[derive(Clone)]
pub struct State {
    pub registry: Arc<RwLock<Registry>>,
    pub metrics: Arc<Metrics>,
    pub diagnostics: Arc<RwLock<Diagnostics>>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Diagnostics {
    pub leader: bool,
    pub last_reconcile: Option<String>,
    pub caches_synced: bool,
}

impl State {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        State {
            registry: Arc::new(RwLock::new(registry)),
            metrics,
            diagnostics: Arc::default(),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Handed to every reconcile.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub events: super::events::EventPublisher,
    pub metrics: Arc<Metrics>,
    pub diagnostics: Arc<RwLock<Diagnostics>>,
    pub config: Config,
    pub analysis: super::analysis::Analysis,
    pub routers: crate::router::Routers,
    /// Client for webhooks and alerts.
    pub http: reqwest::Client,
    /// Canaries as sluice last wrote their status, by uid, with the resourceVersion they
    /// had before: while the cache still shows that version it is stale, and the written
    /// copy is used instead, so a quick second reconcile does not repeat a step.
    pub written: parking_lot::Mutex<std::collections::HashMap<String, (String, Arc<Canary>)>>,
}

impl Context {
    /// The router of a Canary: its `spec.provider`, or the controller's default.
    pub fn router(&self, canary: &Canary) -> &dyn TrafficRouter {
        self.routers
            .for_kind(canary.spec.provider.unwrap_or(self.config.default_provider))
    }

    /// The freshest known copy of a Canary: the cache's, unless sluice wrote a newer status.
    pub fn freshest(&self, cached: Arc<Canary>) -> Arc<Canary> {
        let Some(uid) = cached.metadata.uid.clone() else {
            return cached;
        };
        let mut written = self.written.lock();
        match written.get(&uid) {
            Some((before, newer)) if cached.metadata.resource_version.as_ref() == Some(before) => {
                newer.clone()
            }
            Some(_) => {
                written.remove(&uid);
                cached
            }
            None => cached,
        }
    }

    pub fn remember_written(&self, before: &Canary, after: Canary) {
        if let (Some(uid), Some(rv)) = (
            before.metadata.uid.clone(),
            before.metadata.resource_version.clone(),
        ) {
            self.written.lock().insert(uid, (rv, Arc::new(after)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mock_api::{context, mock_client};
    use super::*;

    fn canary(resource_version: &str, weight: i32) -> Arc<Canary> {
        let mut c: Canary = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1beta1\nkind: Canary\nmetadata: {name: web, namespace: shop, uid: u1}\nspec: {targetRef: {kind: Deployment, name: web}, service: {port: 80}, analysis: {stepWeight: 10}}\n",
        )
        .unwrap();
        c.metadata.resource_version = Some(resource_version.into());
        c.status = Some(crate::api::CanaryStatus {
            canary_weight: weight,
            ..Default::default()
        });
        Arc::new(c)
    }

    #[tokio::test]
    async fn a_stale_cache_gives_way_to_the_status_sluice_wrote() {
        let (client, _) = mock_client(|_| (200, serde_json::Value::Null));
        let ctx = context(client, vec![]);
        let weight = |c: &Arc<Canary>| c.status.as_ref().unwrap().canary_weight;
        // Nothing written: the cache's copy.
        assert_eq!(weight(&ctx.freshest(canary("1", 10))), 10);
        // Written at weight 20 over resourceVersion 1; the cache still shows version 1.
        ctx.remember_written(&canary("1", 10), Canary::clone(&canary("2", 20)));
        assert_eq!(weight(&ctx.freshest(canary("1", 10))), 20);
        // The cache caught up (a newer version): its copy again, and the written one is
        // forgotten, so an older cache copy later is not replaced by it.
        assert_eq!(weight(&ctx.freshest(canary("2", 20))), 20);
        assert_eq!(weight(&ctx.freshest(canary("1", 10))), 10);
    }
}
