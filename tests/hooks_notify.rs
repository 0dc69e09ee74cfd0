//! Webhooks and alerts against real HTTP receivers on 127.0.0.1.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use serde_json::{json, Value};

use sluice::api::{AlertProviderType, AlertSeverity, CanaryWebhook, WebhookType};
use sluice::hooks::{self, Payload};
use sluice::notify::{self, Alert};

const BACKOFF: Duration = Duration::from_millis(10);

/// What the receiver answers to the next request.
#[derive(Clone)]
enum Reply {
    Status(u16, String),
    /// Answers 200 after this long.
    Delay(Duration),
}

#[derive(Clone, Debug)]
struct Request {
    path: String,
    content_type: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<Request>>>,
    /// Replies in order; once empty, every request gets 200.
    script: Arc<Mutex<VecDeque<Reply>>>,
}

struct Receiver {
    addr: SocketAddr,
    shared: Shared,
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> Receiver {
        let shared = Shared {
            script: Arc::new(Mutex::new(script.into())),
            ..Default::default()
        };
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, shared }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
}

async fn record(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let request = Request {
        path: uri.to_string(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    shared.requests.lock().unwrap().push(request);
    let reply = shared.script.lock().unwrap().pop_front();
    match reply {
        None => (StatusCode::OK, "ok".into()),
        Some(Reply::Status(code, body)) => (StatusCode::from_u16(code).unwrap(), body),
        Some(Reply::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "late".into())
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn hook(name: &str, kind: Option<WebhookType>, url: String) -> CanaryWebhook {
    CanaryWebhook {
        name: name.into(),
        webhook_type: kind,
        url,
        ..Default::default()
    }
}

fn payload() -> Payload {
    Payload {
        name: "podinfo".into(),
        namespace: "test".into(),
        phase: "Progressing".into(),
        checksum: "5f8d9c".into(),
        metadata: BTreeMap::new(),
    }
}

#[tokio::test]
async fn webhook_success_posts_flaggers_payload_with_the_hooks_metadata() {
    let rx = Receiver::start(vec![Reply::Status(202, "accepted".into())]).await;
    let mut h = hook("load-test", None, rx.url("/hook"));
    h.metadata = BTreeMap::from([("cmd".to_string(), "hey -z 1m".to_string())]);

    hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap();

    let requests = rx.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/hook");
    assert_eq!(requests[0].content_type, "application/json");
    assert_eq!(
        requests[0].body,
        json!({
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "5f8d9c",
            "metadata": {"cmd": "hey -z 1m"}
        })
    );
}

#[tokio::test]
async fn webhook_500_then_success_with_retries() {
    let rx = Receiver::start(vec![
        Reply::Status(500, "warming up".into()),
        Reply::Status(503, "still warming up".into()),
    ])
    .await;
    let mut h = hook("check", Some(WebhookType::Rollout), rx.url("/"));
    h.retries = Some(2);

    hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap();
    assert_eq!(rx.requests().len(), 3);
}

#[tokio::test]
async fn webhook_500_after_all_retries_names_hook_status_and_body() {
    let rx = Receiver::start(vec![
        Reply::Status(500, "boom".into()),
        Reply::Status(500, "boom again".into()),
        Reply::Status(200, "never asked".into()),
    ])
    .await;
    let url = rx.url("/gate");
    let mut h = hook("check", None, url.clone());
    h.retries = Some(1);

    let err = hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("webhook check ({url}) returned HTTP 500 (after 2 attempts): boom again")
    );
    assert_eq!(rx.requests().len(), 2);
}

#[tokio::test]
async fn webhook_4xx_is_not_retried_and_body_is_cut_to_200_chars() {
    let long = "x".repeat(500);
    let rx = Receiver::start(vec![Reply::Status(403, long)]).await;
    let url = rx.url("/gate/check");
    let mut h = hook("approval", Some(WebhookType::ConfirmRollout), url.clone());
    h.retries = Some(3);

    let err = hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "webhook approval ({url}) returned HTTP 403: {}…",
            "x".repeat(200)
        )
    );
    assert_eq!(rx.requests().len(), 1);
}

#[tokio::test]
async fn webhook_statuses_above_202_fail_like_flagger() {
    let rx = Receiver::start(vec![Reply::Status(204, String::new())]).await;
    let h = hook("h", None, rx.url("/"));
    let err = hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap_err();
    assert!(matches!(err, hooks::Error::Status { status: 204, .. }));
}

#[tokio::test]
async fn webhook_timeout() {
    let rx = Receiver::start(vec![Reply::Delay(Duration::from_secs(5))]).await;
    let url = rx.url("/slow");
    let mut h = hook("slow", None, url.clone());
    h.timeout = Some("200ms".into());

    let started = Instant::now();
    let err = hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!("webhook slow ({url}) timed out after 200ms")
    );
}

