//! Bytes → [`Record`]: recognise the envelope generation and project it onto the
//! stored columns, as `docs/envelopes.md` says.
//!
//! Pure: no IO, no clock (the receive time comes in with the delivery), no lapin
//! types, and it never panics on any input. Whatever it returns as an event is text
//! PostgreSQL accepts: NUL is stripped (and flagged) everywhere, identifiers are
//! bounded in length so they fit a btree index entry.

use std::borrow::Cow;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use simd_json::BorrowedValue as Value;
use simd_json::prelude::*;

use crate::model::envelope::{DeadLetter, Event, Generation, Record, RejectReason};

use crate::model::envelope::{MAX_IDENT_BYTES, in_range, parse_time};
use crate::model::hex;

/// Deepest nesting of arrays and objects a body may have to be stored as an event.
/// Deeper bodies are dead-lettered. The API passes payloads through as text but
/// still validates them (serde_json stops at 128 levels), and recursive code
/// anywhere (drop of a parsed tree, jsonb functions) must not meet unbounded depth.
pub const MAX_JSON_DEPTH: usize = 128;

/// Namespace of the ids derived from a body that carried none (UUID v5).
const DERIVED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6361_6e64_7973_746f_7265_0000_0000_0001);

/// The AMQP basic properties of a delivery, as plain data.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Properties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch, as AMQP sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Headers already converted to JSON; byte strings that are not clean text
    /// arrive here as `{"$hex": "..."}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// The headers as they came over the wire (AMQP field table, hex), stored as
    /// [`HEADERS_WIRE`]: the JSON above is for reading and querying, and cannot
    /// tell a publisher's `{"$hex": …}` table from bytes; a replay publishes these.
    #[serde(rename = "headers_amqp", skip_serializing_if = "Option::is_none")]
    pub headers_wire: Option<String>,
    /// Set by whoever converted the headers when one had to be rewritten.
    #[serde(skip)]
    pub headers_sanitized: bool,
}

/// What the AMQP client had to repair to hand a delivery over at all. Such a
/// delivery is dead-lettered: its metadata is not what the publisher sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameRepairs {
    /// Fields whose short string was not UTF-8 and arrived with U+FFFD in place of
    /// the bad bytes (`routing_key`, `message_id`, `headers`, ...).
    pub not_utf8: Vec<&'static str>,
    /// Headers nested past the client's limit; the undecoded rest arrives as
    /// `{"$hex": ...}` at the deepest level.
    pub headers_too_deep: bool,
}

impl FrameRepairs {
    pub fn is_empty(&self) -> bool {
        self.not_utf8.is_empty() && !self.headers_too_deep
    }

    fn rejection(&self) -> Option<Rejection> {
        if !self.not_utf8.is_empty() {
            Some(reject(
                RejectReason::AmqpNotUtf8,
                format!(
                    "amqp short strings that are not utf-8 (kept with U+FFFD in place of the bad bytes): {}",
                    self.not_utf8.join(", ")
                ),
            ))
        } else if self.headers_too_deep {
            Some(reject(
                RejectReason::HeadersTooDeep,
                "amqp headers nest tables or arrays deeper than the client decodes; the rest is kept as hex",
            ))
        } else {
            None
        }
    }
}

/// The key of `properties` that keeps the headers' wire form.
pub const HEADERS_WIRE: &str = "headers_amqp";

/// One delivery as received, before projection.
#[derive(Clone, Debug)]
pub struct RawDelivery {
    pub body: Vec<u8>,
    /// Repairs made while reading the frame; none for a well-formed delivery.
    pub repairs: FrameRepairs,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub received_at: DateTime<Utc>,
    /// The delivery carries a replay mark this installation made for it
    /// (`replay_mark::Mark::Authentic`, judged by the source, which holds the key):
    /// it is stored already. A mark that does not check out leaves this false, and
    /// the delivery is stored like any event.
    pub authentic_replay: bool,
}

