//! `GET /events/stream`: a live tail of newly stored events over Server-Sent
//! Events, with the filters of `GET /events`.
//!
//! Each event's SSE id is its place in the tail's order, `{txid}-{seq}`
//! ([`tail::Position`]): the tail reads only rows that are final, in that order, so
//! "every event past the last id" is exactly what a client has not seen yet, with
//! writers committing in any order. Resuming with `Last-Event-ID` gives no gap and
//! no repeat. Without it, the tail starts at the newest readable event.
//!
//! Streams do not query on their own: one poller (`tail::TailHub`) reads new
//! events for all of them, and a stream queries only to catch up when it is
//! behind. Each stream is bounded: at most STREAM_MAX_CLIENTS at once (503 past
//! it), a client that takes no chunk for STREAM_WRITE_TIMEOUT is cut, and a
//! stream ends after STREAM_MAX_LIFETIME (EventSource resumes). It ends at shutdown.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::ApiState;
use super::problem::Problem;
use super::query::params::{EVENT_PARAMETERS, known_pairs};
use super::query::{EventFilters, EventQuery};
use super::tail::{
    self, Position, TailBatch, TailEvent, TailFilter, Verdict, contained_in_database, read_after,
};

const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// The most a stream hands actix at once (one frame may be larger, and goes alone).
const CHUNK_BYTES: usize = 64 << 10;

/// Parses the stream's parameters: the filters of `GET /events` (and its time
/// range), plus where to resume.
fn parse(req: &HttpRequest) -> Result<Parsed, Problem> {
    let mut known = EVENT_PARAMETERS.to_vec();
    known.push("last_event_id");
    known.push("ticket");
    let mut resume = None;
    let mut ticket = None;
    let mut filters = Vec::new();
    for (name, value) in known_pairs(req.query_string(), &known)? {
        match name {
            "last_event_id" => resume = Some(value),
            "ticket" => ticket = Some(value),
            "limit" | "offset" | "cursor" => {
                return Err(Problem::bad_parameter(name, "a stream is not paged"));
            }
            // Checked against every new event in memory: bounded (GET /events,
            // which PostgreSQL answers, takes longer ones).
            "payload_contains" if value.len() > tail::MAX_STREAM_PATTERN_BYTES => {
                return Err(Problem::bad_parameter(
                    name,
                    format!(
                        "on a stream is at most {} bytes",
                        tail::MAX_STREAM_PATTERN_BYTES
                    ),
                ));
            }
            _ => filters.push((name, value)),
        }
    }
    let q = EventQuery::from_pairs(filters)?;
    // The header (sent by EventSource on reconnect) wins over the parameter.
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Both are checked, so a bad value is never silently ignored.
    let id = |name: &'static str, v: String| {
        Position::parse(v.trim()).ok_or_else(|| {
            Problem::bad_parameter(name, format!("{v:?} is not an event id this stream sent"))
        })
    };
    let from_param = resume
        .map(|v| id("last_event_id", v).map(|p| ("last_event_id", p)))
        .transpose()?;
    let from_header = header
        .map(|v| id("Last-Event-ID", v).map(|p| ("Last-Event-ID", p)))
        .transpose()?;
    let resume = from_header.or(from_param);
    Ok((q, resume, ticket))
}

/// The filters, where to resume (and which parameter said so), the ticket.
type Parsed = (EventQuery, Option<(&'static str, Position)>, Option<String>);

/// The live-tail streams' bounds and the slots they take.
#[derive(Debug)]
pub struct Streams {
    pub slots: Arc<tokio::sync::Semaphore>,
    pub max_clients: usize,
    pub write_timeout: Duration,
    pub max_lifetime: Duration,
    /// Streams open now (`candystore_streams_open`).
    pub open: prometheus::IntGauge,
}

impl Streams {
    pub fn new(limits: StreamLimits, open: prometheus::IntGauge) -> Self {
        Streams {
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_clients)),
            max_clients: limits.max_clients,
            write_timeout: limits.write_timeout,
            max_lifetime: limits.max_lifetime,
            open,
        }
    }
}

/// Bounds of live-tail streams (settings STREAM_*).
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Streams open at once; one more gets a 503 problem.
    pub max_clients: usize,
    /// A stream whose client has not taken a chunk for this long is cut.
    pub write_timeout: Duration,
    /// A stream ends after this long; EventSource reconnects and resumes from
    /// `Last-Event-ID`, so nothing is missed.
    pub max_lifetime: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_clients: 100,
            write_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(600),
        }
    }
}

