//! `GET /events`, `GET /events/{id}` and `GET /events/{id}/raw`: the original REST
//! contract, served from the read pool.
//!
//! Every parameter is validated before any query runs; a bad one gets a 400
//! problem that names it. Ordering is newest `timestamp` first, ties broken by
//! `seq` (newest stored first), so offsets and cursors are stable.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{TryStreamExt, pin_mut};
use postgres_types::{FromSql, Type, accepts};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement, ToStatement};

use super::problem::Problem;
use super::{ApiState, large};
use crate::source::decode::{hex, parse_time};

pub const MAX_LIMIT: i64 = 1000;
pub(crate) const DEFAULT_LIMIT: i64 = 100;
/// Up to this many matching rows `total` is an exact count; past it, the planner's
/// estimate (and `total_is_estimate: true`), so no request ever counts the table.
pub const EXACT_TOTAL_UP_TO: i64 = 1_000;
/// A planner estimate above this is taken as "past the cap" without counting: the
/// count would only confirm it, and for a broad `payload_contains` it is the costly part.
const ESTIMATE_TRUSTED_ABOVE: i64 = 10 * EXACT_TOTAL_UP_TO;
/// The most payload a page (or a live-tail chunk) holds. A page stops short of
/// `limit` rather than pass it, so a page of large events cannot exhaust memory;
/// `has_more` and `next_cursor` stay exact.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// Counted per event beside its payload, for its other fields.
const EVENT_OVERHEAD_BYTES: usize = 512;

pub(crate) const COLUMNS: &str = "seq, id, event_type, source, target, routing_key, \"timestamp\", stored_at, payload, session_id, correlation_id, storage_latency_ms";

/// One event as the API shows it (the contract's fields, in its order).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub target: Option<String>,
    pub routing_key: String,
    pub timestamp: String,
    pub stored_at: String,
    /// The payload as stored, passed through without being parsed into a tree.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub storage_latency_ms: Option<f64>,
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A `json` or `jsonb` column as its JSON text, borrowed from the row.
pub(crate) struct JsonText<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary form is a version byte (1) and the text.
            match raw.split_first() {
                Some((1, text)) => Ok(JsonText(text)),
                _ => Err("unsupported jsonb version".into()),
            }
        } else {
            Ok(JsonText(raw))
        }
    }

    accepts!(JSON, JSONB);
}

pub(crate) fn view(row: &Row) -> Result<EventView, Problem> {
    let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
    let payload = std::str::from_utf8(payload)
        .map_err(unavailable)
        .and_then(|text| RawValue::from_string(text.to_owned()).map_err(unavailable))?;
    Ok(EventView {
        id: row.get("id"),
        event_type: row.get("event_type"),
        source: row.get("source"),
        target: row.get("target"),
        routing_key: row.get("routing_key"),
        timestamp: rfc3339(row.get("timestamp")),
        stored_at: rfc3339(row.get("stored_at")),
        payload,
        session_id: row.get("session_id"),
        correlation_id: row.get("correlation_id"),
        storage_latency_ms: row.get("storage_latency_ms"),
    })
}

/// Events as the API shows them.
pub(crate) fn views(rows: &[Row]) -> Result<Vec<EventView>, Problem> {
    rows.iter().map(view).collect()
}

/// A position in the (timestamp DESC, seq DESC) order, opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_micros: i64,
    pub seq: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.timestamp_micros.to_be_bytes());
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        hex(&bytes)
    }

    /// The cursor's timestamp. Stored times lie in years 1 to 9999 (decode's
    /// rule), so a time outside them is in a cursor this API did not make.
    pub(crate) fn time(&self) -> Result<DateTime<Utc>, Problem> {
        use chrono::Datelike;
        DateTime::<Utc>::from_timestamp_micros(self.timestamp_micros)
            .filter(|t| (1..=9999).contains(&t.year()))
            .ok_or_else(|| Problem::bad_parameter("cursor", "not a cursor this API returned"))
    }

    pub fn decode(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Cursor {
            timestamp_micros: i64::from_be_bytes(bytes[..8].try_into().ok()?),
            seq: i64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// The query string as name/value pairs; a malformed one is a 400 problem.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str(query).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the query string is malformed: {e}"),
        )
    })
}

