//! Online migration 0010: `events.txid`, the transaction that wrote each row, and
//! the `(txid, seq)` index the live tail reads by (ARCHITECTURE.md, "Live tail"),
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
//! `CREATE INDEX` on a partitioned table builds every partition's index in one
//! transaction that blocks writes for the whole build (hours on a production
//! table). Instead: each partition's index is built `CONCURRENTLY` (writes go on),
//! then the parent's index is created `ON ONLY` the parent and each partition's
//! attached to it; it is valid once all are. The maintenance lock is held
//! throughout, so no partition appears half-way. A run that failed leaves at most
//! an invalid index behind, which the next run drops and builds again.

/// The tail's horizon, as of the statement's snapshot: the oldest transaction
/// still running that may have written to this database (else the snapshot's
/// `xmax`). Rows of older transactions are final (see the module's docs).
///
/// A transaction of another database cannot write here, so it is left out: one
/// is left out when, in one reading of the lock table (taken after the snapshot),
/// the backend holding its transaction-id lock also holds a relation lock in
/// another database (a backend is connected to one database for life). Anything
/// not so proven, e.g. a transaction that ended meanwhile, counts. So a long write
/// elsewhere on the server does not hold the tail back.
pub const HORIZON: &str = "(WITH l AS MATERIALIZED (SELECT pid, locktype, transactionid, database FROM pg_locks), \
       s AS MATERIALIZED (SELECT pg_current_snapshot() AS snap) \
     SELECT least( \
       (SELECT pg_snapshot_xmax(snap)::text::bigint FROM s), \
       (SELECT min(x::text::bigint) FROM s, pg_snapshot_xip(s.snap) x \
         WHERE NOT EXISTS (SELECT 1 FROM l t JOIN l r ON r.pid = t.pid \
                           WHERE t.locktype = 'transactionid' AND t.transactionid = xid(x) \
                             AND r.locktype = 'relation' AND r.database <> 0 \
                             AND r.database <> (SELECT oid FROM pg_database WHERE datname = current_database())))))";

use tokio_postgres::Client;

use super::StorageError;
use super::maintain::MAINTENANCE_LOCK;

const ADD_COLUMN: &str = "ALTER TABLE events ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT 0; \
     ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)";

/// The statements, as text: their checksum is the migration's.
pub const DDL: &str = "ALTER TABLE events ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT 0; \
     ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint); \
     CREATE INDEX CONCURRENTLY {partition}_txid_seq_idx ON {partition} (txid, seq); \
     CREATE INDEX events_txid_seq_idx ON ONLY events (txid, seq); \
     ALTER INDEX events_txid_seq_idx ATTACH PARTITION {partition}_txid_seq_idx; \
     DROP INDEX events_seq_idx";

const PARENT_INDEX: &str = "events_txid_seq_idx";

/// Adds the column, builds the index (each partition's, then the parent's)
/// unless it exists, and drops the `seq` index.
pub async fn run(client: &mut Client) -> Result<(), StorageError> {
    client.batch_execute(&super::session_settings()).await?;
    add_column(client).await?;
    // Index builds wait for writers' transactions; no lock wait is short here.
    client.batch_execute("SET lock_timeout = 0").await?;
    // Tried rather than waited for, for the reason `db::migrate_with` gives.
    while !client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await?
        .get::<_, bool>(0)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let result = build(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await;
    result
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

async fn build(client: &mut Client) -> Result<(), StorageError> {
    let partitions: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in &partitions {
        let index = format!("{p}_txid_seq_idx");
        match index_valid(client, &index).await? {
            Some(true) => continue,
            Some(false) => {
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY {index}"))
                    .await?
            }
            None => {}
        }
        let started = std::time::Instant::now();
        client
            .batch_execute(&format!(
                "CREATE INDEX CONCURRENTLY {index} ON {p} (txid, seq)"
            ))
            .await?;
        tracing::info!(partition = %p, seconds = started.elapsed().as_secs_f64(), "tail index built");
    }
    // The parent's index, the attachments and the drop lock `events` (the drop
    // ACCESS EXCLUSIVE): each try waits a second at most, so readers and writers
    // queued behind it wait no longer, and tries again.
    let mut attempt = 0;
    loop {
        match attach(client, &partitions).await {
            Ok(()) => break,
            Err(StorageError::Db(e))
                if attempt < 60
                    && e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                attempt += 1;
                tracing::info!(
                    attempt,
                    "attaching the tail index: the table is busy; trying again"
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    if index_valid(client, PARENT_INDEX).await? != Some(true) {
        return Err(StorageError::Migration(format!(
            "{PARENT_INDEX} is not valid after attaching every partition's index"
        )));
    }
    Ok(())
}

async fn attach(client: &mut Client, partitions: &[String]) -> Result<(), StorageError> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
    tx.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {PARENT_INDEX} ON ONLY events (txid, seq)"
    ))
    .await?;
    for p in partitions {
        let attached: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = $1::text::regclass \
                 AND inhparent = $2::text::regclass)",
                &[&format!("{p}_txid_seq_idx"), &PARENT_INDEX],
            )
            .await?
            .get(0);
        if !attached {
            tx.batch_execute(&format!(
                "ALTER INDEX {PARENT_INDEX} ATTACH PARTITION {p}_txid_seq_idx"
            ))
            .await?;
        }
    }
    tx.commit().await?;
    // Its own transaction: ACCESS EXCLUSIVE on `events`, held for a catalog update.
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '1s'; DROP INDEX IF EXISTS events_seq_idx")
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether an index exists, and if so whether it is valid.
async fn index_valid(client: &Client, name: &str) -> Result<Option<bool>, StorageError> {
    Ok(client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}
