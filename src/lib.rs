//! sluice: progressive delivery for Kubernetes.
//!
//! The `kube` feature (on by default) holds everything that talks to an API server: the
//! controller and its decisions, the routers, the plugin, sluice-proxy's Kubernetes mode.
//! Without it the proxy (file mode), the demo app and the load tester build on their own.
#![forbid(unsafe_code)]

#[cfg(feature = "kube")]
pub mod analysis;
pub mod api;
#[cfg(feature = "kube")]
pub mod controller;
pub mod demo;
pub mod duration;
#[cfg(feature = "kube")]
pub mod hooks;
pub mod loadtester;
#[cfg(feature = "kube")]
pub mod notify;
#[cfg(feature = "kube")]
pub mod plugin;
pub mod proxy;
#[cfg(feature = "kube")]
pub mod rollout;
#[cfg(feature = "kube")]
pub mod router;
pub mod shutdown;
#[cfg(feature = "kube")]
pub mod workloads;
