//! Encoding events into PostgreSQL's binary COPY format for the staging table.
//!
//! Pure and synchronous, so it is unit-tested and benchmarked without a server.
//! The format: a fixed header, then per row a field count and, per field, a length
//! (-1 for NULL) and the value in the type's binary send format, then a trailer.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};

use crate::audit::attest::Keyring;
use crate::model::envelope::Event;

/// The staging table every batch is copied into. `ON COMMIT DELETE ROWS` empties it
/// at each commit; a rollback empties it too.
pub const CREATE_STAGING: &str = r#"
CREATE TEMP TABLE IF NOT EXISTS events_staging (
    ord            int4        NOT NULL,
    id             text        NOT NULL,
    event_type     text        NOT NULL,
    source         text        NOT NULL,
    target         text,
    routing_key    text        NOT NULL,
    exchange       text        NOT NULL,
    "timestamp"    timestamptz NOT NULL,
    own_time       bool        NOT NULL,
    received_at    timestamptz NOT NULL,
    payload        jsonb       NOT NULL,
    session_id     text,
    correlation_id text,
    generation     int2        NOT NULL,
    envelope       json        NOT NULL,
    payload_member text,
    properties     json        NOT NULL,
    sanitized      bool        NOT NULL,
    original_body  bytea,
    salt           bytea,
    leaf           bytea
) ON COMMIT DELETE ROWS"#;

pub const COPY_STAGING: &str = "COPY events_staging (ord, id, event_type, source, target, routing_key, exchange, \"timestamp\", own_time, received_at, payload, session_id, correlation_id, generation, envelope, payload_member, properties, sanitized, original_body, salt, leaf) FROM STDIN (FORMAT binary)";

const FIELDS: i16 = 21;

/// Whether rows enter the audit tree, and whose key attests their leaves.
#[derive(Debug, Clone, Copy)]
pub enum Audit<'k> {
    /// Migration 0019 is pending: no salt, no leaf.
    Off,
    /// Each row gets a salt and a leaf (`audit::leaf::seal`), attested with the
    /// keyring when there is one.
    Tree(Option<&'k Keyring>),
}
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Encodes `events` (numbered in order from 0) as one binary COPY stream.
pub fn encode<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    audit: Audit<'_>,
    out: &mut BytesMut,
) {
    header(out);
    for (ord, e) in events.into_iter().enumerate() {
        row(out, ord, e, audit);
    }
    trailer(out);
}

/// The start of a COPY stream: signature, flags, header extension.
pub fn header(out: &mut BytesMut) {
    out.put_slice(HEADER);
    out.put_i32(0); // flags
    out.put_i32(0); // header extension length
}

/// One row; `ord` is the event's place in its batch.
pub fn row(out: &mut BytesMut, ord: usize, e: &Event, audit: Audit<'_>) {
    {
        out.put_i16(FIELDS);
        int4(out, ord as i32);
        text(out, &e.id);
        text(out, &e.event_type);
        text(out, &e.source);
        opt_text(out, e.target.as_deref());
        text(out, &e.routing_key);
        text(out, &e.exchange);
        timestamptz(out, e.timestamp);
        out.put_i32(1);
        out.put_u8(u8::from(e.own_time));
        timestamptz(out, e.received_at);
        jsonb(out, &e.payload);
        opt_text(out, e.session_id.as_deref());
        opt_text(out, e.correlation_id.as_deref());
        out.put_i32(2);
        out.put_i16(e.generation.as_i16());
        bytes(out, &e.envelope);
        opt_text(out, e.payload_member);
        bytes(out, &e.properties);
        out.put_i32(1);
        out.put_u8(u8::from(e.sanitized));
        if e.sanitized {
            bytes(out, &e.body);
        } else {
            out.put_i32(-1);
        }
        match audit {
            Audit::Tree(keyring) => {
                let sealed = crate::audit::leaf::seal(e, keyring);
                bytes(out, &sealed.salt);
                bytes(out, &sealed.leaf);
            }
            Audit::Off => {
                out.put_i32(-1);
                out.put_i32(-1);
            }
        }
    }
}

/// The end of a COPY stream.
pub fn trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

/// A capacity hint for `encode`, so the buffer is allocated once.
pub fn encoded_len_hint<'a>(events: impl IntoIterator<Item = &'a Event>) -> usize {
    events
        .into_iter()
        .map(|e| {
            320 + e.payload.len()
                + e.envelope.len()
                + e.properties.len()
                + if e.sanitized { e.body.len() } else { 0 }
        })
        .sum::<usize>()
        + 32
}

fn len(out: &mut BytesMut, n: usize) {
    // A single field is bounded by the broker's frame size, far below 2 GiB.
    out.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
}

fn bytes(out: &mut BytesMut, b: &[u8]) {
    len(out, b.len());
    out.put_slice(b);
}

fn text(out: &mut BytesMut, s: &str) {
    bytes(out, s.as_bytes());
}

fn opt_text(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => text(out, s),
        None => out.put_i32(-1),
    }
}

fn int4(out: &mut BytesMut, n: i32) {
    out.put_i32(4);
    out.put_i32(n);
}

fn timestamptz(out: &mut BytesMut, t: DateTime<Utc>) {
    out.put_i32(8);
    // The attestation covers the same bytes.
    out.put_slice(&crate::audit::attest::pg_timestamp(t));
}

/// `json`'s binary format is its text (see `bytes`); jsonb's binary format is a version byte (1) and the JSON text.
fn jsonb(out: &mut BytesMut, json: &[u8]) {
    len(out, json.len() + 1);
    out.put_u8(1);
    out.put_slice(json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::envelope::Generation;

    fn event() -> Event {
        Event {
            id: "a".into(),
            event_type: "t".into(),
            source: "s".into(),
            target: None,
            routing_key: "r".into(),
            exchange: "x".into(),
            timestamp: DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
                .unwrap()
                .with_timezone(&Utc),
            own_time: true,
            received_at: DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            payload: b"{}".to_vec(),
            session_id: None,
            correlation_id: None,
            generation: Generation::Original,
            envelope: b"{\"id\":\"a\"}".to_vec(),
            payload_member: Some("data"),
            properties: b"{}".to_vec(),
            sanitized: false,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn the_stream_has_header_tuples_and_trailer() {
        let mut out = BytesMut::new();
        encode([&event(), &event()], Audit::Off, &mut out);
        assert!(out.starts_with(HEADER));
        assert_eq!(&out[out.len() - 2..], &[0xff, 0xff]);
        // first tuple: field count, then ord = 0
        assert_eq!(&out[19..21], &FIELDS.to_be_bytes());
        assert_eq!(&out[21..29], &[0, 0, 0, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn timestamps_are_microseconds_since_2000() {
        let mut out = BytesMut::new();
        timestamptz(&mut out, event().timestamp);
        assert_eq!(&out[..], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40]);
    }

    #[test]
    fn nulls_are_written_as_minus_one() {
        let mut out = BytesMut::new();
        opt_text(&mut out, None);
        assert_eq!(&out[..], &(-1i32).to_be_bytes());
    }

    #[test]
    fn the_length_hint_covers_the_encoding() {
        let events = vec![event(); 10];
        let mut out = BytesMut::new();
        let ring = Keyring::new(&["k".repeat(32)]);
        encode(&events, Audit::Tree(ring.as_ref()), &mut out);
        assert!(encoded_len_hint(&events) >= out.len());
    }
}
