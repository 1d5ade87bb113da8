//! The embedded store's reads: a small pool of read-only connections, each
//! statement run on a blocking thread and bounded in time, and the queries the
//! API asks (pages of events, one event).
//!
//! One table, no partitions: a page is one indexed walk newest first, with the
//! cursor a row-value bound on the time index; `total` is counted up to the
//! API's cap, then estimated from the time the counted matches span.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, ToSql};
use tokio::sync::Semaphore;

use super::{Role, Sqlite, SqliteError};
use crate::model::query::{Cursor, EventQuery};

/// No read runs longer than this (the API's statement timeout on PostgreSQL).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Matches counted past the exact cap before the total is extrapolated: a
/// count of 100,000 index entries took 8 ms of a 10 ms page at 1M events
/// (loadtest/query, STORE=sqlite); 10,000 take under 1 ms, and the estimate
/// that follows is as good as the matches are evenly spread in time.
const ESTIMATE_COUNT: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no read connection was free within {0:?}")]
    Busy(Duration),
    #[error("the read ran longer than {0:?} and was stopped")]
    TimedOut(Duration),
    #[error(transparent)]
    Open(#[from] SqliteError),
    #[error("embedded store read failed")]
    Sqlite(#[source] rusqlite::Error),
    #[error("embedded store read thread failed")]
    Join(#[source] tokio::task::JoinError),
}

/// The API's read connections on the file.
#[derive(Clone)]
pub struct Reader {
    store: Sqlite,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    size: usize,
}

impl Reader {
    pub fn new(store: Sqlite, size: usize) -> Self {
        Reader {
            store,
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(size.max(1))),
            size: size.max(1),
        }
    }

    /// (connections open, connections in use, pool size), for the metrics.
    pub fn status(&self) -> (usize, usize, usize) {
        let idle = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        let in_use = self.size - self.permits.available_permits();
        (idle + in_use, in_use, self.size)
    }

    /// Runs `f` on a read connection on a blocking thread, stopped after
    /// [`READ_TIMEOUT`].
    pub async fn read<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let permit = tokio::time::timeout(POOL_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ReadError::Busy(POOL_WAIT))?
            .expect("the semaphore is never closed");
        let idle = self.idle.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = match idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(c) => c,
                None => open_reader(&store)?,
            };
            let started = Instant::now();
            conn.progress_handler(10_000, Some(move || started.elapsed() > READ_TIMEOUT))
                .map_err(ReadError::Sqlite)?;
            let result = f(&conn);
            conn.progress_handler(0, None::<fn() -> bool>)
                .map_err(ReadError::Sqlite)?;
            if let Ok(mut v) = idle.lock() {
                v.push(conn);
            }
            result.map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::OperationInterrupted) => {
                    ReadError::TimedOut(READ_TIMEOUT)
                }
                _ => ReadError::Sqlite(e),
            })
        })
        .await
        .map_err(ReadError::Join)?
    }
}

/// A read connection with the functions the queries use.
fn open_reader(store: &Sqlite) -> Result<Connection, SqliteError> {
    let conn = store.connect(Role::Read)?;
    with_functions(&conn).map_err(|source| SqliteError::Open {
        path: store.path().display().to_string(),
        source,
    })?;
    Ok(conn)
}

/// Gives `conn` the SQL functions the event queries use (`jsonb_contains`,
/// for `payload_contains`).
pub fn with_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "jsonb_contains",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let failed =
                |e: Box<dyn std::error::Error + Send + Sync>| rusqlite::Error::UserFunctionError(e);
            let pattern = ctx.get_or_create_aux(1, |v| {
                let text = v.as_bytes().map_err(|e| failed(Box::new(e)))?;
                crate::store::contains::Pattern::new(text).map_err(|e| failed(Box::new(e)))
            })?;
            let doc = ctx.get_raw(0).as_bytes().map_err(|e| failed(Box::new(e)))?;
            Ok(pattern.matches(doc))
        },
    )
}

/// An event as stored, with what the API shows of it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub target: Option<String>,
    pub routing_key: String,
    /// Microseconds since the epoch, UTC.
    pub timestamp: i64,
    pub stored_at: i64,
    /// jsonb's canonical text.
    pub payload: String,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub storage_latency_ms: Option<f64>,
    /// The envelope without its payload and the member the payload came from
    /// (only when asked for: the raw view).
    pub envelope: Option<(String, Option<String>)>,
}

