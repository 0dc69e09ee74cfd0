//! `kubectl sluice get`: the tree of one Canary, rendered from objects already read, so
//! that the output is tested without a cluster and `-w` redraws from watch caches.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;

use super::{is_paused, ABORT, PROMOTE, RETRY};
use crate::api::{Canary, CanaryCondition, Phase};
use crate::router::{Error as RouterError, LiveRule};

/// Everything the tree of one Canary shows, as read from the cluster.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub canary: Canary,
    /// The target Deployment (`spec.targetRef.name`), which runs the canary.
    pub target: Option<Deployment>,
    /// `<target>-primary`.
    pub primary: Option<Deployment>,
    /// The object that carries the weights (the VirtualService or HTTPRoute `<service
    /// name or target>`), of the kind the Canary's router writes.
    pub route: Option<DynamicObject>,
    /// Events regarding the Canary, in any order.
    pub events: Vec<Event>,
}

/// The trees of several Canaries, separated by a blank line.
pub fn render_all(snapshots: &[Snapshot], namespace: &str, now: Timestamp) -> String {
    if snapshots.is_empty() {
        return format!("No canaries found in namespace {namespace}.\n");
    }
    snapshots
        .iter()
        .map(|s| render(s, now))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tree of one Canary.
pub fn render(snap: &Snapshot, now: Timestamp) -> String {
    let canary = &snap.canary;
    let mut root = Node::new(canary_line(canary));
    let target_name = canary.spec.target_ref.name.as_str();
    let primary_name = format!("{target_name}-primary");
    let width = primary_name.len();
    root.push(Node::new(deployment_line(
        target_name,
        "canary",
        width,
        snap.target.as_ref(),
    )));
    root.push(Node::new(deployment_line(
        &primary_name,
        "primary",
        width,
        snap.primary.as_ref(),
    )));
    root.push(routes_node(canary, snap.route.as_ref()));
    if let Some(analysis) = analysis_node(canary) {
        root.push(analysis);
    }
    for line in problem_lines(snap, now) {
        root.push(Node::new(line));
    }
    let mut out = String::new();
    root.write(&mut out, "", "");
    out
}

fn canary_line(canary: &Canary) -> String {
    let name = kube::ResourceExt::name_any(canary);
    let status = canary.status.clone().unwrap_or_default();
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("Unknown");
    let threshold = canary.spec.analysis.threshold.unwrap_or(1);
    let mut line = format!(
        "Canary/{name}  {phase}  weight {}  failed checks {}/{threshold}",
        status.canary_weight, status.failed_checks
    );
    match canary.spec.analysis.iterations {
        Some(n) if n > 0 => {
            let _ = write!(line, "  iterations {}/{n}", status.iterations);
        }
        _ => {
            let _ = write!(line, "  iterations {}", status.iterations);
        }
    }
    let revision = status.last_applied_spec.as_deref().unwrap_or("-");
    let _ = write!(line, "  revision {revision}");
    if status.last_applied_spec.is_some() && status.last_applied_spec == status.last_promoted_spec {
        line.push_str(" (promoted)");
    }
    let mut flags = vec![];
    if canary.spec.suspend == Some(true) {
        flags.push("suspended".to_string());
    }
    if is_paused(canary) {
        flags.push("paused".to_string());
    }
    if status.mirrored {
        flags.push("mirroring".to_string());
    }
    let annotations = canary.metadata.annotations.as_ref();
    for key in [PROMOTE, ABORT, RETRY] {
        if annotations.is_some_and(|a| a.contains_key(key)) {
            flags.push(format!(
                "{} requested",
                key.trim_start_matches("sluice.dev/")
            ));
        }
    }
    if !flags.is_empty() {
        let _ = write!(line, "  [{}]", flags.join(", "));
    }
    line
}

fn deployment_line(name: &str, role: &str, width: usize, d: Option<&Deployment>) -> String {
    let head = format!("Deployment/{name:<width$}  {role:<7}");
    let Some(d) = d else {
        return format!("{head}  not found");
    };
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_else(|| "-".into());
    format!(
        "{head}  ready {}/{desired}  updated {}  {image}",
        status.ready_replicas.unwrap_or(0),
        status.updated_replicas.unwrap_or(0),
    )
}

/// The object that carries the weights, read back by the Canary's router.
fn routes_node(canary: &Canary, live: Option<&DynamicObject>) -> Node {
    let router = super::router_of(canary);
    let head = format!("{}/{}", router.route_kind().kind, canary.service_name());
    let Some(live) = live else {
        return Node::new(format!("{head}  not found"));
    };
    let routes = match router.read_routes(live) {
        Ok(routes) => routes,
        Err(RouterError::ReadBack { source, .. }) => {
            return Node::new(format!("{head}  unreadable spec: {source}"))
        }
        Err(e) => return Node::new(format!("{head}  {e}")),
    };
    let mut node = Node::new(head);
    if routes.rules.is_empty() {
        node.push(Node::new(format!("no {} routes", routes.rules_field)));
    }
    for (i, rule) in routes.rules.iter().enumerate() {
        node.push(Node::new(rule_line(routes.rules_field, i, rule)));
    }
    node
}

fn rule_line(field: &str, index: usize, rule: &LiveRule) -> String {
    let mut line = match &rule.name {
        Some(name) => format!("{field}[{index}] {name}"),
        None => format!("{field}[{index}]"),
    };
    if !rule.matches.is_empty() {
        let _ = write!(line, " match {}", rule.matches.join(" or "));
    }
    line.push(':');
    for (backend, weight) in &rule.backends {
        let _ = write!(line, " {backend} {weight}");
    }
    if rule.backends.is_empty() {
        line.push_str(" no destinations");
    }
    for (backend, percent) in &rule.mirrors {
        let _ = write!(line, "  mirror {backend} {}%", number(*percent));
    }
    line
}

fn analysis_node(canary: &Canary) -> Option<Node> {
    let results = &canary.status.as_ref()?.last_analysis;
    if results.is_empty() {
        return None;
    }
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut node = Node::new("Last analysis".into());
    for r in results {
        let value = r.value.map(number).unwrap_or_else(|| "-".into());
        let verdict = if r.passed { "ok" } else { "FAILED" };
        let mut line = format!("{:<width$}  {value:>8}  {verdict}", r.name);
        if !r.message.is_empty() {
            let _ = write!(line, "  {}", one_line(&r.message));
        }
        node.push(Node::new(line));
    }
    Some(node)
}

/// Why the release does not move: a Ready condition that is False (InvalidSpec,
/// TargetNotFound, ...) and the last Warning event regarding the Canary.
fn problem_lines(snap: &Snapshot, now: Timestamp) -> Vec<String> {
    let mut lines = vec![];
    let conditions = snap
        .canary
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = condition(conditions, "Ready").filter(|c| c.status == "False") {
        lines.push(format!(
            "Not ready ({}): {}",
            ready.reason,
            one_line(&ready.message)
        ));
    }
    // After a success an older warning (say, of a failed release before) explains nothing.
    let settled = matches!(
        snap.canary.phase(),
        Some(Phase::Succeeded | Phase::Initialized)
    );
    let warning = last_warning(snap.events.iter()).filter(|_| !settled);
    if let Some(e) = warning {
        let age = event_time(e)
            .map(|t| format!(" ({} ago)", age(now, t)))
            .unwrap_or_default();
        lines.push(format!(
            "Last warning{age}: {}",
            one_line(e.note.as_deref().unwrap_or("(no message)"))
        ));
    }
    lines
}

/// The last Warning event that says why. "Canary failed! Scaling down" only says that a
/// rollback happened; the warning recorded just before it carries the reason.
pub fn last_warning<'a>(events: impl Iterator<Item = &'a Event>) -> Option<&'a Event> {
    let mut warnings: Vec<&Event> = events
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    warnings.sort_by_key(|e| event_time(e));
    let consequence = |e: &&Event| {
        e.note
            .as_deref()
            .is_some_and(|n| n.starts_with("Canary failed!"))
    };
    warnings
        .iter()
        .rev()
        .find(|e| !consequence(e))
        .or(warnings.last())
        .copied()
}

