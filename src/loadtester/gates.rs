//! Manual gates, kept in memory per canary (`namespace/name`), as flagger-loadtester.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::Serialize;

/// What one canary's gates say. Both are closed until someone opens them (Flagger).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateState {
    pub gate_open: bool,
    pub rollback_open: bool,
}

/// One request to a gate endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateAction {
    /// `/gate/approve`: always allowed.
    Approve,
    /// `/gate/halt`: always refused.
    Halt,
    /// `/gate/check`: allowed while the gate is open.
    Check,
    Open,
    Close,
    /// `/rollback/check`: allowed (= roll back) while rollback is open.
    RollbackCheck,
    RollbackOpen,
    RollbackClose,
}

impl GateAction {
    pub const ALL: [(&'static str, GateAction); 8] = [
        ("/gate/approve", GateAction::Approve),
        ("/gate/halt", GateAction::Halt),
        ("/gate/check", GateAction::Check),
        ("/gate/open", GateAction::Open),
        ("/gate/close", GateAction::Close),
        ("/rollback/check", GateAction::RollbackCheck),
        ("/rollback/open", GateAction::RollbackOpen),
        ("/rollback/close", GateAction::RollbackClose),
    ];

    /// Whether the action reads or changes the stored state (approve and halt do not,
    /// so they need no payload).
    pub fn needs_canary(self) -> bool {
        !matches!(self, GateAction::Approve | GateAction::Halt)
    }
}

/// The state after `action`, and whether the request is allowed (200) or refused (403).
pub fn step(state: GateState, action: GateAction) -> (GateState, bool) {
    match action {
        GateAction::Approve => (state, true),
        GateAction::Halt => (state, false),
        GateAction::Check => (state, state.gate_open),
        GateAction::Open => (
            GateState {
                gate_open: true,
                ..state
            },
            true,
        ),
        GateAction::Close => (
            GateState {
                gate_open: false,
                ..state
            },
            true,
        ),
        GateAction::RollbackCheck => (state, state.rollback_open),
        GateAction::RollbackOpen => (
            GateState {
                rollback_open: true,
                ..state
            },
            true,
        ),
        GateAction::RollbackClose => (
            GateState {
                rollback_open: false,
                ..state
            },
            true,
        ),
    }
}

/// How `GET /gates` shows one canary.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct GateView {
    pub gate: &'static str,
    pub rollback: &'static str,
}

fn word(open: bool) -> &'static str {
    if open {
        "open"
    } else {
        "closed"
    }
}

#[derive(Default)]
pub struct Gates {
    states: Mutex<BTreeMap<String, GateState>>,
}

impl Gates {
    /// Applies `action` to the canary `key`; true when the request is allowed. A check
    /// records the canary too, so `GET /gates` lists who is waiting.
    pub fn apply(&self, key: &str, action: GateAction) -> bool {
        let mut states = self.states.lock();
        let current = states.get(key).copied().unwrap_or_default();
        let (next, allowed) = step(current, action);
        if action.needs_canary() {
            states.insert(key.to_string(), next);
        }
        allowed
    }

    pub fn view(&self) -> BTreeMap<String, GateView> {
        self.states
            .lock()
            .iter()
            .map(|(key, state)| {
                let view = GateView {
                    gate: word(state.gate_open),
                    rollback: word(state.rollback_open),
                };
                (key.clone(), view)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::GateAction::*;
    use super::*;

    #[test]
    fn gate_sequences() {
        // Each case: actions applied in order to one canary, and the answers expected.
        let cases: &[(&str, &[(GateAction, bool)])] = &[
            (
                "closed by default",
                &[(Check, false), (RollbackCheck, false)],
            ),
            (
                "approve and halt ignore state",
                &[(Approve, true), (Halt, false), (Check, false)],
            ),
            (
                "open then check",
                &[(Open, true), (Check, true), (Check, true)],
            ),
            (
                "open, close",
                &[(Open, true), (Close, true), (Check, false)],
            ),
            (
                "halt does not close",
                &[(Open, true), (Halt, false), (Check, true)],
            ),
            (
                "rollback apart from gate",
                &[(RollbackOpen, true), (Check, false), (RollbackCheck, true)],
            ),
            (
                "gate apart from rollback",
                &[(Open, true), (RollbackCheck, false)],
            ),
            (
                "rollback close",
                &[
                    (RollbackOpen, true),
                    (RollbackClose, true),
                    (RollbackCheck, false),
                ],
            ),
            ("close when closed", &[(Close, true), (Check, false)]),
        ];
        for (name, steps) in cases {
            let gates = Gates::default();
            for (i, (action, want)) in steps.iter().enumerate() {
                assert_eq!(
                    gates.apply("test/podinfo", *action),
                    *want,
                    "{name}: step {i} {action:?}"
                );
            }
        }
    }

    #[test]
    fn canaries_are_independent_and_listed() {
        let gates = Gates::default();
        gates.apply("test/a", Open);
        gates.apply("test/b", RollbackOpen);
        gates.apply("other/a", Check);
        gates.apply("test/c", Approve);
        assert!(gates.apply("test/a", Check));
        assert!(!gates.apply("test/b", Check));
        assert!(!gates.apply("other/a", Check));
        let view = gates.view();
        assert_eq!(
            view.keys().collect::<Vec<_>>(),
            ["other/a", "test/a", "test/b"]
        );
        assert_eq!(
            view["test/a"],
            GateView {
                gate: "open",
                rollback: "closed"
            }
        );
        assert_eq!(
            view["test/b"],
            GateView {
                gate: "closed",
                rollback: "open"
            }
        );
    }
}
