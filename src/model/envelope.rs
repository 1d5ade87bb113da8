//! What the pipeline carries: a stored event, a dead letter, and why a delivery was
//! rejected. Pure data; the projection rules that fill these live in `source::decode`.
//!
//! Every text field here is free of NUL characters and is valid UTF-8: that is the
//! promise decode makes, and the reason COPY never sees text PostgreSQL refuses.

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::Digest;

/// Which Bloodbank envelope a delivery used (see `docs/envelopes.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The original envelope: `id`, `event_type`, `data`.
    Original = 1,
    /// The typed envelope: `event_id`, `source` object, `payload`.
    Typed = 2,
    /// CloudEvents 1.0 structured mode: `specversion`, `type`, `data`.
    CloudEvents = 3,
}

impl Generation {
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The member of the envelope that holds the payload.
    pub fn payload_member(self) -> &'static str {
        match self {
            Generation::Typed => "payload",
            Generation::Original | Generation::CloudEvents => "data",
        }
    }
}

/// One event, projected onto the stored columns.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub target: Option<String>,
    pub routing_key: String,
    pub exchange: String,
    pub timestamp: DateTime<Utc>,
    /// True when `timestamp` came from the envelope itself. Then every redelivery and
    /// every byte-identical repeat carries the same time, and (id, source, timestamp)
    /// identifies the event. A fallback time (AMQP `timestamp`, receive time) can
    /// differ between two deliveries of one event: such an event claims its
    /// (id, source) in `event_keys` first (docs/identity.md).
    pub own_time: bool,
    pub received_at: DateTime<Utc>,
    /// The payload as JSON text (`{}` when the envelope had none).
    pub payload: Vec<u8>,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub generation: Generation,
    /// The published envelope without its payload member, as JSON text. Together
    /// with `payload` and `payload_member` it rebuilds the original document.
    pub envelope: Vec<u8>,
    /// The envelope member the payload came from; `None` when there was none.
    pub payload_member: Option<&'static str>,
    /// The AMQP properties and headers as a JSON object.
    pub properties: Vec<u8>,
    /// True when text PostgreSQL cannot hold (NUL) was removed from the body, the
    /// routing key or the properties. The original body is then kept beside it.
    pub sanitized: bool,
    /// The delivery body exactly as received. Stored only when `sanitized`, but
    /// always held until commit so a row PostgreSQL refuses can be dead-lettered whole.
    pub body: Vec<u8>,
}

/// Why a delivery is not an event. The label values of the dead-letter metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    EmptyBody,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    UnrecognisedEnvelope,
    MissingEventType,
    FieldTooLong,
    RejectedByDatabase,
    /// The body nests arrays and objects deeper than `decode::MAX_JSON_DEPTH`.
    TooDeep,
    /// An AMQP short string (routing key, exchange, a property, a header name)
    /// was not UTF-8; the client library handed it over with U+FFFD in its place.
    AmqpNotUtf8,
    /// The AMQP headers nest tables or arrays deeper than the client decodes.
    HeadersTooDeep,
}

impl RejectReason {
    pub const ALL: [RejectReason; 11] = [
        RejectReason::EmptyBody,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::UnrecognisedEnvelope,
        RejectReason::MissingEventType,
        RejectReason::FieldTooLong,
        RejectReason::RejectedByDatabase,
        RejectReason::TooDeep,
        RejectReason::AmqpNotUtf8,
        RejectReason::HeadersTooDeep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyBody => "empty_body",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::UnrecognisedEnvelope => "unrecognised_envelope",
            RejectReason::MissingEventType => "missing_event_type",
            RejectReason::FieldTooLong => "field_too_long",
            RejectReason::RejectedByDatabase => "rejected_by_database",
            RejectReason::TooDeep => "too_deep",
            RejectReason::AmqpNotUtf8 => "amqp_not_utf8",
            RejectReason::HeadersTooDeep => "headers_too_deep",
        }
    }
}

/// A delivery that cannot be stored as an event, kept whole.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// SHA-256 over exchange, routing key, message id and body: a redelivery of the
    /// same delivery maps to the same row.
    pub fingerprint: [u8; 32],
    pub exchange: String,
    pub routing_key: String,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
    pub reason: RejectReason,
    pub detail: String,
    pub received_at: DateTime<Utc>,
    /// The event type, when the body got far enough to tell (for metric labels).
    pub event_type: Option<String>,
}

