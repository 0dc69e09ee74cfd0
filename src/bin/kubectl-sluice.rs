//! kubectl-sluice: on PATH it is `kubectl sluice`. Look at releases and steer them
//! (promote, abort, retry, pause, resume) without editing YAML; `status` waits for a
//! release in CI with the outcome as exit code.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use sluice::duration::parse_go_or_seconds;
use sluice::plugin::cluster::{connect, ConnectOptions, Connection};
use sluice::plugin::control::Action;
use sluice::plugin::render::render_all;
use sluice::plugin::status::{self, Outcome};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-sluice",
    bin_name = "kubectl sluice",
    version,
    about = "Look at sluice Canaries and steer their releases",
    long_about = "Look at sluice Canaries (canaries.sluice.dev) and steer their releases \
                  without editing YAML. Actions are annotations on the Canary naming the \
                  revision (status.lastAppliedSpec) they apply to, so they never leak into \
                  the next release."
)]
struct Cli {
    /// Namespace (default: the kubeconfig context's namespace)
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context)
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a tree per Canary: status, primary and canary Deployments, routes with their
    /// live weights, the last analysis and why the last check failed
    Get {
        /// A Canary; all in the namespace without it
        name: Option<String>,
        /// Follow: redraw on every change of the Canary, its Deployments or routes
        #[arg(short, long)]
        watch: bool,
    },
    /// Skip the remaining steps of the running release (still gated by readiness)
    Promote {
        /// The Canary
        name: String,
    },
    /// Roll back the running release now
    Abort {
        /// The Canary
        name: String,
    },
    /// Run the failed revision again, without touching the pod template
    Retry {
        /// The Canary
        name: String,
    },
    /// Hold the release where it is: no steps, no checks counted, no deadline
    Pause {
        /// The Canary
        name: String,
    },
    /// Continue a paused release
    Resume {
        /// The Canary
        name: String,
    },
    /// Wait for the release of the revision the target runs now; the exit code is the
    /// outcome: 0 succeeded (or nothing to release), 1 failed, 2 timed out, 3 other error
    Status {
        /// The Canary
        name: String,
        /// How long to wait, e.g. 90s, 10m, 1h30m, or seconds
        #[arg(long, default_value = "10m", value_parser = parse_go_or_seconds)]
        timeout: Duration,
    },
}

/// Exit code of `status` for anything but an outcome: not found, no cluster, bad flags.
const STATUS_ERROR: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS;
            }
            // `status` keeps 1 and 2 for outcomes.
            let status = std::env::args().any(|a| a == "status");
            return ExitCode::from(if status { STATUS_ERROR } else { 1 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(STATUS_ERROR);
        }
    };
    let is_status = matches!(cli.command, Command::Status { .. });
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(if is_status { STATUS_ERROR } else { 1 })
        }
    }
}

/// The error and its causes, skipping a cause its parent already quotes (kube's
/// configuration errors include their sources in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let opts = ConnectOptions {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
        namespace: cli.namespace,
    };
    let conn = connect(&opts).await.context("connecting to the cluster")?;
    let action = |a: Action, name: String| (a, name);
    let (act, name) = match cli.command {
        Command::Get { name, watch } => return get(&conn, name.as_deref(), watch).await,
        Command::Status { name, timeout } => return wait(&conn, &name, timeout).await,
        Command::Promote { name } => action(Action::Promote, name),
        Command::Abort { name } => action(Action::Abort, name),
        Command::Retry { name } => action(Action::Retry, name),
        Command::Pause { name } => action(Action::Pause, name),
        Command::Resume { name } => action(Action::Resume, name),
    };
    let message = conn.act(&name, act).await?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

async fn get(conn: &Connection, name: Option<&str>, watch: bool) -> anyhow::Result<ExitCode> {
    if !watch {
        let snapshots = conn.snapshots(name).await?;
        print!(
            "{}",
            render_all(&snapshots, &conn.namespace, Timestamp::now())
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The first read fails fast (not found, no access) instead of waiting on a watch.
    conn.snapshots(name).await?;
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    conn.watch(name, |snapshots| {
        let text = render_all(&snapshots, &conn.namespace, Timestamp::now());
        if text == last {
            return;
        }
        let mut out = std::io::stdout().lock();
        // A terminal is redrawn in place; a pipe gets one block per change.
        let _ = if terminal {
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(out, "{text}")
        };
        let _ = out.flush();
        last = text;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait(conn: &Connection, name: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let log = |line: &str| {
        println!("{} {name}: {line}", chrono::Utc::now().format("%H:%M:%S"));
    };
    let outcome = status::wait(conn, name, timeout, log).await?;
    let code = outcome.exit_code();
    match outcome {
        Outcome::Succeeded(m) => println!("Succeeded: {m}"),
        Outcome::Failed(m) => {
            println!("Failed: {m}");
            // The rollback's own reason (threshold, deadline, abort) is in the events.
            let canary = conn.canary(name).await?;
            if let Ok(Some(warning)) = conn.last_warning(&canary).await {
                println!("Last warning: {warning}");
            }
        }
        Outcome::Running(m) => println!("Timed out after {}s: {m}", timeout.as_secs()),
        Outcome::Invalid(m) => eprintln!("error: {m}"),
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(STATUS_ERROR)))
}
