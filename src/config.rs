//! Settings: named defaults, an optional TOML file, the environment, and validation.
//!
//! This is the only module that reads the process environment. Every setting is
//! parsed from text with one rule, so a bad value is always reported the same way:
//! one line naming the variable and the value. The environment wins over the file.

pub use crate::source::amqp::QueueType;
use crate::storage::PartitionInterval;
pub use crate::telemetry::LogFormat;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// One setting: its variable, its default, what it means (for `--help`), and
/// how the start-up log shows its value.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
    pub secret: Secret,
}

/// How a value is shown in the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// As it is.
    No,
    /// A URL with its password replaced by `***`.
    Url,
    /// Tokens: only how many.
    Tokens,
}

/// Declares every setting once: its field, its variable, its default, what it
/// means, how its value is shown, and the rule that parses it. From the one list
/// come [`VARIABLES`] (for `--help`, the start-up log, the file's keys and the
/// docs' checks), the typed fields of [`Settings`], and the builder, which hands
/// each rule its own variable's text: nothing is looked up by name, so a setting
/// cannot be read as another's, or as an empty one.
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $field:ident: $ty:ty {
            name: $name:literal,
            default: $default:literal,
            meaning: $meaning:literal,
            secret: $secret:ident,
            parse: $parse:expr,
        }
    )*) => {
        /// Every variable this service reads: the one table of settings. The TOML
        /// file uses the same names in lower case (`batch_size = 500`); `--help`,
        /// the start-up log and docs/contract.md are made from (or checked against) it.
        pub const VARIABLES: &[Variable] = &[$(
            Variable { name: $name, default: $default, meaning: $meaning, secret: Secret::$secret },
        )*];

        /// The validated settings of one process.
        #[derive(Clone)]
        pub struct Settings {
            $( $(#[$attr])* pub $field: $ty, )*
            /// Every variable's value as given (or defaulted), for the start-up log.
            raw: BTreeMap<&'static str, String>,
        }

        impl Settings {
            /// Each variable's text (given, else its default) through its own rule.
            fn parse(raw: BTreeMap<&'static str, String>) -> Result<Self, ConfigError> {
                Ok(Settings {
                    $( $field: {
                        let rule: fn(Value<'_>) -> Result<$ty, ConfigError> = $parse;
                        rule(Value::new(
                            $name,
                            raw.get($name).map_or($default, String::as_str),
                            Secret::$secret,
                        ))?
                    }, )*
                    raw,
                })
            }
        }
    };
}

settings! {
    rabbit_url: String {
        name: "RABBIT_URL",
        default: "amqp://guest:guest@localhost:5672/%2f",
        meaning: "the broker (amqps:// for TLS)",
        secret: Url,
        parse: |v| v.url(&["amqp://", "amqps://"]),
    }
    rabbit_exchange: String {
        name: "RABBIT_EXCHANGE",
        default: "events",
        meaning: "the topic exchange to bind to (declared durable if missing)",
        secret: No,
        parse: |v| v.name(true),
    }
    rabbit_queue: String {
        name: "RABBIT_QUEUE",
        default: "candystore",
        meaning: "the durable queue this service consumes",
        secret: No,
        parse: |v| v.name(false),
    }
    rabbit_bindings: Vec<String> {
        name: "RABBIT_BINDING",
        default: "#",
        meaning: "binding key(s), comma-separated",
        secret: No,
        parse: |v| v.bindings(),
    }
    rabbit_queue_type: QueueType {
        name: "RABBIT_QUEUE_TYPE",
        default: "classic",
        meaning: "classic, or quorum (with a delivery limit and <queue>.parked)",
        secret: No,
        parse: |v| v.queue_type(),
    }
    /// Quorum queues only: deliveries of one message before the broker parks it.
    rabbit_delivery_limit: u32 {
        name: "RABBIT_DELIVERY_LIMIT",
        default: "5",
        meaning: "quorum queues: deliveries of one message before it is parked",
        secret: No,
        parse: |v| Ok(v.positive(1_000)? as u32),
    }
    database_url: String {
        name: "DATABASE_URL",
        default: "sqlite:candystore.db",
        meaning: "the store: postgres://… (sslmode, sslrootcert for TLS), or sqlite:PATH (one embedded file)",
        secret: Url,
        parse: |v| v.database_url(),
    }
    /// The API's read pool connects here (a read-only role, a replica); empty
    /// means DATABASE_URL.
    read_database_url: Option<String> {
        name: "READ_DATABASE_URL",
        default: "",
        meaning: "the API's read pool (a read-only role, a replica); unset: DATABASE_URL",
        secret: Url,
        parse: |v| v.optional(Value::pg_url),
    }
    api_host: IpAddr {
        name: "API_HOST",
        default: "0.0.0.0",
        meaning: "the REST API's address",
        secret: No,
        parse: |v| v.parse("an IP address"),
    }
    api_port: u16 {
        name: "API_PORT",
        default: "8683",
        meaning: "the REST API's port (0 picks a free one)",
        secret: No,
        parse: |v| v.parse("a port number from 0 to 65535"),
    }
    metrics_enabled: bool {
        name: "METRICS_ENABLED",
        default: "true",
        meaning: "serve /metrics",
        secret: No,
        parse: |v| v.boolean(),
    }
    metrics_port: u16 {
        name: "METRICS_PORT",
        default: "9090",
        meaning: "the /metrics port (0 picks a free one)",
        secret: No,
        parse: |v| v.parse("a port number from 0 to 65535"),
    }
    /// Where `/metrics` listens; unset means API_HOST.
    metrics_host: Option<IpAddr> {
        name: "METRICS_HOST",
        default: "",
        meaning: "the /metrics address; unset: API_HOST",
        secret: No,
        parse: |v| v.optional(|v| v.parse("an IP address")),
    }
    /// Bearer tokens `/metrics` requires; empty means it is open.
    metrics_tokens: Vec<String> {
        name: "METRICS_TOKEN",
        default: "",
        meaning: "bearer token(s) /metrics requires; unset: open",
        secret: Tokens,
        parse: |v| v.tokens(),
    }
    log_level: String {
        name: "LOG_LEVEL",
        default: "info",
        meaning: "a level or an EnvFilter (info,candystore::sink=debug)",
        secret: No,
        parse: |v| v.log_level(),
    }
    log_format: LogFormat {
        name: "LOG_FORMAT",
        default: "json",
        meaning: "json, or console for people",
        secret: No,
        parse: |v| v.log_format(),
    }
    /// AMQP QoS: the most unacknowledged deliveries the broker hands us.
    prefetch_count: u16 {
        name: "PREFETCH_COUNT",
        default: "2000",
        meaning: "AMQP QoS: unacked deliveries in hand at most",
        secret: No,
        parse: |v| Ok(v.positive(65_535)? as u16),
    }
    /// Rows per COPY batch at most (capped at `prefetch_count`, see [`Settings::batch_rows`]).
    batch_size: usize {
        name: "BATCH_SIZE",
        default: "500",
        meaning: "rows per COPY batch at most",
        secret: No,
        parse: |v| v.positive(100_000),
    }
    /// The longest an event waits for its batch to fill.
    flush_interval: Duration {
        name: "FLUSH_INTERVAL",
        default: "50ms",
        meaning: "the longest an event waits in an open batch",
        secret: No,
        parse: |v| v.duration(),
    }
    /// A batch is flushed once its events hold this many bytes.
    max_batch_bytes: usize {
        name: "MAX_BATCH_BYTES",
        default: "16777216",
        meaning: "a batch closes once its events hold this many bytes",
        secret: No,
        parse: |v| v.positive(1 << 30),
    }
    /// Decoded records held between the consumer and COMMIT, in bytes at most.
    max_inflight_bytes: usize {
        name: "MAX_INFLIGHT_BYTES",
        default: "33554432",
        meaning: "bytes of decoded deliveries in hand at most",
        secret: No,
        parse: |v| v.positive(u32::MAX as usize),
    }
    /// Batches written at once, each on its own connection.
    write_concurrency: usize {
        name: "WRITE_CONCURRENCY",
        default: "2",
        meaning: "batches written at once, each on its own connection",
        secret: No,
        parse: |v| v.positive(16),
    }
    database_read_pool_size: usize {
        name: "DATABASE_READ_POOL_SIZE",
        default: "8",
        meaning: "connections of the API's read pool",
        secret: No,
        parse: |v| v.positive(1_000),
    }
    /// The longest pause between two attempts at a failing write or connection.
    retry_max_backoff: Duration {
        name: "RETRY_MAX_BACKOFF",
        default: "10s",
        meaning: "the longest pause between retries",
        secret: No,
        parse: |v| v.duration(),
    }
    /// How long shutdown may take before the process gives up and exits non-zero.
    shutdown_timeout: Duration {
        name: "SHUTDOWN_TIMEOUT",
        default: "30s",
        meaning: "how long SIGTERM may take (then exit 75)",
        secret: No,
        parse: |v| v.duration(),
    }
    /// How often the queue depth (ingest lag) is read from the broker.
    queue_depth_interval: Duration {
        name: "QUEUE_DEPTH_INTERVAL",
        default: "15s",
        meaning: "how often the queue depth (the ingest lag) is read",
        secret: No,
        parse: |v| v.duration(),
    }
    /// Live-tail streams open at once; one more gets a 503.
    stream_max_clients: usize {
        name: "STREAM_MAX_CLIENTS",
        default: "100",
        meaning: "live-tail streams open at once",
        secret: No,
        parse: |v| v.positive(100_000),
    }
    /// A live-tail client that takes nothing for this long is cut.
    stream_write_timeout: Duration {
        name: "STREAM_WRITE_TIMEOUT",
        default: "10s",
        meaning: "a live-tail client that takes nothing this long is cut",
        secret: No,
        parse: |v| v.duration(),
    }
    /// A live-tail stream ends after this long (EventSource resumes).
    stream_max_lifetime: Duration {
        name: "STREAM_MAX_LIFETIME",
        default: "10m",
        meaning: "a live-tail stream ends after this long (EventSource resumes)",
        secret: No,
        parse: |v| v.duration(),
    }
    /// Bearer tokens the API accepts; empty means the API is open.
    api_tokens: Vec<String> {
        name: "API_TOKEN",
        default: "",
        meaning: "bearer token(s) the API requires; unset: open",
        secret: Tokens,
        parse: |v| v.tokens(),
    }
    /// Origins allowed to call the API from a browser (`*` for any); empty means none.
    cors_allowed_origins: Vec<String> {
        name: "CORS_ALLOWED_ORIGINS",
        default: "",
        meaning: "origins allowed to call the API from a browser, or *",
        secret: No,
        parse: |v| v.origins(),
    }
    /// The time range of one partition of `events` and `dead_letter`.
    partition_interval: PartitionInterval {
        name: "PARTITION_INTERVAL",
        default: "1 day",
        meaning: "one partition's time range: 1 day, 1 week or 1 month",
        secret: No,
        parse: |v| PartitionInterval::parse(v.text()).ok_or_else(|| v.invalid("expected 1 day, 1 week or 1 month")),
    }
    /// Beyond these from now, events get coarse partitions (`storage::partition::Layout`).
    partition_window_past: Duration {
        name: "PARTITION_WINDOW_PAST",
        default: "366d",
        meaning: "events older than this get a partition per calendar year, not per PARTITION_INTERVAL (at most 100 years)",
        secret: No,
        parse: |v| v.window(),
    }
    partition_window_future: Duration {
        name: "PARTITION_WINDOW_FUTURE",
        default: "31d",
        meaning: "events dated further ahead share one partition up to year 9999, split as the window reaches it (at most 100 years)",
        secret: No,
        parse: |v| v.window(),
    }
    /// Partitions that ended longer ago than this are dropped; `None` keeps all.
    retention: Option<Duration> {
        name: "RETENTION",
        default: "",
        meaning: "partitions older than this are dropped (90d); unset: keep everything",
        secret: No,
        parse: |v| v.optional(Value::duration),
    }
    /// Where retention archives a partition before dropping it; `None`: no archive.
    archive_dir: Option<std::path::PathBuf> {
        name: "ARCHIVE_DIR",
        default: "",
        meaning: "with RETENTION: archive each partition here before dropping it",
        secret: No,
        parse: |v| Ok(v.path()),
    }
    /// How often the maintenance job runs.
    maintenance_interval: Duration {
        name: "MAINTENANCE_INTERVAL",
        default: "5m",
        meaning: "how often the maintenance job runs",
        secret: No,
        parse: |v| v.duration(),
    }
    /// How often committed events are sealed into the audit chain.
    seal_interval: Duration {
        name: "SEAL_INTERVAL",
        default: "10s",
        meaning: "how often committed events are sealed into the audit chain (also every 100,000)",
        secret: No,
        parse: |v| v.duration(),
    }
    /// The writers' attestation keys (`attest::Keyring`); empty: no attestation.
    audit_keys: Vec<String> {
        name: "AUDIT_KEY",
        default: "",
        meaning: "key(s) the writers attest rows with, comma-separated, 32+ characters each; the first signs, all verify; unset: rows are not attested",
        secret: Tokens,
        parse: |v| v.keys(),
    }
    /// Where the checkpoint signing key is (`audit::note::load_or_create`).
    signing_key_file: std::path::PathBuf {
        name: "SIGNING_KEY_FILE",
        default: "candystore-signing.key",
        meaning: "the Ed25519 key checkpoints are signed with, kept outside the database; created (mode 0600) on first start when missing; every instance of one store uses the same",
        secret: No,
        parse: |v| v.path().ok_or_else(|| v.invalid("a path is required")),
    }
    /// The checkpoints' origin line; `None`: derived from the database name.
    checkpoint_origin: Option<String> {
        name: "CHECKPOINT_ORIGIN",
        default: "",
        meaning: "the name checkpoints and the signing key carry; unset: candystore/<database name>",
        secret: No,
        parse: |v| v.origin(),
    }
    /// Where each signed checkpoint is also written.
    checkpoint_dir: Option<std::path::PathBuf> {
        name: "CHECKPOINT_DIR",
        default: "",
        meaning: "every signed checkpoint is also appended here (one file per tree size); unset: not written",
        secret: No,
        parse: |v| Ok(v.path()),
    }
    /// Witnesses each checkpoint is sent to.
    witness_urls: Vec<String> {
        name: "WITNESS_URLS",
        default: "",
        meaning: "witnesses each checkpoint is sent to (C2SP tlog-witness add-checkpoint), comma-separated base URLs",
        secret: No,
        parse: |v| v.urls(),
    }
}

/// A setting that could not be used. The message is the one line start-up prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// A setting that is well-formed but cannot be used here (a key file that
    /// does not match the trail, say).
    #[error("{name}: {reason}")]
    Refused { name: &'static str, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown setting {key:?} in config file {path}")]
    UnknownKey { path: String, key: String },
}

impl Settings {
    /// Loads settings from the optional TOML file and the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match config_file {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Self::from_sources(file, std::env::vars())
    }

    /// Builds settings from `(VARIABLE, value)` pairs over the defaults, without the
    /// environment. Tests use this.
    /// As [`Settings::from_pairs`], reporting a bad value instead of panicking.
    pub fn try_from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let env = pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
        Self::from_sources(None, env)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let env = pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
        Self::from_sources(None, env).expect("test settings are valid")
    }

    fn from_sources(
        file: Option<BTreeMap<String, String>>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut raw: BTreeMap<&'static str, String> = VARIABLES
            .iter()
            .map(|v| (v.name, v.default.to_owned()))
            .collect();
        if let Some(file) = file {
            for (key, value) in file {
                let name = VARIABLES
                    .iter()
                    .find(|v| v.name.eq_ignore_ascii_case(&key))
                    .map(|v| v.name)
                    .ok_or_else(|| ConfigError::UnknownKey {
                        path: "(file)".into(),
                        key: key.clone(),
                    })?;
                raw.insert(name, value);
            }
        }
        for (key, value) in env {
            if let Some(v) = VARIABLES.iter().find(|v| v.name == key) {
                raw.insert(v.name, value);
            }
        }
        let settings = Self::parse(raw)?;
        settings.refuse_what_the_store_cannot_use()?;
        Ok(settings)
    }

    /// Where events are stored: DATABASE_URL.
    pub fn database(&self) -> Database<'_> {
        match sqlite_path(&self.database_url) {
            Some(path) => Database::Sqlite(path),
            None => Database::Postgres(&self.database_url),
        }
    }

    /// Refuses settings the store has no use for (the embedded store has no
    /// partitions, no second server to read from), naming the first.
    fn refuse_what_the_store_cannot_use(&self) -> Result<(), ConfigError> {
        if let Database::Sqlite(_) = self.database() {
            for &name in SQLITE_REFUSES {
                let given = self.raw.get(name).map(String::as_str).unwrap_or("");
                let default = VARIABLES
                    .iter()
                    .find(|v| v.name == name)
                    .map_or("", |v| v.default);
                if given != default {
                    return Err(ConfigError::Refused {
                        name,
                        reason: "not applicable to an embedded store (DATABASE_URL=sqlite:…): \
                                 one file, no partitions, no second server; unset it"
                            .into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// How partitions are cut: PARTITION_INTERVAL within the window, coarse outside.
    pub fn partition_layout(&self) -> crate::storage::partition::Layout {
        let days =
            |d: Duration| chrono::Duration::from_std(d).expect("validated: at most 100 years");
        crate::storage::partition::Layout {
            interval: self.partition_interval,
            past: days(self.partition_window_past),
            future: days(self.partition_window_future),
        }
    }

    /// The row limit the batcher really uses: `BATCH_SIZE`, but never more than
    /// `PREFETCH_COUNT`. The broker stops delivering once `PREFETCH_COUNT` deliveries
    /// are unacknowledged, so a larger batch could only ever be closed by its age.
    pub fn batch_rows(&self) -> usize {
        self.batch_size.min(usize::from(self.prefetch_count))
    }

    /// Every variable as `NAME=value`, in the table's order, as given or defaulted,
    /// with passwords and tokens hidden: for the start-up log.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        VARIABLES
            .iter()
            .map(|v| {
                let value = self.raw.get(v.name).map(String::as_str).unwrap_or("");
                let shown = match (v.secret, value.trim()) {
                    (_, "") => "(unset)".to_owned(),
                    (Secret::No, value) => value.to_owned(),
                    (Secret::Url, url) => redact_url(url),
                    (Secret::Tokens, tokens) => {
                        format!("({} token(s), redacted)", tokens.split(',').count())
                    }
                };
                (v.name, shown)
            })
            .collect()
    }

    /// The variables whose value is not their default, as [`Settings::redacted`]
    /// shows them: what the start-up log says at info (every one is at debug).
    pub fn redacted_changes(&self) -> Vec<(&'static str, String)> {
        VARIABLES
            .iter()
            .zip(self.redacted())
            .filter(|(v, _)| self.raw.get(v.name).map(String::as_str).unwrap_or("") != v.default)
            .map(|(_, shown)| shown)
            .collect()
    }

    /// Every variable, its default and its meaning, for `candystore --help`.
    pub fn help() -> String {
        let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
        let mut out = String::from(
            "Settings (environment variables, or lower-case keys in --config FILE; the environment wins):\n",
        );
        for v in VARIABLES {
            let default = if v.default.is_empty() {
                "unset".to_owned()
            } else {
                format!("{:?}", v.default)
            };
            out.push_str(&format!(
                "  {:width$}  {} [default: {default}]\n",
                v.name, v.meaning
            ));
        }
        out
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.redacted() {
            map.entry(&name, &value);
        }
        map.finish()
    }
}

/// Where events are stored (DATABASE_URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database<'a> {
    /// A PostgreSQL URL.
    Postgres(&'a str),
    /// The embedded store's file.
    Sqlite(&'a Path),
}

/// Settings that mean nothing on the embedded store: given, they stop start-up.
const SQLITE_REFUSES: &[&str] = &[
    "READ_DATABASE_URL",
    "PARTITION_INTERVAL",
    "PARTITION_WINDOW_PAST",
    "PARTITION_WINDOW_FUTURE",
];

/// The file of a `sqlite:PATH` (or `sqlite://PATH`) URL.
fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite:")?;
    Some(Path::new(rest.strip_prefix("//").unwrap_or(rest)))
}

mod redact;
mod value;
pub use redact::redact_url;
use value::Value;

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: shown.clone(),
            reason: e.message().to_owned(),
        })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !VARIABLES.iter().any(|v| v.name.eq_ignore_ascii_case(&key)) {
            return Err(ConfigError::UnknownKey { path: shown, key });
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.insert(key, text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_interface_contract() {
        let s = Settings::from_sources(None, env(&[])).unwrap();
        assert_eq!(s.rabbit_exchange, "events");
        assert_eq!(s.rabbit_queue, "candystore");
        assert_eq!(s.rabbit_bindings, vec!["#"]);
        assert_eq!(s.api_port, 8683);
        assert_eq!(s.metrics_port, 9090);
        assert_eq!(s.prefetch_count, 2000);
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.flush_interval, Duration::from_millis(50));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.rabbit_queue_type, QueueType::Classic);
    }

    #[test]
    fn a_sqlite_url_names_the_embedded_store_and_a_postgres_url_the_server() {
        for (url, path) in [
            ("sqlite:candystore.db", "candystore.db"),
            (
                "sqlite:///var/lib/candystore/events.db",
                "/var/lib/candystore/events.db",
            ),
            ("sqlite://rel/events.db", "rel/events.db"),
        ] {
            let s = Settings::from_sources(None, env(&[("DATABASE_URL", url)])).unwrap();
            assert_eq!(s.database(), Database::Sqlite(Path::new(path)), "{url}");
        }
        // The built-in store is an embedded file; a postgres URL names the server.
        let s = Settings::from_sources(None, env(&[])).unwrap();
        assert_eq!(s.database(), Database::Sqlite(Path::new("candystore.db")));
        let s = Settings::from_sources(
            None,
            env(&[("DATABASE_URL", "postgres://postgres@localhost/candystore")]),
        )
        .unwrap();
        assert!(matches!(s.database(), Database::Postgres(_)));
        let err = Settings::from_sources(None, env(&[("DATABASE_URL", "sqlite:")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid DATABASE_URL=\"sqlite:\""), "{err}");
        let err = Settings::from_sources(None, env(&[("DATABASE_URL", "mysql://x/y")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqlite:PATH"), "{err}");
    }

    #[test]
    fn a_setting_the_embedded_store_cannot_use_stops_start_up_naming_it() {
        for (name, value) in [
            ("READ_DATABASE_URL", "postgres://replica/db"),
            ("PARTITION_INTERVAL", "1 week"),
            ("PARTITION_WINDOW_PAST", "30d"),
        ] {
            let err = Settings::from_sources(
                None,
                env(&[("DATABASE_URL", "sqlite:x.db"), (name, value)]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(&format!("{name}: not applicable")), "{err}");
        }
        // The read pool is PostgreSQL's.
        let err = Settings::from_sources(None, env(&[("READ_DATABASE_URL", "sqlite:x.db")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid READ_DATABASE_URL"), "{err}");
    }

    #[test]
    fn environment_wins_over_the_file() {
        let file = BTreeMap::from([
            ("batch_size".to_string(), "10".to_string()),
            ("prefetch_count".to_string(), "20".to_string()),
        ]);
        let s = Settings::from_sources(Some(file), env(&[("BATCH_SIZE", "7")])).unwrap();
        assert_eq!(s.batch_size, 7);
        assert_eq!(s.prefetch_count, 20);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_value() {
        let err = Settings::from_sources(None, env(&[("FLUSH_INTERVAL", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid FLUSH_INTERVAL=\"soon\""), "{err}");
        let err = Settings::from_sources(None, env(&[("BATCH_SIZE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BATCH_SIZE=\"0\""), "{err}");
        let err = Settings::from_sources(None, env(&[("METRICS_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("METRICS_ENABLED"), "{err}");
        let err = Settings::from_sources(None, env(&[("RABBIT_QUEUE_TYPE", "stream")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid RABBIT_QUEUE_TYPE=\"stream\""),
            "{err}"
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let err = Settings::from_sources(None, env(&[("DATABASE_URL", "mysql://u:secret@h/db")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn bindings_are_comma_separated() {
        let s = Settings::from_sources(None, env(&[("RABBIT_BINDING", "a.#, b.* ,")])).unwrap();
        assert_eq!(s.rabbit_bindings, vec!["a.#", "b.*"]);
    }

    #[test]
    fn batch_rows_never_exceed_the_prefetch() {
        let s = Settings::from_pairs([("BATCH_SIZE", "500"), ("PREFETCH_COUNT", "100")]);
        assert_eq!(s.batch_rows(), 100);
        let s = Settings::from_pairs([("BATCH_SIZE", "50"), ("PREFETCH_COUNT", "100")]);
        assert_eq!(s.batch_rows(), 50);
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@localhost/db"),
            "postgres://postgres@localhost/db"
        );
        let s = Settings::from_pairs([("DATABASE_URL", "postgres://u:hunter2@h/db")]);
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn the_shipped_config_examples_are_valid() {
        for name in ["candystore.toml", "high-throughput.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name);
            let file = read_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            Settings::from_sources(Some(file), env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Every variable is in the example file and in the README's table.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = std::fs::read_to_string(root.join("config/candystore.toml")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        for Variable { name, .. } in VARIABLES {
            let key = name.to_lowercase();
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "config/candystore.toml lists {key}"
            );
            assert!(
                readme.contains(&format!("`{name}`")),
                "README documents {name}"
            );
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/high-throughput.toml");
        let s = Settings::from_sources(Some(read_file(&path).unwrap()), env(&[])).unwrap();
        assert_eq!((s.batch_size, s.prefetch_count), (500, 2000));
    }

    #[test]
    fn api_tokens_are_validated_and_never_printed() {
        let err = Settings::from_sources(None, env(&[("API_TOKEN", "short-secret")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("API_TOKEN") && !err.contains("short-secret"),
            "{err}"
        );
        let s = Settings::from_sources(
            None,
            env(&[("API_TOKEN", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb")]),
        )
        .unwrap();
        assert_eq!(s.api_tokens.len(), 2);
        assert!(!format!("{s:?}").contains("aaaaaaaaaaaaaaaa"));
        let err = Settings::from_sources(None, env(&[("CORS_ALLOWED_ORIGINS", "candybar.local")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CORS_ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn audit_keys_must_be_long_and_are_never_printed() {
        let err = Settings::from_sources(None, env(&[("AUDIT_KEY", "too-short-a-key")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AUDIT_KEY") && !err.contains("too-short"),
            "{err}"
        );
        let key = "0123456789abcdef0123456789abcdef";
        let s = Settings::from_sources(None, env(&[("AUDIT_KEY", key)])).unwrap();
        assert_eq!(s.audit_keys, vec![key.to_string()]);
        assert!(!format!("{s:?}").contains(key));
        assert!(
            Settings::from_sources(None, env(&[]))
                .unwrap()
                .audit_keys
                .is_empty()
        );
    }

    #[test]
    fn each_variable_is_declared_once_and_read_by_its_own_rule() {
        let mut names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIABLES.len(), "a variable is declared twice");
        // A value given for one variable reaches its field and no other.
        let s = Settings::from_pairs([("METRICS_PORT", "9999"), ("API_PORT", "8000")]);
        assert_eq!((s.api_port, s.metrics_port), (8000, 9999));
        let s = Settings::from_pairs([("RETENTION", "90d")]);
        assert_eq!(s.retention, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(s.archive_dir, None);
        // A secret's error hides the value, whichever rule refused it.
        let err = Settings::try_from_pairs([("METRICS_TOKEN", "short secret")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("METRICS_TOKEN=\"***\""), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let file = BTreeMap::from([("batchsize".to_string(), "10".to_string())]);
        assert!(matches!(
            Settings::from_sources(Some(file), env(&[])),
            Err(ConfigError::UnknownKey { .. })
        ));
    }
}
