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

/// Every variable this service reads: the one table of settings. The TOML file
/// uses the same names in lower case (`batch_size = 500`); `--help`, the start-up
/// log and docs/contract.md are made from (or checked against) it.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "RABBIT_URL",
        default: "amqp://guest:guest@localhost:5672/%2f",
        meaning: "the broker (amqps:// for TLS)",
        secret: Secret::Url,
    },
    Variable {
        name: "RABBIT_EXCHANGE",
        default: "events",
        meaning: "the topic exchange to bind to (declared durable if missing)",
        secret: Secret::No,
    },
    Variable {
        name: "RABBIT_QUEUE",
        default: "candystore",
        meaning: "the durable queue this service consumes",
        secret: Secret::No,
    },
    Variable {
        name: "RABBIT_BINDING",
        default: "#",
        meaning: "binding key(s), comma-separated",
        secret: Secret::No,
    },
    Variable {
        name: "RABBIT_QUEUE_TYPE",
        default: "classic",
        meaning: "classic, or quorum (with a delivery limit and <queue>.parked)",
        secret: Secret::No,
    },
    Variable {
        name: "RABBIT_DELIVERY_LIMIT",
        default: "5",
        meaning: "quorum queues: deliveries of one message before it is parked",
        secret: Secret::No,
    },
    Variable {
        name: "DATABASE_URL",
        default: "postgres://postgres@localhost:5432/candystore",
        meaning: "PostgreSQL (sslmode, sslrootcert for TLS)",
        secret: Secret::Url,
    },
    Variable {
        name: "READ_DATABASE_URL",
        default: "",
        meaning: "the API's read pool (a read-only role, a replica); unset: DATABASE_URL",
        secret: Secret::Url,
    },
    Variable {
        name: "API_HOST",
        default: "0.0.0.0",
        meaning: "the REST API's address",
        secret: Secret::No,
    },
    Variable {
        name: "API_PORT",
        default: "8683",
        meaning: "the REST API's port (0 picks a free one)",
        secret: Secret::No,
    },
    Variable {
        name: "METRICS_ENABLED",
        default: "true",
        meaning: "serve /metrics",
        secret: Secret::No,
    },
    Variable {
        name: "METRICS_PORT",
        default: "9090",
        meaning: "the /metrics port (0 picks a free one)",
        secret: Secret::No,
    },
    Variable {
        name: "METRICS_HOST",
        default: "",
        meaning: "the /metrics address; unset: API_HOST",
        secret: Secret::No,
    },
    Variable {
        name: "METRICS_TOKEN",
        default: "",
        meaning: "bearer token(s) /metrics requires; unset: open",
        secret: Secret::Tokens,
    },
    Variable {
        name: "LOG_LEVEL",
        default: "info",
        meaning: "a level or an EnvFilter (info,candystore::sink=debug)",
        secret: Secret::No,
    },
    Variable {
        name: "LOG_FORMAT",
        default: "json",
        meaning: "json, or console for people",
        secret: Secret::No,
    },
    Variable {
        name: "PREFETCH_COUNT",
        default: "100",
        meaning: "AMQP QoS: unacked deliveries in hand at most",
        secret: Secret::No,
    },
    Variable {
        name: "BATCH_SIZE",
        default: "50",
        meaning: "rows per COPY batch at most",
        secret: Secret::No,
    },
    Variable {
        name: "FLUSH_INTERVAL",
        default: "50ms",
        meaning: "the longest an event waits in an open batch",
        secret: Secret::No,
    },
    Variable {
        name: "MAX_BATCH_BYTES",
        default: "16777216",
        meaning: "a batch closes once its events hold this many bytes",
        secret: Secret::No,
    },
    Variable {
        name: "MAX_INFLIGHT_BYTES",
        default: "33554432",
        meaning: "bytes of decoded deliveries in hand at most",
        secret: Secret::No,
    },
    Variable {
        name: "WRITE_CONCURRENCY",
        default: "2",
        meaning: "batches written at once, each on its own connection",
        secret: Secret::No,
    },
    Variable {
        name: "DATABASE_READ_POOL_SIZE",
        default: "8",
        meaning: "connections of the API's read pool",
        secret: Secret::No,
    },
    Variable {
        name: "RETRY_MAX_BACKOFF",
        default: "10s",
        meaning: "the longest pause between retries",
        secret: Secret::No,
    },
    Variable {
        name: "SHUTDOWN_TIMEOUT",
        default: "30s",
        meaning: "how long SIGTERM may take (then exit 75)",
        secret: Secret::No,
    },
    Variable {
        name: "QUEUE_DEPTH_INTERVAL",
        default: "15s",
        meaning: "how often the queue depth (the ingest lag) is read",
        secret: Secret::No,
    },
    Variable {
        name: "STREAM_MAX_CLIENTS",
        default: "100",
        meaning: "live-tail streams open at once",
        secret: Secret::No,
    },
    Variable {
        name: "STREAM_WRITE_TIMEOUT",
        default: "10s",
        meaning: "a live-tail client that takes nothing this long is cut",
        secret: Secret::No,
    },
    Variable {
        name: "STREAM_MAX_LIFETIME",
        default: "10m",
        meaning: "a live-tail stream ends after this long (EventSource resumes)",
        secret: Secret::No,
    },
    Variable {
        name: "API_TOKEN",
        default: "",
        meaning: "bearer token(s) the API requires; unset: open",
        secret: Secret::Tokens,
    },
    Variable {
        name: "CORS_ALLOWED_ORIGINS",
        default: "",
        meaning: "origins allowed to call the API from a browser, or *",
        secret: Secret::No,
    },
    Variable {
        name: "PARTITION_INTERVAL",
        default: "1 day",
        meaning: "one partition's time range: 1 day, 1 week or 1 month",
        secret: Secret::No,
    },
    Variable {
        name: "PARTITION_WINDOW_PAST",
        default: "366d",
        meaning: "events older than this get a partition per calendar year, not per PARTITION_INTERVAL (at most 100 years)",
        secret: Secret::No,
    },
    Variable {
        name: "PARTITION_WINDOW_FUTURE",
        default: "31d",
        meaning: "events dated further ahead share one partition up to year 9999, split as the window reaches it (at most 100 years)",
        secret: Secret::No,
    },
    Variable {
        name: "RETENTION",
        default: "",
        meaning: "partitions older than this are dropped (90d); unset: keep everything",
        secret: Secret::No,
    },
    Variable {
        name: "ARCHIVE_DIR",
        default: "",
        meaning: "with RETENTION: archive each partition here before dropping it",
        secret: Secret::No,
    },
    Variable {
        name: "MAINTENANCE_INTERVAL",
        default: "5m",
        meaning: "how often the maintenance job runs",
        secret: Secret::No,
    },
    Variable {
        name: "SEAL_INTERVAL",
        default: "10s",
        meaning: "how often committed events are sealed into the audit chain (also every 100,000)",
        secret: Secret::No,
    },
    Variable {
        name: "AUDIT_KEY",
        default: "",
        meaning: "key(s) the writers attest rows with, comma-separated, 32+ characters each; the first signs, all verify; unset: rows are not attested",
        secret: Secret::Tokens,
    },
    Variable {
        name: "SIGNING_KEY_FILE",
        default: "candystore-signing.key",
        meaning: "the Ed25519 key checkpoints are signed with, kept outside the database; created (mode 0600) on first start when missing; every instance of one store uses the same",
        secret: Secret::No,
    },
    Variable {
        name: "CHECKPOINT_ORIGIN",
        default: "",
        meaning: "the name checkpoints and the signing key carry; unset: candystore/<database name>",
        secret: Secret::No,
    },
    Variable {
        name: "CHECKPOINT_DIR",
        default: "",
        meaning: "every signed checkpoint is also appended here (one file per tree size); unset: not written",
        secret: Secret::No,
    },
    Variable {
        name: "WITNESS_URLS",
        default: "",
        meaning: "witnesses each checkpoint is sent to (C2SP tlog-witness add-checkpoint), comma-separated base URLs",
        secret: Secret::No,
    },
];

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