/// A duplicate of the client's socket, taken when the connection opened, so a
/// stream can cut a client that stopped reading: actix stops polling the body
/// while its write buffer is full, and would otherwise hold the connection open.
#[derive(Clone, Debug)]
pub struct ClientSocket(pub Arc<std::net::TcpStream>);

/// Why a stream ended early.
enum Ended {
    /// The client took nothing for `write_timeout` (or went away).
    SlowReader,
    /// A query failed (logged where it failed).
    Database,
}

/// Feeds one client: from the hub's broadcasts, after catching up from the
/// database when behind, through a one-chunk channel the response body drains.
struct Feed {
    state: web::Data<ApiState>,
    query: EventQuery,
    filter: Arc<TailFilter>,
    /// Every event at or before `last` has been considered for this client.
    last: Position,
    out: mpsc::Sender<Bytes>,
    last_sent: Instant,
    socket: Option<ClientSocket>,
}

impl ClientSocket {
    /// Whether the client closed its side. The socket is non-blocking (it is a
    /// duplicate of the server's), so this never waits.
    fn closed_by_client(&self) -> bool {
        matches!(self.0.peek(&mut [0u8; 1]), Ok(0))
    }

    fn cut(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Feed {
    async fn send(&mut self, chunk: Bytes) -> Result<(), Ended> {
        let timeout = self.state.streams.write_timeout;
        self.out
            .send_timeout(chunk, timeout)
            .await
            .map_err(|_| Ended::SlowReader)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends every matching event with `last < position <= upto` from the database.
    async fn catch_up(&mut self, upto: Position) -> Result<(), Ended> {
        while self.last < upto {
            let (events, cut_short) = read_after(
                self.state.tail.source(),
                self.last,
                Some(upto),
                Some(&self.query),
            )
            .await
            .map_err(|_| Ended::Database)?;
            let next = match (cut_short, events.last()) {
                (true, Some(e)) => e.pos,
                _ => upto,
            };
            let frames: Vec<Bytes> = events.iter().map(|e| e.frame.clone()).collect();
            tracing::debug!(from = ?self.last, to = ?next, events = events.len(), "live tail: a stream caught up");
            self.last = next;
            self.send_frames(&frames).await?;
        }
        Ok(())
    }

    /// Sends frames in chunks of about [`CHUNK_BYTES`] (a larger frame alone, not
    /// copied), each waiting for the client: one that stops reading holds a chunk or
    /// two besides the socket's own buffers, not a whole batch.
    async fn send_frames(&mut self, frames: &[Bytes]) -> Result<(), Ended> {
        let mut chunk = bytes::BytesMut::new();
        for frame in frames {
            if !chunk.is_empty() && chunk.len() + frame.len() > CHUNK_BYTES {
                self.send(chunk.split().freeze()).await?;
            }
            if chunk.is_empty() && frame.len() >= CHUNK_BYTES {
                self.send(frame.clone()).await?;
            } else {
                chunk.extend_from_slice(frame);
            }
        }
        if !chunk.is_empty() {
            self.send(chunk.freeze()).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, batch: Arc<TailBatch>) -> Result<(), Ended> {
        tracing::debug!(last = ?self.last, after = ?batch.after, upto = ?batch.upto, events = batch.events.len(), "live tail: a stream takes a batch");
        if batch.upto <= self.last {
            return Ok(());
        }
        if batch.after > self.last {
            self.catch_up(batch.after).await?;
        }
        let verdicts = self.judge(&batch).await?;
        // What memory could not judge (large payloads, costly checks), PostgreSQL does.
        let ask: Vec<&TailEvent> = batch
            .events
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Verdict::AskDatabase)
            .map(|(e, _)| e)
            .collect();
        let contained = match self.filter.pattern_text() {
            Some(pattern) if !ask.is_empty() => {
                contained_in_database(self.state.tail.source(), &pattern, &ask)
                    .await
                    .map_err(|_| Ended::Database)?
            }
            _ => Vec::new(),
        };
        let frames: Vec<Bytes> = batch
            .events
            .iter()
            .zip(&verdicts)
            .filter(|(e, v)| match v {
                Verdict::Yes => true,
                Verdict::No => false,
                Verdict::AskDatabase => contained.contains(&e.pos),
            })
            .map(|(e, _)| e.frame.clone())
            .collect();
        self.last = batch.upto;
        self.send_frames(&frames).await
    }

    /// The filter's verdict on each event of `batch` past `last` (No for the
    /// rest). A payload filter parses and compares documents, so it runs on the
    /// blocking pool, never on the HTTP worker that serves this stream.
    async fn judge(&self, batch: &Arc<TailBatch>) -> Result<Vec<Verdict>, Ended> {
        let (filter, last) = (self.filter.clone(), self.last);
        let judge = move |batch: &TailBatch| -> Vec<Verdict> {
            batch
                .events
                .iter()
                .map(|e| {
                    if e.pos > last {
                        filter.judge(e)
                    } else {
                        Verdict::No
                    }
                })
                .collect()
        };
        if !self.filter.judges_payloads() {
            return Ok(judge(batch));
        }
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || judge(&batch))
            .await
            .map_err(|_| Ended::Database)
    }

    async fn run(
        mut self,
        mut batches: broadcast::Receiver<Arc<TailBatch>>,
        head: Position,
    ) -> Result<(), Ended> {
        let deadline = Instant::now() + self.state.streams.max_lifetime;
        self.catch_up(head).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // The client went away and actix dropped the body.
                _ = self.out.closed() => return Ok(()),
                batch = batches.recv() => match batch {
                    Ok(batch) => self.apply(batch).await?,
                    // Fell behind the channel: the next batch starts past `last`,
                    // and `apply` catches up from the database.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(last = ?self.last, batches = n, "live tail: a stream fell behind the broadcast");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => {
                    if !self.state.lifecycle.is_ready()
                        || self.socket.as_ref().is_some_and(ClientSocket::closed_by_client)
                    {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        // EventSource reconnects after `retry` ms with Last-Event-ID.
                        let _ = self.send(Bytes::from_static(b": stream lifetime reached; reconnect to resume\nretry: 1000\n\n")).await;
                        return Ok(());
                    }
                    if self.last_sent.elapsed() >= KEEPALIVE_EVERY {
                        self.send(Bytes::from_static(b": keep-alive\n\n")).await?;
                    }
                }
            }
        }
    }
}

