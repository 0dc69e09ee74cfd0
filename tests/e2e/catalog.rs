//! Our users' own material, as the README has them apply it: webapp calls
//! `http://catalog/items` by its Service name (cluster DNS, kube-proxy, the apex Service,
//! sluice-router) while catalog is released, and the split that webapp's calls see
//! follows the weight at each step.

use std::time::Duration;

use super::support::*;
use super::traffic::*;
use super::{install_controller, status_line};

const NS: &str = "istioinaction";

/// `examples/catalog/canary.yaml` with the changes this test needs, each said here:
/// - `provider: sluice`: there is no Istio here, sluice-router enforces the routes;
/// - a 5 s interval and threshold 2 instead of 45 s and 5, so the release takes
///   seconds, not minutes;
/// - without `match: [{sourceLabels: {app: webapp}}]`: the router does not yet know
///   which pod calls it, so the match would never hold (the router issue adds that).
fn canary_for_this_cluster() -> String {
    let text = std::fs::read_to_string(root().join("examples/catalog/canary.yaml"))
        .expect("examples/catalog/canary.yaml");
    let edited = text
        .replace(
            "spec:\n  targetRef:",
            "spec:\n  provider: sluice\n  targetRef:",
        )
        .replace("    interval: 45s\n", "    interval: 5s\n")
        .replace("    threshold: 5\n", "    threshold: 2\n")
        .replace("    match:\n    - sourceLabels: {app: webapp}\n", "");
    for (what, changed) in [
        ("provider", edited.contains("provider: sluice")),
        ("interval", edited.contains("interval: 5s")),
        ("threshold", edited.contains("threshold: 2")),
        ("match", !edited.contains("sourceLabels")),
    ] {
        assert!(
            changed,
            "examples/catalog/canary.yaml changed: could not set {what}"
        );
    }
    edited
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn webapp_calls_catalog_by_name_and_sees_the_split_follow_the_weight() {
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
    let webapp = wait_for(NS, "a ready webapp pod", Duration::from_secs(90), || {
        let out = jsonpath(
            NS,
            "pods",
            "{range .items[?(@.metadata.labels.app==\"webapp\")]}{.status.podIP} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        )?;
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(ip, ready)| ip.starts_with("10.244.") && *ready == "True")
            .map(|(ip, _)| format!("{ip}:8080"))
    });
    // From the host to webapp's pod IP; webapp calls catalog by name from its pod.
    let load = Load::judged(
        webapp,
        "webapp",
        "/",
        Judge::Upstream("imageUrl"),
        4,
        Duration::from_secs(300),
    );
    let before = wait_for(
        NS,
        "webapp's calls to reach catalog",
        Duration::from_secs(60),
        || {
            let samples = load.samples();
            (samples.iter().filter(|s| s.ok).count() >= 50).then_some(samples)
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
    check_promoted(NS, &load, "webapp's calls");
    let failed = samples.iter().filter(|s| !s.ok).count();
    eprintln!(
        "webapp's calls: {} in all, {failed} failed or unanswered",
        samples.len()
    );
    drop(load);
}
