//! File-mode configuration and the validation that turns Istio objects plus endpoints
//! into an immutable `Snapshot` (route table + clusters). Invalid objects are rejected
//! with an error naming the object and the field; the caller keeps the last good one.
//!
//! File format (YAML):
//! ```yaml
//! namespace: istioinaction          # default namespace for objects and endpoints
//! virtualServices: [ <VirtualService objects> ]
//! destinationRules: [ <DestinationRule objects> ]
//! endpoints:
//!   - service: catalog              # short name, name.namespace or FQDN
//!     address: 127.0.0.1:3000
//!     labels: {app: catalog, version: v1}
//!     zone: us-west1/us-west1-a     # optional
//!     workload: catalog-v1          # optional, for metrics
//!     protocol: http                # optional: http (HTTP/1.1, default) or h2c
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::api::istio::{
    self, DestinationRuleSpec, HeaderOperations, HttpRoute, TrafficPolicy, VirtualServiceSpec,
};
use crate::proxy::balance::{
    self, Algorithm, Cluster, Endpoint, EndpointInfo, HashPolicy, IssuedCookie, LocalityDistribute,
    LocalityRules,
};
use crate::proxy::resilience::{
    self, Backoff, ConnectionPool, OutlierPolicy, PoolLimits, RetryConditions, RetryPolicy,
};
use crate::proxy::routes::{
    self, qualify_host, ClusterKey, Fault, HeaderOps, MatchBlock, Mirror, Rewrite, Route,
    RouteDestination, RouteTable, SourceIdentity, StringMatcher, VirtualHost, WeightedDestinations,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{object}: {source}")]
    Route {
        object: String,
        source: routes::Error,
    },
    #[error("{object}: {source}")]
    Resilience {
        object: String,
        source: resilience::Error,
    },
    #[error("{object}: {source}")]
    Balance {
        object: String,
        source: balance::Error,
    },
    #[error("{object}: {field}: {reason}")]
    Invalid {
        object: String,
        field: String,
        reason: String,
    },
}

impl Error {
    /// Short label usable as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Parse { .. } => "parse",
            Error::Route { source, .. } => source.label(),
            Error::Resilience { source, .. } => source.label(),
            Error::Balance { .. } => "balancer",
            Error::Invalid { .. } => "invalid",
        }
    }
}

// === File format ===

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub virtual_services: Vec<Object<VirtualServiceSpec>>,
    #[serde(default)]
    pub destination_rules: Vec<Object<DestinationRuleSpec>>,
    #[serde(default)]
    pub endpoints: Vec<EndpointEntry>,
    /// Pods that may call the proxy, by address; used only in router mode.
    #[serde(default)]
    pub callers: Vec<CallerEntry>,
}

/// A Kubernetes object as written in YAML; apiVersion may be v1alpha3, v1beta1 or v1.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
    pub spec: S,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub service: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A pod known by its address: who a router's caller is, for `sourceLabels` and
/// `sourceNamespace` matches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerEntry {
    /// The pod's IP (no port).
    pub address: String,
    /// Defaults to the file's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

pub fn read_file(path: &Path) -> Result<ConfigFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| Error::Parse {
        path: path.into(),
        source,
    })
}

// === Settings of this proxy ===

#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// The proxy's namespace: short request hosts resolve here; objects default to it.
    pub namespace: String,
    pub identity: SourceIdentity,
    /// `region/zone` of this proxy, for locality-aware balancing.
    pub zone: String,
    /// Istio's mesh default retry policy for routes without `retries`.
    pub default_retries: bool,
    /// Router mode: the proxy is a shared hop, not a sidecar. Each request's identity is
    /// its caller's (looked up by peer address among `callers`), not `identity`'s, and the
    /// caller's address is appended to `X-Forwarded-For`.
    pub router: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            namespace: "default".into(),
            identity: SourceIdentity {
                labels: BTreeMap::new(),
                namespace: "default".into(),
                gateways: vec!["mesh".into()],
            },
            zone: String::new(),
            default_retries: true,
            router: false,
        }
    }
}

// === Snapshot ===

/// Everything the data path needs, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub table: RouteTable,
    pub clusters: HashMap<ClusterKey, Arc<Cluster>>,
    /// The mesh default retry policy for routes without `retries` (None = switched off).
    pub default_retry: Option<RetryPolicy>,
    /// Accepted but suspicious (e.g. a subset without endpoints); shown at /config/status.
    pub warnings: Vec<String>,
    /// Router mode: the known callers by address.
    pub callers: HashMap<IpAddr, SourceIdentity>,
    /// Router mode: the identity of a caller that is not a known pod (no labels, no
    /// namespace), so `sourceLabels` and `sourceNamespace` matches never hold for it.
    pub unknown_caller: SourceIdentity,
}

impl Snapshot {
    pub fn cluster(&self, key: &ClusterKey) -> Option<&Arc<Cluster>> {
        self.clusters.get(key)
    }

    /// Who a request from `peer` is, for matching: a sidecar is always its own workload;
    /// a router's caller is the pod at that address, or nobody known.
    pub fn source<'a>(&'a self, settings: &'a ProxySettings, peer: IpAddr) -> &'a SourceIdentity {
        if !settings.router {
            return &settings.identity;
        }
        self.callers
            .get(&peer.to_canonical())
            .unwrap_or(&self.unknown_caller)
    }

    /// Endpoint state by (service, address), for carrying it over a reload.
    fn endpoint_states(&self) -> HashMap<(String, SocketAddr), Arc<Endpoint>> {
        let mut out = HashMap::new();
        for cluster in self.clusters.values() {
            for e in &cluster.endpoints {
                out.entry((cluster.key.service.clone(), e.info.address))
                    .or_insert_with(|| e.clone());
            }
        }
        out
    }
}

