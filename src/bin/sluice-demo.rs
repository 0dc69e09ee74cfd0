//! sluice-demo: a small configurable HTTP backend. Settings come from the environment
//! (see `sluice::demo::DemoConfig::from_lookup`); a flag overrides its variable.
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-demo",
    about = "Configurable demo backend (env or flags)"
)]
struct Args {
    /// Listen address [env LISTEN, default 0.0.0.0:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Service name in answers [env NAME]
    #[arg(long)]
    name: Option<String>,
    /// Message in answers [env MESSAGE]
    #[arg(long)]
    message: Option<String>,
    /// Version in answers [env VERSION, else IMAGE_TAG, else v1]
    #[arg(long)]
    version: Option<String>,
    /// Probability 0..1 that an answer fails [env ERROR_RATE]
    #[arg(long)]
    error_rate: Option<String>,
    /// Status of failing answers [env ERROR_CODE, default 500]
    #[arg(long)]
    error_code: Option<String>,
    /// http_error or reset [env ERROR_TYPE]
    #[arg(long)]
    error_type: Option<String>,
    /// Deterministic outcome cycle, e.g. 503,503,ok [env ERROR_CYCLE]
    #[arg(long)]
    error_cycle: Option<String>,
    /// Median latency, e.g. 1s [env TIMING_50_PERCENTILE or LATENCY_P50]
    #[arg(long)]
    latency_p50: Option<String>,
    /// 90th percentile latency [env TIMING_90_PERCENTILE or LATENCY_P90]
    #[arg(long)]
    latency_p90: Option<String>,
    /// 99th percentile latency [env TIMING_99_PERCENTILE or LATENCY_P99]
    #[arg(long)]
    latency_p99: Option<String>,
    /// Comma-separated URIs to call and embed [env UPSTREAM_URIS]
    #[arg(long)]
    upstream_uris: Option<String>,
    /// Send upstream calls through this proxy address, Host from the URI [env UPSTREAM_PROXY]
    #[arg(long)]
    upstream_proxy: Option<String>,
    /// Serve /items like the catalog service [env CATALOG]
    #[arg(long)]
    catalog: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let overrides: Vec<(&str, Option<String>)> = vec![
        ("LISTEN", args.listen),
        ("NAME", args.name),
        ("MESSAGE", args.message),
        ("VERSION", args.version),
        ("ERROR_RATE", args.error_rate),
        ("ERROR_CODE", args.error_code),
        ("ERROR_TYPE", args.error_type),
        ("ERROR_CYCLE", args.error_cycle),
        ("TIMING_50_PERCENTILE", args.latency_p50),
        ("TIMING_90_PERCENTILE", args.latency_p90),
        ("TIMING_99_PERCENTILE", args.latency_p99),
        ("UPSTREAM_URIS", args.upstream_uris),
        ("UPSTREAM_PROXY", args.upstream_proxy),
        ("CATALOG", args.catalog.then(|| "true".to_string())),
    ];
    let config = sluice::demo::DemoConfig::from_lookup(|key| {
        overrides
            .iter()
            .find(|(k, v)| *k == key && v.is_some())
            .and_then(|(_, v)| v.clone())
            .or_else(|| std::env::var(key).ok())
    })
    .context("invalid settings")?;
    // Before the port opens: whoever sees it open may already send SIGTERM.
    let stop = sluice::shutdown::signal();
    let handle = sluice::demo::spawn(config.clone()).await?;
    tracing::info!(addr = %handle.addr, name = %config.name, version = %config.version, "sluice-demo listening");
    stop.await;
    // Busy keep-alive clients are told to reconnect for a second, then the port closes
    // and requests in flight finish: no caller sees a connection cut under a request.
    handle
        .shutdown(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    Ok(())
}
