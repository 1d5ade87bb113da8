//! Writer attestations: a keyed MAC the batch writer puts on what it stores, so
//! the audit trail can tell a writer's row from one inserted with SQL.
//!
//! Since the Merkle tree (`audit::leaf`), the MAC is part of each leaf and covers
//! the leaf's commitment to every column the writer sends, payload included
//! ([`Keyring::attest`]). What follows describes the rule of rows written before
//! it (migration 0015 to 0018), which `verify` still applies to them.
//!
//! The legacy seal step (`audit::legacy::seal`) digests whatever committed rows it finds, in the
//! live tail's order. Without attestations a row inserted with SQL after the last
//! seal, at a fresh position, would be sealed like any other. With AUDIT_KEY set,
//! the writer computes HMAC-SHA256 over the row's columns as PostgreSQL stores them
//! (the same binary forms the seal digests, length-prefixed) and stores it in
//! `events.attestation`; the seal job recomputes it for each row it seals and marks
//! a row whose MAC is missing or wrong as unattested, and `candystore verify`
//! names it. Someone with SQL access but not the key cannot forge a MAC.
//!
//! The MAC covers every column the writer sends as it is stored: all but
//! `payload` (jsonb, which PostgreSQL normalises, so the writer cannot know its
//! stored bytes) and the columns the database fills in (`seq`, `txid`,
//! `stored_at`, `storage_latency_ms`). A payload changed between commit and seal
//! (SEAL_INTERVAL) is therefore not caught by the MAC; from its seal on, the
//! digest catches it.
//!
//! Stored value: the key's id (the first 4 bytes of SHA-256 of the key) and the
//! 32-byte MAC. AUDIT_KEY may list several keys: the first signs, all are
//! accepted, so a key can be rotated without a false alarm.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::model::envelope::Event;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a stored attestation: key id (4) and MAC (32).
pub const LEN: usize = 36;

/// The columns a MAC covers, in MAC order (each as PostgreSQL sends it in binary).
pub const ATTESTED_COLUMNS: [&str; 16] = [
    "id",
    "source",
    "timestamp",
    "event_type",
    "target",
    "routing_key",
    "exchange",
    "received_at",
    "envelope",
    "payload_member",
    "properties",
    "session_id",
    "correlation_id",
    "generation",
    "sanitized",
    "original_body",
];

/// 2000-01-01T00:00:00Z in Unix microseconds: PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A timestamp in PostgreSQL's binary form (microseconds since 2000, big-endian).
pub fn pg_timestamp(t: DateTime<Utc>) -> [u8; 8] {
    (t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes()
}

/// One signing key and its id.
#[derive(Clone)]
struct Key {
    id: [u8; 4],
    mac: HmacSha256,
}

/// The keys of AUDIT_KEY: the first signs, every one is accepted.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} key(s))", self.keys.len())
    }
}

/// What checking a row's attestation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Made by a writer holding one of the keys.
    Valid,
    /// No attestation.
    Missing,
    /// An attestation no key of the ring made (forged, or the row changed).
    Invalid,
}

impl Keyring {
    /// `None` when no key is given.
    pub fn new(secrets: &[String]) -> Option<Self> {
        let keys: Vec<Key> = secrets
            .iter()
            .map(|s| {
                let digest = Sha256::digest(s.as_bytes());
                Key {
                    id: [digest[0], digest[1], digest[2], digest[3]],
                    mac: HmacSha256::new_from_slice(s.as_bytes()).expect("HMAC takes any key"),
                }
            })
            .collect();
        (!keys.is_empty()).then_some(Keyring { keys })
    }

    /// The attestation of `event` as the writer stores it.
    pub fn sign(&self, event: &Event) -> [u8; LEN] {
        let key = &self.keys[0];
        let mut mac = key.mac.clone();
        feed_event(&mut mac, event);
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&key.id);
        out[4..].copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// The ids of the ring's keys, the attesting one first.
    pub fn ids(&self) -> Vec<[u8; 4]> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The ring of one key of this one (to attest with another than the first).
    pub fn only(&self, id: [u8; 4]) -> Option<Keyring> {
        let key = self.keys.iter().find(|k| k.id == id)?;
        Some(Keyring {
            keys: vec![key.clone()],
        })
    }

    /// The attestation of a leaf's `message` (`audit::leaf`): key id and MAC.
    pub fn attest(&self, message: &[u8]) -> [u8; LEN] {
        let key = &self.keys[0];
        let mut mac = key.mac.clone();
        mac.update(message);
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&key.id);
        out[4..].copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Checks a leaf's attestation of `message`.
    pub fn check_message(&self, stored: Option<&[u8]>, message: &[u8]) -> Check {
        let Some(stored) = stored else {
            return Check::Missing;
        };
        if stored.len() != LEN {
            return Check::Invalid;
        }
        let Some(key) = self.keys.iter().find(|k| k.id == stored[..4]) else {
            return Check::Invalid;
        };
        let mut mac = key.mac.clone();
        mac.update(message);
        match mac.verify_slice(&stored[4..]) {
            Ok(()) => Check::Valid,
            Err(_) => Check::Invalid,
        }
    }

