//! End-to-end tests of whole releases on the local cluster. They need `hack/cluster.sh up`
//! and run from `hack/e2e.sh` (ignored by a plain `cargo test`):
//!   cargo test --test e2e -- --ignored --test-threads=1

mod catalog;
mod gateway_api;
mod plugin;
mod strategies;
mod support;
mod traffic;
mod zero_loss;

use std::sync::OnceLock;
use std::time::Duration;

use support::*;
use traffic::*;

const CONTROLLER_NS: &str = "sluice-system";

/// Installs the chart once per run: the controller runs as a pod under the chart's
/// ServiceAccount, so every call it makes goes through the chart's RBAC.
fn install_controller() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let helm = std::process::Command::new(root().join("hack/ensure-helm.sh"))
            .output()
            .expect("hack/ensure-helm.sh runs");
        assert!(
            helm.status.success(),
            "building helm failed: {}",
            String::from_utf8_lossy(&helm.stderr)
        );
        let helm = String::from_utf8_lossy(&helm.stdout).trim().to_string();
        // CRDs are applied on their own so that a cluster where they already exist (not
        // owned by this release) works too; `helm lint`/`template` in make test cover the
        // chart's own CRD templates.
        must(
            CONTROLLER_NS,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "crds/",
                "-f",
                "charts/sluice/istio-crds/",
            ],
        );
        let out = std::process::Command::new(&helm)
            .args([
                "upgrade",
                "--install",
                "sluice",
                "charts/sluice",
                "--namespace",
                CONTROLLER_NS,
                "--create-namespace",
                "--set",
                "installCRDs=false",
                "--set",
                "leaseSeconds=6",
                "--set-string",
                "log.level=info\\,sluice=debug",
                // A rebuilt image under the same tag rolls the pod, as a new tag would.
                "--set-string",
                &format!(
                    "podAnnotations.sluice\\.dev/image-archive={}",
                    image_archive_sum("sluice-controller")
                ),
                "--wait",
                "--timeout",
                "180s",
            ])
            .current_dir(root())
            .env("KUBECONFIG", kubeconfig())
            .output()
            .expect("helm runs");
        if !out.status.success() {
            fail(
                CONTROLLER_NS,
                &format!(
                    "helm install failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
    });
}

/// A short content hash of the image archive `make images` wrote for `binary`.
fn image_archive_sum(binary: &str) -> String {
    let index = std::fs::read_to_string(root().join("target/images/index.txt"))
        .expect("target/images/index.txt: run make images (hack/e2e.sh does)");
    let file = index
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, reference)| reference.contains(&format!("/{binary}:")))
        .map(|(file, _)| file.to_string())
        .unwrap_or_else(|| panic!("no image of {binary} in target/images/index.txt"));
    let out = std::process::Command::new("sha256sum")
        .arg(root().join("target/images").join(file))
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(16)
        .collect()
}

/// The catalog app; `ready: false` gives pods whose readiness probe never passes.
fn app_yaml(ns: &str, version: &str, ready: bool) -> String {
    let ready_port = if ready { 3000 } else { 3999 };
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: catalog-settings, namespace: {ns}}}
data: {{greeting: hello}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: catalog, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: catalog}}}}
  template:
    metadata: {{labels: {{app: catalog}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: catalog
        image: ghcr.io/sluice-dev/sluice-demo:v1
        env:
        - {{name: LISTEN, value: "0.0.0.0:3000"}}
        - {{name: VERSION, value: {version}}}
        - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: catalog-settings, key: greeting}}}}}}
        readinessProbe: {{httpGet: {{path: /healthz, port: {ready_port}}}, periodSeconds: 1}}
"#
    )
}

fn canary_yaml(ns: &str, interval: &str, deadline: u32) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: {deadline}
  service: {{name: catalog, port: 80, targetPort: 3000, gateways: [mesh], hosts: [catalog]}}
  analysis:
    interval: {interval}
    threshold: 2
    maxWeight: 50
    stepWeight: 10
    match: [{{sourceLabels: {{app: webapp}}}}]
"#
    )
}

fn status_line(ns: &str) -> Option<(String, i32)> {
    let out = jsonpath(
        ns,
        "canary/catalog-release",
        "{.status.phase} {.status.canaryWeight}",
    )?;
    let mut parts = out.split_whitespace();
    let phase = parts.next()?.to_string();
    let weight = parts.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    Some((phase, weight))
}

