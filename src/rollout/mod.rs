//! The pure release decision. Nothing in this module does IO or depends on the kube
//! client or tokio: the controller observes, calls [`decide`], and executes the [`Plan`].

mod decide;
mod spec;
#[cfg(test)]
mod tests;

pub use decide::{
    analysis_due, decide, Event, EventType, MetricError, MetricOutcome, Observed, Plan,
    PrimaryAction, Weights, WorkloadState,
};
pub use spec::{BuiltinMetric, MetricCheck, MetricSource, ReleaseSpec, SpecError, Steps};
