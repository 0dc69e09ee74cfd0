//! Resource types: sluice's own CRDs and the Istio objects sluice reads and writes.
pub mod istio;
