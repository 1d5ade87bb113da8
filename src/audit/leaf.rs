//! What enters the Merkle tree: one leaf per stored event, per redaction, per
//! partition retention dropped, and one anchor to the chain that came before.
//!
//! A leaf is `kind ‖ body ‖ attestation`:
//!
//! | kind | body |
//! |---|---|
//! | 0 anchor | the legacy chain's end: `to_txid`, `to_seq`, `count` (8 bytes each), chain hash |
//! | 1 event | event time (Unix µs, 8 bytes), commitment (32) |
//! | 2 redaction | the redacted leaf's index (8), SHA-256 of the receipt (32) |
//! | 3 retention | SHA-256 of the dropped range's record (32) |
//! | 4 key | an AUDIT_KEY's id (4), the signing key's Ed25519 signature of it (64) |
//!
//! and the attestation is empty, or the AUDIT_KEY id and HMAC-SHA256 of
//! `"candystore/leaf/v1\n" ‖ kind ‖ body` (36 bytes): only a holder of the key
//! makes a leaf that checks, so a leaf appended with SQL is told from a writer's.
//!
//! An event's commitment is `SHA-256("candystore/event/v1\n" ‖ salt ‖ fields)`:
//! every column the writer sends, each length-prefixed (u64 big-endian,
//! `u64::MAX` for NULL), the payload as jsonb will store it (`audit::jsonb`).
//! The salt is 32 random bytes kept in the event's row, apart from the tree, and
//! deleted with the content when it is redacted: a low-entropy payload cannot be
//! guessed from its leaf. The event time is in the leaf in clear so that `verify`
//! can tell an event that went with a dropped partition from one deleted.
//! Columns the database fills in (`seq`, `txid`, `stored_at`,
//! `storage_latency_ms`) are not in the leaf: `seq` and `txid` are the leaf's
//! place, found through `audit_leaves`; the others are the database's own
//! measurements, not what was published.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::attest::{Check, Keyring};
use super::tree::Hash;
use crate::model::envelope::Event;

pub const SALT_LEN: usize = 32;
const LEAF_DOMAIN: &[u8] = b"candystore/leaf/v1\n";
const EVENT_DOMAIN: &[u8] = b"candystore/event/v1\n";

/// What a leaf records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Anchor = 0,
    Event = 1,
    Redaction = 2,
    Retention = 3,
    Key = 4,
}

impl Kind {
    fn body_len(self) -> usize {
        match self {
            Kind::Anchor => 24 + 32,
            Kind::Event | Kind::Redaction => 8 + 32,
            Kind::Retention => 32,
            Kind::Key => 4 + 64,
        }
    }

    fn of(byte: u8) -> Option<Kind> {
        Some(match byte {
            0 => Kind::Anchor,
            1 => Kind::Event,
            2 => Kind::Redaction,
            3 => Kind::Retention,
            4 => Kind::Key,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("no leaf kind {0}")]
    Kind(u8),
    #[error("a {0:?} leaf of {1} bytes")]
    Length(Kind, usize),
}

/// A leaf's parts, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf<'a> {
    pub kind: Kind,
    pub body: &'a [u8],
    pub attestation: Option<&'a [u8]>,
}

impl<'a> Leaf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LeafError> {
        let (&k, rest) = bytes.split_first().ok_or(LeafError::Kind(255))?;
        let kind = Kind::of(k).ok_or(LeafError::Kind(k))?;
        let n = kind.body_len();
        let attestation = match rest.len().checked_sub(n) {
            Some(0) => None,
            Some(super::attest::LEN) => Some(&rest[n..]),
            _ => return Err(LeafError::Length(kind, bytes.len())),
        };
        Ok(Leaf {
            kind,
            body: &rest[..n],
            attestation,
        })
    }

    /// Checks the attestation with `keyring`.
    pub fn check(&self, keyring: &Keyring) -> Check {
        keyring.check_message(self.attestation, &message(self.kind, self.body))
    }

    /// An event leaf's time and commitment.
    pub fn event(&self) -> Option<(i64, Hash)> {
        (self.kind == Kind::Event).then(|| {
            (
                i64::from_be_bytes(self.body[..8].try_into().expect("8 bytes")),
                self.body[8..40].try_into().expect("32 bytes"),
            )
        })
    }

    /// The key a key leaf introduces, if the signing key `signer` vouched for it.
    pub fn key(&self, signer: &super::note::VerifierKey) -> Option<[u8; 4]> {
        if self.kind != Kind::Key {
            return None;
        }
        let id: [u8; 4] = self.body[..4].try_into().expect("4 bytes");
        signer
            .verify_raw(&key_message(id), &self.body[4..68])
            .then_some(id)
    }

    /// The key id of the attestation, if any.
    pub fn attested_by(&self) -> Option<[u8; 4]> {
        self.attestation.map(|a| {
            a[..4]
                .try_into()
                .expect("an attestation starts with its key id")
        })
    }

    /// A redaction's target leaf index and receipt digest.
    pub fn redaction(&self) -> Option<(u64, Hash)> {
        (self.kind == Kind::Redaction).then(|| {
            (
                u64::from_be_bytes(self.body[..8].try_into().expect("8 bytes")),
                self.body[8..40].try_into().expect("32 bytes"),
            )
        })
    }
}

