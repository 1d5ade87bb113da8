//! Exit statuses by name, the `--help` text that lists them, and the usage error
//! (exit 2) for a command line the options' own parsers could not refuse.

use std::process::ExitCode;

/// The exit statuses, by name (docs/contract.md has them too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// A clean stop: everything held was committed and acked.
    Clean = 0,
    /// A command failed (the message says why).
    Failed = 1,
    /// A bad setting or argument (one line names it); do not restart in a loop.
    Usage = 2,
    /// `verify` or `verify-proof` found the history altered, or a proof that does not prove.
    Tampered = 3,
    /// A supervised task (consumer, writer, a background job) ended or panicked.
    TaskFailed = 70,
    /// SIGTERM took longer than SHUTDOWN_TIMEOUT.
    ShutdownTimedOut = 75,
    /// `replay` interrupted by Ctrl-C.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The exit codes, for `--help`.
pub(crate) const EXIT_CODES: &str = "Exit codes:
  0   a clean stop: everything held was committed and acked
  1   a command failed (the message says why)
  2   a bad setting or argument (one line names it); do not restart in a loop
  3   `candystore verify` found the sealed history altered (it names the first event)
  70  a supervised task (consumer, writer, a background job) ended or panicked; restart
  75  SIGTERM took longer than SHUTDOWN_TIMEOUT (what was not committed is redelivered)
  130 `candystore replay` interrupted by Ctrl-C (it printed the position for --resume)";

/// A command line the options' own parsers could not refuse (two options that
/// contradict each other, a `--resume` this command never printed): exit 2, like
/// clap's own refusals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_exit_status_is_in_the_help_text() {
        for (exit, number) in [
            (Exit::Clean, "0 "),
            (Exit::Failed, "1 "),
            (Exit::Usage, "2 "),
            (Exit::Tampered, "3 "),
            (Exit::TaskFailed, "70 "),
            (Exit::ShutdownTimedOut, "75 "),
            (Exit::Interrupted, "130 "),
        ] {
            assert_eq!((exit as u8).to_string() + " ", number);
            assert!(
                EXIT_CODES
                    .lines()
                    .any(|l| l.trim_start().starts_with(number)),
                "{exit:?}"
            );
        }
    }
}
