//! The one poller behind every live-tail stream.
//!
//! A single task reads the newest stored events (past the last [`Position`], one
//! short walk of the `(txid, seq)` index every [`POLL_EVERY`]) while at least one
//! stream listens, renders each event's SSE frame once, and broadcasts the batch.
//!
//! Writers commit concurrently and in any order, so `seq` alone is no position: a
//! row with a lower `seq` can commit after one with a higher. Each row records the
//! transaction that wrote it (`txid`), and a read takes only rows of transactions
//! older than the oldest one still running, in this database, when its snapshot
//! was taken ([`HORIZON`]). Those transactions have all ended, so the set of such rows
//! never grows again, and every row that becomes readable later belongs to a newer
//! transaction: it sorts after everything already read in (txid, seq) order. So a
//! stream that follows that order never skips and never repeats, with any number
//! of writers and instances. docs/live-tail.md. Streams
//! filter batches in memory with [`TailFilter`], which matches exactly what the
//! SQL filter of `GET /events` matches. So 150 open streams cost one query per
//! interval, not 150, and never hold a read-pool connection.
//!
//! The broadcast channel is bounded ([`BROADCAST_BATCHES`] batches of at most
//! [`BATCH_BYTES`]); a stream that falls behind it (a slow reader, a burst)
//! catches up from the database, so nothing is skipped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::TryStreamExt;
use tokio::sync::broadcast;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use super::problem::unavailable;
use super::query::EventQuery;
use super::query::sql::{generic_plans, reusable};
use super::view::{COLUMNS, JsonText, view};
use crate::db::HORIZON;
use crate::model::query::SqlParams;
use crate::store::contains::{self, Json};

/// How often the newest events are read while a stream listens.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// Events per broadcast batch at most.
pub const BATCH_EVENTS: i64 = 500;
/// Rendered bytes per broadcast batch at most (at least one event).
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches the channel holds; a stream further behind catches up from the database.
pub const BROADCAST_BATCHES: usize = 16;
/// The largest payload a stream's `payload_contains` is checked against in
/// memory (as a parsed tree, shared by every stream); a larger one is checked by
/// PostgreSQL, and its text is not kept.
pub const TREE_BYTES: usize = 64 << 10;
/// Comparisons one in-memory containment check may make; past it the event is
/// checked by PostgreSQL (a pattern's arrays against a document's arrays could
/// otherwise cost their product).
pub const CONTAINMENT_STEPS: u32 = 100_000;
/// The longest `payload_contains` a stream takes, in bytes.
pub const MAX_STREAM_PATTERN_BYTES: usize = 4096;

/// A place in the live tail's order: the writing transaction, then `seq`. Rows
/// stored before the tail followed transactions have `txid` 0 (they were written
/// one transaction at a time, in `seq` order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub txid: i64,
    pub seq: i64,
}

impl Position {
    /// The SSE id: `{txid}-{seq}`.
    pub fn sse_id(&self) -> String {
        format!("{}-{}", self.txid, self.seq)
    }

    /// An SSE id this stream sent: `{txid}-{seq}`, or a bare `seq` from before
    /// the tail followed transactions (it resumes at `(0, seq)`, which is where it was).
    pub fn parse(s: &str) -> Option<Self> {
        let number = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0);
        match s.split_once('-') {
            Some((txid, seq)) => Some(Position {
                txid: number(txid)?,
                seq: number(seq)?,
            }),
            None => Some(Position {
                txid: 0,
                seq: number(s)?,
            }),
        }
    }
}

/// Where the tail reads: PostgreSQL (positions are `(txid, seq)` below the
/// horizon), or the embedded store, whose one writer commits in `seq` order, so
/// every position is `(0, seq)` and everything stored is final.
#[derive(Clone)]
pub enum TailSource {
    Postgres(Pool),
    Sqlite(crate::store::sqlite::read::Reader),
}

impl std::fmt::Debug for TailSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TailSource::Postgres(_) => "TailSource::Postgres",
            TailSource::Sqlite(_) => "TailSource::Sqlite",
        })
    }
}

