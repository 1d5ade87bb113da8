//! `candystore replay`: stored events published again, exactly as they were
//! published (the `/raw` envelope and the original AMQP properties, plus the
//! authenticated `x-candystore-replay` mark, `crate::model::replay_mark`), in time order, to an exchange the operator names, so that
//! downstream services can rebuild their state. Candystore's own ingest acks a
//! replayed delivery without storing it again.
//!
//! The walk is keyset-paged on (timestamp, seq), so it can stop anywhere and
//! resume from the last position published (an `/events` cursor). It reads
//! either store (`super::store::Store`); the embedded file is read beside its
//! service, read-only.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::store::{Store, on_file};
use crate::model::envelope::rebuild;
use crate::model::query::{Cursor, EventQuery, JsonText, SqlParams};
use crate::model::replay_mark::ReplayKey;
use crate::source::publish::{RepublishError, Republisher};

/// Events read per query.
const PAGE: i64 = 1_000;
/// Bytes of envelopes and payloads one page holds at most (a page closes at the
/// first event past it; one larger event is a page of its own): a replay's
/// memory does not grow with its selection.
pub const PAGE_BYTES: usize = 16 << 20;
/// Publishes awaiting their confirm at most. The broker confirms in order, and the
/// position moves only past confirmed events, so a resume repeats at most this many
/// (which Candystore's own ingest ignores, and consumers of a replay must tolerate).
const CONFIRM_WINDOW: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database")]
    Database(#[from] tokio_postgres::Error),
    #[error("embedded store")]
    Sqlite(#[from] rusqlite::Error),
    #[error("embedded store: its thread failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("event seq {seq}")]
    Publish {
        seq: i64,
        #[source]
        source: RepublishError,
    },
    #[error("event seq {0}: its stored envelope is not a JSON object")]
    BadEnvelope(i64),
    #[error("event seq {0}: its stored properties are not JSON")]
    BadProperties(i64),
    #[error("invalid --resume: not a position this command printed")]
    BadResume,
    #[error(
        "the store has no replay secret (table replay_secret): run `candystore migrate` (PostgreSQL) or start `serve` once (the embedded store)"
    )]
    NoReplaySecret,
}

/// What to replay and how fast.
pub struct Replay<'a> {
    /// The filters and time range of `GET /events` (its paging is ignored).
    pub query: &'a EventQuery,
    pub exchange: &'a str,
    /// Events per second; 0 publishes as fast as the broker confirms.
    pub rate: u64,
    /// Continue after this position (printed by an earlier run).
    pub resume: Option<Cursor>,
}

/// Where a replay got to.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events the broker confirmed.
    pub published: u64,
    /// The position of the last event confirmed, in order: `--resume` continues
    /// after it.
    pub position: Option<Cursor>,
}

impl Progress {
    /// The position as `--resume` takes it.
    pub fn resume_token(&self) -> Option<String> {
        self.position.map(|c| c.encode())
    }
}

/// How many events the replay selects (for a progress bar).
pub async fn count(store: &Store, replay: &Replay<'_>) -> Result<u64, ReplayError> {
    match store {
        Store::Postgres(client) => {
            let mut params = SqlParams::default();
            let mut filter = replay.query.conditions(&mut params);
            after(&mut filter, &mut params, replay.resume)?;
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM events WHERE {filter}"),
                    &params.all(),
                )
                .await?
                .get(0);
            Ok(n as u64)
        }
        Store::Sqlite(conn) => {
            let (query, resume) = (replay.query.clone(), replay.resume);
            on_file(conn, move |c| {
                crate::store::sqlite::replay::count(c, &query, resume)
            })
            .await
        }
    }
}

/// The installation's replay secret, which marks each publish as authentic.
async fn key(store: &Store) -> Result<ReplayKey, ReplayError> {
    let secret = match store {
        Store::Postgres(client) => crate::model::replay_mark::load(client).await?,
        Store::Sqlite(conn) => {
            on_file::<_, ReplayError>(conn, |c| crate::store::sqlite::replay::secret(c))
                .await?
                .map(|s| ReplayKey::new(&s))
        }
    };
    secret.ok_or(ReplayError::NoReplaySecret)
}

fn after(
    filter: &mut String,
    params: &mut SqlParams,
    position: Option<Cursor>,
) -> Result<(), ReplayError> {
    if let Some(c) = position {
        let t = c.time().ok_or(ReplayError::BadResume)?;
        let (t, s) = (params.push(t), params.push(c.seq));
        filter.push_str(&format!(
            " AND (\"timestamp\", seq) > ({t}, {s}) AND \"timestamp\" >= {t}"
        ));
    }
    Ok(())
}