    /// Checks a stored attestation against the row's columns, given in
    /// [`ATTESTED_COLUMNS`] order, each in binary (`None` for NULL).
    pub fn check<'a>(
        &self,
        stored: Option<&[u8]>,
        columns: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> Check {
        let Some(stored) = stored else {
            return Check::Missing;
        };
        if stored.len() != LEN {
            return Check::Invalid;
        }
        let Some(key) = self.keys.iter().find(|k| k.id == stored[..4]) else {
            return Check::Invalid;
        };
        let mut mac = key.mac.clone();
        for c in columns {
            field(&mut mac, c);
        }
        match mac.verify_slice(&stored[4..]) {
            Ok(()) => Check::Valid,
            Err(_) => Check::Invalid,
        }
    }
}

/// One column: its length (u64 little-endian, `u64::MAX` for NULL), then its bytes.
fn field(mac: &mut HmacSha256, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            mac.update(&(bytes.len() as u64).to_le_bytes());
            mac.update(bytes);
        }
        None => mac.update(&u64::MAX.to_le_bytes()),
    }
}

/// The event's columns in [`ATTESTED_COLUMNS`] order, as the staging COPY sends
/// them and the move stores them unchanged.
fn feed_event(mac: &mut HmacSha256, e: &Event) {
    field(mac, Some(e.id.as_bytes()));
    field(mac, Some(e.source.as_bytes()));
    field(mac, Some(&pg_timestamp(e.timestamp)));
    field(mac, Some(e.event_type.as_bytes()));
    field(mac, e.target.as_deref().map(str::as_bytes));
    field(mac, Some(e.routing_key.as_bytes()));
    field(mac, Some(e.exchange.as_bytes()));
    field(mac, Some(&pg_timestamp(e.received_at)));
    field(mac, Some(&e.envelope));
    field(mac, e.payload_member.map(str::as_bytes));
    field(mac, Some(&e.properties));
    field(mac, e.session_id.as_deref().map(str::as_bytes));
    field(mac, e.correlation_id.as_deref().map(str::as_bytes));
    field(mac, Some(&e.generation.as_i16().to_be_bytes()));
    field(mac, Some(&[u8::from(e.sanitized)]));
    field(mac, e.sanitized.then_some(&e.body[..]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[&str]) -> Keyring {
        Keyring::new(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn event() -> Event {
        let body = br#"{"event_id":"a","event_type":"t","source":"s","payload":{"k":1}}"#;
        let raw = crate::source::decode::RawDelivery {
            body: body.to_vec(),
            repairs: Default::default(),
            exchange: "events".into(),
            routing_key: "t.k".into(),
            properties: Default::default(),
            received_at: Utc::now(),
            authentic_replay: false,
        };
        match crate::source::decode::decode(raw) {
            crate::model::envelope::Record::Event(e) => *e,
            other => panic!("{other:?}"),
        }
    }

    /// The columns of `e` as PostgreSQL would send them back.
    fn columns(e: &Event) -> Vec<Option<Vec<u8>>> {
        let t = |s: &str| Some(s.as_bytes().to_vec());
        vec![
            t(&e.id),
            t(&e.source),
            Some(pg_timestamp(e.timestamp).to_vec()),
            t(&e.event_type),
            e.target.as_deref().and_then(t),
            t(&e.routing_key),
            t(&e.exchange),
            Some(pg_timestamp(e.received_at).to_vec()),
            Some(e.envelope.clone()),
            e.payload_member.and_then(t),
            Some(e.properties.clone()),
            e.session_id.as_deref().and_then(t),
            e.correlation_id.as_deref().and_then(t),
            Some(e.generation.as_i16().to_be_bytes().to_vec()),
            Some(vec![u8::from(e.sanitized)]),
            e.sanitized.then(|| e.body.clone()),
        ]
    }

    fn check(r: &Keyring, stored: Option<&[u8]>, cols: &[Option<Vec<u8>>]) -> Check {
        r.check(stored, cols.iter().map(|c| c.as_deref()))
    }

    #[test]
    fn a_signed_row_checks_and_any_changed_column_does_not() {
        let r = ring(&["k".repeat(32).as_str()]);
        let e = event();
        let sig = r.sign(&e);
        let cols = columns(&e);
        assert_eq!(check(&r, Some(&sig), &cols), Check::Valid);
        for i in 0..cols.len() {
            let mut changed = cols.clone();
            changed[i] = match &changed[i] {
                Some(v) if !v.is_empty() => {
                    let mut v = v.clone();
                    v[0] ^= 1;
                    Some(v)
                }
                _ => Some(b"x".to_vec()),
            };
            assert_eq!(
                check(&r, Some(&sig), &changed),
                Check::Invalid,
                "column {i}"
            );
        }
    }

    #[test]
    fn a_missing_or_foreign_attestation_is_told_apart() {
        let r = ring(&["k".repeat(32).as_str()]);
        let other = ring(&["o".repeat(32).as_str()]);
        let e = event();
        let cols = columns(&e);
        assert_eq!(check(&r, None, &cols), Check::Missing);
        assert_eq!(check(&r, Some(&other.sign(&e)), &cols), Check::Invalid);
        assert_eq!(check(&r, Some(&[0u8; 3]), &cols), Check::Invalid);
    }

    #[test]
    fn a_rotated_ring_still_accepts_rows_signed_with_the_old_key() {
        let old = ring(&["a".repeat(32).as_str()]);
        let rotated = ring(&["b".repeat(32).as_str(), "a".repeat(32).as_str()]);
        let e = event();
        let cols = columns(&e);
        assert_eq!(check(&rotated, Some(&old.sign(&e)), &cols), Check::Valid);
        assert_eq!(check(&old, Some(&rotated.sign(&e)), &cols), Check::Invalid);
    }
}
