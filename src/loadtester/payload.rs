//! The webhook payload and the task its metadata asks for.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Error, LoadSpec};
use crate::duration;

/// Background commands run at most this long unless `metadata.timeout` says otherwise
/// (flagger-loadtester's `-timeout` default).
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(3600);

/// A `bash` command holds its caller's request open; past 10 minutes no webhook is still
/// waiting for the answer.
pub const DEFAULT_BASH_TIMEOUT: Duration = Duration::from_secs(600);

/// Flagger's webhook body. Only `name` and `namespace` are required, so a hand-written
/// `{"name": "podinfo", "namespace": "test"}` opens a gate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub checksum: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawPayload {
    name: Option<String>,
    namespace: Option<String>,
    phase: Option<String>,
    checksum: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

impl Payload {
    pub fn parse(body: &[u8]) -> Result<Payload, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::BadJson(
                "empty body; expected {\"name\": ..., \"namespace\": ...}".into(),
            ));
        }
        let raw: RawPayload =
            serde_json::from_slice(body).map_err(|e| Error::BadJson(e.to_string()))?;
        let required = |value: Option<String>, field| match value {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(Error::MissingField(field)),
        };
        Ok(Payload {
            name: required(raw.name, "name")?,
            namespace: required(raw.namespace, "namespace")?,
            phase: raw.phase.unwrap_or_default(),
            checksum: raw.checksum.unwrap_or_default(),
            metadata: raw.metadata.unwrap_or_default(),
        })
    }

    /// The key gates and tasks are stored under.
    pub fn canary(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A shell command from `metadata.cmd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub command: String,
    pub timeout: Duration,
    /// `metadata.logCmdOutput: "true"`: log the command's output lines.
    pub log_output: bool,
}

/// What `POST /` is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// `type: cmd` (default): `sh -c` in the background, answered at once.
    Cmd(CommandSpec),
    /// `type: bash`: `bash -c`, answered when it exits.
    Bash(CommandSpec),
    /// `type: load`: the built-in load generator, in the background.
    Load(LoadSpec),
}

impl Task {
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Task, Error> {
        let kind = metadata.get("type").map(|t| t.trim()).unwrap_or("");
        match kind {
            "" | "cmd" => Ok(Task::Cmd(command(metadata, "cmd", DEFAULT_CMD_TIMEOUT)?)),
            "bash" => Ok(Task::Bash(command(metadata, "bash", DEFAULT_BASH_TIMEOUT)?)),
            "load" => Ok(Task::Load(LoadSpec::from_metadata(metadata)?)),
            other => Err(Error::UnsupportedType(other.to_string())),
        }
    }

    /// One line for answers and logs.
    pub fn describe(&self) -> String {
        match self {
            Task::Cmd(spec) => format!("cmd {:?}", spec.command),
            Task::Bash(spec) => format!("bash {:?}", spec.command),
            Task::Load(spec) => format!(
                "load {} {} at {} rps for {:?}, concurrency {}",
                spec.method, spec.url, spec.rps, spec.duration, spec.concurrency
            ),
        }
    }

    /// Identifies a background task: the same one for the same canary is not started twice.
    pub fn fingerprint(&self) -> String {
        match self {
            Task::Cmd(spec) => format!("cmd:{}", spec.command),
            Task::Bash(spec) => format!("bash:{}", spec.command),
            Task::Load(spec) => format!("load:{spec:?}"),
        }
    }
}

fn command(
    metadata: &BTreeMap<String, String>,
    kind: &'static str,
    default_timeout: Duration,
) -> Result<CommandSpec, Error> {
    let command = metadata
        .get("cmd")
        .filter(|c| !c.trim().is_empty())
        .ok_or(Error::MissingMetadata { key: "cmd", kind })?
        .clone();
    Ok(CommandSpec {
        command,
        timeout: duration_field(metadata, "timeout", default_timeout)?,
        log_output: metadata
            .get("logCmdOutput")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
    })
}

/// `metadata[key]` as a Go duration, or `default` when absent. Zero is rejected: a
/// timeout of nothing would kill every command at once.
pub(super) fn duration_field(
    metadata: &BTreeMap<String, String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, Error> {
    match metadata.get(key) {
        None => Ok(default),
        Some(value) => duration::positive(value, duration::parse_go)
            .map_err(|source| Error::InvalidDuration { key, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads() {
        // (body, Ok((name, namespace, metadata entries)) or Err(message part))
        type Case<'a> = (&'a str, Result<(&'a str, &'a str, usize), &'a str>);
        let cases: &[Case] = &[
            (
                r#"{"name":"podinfo","namespace":"test","phase":"Progressing","checksum":"abc","metadata":{"cmd":"hey"}}"#,
                Ok(("podinfo", "test", 1)),
            ),
            (
                r#"{"name":"podinfo","namespace":"test"}"#,
                Ok(("podinfo", "test", 0)),
            ),
            (
                r#"{"name":"podinfo","namespace":"test","metadata":null}"#,
                Ok(("podinfo", "test", 0)),
            ),
            (
                r#"{"name":"a","namespace":"b","extra":[1,2]}"#,
                Ok(("a", "b", 0)),
            ),
            ("", Err("empty body")),
            ("  \n", Err("empty body")),
            ("{", Err("invalid JSON")),
            ("name=podinfo", Err("invalid JSON")),
            ("[]", Err("invalid JSON")),
            (r#"{"namespace":"test"}"#, Err("missing field \"name\"")),
            (r#"{"name":"podinfo"}"#, Err("missing field \"namespace\"")),
            (
                r#"{"name":"","namespace":"test"}"#,
                Err("missing field \"name\""),
            ),
            (
                r#"{"name":"p","namespace":"t","metadata":{"rps":10}}"#,
                Err("invalid type"),
            ),
            (r#"{"name":1,"namespace":"t"}"#, Err("invalid type")),
        ];
        for (body, want) in cases {
            let got = Payload::parse(body.as_bytes());
            match (want, got) {
                (Ok((name, namespace, meta)), Ok(p)) => {
                    assert_eq!(
                        (p.name.as_str(), p.namespace.as_str(), p.metadata.len()),
                        (*name, *namespace, *meta),
                        "{body}"
                    );
                    assert_eq!(p.canary(), format!("{namespace}/{name}"));
                }
                (Err(want), Err(err)) => {
                    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{body}");
                    assert!(err.to_string().contains(want), "{body}: {err}");
                }
                (want, got) => panic!("{body}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_command_tasks() {
        let spec = |command: &str, timeout: u64, log_output| CommandSpec {
            command: command.into(),
            timeout: Duration::from_secs(timeout),
            log_output,
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<Task, &'a str>);
        let cases: &[Case] = &[
            (
                &[("cmd", "hey -z 1m http://x/")],
                Ok(Task::Cmd(spec("hey -z 1m http://x/", 3600, false))),
            ),
            (
                &[("type", "cmd"), ("cmd", "echo"), ("timeout", "30s")],
                Ok(Task::Cmd(spec("echo", 30, false))),
            ),
            (
                &[("type", "bash"), ("cmd", "exit 0")],
                Ok(Task::Bash(spec("exit 0", 600, false))),
            ),
            (
                &[
                    ("type", "bash"),
                    ("cmd", "ls"),
                    ("logCmdOutput", "true"),
                    ("timeout", "1m"),
                ],
                Ok(Task::Bash(spec("ls", 60, true))),
            ),
            (
                &[("cmd", "ls"), ("logCmdOutput", "yes")],
                Ok(Task::Cmd(spec("ls", 3600, false))),
            ),
            (&[], Err("metadata.cmd is required for type cmd")),
            (
                &[("type", "bash")],
                Err("metadata.cmd is required for type bash"),
            ),
            (
                &[("type", "cmd"), ("cmd", "  ")],
                Err("metadata.cmd is required"),
            ),
            (
                &[("cmd", "ls"), ("timeout", "soon")],
                Err("invalid metadata.timeout"),
            ),
            (
                &[("type", "helm"), ("cmd", "test")],
                Err("unsupported metadata.type \"helm\""),
            ),
            (
                &[("type", "load")],
                Err("metadata.url is required for type load"),
            ),
        ];
        for (pairs, want) in cases {
            let got = Task::from_metadata(&meta(pairs));
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got, want, "{pairs:?}"),
                (Err(want), Err(err)) => {
                    assert!(err.to_string().contains(want), "{pairs:?}: {err}")
                }
                (want, got) => panic!("{pairs:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn fingerprints_tell_tasks_apart() {
        let a = Task::from_metadata(&meta(&[("cmd", "a")])).unwrap();
        let a_again = Task::from_metadata(&meta(&[("cmd", "a"), ("timeout", "5s")])).unwrap();
        let b = Task::from_metadata(&meta(&[("cmd", "b")])).unwrap();
        assert_eq!(a.fingerprint(), a_again.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.describe(), "cmd \"a\"");
        let load =
            Task::from_metadata(&meta(&[("type", "load"), ("url", "http://x:8080/")])).unwrap();
        assert_eq!(
            load.describe(),
            "load GET http://x:8080/ at 10 rps for 60s, concurrency 4"
        );
    }
}
