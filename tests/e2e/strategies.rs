//! Strategies and gates on the local cluster: an A/B release through sluice-proxy held
//! by a confirm-rollout gate, with pre-rollout, rollout, post-rollout and event hooks and
//! alerts, all answered by a receiver this test runs on the pod network's host address.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::support::*;
use super::traffic::count;
use super::{demo_app_yaml, install_controller, router_address, status_line};

/// Records every POST by path; `/gate` and `/rollback` answer 200 when open, else 403.
struct Receiver {
    address: String,
    gate_open: Arc<AtomicBool>,
    rollback_open: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        // Pods reach the host on the bridge address of the project's pod network.
        let host = std::env::var("SLUICE_PROMETHEUS_POD_URL")
            .ok()
            .and_then(|u| {
                u.trim_start_matches("http://")
                    .split(':')
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "10.244.0.1".into());
        let listener = TcpListener::bind(format!("{host}:0")).expect("bind on the bridge address");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let gate_open = Arc::new(AtomicBool::new(false));
        let rollback_open = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(vec![]));
        let (gate, rollback, log) = (gate_open.clone(), rollback_open.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (gate, rollback, log) = (gate.clone(), rollback.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &gate, &rollback, &log);
                });
            }
        });
        Receiver {
            address,
            gate_open,
            rollback_open,
            received,
        }
    }

    fn bodies(&self, path: &str) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn serve(
    stream: std::net::TcpStream,
    gate: &AtomicBool,
    rollback: &AtomicBool,
    log: &Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    log.lock()
        .unwrap()
        .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
    let closed = match path.as_str() {
        "/gate" => !gate.load(Ordering::SeqCst),
        "/rollback" => !rollback.load(Ordering::SeqCst),
        _ => false,
    };
    let status = if closed { "403 Forbidden" } else { "200 OK" };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

/// Waits until the Canary's status shows `phase`.
fn wait_phase(ns: &str, phase: &str, secs: u64) {
    wait_for(
        ns,
        &format!("phase {phase}"),
        Duration::from_secs(secs),
        || (status_line(ns)?.0 == phase).then_some(()),
    );
}

/// A new release of the demo app: its image tag changes.
fn set_demo_image(ns: &str, tag: &str) {
    must(
        ns,
        &[
            "-n",
            ns,
            "set",
            "image",
            "deploy/catalog",
            &format!("catalog=ghcr.io/sluice-dev/sluice-demo:{tag}"),
        ],
    );
}

fn ab_canary_yaml(ns: &str, hooks: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: AlertProvider
metadata: {{name: on-call, namespace: {ns}}}
spec: {{type: webhook, address: "{hooks}/alert"}}
---
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 3s
    threshold: 2
    iterations: 3
    match: [{{headers: {{x-canary: {{exact: insider}}}}}}]
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 30s, onNoData: skip}}
    webhooks:
    - {{name: approval, type: confirm-rollout, url: "{hooks}/gate"}}
    - {{name: smoke, type: pre-rollout, url: "{hooks}/pre", metadata: {{suite: smoke}}}}
    - {{name: load, type: rollout, url: "{hooks}/rollout"}}
    - {{name: report, type: post-rollout, url: "{hooks}/post"}}
    - {{name: audit, type: event, url: "{hooks}/event"}}
    alerts:
    - {{name: on-call, severity: info, providerRef: {{name: on-call}}}}
