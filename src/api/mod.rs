//! Resource types: sluice's own CRDs and the Istio and Gateway API objects sluice reads
//! and writes.
pub mod canary;
pub mod gateway;
pub mod istio;
pub mod schema;
pub mod templates;

pub use canary::*;
pub use templates::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::CustomResourceExt;

/// The CRDs sluice serves, in the order they should be applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Canary::crd(), MetricTemplate::crd(), AlertProvider::crd()]
}