/// `limit`: 1 to MAX_LIMIT.
pub(crate) fn parse_limit(value: &str) -> Result<i64, Problem> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            Problem::bad_parameter(
                "limit",
                format!("{value:?} is not a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// The deepest `offset` served. An offset is skipped on an index, so its cost
/// grows with it; deeper pages are reached with `cursor`, which costs the same at
/// any depth.
pub const MAX_OFFSET: i64 = 100_000;

/// `offset`: 0 to [`MAX_OFFSET`].
pub(crate) fn parse_offset(value: &str) -> Result<i64, Problem> {
    value
        .parse()
        .ok()
        .filter(|n| (0..=MAX_OFFSET).contains(n))
        .ok_or_else(|| {
            Problem::bad_parameter(
                "offset",
                format!(
                    "{value:?} is not a whole number from 0 to {MAX_OFFSET} (walk further with cursor)"
                ),
            )
        })
}

/// `cursor`: a `next_cursor` this API returned.
pub(crate) fn parse_cursor(value: &str) -> Result<Cursor, Problem> {
    Cursor::decode(value)
        .ok_or_else(|| Problem::bad_parameter("cursor", "not a cursor this API returned"))
}

/// One page of rows, with whether more follow and, if so, the cursor to continue.
pub(crate) struct FetchedPage {
    pub rows: Vec<Row>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// Runs a page query that asks for up to `limit + 1` rows, reading them as they
/// arrive, and keeps up to `limit` of them and up to [`MAX_PAGE_BYTES`] of payload
/// (always at least one row). A row seen past the page is what makes `has_more` true,
/// so it is exact in both cases. Rows past the page are never held.
pub(crate) async fn fetch_page<C: GenericClient, S: ?Sized + ToStatement + Sync + Send>(
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    limit: i64,
) -> Result<FetchedPage, Problem> {
    let stream = client
        .query_raw(statement, params.iter().copied())
        .await
        .map_err(unavailable)?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0;
    let mut has_more = false;
    while let Some(row) = stream.try_next().await.map_err(unavailable)? {
        let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
        let size = payload.len() + EVENT_OVERHEAD_BYTES;
        if rows.len() as i64 >= limit || (!rows.is_empty() && bytes + size > MAX_PAGE_BYTES) {
            has_more = true;
            break;
        }
        bytes += size;
        rows.push(row);
    }
    let next_cursor = has_more.then(|| rows.last()).flatten().map(|r| {
        let t: DateTime<Utc> = r.get("timestamp");
        Cursor {
            timestamp_micros: t.timestamp_micros(),
            seq: r.get("seq"),
        }
        .encode()
    });
    Ok(FetchedPage {
        rows,
        has_more,
        next_cursor,
    })
}

/// The most statements a read connection keeps prepared (see [`reusable`]); past it
/// the connection's cache is emptied and refills with the shapes in use. A generic
/// plan over 95 partitions takes 1–2 MB of the server's memory (measured with
/// `pg_backend_memory_contexts`), so this bounds it at ~30 MB per read connection;
/// Candybar's pages use fewer than ten shapes.
const MAX_CACHED_STATEMENTS: usize = 16;

/// A read-only transaction in which prepared statements run with their generic
/// plan (`plan_cache_mode = force_generic_plan`, for this transaction only): one
/// plan per statement and connection, made once, instead of planning every
/// partition on every request (~5 ms at 95 partitions, PostgreSQL 15). Left to
/// itself PostgreSQL keeps planning per request whenever the per-value plan looks a
/// little cheaper, which it does for rare values, the very queries that must visit
/// every partition. Dropped without commit, the transaction rolls back and the
/// setting with it.
///
/// Only for [`reusable`] statements.
pub(crate) async fn generic_plans(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, Problem> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(unavailable)?;
    tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .map_err(unavailable)?;
    Ok(tx)
}

/// `sql` prepared once per connection and reused (run it in [`generic_plans`]).
///
/// Only for statements whose generic plan is right for every value of their
/// parameters: at most one equality filter, time bounds, a cursor, limit and
/// offset. Each filter column leads an index (`(column, "timestamp" DESC, seq
/// DESC)`), so the plan reads that index in each partition whatever the value, in
/// page order, and time bounds prune partitions when the executor starts. Not for
/// `payload @>`, whose generic plan assumes an average selectivity and can walk a
/// partition in time order looking for a rare document (seconds where the
/// per-value plan takes milliseconds), nor for two equality filters, where the
/// generic plan picks one index whatever the values and may walk every match of a
/// common value looking for a rare one. ARCHITECTURE.md, "Query path".
pub(crate) async fn reusable(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<Statement, Problem> {
    if tx.statement_cache.size() >= MAX_CACHED_STATEMENTS {
        tx.statement_cache.clear();
    }
    tx.prepare_cached(sql).await.map_err(unavailable)
}

/// `payload_contains`: a JSON object, matched by jsonb containment. PostgreSQL's
/// jsonb cannot hold `\u0000`, so a document with one could match nothing: it is
/// refused here rather than failing in the database.
pub(crate) fn parse_containment(value: &str) -> Result<serde_json::Value, Problem> {
    const NAME: &str = "payload_contains";
    let doc: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| Problem::bad_parameter(NAME, format!("is not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(Problem::bad_parameter(NAME, "must be a JSON object"));
    }
    if crate::envelope::json_has_nul(&doc) {
        return Err(Problem::bad_parameter(
            NAME,
            "contains \\u0000, which no stored payload can hold",
        ));
    }
    Ok(doc)
}

/// The filters of `GET /events` and of the live tail, as the OpenAPI document
/// states them (one list for both). Parsing and validation are `EventQuery::parse`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventFilters {
    /// only this session
    #[param(min_length = 1, max_length = 1024)]
    session_id: Option<String>,
    /// only this event type
    #[param(min_length = 1, max_length = 1024)]
    event_type: Option<String>,
    /// only this source
    #[param(min_length = 1, max_length = 1024)]
    source: Option<String>,
    /// only this target
    #[param(min_length = 1, max_length = 1024)]
    target: Option<String>,
    /// only this correlation id
    #[param(min_length = 1, max_length = 1024)]
    correlation_id: Option<String>,
    /// RFC 3339, inclusive
    #[param(format = DateTime)]
    start_time: Option<String>,
    /// RFC 3339, inclusive, not before start_time
    #[param(format = DateTime)]
    end_time: Option<String>,
    /// a JSON object the payload contains (jsonb @>), e.g. {"status":"failed"}
    #[param(min_length = 2)]
    payload_contains: Option<String>,
}

/// The validated parameters of `GET /events`.
#[derive(Debug, Default)]
pub struct EventQuery {
    pub filters: Vec<(&'static str, String)>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
    pub cursor: Option<Cursor>,
    /// A JSON object the payload must contain (jsonb `@>`).
    pub payload_contains: Option<serde_json::Value>,
}

const FILTERS: [&str; 5] = [
    "session_id",
    "event_type",
    "source",
    "target",
    "correlation_id",
];

impl EventQuery {
    /// Parses and validates a query string.
    pub fn parse(query: &str) -> Result<Self, Problem> {
        let pairs = query_pairs(query)?;
        let mut q = EventQuery {
            limit: DEFAULT_LIMIT,
            ..Default::default()
        };
        let mut seen: Vec<&'static str> = Vec::new();
        for (key, value) in pairs {
            let name = FILTERS
                .iter()
                .chain(
                    [
                        "start_time",
                        "end_time",
                        "limit",
                        "offset",
                        "cursor",
                        "payload_contains",
                    ]
                    .iter(),
                )
                .find(|n| **n == key)
                .copied()
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {key:?}"),
                    )
                })?;
            if seen.contains(&name) {
                return Err(Problem::bad_parameter(name, "given more than once"));
            }
            seen.push(name);
            match name {
                "start_time" | "end_time" => {
                    let t = parse_time(&value).ok_or_else(|| {
                        Problem::bad_parameter(name, format!("{value:?} is not an RFC 3339 time"))
                    })?;
                    if name == "start_time" {
                        q.start_time = Some(t);
                    } else {
                        q.end_time = Some(t);
                    }
                }
                "limit" => q.limit = parse_limit(&value)?,
                "offset" => q.offset = parse_offset(&value)?,
                "cursor" => q.cursor = Some(parse_cursor(&value)?),
                "payload_contains" => q.payload_contains = Some(parse_containment(&value)?),
                _ => {
                    if value.is_empty() || value.contains('\0') {
                        return Err(Problem::bad_parameter(name, "must be non-empty text"));
                    }
                    if value.len() > crate::source::decode::MAX_IDENT_BYTES {
                        return Err(Problem::bad_parameter(
                            name,
                            "is longer than 1024 bytes, which no stored value is",
                        ));
                    }
                    q.filters.push((name, value));
                }
            }
        }
        if let (Some(s), Some(e)) = (q.start_time, q.end_time)
            && s > e
        {
            return Err(Problem::bad_parameter("end_time", "is before start_time"));
        }
        if q.cursor.is_some() && q.offset > 0 {
            return Err(Problem::bad_parameter(
                "offset",
                "cannot be combined with cursor",
            ));
        }
        Ok(q)
    }

    /// The WHERE clause (without the cursor) and its parameters.
    pub(crate) fn conditions(&self) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut clauses = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        for (name, value) in &self.filters {
            params.push(Box::new(value.clone()));
            clauses.push(format!("{name} = ${}", params.len()));
        }
        if let Some(doc) = &self.payload_contains {
            params.push(Box::new(doc.clone()));
            clauses.push(format!("payload @> ${}", params.len()));
        }
        if let Some(t) = self.start_time {
            params.push(Box::new(t));
            clauses.push(format!("\"timestamp\" >= ${}", params.len()));
        }
        if let Some(t) = self.end_time {
            params.push(Box::new(t));
            clauses.push(format!("\"timestamp\" <= ${}", params.len()));
        }
        let sql = if clauses.is_empty() {
            "TRUE".to_owned()
        } else {
            clauses.join(" AND ")
        };
        (sql, params)
    }
}

/// A failure to answer: logged here once with its cause chain and SQLSTATE (the
/// request's span adds the route), answered with an opaque 503.
///
/// A data exception (SQLSTATE class 22) can only come from a value a client sent
/// that validation let through: it is answered 400, never 503.
pub(crate) fn unavailable(e: impl std::error::Error + 'static) -> Problem {
    let error = crate::telemetry::error_chain(&e);
    let sqlstate = sqlstate(&e);
    if sqlstate.as_deref().is_some_and(|c| c.starts_with("22")) {
        tracing::warn!(%error, sqlstate, "query refused a value from the request");
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "a value in the request is out of the range the event store can compare",
        );
    }
    tracing::error!(%error, sqlstate, "query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the event store cannot answer right now",
    )
}