"#
    )
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn ab_release_waits_at_its_gate_routes_the_header_and_calls_every_hook() {
    install_controller();
    let receiver = Receiver::start();
    let ns = TestNamespace::create("e2e-ab");
    let ns = ns.0.as_str();
    apply_yaml(ns, &demo_app_yaml(ns, "v1", ""));
    apply_yaml(ns, &ab_canary_yaml(ns, &receiver.address));
    wait_phase(ns, "Initialized", 120);
    let router = router_address(ns);

    set_demo_image(ns, "v2");
    // The gate is closed: Waiting, and the target stays scaled to zero.
    wait_phase(ns, "Waiting", 60);
    std::thread::sleep(Duration::from_secs(4));
    let replicas = jsonpath(ns, "deploy/catalog", "{.spec.replicas}").unwrap_or_default();
    assert_eq!(
        replicas.trim(),
        "0",
        "target scaled up behind a closed gate"
    );
    assert!(!receiver.bodies("/gate").is_empty());

    receiver.gate_open.store(true, Ordering::SeqCst);
    // During the iterations the header reaches v2 and everyone else stays on v1.
    wait_for(
        ns,
        "the header route to reach v2",
        Duration::from_secs(90),
        || {
            let iterations: i32 = jsonpath(ns, "canary/catalog-release", "{.status.iterations}")?
                .trim()
                .parse()
                .ok()?;
            if iterations < 1 {
                return None;
            }
            let (ok, v2) = count(
                &router,
                "catalog",
                "/items",
                Some(("x-canary", "insider")),
                "imageUrl",
                20,
            );
            (ok == 20 && v2 == 20).then_some(())
        },
    );
    let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 50);
    let phase = status_line(ns).map(|l| l.0).unwrap_or_default();
    if phase == "Progressing" && (ok < 50 || v2 > 0) {
        fail(
            ns,
            &format!("without the header {v2} of {ok} answers came from v2"),
        );
    }
    wait_phase(ns, "Succeeded", 120);

    let pre = receiver.bodies("/pre");
    assert_eq!(pre.len(), 1, "pre-rollout calls: {pre:?}");
    assert!(pre[0].contains("\"suite\":\"smoke\""), "{}", pre[0]);
    assert!(
        pre[0].contains(&format!("\"namespace\":\"{ns}\"")),
        "{}",
        pre[0]
    );
    assert!(
        receiver.bodies("/rollout").len() >= 3,
        "one rollout hook per iteration"
    );
    wait_for(ns, "the post-rollout hook", Duration::from_secs(20), || {
        let post = receiver.bodies("/post");
        (post.len() == 1 && post[0].contains("Succeeded")).then_some(())
    });
    // Event and alert hooks are sent on their own, after the phase changes: each is
    // waited for, not expected the moment the post-rollout hook arrives.
    for message in [
        "New revision detected",
        "Advance catalog-release",
        "Promotion completed",
    ] {
        wait_for(
            ns,
            &format!("an event hook with {message:?}"),
            Duration::from_secs(20),
            || {
                receiver
                    .bodies("/event")
                    .iter()
                    .any(|b| b.contains(message))
                    .then_some(())
            },
        );
    }
    let alert_messages = || -> Vec<String> {
        receiver
            .bodies("/alert")
            .iter()
            .filter_map(|b| serde_json::from_str::<BTreeMap<String, serde_json::Value>>(b).ok())
            .filter_map(|a| a.get("message")?.as_str().map(str::to_string))
            .collect()
    };
    for wanted in [
        "waiting for approval",
        "New revision detected",
        "Promotion completed",
    ] {
        wait_for(
            ns,
            &format!("an alert with {wanted:?}"),
            Duration::from_secs(20),
            || {
                alert_messages()
                    .iter()
                    .any(|m| m.contains(wanted))
                    .then_some(())
            },
        );
    }
}

/// revertOnDeletion: deleting the Canary scales the target back up and leaves the apex
/// Service selecting it, and its gateway's VirtualService sending every request there;
/// the primary goes.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn deleting_a_canary_with_revert_on_deletion_gives_the_app_back() {
    install_controller();
    let ns = TestNamespace::create("e2e-revert");
    let ns = ns.0.as_str();
    super::initialize(ns, "2s", 60);
    let replicas = jsonpath(ns, "deploy/catalog", "{.spec.replicas}").unwrap_or_default();
    assert_eq!(replicas.trim(), "0");
    super::delete_with_revert(ns, r#","service":{"gateways":["edge-gateway","mesh"]}"#);
    let ready = jsonpath(ns, "deploy/catalog", "{.status.readyReplicas}").unwrap_or_default();
    assert_eq!(ready.trim(), "2", "target replicas after the revert");
    let selector = jsonpath(ns, "service/catalog", "{.spec.selector.app}");
    assert_eq!(selector.as_deref().map(str::trim), Some("catalog"));
    let owners = jsonpath(ns, "service/catalog", "{.metadata.ownerReferences}").unwrap_or_default();
    assert!(
        owners.trim().is_empty(),
        "apex Service still owned: {owners}"
    );
    let handed_back = |path: &str| jsonpath(ns, "virtualservice/catalog", path).unwrap_or_default();
    assert_eq!(handed_back("{.metadata.ownerReferences}"), "");
    assert_eq!(handed_back("{.spec.gateways}"), r#"["edge-gateway"]"#);
    assert_eq!(
        handed_back("{range .spec.http[*]}{.route[*].destination.host}{\";\"}{end}"),
        "catalog;"
    );
}

fn blue_green_canary_yaml(ns: &str, hooks: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 3s
    threshold: 2
    iterations: 3
    mirror: true
    webhooks:
    - {{name: approval, type: confirm-promotion, url: "{hooks}/gate"}}
    - {{name: stop, type: rollback, url: "{hooks}/rollback"}}
"#
    )
}

