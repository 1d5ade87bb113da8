//! `GET /events`, `GET /events/{id}` and `GET /events/{id}/raw`: the original REST
//! contract, served from the read pool.
//!
//! Ordering is newest `timestamp` first, ties broken by `seq` (newest stored
//! first), so offsets and cursors are stable.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::{IsolationLevel, Row};

use super::problem::{Problem, unavailable};
use super::query::params::could_be_stored;
use super::query::sql::{
    EVENTS, FetchedPage, Order, fetch_page, generic_plans, generic_plans_at, page_sql, reusable,
};
use super::query::totals::{Seen, counted_up_to_cap, exact_up_to, total, walked_total};
use super::query::{EventFilters, EventQuery, Paging};
use super::query::{span, walk};
use super::view::{COLUMNS, EventView, render, render_stored, stored_view, views};
use super::{ApiState, large};
use crate::model::query::SqlParams;

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
/// `total` is exact up to 1,000 matches (250 with `payload_contains`; for `session_id` alone, at any size), then an estimate (`total_is_estimate`).
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
    if let super::Store::Sqlite(reader) = &state.store {
        return embedded_page(reader, q).await;
    }
    let mut client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    // Newest first over time partitions: look back a short window from the page's
    // start first (only the partitions it covers are planned and read), and widen
    // only when it holds too few matches (docs/queries.md).
    let paging = q.paging;
    let anchor = match &paging.cursor {
        Some(c) => super::query::params::cursor_time(c)?,
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
    // Statements whose one plan fits every value (`sql::reusable`).
    let reusable_filter = q.payload_contains.is_none() && q.filters.len() <= 1;
    // A document a window may hold few of. (Two values that rarely meet are left
    // to the planner: without an index holding both, reading each partition costs
    // a bitmap of the commoner one, more than the planner's walk.)
    let may_be_sparse = q.payload_contains.is_some();
    // A session or a correlation is a set of events spread over its own span, not
    // a rate: when the last day does not hold its page, the next step is its whole
    // index (one descent per partition, a reused plan) rather than 8 and 64 days
    // first, each planned and read in turn.
    let names_a_set = q
        .filters
        .iter()
        .any(|(name, _)| matches!(*name, "session_id" | "correlation_id"));
    // Where the rows lie: the walk's partitions, and the span a page is bounded by
    // so that it reads partitions in order (`query::span`).
    let parts = state.postgres()?.partitions.read(&client).await?;
    let within = parts
        .as_ref()
        .and_then(span::Partitions::span)
        .map(span::within);
    let mut first_window = true;
    let mut windows_read = 0;
    let (filter, params, n_filter, page, window) = loop {
        let window = windows.next().expect("ends with the unbounded window");
        // A document is read partition by partition, newest first, until the page
        // is full (`query::walk`): a plan per value would be chosen on estimates
        // that cannot see how time and document go together.
        if let Some(parts) = parts
            .as_ref()
            .filter(|_| may_be_sparse && first_window && paging.offset == 0)
        {
            let tx = generic_plans(&mut client).await?;
            if let Some(walked) =
                walk::newest_first(&tx, &state.postgres()?.pool, parts, &q).await?
            {
                if let walk::Matches::Exactly(total) = walked.matches {
                    tx.commit().await.map_err(unavailable)?;
                    return answer(walked.page, (total, false), &paging);
                }
                let mut params = SqlParams::default();
                let filter = q.conditions(&mut params);
                // The walk read the matches from the oldest partition it reached
                // to the anchor.
                let seen = Seen {
                    through: walked.page.rows.len() as i64,
                    has_more: walked.page.has_more,
                    whole_prefix: paging.cursor.is_none(),
                    window: walked.reached.map(|lower| (lower, anchor)),
                    known: match walked.matches {
                        walk::Matches::MoreThan(n) => n + 1,
                        _ => 0,
                    },
                };
                // A document the page's first partition holds more of than a page:
                // the planner's estimate over that partition (its statistics see
                // the document), scaled to the table, as for a page a window held.
                if walked.filled_in_first_round {
                    tx.commit().await.map_err(unavailable)?;
                    let counted = total(
                        &client,
                        &state.postgres()?.table_sizes,
                        &filter,
                        &params.all(),
                        seen,
                        exact_up_to(&q),
                    )
                    .await?;
                    return answer(walked.page, counted, &paging);
                }
                let (total, total_is_estimate) = walked_total(
                    &tx,
                    &state.postgres()?.table_sizes,
                    &filter,
                    &params.all(),
                    seen,
                    exact_up_to(&q),
                )
                .await?;
                tx.commit().await.map_err(unavailable)?;
                return answer(walked.page, (total, total_is_estimate), &paging);
            }
        }
        first_window = false;
        windows_read += 1;
        let mut params = SqlParams::default();
        let filter = q.conditions(&mut params);
        let n_filter = params.len();
        let mut page_filter = match window {
            Some(lower) => format!("{filter} AND \"timestamp\" >= {}", params.push(lower)),
            None => filter.clone(),
        };
        if let Some(within) = &within {
            page_filter = format!("{page_filter} AND {within}");
        }
        let sql = page_sql(
            &EVENTS,
            &page_filter,
            Order::NewestFirst,
            &paging,
            &mut params,
        )?;
        let refs = params.all();
        let page = if reusable_filter {
            let tx = generic_plans(&mut client).await?;
            let statement = reusable(&tx, &sql).await?;
            let page = fetch_page(&EVENTS, &*tx, &statement, &refs, paging.limit).await?;
            tx.commit().await.map_err(unavailable)?;
            page
        } else {
            fetch_page(&EVENTS, &**client, &sql, &refs, paging.limit).await?
        };
        drop(refs);
        // Rows past the page inside the window are rows past the page, period.
        if page.has_more || windows.peek().is_none() {
            break (filter, params, n_filter, page, window);
        }
        // Too few: a window with nothing at all says the matches are rare, and the
        // next step is everything (one wide query rather than several).
        if (page.rows.is_empty() && paging.offset == 0) || names_a_set {
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
    let seen = Seen {
        through: paging.offset + rows.len() as i64,
        has_more,
        whole_prefix: paging.cursor.is_none() && (paging.offset == 0 || !rows.is_empty()),
        window: window.map(|lower| (lower, anchor)),
        known: 0,
    };
    // A session's events are counted as its summary counts them (the catalog's
    // counts and the rows past its position): exact at any size and on any page,
    // where counting its index reads a descent of every partition (a session over
    // 90 days: 95) and an estimate scaled from a window is far off for a set of
    // events that keeps to its own span.
    if let [("session_id", session)] = q.filters.as_slice()
        && q.payload_contains.is_none()
        && q.start_time.is_none()
        && q.end_time.is_none()
        && (!seen.whole_prefix || seen.has_more)
    {
        let tx = generic_plans_at(&mut client, IsolationLevel::RepeatableRead).await?;
        let counted = super::timeline::counted_total(&tx, session).await?;
        tx.commit().await.map_err(unavailable)?;
        if let Some(counted) = counted {
            // What the page proves exists, should the counts' snapshot be older.
            let at_least = if seen.whole_prefix {
                seen.through + i64::from(has_more)
            } else {
                0
            };
            return answer(
                FetchedPage {
                    rows,
                    has_more,
                    next_cursor,
                },
                (counted.max(at_least), false),
                &paging,
            );
        }
    }
    // Matches too few for the first window, under one equality filter at most
    // (a plan the same for every value): counting up to the cap (an index walk of
    // at most 1,001 entries under a reused plan) comes before any estimate, whose
    // planning would visit every partition the wider window covers. A page the
    // first window filled takes its estimate from that window's few partitions.
    let counted = if reusable_filter && windows_read > 1 && (seen.has_more || !seen.whole_prefix) {
        counted_up_to_cap(&mut client, &filter, &params.refs(n_filter)).await?
    } else {
        None
    };
    let (total, total_is_estimate) = match counted {
        Some(exact) => (exact, false),
        None => {
            total(
                &client,
                &state.postgres()?.table_sizes,
                &filter,
                &params.refs(n_filter),
                seen,
                exact_up_to(&q),
            )
            .await?
        }
    };
    answer(
        FetchedPage {
            rows,
            has_more,
            next_cursor,
        },
        (total, total_is_estimate),
        &paging,
    )
}

/// A page of the embedded store (`store::sqlite::read::page`): one indexed walk,
/// with the same bounds as PostgreSQL's pages.
async fn embedded_page(
    reader: &crate::store::sqlite::read::Reader,
    q: EventQuery,
) -> Result<HttpResponse, Problem> {
    let bounds = crate::store::sqlite::read::PageBounds {
        exact_up_to: exact_up_to(&q),
        max_bytes: super::query::sql::MAX_PAGE_BYTES,
        overhead_bytes: super::query::sql::EVENT_OVERHEAD_BYTES,
    };
    let paging = q.paging;
    let page = reader
        .read(move |c| crate::store::sqlite::read::page(c, &q, bounds))
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(Page {
        events: page
            .events
            .iter()
            .map(stored_view)
            .collect::<Result<_, _>>()?,
        total: page.total,
        total_is_estimate: page.total_is_estimate,
        limit: paging.limit,
        offset: paging.offset,
        has_more: page.has_more,
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }))
}

/// The page as `GET /events` answers it.
fn answer(
    page: FetchedPage,
    (total, total_is_estimate): (i64, bool),
    paging: &Paging,
) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(Page {
        events: views(&page.rows)?,
        total,
        total_is_estimate,
        limit: paging.limit,
        offset: paging.offset,
        has_more: page.has_more,
        next_cursor: page.next_cursor,
    }))
}

