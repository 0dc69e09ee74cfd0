//! Reading, writing and watching the objects the plugin shows: the client from the
//! kubeconfig, snapshots for `get`, watch caches for `get -w`, the target's revision for
//! `status`, and the annotation patches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::control::{self, Action, ControlError};
use super::render::{last_warning, Snapshot};
use crate::api::Canary;
use crate::router::Kind;
use crate::workloads::configs::{self, ConfigKind};
use crate::workloads::revision_hash;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("canary {name} not found in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    #[error("a watch stopped before it had listed its objects")]
    WatchEnded,
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Where to connect: `--kubeconfig`, `--context`, `-n`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    /// `-n`, else the namespace of the kubeconfig context (else `default`).
    pub namespace: String,
}

/// A client as kubectl would make it: KUBECONFIG (or in-cluster), optionally another file
/// or context.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClusterError> {
    let client = if opts.kubeconfig.is_none() && opts.context.is_none() {
        Client::try_default().await?
    } else {
        let options = KubeConfigOptions {
            context: opts.context.clone(),
            ..Default::default()
        };
        let kubeconfig_error = |path: &str, e: &dyn std::fmt::Display| ClusterError::Kubeconfig {
            path: path.to_string(),
            message: e.to_string(),
        };
        let config = match &opts.kubeconfig {
            Some(path) => {
                let shown = path.display().to_string();
                let file = Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(&shown, &e))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| kubeconfig_error(&shown, &e))?
            }
            None => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| kubeconfig_error("(default)", &e))?,
        };
        Client::try_from(config)?
    };
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok(Connection { client, namespace })
}

impl Connection {
    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn canary(&self, name: &str) -> Result<Canary, ClusterError> {
        self.canaries()
            .get_opt(name)
            .await?
            .ok_or_else(|| ClusterError::NotFound {
                name: name.to_string(),
                namespace: self.namespace.clone(),
            })
    }

