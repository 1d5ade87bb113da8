//! The embedded store's one writer: a thread of its own that owns the file's
//! writing connection and commits one batch at a time, each in one transaction.
//!
//! The sink's writers are [`Handle`]s on it. A handle turns a batch into rows
//! on the async side (the payload's jsonb text, the salt and leaf, what
//! PostgreSQL's COPY encoding does), sends them over, and awaits the commit; the
//! thread never touches the runtime, and the runtime never waits on the file.
//! Several handles (WRITE_CONCURRENCY) queue their batches at the thread, so one
//! batch is prepared while the one before it commits.
//!
//! The same rules as PostgreSQL's writer: an event with its own time is one row
//! per (id, source, timestamp), a fallback-timed one claims its (id, source)
//! first (docs/identity.md); a dead letter is one row per fingerprint; every
//! event is stored with its leaf in the same transaction. What SQLite refuses in
//! the data (a payload jsonb could not hold: PostgreSQL refuses it too) fails
//! the batch as [`WriteError::Refused`], so the sink splits it and dead-letters
//! that one event, as it does on PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Role, Sqlite};
use crate::audit::attest::Keyring;
use crate::audit::job::{AfterStep, Appended, JobError, Tree};
use crate::metrics::Metrics;
use crate::model::envelope::{DeadLetter, Event, Record};
use crate::store::{WriteError, Written};

/// Batches waiting at the thread, from all handles together.
const QUEUED: usize = 4;

/// One event as stored.
struct Row {
    id: String,
    event_type: String,
    source: String,
    target: Option<String>,
    routing_key: String,
    exchange: String,
    timestamp: i64,
    own_time: bool,
    received_at: i64,
    payload: Vec<u8>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    generation: i64,
    envelope: Vec<u8>,
    payload_member: Option<&'static str>,
    properties: Vec<u8>,
    sanitized: bool,
    original_body: Option<Vec<u8>>,
    salt: Vec<u8>,
    leaf: Vec<u8>,
}

/// One dead letter as stored.
struct DeadRow {
    fingerprint: [u8; 32],
    received_at: i64,
    exchange: String,
    routing_key: String,
    properties: String,
    body: Vec<u8>,
    reason: &'static str,
    detail: String,
}

/// A batch on its way to the thread, and where its answer goes.
struct Job {
    events: Vec<Row>,
    dead: Vec<DeadRow>,
    answer: oneshot::Sender<Result<Written, WriteError>>,
}

/// What the thread is asked to do.
enum Work {
    Batch(Job),
    /// A step of the catalog (`super::catalog`): how many events it counted.
    Catalog(oneshot::Sender<rusqlite::Result<usize>>),
    /// A step of the audit tree (`super::tree`), with the tree's state, which
    /// comes back with the answer.
    Tree(
        Box<Tree>,
        oneshot::Sender<(Box<Tree>, Result<Appended, JobError>)>,
    ),
    /// Any other short piece of writing (retention's steps), between batches;
    /// it answers through what it captured.
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// A sink writer on the embedded store's writer thread.
#[derive(Clone)]
pub struct Handle {
    jobs: mpsc::Sender<Work>,
    keyring: Option<Arc<Keyring>>,
}

impl Handle {
    /// Starts the writer thread on `store`'s file; it ends when the last handle
    /// is dropped.
    pub fn start(store: &Sqlite) -> Result<Handle, super::SqliteError> {
        Self::start_counted(store, None)
    }

    /// As [`Handle::start`], the thread's connection counted in `connections`
    /// (`candystore_writer_connections`) while the thread lives.
    pub fn start_counted(
        store: &Sqlite,
        connections: Option<&prometheus::IntGauge>,
    ) -> Result<Handle, super::SqliteError> {
        let conn = store.connect(Role::Write)?;
        let counted = connections.map(crate::metrics::Raised::new);
        let (jobs, rx) = mpsc::channel(QUEUED);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let _counted = counted;
                run(conn, rx)
            })
            .map_err(super::SqliteError::Thread)?;
        Ok(Handle {
            jobs,
            keyring: None,
        })
    }

    /// Attests every row with the keyring's first key.
    pub fn attesting(mut self, keyring: Option<Arc<Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// Writes `records` in one transaction. On any error nothing was committed.
    pub async fn write(
        &mut self,
        records: &[&Record],
        metrics: &Metrics,
    ) -> Result<Written, WriteError> {
        let t = Instant::now();
        let mut events = Vec::new();
        let mut dead = Vec::new();
        for r in records {
            match r {
                Record::Event(e) => events.push(row(e, self.keyring.as_deref())?),
                Record::DeadLetter(d) => dead.push(dead_row(d)),
                Record::Replayed => {}
            }
        }
        let total = events.len() as u64;
        metrics
            .batch_duration
            .with_label_values(&["copy"])
            .observe(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (answer, answered) = oneshot::channel();
        let gone = || WriteError::Unavailable {
            cause: "connection_closed",
            source: None,
        };
        self.jobs
            .send(Work::Batch(Job {
                events,
                dead,
                answer,
            }))
            .await
            .map_err(|_| gone())?;
        let mut written = answered.await.map_err(|_| gone())??;
        written.duplicates = total - written.stored_total();
        metrics
            .batch_duration
            .with_label_values(&["commit"])
            .observe(t.elapsed().as_secs_f64());
        Ok(written)
    }
}

impl Handle {
    /// Runs `f` on the writer thread, between batches, and returns its answer.
    /// Keep `f` short: ingest waits while it runs.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Work::Run(Box::new(move |conn| {
                let _ = answer.send(f(conn));
            })))
            .await
            .map_err(|_| Stopped)?;
        answered.await.map_err(|_| Stopped)
    }

    /// Runs one step of the catalog on the writer thread, between batches;
    /// returns how many events it counted.
    pub async fn catalog_step(&self) -> Result<usize, CatalogError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Work::Catalog(answer))
            .await
            .map_err(|_| CatalogError::Stopped)?;
        answered
            .await
            .map_err(|_| CatalogError::Stopped)?
            .map_err(CatalogError::Sqlite)
    }
}