fn object_name(kind: &str, meta: &ObjectMeta, default_ns: &str) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or(default_ns),
        meta.name
    )
}

/// Validates a config file into a snapshot. `previous` carries endpoint state
/// (ejections, in-flight counts, latency) and connection pools across the reload.
pub fn build(
    file: &ConfigFile,
    settings: &ProxySettings,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Error> {
    let default_ns = file.namespace.as_deref().unwrap_or(&settings.namespace);
    let mut warnings = Vec::new();

    // Endpoints by service FQDN.
    let mut previous_endpoints = previous.map(Snapshot::endpoint_states).unwrap_or_default();
    let mut endpoints_by_service: BTreeMap<String, Vec<Arc<Endpoint>>> = BTreeMap::new();
    for (i, entry) in file.endpoints.iter().enumerate() {
        let object = format!("endpoints[{i}]");
        let ns = entry.namespace.as_deref().unwrap_or(default_ns);
        let service = qualify_host(&entry.service, ns);
        let address: SocketAddr = entry.address.parse().map_err(|e| Error::Invalid {
            object: object.clone(),
            field: "address".into(),
            reason: format!("{:?} is not ip:port ({e})", entry.address),
        })?;
        let http2 = match entry.protocol.as_deref() {
            None | Some("http") | Some("http1") => false,
            Some("h2c") | Some("http2") | Some("grpc") => true,
            Some(other) => {
                return Err(invalid(
                    &object,
                    "protocol",
                    &format!("{other:?} is not http or h2c"),
                ))
            }
        };
        let info = EndpointInfo {
            address,
            labels: entry.labels.clone(),
            zone: entry.zone.clone().unwrap_or_default(),
            workload: entry.workload.clone(),
            http2,
            namespace: ns.to_string(),
        };
        let endpoint = match previous_endpoints.remove(&(service.clone(), address)) {
            Some(e) if e.info == info => e,
            _ => Arc::new(Endpoint::new(info)),
        };
        endpoints_by_service
            .entry(service)
            .or_default()
            .push(endpoint);
    }

    for (i, o) in file.destination_rules.iter().enumerate() {
        require_name(&format!("destinationRules[{i}]"), &o.metadata)?;
    }
    for (i, o) in file.virtual_services.iter().enumerate() {
        require_name(&format!("virtualServices[{i}]"), &o.metadata)?;
    }

    // DestinationRules by host FQDN; the first (by namespace/name) wins a host.
    let mut rules: Vec<&Object<DestinationRuleSpec>> = file.destination_rules.iter().collect();
    rules.sort_by_key(|o| object_name("", &o.metadata, default_ns));
    let mut rule_by_host: HashMap<String, (String, &DestinationRuleSpec)> = HashMap::new();
    for rule in rules {
        let object = object_name("DestinationRule", &rule.metadata, default_ns);
        let ns = rule.metadata.namespace.as_deref().unwrap_or(default_ns);
        validate_destination_rule(&object, &rule.spec)?;
        warnings.extend(unsupported_in_destination_rule(&object, &rule.spec));
        let host = qualify_host(&rule.spec.host, ns);
        if rule_by_host.contains_key(&host) {
            warnings.push(format!(
                "{object}: host {host} already has a DestinationRule; ignored"
            ));
            continue;
        }
        let name = format!("{ns}/{}", rule.metadata.name);
        rule_by_host.insert(host, (name, &rule.spec));
    }

    // VirtualServices that apply to this proxy, in a stable order.
    let mut services: Vec<&Object<VirtualServiceSpec>> = file.virtual_services.iter().collect();
    services.sort_by_key(|o| object_name("", &o.metadata, default_ns));
    let mut virtual_hosts = Vec::new();
    let mut referenced: BTreeSet<ClusterKey> = BTreeSet::new();
    for vs in services {
        let object = object_name("VirtualService", &vs.metadata, default_ns);
        let ns = vs.metadata.namespace.as_deref().unwrap_or(default_ns);
        let vhost = build_virtual_host(&object, ns, &vs.spec, &mut referenced)?;
        warnings.extend(unsupported_in_virtual_service(&object, &vs.spec));
        if !settings.identity.acts_as(&vs.spec.gateways) {
            continue;
        }
        virtual_hosts.push(vhost);
    }

    // Clusters: every referenced (service, subset) and every service without subset.
    for service in endpoints_by_service.keys() {
        referenced.insert(ClusterKey {
            service: service.clone(),
            subset: None,
        });
    }
    let mut clusters = HashMap::new();
    for key in referenced {
        let all = endpoints_by_service
            .get(&key.service)
            .cloned()
            .unwrap_or_default();
        let rule = rule_by_host.get(&key.service);
        let (policy, endpoints) = match (&key.subset, rule) {
            (None, _) => (rule.and_then(|(_, r)| r.traffic_policy.clone()), all),
            (Some(subset), Some((name, r))) => match r.subsets.iter().find(|s| s.name == *subset) {
                Some(s) => {
                    let members = all
                        .into_iter()
                        .filter(|e| {
                            s.labels
                                .iter()
                                .all(|(k, v)| e.info.labels.get(k) == Some(v))
                        })
                        .collect();
                    (
                        merge_policy(r.traffic_policy.as_ref(), s.traffic_policy.as_ref()),
                        members,
                    )
                }
                None => {
                    warnings.push(format!(
                        "{key}: DestinationRule {name} has no subset {subset:?}"
                    ));
                    (None, Vec::new())
                }
            },
            (Some(subset), None) => {
                warnings.push(format!(
                    "{key}: no DestinationRule defines subset {subset:?}"
                ));
                (None, Vec::new())
            }
        };
        if endpoints.is_empty() {
            warnings.push(format!("{key}: no endpoints"));
        }
        let object = rule.map_or_else(|| key.to_string(), |(n, _)| format!("DestinationRule {n}"));
        let EffectivePolicy {
            algorithm,
            limits,
            outlier,
            hash,
            cookie,
            locality,
            locality_enabled,
        } = effective_policy(&object, policy.as_ref())?;
        let pool = previous
            .and_then(|p| p.clusters.get(&key))
            .filter(|c| *c.pool.limits() == limits)
            .map(|c| c.pool.clone())
            .unwrap_or_else(|| Arc::new(ConnectionPool::new(limits)));
        let cluster = Cluster::new(
            key.clone(),
            endpoints,
            algorithm,
            pool,
            outlier,
            rule.map(|(n, _)| n.clone()),
        )
        .with_hash_policy(hash)
        .with_issued_cookie(cookie)
        .with_locality(locality, locality_enabled);
        clusters.insert(key, Arc::new(cluster));
    }

    let (callers, unknown_caller) = if settings.router {
        warnings.extend(source_namespaces_out_of_reach(file, default_ns));
        build_callers(&file.callers, default_ns, settings, &mut warnings)?
    } else {
        (HashMap::new(), SourceIdentity::default())
    };

    let table = RouteTable::new(
        settings.namespace.clone(),
        virtual_hosts,
        endpoints_by_service.keys().cloned(),
    );
    Ok(Snapshot {
        table,
        clusters,
        default_retry: settings.default_retries.then(RetryPolicy::mesh_default),
        warnings,
        callers,
        unknown_caller,
    })
}

/// The callers by address. An address listed twice (e.g. a pod IP reused while the old
/// pod's object lingers) names no one: trusting either could route by the wrong labels.
fn build_callers(
    entries: &[CallerEntry],
    default_ns: &str,
    settings: &ProxySettings,
    warnings: &mut Vec<String>,
) -> Result<(HashMap<IpAddr, SourceIdentity>, SourceIdentity), Error> {
    let gateways = settings.identity.gateways.clone();
    let mut callers: HashMap<IpAddr, SourceIdentity> = HashMap::new();
    let mut ambiguous = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let address: IpAddr = entry.address.parse().map_err(|e| Error::Invalid {
            object: format!("callers[{i}]"),
            field: "address".into(),
            reason: format!("{:?} is not an IP address ({e})", entry.address),
        })?;
        let identity = SourceIdentity {
            labels: entry.labels.clone(),
            namespace: entry.namespace.clone().unwrap_or_else(|| default_ns.into()),
            gateways: gateways.clone(),
        };
        if callers.insert(address.to_canonical(), identity).is_some() {
            ambiguous.insert(address.to_canonical());
        }
    }
    for address in ambiguous {
        callers.remove(&address);
        warnings.push(format!(
            "callers: {address} is listed more than once; its requests match no sourceLabels"
        ));
    }
    let unknown = SourceIdentity {
        gateways,
        ..SourceIdentity::default()
    };
    Ok((callers, unknown))
}