    /// The snapshot of one Canary, or of all in the namespace (sorted by name).
    pub async fn snapshots(&self, name: Option<&str>) -> Result<Vec<Snapshot>, ClusterError> {
        let canaries = match name {
            Some(name) => vec![self.canary(name).await?],
            None => {
                let mut list = self.canaries().list(&ListParams::default()).await?.items;
                list.sort_by_key(|c| c.name_any());
                list
            }
        };
        let events = self.canary_events().await?;
        let mut out = vec![];
        for canary in canaries {
            let deployments: Api<Deployment> =
                Api::namespaced(self.client.clone(), &self.namespace);
            let target = deployments.get_opt(&canary.spec.target_ref.name).await?;
            let primary = deployments
                .get_opt(&format!("{}-primary", canary.spec.target_ref.name))
                .await?;
            let kind = super::router_of(&canary).route_kind();
            let route = match Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &self.namespace,
                &kind.api_resource(),
            )
            .get_opt(canary.service_name())
            .await
            {
                Ok(route) => route,
                // The router's CRDs are not installed: there is nothing to show.
                Err(e) if is_status(&e, 404) => None,
                Err(e) => return Err(e.into()),
            };
            let events = events
                .iter()
                .filter(|e| regards(e, &canary))
                .cloned()
                .collect();
            out.push(Snapshot {
                canary,
                target,
                primary,
                route,
                events,
            });
        }
        Ok(out)
    }

    /// The message of the last Warning event regarding the Canary.
    pub async fn last_warning(&self, canary: &Canary) -> Result<Option<String>, ClusterError> {
        let events = self.canary_events().await?;
        Ok(last_warning(events.iter().filter(|e| regards(e, canary))).and_then(|e| e.note.clone()))
    }

    /// Events about Canaries in the namespace; filtered on the server when it can.
    async fn canary_events(&self) -> Result<Vec<Event>, ClusterError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.list(&ListParams::default().fields(CANARY_EVENTS)).await {
            Ok(list) => Ok(list.items),
            Err(e) if is_status(&e, 400) => Ok(api.list(&ListParams::default()).await?.items),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the Canary, decides and writes the annotation. A Canary changed between the
    /// read and the write is read again, so the revision written is the one checked.
    pub async fn act(&self, name: &str, action: Action) -> Result<String, ControlError> {
        for _ in 0..5 {
            let canary = self.canary(name).await?;
            let plan = control::plan(&canary, action)?;
            let Some(patch) = plan.patch else {
                return Ok(plan.message);
            };
            match self
                .canaries()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(plan.message),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(ClusterError::from(e).into()),
            }
        }
        Err(ControlError::Conflict(name.to_string()))
    }

    /// The revision the target Deployment runs, computed as the controller does (pod
    /// template plus the content of the tracked ConfigMaps and Secrets). None when it
    /// cannot be known here: no target, or configs this user may not read.
    pub async fn target_revision(&self, canary: &Canary) -> Result<Option<String>, ClusterError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(target) = deployments.get_opt(&canary.spec.target_ref.name).await? else {
            return Ok(None);
        };
        let Some(template) = target.spec.as_ref().map(|s| &s.template) else {
            return Ok(None);
        };
        let mut hashes = BTreeMap::new();
        for r in configs::referenced(template) {
            let hash = match r.kind {
                ConfigKind::ConfigMap => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
                    match api.get_opt(&r.name).await {
                        Ok(cm) => cm
                            .filter(|c| configs::is_trackable(c.metadata.annotations.as_ref()))
                            .map(|c| configs::config_map_hash(&c)),
                        Err(e) if is_status(&e, 403) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                }
                ConfigKind::Secret => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                    match api.get_opt(&r.name).await {
                        Ok(s) => s
                            .filter(|s| configs::is_trackable(s.metadata.annotations.as_ref()))
                            .map(|s| configs::secret_hash(&s)),
                        Err(e) if is_status(&e, 403) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(hash) = hash {
                hashes.insert(r.key(), hash);
            }
        }
        Ok(Some(revision_hash(template, &hashes)))
    }

    /// Follows the namespace (or one Canary) and calls `show` with fresh snapshots after
    /// every change of a Canary, Deployment, route object (VirtualService, HTTPRoute) or
    /// Canary event. Runs until
    /// the process ends.
    pub async fn watch(
        &self,
        name: Option<&str>,
        mut show: impl FnMut(Vec<Snapshot>),
    ) -> Result<(), ClusterError> {
        let changed = Arc::new(Notify::new());
        let ns = self.namespace.as_str();
        let canary_config = match name {
            Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
            None => watcher::Config::default(),
        };
        let canaries = spawn_reflector(
            Api::<Canary>::namespaced(self.client.clone(), ns),
            canary_config,
            (),
            &changed,
        );
        let deployments = spawn_reflector(
            Api::<Deployment>::namespaced(self.client.clone(), ns),
            watcher::Config::default(),
            (),
            &changed,
        );
        // Every kind a router carries its weights in, once; watching a kind whose CRD is
        // missing would only log errors.
        let mut route_stores: BTreeMap<Kind, Store<DynamicObject>> = BTreeMap::new();
        for router in super::routers().all() {
            let kind = router.route_kind();
            if route_stores.contains_key(&kind) {
                continue;
            }
            let api = Api::namespaced_with(self.client.clone(), ns, &kind.api_resource());
            if let Err(e) = api.list(&ListParams::default().limit(1)).await {
                if is_status(&e, 404) {
                    continue;
                }
            }
            let store = spawn_reflector(
                api,
                watcher::Config::default(),
                kind.api_resource(),
                &changed,
            );
            route_stores.insert(kind, store);
        }
        let events_api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let events_config = match events_api
            .list(&ListParams::default().fields(CANARY_EVENTS).limit(1))
            .await
        {
            Err(e) if is_status(&e, 400) => watcher::Config::default(),
            _ => watcher::Config::default().fields(CANARY_EVENTS),
        };
        let events = spawn_reflector(events_api, events_config, (), &changed);

        for ready in [
            canaries.wait_until_ready().await,
            deployments.wait_until_ready().await,
            events.wait_until_ready().await,
        ] {
            ready.map_err(|_| ClusterError::WatchEnded)?;
        }
        for store in route_stores.values() {
            store
                .wait_until_ready()
                .await
                .map_err(|_| ClusterError::WatchEnded)?;
        }
        loop {
            let mut list: Vec<Arc<Canary>> = canaries.state();
            list.sort_by_key(|c| c.name_any());
            let all_events: Vec<Arc<Event>> = events.state();
            let snapshots = list
                .iter()
                .map(|c| {
                    let canary = Canary::clone(c);
                    let get = |n: &str| {
                        deployments
                            .get(&ObjectRef::new(n).within(ns))
                            .map(|d| Deployment::clone(&d))
                    };
                    let target = get(&canary.spec.target_ref.name);
                    let primary = get(&format!("{}-primary", canary.spec.target_ref.name));
                    let kind = super::router_of(&canary).route_kind();
                    let route = route_stores.get(&kind).and_then(|s| {
                        s.get(
                            &ObjectRef::new_with(canary.service_name(), kind.api_resource())
                                .within(ns),
                        )
                        .map(|v| DynamicObject::clone(&v))
                    });
                    let events = all_events
                        .iter()
                        .filter(|e| regards(e, &canary))
                        .map(|e| Event::clone(e))
                        .collect();
                    Snapshot {
                        canary,
                        target,
                        primary,
                        route,
                        events,
                    }
                })
                .collect();
            show(snapshots);
            changed.notified().await;
            // A release changes several objects at once: one redraw for the burst.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

const CANARY_EVENTS: &str = "regarding.kind=Canary";

fn regards(e: &Event, canary: &Canary) -> bool {
    e.regarding.as_ref().is_some_and(|r| {
        r.kind.as_deref() == Some("Canary")
            && r.name.as_deref() == Some(canary.name_any().as_str())
            && (r.uid.is_none() || r.uid == canary.metadata.uid)
    })
}

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let changed = changed.clone();
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => eprintln!("watch error (retrying): {e}"),
            }
        }
    });
    store
}