const COLUMNS: &str = "seq, id, event_type, source, target, routing_key, \"timestamp\", stored_at, \
    payload, session_id, correlation_id, storage_latency_ms";

fn stored(row: &rusqlite::Row<'_>, with_envelope: bool) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        id: row.get(1)?,
        event_type: row.get(2)?,
        source: row.get(3)?,
        target: row.get(4)?,
        routing_key: row.get(5)?,
        timestamp: row.get(6)?,
        stored_at: row.get(7)?,
        payload: row.get(8)?,
        session_id: row.get(9)?,
        correlation_id: row.get(10)?,
        storage_latency_ms: row.get(11)?,
        envelope: if with_envelope {
            Some((row.get(12)?, row.get(13)?))
        } else {
            None
        },
    })
}

/// A page of `GET /events`.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    pub has_more: bool,
    pub next_cursor: Option<Cursor>,
    pub total: i64,
    pub total_is_estimate: bool,
}

/// What bounds a page, as the API sets it.
#[derive(Debug, Clone, Copy)]
pub struct PageBounds {
    /// `total` is exact up to this many matches.
    pub exact_up_to: i64,
    /// Payload bytes a page holds at most (always at least one event), and what
    /// each event counts beside its payload.
    pub max_bytes: usize,
    pub overhead_bytes: usize,
}

/// A WHERE clause being built: its conditions, each `?` numbered as its
/// parameter is pushed.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    params: Vec<Box<dyn ToSql + Send>>,
}

impl Where {
    /// Adds `clause`, whose `?` stands for `value`.
    fn and(&mut self, clause: &str, value: impl ToSql + Send + 'static) {
        self.params.push(Box::new(value));
        let n = format!("?{}", self.params.len());
        self.clauses.push(clause.replace('?', &n));
    }

    /// The conditions joined (`1` for none) and their parameters.
    fn finish(self) -> (String, Vec<Box<dyn ToSql + Send>>) {
        let clause = if self.clauses.is_empty() {
            "1".to_owned()
        } else {
            self.clauses.join(" AND ")
        };
        (clause, self.params)
    }
}

/// Borrows boxed parameters as rusqlite takes them.
pub(super) fn refs(params: &[Box<dyn ToSql + Send>]) -> Vec<&dyn ToSql> {
    params.iter().map(|p| p.as_ref() as &dyn ToSql).collect()
}

/// `clause` narrowed to the rows past `c` in the (`time`, seq) order (`cmp`:
/// `<` walking newest first, `>` oldest first), its two values pushed to
/// `params`.
pub(super) fn past(
    clause: &str,
    params: &mut Vec<Box<dyn ToSql + Send>>,
    time: &str,
    cmp: &str,
    c: Cursor,
) -> String {
    params.push(Box::new(c.timestamp_micros));
    params.push(Box::new(c.seq));
    let (t, s) = (params.len() - 1, params.len());
    format!("{clause} AND ({time}, seq) {cmp} (?{t}, ?{s})")
}

/// The WHERE clause of `q` (without paging) and its parameters.
pub(super) fn conditions(q: &EventQuery) -> (String, Vec<Box<dyn ToSql + Send>>) {
    let mut w = Where::default();
    for (name, value) in &q.filters {
        w.and(&format!("{name} = ?"), value.clone());
    }
    if let Some(doc) = &q.payload_contains {
        w.and("jsonb_contains(payload, ?)", doc.to_string());
    }
    if let Some(t) = q.start_time {
        w.and("\"timestamp\" >= ?", t.timestamp_micros());
    }
    if let Some(t) = q.end_time {
        w.and("\"timestamp\" <= ?", t.timestamp_micros());
    }
    w.finish()
}

/// Which way a page walks the (time, seq) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `GET /events`: newest first.
    NewestFirst,
    /// The timelines: oldest first.
    OldestFirst,
}