/// The SQLSTATE of a PostgreSQL error, wherever it sits in the chain.
fn sqlstate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            return pg.code().map(|c| c.code().to_owned());
        }
        cur = err.source();
    }
    None
}

/// Whether `id` could name a stored row: stored identifiers hold no NUL and at
/// most `MAX_IDENT_BYTES` (decode's rule), so anything else is a 404 without a query.
pub(crate) fn could_be_stored(id: &str) -> bool {
    !id.is_empty() && !id.contains('\0') && id.len() <= crate::source::decode::MAX_IDENT_BYTES
}

/// One page of `GET /events`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page {
    events: Vec<EventView>,
    total: i64,
    total_is_estimate: bool,
    limit: i64,
    offset: i64,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Events matching the filters, newest first.
///
/// `total` is exact up to 1,000 matches, then PostgreSQL's estimate (`total_is_estimate`).
/// `next_cursor` continues the walk with `cursor=`; it visits every event once.
/// A page holds fewer than `limit` events when their payloads would pass 8 MiB
/// (`has_more` stays exact): advance an offset by the events received.
#[utoipa::path(get, path = "/events", tag = "events", params(
        EventFilters,
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 100000, description = "0 to 100,000, default 0 (walk further with cursor); not with cursor"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{32}$", description = "next_cursor of the previous page"),
), responses(
    (status = 200, description = "a page of events", body = Page),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn list(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let q = EventQuery::parse(req.query_string())?;
    let mut client = state.pool.get().await.map_err(unavailable)?;
    // Newest first over time partitions: look back a short window from the page's
    // start first (only the partitions it covers are planned and read), and widen
    // only when it holds too few matches (ARCHITECTURE.md, "Query path").
    let anchor = match &q.cursor {
        Some(c) => c.time()?,
        None => Utc::now(),
    };
    let anchor = q.end_time.map_or(anchor, |end| end.min(anchor));
    let mut windows = LOOK_BACK_DAYS
        .iter()
        .map(|d| anchor - chrono::Duration::days(*d))
        // A window reaching past start_time is the same as no window.
        .filter(|lower| q.start_time.is_none_or(|s| s < *lower))
        .map(Some)
        .chain([None])
        .peekable();
    let (filter, params, n_filter, page, window) = loop {
        let window = windows.next().expect("ends with the unbounded window");
        let (filter, mut params) = q.conditions();
        let n_filter = params.len();
        let mut page_filter = filter.clone();
        if let Some(c) = &q.cursor {
            params.push(Box::new(c.time()?));
            params.push(Box::new(c.seq));
            page_filter.push_str(&format!(
                " AND (\"timestamp\", seq) < (${t}, ${s}) AND \"timestamp\" <= ${t}",
                t = params.len() - 1,
                s = params.len()
            ));
        }
        if let Some(lower) = window {
            params.push(Box::new(lower));
            page_filter.push_str(&format!(" AND \"timestamp\" >= ${}", params.len()));
        }
        params.push(Box::new(q.limit + 1));
        let sql = if q.offset == 0 {
            format!(
                "SELECT {COLUMNS} FROM events WHERE {page_filter} ORDER BY \"timestamp\" DESC, seq DESC LIMIT ${}",
                params.len()
            )
        } else {
            // Deferred join: skip the offset on the index alone (an index-only scan
            // where the visibility map allows), then fetch only the page's rows.
            params.push(Box::new(q.offset));
            format!(
                "SELECT {COLUMNS} FROM events JOIN (SELECT \"timestamp\", seq FROM events WHERE {page_filter} \
                 ORDER BY \"timestamp\" DESC, seq DESC LIMIT ${} OFFSET ${}) page USING (\"timestamp\", seq) \
                 ORDER BY \"timestamp\" DESC, seq DESC",
                params.len() - 1,
                params.len()
            )
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let page = if q.payload_contains.is_none() && q.filters.len() <= 1 {
            let tx = generic_plans(&mut client).await?;
            let statement = reusable(&tx, &sql).await?;
            let page = fetch_page(&*tx, &statement, &refs, q.limit).await?;
            tx.commit().await.map_err(unavailable)?;
            page
        } else {
            fetch_page(&**client, &sql, &refs, q.limit).await?
        };
        // Rows past the page inside the window are rows past the page, period.
        if page.has_more || windows.peek().is_none() {
            break (filter, params, n_filter, page, window);
        }
        // Too few: a window with nothing at all says the matches are rare, and the
        // next step is everything (one wide query rather than several).
        if page.rows.is_empty() && q.offset == 0 {
            while windows.peek().is_some_and(Option::is_some) {
                windows.next();
            }
        }
    };
    let FetchedPage {
        rows,
        has_more,
        next_cursor,
    } = page;
    // The filter's parameters come first in the page's.
    let refs: Vec<&(dyn ToSql + Sync)> = params[..n_filter]
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let (total, total_is_estimate) = total(
        &client,
        &state.table_sizes,
        &filter,
        &refs,
        Seen {
            through: q.offset + rows.len() as i64,
            has_more,
            whole_prefix: q.cursor.is_none() && (q.offset == 0 || !rows.is_empty()),
            window: window.map(|lower| (lower, anchor)),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(Page {
        events: views(&rows)?,
        total,
        total_is_estimate,
        limit: q.limit,
        offset: q.offset,
        has_more,
        next_cursor,
    }))
}

/// How far back a page looks before it looks at everything: a day holds the first
/// page of most filters; the wider windows keep rarer ones from reading every
/// partition at once.
const LOOK_BACK_DAYS: [i64; 3] = [1, 8, 64];

/// What a page already tells about the number of matching events.
struct Seen {
    /// offset + rows on the page
    through: i64,
    has_more: bool,
    /// the page began at a known position in the whole result (no cursor, and not
    /// past the end), so `through` matching events are known to exist
    whole_prefix: bool,
    /// the time window the page was read under (its lower bound and the anchor),
    /// if it needed none wider
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// `total` for `GET /events`: exact up to [`EXACT_TOTAL_UP_TO`] matching events,
/// otherwise the planner's estimate, flagged. Free when the page settles it (the last
/// page, or an offset already past the cap). Otherwise the plan's row estimate comes
/// first (planning only); when it expects far more than the cap, the estimate is the
/// answer, and only when it does not is there a count, stopped at `EXACT_TOTAL_UP_TO + 1`
/// rows. No request ever counts more.
async fn total(
    client: &tokio_postgres::Client,
    sizes: &super::sizes::TableSizes,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    seen: Seen,
) -> Result<(i64, bool), Problem> {
    if seen.whole_prefix && !seen.has_more {
        return Ok((seen.through, false));
    }
    let at_least = if seen.whole_prefix {
        seen.through + 1
    } else {
        0
    };
    // The page came from a window of recent partitions: estimate from that window
    // and scale by the table's size, rather than plan the filter over every
    // partition. Past the exact range the answer is an estimate either way.
    if let Some((lower, upper)) = seen.window
        && let Some(estimate) = scaled_estimate(client, sizes, filter, params, lower, upper).await?
        && (at_least > EXACT_TOTAL_UP_TO || estimate > EXACT_TOTAL_UP_TO)
    {
        return Ok((estimate.max(at_least), true));
    }
    let explain = format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE {filter}");
    let plan: serde_json::Value = client
        .query_one(&explain, params)
        .await
        .map_err(unavailable)?
        .get(0);
    let estimate = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64;
    if at_least > EXACT_TOTAL_UP_TO || estimate > ESTIMATE_TRUSTED_ABOVE {
        return Ok((estimate.max(at_least), true));
    }
    let capped = format!(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE {filter} LIMIT {}) s",
        EXACT_TOTAL_UP_TO + 1
    );
    let exact: i64 = client
        .query_one(&capped, params)
        .await
        .map_err(unavailable)?
        .get(0);
    if exact <= EXACT_TOTAL_UP_TO {
        Ok((exact, false))
    } else {
        Ok((estimate.max(exact).max(at_least), true))
    }
}

/// The planner's estimate of the matches from `lower` to `upper` (the window the
/// page was read in, so only its partitions are planned), scaled by the rows of the
/// whole table over the rows in the window (partition statistics, cached). Without
/// a filter, the table's rows. `None` on a plain table.
async fn scaled_estimate(
    client: &tokio_postgres::Client,
    sizes: &super::sizes::TableSizes,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
) -> Result<Option<i64>, Problem> {
    let Some((all, inside)) = sizes
        .rows_between(client, lower, upper)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    if filter == "TRUE" {
        return Ok(Some(all.round() as i64));
    }
    let n = params.len() + 1;
    let mut with_window: Vec<&(dyn ToSql + Sync)> = params.to_vec();
    with_window.extend([&lower as &(dyn ToSql + Sync), &upper]);
    let plan: serde_json::Value = client
        .query_one(
            &format!(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE {filter} \
                 AND \"timestamp\" >= ${n} AND \"timestamp\" <= ${}",
                n + 1
            ),
            &with_window,
        )
        .await
        .map_err(unavailable)?
        .get(0);
    let matching = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0);
    Ok(Some(
        (matching * (all / inside.max(1.0)).max(1.0)).round() as i64
    ))
}

fn not_found(id: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no event with id {id:?}"))
}

/// The event with this id (when sources share an id, the first one stored),
/// rendered by `render` (the event view, or the raw envelope).
///
/// A large event (stored in more than [`large::LARGE_STORED_BYTES`]) is read once
/// for all the clients asking for it at the same moment, under one of
/// [`large::LARGE_READS_AT_ONCE`] permits, on a connection that is then closed (so
/// its grown read buffer is freed): many clients fetching the largest event cost
/// one copy of it, not one each.
async fn find_rendered(
    state: &ApiState,
    id: &str,
    raw_envelope: bool,
) -> Result<bytes::Bytes, Problem> {
    if !could_be_stored(id) {
        return Err(not_found(id));
    }
    // One query: the whole row when it is small (the common case), only its
    // place and size when it is large.
    let (size, extra) = if raw_envelope {
        (
            "pg_column_size(payload) + pg_column_size(envelope)",
            ", CASE WHEN small THEN envelope END AS envelope, payload_member",
        )
    } else {
        ("pg_column_size(payload)", "")
    };
    let columns = COLUMNS.replace("payload", "CASE WHEN small THEN payload END AS payload");
    let sql = format!(
        "SELECT {columns}{extra}, small FROM (SELECT *, {size} <= $2 AS small FROM events \
         WHERE id = $1 ORDER BY seq LIMIT 1) e"
    );
    let mut client = state.pool.get().await.map_err(unavailable)?;
    // With no time to prune by, every partition is in the plan: a reused plan
    // saves planning them all on each request.
    let tx = generic_plans(&mut client).await?;
    let statement = reusable(&tx, &sql).await?;
    let row = tx
        .query_opt(&statement, &[&id, &large::LARGE_STORED_BYTES])
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    let row = row.ok_or_else(|| not_found(id))?;
    if row.get::<_, bool>("small") {
        return render(&row, raw_envelope).map(bytes::Bytes::from);
    }
    let seq: i64 = row.get("seq");
    let time: chrono::DateTime<chrono::Utc> = row.get("timestamp");
    drop(client);
    let pool = state.pool.clone();
    state
        .large_reads
        .read((seq, raw_envelope), async move {
            let client = pool.get().await.map_err(unavailable)?;
            let row = fetch_by_seq(&client, seq, time, raw_envelope).await;
            // Do not keep a connection whose buffer grew to this event's size.
            drop(deadpool_postgres::Object::take(client));
            render(&row?, raw_envelope).map(bytes::Bytes::from)
        })
        .await
}

/// Hands a body to actix in 64 KiB slices of the same buffer (no copy), so a
/// connection holds one slice in its write buffer at a time rather than a copy of
/// the whole body: 100 clients of a 20 MB event share one 20 MB buffer.
fn in_slices(body: bytes::Bytes) -> actix_web::body::BoxBody {
    const SLICE: usize = 64 << 10;
    if body.len() <= SLICE {
        return actix_web::body::BoxBody::new(body);
    }
    let len = body.len();
    let slices = (0..len)
        .step_by(SLICE)
        .map(move |at| Ok::<_, std::convert::Infallible>(body.slice(at..(at + SLICE).min(len))));
    actix_web::body::BoxBody::new(actix_web::body::SizedStream::new(
        len as u64,
        futures::stream::iter(slices),
    ))
}

async fn fetch_by_seq(
    client: &tokio_postgres::Client,
    seq: i64,
    time: chrono::DateTime<chrono::Utc>,
    raw_envelope: bool,
) -> Result<Row, Problem> {
    let extra = if raw_envelope {
        ", envelope, payload_member"
    } else {
        ""
    };
    client
        .query_opt(
            // The time selects the partition; seq the row in it.
            &format!("SELECT {COLUMNS}{extra} FROM events WHERE \"timestamp\" = $2 AND seq = $1"),
            &[&seq, &time],
        )
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "the event is gone"))
}

