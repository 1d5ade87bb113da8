//! `archive` and `restore` on the embedded store, in PostgreSQL's archive
//! format (`storage::archive`): one `<table>_pYYYYMMDD.ndjson.zst` file per
//! UTC day, each line a row with PostgreSQL's keys and encodings, a manifest
//! beside them. So a file written by either store restores into the other:
//! the way from a laptop to production, and back.
//!
//! A restore into the store a file was written from (the manifest names it)
//! puts each row back at its `seq`, where the tree holds its leaf; into another
//! store, each event is a new write: a new `seq` and a new leaf committing to
//! the row as it came (its salt kept), in the row's transaction, so `verify`
//! passes on the far side.
//!
//! Archiving only reads, beside the service that owns the file; restoring
//! writes, so it owns the file (the service is stopped first).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Role, Sqlite};
use crate::audit::attest::Keyring;
use crate::audit::leaf::{self, Content};
use crate::model::hex;
use crate::storage::archive::{self as format, Entry, FileWriter, Restored};
use crate::storage::{StorageError, Table};

pub(super) const DAY_MICROS: i64 = 86_400_000_000;

fn sqlite_err(path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Archive {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// An event as a line of the archive (PostgreSQL's keys and encodings).
#[derive(Serialize, Deserialize)]
struct EventLine {
    seq: i64,
    id: String,
    event_type: String,
    source: String,
    target: Option<String>,
    routing_key: String,
    exchange: String,
    timestamp: DateTime<Utc>,
    received_at: DateTime<Utc>,
    stored_at: DateTime<Utc>,
    payload: Box<RawValue>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    storage_latency_ms: Option<f64>,
    generation: i16,
    envelope: String,
    payload_member: Option<String>,
    properties: String,
    sanitized: bool,
    /// base64.
    original_body: Option<String>,
    /// The legacy writer attestation, hex (PostgreSQL's rows of before the tree).
    #[serde(default)]
    attestation: Option<String>,
    /// hex.
    salt: Option<String>,
    #[serde(default)]
    txid: Option<i64>,
}

/// A dead letter as a line of the archive.
#[derive(Serialize, Deserialize)]
struct DeadLine {
    seq: i64,
    /// hex.
    fingerprint: String,
    received_at: DateTime<Utc>,
    stored_at: DateTime<Utc>,
    exchange: String,
    routing_key: String,
    properties: String,
    /// base64.
    body: String,
    reason: String,
    detail: String,
}

fn time(micros: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, micros))
}

// The archive's lines are JSON: a column's bytes that are not UTF-8 are
// replaced (`super::column_text`).
use super::column_text as text;

const EVENT_ROWS: &str = r#"SELECT seq, id, event_type, source, target, routing_key, exchange,
    "timestamp", received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms,
    generation, envelope, payload_member, properties, sanitized, original_body, salt
    FROM events WHERE "timestamp" >= ?1 AND "timestamp" < ?2 AND seq <= ?3 ORDER BY seq"#;