/// What an attestation covers.
fn message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LEAF_DOMAIN.len() + 1 + body.len());
    m.extend_from_slice(LEAF_DOMAIN);
    m.push(kind as u8);
    m.extend_from_slice(body);
    m
}

/// A leaf of `kind` with `body`, attested when there is a keyring.
pub fn build(kind: Kind, body: &[u8], keyring: Option<&Keyring>) -> Vec<u8> {
    debug_assert_eq!(body.len(), kind.body_len());
    let mut leaf = Vec::with_capacity(1 + body.len() + super::attest::LEN);
    leaf.push(kind as u8);
    leaf.extend_from_slice(body);
    if let Some(k) = keyring {
        leaf.extend_from_slice(&k.attest(&message(kind, body)));
    }
    leaf
}

/// An event leaf.
pub fn event(timestamp: DateTime<Utc>, commitment: &Hash, keyring: Option<&Keyring>) -> Vec<u8> {
    let mut body = [0u8; 40];
    body[..8].copy_from_slice(&timestamp.timestamp_micros().to_be_bytes());
    body[8..].copy_from_slice(commitment);
    build(Kind::Event, &body, keyring)
}

/// A redaction receipt's leaf.
pub fn redaction(target: u64, receipt: &[u8], keyring: Option<&Keyring>) -> Vec<u8> {
    let mut body = [0u8; 40];
    body[..8].copy_from_slice(&target.to_be_bytes());
    body[8..].copy_from_slice(&Sha256::digest(receipt));
    build(Kind::Redaction, &body, keyring)
}

/// What a dropped range's leaf commits to: the table, the partition, its time
/// range (Unix µs) and the rows it held, as `dropped_partitions` records them.
pub fn retention_record(
    table: &str,
    partition: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    rows: i64,
) -> Vec<u8> {
    let mut r = b"candystore/retention/v1\n".to_vec();
    for text in [table, partition] {
        r.extend_from_slice(&(text.len() as u64).to_be_bytes());
        r.extend_from_slice(text.as_bytes());
    }
    r.extend_from_slice(&from.timestamp_micros().to_be_bytes());
    r.extend_from_slice(&to.timestamp_micros().to_be_bytes());
    r.extend_from_slice(&rows.to_be_bytes());
    r
}

/// A dropped range's leaf.
pub fn retention(record: &[u8], keyring: Option<&Keyring>) -> Vec<u8> {
    build(Kind::Retention, &Sha256::digest(record), keyring)
}

/// What the signing key signs to introduce an AUDIT_KEY to the trail.
pub fn key_message(id: [u8; 4]) -> Vec<u8> {
    let mut m = b"candystore/key/v1\n".to_vec();
    m.extend_from_slice(&id);
    m
}

/// A key leaf: the AUDIT_KEY `id` joins the trail, vouched for by the
/// checkpoint signing key, and attested by the key itself (its holder made it).
pub fn key(id: [u8; 4], signer: &super::note::SigningKey, keyring: &Keyring) -> Vec<u8> {
    let mut body = Vec::with_capacity(68);
    body.extend_from_slice(&id);
    body.extend_from_slice(&signer.sign_raw(&key_message(id)));
    build(Kind::Key, &body, keyring.only(id).as_ref())
}

