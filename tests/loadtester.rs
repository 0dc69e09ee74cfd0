//! Runs the real `sluice-loadtester` binary on a loopback port and calls it as the
//! controller (and a human with curl) would.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Loadtester {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Loadtester {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> Loadtester {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-loadtester"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let lt = Loadtester {
        child,
        base: format!("http://127.0.0.1:{port}"),
        client,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = lt.client.get(format!("{}/healthz", lt.base)).send().await {
            assert_eq!(response.status(), 200);
            return lt;
        }
        assert!(Instant::now() < deadline, "loadtester did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Loadtester {
    /// POSTs a raw body without a JSON content type, as `curl -d` does.
    async fn post_raw(&self, path: &str, body: &str) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line in `/metrics`, 0 when absent.
    async fn metric(&self, series: &str) -> u64 {
        let text = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }
}

/// A webhook payload as the controller sends it.
fn hook(name: &str, metadata: Value) -> Value {
    json!({"name": name, "namespace": "test", "phase": "Progressing", "checksum": "abc", "metadata": metadata})
}

#[tokio::test]
async fn gates_follow_flagger_semantics() {
    let lt = start().await;
    let podinfo = r#"{"name":"podinfo","namespace":"test"}"#;
    let other = r#"{"name":"other","namespace":"test"}"#;
    // (path, body, expected status), in order.
    let steps = [
        ("/gate/check", podinfo, 403),
        ("/rollback/check", podinfo, 403),
        ("/gate/approve", "", 200),
        ("/gate/halt", podinfo, 403),
        ("/gate/open", podinfo, 200),
        ("/gate/check", podinfo, 200),
        ("/gate/check", other, 403),
        ("/rollback/check", podinfo, 403),
        ("/gate/close", podinfo, 200),
        ("/gate/check", podinfo, 403),
        ("/rollback/open", other, 200),
        ("/rollback/check", other, 200),
        ("/gate/check", other, 403),
        ("/rollback/close", other, 200),
        ("/rollback/check", other, 403),
        ("/gate/open", podinfo, 200),
    ];
    for (i, (path, body, want)) in steps.into_iter().enumerate() {
        let (status, text) = lt.post_raw(path, body).await;
        assert_eq!(status, want, "step {i}: {path} {body}: {text}");
    }
    // The controller's full payload reaches the same gate.
    let (status, _) = lt.post("/gate/check", hook("podinfo", json!({}))).await;
    assert_eq!(status, 200);
    let gates: Value = serde_json::from_str(&lt.get("/gates").await).unwrap();
    assert_eq!(
        gates,
        json!({
            "test/podinfo": {"gate": "open", "rollback": "closed"},
            "test/other": {"gate": "closed", "rollback": "closed"},
        })
    );
}

#[tokio::test]
async fn bad_requests_get_400_with_a_reason() {
    let lt = start().await;
    let cases = [
        ("/gate/check", "{", "invalid JSON"),
        ("/gate/open", "", "empty body"),
        (
            "/gate/check",
            r#"{"name":"podinfo"}"#,
            "missing field \"namespace\"",
        ),
        (
            "/rollback/open",
            r#"{"namespace":"test"}"#,
            "missing field \"name\"",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t"}"#,
            "metadata.cmd is required",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"type":"bash"}}"#,
            "metadata.cmd is required for type bash",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"type":"helm","cmd":"x"}}"#,
            "unsupported metadata.type",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"cmd":"x","timeout":"soon"}}"#,
            "invalid metadata.timeout",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"type":"load"}}"#,
            "metadata.url is required",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"type":"load","url":"http://127.0.0.1:1/","rps":"-1"}}"#,
            "invalid metadata.rps",
        ),
        (
            "/",
            r#"{"name":"p","namespace":"t","metadata":{"rps":5}}"#,
            "invalid type",
        ),
    ];
    for (path, body, want) in cases {
        let (status, text) = lt.post_raw(path, body).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(want), "{path} {body}: {text}");
    }
    // Still serving after all that.
    assert_eq!(lt.get("/healthz").await.trim(), "ok");
}