/// A page of the rows `filter` selects, in `order`, from the cursor or offset:
/// at most `limit` rows and `max_bytes` of payload (always one), `has_more`
/// exact (one row past the page is read, never held).
struct Walked {
    events: Vec<StoredEvent>,
    has_more: bool,
    next_cursor: Option<Cursor>,
}

fn walk(
    conn: &Connection,
    filter: &str,
    params: &mut Vec<Box<dyn ToSql + Send>>,
    order: Order,
    paging: &crate::model::query::Paging,
    bounds: PageBounds,
) -> rusqlite::Result<Walked> {
    let (cmp, dir) = match order {
        Order::NewestFirst => ("<", "DESC"),
        Order::OldestFirst => (">", "ASC"),
    };
    let mut clause = filter.to_owned();
    if let Some(c) = paging.cursor {
        clause = past(&clause, params, "\"timestamp\"", cmp, c);
    }
    let limit = paging.limit;
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE {clause} ORDER BY \"timestamp\" {dir}, seq {dir} LIMIT {} OFFSET {}",
        limit + 1,
        paging.offset
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let refs = refs(params);
    let rows = statement.query(&refs[..])?;
    let (events, has_more, next_cursor) = take_page(
        rows,
        limit,
        bounds,
        |r| stored(r, false),
        |e| (e.payload.len(), e.timestamp, e.seq),
    )?;
    Ok(Walked {
        events,
        has_more,
        next_cursor,
    })
}

/// The rows of a page from a query that asked for `limit + 1`: at most `limit`
/// and `bounds.max_bytes` (each row's size plus the overhead; always one),
/// whether a row was left (read, never held), and then the cursor after the
/// last row. `sized` gives a row's (size, time, seq).
fn take_page<T>(
    mut rows: rusqlite::Rows<'_>,
    limit: i64,
    bounds: PageBounds,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    sized: impl Fn(&T) -> (usize, i64, i64),
) -> rusqlite::Result<(Vec<T>, bool, Option<Cursor>)> {
    let mut page = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        let item = read(row)?;
        let n = sized(&item).0 + bounds.overhead_bytes;
        if page.len() as i64 == limit || (!page.is_empty() && bytes + n > bounds.max_bytes) {
            let next = page.last().map(|last| {
                let (_, timestamp_micros, seq) = sized(last);
                Cursor {
                    timestamp_micros,
                    seq,
                }
            });
            return Ok((page, true, next));
        }
        bytes += n;
        page.push(item);
    }
    Ok((page, false, None))
}

/// Rows one `payload_contains` request examines at most, newest first from
/// where its page starts (and, for its total, from the newest): no index
/// answers containment here, so this bounds each request's work
/// (docs/embedded-store.md states the cost). A page that meets no more
/// matches within it ends early, with `has_more` and a cursor past the last
/// row examined, where the next page goes on.
pub const CONTAINS_SCAN_ROWS: usize = 20_000;

/// What a bounded containment scan saw.
#[derive(Default)]
struct Scanned {
    examined: usize,
    matched: i64,
    /// The last row examined.
    last: Option<Cursor>,
}

impl Scanned {
    fn window_full(&self) -> bool {
        self.examined == CONTAINS_SCAN_ROWS
    }
}

/// Walks the rows `clause` selects (a cursor, if any, in it: [`past`]), newest
/// first, at most [`CONTAINS_SCAN_ROWS`]; `on_match` gets each row whose payload
/// contains `pattern` and the matches so far, and says whether to go on.
fn scan_containing(
    conn: &Connection,
    clause: &str,
    params: &[Box<dyn ToSql + Send>],
    pattern: &crate::store::contains::Pattern,
    mut on_match: impl FnMut(&rusqlite::Row<'_>, i64) -> rusqlite::Result<bool>,
) -> rusqlite::Result<Scanned> {
    let refs = refs(params);
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE {clause} \
         ORDER BY \"timestamp\" DESC, seq DESC LIMIT {CONTAINS_SCAN_ROWS}"
    ))?;
    let mut rows = statement.query(&refs[..])?;
    let mut seen = Scanned::default();
    while let Some(row) = rows.next()? {
        seen.examined += 1;
        seen.last = Some(Cursor {
            timestamp_micros: row.get(6)?,
            seq: row.get(0)?,
        });
        let payload = row.get_ref(8)?.as_bytes()?;
        if !pattern.matches(payload) {
            continue;
        }
        seen.matched += 1;
        if !on_match(row, seen.matched)? {
            break;
        }
    }
    Ok(seen)
}