/// Decodes and projects one delivery. Never fails: what is not an event becomes a
/// dead letter that keeps the raw bytes.
pub fn decode(raw: RawDelivery) -> Record {
    let RawDelivery {
        body,
        repairs,
        exchange,
        routing_key,
        mut properties,
        received_at,
        authentic_replay,
    } = raw;
    if authentic_replay {
        return Record::Replayed;
    }
    let mut sanitized = properties.headers_sanitized;
    let mut props_json = serde_json::Map::new();
    let exchange = strip_nul_owned(exchange, &mut sanitized);
    if routing_key.contains('\0') {
        props_json.insert(
            "routing_key_hex".into(),
            hex::encode(routing_key.as_bytes()).into(),
        );
    }
    let routing_key = strip_nul_owned(routing_key, &mut sanitized);
    for field in [
        &mut properties.message_id,
        &mut properties.content_type,
        &mut properties.content_encoding,
        &mut properties.correlation_id,
        &mut properties.kind,
        &mut properties.app_id,
        &mut properties.user_id,
        &mut properties.reply_to,
        &mut properties.expiration,
        &mut properties.cluster_id,
    ] {
        if let Some(s) = field.take() {
            *field = Some(strip_nul_owned(s, &mut sanitized));
        }
    }
    let properties_bytes = properties_json(&properties, props_json);
    let ctx = Context {
        routing_key: &routing_key,
        properties: &properties,
        received_at,
    };

    let projected = match repairs.rejection() {
        Some(r) => Err(r),
        None => project(&body, &ctx),
    };
    match projected {
        Ok(p) => Record::Event(Box::new(Event {
            id: p.id,
            event_type: p.event_type,
            source: p.source,
            target: p.target,
            routing_key,
            exchange,
            timestamp: p.timestamp,
            own_time: p.own_time,
            received_at,
            payload: p.payload,
            session_id: p.session_id,
            correlation_id: p.correlation_id,
            generation: p.generation,
            envelope: p.envelope,
            payload_member: p.payload_member,
            properties: properties_bytes,
            sanitized: sanitized || p.sanitized,
            body,
        })),
        Err(r) => Record::DeadLetter(Box::new(DeadLetter {
            fingerprint: crate::model::envelope::fingerprint(
                &exchange,
                &routing_key,
                properties.message_id.as_deref(),
                &body,
            ),
            exchange,
            routing_key,
            properties: properties_bytes,
            body,
            reason: r.reason,
            detail: r.detail,
            received_at,
            event_type: r.event_type,
        })),
    }
}

fn properties_json(p: &Properties, extra: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut v =
        serde_json::to_value(p).unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
    if let serde_json::Value::Object(map) = &mut v {
        map.extend(extra);
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())
}

struct Context<'a> {
    routing_key: &'a str,
    properties: &'a Properties,
    received_at: DateTime<Utc>,
}

struct Projected {
    id: String,
    event_type: String,
    source: String,
    target: Option<String>,
    timestamp: DateTime<Utc>,
    own_time: bool,
    payload: Vec<u8>,
    session_id: Option<String>,
    correlation_id: Option<String>,
    generation: Generation,
    envelope: Vec<u8>,
    payload_member: Option<&'static str>,
    sanitized: bool,
}

/// Whether arrays and objects in `json` nest deeper than `limit`, counted on the
/// bytes without parsing (brackets inside strings do not count). Linear, no
/// recursion, no allocation: safe on any input.
pub fn json_depth_exceeds(json: &[u8], limit: usize) -> bool {
    // Most bodies hold fewer opening brackets than the limit in all: no nesting
    // can pass it then, and counting them is a vectorised search.
    if memchr::memchr2_iter(b'[', b'{', json).nth(limit).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

struct Rejection {
    reason: RejectReason,
    detail: String,
    event_type: Option<String>,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        // Parser messages quote the offending character, which may be NUL.
        detail: detail.into().replace('\0', "\\0"),
        event_type: None,
    }
}