fn condition<'a>(conditions: &'a [CanaryCondition], type_: &str) -> Option<&'a CanaryCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// When the event last happened, whichever of its time fields is set.
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// kubectl's style of age: `42s`, `3m5s`, `2h10m`, `4d`.
pub fn age(now: Timestamp, then: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d", s / 86400),
    }
}

/// A metric value without noise: `99.5`, `120`, `0.25`.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Node {
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn new(text: String) -> Self {
        Node {
            text,
            children: vec![],
        }
    }

    fn push(&mut self, child: Node) {
        self.children.push(child);
    }

    fn write(&self, out: &mut String, lead: &str, rest: &str) {
        let _ = writeln!(out, "{lead}{}", self.text);
        let n = self.children.len();
        for (i, child) in self.children.iter().enumerate() {
            let last = i + 1 == n;
            let (branch, pad) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            child.write(out, &format!("{rest}{branch}"), &format!("{rest}{pad}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(extra_status: &str, annotations: &str) -> Canary {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: shop, annotations: {{{annotations}}}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: catalog}}
  service: {{port: 80}}
  analysis: {{interval: 3s, threshold: 2, maxWeight: 50, stepWeight: 10}}
status:
  lastAppliedSpec: bbb
{extra_status}
"#
        ))
        .expect("canary yaml")
    }

    fn deployment(name: &str, desired: i32, ready: i32, image: &str) -> Deployment {
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {desired}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "{image}"}}]}}
status: {{readyReplicas: {ready}, updatedReplicas: {ready}}}
"#
        ))
        .expect("deployment yaml")
    }

    fn vs(http: &str) -> DynamicObject {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: catalog, namespace: shop}}