/// Canary route weight of the VirtualService's first route.
fn vs_canary_weight(ns: &str) -> Option<i32> {
    jsonpath(
        ns,
        "virtualservice/catalog",
        "{.spec.http[0].route[1].weight}",
    )?
    .trim()
    .parse()
    .ok()
}

fn primary_version(ns: &str) -> Option<String> {
    jsonpath(
        ns,
        "deploy/catalog-primary",
        "{.spec.template.spec.containers[0].env[?(@.name==\"VERSION\")].value}",
    )
}

/// Follows the status until a terminal phase, recording each distinct (phase, weight)
/// and checking the VirtualService carries each Progressing weight.
fn follow_release(ns: &str, timeout: Duration) -> Vec<(String, i32)> {
    let mut seen: Vec<(String, i32)> = vec![];
    wait_for(ns, "the release to finish", timeout, || {
        let line = status_line(ns)?;
        if seen.last() != Some(&line) {
            if line.0 == "Progressing" && line.1 > 0 {
                let vs = vs_canary_weight(ns);
                if vs != Some(line.1) {
                    fail(
                        ns,
                        &format!(
                            "status weight {} but VirtualService canary weight {vs:?}",
                            line.1
                        ),
                    );
                }
            }
            seen.push(line.clone());
        }
        let started = seen.iter().any(|(p, _)| p == "Progressing");
        (started && (line.0 == "Succeeded" || line.0 == "Failed")).then_some(())
    });
    seen
}

