//! `GET /dead-letters` and `GET /dead-letters/{id}`: every delivery that could not
//! be stored as an event, newest first, with the same parameter rules, paging and
//! problems as `GET /events`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;

use base64::Engine as _;

use super::problem::{Problem, unavailable};
use super::query::Paging;
use super::query::params::{known_pairs, parse_time_parameter};
use super::query::sql::{FetchedPage, Listing, Order, fetch_page, page_sql};
use super::view::{JsonText, rfc3339};
use super::{ApiState, large};
use crate::model::envelope::RejectReason;
use crate::model::query::SqlParams;

/// The columns of a listed dead letter (its body only as a size).
const COLUMNS: &str = "seq, received_at, stored_at, exchange, routing_key, reason, detail, \
                       properties, octet_length(body) AS body_bytes";

/// What a dead letter counts towards a page: its metadata (the body is not listed).
fn row_bytes(row: &Row) -> Result<usize, Problem> {
    let JsonText(properties) = row.try_get("properties").map_err(unavailable)?;
    let detail: &str = row.try_get("detail").map_err(unavailable)?;
    Ok(properties.len() + detail.len() + 256)
}

const DEAD_LETTERS: Listing = Listing {
    table: "dead_letter",
    columns: COLUMNS,
    time: "received_at",
    row_bytes,
};

/// Every parameter `GET /dead-letters` takes.
const PARAMETERS: [&str; 6] = [
    "reason",
    "routing_key",
    "start_time",
    "end_time",
    "limit",
    "cursor",
];

/// The longest routing key AMQP can carry (a short string).
const MAX_ROUTING_KEY_BYTES: usize = 255;

/// One dead letter as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// Its number, for `GET /dead-letters/{id}` and `candystore dead-letters show`.
    pub id: i64,
    pub received_at: String,
    pub stored_at: String,
    pub exchange: String,
    pub routing_key: String,
    /// Why it is not an event (`invalid_json`, `unrecognised_envelope`, …).
    pub reason: String,
    pub detail: String,
    /// The AMQP properties and headers, as a JSON object.
    #[schema(value_type = Object)]
    pub properties: Box<RawValue>,
    pub body_bytes: i32,
    /// The body exactly as received (`GET /dead-letters/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body as text, when it is UTF-8 (`GET /dead-letters/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
}

fn view(row: &Row) -> Result<DeadLetterView, Problem> {
    let JsonText(properties) = row.try_get("properties").map_err(unavailable)?;
    let properties = std::str::from_utf8(properties)
        .map_err(unavailable)
        .and_then(|text| RawValue::from_string(text.to_owned()).map_err(unavailable))?;
    let body: Option<&[u8]> = row.try_get("body").ok();
    Ok(DeadLetterView {
        id: row.get("seq"),
        received_at: rfc3339(row.get("received_at")),
        stored_at: rfc3339(row.get("stored_at")),
        exchange: row.get("exchange"),
        routing_key: row.get("routing_key"),
        reason: row.get("reason"),
        detail: row.get("detail"),
        properties,
        body_bytes: row.get("body_bytes"),
        body_text: body
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned),
        body_base64: body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    })
}

/// What a dead letter counts towards a page of the embedded store's: its
/// metadata, as [`row_bytes`] counts it, within the events' page bytes.
const DEAD_LETTER_PAGE_BYTES: crate::store::sqlite::read::PageBounds =
    crate::store::sqlite::read::PageBounds {
        exact_up_to: 0,
        max_bytes: super::query::sql::MAX_PAGE_BYTES,
        overhead_bytes: 256,
    };

/// A dead letter of the embedded store as the API shows it.
fn stored_view(
    d: &crate::store::sqlite::read::StoredDeadLetter,
) -> Result<DeadLetterView, Problem> {
    let time = |micros: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)
            .map(rfc3339)
            .unwrap_or_default()
    };
    Ok(DeadLetterView {
        id: d.seq,
        received_at: time(d.received_at),
        stored_at: time(d.stored_at),
        exchange: d.exchange.clone(),
        routing_key: d.routing_key.clone(),
        reason: d.reason.clone(),
        detail: d.detail.clone(),
        properties: RawValue::from_string(d.properties.clone()).map_err(unavailable)?,
        body_bytes: d.body_bytes as i32,
        body_text: d
            .body
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned),
        body_base64: d
            .body
            .as_deref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    })
}