/// Blue/Green with mirroring: the canary gets copies (Host `catalog-shadow`) while users
/// stay on v1, the run waits for promotion approval, then all traffic switches; the next
/// release is rolled back by a rollback webhook.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn blue_green_mirrors_waits_for_approval_and_a_rollback_hook_aborts_the_next() {
    install_controller();
    let receiver = Receiver::start();
    let ns = TestNamespace::create("e2e-bluegreen");
    let ns = ns.0.as_str();
    apply_yaml(ns, &demo_app_yaml(ns, "v1", ""));
    apply_yaml(ns, &blue_green_canary_yaml(ns, &receiver.address));
    wait_phase(ns, "Initialized", 120);
    let router = router_address(ns);
    set_demo_image(ns, "v2");
    wait_for(
        ns,
        "the mirror on the route",
        Duration::from_secs(90),
        || {
            let host = jsonpath(ns, "virtualservice/catalog", "{.spec.http[0].mirror.host}")?;
            (host.trim() == "catalog-canary").then_some(())
        },
    );
    // Users get v1; the canary pods receive the copies.
    let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 40);
    assert_eq!((ok, v2), (40, 0), "answers while mirroring");
    let canary_pods = wait_for(ns, "the canary pod IPs", Duration::from_secs(30), || {
        jsonpath(
            ns,
            "pods",
            "{.items[?(@.metadata.labels.app==\"catalog\")].status.podIP}",
        )
        .filter(|ips| !ips.trim().is_empty())
    });
    wait_for(
        ns,
        "mirrored copies at the canary",
        Duration::from_secs(30),
        || {
            count(&router, "catalog", "/items", None, "imageUrl", 10);
            canary_pods.split_whitespace().find_map(|ip| {
                let out = std::process::Command::new("curl")
                    .args([
                        "-s",
                        "--max-time",
                        "3",
                        &format!("http://{ip}:3000/_demo/received"),
                    ])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains("catalog-shadow")
                    .then_some(())
            })
        },
    );

    wait_phase(ns, "WaitingPromotion", 90);
    let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 20);
    assert_eq!((ok, v2), (20, 0), "answers while waiting for approval");
    receiver.gate_open.store(true, Ordering::SeqCst);
    wait_phase(ns, "Succeeded", 120);
    let events = events_of(ns);
    for wanted in [
        "waiting for promotion approval",
        "Routing all traffic to canary",
    ] {
        assert!(events.contains(wanted), "no event {wanted:?} in\n{events}");
    }
    let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 20);
    assert_eq!((ok, v2), (20, 20), "answers after promotion");

    // The next release: a rollback hook answering 200 aborts it.
    set_demo_image(ns, "v3");
    wait_phase(ns, "Progressing", 60);
    receiver.rollback_open.store(true, Ordering::SeqCst);
    wait_phase(ns, "Failed", 60);
    assert!(events_of(ns).contains("manual webhook invoked"));
    let image = jsonpath(
        ns,
        "deploy/catalog-primary",
        "{.spec.template.spec.containers[0].image}",
    );
    assert_eq!(image.as_deref(), Some("ghcr.io/sluice-dev/sluice-demo:v2"));
}