/// Sets `revertOnDeletion` on `catalog-release`, with `more_spec` (further fields of a
/// JSON merge patch of `spec`, each after a comma), deletes it once its finalizer is on,
/// and waits until it and its primary are gone.
fn delete_with_revert(ns: &str, more_spec: &str) {
    let patch = format!(r#"{{"spec":{{"revertOnDeletion":true{more_spec}}}}}"#);
    merge_patch(ns, "canary/catalog-release", &patch);
    wait_for(ns, "the revert finalizer", Duration::from_secs(30), || {
        jsonpath(ns, "canary/catalog-release", "{.metadata.finalizers}")?
            .contains("sluice.dev/revert-on-deletion")
            .then_some(())
    });
    must(
        ns,
        &["-n", ns, "delete", "canary/catalog-release", "--wait=false"],
    );
    for (what, resource, secs) in [
        ("the Canary to be gone", "canary/catalog-release", 90),
        ("the primary to be collected", "deploy/catalog-primary", 60),
    ] {
        wait_for(ns, what, Duration::from_secs(secs), || {
            kubectl(&["-n", ns, "get", resource]).is_err().then_some(())
        });
    }
}

fn initialize(ns: &str, interval: &str, deadline: u32) {
    apply_yaml(ns, &app_yaml(ns, "v1", true));
    apply_yaml(ns, &canary_yaml(ns, interval, deadline));
    wait_for(ns, "canary Initialized", Duration::from_secs(120), || {
        (status_line(ns)?.0 == "Initialized").then_some(())
    });
    // `kubectl wait` works on the Promoted condition, as with Flagger.
    must(
        ns,
        &[
            "-n",
            ns,
            "wait",
            "canary/catalog-release",
            "--for=condition=promoted",
            "--timeout=30s",
        ],
    );
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn release_promotes_step_by_step_then_a_broken_version_rolls_back() {
    install_controller();
    let ns = TestNamespace::create("e2e-release");
    let ns = ns.0.as_str();
    initialize(ns, "3s", 30);

    // What the controller created.
    for obj in [
        "deploy/catalog-primary",
        "svc/catalog",
        "svc/catalog-primary",
        "svc/catalog-canary",
        "destinationrule/catalog-primary",
        "destinationrule/catalog-canary",
        "virtualservice/catalog",
    ] {
        must(ns, &["-n", ns, "get", obj]);
    }
    assert_eq!(
        jsonpath(ns, "deploy/catalog", "{.spec.replicas}").as_deref(),
        Some("0")
    );
    assert_eq!(
        jsonpath(
            ns,
            "virtualservice/catalog",
            "{.spec.http[0].match[0].sourceLabels.app}"
        )
        .as_deref(),
        Some("webapp")
    );
    assert_eq!(
        jsonpath(
            ns,
            "virtualservice/catalog",
            "{.spec.http[1].route[0].weight}"
        )
        .as_deref(),
        Some("100")
    );

    // The primary runs on a copy of the ConfigMap.
    assert_eq!(
        jsonpath(ns, "configmap/catalog-settings-primary", "{.data.greeting}").as_deref(),
        Some("hello")
    );
    assert_eq!(
        jsonpath(
            ns,
            "deploy/catalog-primary",
            "{.spec.template.spec.containers[0].env[?(@.name==\"GREETING\")].valueFrom.configMapKeyRef.name}"
        )
        .as_deref(),
        Some("catalog-settings-primary")
    );

    // v2: walks 10..50, promotes, finalises.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v2"],
    );
    let seen = follow_release(ns, Duration::from_secs(180));
    let want: Vec<(String, i32)> = [
        ("Progressing", 0),
        ("Progressing", 10),
        ("Progressing", 20),
        ("Progressing", 30),
        ("Progressing", 40),
        ("Progressing", 50),
        ("Promoting", 0),
        ("Finalising", 0),
        ("Succeeded", 0),
    ]
    .into_iter()
    .map(|(p, w)| (p.to_string(), w))
    .collect();
    if seen != want {
        fail(ns, &format!("phases {seen:?}, want {want:?}"));
    }
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
    assert_eq!(
        jsonpath(ns, "deploy/catalog", "{.spec.replicas}").as_deref(),
        Some("0")
    );
    assert_eq!(vs_canary_weight(ns), Some(0));

    let events = events_of(ns);
    for expected in [
        &format!("New revision detected! Scaling up catalog.{ns}"),
        &format!("Starting canary analysis for catalog.{ns}"),
        &format!("Advance catalog-release.{ns} canary weight 10"),
        &format!("Advance catalog-release.{ns} canary weight 50"),
        &format!("Copying catalog.{ns} template spec to catalog-primary.{ns}"),
        &format!("Routing all traffic to primary catalog-release.{ns}"),
        &format!("Promotion completed! Scaling down catalog.{ns}"),
    ] {
        if !events.contains(expected.as_str()) {
            fail(ns, &format!("event {expected:?} missing from:\n{events}"));
        }
    }

    // v3 never becomes ready: rolled back at the progress deadline, primary untouched.
    apply_yaml(ns, &app_yaml(ns, "v3", false));
    let seen = follow_release(ns, Duration::from_secs(120));
    assert_eq!(seen.first().map(|s| s.0.as_str()), Some("Progressing"));
    assert_eq!(
        seen.last().map(|s| s.0.as_str()),
        Some("Failed"),
        "{seen:?}"
    );
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
    assert_eq!(
        jsonpath(ns, "deploy/catalog", "{.spec.replicas}").as_deref(),
        Some("0")
    );
    assert_eq!(vs_canary_weight(ns), Some(0));
    let promoted = jsonpath(
        ns,
        "canary/catalog-release",
        "{.status.conditions[?(@.type==\"Promoted\")].status}",
    );
    assert_eq!(promoted.as_deref(), Some("False"));

    // The columns users know from Flagger.
    let wide = must(ns, &["-n", ns, "get", "canary", "-o", "wide"]);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "WEIGHT",
            "SUSPENDED",
            "FAILEDCHECKS",
            "INTERVAL",
            "MIRROR",
            "STEPWEIGHT",
            "STEPWEIGHTS",
            "MAXWEIGHT",
            "LASTTRANSITIONTIME"
        ]
    );
    let narrow = must(ns, &["-n", ns, "get", "canary"]);
    let header: Vec<&str> = narrow
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "WEIGHT", "LASTTRANSITIONTIME"]);
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn release_survives_a_controller_restart() {
    install_controller();
    let ns = TestNamespace::create("e2e-restart");
    let ns = ns.0.as_str();
    initialize(ns, "4s", 60);
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v2"],
    );
    wait_for(ns, "weight 20", Duration::from_secs(90), || {
        (status_line(ns)? == ("Progressing".to_string(), 20)).then_some(())
    });
    must(
        ns,
        &[
            "-n",
            CONTROLLER_NS,
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=sluice",
            "--wait=false",
        ],
    );
    let seen = follow_release(ns, Duration::from_secs(180));
    assert_eq!(
        seen.last().map(|s| s.0.as_str()),
        Some("Succeeded"),
        "{seen:?}"
    );
    // Resumed from status: no step repeated, none skipped.
    let weights: Vec<i32> = seen
        .iter()
        .filter(|(p, _)| p == "Progressing")
        .map(|(_, w)| *w)
        .collect();
    assert_eq!(weights, vec![20, 30, 40, 50], "{seen:?}");
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn bad_specs_are_rejected_or_reported() {
    install_controller();
    let ns = TestNamespace::create("e2e-invalid");
    let ns = ns.0.as_str();
    // The schema rejects what it can say.
    let bad = canary_yaml(ns, "3s", 30).replace("stepWeight: 10", "stepWeight: 60");
    let path = std::env::temp_dir().join(format!("{ns}-bad.yaml"));
    std::fs::write(&path, bad).expect("write");
    let err = kubectl(&["apply", "-f", path.to_str().expect("path")])
        .expect_err("stepWeight above maxWeight must be rejected");
    assert!(
        err.contains("analysis.stepWeight must not exceed analysis.maxWeight"),
        "{err}"
    );

    // The controller reports what only it can check, naming the field.
    apply_yaml(ns, &app_yaml(ns, "v1", true));
    apply_yaml(
        ns,
        &canary_yaml(ns, "3s", 30).replace("    stepWeight: 10\n", "    stepWeights: [20, 10]\n"),
    );
    let message = wait_for(
        ns,
        "an InvalidSpec condition",
        Duration::from_secs(60),
        || {
            jsonpath(
                ns,
                "canary/catalog-release",
                "{.status.conditions[?(@.reason==\"InvalidSpec\")].message}",
            )
            .filter(|m| !m.is_empty())
        },
    );
    assert!(message.contains("spec.analysis.stepWeights"), "{message}");
    // Nothing was created for an invalid Canary.
    assert!(kubectl(&["-n", ns, "get", "deploy/catalog-primary"]).is_err());
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn a_changed_config_map_is_a_new_release() {
    install_controller();
    let ns = TestNamespace::create("e2e-config");
    let ns = ns.0.as_str();
    initialize(ns, "2s", 60);
    merge_patch(
        ns,
        "configmap/catalog-settings",
        r#"{"data":{"greeting":"bonjour"}}"#,
    );
    let seen = follow_release(ns, Duration::from_secs(120));
    assert_eq!(
        seen.last().map(|s| s.0.as_str()),
        Some("Succeeded"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(p, w)| p == "Progressing" && *w == 50),
        "{seen:?}"
    );
    assert_eq!(
        jsonpath(ns, "configmap/catalog-settings-primary", "{.data.greeting}").as_deref(),
        Some("bonjour")
    );
    let tracked =
        jsonpath(ns, "canary/catalog-release", "{.status.trackedConfigs}").unwrap_or_default();
    assert!(tracked.contains("ConfigMap/catalog-settings"), "{tracked}");
}

fn demo_app_yaml(ns: &str, tag: &str, extra_env: &str) -> String {
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
      terminationGracePeriodSeconds: 2
      containers:
      - name: catalog
        image: ghcr.io/sluice-dev/sluice-demo:{tag}
        env:
        - {{name: LISTEN, value: "0.0.0.0:3000"}}
        - {{name: NAME, value: catalog}}
        - {{name: CATALOG, value: "true"}}{extra_env}
        readinessProbe: {{httpGet: {{path: /healthz, port: 3000}}, periodSeconds: 1}}
"#
    )
}