/// The anchor to the legacy chain's last checkpoint.
pub fn anchor(to: (i64, i64), count: i64, chain_hash: &Hash, keyring: Option<&Keyring>) -> Vec<u8> {
    let mut body = Vec::with_capacity(56);
    body.extend_from_slice(&to.0.to_be_bytes());
    body.extend_from_slice(&to.1.to_be_bytes());
    body.extend_from_slice(&count.to_be_bytes());
    body.extend_from_slice(chain_hash);
    build(Kind::Anchor, &body, keyring)
}

/// Every column of an event the writer sends, as the commitment reads it.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub timestamp: DateTime<Utc>,
    pub event_type: &'a str,
    pub target: Option<&'a str>,
    pub routing_key: &'a str,
    pub exchange: &'a str,
    pub received_at: DateTime<Utc>,
    /// The payload as jsonb stores it (`audit::jsonb::canonical`).
    pub payload: &'a [u8],
    pub envelope: &'a [u8],
    pub payload_member: Option<&'a str>,
    pub properties: &'a [u8],
    pub session_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub generation: i16,
    pub sanitized: bool,
    pub original_body: Option<&'a [u8]>,
}

/// The columns [`Content`] holds, in commitment order (as `verify` reads them).
pub const CONTENT_COLUMNS: &str = "id, source, \"timestamp\", event_type, target, routing_key, \
    exchange, received_at, payload::text, envelope::text, payload_member, properties::text, \
    session_id, correlation_id, generation, sanitized, original_body";

impl<'a> Content<'a> {
    /// An event as the writer stores it; `payload` its canonical text.
    pub fn of(e: &'a Event, payload: &'a [u8]) -> Self {
        Content {
            id: &e.id,
            source: &e.source,
            timestamp: e.timestamp,
            event_type: &e.event_type,
            target: e.target.as_deref(),
            routing_key: &e.routing_key,
            exchange: &e.exchange,
            received_at: e.received_at,
            payload,
            envelope: &e.envelope,
            payload_member: e.payload_member,
            properties: &e.properties,
            session_id: e.session_id.as_deref(),
            correlation_id: e.correlation_id.as_deref(),
            generation: e.generation.as_i16(),
            sanitized: e.sanitized,
            original_body: e.sanitized.then_some(&e.body[..]),
        }
    }

    /// The salted commitment.
    pub fn commitment(&self, salt: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update(EVENT_DOMAIN);
        h.update(salt);
        let mut field = |v: Option<&[u8]>| match v {
            Some(b) => {
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
            None => h.update(u64::MAX.to_be_bytes()),
        };
        field(Some(self.id.as_bytes()));
        field(Some(self.source.as_bytes()));
        field(Some(&self.timestamp.timestamp_micros().to_be_bytes()));
        field(Some(self.event_type.as_bytes()));
        field(self.target.map(str::as_bytes));
        field(Some(self.routing_key.as_bytes()));
        field(Some(self.exchange.as_bytes()));
        field(Some(&self.received_at.timestamp_micros().to_be_bytes()));
        field(Some(self.payload));
        field(Some(self.envelope));
        field(self.payload_member.map(str::as_bytes));
        field(Some(self.properties));
        field(self.session_id.map(str::as_bytes));
        field(self.correlation_id.map(str::as_bytes));
        field(Some(&[self.generation as u8]));
        field(Some(&[u8::from(self.sanitized)]));
        field(self.original_body);
        h.finalize().into()
    }
}

/// A new salt: 32 bytes of the thread's CSPRNG (ChaCha, seeded and reseeded
/// from the operating system), a tenth of a system call's cost per event.
pub fn salt() -> [u8; SALT_LEN] {
    use rand::RngCore;
    let mut s = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut s);
    s
}

/// What the writer stores for one event: its salt (in the row) and its leaf (in
/// `audit_leaves`).
pub struct Sealed {
    pub salt: [u8; SALT_LEN],
    pub leaf: Vec<u8>,
}