/// One page of `GET /dead-letters`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    dead_letters: Vec<DeadLetterView>,
    limit: i64,
    has_more: bool,
    next_cursor: Option<String>,
}

/// Dead letters matching the filters, newest first.
#[utoipa::path(get, path = "/dead-letters", tag = "dead letters", params(
    ("reason" = Option<String>, Query, description = "only this reason (invalid_json, unrecognised_envelope, …)"),
    ("routing_key" = Option<String>, Query, min_length = 1, max_length = 255, description = "only this routing key"),
    ("start_time" = Option<String>, Query, format = DateTime, description = "received at or after (RFC 3339 time, or a date YYYY-MM-DD: its midnight UTC)"),
    ("end_time" = Option<String>, Query, format = DateTime, description = "received at or before (RFC 3339 time, or a date YYYY-MM-DD: its midnight UTC)"),
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
    ("cursor" = Option<String>, Query, pattern = "^[0-9a-fA-F]{32}$", description = "next_cursor of the previous page"),
), responses(
    (status = 200, description = "a page of dead letters", body = DeadLetterPage),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn list(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let mut paging = Paging::default();
    let mut filter = crate::store::sqlite::read::DeadLetterFilter::default();
    for (name, value) in known_pairs(req.query_string(), &PARAMETERS)? {
        if paging.take(name, &value)? {
            continue;
        }
        match name {
            "reason" => {
                let reason = RejectReason::ALL
                    .iter()
                    .find(|r| r.as_str() == value)
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            RejectReason::ALL.iter().map(|r| r.as_str()).collect();
                        Problem::bad_parameter(
                            "reason",
                            format!("{value:?} is not one of {}", known.join(", ")),
                        )
                    })?;
                filter.reason = Some(reason.as_str());
            }
            "routing_key" => {
                if value.is_empty() || value.len() > MAX_ROUTING_KEY_BYTES {
                    return Err(Problem::bad_parameter(
                        "routing_key",
                        "must be 1 to 255 bytes, as AMQP carries it",
                    ));
                }
                filter.routing_key = Some(value);
            }
            "start_time" => filter.start = Some(parse_time_parameter(name, &value)?),
            _ => filter.end = Some(parse_time_parameter(name, &value)?),
        }
    }
    if let (Some(s), Some(e)) = (filter.start, filter.end)
        && s > e
    {
        return Err(Problem::bad_parameter("end_time", "is before start_time"));
    }
    paging.check()?;
    if let super::Store::Sqlite(reader) = &state.store {
        let page = reader
            .read(move |c| {
                crate::store::sqlite::read::dead_letters(
                    c,
                    &filter,
                    &paging,
                    DEAD_LETTER_PAGE_BYTES,
                )
            })
            .await
            .map_err(unavailable)?;
        return Ok(HttpResponse::Ok().json(DeadLetterPage {
            dead_letters: page
                .dead_letters
                .iter()
                .map(stored_view)
                .collect::<Result<_, _>>()?,
            limit: paging.limit,
            has_more: page.has_more,
            next_cursor: page.next_cursor.map(|c| c.encode()),
        }));
    }
    let mut params = SqlParams::default();
    let mut clauses = vec!["TRUE".to_owned()];
    if let Some(reason) = filter.reason {
        clauses.push(format!("reason = {}", params.push(reason.to_owned())));
    }
    if let Some(key) = filter.routing_key {
        clauses.push(format!("routing_key = {}", params.push(key)));
    }
    if let Some(s) = filter.start {
        clauses.push(format!("received_at >= {}", params.push(s)));
    }
    if let Some(e) = filter.end {
        clauses.push(format!("received_at <= {}", params.push(e)));
    }
    let sql = page_sql(
        &DEAD_LETTERS,
        &clauses.join(" AND "),
        Order::NewestFirst,
        &paging,
        &mut params,
    )?;
    let client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    let FetchedPage {
        rows,
        has_more,
        next_cursor,
    } = fetch_page(&DEAD_LETTERS, &**client, &sql, &params.all(), paging.limit).await?;
    Ok(HttpResponse::Ok().json(DeadLetterPage {
        dead_letters: rows.iter().map(view).collect::<Result<_, _>>()?,
        limit: paging.limit,
        has_more,
        next_cursor,
    }))
}

