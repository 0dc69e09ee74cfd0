//! The file format (YAML):
//! ```yaml
//! namespace: istioinaction          # default namespace for objects and endpoints
//! virtualServices: [ <VirtualService objects> ]
//! destinationRules: [ <DestinationRule objects> ]
//! httpRoutes: [ <HTTPRoute objects> ]  # those with Service parents (GAMMA) apply
//! endpoints:
//!   - service: catalog              # short name, name.namespace or FQDN
//!     address: 127.0.0.1:3000
//!     labels: {app: catalog, version: v1}
//!     zone: us-west1/us-west1-a     # optional
//!     workload: catalog-v1          # optional, for metrics
//!     protocol: http                # optional: http (HTTP/1.1, default) or h2c
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::Error;
use crate::api::gateway::HttpRouteSpec;
use crate::api::istio::{DestinationRuleSpec, VirtualServiceSpec};

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
    pub http_routes: Vec<Object<HttpRouteSpec>>,
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
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// RFC 3339; orders HTTPRoutes of equal precedence (the oldest first).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
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

pub(super) fn object_name(kind: &str, meta: &ObjectMeta, default_ns: &str) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or(default_ns),
        meta.name
    )
}
