//! Gateway API (`provider: gatewayapi:v1`): one HTTPRoute `<svc>` whose rule splits the
//! traffic between the Services `<svc>-primary` and `<svc>-canary` by weight, attached to
//! the Gateways, or for mesh routing (GAMMA) the Services, in `service.gatewayRefs`, as
//! Flagger writes it. The Canary's Istio-style matches, headers, rewrite, CORS policy and
//! timeouts are translated; what the Gateway API's standard channel cannot express is an
//! error naming the field, never a silent drop.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::ResourceExt;

use super::istio::{cookie_regex, session_affinity};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::sluice::{self, SluiceRouter};
use super::{
    live_spec, spec_differs, to_dynamic, Error, Kind, LiveRoutes, LiveRule, MetricsPods,
    SharedObjects, TrafficRouter, Watched, MANAGED_BY_SLUICE,
};
use crate::analysis::Reporter;
use crate::api::gateway::{
    BackendObjectReference, HTTPRoute, HttpBackendRef, HttpCorsFilter, HttpHeader,
    HttpHeaderFilter, HttpPathMatch, HttpPathModifier, HttpRequestMirrorFilter, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, HttpRouteSpec, HttpRouteTimeouts, HttpUrlRewriteFilter,
    HttpValueMatch, ParentReference, GROUP,
};
use crate::api::istio::{HeaderOperations, HttpMatchRequest, StringCondition, StringMatch};
use crate::api::{Canary, RouterKind};
use crate::duration;
use crate::rollout::{Routes, Weights};
use crate::workloads::{owned_meta, AppLabel};

pub const HTTP_ROUTE: Kind = Kind::new(GROUP, "v1", "HTTPRoute", "httproutes");

const EXACT: &str = "Exact";
const PATH_PREFIX: &str = "PathPrefix";
const REGEX: &str = "RegularExpression";
/// The standard channel's limits on an HTTPRoute (its CRD rejects more).
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_RULE: usize = 64;
const MAX_MATCHES: usize = 128;
const MAX_VALUE_MATCHES: usize = 16;
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub struct GatewayApiRouter {
    /// sluice-router serves the routes of Canaries with a Service parent (GAMMA) in their
    /// namespace, as it serves `provider: sluice`. None where a mesh implements GAMMA.
    pub service_parents: Option<SluiceRouter>,
}

impl GatewayApiRouter {
    /// The router that serves this Canary's Service parents, if sluice-router does.
    fn router_for(&self, canary: &Canary) -> Option<&SluiceRouter> {
        let service_parent = canary
            .spec
            .service
            .gateway_refs
            .iter()
            .any(|p| p.kind.as_deref() == Some("Service"));
        self.service_parents.as_ref().filter(|_| service_parent)
    }
}

impl TrafficRouter for GatewayApiRouter {
    fn kind(&self) -> RouterKind {
        RouterKind::GatewayApiV1
    }

    /// The Gateway (or the mesh) sends traffic to `<svc>-primary` and `<svc>-canary`;
    /// the apex Service is the primary, as with Istio, or sluice-router where it serves
    /// the Service parents.
    fn apex_selector(&self, canary: &Canary, app: &AppLabel) -> BTreeMap<String, String> {
        match self.router_for(canary) {
            Some(router) => router.apex_selector(canary, app),
            None => app.primary_selector(),
        }
    }

    fn apex_target_port(&self, canary: &Canary) -> Option<IntOrString> {
        self.router_for(canary)?.apex_target_port(canary)
    }

    fn apex_backend(&self, canary: &Canary) -> Option<&'static str> {
        self.router_for(canary)?.apex_backend(canary)
    }

    /// sluice-router's objects where it serves the route. The route is rendered here too,
    /// so a spec it cannot translate is reported before any traffic moves.
    /// What the Gateway API cannot express does not depend on the weights.
    fn validate(&self, canary: &Canary) -> Result<(), Error> {
        http_route(canary, Routes::ALL_PRIMARY).map(|_| ())
    }

    fn static_objects(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        match self.router_for(canary) {
            Some(router) => router.router_objects(canary),
            None => Ok(vec![]),
        }
    }

    fn route_objects(&self, canary: &Canary, routes: Routes) -> Result<Vec<DynamicObject>, Error> {
        let route = http_route(canary, routes)?;
        Ok(vec![to_dynamic("HTTPRoute", &route.name_any(), &route)?])
    }

    fn route_kind(&self) -> Kind {
        HTTP_ROUTE
    }

    fn finalize(&self, canary: &Canary) -> Result<Vec<DynamicObject>, Error> {
        Ok(handed_back_route(canary)?
            .map(|route| to_dynamic("HTTPRoute", &route.name_any(), &route))
            .transpose()?
            .into_iter()
            .collect())
    }

    fn read_routes(&self, live: &DynamicObject) -> Result<LiveRoutes, Error> {
        let spec: HttpRouteSpec = live_spec("HTTPRoute", live)?;
        Ok(LiveRoutes {
            rules_field: "rules",
            rules: spec.rules.iter().map(live_rule).collect(),
        })
    }

    fn watched(&self) -> Vec<Watched> {
        let route = Watched {
            kind: HTTP_ROUTE,
            selector: MANAGED_BY_SLUICE,
        };
        let router = self
            .service_parents
            .iter()
            .flat_map(|_| sluice::router_watched());
        std::iter::once(route).chain(router).collect()
    }

    /// The fields the API server defaults (groups, kinds, path matches) are written out,
    /// so what it returns holds what was written and an edit by hand shows. The router's
    /// own objects get defaults, so for them only the applied hash counts.
    fn drifted(&self, desired: &DynamicObject, live: &DynamicObject) -> bool {
        HTTP_ROUTE.is_kind_of(desired) && spec_differs(desired, live)
    }

    /// Istio, the common implementation of both Gateways and GAMMA, reports at the
    /// workload's sidecar; with another implementation, use MetricTemplates. sluice-router
    /// reports as the caller's hop, as with `provider: sluice`.
    fn reporter(&self, canary: &Canary) -> Reporter {
        match self.router_for(canary) {
            Some(router) => router.reporter(canary),
            None => Reporter::Destination,
        }
    }

    fn metrics_pods(&self, canary: &Canary) -> Option<MetricsPods> {
        self.router_for(canary)?.metrics_pods(canary)
    }

    fn metrics_pod_selector(&self) -> Option<&'static str> {
        self.service_parents.as_ref()?.metrics_pod_selector()
    }

    fn shared_objects(&self) -> Option<SharedObjects> {
        self.service_parents.as_ref()?.shared_objects()
    }

    fn uses_shared_objects(&self, canary: &Canary) -> bool {
        self.router_for(canary).is_some()
    }
}

