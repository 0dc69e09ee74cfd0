//! The pure release decision. Nothing in this module does IO or depends on the kube
//! client or tokio: the controller observes, calls [`decide`], and executes the [`Plan`].
//! When the decision needs an observation that costs IO (webhooks, metric queries) it says
//! so in [`Plan::need`]; the controller gathers it and decides again.

mod decide;
mod outcome;
mod revert;
mod spec;
#[cfg(test)]
mod tests;

pub use decide::{
    actions, decide, Event, EventType, GateResult, MetricError, MetricOutcome, Need, Observed,
    Plan, PrimaryAction, Routes, Weights, WorkloadState,
};
pub use outcome::{blocked, idle, run_ended, RunEnd, BLOCKED_REQUEUE};
pub use revert::{
    finalizers_without_ours, has_finalizer, revert_step, wanted_finalizers, RevertStep, FINALIZER,
};
pub use spec::{BuiltinMetric, MetricCheck, MetricSource, ReleaseSpec, SpecError, Steps, Strategy};
