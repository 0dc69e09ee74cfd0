//! sluice-loadtester: the load tester and gate service Canary webhooks call.
//!
//! It accepts Flagger's webhook payload (`{name, namespace, phase, checksum, metadata}`)
//! on the same paths as `flagger-loadtester`, so existing Canaries keep working:
//! `POST /` runs `metadata.cmd` (`type: cmd` in the background, `type: bash` waiting for
//! it) or the built-in load generator (`type: load`); `/gate/*` and `/rollback/*` are
//! in-memory gates keyed by `namespace/name`. See `docs/loadtester.md`.

mod gates;
mod load;
mod payload;
mod server;
mod tasks;

use std::net::SocketAddr;

use crate::duration::DurationError;

pub use gates::{GateAction, GateState, Gates};
pub use load::{LoadCounters, LoadSpec, Pacer};
pub use payload::{CommandSpec, Payload, Task};
pub use server::{router, State};
pub use tasks::{run_command, CommandOutcome, Shell};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    #[error(
        "missing field {0:?}: the payload needs at least {{\"name\": ..., \"namespace\": ...}}"
    )]
    MissingField(&'static str),
    #[error("metadata.{key} is required for type {kind}")]
    MissingMetadata {
        key: &'static str,
        kind: &'static str,
    },
    #[error("invalid metadata.{key}: {source}")]
    InvalidDuration {
        key: &'static str,
        source: DurationError,
    },
    #[error("invalid metadata.{key} {value:?}: {reason}")]
    InvalidMetadata {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("unsupported metadata.type {0:?} (supported: cmd, bash, load)")]
    UnsupportedType(String),
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Error {
    /// The HTTP status a request failing with this error gets.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Error::BadJson(_)
            | Error::MissingField(_)
            | Error::MissingMetadata { .. }
            | Error::InvalidDuration { .. }
            | Error::InvalidMetadata { .. }
            | Error::UnsupportedType(_) => StatusCode::BAD_REQUEST,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Spawn { .. } | Error::Client(_) | Error::Listen { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}