/// A router knows the callers of its own namespace only (it watches pods there), so a
/// `sourceNamespace` naming another namespace can never hold: say so.
fn source_namespaces_out_of_reach(file: &ConfigFile, default_ns: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for vs in &file.virtual_services {
        let object = object_name("VirtualService", &vs.metadata, default_ns);
        for (i, route) in vs.spec.http.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                if let Some(ns) = m.source_namespace.as_deref().filter(|ns| *ns != default_ns) {
                    warnings.push(format!(
                        "{object}: http[{i}].match[{j}].sourceNamespace {ns:?}: this router only knows callers in namespace {default_ns:?}, so the match never holds"
                    ));
                }
            }
        }
    }
    warnings
}

/// What `build` would reject this VirtualService for, judged on its own (cross-object
/// checks do not exist for VirtualServices). Kubernetes mode uses it to skip only the
/// invalid object instead of the whole update.
pub fn check_virtual_service(
    vs: &Object<VirtualServiceSpec>,
    default_ns: &str,
) -> Result<(), Error> {
    let object = object_name("VirtualService", &vs.metadata, default_ns);
    require_name(&object, &vs.metadata)?;
    let ns = vs.metadata.namespace.as_deref().unwrap_or(default_ns);
    build_virtual_host(&object, ns, &vs.spec, &mut BTreeSet::new()).map(|_| ())
}

/// Like `check_virtual_service`, for a DestinationRule.
pub fn check_destination_rule(
    rule: &Object<DestinationRuleSpec>,
    default_ns: &str,
) -> Result<(), Error> {
    let object = object_name("DestinationRule", &rule.metadata, default_ns);
    require_name(&object, &rule.metadata)?;
    validate_destination_rule(&object, &rule.spec)
}

fn require_name(object: &str, meta: &ObjectMeta) -> Result<(), Error> {
    if meta.name.trim().is_empty() {
        return Err(invalid(object, "metadata.name", "must not be empty"));
    }
    Ok(())
}

/// The subset's policy overrides the top-level policy field by field.
fn merge_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
) -> Option<TrafficPolicy> {
    match (top, subset) {
        (None, None) => None,
        (Some(t), None) => Some(t.clone()),
        (None, Some(s)) => Some(s.clone()),
        (Some(t), Some(s)) => Some(TrafficPolicy {
            load_balancer: s.load_balancer.clone().or_else(|| t.load_balancer.clone()),
            connection_pool: s
                .connection_pool
                .clone()
                .or_else(|| t.connection_pool.clone()),
            outlier_detection: s
                .outlier_detection
                .clone()
                .or_else(|| t.outlier_detection.clone()),
            tls: s.tls.clone().or_else(|| t.tls.clone()),
        }),
    }
}

