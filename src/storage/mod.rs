//! Production storage: `events` and `dead_letter` partitioned by time, the
//! maintenance job that keeps partitions ahead, drains the default partition and
//! applies RETENTION, and the archive and restore of whole partitions.
//!
//! - [`partition`]: intervals, ranges, the catalog's partitions, creating one;
//! - [`schema`]: the partitioned tables' definitions;
//! - [`migrate_online`]: moving a plain table to the partitioned layout while the
//!   service runs;
//! - [`online_index`]: an index of `events` built while the service writes;
//! - [`maintain`]: the scheduled job and its metrics;
//! - [`archive`]: partitions to compressed NDJSON files with a manifest, and back;
//! - [`statistics`]: planner statistics for what was filled outside ingest;
//! - [`catalog`]: the catalog, behind ingest (the audit trail is `crate::audit`).

use tokio_postgres::Client;

pub mod archive;
pub mod catalog;
pub mod maintain;
pub mod migrate_online;
pub mod online_index;
pub mod partition;
pub mod schema;
pub mod statistics;
pub mod tail_index;

pub use partition::{PartitionInterval, Range};

/// The two partitioned tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Events,
    DeadLetter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Events, Table::DeadLetter];

    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::DeadLetter => "dead_letter",
        }
    }

    pub fn default_partition(self) -> &'static str {
        match self {
            Table::Events => "events_default",
            Table::DeadLetter => "dead_letter_default",
        }
    }

    /// The columns of each partition's primary key.
    pub fn key_columns(self) -> &'static str {
        match self {
            Table::Events => "id, source, \"timestamp\"",
            Table::DeadLetter => "seq, received_at",
        }
    }

    /// The partition key.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Events => "\"timestamp\"",
            Table::DeadLetter => "received_at",
        }
    }

    pub fn columns(self) -> &'static str {
        match self {
            Table::Events => schema::EVENT_COLUMNS,
            Table::DeadLetter => schema::DEAD_LETTER_COLUMNS,
        }
    }

    /// The table whose keys make redeliveries with another time one row, and its
    /// time column: retention deletes the keys of what it drops.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Table::Events => ("event_keys", "\"timestamp\""),
            Table::DeadLetter => ("dead_letter_keys", "received_at"),
        }
    }

    /// Per-partition settings a partitioned parent cannot hold.
    fn partition_settings(self, name: &str) -> String {
        match self {
            Table::Events => {
                format!("ALTER TABLE {name} ALTER COLUMN payload SET STATISTICS 1000;")
            }
            Table::DeadLetter => String::new(),
        }
    }

    /// Which table a partition (or archive file) of this name belongs to.
    pub fn of_partition(name: &str) -> Option<Table> {
        // dead_letter_… first: "events" is not a prefix of it, but be explicit.
        if name.starts_with("dead_letter_p") {
            Some(Table::DeadLetter)
        } else if name.starts_with("events_p") {
            Some(Table::Events)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    #[error("cannot connect to the database")]
    Connect(#[from] crate::db::DbError),
    #[error("partition {partition} has a bound Candystore cannot read: {bound}")]
    Bound { partition: String, bound: String },
    #[error("{table} is not partitioned yet: run `candystore migrate`")]
    NotPartitioned { table: &'static str },
    #[error("archive {path}: {reason}")]
    Archive { path: String, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the online migration stopped: {0}")]
    Migration(String),
    #[error(
        "the maintenance job is running (another instance holds its lock); try again in a minute"
    )]
    Busy,
    /// The default partition changed under a partition being made (a row of its
    /// range arrived, or a move's copy no longer matched): nothing was changed.
    #[error(
        "the default partition changed while partition {range} was being made; it is tried again"
    )]
    DefaultChanged { range: String },
}

impl StorageError {
    /// A lock not granted in time or a busy server: the next run will do it.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Db(e) => e.code().is_none_or(|c| {
                let class = &c.code()[..2];
                matches!(class, "08" | "40" | "53" | "55" | "57")
                    || *c == tokio_postgres::error::SqlState::QUERY_CANCELED
            }),
            StorageError::Connect(_) | StorageError::DefaultChanged { .. } => true,
            _ => false,
        }
    }
}

impl crate::jobs::Failure for StorageError {
    fn is_retryable(&self) -> bool {
        StorageError::is_retryable(self)
    }

    fn schema_pending(&self) -> bool {
        matches!(self, StorageError::Db(db) if crate::jobs::pending_code(db))
    }
}

/// A connection for storage work (see [`crate::db::connect_worker`]).
pub async fn connect(target: &crate::db::PgTarget) -> Result<Client, StorageError> {
    Ok(crate::db::connect_worker(target).await?)
}

/// The rows a table holds by its statistics (0 before its first ANALYZE):
/// counting would read it all.
pub(crate) async fn estimated_rows(client: &Client, table: &str) -> Result<i64, StorageError> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)), 0)",
            &[&table],
        )
        .await?
        .get(0))
}

/// Whether `table` is partitioned (the online migration has run).
pub async fn is_partitioned(client: &Client, table: Table) -> Result<bool, StorageError> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)), false)",
            &[&table.name()],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_metrics_label_every_partitioned_table() {
        assert_eq!(
            super::Table::ALL.map(super::Table::name),
            crate::metrics::PARTITIONED_TABLES
        );
    }
}
