//! sluice-proxy: enforces Istio VirtualService/DestinationRule objects where no Istio
//! runs. File mode (`--config`): objects and endpoints come from a YAML file, reloaded
//! when it changes or on SIGHUP. Kubernetes mode (`--kube`): VirtualServices,
//! DestinationRules, EndpointSlices and Pods are watched in `--namespace`. Either way an
//! invalid config is rejected and the last good one stays.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice::duration::parse_go_or_seconds;
use sluice::proxy::config::ProxySettings;
use sluice::proxy::routes::SourceIdentity;
use sluice::proxy::{Proxy, ProxyOptions};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-proxy",
    about = "Enforces Istio VirtualService/DestinationRule without Istio"
)]
struct Args {
    /// File mode: YAML file with virtualServices, destinationRules and endpoints.
    #[arg(
        long,
        env = "SLUICE_PROXY_CONFIG",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    config: Option<PathBuf>,
    /// Kubernetes mode: watch the objects in --namespace (in-cluster or kubeconfig).
    #[arg(long, env = "SLUICE_PROXY_KUBE")]
    kube: bool,
    /// Traffic port.
    #[arg(long, env = "SLUICE_PROXY_LISTEN", default_value = "0.0.0.0:15001")]
    listen: SocketAddr,
    /// Admin port: /metrics, /config/routes, /config/clusters, /config/endpoints, /stats.
    #[arg(long, env = "SLUICE_PROXY_ADMIN", default_value = "0.0.0.0:15000")]
    admin: SocketAddr,
    /// Namespace short request hosts resolve in (and objects without one default to).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This proxy's workload (source_workload in metrics).
    #[arg(long, env = "SLUICE_WORKLOAD")]
    workload: Option<String>,
    /// Router mode: a shared hop in front of the namespace's services. `sourceLabels` and
    /// `sourceNamespace` match the calling pod (found by its address among the pods of
    /// --namespace in Kubernetes mode, `callers` in file mode), and the caller's address
    /// is appended to X-Forwarded-For.
    #[arg(
        long,
        env = "SLUICE_ROUTER",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        conflicts_with = "source_labels"
    )]
    router: bool,
    /// Sidecar mode: this proxy's workload labels, for `sourceLabels` matches:
    /// app=webapp,version=v1
    #[arg(long, env = "SLUICE_SOURCE_LABELS", default_value = "")]
    source_labels: String,
    /// Gateways this proxy acts as (repeatable); `mesh` = a sidecar.
    #[arg(
        long = "gateway",
        env = "SLUICE_GATEWAYS",
        value_delimiter = ',',
        default_value = "mesh"
    )]
    gateways: Vec<String>,
    /// This proxy's locality `region/zone`, for locality-aware balancing.
    #[arg(long, env = "SLUICE_ZONE", default_value = "")]
    zone: String,
    /// Istio's mesh default retry policy (2 retries on connect-failure/refused-stream)
    /// for routes without `retries`; `false` = defaultHttpRetryPolicy.attempts=0.
    #[arg(long, env = "SLUICE_DEFAULT_RETRIES", default_value_t = true, action = clap::ArgAction::Set)]
    default_retries: bool,
    /// Retry 503 in the mesh default policy, as Istio did before 1.24
    /// (EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY=false); it re-sends non-idempotent requests.
    #[arg(long, env = "SLUICE_DEFAULT_RETRY_503", default_value_t = false, action = clap::ArgAction::Set)]
    default_retry_503: bool,
    /// Append `-shadow` to mirrored copies' Host (Istio <= 1.27 behaviour).
    #[arg(long, env = "SLUICE_SHADOW_HOST_SUFFIX", default_value_t = true, action = clap::ArgAction::Set)]
    shadow_host_suffix: bool,
    /// Access log lines (target sluice::access).
    #[arg(long, env = "SLUICE_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    access_log: bool,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_go_or_seconds)]
    reload_poll: Duration,
    /// After SIGTERM: this long not ready but still serving, so endpoints stop sending
    /// here before the port closes.
    #[arg(long, env = "SLUICE_DRAIN_PERIOD", default_value = "0s", value_parser = parse_go_or_seconds)]
    drain_period: Duration,
    /// After the drain period: how long the open connections get to finish their
    /// requests before the process exits anyway.
    #[arg(long, env = "SLUICE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_go_or_seconds)]
    shutdown_timeout: Duration,
    /// Kubernetes mode: not ready once a watch has failed this long; 0s = never.
    #[arg(long, env = "SLUICE_MAX_WATCH_OUTAGE", default_value = "5m", value_parser = parse_go_or_seconds)]
    max_watch_outage: Duration,
    /// A request's headers must be in this long after its first byte (after the accept
    /// for a connection's first request), else the connection is closed; 0s = off.
    #[arg(long, env = "SLUICE_REQUEST_HEADERS_TIMEOUT", default_value = "10s", value_parser = parse_go_or_seconds)]
    request_headers_timeout: Duration,
    /// A connection with no request in flight this long is closed; 0s = off.
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_go_or_seconds)]
    idle_timeout: Duration,
    /// A request's whole body must be in this long after its headers, else 408; 0s = off.
    #[arg(long, env = "SLUICE_REQUEST_BODY_TIMEOUT", default_value = "60s", value_parser = parse_go_or_seconds)]
    request_body_timeout: Duration,
    /// Open traffic-port connections; more are closed as soon as they are accepted.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Size of a request's line and headers (HTTP/2: its header list), else 431; >= 8KiB.
    #[arg(long, env = "SLUICE_MAX_REQUEST_HEADERS_SIZE", default_value = "60KiB", value_parser = parse_size)]
    max_request_headers_size: usize,
    /// Headers in an HTTP/1 request, else 431.
    #[arg(long, env = "SLUICE_MAX_HEADERS_COUNT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_headers_count: u32,
    /// Request-body bytes buffered across all requests; a request that would exceed it
    /// is answered 503 (flag OM).
    #[arg(long, env = "SLUICE_REQUEST_BODY_BUDGET", default_value = "128MiB", value_parser = parse_size)]
    request_body_budget: usize,
    /// The admin port's /config/* views answer any client (default: only local ones,
    /// e.g. through kubectl port-forward).
    #[arg(long, env = "SLUICE_ADMIN_CONFIG_OPEN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    admin_config_open: bool,
    /// Streams open at once on one HTTP/2 connection.
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
}

