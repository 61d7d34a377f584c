//! The Tokio runtime the subcommands run on.

use crate::exit::Failure;

/// A multi-threaded runtime with I/O and timers.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))
}