/// What the sink writes for one delivery.
#[derive(Clone, Debug)]
pub enum Record {
    Event(Box<Event>),
    DeadLetter(Box<DeadLetter>),
    /// A delivery `candystore replay` published (it carries an authentic mark,
    /// `crate::model::replay_mark`): the
    /// event is stored already, so it is acked with its batch and adds no row.
    Replayed,
}

impl Record {
    /// Bytes this record holds in memory, for the batch byte limit.
    pub fn size_bytes(&self) -> usize {
        match self {
            Record::Event(e) => {
                e.payload.len()
                    + e.envelope.len()
                    + e.properties.len()
                    + e.body.len()
                    + e.id.len()
                    + e.event_type.len()
                    + e.source.len()
                    + e.routing_key.len()
                    + 128
            }
            Record::DeadLetter(d) => d.body.len() + d.properties.len() + d.detail.len() + 128,
            Record::Replayed => 64,
        }
    }
}

/// Whether any string or member name in `v` holds NUL, which PostgreSQL's text
/// and jsonb cannot store.
pub fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// Rebuilds the published envelope from the stored columns: the envelope without
/// its payload member, the payload, and the member's name. Equal as JSON to what
/// was published (for a sanitised event: to what was stored).
///
/// Spliced as text, never parsed: the cost is one copy, whatever the size or depth
/// of the payload. `None` when `envelope` is not an object's text.
///
/// ```
/// use candystore::model::envelope::rebuild;
/// let doc = rebuild(br#"{"id": "1", "type": "t"}"#, br#"{"k": [1, 2]}"#, Some("data")).unwrap();
/// let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
/// assert_eq!(doc, serde_json::json!({"id": "1", "type": "t", "data": {"k": [1, 2]}}));
/// // An envelope that had no payload member gets none back.
/// assert_eq!(rebuild(br#"{"id":"1"}"#, b"{}", None).unwrap(), br#"{"id":"1"}"#);
/// assert_eq!(rebuild(b"{}", b"[1]", Some("data")).unwrap(), br#"{"data":[1]}"#);
/// ```
pub fn rebuild(envelope: &[u8], payload: &[u8], payload_member: Option<&str>) -> Option<Vec<u8>> {
    let trimmed = envelope.trim_ascii();
    let inner = trimmed.strip_prefix(b"{")?.strip_suffix(b"}")?;
    let Some(member) = payload_member else {
        return Some(trimmed.to_vec());
    };
    let name = serde_json::to_string(member).ok()?;
    let mut out = Vec::with_capacity(envelope.len() + payload.len() + name.len() + 4);
    out.push(b'{');
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    if !inner.trim_ascii().is_empty() {
        out.push(b',');
        out.extend_from_slice(inner);
    }
    out.push(b'}');
    Some(out)
}

/// Longest identifier (id, type, source, target, session, correlation) kept in an
/// indexed column. PostgreSQL's btree entries top out near 2.7 kB.
pub const MAX_IDENT_BYTES: usize = 1024;

/// RFC 3339 with any offset; without an offset the time is read as UTC.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return in_range(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return in_range(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return in_range(t.and_utc());
        }
    }
    None
}

/// Years PostgreSQL and every client can hold; anything else falls back.
pub fn in_range(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    (1..=9999).contains(&t.year()).then_some(t)
}

/// The dead-letter key: a redelivery of the same delivery gives the same value.
pub fn fingerprint(
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for part in [
        exchange.as_bytes(),
        routing_key.as_bytes(),
        message_id.unwrap_or("").as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(body);
    h.finalize().into()
}

impl DeadLetter {
    /// A row PostgreSQL refused, kept whole as a `rejected_by_database` dead letter.
    pub fn refused_by_database(e: &Event, detail: &str) -> DeadLetter {
        let message_id = serde_json::from_slice::<serde_json::Value>(&e.properties)
            .ok()
            .and_then(|p| {
                p.get("message_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            });
        DeadLetter {
            fingerprint: fingerprint(&e.exchange, &e.routing_key, message_id.as_deref(), &e.body),
            exchange: e.exchange.clone(),
            routing_key: e.routing_key.clone(),
            properties: e.properties.clone(),
            body: e.body.clone(),
            reason: RejectReason::RejectedByDatabase,
            detail: detail.replace('\0', "\\0"),
            received_at: e.received_at,
            event_type: Some(e.event_type.clone()),
        }
    }
}
