//! One batch, one transaction: COPY events into the staging table, move them into
//! `events` with `ON CONFLICT DO NOTHING`, insert the dead letters, COMMIT.
//!
//! The writer owns one dedicated connection (never the API's read pool). Errors
//! come back classified: retryable ones leave nothing behind (the transaction is
//! rolled back by the server), data errors name no row; the caller splits.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::SinkExt;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use super::copy;
use crate::audit::attest::Keyring;
use crate::metrics::Metrics;
use crate::model::envelope::{DeadLetter, Event, Record};
use crate::store::{WriteError, Written};

/// `inserted AS (…)`, moving the staged rows that pass `$filter` into `events`,
/// then the new rows counted by event type: the part every move statement shares.
/// `$extra` names the columns after `original_body` the statement stores: the
/// event's `salt` once migration 0019 has run, nothing before; `$leaves`, the
/// statement that stores the new rows' leaves ([`leaves!`]), or nothing.
macro_rules! insert_staged {
    ($filter:expr, $extra:expr, $returning:expr, $leaves:expr) => {
        concat!(
            r#"inserted AS (
    INSERT INTO events (id, event_type, source, target, routing_key, exchange, "timestamp", received_at,
                        stored_at, payload, session_id, correlation_id, storage_latency_ms, generation,
                        envelope, payload_member, properties, sanitized, original_body"#,
            $extra,
            r#")
    SELECT id, event_type, source, target, routing_key, exchange, "timestamp", received_at,
           clock_timestamp(), payload, session_id, correlation_id,
           extract(epoch FROM clock_timestamp() - received_at) * 1000, generation,
           envelope, payload_member, properties, sanitized, original_body"#,
            $extra,
            r#"
    FROM events_staging s
    WHERE "#,
            $filter,
            r#"
    ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING event_type"#,
            $returning,
            r#"
)"#,
            $leaves,
            r#"
SELECT event_type, count(*) FROM inserted GROUP BY event_type"#
        )
    };
}

/// Each new row's leaf (`audit::leaf`) into `audit_leaves`, at the row's place,
/// in the same transaction: a row is never committed without its leaf. The salt
/// is random per staged row, so it tells which staged row became which new row.
macro_rules! leaves {
    () => {
        r#", leaves AS (
    INSERT INTO audit_leaves (txid, seq, leaf)
    SELECT i.txid, i.seq, s.leaf FROM inserted i JOIN events_staging s ON s.salt = i.salt
)"#
    };
}

/// The claims of [`MOVE_STAGED`]: fallback-timed events claim their (id, source).
macro_rules! claim_staged {
    () => {
        r#"
WITH claimed AS (
    INSERT INTO event_keys (id, source, "timestamp")
    SELECT s.id, s.source, s."timestamp" FROM events_staging s
    WHERE NOT s.own_time
    ORDER BY s.ord
    ON CONFLICT DO NOTHING
    RETURNING id, source, "timestamp"
), "#
    };
}

/// Which staged rows [`MOVE_STAGED`] moves: those with their own time, and the
/// fallback-timed ones whose claim this statement made.
macro_rules! staged_filter {
    () => {
        r#"(s.own_time OR EXISTS (SELECT 1 FROM claimed c
                            WHERE c.id = s.id AND c.source = s.source AND c."timestamp" = s."timestamp"))"#
    };
}

/// Moves staged rows into `events` and returns how many rows of each type were new.
///
/// Identity (docs/identity.md): an event that carries its own time is
/// one row per (id, source, timestamp), which the primary key enforces inside the
/// partition the time selects. An event whose time is a fallback is one row per
/// (id, source) among fallback-timed events: it first claims its (id, source) in
/// `event_keys`, and only the claimant inserts. The two kinds never look at each
/// other's key, so no writer waits for another (beyond two inserting the same key
/// at once) and no statement probes every partition. `ON CONFLICT DO NOTHING`
/// names no key, so the statement works on the plain table too (during the online
/// migration). `txid`, the writing transaction, is the column's default (migration
/// 0010), so the statement works on either side of that migration as well.
const MOVE_STAGED: &str = concat!(
    claim_staged!(),
    insert_staged!(staged_filter!(), ", salt", ", txid, seq, salt", leaves!())
);
/// [`MOVE_STAGED`] for a database without the tree (an online migration, and
/// 0019 behind it, pending): no salt, no leaves.
const MOVE_STAGED_PLAIN: &str = concat!(
    claim_staged!(),
    insert_staged!(staged_filter!(), "", "", "")
);

