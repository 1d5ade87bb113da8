//! `candystore verify` on the embedded store: the same judgement as on
//! PostgreSQL (`audit::verify::walk`), over the file's leaves and rows.
//!
//! Everything is read in one read transaction on one connection, so the walk
//! sees one snapshot however the owner goes on writing: the leaves and the rows
//! are two statements stepped side by side. The file is opened read-only and
//! not owned, so `verify` runs beside the service that writes it.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use sha2::Digest;

use crate::audit::leaf::{Content, Kind, Leaf};
use crate::audit::note::VerifierKey;
use crate::audit::store::Place;
use crate::audit::verify::{EventRow, Options, Report, Trail, VerifyError, begin, emptied, walk};

fn other(e: impl std::error::Error + Send + Sync + 'static) -> VerifyError {
    VerifyError::Other(Box::new(e))
}

/// An event row as stored in the file.
struct Row {
    seq: i64,
    id: String,
    source: String,
    timestamp: DateTime<Utc>,
    event_type: String,
    target: Option<String>,
    routing_key: String,
    exchange: String,
    received_at: DateTime<Utc>,
    payload: Vec<u8>,
    envelope: Vec<u8>,
    payload_member: Option<String>,
    properties: Vec<u8>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    generation: i16,
    sanitized: bool,
    original_body: Option<Vec<u8>>,
    salt: Option<Vec<u8>>,
}

impl EventRow for Row {
    fn place(&self) -> Place {
        (0, self.seq)
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn salt(&self) -> Option<&[u8]> {
        self.salt.as_deref()
    }
    fn content(&self) -> Content<'_> {
        Content {
            id: &self.id,
            source: &self.source,
            timestamp: self.timestamp,
            event_type: &self.event_type,
            target: self.target.as_deref(),
            routing_key: &self.routing_key,
            exchange: &self.exchange,
            received_at: self.received_at,
            payload: &self.payload,
            envelope: &self.envelope,
            payload_member: self.payload_member.as_deref(),
            properties: &self.properties,
            session_id: self.session_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            generation: self.generation,
            sanitized: self.sanitized,
            original_body: self.original_body.as_deref(),
        }
    }
}

/// Microseconds since the epoch, as the file keeps times.
fn time(micros: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, micros))
}

use super::column_bytes as bytes;

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        id: r.get(1)?,
        source: r.get(2)?,
        timestamp: time(r.get(3)?)?,
        event_type: r.get(4)?,
        target: r.get(5)?,
        routing_key: r.get(6)?,
        exchange: r.get(7)?,
        received_at: time(r.get(8)?)?,
        payload: bytes(r, 9)?,
        envelope: bytes(r, 10)?,
        payload_member: r.get(11)?,
        properties: bytes(r, 12)?,
        session_id: r.get(13)?,
        correlation_id: r.get(14)?,
        generation: r.get(15)?,
        sanitized: r.get(16)?,
        original_body: r.get(17)?,
        salt: r.get(18)?,
    })
}

const ROWS: &str = r#"SELECT seq, id, source, "timestamp", event_type, target, routing_key,
    exchange, received_at, payload, envelope, payload_member, properties, session_id,
    correlation_id, generation, sanitized, original_body, salt FROM events ORDER BY seq"#;

/// Verifies the trail in the file at `path`, read-only, beside its owner.
pub async fn verify(path: &Path, opts: Options<'_>) -> Result<Report, VerifyError> {
    let conn = super::beside(path, false).map_err(other)?;
    let pending = super::schema::pending(&conn).map_err(other)?;
    if pending > 0 {
        return Err(VerifyError::Other(
            format!(
                "{} has {pending} migration(s) to run: run `candystore migrate` (or serve) first",
                path.display()
            )
            .into(),
        ));
    }
    // The walk is synchronous underneath (the statements step on this
    // connection); it runs on a blocking thread, off the runtime.
    let keyring = opts.keyring.cloned();
    let key = opts.key.cloned();
    let saved = opts.saved.map(str::to_string);
    let tree_only = opts.tree_only;
    tokio::task::spawn_blocking(move || {
        let opts = Options {
            keyring: keyring.as_ref(),
            key: key.as_ref(),
            saved: saved.as_deref(),
            tree_only,
        };
        futures::executor::block_on(judge(&conn, &opts))
    })
    .await
    .map_err(other)?
}

