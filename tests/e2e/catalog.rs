//! Our users' own material, as the README has them apply it: webapp calls
//! `http://catalog/items` by its Service name (cluster DNS, kube-proxy, the apex Service,
//! sluice-router) while catalog is released. The Canary routes only webapp's calls
//! through the steps (`match: [{sourceLabels: {app: webapp}}]`): the router knows the
//! calling pod by its address. webapp's split follows the weight at each step, a second
//! caller without the label stays on the primary, and a faulty version is rolled back.

use std::time::{Duration, Instant};

use super::support::*;
use super::traffic::*;
use super::{install_controller, status_line};

const NS: &str = "istioinaction";

/// `examples/catalog/canary.yaml` with the changes this test needs, each said here:
/// - `provider: sluice`: there is no Istio here, sluice-router enforces the routes;
/// - a 5 s interval and threshold 2 instead of 45 s and 5, so the release takes
///   seconds, not minutes.
///
/// The `sourceLabels` match stays as shipped.
fn canary_for_this_cluster() -> String {
    let text = std::fs::read_to_string(root().join("examples/catalog/canary.yaml"))
        .expect("examples/catalog/canary.yaml");
    let edited = text
        .replace(
            "spec:\n  targetRef:",
            "spec:\n  provider: sluice\n  targetRef:",
        )
        .replace("    interval: 45s\n", "    interval: 5s\n")
        .replace("    threshold: 5\n", "    threshold: 2\n");
    for (what, changed) in [
        ("provider", edited.contains("provider: sluice")),
        ("interval", edited.contains("interval: 5s")),
        ("threshold", edited.contains("threshold: 2")),
        (
            "the match",
            edited.contains("    match:\n    - sourceLabels: {app: webapp}\n"),
        ),
    ] {
        assert!(
            changed,
            "examples/catalog/canary.yaml changed: could not find {what}"
        );
    }
    edited
}

/// A second caller of catalog, without webapp's label: sluice-demo calling
/// `http://catalog/items` on each request, as webapp does.
const STOREFRONT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: storefront, namespace: istioinaction, labels: {app: storefront}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: storefront
    image: ghcr.io/sluice-dev/sluice-demo:v1
    env:
    - {name: LISTEN, value: "0.0.0.0:8080"}
    - {name: NAME, value: storefront}
    - {name: UPSTREAM_URIS, value: "http://catalog/items"}
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
"#;

