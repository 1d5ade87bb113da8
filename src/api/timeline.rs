//! `GET /sessions/{session_id}` and `GET /correlations/{correlation_id}`: one
//! session's (or correlation's) events in time order, oldest first, paged, with a
//! summary: count, first and last time, counts by event type and by source.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::IsolationLevel;

use super::ApiState;
use super::problem::{Problem, unavailable};
use super::query::Paging;
use super::query::params::could_be_stored;
use super::query::span::{self, Partitions};
use super::query::sql::{
    EVENTS, FetchedPage, Order, fetch_page, generic_plans_at, page_sql, reusable,
};
use super::view::{EventView, rfc3339, views};
use crate::model::query::SqlParams;

/// Which column groups the timeline.
#[derive(Clone, Copy)]
pub enum Key {
    Session,
    Correlation,
}

impl Key {
    fn column(self) -> &'static str {
        match self {
            Key::Session => "session_id",
            Key::Correlation => "correlation_id",
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Summary {
    count: i64,
    first_timestamp: String,
    last_timestamp: String,
    by_event_type: BTreeMap<String, i64>,
    by_source: BTreeMap<String, i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Timeline {
    key: &'static str,
    value: String,
    summary: Summary,
    events: Vec<EventView>,
    limit: i64,
    offset: i64,
    has_more: bool,
    next_cursor: Option<String>,
}

/// A session's events, oldest first, with a summary.
#[utoipa::path(get, path = "/sessions/{session_id}", tag = "timelines", params(
    ("session_id" = String, Path, min_length = 1, description = "the session id, as sent"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 100000, description = "0 to 100,000, default 0 (walk further with cursor); not with cursor"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{32}$", description = "next_cursor of the previous page"),
), responses(
    (status = 200, description = "the timeline", body = Timeline),
    (status = 404, description = "no events in this session", body = Problem, content_type = "application/problem+json"),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn sessions(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    timeline(Key::Session, req, path.into_inner(), state).await
}

/// A correlation's events, oldest first, with a summary.
#[utoipa::path(get, path = "/correlations/{correlation_id}", tag = "timelines", params(
    ("correlation_id" = String, Path, min_length = 1, description = "the correlation id, as sent"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 100000, description = "0 to 100,000, default 0 (walk further with cursor); not with cursor"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{32}$", description = "next_cursor of the previous page"),
), responses(
    (status = 200, description = "the timeline", body = Timeline),
    (status = 404, description = "no events with this correlation id", body = Problem, content_type = "application/problem+json"),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn correlations(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    timeline(Key::Correlation, req, path.into_inner(), state).await
}

async fn timeline(
    key: Key,
    req: HttpRequest,
    value: String,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let paging = Paging::parse(req.query_string())?;
    let column = key.column();
    if !could_be_stored(&value) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no events with {column} {value:?}"),
        ));
    }
    if let super::Store::Sqlite(reader) = &state.store {
        return embedded_timeline(reader, column, value, paging).await;
    }
    let mut client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    // The ends and the page bounded by the partitions' span: each read partition
    // after partition in order, stopping where it has what it needs
    // (`query::span`), where a Merge Append descends every partition first.
    let within = state
        .postgres()?
        .partitions
        .read(&client)
        .await?
        .as_ref()
        .and_then(Partitions::span)
        .map_or_else(String::new, |span| format!(" AND {}", span::within(span)));
    // Equality on an indexed column: one reused plan fits every value (no planning
    // of every partition per request); likewise the pages below. One snapshot for
    // the summary's counts, the rows past them and the page.
    let tx = generic_plans_at(&mut client, IsolationLevel::RepeatableRead).await?;
    let groups = match key {
        Key::Session => counted_groups(&tx, &value).await?,
        Key::Correlation => None,
    };
    let groups = match groups {
        Some(groups) => groups,
        None => grouped(&tx, column, &value).await?,
    };
    let summary = summed(groups, column, &value)?;
    // The first and last times: the oldest and newest partition holding one, from
    // each end of the index.
    let ends = reusable(
        &tx,
        &format!(
            "SELECT min(\"timestamp\"), max(\"timestamp\") FROM events WHERE {column} = $1{within}"
        ),
    )
    .await?;
    let ends = tx.query_one(&ends, &[&value]).await.map_err(unavailable)?;
    let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (ends.get(0), ends.get(1));

    let mut params = SqlParams::default();
    let filter = format!("{column} = {}{within}", params.push(value.clone()));
    let sql = page_sql(&EVENTS, &filter, Order::OldestFirst, &paging, &mut params)?;
    let statement = reusable(&tx, &sql).await?;
    let FetchedPage {
        rows,
        has_more,
        next_cursor,
    } = fetch_page(&EVENTS, &*tx, &statement, &params.all(), paging.limit).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(Timeline {
        key: column,
        value,
        summary: Summary {
            first_timestamp: first.map(rfc3339).unwrap_or_default(),
            last_timestamp: last.map(rfc3339).unwrap_or_default(),
            ..summary
        },
        events: views(&rows)?,
        limit: paging.limit,
        offset: paging.offset,
        has_more,
        next_cursor,
    }))
}

/// A timeline of the embedded store (`store::sqlite::read::timeline`): its
/// summary counted from its rows, its page oldest first.
async fn embedded_timeline(
    reader: &crate::store::sqlite::read::Reader,
    column: &'static str,
    value: String,
    paging: Paging,
) -> Result<HttpResponse, Problem> {
    let bounds = crate::store::sqlite::read::PageBounds {
        exact_up_to: super::query::totals::EXACT_TOTAL_UP_TO,
        max_bytes: super::query::sql::MAX_PAGE_BYTES,
        overhead_bytes: super::query::sql::EVENT_OVERHEAD_BYTES,
    };
    let asked = value.clone();
    let t = reader
        .read(move |c| crate::store::sqlite::read::timeline(c, column, &asked, &paging, bounds))
        .await
        .map_err(unavailable)?;
    let summary = summed(t.groups, column, &value)?;
    let time = |t: Option<i64>| {
        t.and_then(DateTime::<Utc>::from_timestamp_micros)
            .map(rfc3339)
            .unwrap_or_default()
    };
    Ok(HttpResponse::Ok().json(Timeline {
        key: column,
        value,
        summary: Summary {
            first_timestamp: time(t.first),
            last_timestamp: time(t.last),
            ..summary
        },
        events: t
            .events
            .iter()
            .map(super::view::stored_view)
            .collect::<Result<_, _>>()?,
        limit: paging.limit,
        offset: paging.offset,
        has_more: t.has_more,
        next_cursor: t.next_cursor.map(|c| c.encode()),
    }))
}

/// A timeline's groups summed: its count (none is a 404 naming the value), and
/// its counts by event type and by source (the times are left empty).
fn summed(groups: Groups, column: &str, value: &str) -> Result<Summary, Problem> {
    let count: i64 = groups.iter().map(|g| g.2).sum();
    if count == 0 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no events with {column} {value:?}"),
        ));
    }
    let mut by_event_type = BTreeMap::new();
    let mut by_source = BTreeMap::new();
    for (event_type, source, n) in groups {
        *by_event_type.entry(event_type).or_insert(0) += n;
        *by_source.entry(source).or_insert(0) += n;
    }
    Ok(Summary {
        count,
        first_timestamp: String::new(),
        last_timestamp: String::new(),
        by_event_type,
        by_source,
    })
}

