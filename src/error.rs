//! The errors a command can end with before (or instead of) a run, rendered
//! in one place (`main.rs`) with the exit code each carries.
//!
//! Failures of hosts during a run are not errors here: the runner reports
//! them per host and the run's exit code says so (1). What ends up here is
//! refused input or a controller that cannot start the run; nothing on any
//! host was touched.

use crate::command;
use crate::inventory::InventoryError;
use crate::phases::services::ServicesError;
use crate::phases::{ChecksFailed, SelectError};
use crate::runlock::RunLockError;
use crate::secrets::SecretsError;

/// Exit code for bad input: nothing was touched.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Services(#[from] ServicesError),
    #[error(transparent)]
    RunLock(#[from] RunLockError),
    #[error(transparent)]
    Steps(#[from] SelectError),
    #[error(transparent)]
    Checks(#[from] ChecksFailed),
    #[error(transparent)]
    Nodes(#[from] command::nodes::InputError),
    #[error(transparent)]
    Deploy(#[from] command::deploy::InputError),
    #[error(transparent)]
    Care(#[from] command::care::InputError),
    #[error(transparent)]
    Backup(#[from] crate::phases::backup::BackupInputError),
    #[error(transparent)]
    Status(#[from] command::status::InputError),
    #[error(transparent)]
    Logs(#[from] command::logs::InputError),
    /// The controller itself cannot start the run (temp dir, log dir, runtime).
    #[error("{what}: {source}")]
    Local {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code: every error here stops the run before any
    /// host is touched.
    pub fn exit_code(&self) -> u8 {
        EXIT_BAD_INPUT
    }

    /// A controller-side failure, with what mesh was doing.
    pub(crate) fn local(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Local {
            what: what.into(),
            source,
        }
    }
}