#[tokio::test]
async fn webhook_timeout_is_retried() {
    let rx = Receiver::start(vec![Reply::Delay(Duration::from_secs(5))]).await;
    let mut h = hook("slow-once", None, rx.url("/"));
    h.timeout = Some("200ms".into());
    h.retries = Some(1);

    hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap();
    assert_eq!(rx.requests().len(), 2);
}

#[tokio::test]
async fn webhook_connection_error_names_the_hook() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let h = hook("gone", None, url.clone());

    let err = hooks::call_with_backoff(&client(), &h, &payload(), BACKOFF)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, hooks::Error::Request { .. }), "{message}");
    assert!(
        message.starts_with(&format!("webhook gone ({url}) failed: ")),
        "{message}"
    );
}

#[tokio::test]
async fn event_payload_shape() {
    let rx = Receiver::start(vec![]).await;
    let mut h = hook("events", Some(WebhookType::Event), rx.url("/events"));
    // The event's own keys win over the hook's.
    h.metadata = BTreeMap::from([
        ("eventType".to_string(), "from-hook".to_string()),
        ("cluster".to_string(), "prod-eu".to_string()),
    ]);
    let at = chrono::DateTime::from_timestamp_millis(1_764_000_000_000).unwrap();
    let event = hooks::event_payload(payload(), "Warning", "Halt advancement podinfo.test", at);

    hooks::call_all_with_backoff(&client(), &[h], WebhookType::Event, &event, BACKOFF)
        .await
        .unwrap();

    let requests = rx.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].body,
        json!({
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "5f8d9c",
            "metadata": {
                "eventMessage": "Halt advancement podinfo.test",
                "eventType": "Warning",
                "timestamp": "1764000000000",
                "cluster": "prod-eu"
            }
        })
    );
}

#[tokio::test]
async fn call_all_runs_hooks_of_one_type_in_order_and_stops_at_the_first_failure() {
    let rx = Receiver::start(vec![
        Reply::Status(200, "ok".into()),
        Reply::Status(500, "db not migrated".into()),
    ])
    .await;
    let hooks_list = vec![
        hook("untyped", None, rx.url("/rollout")),
        hook("pre-1", Some(WebhookType::PreRollout), rx.url("/pre-1")),
        hook("post", Some(WebhookType::PostRollout), rx.url("/post")),
        hook("pre-2", Some(WebhookType::PreRollout), rx.url("/pre-2")),
        hook("pre-3", Some(WebhookType::PreRollout), rx.url("/pre-3")),
    ];

    let err = hooks::call_all_with_backoff(
        &client(),
        &hooks_list,
        WebhookType::PreRollout,
        &payload(),
        BACKOFF,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("webhook pre-2 ("), "{err}");
    let paths: Vec<String> = rx.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/pre-1", "/pre-2"]);

    // An untyped hook is a rollout hook.
    hooks::call_all_with_backoff(
        &client(),
        &hooks_list,
        WebhookType::Rollout,
        &payload(),
        BACKOFF,
    )
    .await
    .unwrap();
    assert_eq!(rx.requests().last().unwrap().path, "/rollout");
}

fn alert(severity: AlertSeverity, message: &str) -> Alert {
    Alert {
        canary: "podinfo.test".into(),
        phase: "Progressing".into(),
        severity,
        message: message.into(),
        fields: vec![
            ("Target".into(), "Deployment/podinfo.test".into()),
            ("Traffic".into(), "canary 20%".into()),
        ],
    }
}

