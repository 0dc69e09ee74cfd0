//! Wiring: watches and caches, the kube-runtime Controller, leader election, the HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`) and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::DynamicObject;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::analysis::Analysis;
use super::context::{Config, Context, State, Stores};
use super::leader::LeaderElector;
use super::reconcile::{error_policy, reconcile};
use super::{discovery, janitor};
use crate::api::{AlertProvider, Canary, MetricTemplate};
use crate::router::{Kind, Watched};
use crate::workloads::configs;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list Canaries (are the sluice CRDs installed?): {0}")]
    CrdsMissing(#[source] kube::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("setting up the metrics providers: {0}")]
    Analysis(#[from] crate::analysis::Error),
    #[error("leadership lost: exiting so that a restart rejoins as follower")]
    LeadershipLost,
    #[error("setting up the HTTP client for webhooks and alerts: {0}")]
    HttpClient(#[from] reqwest::Error),
}

pub struct Options {
    pub config: Config,
    pub listen: std::net::SocketAddr,
    /// Namespace of the leader Lease; None disables leader election.
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    /// Canaries reconciled at once; 0: no bound.
    pub reconcile_concurrency: u16,
}

/// Serves HTTP and runs the controller whenever this process is leader, until a signal.
pub async fn run(client: Client, options: Options) -> Result<(), Error> {
    let state = State::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(signal_shutdown(shutdown_tx));

    let server = serve(state.clone(), options.listen, shutdown_rx.clone());
    let work = async {
        match &options.lease_namespace {
            None => {
                state.diagnostics.write().await.leader = true;
                run_controller(client.clone(), &options, &state, shutdown_rx.clone()).await
            }
            Some(ns) => lead(client.clone(), ns, &options, &state, shutdown_rx.clone()).await,
        }
    };
    let (served, worked) = tokio::join!(server, work);
    served?;
    worked
}

async fn signal_shutdown(tx: watch::Sender<bool>) {
    crate::shutdown::signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Follower until the lease is won; leader until shutdown or until renewals fail for a
/// whole lease period, when the process exits so that two leaders never act at once.
async fn lead(
    client: Client,
    ns: &str,
    options: &Options,
    state: &State,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), ns),
        &options.lease_name,
        &options.identity,
        options.lease_duration,
    );
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match elector.try_acquire().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.renew_interval()) => {}
            _ = wait_for(shutdown.clone()) => return Ok(()),
        }
    }
    tracing::info!(identity = %options.identity, "became leader");
    state.diagnostics.write().await.leader = true;

    let (lost_tx, lost_rx) = watch::channel(false);
    let renew = async {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(elector.renew_interval()) => {}
                _ = wait_for(shutdown.clone()) => return,
            }
            match elector.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the leader lease");
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "renewing the leader lease");
                    if last_renewed.elapsed() >= options.lease_duration {
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            }
        }
    };
    // The controller stops on shutdown or when the lease is lost.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = wait_for(shutdown) => {}
                _ = wait_for(lost_rx.clone()) => {}
            }
            let _ = stop_tx.send(true);
        }
    };
    let (_, _, controller) = tokio::join!(
        renew,
        stopper,
        run_controller(client, options, state, stop_rx)
    );
    state.diagnostics.write().await.leader = false;
    if *shutdown.borrow() {
        if let Err(err) = elector.release().await {
            tracing::warn!(error = %err, "releasing the leader lease");
        }
        controller
    } else {
        controller?;
        Err(Error::LeadershipLost)
    }
}

/// Runs the controller until `stop`; starts it again, with new watches, when a kind a
/// router writes that the API server did not serve (its CRD was missing) is served.
async fn run_controller(
    client: Client,
    options: &Options,
    state: &State,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    loop {
        match run_watches(client.clone(), options, state, stop.clone()).await? {
            Stopped::Done => return Ok(()),
            Stopped::KindsServed => {
                tracing::info!("a router's kinds are served now: starting the watches again")
            }
        }
    }
}

/// Why [`run_watches`] returned.
enum Stopped {
    Done,
    KindsServed,
}

/// How often kinds that were not served are looked up again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(60);

