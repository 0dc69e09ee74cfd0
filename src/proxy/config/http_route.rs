//! HTTPRoutes whose parents are Services (the Gateway API's mesh form, GAMMA) turned into
//! one `VirtualHost` per parent Service. Unlike a VirtualService's routes, which are tried
//! in order, the Gateway API orders every match of every route attached to a Service by
//! precedence: an exact path, then the longest path prefix, then a method, then the most
//! header matches, then the most query matches; ties go to the oldest route, then to
//! `namespace/name`, then to the order of rules and matches. Each match becomes a route of
//! its own, so that order is the order of the table.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::file::{object_name, Object};
use super::virtual_host::header_ops;
use super::{invalid, Error};
use crate::api::gateway::{
    HttpBackendRef, HttpHeaderFilter, HttpPathModifier, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, ParentReference,
};
use crate::api::istio::{self, HeaderOperations};
use crate::proxy::routes::{
    self, qualify_host, ClusterKey, HeaderOps, LocalReply, MatchBlock, Mirror, Redirect, Rewrite,
    Route, RouteDestination, StringMatcher, VirtualHost, WeightedDestinations,
};

/// The largest weight the Gateway API allows a backend.
const MAX_WEIGHT: i64 = 1_000_000;

/// One HTTPRoute as the builder sees it.
pub(super) struct RouteObject<'a> {
    /// `HTTPRoute namespace/name`, for errors.
    pub object: String,
    pub namespace: &'a str,
    /// RFC 3339; routes without one (file mode) count as the oldest.
    pub created: &'a str,
    pub spec: &'a HttpRouteSpec,
}

/// Whether a parent is a Service (group `""` or `core`, kind `Service`).
pub fn is_service_parent(parent: &ParentReference) -> bool {
    matches!(parent.group.as_deref(), Some("") | Some("core"))
        && parent.kind.as_deref() == Some("Service")
}

/// The FQDNs of the Services among `spec`'s parents in `namespace`, with their index.
pub fn service_parents(namespace: &str, spec: &HttpRouteSpec) -> Vec<(usize, String)> {
    spec.parent_refs
        .iter()
        .enumerate()
        .filter(|(_, p)| is_service_parent(p))
        .filter(|(_, p)| p.namespace.as_deref().unwrap_or(namespace) == namespace)
        .map(|(i, p)| (i, qualify_host(&p.name, namespace)))
        .collect()
}

/// Every match of every route, ordered by the Gateway API's precedence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// Exact, then prefix, then regular expression (whose rank the API leaves to us).
    path_kind: u8,
    path_length: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    created: String,
    object: String,
    rule: usize,
    matched: usize,
}