/// (event type, source, events) of one session or correlation.
pub(crate) type Groups = Vec<(String, String, i64)>;

/// Every event with `column = value`, grouped: reads all of them (the fallback).
async fn grouped(
    tx: &deadpool_postgres::Transaction<'_>,
    column: &str,
    value: &str,
) -> Result<Groups, Problem> {
    let statement = reusable(
        tx,
        &format!(
            "SELECT event_type, source, count(*) FROM events WHERE {column} = $1 GROUP BY event_type, source"
        ),
    )
    .await?;
    let rows = tx.query(&statement, &[&value]).await.map_err(unavailable)?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The rows past the catalog's position a summary reads at most; past them (the
/// catalog far behind, as after an outage's backlog) it groups the session's rows.
const LIVE_ROWS: i64 = 100_000;

/// A session's counts as the catalog job keeps them (`session_counts`, up to its
/// position) plus the rows past its position, read from the live tail's index:
/// the same work for a session of ten events or of 600,000. `None` when the counts
/// cannot answer (migration 0020 pending, or more than [`LIVE_ROWS`] rows past the
/// position). Must run in one snapshot with the page (`RepeatableRead`).
pub(crate) async fn counted_groups(
    tx: &deadpool_postgres::Transaction<'_>,
    session: &str,
) -> Result<Option<Groups>, Problem> {
    let Some(live) = past_the_counts(tx, session).await? else {
        return Ok(None);
    };
    let counted = reusable(
        tx,
        "SELECT event_type, source, events FROM session_counts WHERE session_id = $1",
    )
    .await?;
    let counted = tx.query(&counted, &[&session]).await.map_err(unavailable)?;
    let mut groups: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in counted.iter() {
        *groups.entry((r.get(0), r.get(1))).or_insert(0) += r.get::<_, i64>(2);
    }
    for (t, s, n) in live {
        *groups.entry((t, s)).or_insert(0) += n;
    }
    Ok(Some(
        groups
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((t, s), n)| (t, s, n))
            .collect(),
    ))
}

