//! HTTP endpoints and the registry of background tasks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::gates::{GateAction, Gates};
use super::load::{self, escape, LoadStats};
use super::tasks::{run_command, Shell};
use super::{Error, Payload, Task};

/// Everything the endpoints share.
pub struct State {
    gates: Gates,
    load: LoadStats,
    /// Background tasks running now: (canary, task fingerprint) -> task type.
    running: Mutex<HashMap<(String, String), &'static str>>,
    idle: Notify,
    shutdown: watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        State {
            gates: Gates::default(),
            load: LoadStats::default(),
            running: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            shutdown: watch::channel(false).0,
        }
    }
}

/// Removes a background task from the registry however it ends.
struct Registration {
    state: Arc<State>,
    key: (String, String),
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.state.running.lock();
        running.remove(&self.key);
        if running.is_empty() {
            self.state.idle.notify_waiters();
        }
    }
}

impl State {
    /// Stops running commands and load, refuses new ones, and waits up to `grace` for
    /// them to finish; returns how many were still running then.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.shutdown.send_replace(true);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.running.lock().is_empty() {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.running.lock().len()
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts `task` in the background unless the same one already runs for the canary;
    /// true when started.
    fn start_background(self: &Arc<Self>, payload: &Payload, task: Task) -> Result<bool, Error> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let canary = payload.canary();
        let key = (canary.clone(), task.fingerprint());
        let kind = match task {
            Task::Load(_) => "load",
            _ => "cmd",
        };
        {
            let mut running = self.running.lock();
            if running.contains_key(&key) {
                tracing::info!(%canary, task = %task.describe(), "already running; not started again");
                return Ok(false);
            }
            running.insert(key.clone(), kind);
        }
        let registration = Registration {
            state: self.clone(),
            key,
        };
        let shutdown = self.shutdown.subscribe();
        let counters = self.load.counters(&payload.namespace, &payload.name);
        tokio::spawn(async move {
            let _registration = registration;
            match task {
                Task::Load(spec) => {
                    if let Err(err) = load::run(spec, canary.clone(), counters, shutdown).await {
                        tracing::warn!(%canary, error = %err, "load run failed");
                    }
                }
                Task::Cmd(spec) | Task::Bash(spec) => {
                    tracing::info!(%canary, command = %spec.command, "command started");
                    match run_command(Shell::Sh, &spec, &canary, false, shutdown).await {
                        Ok(outcome) if outcome.success() => {
                            tracing::info!(%canary, command = %spec.command, "command finished")
                        }
                        Ok(outcome) => {
                            let how = outcome.describe(spec.timeout);
                            tracing::warn!(%canary, command = %spec.command, "command failed: {how}")
                        }
                        Err(err) => tracing::warn!(%canary, error = %err, "command failed"),
                    }
                }
            }
        });
        Ok(true)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status().is_client_error() {
            tracing::info!(error = %self, "request refused");
        }
        (self.status(), format!("{self}\n")).into_response()
    }
}

/// Every endpoint of the load tester.
pub fn router(state: Arc<State>) -> Router {
    let mut router = Router::new()
        .route("/", post(run_task))
        .route("/gates", get(list_gates))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics));
    for (path, action) in GateAction::ALL {
        router = router.route(
            path,
            post(move |state: AxumState<Arc<State>>, body: Bytes| gate(state, action, body)),
        );
    }
    router.with_state(state)
}

async fn gate(
    AxumState(state): AxumState<Arc<State>>,
    action: GateAction,
    body: Bytes,
) -> Result<Response, Error> {
    let key = if action.needs_canary() {
        Payload::parse(&body)?.canary()
    } else {
        // Approve and halt answer the same for every canary, so any body will do.
        String::new()
    };
    let allowed = state.gates.apply(&key, action);
    tracing::info!(canary = %key, ?action, allowed, "gate");
    Ok(if allowed {
        (StatusCode::OK, "Approved\n").into_response()
    } else {
        (StatusCode::FORBIDDEN, "Forbidden\n").into_response()
    })
}

async fn list_gates(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    Json(state.gates.view())
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    let mut out = String::new();
    state.load.render(&mut out);
    let mut running: Vec<(String, &str)> = state
        .running
        .lock()
        .iter()
        .map(|((canary, _), kind)| (canary.clone(), *kind))
        .collect();
    running.sort();
    let _ = writeln!(
        out,
        "# HELP sluice_loadtester_tasks_running Background tasks (cmd, load) running now\n# TYPE sluice_loadtester_tasks_running gauge"
    );
    let mut counted: Vec<((String, &str), usize)> = Vec::new();
    for key in running {
        match counted.last_mut() {
            Some((last, n)) if *last == key => *n += 1,
            _ => counted.push((key, 1)),
        }
    }
    for ((canary, kind), n) in counted {
        let _ = writeln!(
            out,
            "sluice_loadtester_tasks_running{{canary=\"{}\",type=\"{kind}\"}} {n}",
            escape(&canary)
        );
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
}

async fn run_task(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Result<Response, Error> {
    let payload = Payload::parse(&body)?;
    let task = Task::from_metadata(&payload.metadata)?;
    let canary = payload.canary();
    match task {
        Task::Bash(spec) => {
            if state.is_shutting_down() {
                return Err(Error::ShuttingDown);
            }
            tracing::info!(%canary, command = %spec.command, "bash command started");
            let outcome = run_command(
                Shell::Bash,
                &spec,
                &canary,
                true,
                state.shutdown.subscribe(),
            )
            .await?;
            let how = outcome.describe(spec.timeout);
            if outcome.success() {
                tracing::info!(%canary, command = %spec.command, "bash command succeeded");
                Ok((StatusCode::OK, outcome.output).into_response())
            } else {
                tracing::warn!(%canary, command = %spec.command, "bash command failed: {how}");
                let body = format!("command failed: {how}\n{}", outcome.output);
                Ok((StatusCode::INTERNAL_SERVER_ERROR, body).into_response())
            }
        }
        task => {
            let what = task.describe();
            let body = if state.start_background(&payload, task)? {
                format!("started {what}\n")
            } else {
                format!("already running {what}\n")
            };
            Ok((StatusCode::OK, body).into_response())
        }
    }
}
