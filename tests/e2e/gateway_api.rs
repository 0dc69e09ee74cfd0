//! A release with `provider: gatewayapi:v1` on the local cluster, whose API server serves
//! the Gateway API's standard-channel CRDs (hack/cluster.sh installs them): every
//! HTTPRoute sluice writes passes their schema and CEL rules, the weights walk up with
//! the status, an edit by hand is put back, and what the Gateway API cannot express is
//! refused by the Canary's schema or reported on the Canary, naming the field. A
//! Gateway parent has no implementation here; a Service parent (GAMMA) is served by
//! sluice-router, with live traffic and the built-in metrics scraped from the router.

use std::time::Duration;

use super::support::*;
use super::{
    app_yaml, demo_app_yaml, install_controller, primary_version, release_v2_under_load,
    status_line,
};

fn canary_yaml(ns: &str, gateway_refs: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: {ns}}}
spec:
  provider: gatewayapi:v1
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service:
    name: catalog
    port: 80
    targetPort: 3000
    hosts: [catalog.example.com]
    timeout: 10s
    backendTimeout: 5s
    headers: {{response: {{set: {{x-served-by: sluice}}}}}}
    {gateway_refs}
  analysis:
    interval: 2s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    sessionAffinity: {{cookieName: catalog-canary, maxAge: 60}}
"#
    )
}