/// The validated settings of one process.
#[derive(Clone)]
pub struct Settings {
    pub rabbit_url: String,
    pub rabbit_exchange: String,
    pub rabbit_queue: String,
    pub rabbit_bindings: Vec<String>,
    pub rabbit_queue_type: QueueType,
    /// Quorum queues only: deliveries of one message before the broker parks it.
    pub rabbit_delivery_limit: u32,
    pub database_url: String,
    /// The API's read pool connects here (a read-only role, a replica); empty
    /// means DATABASE_URL.
    pub read_database_url: Option<String>,
    pub api_host: IpAddr,
    pub api_port: u16,
    pub metrics_enabled: bool,
    pub metrics_port: u16,
    /// Where `/metrics` listens; unset means API_HOST.
    pub metrics_host: Option<IpAddr>,
    /// Bearer tokens `/metrics` requires; empty means it is open.
    pub metrics_tokens: Vec<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// AMQP QoS: the most unacknowledged deliveries the broker hands us.
    pub prefetch_count: u16,
    /// Rows per COPY batch at most (capped at `prefetch_count`, see [`Settings::batch_rows`]).
    pub batch_size: usize,
    /// The longest an event waits for its batch to fill.
    pub flush_interval: Duration,
    /// A batch is flushed once its events hold this many bytes.
    pub max_batch_bytes: usize,
    /// Decoded records held between the consumer and COMMIT, in bytes at most.
    pub max_inflight_bytes: usize,
    /// Batches written at once, each on its own connection.
    pub write_concurrency: usize,
    pub database_read_pool_size: usize,
    /// The longest pause between two attempts at a failing write or connection.
    pub retry_max_backoff: Duration,
    /// How long shutdown may take before the process gives up and exits non-zero.
    pub shutdown_timeout: Duration,
    /// How often the queue depth (ingest lag) is read from the broker.
    pub queue_depth_interval: Duration,
    /// Live-tail streams open at once; one more gets a 503.
    pub stream_max_clients: usize,
    /// A live-tail client that takes nothing for this long is cut.
    pub stream_write_timeout: Duration,
    /// A live-tail stream ends after this long (EventSource resumes).
    pub stream_max_lifetime: Duration,
    /// Bearer tokens the API accepts; empty means the API is open.
    pub api_tokens: Vec<String>,
    /// Origins allowed to call the API from a browser (`*` for any); empty means none.
    pub cors_allowed_origins: Vec<String>,
    /// The time range of one partition of `events` and `dead_letter`.
    pub partition_interval: PartitionInterval,
    /// Beyond these from now, events get coarse partitions (`storage::partition::Layout`).
    pub partition_window_past: Duration,
    pub partition_window_future: Duration,
    /// Partitions that ended longer ago than this are dropped; `None` keeps all.
    pub retention: Option<Duration>,
    /// Where retention archives a partition before dropping it; `None`: no archive.
    pub archive_dir: Option<std::path::PathBuf>,
    /// How often the maintenance job runs.
    pub maintenance_interval: Duration,
    /// How often committed events are sealed into the audit chain.
    pub seal_interval: Duration,
    /// The writers' attestation keys (`attest::Keyring`); empty: no attestation.
    pub audit_keys: Vec<String>,
    /// Where the checkpoint signing key is (`audit::note::load_or_create`).
    pub signing_key_file: std::path::PathBuf,
    /// The checkpoints' origin line; `None`: derived from the database name.
    pub checkpoint_origin: Option<String>,
    /// Where each signed checkpoint is also written.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Witnesses each checkpoint is sent to.
    pub witness_urls: Vec<String>,
    /// Every variable's value as given (or defaulted), for the start-up log.
    raw: BTreeMap<&'static str, String>,
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
        let r = Raw(raw);
        let settings = Settings {
            raw: r.0.clone(),
            rabbit_url: r.url("RABBIT_URL", &["amqp://", "amqps://"])?,
            rabbit_exchange: r.name("RABBIT_EXCHANGE", true)?,
            rabbit_queue: r.name("RABBIT_QUEUE", false)?,
            rabbit_bindings: r.bindings("RABBIT_BINDING")?,
            rabbit_queue_type: r.queue_type("RABBIT_QUEUE_TYPE")?,
            rabbit_delivery_limit: r.positive("RABBIT_DELIVERY_LIMIT", 1_000)? as u32,
            database_url: r.database_url("DATABASE_URL")?,
            read_database_url: match r.get("READ_DATABASE_URL").trim() {
                "" => None,
                _ => Some(r.database_url("READ_DATABASE_URL")?),
            },
            api_host: r.parse("API_HOST", "an IP address")?,
            api_port: r.parse("API_PORT", "a port number from 0 to 65535")?,
            metrics_enabled: r.boolean("METRICS_ENABLED")?,
            metrics_port: r.parse("METRICS_PORT", "a port number from 0 to 65535")?,
            metrics_host: match r.get("METRICS_HOST").trim() {
                "" => None,
                _ => Some(r.parse("METRICS_HOST", "an IP address")?),
            },
            metrics_tokens: r.tokens("METRICS_TOKEN")?,
            log_level: r.log_level("LOG_LEVEL")?,
            log_format: r.log_format("LOG_FORMAT")?,
            prefetch_count: r.positive("PREFETCH_COUNT", 65_535)? as u16,
            batch_size: r.positive("BATCH_SIZE", 100_000)?,
            flush_interval: r.duration("FLUSH_INTERVAL")?,
            max_batch_bytes: r.positive("MAX_BATCH_BYTES", 1 << 30)?,
            max_inflight_bytes: r.positive("MAX_INFLIGHT_BYTES", u32::MAX as usize)?,
            write_concurrency: r.positive("WRITE_CONCURRENCY", 16)?,
            database_read_pool_size: r.positive("DATABASE_READ_POOL_SIZE", 1_000)?,
            retry_max_backoff: r.duration("RETRY_MAX_BACKOFF")?,
            shutdown_timeout: r.duration("SHUTDOWN_TIMEOUT")?,
            queue_depth_interval: r.duration("QUEUE_DEPTH_INTERVAL")?,
            stream_max_clients: r.positive("STREAM_MAX_CLIENTS", 100_000)?,
            stream_write_timeout: r.duration("STREAM_WRITE_TIMEOUT")?,
            stream_max_lifetime: r.duration("STREAM_MAX_LIFETIME")?,
            api_tokens: r.tokens("API_TOKEN")?,
            cors_allowed_origins: r.origins("CORS_ALLOWED_ORIGINS")?,
            partition_interval: PartitionInterval::parse(r.get("PARTITION_INTERVAL")).ok_or_else(
                || r.invalid("PARTITION_INTERVAL", "expected 1 day, 1 week or 1 month"),
            )?,
            partition_window_past: r.window("PARTITION_WINDOW_PAST")?,
            partition_window_future: r.window("PARTITION_WINDOW_FUTURE")?,
            retention: match r.get("RETENTION").trim() {
                "" => None,
                _ => Some(r.duration("RETENTION")?),
            },
            archive_dir: match r.get("ARCHIVE_DIR").trim() {
                "" => None,
                dir => Some(dir.into()),
            },
            maintenance_interval: r.duration("MAINTENANCE_INTERVAL")?,
            seal_interval: r.duration("SEAL_INTERVAL")?,
            audit_keys: r.keys("AUDIT_KEY")?,
            signing_key_file: match r.get("SIGNING_KEY_FILE").trim() {
                "" => return Err(r.invalid("SIGNING_KEY_FILE", "a path is required")),
                path => path.into(),
            },
            checkpoint_origin: match r.get("CHECKPOINT_ORIGIN").trim() {
                "" => None,
                o if o.chars().any(|c| c.is_whitespace() || c == '+') => {
                    return Err(
                        r.invalid("CHECKPOINT_ORIGIN", "an origin has no spaces and no '+'")
                    );
                }
                o => Some(o.to_string()),
            },
            checkpoint_dir: match r.get("CHECKPOINT_DIR").trim() {
                "" => None,
                dir => Some(dir.into()),
            },
            witness_urls: r.urls("WITNESS_URLS")?,
        };
        Ok(settings)
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

mod redact;
pub use redact::redact_url;

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

struct Raw(BTreeMap<&'static str, String>);

impl Raw {
    fn get(&self, name: &'static str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or_default()
    }

    fn invalid(&self, name: &'static str, reason: impl Into<String>) -> ConfigError {
        let value = self.get(name);
        let secret = VARIABLES
            .iter()
            .find(|v| v.name == name)
            .map_or(Secret::No, |v| v.secret);
        let value = match secret {
            Secret::Tokens => "***".to_owned(),
            Secret::Url => redact_url(value),
            Secret::No => value.to_owned(),
        };
        ConfigError::Invalid {
            name,
            value,
            reason: reason.into(),
        }
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        what: &str,
    ) -> Result<T, ConfigError> {
        self.get(name)
            .trim()
            .parse()
            .map_err(|_| self.invalid(name, format!("expected {what}")))
    }

    fn positive(&self, name: &'static str, max: usize) -> Result<usize, ConfigError> {
        let what = format!("a whole number from 1 to {max}");
        let n: usize = self.parse(name, &what)?;
        if n == 0 || n > max {
            return Err(self.invalid(name, format!("expected {what}")));
        }
        Ok(n)
    }

    fn queue_type(&self, name: &'static str) -> Result<QueueType, ConfigError> {
        match self.get(name).trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(self.invalid(name, "expected classic or quorum")),
        }
    }

    fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name).trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.invalid(name, "expected true or false")),
        }
    }

    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(self.get(name).trim()).map_err(|e| {
            self.invalid(
                name,
                format!("expected a duration such as 50ms or 2s ({e})"),
            )
        })?;
        if d.is_zero() {
            return Err(self.invalid(name, "expected a duration above zero"));
        }
        Ok(d)
    }

    /// A partition window: a duration of at most 100 years.
    fn window(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let d = self.duration(name)?;
        if d > Duration::from_secs(100 * 366 * 86_400) {
            return Err(self.invalid(name, "expected at most 100 years"));
        }
        Ok(d)
    }

    fn url(&self, name: &'static str, schemes: &[&str]) -> Result<String, ConfigError> {
        let v = self.get(name).trim();
        if !schemes.iter().any(|s| v.starts_with(s)) || v.len() <= 8 {
            return Err(self.invalid(
                name,
                format!("expected a URL starting with {}", schemes.join(" or ")),
            ));
        }
        Ok(v.to_owned())
    }

    fn database_url(&self, name: &'static str) -> Result<String, ConfigError> {
        let v = self.url(name, &["postgres://", "postgresql://"])?;
        // The TLS parameters are ours (libpq's meanings); the rest is tokio-postgres's.
        crate::db::pg_config(&v).map_err(|e| {
            let reason = match &e {
                crate::db::DbError::Url(e) => format!("not a PostgreSQL URL ({e})"),
                other => crate::telemetry::error_chain(other),
            };
            self.invalid(name, reason)
        })?;
        Ok(v)
    }

    fn name(&self, name: &'static str, allow_empty: bool) -> Result<String, ConfigError> {
        let v = self.get(name);
        if (!allow_empty && v.is_empty()) || v.len() > 255 {
            return Err(self.invalid(name, "expected a name of 1 to 255 bytes"));
        }
        Ok(v.to_owned())
    }

    fn bindings(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        let keys: Vec<String> = self
            .get(name)
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() || keys.iter().any(|k| k.len() > 255) {
            return Err(self.invalid(name, "expected one or more comma-separated binding keys"));
        }
        Ok(keys)
    }

    fn list(&self, name: &'static str) -> Vec<String> {
        self.get(name)
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Comma-separated secrets, each at least `min` characters and without spaces.
    fn secrets(
        &self,
        name: &'static str,
        min: usize,
        what: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let secrets = self.list(name);
        if secrets
            .iter()
            .any(|t| t.len() < min || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(self.invalid(
                name,
                format!(
                    "expected comma-separated {what} of at least {min} characters, without spaces"
                ),
            ));
        }
        Ok(secrets)
    }

    fn tokens(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        self.secrets(name, 16, "tokens")
    }

    fn keys(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        self.secrets(name, 32, "keys")
    }

    /// Comma-separated http(s) URLs, without a trailing slash.
    fn urls(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        let urls: Vec<String> = self
            .list(name)
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        for u in &urls {
            let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
            if !scheme_ok || u.chars().any(char::is_whitespace) {
                return Err(self.invalid(
                    name,
                    "expected comma-separated URLs such as https://witness.example/w",
                ));
            }
        }
        Ok(urls)
    }

    fn origins(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        let origins = self.list(name);
        for o in &origins {
            let scheme_ok = o.starts_with("http://") || o.starts_with("https://");
            if o != "*" && (!scheme_ok || o.ends_with('/')) {
                return Err(self.invalid(
                    name,
                    "expected * or origins such as https://candybar.example:3000",
                ));
            }
        }
        Ok(origins)
    }

    fn log_level(&self, name: &'static str) -> Result<String, ConfigError> {
        let v = self.get(name).trim().to_ascii_lowercase();
        v.parse::<tracing_subscriber::EnvFilter>().map_err(|e| {
            self.invalid(
                name,
                format!("expected trace, debug, info, warn, error or a filter ({e})"),
            )
        })?;
        Ok(v)
    }

    fn log_format(&self, name: &'static str) -> Result<LogFormat, ConfigError> {
        match self.get(name).trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "console" | "text" | "pretty" => Ok(LogFormat::Console),
            _ => Err(self.invalid(name, "expected json or console")),
        }
    }
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
        assert_eq!(s.prefetch_count, 100);
        assert_eq!(s.batch_size, 50);
        assert_eq!(s.flush_interval, Duration::from_millis(50));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.rabbit_queue_type, QueueType::Classic);
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
    fn unknown_file_keys_are_refused() {
        let file = BTreeMap::from([("batchsize".to_string(), "10".to_string())]);
        assert!(matches!(
            Settings::from_sources(Some(file), env(&[])),
            Err(ConfigError::UnknownKey { .. })
        ));
    }
}
