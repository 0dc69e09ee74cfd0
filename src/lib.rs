//! sluice: progressive delivery for Kubernetes.
#![forbid(unsafe_code)]

pub mod api;
pub mod demo;
pub mod proxy;
