//! A minimal kubelet for the local cluster: runs each pod's containers as local
//! processes inside a per-pod network namespace (see docs/local-cluster.md).
pub mod agent;
pub mod containers;
pub mod images;
pub mod kubelet_api;
pub mod network;
pub mod probe;
