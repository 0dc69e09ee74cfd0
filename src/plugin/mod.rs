//! `kubectl sluice`: look at and steer releases without editing YAML.
//!
//! Runtime actions are annotations on the Canary whose value is the revision
//! (`status.lastAppliedSpec`) they apply to, so an action never leaks into the next
//! release; the controller removes them once handled. The decisions (what to patch, when
//! a run has ended, what the tree shows) are pure functions over the objects; `cluster`
//! does the reading, writing and watching.

pub mod cluster;
pub mod control;
pub mod render;
pub mod status;

use crate::api::Canary;
use crate::router::{Routers, TrafficRouter};

/// The routers the plugin reads live routes back with.
pub fn routers() -> &'static Routers {
    static ROUTERS: std::sync::LazyLock<Routers> = std::sync::LazyLock::new(Routers::for_reading);
    &ROUTERS
}

/// The router that reads a Canary's routes: its `spec.provider`, Istio when unset (the
/// controller's default; the plugin cannot see a controller started with another).
pub fn router_of(canary: &Canary) -> &'static dyn TrafficRouter {
    routers().for_kind(canary.spec.provider.unwrap_or_default())
}

/// Skip the remaining steps of that revision's run.
pub const PROMOTE: &str = "sluice.dev/promote";
/// Roll back that revision's run now.
pub const ABORT: &str = "sluice.dev/abort";
/// Run that failed revision again.
pub const RETRY: &str = "sluice.dev/retry";
/// `"true"` holds the run where it is.
pub const PAUSED: &str = "sluice.dev/paused";

/// The Canary carries `sluice.dev/paused: "true"` (as the controller reads it).
pub fn is_paused(canary: &Canary) -> bool {
    annotation(canary, PAUSED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A trimmed annotation value.
pub fn annotation<'a>(canary: &'a Canary, key: &str) -> Option<&'a str> {
    canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
}
