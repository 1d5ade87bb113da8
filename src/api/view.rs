//! What the API shows: an event as the contract's fields, a stored `json`/`jsonb`
//! column as its text (never parsed into a tree), and the published envelope
//! rebuilt from the stored columns.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Row;

use super::problem::{Problem, unavailable};

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
