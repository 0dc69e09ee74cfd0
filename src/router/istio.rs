//! Istio: DestinationRules `<svc>-primary` / `<svc>-canary` and a VirtualService `<svc>`
//! carrying the weights, written as Flagger writes them.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::ResourceExt;

use super::{
    live_spec, spec_differs, to_dynamic, Error, Kind, LiveRoutes, LiveRule, TrafficRouter, Watched,
    MANAGED_BY_SLUICE,
};
use crate::analysis::Reporter;
use crate::api::istio::{
    Destination, DestinationRule, DestinationRuleSpec, HeaderOperations, Headers, HttpMatchRequest,
    HttpRoute, HttpRouteDestination, Percent, PortSelector, StringMatch, VirtualService,
    VirtualServiceSpec,
};
use crate::api::{Canary, RouterKind};
use crate::rollout::{Routes, Weights};
use crate::workloads::{owned_meta, AppLabel};

pub struct IstioRouter;

impl TrafficRouter for IstioRouter {
    fn kind(&self) -> RouterKind {
        RouterKind::Istio
    }

    fn apex_selector(&self, _canary: &Canary, app: &AppLabel) -> BTreeMap<String, String> {
        app.primary_selector()
    }

    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        destination_rules(canary)
            .iter()
            .map(|dr| to_dynamic("DestinationRule", &dr.name_any(), dr))
            .collect()
    }

    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error> {
        let vs = virtual_service(canary, routes);
        Ok(vec![to_dynamic("VirtualService", &vs.name_any(), &vs)?])
    }

    fn route_kind(&self) -> Kind {
        Kind::VIRTUAL_SERVICE
    }

    fn read_routes(&self, live: &DynamicObject) -> Result<LiveRoutes, Error> {
        read_virtual_service(live)
    }

    fn finalize(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        handed_back_virtual_service(canary)
            .map(|vs| to_dynamic("VirtualService", &vs.name_any(), &vs))
            .into_iter()
            .collect()
    }

    fn watched(&self) -> Vec<Watched> {
        WATCHED.to_vec()
    }

    /// Istio's API server adds no defaults to these specs, so an edit by hand shows.
    fn drifted(&self, desired: &DynamicObject, live: &DynamicObject) -> bool {
        spec_differs(desired, live)
    }

    fn reporter(&self, _canary: &Canary) -> Reporter {
        Reporter::Destination
    }
}

/// The VirtualService and DestinationRules sluice made, for Istio or for sluice-router.
pub(super) const WATCHED: [Watched; 2] = [
    Watched {
        kind: Kind::VIRTUAL_SERVICE,
        selector: MANAGED_BY_SLUICE,
    },
    Watched {
        kind: Kind::DESTINATION_RULE,
        selector: MANAGED_BY_SLUICE,
    },
];

pub fn destination_rules(canary: &Canary) -> Vec<DestinationRule> {
    let svc = canary.service_name();
    ["primary", "canary"]
        .into_iter()
        .map(|role| {
            let host = format!("{svc}-{role}");
            DestinationRule {
                metadata: owned_meta(canary, host.clone(), None),
                spec: DestinationRuleSpec {
                    host,
                    traffic_policy: canary.spec.service.traffic_policy.clone(),
                    subsets: vec![],
                    export_to: vec![],
                },
            }
        })
        .collect()
}