/// One page of `q` with `payload_contains`, newest first, by a bounded scan
/// (see [`CONTAINS_SCAN_ROWS`]), and its total: exact while every match was
/// seen and no more than the exact cap; else extrapolated from the share of
/// rows that matched, over the rows the other filters select.
fn contains_page(
    conn: &Connection,
    q: &EventQuery,
    bounds: PageBounds,
) -> rusqlite::Result<EventPage> {
    let doc = q
        .payload_contains
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_default();
    let pattern = crate::store::contains::Pattern::new(doc.as_bytes())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let tx = conn.unchecked_transaction()?;
    let mut others = q.clone();
    others.payload_contains = None;
    let (filter, params) = conditions(&others);
    // The page's scan starts past its cursor; the count and the total, from the top.
    let (mut from_cursor, mut cursor_params) = conditions(&others);
    if let Some(c) = q.paging.cursor {
        from_cursor = past(&from_cursor, &mut cursor_params, "\"timestamp\"", "<", c);
    }
    let (limit, offset, cap) = (q.paging.limit, q.paging.offset, bounds.exact_up_to);
    let from_top = q.paging.cursor.is_none();
    let (mut events, mut bytes) = (Vec::new(), 0usize);
    let mut closed: Option<Option<Cursor>> = None;
    let page_scan = scan_containing(&tx, &from_cursor, &cursor_params, &pattern, |row, n| {
        if n <= offset {
            return Ok(true);
        }
        if closed.is_none() {
            let e = stored(row, false)?;
            let size = e.payload.len() + bounds.overhead_bytes;
            if events.len() as i64 == limit
                || (!events.is_empty() && bytes + size > bounds.max_bytes)
            {
                closed = Some(events.last().map(|l: &StoredEvent| Cursor {
                    timestamp_micros: l.timestamp,
                    seq: l.seq,
                }));
            } else {
                bytes += size;
                events.push(e);
                return Ok(true);
            }
        }
        // The page is full: from the newest, go on counting for the total.
        Ok(from_top && n <= offset + cap)
    })?;
    let (has_more, next_cursor) = match closed {
        Some(cursor) => (true, cursor),
        // No more matches within the rows examined: go on past them.
        None if page_scan.window_full() => (true, page_scan.last),
        None => (false, None),
    };
    let counted = if from_top {
        page_scan
    } else {
        scan_containing(&tx, &filter, &params, &pattern, |_, n| Ok(n <= cap))?
    };
    let (total, total_is_estimate) = if !counted.window_full() && counted.matched <= cap + offset {
        (counted.matched, false)
    } else {
        let others_total = total(&tx, &filter, &params, cap)?.0;
        let share = counted.matched as f64 / counted.examined.max(1) as f64;
        (
            ((share * others_total as f64).round() as i64).max(counted.matched),
            true,
        )
    };
    tx.finish()?;
    Ok(EventPage {
        events,
        has_more,
        next_cursor,
        total,
        total_is_estimate,
    })
}

/// One page of `q`, newest first, and its total.
pub fn page(conn: &Connection, q: &EventQuery, bounds: PageBounds) -> rusqlite::Result<EventPage> {
    if q.payload_contains.is_some() {
        return contains_page(conn, q, bounds);
    }
    // One snapshot for the page and its count.
    let tx = conn.unchecked_transaction()?;
    let (filter, mut params) = conditions(q);
    let n_filter = params.len();
    let Walked {
        events,
        has_more,
        next_cursor,
    } = walk(
        &tx,
        &filter,
        &mut params,
        Order::NewestFirst,
        &q.paging,
        bounds,
    )?;
    // The page is the whole of what matches: its length is the total.
    let whole =
        q.paging.cursor.is_none() && !has_more && (q.paging.offset == 0 || !events.is_empty());
    let (total, total_is_estimate) = if whole {
        (q.paging.offset + events.len() as i64, false)
    } else {
        let exact_at_any_size = matches!(q.filters.as_slice(), [("session_id", _)])
            && q.payload_contains.is_none()
            && q.start_time.is_none()
            && q.end_time.is_none();
        let cap = if exact_at_any_size {
            i64::MAX - 1
        } else {
            bounds.exact_up_to
        };
        total(&tx, &filter, &params[..n_filter], cap)?
    };
    tx.finish()?;
    Ok(EventPage {
        events,
        has_more,
        next_cursor,
        total,
        total_is_estimate,
    })
}

