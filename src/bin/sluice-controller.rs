//! sluice-controller: releases Deployments progressively as their Canaries describe.
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sluice::api::RouterKind;
use sluice::controller::context::Config;
use sluice::controller::run::{run, Options};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Router for Canaries that do not set spec.provider: istio or sluice.
    #[arg(long, env = "SLUICE_PROVIDER", default_value = "istio", value_parser = str::parse::<RouterKind>)]
    provider: RouterKind,
    /// Prometheus address for built-in metrics (default: scrape sluice-proxy directly).
    #[arg(long, env = "SLUICE_METRICS_SERVER")]
    metrics_server: Option<String>,
    /// Image of sluice-proxy for Canaries with provider sluice.
    #[arg(long, env = "SLUICE_PROXY_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// sluice-router pods in each namespace with provider sluice Canaries.
    #[arg(long, env = "SLUICE_ROUTER_REPLICAS", default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
    router_replicas: i32,
    /// A mesh (Istio, Linkerd) implements HTTPRoutes whose parent is a Service: do not
    /// deploy sluice-router for them.
    #[arg(long, env = "SLUICE_GAMMA_BY_MESH")]
    gamma_by_mesh: bool,
    /// Canaries reconciled at once, 0 for no bound (one Canary is never reconciled twice
    /// at once).
    #[arg(long, env = "SLUICE_RECONCILE_CONCURRENCY", default_value_t = 0)]
    reconcile_concurrency: u16,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Namespace of the leader-election Lease; leave empty to run without election.
    #[arg(long, env = "SLUICE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, env = "SLUICE_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Identity in the Lease (default: the pod name or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log filter, e.g. info or sluice=debug.
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
    /// Print the sluice-router objects for NAMESPACE (to run sluice-proxy without a
    /// Canary) and exit.
    #[arg(long, value_name = "NAMESPACE")]
    print_router_manifest: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(ns) = &args.print_router_manifest {
        print!(
            "{}",
            sluice::router::sluice::router_manifest(ns, &args.proxy_image, args.router_replicas)?
        );
        return Ok(());
    }
    let filter = EnvFilter::try_new(&args.log)?;
    match args.log_format.as_str() {
        "json" => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        "text" => tracing_subscriber::fmt().with_env_filter(filter).init(),
        other => anyhow::bail!("unknown log format {other:?}: use text or json"),
    }
    let client = kube::Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("sluice-{}", std::process::id()))
    });
    run(
        client,
        Options {
            config: Config {
                default_provider: args.provider,
                metrics_server: args.metrics_server,
                proxy_image: args.proxy_image,
                router_replicas: args.router_replicas,
                gamma_by_mesh: args.gamma_by_mesh,
            },
            listen: args.listen,
            lease_namespace: args.lease_namespace.filter(|s| !s.is_empty()),
            lease_name: args.lease_name,
            identity,
            lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
            reconcile_concurrency: args.reconcile_concurrency,
        },
    )
    .await?;
    Ok(())
}