/// The HTTPRoute that carries `routes`.
pub fn http_route(canary: &Canary, routes: Routes) -> Result<HTTPRoute, Error> {
    let service = &canary.spec.service;
    reject_istio_only(canary)?;
    let parent_refs = parent_refs(&service.gateway_refs)?;
    let name = canary.service_name().to_string();
    let port = service.port;
    let backend = |role: &str, weight: i32| HttpBackendRef {
        group: Some(String::new()),
        kind: Some("Service".into()),
        name: format!("{name}-{role}"),
        namespace: None,
        port: Some(port),
        weight: Some(weight),
        filters: vec![],
    };
    let service_matches = route_matches("spec.service.match", &service.matches)?;
    let filters = route_filters(canary)?;
    let timeouts = timeouts(canary)?;
    let affinity = session_affinity(canary, &routes);
    // `set_cookies`: the rule that splits by weight hands out the session cookies.
    let rule =
        |matches: Vec<HttpRouteMatch>, weights: Weights, mirror: Option<i32>, set_cookies: bool| {
            let mut filters = filters.clone();
            if let Some(percent) = mirror {
                filters.push(mirror_to(&format!("{name}-canary"), port, percent));
            }
            let mut primary = backend("primary", weights.primary_weight());
            let mut canary = backend("canary", weights.canary_weight());
            if let (true, Some(a)) = (set_cookies, &affinity) {
                primary.filters = set_cookie(a.primary_set_cookie.as_deref());
                canary.filters = set_cookie(a.canary_set_cookie.as_deref());
            }
            HttpRouteRule {
                matches: with_default_path(matches),
                filters,
                backend_refs: vec![primary, canary],
                timeouts: timeouts.clone(),
            }
        };
    // A client holding a session cookie stays where it first landed: its rule has one
    // header match more than the weighted rule, so it takes precedence.
    let sticky = |cookie: &str, weights: Weights| {
        let cookie_match = HttpRouteMatch {
            headers: vec![HttpValueMatch {
                match_type: REGEX.into(),
                name: "Cookie".into(),
                value: cookie_regex(cookie),
            }],
            ..Default::default()
        };
        rule(
            merge_matches(&[cookie_match], &service_matches),
            weights,
            None,
            false,
        )
    };
    let mut rules = Vec::new();
    if let Some(a) = &affinity {
        if let Some(cookie) = &a.canary_cookie {
            rules.push(sticky(cookie, Weights::canary(100)));
        }
        if let Some(cookie) = &a.primary_cookie {
            rules.push(sticky(cookie, Weights::ALL_PRIMARY));
        }
    }
    let analysis_matches = route_matches("spec.analysis.match", &canary.spec.analysis.matches)?;
    if analysis_matches.is_empty() {
        rules.push(rule(
            service_matches.clone(),
            routes.weights,
            routes.mirror,
            true,
        ));
    } else {
        // Only the selected requests take part in the release; the rest stay on the
        // primary (the selected rule's extra conditions make it the more specific one).
        rules.push(rule(
            merge_matches(&analysis_matches, &service_matches),
            routes.weights,
            routes.mirror,
            true,
        ));
        rules.push(rule(service_matches, Weights::ALL_PRIMARY, None, false));
    }
    check_rules(&rules)?;
    Ok(HTTPRoute {
        metadata: owned_meta(canary, name, service.apex.as_ref()),
        spec: HttpRouteSpec {
            parent_refs,
            hostnames: service.hosts.clone(),
            rules,
        },
        status: None,
    })
}

/// The HTTPRoute left to a Canary's Gateways once it is deleted with `revertOnDeletion`:
/// its Gateway parents, hostnames, matches, filters and timeouts as they were, with every
/// request sent to the apex Service. None when only Services (the mesh) are parents.
pub fn handed_back_route(canary: &Canary) -> Result<Option<HTTPRoute>, Error> {
    let mut route = http_route(canary, Routes::ALL_PRIMARY)?;
    route
        .spec
        .parent_refs
        .retain(|p| p.kind.as_deref() != Some("Service"));
    // The last rule is the one every request not selected for the release takes.
    let Some(mut rule) = route.spec.rules.pop() else {
        return Ok(None);
    };
    if route.spec.parent_refs.is_empty() {
        return Ok(None);
    }
    rule.backend_refs = vec![HttpBackendRef {
        group: Some(String::new()),
        kind: Some("Service".into()),
        name: canary.service_name().to_string(),
        namespace: None,
        port: Some(canary.spec.service.port),
        weight: None,
        filters: vec![],
    }];
    route.spec.rules = vec![rule];
    route.metadata.owner_references = None;
    Ok(Some(route))
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Istio settings with no counterpart in the Gateway API's standard channel.
fn reject_istio_only(canary: &Canary) -> Result<(), Error> {
    let service = &canary.spec.service;
    let istio_only = [
        ("spec.service.retries", service.retries.is_some()),
        (
            "spec.service.trafficPolicy",
            service.traffic_policy.is_some(),
        ),
        ("spec.service.gateways", !service.gateways.is_empty()),
    ];
    match istio_only.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(invalid(
            *field,
            "the Gateway API has no such setting (for the Gateways to attach to, use spec.service.gatewayRefs); remove it or use provider istio",
        )),
        None => Ok(()),
    }
}

