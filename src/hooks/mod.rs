//! Canary webhooks, called the way Flagger calls them.
//!
//! Each hook receives a POST with `{name, namespace, phase, checksum, metadata}`; HTTP
//! 200-202 is success, anything else (or no answer within `timeout`, default 10s) is a
//! failure. What a failure means (gate closed, failed check, abort) is the caller's call.
//!
//! Metadata: the hook's `metadata` is sent as the payload's `metadata`. Keys already in
//! the payload win, which is Flagger's rule for `event` hooks (its `eventMessage`,
//! `eventType` and `timestamp` cannot be overridden by the hook); for other hook types
//! the payload carries no metadata of its own, so the hook's is sent unchanged.
//!
//! Retries: `retries` extra attempts after a connection error, a timeout, HTTP 429 or a
//! 5xx, with a fixed pause between attempts. Each attempt gets the full timeout. Other
//! answers (a 4xx such as a closed gate, or 203-299) fail at once: asking again would
//! not change them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::api::{CanaryWebhook, WebhookType};
use crate::duration::{self, DurationError};

/// Timeout when a hook sets none (Flagger's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between attempts of a hook with `retries`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// Most of a failing hook's response body kept in the error, so it fits in an event.
const BODY_LIMIT: usize = 200;

/// The JSON body every hook receives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub checksum: String,
    /// Always present (possibly `{}`), so receivers need not handle a missing key.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "webhook {name} ({url}): invalid timeout {value:?}: write a whole number and a unit \
         ms, s, m or h, e.g. 30s"
    )]
    TimeoutForm {
        name: String,
        url: String,
        value: String,
    },
    #[error("webhook {name} ({url}): invalid timeout: {source}")]
    InvalidTimeout {
        name: String,
        url: String,
        source: DurationError,
    },
    #[error("webhook {name} ({url}) returned HTTP {status}{attempts}: {body}")]
    Status {
        name: String,
        url: String,
        status: u16,
        /// Up to 200 characters of the response body.
        body: String,
        attempts: Attempts,
    },
    #[error("webhook {name} ({url}) timed out after {timeout}{attempts}")]
    Timeout {
        name: String,
        url: String,
        timeout: HumanDuration,
        attempts: Attempts,
    },
    #[error("webhook {name} ({url}) failed{attempts}: {message}")]
    Request {
        name: String,
        url: String,
        /// The transport error and its causes, e.g. `connection refused`.
        message: String,
        attempts: Attempts,
    },
}

/// How many attempts were made; shown only when there was more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 1 {
            write!(f, " (after {} attempts)", self.0)
        } else {
            Ok(())
        }
    }
}

/// A duration written the way the spec writes them (`10s`, `500ms`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1_000) => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// The CRD's pattern for `timeout`, checked here too so that a spec the API server did
/// not validate gets the same answer.
static TIMEOUT_FORM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9]+(ms|s|m|h)$").expect("valid regex"));

/// The hook's timeout, or the default when unset or empty. Zero is rejected: it would
/// fail every call before it starts.
pub fn timeout(hook: &CanaryWebhook) -> Result<Duration, Error> {
    let value = match hook.timeout.as_deref().map(str::trim) {
        None | Some("") => return Ok(DEFAULT_TIMEOUT),
        Some(value) => value,
    };
    if !TIMEOUT_FORM.is_match(value) {
        return Err(Error::TimeoutForm {
            name: hook.name.clone(),
            url: hook.url.clone(),
            value: value.to_string(),
        });
    }
    // Flagger reads it with Go's time.ParseDuration.
    duration::positive(value, duration::parse_go).map_err(|source| Error::InvalidTimeout {
        name: hook.name.clone(),
        url: hook.url.clone(),
        source,
    })
}