/// The virtual hosts of the Services these routes attach to, and every warning about what
/// they ask for but the proxy does not enforce.
pub(super) fn build_virtual_hosts(
    routes: &[RouteObject<'_>],
    referenced: &mut BTreeSet<ClusterKey>,
    warnings: &mut Vec<String>,
) -> Result<Vec<VirtualHost>, Error> {
    let mut by_host: BTreeMap<String, Vec<(Precedence, Route)>> = BTreeMap::new();
    for route in routes {
        let parents = service_parents(route.namespace, route.spec);
        if parents.is_empty() {
            continue;
        }
        let built = build_route(route, referenced)?;
        warnings.extend(unsupported(route));
        for (_, host) in parents {
            let entries = by_host.entry(host).or_default();
            for (precedence, r) in &built {
                entries.push((precedence.clone(), r.clone()));
            }
        }
    }
    Ok(by_host
        .into_iter()
        .map(|(host, mut entries)| {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let name = entries
                .first()
                .map(|(p, _)| p.object.trim_start_matches("HTTPRoute ").to_string())
                .unwrap_or_default();
            VirtualHost {
                name,
                hosts: vec![host],
                routes: entries.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect())
}

/// Checks one route on its own, as the builder would; a route without a Service parent
/// here is not this proxy's to judge.
pub fn check_http_route(route: &Object<HttpRouteSpec>, default_ns: &str) -> Result<(), Error> {
    let namespace = route.metadata.namespace.as_deref().unwrap_or(default_ns);
    if service_parents(namespace, &route.spec).is_empty() {
        return Ok(());
    }
    let route = RouteObject {
        object: object_name("HTTPRoute", &route.metadata, default_ns),
        namespace,
        created: "",
        spec: &route.spec,
    };
    build_route(&route, &mut BTreeSet::new()).map(|_| ())
}

/// What the route asks for that the proxy accepts but does not enforce.
fn unsupported(route: &RouteObject<'_>) -> Vec<String> {
    let mut found = Vec::new();
    if !route.spec.hostnames.is_empty() {
        found.push("spec.hostnames (a Service parent is reached by its own name)".to_string());
    }
    for (i, parent) in route.spec.parent_refs.iter().enumerate() {
        if is_service_parent(parent) && (parent.port.is_some() || parent.section_name.is_some()) {
            found.push(format!(
                "spec.parentRefs[{i}].port/sectionName (the route applies to every port)"
            ));
        }
    }
    found
        .into_iter()
        .map(|f| format!("{}: {f} is not enforced by sluice-proxy", route.object))
        .collect()
}

fn route_err(object: &str) -> impl Fn(routes::Error) -> Error + '_ {
    move |source| Error::Route {
        object: object.into(),
        source,
    }
}

fn build_route(
    route: &RouteObject<'_>,
    referenced: &mut BTreeSet<ClusterKey>,
) -> Result<Vec<(Precedence, Route)>, Error> {
    let mut built = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let template = build_rule(route, &field, rule, referenced)?;
        // A rule without matches matches every request, as `PathPrefix: /` does.
        let default_match = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let (block, precedence) = build_match(route, &format!("{field}.matches[{j}]"), m)?;
            let mut r = template.clone();
            r.matches = vec![block];
            built.push((
                Precedence {
                    rule: i,
                    matched: j,
                    ..precedence
                },
                r,
            ));
        }
    }
    Ok(built)
}

fn build_match(
    route: &RouteObject<'_>,
    field: &str,
    m: &HttpRouteMatch,
) -> Result<(MatchBlock, Precedence), Error> {
    let object = route.object.as_str();
    let regex = |f: &str, pattern: &str| {
        let sm = istio::StringMatch {
            regex: Some(pattern.to_string()),
            ..Default::default()
        };
        StringMatcher::compile(f, &sm, false).map_err(route_err(object))
    };
    let (uri, path_kind, path_length) = match &m.path {
        None => (StringMatcher::PathPrefix(String::new()), 1, 1),
        Some(p) => {
            let f = format!("{field}.path");
            if !p.value.starts_with('/') {
                return Err(invalid(object, &format!("{f}.value"), "must start with /"));
            }
            match p.match_type.as_str() {
                "Exact" => (StringMatcher::Exact(p.value.clone()), 0, p.value.len()),
                "" | "PathPrefix" => {
                    let stem = p.value.trim_end_matches('/').to_string();
                    (StringMatcher::PathPrefix(stem), 1, p.value.len())
                }
                "RegularExpression" => (regex(&format!("{f}.value"), &p.value)?, 2, 0),
                other => {
                    return Err(invalid(
                        object,
                        &format!("{f}.type"),
                        &format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                    ))
                }
            }
        }
    };
    let values = |kind: &str, list: &[crate::api::gateway::HttpValueMatch], fold: bool| {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (k, v) in list.iter().enumerate() {
            let f = format!("{field}.{kind}[{k}]");
            let name = if fold {
                v.name.to_ascii_lowercase()
            } else {
                v.name.clone()
            };
            // The Gateway API: of matches on one name, the first counts.
            if !seen.insert(name.clone()) {
                continue;
            }
            let matcher = match v.match_type.as_str() {
                "" | "Exact" => StringMatcher::Exact(v.value.clone()),
                "RegularExpression" => regex(&format!("{f}.value"), &v.value)?,
                other => {
                    return Err(invalid(
                        object,
                        &format!("{f}.type"),
                        &format!("{other:?} is not Exact or RegularExpression"),
                    ))
                }
            };
            out.push((name, matcher));
        }
        Ok::<_, Error>(out)
    };
    let headers = values("headers", &m.headers, true)?;
    let query_params = values("queryParams", &m.query_params, false)?;
    let precedence = Precedence {
        path_kind,
        path_length: Reverse(path_length),
        method: Reverse(m.method.is_some()),
        headers: Reverse(headers.len()),
        query_params: Reverse(query_params.len()),
        created: route.created.to_string(),
        object: route.object.clone(),
        rule: 0,
        matched: 0,
    };
    let block = MatchBlock {
        uri: Some(uri),
        method: m.method.clone().map(StringMatcher::Exact),
        headers,
        query_params,
        ..MatchBlock::default()
    };
    Ok((block, precedence))
}

/// A rule with its filters, backends and timeouts; its matches are set per match.
fn build_rule(
    route: &RouteObject<'_>,
    field: &str,
    rule: &HttpRouteRule,
    referenced: &mut BTreeSet<ClusterKey>,
) -> Result<Route, Error> {
    let object = route.object.as_str();
    let ns = route.namespace;
    let mut filters = Filters::default();
    for (k, filter) in rule.filters.iter().enumerate() {
        filters.add(object, ns, &format!("{field}.filters[{k}]"), filter, true)?;
    }
    for m in &filters.mirrors {
        referenced.insert(m.cluster.clone());
    }

    let mut entries = Vec::with_capacity(rule.backend_refs.len());
    for (k, backend) in rule.backend_refs.iter().enumerate() {
        let f = format!("{field}.backendRefs[{k}]");
        let weight = i64::from(backend.weight.unwrap_or(1));
        if !(0..=MAX_WEIGHT).contains(&weight) {
            return Err(invalid(
                object,
                &format!("{f}.weight"),
                &format!("{weight} is not 0..{MAX_WEIGHT}"),
            ));
        }
        if weight == 0 {
            continue;
        }
        let mut own = Filters::default();
        for (l, filter) in backend.filters.iter().enumerate() {
            own.add(object, ns, &format!("{f}.filters[{l}]"), filter, false)?;
        }
        let cluster = backend_cluster(ns, backend);
        referenced.insert(cluster.clone());
        let port = backend
            .port
            .map(|p| {
                u16::try_from(p).map_err(|_| invalid(object, &format!("{f}.port"), "not a port"))
            })
            .transpose()?;
        entries.push((
            RouteDestination {
                cluster,
                port,
                request_headers: own.request_headers,
                response_headers: own.response_headers,
            },
            Some(weight),
        ));
    }
    // No backend to send to, or every weight 0: the Gateway API answers 500.
    let (destinations, no_backend) = if entries.is_empty() {
        (WeightedDestinations::none(), true)
    } else {
        let d = WeightedDestinations::new(&format!("{field}.backendRefs"), entries)
            .map_err(route_err(object))?;
        (d, false)
    };

    let timeout = |name: &str, value: Option<&String>| -> Result<Option<Duration>, Error> {
        value
            .map(|t| {
                crate::duration::parse_gateway_api(t).map_err(|e| {
                    invalid(object, &format!("{field}.timeouts.{name}"), &e.to_string())
                })
            })
            .transpose()
            .map(|t| t.filter(|t| !t.is_zero()))
    };
    let timeouts = rule.timeouts.as_ref();
    let request = timeout("request", timeouts.and_then(|t| t.request.as_ref()))?;
    let backend = timeout(
        "backendRequest",
        timeouts.and_then(|t| t.backend_request.as_ref()),
    )?;
    // One try per request unless a retry policy adds more, so the backend's timeout bounds
    // the request too.
    let timeout = match (request, backend) {
        (Some(r), Some(b)) => Some(r.min(b)),
        (r, b) => r.or(b),
    };

    let reply = match filters.redirect {
        Some(redirect) => Some(LocalReply::Redirect(redirect)),
        None if no_backend => Some(LocalReply::Status(500)),
        None => None,
    };
    Ok(Route {
        name: None,
        matches: Vec::new(),
        destinations,
        timeout,
        retries: None,
        fault: None,
        mirrors: filters.mirrors,
        request_headers: filters.request_headers,
        response_headers: filters.response_headers,
        rewrite: filters.rewrite,
        reply,
    })
}

/// A backend's cluster: a Service of the route's namespace unless it names another.
fn backend_cluster(namespace: &str, backend: &HttpBackendRef) -> ClusterKey {
    let ns = backend.namespace.as_deref().unwrap_or(namespace);
    ClusterKey {
        service: qualify_host(&backend.name, ns),
        subset: None,
    }
}

/// The filters of a rule (`rule`) or of one backend.
#[derive(Default)]
struct Filters {
    request_headers: HeaderOps,
    response_headers: HeaderOps,
    mirrors: Vec<Mirror>,
    rewrite: Option<Rewrite>,
    redirect: Option<Redirect>,
}

impl Filters {
    fn add(
        &mut self,
        object: &str,
        namespace: &str,
        field: &str,
        filter: &HttpRouteFilter,
        rule: bool,
    ) -> Result<(), Error> {
        let missing = || {
            invalid(
                object,
                field,
                &format!("type {} without its settings", filter.filter_type),
            )
        };
        let headers = |f: &HttpHeaderFilter, name: &str| {
            let ops = HeaderOperations {
                set: f
                    .set
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                add: f
                    .add
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                remove: f.remove.clone(),
            };
            header_ops(object, &format!("{field}.{name}"), Some(&ops))
        };
        match filter.filter_type.as_str() {
            "RequestHeaderModifier" => {
                let f = filter
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(missing)?;
                self.request_headers = headers(f, "requestHeaderModifier")?;
            }
            "ResponseHeaderModifier" => {
                let f = filter
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(missing)?;
                self.response_headers = headers(f, "responseHeaderModifier")?;
            }
            "RequestMirror" if rule => {
                let f = filter.request_mirror.as_ref().ok_or_else(missing)?;
                let percent = match (f.percent, &f.fraction) {
                    (Some(p), _) => f64::from(p),
                    (None, Some(fr)) => {
                        let denominator = fr.denominator.unwrap_or(100);
                        if denominator <= 0 || fr.numerator < 0 || fr.numerator > denominator {
                            return Err(invalid(
                                object,
                                &format!("{field}.requestMirror.fraction"),
                                "must be a fraction in 0..1",
                            ));
                        }
                        f64::from(fr.numerator) * 100.0 / f64::from(denominator)
                    }
                    (None, None) => 100.0,
                };
                if !(0.0..=100.0).contains(&percent) {
                    return Err(invalid(
                        object,
                        &format!("{field}.requestMirror.percent"),
                        &format!("{percent} is not 0..100"),
                    ));
                }
                let backend = &f.backend_ref;
                let ns = backend.namespace.as_deref().unwrap_or(namespace);
                self.mirrors.push(Mirror {
                    cluster: ClusterKey {
                        service: qualify_host(&backend.name, ns),
                        subset: None,
                    },
                    percent,
                });
            }
            "URLRewrite" if rule => {
                let f = filter.url_rewrite.as_ref().ok_or_else(missing)?;
                if let Some(h) = &f.hostname {
                    http::HeaderValue::from_str(h).map_err(|_| {
                        invalid(
                            object,
                            &format!("{field}.urlRewrite.hostname"),
                            "invalid host",
                        )
                    })?;
                }
                let (uri, full_path) = match &f.path {
                    None => (None, false),
                    Some(p) => {
                        let (path, full) =
                            path_modifier(object, &format!("{field}.urlRewrite.path"), p)?;
                        (Some(path), full)
                    }
                };
                self.rewrite = Some(Rewrite {
                    uri,
                    authority: f.hostname.clone(),
                    full_path,
                });
            }
            "RequestRedirect" if rule => {
                let f = filter.request_redirect.as_ref().ok_or_else(missing)?;
                let rf = format!("{field}.requestRedirect");
                let scheme = match f.scheme.as_deref() {
                    None => None,
                    Some(s @ ("http" | "https")) => Some(s.to_string()),
                    Some(other) => {
                        return Err(invalid(
                            object,
                            &format!("{rf}.scheme"),
                            &format!("{other:?} is not http or https"),
                        ))
                    }
                };
                let status = match f.status_code.unwrap_or(302) {
                    s @ (301 | 302) => s as u16,
                    other => {
                        return Err(invalid(
                            object,
                            &format!("{rf}.statusCode"),
                            &format!("{other} is not 301 or 302"),
                        ))
                    }
                };
                let port = f
                    .port
                    .map(|p| {
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| invalid(object, &format!("{rf}.port"), "not a port"))
                    })
                    .transpose()?;
                let (path, full_path) = match &f.path {
                    None => (None, false),
                    Some(p) => {
                        let (path, full) = path_modifier(object, &format!("{rf}.path"), p)?;
                        (Some(path), full)
                    }
                };
                self.redirect = Some(Redirect {
                    scheme,
                    hostname: f.hostname.clone(),
                    path,
                    full_path,
                    port,
                    status,
                });
            }
            other => {
                let where_ = if rule { "a rule" } else { "a backend" };
                return Err(invalid(
                    object,
                    &format!("{field}.type"),
                    &format!("{other} on {where_} is not enforced by sluice-proxy"),
                ));
            }
        }
        Ok(())
    }
}

