//! sluice: progressive delivery for Kubernetes.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
pub mod controller;
pub mod demo;
pub mod duration;
pub mod hooks;
pub mod loadtester;
pub mod notify;
pub mod plugin;
pub mod proxy;
pub mod rollout;
pub mod router;
pub mod shutdown;
pub mod workloads;
