//! The tracing subscriber: JSON lines for machines, or a console format for people.

use tracing_subscriber::EnvFilter;

const QUIET_DEPENDENCIES: &str =
    "tokio_postgres=warn,lapin=warn,actix_server=warn,actix_web=warn,amq_protocol=warn";

/// How log lines are written (LOG_FORMAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Console,
}

/// A command other than `serve` reports the broker's errors itself, once, in its
/// own words; lapin's own lines (a returned message dumped byte by byte, a channel
/// closed by a refusal the command names) would repeat it.
const QUIET_FOR_COMMANDS: &str = "lapin=off";

/// Installs the global subscriber; `serving` for `serve`, else a command. A second
/// call (tests) is a no-op.
pub fn init(level: &str, format: LogFormat, serving: bool) {
    // Dependencies speak at warn unless LOG_LEVEL names them (`info,lapin=debug`).
    let quiet = if serving {
        QUIET_DEPENDENCIES.to_owned()
    } else {
        format!("{QUIET_DEPENDENCIES},{QUIET_FOR_COMMANDS}")
    };
    let directives = format!("{quiet},{level}");
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Console => builder.try_init(),
    };
}

/// The error and its causes on one line. A cause whose text the line already
/// ends with is not written again: some errors (lapin's protocol errors among
/// them) write their source into their own message and return it as `source()`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("NOT_FOUND - no exchange 'x'")]
    struct Refusal;

    #[derive(Debug, thiserror::Error)]
    #[error("protocol error: {0}")]
    struct Repeats(#[source] Refusal);

    #[derive(Debug, thiserror::Error)]
    #[error("broker")]
    struct Outer(#[source] Repeats);

    #[test]
    fn a_cause_already_in_its_parents_message_is_written_once() {
        assert_eq!(
            error_chain(&Outer(Repeats(Refusal))),
            "broker: protocol error: NOT_FOUND - no exchange 'x'"
        );
    }
}