fn sluice_canary_yaml(
    ns: &str,
    interval: &str,
    threshold: u32,
    metrics_server: &str,
    extra_metric: &str,
) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: sluice
  metricsServer: "{metrics_server}"
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service: {{name: catalog, port: 80, targetPort: 3000}}
  analysis:
    interval: {interval}
    threshold: {threshold}
    maxWeight: 50
    stepWeight: 10
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 30s}}
    - {{name: request-duration, thresholdRange: {{max: 500}}, interval: 30s}}
{extra_metric}"#
    )
}

/// A MetricTemplate with credentials (the local Prometheus ignores them) and the metric
/// that uses it: the controller reads both from its caches and keeps one client for it.
fn request_rate_template(ns: &str, prometheus: &str) -> (String, &'static str) {
    let objects = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: prom-auth, namespace: {ns}}}
stringData: {{token: not-checked-here}}
---
apiVersion: sluice.dev/v1beta1
kind: MetricTemplate
metadata: {{name: request-rate, namespace: {ns}}}
spec:
  provider: {{type: prometheus, address: "{prometheus}", secretRef: {{name: prom-auth}}}}
  query: 'sum(rate(istio_requests_total{{destination_workload_namespace="{{{{ namespace }}}}",destination_workload="{{{{ target }}}}"}}[{{{{ interval }}}}])) or vector(0)'