/// A live tail of newly stored events (Server-Sent Events; the SSE id is `{txid}-{seq}`, the event's place in storage order). `payload_contains` on a stream is at most 4096 bytes.
#[utoipa::path(get, path = "/events/stream", tag = "events", params(
        EventFilters,
    ("last_event_id" = Option<String>, Query, pattern = "^[0-9]+(-[0-9]+)?$", description = "resume after this event id (the Last-Event-ID header wins)"),
    ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+(-[0-9]+)?$", description = "resume after this event id"),
), responses(
    (status = 200, description = "text/event-stream of `event` events", content_type = "text/event-stream"),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "STREAM_MAX_CLIENTS streams are open (with Retry-After), or the event store cannot answer", body = Problem, content_type = "application/problem+json"),
))]
pub async fn stream(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let (query, resume, ticket) = parse(&req)?;
    // The auth middleware let a request with a ticket through without a bearer
    // token: the ticket is the credential, and it is spent here, once.
    if let Some(ticket) = ticket {
        super::tickets::spend(&state, &ticket)?;
    }
    let Ok(permit) = state.streams.slots.clone().try_acquire_owned() else {
        return Ok(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many live-tail streams are open (at most {}); retry later",
                state.streams.max_clients
            ),
        )
        .response_with_retry_after(5));
    };
    // Subscribe before reading the head, so no batch falls between the two.
    let batches = state.tail.subscribe();
    let head = state.tail.head().await?;
    // No stream sent an id past the newest position: such an id would make the
    // stream wait, silent, for events that may never come.
    let last = match resume {
        Some((name, at)) if at > head => {
            return Err(Problem::bad_parameter(
                name,
                format!(
                    "{:?} is past the newest event ({:?}): not an event id this stream sent",
                    at.sse_id(),
                    head.sse_id()
                ),
            ));
        }
        Some((_, at)) => at,
        None => head,
    };
    tracing::debug!(?last, ?head, "live tail: a stream opens");
    let socket = req.conn_data::<ClientSocket>().cloned();
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let feed = Feed {
        filter: Arc::new(TailFilter::new(&query)),
        query,
        state: state.clone(),
        last,
        out: tx,
        last_sent: Instant::now(),
        socket: socket.clone(),
    };
    let metrics = state.streams.open.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _open = crate::metrics::Raised::new(&metrics);
        if let Err(Ended::SlowReader) = feed.run(batches, head).await {
            // The client stopped reading: close its socket, which makes actix
            // drop the connection and its buffered chunks.
            if let Some(socket) = socket {
                socket.cut();
            }
            tracing::debug!("live-tail client cut: it took nothing within the write timeout");
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, actix_web::Error>(chunk), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