/// The Canary's references with the group and kind the API server would default.
fn parent_refs(refs: &[ParentReference]) -> Result<Vec<ParentReference>, Error> {
    if refs.is_empty() {
        return Err(invalid(
            "spec.service.gatewayRefs",
            "name at least one Gateway (or, for mesh routing, a Service) for provider gatewayapi:v1",
        ));
    }
    Ok(refs
        .iter()
        .map(|r| ParentReference {
            group: Some(r.group.clone().unwrap_or_else(|| GROUP.into())),
            kind: Some(r.kind.clone().unwrap_or_else(|| "Gateway".into())),
            ..r.clone()
        })
        .collect())
}

fn route_matches(field: &str, matches: &[HttpMatchRequest]) -> Result<Vec<HttpRouteMatch>, Error> {
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| route_match(&format!("{field}[{i}]"), m))
        .collect()
}

/// One Istio match request as a Gateway API match.
fn route_match(field: &str, m: &HttpMatchRequest) -> Result<HttpRouteMatch, Error> {
    let unsupported = [
        ("scheme", m.scheme.is_some()),
        ("authority", m.authority.is_some()),
        ("port", m.port.is_some()),
        ("sourceLabels", !m.source_labels.is_empty()),
        ("sourceNamespace", m.source_namespace.is_some()),
        ("gateways", !m.gateways.is_empty()),
        ("withoutHeaders", !m.without_headers.is_empty()),
        ("ignoreUriCase", m.ignore_uri_case == Some(true)),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(invalid(
            format!("{field}.{name}"),
            "the Gateway API cannot match on it; remove it or use provider istio",
        ));
    }
    let path = m
        .uri
        .as_ref()
        .map(|uri| path_match(&format!("{field}.uri"), uri))
        .transpose()?;
    let method = match m.method.as_ref().map(StringMatch::condition) {
        None => None,
        Some(Some(StringCondition::Exact(method))) if METHODS.contains(&method) => {
            Some(method.to_string())
        }
        Some(_) => {
            return Err(invalid(
                format!("{field}.method"),
                format!(
                    "the Gateway API matches one exact method: {}",
                    METHODS.join(", ")
                ),
            ))
        }
    };
    let values = |kind: &str, map: &BTreeMap<String, StringMatch>| {
        map.iter()
            .map(|(name, v)| value_match(&format!("{field}.{kind}.{name}"), name, v))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(HttpRouteMatch {
        path,
        headers: values("headers", &m.headers)?,
        query_params: values("queryParams", &m.query_params)?,
        method,
    })
}

fn path_match(field: &str, uri: &StringMatch) -> Result<HttpPathMatch, Error> {
    let (match_type, value) = match uri.condition() {
        Some(StringCondition::Exact(v)) => (EXACT, v),
        Some(StringCondition::Prefix(v)) => (PATH_PREFIX, v),
        Some(StringCondition::Regex(v)) => (REGEX, v),
        Some(StringCondition::Present) | None => {
            return Err(invalid(field, "set exactly one of exact, prefix and regex"))
        }
    };
    if match_type != REGEX && !value.starts_with('/') {
        return Err(invalid(field, "a path must start with /"));
    }
    Ok(HttpPathMatch {
        match_type: match_type.into(),
        value: value.into(),
    })
}

/// A header or query parameter condition: a prefix, or presence (`{}`), becomes a
/// regular expression, which the Gateway API has where Istio has prefixes.
fn value_match(field: &str, name: &str, m: &StringMatch) -> Result<HttpValueMatch, Error> {
    let (match_type, value) = match m.condition() {
        Some(StringCondition::Exact(v)) => (EXACT, v.to_string()),
        Some(StringCondition::Prefix(p)) => (REGEX, format!("^{}.*", regex::escape(p))),
        Some(StringCondition::Regex(r)) => (REGEX, r.to_string()),
        Some(StringCondition::Present) => (REGEX, ".*".into()),
        None => return Err(invalid(field, "set at most one of exact, prefix and regex")),
    };
    Ok(HttpValueMatch {
        match_type: match_type.into(),
        name: name.into(),
        value,
    })
}

/// Every analysis match combined (AND) with every service match; the analysis
/// condition wins where both set the path, the method or the same header.
fn merge_matches(analysis: &[HttpRouteMatch], service: &[HttpRouteMatch]) -> Vec<HttpRouteMatch> {
    if service.is_empty() {
        return analysis.to_vec();
    }
    let merge_values = |service: &[HttpValueMatch], analysis: &[HttpValueMatch]| {
        let mut merged: Vec<HttpValueMatch> = service
            .iter()
            .filter(|s| {
                !analysis
                    .iter()
                    .any(|a| a.name.eq_ignore_ascii_case(&s.name))
            })
            .cloned()
            .collect();
        merged.extend(analysis.iter().cloned());
        merged
    };
    let mut merged = Vec::with_capacity(analysis.len() * service.len());
    for a in analysis {
        for s in service {
            merged.push(HttpRouteMatch {
                path: a.path.clone().or_else(|| s.path.clone()),
                headers: merge_values(&s.headers, &a.headers),
                query_params: merge_values(&s.query_params, &a.query_params),
                method: a.method.clone().or_else(|| s.method.clone()),
            });
        }
    }
    merged
}

/// The API server's default: a match without a path matches every path, and a rule
/// without matches every request.
fn with_default_path(mut matches: Vec<HttpRouteMatch>) -> Vec<HttpRouteMatch> {
    if matches.is_empty() {
        matches.push(HttpRouteMatch::default());
    }
    for m in &mut matches {
        m.path.get_or_insert_with(|| HttpPathMatch {
            match_type: PATH_PREFIX.into(),
            value: "/".into(),
        });
    }
    matches
}

/// The filters of every rule: header changes, the rewrite, the extra mirrors, CORS.
fn route_filters(canary: &Canary) -> Result<Vec<HttpRouteFilter>, Error> {
    let service = &canary.spec.service;
    let mut filters = Vec::new();
    if let Some(headers) = &service.headers {
        if let Some(ops) = headers.request.as_ref().and_then(header_filter) {
            filters.push(HttpRouteFilter {
                filter_type: "RequestHeaderModifier".into(),
                request_header_modifier: Some(ops),
                ..Default::default()
            });
        }
        if let Some(ops) = headers.response.as_ref().and_then(header_filter) {
            filters.push(HttpRouteFilter {
                filter_type: "ResponseHeaderModifier".into(),
                response_header_modifier: Some(ops),
                ..Default::default()
            });
        }
    }
    if let Some(rewrite) = &service.rewrite {
        let path = match (&rewrite.uri, rewrite.rewrite_type.as_deref()) {
            (None, _) => None,
            (Some(uri), None | Some("ReplaceFullPath")) => Some(HttpPathModifier {
                modifier_type: "ReplaceFullPath".into(),
                replace_full_path: Some(uri.clone()),
                replace_prefix_match: None,
            }),
            (Some(uri), Some("ReplacePrefixMatch")) => Some(HttpPathModifier {
                modifier_type: "ReplacePrefixMatch".into(),
                replace_full_path: None,
                replace_prefix_match: Some(uri.clone()),
            }),
            (Some(_), Some(other)) => {
                return Err(invalid(
                    "spec.service.rewrite.type",
                    format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
                ))
            }
        };
        if path.is_some() || rewrite.authority.is_some() {
            filters.push(HttpRouteFilter {
                filter_type: "URLRewrite".into(),
                url_rewrite: Some(HttpUrlRewriteFilter {
                    hostname: rewrite.authority.clone(),
                    path,
                }),
                ..Default::default()
            });
        }
    }
    for mirror in &service.mirror {
        let backend_ref = BackendObjectReference {
            group: Some(mirror.backend_ref.group.clone().unwrap_or_default()),
            kind: Some(
                mirror
                    .backend_ref
                    .kind
                    .clone()
                    .unwrap_or_else(|| "Service".into()),
            ),
            ..mirror.backend_ref.clone()
        };
        filters.push(HttpRouteFilter {
            filter_type: "RequestMirror".into(),
            request_mirror: Some(HttpRequestMirrorFilter {
                backend_ref,
                ..mirror.clone()
            }),
            ..Default::default()
        });
    }
    if let Some(policy) = &service.cors_policy {
        filters.push(HttpRouteFilter {
            filter_type: "CORS".into(),
            cors: Some(cors(policy)?),
            ..Default::default()
        });
    }
    Ok(filters)
}

fn header_filter(ops: &HeaderOperations) -> Option<HttpHeaderFilter> {
    let headers = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| HttpHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect::<Vec<_>>()
    };
    let filter = HttpHeaderFilter {
        set: headers(&ops.set),
        add: headers(&ops.add),
        remove: ops.remove.clone(),
    };
    (filter != HttpHeaderFilter::default()).then_some(filter)
}