/// A session's events, counted as [`counted_groups`] counts them, in one sum.
pub(crate) async fn counted_total(
    tx: &deadpool_postgres::Transaction<'_>,
    session: &str,
) -> Result<Option<i64>, Problem> {
    let Some(live) = past_the_counts(tx, session).await? else {
        return Ok(None);
    };
    let counted = reusable(
        tx,
        "SELECT coalesce(sum(events), 0)::int8 FROM session_counts WHERE session_id = $1",
    )
    .await?;
    let counted: i64 = tx
        .query_one(&counted, &[&session])
        .await
        .map_err(unavailable)?
        .get(0);
    Ok(Some(counted + live.iter().map(|(_, _, n)| n).sum::<i64>()))
}

/// The session's rows past the catalog's position, grouped; `None` when the
/// counts cannot answer (see [`counted_groups`]).
async fn past_the_counts(
    tx: &deadpool_postgres::Transaction<'_>,
    session: &str,
) -> Result<Option<Groups>, Problem> {
    let position = reusable(
        tx,
        "SELECT txid, seq FROM catalog_position WHERE to_regclass('session_counts') IS NOT NULL",
    )
    .await?;
    let Some(position) = tx.query_opt(&position, &[]).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let (txid, seq): (i64, i64) = (position.get(0), position.get(1));
    // In the order of the live tail's index, so each partition's part is one range
    // of it, and bounded, so the plan (made once) never walks the table.
    let live = reusable(
        tx,
        &format!(
            "WITH live AS MATERIALIZED (SELECT session_id, event_type, source FROM events \
             WHERE (txid, seq) > ($1, $2) ORDER BY txid, seq LIMIT {LIVE_ROWS}) \
             SELECT event_type, source, count(*) FILTER (WHERE session_id = $3), \
             (SELECT count(*) FROM live) FROM live GROUP BY event_type, source"
        ),
    )
    .await?;
    let live = tx
        .query(&live, &[&txid, &seq, &session])
        .await
        .map_err(unavailable)?;
    if live
        .first()
        .is_some_and(|r| r.get::<_, i64>(3) >= LIVE_ROWS)
    {
        return Ok(None);
    }
    Ok(Some(
        live.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    ))
}
