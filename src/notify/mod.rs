//! Alerts through an `AlertProvider`: rendering each service's incoming-webhook body,
//! the severity filter and the POST.
//!
//! Bodies, by provider type:
//! - `slack`, `rocket`: a Slack message with one attachment coloured by severity
//!   (Rocket.Chat incoming webhooks take Slack's format).
//! - `discord`: the same Slack body, posted to `<address>/slack`, Discord's
//!   Slack-compatible endpoint (as Flagger does; see [`endpoint`]).
//! - `msteams`: an Office 365 connector MessageCard.
//! - `gchat`: a Google Chat `cardsV2` message with `fallbackText` for notifications.
//! - `webhook`: our own JSON with every field of the alert (see `docs/alerts.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use serde_json::{json, Value};

use crate::api::{AlertProviderType, AlertSeverity};
use crate::hooks::{body_prefix, error_chain};

/// What happened to a canary, ready to be rendered for any provider.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Alert {
    /// `name.namespace`, as Flagger titles its alerts.
    pub canary: String,
    pub phase: String,
    pub severity: AlertSeverity,
    pub message: String,
    /// Extra facts in display order, e.g. `("Target", "Deployment/podinfo.test")`.
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("alert to {url} returned HTTP {status}: {body}")]
    Status {
        /// The address without path or query (they hold the service's token).
        url: String,
        status: u16,
        /// Up to 200 characters of the response body.
        body: String,
    },
    #[error("alert to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("alert to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("the alert provider's secret has no `address` key")]
    MissingAddress,
    #[error("the `address` in the alert provider's secret is not a usable URL: {reason}")]
    InvalidAddress { reason: String },
}

/// Flagger's filter: `info` lets everything through, `warn` warnings and errors,
/// `error` only errors.
pub fn wanted(filter: AlertSeverity, severity: AlertSeverity) -> bool {
    severity >= filter
}

/// Where to POST for a provider: Discord's Slack-compatible endpoint is `<url>/slack`
/// (added unless already there); every other type uses the address as is.
pub fn endpoint(kind: AlertProviderType, address: &str) -> String {
    if kind != AlertProviderType::Discord {
        return address.to_string();
    }
    let (base, query) = match address.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (address, None),
    };
    let base = base.trim_end_matches('/');
    let mut url = if base.ends_with("/slack") {
        base.to_string()
    } else {
        format!("{base}/slack")
    };
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The body to POST for `alert` to a provider of type `kind`. `channel` and `username`
/// are used where the service lets a webhook override them (Slack, Rocket.Chat,
/// Discord's username); Teams and Google Chat webhooks are bound to one channel.
pub fn render(
    kind: AlertProviderType,
    channel: Option<&str>,
    username: Option<&str>,
    alert: &Alert,
) -> Value {
    let channel = channel.filter(|c| !c.is_empty());
    let username = username.filter(|u| !u.is_empty());
    match kind {
        AlertProviderType::Slack | AlertProviderType::Rocket => {
            slack(channel, username, alert, true)
        }
        // Discord's Slack endpoint ignores `channel`; the webhook picks it.
        AlertProviderType::Discord => slack(None, username, alert, false),
        AlertProviderType::Msteams => msteams(alert),
        AlertProviderType::Gchat => gchat(alert),
        AlertProviderType::Webhook => generic(channel, username, alert),
    }
}

fn severity_name(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Info => "info",
        AlertSeverity::Warn => "warn",
        AlertSeverity::Error => "error",
    }
}

/// Slack's own `good` / `warning` / `danger` colours as hex, which Discord and
/// Rocket.Chat also understand (they do not all know Slack's names).
fn slack_color(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Info => "#2EB886",
        AlertSeverity::Warn => "#DAA038",
        AlertSeverity::Error => "#A30200",
    }
}

