//! `GET /events/stream`: a live tail of newly stored events over Server-Sent
//! Events, with the filters of `GET /events`.
//!
//! Each event's SSE id is its `seq`. Writers insert one at a time under an
//! advisory lock held until COMMIT (`sink::write`), so `seq` grows in commit order
//! and "every row with seq > last" is exactly what a client has not seen yet:
//! resuming with `Last-Event-ID` gives no gap and no repeat. Without it, the tail
//! starts at the newest stored event. The stream polls the read pool (one short
//! query per interval, no connection held) and ends when the service shuts down.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use super::ApiState;
use super::events::{COLUMNS, EventQuery, fetch_page, query_pairs, unavailable, view};
use super::problem::Problem;

const POLL_EVERY: Duration = Duration::from_millis(200);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
const PAGE: i64 = 500;

/// Parses the stream's parameters: the filters of `GET /events` (and its time
/// range), plus where to resume.
fn parse(req: &HttpRequest) -> Result<(EventQuery, Option<i64>), Problem> {
    let pairs = query_pairs(req.query_string())?;
    let mut resume = None;
    let mut rest = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "last_event_id" => resume = Some(v),
            "limit" | "offset" | "cursor" => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid parameter {k}: a stream is not paged"),
                ));
            }
            _ => rest.push((k, v)),
        }
    }
    let q = EventQuery::parse(&serde_urlencoded::to_string(&rest).unwrap_or_default())?;
    // The header (sent by EventSource on reconnect) wins over the parameter.
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resume = match header.or(resume) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Problem::bad_parameter(
                        "Last-Event-ID",
                        format!("{v:?} is not an event id this stream sent"),
                    )
                })?,
        ),
    };
    Ok((q, resume))
}

struct Tail {
    state: web::Data<ApiState>,
    filter: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    last: i64,
    last_sent: Instant,
}

impl Tail {
    /// The next chunk to send: new events, a keep-alive, or `None` at shutdown.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, actix_web::Error>> {
        loop {
            if !self.state.lifecycle.is_ready() {
                return None;
            }
            match self.poll().await {
                Ok(Some(chunk)) => {
                    self.last_sent = Instant::now();
                    return Some(Ok(chunk));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e.into())),
            }
            if self.last_sent.elapsed() >= KEEPALIVE_EVERY {
                self.last_sent = Instant::now();
                return Some(Ok(Bytes::from_static(b": keep-alive\n\n")));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn poll(&mut self) -> Result<Option<Bytes>, Problem> {
        let client = self.state.pool.get().await.map_err(unavailable)?;
        let n = self.params.len();
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} AND seq > ${} ORDER BY seq LIMIT {}",
            self.filter,
            n + 1,
            PAGE + 1
        );
        let mut refs: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        refs.push(&self.last);
        // At most PAGE events and MAX_PAGE_BYTES per chunk; the rest comes with the
        // next poll, which follows at once.
        let rows = fetch_page(&client, &sql, &refs, PAGE).await?.rows;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows.len() * 512);
        for row in &rows {
            let seq: i64 = row.get("seq");
            let data = serde_json::to_string(&view(row)?).map_err(unavailable)?;
            out.extend_from_slice(format!("id: {seq}\nevent: event\ndata: {data}\n\n").as_bytes());
            self.last = seq;
        }
        Ok(Some(Bytes::from(out)))
    }
}

/// A live tail of newly stored events (Server-Sent Events; the SSE id is the storage sequence).
#[utoipa::path(get, path = "/events/stream", tag = "events", params(
        ("session_id" = Option<String>, Query, description = "only this session"),
        ("event_type" = Option<String>, Query, description = "only this event type"),
        ("source" = Option<String>, Query, description = "only this source"),
        ("target" = Option<String>, Query, description = "only this target"),
        ("correlation_id" = Option<String>, Query, description = "only this correlation id"),
        ("start_time" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("end_time" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("payload_contains" = Option<String>, Query, description = "a JSON object the payload contains (jsonb @>)"),
    ("last_event_id" = Option<i64>, Query, description = "resume after this event id (the Last-Event-ID header wins)"),
    ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event id"),
), responses(
    (status = 200, description = "text/event-stream of `event` events", content_type = "text/event-stream"),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
))]
pub async fn stream(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let (q, resume) = parse(&req)?;
    let (filter, params) = q.conditions();
    let last = match resume {
        Some(id) => id,
        None => {
            let client = state.pool.get().await.map_err(unavailable)?;
            client
                .query_one("SELECT coalesce(max(seq), 0) FROM events", &[])
                .await
                .map_err(unavailable)?
                .get(0)
        }
    };
    let tail = Tail {
        state,
        filter,
        params,
        last,
        last_sent: Instant::now(),
    };
    let body = futures::stream::unfold(tail, |mut tail| async move {
        tail.next_chunk().await.map(|chunk| (chunk, tail))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