/// One stored event as the tail needs it: what filters look at, and its frame.
#[derive(Debug)]
pub struct TailEvent {
    pub pos: Position,
    pub event_type: String,
    pub source: String,
    pub target: Option<String>,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// The payload's text when it is at most [`TREE_BYTES`]; a larger one is left
    /// to PostgreSQL.
    payload: Option<Box<str>>,
    /// The payload parsed once, on the first `payload_contains` that needs it.
    parsed: OnceLock<Option<Json>>,
    /// `id: {txid}-{seq}\nevent: event\ndata: {json}\n\n`
    pub frame: Bytes,
}

impl TailEvent {
    pub fn from_row(row: &Row) -> Result<Self, super::problem::Problem> {
        let pos = Position {
            txid: row.get("txid"),
            seq: row.get("seq"),
        };
        let data = serde_json::to_string(&view(row)?).map_err(unavailable)?;
        let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
        Ok(TailEvent {
            pos,
            event_type: row.get("event_type"),
            source: row.get("source"),
            target: row.get("target"),
            session_id: row.get("session_id"),
            correlation_id: row.get("correlation_id"),
            timestamp: row.get("timestamp"),
            payload: (payload.len() <= TREE_BYTES).then(|| String::from_utf8_lossy(payload).into()),
            parsed: OnceLock::new(),
            frame: Bytes::from(format!(
                "id: {}\nevent: event\ndata: {data}\n\n",
                pos.sse_id()
            )),
        })
    }

    /// An event of the embedded store (its position `(0, seq)`).
    pub fn from_stored(
        e: &crate::store::sqlite::read::StoredEvent,
    ) -> Result<Self, super::problem::Problem> {
        let pos = Position {
            txid: 0,
            seq: e.seq,
        };
        let data = serde_json::to_string(&super::view::stored_view(e)?).map_err(unavailable)?;
        Ok(TailEvent {
            pos,
            event_type: e.event_type.clone(),
            source: e.source.clone(),
            target: e.target.clone(),
            session_id: e.session_id.clone(),
            correlation_id: e.correlation_id.clone(),
            timestamp: DateTime::<Utc>::from_timestamp_micros(e.timestamp).unwrap_or_default(),
            payload: (e.payload.len() <= TREE_BYTES).then(|| e.payload.as_str().into()),
            parsed: OnceLock::new(),
            frame: Bytes::from(format!(
                "id: {}\nevent: event\ndata: {data}\n\n",
                pos.sse_id()
            )),
        })
    }

    /// The payload as a tree, when it is small enough to be checked in memory.
    fn payload(&self) -> Option<&Json> {
        let text = self.payload.as_deref()?;
        self.parsed
            .get_or_init(|| contains::parse(text.as_bytes()).ok())
            .as_ref()
    }
}

/// What a stream's filter says of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
    /// Only `payload_contains` is left, and it cannot be judged in memory (a
    /// large payload, or a check past [`CONTAINMENT_STEPS`]): PostgreSQL judges.
    AskDatabase,
}

/// Every event with `after < position <= upto`, in position order.
#[derive(Debug)]
pub struct TailBatch {
    pub after: Position,
    pub upto: Position,
    pub events: Vec<TailEvent>,
}

/// The filters of `GET /events`, evaluated in memory.
#[derive(Debug)]
pub struct TailFilter {
    filters: Vec<(&'static str, String)>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    /// The pattern as jsonb holds it, and its text.
    payload_contains: Option<(Json, String)>,
}

impl TailFilter {
    pub fn new(q: &EventQuery) -> Self {
        TailFilter {
            filters: q.filters.clone(),
            start_time: q.start_time,
            end_time: q.end_time,
            // A pattern is a JSON object jsonb can hold (`model::query::containment`).
            payload_contains: q.payload_contains.as_ref().and_then(|v| {
                let text = v.to_string();
                contains::parse(text.as_bytes()).ok().map(|j| (j, text))
            }),
        }
    }

    /// Whether judging an event may cost more than a few comparisons (a payload
    /// filter): then the stream judges its batches off the HTTP workers.
    pub fn judges_payloads(&self) -> bool {
        self.payload_contains.is_some()
    }

    /// The `payload_contains` pattern as JSON text, for PostgreSQL.
    pub fn pattern_text(&self) -> Option<String> {
        self.payload_contains.as_ref().map(|(_, text)| text.clone())
    }