/// The alert's phase first, then its own fields.
fn all_fields(alert: &Alert) -> Vec<(&str, &str)> {
    let mut fields = Vec::with_capacity(alert.fields.len() + 1);
    if !alert.phase.is_empty() {
        fields.push(("Phase", alert.phase.as_str()));
    }
    fields.extend(alert.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    fields
}

fn slack(channel: Option<&str>, username: Option<&str>, alert: &Alert, mrkdwn: bool) -> Value {
    let fields: Vec<Value> = all_fields(alert)
        .into_iter()
        .map(|(title, value)| {
            // Short values sit two to a row; long ones (failed checks) get a full row.
            json!({"title": title, "value": value, "short": value.chars().count() <= 40})
        })
        .collect();
    let mut attachment = json!({
        "color": slack_color(alert.severity),
        "author_name": alert.canary,
        "text": alert.message,
        "fallback": format!("{}: {}", alert.canary, alert.message),
        "fields": fields,
    });
    if mrkdwn {
        attachment["mrkdwn_in"] = json!(["text"]);
    }
    let mut body = json!({ "attachments": [attachment] });
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = username {
        body["username"] = json!(username);
    }
    body
}

fn msteams(alert: &Alert) -> Value {
    let color = match alert.severity {
        AlertSeverity::Info => "0076D7",
        AlertSeverity::Warn => "FFA500",
        AlertSeverity::Error => "FF0000",
    };
    let facts: Vec<Value> = all_fields(alert)
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!({
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": color,
        "summary": format!("{}: {}", alert.canary, alert.message),
        "sections": [{
            "activityTitle": alert.message,
            "activitySubtitle": alert.canary,
            "facts": facts,
        }],
    })
}

fn gchat(alert: &Alert) -> Value {
    let mut widgets = vec![json!({"textParagraph": {"text": alert.message}})];
    widgets.extend(
        all_fields(alert)
            .into_iter()
            .map(|(label, value)| json!({"decoratedText": {"topLabel": label, "text": value}})),
    );
    json!({
        "fallbackText": format!("{}: {}", alert.canary, alert.message),
        "cardsV2": [{
            "cardId": "sluice-alert",
            "card": {
                "header": {
                    "title": alert.canary,
                    "subtitle": format!("sluice · {}", severity_name(alert.severity)),
                },
                "sections": [{"widgets": widgets}],
            },
        }],
    })
}

fn generic(channel: Option<&str>, username: Option<&str>, alert: &Alert) -> Value {
    let fields: Vec<Value> = alert
        .fields
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut body = json!({
        "canary": alert.canary,
        "phase": alert.phase,
        "severity": severity_name(alert.severity),
        "message": alert.message,
        "fields": fields,
    });
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = username {
        body["username"] = json!(username);
    }
    body
}

/// POSTs `body` as JSON; any 2xx is success. Errors name the address without its path
/// and query, which for Slack, Discord, Teams and Google Chat hold the secret token.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(), Error> {
    let shown = redact(url);
    let response = client
        .post(url)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|err| {
            if err.is_timeout() {
                Error::Timeout {
                    url: shown.clone(),
                    timeout,
                }
            } else {
                Error::Request {
                    url: shown.clone(),
                    message: error_chain(&err.without_url()),
                }
            }
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = body_prefix(response).await;
    Err(Error::Status {
        url: shown,
        status: status.as_u16(),
        body,
    })
}

/// The `address` key of an AlertProvider's Secret: UTF-8, surrounding whitespace
/// dropped (`echo` adds a newline), an absolute http(s) URL. The value never appears
/// in the error: it is a credential.
pub fn address_from_secret(data: &BTreeMap<String, ByteString>) -> Result<String, Error> {
    let raw = data.get("address").ok_or(Error::MissingAddress)?;
    let text = std::str::from_utf8(&raw.0).map_err(|_| Error::InvalidAddress {
        reason: "not UTF-8".to_string(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::MissingAddress);
    }
    let url = reqwest::Url::parse(text).map_err(|err| Error::InvalidAddress {
        reason: err.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::InvalidAddress {
            reason: format!("scheme {:?}, expected http or https", url.scheme()),
        });
    }
    Ok(text.to_string())
}

/// `scheme://host[:port]`, plus `/…` when a path or query was dropped.
fn redact(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "(invalid URL)".to_string();
    };
    let mut shown = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
    if let Some(port) = parsed.port() {
        shown.push_str(&format!(":{port}"));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        shown.push_str("/…");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlertProviderType::*;
    use AlertSeverity::{Info, Warn};

    const ERR: AlertSeverity = AlertSeverity::Error;

    fn alert(severity: AlertSeverity) -> Alert {
        Alert {
            canary: "podinfo.test".into(),
            phase: "Failed".into(),
            severity,
            message: "Canary analysis failed, rolled back".into(),
            fields: vec![
                ("Target".into(), "Deployment/podinfo.test".into()),
                ("Revision".into(), "abc123".into()),
            ],
        }
    }

    #[test]
    fn renders_each_provider() {
        let a = alert(ERR);
        let slack_fields = json!([
            {"title": "Phase", "value": "Failed", "short": true},
            {"title": "Target", "value": "Deployment/podinfo.test", "short": true},
            {"title": "Revision", "value": "abc123", "short": true},
        ]);
        let facts = json!([
            {"name": "Phase", "value": "Failed"},
            {"name": "Target", "value": "Deployment/podinfo.test"},
            {"name": "Revision", "value": "abc123"},
        ]);
        let cases: Vec<(AlertProviderType, Option<&str>, Option<&str>, Value)> = vec![
            (
                Slack,
                Some("#deploys"),
                Some("sluice"),
                json!({
                    "channel": "#deploys",
                    "username": "sluice",
                    "attachments": [{
                        "color": "#A30200",
                        "author_name": "podinfo.test",
                        "text": "Canary analysis failed, rolled back",
                        "fallback": "podinfo.test: Canary analysis failed, rolled back",
                        "mrkdwn_in": ["text"],
                        "fields": slack_fields.clone(),
                    }],
                }),
            ),
            (
                Rocket,
                None,
                None,
                json!({
                    "attachments": [{
                        "color": "#A30200",
                        "author_name": "podinfo.test",
                        "text": "Canary analysis failed, rolled back",
                        "fallback": "podinfo.test: Canary analysis failed, rolled back",
                        "mrkdwn_in": ["text"],
                        "fields": slack_fields.clone(),
                    }],
                }),
            ),
            (
                Discord,
                Some("#ignored"),
                Some("sluice"),
                json!({
                    "username": "sluice",
                    "attachments": [{
                        "color": "#A30200",
                        "author_name": "podinfo.test",
                        "text": "Canary analysis failed, rolled back",
                        "fallback": "podinfo.test: Canary analysis failed, rolled back",
                        "fields": slack_fields.clone(),
                    }],
                }),
            ),
            (
                Msteams,
                Some("#ignored"),
                None,
                json!({
                    "@type": "MessageCard",
                    "@context": "http://schema.org/extensions",
                    "themeColor": "FF0000",
                    "summary": "podinfo.test: Canary analysis failed, rolled back",
                    "sections": [{
                        "activityTitle": "Canary analysis failed, rolled back",
                        "activitySubtitle": "podinfo.test",
                        "facts": facts,
                    }],
                }),
            ),
            (
                Gchat,
                None,
                Some("ignored"),
                json!({
                    "fallbackText": "podinfo.test: Canary analysis failed, rolled back",
                    "cardsV2": [{
                        "cardId": "sluice-alert",
                        "card": {
                            "header": {"title": "podinfo.test", "subtitle": "sluice · error"},
                            "sections": [{"widgets": [
                                {"textParagraph": {"text": "Canary analysis failed, rolled back"}},
                                {"decoratedText": {"topLabel": "Phase", "text": "Failed"}},
                                {"decoratedText": {"topLabel": "Target", "text": "Deployment/podinfo.test"}},
                                {"decoratedText": {"topLabel": "Revision", "text": "abc123"}},
                            ]}],
                        },
                    }],
                }),
            ),
            (
                Webhook,
                Some("ops"),
                None,
                json!({
                    "canary": "podinfo.test",
                    "phase": "Failed",
                    "severity": "error",
                    "message": "Canary analysis failed, rolled back",
                    "fields": [
                        {"name": "Target", "value": "Deployment/podinfo.test"},
                        {"name": "Revision", "value": "abc123"},
                    ],
                    "channel": "ops",
                }),
            ),
        ];
        for (kind, channel, username, want) in cases {
            assert_eq!(render(kind, channel, username, &a), want, "{kind:?}");
        }
    }

    #[test]
    fn colours_follow_severity() {
        let cases = [
            (Info, "#2EB886", "0076D7"),
            (Warn, "#DAA038", "FFA500"),
            (ERR, "#A30200", "FF0000"),
        ];
        for (severity, slack, teams) in cases {
            let a = alert(severity);
            assert_eq!(
                render(Slack, None, None, &a)["attachments"][0]["color"],
                slack
            );
            assert_eq!(render(Msteams, None, None, &a)["themeColor"], teams);
        }
    }

    #[test]
    fn long_values_take_a_full_row_and_empty_phase_is_omitted() {
        let a = Alert {
            canary: "podinfo.test".into(),
            severity: Warn,
            message: "Halt advancement".into(),
            fields: vec![("Failed checks".into(), "x".repeat(41))],
            ..Default::default()
        };
        let body = render(Slack, Some(""), None, &a);
        assert_eq!(
            body["attachments"][0]["fields"],
            json!([{"title": "Failed checks", "value": "x".repeat(41), "short": false}])
        );
        assert!(body.get("channel").is_none());
    }

    #[test]
    fn severity_filter() {
        let cases = [
            (Info, Info, true),
            (Info, Warn, true),
            (Info, ERR, true),
            (Warn, Info, false),
            (Warn, Warn, true),
            (Warn, ERR, true),
            (ERR, Info, false),
            (ERR, Warn, false),
            (ERR, ERR, true),
        ];
        for (filter, severity, want) in cases {
            assert_eq!(wanted(filter, severity), want, "{filter:?} {severity:?}");
        }
    }

    #[test]
    fn discord_posts_to_its_slack_endpoint() {
        let cases = [
            (
                "https://discord.com/api/webhooks/1/t",
                "https://discord.com/api/webhooks/1/t/slack",
            ),
            (
                "https://discord.com/api/webhooks/1/t/",
                "https://discord.com/api/webhooks/1/t/slack",
            ),
            (
                "https://discord.com/api/webhooks/1/t/slack",
                "https://discord.com/api/webhooks/1/t/slack",
            ),
            (
                "https://discord.com/api/webhooks/1/t?wait=true",
                "https://discord.com/api/webhooks/1/t/slack?wait=true",
            ),
        ];
        for (address, want) in cases {
            assert_eq!(endpoint(Discord, address), want);
        }
        assert_eq!(
            endpoint(Slack, "https://hooks.slack.com/x/"),
            "https://hooks.slack.com/x/"
        );
    }

    #[test]
    fn address_from_secret_reads_the_address_key() {
        let secret =
            |value: &[u8]| BTreeMap::from([("address".to_string(), ByteString(value.to_vec()))]);
        assert_eq!(
            address_from_secret(&secret(b"https://hooks.slack.com/services/T/B/x\n")).unwrap(),
            "https://hooks.slack.com/services/T/B/x"
        );
        assert!(matches!(
            address_from_secret(&BTreeMap::new()),
            Err(Error::MissingAddress)
        ));
        assert!(matches!(
            address_from_secret(&secret(b" \n")),
            Err(Error::MissingAddress)
        ));
        assert!(matches!(
            address_from_secret(&secret(&[0xff, 0xfe])),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(
            address_from_secret(&secret(b"hooks.slack.com/x")),
            Err(Error::InvalidAddress { .. })
        ));
        let err = address_from_secret(&secret(b"ftp://secret-token@host/x")).unwrap_err();
        assert!(!err.to_string().contains("secret-token"), "{err}");
    }

    #[test]
    fn redact_keeps_only_the_origin() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T/B/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(
            redact("http://127.0.0.1:8080?token=x"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact("not a url"), "(invalid URL)");
    }
}
