//! Running shell commands with a timeout, and stopping them with everything they started.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::{CommandSpec, Error};

/// Most output kept for a `bash` answer; the tail, where errors usually are.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// Time a command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long output is still read after the shell exits: a background child holding the
/// pipe must not hold the answer.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// `sh -c`, as flagger-loadtester runs `type: cmd`.
    Sh,
    /// `bash -c`, for `type: bash`.
    Bash,
}

impl Shell {
    fn program(self) -> &'static str {
        match self {
            Shell::Sh => "sh",
            Shell::Bash => "bash",
        }
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct CommandOutcome {
    /// `None` when it was stopped (timeout or shutdown).
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Stdout then stderr (the last 64 KiB of each), when captured.
    pub output: String,
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// One line for logs and error answers.
    pub fn describe(&self, timeout: Duration) -> String {
        match self.status {
            _ if self.timed_out => format!("timed out after {timeout:?}"),
            _ if self.cancelled => "stopped: the load tester is shutting down".into(),
            Some(status) => match status.code() {
                Some(code) => format!("exit code {code}"),
                None => format!("{status}"),
            },
            None => "stopped".into(),
        }
    }
}

/// Resolves once `shutdown` turns true; never if its sender is gone.
pub(super) async fn cancelled(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Signals a whole process group, so a shell's children stop with it.
async fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} -- -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .status()
        .await;
}

/// Kills the process group if the future running the command is dropped (e.g. the
/// caller of a `bash` hook went away).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let (Some(pgid), Ok(_)) = (self.0, tokio::runtime::Handle::try_current()) {
            // Tokio reaps the `sh` it spawns here once it exits.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -s KILL -- -{pgid} 2>/dev/null"))
                .stdin(Stdio::null())
                .spawn();
        }
    }
}

async fn read_stream(
    stream: Option<impl AsyncRead + Unpin>,
    canary: String,
    stream_name: &'static str,
    log: bool,
    kept: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let Some(stream) = stream else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if log {
            let text = String::from_utf8_lossy(&line);
            tracing::info!(%canary, stream = stream_name, "{}", text.trim_end());
        }
        if let Some(kept) = &kept {
            let mut kept = kept.lock();
            kept.extend_from_slice(&line);
            if kept.len() > 2 * OUTPUT_LIMIT {
                let excess = kept.len() - OUTPUT_LIMIT;
                kept.drain(..excess);
            }
        }
    }
}

/// Runs `spec.command` with `shell -c` in its own process group until it exits, its
/// timeout passes or `shutdown` turns true; the last two stop the whole group (SIGTERM,
/// then SIGKILL after 2 s). `capture` keeps the output for the answer.
pub async fn run_command(
    shell: Shell,
    spec: &CommandSpec,
    canary: &str,
    capture: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<CommandOutcome, Error> {
    let piped = capture || spec.log_output;
    let pipe = || if piped { Stdio::piped() } else { Stdio::null() };
    let mut child = Command::new(shell.program())
        .arg("-c")
        .arg(&spec.command)
        .stdin(Stdio::null())
        .stdout(pipe())
        .stderr(pipe())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: spec.command.clone(),
            source,
        })?;
    let mut guard = GroupGuard(child.id());
    // Shared buffers, so what was read survives a reader that is given up on.
    let (out, err) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let keep = |buf: &Arc<Mutex<Vec<u8>>>| capture.then(|| buf.clone());
    let stdout = tokio::spawn(read_stream(
        child.stdout.take(),
        canary.to_string(),
        "stdout",
        spec.log_output,
        keep(&out),
    ));
    let stderr = tokio::spawn(read_stream(
        child.stderr.take(),
        canary.to_string(),
        "stderr",
        spec.log_output,
        keep(&err),
    ));
    let (mut timed_out, mut was_cancelled) = (false, false);
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = tokio::time::sleep(spec.timeout) => { timed_out = true; None }
        _ = cancelled(&mut shutdown) => { was_cancelled = true; None }
    };
    if status.is_none() {
        if let Some(pgid) = guard.0 {
            signal_group(pgid, "TERM").await;
        }
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            if let Some(pgid) = guard.0 {
                signal_group(pgid, "KILL").await;
            }
            let _ = child.wait().await;
        }
    }
    // The shell is gone; what it left running in the background is its own business.
    guard.0 = None;
    let drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
    let mut output = Vec::new();
    for (reader, buf) in [(stdout, out), (stderr, err)] {
        let abort = reader.abort_handle();
        if tokio::time::timeout_at(drain_until, reader).await.is_err() {
            abort.abort();
        }
        let buf = buf.lock();
        output.extend_from_slice(&buf[buf.len().saturating_sub(OUTPUT_LIMIT)..]);
    }
    Ok(CommandOutcome {
        status,
        timed_out,
        cancelled: was_cancelled,
        output: String::from_utf8_lossy(&output).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str, timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            command: command.into(),
            timeout: Duration::from_millis(timeout_ms),
            log_output: false,
        }
    }

    #[tokio::test]
    async fn commands_end_as_expected() {
        let (_tx, rx) = watch::channel(false);
        // (shell, command, timeout ms, success, timed out, output contains)
        let cases = [
            (Shell::Bash, "echo hello", 5_000, true, false, "hello"),
            (
                Shell::Bash,
                "echo oops >&2; exit 3",
                5_000,
                false,
                false,
                "oops",
            ),
            (Shell::Sh, "printf 'a\\nb'", 5_000, true, false, "a\nb"),
            (
                Shell::Bash,
                "echo started; sleep 10",
                300,
                false,
                true,
                "started",
            ),
            // A background child keeping the pipe open does not hold the answer.
            (
                Shell::Bash,
                "(sleep 10 &); echo done",
                5_000,
                true,
                false,
                "done",
            ),
        ];
        for (shell, command, timeout, success, timed_out, contains) in cases {
            let started = std::time::Instant::now();
            let outcome = run_command(shell, &spec(command, timeout), "t/c", true, rx.clone())
                .await
                .unwrap();
            assert_eq!(
                (outcome.success(), outcome.timed_out),
                (success, timed_out),
                "{command}: {outcome:?}"
            );
            assert!(
                outcome.output.contains(contains),
                "{command}: {:?}",
                outcome.output
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{command} took {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn shutdown_stops_a_command() {
        let (tx, rx) = watch::channel(false);
        let run = tokio::spawn(async move {
            run_command(Shell::Sh, &spec("sleep 30", 60_000), "t/c", false, rx).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(outcome.cancelled && !outcome.success(), "{outcome:?}");
        assert!(outcome.describe(Duration::ZERO).contains("shutting down"));
    }
}