fn parse_size(text: &str) -> Result<usize, String> {
    sluice::proxy::downstream::parse_size(text)
}

/// `0s` turns a timeout off.
fn unless_zero(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then_some(timeout)
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--source-labels: {pair:?} is not key=value"))
        })
        .collect()
}

#[cfg(feature = "kube")]
async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or kubeconfig)")
}

#[cfg(feature = "kube")]
fn watch_kubernetes(proxy: Arc<Proxy>, client: kube::Client, namespace: String) {
    tokio::spawn(async move {
        if let Err(error) = sluice::proxy::k8s::run(proxy, client, namespace).await {
            tracing::error!(%error, "kubernetes watch stopped");
        }
    });
}

/// Built without the `kube` feature there is no client to make: `--kube` is refused.
#[cfg(not(feature = "kube"))]
async fn kube_client() -> anyhow::Result<std::convert::Infallible> {
    anyhow::bail!("--kube: this sluice-proxy was built without the `kube` feature; use --config")
}

#[cfg(not(feature = "kube"))]
fn watch_kubernetes(_: Arc<Proxy>, client: std::convert::Infallible, _: String) {
    match client {}
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = ProxySettings {
        namespace: args.namespace.clone(),
        identity: SourceIdentity {
            labels: parse_labels(&args.source_labels)?,
            namespace: args.namespace.clone(),
            gateways: args.gateways.clone(),
        },
        zone: args.zone.clone(),
        default_retries: args.default_retries,
        default_retry_503: args.default_retry_503,
        router: args.router,
    };
    let options = ProxyOptions {
        shadow_host_suffix: args.shadow_host_suffix,
        workload: args.workload.clone(),
        access_log: args.access_log,
        max_watch_outage: unless_zero(args.max_watch_outage),
        request_headers_timeout: unless_zero(args.request_headers_timeout),
        idle_timeout: unless_zero(args.idle_timeout),
        request_body_timeout: unless_zero(args.request_body_timeout),
        max_connections: args.max_connections as usize,
        max_request_headers_bytes: args.max_request_headers_size,
        max_request_headers: args.max_headers_count as usize,
        request_body_budget: args.request_body_budget,
        max_concurrent_streams: args.max_concurrent_streams,
        admin_config_open: args.admin_config_open,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(settings, options);
    let kube_client = match &args.config {
        Some(path) => {
            proxy
                .apply_file(path)
                .with_context(|| format!("initial configuration {} rejected", path.display()))?;
            None
        }
        None => Some(kube_client().await?),
    };

    // Before the ports open: whoever sees them open may already send SIGTERM.
    let stop = sluice::shutdown::signal();
    let traffic = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin))?;
    tracing::info!(listen = %traffic.local_addr()?, admin = %admin.local_addr()?, "sluice-proxy started");
    tokio::spawn(sluice::proxy::admin::serve(proxy.clone(), admin));
    if let Some(path) = &args.config {
        tokio::spawn(sluice::proxy::watch_file(
            proxy.clone(),
            path.clone(),
            args.reload_poll,
        ));
    }
    if let Some(client) = kube_client {
        watch_kubernetes(proxy.clone(), client, args.namespace.clone());
    }
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(sluice::proxy::server::serve_until(
        proxy.clone(),
        traffic,
        shutdown,
    ));
    stop.await;
    // Not ready first, while still serving: endpoints and kube-proxy stop sending new
    // connections here; then no new connections, and the open ones finish politely.
    proxy.start_draining();
    if !args.drain_period.is_zero() {
        tracing::info!(period = ?args.drain_period, "draining: not ready, still serving");
        tokio::time::sleep(args.drain_period).await;
    }
    let _ = shutdown_tx.send(true);
    let _ = serving.await;
    let deadline = tokio::time::Instant::now() + args.shutdown_timeout;
    while proxy.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = proxy.open_connections();
    tracing::info!(connections_cut = left, "shutting down");
    Ok(())
}