pub fn virtual_service(canary: &Canary, routes: Routes) -> VirtualService {
    let service = &canary.spec.service;
    let name = canary.service_name().to_string();
    let mut hosts = service.hosts.clone();
    if !hosts.contains(&name) {
        hosts.push(name.clone());
    }
    let port = PortSelector {
        number: u32::try_from(service.port).ok(),
    };
    let host = |role: &str| Destination {
        host: format!("{name}-{role}"),
        subset: None,
        port: Some(port.clone()),
    };
    let destination = |role: &str, weight: i32, set_cookie: Option<String>| HttpRouteDestination {
        destination: host(role),
        weight: Some(weight),
        headers: set_cookie.map(|cookie| Headers {
            request: None,
            response: Some(HeaderOperations {
                add: BTreeMap::from([("Set-Cookie".to_string(), cookie)]),
                ..Default::default()
            }),
        }),
    };
    let affinity = session_affinity(canary, &routes);
    let route = |matches: Vec<HttpMatchRequest>, weights: Weights, mirror: Option<i32>| {
        let (primary_cookie, canary_cookie) = match &affinity {
            Some(a) => (a.primary_set_cookie.clone(), a.canary_set_cookie.clone()),
            None => (None, None),
        };
        HttpRoute {
            matches,
            route: vec![
                destination("primary", weights.primary_weight(), primary_cookie),
                destination("canary", weights.canary_weight(), canary_cookie),
            ],
            mirror: mirror.map(|_| host("canary")),
            mirror_percentage: mirror
                .filter(|p| *p < 100)
                .map(|p| Percent { value: p as f64 }),
            retries: service.retries.clone(),
            timeout: service.timeout.clone(),
            headers: service.headers.clone(),
            cors_policy: service.cors_policy.clone(),
            rewrite: service.rewrite.as_ref().map(|r| r.istio()),
            ..Default::default()
        }
    };
    // A client holding a session cookie stays where it first landed.
    let sticky = |cookie: &str, weights: Weights| {
        let cookie_match = HttpMatchRequest {
            headers: BTreeMap::from([(
                "Cookie".to_string(),
                StringMatch {
                    regex: Some(cookie_regex(cookie)),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let matches = merge_matches(&[cookie_match], &service.matches);
        let mut r = route(matches, weights, None);
        for d in &mut r.route {
            d.headers = None;
        }
        r
    };
    let analysis_matches = &canary.spec.analysis.matches;
    let mut http = Vec::new();
    if let Some(a) = &affinity {
        if let Some(cookie) = &a.canary_cookie {
            http.push(sticky(cookie, Weights::canary(100)));
        }
        if let Some(cookie) = &a.primary_cookie {
            http.push(sticky(cookie, Weights::ALL_PRIMARY));
        }
    }
    if analysis_matches.is_empty() {
        http.push(route(
            service.matches.clone(),
            routes.weights,
            routes.mirror,
        ));
    } else {
        // Only the selected requests take part in the release; the rest stay on the primary.
        http.push(route(
            merge_matches(analysis_matches, &service.matches),
            routes.weights,
            routes.mirror,
        ));
        http.push(route(service.matches.clone(), Weights::ALL_PRIMARY, None));
    }
    VirtualService {
        metadata: owned_meta(canary, name, None),
        spec: VirtualServiceSpec {
            hosts,
            gateways: service.gateways.clone(),
            http,
            export_to: vec![],
        },
    }
}

/// The VirtualService left to the Canary's gateways (other than `mesh`) once it is
/// deleted with `revertOnDeletion`: its hosts, matches, retries, timeout, headers and
/// rewrite as they were, every request sent to the apex Service. None when the only
/// gateway is the mesh, whose callers reach the apex Service directly.
pub fn handed_back_virtual_service(canary: &Canary) -> Option<VirtualService> {
    let mut vs = virtual_service(canary, Routes::ALL_PRIMARY);
    vs.spec.gateways.retain(|g| g != "mesh");
    if vs.spec.gateways.is_empty() {
        return None;
    }
    // The last route is the one every request not selected for the release takes.
    let mut route = vs.spec.http.pop()?;
    route.route = vec![HttpRouteDestination {
        destination: Destination {
            host: canary.service_name().to_string(),
            subset: None,
            port: u32::try_from(canary.spec.service.port)
                .ok()
                .map(|number| PortSelector {
                    number: Some(number),
                }),
        },
        weight: None,
        headers: None,
    }];
    vs.spec.http = vec![route];
    vs.metadata.owner_references = None;
    Some(vs)
}

/// Session affinity (`analysis.sessionAffinity`) for one set of routes: while the canary
/// takes traffic, a client it served gets a cookie that keeps it there (and, with
/// `primaryCookieName`, a primary client stays on the primary); once the release is over
/// the primary expires the canary's cookie.
pub(super) struct Affinity {
    /// `name=value` a request must carry to stay on the canary / primary.
    pub canary_cookie: Option<String>,
    pub primary_cookie: Option<String>,
    pub canary_set_cookie: Option<String>,
    pub primary_set_cookie: Option<String>,
}

pub(super) fn session_affinity(canary: &Canary, routes: &Routes) -> Option<Affinity> {
    let config = canary.spec.analysis.session_affinity.as_ref()?;
    let value = routes.session.as_deref()?;
    let max_age = config.max_age.unwrap_or(86400);
    let canary_cookie = format!("{}={value}", config.cookie_name);
    if routes.weights.canary_weight() == 0 {
        return Some(Affinity {
            canary_cookie: None,
            primary_cookie: None,
            canary_set_cookie: None,
            primary_set_cookie: Some(format!("{canary_cookie}; Max-Age=-1")),
        });
    }
    let primary_cookie = config
        .primary_cookie_name
        .as_ref()
        .map(|name| format!("{name}={value}"));
    Some(Affinity {
        canary_set_cookie: Some(format!("{canary_cookie}; Max-Age={max_age}")),
        primary_set_cookie: primary_cookie
            .as_ref()
            .map(|c| format!("{c}; Max-Age={max_age}")),
        canary_cookie: Some(canary_cookie),
        primary_cookie,
    })
}

/// The regex a `Cookie` header matches when it carries `cookie` (`name=value`).
pub(super) fn cookie_regex(cookie: &str) -> String {
    format!(".*{}.*", regex::escape(cookie))
}

/// Every analysis match combined (AND) with every service match; the analysis condition
/// wins where both set the same field.
pub fn merge_matches(
    analysis: &[HttpMatchRequest],
    service: &[HttpMatchRequest],
) -> Vec<HttpMatchRequest> {
    if service.is_empty() {
        return analysis.to_vec();
    }
    let mut merged = Vec::with_capacity(analysis.len() * service.len());
    for a in analysis {
        for s in service {
            let mut m = s.clone();
            macro_rules! take {
                ($($field:ident),*) => {$(
                    if a.$field.is_some() { m.$field = a.$field.clone(); }
                )*};
            }
            take!(
                name,
                uri,
                scheme,
                method,
                authority,
                port,
                ignore_uri_case,
                source_namespace
            );
            m.headers.extend(a.headers.clone());
            m.query_params.extend(a.query_params.clone());
            m.without_headers.extend(a.without_headers.clone());
            m.source_labels.extend(a.source_labels.clone());
            if !a.gateways.is_empty() {
                m.gateways = a.gateways.clone();
            }
            merged.push(m);
        }
    }
    merged
}

/// The routes of a live VirtualService, for Istio or for sluice-router.
pub(super) fn read_virtual_service(live: &DynamicObject) -> Result<LiveRoutes, Error> {
    let spec: VirtualServiceSpec = live_spec("VirtualService", live)?;
    let rules = spec
        .http
        .iter()
        .map(|route| {
            let single = route.route.len() == 1;
            let mut mirrors: Vec<(String, f64)> = route
                .mirror
                .iter()
                .map(|m| {
                    let pct = route.mirror_percentage.map(|p| p.value).unwrap_or(100.0);
                    (destination_name(m), pct)
                })
                .collect();
            mirrors.extend(route.mirrors.iter().map(|m| {
                let pct = m.percentage.map(|p| p.value).unwrap_or(100.0);
                (destination_name(&m.destination), pct)
            }));
            LiveRule {
                name: route.name.clone(),
                matches: route.matches.iter().map(match_summary).collect(),
                backends: route
                    .route
                    .iter()
                    .map(|d| {
                        // A lone destination takes everything; among several an omitted
                        // weight is 0.
                        let weight = d.weight.unwrap_or(if single { 100 } else { 0 });
                        (destination_name(&d.destination), weight.max(0) as u32)
                    })
                    .collect(),
                mirrors,
            }
        })
        .collect();
    Ok(LiveRoutes {
        rules_field: "http",
        rules,
    })
}

fn destination_name(d: &Destination) -> String {
    match &d.subset {
        Some(subset) => format!("{}/{subset}", d.host),
        None => d.host.clone(),
    }
}

fn string_match(m: &StringMatch) -> String {
    if let Some(v) = &m.exact {
        format!("={v}")
    } else if let Some(v) = &m.prefix {
        format!("^={v}")
    } else if let Some(v) = &m.regex {
        format!("~={v}")
    } else {
        " present".into()
    }
}

/// One match block in a short form: `{header x-user=alice, sourceLabels app=web}`.
fn match_summary(m: &HttpMatchRequest) -> String {
    let mut parts = vec![];
    for (label, value) in [
        ("uri", &m.uri),
        ("method", &m.method),
        ("authority", &m.authority),
        ("scheme", &m.scheme),
    ] {
        if let Some(v) = value {
            parts.push(format!("{label}{}", string_match(v)));
        }
    }
    for (k, v) in &m.headers {
        parts.push(format!("header {k}{}", string_match(v)));
    }
    for (k, v) in &m.without_headers {
        parts.push(format!("without header {k}{}", string_match(v)));
    }
    for (k, v) in &m.query_params {
        parts.push(format!("query {k}{}", string_match(v)));
    }
    if !m.source_labels.is_empty() {
        let labels: Vec<String> = m
            .source_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("sourceLabels {}", labels.join(",")));
    }
    if let Some(ns) = &m.source_namespace {
        parts.push(format!("sourceNamespace {ns}"));
    }
    if let Some(port) = m.port {
        parts.push(format!("port {port}"));
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(extra: &str) -> Canary {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: catalog-release, namespace: istioinaction, uid: "1"}}
spec:
  targetRef: {{kind: Deployment, name: catalog}}
  service:
    name: catalog
    port: 80
    gateways: [mesh]
    hosts: [catalog.istioinaction.io]
    timeout: 2s
    retries: {{attempts: 3, perTryTimeout: 1s, retryOn: "gateway-error,connect-failure"}}
    trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}
{extra}
"#
        ))
        .unwrap()
    }

    fn weights_of(route: &HttpRoute) -> Vec<(String, i32)> {
        route
            .route
            .iter()
            .map(|d| (d.destination.host.clone(), d.weight.unwrap_or(0)))
            .collect()
    }

    #[test]
    fn the_gateways_keep_a_virtual_service_to_the_apex_service_after_a_revert() {
        let canary = |gateways: &str, analysis: &str| -> Canary {
            serde_yaml::from_str(&format!(
                "apiVersion: sluice.dev/v1beta1\nkind: Canary\nmetadata: {{name: web, namespace: shop, uid: u1}}\nspec:\n  targetRef: {{kind: Deployment, name: web}}\n  service: {{port: 80, hosts: [web.example.com], gateways: {gateways}, timeout: 5s, retries: {{attempts: 3}}}}\n  analysis: {analysis}\n"
            ))
            .unwrap()
        };
        let ab = "{stepWeight: 10, match: [{headers: {x-user: {exact: alice}}}]}";
        let sticky = "{stepWeight: 10, sessionAffinity: {cookieName: web-canary}}";
        // (gateways, analysis, gateways kept)
        let cases = [
            (
                "[public-gateway, mesh]",
                "{stepWeight: 10}",
                Some(vec!["public-gateway"]),
            ),
            ("[public-gateway]", ab, Some(vec!["public-gateway"])),
            ("[public-gateway]", sticky, Some(vec!["public-gateway"])),
            ("[mesh]", "{stepWeight: 10}", None),
            ("[]", "{stepWeight: 10}", None),
        ];
        for (gateways, analysis, want) in cases {
            let vs = handed_back_virtual_service(&canary(gateways, analysis));
            assert_eq!(
                vs.as_ref().map(|v| v.spec.gateways.clone()),
                want.map(|w| w.into_iter().map(String::from).collect()),
                "{gateways} {analysis}"
            );
            let Some(vs) = vs else { continue };
            assert!(vs.metadata.owner_references.is_none());
            assert_eq!(vs.spec.hosts, ["web.example.com", "web"]);
            let http = serde_json::to_value(&vs.spec.http).unwrap();
            assert_eq!(
                http,
                serde_json::json!([{
                    "route": [{"destination": {"host": "web", "port": {"number": 80}}}],
                    "timeout": "5s",
                    "retries": {"attempts": 3}
                }]),
                "{gateways} {analysis}"
            );
        }
    }

    #[test]
    fn virtual_service_carries_weights_and_service_settings() {
        let c = canary("  analysis: {stepWeight: 10}");
        let vs = virtual_service(&c, Routes::canary(30));
        assert_eq!(vs.metadata.name.as_deref(), Some("catalog"));
        assert_eq!(vs.spec.hosts, vec!["catalog.istioinaction.io", "catalog"]);
        assert_eq!(vs.spec.gateways, vec!["mesh"]);
        assert_eq!(vs.spec.http.len(), 1);
        let r = &vs.spec.http[0];
        assert_eq!(
            weights_of(r),
            vec![
                ("catalog-primary".into(), 70),
                ("catalog-canary".into(), 30)
            ]
        );
        assert_eq!(
            r.route[0].destination.port.as_ref().unwrap().number,
            Some(80)
        );
        assert_eq!(r.timeout.as_deref(), Some("2s"));
        assert_eq!(r.retries.as_ref().unwrap().attempts, Some(3));
    }

    #[test]
    fn analysis_match_gets_its_own_route_and_the_rest_stays_on_primary() {
        let c = canary("  analysis: {stepWeight: 10, match: [{sourceLabels: {app: webapp}}]}");
        let vs = virtual_service(&c, Routes::canary(20));
        assert_eq!(vs.spec.http.len(), 2);
        assert_eq!(vs.spec.http[0].matches[0].source_labels["app"], "webapp");
        assert_eq!(
            weights_of(&vs.spec.http[0]),
            vec![
                ("catalog-primary".into(), 80),
                ("catalog-canary".into(), 20)
            ]
        );
        assert!(vs.spec.http[1].matches.is_empty());
        assert_eq!(
            weights_of(&vs.spec.http[1]),
            vec![
                ("catalog-primary".into(), 100),
                ("catalog-canary".into(), 0)
            ]
        );
    }

    #[test]
    fn matches_merge_as_a_product() {
        let header = |k: &str, v: &str| HttpMatchRequest {
            headers: BTreeMap::from([(
                k.to_string(),
                StringMatch {
                    exact: Some(v.into()),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let uri = |p: &str| HttpMatchRequest {
            uri: Some(StringMatch {
                prefix: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = merge_matches(
            &[header("x-user", "a"), header("x-user", "b")],
            &[uri("/api"), uri("/v2")],
        );
        assert_eq!(merged.len(), 4);
        assert!(merged
            .iter()
            .all(|m| m.uri.is_some() && m.headers.contains_key("x-user")));
        assert_eq!(merge_matches(&[uri("/x")], &[]), vec![uri("/x")]);
    }

    #[test]
    fn destination_rules_copy_the_traffic_policy() {
        let c = canary("  analysis: {stepWeight: 10}");
        let drs = destination_rules(&c);
        let hosts: Vec<_> = drs.iter().map(|d| d.spec.host.as_str()).collect();
        assert_eq!(hosts, vec!["catalog-primary", "catalog-canary"]);
        for dr in &drs {
            let lb = dr
                .spec
                .traffic_policy
                .as_ref()
                .unwrap()
                .load_balancer
                .as_ref()
                .unwrap();
            assert_eq!(lb.simple.as_deref(), Some("LEAST_REQUEST"));
        }
    }

    #[test]
    fn rendered_objects_have_type_meta() {
        let c = canary("  analysis: {stepWeight: 10}");
        let objs = IstioRouter.route_objects(&c, Routes::canary(10)).unwrap();
        let tm = objs[0].types.as_ref().unwrap();
        assert_eq!(tm.api_version, "networking.istio.io/v1beta1");
        assert_eq!(tm.kind, "VirtualService");
        let drs = IstioRouter.static_objects(&c).unwrap();
        assert_eq!(drs.len(), 2);
    }

    #[test]
    fn mirror_copies_to_the_canary_with_its_percentage() {
        let c = canary("  analysis: {stepWeight: 10, mirror: true, mirrorWeight: 40}");
        let routes = Routes {
            mirror: Some(40),
            ..Routes::ALL_PRIMARY
        };
        let vs = virtual_service(&c, routes);
        let http = &vs.spec.http[0];
        assert_eq!(http.mirror.as_ref().unwrap().host, "catalog-canary");
        assert_eq!(http.mirror_percentage.as_ref().unwrap().value, 40.0);
        // 100 % is Istio's default: no percentage written.
        let full = virtual_service(
            &c,
            Routes {
                mirror: Some(100),
                ..Routes::ALL_PRIMARY
            },
        );
        assert!(full.spec.http[0].mirror_percentage.is_none());
        assert!(virtual_service(&c, Routes::canary(10)).spec.http[0]
            .mirror
            .is_none());
    }

    #[test]
    fn session_affinity_pins_canary_clients_and_expires_the_cookie_after() {
        let c = canary(
            "  analysis: {stepWeight: 10, sessionAffinity: {cookieName: flagger-cookie, primaryCookieName: primary-cookie, maxAge: 60}}",
        );
        let running = Routes {
            session: Some("abc".into()),
            ..Routes::canary(20)
        };
        let vs = virtual_service(&c, running);
        let http = &vs.spec.http;
        assert_eq!(http.len(), 3);
        let cookie = |r: &HttpRoute| {
            r.matches[0].headers["Cookie"]
                .regex
                .clone()
                .unwrap_or_default()
        };
        assert_eq!(cookie(&http[0]), ".*flagger\\-cookie=abc.*");
        assert_eq!(weights_of(&http[0])[1].1, 100);
        assert_eq!(cookie(&http[1]), ".*primary\\-cookie=abc.*");
        assert_eq!(weights_of(&http[1])[0].1, 100);
        let set_cookie = |d: &HttpRouteDestination| {
            d.headers.as_ref().unwrap().response.as_ref().unwrap().add["Set-Cookie"].clone()
        };
        assert_eq!(
            set_cookie(&http[2].route[1]),
            "flagger-cookie=abc; Max-Age=60"
        );
        assert_eq!(
            set_cookie(&http[2].route[0]),
            "primary-cookie=abc; Max-Age=60"
        );

        let done = Routes {
            session: Some("abc".into()),
            ..Routes::ALL_PRIMARY
        };
        let vs = virtual_service(&c, done);
        assert_eq!(vs.spec.http.len(), 1);
        assert_eq!(
            set_cookie(&vs.spec.http[0].route[0]),
            "flagger-cookie=abc; Max-Age=-1"
        );
    }
}