    pub fn judge(&self, e: &TailEvent) -> Verdict {
        let column = |name: &str| -> Option<&str> {
            match name {
                "event_type" => Some(&e.event_type),
                "source" => Some(&e.source),
                "target" => e.target.as_deref(),
                "session_id" => e.session_id.as_deref(),
                "correlation_id" => e.correlation_id.as_deref(),
                _ => None,
            }
        };
        let columns = self
            .filters
            .iter()
            .all(|(name, value)| column(name) == Some(value.as_str()))
            && self.start_time.is_none_or(|t| e.timestamp >= t)
            && self.end_time.is_none_or(|t| e.timestamp <= t);
        let Some((pattern, _)) = self.payload_contains.as_ref().filter(|_| columns) else {
            return if columns { Verdict::Yes } else { Verdict::No };
        };
        if e.payload.is_none() {
            return Verdict::AskDatabase;
        }
        let Some(doc) = e.payload() else {
            return Verdict::No;
        };
        let mut steps = CONTAINMENT_STEPS;
        match contains::contains_within(doc, pattern, &mut steps) {
            Some(true) => Verdict::Yes,
            Some(false) => Verdict::No,
            None => Verdict::AskDatabase,
        }
    }
}

/// Of `events` (each with the verdict AskDatabase), the positions whose payload
/// contains `pattern`, as PostgreSQL's `@>` says.
pub async fn contained_in_database(
    source: &TailSource,
    pattern: &str,
    events: &[&TailEvent],
) -> Result<Vec<Position>, super::problem::Problem> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let pool = match source {
        TailSource::Postgres(pool) => pool,
        TailSource::Sqlite(reader) => {
            let seqs: Vec<i64> = events.iter().map(|e| e.pos.seq).collect();
            let pattern = pattern.to_owned();
            let held = reader
                .read(move |c| crate::store::sqlite::read::containing(c, &seqs, &pattern))
                .await
                .map_err(unavailable)?;
            return Ok(held
                .into_iter()
                .map(|seq| Position { txid: 0, seq })
                .collect());
        }
    };
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.timestamp).collect();
    let txids: Vec<i64> = events.iter().map(|e| e.pos.txid).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.pos.seq).collect();
    let client = pool.get().await.map_err(unavailable)?;
    let rows = client
        .query(
            "SELECT e.txid, e.seq FROM unnest($1::timestamptz[], $2::int8[], $3::int8[]) AS k(t, x, s) \
             JOIN events e ON e.\"timestamp\" = k.t AND e.seq = k.s AND e.txid = k.x \
             WHERE e.payload @> $4::text::jsonb",
            &[&times, &txids, &seqs, &pattern],
        )
        .await
        .map_err(unavailable)?;
    Ok(rows
        .iter()
        .map(|r| Position {
            txid: r.get(0),
            seq: r.get(1),
        })
        .collect())
}

/// The newest readable position now. Below a horizon, which may dip below a
/// position read before (`db::horizon`): streams ask [`TailHub::head`], which
/// never goes back.
async fn head(source: &TailSource) -> Result<Position, super::problem::Problem> {
    head_quiet(source).await.map_err(unavailable)
}