/// Fields the proxy accepts but does not enforce yet: said once per object, so users see
/// (log, `/config/status`, `sluice_proxy_config_warnings`) what Istio would do
/// differently.
fn unsupported_in_destination_rule(object: &str, spec: &DestinationRuleSpec) -> Vec<String> {
    let mut found = Vec::new();
    let policies = spec
        .traffic_policy
        .iter()
        .map(|p| ("trafficPolicy".to_string(), p))
        .chain(spec.subsets.iter().enumerate().filter_map(|(i, s)| {
            s.traffic_policy
                .as_ref()
                .map(|p| (format!("subsets[{i}].trafficPolicy"), p))
        }));
    for (path, policy) in policies {
        if policy.tls.is_some() {
            found.push(format!("{path}.tls"));
        }
    }
    found
        .into_iter()
        .map(|field| format!("{object}: spec.{field} is not enforced by sluice-proxy"))
        .collect()
}

fn unsupported_in_virtual_service(object: &str, spec: &VirtualServiceSpec) -> Vec<String> {
    let mut found = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        if http.cors_policy.is_some() {
            found.push(format!("http[{i}].corsPolicy"));
        }
    }
    found
        .into_iter()
        .map(|field| format!("{object}: spec.{field} is not enforced by sluice-proxy"))
        .collect()
}

fn validate_destination_rule(object: &str, spec: &DestinationRuleSpec) -> Result<(), Error> {
    if spec.host.trim().is_empty() {
        return Err(invalid(object, "spec.host", "must not be empty"));
    }
    effective_policy(object, spec.traffic_policy.as_ref())?;
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        if subset.name.is_empty() {
            return Err(invalid(
                object,
                &format!("spec.subsets[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(&subset.name) {
            return Err(invalid(
                object,
                &format!("spec.subsets[{i}].name"),
                &format!("duplicate subset {:?}", subset.name),
            ));
        }
        let merged = merge_policy(spec.traffic_policy.as_ref(), subset.traffic_policy.as_ref());
        effective_policy(&format!("{object} subset {}", subset.name), merged.as_ref())?;
    }
    Ok(())
}

fn invalid(object: &str, field: &str, reason: &str) -> Error {
    Error::Invalid {
        object: object.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn duration_field(object: &str, field: &str, text: &str) -> Result<Duration, Error> {
    istio::parse_duration(text).map_err(|reason| invalid(object, field, &reason))
}

fn non_negative(object: &str, field: &str, value: Option<i32>) -> Result<Option<usize>, Error> {
    match value {
        None => Ok(None),
        Some(v) if v < 0 => Err(Error::Resilience {
            object: object.into(),
            source: resilience::Error::Negative {
                field: field.into(),
                value: i64::from(v),
            },
        }),
        // Istio treats 0 as "unset" for these limits.
        Some(0) => Ok(None),
        Some(v) => Ok(Some(v as usize)),
    }
}

/// A cluster's traffic policy after validation.
struct EffectivePolicy {
    algorithm: Algorithm,
    limits: PoolLimits,
    outlier: Option<OutlierPolicy>,
    hash: Option<HashPolicy>,
    cookie: Option<IssuedCookie>,
    locality: LocalityRules,
    locality_enabled: Option<bool>,
}

fn effective_policy(
    object: &str,
    policy: Option<&TrafficPolicy>,
) -> Result<EffectivePolicy, Error> {
    let Some(policy) = policy else {
        return Ok(EffectivePolicy {
            algorithm: Algorithm::LeastRequest,
            limits: PoolLimits::default(),
            outlier: None,
            hash: None,
            cookie: None,
            locality: LocalityRules::default(),
            locality_enabled: None,
        });
    };
    let field = "trafficPolicy.loadBalancer.simple";
    let algorithm = match policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.simple.as_deref())
    {
        Some(simple) => Algorithm::parse(field, simple).map_err(|source| Error::Balance {
            object: object.into(),
            source,
        })?,
        None => Algorithm::LeastRequest,
    };
    let mut limits = PoolLimits::default();
    if let Some(pool) = &policy.connection_pool {
        let p = "trafficPolicy.connectionPool";
        if let Some(tcp) = &pool.tcp {
            limits.max_connections = non_negative(
                object,
                &format!("{p}.tcp.maxConnections"),
                tcp.max_connections,
            )?;
        }
        if let Some(http) = &pool.http {
            limits.max_pending = non_negative(
                object,
                &format!("{p}.http.http1MaxPendingRequests"),
                http.http1_max_pending_requests,
            )?;
            limits.max_requests = non_negative(
                object,
                &format!("{p}.http.http2MaxRequests"),
                http.http2_max_requests,
            )?;
            limits.max_retries =
                non_negative(object, &format!("{p}.http.maxRetries"), http.max_retries)?;
            limits.max_requests_per_connection = non_negative(
                object,
                &format!("{p}.http.maxRequestsPerConnection"),
                http.max_requests_per_connection,
            )?
            .map(|v| v as u32);
        }
    }
    let outlier = match &policy.outlier_detection {
        None => None,
        Some(od) => {
            let f = "trafficPolicy.outlierDetection";
            let percent = |name: &str, v: Option<i32>, default: u32| -> Result<u32, Error> {
                match v {
                    None => Ok(default),
                    Some(v) if (0..=100).contains(&v) => Ok(v as u32),
                    Some(v) => Err(invalid(
                        object,
                        &format!("{f}.{name}"),
                        &format!("{v} is not 0..100"),
                    )),
                }
            };
            Some(OutlierPolicy {
                consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(5),
                consecutive_gateway: od.consecutive_gateway_errors.unwrap_or(0),
                interval: match &od.interval {
                    Some(t) => duration_field(object, &format!("{f}.interval"), t)?,
                    None => Duration::from_secs(10),
                },
                base_ejection: match &od.base_ejection_time {
                    Some(t) => duration_field(object, &format!("{f}.baseEjectionTime"), t)?,
                    None => Duration::from_secs(30),
                },
                max_ejection_percent: percent("maxEjectionPercent", od.max_ejection_percent, 10)?,
                min_health_percent: percent("minHealthPercent", od.min_health_percent, 0)?,
            })
        }
    };
    let mut cookie = None;
    let hash = match policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
    {
        None => None,
        Some(ch) => {
            let f = "trafficPolicy.loadBalancer.consistentHash";
            let mut set = Vec::new();
            if let Some(h) = ch.http_header_name.as_ref().filter(|h| !h.is_empty()) {
                http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid(
                        object,
                        &format!("{f}.httpHeaderName"),
                        "invalid header name",
                    )
                })?;
                set.push(HashPolicy::Header(h.to_ascii_lowercase()));
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    return Err(invalid(
                        object,
                        &format!("{f}.httpCookie.name"),
                        "must not be empty",
                    ));
                }
                set.push(HashPolicy::Cookie(c.name.clone()));
                if let Some(ttl) = &c.ttl {
                    cookie = Some(IssuedCookie {
                        name: c.name.clone(),
                        path: c.path.clone().filter(|p| !p.is_empty()),
                        ttl: duration_field(object, &format!("{f}.httpCookie.ttl"), ttl)?,
                    });
                }
            }
            if let Some(q) = ch
                .http_query_parameter_name
                .as_ref()
                .filter(|q| !q.is_empty())
            {
                set.push(HashPolicy::QueryParam(q.clone()));
            }
            if ch.use_source_ip == Some(true) {
                set.push(HashPolicy::SourceIp);
            }
            if set.len() != 1 {
                return Err(invalid(
                    object,
                    f,
                    "set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp",
                ));
            }
            set.pop()
        }
    };
    let setting = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    let locality = match setting {
        None => LocalityRules::default(),
        Some(l) => locality_rules(object, l)?,
    };
    Ok(EffectivePolicy {
        algorithm,
        limits,
        outlier,
        hash,
        cookie,
        locality,
        locality_enabled: setting.and_then(|l| l.enabled),
    })
}

