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

/// Installs the global subscriber. A second call (tests) is a no-op.
pub fn init(level: &str, format: LogFormat) {
    // Dependencies speak at warn unless LOG_LEVEL names them (`info,lapin=debug`).
    let directives = format!("{QUIET_DEPENDENCIES},{level}");
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

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