fn project(body: &[u8], ctx: &Context<'_>) -> Result<Projected, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(RejectReason::EmptyBody, "the body is empty"));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(reject(
            RejectReason::InvalidUtf8,
            format!("the body is not valid utf-8 (at byte {})", e.valid_up_to()),
        ));
    }
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(reject(
            RejectReason::TooDeep,
            format!("the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    if body.len() >= LARGE_BODY_BYTES
        && memchr::memmem::find(body, b"\\u0000").is_none()
        && let Some(shrunk) = shrink(body)
    {
        let projected = project_value(&shrunk.text, body, ctx)?;
        return Ok(shrunk.restore(projected));
    }
    project_value(body, body, ctx)
}

/// Bodies from this size on are projected without a tree of their large members.
const LARGE_BODY_BYTES: usize = 256 << 10;
/// An array or object member at least this large (in a large body) is carried
/// as text and never parsed into a tree: a tree takes dozens of times the size
/// of its text (10 million integers: 20 MB of text, some 500 MB of tree).
const LARGE_MEMBER_BYTES: usize = 16 << 10;

/// A large body with its large members set aside as text.
struct Shrunk<'b> {
    /// The envelope with each large member replaced: the payload member by an
    /// object holding only its `session_id` (what projection reads from it), any
    /// other member by a marker string.
    text: Vec<u8>,
    /// `"marker"` (with its quotes) and the text it stands for.
    swaps: Vec<(String, &'b str)>,
    /// The payload member's name and text, when it was set aside.
    payload: Option<(&'static str, &'b str)>,
}

/// Splits a large object body into a small envelope and the text of its large
/// members, validating all of it. `None` when it is not an object of a known
/// envelope (the tree path then gives the precise rejection).
fn shrink(body: &[u8]) -> Option<Shrunk<'_>> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let top: BTreeMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    let generation = detect_by(|k| top.contains_key(k))?;
    let payload_key = generation.payload_member();
    let marker = format!("candystore-member-{}", uuid::Uuid::new_v4().simple());
    let mut text = Vec::with_capacity(4096);
    let mut swaps = Vec::new();
    let mut payload = None;
    text.push(b'{');
    for (i, (key, raw)) in top.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        serde_json::to_writer(&mut text, key).ok()?;
        text.push(b':');
        let r = raw.get();
        let container = r.starts_with('{') || r.starts_with('[');
        // `source` and `correlation_ids` are read by projection: never set aside.
        if !container
            || r.len() < LARGE_MEMBER_BYTES
            || matches!(key.as_str(), "source" | "correlation_ids")
        {
            text.extend_from_slice(r.as_bytes());
        } else if key == payload_key {
            let session = r
                .starts_with('{')
                .then(|| serde_json::from_str::<BTreeMap<String, &RawValue>>(r).ok())
                .flatten()
                .and_then(|m| m.get("session_id").map(|v| v.get()));
            text.push(b'{');
            if let Some(session) = session {
                text.extend_from_slice(b"\"session_id\":");
                text.extend_from_slice(session.as_bytes());
            }
            text.push(b'}');
            payload = Some((payload_key, r));
        } else {
            let m = format!("\"{marker}-{i}\"");
            text.extend_from_slice(m.as_bytes());
            swaps.push((m, r));
        }
    }
    text.push(b'}');
    Some(Shrunk {
        text,
        swaps,
        payload,
    })
}

impl Shrunk<'_> {
    /// Puts the set-aside text back into what projection made of the small envelope.
    fn restore(self, mut p: Projected) -> Projected {
        if let Some((member, text)) = self.payload
            && p.payload_member == Some(member)
        {
            p.payload = text.as_bytes().to_vec();
        }
        for (marker, text) in self.swaps {
            if let Some(at) = memchr::memmem::find(&p.envelope, marker.as_bytes()) {
                p.envelope.splice(at..at + marker.len(), text.bytes());
            }
        }
        p
    }
}

