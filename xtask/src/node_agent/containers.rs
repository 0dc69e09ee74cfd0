//! One container = one local process group, started inside the pod's network
//! namespace through `ip netns exec`, with output appended to a log file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
}

/// Everything needed to start a container's process.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    pub log_file: PathBuf,
    /// None runs the process in the host's namespace (unused for real pods; kept
    /// so the process handling can be exercised without root).
    pub netns: Option<String>,
    /// Mounted over [`SERVICE_ACCOUNT_MOUNT`] for this process only (needs `netns`),
    /// so clients using in-cluster config find token, ca.crt and namespace.
    pub service_account_dir: Option<PathBuf>,
}

/// Where in-cluster clients (client-go, kube-rs) look for the ServiceAccount files.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Starts the process in its own process group so that signals reach its children too.
pub fn spawn(spec: &LaunchSpec) -> Result<Child, SpawnError> {
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(|source| SpawnError::Log {
                path: spec.log_file.clone(),
                source,
            })
    };
    let stdout = open_log()?;
    let stderr = open_log()?;
    let mut command = match (&spec.netns, &spec.service_account_dir) {
        // `ip netns exec` gives the process a private mount namespace (slave to the
        // host's), so this bind mount is seen by the pod's processes only.
        (Some(netns), Some(sa_dir)) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns, "/bin/sh", "-c"])
                .arg(format!(
                    "mount --bind \"$0\" {SERVICE_ACCOUNT_MOUNT} && exec \"$@\""
                ))
                .arg(sa_dir)
                .arg(&spec.program);
            c
        }
        (Some(netns), None) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns]).arg(&spec.program);
            c
        }
        (None, _) => Command::new(&spec.program),
    };
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.working_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    command.spawn().map_err(|source| SpawnError::Exec {
        program: spec.program.display().to_string(),
        source,
    })
}

/// Sends `signal` to the whole process group led by `pid`.
pub fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a stale group is harmless (ESRCH).
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Whether any live (non-zombie) process belongs to the group led by `pid`.
/// Reads /proc rather than probing with kill(2), which also counts zombies that
/// a non-reaping PID 1 may leave behind forever.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| stat_in_live_group(&stat, pgid))
}

/// Parses `/proc/<pid>/stat` ("pid (comm) state ppid pgrp ...").
fn stat_in_live_group(stat: &str, pgid: u32) -> bool {
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next().unwrap_or("Z");
    let _ppid = fields.next();
    let group = fields.next().and_then(|g| g.parse::<u32>().ok());
    state != "Z" && state != "X" && group == Some(pgid)
}

/// Kubernetes' `$(VAR)` expansion: defined variables are substituted, `$$` escapes
/// a dollar, anything else is left as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if env.contains_key(&inner[..end]) => {
                    out.push_str(&env[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Restart delay after `restarts` restarts: 1s doubling up to 30s (kubelet uses
/// 10s..5min; shorter here so local tests recover quickly).
pub fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(5)).min(Duration::from_secs(30))
}

/// Picks the program and argv the way a container runtime combines an image's
/// entrypoint/cmd with a container's command/args.
pub fn command_line(
    mapped_program: &Path,
    mapped_args: &[String],
    command: &[String],
    args: Option<&[String]>,
) -> (PathBuf, Vec<String>) {
    match command.split_first() {
        Some((first, rest)) => {
            let mapped_name = mapped_program.file_name().and_then(|n| n.to_str());
            let first_name = Path::new(first).file_name().and_then(|n| n.to_str());
            let program = if first_name.is_some() && first_name == mapped_name {
                mapped_program.to_path_buf()
            } else {
                crate::node_agent::images::which(first).unwrap_or_else(|| PathBuf::from(first))
            };
            let mut argv = rest.to_vec();
            argv.extend(args.unwrap_or_default().iter().cloned());
            (program, argv)
        }
        None => (
            mapped_program.to_path_buf(),
            args.map(<[String]>::to_vec)
                .unwrap_or_else(|| mapped_args.to_vec()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_like_kubernetes() {
        let vars = env(&[("PORT", "8080"), ("POD_IP", "10.244.0.2")]);
        assert_eq!(expand("$(POD_IP):$(PORT)", &vars), "10.244.0.2:8080");
        assert_eq!(expand("$$(PORT)", &vars), "$(PORT)");
        assert_eq!(expand("$(MISSING) $PORT $(", &vars), "$(MISSING) $PORT $(");
    }

    #[test]
    fn parses_proc_stat_groups() {
        assert!(stat_in_live_group("42 (python3 x) S 1 42 42 0", 42));
        assert!(!stat_in_live_group("42 (sleep) Z 1 42 42 0", 42));
        assert!(!stat_in_live_group("43 (a) b) R 1 7 7 0", 42));
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(restart_backoff(0), Duration::from_secs(1));
        assert_eq!(restart_backoff(3), Duration::from_secs(8));
        assert_eq!(restart_backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn command_and_args_override_the_mapping() {
        let program = Path::new("/repo/target/debug/sluice-demo");
        let defaults = vec!["--default".to_string()];
        let (p, a) = command_line(program, &defaults, &[], None);
        assert_eq!((p.as_path(), a), (program, defaults.clone()));
        let args = vec!["--port".to_string(), "9000".to_string()];
        let (p, a) = command_line(program, &defaults, &[], Some(&args));
        assert_eq!((p.as_path(), a), (program, args.clone()));
        let cmd = vec![
            "/usr/local/bin/sluice-demo".to_string(),
            "serve".to_string(),
        ];
        let (p, a) = command_line(program, &defaults, &cmd, Some(&args));
        assert_eq!(p.as_path(), program);
        assert_eq!(a, vec!["serve", "--port", "9000"]);
        let (p, _) = command_line(program, &defaults, &["sh".to_string()], None);
        assert!(p.ends_with("sh"));
    }

    #[tokio::test]
    async fn spawned_group_receives_signals_and_logs_output() {
        let dir = std::env::temp_dir().join(format!("sluice-containers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let spec = LaunchSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".into(),
                "echo started $GREETING; sleep 30 & wait".into(),
            ],
            env: vec![("GREETING".into(), "hello".into())],
            working_dir: dir.clone(),
            log_file: dir.join("out.log"),
            netns: None,
            service_account_dir: None,
        };
        let mut child = spawn(&spec).expect("spawn sh");
        let pid = child.id().expect("pid");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(group_alive(pid));
        signal_group(pid, libc::SIGKILL);
        let status = child.wait().await.expect("wait");
        assert!(!status.success());
        // The background `sleep` is in the same group, so it died too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!group_alive(pid));
        let log = std::fs::read_to_string(dir.join("out.log")).expect("log");
        assert_eq!(log.trim(), "started hello");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