/// Istio's validation of `localityLbSetting`: one of distribute / failover, weights of
/// each `to` summing to 100, failover between two different regions.
fn locality_rules(object: &str, l: &istio::LocalityLbSetting) -> Result<LocalityRules, Error> {
    let f = "trafficPolicy.loadBalancer.localityLbSetting";
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        return Err(invalid(
            object,
            f,
            "set either distribute or failover, not both",
        ));
    }
    let mut rules = LocalityRules::default();
    for (i, d) in l.distribute.iter().enumerate() {
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            return Err(invalid(
                object,
                &format!("{f}.distribute[{i}].to"),
                &format!("weights sum to {total}, not 100"),
            ));
        }
        rules.distribute.push(LocalityDistribute {
            from: d.from.clone(),
            to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        });
    }
    for (i, fo) in l.failover.iter().enumerate() {
        if fo.from.is_empty() || fo.to.is_empty() || fo.from == fo.to {
            return Err(invalid(
                object,
                &format!("{f}.failover[{i}]"),
                "from and to must be two different regions",
            ));
        }
        rules.failover.push((fo.from.clone(), fo.to.clone()));
    }
    Ok(rules)
}

fn header_ops(
    object: &str,
    field: &str,
    ops: Option<&HeaderOperations>,
) -> Result<HeaderOps, Error> {
    let Some(ops) = ops else {
        return Ok(HeaderOps::default());
    };
    let check = |name: &str, value: Option<&str>| -> Result<(), Error> {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(object, field, &format!("invalid header name {name:?}")))?;
        if let Some(v) = value {
            http::HeaderValue::from_str(v).map_err(|_| {
                invalid(object, field, &format!("invalid value for header {name:?}"))
            })?;
        }
        Ok(())
    };
    for (k, v) in ops.set.iter().chain(&ops.add) {
        check(k, Some(v))?;
    }
    for k in &ops.remove {
        check(k, None)?;
    }
    Ok(HeaderOps {
        set: ops
            .set
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        add: ops
            .add
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        remove: ops.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
    })
}

fn percent_value(object: &str, field: &str, p: Option<istio::Percent>) -> Result<f64, Error> {
    let value = p.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) || value.is_nan() {
        return Err(invalid(object, field, &format!("{value} is not 0..100")));
    }
    Ok(value)
}

fn build_virtual_host(
    object: &str,
    namespace: &str,
    spec: &VirtualServiceSpec,
    referenced: &mut BTreeSet<ClusterKey>,
) -> Result<VirtualHost, Error> {
    if spec.hosts.is_empty() {
        return Err(invalid(
            object,
            "spec.hosts",
            "at least one host is required",
        ));
    }
    let mut routes = Vec::with_capacity(spec.http.len());
    for (i, http) in spec.http.iter().enumerate() {
        routes.push(build_route(
            object,
            namespace,
            &format!("spec.http[{i}]"),
            http,
            referenced,
        )?);
    }
    Ok(VirtualHost {
        name: object.trim_start_matches("VirtualService ").to_string(),
        hosts: spec
            .hosts
            .iter()
            .map(|h| qualify_host(h, namespace))
            .collect(),
        routes,
    })
}

fn route_err(object: &str) -> impl Fn(routes::Error) -> Error + '_ {
    move |source| Error::Route {
        object: object.into(),
        source,
    }
}