#[tokio::test]
async fn each_alert_type_is_received_with_its_body_shape() {
    let rx = Receiver::start(vec![]).await;
    let a = alert(
        AlertSeverity::Warn,
        "Halt advancement: success rate 91% < 99%",
    );
    let kinds = [
        (AlertProviderType::Slack, "/slack-hook", "/slack-hook"),
        (AlertProviderType::Msteams, "/teams", "/teams"),
        (
            AlertProviderType::Discord,
            "/api/webhooks/1/t",
            "/api/webhooks/1/t/slack",
        ),
        (AlertProviderType::Rocket, "/hooks/abc", "/hooks/abc"),
        (
            AlertProviderType::Gchat,
            "/v1/spaces/x/messages?key=k",
            "/v1/spaces/x/messages?key=k",
        ),
        (AlertProviderType::Webhook, "/alerts", "/alerts"),
    ];
    for (kind, address_path, _) in &kinds {
        let url = notify::endpoint(*kind, &rx.url(address_path));
        let body = notify::render(*kind, Some("#deploys"), Some("sluice"), &a);
        notify::send(&client(), &url, &body, Duration::from_secs(5))
            .await
            .unwrap();
    }

    let requests = rx.requests();
    assert_eq!(requests.len(), kinds.len());
    for ((kind, _, want_path), got) in kinds.iter().zip(&requests) {
        assert_eq!(&got.path, want_path, "{kind:?}");
        assert_eq!(got.content_type, "application/json", "{kind:?}");
        let b = &got.body;
        match kind {
            AlertProviderType::Slack | AlertProviderType::Rocket | AlertProviderType::Discord => {
                let attachment = &b["attachments"][0];
                assert_eq!(attachment["author_name"], "podinfo.test", "{kind:?}");
                assert_eq!(attachment["text"], a.message, "{kind:?}");
                assert_eq!(attachment["color"], "#DAA038", "{kind:?}");
                assert_eq!(attachment["fields"][1]["title"], "Target", "{kind:?}");
                assert_eq!(b["username"], "sluice", "{kind:?}");
                let want_channel = if *kind == AlertProviderType::Discord {
                    Value::Null
                } else {
                    json!("#deploys")
                };
                assert_eq!(b["channel"], want_channel, "{kind:?}");
            }
            AlertProviderType::Msteams => {
                assert_eq!(b["@type"], "MessageCard");
                assert_eq!(b["themeColor"], "FFA500");
                assert_eq!(b["sections"][0]["activityTitle"], a.message);
                assert_eq!(b["sections"][0]["activitySubtitle"], "podinfo.test");
                assert_eq!(
                    b["sections"][0]["facts"][2],
                    json!({"name": "Traffic", "value": "canary 20%"})
                );
            }
            AlertProviderType::Gchat => {
                let card = &b["cardsV2"][0]["card"];
                assert_eq!(card["header"]["title"], "podinfo.test");
                assert_eq!(
                    card["sections"][0]["widgets"][0]["textParagraph"]["text"],
                    a.message
                );
                assert_eq!(b["fallbackText"], format!("podinfo.test: {}", a.message));
            }
            AlertProviderType::Webhook => {
                assert_eq!(
                    *b,
                    json!({
                        "canary": "podinfo.test",
                        "phase": "Progressing",
                        "severity": "warn",
                        "message": a.message,
                        "fields": [
                            {"name": "Target", "value": "Deployment/podinfo.test"},
                            {"name": "Traffic", "value": "canary 20%"}
                        ],
                        "channel": "#deploys",
                        "username": "sluice"
                    })
                );
            }
        }
    }
}

#[tokio::test]
async fn severity_filter_decides_what_each_provider_receives() {
    let rx = Receiver::start(vec![]).await;
    let alerts = [
        alert(AlertSeverity::Info, "New revision detected"),
        alert(AlertSeverity::Warn, "Halt advancement"),
        alert(
            AlertSeverity::Error,
            "Rolling back podinfo.test failed checks threshold reached 5",
        ),
    ];
    let filters = [
        ("/info", AlertSeverity::Info),
        ("/warn", AlertSeverity::Warn),
        ("/error", AlertSeverity::Error),
    ];
    for a in &alerts {
        for (path, filter) in &filters {
            if notify::wanted(*filter, a.severity) {
                let body = notify::render(AlertProviderType::Webhook, None, None, a);
                notify::send(&client(), &rx.url(path), &body, Duration::from_secs(5))
                    .await
                    .unwrap();
            }
        }
    }
    let received = |path: &str| -> Vec<String> {
        rx.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.body["severity"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(received("/info"), ["info", "warn", "error"]);
    assert_eq!(received("/warn"), ["warn", "error"]);
    assert_eq!(received("/error"), ["error"]);
}

#[tokio::test]
async fn alert_errors_name_the_service_and_status_but_not_its_token() {
    let rx = Receiver::start(vec![Reply::Status(404, "no_service".into())]).await;
    let url = rx.url("/services/T000/B000/secret-token");
    let body = notify::render(
        AlertProviderType::Slack,
        None,
        None,
        &alert(AlertSeverity::Error, "Canary failed"),
    );

    let err = notify::send(&client(), &url, &body, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "alert to http://{}/… returned HTTP 404: no_service",
            rx.addr
        )
    );

    let slow = Receiver::start(vec![Reply::Delay(Duration::from_secs(5))]).await;
    let err = notify::send(
        &client(),
        &slow.url("/t/secret-token"),
        &body,
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, notify::Error::Timeout { .. }), "{err}");
    assert!(!err.to_string().contains("secret-token"), "{err}");
}
