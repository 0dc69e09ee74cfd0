//! The controller: observe the cluster, decide with [`crate::rollout`], apply the plan.
pub mod analysis;
pub mod apply;
pub mod context;
mod discovery;
mod ensure;
pub mod events;
pub mod gates;
mod janitor;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod mock_api;
pub mod observe;
pub mod reconcile;
pub mod revert;
pub mod run;