/// How far back a page looks before it looks at everything: a day holds the first
/// page of most filters; the wider windows keep rarer ones from reading every
/// partition at once.
const LOOK_BACK_DAYS: [i64; 3] = [1, 8, 64];

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
    let kind = if raw_envelope {
        large::Kind::RawEnvelope
    } else {
        large::Kind::EventView
    };
    if let super::Store::Sqlite(reader) = &state.store {
        use crate::store::sqlite::read;
        let owned = id.to_owned();
        let limit = i64::from(large::LARGE_STORED_BYTES);
        let seq = match reader
            .read(move |c| read::one_or_place(c, &owned, raw_envelope, limit))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| not_found(id))?
        {
            read::Single::Small(e) => {
                return render_stored(&e, raw_envelope).map(bytes::Bytes::from);
            }
            read::Single::Large(seq) => seq,
        };
        let reader = reader.clone();
        let read_it = async move {
            let found = reader
                .read(move |c| read::one_at(c, seq, raw_envelope))
                .await
                .map_err(unavailable)?
                .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "the event is gone"))?;
            render_stored(&found, raw_envelope).map(bytes::Bytes::from)
        };
        return state.large_reads.read((kind, seq), read_it).await;
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
    let mut client = state.postgres()?.pool.get().await.map_err(unavailable)?;
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
    let pool = state.postgres()?.pool.clone();
    state
        .large_reads
        .read((kind, seq), async move {
            let client = pool.get().await.map_err(unavailable)?;
            let row = fetch_by_seq(&client, seq, time, raw_envelope).await;
            // Do not keep a connection whose buffer grew to this event's size.
            drop(deadpool_postgres::Object::take(client));
            render(&row?, raw_envelope).map(bytes::Bytes::from)
        })
        .await
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
        .body(large::in_slices(body)))
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
        .body(large::in_slices(body)))
}