fn render(row: &Row, raw_envelope: bool) -> Result<Vec<u8>, Problem> {
    if !raw_envelope {
        return serde_json::to_vec(&view(row)?).map_err(unavailable);
    }
    let JsonText(envelope) = row.try_get("envelope").map_err(unavailable)?;
    let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
    let member: Option<&str> = row.get("payload_member");
    crate::envelope::rebuild(envelope, payload, member).ok_or_else(|| {
        unavailable(BadEnvelope(
            String::from_utf8_lossy(&envelope[..envelope.len().min(40)]).into_owned(),
        ))
    })
}

/// One event; when several sources used the id, the first stored.
#[utoipa::path(get, path = "/events/{id}", tag = "events", params(("id" = String, Path, min_length = 1, description = "the event id, as sent")), responses(
    (status = 200, description = "the event", body = EventView),
    (status = 404, description = "no such event (an id with NUL or over 1 KiB is never one)", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "too many large events are being read at once (at most 4, 30 s wait), or the database cannot answer", body = Problem, content_type = "application/problem+json"),
))]
pub async fn one(
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let body = find_rendered(&state, &path, false).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(in_slices(body)))
}

/// The envelope as it was published (equal as JSON), rebuilt from the stored columns
/// as text (never parsed).
#[utoipa::path(get, path = "/events/{id}/raw", tag = "events", params(("id" = String, Path, min_length = 1, description = "the event id, as sent")), responses(
    (status = 200, description = "the envelope as published (equal as JSON)", body = Object),
    (status = 404, description = "no such event (an id with NUL or over 1 KiB is never one)", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "too many large events are being read at once (at most 4, 30 s wait), or the database cannot answer", body = Problem, content_type = "application/problem+json"),
))]
pub async fn raw(
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let body = find_rendered(&state, &path, true).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(in_slices(body)))
}

