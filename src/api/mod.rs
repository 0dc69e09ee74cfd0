//! Resource types: sluice's own CRDs and the Istio and Gateway API objects sluice reads
//! and writes. The Istio and Gateway API specs are plain serde types that sluice-proxy's
//! file mode reads too; their Kubernetes resource types (`VirtualService`, `HTTPRoute`,
//! ...) and sluice's own CRDs come with the `kube` feature.
#[cfg(feature = "kube")]
pub mod canary;
pub mod gateway;
pub mod istio;
pub mod schema;
#[cfg(feature = "kube")]
pub mod templates;

#[cfg(feature = "kube")]
pub use canary::*;
#[cfg(feature = "kube")]
pub use templates::*;

#[cfg(feature = "kube")]
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
#[cfg(feature = "kube")]
use kube::core::CustomResourceExt;

/// The CRDs sluice serves, in the order they should be applied.
#[cfg(feature = "kube")]
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Canary::crd(), MetricTemplate::crd(), AlertProvider::crd()]
}