"#
    );
    let metric = "    - {name: request-rate, templateRef: {name: request-rate}, thresholdRange: {min: 0}, interval: 30s}\n";
    (objects, metric)
}

fn router_address(ns: &str) -> String {
    wait_for(
        ns,
        "the sluice-router pod to be ready",
        Duration::from_secs(90),
        || {
            let out = jsonpath(
            ns,
            "pods",
            "{range .items[?(@.metadata.labels.app\\.kubernetes\\.io/name==\"sluice-router\")]}{.status.podIP} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        )?;
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(ip, ready)| !ip.is_empty() && *ready == "True")
                .map(|(ip, _)| format!("{ip}:15001"))
        },
    )
}

/// Live traffic through the namespace's sluice-router while v2 is released: all on v1
/// before, the measured share of v2 following each step, all on v2 after, and the checks
/// run on the router's metrics. The load keeps running for what the caller does next.
fn release_v2_under_load(ns: &str) -> Load {
    let router = router_address(ns);
    let load = Load::start(
        router,
        "catalog",
        "/items",
        "imageUrl",
        4,
        Duration::from_secs(420),
    );

    // All traffic on the primary (v1) before the release.
    std::thread::sleep(Duration::from_secs(3));
    let before = load.samples();
    if before.iter().filter(|s| s.ok).count() < 50 || before.iter().any(|s| s.v2) {
        fail(
            ns,
            &format!(
                "before the release: {} answers, {} from v2",
                before.len(),
                before.iter().filter(|s| s.v2).count()
            ),
        );
    }

    must(
        ns,
        &[
            "-n",
            ns,
            "set",
            "image",
            "deploy/catalog",
            "catalog=ghcr.io/sluice-dev/sluice-demo:v2",
        ],
    );
    let steps = timeline(ns, "catalog-release", Duration::from_secs(300));
    let phases: Vec<(String, i32)> = steps.iter().map(|s| (s.phase.clone(), s.weight)).collect();
    if phases.last().map(|p| p.0.as_str()) != Some("Succeeded") {
        fail(ns, &format!("release did not succeed: {phases:?}"));
    }
    check_split(ns, &steps, &load.samples(), "the answers");
    check_promoted(ns, &load, "the answers");
    let analysis =
        jsonpath(ns, "canary/catalog-release", "{.status.lastAnalysis}").unwrap_or_default();
    assert!(analysis.contains("request-success-rate"), "{analysis}");
    load
}