#[tokio::test]
async fn bash_commands_answer_with_their_outcome() {
    let lt = start().await;
    let (status, text) = lt
        .post(
            "/",
            hook(
                "podinfo",
                json!({"type": "bash", "cmd": "echo hello $((1+1))"}),
            ),
        )
        .await;
    assert_eq!((status, text.trim()), (200, "hello 2"));
    let failing = json!({"type": "bash", "cmd": "echo broken >&2; exit 3", "logCmdOutput": "true"});
    let (status, text) = lt.post("/", hook("podinfo", failing)).await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("exit code 3") && text.contains("broken"),
        "{text}"
    );
    let slow = json!({"type": "bash", "cmd": "sleep 20", "timeout": "500ms"});
    let started = Instant::now();
    let (status, text) = lt.post("/", hook("podinfo", slow)).await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("timed out"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bash_command_stops_when_its_caller_gives_up() {
    let lt = start().await;
    let dir = std::env::temp_dir().join(format!("sluice-loadtester-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pid");
    let cmd = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let result = impatient
        .post(format!("{}/", lt.base))
        .json(&hook("podinfo", json!({"type": "bash", "cmd": cmd})))
        .send()
        .await;
    assert!(
        result.is_err(),
        "answered before the command ended: {result:?}"
    );
    wait_for("the pid file", async || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let sleep_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the abandoned command to stop", async || !alive(sleep_pid)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cmd_runs_in_the_background_once_per_canary() {
    let lt = start().await;
    let dir = std::env::temp_dir().join(format!("sluice-loadtester-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    let _ = std::fs::remove_file(&marker);
    let cmd = format!("sleep 1; echo x >> {}", marker.display());
    let started = Instant::now();
    let (status, text) = lt.post("/", hook("podinfo", json!({"cmd": cmd}))).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("started"), "{text}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "answered only after the command"
    );
    let (status, text) = lt
        .post("/", hook("podinfo", json!({"type": "cmd", "cmd": cmd})))
        .await;
    assert_eq!(
        (status, text.starts_with("already running")),
        (200, true),
        "{text}"
    );
    // Another canary runs its own copy.
    let (_, text) = lt.post("/", hook("other", json!({"cmd": cmd}))).await;
    assert!(text.starts_with("started"), "{text}");
    wait_for("both commands", async || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t.lines().count() == 2)
    })
    .await;
    // Finished, so the same command starts again.
    wait_for("the registry to empty", async || {
        !lt.get("/metrics").await.contains("tasks_running{")
    })
    .await;
    let (_, text) = lt.post("/", hook("podinfo", json!({"cmd": "true"}))).await;
    assert!(text.starts_with("started"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback HTTP server counting what it receives; `/fail` answers 503.
async fn target() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move |uri: http::Uri| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            if uri.path() == "/fail" {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                http::StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), count)
}

#[tokio::test]
async fn load_generator_paces_and_counts() {
    let lt = start().await;
    let (url, received) = target().await;
    let load = json!({"type": "load", "url": format!("{url}/"), "rps": "20", "duration": "2s", "concurrency": "2"});
    let (status, text) = lt.post("/", hook("podinfo", load.clone())).await;
    assert_eq!((status, text.starts_with("started")), (200, true), "{text}");
    let (_, text) = lt.post("/", hook("podinfo", load)).await;
    assert!(text.starts_with("already running"), "{text}");
    let failing =
        json!({"type": "load", "url": format!("{url}/fail"), "rps": "10", "duration": "1s"});
    let (status, _) = lt.post("/", hook("failing", failing)).await;
    assert_eq!(status, 200);
    // Nothing listens on port 1: every request is an error.
    let refused =
        json!({"type": "load", "url": "http://127.0.0.1:1/", "rps": "10", "duration": "500ms"});
    let (status, _) = lt.post("/", hook("refused", refused)).await;
    assert_eq!(status, 200);

    // Half-way, about half the requests: paced, not sent in a burst.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let halfway = lt
        .metric(r#"sluice_loadtester_requests_total{namespace="test",name="podinfo"}"#)
        .await;
    assert!(
        (14..=27).contains(&halfway),
        "{halfway} requests after 1 s of 20 rps"
    );

    let running = r#"sluice_loadtester_load_running{namespace="test",name="podinfo"}"#;
    wait_for("the run to end", async || lt.metric(running).await == 0).await;
    let podinfo =
        |series: &str| format!("sluice_loadtester_{series}{{namespace=\"test\",name=\"podinfo\"");
    let sent = lt.metric(&format!("{}}}", podinfo("requests_total"))).await;
    let ok = lt
        .metric(&format!("{},class=\"2xx\"}}", podinfo("responses_total")))
        .await;
    assert!(
        (36..=42).contains(&sent),
        "{sent} requests for 20 rps over 2 s"
    );
    assert_eq!(ok, sent);
    let fail_5xx =
        r#"sluice_loadtester_responses_total{namespace="test",name="failing",class="5xx"}"#;
    wait_for("the failing run", async || lt.metric(fail_5xx).await >= 9).await;
    assert_eq!(
        received.load(Ordering::Relaxed),
        sent + lt.metric(fail_5xx).await
    );
    let errors = r#"sluice_loadtester_errors_total{namespace="test",name="refused"}"#;
    wait_for("the refused run", async || lt.metric(errors).await >= 4).await;
    assert!(lt.metric(errors).await <= 6);
    assert_eq!(
        lt.metric(r#"sluice_loadtester_load_runs_total{namespace="test",name="podinfo"}"#)
            .await,
        1
    );
}

fn alive(pid: u32) -> bool {
    // A zombie has stopped running; only its parent's bookkeeping remains.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn sigterm_stops_commands_and_load() {
    let mut lt = start().await;
    let (url, received) = target().await;
    let dir = std::env::temp_dir().join(format!("sluice-loadtester-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pid");
    // The pid of a grandchild: stopping only the shell would leave it running.
    let cmd = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    lt.post("/", hook("podinfo", json!({"cmd": cmd}))).await;
    let load = json!({"type": "load", "url": format!("{url}/"), "rps": "20", "duration": "1m"});
    lt.post("/", hook("podinfo", load)).await;
    wait_for("the pid file", async || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let sleep_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(sleep_pid));

    let status = Command::new("kill")
        .args(["-TERM", &lt.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = lt.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    wait_for("the grandchild to stop", async || !alive(sleep_pid)).await;
    let after_exit = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received.load(Ordering::Relaxed),
        after_exit,
        "load went on after exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
