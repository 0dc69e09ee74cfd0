//! The controller: observe the cluster, decide with [`crate::rollout`], apply the plan.
pub mod workloads;
