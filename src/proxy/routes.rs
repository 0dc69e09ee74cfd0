//! The route table and request matching. Pure: no IO, no clock, no randomness (callers
//! pass random draws in), no tokio or hyper, so every rule is a plain table-driven test.
//!
//! Istio semantics: the first VirtualService `http` route whose match holds wins; a
//! `match` list is an OR of blocks, all conditions of a block must hold; no `match` is a
//! catch-all. Weights are relative shares.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::HeaderMap;
use regex::Regex;

use crate::proxy::resilience::RetryPolicy;

pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{field}: invalid regex {pattern:?}: {reason}")]
    Regex {
        field: String,
        pattern: String,
        reason: String,
    },
    #[error("{field}: a StringMatch sets more than one of exact, prefix, regex")]
    AmbiguousStringMatch { field: String },
    #[error("{field}: weight {weight} is negative")]
    NegativeWeight { field: String, weight: i64 },
    #[error("{field}: the weights sum to 0; at least one destination needs a positive weight")]
    ZeroWeights { field: String },
    #[error("{field}: no destination")]
    NoDestination { field: String },
}

impl Error {
    /// Short label usable as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Regex { .. } => "regex",
            Error::AmbiguousStringMatch { .. } => "ambiguous_string_match",
            Error::NegativeWeight { .. } => "negative_weight",
            Error::ZeroWeights { .. } => "zero_weights",
            Error::NoDestination { .. } => "no_destination",
        }
    }
}

// === String matching ===

#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    /// The Gateway API's `PathPrefix`: whole path elements (`/foo` matches `/foo` and
    /// `/foo/bar`, not `/foobar`). Held without a trailing `/`; empty matches every path.
    PathPrefix(String),
    /// RE2 semantics: the pattern must match the whole value (compiled anchored).
    Regex(Regex),
    /// `{}`: the value is present, whatever it is.
    Present,
}

impl StringMatcher {
    /// Compiles an Istio StringMatch; `ignore_case` lower-cases exact/prefix and makes the
    /// regex case-insensitive (Istio's `ignoreUriCase`).
    pub fn compile(
        field: &str,
        m: &crate::api::istio::StringMatch,
        ignore_case: bool,
    ) -> Result<Self, Error> {
        use crate::api::istio::StringCondition;
        let condition = m.condition().ok_or_else(|| Error::AmbiguousStringMatch {
            field: field.into(),
        })?;
        let fold = |s: &str| {
            if ignore_case {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match condition {
            StringCondition::Exact(e) => StringMatcher::Exact(fold(e)),
            StringCondition::Prefix(p) => StringMatcher::Prefix(fold(p)),
            StringCondition::Regex(r) => {
                let flags = if ignore_case { "(?i)" } else { "" };
                let anchored = format!("{flags}^(?:{r})$");
                let regex = Regex::new(&anchored).map_err(|e| Error::Regex {
                    field: field.into(),
                    pattern: r.to_string(),
                    reason: e.to_string(),
                })?;
                StringMatcher::Regex(regex)
            }
            StringCondition::Present => StringMatcher::Present,
        })
    }

    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatcher::Exact(e) if ignore_case => value.to_lowercase() == *e,
            StringMatcher::Exact(e) => value == e,
            StringMatcher::Prefix(p) if ignore_case => value.to_lowercase().starts_with(p.as_str()),
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::PathPrefix(p) => value
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::Present => true,
        }
    }

    /// For display in the admin view.
    pub fn describe(&self) -> String {
        match self {
            StringMatcher::Exact(e) => format!("exact:{e}"),
            StringMatcher::Prefix(p) => format!("prefix:{p}"),
            StringMatcher::PathPrefix(p) => format!("path_prefix:{p}/"),
            StringMatcher::Regex(r) => format!("regex:{}", r.as_str()),
            StringMatcher::Present => "present".into(),
        }
    }
}

// === Requests ===