/// The salt and leaf of `event`. A payload jsonb would refuse (PostgreSQL then
/// refuses the row too, and it is never stored) is committed to as it is.
pub fn seal(event: &Event, keyring: Option<&Keyring>) -> Sealed {
    let canonical = super::jsonb::canonical(&event.payload);
    seal_stored(
        event,
        canonical.as_deref().unwrap_or(&event.payload),
        keyring,
    )
}

/// [`seal`] of an event whose payload's stored text (`payload`, jsonb's
/// canonical text) the caller already has: the embedded store writes that text
/// and commits to it, computing it once.
pub fn seal_stored(event: &Event, payload: &[u8], keyring: Option<&Keyring>) -> Sealed {
    let salt = salt();
    let commitment = Content::of(event, payload).commitment(&salt);
    Sealed {
        salt,
        leaf: self::event(event.timestamp, &commitment, keyring),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(&["k".repeat(32)]).unwrap()
    }

    fn event() -> Event {
        let body = br#"{"event_id":"a","event_type":"t","source":"s","timestamp":"2026-01-02T03:04:05Z","payload":{"b":1, "a":[1.50e1]}}"#;
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

    #[test]
    fn an_attested_leaf_checks_and_any_changed_byte_does_not() {
        let e = event();
        let s = seal(&e, Some(&ring()));
        let leaf = Leaf::parse(&s.leaf).unwrap();
        assert_eq!(leaf.kind, Kind::Event);
        assert_eq!(leaf.check(&ring()), Check::Valid);
        assert_eq!(leaf.event().unwrap().0, e.timestamp.timestamp_micros());
        for i in 1..41 {
            let mut forged = s.leaf.clone();
            forged[i] ^= 1;
            assert_eq!(
                Leaf::parse(&forged).unwrap().check(&ring()),
                Check::Invalid,
                "byte {i}"
            );
        }
        let bare = seal(&e, None);
        assert_eq!(
            Leaf::parse(&bare.leaf).unwrap().check(&ring()),
            Check::Missing
        );
    }

    #[test]
    fn the_commitment_covers_every_column_and_the_salt() {
        let e = event();
        let payload = crate::audit::jsonb::canonical(&e.payload).unwrap();
        assert_eq!(payload, br#"{"a": [15.0], "b": 1}"#);
        let c = Content::of(&e, &payload);
        let salt = [9u8; SALT_LEN];
        let base = c.commitment(&salt);
        assert_ne!(base, c.commitment(&[8u8; SALT_LEN]));
        let later = e.timestamp + chrono::Duration::microseconds(1);
        let changed = [
            Content { id: "b", ..c },
            Content { source: "t", ..c },
            Content {
                timestamp: later,
                ..c
            },
            Content {
                event_type: "u",
                ..c
            },
            Content {
                target: Some("x"),
                ..c
            },
            Content {
                routing_key: "r",
                ..c
            },
            Content { exchange: "y", ..c },
            Content {
                received_at: later,
                ..c
            },
            Content {
                payload: b"{}",
                ..c
            },
            Content {
                envelope: b"{}",
                ..c
            },
            Content {
                payload_member: None,
                ..c
            },
            Content {
                properties: b"[]",
                ..c
            },
            Content {
                session_id: Some("s"),
                ..c
            },
            Content {
                correlation_id: Some("c"),
                ..c
            },
            Content { generation: 3, ..c },
            Content {
                sanitized: true,
                ..c
            },
            Content {
                original_body: Some(b""),
                ..c
            },
        ];
        for (i, other) in changed.iter().enumerate() {
            assert_ne!(other.commitment(&salt), base, "field {i}");
        }
    }

    #[test]
    fn leaves_of_the_wrong_size_or_kind_are_refused() {
        assert_eq!(Leaf::parse(&[9; 41]), Err(LeafError::Kind(9)));
        assert!(Leaf::parse(&[1; 40]).is_err());
        assert!(Leaf::parse(&[1; 42]).is_err());
        assert!(Leaf::parse(&[1; 41]).is_ok());
        assert!(Leaf::parse(&[1; 77]).is_ok());
        let r = redaction(7, b"receipt", Some(&ring()));
        assert_eq!(Leaf::parse(&r).unwrap().redaction().unwrap().0, 7);
        let a = anchor((5, 6), 7, &[1; 32], None);
        assert_eq!(Leaf::parse(&a).unwrap().kind, Kind::Anchor);
    }
}
