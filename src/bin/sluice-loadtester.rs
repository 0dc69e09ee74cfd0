//! sluice-loadtester: load tester and gate service for Canary webhooks (the endpoints of
//! flagger-loadtester, plus a built-in load generator). See docs/loadtester.md.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice::loadtester::{router, State};

/// Time running commands and load get to stop after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "sluice-loadtester",
    about = "Load tester and gate service for Canary webhooks"
)]
struct Args {
    /// Listen address
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only on a terminal: pod logs would show the escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    // Before the port opens: whoever sees it open may already send SIGTERM.
    let stop = sluice::shutdown::signal();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "sluice-loadtester listening");
    let state = Arc::new(State::default());
    let stop_state = state.clone();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    // Commands and load stop first, so `bash` callers get their answer and the server
    // can finish its requests.
    tokio::spawn(async move {
        stop.await;
        tracing::info!("shutting down");
        let left = stop_state.shutdown(SHUTDOWN_GRACE).await;
        if left > 0 {
            tracing::warn!(left, "tasks still running at exit");
        }
        let _ = stopped_tx.send(());
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = stopped_rx.await;
        })
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}