/// `primary canary` weights of the HTTPRoute's weighted rule (the last one).
fn route_weights(ns: &str) -> Option<String> {
    let weights = jsonpath(
        ns,
        "httproute/catalog",
        "{range .spec.rules[*]}{.backendRefs[*].weight}{\"\\n\"}{end}",
    )?;
    weights.lines().last().map(str::to_string)
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn gateway_api_release_walks_the_http_route() {
    install_controller();
    let ns = TestNamespace::create("e2e-gateway");
    let ns = ns.0.as_str();

    // The Canary's schema refuses a Gateway API release that names no parent.
    let path = std::env::temp_dir().join(format!("{ns}-no-parent.yaml"));
    std::fs::write(&path, canary_yaml(ns, "")).expect("write");
    let err = kubectl(&["apply", "-f", path.to_str().expect("path")])
        .expect_err("a gatewayapi:v1 Canary without gatewayRefs must be rejected");
    assert!(err.contains("spec.service.gatewayRefs must name"), "{err}");

    // A Gateway parent and a Service parent (mesh routing).
    let parents = r#"gatewayRefs: [{name: public, sectionName: http}, {group: "", kind: Service, name: catalog, port: 80}]"#;
    apply_yaml(ns, &app_yaml(ns, "v1", true));
    apply_yaml(ns, &canary_yaml(ns, parents));
    wait_for(ns, "canary Initialized", Duration::from_secs(120), || {
        (status_line(ns)?.0 == "Initialized").then_some(())
    });
    assert_eq!(route_weights(ns).as_deref(), Some("100 0"));
    assert_eq!(
        jsonpath(ns, "httproute/catalog", "{.spec.parentRefs[*].kind}").as_deref(),
        Some("Gateway Service")
    );
    assert_eq!(
        jsonpath(ns, "httproute/catalog", "{.spec.rules[0].timeouts}").as_deref(),
        Some(r#"{"backendRequest":"5s","request":"10s"}"#)
    );
    // `kubectl sluice get` reads the live HTTPRoute back through the Canary's router.
    let tree = super::plugin::expect_exit(ns, &["get", "catalog-release"], 0);
    assert!(
        tree.contains("HTTPRoute/catalog\n")
            && tree
                .lines()
                .any(|l| l.contains("rules[0]")
                    && l.ends_with("catalog-primary 100 catalog-canary 0")),
        "kubectl sluice get should show the HTTPRoute's weighted rule:\n{tree}"
    );

    // v2: the HTTPRoute carries each weight the status shows, and a sticky rule for
    // the canary's session cookie while it takes traffic.
    must(
        ns,
        &["-n", ns, "set", "env", "deploy/catalog", "VERSION=v2"],
    );
    let mut seen: Vec<(String, i32)> = vec![];
    let mut sticky = false;
    wait_for(
        ns,
        "the release to finish",
        Duration::from_secs(180),
        || {
            let line = status_line(ns)?;
            if seen.last() != Some(&line) {
                // The route is written before the status.
                if line.0 == "Progressing" && line.1 > 0 {
                    let want = format!("{} {}", 100 - line.1, line.1);
                    let weights = route_weights(ns);
                    if weights.as_deref() != Some(want.as_str()) {
                        fail(
                            ns,
                            &format!("status weight {} but HTTPRoute weights {weights:?}", line.1),
                        );
                    }
                    let cookie = jsonpath(
                        ns,
                        "httproute/catalog",
                        "{.spec.rules[0].matches[0].headers[0].value}",
                    );
                    sticky |= cookie.is_some_and(|v| v.contains("catalog\\-canary="));
                }
                seen.push(line.clone());
            }
            let started = seen.iter().any(|(p, _)| p == "Progressing");
            (started && (line.0 == "Succeeded" || line.0 == "Failed")).then_some(())
        },
    );
    assert_eq!(
        seen.last().map(|s| s.0.as_str()),
        Some("Succeeded"),
        "{seen:?}"
    );
    for weight in [25, 50] {
        assert!(
            seen.contains(&("Progressing".to_string(), weight)),
            "{seen:?}"
        );
    }
    assert!(
        sticky,
        "no sticky cookie rule while the canary took traffic"
    );
    assert_eq!(primary_version(ns).as_deref(), Some("v2"));
    assert_eq!(route_weights(ns).as_deref(), Some("100 0"));

    // An edit by hand is put back.
    let last = jsonpath(ns, "httproute/catalog", "{.spec.rules}")
        .map(|r| r.matches("backendRefs").count())
        .unwrap_or(1);
    must(
        ns,
        &[
            "-n",
            ns,
            "patch",
            "httproute/catalog",
            "--type=json",
            "-p",
            &format!(
                r#"[{{"op":"replace","path":"/spec/rules/{}/backendRefs/1/weight","value":50}}]"#,
                last - 1
            ),
        ],
    );
    wait_for(
        ns,
        "the HTTPRoute put back",
        Duration::from_secs(30),
        || (route_weights(ns).as_deref() == Some("100 0")).then_some(()),
    );

    // What the Gateway API cannot match on is reported, naming the field, and the
    // route is left as it was.
    merge_patch(
        ns,
        "canary/catalog-release",
        r#"{"spec":{"service":{"match":[{"sourceLabels":{"app":"web"}}]}}}"#,
    );
    let message = wait_for(ns, "a Blocked condition", Duration::from_secs(60), || {
        jsonpath(
            ns,
            "canary/catalog-release",
            "{.status.conditions[?(@.reason==\"Blocked\")].message}",
        )
        .filter(|m| !m.is_empty())
    });
    assert!(
        message.contains("spec.service.match[0].sourceLabels"),
        "{message}"
    );
    assert_eq!(route_weights(ns).as_deref(), Some("100 0"));

    // Deleted with revertOnDeletion, the Canary leaves its Gateway an HTTPRoute that
    // sends every request to the apex Service, which selects the app's pods again.
    super::delete_with_revert(ns, r#","service":{"match":null}"#);
    let handed_back = |path: &str| jsonpath(ns, "httproute/catalog", path).unwrap_or_default();
    assert_eq!(handed_back("{.metadata.ownerReferences}"), "");
    assert_eq!(handed_back("{.spec.parentRefs[*].kind}"), "Gateway");
    assert_eq!(
        handed_back("{range .spec.rules[*]}{.backendRefs[*].name}{\";\"}{end}"),
        "catalog;"
    );
    assert_eq!(
        jsonpath(ns, "service/catalog", "{.spec.selector.app}").as_deref(),
        Some("catalog")
    );
}

#[test]
#[ignore = "needs the local cluster: run through hack/e2e.sh"]
fn gateway_api_service_parent_release_through_the_router() {
    install_controller();
    let ns = TestNamespace::create("e2e-gamma");
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
  provider: gatewayapi:v1
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  progressDeadlineSeconds: 60
  service:
    name: catalog
    port: 80
    targetPort: 3000
    gatewayRefs: [{{group: "", kind: Service, name: catalog, port: 80}}]
  analysis:
    interval: 4s
    threshold: 2
    maxWeight: 50
    stepWeight: 10
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 30s}}
    - {{name: request-duration, thresholdRange: {{max: 500}}, interval: 30s}}
"#
        ),
    );
    wait_for(ns, "canary Initialized", Duration::from_secs(120), || {
        (status_line(ns)?.0 == "Initialized").then_some(())
    });
    // sluice-router serves the route and says so on it.
    let conditions = wait_for(
        ns,
        "the HTTPRoute accepted by sluice-proxy",
        Duration::from_secs(60),
        || {
            let out = jsonpath(
                ns,
                "httproute/catalog",
                "{range .status.parents[?(@.controllerName==\"sluice.dev/sluice-proxy\")].conditions[*]}{.type}={.status} {end}",
            )?;
            out.contains("Accepted=True").then_some(out)
        },
    );
    assert!(conditions.contains("ResolvedRefs=True"), "{conditions}");
    // The apex Service is pointed at the router once the router and the primary both
    // have an available pod, which may come after Initialized.
    wait_for(
        ns,
        "the apex Service pointed at sluice-router",
        Duration::from_secs(60),
        || {
            let selector = jsonpath(ns, "svc/catalog", "{.spec.selector}")?;
            (selector == r#"{"app.kubernetes.io/name":"sluice-router"}"#).then_some(())
        },
    );

    // The HTTPRoute's weights, enforced by the router, are what the answers show.
    drop(release_v2_under_load(ns));
}