fn event_line(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64)> {
    let payload = text(r, 10)?;
    let line = EventLine {
        seq: r.get(0)?,
        id: r.get(1)?,
        event_type: r.get(2)?,
        source: r.get(3)?,
        target: r.get(4)?,
        routing_key: r.get(5)?,
        exchange: r.get(6)?,
        timestamp: time(r.get(7)?)?,
        received_at: time(r.get(8)?)?,
        stored_at: time(r.get(9)?)?,
        payload: RawValue::from_string(payload)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        session_id: r.get(11)?,
        correlation_id: r.get(12)?,
        storage_latency_ms: r.get(13)?,
        generation: r.get(14)?,
        envelope: text(r, 15)?,
        payload_member: r.get(16)?,
        properties: text(r, 17)?,
        sanitized: r.get(18)?,
        original_body: r.get::<_, Option<Vec<u8>>>(19)?.map(|b| B64.encode(b)),
        attestation: None,
        salt: r.get::<_, Option<Vec<u8>>>(20)?.map(|s| hex::encode(&s)),
        txid: Some(0),
    };
    let seq = line.seq;
    serde_json::to_string(&line)
        .map(|l| (l, seq))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

const DEAD_ROWS: &str = "SELECT seq, fingerprint, received_at, stored_at, exchange, routing_key,
    properties, body, reason, detail FROM dead_letter WHERE received_at >= ?1 AND received_at < ?2
    AND seq <= ?3 ORDER BY seq";

fn dead_line(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64)> {
    let line = DeadLine {
        seq: r.get(0)?,
        fingerprint: hex::encode(&r.get::<_, Vec<u8>>(1)?),
        received_at: time(r.get(2)?)?,
        stored_at: time(r.get(3)?)?,
        exchange: r.get(4)?,
        routing_key: r.get(5)?,
        properties: text(r, 6)?,
        body: B64.encode(r.get::<_, Vec<u8>>(7)?),
        reason: r.get(8)?,
        detail: r.get(9)?,
    };
    let seq = line.seq;
    serde_json::to_string(&line)
        .map(|l| (l, seq))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// This store's identity (`store_identity`).
fn identity(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("SELECT id FROM store_identity", [], |r| r.get(0))
}

/// The UTC days (their first microsecond) of a table's rows before `before`'s
/// day, oldest first.
fn days(conn: &Connection, table: Table, before: i64) -> rusqlite::Result<Vec<i64>> {
    let (name, column) = match table {
        Table::Events => ("events", "\"timestamp\""),
        Table::DeadLetter => ("dead_letter", "received_at"),
    };
    let mut st = conn.prepare(&format!(
        "SELECT DISTINCT ({column} - ((({column} % {DAY_MICROS}) + {DAY_MICROS}) % {DAY_MICROS})) \
         FROM {name} WHERE {column} < ?1 ORDER BY 1"
    ))?;
    st.query_map([before], |r| r.get(0))?.collect()
}

/// A read-only connection on the file at `path`, beside its owner.
pub(super) fn look(path: &Path) -> Result<Connection, StorageError> {
    super::beside(path, false).map_err(|e| sqlite_err(path, crate::telemetry::error_chain(&e)))
}

/// The first microsecond of the UTC day of `t`.
pub(super) fn day_of(t: DateTime<Utc>) -> i64 {
    let t = t.timestamp_micros();
    t - ((t % DAY_MICROS) + DAY_MICROS) % DAY_MICROS
}

/// The UTC days (their first microsecond) holding rows of `table` before the
/// day of `before`, oldest first.
pub(super) fn days_before(
    path: &Path,
    table: Table,
    before: DateTime<Utc>,
) -> Result<Vec<i64>, StorageError> {
    days(&look(path)?, table, day_of(before)).map_err(|e| sqlite_err(path, e))
}

/// The highest `seq` of `table`'s rows of `day`: what a drop of the day stops
/// at, so a row arriving later for it stays (and goes with the next run).
pub(super) fn max_seq_of(path: &Path, table: Table, day: i64) -> Result<i64, StorageError> {
    let (name, column) = match table {
        Table::Events => ("events", "\"timestamp\""),
        Table::DeadLetter => ("dead_letter", "received_at"),
    };
    look(path)?
        .query_row(
            &format!(
                "SELECT coalesce(max(seq), 0) FROM {name} WHERE {column} >= ?1 AND {column} < ?2"
            ),
            [day, day + DAY_MICROS],
            |r| r.get(0),
        )
        .map_err(|e| sqlite_err(path, e))
}

/// Writes every whole UTC day before `before` of the file at `path` (events
/// and dead letters) to `dir`, one file a day, read-only beside the service
/// that owns it. Nothing is dropped.
pub async fn archive_before(
    path: &Path,
    before: DateTime<Utc>,
    dir: &Path,
) -> Result<Vec<Entry>, StorageError> {
    let mut entries = Vec::new();
    for table in Table::ALL {
        // Whole days only, as PostgreSQL archives whole daily partitions.
        for day in days_before(path, table, before)? {
            entries.push(archive_day(path, table, day, i64::MAX, dir).await?);
        }
    }
    Ok(entries)
}

/// Writes `table`'s rows of the UTC `day` with a `seq` up to `max_seq` to a
/// file in `dir`, recorded in its manifest.
pub(super) async fn archive_day(
    path: &Path,
    table: Table,
    day: i64,
    max_seq: i64,
    dir: &Path,
) -> Result<Entry, StorageError> {
    // One connection: the store's identity, then the rows.
    let reader_conn = look(path)?;
    let store = identity(&reader_conn).map_err(|e| sqlite_err(path, e))?;
    let from = DateTime::from_timestamp_micros(day).expect("a stored day");
    let to = from + chrono::Duration::days(1);
    let partition = crate::storage::partition::partition_name(table, from);
    let mut file = FileWriter::create(dir, &partition)?;
    // The rows are read on a blocking thread, a line at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<rusqlite::Result<(String, i64)>>(256);
    let reader = tokio::task::spawn_blocking(move || {
        let (sql, line): (&str, fn(&rusqlite::Row<'_>) -> _) = match table {
            Table::Events => (EVENT_ROWS, event_line),
            Table::DeadLetter => (DEAD_ROWS, dead_line),
        };
        let mut st = match reader_conn.prepare(sql) {
            Ok(st) => st,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let rows = match st.query_map(params![day, day + DAY_MICROS, max_seq], line) {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for row in rows {
            if tx.blocking_send(row).is_err() {
                return;
            }
        }
    });
    let mut streamed = Ok(());
    while let Some(row) = rx.recv().await {
        match row {
            Ok((line, seq)) => {
                let txid = (table == Table::Events).then_some(0);
                if !file.line(&line, Some(seq), txid).await {
                    break;
                }
            }
            Err(e) => {
                streamed = Err(sqlite_err(path, e));
                break;
            }
        }
    }
    drop(rx);
    let _ = reader.await;
    file.finish(streamed, table, &partition, from..to, Some(store))
        .await
}

/// Loads archive files (of either store) into the file at `path`, which this
/// process owns meanwhile. Checks each file as PostgreSQL's restore does
/// (its manifest entry, rows and SHA-256, every line's time and `seq`) before
/// loading anything of it.
pub async fn restore(
    path: &Path,
    files: &[PathBuf],
    keyring: Option<&Keyring>,
) -> Result<Vec<Restored>, StorageError> {
    let store =
        Sqlite::own(path).map_err(|e| sqlite_err(path, crate::telemetry::error_chain(&e)))?;
    let mut conn = store
        .connect(Role::Write)
        .map_err(|e| sqlite_err(path, crate::telemetry::error_chain(&e)))?;
    let ours = identity(&conn).map_err(|e| sqlite_err(path, e))?;
    let mut out = Vec::new();
    for file in files {
        let (table, entry) = format::checked_entry(file)?;
        // Written here: the rows come home to their places. From another store
        // (or a file that does not say): new writes.
        let home = entry.store.as_deref() == Some(ours.as_str());
        let (check_path, check_entry) = (file.clone(), entry.clone());
        tokio::task::spawn_blocking(move || {
            format::check_file(&check_path, table, &check_entry, i64::MAX)
        })
        .await
        .map_err(|_| sqlite_err(file, "the checking thread panicked"))??;
        let keyring = keyring.cloned();
        let (file2, entry2) = (file.clone(), entry.clone());
        let moved = tokio::task::spawn_blocking(move || {
            load(&mut conn, table, &file2, &entry2, home, keyring.as_ref()).map(|r| (r, conn))
        })
        .await
        .map_err(|_| sqlite_err(file, "the loading thread panicked"))??;
        conn = moved.1;
        out.push(moved.0);
    }
    drop(store);
    Ok(out)
}

/// Loads one checked file in one transaction (read a chunk of lines at a
/// time): a line this store cannot take (a payload jsonb refuses, a body that
/// is not base64, a salt that is not hex), wherever it is in the file, leaves
/// nothing of the file behind. The file is owned meanwhile, so the long
/// transaction holds up no one; its pages spill to the log, not to memory.
fn load(
    conn: &mut Connection,
    table: Table,
    file: &Path,
    entry: &Entry,
    home: bool,
    keyring: Option<&Keyring>,
) -> Result<Restored, StorageError> {
    let mut lines = format::Lines::open(file)?;
    let (mut rows, mut inserted) = (0u64, 0u64);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| sqlite_err(file, e))?;
    loop {
        let chunk = lines.chunk()?;
        if chunk.is_empty() {
            break;
        }
        for line in &chunk {
            rows += 1;
            let at = |e: &dyn std::fmt::Display| sqlite_err(file, format!("line {rows}: {e}"));
            format::check_line(line, table, entry, i64::MAX).map_err(|e| at(&e))?;
            let added = match table {
                Table::Events => {
                    let row: EventLine = serde_json::from_str(line).map_err(|e| at(&e))?;
                    insert_event(&tx, row, home, keyring).map_err(|e| at(&e))?
                }
                Table::DeadLetter => {
                    let row: DeadLine = serde_json::from_str(line).map_err(|e| at(&e))?;
                    insert_dead(&tx, row, home).map_err(|e| at(&e))?
                }
            };
            inserted += u64::from(added);
        }
    }
    tx.commit().map_err(|e| sqlite_err(file, e))?;
    if table == Table::Events {
        // An archive written before a redaction brings the content back:
        // redacted again at once.
        super::redact::redact_restored(conn).map_err(|e| sqlite_err(file, e))?;
    }
    Ok(Restored {
        file: file.to_owned(),
        table: table.name(),
        rows,
        skipped: rows - inserted,
    })
}

#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Bad(String),
}

/// The fallback-time rule (sql/0008, as PostgreSQL's restore applies it): a
/// row whose time is its receipt's, or the AMQP `timestamp` property's, holds
/// its (id, source) in `event_keys`.
fn fallback_timed(row: &EventLine) -> bool {
    if row.timestamp == row.received_at {
        return true;
    }
    let Ok(props) = serde_json::from_str::<serde_json::Value>(&row.properties) else {
        return false;
    };
    // `->>` in PostgreSQL's rule: a string's text, or a number's.
    let t = match props.get("timestamp") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(n @ serde_json::Value::Number(_)) => n.to_string(),
        _ => return false,
    };
    if t.is_empty() || t.len() > 15 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let n: f64 = t.parse().unwrap_or(f64::NAN);
    [n, n / 1000.0].iter().any(|s| {
        let micros = (s * 1e6).round() as i64;
        micros == row.timestamp.timestamp_micros()
    })
}

/// Inserts one event; true when it was not there yet.
fn insert_event(
    tx: &Connection,
    row: EventLine,
    home: bool,
    keyring: Option<&Keyring>,
) -> Result<bool, LineError> {
    let payload = crate::audit::jsonb::canonical(row.payload.get().as_bytes())
        .map_err(|e| LineError::Bad(format!("payload: {e}")))?;
    let original_body = row
        .original_body
        .as_deref()
        .map(|b| B64.decode(b))
        .transpose()
        .map_err(|e| LineError::Bad(format!("original_body: {e}")))?;
    let salt = match row.salt.as_deref() {
        Some(h) => hex::decode(h).map_err(|_| LineError::Bad("salt is not hex".into()))?,
        // Stored before the tree (PostgreSQL's oldest rows): a new salt.
        None if !home => leaf::salt().to_vec(),
        None => Vec::new(),
    };
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    if fallback_timed(&row) {
        tx.execute(
            r#"INSERT INTO event_keys (id, source, "timestamp") VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"#,
            params![row.id, row.source, micros(row.timestamp)],
        )?;
    }
    let seq: Option<i64> = tx
        .query_row(
            r#"INSERT INTO events (seq, id, event_type, source, target, routing_key, exchange,
                "timestamp", received_at, stored_at, payload, session_id, correlation_id,
                storage_latency_ms, generation, envelope, payload_member, properties, sanitized,
                original_body, salt)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                ?19, ?20, ?21)
            ON CONFLICT DO NOTHING RETURNING seq"#,
            params![
                home.then_some(row.seq),
                row.id,
                row.event_type,
                row.source,
                row.target,
                row.routing_key,
                row.exchange,
                micros(row.timestamp),
                micros(row.received_at),
                micros(row.stored_at),
                std::str::from_utf8(&payload).expect("jsonb text is UTF-8"),
                row.session_id,
                row.correlation_id,
                row.storage_latency_ms,
                row.generation,
                row.envelope,
                row.payload_member,
                row.properties,
                row.sanitized,
                original_body,
                (!salt.is_empty()).then_some(&salt),
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(seq) = seq else {
        return Ok(false);
    };
    if !home {
        // A new write: its leaf commits to the row as it came.
        let content = Content {
            id: &row.id,
            source: &row.source,
            timestamp: row.timestamp,
            event_type: &row.event_type,
            target: row.target.as_deref(),
            routing_key: &row.routing_key,
            exchange: &row.exchange,
            received_at: row.received_at,
            payload: &payload,
            envelope: row.envelope.as_bytes(),
            payload_member: row.payload_member.as_deref(),
            properties: row.properties.as_bytes(),
            session_id: row.session_id.as_deref(),
            correlation_id: row.correlation_id.as_deref(),
            generation: row.generation,
            sanitized: row.sanitized,
            original_body: original_body.as_deref(),
        };
        let leaf = leaf::event(row.timestamp, &content.commitment(&salt), keyring);
        tx.execute(
            "INSERT INTO audit_leaves (seq, leaf) VALUES (?1, ?2)",
            params![seq, leaf],
        )?;
    }
    Ok(true)
}

/// Inserts one dead letter; true when it was not there yet.
fn insert_dead(tx: &Connection, row: DeadLine, home: bool) -> Result<bool, LineError> {
    let fingerprint = hex::decode(&row.fingerprint)
        .map_err(|_| LineError::Bad("fingerprint is not hex".into()))?;
    let body = B64
        .decode(&row.body)
        .map_err(|e| LineError::Bad(format!("body: {e}")))?;
    let n = tx.execute(
        "INSERT INTO dead_letter (seq, fingerprint, received_at, stored_at, exchange, routing_key,
            properties, body, reason, detail)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        params![
            home.then_some(row.seq),
            fingerprint,
            row.received_at.timestamp_micros(),
            row.stored_at.timestamp_micros(),
            row.exchange,
            row.routing_key,
            row.properties,
            body,
            row.reason,
            row.detail,
        ],
    )?;
    Ok(n == 1)
}