/// Projects a JSON body. `json` is what is parsed (the body, or a large body's
/// small envelope); `body` is the delivery as received (ids derive from it).
fn project_value(json: &[u8], body: &[u8], ctx: &Context<'_>) -> Result<Projected, Rejection> {
    let mut buf = json.to_vec();
    let mut value = simd_json::to_borrowed_value(&mut buf).map_err(|e| {
        reject(
            RejectReason::InvalidJson,
            format!("the body is not json: {e}"),
        )
    })?;
    let sanitized = memchr::memmem::find(body, b"\\u0000").is_some() && strip_nul(&mut value);
    let Value::Object(obj) = &mut value else {
        return Err(reject(
            RejectReason::NotAnObject,
            format!("the body is a json {}, not an object", type_name(&value)),
        ));
    };
    let generation = detect(obj).ok_or_else(|| {
        reject(
            RejectReason::UnrecognisedEnvelope,
            "the object has none of the members of a known envelope (specversion, event_id, event_type, id, data)",
        )
    })?;

    let event_type = match generation {
        Generation::CloudEvents => text(obj.get("type")),
        _ => text(obj.get("event_type")),
    }
    .or_else(|| non_empty(ctx.routing_key))
    .ok_or_else(|| {
        reject(
            RejectReason::MissingEventType,
            "no event type in the envelope and no routing key",
        )
    })?;

    let id = match generation {
        Generation::Typed => ident(obj.get("event_id")),
        _ => ident(obj.get("id")),
    }
    .or_else(|| ctx.properties.message_id.as_deref().and_then(non_empty))
    .unwrap_or_else(|| uuid::Uuid::new_v5(&DERIVED_ID_NAMESPACE, body).to_string());

    let source = match (generation, obj.get("source")) {
        (Generation::Typed, Some(Value::Object(src))) => {
            text(src.get("app")).or_else(|| text(src.get("host")))
        }
        (_, v) => ident(v),
    }
    .or_else(|| ctx.properties.app_id.as_deref().and_then(non_empty))
    .unwrap_or_else(|| "unknown".to_owned());

    let target = match generation {
        Generation::Original => ident(obj.get("target")),
        _ => None,
    };

    let time_member = if generation == Generation::CloudEvents {
        "time"
    } else {
        "timestamp"
    };
    let own_time = obj.get(time_member).and_then(parse_time_value);
    let timestamp = own_time
        .or_else(|| {
            ctx.properties
                .timestamp
                .and_then(|s| epoch_seconds(s as f64))
        })
        .unwrap_or(ctx.received_at);

    let member = generation.payload_member();
    let payload_value = obj.remove(member);
    let session_id = match generation {
        Generation::Original => ident(obj.get("session_id")),
        Generation::Typed => payload_value
            .as_ref()
            .and_then(|p| p.get("session_id"))
            .and_then(|v| v.as_str())
            .and_then(non_empty),
        Generation::CloudEvents => ident(obj.get("sessionid")).or_else(|| {
            payload_value
                .as_ref()
                .and_then(|p| p.get("session_id"))
                .and_then(|v| v.as_str())
                .and_then(non_empty)
        }),
    };
    let correlation_id = match generation {
        Generation::Original => ident(obj.get("correlation_id")),
        Generation::Typed => obj
            .get("correlation_ids")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| ident(Some(v))),
        Generation::CloudEvents => ident(obj.get("correlationid")),
    }
    .or_else(|| ctx.properties.correlation_id.as_deref().and_then(non_empty));

    for (name, v) in [
        ("id", Some(&id)),
        ("event_type", Some(&event_type)),
        ("source", Some(&source)),
        ("target", target.as_ref()),
        ("session_id", session_id.as_ref()),
        ("correlation_id", correlation_id.as_ref()),
    ] {
        if let Some(v) = v
            && v.len() > MAX_IDENT_BYTES
        {
            return Err(Rejection {
                reason: RejectReason::FieldTooLong,
                detail: format!("{name} is {} bytes, more than {MAX_IDENT_BYTES}", v.len()),
                event_type: (name != "event_type").then(|| event_type.clone()),
            });
        }
    }

    let payload_member = payload_value.as_ref().map(|_| member);
    let payload = match &payload_value {
        Some(v) => encode(v),
        None => b"{}".to_vec(),
    };
    let envelope = encode(&value);
    Ok(Projected {
        id,
        event_type,
        source,
        target,
        timestamp,
        own_time: own_time.is_some(),
        payload,
        session_id,
        correlation_id,
        generation,
        envelope,
        payload_member,
        sanitized,
    })
}