async fn head_quiet(source: &TailSource) -> Result<Position, HeadError> {
    let pool = match source {
        TailSource::Postgres(pool) => pool,
        TailSource::Sqlite(reader) => {
            let seq = reader.read(crate::store::sqlite::read::newest_seq).await?;
            return Ok(Position { txid: 0, seq });
        }
    };
    let mut client = pool.get().await?;
    // One plan for every call: the poller asks every interval, and planning the
    // query over every partition each time would cost more than running it.
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
        .await?;
    let statement = tx
        .prepare_cached(&format!(
            "SELECT txid, seq FROM events WHERE txid < {HORIZON} ORDER BY txid DESC, seq DESC LIMIT 1"
        ))
        .await?;
    let row = tx.query_opt(&statement, &[]).await?;
    tx.commit().await?;
    Ok(row
        .map(|r| Position {
            txid: r.get(0),
            seq: r.get(1),
        })
        .unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Embedded(#[from] crate::store::sqlite::read::ReadError),
}

/// Reads events past `after` that are final (see the module's docs), the
/// filter's SQL applied, at most [`BATCH_EVENTS`] and [`BATCH_BYTES`], in
/// position order. The flag says whether a bound cut the read short (more may
/// follow).
///
/// With `upto`, only events up to it, and `upto` must be final already: a
/// position an earlier read returned, or a head. Every row at or before it is
/// then committed and visible, so that read asks no horizon. It must not: the
/// horizon can dip for a moment below a position read before it (a
/// transaction of another database that ended between this statement's
/// snapshot and its look at `pg_locks` is counted, as any that ended
/// meanwhile), and a read up to `upto` that the dip cut short would look
/// complete to a caller that goes on from `upto` (clean-clone run 7: a resumed
/// stream skipped two events that way).
pub async fn read_after(
    source: &TailSource,
    after: Position,
    upto: Option<Position>,
    filter: Option<&EventQuery>,
) -> Result<(Vec<TailEvent>, bool), super::problem::Problem> {
    let pool = match source {
        TailSource::Postgres(pool) => pool,
        TailSource::Sqlite(reader) => {
            let query = filter.map(|q| EventQuery {
                filters: q.filters.clone(),
                start_time: q.start_time,
                end_time: q.end_time,
                paging: q.paging,
                payload_contains: q.payload_contains.clone(),
            });
            let (stored, cut_short) = reader
                .read(move |c| {
                    crate::store::sqlite::read::after(
                        c,
                        after.seq,
                        upto.map(|u| u.seq),
                        query.as_ref(),
                        BATCH_EVENTS,
                        BATCH_BYTES,
                    )
                })
                .await
                .map_err(unavailable)?;
            let events = stored
                .iter()
                .map(TailEvent::from_stored)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((events, cut_short));
        }
    };
    let mut client = pool.get().await.map_err(unavailable)?;
    let mut params = SqlParams::default();
    let clause = match filter {
        Some(q) => q.conditions(&mut params),
        None => "TRUE".to_owned(),
    };
    let (txid, seq) = (params.push(after.txid), params.push(after.seq));
    let bound = match &upto {
        Some(u) => format!(
            "(txid, seq) <= ({}, {})",
            params.push(u.txid),
            params.push(u.seq)
        ),
        None => format!("txid < {HORIZON}"),
    };
    let sql = format!(
        "SELECT {COLUMNS}, txid FROM events WHERE {clause} AND (txid, seq) > ({txid}, {seq}) \
         AND {bound} ORDER BY txid, seq LIMIT {BATCH_EVENTS}"
    );
    let refs = params.all();
    // Without a filter (the poller), one reused plan: the same statement runs
    // every interval over every partition. A filter's plan is made per value.
    let tx = generic_plans(&mut client).await?;
    let rows = if filter.is_none() {
        let statement = reusable(&tx, &sql).await?;
        tx.query_raw(&statement, refs.iter().copied()).await
    } else {
        tx.query_raw(sql.as_str(), refs.iter().copied()).await
    }
    .map_err(unavailable)?;
    // Rows are read as they arrive and the read stops at BATCH_BYTES: a batch of
    // large events is never held whole (500 events of 100 kB would be 50 MB).
    futures::pin_mut!(rows);
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut cut_short = false;
    while let Some(row) = rows.try_next().await.map_err(unavailable)? {
        if bytes >= BATCH_BYTES {
            cut_short = true;
            break;
        }
        let e = TailEvent::from_row(&row)?;
        bytes += e.frame.len();
        events.push(e);
    }
    let cut_short = cut_short || events.len() as i64 >= BATCH_EVENTS;
    Ok((events, cut_short))
}

/// The broadcast side, shared by every stream.
#[derive(Clone, Debug)]
pub struct TailHub {
    tx: broadcast::Sender<Arc<TailBatch>>,
    newest: Newest,
    source: TailSource,
}

impl TailHub {
    /// Starts the poller; it stops with `stop`.
    pub fn start(source: TailSource, stop: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_BATCHES);
        let newest = Newest::default();
        let hub = TailHub {
            tx: tx.clone(),
            newest: newest.clone(),
            source: source.clone(),
        };
        tokio::spawn(poll(source, tx, newest, stop));
        hub
    }

    /// Where the tail reads (a stream's catch-ups read there too).
    pub fn source(&self) -> &TailSource {
        &self.source
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TailBatch>> {
        self.tx.subscribe()
    }

    /// The newest final position: the head read now, or a newer one read before
    /// (the head can dip for a moment, see [`read_after`]; finality cannot).
    pub async fn head(&self) -> Result<Position, super::problem::Problem> {
        Ok(self.newest.raise(head(&self.source).await?))
    }
}

/// The newest position this instance has read below a horizon: it only grows.
#[derive(Clone, Debug, Default)]
struct Newest(Arc<std::sync::Mutex<Position>>);

impl Newest {
    /// Raises the newest position to `seen` if it is newer; returns the newest.
    fn raise(&self, seen: Position) -> Position {
        let mut newest = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *newest = (*newest).max(seen);
        *newest
    }
}

/// The head, for the poller (which logs failures itself, once per outage).
async fn max_position(source: &TailSource) -> Result<Position, String> {
    head_quiet(source)
        .await
        .map_err(|e| crate::telemetry::error_chain(&e))
}

/// The poller. It follows the head even while nobody listens (one index probe
/// per interval), so a stream, which reads the head after subscribing, is never
/// behind the first batch it receives by more than it catches up from the
/// database. Its first position is broadcast as an empty batch for the same reason.
async fn poll(
    pool: TailSource,
    tx: broadcast::Sender<Arc<TailBatch>>,
    newest: Newest,
    stop: CancellationToken,
) {
    let mut last: Option<Position> = None;
    let mut failing = false;
    let mut full = false;
    loop {
        if !full {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
        full = false;
        let result = match last {
            Some(after) if tx.receiver_count() > 0 => read_after_quiet(&pool, after).await,
            _ => max_position(&pool).await.map(|h| {
                newest.raise(h);
                if last.is_none() {
                    // The first position: streams that subscribed before it
                    // learn where the batches will start, and catch up to it.
                    let _ = tx.send(Arc::new(TailBatch {
                        after: h,
                        upto: h,
                        events: Vec::new(),
                    }));
                }
                if last != Some(h) {
                    tracing::debug!(?last, head = ?h, "live tail: the poller follows the head");
                }
                last = Some(h);
                (Vec::new(), false)
            }),
        };
        match result {
            Ok((events, cut_short)) => {
                if failing {
                    tracing::info!("live tail reading again");
                    failing = false;
                }
                if let (Some(after), Some(latest)) = (last, events.last()) {
                    let upto = latest.pos;
                    tracing::debug!(?after, ?upto, events = events.len(), "live tail: a batch");
                    newest.raise(upto);
                    full = cut_short;
                    last = Some(upto);
                    let _ = tx.send(Arc::new(TailBatch {
                        after,
                        upto,
                        events,
                    }));
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "live tail cannot read new events; retrying");
                    failing = true;
                }
            }
        }
    }
}

/// [`read_after`] without a filter, its failure returned rather than logged.
async fn read_after_quiet(
    pool: &TailSource,
    after: Position,
) -> Result<(Vec<TailEvent>, bool), String> {
    read_after(pool, after, None, None)
        .await
        .map_err(|p| p.detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_streams_document_filter_is_jsonbs_containment() {
        let doc =
            br#"{"a": {"b": [1, 2, {"c": "x"}], "n": 3}, "s": "t", "big": 1.00000000000000001}"#;
        for (pattern, expected) in [
            (json!({}), true),
            (json!({"s": "t"}), true),
            (json!({"a": {"n": 3.0}}), true),
            (json!({"a": {"b": [2]}}), true),
            (json!({"a": {"b": [{"c": "x"}, 1]}}), true),
            (json!({"a": {"b": 1}}), false),
            (json!({"a": {"b": [3]}}), false),
            (json!({"s": "u"}), false),
            (json!({"missing": null}), false),
            // numeric, not f64: 1.00000000000000001 is not 1.
            (json!({"big": 1}), false),
        ] {
            let q = EventQuery {
                payload_contains: Some(pattern.clone()),
                ..EventQuery::default()
            };
            let e = TailEvent {
                pos: Position::default(),
                event_type: "t".into(),
                source: "s".into(),
                target: None,
                session_id: None,
                correlation_id: None,
                timestamp: Utc::now(),
                payload: Some(String::from_utf8_lossy(doc).into()),
                parsed: OnceLock::new(),
                frame: Bytes::new(),
            };
            let want = if expected { Verdict::Yes } else { Verdict::No };
            assert_eq!(TailFilter::new(&q).judge(&e), want, "{pattern}");
        }
    }
}