fn build_route(
    object: &str,
    namespace: &str,
    field: &str,
    http: &HttpRoute,
    referenced: &mut BTreeSet<ClusterKey>,
) -> Result<Route, Error> {
    let mut matches = Vec::with_capacity(http.matches.len());
    for (j, m) in http.matches.iter().enumerate() {
        let mf = format!("{field}.match[{j}]");
        let ignore_case = m.ignore_uri_case.unwrap_or(false);
        let compile = |name: &str, sm: &Option<istio::StringMatch>, ic: bool| {
            sm.as_ref()
                .map(|sm| StringMatcher::compile(&format!("{mf}.{name}"), sm, ic))
                .transpose()
                .map_err(route_err(object))
        };
        let compile_map = |name: &str, map: &BTreeMap<String, istio::StringMatch>| {
            map.iter()
                .map(|(k, sm)| {
                    StringMatcher::compile(&format!("{mf}.{name}.{k}"), sm, false)
                        .map(|c| (k.to_ascii_lowercase(), c))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(route_err(object))
        };
        let port = m
            .port
            .map(|p| {
                u16::try_from(p).map_err(|_| invalid(object, &format!("{mf}.port"), "not a port"))
            })
            .transpose()?;
        matches.push(MatchBlock {
            name: m.name.clone(),
            uri: compile("uri", &m.uri, ignore_case)?,
            ignore_uri_case: ignore_case,
            scheme: compile("scheme", &m.scheme, false)?,
            method: compile("method", &m.method, false)?,
            authority: compile("authority", &m.authority, false)?,
            headers: compile_map("headers", &m.headers)?,
            without_headers: compile_map("withoutHeaders", &m.without_headers)?,
            query_params: compile_map("queryParams", &m.query_params)?,
            port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
            gateways: m.gateways.clone(),
        });
    }

    let destination = |f: &str, d: &istio::Destination| -> Result<ClusterKey, Error> {
        if d.host.trim().is_empty() {
            return Err(invalid(object, &format!("{f}.host"), "must not be empty"));
        }
        Ok(ClusterKey {
            service: qualify_host(&d.host, namespace),
            subset: d.subset.clone().filter(|s| !s.is_empty()),
        })
    };
    let mut entries = Vec::with_capacity(http.route.len());
    for (k, rd) in http.route.iter().enumerate() {
        let f = format!("{field}.route[{k}]");
        let cluster = destination(&format!("{f}.destination"), &rd.destination)?;
        referenced.insert(cluster.clone());
        let port = rd
            .destination
            .port
            .as_ref()
            .and_then(|p| p.number)
            .map(|n| {
                u16::try_from(n)
                    .map_err(|_| invalid(object, &format!("{f}.destination.port"), "not a port"))
            })
            .transpose()?;
        let headers = rd.headers.as_ref();
        entries.push((
            RouteDestination {
                cluster,
                port,
                request_headers: header_ops(
                    object,
                    &format!("{f}.headers.request"),
                    headers.and_then(|h| h.request.as_ref()),
                )?,
                response_headers: header_ops(
                    object,
                    &format!("{f}.headers.response"),
                    headers.and_then(|h| h.response.as_ref()),
                )?,
            },
            rd.weight.map(i64::from),
        ));
    }
    let destinations =
        WeightedDestinations::new(&format!("{field}.route"), entries).map_err(route_err(object))?;

    let timeout = http
        .timeout
        .as_deref()
        .map(|t| duration_field(object, &format!("{field}.timeout"), t))
        .transpose()?
        .filter(|t| !t.is_zero());

    let retries = match &http.retries {
        None => None,
        Some(r) => {
            let attempts = r.attempts.unwrap_or(0);
            if attempts < 0 {
                return Err(Error::Resilience {
                    object: object.into(),
                    source: resilience::Error::Negative {
                        field: format!("{field}.retries.attempts"),
                        value: i64::from(attempts),
                    },
                });
            }
            // Istio's default retryOn when unset.
            let retry_on = r
                .retry_on
                .as_deref()
                .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503");
            let conditions = RetryConditions::parse(&format!("{field}.retries.retryOn"), retry_on)
                .map_err(|source| Error::Resilience {
                    object: object.into(),
                    source,
                })?;
            let per_try_timeout = r
                .per_try_timeout
                .as_deref()
                .map(|t| duration_field(object, &format!("{field}.retries.perTryTimeout"), t))
                .transpose()?
                .filter(|t| !t.is_zero());
            Some(RetryPolicy {
                attempts: attempts as u32,
                per_try_timeout,
                conditions,
                backoff: Backoff::default(),
                remote_localities: r.retry_remote_localities.unwrap_or(false),
            })
        }
    };

    let fault = match &http.fault {
        None => None,
        Some(f) => {
            let delay = match &f.delay {
                None => None,
                Some(d) => {
                    let ff = format!("{field}.fault.delay");
                    let fixed = d.fixed_delay.as_deref().ok_or_else(|| {
                        invalid(object, &format!("{ff}.fixedDelay"), "is required")
                    })?;
                    Some((
                        duration_field(object, &format!("{ff}.fixedDelay"), fixed)?,
                        percent_value(object, &format!("{ff}.percentage"), d.percentage)?,
                    ))
                }
            };
            let abort = match &f.abort {
                None => None,
                Some(a) => {
                    let ff = format!("{field}.fault.abort");
                    let status = a
                        .http_status
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            invalid(object, &format!("{ff}.httpStatus"), "must be 200..599")
                        })?;
                    Some((
                        status as u16,
                        percent_value(object, &format!("{ff}.percentage"), a.percentage)?,
                    ))
                }
            };
            Some(Fault { delay, abort })
        }
    };

    let mut mirrors = Vec::new();
    if let Some(m) = &http.mirror {
        let cluster = destination(&format!("{field}.mirror"), m)?;
        referenced.insert(cluster.clone());
        let percent = percent_value(
            object,
            &format!("{field}.mirrorPercentage"),
            http.mirror_percentage,
        )?;
        mirrors.push(Mirror { cluster, percent });
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        let f = format!("{field}.mirrors[{k}]");
        let cluster = destination(&format!("{f}.destination"), &m.destination)?;
        referenced.insert(cluster.clone());
        let percent = percent_value(object, &format!("{f}.percentage"), m.percentage)?;
        mirrors.push(Mirror { cluster, percent });
    }

    let headers = http.headers.as_ref();
    let rewrite = http.rewrite.as_ref().map(|r| Rewrite {
        uri: r.uri.clone().filter(|u| !u.is_empty()),
        authority: r.authority.clone().filter(|a| !a.is_empty()),
    });
    if let Some(Some(a)) = rewrite.as_ref().map(|r| r.authority.as_ref()) {
        http::HeaderValue::from_str(a).map_err(|_| {
            invalid(
                object,
                &format!("{field}.rewrite.authority"),
                "invalid authority",
            )
        })?;
    }
    Ok(Route {
        name: http.name.clone(),
        matches,
        destinations,
        timeout,
        retries,
        fault,
        mirrors,
        request_headers: header_ops(
            object,
            &format!("{field}.headers.request"),
            headers.and_then(|h| h.request.as_ref()),
        )?,
        response_headers: header_ops(
            object,
            &format!("{field}.headers.response"),
            headers.and_then(|h| h.response.as_ref()),
        )?,
        rewrite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> ConfigFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    const GOOD: &str = r#"
namespace: istioinaction
virtualServices:
- apiVersion: networking.istio.io/v1beta1
  kind: VirtualService
  metadata: {name: catalog}
  spec:
    hosts: [catalog]
    http:
    - match: [{headers: {x-istio-cohort: {exact: internal}}}]
      route: [{destination: {host: catalog, subset: version-v2}}]
    - route:
      - {destination: {host: catalog, subset: version-v1}, weight: 90}
      - {destination: {host: catalog, subset: version-v2}, weight: 10}
destinationRules:
- metadata: {name: catalog}
  spec:
    host: catalog
    subsets:
    - {name: version-v1, labels: {version: v1}}
    - {name: version-v2, labels: {version: v2}}
endpoints:
- {service: catalog, address: "127.0.0.1:3001", labels: {app: catalog, version: v1}}
- {service: catalog, address: "127.0.0.1:3002", labels: {app: catalog, version: v2}}
"#;

    #[test]
    fn builds_subset_clusters_from_labels() {
        let snap = build(&parse(GOOD), &ProxySettings::default(), None).unwrap();
        let key = |subset: Option<&str>| ClusterKey {
            service: "catalog.istioinaction.svc.cluster.local".into(),
            subset: subset.map(String::from),
        };
        let ports = |k: ClusterKey| -> Vec<u16> {
            snap.clusters[&k]
                .endpoints
                .iter()
                .map(|e| e.info.address.port())
                .collect()
        };
        assert_eq!(ports(key(Some("version-v1"))), [3001]);
        assert_eq!(ports(key(Some("version-v2"))), [3002]);
        assert_eq!(ports(key(None)), [3001, 3002]);
        assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    }

    #[test]
    fn a_router_knows_its_callers_by_address() {
        let yaml = format!(
            "{GOOD}callers:\n- {{address: 10.244.0.5, labels: {{app: webapp}}}}\n- {{address: 10.244.0.6, namespace: other, labels: {{app: web}}}}\n- {{address: 10.244.0.9, labels: {{app: a}}}}\n- {{address: 10.244.0.9, labels: {{app: b}}}}\n"
        );
        let router = ProxySettings {
            namespace: "istioinaction".into(),
            router: true,
            ..ProxySettings::default()
        };
        let snap = build(&parse(&yaml), &router, None).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (peer, labels app, namespace)
        let cases = [
            ("10.244.0.5", Some("webapp"), "istioinaction"),
            ("::ffff:10.244.0.5", Some("webapp"), "istioinaction"),
            ("10.244.0.6", Some("web"), "other"),
            ("10.244.0.7", None, ""),
            ("10.244.0.9", None, ""),
        ];
        for (peer, app, namespace) in cases {
            let source = snap.source(&router, ip(peer));
            assert_eq!(source.labels.get("app").map(String::as_str), app, "{peer}");
            assert_eq!(source.namespace, namespace, "{peer}");
            assert_eq!(source.gateways, ["mesh"], "{peer}");
        }
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.contains("10.244.0.9 is listed more than once")),
            "{:?}",
            snap.warnings
        );
        // A sidecar is its own workload whoever the peer is.
        let sidecar = ProxySettings::default();
        let snap = build(&parse(&yaml), &sidecar, None).unwrap();
        assert!(snap.source(&sidecar, ip("10.244.0.5")).labels.is_empty());
        assert_eq!(snap.source(&sidecar, ip("10.244.0.5")).namespace, "default");

        let bad = format!("{GOOD}callers:\n- {{address: \"10.244.0.5:80\"}}\n");
        let err = build(&parse(&bad), &router, None).unwrap_err().to_string();
        assert!(err.contains("callers[0]: address"), "{err}");
    }

    #[test]
    fn a_router_warns_of_source_namespaces_it_cannot_see() {
        let yaml = GOOD.replace(
            "{headers: {x-istio-cohort: {exact: internal}}}",
            "{sourceNamespace: frontend}",
        );
        let router = ProxySettings {
            namespace: "istioinaction".into(),
            router: true,
            ..ProxySettings::default()
        };
        let snap = build(&parse(&yaml), &router, None).unwrap();
        assert_eq!(
            snap.warnings,
            ["VirtualService istioinaction/catalog: http[0].match[0].sourceNamespace \"frontend\": this router only knows callers in namespace \"istioinaction\", so the match never holds"]
        );
        let own = GOOD.replace(
            "{headers: {x-istio-cohort: {exact: internal}}}",
            "{sourceNamespace: istioinaction}",
        );
        assert!(build(&parse(&own), &router, None)
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn invalid_objects_are_named_with_the_field() {
        // (edit to GOOD, expected message fragment)
        let cases = [
            ("weight: 90", "weight: -5", "VirtualService istioinaction/catalog: spec.http[1].route[0].weight: weight -5 is negative"),
            ("{exact: internal}", "{regex: \"(\"}", "VirtualService istioinaction/catalog: spec.http[0].match[0].headers.x-istio-cohort: invalid regex"),
            ("    subsets:", "    trafficPolicy: {loadBalancer: {simple: FASTEST}}\n    subsets:", "DestinationRule istioinaction/catalog: trafficPolicy.loadBalancer.simple: unknown load balancer \"FASTEST\""),
            ("127.0.0.1:3001", "localhost", "endpoints[0]: address"),
            ("metadata: {name: catalog}\n  spec:\n    hosts", "metadata: {name: \"\"}\n  spec:\n    hosts", "virtualServices[0]: metadata.name: must not be empty"),
        ];
        for (from, to, want) in cases {
            let yaml = GOOD.replacen(from, to, 1);
            let err = build(&parse(&yaml), &ProxySettings::default(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}\n  wanted: {want}");
        }
        // A route whose weights are all omitted with two destinations sums to zero.
        let yaml = GOOD.replace(", weight: 90", "").replace(", weight: 10", "");
        let err = build(&parse(&yaml), &ProxySettings::default(), None).unwrap_err();
        assert_eq!(err.label(), "zero_weights");
    }

    #[test]
    fn retries_and_timeouts_are_parsed() {
        let yaml = GOOD.replace(
            "    - route:\n",
            "    - timeout: 0.5s\n      retries: {attempts: 2, retryOn: \"5xx,408\", perTryTimeout: 300ms}\n      route:\n",
        );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        let route = &snap.table.virtual_hosts[0].routes[1];
        assert_eq!(route.timeout, Some(Duration::from_millis(500)));
        let r = route.retries.as_ref().unwrap();
        assert_eq!(
            (r.attempts, r.per_try_timeout),
            (2, Some(Duration::from_millis(300)))
        );
        assert_eq!(r.conditions.codes, [408]);
        let bad = GOOD.replace(
            "    - route:\n",
            "    - retries: {attempts: 1, retryOn: bogus}\n      route:\n",
        );
        let err = build(&parse(&bad), &ProxySettings::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.http[1].retries.retryOn: unknown retry condition \"bogus\""),
            "{err}"
        );
    }

    #[test]
    fn unsupported_fields_are_reported() {
        let yaml = GOOD
            .replace(
                "    subsets:",
                "    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n    subsets:",
            )
            .replace(
                "    - route:\n",
                "    - corsPolicy: {allowOrigins: [{exact: x}]}\n      route:\n",
            );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        assert_eq!(
            snap.warnings,
            [
                "DestinationRule istioinaction/catalog: spec.trafficPolicy.tls is not enforced by sluice-proxy",
                "VirtualService istioinaction/catalog: spec.http[1].corsPolicy is not enforced by sluice-proxy",
            ]
        );
    }

    #[test]
    fn locality_settings_are_validated() {
        let with = |setting: &str| {
            GOOD.replace(
                "    subsets:",
                &format!("    trafficPolicy: {{outlierDetection: {{}}, loadBalancer: {{localityLbSetting: {setting}}}}}\n    subsets:"),
            )
        };
        let ok = build(
            &parse(&with("{distribute: [{from: \"us-west1/*\", to: {\"us-west1/a/*\": 60, \"us-west1/b/*\": 40}}]}")),
            &ProxySettings::default(),
            None,
        )
        .unwrap();
        assert!(
            ok.warnings.iter().all(|w| !w.contains("localityLbSetting")),
            "{:?}",
            ok.warnings
        );
        let cases = [
            (
                "{distribute: [{from: \"*\", to: {\"a/*\": 60}}]}",
                "trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 60, not 100",
            ),
            (
                "{failover: [{from: us-west1, to: us-west1}]}",
                "trafficPolicy.loadBalancer.localityLbSetting.failover[0]: from and to must be two different regions",
            ),
            (
                "{distribute: [{from: \"*\", to: {\"a/*\": 100}}], failover: [{from: a, to: b}]}",
                "trafficPolicy.loadBalancer.localityLbSetting: set either distribute or failover, not both",
            ),
        ];
        for (setting, want) in cases {
            let err = build(&parse(&with(setting)), &ProxySettings::default(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{setting}: {err}");
        }
    }

    #[test]
    fn endpoint_state_survives_reload() {
        let settings = ProxySettings::default();
        let first = build(&parse(GOOD), &settings, None).unwrap();
        let second = build(&parse(GOOD), &settings, Some(&first)).unwrap();
        let key = ClusterKey {
            service: "catalog.istioinaction.svc.cluster.local".into(),
            subset: None,
        };
        assert!(Arc::ptr_eq(
            &first.clusters[&key].endpoints[0],
            &second.clusters[&key].endpoints[0]
        ));
        assert!(Arc::ptr_eq(
            &first.clusters[&key].pool,
            &second.clusters[&key].pool
        ));
    }

    #[test]
    fn gateway_bound_services_do_not_apply_to_a_sidecar() {
        let yaml = GOOD.replace(
            "    hosts: [catalog]",
            "    hosts: [catalog]\n    gateways: [coolstore-gateway]",
        );
        let snap = build(&parse(&yaml), &ProxySettings::default(), None).unwrap();
        assert!(snap.table.virtual_hosts.is_empty());
    }
}