type Object<'v> = simd_json::borrowed::Object<'v>;

/// Recognises the envelope generation from its distinctive members.
fn detect(obj: &Object<'_>) -> Option<Generation> {
    detect_by(|k| obj.contains_key(k))
}

fn detect_by(has: impl Fn(&str) -> bool) -> Option<Generation> {
    if has("specversion") || (has("type") && has("source") && !has("event_type")) {
        Some(Generation::CloudEvents)
    } else if has("event_id")
        || has("correlation_ids")
        || has("agent_context")
        || (has("payload") && !has("data"))
    {
        Some(Generation::Typed)
    } else if has("event_type") || has("data") || has("id") {
        Some(Generation::Original)
    } else {
        None
    }
}

fn type_name(v: &Value<'_>) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Object(_) => "object",
        Value::Static(s) if s.is_null() => "null",
        Value::Static(s) if s.is_bool() => "boolean",
        Value::Static(_) => "number",
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A non-empty string member.
fn text(v: Option<&Value<'_>>) -> Option<String> {
    v.and_then(|v| v.as_str()).and_then(non_empty)
}

/// An identifier as sent: a non-empty string, or an integer written as text.
fn ident(v: Option<&Value<'_>>) -> Option<String> {
    match v? {
        Value::String(s) => non_empty(s),
        Value::Static(s) if s.is_i64() || s.is_u64() || s.is_i128() || s.is_u128() => {
            Some(s.to_string())
        }
        _ => None,
    }
}

fn parse_time_value(v: &Value<'_>) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => parse_time(s),
        Value::Static(n) => n.cast_f64().and_then(epoch_seconds),
        _ => None,
    }
}

/// Numbers are Unix time: seconds, or milliseconds when too large to be seconds.
fn epoch_seconds(n: f64) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let micros = if n >= 1e11 { n * 1e3 } else { n * 1e6 };
    in_range(Utc.timestamp_micros(micros as i64).single()?)
}

fn encode(v: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail.
    let _ = v.write(&mut out);
    out
}

/// Removes NUL from every string and key. Returns whether anything changed.
fn strip_nul(v: &mut Value<'_>) -> bool {
    match v {
        Value::String(s) => {
            if s.contains('\0') {
                *s = Cow::Owned(s.replace('\0', ""));
                true
            } else {
                false
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| strip_nul(item) | changed),
        Value::Object(obj) => {
            let mut changed = false;
            if obj.keys().any(|k| k.contains('\0')) {
                let entries: Vec<_> = obj.drain().collect();
                for (k, val) in entries {
                    let k = if k.contains('\0') {
                        Cow::Owned(k.replace('\0', ""))
                    } else {
                        k
                    };
                    obj.insert(k, val);
                }
                changed = true;
            }
            for val in obj.values_mut() {
                changed |= strip_nul(val);
            }
            changed
        }
        Value::Static(_) => false,
    }
}

fn strip_nul_owned(s: String, flag: &mut bool) -> String {
    if s.contains('\0') {
        *flag = true;
        s.replace('\0', "")
    } else {
        s
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
