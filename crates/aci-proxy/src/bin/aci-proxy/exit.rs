//! The exit status of every `aci-proxy` subcommand, defined once.

use std::process::ExitCode;

use tower_aci::ErrorKind;

/// What the process reports when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: done. `serve` stopped cleanly on a signal; `inspect` verified under the pins given;
    /// `verify-receipts` verified every line; `config` printed the configuration.
    Ok = 0,
    /// 1: something did not verify: the gateway's report failed the pins (`serve` at start,
    /// `inspect`), or a line of the audit file (`verify-receipts`). Restarting does not help
    /// until the gateway or the pins change.
    NotVerified = 1,
    /// 2: usage or configuration error: an unknown flag or key, a bad value, a missing pin or
    /// client key, an unreadable input file. Fix the configuration; restarting does not help.
    /// (clap's own usage errors exit 2 as well.)
    Usage = 2,
    /// 3: runtime error: the gateway or the PCCS could not be reached or answered an error, the
    /// listen address could not be bound, a file could not be written, the server failed. May
    /// succeed when retried.
    Runtime = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// The exit statuses, as `--help` shows them under every subcommand.
pub(crate) const HELP: &str = "\
Exit status (the same for every subcommand):
  0  done: served and stopped on SIGTERM/SIGINT; inspect or verify-receipts verified everything; config printed
  1  not verified: the gateway's report failed the pins (serve, inspect), or an audit line (verify-receipts)
  2  usage or configuration error: a bad flag, key or value, a missing pin, an unreadable input file
  3  runtime error: the gateway or PCCS unreachable or failing, the address in use, a file not writable";

/// Why a subcommand failed: its exit status and the message for stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    /// A usage or configuration error.
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure { exit: Exit::Usage, message: message.into() }
    }

    /// A runtime error.
    pub(crate) fn runtime(message: impl Into<String>) -> Failure {
        Failure { exit: Exit::Runtime, message: message.into() }
    }

    /// Something did not verify.
    pub(crate) fn not_verified(message: impl Into<String>) -> Failure {
        Failure { exit: Exit::NotVerified, message: message.into() }
    }

    /// A library error, classified by its kind: `Config` is a configuration error; the network,
    /// the gateway's error answers and I/O are runtime errors; every check of the report
    /// (attestation, a malformed or mis-shaped report) did not verify.
    pub(crate) fn of(e: &tower_aci::Error, context: &str) -> Failure {
        let exit = match e.kind() {
            ErrorKind::Config => Exit::Usage,
            ErrorKind::Attestation(_)
            | ErrorKind::Receipt(_)
            | ErrorKind::Malformed
            | ErrorKind::Protocol
            | ErrorKind::Truncated
            | ErrorKind::TooLarge
            | ErrorKind::Decrypt
            | ErrorKind::MissingEncryption => Exit::NotVerified,
            // Transport, Gateway, KeyUnavailable, and kinds added later: a retry may succeed.
            _ => Exit::Runtime,
        };
        Failure { exit, message: format!("{context}{e}") }
    }
}