/// The samples taken before the release reached a phase other than Progressing (the
/// promotion or the rollback), after it started.
fn during_steps<'a>(steps: &[Step], samples: &'a [Sample]) -> Vec<&'a Sample> {
    let start = steps
        .iter()
        .find(|s| s.phase == "Progressing")
        .map(|s| s.at);
    let end = steps
        .iter()
        .skip_while(|s| s.phase != "Progressing")
        .find(|s| s.phase != "Progressing")
        .map(|s| s.at);
    match (start, end) {
        (Some(start), Some(end)) => samples
            .iter()
            .filter(|s| s.at >= start && s.at < end)
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn only_webapps_calls_follow_the_weights_and_a_faulty_version_is_rolled_back() {
    install_controller();
    // The examples name their namespace; start from none and remove it afterwards.
    let _ = kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"]);
    must(
        NS,
        &[
            "apply",
            "-f",
            "examples/catalog/catalog.yaml",
            "-f",
            "examples/catalog/webapp.yaml",
        ],
    );
    let _namespace = TestNamespace(NS.to_string());
    apply_yaml(NS, &canary_for_this_cluster());
    wait_for(NS, "canary Initialized", Duration::from_secs(150), || {
        (status_line(NS)?.0 == "Initialized").then_some(())
    });
    apply_yaml(NS, STOREFRONT);
    let webapp = ready_pod_address(NS, "webapp", 8080);
    let storefront = ready_pod_address(NS, "storefront", 8080);
    // From the host to webapp's pod IP; webapp calls catalog by name from its pod.
    let load = Load::judged(
        webapp,
        "webapp",
        "/",
        Judge::Upstream("imageUrl"),
        4,
        Duration::from_secs(300),
    );
    let other = Load::judged(
        storefront,
        "storefront",
        "/",
        Judge::Upstream("imageUrl"),
        2,
        Duration::from_secs(300),
    );
    let before = wait_for(
        NS,
        "webapp's and storefront's calls to reach catalog",
        Duration::from_secs(60),
        || {
            let (samples, others) = (load.samples(), other.samples());
            let enough = |s: &[Sample]| s.iter().filter(|s| s.ok).count() >= 50;
            (enough(&samples) && enough(&others)).then_some(samples)
        },
    );
    if before.iter().any(|s| s.v2) {
        fail(NS, "before the release an answer came from v2");
    }

    must(
        NS,
        &[
            "-n",
            NS,
            "set",
            "image",
            "deploy/catalog",
            "catalog=ghcr.io/sluice-dev/sluice-demo:v2",
        ],
    );
    let steps = timeline(NS, "catalog-release", Duration::from_secs(240));
    let phases: Vec<(String, i32)> = steps.iter().map(|s| (s.phase.clone(), s.weight)).collect();
    if phases.last().map(|p| p.0.as_str()) != Some("Succeeded") {
        fail(NS, &format!("release did not succeed: {phases:?}"));
    }
    let samples = load.samples();
    check_split(NS, &steps, &samples, "webapp's calls");
    let others = other.samples();
    let others_during = during_steps(&steps, &others);
    let reached_v2 = others_during.iter().filter(|s| s.v2).count();
    eprintln!(
        "storefront's calls during the steps: {} answered, {reached_v2} from v2",
        others_during.iter().filter(|s| s.ok).count()
    );
    if others_during.iter().filter(|s| s.ok).count() < 100 || reached_v2 > 0 {
        fail(
            NS,
            &format!(
                "storefront (no app=webapp label) must stay on the primary during the steps: {reached_v2} of {} answers came from v2",
                others_during.len()
            ),
        );
    }
    check_promoted(NS, &load, "webapp's calls");
    check_promoted(NS, &other, "storefront's calls");
    let failed = samples.iter().filter(|s| !s.ok).count();
    eprintln!(
        "webapp's calls: {} in all, {failed} failed or unanswered",
        samples.len()
    );

    // A faulty version: only webapp's calls reach it, and its success rate rolls it back.
    let faulty_from = Instant::now();
    must(
        NS,
        &[
            "-n",
            NS,
            "patch",
            "deploy/catalog",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"catalog","image":"ghcr.io/sluice-dev/sluice-demo:v3","env":[{"name":"ERROR_RATE","value":"0.5"}]}]}}}}"#,
        ],
    );
    let steps = timeline(NS, "catalog-release", Duration::from_secs(240));
    let phases: Vec<(String, i32)> = steps.iter().map(|s| (s.phase.clone(), s.weight)).collect();
    if phases.last().map(|p| p.0.as_str()) != Some("Failed") {
        fail(
            NS,
            &format!("the faulty version was not rolled back: {phases:?}"),
        );
    }
    let webapp_failed = load
        .samples()
        .iter()
        .filter(|s| s.at >= faulty_from && !s.ok)
        .count();
    let others = other.samples();
    let others_during = during_steps(&steps, &others);
    let others_failed = others_during.iter().filter(|s| !s.ok).count();
    eprintln!(
        "faulty release {phases:?}: webapp's calls failed {webapp_failed} times; storefront's {others_failed} of {}",
        others_during.len()
    );
    if webapp_failed == 0 {
        fail(NS, "no call of webapp reached the faulty version");
    }
    if others_during.len() < 50 || others_failed > 0 {
        fail(
            NS,
            &format!(
                "storefront's calls must stay on the healthy primary: {others_failed} of {} failed",
                others_during.len()
            ),
        );
    }
    drop(load);
    drop(other);
}