/// What matching looks at. Built by the server from the HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Host header (or :authority), possibly with a port.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    /// The port the request was addressed to, if known.
    pub port: Option<u16>,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self.headers.get_all(name).iter().peekable();
        values.peek()?;
        // Repeated headers are compared as one comma-joined value, like Envoy does.
        let joined: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
        Some(joined.join(","))
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// The caller's identity, as far as the proxy knows it (a sidecar knows its own workload).
#[derive(Clone, Debug, Default)]
pub struct SourceIdentity {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    /// Gateways this proxy acts as; a sidecar is `mesh`.
    pub gateways: Vec<String>,
}

impl SourceIdentity {
    pub fn acts_as(&self, gateways: &[String]) -> bool {
        if gateways.is_empty() {
            return self.gateways.iter().any(|g| g == "mesh");
        }
        gateways.iter().any(|wanted| {
            let wanted_name = wanted.rsplit('/').next().unwrap_or(wanted);
            self.gateways
                .iter()
                .any(|g| g == wanted || g.rsplit('/').next().unwrap_or(g) == wanted_name)
        })
    }
}

// === Match blocks ===

/// One `match` block: every present condition must hold.
#[derive(Clone, Debug, Default)]
pub struct MatchBlock {
    pub name: Option<String>,
    pub uri: Option<StringMatcher>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub headers: Vec<(String, StringMatcher)>,
    pub without_headers: Vec<(String, StringMatcher)>,
    pub query_params: Vec<(String, StringMatcher)>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

impl MatchBlock {
    pub fn matches(&self, req: &RequestView<'_>, source: &SourceIdentity) -> bool {
        if let Some(m) = &self.uri {
            if !m.matches(req.path, self.ignore_uri_case) {
                return false;
            }
        }
        let plain =
            |m: &Option<StringMatcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v, false));
        if !plain(&self.scheme, req.scheme)
            || !plain(&self.method, req.method)
            || !plain(&self.authority, req.authority)
        {
            return false;
        }
        if let Some(port) = self.port {
            if req.port != Some(port) {
                return false;
            }
        }
        for (name, m) in &self.headers {
            match req.header(name) {
                Some(v) if m.matches(&v, false) => {}
                _ => return false,
            }
        }
        for (name, m) in &self.without_headers {
            if let Some(v) = req.header(name) {
                if m.matches(&v, false) {
                    return false;
                }
            }
        }
        for (name, m) in &self.query_params {
            match req.query_param(name) {
                Some(v) if m.matches(v, false) => {}
                _ => return false,
            }
        }
        if !self
            .source_labels
            .iter()
            .all(|(k, v)| source.labels.get(k) == Some(v))
        {
            return false;
        }
        if let Some(ns) = &self.source_namespace {
            if *ns != source.namespace {
                return false;
            }
        }
        self.gateways.is_empty() || source.acts_as(&self.gateways)
    }
}

// === Destinations and weights ===

/// Where traffic goes: a service (FQDN) and optionally a DestinationRule subset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub service: String,
    pub subset: Option<String>,
}

