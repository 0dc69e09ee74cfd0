//! File-mode configuration and the validation that turns Istio objects plus endpoints
//! into an immutable `Snapshot` (route table + clusters). Invalid objects are rejected
//! with an error naming the object and the field; the caller keeps the last good one.
//!
//! The parts, in the order a configuration flows through them (each uses only the ones
//! before it):
//! - `file`: the file format (`ConfigFile` and its entries) and `read_file`.
//! - `policy`: a DestinationRule's traffic policy, merged per subset and checked, as
//!   the cluster settings it becomes.
//! - `virtual_host`: a VirtualService checked and turned into a `VirtualHost`; checking
//!   one is building it, so its field checks live there.
//! - `http_route`: HTTPRoutes with Service parents (GAMMA) turned into the
//!   `VirtualHost`s of those Services, ordered by the Gateway API's precedence.
//! - `validate`: the per-object checks Kubernetes mode runs on its own (`check_*`), and
//!   the warnings for what is accepted but not enforced.
//! - `build`: the whole file into a `Snapshot`: endpoints, clusters, virtual hosts and,
//!   for a router, callers.
//!
//! All of them report through `Error` and the field helpers defined here.

mod build;
mod file;
mod http_route;
mod policy;
mod validate;
mod virtual_host;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::balance::{self, Cluster, Endpoint};
use crate::proxy::resilience::{self, RetryPolicy};
use crate::proxy::routes::{self, ClusterKey, RouteTable, SourceIdentity};

pub use build::build;
pub use file::{read_file, CallerEntry, ConfigFile, EndpointEntry, Object, ObjectMeta};
pub use http_route::{check_http_route, is_service_parent, service_parents};
pub use validate::{check_destination_rule, check_virtual_service};

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

/// A field of `object` whose value is rejected, and why.
fn invalid(object: &str, field: &str, reason: &str) -> Error {
    Error::Invalid {
        object: object.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// An Istio duration as Go writes it (`250ms`, `1.5s`) or bare seconds, or an error
/// naming the field.
fn duration_field(object: &str, field: &str, text: &str) -> Result<Duration, Error> {
    crate::duration::parse_go_or_seconds(text).map_err(|e| invalid(object, field, &e.to_string()))
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
    /// 503 among the mesh default's retriable codes (Istio before 1.24, or
    /// `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY=false`); also used for `retries` without
    /// `retryOn`.
    pub default_retry_503: bool,
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
            default_retry_503: false,
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

/// The configuration the unit tests of every part start from and edit.
#[cfg(test)]
mod fixture {
    use super::ConfigFile;

    pub(super) fn parse(yaml: &str) -> ConfigFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    pub(super) const GOOD: &str = r#"
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
}