/// A path modifier's new path, and whether it replaces the whole path.
fn path_modifier(object: &str, field: &str, p: &HttpPathModifier) -> Result<(String, bool), Error> {
    match p.modifier_type.as_str() {
        "ReplaceFullPath" => p
            .replace_full_path
            .clone()
            .map(|v| (v, true))
            .ok_or_else(|| invalid(object, &format!("{field}.replaceFullPath"), "is required")),
        "ReplacePrefixMatch" => p
            .replace_prefix_match
            .clone()
            .map(|v| (v, false))
            .ok_or_else(|| {
                invalid(
                    object,
                    &format!("{field}.replacePrefixMatch"),
                    "is required",
                )
            }),
        other => Err(invalid(
            object,
            &format!("{field}.type"),
            &format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use crate::proxy::config::{build, check_http_route, ConfigFile, ProxySettings};
    use crate::proxy::routes::{LocalReply, RequestView, Selection, SourceIdentity};

    /// Two routes on the Service `reviews`: the older one splits by weight, the newer one
    /// sends a header cohort, exact paths and `/api` elsewhere. A third has a Gateway parent
    /// and is not this proxy's.
    const ROUTES: &str = r#"
namespace: shop
httpRoutes:
- metadata: {name: reviews, creationTimestamp: "2026-01-01T00:00:00Z"}
  spec:
    parentRefs: [{group: "", kind: Service, name: reviews}]
    rules:
    - backendRefs:
      - {name: reviews-primary, port: 80, weight: 900000}
      - {name: reviews-canary, port: 80, weight: 100000}
- metadata: {name: cohorts, creationTimestamp: "2026-02-01T00:00:00Z"}
  spec:
    parentRefs: [{group: "", kind: Service, name: reviews}]
    rules:
    - matches: [{path: {type: PathPrefix, value: /api/}}]
      filters:
      - type: URLRewrite
        urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-route, value: api}]}
      backendRefs: [{name: reviews-canary, port: 80}]
    - matches:
      - {path: {type: PathPrefix, value: /}, headers: [{name: X-Cohort, value: beta}]}
      - {path: {type: Exact, value: /health}}
      backendRefs: [{name: reviews-canary, port: 80}]
    - matches: [{path: {type: Exact, value: /old}}]
      filters:
      - type: RequestRedirect
        requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
    - matches: [{path: {type: PathPrefix, value: /drained}}]
      backendRefs: [{name: reviews-canary, port: 80, weight: 0}]
- metadata: {name: edge}
  spec:
    parentRefs: [{name: public}]
    rules:
    - filters: [{type: ExtensionRef}]
      backendRefs: [{name: reviews-canary, port: 80}]
endpoints:
- {service: reviews-primary, address: "127.0.0.1:3001"}
- {service: reviews-canary, address: "127.0.0.1:3002"}
"#;

    fn config(yaml: &str) -> ConfigFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn matches_are_ordered_by_the_gateway_apis_precedence() {
        let settings = ProxySettings {
            namespace: "shop".into(),
            ..Default::default()
        };
        let snap = build(&config(ROUTES), &settings, None).unwrap();
        assert_eq!(snap.table.virtual_hosts.len(), 1);
        let vhost = &snap.table.virtual_hosts[0];
        assert_eq!(vhost.hosts, ["reviews.shop.svc.cluster.local"]);
        let source = SourceIdentity {
            gateways: vec!["mesh".into()],
            ..Default::default()
        };
        let mut cohort = HeaderMap::new();
        cohort.insert("x-cohort", "beta".parse().unwrap());
        let none = HeaderMap::new();
        // (path, headers, the backend or reply chosen, the path sent on)
        let cases: [(&str, &HeaderMap, &str, Option<&str>); 9] = [
            ("/", &none, "split", None),
            ("/reviews/1", &none, "split", None),
            ("/reviews/1", &cohort, "reviews-canary", None),
            ("/health", &none, "reviews-canary", None),
            ("/health/deep", &none, "split", None),
            ("/api/items", &none, "reviews-canary", Some("/v2/items")),
            ("/api", &none, "reviews-canary", Some("/v2")),
            ("/apiary", &none, "split", None),
            ("/old", &none, "redirect http://reviews:8080/new", None),
        ];
        for (path, headers, want, rewritten) in cases {
            let req = RequestView {
                authority: "reviews:8080",
                path,
                query: None,
                method: "GET",
                scheme: "http",
                port: Some(8080),
                headers,
            };
            let Selection::Route { route, block, .. } = snap.table.select(&req, &source) else {
                panic!("{path}: no route");
            };
            let got = match &route.reply {
                Some(LocalReply::Redirect(r)) => {
                    let matched = route.matches[block].uri.as_ref();
                    format!("redirect {}", r.location(&req, matched))
                }
                Some(LocalReply::Status(s)) => format!("status {s}"),
                None if route.destinations.shares().count() == 2 => {
                    let shares: Vec<f64> = route.destinations.shares().map(|(_, s)| s).collect();
                    assert_eq!(shares, [0.9, 0.1], "{path}");
                    "split".into()
                }
                None => {
                    let d = route.destinations.pick(0).unwrap();
                    d.cluster.service.split('.').next().unwrap().to_string()
                }
            };
            assert_eq!(got, want, "{path} {headers:?}");
            assert_eq!(
                route.rewritten_path(block, path).as_deref(),
                rewritten,
                "{path}"
            );
            if path.starts_with("/api/") {
                assert_eq!(
                    route.request_headers.set,
                    [("x-route".into(), "api".into())]
                );
            }
        }
        // Every weight 0: the Gateway API answers 500.
        let req = RequestView {
            authority: "reviews",
            path: "/drained/x",
            query: None,
            method: "GET",
            scheme: "http",
            port: None,
            headers: &none,
        };
        let Selection::Route { route, .. } = snap.table.select(&req, &source) else {
            panic!("no route");
        };
        assert_eq!(route.reply, Some(LocalReply::Status(500)));
    }

    #[test]
    fn invalid_routes_name_the_field() {
        let route = |rule: &str| {
            format!(
                "httpRoutes:\n- metadata: {{name: r, namespace: shop}}\n  spec:\n    parentRefs: [{{group: \"\", kind: Service, name: reviews}}]\n    rules:\n    - {rule}\n"
            )
        };
        // (rule, the field named in the error)
        let cases = [
            (
                "{matches: [{path: {type: Glob, value: /x}}], backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].matches[0].path.type",
            ),
            (
                "{matches: [{path: {type: RegularExpression, value: \"/(\"}}], backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].matches[0].path.value",
            ),
            (
                "{matches: [{headers: [{name: x, type: Prefix, value: a}]}], backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].matches[0].headers[0].type",
            ),
            (
                "{filters: [{type: CORS, cors: {}}], backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].filters[0].type",
            ),
            (
                "{filters: [{type: RequestMirror}], backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].filters[0]",
            ),
            (
                "{backendRefs: [{name: a, port: 80, weight: 1000001}]}",
                "spec.rules[0].backendRefs[0].weight",
            ),
            (
                "{backendRefs: [{name: a, port: 80, filters: [{type: URLRewrite, urlRewrite: {}}]}]}",
                "spec.rules[0].backendRefs[0].filters[0].type",
            ),
            (
                "{timeouts: {request: 1.5s}, backendRefs: [{name: a, port: 80}]}",
                "spec.rules[0].timeouts.request",
            ),
            (
                "{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]}",
                "spec.rules[0].filters[0].requestRedirect.statusCode",
            ),
        ];
        for (rule, field) in cases {
            let file = config(&route(rule));
            let err = check_http_route(&file.http_routes[0], "shop").unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("HTTPRoute shop/r: {field}:")),
                "{rule}: {text}"
            );
            assert!(build(&file, &ProxySettings::default(), None).is_err());
        }
        // A Gateway's route is not judged here, whatever it holds.
        let file = config(ROUTES);
        assert!(check_http_route(&file.http_routes[2], "shop").is_ok());
    }

    #[test]
    fn timeouts_mirrors_and_backend_filters_are_carried() {
        let yaml = r#"
httpRoutes:
- metadata: {name: r, namespace: shop}
  spec:
    parentRefs: [{group: "", kind: Service, name: reviews}]
    hostnames: [reviews.example.com]
    rules:
    - timeouts: {request: 2s, backendRequest: 500ms}
      filters:
      - type: RequestMirror
        requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 4}}
      backendRefs:
      - name: a
        port: 80
        filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: Set-Cookie, value: "s=1"}]}
"#;
        let snap = build(&config(yaml), &ProxySettings::default(), None).unwrap();
        let route = &snap.table.virtual_hosts[0].routes[0];
        assert_eq!(route.timeout, Some(std::time::Duration::from_millis(500)));
        assert_eq!(route.mirrors.len(), 1);
        assert_eq!(route.mirrors[0].percent, 25.0);
        assert_eq!(
            route.mirrors[0].cluster.service,
            "shadow.shop.svc.cluster.local"
        );
        let d = route.destinations.pick(0).unwrap();
        assert_eq!(
            d.response_headers.add,
            [("set-cookie".into(), "s=1".into())]
        );
        assert!(snap
            .warnings
            .iter()
            .any(|w| w.contains("spec.hostnames") && w.contains("not enforced")));
    }
}
