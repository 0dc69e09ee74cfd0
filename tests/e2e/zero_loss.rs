//! Zero failed requests: a client pod (sluice-loadtester's load generator) calls the
//! service by its name at 250 requests/s, through cluster DNS, kube-proxy and the
//! sluice-router, and every answer that is not 2xx and every request without an answer is
//! counted, across the adoption of a Service that was live before its Canary, a whole
//! release, a router rollout and the deletion of a router pod during a release, and a
//! controller restart mid-release. The goal is 0 in each window. Then router objects
//! deleted by hand come back, and the router is removed once no Canary uses it.
//!
//! The app follows the usual zero-downtime practice of a healthy version: a preStop
//! sleep, so a pod being replaced keeps serving while the endpoints catch up.

use std::time::{Duration, Instant};

use super::support::*;
use super::{controller_pods, install_controller, status_line, CONTROLLER_NS};

const RPS: u32 = 250;

fn app_yaml(ns: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: catalog, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: catalog}}}}
  template:
    metadata: {{labels: {{app: catalog}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: catalog
        image: ghcr.io/sluice-dev/sluice-demo:v1
        env:
        - {{name: LISTEN, value: "0.0.0.0:3000"}}
        - {{name: NAME, value: catalog}}
        - {{name: CATALOG, value: "true"}}
        - {{name: VERSION, value: v1}}
        readinessProbe: {{httpGet: {{path: /healthz, port: 3000}}, periodSeconds: 1}}
        lifecycle: {{preStop: {{sleep: {{seconds: 3}}}}}}
---
# Live before its Canary: the first release adopts it.
apiVersion: v1
kind: Service
metadata: {{name: catalog, namespace: {ns}}}
spec:
  selector: {{app: catalog}}
  ports: [{{name: http, port: 80, targetPort: 3000}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: loadtester, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: loadtester}}}}
  template:
    metadata: {{labels: {{app: loadtester}}}}
    spec:
      containers:
      - name: loadtester
        image: ghcr.io/sluice-dev/sluice-loadtester:0.1.0
        args: [--listen, "0.0.0.0:8080"]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

fn canary_yaml(ns: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 120
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: 6s
    threshold: 2
    maxWeight: 60
    stepWeight: 20
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 30s}}
"#
    )
}

/// The load generator's counters for this test's run.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    requests: f64,
    ok: f64,
    failed: f64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, before: Counts) -> Counts {
        Counts {
            requests: self.requests - before.requests,
            ok: self.ok - before.ok,
            failed: self.failed - before.failed,
        }
    }
}