/// A release through sluice-proxy with live traffic: the measured share of v2 follows
/// each step, metrics come from `metrics_server` (empty: the built-in scrape of the
/// router), and a v3 answering half its requests with 500 is rolled back on them.
fn release_through_the_router(
    prefix: &str,
    interval: &str,
    threshold: u32,
    metrics_server: &str,
    template: bool,
) {
    install_controller();
    let ns = TestNamespace::create(prefix);
    let ns = ns.0.as_str();
    apply_yaml(ns, &demo_app_yaml(ns, "v1", ""));
    let (template_objects, extra_metric) = match template {
        true => request_rate_template(ns, metrics_server),
        false => (String::new(), ""),
    };
    if template {
        apply_yaml(ns, &template_objects);
    }
    apply_yaml(
        ns,
        &sluice_canary_yaml(ns, interval, threshold, metrics_server, extra_metric),
    );
    wait_for(ns, "canary Initialized", Duration::from_secs(120), || {
        (status_line(ns)?.0 == "Initialized").then_some(())
    });
    let load = release_v2_under_load(ns);
    if template {
        let passed = jsonpath(
            ns,
            "canary/catalog-release",
            "{.status.lastAnalysis[?(@.name==\"request-rate\")].passed}",
        );
        if passed.as_deref().map(str::trim) != Some("true") {
            let status = jsonpath(ns, "canary/catalog-release", "{.status.lastAnalysis}");
            fail(
                ns,
                &format!("the MetricTemplate check did not pass: {status:?}"),
            );
        }
    }

    // v3 fails half its requests: rolled back at the threshold, primary stays v2.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "ERROR_RATE=0.5"],
    );
    must(
        ns,
        &[
            "-n",
            ns,
            "set",
            "image",
            "deploy/catalog",
            "catalog=ghcr.io/sluice-dev/sluice-demo:v3",
        ],
    );
    let steps = timeline(ns, "catalog-release", Duration::from_secs(240));
    let phases: Vec<(String, i32)> = steps.iter().map(|s| (s.phase.clone(), s.weight)).collect();
    if phases.last().map(|p| p.0.as_str()) != Some("Failed") {
        fail(ns, &format!("v3 was not rolled back: {phases:?}"));
    }
    let image = jsonpath(
        ns,
        "deploy/catalog-primary",
        "{.spec.template.spec.containers[0].image}",
    );
    assert_eq!(image.as_deref(), Some("ghcr.io/sluice-dev/sluice-demo:v2"));
    let failed =
        jsonpath(ns, "canary/catalog-release", "{.status.failedChecks}").unwrap_or_default();
    assert_eq!(failed.trim(), threshold.to_string());
    let events = events_of(ns);
    if !events.contains(&format!(
        "Halt catalog.{ns} advancement request-success-rate"
    )) {
        fail(ns, &format!("no success-rate halt event in:\n{events}"));
    }
    drop(load);
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn router_release_with_builtin_scrape_metrics() {
    release_through_the_router("e2e-scrape", "4s", 2, "", false);
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn router_release_with_prometheus_metrics() {
    let prometheus = std::env::var("SLUICE_PROMETHEUS_POD_URL")
        .unwrap_or_else(|_| "http://10.244.0.1:19090".into());
    release_through_the_router("e2e-prom", "8s", 3, &prometheus, true);
}

fn routing_app_yaml(ns: &str) -> String {
    let deployment = |v: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: catalog-{v}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: catalog, version: {v}}}}}
  template:
    metadata: {{labels: {{app: catalog, version: {v}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: catalog
        image: ghcr.io/sluice-dev/sluice-demo:{v}
        env:
        - {{name: LISTEN, value: "0.0.0.0:3000"}}
        - {{name: NAME, value: catalog}}
        - {{name: CATALOG, value: "true"}}
        readinessProbe: {{httpGet: {{path: /healthz, port: 3000}}, periodSeconds: 1}}
---"#
        )
    };
    format!(
        r#"{}{}
apiVersion: v1
kind: Service
metadata: {{name: catalog, namespace: {ns}}}
spec:
  selector: {{app: catalog}}
  ports: [{{name: http, port: 80, targetPort: 3000}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: catalog, namespace: {ns}}}
spec:
  host: catalog
  subsets:
  - {{name: version-v1, labels: {{version: v1}}}}
  - {{name: version-v2, labels: {{version: v2}}}}
"#,
        deployment("v1"),
        deployment("v2")
    )
}

fn routing_vs(ns: &str, http: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: catalog, namespace: {ns}}}
spec:
  hosts: [catalog]
  gateways: [mesh]
  http:
{http}
"#
    )
}

