//! Retention on the embedded store: whole UTC days older than RETENTION go
//! (archived first to ARCHIVE_DIR when it is set), as PostgreSQL drops whole
//! daily partitions.
//!
//! A day is dropped in steps on the writer thread, between ingest's batches,
//! so no batch waits long: first the drop is recorded (`dropped_ranges`) and,
//! for events, entered in the audit tree (PostgreSQL's retention leaf over the
//! same record), so `verify` counts the events it takes; then its rows are
//! deleted [`DELETE_CHUNK`] at a time, each chunk its own transaction. A drop
//! stops at the highest `seq` the day had when it began (the archive's too):
//! a row arriving later for that day stays for the next run. An interrupted
//! drop is finished by the next run (its record is there already; a second
//! one excuses the same range).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::archive::{DAY_MICROS, archive_day, days_before, max_seq_of};
use super::write::{Handle, Stopped};
use crate::audit::attest::Keyring;
use crate::audit::leaf;
use crate::storage::{StorageError, Table};

/// Rows deleted per transaction.
pub const DELETE_CHUNK: i64 = 5_000;

/// What retention does, and with what.
#[derive(Clone)]
pub struct Options {
    pub path: PathBuf,
    pub retention: Option<Duration>,
    pub archive_dir: Option<PathBuf>,
    pub keyring: Option<Arc<Keyring>>,
}

/// One dropped day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub table: Table,
    /// `<table>_pYYYYMMDD`, as PostgreSQL names the day's partition.
    pub partition: String,
    pub rows: i64,
}

fn stopped(_: Stopped) -> StorageError {
    StorageError::Archive {
        path: String::new(),
        reason: "the embedded store's writer stopped".into(),
    }
}

fn sqlite(path: &Path, e: rusqlite::Error) -> StorageError {
    StorageError::Archive {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn columns(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Events => ("events", "\"timestamp\""),
        Table::DeadLetter => ("dead_letter", "received_at"),
    }
}

/// Records the drop of `table`'s rows of `day` up to `max_seq` (and enters it
/// in the tree, for events); how many rows it takes. Nothing when there are
/// none.
fn record(
    conn: &mut Connection,
    table: Table,
    day: i64,
    max_seq: i64,
    keyring: Option<&Keyring>,
) -> rusqlite::Result<i64> {
    let (name, column) = columns(table);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let rows: i64 = tx.query_row(
        &format!(
            "SELECT count(*) FROM {name} WHERE {column} >= ?1 AND {column} < ?2 AND seq <= ?3"
        ),
        params![day, day + DAY_MICROS, max_seq],
        |r| r.get(0),
    )?;
    if rows == 0 {
        return Ok(0);
    }
    let from = DateTime::from_timestamp_micros(day).expect("a stored day");
    let to = DateTime::from_timestamp_micros(day + DAY_MICROS).expect("a stored day");
    let partition = crate::storage::partition::partition_name(table, from);
    tx.execute(
        "INSERT INTO dropped_ranges (table_name, partition, from_time, to_time, rows, dropped_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            table.name(),
            partition,
            day,
            day + DAY_MICROS,
            rows,
            Utc::now().timestamp_micros()
        ],
    )?;
    if table == Table::Events {
        let record = leaf::retention_record(table.name(), &partition, from, to, rows);
        super::tree::add_leaf(&tx, &leaf::retention(&record, keyring))?;
    }
    tx.commit()?;
    Ok(rows)
}

/// Deletes up to [`DELETE_CHUNK`] of the rows a recorded drop takes; how many.
fn delete_chunk(
    conn: &mut Connection,
    table: Table,
    day: i64,
    max_seq: i64,
) -> rusqlite::Result<usize> {
    let (name, column) = columns(table);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(
        &format!(
            "DELETE FROM {name} WHERE seq IN (SELECT seq FROM {name} WHERE {column} >= ?1 \
             AND {column} < ?2 AND seq <= ?3 LIMIT {DELETE_CHUNK})"
        ),
        params![day, day + DAY_MICROS, max_seq],
    )?;
    if n == 0 && table == Table::Events {
        // The day's redelivery keys go with its rows (PostgreSQL's drop).
        tx.execute(
            r#"DELETE FROM event_keys WHERE "timestamp" >= ?1 AND "timestamp" < ?2"#,
            params![day, day + DAY_MICROS],
        )?;
    }
    tx.commit()?;
    Ok(n)
}

/// Drops `table`'s rows of `day` up to `max_seq` through the writer; how many.
pub async fn drop_day(
    handle: &Handle,
    path: &Path,
    table: Table,
    day: i64,
    max_seq: i64,
    keyring: Option<Arc<Keyring>>,
) -> Result<Dropped, StorageError> {
    let rows = handle
        .run(move |c| record(c, table, day, max_seq, keyring.as_deref()))
        .await
        .map_err(stopped)?
        .map_err(|e| sqlite(path, e))?;
    if rows > 0 {
        loop {
            let n = handle
                .run(move |c| delete_chunk(c, table, day, max_seq))
                .await
                .map_err(stopped)?
                .map_err(|e| sqlite(path, e))?;
            if n == 0 {
                break;
            }
        }
    }
    Ok(Dropped {
        table,
        partition: crate::storage::partition::partition_name(
            table,
            DateTime::from_timestamp_micros(day).expect("a stored day"),
        ),
        rows,
    })
}

/// One run: every whole day older than RETENTION archived (with ARCHIVE_DIR)
/// and dropped, oldest first. Nothing without RETENTION.
pub async fn run_once(
    handle: &Handle,
    opts: &Options,
    now: DateTime<Utc>,
) -> Result<Vec<Dropped>, StorageError> {
    let Some(retention) = opts.retention else {
        return Ok(Vec::new());
    };
    let cutoff = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut dropped = Vec::new();
    for table in Table::ALL {
        for day in days_before(&opts.path, table, cutoff)? {
            let max_seq = max_seq_of(&opts.path, table, day)?;
            if let Some(dir) = &opts.archive_dir {
                archive_day(&opts.path, table, day, max_seq, dir).await?;
            }
            let d = drop_day(
                handle,
                &opts.path,
                table,
                day,
                max_seq,
                opts.keyring.clone(),
            )
            .await?;
            if d.rows > 0 {
                tracing::info!(table = table.name(), day = %d.partition, rows = d.rows, "retention dropped a day");
                dropped.push(d);
            }
        }
    }
    Ok(dropped)
}

/// Retention as a background job: a run every `every` until `stop`.
pub async fn retention_job(
    handle: Handle,
    opts: Options,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = run_once(&handle, &opts, Utc::now()).await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "embedded store retention failed; retrying at the next run");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
