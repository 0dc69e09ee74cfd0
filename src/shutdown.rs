//! The one shutdown signal of every long-running binary, and the flag its servers wait on.
use std::future::Future;

use tokio::signal::unix::{signal as unix_signal, Signal, SignalKind};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. SIGTERM is what Kubernetes and `podman stop`
/// send, and a container's PID 1 gets no default action for it: without a handler only
/// the SIGKILL after the grace period stops the process.
///
/// The handlers are installed when this is called, not when it is first polled, so a
/// binary that calls it before it starts serving loses no early signal. Must be called
/// inside a Tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            _ = recv(interrupt) => {}
            _ = recv(terminate) => {}
        }
    }
}

fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    unix_signal(kind)
        .inspect_err(|error| tracing::warn!(%error, "cannot handle {name}"))
        .ok()
}

/// A signal that could not be installed never fires (instead of stopping at once).
async fn recv(signal: Option<Signal>) {
    match signal {
        Some(mut signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves once `flag` is true, the in-process side of a shutdown (e.g. what a server's
/// connections wait on); never when the sender is gone without setting it.
pub async fn flagged(flag: &mut tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
