//! `GET /sessions/{session_id}` and `GET /correlations/{correlation_id}`: one
//! session's (or correlation's) events in time order, oldest first, paged, with a
//! summary: count, first and last time, counts by event type and by source.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ApiState;
use super::problem::{Problem, unavailable};
use super::query::Paging;
use super::query::params::could_be_stored;
use super::query::sql::{
    EVENTS, FetchedPage, Order, fetch_page, generic_plans, page_sql, reusable,
};
use super::view::{EventView, rfc3339, views};
use crate::query::SqlParams;

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
    let mut client = state.pool.get().await.map_err(unavailable)?;
    // Equality on an indexed column: one reused plan fits every value (no planning
    // of every partition per request); likewise the pages below.
    let tx = generic_plans(&mut client).await?;
    let summary = reusable(
        &tx,
        &format!(
            "SELECT event_type, source, count(*), min(\"timestamp\"), max(\"timestamp\") \
             FROM events WHERE {column} = $1 GROUP BY event_type, source"
        ),
    )
    .await?;
    let groups = tx.query(&summary, &[&value]).await.map_err(unavailable)?;
    if groups.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no events with {column} {value:?}"),
        ));
    }
    let mut by_event_type = BTreeMap::new();
    let mut by_source = BTreeMap::new();
    let (mut count, mut first, mut last): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        (0, None, None);
    for g in &groups {
        let n: i64 = g.get(2);
        *by_event_type.entry(g.get::<_, String>(0)).or_insert(0) += n;
        *by_source.entry(g.get::<_, String>(1)).or_insert(0) += n;
        count += n;
        let (lo, hi): (DateTime<Utc>, DateTime<Utc>) = (g.get(3), g.get(4));
        first = Some(first.map_or(lo, |f| f.min(lo)));
        last = Some(last.map_or(hi, |l| l.max(hi)));
    }

    let mut params = SqlParams::default();
    let filter = format!("{column} = {}", params.push(value.clone()));
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
            count,
            first_timestamp: first.map(rfc3339).unwrap_or_default(),
            last_timestamp: last.map(rfc3339).unwrap_or_default(),
            by_event_type,
            by_source,
        },
        events: views(&rows)?,
        limit: paging.limit,
        offset: paging.offset,
        has_more,
        next_cursor,
    }))
}