/// Istio's CORS policy (as Flagger accepts it) as the Gateway API's CORS filter.
fn cors(policy: &serde_json::Value) -> Result<HttpCorsFilter, Error> {
    let field = |name: &str| format!("spec.service.corsPolicy.{name}");
    let strings = |name: &str| -> Result<Vec<String>, Error> {
        match policy.get(name) {
            None | Some(serde_json::Value::Null) => Ok(vec![]),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid(field(name), "must be a list of strings"))
                })
                .collect(),
            Some(_) => Err(invalid(field(name), "must be a list of strings")),
        }
    };
    let mut allow_origins = strings("allowOrigin")?;
    if let Some(origins) = policy.get("allowOrigins").and_then(|v| v.as_array()) {
        for origin in origins {
            match origin.get("exact").and_then(|v| v.as_str()) {
                Some(exact) if origin.as_object().is_some_and(|o| o.len() == 1) => {
                    allow_origins.push(exact.to_string())
                }
                _ => {
                    return Err(invalid(
                        field("allowOrigins"),
                        "the Gateway API matches origins exactly: use {exact: ...}",
                    ))
                }
            }
        }
    }
    let max_age = match policy.get("maxAge") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let text = v
                .as_str()
                .ok_or_else(|| invalid(field("maxAge"), "must be a duration, e.g. 24h"))?;
            let age = duration::positive(text, duration::parse_go)
                .map_err(|e| invalid(field("maxAge"), e.to_string()))?;
            Some(age.as_secs().max(1) as i64)
        }
    };
    let allow_credentials = match policy.get("allowCredentials") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| invalid(field("allowCredentials"), "must be true or false"))?,
        ),
    };
    Ok(HttpCorsFilter {
        allow_origins,
        allow_credentials,
        allow_methods: strings("allowMethods")?,
        allow_headers: strings("allowHeaders")?,
        expose_headers: strings("exposeHeaders")?,
        max_age,
    })
}