/// The walk, in one read transaction.
async fn judge(conn: &Connection, opts: &Options<'_>) -> Result<Report, VerifyError> {
    conn.execute_batch("BEGIN DEFERRED").map_err(other)?;
    let mut report = Report::default();
    let heads = super::tree::heads(conn).map_err(|e| VerifyError::Other(Box::new(e)))?;
    let saved = begin(&heads, opts, &mut report)?;
    let trail = Trail {
        heads,
        tiles: tiles(conn).map_err(other)?,
        attested_from: conn
            .query_row("SELECT attested_from FROM audit_trail", [], |r| r.get(0))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(other)?,
        introduced: introduced_keys(conn, opts.key).map_err(other)?,
        dropped: dropped_ranges(conn, &mut report).map_err(other)?,
        redacted: redactions(conn, &mut report).map_err(other)?,
        // Places are `(0, seq)`: none is after transaction 0.
        newest_txid: 0,
        // No legacy chain on the embedded store.
        ..Trail::default()
    };
    let mut leaves_st = conn
        .prepare("SELECT seq, leaf FROM audit_leaves ORDER BY seq")
        .map_err(other)?;
    let leaves = leaves_st
        .query_map([], |r| Ok(((0, r.get(0)?), r.get(1)?)))
        .map_err(other)?
        .map(|r| r.map_err(other));
    let mut rows_st = conn.prepare(ROWS).map_err(other)?;
    let rows = if opts.tree_only {
        None
    } else {
        Some(futures::stream::iter(
            rows_st
                .query_map([], row)
                .map_err(other)?
                .map(|r| r.map_err(other)),
        ))
    };
    let legacy_rows = walk(
        &trail,
        futures::stream::iter(leaves),
        rows,
        saved.as_ref(),
        opts,
        &mut report,
    )
    .await?;
    if !opts.tree_only {
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(other)?;
        emptied(&mut report, stored, legacy_rows);
    }
    conn.execute_batch("COMMIT").map_err(other)?;
    Ok(report)
}

/// The days retention dropped that excuse a missing event: those the tree
/// holds the record of (a retention leaf over it). One recorded without its
/// leaf (with SQL) excuses nothing and is named.
fn dropped_ranges(conn: &Connection, report: &mut Report) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut st =
        conn.prepare("SELECT substr(leaf, 2, 32) FROM audit_leaves WHERE substr(leaf, 1, 1) = ?1")?;
    let in_tree: std::collections::HashSet<Vec<u8>> = st
        .query_map([vec![Kind::Retention as u8]], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare(
        "SELECT table_name, partition, from_time, to_time, rows FROM dropped_ranges WHERE table_name = 'events'",
    )?;
    let records = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ranges = Vec::new();
    for (table, partition, from, to, rows) in records {
        let record =
            crate::audit::leaf::retention_record(&table, &partition, time(from)?, time(to)?, rows);
        if in_tree.contains(sha2::Sha256::digest(&record).as_slice()) {
            ranges.push((from, to));
        } else {
            report.find(crate::audit::verify::Finding::ForgedRetention { partition });
        }
    }
    Ok(ranges)
}

/// The leaves whose events were redacted: those whose receipt's SHA-256 the
/// tree holds in a redaction leaf. A receipt without one is named.
fn redactions(
    conn: &Connection,
    report: &mut Report,
) -> rusqlite::Result<std::collections::HashSet<u64>> {
    let mut st = conn.prepare(
        "SELECT substr(leaf, 2, 8), substr(leaf, 10, 32) FROM audit_leaves WHERE substr(leaf, 1, 1) = ?1",
    )?;
    let in_tree: std::collections::HashSet<(u64, Vec<u8>)> = st
        .query_map([vec![Kind::Redaction as u8]], |r| {
            let index: Vec<u8> = r.get(0)?;
            let index = <[u8; 8]>::try_from(index.as_slice()).map_or(u64::MAX, u64::from_be_bytes);
            Ok((index, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = conn.prepare("SELECT leaf_index, receipt FROM audit_redactions")?;
    let receipts = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = std::collections::HashSet::new();
    for (index, receipt) in receipts {
        let digest = sha2::Sha256::digest(receipt.as_bytes()).to_vec();
        if in_tree.contains(&(index as u64, digest)) {
            out.insert(index as u64);
        } else {
            report.find(crate::audit::verify::Finding::ForgedRedaction { leaf_index: index });
        }
    }
    Ok(out)
}

fn tiles(conn: &Connection) -> rusqlite::Result<HashMap<(i16, i64), Vec<u8>>> {
    let mut st = conn.prepare("SELECT level, idx, hashes FROM audit_tiles")?;
    st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
        .collect()
}

/// The AUDIT_KEY ids the trail introduced: key leaves whose signature by the
/// checkpoint key (from outside the file) holds. None without that key.
fn introduced_keys(
    conn: &Connection,
    key: Option<&VerifierKey>,
) -> rusqlite::Result<std::collections::HashSet<[u8; 4]>> {
    let Some(key) = key else {
        return Ok(Default::default());
    };
    let mut st = conn.prepare("SELECT leaf FROM audit_leaves WHERE substr(leaf, 1, 1) = ?1")?;
    let leaves = st
        .query_map([vec![Kind::Key as u8]], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(leaves
        .iter()
        .filter_map(|l| Leaf::parse(l).ok()?.key(key))
        .collect())
}