async fn run_watches(
    client: Client,
    options: &Options,
    state: &State,
    stop: watch::Receiver<bool>,
) -> Result<Stopped, Error> {
    state.diagnostics.write().await.caches_synced = false;
    let canaries = Api::<Canary>::all(client.clone());
    // Fail early with a clear message when the CRDs are missing.
    canaries
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(Error::CrdsMissing)?;

    let wc = watcher::Config::default().any_semantic();
    // Only the objects sluice made, where sluice never reads others of the kind.
    let managed = wc.clone().labels("app.kubernetes.io/managed-by=sluice");
    let (deployments, deploy_stream) = cached::<Deployment>(&client, &wc);
    let (config_maps, cm_stream) = cached::<ConfigMap>(&client, &wc);
    let (secrets, secret_stream) = cached::<Secret>(&client, &wc);
    let (services, svc_stream) = cached::<Service>(&client, &managed);
    // All autoscalers: the targets' own are read to make the primary's copy.
    let (autoscalers, hpa_stream) = cached::<HorizontalPodAutoscaler>(&client, &wc);
    let mut routers = crate::router::Routers::new(
        options.config.proxy_image.clone(),
        options.config.router_replicas,
    );
    if options.config.gamma_by_mesh {
        routers.gateway_api.service_parents = None;
    }
    // Read by checks and alerts, never reconciled on: these watches only fill caches.
    let (metric_templates, template_stream) = cached::<MetricTemplate>(&client, &wc);
    let (alert_providers, provider_stream) = cached::<AlertProvider>(&client, &wc);
    let (metrics_pods, pod_streams): (Vec<_>, Vec<_>) = routers
        .metrics_pod_selectors()
        .into_iter()
        .map(|selector| {
            let (store, stream) = cached::<Pod>(&client, &wc.clone().labels(selector));
            ((selector, store), stream.map(|_| ()).boxed())
        })
        .unzip();
    let caches_only = futures::stream::select_all(pod_streams.into_iter().chain([
        template_stream.map(|_| ()).boxed(),
        provider_stream.map(|_| ()).boxed(),
    ]))
    .for_each(|()| async {});
    let watched = routers.watched();
    let mut kinds: Vec<Kind> = watched.iter().map(|w| w.kind).collect();
    kinds.dedup();
    let served = discovery::served_kinds(&client, &kinds).await;
    let missing: Vec<Kind> = kinds.into_iter().filter(|k| !served.contains(k)).collect();
    for kind in &missing {
        tracing::warn!(
            kind = kind.kind,
            api_version = %kind.api_version(),
            "not served by the API server (CRD not installed): Canaries whose router writes it are blocked until it is"
        );
    }
    let (routed, routed_streams): (Vec<_>, Vec<_>) = watched
        .into_iter()
        .filter(|watched| served.contains(&watched.kind))
        .map(|watched| {
            let (store, stream) = cached_routed(&client, &wc, watched);
            ((watched, store), (watched, stream))
        })
        .unzip();
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: Stores {
            deployments: deployments.clone(),
            services,
            autoscalers,
            config_maps,
            secrets,
            metric_templates,
            alert_providers,
            metrics_pods,
            routed,
            served,
        },
        events: super::events::EventPublisher::new(client.clone(), options.identity.clone()),
        metrics: state.metrics.clone(),
        diagnostics: state.diagnostics.clone(),
        config: options.config.clone(),
        analysis: Analysis::new(options.config.metrics_server.clone())?,
        written: Default::default(),
        routers,
        http: reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()?,
    });

    let (canary_store, canary_stream) = cached::<Canary>(&client, &wc);
    let controller = Controller::for_stream(canary_stream, canary_store.clone()).with_config(
        kube::runtime::controller::Config::default().concurrency(options.reconcile_concurrency),
    );
    // A Deployment triggers the Canaries that target it or own it (the primary).
    let targets = canary_store.clone();
    let mut controller = controller
        .watches_stream(deploy_stream, move |d: Deployment| {
            let ns = d.namespace().unwrap_or_default();
            let name = d.name_any();
            let targeting: Vec<ObjectRef<Canary>> = targets
                .state()
                .iter()
                .filter(|c| {
                    c.namespace().as_deref() == Some(ns.as_str()) && c.spec.target_ref.name == name
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect();
            canary_owners(&d).into_iter().chain(targeting)
        })
        .watches_stream(cm_stream, {
            let (canaries, deployments) = (canary_store.clone(), deployments.clone());
            move |cm: ConfigMap| {
                users_of(
                    &canaries,
                    &deployments,
                    configs::ConfigKind::ConfigMap,
                    &cm.name_any(),
                    &cm.namespace().unwrap_or_default(),
                )
            }
        })
        .watches_stream(secret_stream, {
            let (canaries, deployments) = (canary_store.clone(), deployments.clone());
            move |s: Secret| {
                users_of(
                    &canaries,
                    &deployments,
                    configs::ConfigKind::Secret,
                    &s.name_any(),
                    &s.namespace().unwrap_or_default(),
                )
            }
        })
        .owns_stream(svc_stream)
        .owns_stream(hpa_stream);
    // A router's object triggers the Canary that owns it; one shared by a namespace's
    // Canaries (sluice-router's) triggers them all, so one deleted by hand is put back.
    for (watched, stream) in routed_streams {
        let canaries = canary_store.clone();
        controller = controller.watches_stream_with(
            stream,
            move |o: DynamicObject| {
                let owners = canary_owners(&o);
                if !owners.is_empty() {
                    return owners;
                }
                let ns = o.namespace().unwrap_or_default();
                canaries
                    .state()
                    .iter()
                    .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect()
            },
            watched.kind.api_resource(),
        );
    }
    let controller = controller.graceful_shutdown_on(wait_for(stop));

    let diagnostics = state.diagnostics.clone();
    let total = state.metrics.total.clone();
    let store_for_ready = canary_store.clone();
    let stores_ready = ctx.stores.clone();
    let synced = async move {
        // Revisions hash the configs too: deciding before they are cached would see a
        // different revision and start a release that nobody asked for; a check
        // before the templates are cached would find none.
        let s = &stores_ready;
        let mut ready = store_for_ready.wait_until_ready().await.is_ok()
            && deployments.wait_until_ready().await.is_ok()
            && s.config_maps.wait_until_ready().await.is_ok()
            && s.secrets.wait_until_ready().await.is_ok()
            && s.metric_templates.wait_until_ready().await.is_ok()
            && s.alert_providers.wait_until_ready().await.is_ok();
        for (_, pods) in &s.metrics_pods {
            ready = ready && pods.wait_until_ready().await.is_ok();
        }
        if ready {
            diagnostics.write().await.caches_synced = true;
            tracing::info!("caches synced");
        }
    };
    let janitor_canaries = canary_store.clone();
    let counting = async move {
        loop {
            let mut per_ns = std::collections::BTreeMap::<String, i64>::new();
            for c in canary_store.state() {
                *per_ns.entry(c.namespace().unwrap_or_default()).or_default() += 1;
            }
            for (namespace, n) in per_ns {
                total
                    .get_or_create(&super::metrics::NamespaceLabels { namespace })
                    .set(n);
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    };
    let janitor = janitor::remove_unused_shared_objects(ctx.clone(), janitor_canaries);
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile");
            }
        });
    let newly_served = async {
        if missing.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(DISCOVERY_RETRY).await;
            if !discovery::served_kinds(&client, &missing).await.is_empty() {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(run, synced) } => Ok(Stopped::Done),
        _ = caches_only => Ok(Stopped::Done),
        _ = counting => Ok(Stopped::Done),
        _ = janitor => Ok(Stopped::Done),
        _ = newly_served => Ok(Stopped::KindsServed),
    }
}

