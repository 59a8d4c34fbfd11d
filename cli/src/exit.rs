//! Exit codes and the error type that carries one to `main`.

use std::fmt;
use std::process::ExitCode;

/// The documented exit codes (see [`EXIT_CODES_HELP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Usage error, bad input, or any failure without a more specific code.
    Usage = 1,
    /// The server refused because of a conflict (HTTP 409).
    Conflict = 2,
    /// A service could not be reached, timed out, or answered 5xx.
    Unavailable = 3,
    /// `esk doctor` found a problem.
    Problem = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Shown at the end of `esk --help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  usage error, bad input (HTTP 400/404/413/415/422) or any other failure
  2  conflict (HTTP 409): wrong_expected_version, duplicate_event_id, append_id_reused
  3  unavailable: ingest, Postgres or the broker cannot be reached, timed out or answered
     5xx (503 overloaded/unavailable/commit_outcome_unknown: all of the append or none of
     it was written; retry with the same --append-id)
  4  esk doctor found a problem

Errors are printed on stderr as `esk: <message>`. Colour is off when stdout is not a
terminal or NO_COLOR is set; --json prints one JSON document (one line per event for tail).";

/// An error that decides the exit code. Anything else that reaches `main` exits 1.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn of(exit: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit,
            message: message.into(),
        })
    }

    pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::of(Exit::Usage, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> anyhow::Error {
        Self::of(Exit::Unavailable, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What `main` does with an error: `None` means exit 0 silently (stdout was closed, as in
/// `esk tail | head`).
pub(crate) fn classify(error: &anyhow::Error) -> Option<Exit> {
    for cause in error.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return Some(failure.exit);
        }
        if let Some(esk_runtime::db::DbError::Connect(_)) = cause.downcast_ref() {
            return Some(Exit::Unavailable);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return None;
            }
        }
    }
    Some(Exit::Usage)
}

/// The innermost cause of an error, which for network errors is the useful part
/// ("Connection refused (os error 111)").
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_code_through_context() {
        let error = Failure::of(Exit::Conflict, "409").context("appending");
        assert_eq!(classify(&error), Some(Exit::Conflict));
        assert_eq!(classify(&anyhow::anyhow!("plain")), Some(Exit::Usage));
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(classify(&pipe), None);
    }
}