/// Scenario A: a user's own VirtualService/DestinationRule, applied with kubectl, enforced
/// by sluice-router: dark launch by header, a 90/10 split, mirroring with `-shadow`.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn router_enforces_plain_istio_objects() {
    install_controller();
    let ns = TestNamespace::create("e2e-routing");
    let ns = ns.0.as_str();
    let manifest = std::process::Command::new(root().join("target/debug/sluice-controller"))
        .args([
            "--print-router-manifest",
            ns,
            "--proxy-image",
            &format!(
                "ghcr.io/sluice-dev/sluice-proxy:{}",
                env!("CARGO_PKG_VERSION")
            ),
        ])
        .output()
        .expect("sluice-controller runs");
    assert!(
        manifest.status.success(),
        "{}",
        String::from_utf8_lossy(&manifest.stderr)
    );
    apply_yaml(ns, &String::from_utf8_lossy(&manifest.stdout));
    apply_yaml(ns, &routing_app_yaml(ns));
    apply_yaml(
        ns,
        &routing_vs(
            ns,
            r#"  - match: [{headers: {x-istio-cohort: {exact: internal}}}]
    route: [{destination: {host: catalog, subset: version-v2}}]
  - route:
    - {destination: {host: catalog, subset: version-v1}, weight: 90}
    - {destination: {host: catalog, subset: version-v2}, weight: 10}"#,
        ),
    );
    let router = router_address(ns);
    must(
        ns,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            "deploy/catalog-v1",
            "--timeout=60s",
        ],
    );
    must(
        ns,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            "deploy/catalog-v2",
            "--timeout=60s",
        ],
    );

    // Dark launch: the header goes to v2 once the router has the objects.
    wait_for(
        ns,
        "the header route to reach v2",
        Duration::from_secs(60),
        || {
            let (ok, v2) = count(
                &router,
                "catalog",
                "/items",
                Some(("x-istio-cohort", "internal")),
                "imageUrl",
                20,
            );
            (ok == 20 && v2 == 20).then_some(())
        },
    );
    // 90/10 for everyone else, counted as users do (imageUrl = v2).
    let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 2000);
    let share = 100.0 * v2 as f64 / ok.max(1) as f64;
    eprintln!("90/10 split: {v2} of {ok} answers from v2 ({share:.1}%)");
    if ok < 1990 || (share - 10.0).abs() > tolerance(10, ok) {
        fail(ns, &format!("90/10 split: {v2} of {ok} from v2"));
    }

    // Mirroring: all answers from v1, every request copied to v2 with Host catalog-shadow.
    apply_yaml(
        ns,
        &routing_vs(
            ns,
            r#"  - route: [{destination: {host: catalog, subset: version-v1}, weight: 100}]
    mirror: {host: catalog, subset: version-v2}
    mirrorPercentage: {value: 100.0}"#,
        ),
    );
    let v2_pod = wait_for(ns, "the v2 pod IP", Duration::from_secs(30), || {
        jsonpath(
            ns,
            "pods",
            "{.items[?(@.metadata.labels.version==\"v2\")].status.podIP}",
        )
        .filter(|ip| !ip.trim().is_empty())
        .map(|ip| ip.split_whitespace().next().unwrap_or_default().to_string())
    });
    wait_for(
        ns,
        "mirrored copies to arrive with Host catalog-shadow",
        Duration::from_secs(60),
        || {
            let (ok, v2) = count(&router, "catalog", "/items", None, "imageUrl", 20);
            let received = std::process::Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "3",
                    &format!("http://{v2_pod}:3000/_demo/received"),
                ])
                .output()
                .ok()?;
            let received = String::from_utf8_lossy(&received.stdout);
            (ok == 20 && v2 == 0 && received.contains("catalog-shadow")).then_some(())
        },
    );
}

fn lease_holder() -> Option<String> {
    jsonpath(
        CONTROLLER_NS,
        "lease/sluice-controller",
        "{.spec.holderIdentity}",
    )
    .filter(|h| !h.is_empty())
}

/// The names of the controller's pods.
fn controller_pods() -> Vec<String> {
    must(
        CONTROLLER_NS,
        &[
            "-n",
            CONTROLLER_NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=sluice",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// Two replicas: one leads; when it dies without giving up the lease, the other takes
/// over once the lease expires (6 s in these tests) and releases keep moving.
#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn a_standby_replica_takes_over_when_the_leader_dies() {
    install_controller();
    must(
        CONTROLLER_NS,
        &[
            "-n",
            CONTROLLER_NS,
            "scale",
            "deploy/sluice-controller",
            "--replicas=2",
        ],
    );
    must(
        CONTROLLER_NS,
        &[
            "-n",
            CONTROLLER_NS,
            "rollout",
            "status",
            "deploy/sluice-controller",
            "--timeout=90s",
        ],
    );
    let leader = wait_for(
        CONTROLLER_NS,
        "a leader",
        Duration::from_secs(30),
        lease_holder,
    );
    let pods = controller_pods();
    assert!(
        pods.contains(&leader),
        "leader {leader} is not one of {pods:?}"
    );

    let ns = TestNamespace::create("e2e-leader");
    let ns = ns.0.as_str();
    let started = std::time::Instant::now();
    must(
        CONTROLLER_NS,
        &[
            "-n",
            CONTROLLER_NS,
            "delete",
            "pod",
            &leader,
            "--grace-period=0",
            "--force",
        ],
    );
    let next = wait_for(
        CONTROLLER_NS,
        "a new leader",
        Duration::from_secs(30),
        || lease_holder().filter(|h| *h != leader),
    );
    let took = started.elapsed();
    eprintln!("leadership moved from {leader} to {next} in {took:?}");
    // Lease 6 s + one renew period (2 s) + polling.
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");

    // The new leader runs releases.
    initialize(ns, "2s", 60);
    must(
        CONTROLLER_NS,
        &[
            "-n",
            CONTROLLER_NS,
            "scale",
            "deploy/sluice-controller",
            "--replicas=1",
        ],
    );
}