/// The audit tree, appended behind ingest until `stop`: a step on the writer
/// thread every SEAL_INTERVAL (at once again while steps are full), each
/// checkpoint published after its commit. Ends on a fault a retry cannot mend
/// (another signing key), so the supervisor stops the process.
pub async fn tree_job(
    handle: Handle,
    reader: super::read::Reader,
    tree: Tree,
    mut after: AfterStep,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tree = Box::new(tree);
    let mut failing = false;
    loop {
        let (answer, answered) = oneshot::channel();
        if handle.jobs.send(Work::Tree(tree, answer)).await.is_err() {
            return;
        }
        let Ok((back, result)) = answered.await else {
            return;
        };
        tree = back;
        let rest = match result {
            Ok(appended) => {
                if failing {
                    tracing::info!("embedded store audit tree appending again");
                    failing = false;
                }
                after.record(&appended, &reader).await
            }
            Err(e) if !crate::jobs::Failure::is_retryable(&e) => {
                tracing::error!(error = %crate::telemetry::error_chain(&e), "the audit tree cannot go on");
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "embedded store audit tree step failed; retrying");
                    failing = true;
                }
                after.every
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rest) => {}
        }
    }
}

/// The writer thread has stopped (the service is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the embedded store's writer has stopped")]
pub struct Stopped;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the embedded store's writer has stopped")]
    Stopped,
    #[error("a catalog step failed")]
    Sqlite(#[source] rusqlite::Error),
}

/// The catalog, counted behind ingest until `stop`: a step whenever the last
/// one was full, else one a second.
pub async fn catalog_job(handle: Handle, stop: tokio_util::sync::CancellationToken) {
    let mut failing = false;
    loop {
        let rest = match handle.catalog_step().await {
            Ok(n) => {
                if failing {
                    tracing::info!("embedded store catalog counting again");
                    failing = false;
                }
                if n as i64 >= super::catalog::STEP_ROWS {
                    std::time::Duration::ZERO
                } else {
                    std::time::Duration::from_secs(1)
                }
            }
            Err(CatalogError::Stopped) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "embedded store catalog step failed; retrying");
                    failing = true;
                }
                std::time::Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rest) => {}
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// An event as the store keeps it: its payload as jsonb's text (refused when
/// jsonb would refuse it, as PostgreSQL does), its salt and leaf.
fn row(e: &Event, keyring: Option<&Keyring>) -> Result<Row, WriteError> {
    let payload = crate::audit::jsonb::canonical(&e.payload)
        .map_err(|err| WriteError::Refused(Box::new(err)))?;
    let sealed = crate::audit::leaf::seal_stored(e, &payload, keyring);
    Ok(Row {
        id: e.id.clone(),
        event_type: e.event_type.clone(),
        source: e.source.clone(),
        target: e.target.clone(),
        routing_key: e.routing_key.clone(),
        exchange: e.exchange.clone(),
        timestamp: micros(e.timestamp),
        own_time: e.own_time,
        received_at: micros(e.received_at),
        payload,
        session_id: e.session_id.clone(),
        correlation_id: e.correlation_id.clone(),
        generation: i64::from(e.generation.as_i16()),
        envelope: e.envelope.clone(),
        payload_member: e.payload_member,
        properties: e.properties.clone(),
        sanitized: e.sanitized,
        original_body: e.sanitized.then(|| e.body.clone()),
        salt: sealed.salt.to_vec(),
        leaf: sealed.leaf,
    })
}