impl std::fmt::Display for ClusterKey {
    /// Envoy's cluster naming: `outbound|port|subset|host`, without the port.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outbound|{}|{}",
            self.subset.as_deref().unwrap_or(""),
            self.service
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies set, then add, then remove. Invalid names/values were rejected at build.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        for (name, value) in &self.add {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        for name in &self.remove {
            headers.remove(name.as_str());
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDestination {
    pub cluster: ClusterKey,
    pub port: Option<u16>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// Weighted destinations whose weights are relative shares. Cannot be empty and cannot
/// sum to zero: that is checked once, here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedDestinations {
    entries: Vec<(RouteDestination, u32)>,
    total: u64,
}

impl WeightedDestinations {
    /// Istio's rule: a single destination with no weight gets everything; with several,
    /// an omitted weight is 0.
    pub fn new(field: &str, entries: Vec<(RouteDestination, Option<i64>)>) -> Result<Self, Error> {
        if entries.is_empty() {
            return Err(Error::NoDestination {
                field: field.into(),
            });
        }
        let single = entries.len() == 1;
        let mut checked = Vec::with_capacity(entries.len());
        for (i, (dest, weight)) in entries.into_iter().enumerate() {
            let weight = match weight {
                None if single => 100,
                None => 0,
                Some(w) if w < 0 => {
                    return Err(Error::NegativeWeight {
                        field: format!("{field}[{i}].weight"),
                        weight: w,
                    })
                }
                Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
            };
            checked.push((dest, weight));
        }
        let total: u64 = checked.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err(Error::ZeroWeights {
                field: field.into(),
            });
        }
        Ok(WeightedDestinations {
            entries: checked,
            total,
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// None at all: only for a route that answers by itself ([`Route::reply`]).
    pub fn none() -> Self {
        WeightedDestinations {
            entries: Vec::new(),
            total: 0,
        }
    }

    /// `draw` is uniform in [0, total); values beyond wrap around. None only for
    /// [`WeightedDestinations::none`].
    pub fn pick(&self, draw: u64) -> Option<&RouteDestination> {
        let mut point = draw % self.total.max(1);
        for (dest, weight) in &self.entries {
            let w = u64::from(*weight);
            if point < w {
                return Some(dest);
            }
            point -= w;
        }
        // Reached only without entries: point < total otherwise.
        self.entries.first().map(|(d, _)| d)
    }

    /// Each destination with its share in [0, 1].
    pub fn shares(&self) -> impl Iterator<Item = (&RouteDestination, f64)> {
        self.entries
            .iter()
            .map(move |(d, w)| (d, f64::from(*w) / self.total.max(1) as f64))
    }
}

// === Routes ===

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub cluster: ClusterKey,
    /// 0..=100
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(u16, f64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the part of the path the route's uri prefix matched (or the whole path).
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// `uri` replaces the whole path even where a prefix matched (the Gateway API's
    /// `ReplaceFullPath`).
    pub full_path: bool,
}

/// An answer the proxy gives itself instead of forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalReply {
    /// A bare status: the Gateway API's answer for a rule without usable backends.
    Status(u16),
    Redirect(Redirect),
}

/// The Gateway API's `RequestRedirect`: each part unset keeps the request's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    /// The new path, replacing a matched prefix unless `full_path`.
    pub path: Option<String>,
    pub full_path: bool,
    pub port: Option<u16>,
    pub status: u16,
}

impl Redirect {
    /// The `Location` for a request. Without a port of its own, a new scheme gets its
    /// well-known port and keeps none; otherwise the request's port is kept. Ports 80 for
    /// http and 443 for https are not written, as the Gateway API asks.
    pub fn location(&self, req: &RequestView<'_>, matched: Option<&StringMatcher>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let host = match &self.hostname {
            Some(h) => h.clone(),
            None => host_without_port(req.authority),
        };
        let port = self.port.or_else(|| match self.scheme {
            Some(_) => None,
            None => authority_port(req.authority),
        });
        let port = port
            .filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)))
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let path = match &self.path {
            Some(new) => replace_path(new, self.full_path, matched, req.path),
            None => req.path.to_string(),
        };
        let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

/// `path` with `new` in place of what `matched` matched (a prefix), or in place of all of
/// it when `full_path` or when the match was not a prefix.
fn replace_path(new: &str, full_path: bool, matched: Option<&StringMatcher>, path: &str) -> String {
    if full_path {
        return new.to_string();
    }
    match matched {
        // `get` rather than slicing: with ignoreUriCase the matched prefix was
        // lower-cased, and its byte length need not fall on a char boundary of `path`.
        Some(StringMatcher::Prefix(p)) => {
            format!("{new}{}", path.get(p.len()..).unwrap_or_default())
        }
        Some(StringMatcher::PathPrefix(p)) => {
            let rest = path.get(p.len()..).unwrap_or_default();
            let joined = match (new.strip_suffix('/'), rest.is_empty()) {
                (Some(stem), false) => format!("{stem}{rest}"),
                _ => format!("{new}{rest}"),
            };
            if joined.is_empty() {
                "/".into()
            } else {
                joined
            }
        }
        _ => new.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    pub name: Option<String>,
    pub matches: Vec<MatchBlock>,
    pub destinations: WeightedDestinations,
    pub timeout: Option<Duration>,
    /// None: the mesh default retry policy applies.
    pub retries: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    /// Answered by the proxy itself; `destinations` are then not used.
    pub reply: Option<LocalReply>,
}

impl Route {
    /// The index of the first matching block, or `Some(usize::MAX)` for a catch-all.
    pub fn matching_block(&self, req: &RequestView<'_>, source: &SourceIdentity) -> Option<usize> {
        if self.matches.is_empty() {
            return Some(usize::MAX);
        }
        self.matches.iter().position(|m| m.matches(req, source))
    }

    /// The request path after `rewrite.uri`: a matched uri prefix is replaced, else the
    /// whole path (Envoy's prefix_rewrite / path rewrite).
    pub fn rewritten_path(&self, block: usize, path: &str) -> Option<String> {
        let rewrite = self.rewrite.as_ref()?;
        let new = rewrite.uri.as_ref()?;
        let matched = self.matches.get(block).and_then(|m| m.uri.as_ref());
        Some(replace_path(new, rewrite.full_path, matched, path))
    }
}

#[derive(Clone, Debug)]
pub struct VirtualHost {
    /// `namespace/name` of the VirtualService.
    pub name: String,
    pub hosts: Vec<String>,
    pub routes: Vec<Route>,
}

/// The answer to "where does this request go".
#[derive(Debug)]
pub enum Selection<'a> {
    Route {
        vhost: &'a VirtualHost,
        route: &'a Route,
        block: usize,
    },
    /// No VirtualService for the host, but it names a known service: Istio's default route.
    Service(&'a str),
    /// A VirtualService owns the host but no route matched, or the host is unknown (NR).
    NoRoute,
}

/// The immutable, validated route table. Built by `config`, swapped atomically on reload.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// The namespace short request hosts are resolved in.
    pub namespace: String,
    pub virtual_hosts: Vec<VirtualHost>,
    exact_hosts: HashMap<String, usize>,
    /// (suffix after `*`, vhost index); `*` alone is the empty suffix.
    wildcard_hosts: Vec<(String, usize)>,
    services: HashMap<String, ()>,
}

impl RouteTable {
    /// `virtual_hosts` hosts must be normalised FQDNs (see `qualify_host`); the first
    /// VirtualService claiming a host keeps it.
    pub fn new(
        namespace: String,
        virtual_hosts: Vec<VirtualHost>,
        services: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut exact_hosts = HashMap::new();
        let mut wildcard_hosts = Vec::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for host in &vh.hosts {
                if let Some(suffix) = host.strip_prefix('*') {
                    wildcard_hosts.push((suffix.to_string(), i));
                } else {
                    exact_hosts.entry(host.clone()).or_insert(i);
                }
            }
        }
        // Longest suffix first: the most specific wildcard wins.
        wildcard_hosts.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        RouteTable {
            namespace,
            virtual_hosts,
            exact_hosts,
            wildcard_hosts,
            services: services.into_iter().map(|s| (s, ())).collect(),
        }
    }