spec:
  hosts: [catalog]
  http:
{http}
"#
        ))
        .expect("vs yaml")
    }

    fn warning(note: &str, at: &str) -> Event {
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: catalog-release.1, namespace: shop}}
eventTime: "{at}"
type: Warning
reason: Synced
note: "{note}"
regarding: {{kind: Canary, name: catalog-release, namespace: shop}}
reportingController: sluice.dev/controller
reportingInstance: test
action: Reconcile
"#
        ))
        .expect("event yaml")
    }

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().expect("timestamp")
    }

    const SPLIT: &str = r#"
  - match: [{sourceLabels: {app: webapp}}]
    route:
    - {destination: {host: catalog-primary}, weight: 80}
    - {destination: {host: catalog-canary}, weight: 20}
  - route:
    - {destination: {host: catalog-primary}, weight: 80}
    - {destination: {host: catalog-canary}, weight: 20}"#;

    #[test]
    fn renders_trees() {
        struct Case {
            name: &'static str,
            snap: Snapshot,
            want: &'static str,
        }
        let progressing = "  lastPromotedSpec: aaa\n  phase: Progressing\n  canaryWeight: 20\n  failedChecks: 1\n  \
            lastAnalysis:\n  - {name: request-success-rate, value: 99.5, passed: true}\n  \
            - {name: request-duration, value: 612.345, passed: false, message: above 500}";
        let cases = vec![
            Case {
                name: "progressing with routes, analysis and a warning",
                snap: Snapshot {
                    canary: canary(progressing, ""),
                    target: Some(deployment("catalog", 2, 2, "shop/catalog:v2")),
                    primary: Some(deployment("catalog-primary", 2, 1, "shop/catalog:v1")),
                    route: Some(vs(SPLIT)),
                    events: vec![
                        warning("older", "2026-01-01T11:00:00Z"),
                        warning(
                            "Halt catalog.shop advancement request-duration 612 > 500",
                            "2026-01-01T11:59:48Z",
                        ),
                    ],
                },
                want: "\
Canary/catalog-release  Progressing  weight 20  failed checks 1/2  iterations 0  revision bbb
├── Deployment/catalog          canary   ready 2/2  updated 2  shop/catalog:v2
├── Deployment/catalog-primary  primary  ready 1/2  updated 1  shop/catalog:v1
├── VirtualService/catalog
│   ├── http[0] match {sourceLabels app=webapp}: catalog-primary 80 catalog-canary 20
│   └── http[1]: catalog-primary 80 catalog-canary 20
├── Last analysis
│   ├── request-success-rate      99.5  ok
│   └── request-duration        612.35  FAILED  above 500
└── Last warning (12s ago): Halt catalog.shop advancement request-duration 612 > 500
",
            },
            Case {
                name: "nothing created yet, invalid spec, paused with a pending promote",
                snap: Snapshot {
                    canary: canary(
                        "  lastPromotedSpec: aaa\n  phase: Initializing\n  conditions:\n  - {type: Ready, status: \"False\", \
                         reason: InvalidSpec, message: spec.analysis.stepWeights must ascend}",
                        r#"sluice.dev/paused: "true", sluice.dev/promote: bbb"#,
                    ),
                    target: None,
                    primary: None,
                    route: None,
                    events: vec![],
                },
                want: "\
Canary/catalog-release  Initializing  weight 0  failed checks 0/2  iterations 0  revision bbb  [paused, promote requested]
├── Deployment/catalog          canary   not found
├── Deployment/catalog-primary  primary  not found
├── VirtualService/catalog  not found
└── Not ready (InvalidSpec): spec.analysis.stepWeights must ascend
",
            },
            Case {
                name: "succeeded: mirroring, header match, single destination, old warning hidden",
                snap: Snapshot {
                    canary: canary(
                        "  phase: Succeeded\n  mirrored: true\n  lastPromotedSpec: bbb",
                        "",
                    ),
                    target: Some(deployment("catalog", 0, 0, "shop/catalog:v2")),
                    primary: Some(deployment("catalog-primary", 3, 3, "shop/catalog:v2")),
                    route: Some(vs(r#"
  - name: ab
    match: [{headers: {x-user: {exact: alice}}, uri: {prefix: /api}}, {headers: {cookie: {regex: ".*canary.*"}}}]
    route: [{destination: {host: catalog-canary, subset: v2}}]
  - route: [{destination: {host: catalog-primary}}]
    mirror: {host: catalog-canary}
    mirrorPercentage: {value: 50.0}"#)),
                    events: vec![warning("Canary failed!", "2026-01-01T11:59:00Z")],
                },
                want: "\
Canary/catalog-release  Succeeded  weight 0  failed checks 0/2  iterations 0  revision bbb (promoted)  [mirroring]
├── Deployment/catalog          canary   ready 0/0  updated 0  shop/catalog:v2
├── Deployment/catalog-primary  primary  ready 3/3  updated 3  shop/catalog:v2
└── VirtualService/catalog
    ├── http[0] ab match {uri^=/api, header x-user=alice} or {header cookie~=.*canary.*}: catalog-canary/v2 100
    └── http[1]: catalog-primary 100  mirror catalog-canary 50%
",
            },
        ];
        for case in cases {
            let got = render(&case.snap, now());
            assert_eq!(got, case.want, "case {:?}:\n{got}", case.name);
        }
    }

    #[test]
    fn last_warning_prefers_the_reason_over_the_consequence() {
        let reason = "Rolling back catalog-release.shop failed checks threshold reached 2";
        let cases: Vec<(Vec<Event>, Option<&str>)> = vec![
            (vec![], None),
            (
                vec![
                    warning(
                        "Canary failed! Scaling down catalog.shop",
                        "2026-01-01T11:00:02Z",
                    ),
                    warning(reason, "2026-01-01T11:00:01Z"),
                    warning("older", "2026-01-01T10:00:00Z"),
                ],
                Some(reason),
            ),
            (
                vec![warning(
                    "Canary failed! Scaling down catalog.shop",
                    "2026-01-01T11:00:02Z",
                )],
                Some("Canary failed! Scaling down catalog.shop"),
            ),
        ];
        for (events, want) in cases {
            let got = last_warning(events.iter()).and_then(|e| e.note.as_deref());
            assert_eq!(got, want, "{events:?}");
        }
    }

    #[test]
    fn empty_namespace_says_so() {
        assert_eq!(
            render_all(&[], "shop", now()),
            "No canaries found in namespace shop.\n"
        );
    }

    #[test]
    fn an_http_route_is_read_back_by_the_gateway_api_router() {
        let mut c = canary("", "");
        c.spec.provider = Some(crate::api::RouterKind::GatewayApiV1);
        let route: DynamicObject = serde_yaml::from_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{type: Exact, name: x-user, value: alice}]}]
    backendRefs: [{name: catalog-canary, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: catalog-canary, port: 80}, fraction: {numerator: 1, denominator: 4}}
    backendRefs: [{name: catalog-primary, port: 80, weight: 90}, {name: catalog-canary, port: 80, weight: 10}]
