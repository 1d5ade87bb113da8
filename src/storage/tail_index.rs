//! Online migration 0010: `events.txid`, the transaction that wrote each row, and
//! the `(txid, seq)` index the live tail reads by (docs/live-tail.md),
//! built without stopping ingest; the plain `seq` index it replaces is dropped.
//!
//! Writers no longer commit one at a time in `seq` order, so the tail cannot follow
//! `seq` alone. Rows stored before this migration read `txid` 0: they were written
//! one transaction at a time under the writers' old commit-order lock, so `seq`
//! alone orders them, and `(0, seq)` continues a stream resumed from one of their
//! ids. The column is added with a constant default (a change of the catalog
//! only); the default for new rows, the writing transaction, is set after it, so
//! no existing row is rewritten. Writers leave `txid` to that default, so they work
//! on either side of the migration.
//!
//! The index is built online (`super::online_index`): each partition's
//! `CONCURRENTLY`, then the parent's `ON ONLY` with each attached.

use tokio_postgres::Client;

use super::StorageError;
use super::online_index::{OnlineIndex, is_busy};

const ADD_COLUMN: &str = "ALTER TABLE events ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT 0; \
     ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)";

/// The statements, as text: their checksum is the migration's.
pub const DDL: &str = "ALTER TABLE events ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT 0; \
     ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint); \
     CREATE INDEX CONCURRENTLY {partition}_txid_seq_idx ON {partition} (txid, seq); \
     CREATE INDEX events_txid_seq_idx ON ONLY events (txid, seq); \
     ALTER INDEX events_txid_seq_idx ATTACH PARTITION {partition}_txid_seq_idx; \
     DROP INDEX events_seq_idx";

/// The tail's index, built online.
const TAIL: OnlineIndex = OnlineIndex {
    parent: "events_txid_seq_idx",
    suffix: "txid_seq_idx",
    columns: "txid, seq",
};

/// Adds the column, builds the index (each partition's, then the parent's)
/// unless it exists, and drops the `seq` index.
pub async fn run(client: &mut Client) -> Result<(), StorageError> {
    client.batch_execute(&crate::db::worker_settings()).await?;
    add_column(client).await?;
    TAIL.build(client).await?;
    // Its own transaction: ACCESS EXCLUSIVE on `events`, held for a catalog
    // update; a second at most per try, as for the column.
    let mut attempt = 0;
    loop {
        let tx = client.transaction().await?;
        match tx
            .batch_execute("SET LOCAL lock_timeout = '1s'; DROP INDEX IF EXISTS events_seq_idx")
            .await
        {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(e) => {
                let e = StorageError::from(e);
                if attempt >= 60 || !is_busy(&e) {
                    return Err(e);
                }
                drop(tx);
                attempt += 1;
                tracing::info!(
                    attempt,
                    "dropping events_seq_idx: the table is busy; trying again"
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Adds the column in a short transaction. Its lock on `events` (ACCESS EXCLUSIVE,
/// for a catalog update) queues every reader and writer behind it while it waits,
/// so it waits at most a second, and tries again, up to a minute in all.
async fn add_column(client: &mut Client) -> Result<(), StorageError> {
    let mut attempt = 0;
    loop {
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
        match tx.batch_execute(ADD_COLUMN).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(e)
                if attempt < 60
                    && e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                drop(tx);
                attempt += 1;
                tracing::info!(
                    attempt,
                    "adding events.txid: the table is busy; trying again"
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