/// One request through the router with curl: (status line and headers, body).
fn curl_router(router: &str, cookie: Option<&str>) -> Option<(String, String)> {
    let mut args = vec![
        "-s".to_string(),
        "-i".to_string(),
        "--max-time".to_string(),
        "3".to_string(),
        "-H".to_string(),
        "Host: catalog".to_string(),
    ];
    if let Some(cookie) = cookie {
        args.push("-H".into());
        args.push(format!("Cookie: {cookie}"));
    }
    args.push(format!("http://{router}/items"));
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n")?;
    Some((head.to_string(), body.to_string()))
}

fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .map(|l| l["set-cookie:".len()..].trim().to_string())
}

/// Session affinity through sluice-proxy: a client the canary answered gets a cookie and
/// stays on the canary; after promotion the primary expires the cookie.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn session_affinity_keeps_a_canary_client_on_the_canary() {
    install_controller();
    let receiver = Receiver::start();
    let ns = TestNamespace::create("e2e-affinity");
    let ns = ns.0.as_str();
    apply_yaml(ns, &demo_app_yaml(ns, "v1", ""));
    apply_yaml(
        ns,
        &format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 3s
    threshold: 2
    maxWeight: 20
    stepWeight: 20
    sessionAffinity: {{cookieName: catalog-canary, maxAge: 600}}
    webhooks:
    - {{name: approval, type: confirm-promotion, url: "{}/gate"}}
"#,
            receiver.address
        ),
    );
    wait_phase(ns, "Initialized", 120);
    let router = router_address(ns);
    set_demo_image(ns, "v2");
    // Held at weight 20 by the closed promotion gate.
    wait_phase(ns, "WaitingPromotion", 90);
    let cookie = wait_for(
        ns,
        "a canary answer with a cookie",
        Duration::from_secs(60),
        || {
            let (head, body) = curl_router(&router, None)?;
            if !body.contains("imageUrl") {
                return None;
            }
            set_cookie(&head)
        },
    );
    assert!(cookie.contains("Max-Age=600"), "{cookie}");
    let pair = cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    for _ in 0..20 {
        let (_, body) = curl_router(&router, Some(&pair)).expect("router answers");
        assert!(
            body.contains("imageUrl"),
            "a client with {pair} left the canary"
        );
    }

    receiver.gate_open.store(true, Ordering::SeqCst);
    wait_phase(ns, "Succeeded", 120);
    let expired = wait_for(
        ns,
        "the cookie to be expired",
        Duration::from_secs(30),
        || {
            let (head, _) = curl_router(&router, Some(&pair))?;
            set_cookie(&head).filter(|c| c.contains("Max-Age=-1"))
        },
    );
    assert!(expired.starts_with("catalog-canary="), "{expired}");
}

/// The VirtualService states a canary release with a mirroring step and
/// stepWeightPromotion goes through, behind a confirm-traffic-increase gate.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn canary_mirrors_first_and_moves_back_to_the_primary_step_by_step() {
    install_controller();
    let receiver = Receiver::start();
    let ns = TestNamespace::create("e2e-mirror");
    let ns = ns.0.as_str();
    apply_yaml(ns, &super::app_yaml(ns, "v1", true));
    apply_yaml(
        ns,
        &format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 3s
    threshold: 2
    maxWeight: 40
    stepWeight: 20
    stepWeightPromotion: 20
    mirror: true
    mirrorWeight: 50
    webhooks:
    - {{name: more, type: confirm-traffic-increase, url: "{}/gate"}}
"#,
            receiver.address
        ),
    );
    wait_phase(ns, "Initialized", 120);
    apply_yaml(ns, &super::app_yaml(ns, "v2", true));
    wait_phase(ns, "Progressing", 60);
    // Held before the mirroring step by the closed gate.
    std::thread::sleep(Duration::from_secs(7));
    let held = vs_state(ns);
    assert_eq!(held, Some((None, 0)), "VirtualService behind a closed gate");
    receiver.gate_open.store(true, Ordering::SeqCst);

    // (mirror percentage, canary weight) of the first route, each distinct state in order.
    let mut states: Vec<(Option<String>, i32)> = vec![];
    wait_for(
        ns,
        "the release to succeed",
        Duration::from_secs(120),
        || {
            if let Some(state) = vs_state(ns) {
                if states.last() != Some(&state) {
                    states.push(state);
                }
            }
            (status_line(ns)?.0 == "Succeeded").then_some(())
        },
    );
    let want: Vec<(Option<String>, i32)> = vec![
        (None, 0),
        (Some("50".into()), 0),
        (None, 20),
        (None, 40),
        (None, 20),
        (None, 0),
    ];
    assert_eq!(states, want, "VirtualService states");
}