/// Publishes every selected event, oldest first, each confirmed by the broker
/// (up to [`CONFIRM_WINDOW`] awaiting their confirm at once), pacing to `rate`.
/// `progress` moves with the confirms, so a caller that stops the future (Ctrl-C)
/// still knows where to resume; `on_event` is called after each confirm.
pub async fn run(
    store: &Store,
    publisher: &Republisher,
    replay: &Replay<'_>,
    progress: &mut Progress,
    mut on_event: impl FnMut(&Progress),
) -> Result<(), ReplayError> {
    let key = key(store).await?;
    let started = Instant::now();
    let mut position = replay.resume;
    let mut sent: u64 = 0;
    let mut waiting: std::collections::VecDeque<(Cursor, i64, usize, Confirm)> =
        std::collections::VecDeque::new();
    loop {
        let Page { events, full } = page(store, replay.query, position).await?;
        for event in events {
            if replay.rate > 0 {
                let due = started + Duration::from_secs_f64(sent as f64 / replay.rate as f64);
                tokio::time::sleep_until(due).await;
            }
            let seq = event.at.seq;
            let confirm = publisher
                .start(
                    replay.exchange,
                    &event.routing_key,
                    &event.body,
                    &event.properties,
                    Some((&key, seq)),
                )
                .await
                .map_err(|source| ReplayError::Publish { seq, source })?;
            sent += 1;
            position = Some(event.at);
            waiting.push_back((event.at, seq, event.body.len(), Box::pin(confirm)));
            // Unconfirmed publishes may still sit in the client's send buffer:
            // bounded in count and in bytes.
            while waiting.len() >= CONFIRM_WINDOW
                || waiting.iter().map(|w| w.2).sum::<usize>() > PAGE_BYTES
            {
                confirmed(&mut waiting, progress, &mut on_event).await?;
            }
        }
        if !full {
            while !waiting.is_empty() {
                confirmed(&mut waiting, progress, &mut on_event).await?;
            }
            return Ok(());
        }
    }
}

/// A stored event as it is published again.
struct Event {
    at: Cursor,
    routing_key: String,
    /// The envelope as published (`rebuild`).
    body: Vec<u8>,
    properties: serde_json::Value,
}

/// One page of the walk: at most [`PAGE`] events and about [`PAGE_BYTES`];
/// `full` when a bound closed it (more may follow).
struct Page {
    events: Vec<Event>,
    full: bool,
}

/// Reads the page after `position` from either store.
async fn page(
    store: &Store,
    query: &EventQuery,
    position: Option<Cursor>,
) -> Result<Page, ReplayError> {
    match store {
        Store::Postgres(client) => {
            let mut params = SqlParams::default();
            let mut filter = query.conditions(&mut params);
            after(&mut filter, &mut params, position)?;
            postgres_page(client, &filter, &params).await
        }
        Store::Sqlite(conn) => {
            let query = query.clone();
            // Each row becomes its event as it is read: the page holds the
            // rebuilt bodies alone, not the stored columns beside them.
            let (events, full) = on_file::<_, ReplayError>(conn, move |c| {
                let mut events = Vec::new();
                let full = crate::store::sqlite::replay::page(
                    c,
                    &query,
                    position,
                    PAGE as usize,
                    PAGE_BYTES,
                    |e| events.push(republished(e)),
                )?;
                Ok((events, full))
            })
            .await?;
            let events = events.into_iter().collect::<Result<_, ReplayError>>()?;
            Ok(Page { events, full })
        }
    }
}

/// A stored event of the embedded file as it is published again.
fn republished(e: crate::store::sqlite::replay::Stored) -> Result<Event, ReplayError> {
    let body = rebuild(
        e.envelope.as_bytes(),
        e.payload.as_bytes(),
        e.payload_member.as_deref(),
    )
    .ok_or(ReplayError::BadEnvelope(e.seq))?;
    let properties =
        serde_json::from_str(&e.properties).map_err(|_| ReplayError::BadProperties(e.seq))?;
    Ok(Event {
        at: Cursor {
            timestamp_micros: e.timestamp,
            seq: e.seq,
        },
        routing_key: e.routing_key,
        body,
        properties,
    })
}

/// Reads PostgreSQL's next page, streaming rows and stopping once they hold
/// PAGE_BYTES.
async fn postgres_page(
    client: &Client,
    filter: &str,
    params: &SqlParams,
) -> Result<Page, ReplayError> {
    let stream = client
        .query_raw(
            &format!(
                "SELECT seq, \"timestamp\", routing_key, envelope, payload, payload_member, properties \
                 FROM events WHERE {filter} ORDER BY \"timestamp\", seq LIMIT {PAGE}"
            ),
            params.all(),
        )
        .await?;
    futures::pin_mut!(stream);
    let (mut events, mut bytes) = (Vec::new(), 0);
    while let Some(row) = futures::StreamExt::next(&mut stream).await {
        let row = row?;
        let seq: i64 = row.get("seq");
        let envelope: JsonText = row.get("envelope");
        let payload: JsonText = row.get("payload");
        bytes += envelope.0.len() + payload.0.len();
        let body = rebuild(envelope.0, payload.0, row.get("payload_member"))
            .ok_or(ReplayError::BadEnvelope(seq))?;
        let t: chrono::DateTime<chrono::Utc> = row.get("timestamp");
        events.push(Event {
            at: Cursor {
                timestamp_micros: t.timestamp_micros(),
                seq,
            },
            routing_key: row.get("routing_key"),
            body,
            properties: row.get("properties"),
        });
        if bytes >= PAGE_BYTES {
            return Ok(Page { events, full: true });
        }
    }
    let full = events.len() as i64 == PAGE;
    Ok(Page { events, full })
}

type Confirm =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RepublishError>> + Send>>;

/// Awaits the oldest confirm outstanding and moves the progress past its event.
async fn confirmed(
    waiting: &mut std::collections::VecDeque<(Cursor, i64, usize, Confirm)>,
    progress: &mut Progress,
    on_event: &mut impl FnMut(&Progress),
) -> Result<(), ReplayError> {
    if let Some((at, seq, _, confirm)) = waiting.pop_front() {
        confirm
            .await
            .map_err(|source| ReplayError::Publish { seq, source })?;
        progress.position = Some(at);
        progress.published += 1;
        on_event(progress);
    }
    Ok(())
}