/// [`MOVE_STAGED`] for a batch whose events all carry their own time (nearly
/// every batch): no claims to make.
const MOVE_OWN_TIME: &str = concat!(
    "\nWITH ",
    insert_staged!("true", ", salt", ", txid, seq, salt", leaves!())
);
/// [`MOVE_OWN_TIME`] without the tree.
const MOVE_OWN_TIME_PLAIN: &str = concat!("\nWITH ", insert_staged!("true", "", "", ""));

/// A dead letter claims its fingerprint (its receive time differs on every
/// redelivery, so the partitioned table's own key cannot see a repeat).
const INSERT_DEAD_LETTER: &str = r#"
WITH claimed AS (
    INSERT INTO dead_letter_keys (fingerprint, received_at) VALUES ($1, $2)
    ON CONFLICT DO NOTHING
    RETURNING fingerprint
)
INSERT INTO dead_letter (fingerprint, received_at, exchange, routing_key, properties, body, reason, detail)
SELECT $1, $2, $3, $4, $5::text::json, $6, $7, $8 FROM claimed
ON CONFLICT DO NOTHING"#;

/// Server-side bounds of every writer session. No statement runs longer than
/// this (a COPY of a full 16 MiB batch takes well under a second)...
/// The COPY stream goes out in pieces of about this size, so a batch is never
/// held encoded whole (a batch of 1 MB events would be MAX_BATCH_BYTES twice over:
/// once here, once in the connection's write buffer, which keeps its capacity).
const COPY_CHUNK_BYTES: usize = 256 * 1024;

pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// ...no lock is waited for longer than this (writers wait on each other only when
/// two insert the same key at once, for the other's commit: milliseconds; a
/// session holding a lock longer is stuck or hostile, and the batch is retried
/// with back-off rather than queued behind it)...
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and a transaction left open by a writer that vanished releases its locks.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The most the payload index's pending list grows to from a writer's inserts
/// before that writer merges it into the index. Every document search of a
/// partition reads its whole pending list: at PostgreSQL's default (4 MB) the
/// partition being written held ~45,000 entries under ingest at 1,000 events/s,
/// and each search of it scanned them all (documents under ingest: p50 7 → 21 ms).
/// 256 kB is ~0.7 s of that ingest, merged in one sorted pass.
/// (`gin_pending_list_limit` is a session setting: it covers every partition,
/// those made later too, where the index option would have to be set on each.)
pub const GIN_PENDING_LIST_LIMIT: &str = "256kB";

/// The client-side bound of one whole write: a server that stops answering is
/// treated like one that closed the connection. The connection is dropped and the
/// batch retried on a new one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(45);

/// A PostgreSQL error, classified for the sink (see [`WriteError`]).
pub(crate) fn from_pg(e: tokio_postgres::Error) -> WriteError {
    let Some(code) = e.code() else {
        let cause = if e.is_closed() {
            "connection_closed"
        } else {
            "connection"
        };
        return WriteError::Unavailable {
            cause,
            source: Some(Box::new(e)),
        };
    };
    // Data exception, integrity violation, program limit (e.g. index row size):
    // something in the rows. Everything else (connection, shutdown, resources,
    // serialization, missing schema) is a state of the server that can change.
    // Lock and statement timeouts (ours) first: they say the server is busy
    // or blocked, not that it is shutting down.
    if *code == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE {
        return WriteError::Unavailable {
            cause: "lock_timeout",
            source: Some(Box::new(e)),
        };
    }
    if *code == tokio_postgres::error::SqlState::QUERY_CANCELED {
        return WriteError::Unavailable {
            cause: "timeout",
            source: Some(Box::new(e)),
        };
    }
    if *code == tokio_postgres::error::SqlState::CHECK_VIOLATION
        && e.as_db_error().is_some_and(|d| d.constraint().is_none())
    {
        return WriteError::Rerouted(Box::new(e));
    }
    let cause = match &code.code()[..2] {
        "22" | "23" | "54" => return WriteError::Refused(Box::new(e)),
        "08" => "connection",
        "40" => "serialization",
        "53" => "resources",
        "57" => "server_shutdown",
        "42" => "schema",
        _ => "server",
    };
    WriteError::Unavailable {
        cause,
        source: Some(Box::new(e)),
    }
}

struct Conn {
    client: Client,
    /// The tree's tables are there (migration 0019): rows are stored with their
    /// salt and leaf.
    tree: bool,
    move_staged: Statement,
    move_own_time: Statement,
    insert_dead_letter: Statement,
    /// Counts this connection in `candystore_writer_connections` while it lives.
    _counted: crate::metrics::Raised,
}

/// The batch writer's connection and statements.
pub struct Writer {
    target: crate::db::PgTarget,
    conn: Option<Conn>,
    buf: BytesMut,
    /// AUDIT_KEY: every leaf is attested (`crate::audit::leaf`).
    keyring: Option<Arc<Keyring>>,
    /// Partitions made before a batch needs them (`super::partitions`).
    partitions: Option<super::partitions::PartitionsAhead>,
}