/// A stored envelope that is not an object's text (never written by this service).
#[derive(Debug, thiserror::Error)]
#[error("stored envelope is not a json object: {0}")]
struct BadEnvelope(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            timestamp_micros: 1_764_000_000_123_456,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "00", &"g".repeat(32)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (query, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("offset=-1", "offset"),
            ("start_time=yesterday", "start_time"),
            ("end_time=2026-13-01T00:00:00Z", "end_time"),
            (
                "start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
                "end_time",
            ),
            ("cursor=abc", "cursor"),
            ("session_id=", "session_id"),
            (&format!("target={}", "x".repeat(1025)), "target"),
            ("source=a&source=b", "source"),
            ("cursor=00000000000000000000000000000001&offset=5", "offset"),
            ("payload_contains=%7Bnope", "payload_contains"),
            ("payload_contains=%5B1%2C2%5D", "payload_contains"),
            ("payload_contains=42", "payload_contains"),
            (
                "payload_contains=%7B%22a%22%3A%22x%5Cu0000%22%7D",
                "payload_contains",
            ),
        ] {
            let p = EventQuery::parse(query).unwrap_err();
            assert_eq!(p.status, 400, "{query}");
            assert_eq!(p.parameter, Some(name), "{query}: {}", p.detail);
            assert!(p.detail.contains(name), "{query}: {}", p.detail);
        }
        let p = EventQuery::parse("sesion_id=x").unwrap_err();
        assert!(p.detail.contains("sesion_id"), "{}", p.detail);
    }

    #[test]
    fn defaults_and_filters_are_read() {
        let q = EventQuery::parse("").unwrap();
        assert_eq!((q.limit, q.offset), (100, 0));
        let q =
            EventQuery::parse("session_id=abc-123&start_time=2026-11-20T14:00:00%2B02:00&limit=5")
                .unwrap();
        assert_eq!(q.filters, vec![("session_id", "abc-123".to_owned())]);
        assert_eq!(
            q.start_time.unwrap().to_rfc3339(),
            "2026-11-20T12:00:00+00:00"
        );
        assert_eq!(q.limit, 5);
    }
}
