//! PostgreSQL plumbing: connection settings (URL, TLS), one connection, the API's
//! read pool, and the errors of these and of the migrations (`schema`). Imports
//! nothing of Candystore's above it.

use std::time::Duration;

pub mod horizon;
pub mod tls;

pub use horizon::HORIZON;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL")]
    Url(#[source] tokio_postgres::Error),
    #[error("invalid TLS settings in the database URL: {0}")]
    Tls(String),
    #[error("cannot connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("migration {name} failed")]
    Migration {
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {name} was edited after it was applied (applied checksum {applied}, file checksum {file}); add a new migration instead"
    )]
    Edited {
        name: String,
        applied: String,
        file: String,
    },
    #[error("migration {name} stopped: {reason}")]
    Online { name: String, reason: String },
    #[error("migration file name {0} does not start with a number")]
    BadName(String),
    #[error("migration file {name} is refused: {reason}")]
    BadFile { name: String, reason: String },
    #[error("the migrations embedded in this binary are refused: {0}")]
    Registry(String),
    #[error(
        "the database schema is not up to date ({0} migration(s) pending): run `candystore migrate`"
    )]
    Pending(usize),
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("cannot build the read pool: {0}")]
    Pool(String),
}

/// Where and how our connections reach PostgreSQL: the parsed URL and the TLS
/// connector its `sslmode`/`sslrootcert` ask for (see [`tls`]).
#[derive(Clone)]
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// Whether a connection was refused because its database does not exist.
pub fn is_missing_database(e: &DbError) -> bool {
    matches!(e, DbError::Connect(pg)
        if pg.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME))
}

/// Creates the database `target` names, connecting to the same server as the
/// same user with the `postgres` database. Another process creating it at the
/// same moment is not an error.
pub async fn create_database(target: &PgTarget) -> Result<String, DbError> {
    let name = target
        .config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| target.config.get_user().map(str::to_owned))
        .unwrap_or_else(|| "postgres".to_owned());
    let mut admin = target.config.clone();
    admin.dbname("postgres");
    let client = connect(&PgTarget {
        config: admin,
        tls: target.tls.clone(),
    })
    .await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(name),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(name)
        }
        Err(e) => Err(e.into()),
    }
}

/// Parses a PostgreSQL URL (DATABASE_URL, READ_DATABASE_URL) and sets the
/// timeouts every connection of ours uses.
pub fn pg_config(url: &str) -> Result<PgTarget, DbError> {
    let params = tls::split_url(url).map_err(DbError::Tls)?;
    let mut config: tokio_postgres::Config = params.url.parse().map_err(DbError::Url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("candystore");
    }
    let tls = tls::connector(&params).map_err(DbError::Tls)?;
    Ok(PgTarget { config, tls })
}

/// Opens one connection whose driver task runs in the background.
pub async fn connect(target: &PgTarget) -> Result<Client, DbError> {
    let (client, connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// How long a worker's statements (maintenance, the jobs) wait for a lock before
/// giving up until the next run: a partition is never worth stalling ingest or
/// the API for longer.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection for background work (storage, the jobs): UTC (partition bounds
/// are read and written in it), a bounded lock wait, no statement timeout (an
/// archive reads for minutes), and no parallel workers: background work takes
/// one server process, never every core ingest and the API share with it.
pub async fn connect_worker(target: &PgTarget) -> Result<Client, DbError> {
    let client = connect(target).await?;
    client
        .batch_execute(&format!(
            "{} SET application_name = 'candystore-storage'",
            worker_settings()
        ))
        .await?;
    Ok(client)
}

/// The settings every worker session runs with (see [`connect_worker`]).
pub fn worker_settings() -> String {
    format!(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET lock_timeout = '{}ms'; SET statement_timeout = 0; \
         SET max_parallel_workers_per_gather = 0; SET max_parallel_maintenance_workers = 0;",
        LOCK_TIMEOUT.as_millis()
    )
}

/// Bounds every API query: no request can hold a connection longer than this.
pub const READ_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The read pool the API queries from. It never writes: its sessions are read-only.
///
/// API queries are short index walks. JIT compilation (tens of milliseconds, spent
/// when the planner guesses a query is big) and parallel workers (one request
/// taking every core from the others) only add latency to them, so both are off.
pub fn read_pool(target: PgTarget, size: usize) -> Result<Pool, DbError> {
    let PgTarget { mut config, tls } = target;
    let options = format!(
        "{} -c statement_timeout={} -c default_transaction_read_only=on -c jit=off -c max_parallel_workers_per_gather=0",
        config.get_options().unwrap_or_default(),
        READ_STATEMENT_TIMEOUT.as_millis()
    );
    config.options(options.trim_start());
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        // The connection used last serves next: its plans are cached and its
        // partitions' metadata loaded (the first query of a session over 95
        // partitions pays ~30 ms for it), where first-in-first-out would walk a
        // single client's sequential requests through every cold connection.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}