fn vs_state(ns: &str) -> Option<(Option<String>, i32)> {
    let out = jsonpath(
        ns,
        "virtualservice/catalog",
        "{.spec.http[0].mirrorPercentage.value} {.spec.http[0].route[1].weight}",
    )?;
    let mut parts: Vec<&str> = out.split_whitespace().collect();
    let weight = parts.pop()?.parse().ok()?;
    Some((parts.first().map(|p| p.to_string()), weight))
}

/// The load tester in the cluster: its built-in load generator is the only traffic the
/// analysis sees (so without it the success rate would have no data), and its gate holds
/// the promotion until it is opened over HTTP.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn load_tester_generates_the_analysis_traffic_and_gates_the_promotion() {
    install_controller();
    let ns = TestNamespace::create("e2e-loadtester");
    let ns = ns.0.as_str();
    let tag = env!("CARGO_PKG_VERSION");
    apply_yaml(
        ns,
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sluice-loadtester, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: sluice-loadtester}}}}
  template:
    metadata: {{labels: {{app: sluice-loadtester}}}}
    spec:
      containers:
      - name: loadtester
        image: ghcr.io/sluice-dev/sluice-loadtester:{tag}
        env: [{{name: LISTEN, value: "0.0.0.0:8080"}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#
        ),
    );
    apply_yaml(ns, &demo_app_yaml(ns, "v1", ""));
    let canary = |hooks: &str| {
        format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 4s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 30s}}
{hooks}"#
        )
    };
    apply_yaml(ns, &canary(""));
    wait_phase(ns, "Initialized", 120);
    let router = router_address(ns);
    must(
        ns,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            "deploy/sluice-loadtester",
            "--timeout=60s",
        ],
    );
    let tester = wait_for(ns, "the load tester pod", Duration::from_secs(60), || {
        jsonpath(
            ns,
            "pods",
            "{.items[?(@.metadata.labels.app==\"sluice-loadtester\")].status.podIP}",
        )
        .map(|ip| ip.trim().to_string())
        .filter(|ip| !ip.is_empty())
    });
    let hooks = format!(
        r#"    webhooks:
    - name: load
      type: rollout
      url: http://{tester}:8080/
      metadata:
        type: load
        url: http://{router}/items
        headers: "Host: catalog"
        rps: "20"
        duration: 2m
    - {{name: approval, type: confirm-promotion, url: "http://{tester}:8080/gate/check"}}
"#
    );
    apply_yaml(ns, &canary(&hooks));
    set_demo_image(ns, "v2");
    wait_for(
        ns,
        "phase WaitingPromotion",
        Duration::from_secs(120),
        || {
            let (phase, _) = status_line(ns)?;
            if phase == "Failed" {
                fail(ns, "rolled back before the promotion gate");
            }
            (phase == "WaitingPromotion").then_some(())
        },
    );
    let analysis =
        jsonpath(ns, "canary/catalog-release", "{.status.lastAnalysis}").unwrap_or_default();
    assert!(
        analysis.contains("request-success-rate") && analysis.contains("\"passed\":true"),
        "{analysis}"
    );
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-d",
            &format!(r#"{{"name":"catalog-release","namespace":"{ns}"}}"#),
            &format!("http://{tester}:8080/gate/open"),
        ])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "opening the gate failed");
    wait_phase(ns, "Succeeded", 120);
    let metrics = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("http://{tester}:8080/metrics"),
        ])
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let sent: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_loadtester_requests_total{") && l.contains(ns))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        sent >= 100.0,
        "the load generator sent {sent} requests:\n{metrics}"
    );
}