/// The payload of an `event` hook: Flagger's `eventMessage`, `eventType` (`Normal` or
/// `Warning`, as on the Kubernetes event) and `timestamp` (unix milliseconds, as a
/// string) added to `base`'s metadata, replacing keys of the same name.
pub fn event_payload(
    base: Payload,
    event_type: &str,
    message: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Payload {
    let mut payload = base;
    payload
        .metadata
        .insert("eventMessage".to_string(), message.to_string());
    payload
        .metadata
        .insert("eventType".to_string(), event_type.to_string());
    payload
        .metadata
        .insert("timestamp".to_string(), at.timestamp_millis().to_string());
    payload
}

/// Calls one hook with the default pause between retries.
pub async fn call(
    client: &reqwest::Client,
    hook: &CanaryWebhook,
    payload: &Payload,
) -> Result<(), Error> {
    call_with_backoff(client, hook, payload, DEFAULT_BACKOFF).await
}

/// Calls one hook, pausing `backoff` between attempts.
pub async fn call_with_backoff(
    client: &reqwest::Client,
    hook: &CanaryWebhook,
    payload: &Payload,
    backoff: Duration,
) -> Result<(), Error> {
    let timeout = timeout(hook)?;
    let mut body = payload.clone();
    for (key, value) in &hook.metadata {
        body.metadata
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    // Negative retries (blocked by the schema, possible in file mode) mean none.
    let attempts_allowed = u32::try_from(hook.retries.unwrap_or(0))
        .unwrap_or(0)
        .saturating_add(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = attempt_once(client, hook, &body, timeout, attempt).await;
        match outcome {
            Ok(()) => return Ok(()),
            Err((error, retryable)) => {
                if !retryable || attempt >= attempts_allowed {
                    return Err(error);
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// One POST; on failure, the error and whether another attempt could help.
async fn attempt_once(
    client: &reqwest::Client,
    hook: &CanaryWebhook,
    body: &Payload,
    timeout: Duration,
    attempt: u32,
) -> Result<(), (Error, bool)> {
    let name = || hook.name.clone();
    let url = || hook.url.clone();
    let transport = |err: reqwest::Error| {
        if err.is_timeout() {
            let error = Error::Timeout {
                name: name(),
                url: url(),
                timeout: HumanDuration(timeout),
                attempts: Attempts(attempt),
            };
            (error, true)
        } else {
            // A request that cannot be built (bad URL) fails the same way every time.
            let retryable = !err.is_builder();
            let error = Error::Request {
                name: name(),
                url: url(),
                message: error_chain(&err.without_url()),
                attempts: Attempts(attempt),
            };
            (error, retryable)
        }
    };
    let response = client
        .post(&hook.url)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    if (200..=202).contains(&status) {
        return Ok(());
    }
    let retryable = status == 429 || status >= 500;
    let text = body_prefix(response).await;
    let error = Error::Status {
        name: name(),
        url: url(),
        status,
        body: text,
        attempts: Attempts(attempt),
    };
    Err((error, retryable))
}

/// Calls every hook of `kind` in order (a hook without a type is a `rollout` hook),
/// stopping at the first failure.
pub async fn call_all(
    client: &reqwest::Client,
    hooks: &[CanaryWebhook],
    kind: WebhookType,
    payload: &Payload,
) -> Result<(), Error> {
    call_all_with_backoff(client, hooks, kind, payload, DEFAULT_BACKOFF).await
}

/// [`call_all`] with an explicit pause between retries.
pub async fn call_all_with_backoff(
    client: &reqwest::Client,
    hooks: &[CanaryWebhook],
    kind: WebhookType,
    payload: &Payload,
    backoff: Duration,
) -> Result<(), Error> {
    for hook in of_type(hooks, kind) {
        call_with_backoff(client, hook, payload, backoff).await?;
    }
    Ok(())
}

/// The hooks of one type, in spec order.
pub fn of_type(hooks: &[CanaryWebhook], kind: WebhookType) -> impl Iterator<Item = &CanaryWebhook> {
    hooks
        .iter()
        .filter(move |hook| hook.webhook_type.unwrap_or_default() == kind)
}

/// `err` and its causes joined with `: `, skipping repeats (hyper repeats its cause).
/// Shared with the alert senders.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The start of a failing answer's body: enough for the message, without reading an
/// arbitrarily large body. Shared with the alert senders.
pub(crate) async fn body_prefix(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() >= BODY_LIMIT * 4 {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) if err.is_timeout() => return "(timed out reading the body)".to_string(),
            Err(_) => return "(unreadable body)".to_string(),
        }
    }
    truncate(String::from_utf8_lossy(&bytes).trim(), BODY_LIMIT)
}

/// At most `limit` characters, marking the cut.
fn truncate(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(timeout: Option<&str>) -> CanaryWebhook {
        CanaryWebhook {
            name: "gate".into(),
            url: "http://gate.test/".into(),
            timeout: timeout.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn payload_serialises_to_flaggers_fields() {
        let payload = Payload {
            name: "podinfo".into(),
            namespace: "test".into(),
            phase: "Progressing".into(),
            checksum: "abc123".into(),
            metadata: BTreeMap::from([("cmd".to_string(), "hey".to_string())]),
        };
        assert_eq!(
            serde_json::to_value(&payload).unwrap(),
            serde_json::json!({
                "name": "podinfo",
                "namespace": "test",
                "phase": "Progressing",
                "checksum": "abc123",
                "metadata": {"cmd": "hey"}
            })
        );
    }

    #[test]
    fn timeouts_follow_the_crd_pattern() {
        let cases: &[(Option<&str>, Option<Duration>)] = &[
            (None, Some(DEFAULT_TIMEOUT)),
            (Some(""), Some(DEFAULT_TIMEOUT)),
            (Some("500ms"), Some(Duration::from_millis(500))),
            (Some("30s"), Some(Duration::from_secs(30))),
            (Some("2m"), Some(Duration::from_secs(120))),
            (Some("1h"), Some(Duration::from_secs(3600))),
            (Some("0s"), None),
            (Some("1h30m"), None),
            (Some("1.5s"), None),
            (Some("10"), None),
            (Some("s"), None),
            (Some("-1s"), None),
            (Some("1d"), None),
            (Some("99999999999999999999h"), None),
            (Some("9999999999999999h"), None),
        ];
        for (value, want) in cases {
            let got = timeout(&hook(*value)).ok();
            assert_eq!(got, *want, "timeout {value:?}");
        }
    }

    #[test]
    fn invalid_timeout_names_the_hook() {
        let err = timeout(&hook(Some("soon"))).unwrap_err().to_string();
        assert!(err.starts_with("webhook gate (http://gate.test/): invalid timeout \"soon\""));
    }

    #[test]
    fn event_payload_adds_flaggers_keys() {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let base = Payload {
            name: "podinfo".into(),
            namespace: "test".into(),
            phase: "Progressing".into(),
            checksum: "c".into(),
            metadata: BTreeMap::from([("timestamp".to_string(), "stale".to_string())]),
        };
        let payload = event_payload(base, "Warning", "Halt advancement", at);
        assert_eq!(
            payload.metadata,
            BTreeMap::from([
                ("eventMessage".to_string(), "Halt advancement".to_string()),
                ("eventType".to_string(), "Warning".to_string()),
                ("timestamp".to_string(), "1700000000123".to_string()),
            ])
        );
    }

    #[test]
    fn hooks_without_type_are_rollout_hooks() {
        let hooks = vec![
            CanaryWebhook {
                name: "a".into(),
                ..Default::default()
            },
            CanaryWebhook {
                name: "b".into(),
                webhook_type: Some(WebhookType::PreRollout),
                ..Default::default()
            },
            CanaryWebhook {
                name: "c".into(),
                webhook_type: Some(WebhookType::Rollout),
                ..Default::default()
            },
        ];
        let names = |kind| {
            of_type(&hooks, kind)
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(WebhookType::Rollout), ["a", "c"]);
        assert_eq!(names(WebhookType::PreRollout), ["b"]);
        assert!(names(WebhookType::Event).is_empty());
    }

    #[test]
    fn error_messages_read_as_events() {
        let status = Error::Status {
            name: "check".into(),
            url: "http://x/".into(),
            status: 500,
            body: "boom".into(),
            attempts: Attempts(3),
        };
        assert_eq!(
            status.to_string(),
            "webhook check (http://x/) returned HTTP 500 (after 3 attempts): boom"
        );
        let timeout = Error::Timeout {
            name: "check".into(),
            url: "http://x/".into(),
            timeout: HumanDuration(Duration::from_millis(1500)),
            attempts: Attempts(1),
        };
        assert_eq!(
            timeout.to_string(),
            "webhook check (http://x/) timed out after 1500ms"
        );
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