/// One session's (or correlation's) events, oldest first, and its summary.
#[derive(Debug)]
pub struct TimelinePage {
    /// (event type, source, events), every event of the set counted.
    pub groups: Vec<(String, String, i64)>,
    /// The oldest and newest event's time (µs).
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub events: Vec<StoredEvent>,
    pub has_more: bool,
    pub next_cursor: Option<Cursor>,
}

/// The timeline of `column = value` (`session_id` or `correlation_id`): its
/// summary from every one of its rows (through the column's index), and a page.
pub fn timeline(
    conn: &Connection,
    column: &'static str,
    value: &str,
    paging: &crate::model::query::Paging,
    bounds: PageBounds,
) -> rusqlite::Result<TimelinePage> {
    debug_assert!(matches!(column, "session_id" | "correlation_id"));
    let tx = conn.unchecked_transaction()?;
    let groups = tx
        .prepare_cached(&format!(
            "SELECT event_type, source, count(*) FROM events WHERE {column} = ?1 GROUP BY event_type, source"
        ))?
        .query_map([value], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let (first, last) = tx
        .prepare_cached(&format!(
            "SELECT min(\"timestamp\"), max(\"timestamp\") FROM events WHERE {column} = ?1"
        ))?
        .query_row([value], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut params: Vec<Box<dyn ToSql + Send>> = vec![Box::new(value.to_owned())];
    let Walked {
        events,
        has_more,
        next_cursor,
    } = walk(
        &tx,
        &format!("{column} = ?1"),
        &mut params,
        Order::OldestFirst,
        paging,
        bounds,
    )?;
    tx.finish()?;
    Ok(TimelinePage {
        groups,
        first,
        last,
        events,
        has_more,
        next_cursor,
    })
}

/// The matches of `filter`: counted up to `cap` (exact), then up to
/// [`ESTIMATE_COUNT`] more, and past those extrapolated by time (the counted
/// newest matches span some time back from the newest; the rest are assumed
/// as dense over the remaining span).
fn total(
    conn: &Connection,
    filter: &str,
    params: &[Box<dyn ToSql + Send>],
    cap: i64,
) -> rusqlite::Result<(i64, bool)> {
    let refs = refs(params);
    let counted: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE {filter} LIMIT {})",
            cap.saturating_add(1)
        ))?
        .query_row(&refs[..], |r| r.get(0))?;
    if counted <= cap {
        return Ok((counted, false));
    }
    let far = cap.max(ESTIMATE_COUNT);
    let (counted, oldest_counted): (i64, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT count(*), min(\"timestamp\") FROM (SELECT \"timestamp\" FROM events WHERE {filter} \
             ORDER BY \"timestamp\" DESC, seq DESC LIMIT {})",
            far.saturating_add(1)
        ))?
        .query_row(&refs[..], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if counted <= far {
        return Ok((counted, true));
    }
    let span: (Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT (SELECT max(\"timestamp\") FROM events WHERE {filter}), \
                    (SELECT min(\"timestamp\") FROM events WHERE {filter})"
        ))?
        .query_row(&refs[..], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let estimate = match (span, oldest_counted) {
        ((Some(newest), Some(oldest)), Some(counted_to)) if newest > counted_to => {
            let scale = (newest - oldest) as f64 / (newest - counted_to) as f64;
            ((counted as f64) * scale).round() as i64
        }
        _ => counted,
    };
    Ok((estimate.max(counted), true))
}

/// Where the event with this id is (when sources share an id, the first
/// stored) and the bytes its answer reads: the payload, and the envelope when
/// `raw` (`octet_length` reads a value's size without its content).
fn one_place(conn: &Connection, id: &str, raw: bool) -> rusqlite::Result<Option<(i64, i64)>> {
    let size = if raw {
        "octet_length(payload) + octet_length(envelope)"
    } else {
        "octet_length(payload)"
    };
    conn.prepare_cached(&format!(
        "SELECT seq, {size} FROM events WHERE id = ?1 ORDER BY seq LIMIT 1"
    ))?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// A single row asked for by the API: the row when it is at most the
/// large-read size, else only its `seq` (then read through the shared large
/// reads, `api::large`).
pub enum Single<T> {
    Small(T),
    Large(i64),
}

/// The event with this id (see [`one_place`]), whole when it reads at most
/// `limit` bytes: one trip to the reader for the common case.
pub fn one_or_place(
    conn: &Connection,
    id: &str,
    raw: bool,
    limit: i64,
) -> rusqlite::Result<Option<Single<StoredEvent>>> {
    Ok(match one_place(conn, id, raw)? {
        Some((seq, size)) if size <= limit => one_at(conn, seq, raw)?.map(Single::Small),
        Some((seq, _)) => Some(Single::Large(seq)),
        None => None,
    })
}

/// The event at `seq`, with its envelope when `raw`.
pub fn one_at(conn: &Connection, seq: i64, raw: bool) -> rusqlite::Result<Option<StoredEvent>> {
    let extra = if raw {
        ", envelope, payload_member"
    } else {
        ""
    };
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS}{extra} FROM events WHERE seq = ?1"
    ))?
    .query_row([seq], |row| stored(row, raw))
    .optional()
}

