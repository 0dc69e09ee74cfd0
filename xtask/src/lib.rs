//! Developer tooling for sluice: the local cluster's node agent lives here.
pub mod node_agent;