impl Writer {
    pub fn new(target: crate::db::PgTarget) -> Self {
        Self {
            target,
            conn: None,
            buf: BytesMut::new(),
            keyring: None,
            partitions: None,
        }
    }

    /// Makes the partitions a batch needs before writing it, cut by `layout`, and
    /// rings `maintenance` when a batch's rows must wait in the default partition.
    pub fn making_partitions(
        mut self,
        layout: crate::storage::partition::Layout,
        maintenance: crate::jobs::Wake,
    ) -> Self {
        self.partitions = Some(super::partitions::PartitionsAhead::new(
            self.target.clone(),
            layout,
            maintenance,
        ));
        self
    }

    /// Attests every row with the keyring's first key.
    pub fn attesting(mut self, keyring: Option<Arc<Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// Forgets the connection; the next write opens a new one.
    fn reset(&mut self) {
        self.conn = None;
    }

    async fn connect(&mut self, metrics: &Metrics) -> Result<&mut Conn, WriteError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            // Closed between batches (the server restarted, an operator terminated
            // the backend): nothing was lost, but it is worth knowing.
            tracing::warn!("writer connection closed by the server; reconnecting");
            self.reset();
        }
        if self.conn.is_none() {
            let (client, connection) = self
                .target
                .config
                .connect(self.target.tls.clone())
                .await
                .map_err(from_pg)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "writer connection ended");
                }
            });
            client
                .batch_execute(&format!(
                    "SET statement_timeout = '{}ms'; SET lock_timeout = '{}ms'; \
                     SET idle_in_transaction_session_timeout = '{}ms'; \
                     SET gin_pending_list_limit = '{GIN_PENDING_LIST_LIMIT}'; {}",
                    STATEMENT_TIMEOUT.as_millis(),
                    LOCK_TIMEOUT.as_millis(),
                    IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
                    copy::CREATE_STAGING
                ))
                .await
                .map_err(from_pg)?;
            // The service runs while an online migration (and the plain ones after
            // it, 0019 among them) is pending: then rows have no leaves yet.
            let tree: bool = client
                .query_one("SELECT to_regclass('audit_leaves') IS NOT NULL", &[])
                .await
                .map_err(from_pg)?
                .get(0);
            if !tree {
                tracing::warn!(
                    "migration 0019 is pending: this writer stores rows without leaves in the audit tree until it reconnects after `candystore migrate` (restart the service then)"
                );
            }
            let (staged, own_time) = if tree {
                (MOVE_STAGED, MOVE_OWN_TIME)
            } else {
                (MOVE_STAGED_PLAIN, MOVE_OWN_TIME_PLAIN)
            };
            let move_staged = client.prepare(staged).await.map_err(from_pg)?;
            let move_own_time = client.prepare(own_time).await.map_err(from_pg)?;
            let insert_dead_letter = client.prepare(INSERT_DEAD_LETTER).await.map_err(from_pg)?;
            tracing::debug!("writer connected");
            self.conn = Some(Conn {
                _counted: crate::metrics::Raised::new(&metrics.writers_connected),
                client,
                tree,
                move_staged,
                move_own_time,
                insert_dead_letter,
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Writes `records` in one transaction. On any error nothing was committed.
    pub async fn write(
        &mut self,
        records: &[&Record],
        metrics: &Metrics,
    ) -> Result<Written, WriteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.write_inner(records, metrics)).await {
            Ok(Ok(w)) => Ok(w),
            Ok(Err(e)) => {
                if e.is_retryable() && e.cause() != "lock_timeout" {
                    self.reset();
                }
                Err(e)
            }
            Err(_) => {
                self.reset();
                Err(WriteError::Unavailable {
                    cause: "timeout",
                    source: None,
                })
            }
        }
    }

    async fn write_inner(
        &mut self,
        records: &[&Record],
        metrics: &Metrics,
    ) -> Result<Written, WriteError> {
        let all: Vec<&Event> = records
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e.as_ref()),
                Record::DeadLetter(_) | Record::Replayed => None,
            })
            .collect();
        let events = &all;
        let dead: Vec<&DeadLetter> = records
            .iter()
            .filter_map(|r| match r {
                Record::DeadLetter(d) => Some(d.as_ref()),
                Record::Event(_) | Record::Replayed => None,
            })
            .collect();
        if let Some(partitions) = &mut self.partitions {
            let times: Vec<(crate::storage::Table, chrono::DateTime<chrono::Utc>)> = events
                .iter()
                .map(|e| (crate::storage::Table::Events, e.timestamp))
                .chain(
                    dead.iter()
                        .map(|d| (crate::storage::Table::DeadLetter, d.received_at)),
                )
                .collect();
            partitions.ensure(&times, chrono::Utc::now(), metrics).await;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let keyring = self.keyring.clone();
        if self.conn.as_ref().is_some_and(|c| !c.tree) {
            // Without the tree's tables (an online migration pending), each batch
            // looks again: once `migrate` added them, rows get leaves from the
            // next batch on, without a restart.
            let client = &self.conn.as_ref().expect("checked above").client;
            let tree: bool = client
                .query_one("SELECT to_regclass('audit_leaves') IS NOT NULL", &[])
                .await
                .map_err(from_pg)?
                .get(0);
            if tree {
                tracing::info!(
                    "migration 0019 applied: rows get their leaves in the audit tree from now on"
                );
                self.reset();
            }
        }
        let conn = self.connect(metrics).await?;
        let audit = if conn.tree {
            copy::Audit::Tree(keyring.as_deref())
        } else {
            copy::Audit::Off
        };
        let step = |name: &str, seconds: f64| {
            metrics
                .batch_duration
                .with_label_values(&[name])
                .observe(seconds)
        };
        let client = &conn.client;
        let result = async {
            // Three round trips: BEGIN with the COPY's start, the rows, then the
            // move, the dead letters and COMMIT together. Requests tokio-postgres
            // polls together are pipelined, in the order first polled.
            let t = Instant::now();
            let copying = async {
                if events.is_empty() {
                    return Ok(());
                }
                // Streamed in chunks: a batch of large events is never encoded
                // whole, neither here nor in the connection's write buffer.
                let sink = client.copy_in(copy::COPY_STAGING).await?;
                futures::pin_mut!(sink);
                buf.clear();
                copy::header(&mut buf);
                for (ord, e) in events.iter().enumerate() {
                    copy::row(&mut buf, ord, e, audit);
                    if buf.len() >= COPY_CHUNK_BYTES {
                        sink.feed(buf.split().freeze()).await?;
                    }
                }
                copy::trailer(&mut buf);
                sink.send(buf.split().freeze()).await?;
                sink.finish().await.map(drop)
            };
            let (begun, copied) = futures::join!(client.batch_execute("BEGIN"), copying);
            begun.map_err(from_pg)?;
            copied.map_err(from_pg)?;
            step("copy", t.elapsed().as_secs_f64());
            let t = Instant::now();
            let properties: Vec<String> = dead
                .iter()
                .map(|d| String::from_utf8_lossy(&d.properties).into_owned())
                .collect();
            let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
            let fingerprints: Vec<&[u8]> = dead.iter().map(|d| &d.fingerprint[..]).collect();
            let dead_params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 8]> = dead
                .iter()
                .zip(&properties)
                .zip(&reasons)
                .zip(&fingerprints)
                .map(|(((d, p), r), f)| {
                    [
                        f as &(dyn tokio_postgres::types::ToSql + Sync),
                        &d.received_at,
                        &d.exchange,
                        &d.routing_key,
                        p,
                        &d.body,
                        r,
                        &d.detail,
                    ]
                })
                .collect();
            let fallback_times = events.iter().any(|e| !e.own_time);
            let moving = async {
                if events.is_empty() {
                    return (Ok(Vec::new()), Instant::now());
                }
                let statement = if fallback_times {
                    &conn.move_staged
                } else {
                    &conn.move_own_time
                };
                (client.query(statement, &[]).await, Instant::now())
            };
            let dead_letters = futures::future::join_all(
                dead_params
                    .iter()
                    .map(|p| client.execute(&conn.insert_dead_letter, &p[..])),
            );
            let (moved, dead_letters, committed) =
                futures::join!(moving, dead_letters, client.batch_execute("COMMIT"));
            // A statement that failed aborted the transaction, and the COMMIT after
            // it answered ROLLBACK without an error: the first error is the answer.
            let (rows, moved_at) = moved;
            let rows = rows.map_err(from_pg)?;
            let mut written = Written::default();
            for n in dead_letters {
                if n.map_err(from_pg)? == 1 {
                    written.dead_letters += 1;
                } else {
                    written.dead_letter_duplicates += 1;
                }
            }
            committed.map_err(from_pg)?;
            step("insert", (moved_at - t).as_secs_f64());
            step("commit", moved_at.elapsed().as_secs_f64());
            for row in rows {
                let event_type: String = row.get(0);
                let n: i64 = row.get(1);
                written.stored.push((event_type, n as u64));
            }
            written.duplicates = all.len() as u64 - written.stored_total();
            Ok(written)
        }
        .await;
        if result.is_err() && !client.is_closed() {
            // A failure before COMMIT was sent leaves the transaction open (and
            // aborted): end it, so the connection is ready for the retry.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        self.buf = buf;
        result
    }
}