fn counts(loadtester: &str) -> Option<Counts> {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "3",
            &format!("http://{loadtester}/metrics"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = |name: &str, filter: &dyn Fn(&str) -> bool| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("name=\"zero\"") && filter(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let requests = sum("sluice_loadtester_requests_total", &|_| true);
    let ok = sum("sluice_loadtester_responses_total", &|l| {
        l.contains("class=\"2xx\"")
    });
    let not_ok = sum("sluice_loadtester_responses_total", &|l| {
        !l.contains("class=\"2xx\"")
    });
    let errors = sum("sluice_loadtester_errors_total", &|_| true);
    (out.status.success()).then_some(Counts {
        requests,
        ok,
        failed: not_ok + errors,
    })
}

/// One measured window: what happened, the counts, and how long it took.
struct Window {
    what: &'static str,
    counts: Counts,
    seconds: f64,
}

struct Recorder {
    loadtester: String,
    ns: String,
    last: Counts,
    since: Instant,
    windows: Vec<Window>,
}

impl Recorder {
    fn close(&mut self, what: &'static str) {
        let now = wait_for(
            &self.ns,
            "the load generator's counters",
            Duration::from_secs(10),
            || counts(&self.loadtester),
        );
        self.windows.push(Window {
            what,
            counts: now - self.last,
            seconds: self.since.elapsed().as_secs_f64(),
        });
        eprintln!(
            "zero-loss window {what}: {:.0} requests, {:.0} failed in {:.1}s",
            (now - self.last).requests,
            (now - self.last).failed,
            self.since.elapsed().as_secs_f64()
        );
        self.last = now;
        self.since = Instant::now();
    }
}

fn wait_weight(ns: &str, weight: i32) {
    wait_for(
        ns,
        &format!("weight {weight}"),
        Duration::from_secs(120),
        || {
            let (phase, w) = status_line(ns)?;
            (phase == "Progressing" && w >= weight).then_some(())
        },
    );
}

fn wait_phase(ns: &str, phase: &str, timeout: Duration) {
    wait_for(ns, &format!("phase {phase}"), timeout, || {
        (status_line(ns)?.0 == phase).then_some(())
    });
}

fn ready_routers(ns: &str) -> usize {
    jsonpath(
        ns,
        "deploy/sluice-router",
        "{.status.updatedReplicas} {.status.readyReplicas} {.status.replicas}",
    )
    .map(|out| {
        let n: Vec<usize> = out
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // Rolled out: every replica updated and ready, none left over.
        match n.as_slice() {
            [updated, ready, total] if updated == ready && ready == total => *ready,
            _ => 0,
        }
    })
    .unwrap_or(0)
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn no_request_fails_across_adoption_releases_router_disruptions_and_a_controller_restart() {
    install_controller();
    let ns = TestNamespace::create("e2e-zero");
    let ns = ns.0.as_str();
    apply_yaml(ns, &app_yaml(ns));
    let loadtester = ready_pod_address(ns, "loadtester", 8080);
    ready_pod_address(ns, "catalog", 3000);
    let payload = serde_json::json!({
        "name": "zero",
        "namespace": ns,
        "metadata": {
            "type": "load",
            "url": format!("http://catalog.{ns}/items"),
            "rps": RPS.to_string(),
            "duration": "20m",
            "concurrency": "16",
            "requestTimeout": "5s",
        }
    });
    let started = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", "-d", &payload.to_string()])
        .arg(format!("http://{loadtester}/"))
        .output()
        .expect("curl runs");
    assert!(
        started.status.success(),
        "starting the load: {}",
        String::from_utf8_lossy(&started.stdout)
    );
    let first = wait_for(ns, "the load to flow", Duration::from_secs(30), || {
        counts(&loadtester).filter(|c| c.ok >= 500.0)
    });
    let mut recorder = Recorder {
        loadtester: loadtester.clone(),
        ns: ns.to_string(),
        last: first,
        since: Instant::now(),
        windows: Vec::new(),
    };

    // Adoption: the live Service moves to the router, the target's pods to the primary.
    apply_yaml(ns, &canary_yaml(ns));
    wait_phase(ns, "Initialized", Duration::from_secs(150));
    wait_for(
        ns,
        "the target scaled to 0",
        Duration::from_secs(60),
        || {
            let replicas = jsonpath(ns, "deploy/catalog", "{.status.replicas}")?;
            matches!(replicas.trim(), "" | "0").then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    recorder.close("adoption of the live Service");

    // A healthy release, with a router rollout and a router pod deleted on the way.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v2"],
    );
    wait_weight(ns, 20);
    recorder.close("release v2 until weight 20");
    must(
        ns,
        &["-n", ns, "rollout", "restart", "deploy/sluice-router"],
    );
    std::thread::sleep(Duration::from_secs(2));
    wait_for(ns, "the router rollout", Duration::from_secs(90), || {
        (ready_routers(ns) == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    recorder.close("router rollout (new pod template) during the release");
    let pod = must(
        ns,
        &[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=sluice-router",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    must(ns, &["-n", ns, "delete", "pod", pod.trim(), "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    wait_for(
        ns,
        "the deleted router pod replaced",
        Duration::from_secs(90),
        || (ready_routers(ns) == 2).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3));
    recorder.close("one router pod deleted during the release");
    wait_phase(ns, "Succeeded", Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(5));
    recorder.close("release v2 to Succeeded");

    // The controller restarts mid-release.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v3"],
    );
    wait_weight(ns, 20);
    // Down for longer than the interval (6 s), so the new controller's first reconcile
    // is due a check while its scrape holds one sample, as after a leader's lease ran
    // out: it waits for a window instead of counting that check as failed.
    let scale = |replicas: &str| {
        must(
            ns,
            &[
                "-n",
                CONTROLLER_NS,
                "scale",
                "deploy/sluice-controller",
                &format!("--replicas={replicas}"),
            ],
        );
    };
    scale("0");
    wait_for(
        ns,
        "the controller stopped",
        Duration::from_secs(60),
        || controller_pods().is_empty().then_some(()),
    );
    std::thread::sleep(Duration::from_secs(8));
    scale("1");
    wait_phase(ns, "Succeeded", Duration::from_secs(240));
    let events = events_of(ns);
    if !events.contains(&format!("Waiting for catalog-release.{ns}'s metrics")) {
        fail(
            ns,
            &format!("the new controller judged a check on one sample:\n{events}"),
        );
    }
    let failed_checks = must(
        ns,
        &[
            "-n",
            ns,
            "get",
            "canary/catalog-release",
            "-o",
            "jsonpath={.status.failedChecks}",
        ],
    );
    if !matches!(failed_checks.trim(), "" | "0") {
        fail(
            ns,
            &format!("the release across a controller restart had {failed_checks} failed checks"),
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    recorder.close("release v3 with a controller restart");

    let total: f64 = recorder.windows.iter().map(|w| w.counts.requests).sum();
    let seconds: f64 = recorder.windows.iter().map(|w| w.seconds).sum();
    let failed: Vec<String> = recorder
        .windows
        .iter()
        .filter(|w| w.counts.failed > 0.0)
        .map(|w| {
            format!(
                "{}: {:.0} of {:.0}",
                w.what, w.counts.failed, w.counts.requests
            )
        })
        .collect();
    eprintln!(
        "zero-loss: {total:.0} requests in {seconds:.0}s ({:.0}/s), failed: {failed:?}",
        total / seconds
    );
    if total / seconds < 200.0 {
        fail(
            ns,
            &format!(
                "the load ran at {:.0}/s, not at least 200/s",
                total / seconds
            ),
        );
    }
    if !failed.is_empty() {
        fail(ns, &format!("requests failed: {failed:?}"));
    }

    // Router objects deleted by hand come back without a controller restart.
    must(
        ns,
        &[
            "-n",
            ns,
            "delete",
            "role,deployment",
            "sluice-router",
            "--wait=true",
        ],
    );
    wait_for(
        ns,
        "the router Deployment and Role back",
        Duration::from_secs(120),
        || {
            let back = kubectl(&[
                "-n",
                ns,
                "get",
                "role/sluice-router",
                "deploy/sluice-router",
            ])
            .is_ok();
            (back && ready_routers(ns) == 2).then_some(())
        },
    );
    // No Canary uses the router any more: it is removed.
    must(
        ns,
        &[
            "-n",
            ns,
            "delete",
            "canary",
            "catalog-release",
            "--wait=true",
        ],
    );
    wait_for(
        ns,
        "the unused router removed",
        Duration::from_secs(120),
        || {
            let left = kubectl(&[
                "-n",
                ns,
                "get",
                "deploy,role,rolebinding,serviceaccount,poddisruptionbudget",
                "-l",
                "sluice.dev/router=for-canaries",
                "-o",
                "name",
            ])
            .ok()?;
            left.trim().is_empty().then_some(())
        },
    );
}