"#,
        )
        .unwrap();
        let node = routes_node(&c, Some(&route));
        let lines: Vec<&str> = std::iter::once(node.text.as_str())
            .chain(node.children.iter().map(|n| n.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                "HTTPRoute/catalog",
                "rules[0] match {path^=/, header x-user=alice}: catalog-canary 1",
                "rules[1] match {path^=/}: catalog-primary 90 catalog-canary 10  mirror catalog-canary 25%",
            ]
        );
        assert_eq!(routes_node(&c, None).text, "HTTPRoute/catalog  not found");
        let routes = super::super::router_of(&c).read_routes(&route).unwrap();
        assert_eq!(routes.percent_of("catalog-canary"), Some(10.0));
        assert_eq!(routes.percent_of("catalog-other"), None);
    }

    #[test]
    fn unreadable_virtual_service_is_shown_not_fatal() {
        let mut bad = vs("");
        bad.data["spec"] = serde_json::json!({"http": "not a list"});
        let node = routes_node(&canary("", ""), Some(&bad));
        assert!(
            node.text
                .starts_with("VirtualService/catalog  unreadable spec:"),
            "{}",
            node.text
        );
    }

    #[test]
    fn ages_and_numbers() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (65, "1m5s"),
            (1800, "30m"),
            (7300, "2h1m"),
            (200_000, "2d"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            let then = Timestamp::from_second(now().as_second() - secs).expect("timestamp");
            assert_eq!(age(now(), then), want, "{secs}s");
        }
        for (v, want) in [(99.5, "99.5"), (120.0, "120"), (0.254, "0.25"), (0.0, "0")] {
            assert_eq!(number(v), want);
        }
    }
}
