//! `GET /sessions/{session_id}` and `GET /correlations/{correlation_id}`: one
//! session's (or correlation's) events in time order, oldest first, paged, with a
//! summary: count, first and last time, counts by event type and by source.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ApiState;
use super::events::{
    COLUMNS, Cursor, DEFAULT_LIMIT, EventView, FetchedPage, fetch_page, generic_plans,
    parse_cursor, parse_limit, parse_offset, query_pairs, reusable, rfc3339, unavailable, views,
};
use super::problem::Problem;

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

struct Paging {
    limit: i64,
    offset: i64,
    cursor: Option<Cursor>,
}

fn paging(query: &str) -> Result<Paging, Problem> {
    let pairs = query_pairs(query)?;
    let mut p = Paging {
        limit: DEFAULT_LIMIT,
        offset: 0,
        cursor: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => p.limit = parse_limit(&value)?,
            "offset" => p.offset = parse_offset(&value)?,
            "cursor" => p.cursor = Some(parse_cursor(&value)?),
            other => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    if p.cursor.is_some() && p.offset > 0 {
        return Err(Problem::bad_parameter(
            "offset",
            "cannot be combined with cursor",
        ));
    }
    Ok(p)
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
    let p = paging(req.query_string())?;
    let column = key.column();
    if !super::events::could_be_stored(&value) {
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

    let limit = p.limit + 1;
    let FetchedPage {
        rows,
        has_more,
        next_cursor,
    } = match p.cursor {
        Some(c) => {
            let ts = c.time()?;
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE {column} = $1 AND (\"timestamp\", seq) > ($2, $3) \
                 ORDER BY \"timestamp\", seq LIMIT $4"
            );
            let statement = reusable(&tx, &sql).await?;
            fetch_page(&*tx, &statement, &[&value, &ts, &c.seq, &limit], p.limit).await?
        }
        // Offsets skip on the index alone (deferred join), as in `GET /events`.
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM events JOIN (SELECT \"timestamp\", seq FROM events WHERE {column} = $1 \
                 ORDER BY \"timestamp\", seq LIMIT $2 OFFSET $3) page USING (\"timestamp\", seq) \
                 ORDER BY \"timestamp\", seq"
            );
            let statement = reusable(&tx, &sql).await?;
            fetch_page(&*tx, &statement, &[&value, &limit, &p.offset], p.limit).await?
        }
    };
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
        limit: p.limit,
        offset: p.offset,
        has_more,
        next_cursor,
    }))
}