/// `service.timeout` for the whole request and `service.backendTimeout` for each try,
/// in the Gateway API's duration grammar.
fn timeouts(canary: &Canary) -> Result<Option<HttpRouteTimeouts>, Error> {
    let service = &canary.spec.service;
    let parse = |field: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| duration::parse_gateway_api(t).map_err(|e| invalid(field, e.to_string())))
            .transpose()
    };
    let request = parse("spec.service.timeout", &service.timeout)?;
    let backend = parse("spec.service.backendTimeout", &service.backend_timeout)?;
    if let (Some(request), Some(backend)) = (request, backend) {
        // Zero is no timeout at all.
        if !request.is_zero() && (backend.is_zero() || backend > request) {
            return Err(invalid(
                "spec.service.backendTimeout",
                "must not exceed spec.service.timeout",
            ));
        }
    }
    if request.is_none() && backend.is_none() {
        return Ok(None);
    }
    Ok(Some(HttpRouteTimeouts {
        request: service.timeout.clone(),
        backend_request: service.backend_timeout.clone(),
    }))
}

/// A copy of `percent` % of the requests (all of them at 100) to the Service `name`.
fn mirror_to(name: &str, port: i32, percent: i32) -> HttpRouteFilter {
    HttpRouteFilter {
        filter_type: "RequestMirror".into(),
        request_mirror: Some(HttpRequestMirrorFilter {
            backend_ref: BackendObjectReference {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: name.into(),
                namespace: None,
                port: Some(port),
            },
            percent: (percent < 100).then_some(percent),
            fraction: None,
        }),
        ..Default::default()
    }
}