/// The Canaries named in an object's owner references.
fn canary_owners<K: Resource>(object: &K) -> Vec<ObjectRef<Canary>> {
    let ns = object.meta().namespace.clone().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|o| o.kind == Canary::kind(&()))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect()
}

/// A cache of the objects one router wrote of one kind, and the stream that fills it.
fn cached_routed(
    client: &Client,
    config: &watcher::Config,
    watched: Watched,
) -> (
    reflector::Store<DynamicObject>,
    impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let resource = watched.kind.api_resource();
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let stream = watcher(api, config.clone().labels(watched.selector))
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// A cache of one kind across the cluster, and the stream that fills it (driven by the
/// Controller that consumes it).
fn cached<K>(
    client: &Client,
    config: &watcher::Config,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher(Api::<K>::all(client.clone()), config.clone())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Drops from a cached object what the controller never reads: its managedFields (for
/// most objects larger than the rest of their metadata, and parsed into a JSON tree) and
/// kubectl's last-applied copy of the whole object. Every cache holds objects trimmed so.
fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Canaries whose target uses the named config.
fn users_of(
    canaries: &reflector::Store<Canary>,
    deployments: &reflector::Store<Deployment>,
    kind: configs::ConfigKind,
    name: &str,
    ns: &str,
) -> Vec<ObjectRef<Canary>> {
    let wanted = configs::ConfigRef {
        kind,
        name: name.to_string(),
    };
    canaries
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .filter(|c| {
            deployments
                .get(&ObjectRef::new(&c.spec.target_ref.name).within(ns))
                .and_then(|d| {
                    d.spec
                        .as_ref()
                        .map(|s| configs::referenced(&s.template).contains(&wanted))
                })
                .unwrap_or(false)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

async fn serve(
    state: State,
    listen: std::net::SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/debug/state", get(diagnostics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(wait_for(shutdown))
        .await
        .map_err(Error::Serve)?;
    Ok(())
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let mut body = String::new();
    let registry = state.registry.read().await;
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Ready when this replica can act: it leads and its caches are synced, or it is a
/// follower (followers are ready to take over).
async fn ready(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let d = state.diagnostics.read().await;
    if !d.leader || d.caches_synced {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn diagnostics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let d = state.diagnostics.read().await.clone();
    axum::Json(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_keep_everything_but_managed_fields_and_the_last_applied_copy() {
        let cases = [
            (
                serde_json::json!({"managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                    "annotations": {LAST_APPLIED: "{\"kind\":\"Deployment\"}", "team": "shop"}}),
                serde_json::json!({"annotations": {"team": "shop"}}),
            ),
            // No annotation left: none at all, as if the object never had any.
            (
                serde_json::json!({"annotations": {LAST_APPLIED: "{}"}}),
                serde_json::json!({}),
            ),
            (
                serde_json::json!({"labels": {"app": "web"}}),
                serde_json::json!({"labels": {"app": "web"}}),
            ),
        ];
        for (meta, want) in cases {
            let mut meta_with_name = meta.clone();
            meta_with_name["name"] = "web".into();
            let mut deployment: Deployment =
                serde_json::from_value(serde_json::json!({"metadata": meta_with_name})).unwrap();
            trim(&mut deployment);
            let mut got = serde_json::to_value(&deployment.metadata).unwrap();
            got.as_object_mut().unwrap().remove("name");
            assert_eq!(got, want, "{meta}");
        }
    }
}