fn dead_row(d: &DeadLetter) -> DeadRow {
    DeadRow {
        fingerprint: d.fingerprint,
        received_at: micros(d.received_at),
        exchange: d.exchange.clone(),
        routing_key: d.routing_key.clone(),
        properties: String::from_utf8_lossy(&d.properties).into_owned(),
        body: d.body.clone(),
        reason: d.reason.as_str(),
        detail: d.detail.clone(),
    }
}

/// The thread: one batch at a time, until every handle is gone.
fn run(mut conn: Connection, mut jobs: mpsc::Receiver<Work>) {
    while let Some(work) = jobs.blocking_recv() {
        match work {
            Work::Batch(job) => {
                let result = commit(&mut conn, &job.events, &job.dead).map_err(classify);
                // The handle may have given up waiting (shutdown); the batch is
                // committed or not all the same, and redelivered if not acked.
                let _ = job.answer.send(result);
            }
            Work::Catalog(answer) => {
                let _ = answer.send(super::catalog::step(&mut conn));
            }
            Work::Tree(mut tree, answer) => {
                let result = super::tree::step(&mut conn, &mut tree);
                let _ = answer.send((tree, result));
            }
            Work::Run(f) => f(&mut conn),
        }
    }
    tracing::debug!("embedded store writer stopped");
}

const CLAIM: &str = r#"INSERT INTO event_keys (id, source, "timestamp") VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"#;
const INSERT: &str = r#"INSERT INTO events (id, event_type, source, target, routing_key, exchange,
    "timestamp", received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms,
    generation, envelope, payload_member, properties, sanitized, original_body, salt)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
ON CONFLICT DO NOTHING RETURNING seq"#;
const LEAF: &str = "INSERT INTO audit_leaves (seq, leaf) VALUES (?1, ?2)";
const DEAD_LETTER: &str = "INSERT INTO dead_letter (fingerprint, received_at, stored_at, exchange,
    routing_key, properties, body, reason, detail)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING";

/// One transaction: the events in order (a fallback-timed one only if its claim
/// is new; a repeat of a stored key is skipped), their leaves, the dead letters.
fn commit(conn: &mut Connection, events: &[Row], dead: &[DeadRow]) -> rusqlite::Result<Written> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut written = Written::default();
    {
        let mut claim = tx.prepare_cached(CLAIM)?;
        let mut insert = tx.prepare_cached(INSERT)?;
        let mut leaf = tx.prepare_cached(LEAF)?;
        let mut dead_letter = tx.prepare_cached(DEAD_LETTER)?;
        for r in events {
            if !r.own_time && claim.execute(params![r.id, r.source, r.timestamp])? == 0 {
                continue;
            }
            let stored_at = micros(Utc::now());
            let latency_ms = (stored_at - r.received_at) as f64 / 1e3;
            let seq: Option<i64> = insert
                .query_row(
                    params![
                        r.id,
                        r.event_type,
                        r.source,
                        r.target,
                        r.routing_key,
                        r.exchange,
                        r.timestamp,
                        r.received_at,
                        stored_at,
                        text(&r.payload),
                        r.session_id,
                        r.correlation_id,
                        latency_ms,
                        r.generation,
                        text(&r.envelope),
                        r.payload_member,
                        text(&r.properties),
                        r.sanitized,
                        r.original_body,
                        r.salt,
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(seq) = seq else { continue };
            leaf.execute(params![seq, r.leaf])?;
            match written.stored.iter_mut().find(|(t, _)| *t == r.event_type) {
                Some((_, n)) => *n += 1,
                None => written.stored.push((r.event_type.clone(), 1)),
            }
        }
        let now = micros(Utc::now());
        for d in dead {
            let n = dead_letter.execute(params![
                &d.fingerprint[..],
                d.received_at,
                now,
                d.exchange,
                d.routing_key,
                d.properties,
                d.body,
                d.reason,
                d.detail,
            ])?;
            if n == 1 {
                written.dead_letters += 1;
            } else {
                written.dead_letter_duplicates += 1;
            }
        }
    }
    tx.commit()?;
    Ok(written)
}

/// Stored text: JSON the decoder produced (UTF-8), or its bytes as they are.
fn text(bytes: &[u8]) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    match std::str::from_utf8(bytes) {
        Ok(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        Err(_) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
    }
}

/// A SQLite error, classified for the sink: the file busy, full or failing is a
/// state that can change (retried); a constraint or a value too big is in the
/// rows (split, then dead-lettered).
fn classify(e: rusqlite::Error) -> WriteError {
    let code = e.sqlite_error_code();
    let cause = match code {
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch) => {
            return WriteError::Refused(Box::new(e));
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "lock_timeout",
        Some(ErrorCode::DiskFull | ErrorCode::OutOfMemory) => "resources",
        Some(ErrorCode::CannotOpen | ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "connection"
        }
        Some(ErrorCode::SchemaChanged) => "schema",
        _ => "server",
    };
    WriteError::Unavailable {
        cause,
        source: Some(Box::new(e)),
    }
}
