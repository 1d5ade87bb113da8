//! What the API shows: an event as the contract's fields, a stored `json`/`jsonb`
//! column as its text (never parsed into a tree), and the published envelope
//! rebuilt from the stored columns.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;

use super::problem::{Problem, unavailable};
use crate::store::sqlite::read::StoredEvent;

/// The columns an [`EventView`] is made from.
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

pub(crate) use crate::model::query::JsonText;

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

/// An event of the embedded store as the API shows it: the same fields, the
/// same text (its payload is jsonb's canonical text, as PostgreSQL returns it).
pub(crate) fn stored_view(e: &StoredEvent) -> Result<EventView, Problem> {
    let time = |micros: i64| {
        DateTime::<Utc>::from_timestamp_micros(micros)
            .map(rfc3339)
            .ok_or_else(|| unavailable(BadTime(micros)))
    };
    Ok(EventView {
        id: e.id.clone(),
        event_type: e.event_type.clone(),
        source: e.source.clone(),
        target: e.target.clone(),
        routing_key: e.routing_key.clone(),
        timestamp: time(e.timestamp)?,
        stored_at: time(e.stored_at)?,
        payload: RawValue::from_string(e.payload.clone()).map_err(unavailable)?,
        session_id: e.session_id.clone(),
        correlation_id: e.correlation_id.clone(),
        storage_latency_ms: e.storage_latency_ms,
    })
}

/// An event of the embedded store as the API answers it (see [`render`]).
pub(crate) fn render_stored(e: &StoredEvent, raw_envelope: bool) -> Result<Vec<u8>, Problem> {
    match (&e.envelope, raw_envelope) {
        (Some((envelope, member)), true) => crate::model::envelope::rebuild(
            envelope.as_bytes(),
            e.payload.as_bytes(),
            member.as_deref(),
        )
        .ok_or_else(|| unavailable(BadEnvelope(envelope.chars().take(40).collect()))),
        _ => serde_json::to_vec(&stored_view(e)?).map_err(unavailable),
    }
}

/// A stored time outside what a timestamp can be (never written by this service).
#[derive(Debug, thiserror::Error)]
#[error("stored time {0} µs is out of range")]
struct BadTime(i64);

/// Events as the API shows them.
pub(crate) fn views(rows: &[Row]) -> Result<Vec<EventView>, Problem> {
    rows.iter().map(view).collect()
}

/// An event as the API answers it: its view, or the envelope as published.
pub(crate) fn render(row: &Row, raw_envelope: bool) -> Result<Vec<u8>, Problem> {
    if !raw_envelope {
        return serde_json::to_vec(&view(row)?).map_err(unavailable);
    }
    let JsonText(envelope) = row.try_get("envelope").map_err(unavailable)?;
    let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
    let member: Option<&str> = row.get("payload_member");
    crate::model::envelope::rebuild(envelope, payload, member).ok_or_else(|| {
        unavailable(BadEnvelope(
            String::from_utf8_lossy(&envelope[..envelope.len().min(40)]).into_owned(),
        ))
    })
}

/// A stored envelope that is not an object's text (never written by this service).
#[derive(Debug, thiserror::Error)]
#[error("stored envelope is not a json object: {0}")]
struct BadEnvelope(String);