/// One dead letter, with its body (base64, and as text when it is UTF-8).
#[utoipa::path(get, path = "/dead-letters/{id}", tag = "dead letters", params(("id" = i64, Path, description = "the dead letter's id")), responses(
    (status = 200, description = "the dead letter", body = DeadLetterView),
    (status = 404, description = "no such dead letter", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "too many large rows are being read at once (at most 4, 30 s wait), or the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn one(
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no dead letter with id {:?}", path.as_str()),
        )
    };
    let Ok(id) = path.parse::<i64>() else {
        return Err(not_found());
    };
    if let super::Store::Sqlite(reader) = &state.store {
        use crate::store::sqlite::read;
        let limit = i64::from(large::LARGE_STORED_BYTES);
        match reader
            .read(move |c| read::dead_letter_or_place(c, id, limit))
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?
        {
            read::Single::Small(d) => return Ok(json(rendered_stored(&d)?)),
            read::Single::Large(_) => {}
        }
        let reader = reader.clone();
        let read_it = async move {
            let found = reader
                .read(move |c| read::dead_letter(c, id))
                .await
                .map_err(unavailable)?
                .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "the dead letter is gone"))?;
            rendered_stored(&found)
        };
        // A large body: read once for every client asking at the same moment,
        // under one of the large-read permits, as on PostgreSQL.
        let body = state
            .large_reads
            .read((large::Kind::DeadLetter, id), read_it)
            .await?;
        return Ok(json(body));
    }
    // One query: the whole row when its body is small (the common case), only
    // its place when it is large. Its size as received (octet_length reads the
    // length without decompressing), not as stored: 30 MB of one byte compress
    // to almost nothing. The body is encoded here, not in a statement
    // that could outlast the statement timeout.
    let client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS}, CASE WHEN small THEN body END AS body, small FROM \
                 (SELECT *, octet_length(body) <= $2 AS small FROM dead_letter WHERE seq = $1) d"
            ),
            &[&id, &large::LARGE_STORED_BYTES],
        )
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    if row.get::<_, bool>("small") {
        return Ok(json(rendered(&row)?));
    }
    // A large body: read once for every client asking at the same moment, under
    // one of the large-read permits, on a connection then closed (its buffer grew).
    let received_at: chrono::DateTime<chrono::Utc> = row.get("received_at");
    drop(client);
    let pool = state.postgres()?.pool.clone();
    let body = state
        .large_reads
        .read((large::Kind::DeadLetter, id), async move {
            let client = pool.get().await.map_err(unavailable)?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS}, body FROM dead_letter WHERE received_at = $2 AND seq = $1"
                    ),
                    &[&id, &received_at],
                )
                .await
                .map_err(unavailable);
            drop(deadpool_postgres::Object::take(client));
            let row = row?.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "the dead letter is gone"))?;
            rendered(&row)
        })
        .await?;
    Ok(json(body))
}

/// A dead letter of the embedded store, rendered.
fn rendered_stored(
    d: &crate::store::sqlite::read::StoredDeadLetter,
) -> Result<bytes::Bytes, Problem> {
    serde_json::to_vec(&stored_view(d)?)
        .map(bytes::Bytes::from)
        .map_err(unavailable)
}

fn rendered(row: &Row) -> Result<bytes::Bytes, Problem> {
    serde_json::to_vec(&view(row)?)
        .map(bytes::Bytes::from)
        .map_err(unavailable)
}

fn json(body: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(large::in_slices(body))
}