    pub fn select<'a>(&'a self, req: &RequestView<'_>, source: &SourceIdentity) -> Selection<'a> {
        let candidates = request_host_candidates(req.authority, &self.namespace);
        let vhost_index = candidates
            .iter()
            .find_map(|h| self.exact_hosts.get(h).copied())
            .or_else(|| {
                candidates.iter().find_map(|h| {
                    self.wildcard_hosts
                        .iter()
                        .find(|(suffix, _)| h.ends_with(suffix.as_str()))
                        .map(|(_, i)| *i)
                })
            });
        if let Some(i) = vhost_index {
            let vhost = &self.virtual_hosts[i];
            for route in &vhost.routes {
                if let Some(block) = route.matching_block(req, source) {
                    return Selection::Route {
                        vhost,
                        route,
                        block,
                    };
                }
            }
            return Selection::NoRoute;
        }
        candidates
            .iter()
            .find_map(|h| {
                self.services
                    .get_key_value(h)
                    .map(|(k, _)| Selection::Service(k))
            })
            .unwrap_or(Selection::NoRoute)
    }
}

/// Strips the port and a trailing dot, lower-cases.
pub fn host_without_port(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep what is inside the brackets.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The port in an authority, if any.
pub fn authority_port(authority: &str) -> Option<u16> {
    let (_, port) = authority.rsplit_once(':')?;
    port.parse().ok()
}

/// A host as written in a VirtualService, DestinationRule or endpoint, resolved the way
/// Istio resolves it: a short name (no dot) is a service in `namespace`.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('.') || host.starts_with('*') {
        host
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// The names a request Host may stand for, as Kubernetes DNS search paths resolve them
/// for a client in `namespace`: `catalog`, `catalog.ns`, `catalog.ns.svc` and the FQDN.
pub fn request_host_candidates(authority: &str, namespace: &str) -> Vec<String> {
    let host = host_without_port(authority);
    let mut out = vec![host.clone()];
    let dots = host.matches('.').count();
    if host.ends_with(".svc") {
        out.push(format!("{host}.cluster.local"));
    } else if dots == 0 {
        out.push(format!("{host}.{namespace}.{CLUSTER_DOMAIN}"));
    } else if dots == 1 {
        out.push(format!("{host}.{CLUSTER_DOMAIN}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio::StringMatch;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(String::from),
            prefix: prefix.map(String::from),
            regex: regex.map(String::from),
        }
    }

    #[test]
    fn string_match_table() {
        // (match, ignore_case, value, expected)
        let cases = [
            (sm(Some("/items"), None, None), false, "/items", true),
            (sm(Some("/items"), None, None), false, "/items/1", false),
            (sm(Some("/Items"), None, None), true, "/ITEMS", true),
            (sm(None, Some("/api"), None), false, "/api/catalog", true),
            (sm(None, Some("/api"), None), false, "/ap", false),
            (sm(None, Some("/API"), None), true, "/api/x", true),
            // RE2 full match: a partial match is not a match.
            (
                sm(None, None, Some("/items/[0-9]+")),
                false,
                "/items/42",
                true,
            ),
            (
                sm(None, None, Some("/items/[0-9]+")),
                false,
                "/x/items/42",
                false,
            ),
            (
                sm(None, None, Some("/items/[0-9]+")),
                false,
                "/items/42/x",
                false,
            ),
            (sm(None, None, Some("a|b")), false, "ab", false),
            (sm(None, None, Some("a|b")), false, "b", true),
            (sm(None, None, Some("/items")), true, "/ITEMS", true),
            (sm(None, None, None), false, "anything", true),
        ];
        for (i, (m, ic, value, want)) in cases.iter().enumerate() {
            let compiled = StringMatcher::compile("t", m, *ic).unwrap();
            assert_eq!(
                compiled.matches(value, *ic),
                *want,
                "case {i}: {m:?} vs {value}"
            );
        }
    }

    #[test]
    fn string_match_rejects_bad_input() {
        let err = StringMatcher::compile("http[0].match[0].uri", &sm(None, None, Some("(")), false)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("http[0].match[0].uri: invalid regex"),
            "{err}"
        );
        let err = StringMatcher::compile("f", &sm(Some("a"), Some("b"), None), false).unwrap_err();
        assert_eq!(err.label(), "ambiguous_string_match");
    }

    fn dest(name: &str) -> RouteDestination {
        RouteDestination {
            cluster: ClusterKey {
                service: format!("{name}.default.svc.cluster.local"),
                subset: None,
            },
            port: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }

    #[test]
    fn weights_are_relative_shares() {
        // (weights, expected shares)
        let cases: Vec<(Vec<Option<i64>>, Vec<f64>)> = vec![
            (vec![None], vec![1.0]),
            (vec![Some(90), Some(10)], vec![0.9, 0.1]),
            (vec![Some(1), Some(3)], vec![0.25, 0.75]),
            (vec![Some(50), None], vec![1.0, 0.0]),
            (vec![Some(0), Some(7)], vec![0.0, 1.0]),
        ];
        for (weights, want) in cases {
            let entries = weights
                .iter()
                .enumerate()
                .map(|(i, w)| (dest(&format!("d{i}")), *w))
                .collect();
            let wd = WeightedDestinations::new("route", entries).unwrap();
            let shares: Vec<f64> = wd.shares().map(|(_, s)| s).collect();
            assert_eq!(shares, want, "{weights:?}");
        }
    }

    #[test]
    fn weights_reject_invalid() {
        let zero = WeightedDestinations::new("r", vec![(dest("a"), Some(0)), (dest("b"), None)]);
        assert_eq!(zero.unwrap_err().label(), "zero_weights");
        let neg = WeightedDestinations::new("r", vec![(dest("a"), Some(-1)), (dest("b"), Some(5))]);
        assert_eq!(
            neg.unwrap_err().to_string(),
            "r[0].weight: weight -1 is negative"
        );
        assert_eq!(
            WeightedDestinations::new("r", vec![]).unwrap_err().label(),
            "no_destination"
        );
    }

    #[test]
    fn weighted_pick_covers_ranges() {
        let wd = WeightedDestinations::new("r", vec![(dest("a"), Some(90)), (dest("b"), Some(10))])
            .unwrap();
        let picks: Vec<&str> = [0u64, 89, 90, 99, 100]
            .iter()
            .map(|d| {
                wd.pick(*d)
                    .unwrap()
                    .cluster
                    .service
                    .split('.')
                    .next()
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(picks, ["a", "a", "b", "b", "a"]);
    }

    #[test]
    fn request_hosts_resolve_like_cluster_dns() {
        let fqdn = "catalog.istioinaction.svc.cluster.local";
        for host in [
            "catalog",
            "catalog:80",
            "catalog.istioinaction",
            "catalog.istioinaction.svc",
            "catalog.istioinaction.svc.cluster.local",
            "Catalog.istioinaction.svc.cluster.local.:3000",
        ] {
            let c = request_host_candidates(host, "istioinaction");
            assert!(c.iter().any(|h| h == fqdn), "{host} -> {c:?}");
        }
        assert_eq!(host_without_port("[::1]:8080"), "::1");
        assert_eq!(authority_port("catalog:3000"), Some(3000));
        assert_eq!(
            qualify_host("catalog", "ns"),
            "catalog.ns.svc.cluster.local"
        );
        assert_eq!(
            qualify_host("catalog.example.io", "ns"),
            "catalog.example.io"
        );
    }

    fn route(name: &str, matches: Vec<MatchBlock>) -> Route {
        Route {
            name: Some(name.into()),
            matches,
            destinations: WeightedDestinations::new("r", vec![(dest(name), None)]).unwrap(),
            timeout: None,
            retries: None,
            fault: None,
            mirrors: vec![],
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite: None,
            reply: None,
        }
    }

    fn header_block(name: &str, m: StringMatch) -> MatchBlock {
        MatchBlock {
            headers: vec![(name.into(), StringMatcher::compile("h", &m, false).unwrap())],
            ..Default::default()
        }
    }

    fn table() -> RouteTable {
        let vh = VirtualHost {
            name: "istioinaction/catalog".into(),
            hosts: vec!["catalog.istioinaction.svc.cluster.local".into()],
            routes: vec![
                route(
                    "dark-launch",
                    vec![header_block(
                        "x-istio-cohort",
                        sm(Some("internal"), None, None),
                    )],
                ),
                route(
                    "presence-or-method",
                    vec![
                        header_block("x-debug", StringMatch::default()),
                        MatchBlock {
                            method: Some(StringMatcher::Exact("DELETE".into())),
                            ..Default::default()
                        },
                    ],
                ),
                route(
                    "query-and-without",
                    vec![MatchBlock {
                        query_params: vec![("v".into(), StringMatcher::Exact("2".into()))],
                        without_headers: vec![("x-legacy".into(), StringMatcher::Present)],
                        ..Default::default()
                    }],
                ),
                route(
                    "webapp-only",
                    vec![MatchBlock {
                        source_labels: [("app".to_string(), "webapp".to_string())].into(),
                        ..Default::default()
                    }],
                ),
                route(
                    "api-prefix",
                    vec![MatchBlock {
                        uri: Some(StringMatcher::Prefix("/api".into())),
                        ignore_uri_case: true,
                        ..Default::default()
                    }],
                ),
            ],
        };
        let wildcard = VirtualHost {
            name: "istioinaction/wild".into(),
            hosts: vec!["*.example.io".into()],
            routes: vec![route("wild", vec![])],
        };
        RouteTable::new(
            "istioinaction".into(),
            vec![vh, wildcard],
            ["plain.istioinaction.svc.cluster.local".to_string()],
        )
    }

    /// (host, method, path, query, headers, source, expected route | NR | service:host)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a SourceIdentity,
        &'a str,
    );

    #[test]
    fn first_matching_route_wins() {
        let t = table();
        let webapp = SourceIdentity {
            labels: [("app".to_string(), "webapp".to_string())].into(),
            namespace: "istioinaction".into(),
            gateways: vec!["mesh".into()],
        };
        let anonymous = SourceIdentity {
            gateways: vec!["mesh".into()],
            ..Default::default()
        };
        // (host, method, path, query, headers, source, expected route or NR/service)
        let cases: Vec<Case> = vec![
            (
                "catalog",
                "GET",
                "/items",
                None,
                vec![("x-istio-cohort", "internal")],
                &anonymous,
                "dark-launch",
            ),
            (
                "catalog.istioinaction:80",
                "GET",
                "/items",
                None,
                vec![("x-istio-cohort", "internal"), ("x-debug", "1")],
                &anonymous,
                "dark-launch",
            ),
            (
                "catalog",
                "GET",
                "/items",
                None,
                vec![("x-istio-cohort", "external")],
                &anonymous,
                "NR",
            ),
            (
                "catalog",
                "GET",
                "/items",
                None,
                vec![("x-debug", "")],
                &anonymous,
                "presence-or-method",
            ),
            (
                "catalog",
                "DELETE",
                "/items",
                None,
                vec![],
                &anonymous,
                "presence-or-method",
            ),
            (
                "catalog",
                "GET",
                "/items",
                Some("a=1&v=2"),
                vec![],
                &anonymous,
                "query-and-without",
            ),
            (
                "catalog",
                "GET",
                "/items",
                Some("v=2"),
                vec![("x-legacy", "yes")],
                &anonymous,
                "NR",
            ),
            (
                "catalog",
                "GET",
                "/items",
                Some("v=3"),
                vec![],
                &webapp,
                "webapp-only",
            ),
            (
                "catalog",
                "GET",
                "/API/catalog",
                None,
                vec![],
                &anonymous,
                "api-prefix",
            ),
            (
                "shop.example.io",
                "GET",
                "/",
                None,
                vec![],
                &anonymous,
                "wild",
            ),
            (
                "plain",
                "GET",
                "/",
                None,
                vec![],
                &anonymous,
                "service:plain.istioinaction.svc.cluster.local",
            ),
            ("unknown", "GET", "/", None, vec![], &anonymous, "NR"),
        ];
        for (i, (host, method, path, query, headers, source, want)) in cases.into_iter().enumerate()
        {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            let req = RequestView {
                authority: host,
                path,
                query,
                method,
                scheme: "http",
                port: authority_port(host),
                headers: &map,
            };
            let got = match t.select(&req, source) {
                Selection::Route { route, .. } => route.name.clone().unwrap_or_default(),
                Selection::Service(s) => format!("service:{s}"),
                Selection::NoRoute => "NR".into(),
            };
            assert_eq!(got, want, "case {i}: {host} {method} {path}");
        }
    }

    #[test]
    fn rewrite_replaces_matched_prefix() {
        let mut r = route(
            "r",
            vec![MatchBlock {
                uri: Some(StringMatcher::Prefix("/api/catalog".into())),
                ..Default::default()
            }],
        );
        r.rewrite = Some(Rewrite {
            uri: Some("/items".into()),
            authority: None,
            full_path: false,
        });
        assert_eq!(
            r.rewritten_path(0, "/api/catalog/7").as_deref(),
            Some("/items/7")
        );
        assert_eq!(
            r.rewritten_path(usize::MAX, "/x").as_deref(),
            Some("/items")
        );
        // Multi-byte paths never panic, whatever the prefix length.
        assert_eq!(r.rewritten_path(0, "/é").as_deref(), Some("/items"));
        assert_eq!(
            r.rewritten_path(0, "/api/catalogé").as_deref(),
            Some("/itemsé")
        );
    }

    #[test]
    fn gateways_select_which_proxy_applies_a_rule() {
        let sidecar = SourceIdentity {
            gateways: vec!["mesh".into()],
            ..Default::default()
        };
        let ingress = SourceIdentity {
            gateways: vec!["istioinaction/coolstore-gateway".into()],
            ..Default::default()
        };
        assert!(sidecar.acts_as(&[]));
        assert!(!ingress.acts_as(&[]));
        assert!(ingress.acts_as(&["coolstore-gateway".into()]));
        assert!(!sidecar.acts_as(&["coolstore-gateway".into()]));
    }

    #[test]
    fn header_ops_set_add_remove() {
        let ops = HeaderOps {
            set: vec![("x-a".into(), "1".into())],
            add: vec![("x-b".into(), "2".into())],
            remove: vec!["x-c".into()],
        };
        let mut h = HeaderMap::new();
        h.insert("x-a", http::HeaderValue::from_static("0"));
        h.insert("x-b", http::HeaderValue::from_static("1"));
        h.insert("x-c", http::HeaderValue::from_static("gone"));
        ops.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
    }

    #[test]
    fn redirects_keep_what_they_do_not_replace() {
        let headers = HeaderMap::new();
        let req = |authority: &'static str, path: &'static str| RequestView {
            authority,
            path,
            query: Some("q=1"),
            method: "GET",
            scheme: "http",
            port: None,
            headers: &headers,
        };
        let redirect = |scheme: Option<&str>, host: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(String::from),
            hostname: host.map(String::from),
            path: None,
            full_path: false,
            port,
            status: 302,
        };
        let prefix = StringMatcher::PathPrefix("/old".into());
        // (redirect, request authority and path, matched uri, Location)
        let cases = [
            (
                redirect(None, None, None),
                ("app:8080", "/a"),
                None,
                "http://app:8080/a?q=1",
            ),
            (
                redirect(Some("https"), None, None),
                ("app:8080", "/a"),
                None,
                "https://app/a?q=1",
            ),
            (
                redirect(Some("https"), None, Some(8443)),
                ("app", "/a"),
                None,
                "https://app:8443/a?q=1",
            ),
            (
                redirect(None, Some("new.example"), Some(80)),
                ("app:8080", "/a"),
                None,
                "http://new.example/a?q=1",
            ),
            (
                Redirect {
                    path: Some("/new".into()),
                    ..redirect(None, None, None)
                },
                ("app", "/old/x"),
                Some(&prefix),
                "http://app/new/x?q=1",
            ),
            (
                Redirect {
                    path: Some("/".into()),
                    ..redirect(None, None, None)
                },
                ("app", "/old/x"),
                Some(&prefix),
                "http://app/x?q=1",
            ),
            (
                Redirect {
                    path: Some("/".into()),
                    ..redirect(None, None, None)
                },
                ("app", "/old"),
                Some(&prefix),
                "http://app/?q=1",
            ),
            (
                Redirect {
                    path: Some("/new".into()),
                    full_path: true,
                    ..redirect(None, None, None)
                },
                ("app", "/old/x"),
                Some(&prefix),
                "http://app/new?q=1",
            ),
        ];
        for (r, (authority, path), matched, want) in cases {
            assert_eq!(r.location(&req(authority, path), matched), want, "{r:?}");
        }
        // PathPrefix matches whole path elements.
        for (path, want) in [
            ("/old", true),
            ("/old/", true),
            ("/old/x", true),
            ("/older", false),
            ("/", false),
        ] {
            assert_eq!(prefix.matches(path, false), want, "{path}");
        }
        assert!(StringMatcher::PathPrefix(String::new()).matches("/anything", false));
    }
}

#[cfg(test)]
mod purity {
    /// Matching must stay free of IO so it can be tested as plain data.
    #[test]
    fn routes_module_imports_no_runtime() {
        let whole = include_str!("routes.rs");
        // Only the code above this test module.
        let source = whole.split("mod purity").next().unwrap_or(whole);
        for forbidden in [
            "use tokio",
            "use hyper",
            "tokio::",
            "hyper::",
            "std::net::Tcp",
        ] {
            let hits = source.lines().filter(|l| l.contains(forbidden)).count();
            assert_eq!(hits, 0, "routes.rs mentions {forbidden}");
        }
    }
}
