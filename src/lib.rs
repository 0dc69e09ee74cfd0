//! sluice: progressive delivery for Kubernetes.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