fn set_cookie(cookie: Option<&str>) -> Vec<HttpRouteFilter> {
    cookie
        .map(|value| HttpRouteFilter {
            filter_type: "ResponseHeaderModifier".into(),
            response_header_modifier: Some(HttpHeaderFilter {
                add: vec![HttpHeader {
                    name: "Set-Cookie".into(),
                    value: value.into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .into_iter()
        .collect()
}

/// What the HTTPRoute CRD would reject, reported with the Canary's field instead.
fn check_rules(rules: &[HttpRouteRule]) -> Result<(), Error> {
    let matches = "spec.analysis.match";
    if rules.len() > MAX_RULES {
        return Err(invalid(matches, "more rules than an HTTPRoute holds"));
    }
    let total: usize = rules.iter().map(|r| r.matches.len()).sum();
    if total > MAX_MATCHES || rules.iter().any(|r| r.matches.len() > MAX_MATCHES_PER_RULE) {
        return Err(invalid(
            matches,
            format!("spec.analysis.match x spec.service.match makes {total} conditions; an HTTPRoute holds {MAX_MATCHES_PER_RULE} per rule and {MAX_MATCHES} in all"),
        ));
    }
    let crowded = rules
        .iter()
        .flat_map(|r| &r.matches)
        .any(|m| m.headers.len() > MAX_VALUE_MATCHES || m.query_params.len() > MAX_VALUE_MATCHES);
    if crowded {
        return Err(invalid(
            matches,
            format!("a match holds at most {MAX_VALUE_MATCHES} headers and {MAX_VALUE_MATCHES} query parameters"),
        ));
    }
    for rule in rules {
        let prefix_rewrite = rule.filters.iter().any(|f| {
            f.url_rewrite
                .as_ref()
                .and_then(|r| r.path.as_ref())
                .is_some_and(|p| p.modifier_type == "ReplacePrefixMatch")
        });
        let all_prefixes = rule
            .matches
            .iter()
            .all(|m| m.path.as_ref().is_some_and(|p| p.match_type == PATH_PREFIX));
        if prefix_rewrite && !all_prefixes {
            return Err(invalid(
                "spec.service.rewrite.type",
                "ReplacePrefixMatch needs every match to be a uri prefix",
            ));
        }
    }
    Ok(())
}

/// One rule of a live HTTPRoute: its matches, backends (an omitted weight is 1) and
/// mirrors (an omitted percentage is 100).
fn live_rule(rule: &HttpRouteRule) -> LiveRule {
    let mirrors = rule
        .filters
        .iter()
        .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| {
            let percent = match (m.percent, &m.fraction) {
                (Some(p), _) => f64::from(p),
                (None, Some(f)) => {
                    f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100).max(1))
                }
                (None, None) => 100.0,
            };
            (m.backend_ref.name.clone(), percent)
        })
        .collect();
    LiveRule {
        name: None,
        matches: rule.matches.iter().map(live_match).collect(),
        backends: rule
            .backend_refs
            .iter()
            .map(|b| (b.name.clone(), b.weight.unwrap_or(1).max(0) as u32))
            .collect(),
        mirrors,
    }
}

/// One match in the short form `kubectl sluice get` shows for VirtualServices too:
/// `=` exact, `^=` prefix, `~=` regular expression.
fn live_match(m: &HttpRouteMatch) -> String {
    let op = |match_type: &str| match match_type {
        PATH_PREFIX => "^=",
        REGEX => "~=",
        _ => "=",
    };
    let mut parts = vec![];
    if let Some(path) = &m.path {
        parts.push(format!("path{}{}", op(&path.match_type), path.value));
    }
    if let Some(method) = &m.method {
        parts.push(format!("method={method}"));
    }
    for h in &m.headers {
        parts.push(format!("header {}{}{}", h.name, op(&h.match_type), h.value));
    }
    for q in &m.query_params {
        parts.push(format!("query {}{}{}", q.name, op(&q.match_type), q.value));
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary(service_extra: &str, analysis: &str) -> Canary {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {{name: podinfo, namespace: test, uid: "1"}}
spec:
  provider: gatewayapi:v1
  targetRef: {{kind: Deployment, name: podinfo}}
  service:
    port: 9898
    hosts: [app.example.com]
    gatewayRefs: [{{name: public, namespace: edge}}]
{service_extra}
  analysis: {analysis}
"#
        ))
        .unwrap()
    }

    /// No sluice-router for Service parents: a mesh implements GAMMA.
    fn edge_only() -> GatewayApiRouter {
        GatewayApiRouter {
            service_parents: None,
        }
    }

    #[test]
    fn sluice_router_serves_a_service_parent_unless_a_mesh_does() {
        let router = GatewayApiRouter {
            service_parents: Some(SluiceRouter {
                image: "sluice-proxy:test".into(),
                replicas: 2,
            }),
        };
        let app = AppLabel {
            key: "app".into(),
            value: "podinfo".into(),
        };
        let mesh = canary("", "{stepWeight: 10}");
        let mut mesh = mesh;
        mesh.spec.service.gateway_refs = vec![ParentReference {
            kind: Some("Service".into()),
            name: "podinfo".into(),
            ..Default::default()
        }];
        let edge = canary("", "{stepWeight: 10}");
        let kinds = |r: &GatewayApiRouter, c: &Canary| -> Vec<String> {
            r.static_objects(c)
                .unwrap()
                .iter()
                .map(|o| o.types.as_ref().unwrap().kind.clone())
                .collect()
        };
        // (router, Canary, router objects, apex served by sluice-router)
        let cases = [
            (
                &router,
                &mesh,
                sluice::ROUTER_KINDS.map(|k| k.kind).to_vec(),
                true,
            ),
            (&router, &edge, vec![], false),
            (&edge_only(), &mesh, vec![], false),
        ];
        for (r, c, want, routed) in cases {
            assert_eq!(kinds(r, c), want);
            assert_eq!(r.apex_selector(c, &app) == sluice::router_labels(), routed);
            assert_eq!(r.apex_backend(c).is_some(), routed);
            assert_eq!(r.metrics_pods(c).is_some(), routed);
            assert_eq!(r.uses_shared_objects(c), routed);
            let reporter = if routed {
                Reporter::Source
            } else {
                Reporter::Destination
            };
            assert_eq!(r.reporter(c), reporter);
        }
    }

    fn weights(rule: &HttpRouteRule) -> Vec<(&str, i32)> {
        rule.backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.weight.unwrap_or(1)))
            .collect()
    }

    fn render(c: &Canary, routes: Routes) -> serde_json::Value {
        serde_json::to_value(http_route(c, routes).unwrap().spec).unwrap()
    }

    #[test]
    fn the_gateways_keep_a_route_to_the_apex_service_after_a_revert() {
        let gateway = "{name: public, namespace: edge}";
        let mesh = r#"{group: "", kind: Service, name: podinfo}"#;
        let ab = "{stepWeight: 10, match: [{headers: {x-user: {exact: alice}}}]}";
        let sticky = "{stepWeight: 10, sessionAffinity: {cookieName: podinfo-canary}}";
        // (gatewayRefs, analysis, the kinds of the parents kept)
        let cases = [
            (
                format!("[{gateway}, {mesh}]"),
                "{stepWeight: 10}",
                Some(vec!["Gateway"]),
            ),
            (format!("[{gateway}]"), ab, Some(vec!["Gateway"])),
            (format!("[{gateway}]"), sticky, Some(vec!["Gateway"])),
            (format!("[{mesh}]"), "{stepWeight: 10}", None),
        ];
        for (refs, analysis, want) in cases {
            let mut c = canary("    timeout: 10s", analysis);
            c.spec.service.gateway_refs = serde_yaml::from_str(&refs).unwrap();
            let route = handed_back_route(&c).unwrap();
            let kinds = route.as_ref().map(|r| {
                r.spec
                    .parent_refs
                    .iter()
                    .map(|p| p.kind.clone().unwrap())
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                kinds,
                want.map(|w| w.into_iter().map(String::from).collect()),
                "{refs} {analysis}"
            );
            let Some(route) = route else { continue };
            assert!(route.metadata.owner_references.is_none());
            assert_eq!(route.spec.hostnames, ["app.example.com"]);
            let spec = serde_json::to_value(&route.spec).unwrap();
            assert_eq!(
                spec["rules"],
                serde_json::json!([{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"group": "", "kind": "Service", "name": "podinfo", "port": 9898}],
                    "timeouts": {"request": "10s"}
                }]),
                "{analysis}"
            );
        }
    }

    #[test]
    fn the_route_splits_by_weight_between_primary_and_canary() {
        let c = canary("", "{stepWeight: 10}");
        let route = http_route(&c, Routes::canary(30)).unwrap();
        assert_eq!(route.metadata.name.as_deref(), Some("podinfo"));
        assert_eq!(
            route.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "sluice"
        );
        assert_eq!(
            serde_json::to_value(&route.spec).unwrap(),
            json!({
                "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "edge"}],
                "hostnames": ["app.example.com"],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 9898, "weight": 70},
                        {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 9898, "weight": 30},
                    ],
                }],
            })
        );
    }

    #[test]
    fn a_service_parent_routes_the_mesh() {
        let c: Canary = {
            let mut c = canary("", "{stepWeight: 10}");
            c.spec.service.gateway_refs = vec![ParentReference {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "podinfo".into(),
                port: Some(9898),
                ..Default::default()
            }];
            c
        };
        let spec = render(&c, Routes::ALL_PRIMARY);
        assert_eq!(
            spec["parentRefs"],
            json!([{"group": "", "kind": "Service", "name": "podinfo", "port": 9898}])
        );
    }

    #[test]
    fn istio_matches_translate_or_name_the_field() {
        // (service.match, analysis.match, rendered matches of the first rule, or the error)
        let cases: &[(&str, &str, Result<serde_json::Value, &str>)] = &[
            (
                "",
                "",
                Ok(json!([{"path": {"type": "PathPrefix", "value": "/"}}])),
            ),
            (
                "    match: [{uri: {prefix: /api}, method: {exact: GET}}]",
                "",
                Ok(json!([{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}])),
            ),
            (
                "    match: [{uri: {exact: /login}}, {uri: {regex: '/v[0-9]+/.*'}}]",
                "",
                Ok(json!([
                    {"path": {"type": "Exact", "value": "/login"}},
                    {"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"}},
                ])),
            ),
            (
                "",
                "match: [{headers: {x-canary: {exact: insider}}}, {headers: {user-agent: {prefix: 'Mozilla/5.0 (X11'}}}, {queryParams: {beta: {}}}]",
                Ok(json!([
                    {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-canary", "value": "insider"}]},
                    {"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "RegularExpression", "name": "user-agent", "value": "^Mozilla/5\\.0 \\(X11.*"}]},
                    {"path": {"type": "PathPrefix", "value": "/"}, "queryParams": [{"type": "RegularExpression", "name": "beta", "value": ".*"}]},
                ])),
            ),
            (
                "    match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}}]",
                "match: [{headers: {x-team: {exact: b}, cookie: {regex: '^(.*?;)?(canary=always)(;.*)?$'}}}]",
                Ok(json!([{
                    "path": {"type": "PathPrefix", "value": "/api"},
                    "headers": [
                        {"type": "RegularExpression", "name": "cookie", "value": "^(.*?;)?(canary=always)(;.*)?$"},
                        {"type": "Exact", "name": "x-team", "value": "b"},
                    ],
                }])),
            ),
            ("    match: [{sourceLabels: {app: web}}]", "", Err("spec.service.match[0].sourceLabels")),
            ("", "match: [{uri: {prefix: /}}, {port: 80}]", Err("spec.analysis.match[1].port")),
            ("    match: [{method: {prefix: G}}]", "", Err("spec.service.match[0].method")),
            ("    match: [{uri: {prefix: api}}]", "", Err("spec.service.match[0].uri")),
            (
                "    match: [{headers: {x: {exact: a, regex: b}}}]",
                "",
                Err("spec.service.match[0].headers.x"),
            ),
        ];
        for (service, analysis, want) in cases {
            let analysis = if analysis.is_empty() {
                "{stepWeight: 10}".to_string()
            } else {
                format!("{{stepWeight: 10, {analysis}}}")
            };
            let c = canary(service, &analysis);
            match (http_route(&c, Routes::canary(10)), want) {
                (Ok(route), Ok(matches)) => assert_eq!(
                    serde_json::to_value(&route.spec.rules[0].matches).unwrap(),
                    *matches,
                    "{service} / {analysis}"
                ),
                (Err(Error::Invalid { field, .. }), Err(want)) => {
                    assert_eq!(field, *want, "{service} / {analysis}")
                }
                (got, want) => panic!("{service} / {analysis}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_ab_test_keeps_everyone_else_on_the_primary() {
        let c = canary(
            "",
            "{iterations: 10, match: [{headers: {x-canary: {exact: insider}}}]}",
        );
        let route = http_route(&c, Routes::canary(100)).unwrap();
        let rules = &route.spec.rules;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].matches[0].headers[0].name, "x-canary");
        assert_eq!(
            weights(&rules[0]),
            [("podinfo-primary", 0), ("podinfo-canary", 100)]
        );
        assert!(rules[1].matches[0].headers.is_empty());
        assert_eq!(
            weights(&rules[1]),
            [("podinfo-primary", 100), ("podinfo-canary", 0)]
        );
    }

    #[test]
    fn service_settings_become_filters_and_timeouts() {
        let c = canary(
            r#"    timeout: 30s
    backendTimeout: 10s
    headers:
      request: {set: {x-env: prod}, remove: [x-debug]}
      response: {add: {x-served-by: podinfo}}
    rewrite: {uri: /v2, authority: internal.example.com}
    mirror: [{backendRef: {name: shadow, port: 80}, percent: 5}]
    corsPolicy: {allowOrigin: ["https://example.com"], allowMethods: [GET, POST], maxAge: 24h, allowCredentials: true}"#,
            "{stepWeight: 10}",
        );
        let spec = render(&c, Routes::ALL_PRIMARY);
        let rule = &spec["rules"][0];
        assert_eq!(
            rule["timeouts"],
            json!({"request": "30s", "backendRequest": "10s"})
        );
        assert_eq!(
            rule["filters"],
            json!([
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}], "remove": ["x-debug"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "podinfo"}]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.example.com", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/v2"}}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "shadow", "port": 80}, "percent": 5}},
                {"type": "CORS", "cors": {"allowOrigins": ["https://example.com"], "allowCredentials": true, "allowMethods": ["GET", "POST"], "maxAge": 86400}},
            ])
        );
    }

    #[test]
    fn what_the_gateway_api_cannot_say_names_the_field() {
        // (service settings, the field named)
        let cases = [
            ("    retries: {attempts: 3}", "spec.service.retries"),
            ("    gateways: [mesh]", "spec.service.gateways"),
            (
                "    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
                "spec.service.trafficPolicy",
            ),
            ("    timeout: 1.5s", "spec.service.timeout"),
            (
                "    timeout: 5s\n    backendTimeout: 10s",
                "spec.service.backendTimeout",
            ),
            (
                "    rewrite: {uri: /v2, type: ReplacePrefixMatch}\n    match: [{uri: {exact: /v1}}]",
                "spec.service.rewrite.type",
            ),
            (
                "    corsPolicy: {allowOrigins: [{prefix: 'https://'}]}",
                "spec.service.corsPolicy.allowOrigins",
            ),
            ("    corsPolicy: {maxAge: soon}", "spec.service.corsPolicy.maxAge"),
        ];
        for (service, want) in cases {
            let c = canary(service, "{stepWeight: 10}");
            match http_route(&c, Routes::ALL_PRIMARY) {
                Err(Error::Invalid { field, .. }) => assert_eq!(field, want, "{service}"),
                other => panic!("{service}: {other:?}"),
            }
        }
        let mut c = canary("", "{stepWeight: 10}");
        c.spec.service.gateway_refs.clear();
        assert!(matches!(
            edge_only().validate(&c),
            Err(Error::Invalid { field, .. }) if field == "spec.service.gatewayRefs"
        ));
    }

    #[test]
    fn a_prefix_rewrite_keeps_the_rest_of_the_path() {
        let c = canary(
            "    rewrite: {uri: /v2, type: ReplacePrefixMatch}\n    match: [{uri: {prefix: /v1}}]",
            "{stepWeight: 10}",
        );
        let spec = render(&c, Routes::ALL_PRIMARY);
        assert_eq!(
            spec["rules"][0]["filters"][0]["urlRewrite"]["path"],
            json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"})
        );
    }

    #[test]
    fn mirroring_copies_to_the_canary_with_its_percentage() {
        let c = canary("", "{iterations: 5, mirror: true, mirrorWeight: 40}");
        let mirrored = |percent| {
            let routes = Routes {
                mirror: Some(percent),
                ..Routes::ALL_PRIMARY
            };
            render(&c, routes)["rules"][0]["filters"].clone()
        };
        assert_eq!(
            mirrored(40),
            json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 9898}, "percent": 40}}])
        );
        // Every request is the Gateway API's default: no percentage written.
        assert_eq!(mirrored(100)[0]["requestMirror"].get("percent"), None);
        assert_eq!(
            render(&c, Routes::canary(10))["rules"][0].get("filters"),
            None
        );
    }

    #[test]
    fn session_affinity_pins_canary_clients_and_expires_the_cookie_after() {
        let c = canary(
            "",
            "{stepWeight: 10, sessionAffinity: {cookieName: flagger-cookie, primaryCookieName: primary-cookie, maxAge: 60}}",
        );
        let running = Routes {
            session: Some("abc".into()),
            ..Routes::canary(20)
        };
        let route = http_route(&c, running).unwrap();
        let rules = &route.spec.rules;
        assert_eq!(rules.len(), 3);
        let cookie = |r: &HttpRouteRule| r.matches[0].headers[0].value.clone();
        assert_eq!(cookie(&rules[0]), ".*flagger\\-cookie=abc.*");
        assert_eq!(weights(&rules[0])[1], ("podinfo-canary", 100));
        assert_eq!(cookie(&rules[1]), ".*primary\\-cookie=abc.*");
        assert_eq!(weights(&rules[1])[0], ("podinfo-primary", 100));
        let set_cookie = |b: &HttpBackendRef| {
            b.filters[0].response_header_modifier.as_ref().unwrap().add[0]
                .value
                .clone()
        };
        assert_eq!(
            set_cookie(&rules[2].backend_refs[1]),
            "flagger-cookie=abc; Max-Age=60"
        );
        assert_eq!(
            set_cookie(&rules[2].backend_refs[0]),
            "primary-cookie=abc; Max-Age=60"
        );
        let done = Routes {
            session: Some("abc".into()),
            ..Routes::ALL_PRIMARY
        };
        let route = http_route(&c, done).unwrap();
        assert_eq!(route.spec.rules.len(), 1);
        assert_eq!(
            set_cookie(&route.spec.rules[0].backend_refs[0]),
            "flagger-cookie=abc; Max-Age=-1"
        );
    }

    #[test]
    fn what_the_api_server_adds_is_not_drift_but_an_edit_is() {
        let c = canary("", "{stepWeight: 10}");
        let desired = edge_only()
            .route_objects(&c, Routes::canary(10))
            .unwrap()
            .remove(0);
        assert!(HTTP_ROUTE.is_kind_of(&desired));
        let mut live = desired.clone();
        // Defaults the API server writes into fields sluice leaves out.
        live.data["spec"]["rules"][0]["backendRefs"][0]["namespace"] = json!(null);
        live.data["status"] = json!({"parents": []});
        assert!(!edge_only().drifted(&desired, &live));
        live.data["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(50);
        assert!(edge_only().drifted(&desired, &live));
    }
}