/// The filters of `GET /dead-letters`.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterFilter {
    pub reason: Option<&'static str>,
    pub routing_key: Option<String>,
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    pub end: Option<chrono::DateTime<chrono::Utc>>,
}

/// A dead letter as stored (its body only when asked for one).
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub seq: i64,
    pub received_at: i64,
    pub stored_at: i64,
    pub exchange: String,
    pub routing_key: String,
    pub reason: String,
    pub detail: String,
    pub properties: String,
    pub body_bytes: i64,
    pub body: Option<Vec<u8>>,
}

const DEAD_LETTER_COLUMNS: &str =
    "seq, received_at, stored_at, exchange, routing_key, reason, detail, properties, length(body)";

fn stored_dead_letter(
    row: &rusqlite::Row<'_>,
    with_body: bool,
) -> rusqlite::Result<StoredDeadLetter> {
    Ok(StoredDeadLetter {
        seq: row.get(0)?,
        received_at: row.get(1)?,
        stored_at: row.get(2)?,
        exchange: row.get(3)?,
        routing_key: row.get(4)?,
        reason: row.get(5)?,
        detail: row.get(6)?,
        properties: row.get(7)?,
        body_bytes: row.get(8)?,
        body: if with_body { Some(row.get(9)?) } else { None },
    })
}

/// A page of dead letters, newest first.
#[derive(Debug)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<StoredDeadLetter>,
    pub has_more: bool,
    pub next_cursor: Option<Cursor>,
}

/// One page of dead letters matching `f`, newest received first (ties by
/// `seq`), from the cursor: at most `limit` and the page's bytes.
pub fn dead_letters(
    conn: &Connection,
    f: &DeadLetterFilter,
    paging: &crate::model::query::Paging,
    bounds: PageBounds,
) -> rusqlite::Result<DeadLetterPage> {
    let mut w = Where::default();
    if let Some(r) = f.reason {
        w.and("reason = ?", r);
    }
    if let Some(k) = &f.routing_key {
        w.and("routing_key = ?", k.clone());
    }
    if let Some(t) = f.start {
        w.and("received_at >= ?", t.timestamp_micros());
    }
    if let Some(t) = f.end {
        w.and("received_at <= ?", t.timestamp_micros());
    }
    let (mut clause, mut params) = w.finish();
    if let Some(c) = paging.cursor {
        clause = past(&clause, &mut params, "received_at", "<", c);
    }
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letter WHERE {clause} \
         ORDER BY received_at DESC, seq DESC LIMIT {} OFFSET {}",
        paging.limit + 1,
        paging.offset
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let refs = refs(&params);
    let rows = statement.query(&refs[..])?;
    let (dead_letters, has_more, next_cursor) = take_page(
        rows,
        paging.limit,
        bounds,
        |r| stored_dead_letter(r, false),
        |d| (d.properties.len() + d.detail.len(), d.received_at, d.seq),
    )?;
    Ok(DeadLetterPage {
        dead_letters,
        has_more,
        next_cursor,
    })
}

/// The size of a dead letter's body as received, without reading it.
fn dead_letter_size(conn: &Connection, seq: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT octet_length(body) FROM dead_letter WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()
}

/// The dead letter at `seq`, whole when its body is at most `limit` bytes.
pub fn dead_letter_or_place(
    conn: &Connection,
    seq: i64,
    limit: i64,
) -> rusqlite::Result<Option<Single<StoredDeadLetter>>> {
    Ok(match dead_letter_size(conn, seq)? {
        Some(size) if size <= limit => dead_letter(conn, seq)?.map(Single::Small),
        Some(_) => Some(Single::Large(seq)),
        None => None,
    })
}

/// One dead letter with its body.
pub fn dead_letter(conn: &Connection, seq: i64) -> rusqlite::Result<Option<StoredDeadLetter>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DEAD_LETTER_COLUMNS}, body FROM dead_letter WHERE seq = ?1"
    ))?;
    let mut rows = statement.query([seq])?;
    match rows.next()? {
        Some(row) => Ok(Some(stored_dead_letter(row, true)?)),
        None => Ok(None),
    }
}

/// The places of the events `id` (of `source`, when given) names; two at most.
pub fn places_of(
    conn: &Connection,
    id: &str,
    source: Option<&str>,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut st = conn.prepare_cached(
        "SELECT seq FROM events WHERE id = ?1 AND (?2 IS NULL OR source = ?2) LIMIT 2",
    )?;
    st.query_map(rusqlite::params![id, source], |r| Ok((0, r.get(0)?)))?
        .collect()
}

/// The newest event's `seq` (0 when there is none): the live tail's head. One
/// writer commits in `seq` order, so every row at or below it is committed.
pub fn newest_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
        .query_row([], |r| r.get(0))
}

/// The events past `after` (and at most `upto`), `q`'s filters applied, in
/// `seq` order: at most `limit` events and, past the first, `max_bytes` of
/// payload. The flag says whether a bound cut the read short.
pub fn after(
    conn: &Connection,
    after: i64,
    upto: Option<i64>,
    q: Option<&EventQuery>,
    limit: i64,
    max_bytes: usize,
) -> rusqlite::Result<(Vec<StoredEvent>, bool)> {
    let (filter, mut params) = match q {
        Some(q) => conditions(q),
        None => ("1".to_owned(), Vec::new()),
    };
    params.push(Box::new(after));
    let mut clause = format!("{filter} AND seq > ?{}", params.len());
    if let Some(u) = upto {
        params.push(Box::new(u));
        clause = format!("{clause} AND seq <= ?{}", params.len());
    }
    let sql = format!("SELECT {COLUMNS} FROM events WHERE {clause} ORDER BY seq LIMIT {limit}");
    let mut statement = conn.prepare_cached(&sql)?;
    let refs = refs(&params);
    let mut rows = statement.query(&refs[..])?;
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut cut_short = false;
    while let Some(row) = rows.next()? {
        if bytes >= max_bytes {
            cut_short = true;
            break;
        }
        let e = stored(row, false)?;
        bytes += e.payload.len();
        events.push(e);
    }
    let cut_short = cut_short || events.len() as i64 >= limit;
    Ok((events, cut_short))
}

/// Of the events at `seqs`, those whose payload contains `pattern` (jsonb's
/// `@>`, `super::contains`).
pub fn containing(conn: &Connection, seqs: &[i64], pattern: &str) -> rusqlite::Result<Vec<i64>> {
    let pattern = crate::store::contains::Pattern::new(pattern.as_bytes())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut statement = conn.prepare_cached("SELECT payload FROM events WHERE seq = ?1")?;
    let mut held = Vec::new();
    for &seq in seqs {
        let payload: Option<String> = statement.query_row([seq], |r| r.get(0)).optional()?;
        if payload.is_some_and(|p| pattern.matches(p.as_bytes())) {
            held.push(seq);
        }
    }
    Ok(held)
}
