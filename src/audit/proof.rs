//! Proofs anyone can check: an event (or any leaf) is in the signed tree, and a
//! later tree extends an earlier one. Hashes travel in base64, checkpoints as
//! their signed notes, so a proof needs nothing but the public key to check.
//!
//! A [`Bundle`] is what `candystore prove` writes: the event's every committed
//! column and its salt, its leaf, the audit path and the checkpoint. With it, a
//! third party with no database access recomputes the commitment, the leaf hash
//! and the root, and checks the signature (`candystore verify-proof`, or
//! `scripts/verify_proof.py`, which shares no code with this crate).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::leaf::{Content, Leaf};
use super::note::{Checkpoint, NoteError, VerifierKey};
use super::store::{self, StoreError, Tables};
use super::tree::{self, Hash, ProofError};

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
}

/// A leaf and the path from it to the root of a signed tree.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inclusion {
    /// The leaf's place in the tree (0-based).
    pub leaf_index: u64,
    pub tree_size: u64,
    /// The leaf's bytes, base64 (`audit::leaf`); its hash is SHA-256(0x00 ‖ leaf).
    pub leaf: String,
    /// The hashes from the leaf up (RFC 9162 §2.1.3), base64.
    pub audit_path: Vec<String>,
    /// The signed checkpoint (C2SP tlog-checkpoint) of the tree of `tree_size`.
    pub checkpoint: String,
    /// The leaf's place in the tail's order, `{txid}-{seq}`.
    pub position: String,
}

/// A consistency proof between two signed trees.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consistency {
    pub from: u64,
    pub to: u64,
    /// RFC 9162 §2.1.4's proof, base64.
    pub proof: Vec<String>,
    /// The signed checkpoints of both trees (`from_checkpoint` absent for 0).
    pub from_checkpoint: Option<String>,
    pub to_checkpoint: String,
}

fn b64s(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// The inclusion proof of the leaf at `index` against the newest checkpoint.
pub async fn inclusion_of_index(
    client: &impl Tables,
    index: u64,
) -> Result<Option<Inclusion>, ProveError> {
    let Some(head) = store::head(client).await? else {
        return Ok(None);
    };
    if index >= head.size {
        return Ok(None);
    }
    let Some((place, leaf)) = store::leaf_at(client, index).await? else {
        return Ok(None);
    };
    let path = store::proof(client, &tree::inclusion_spans(index, head.size), head.size).await?;
    Ok(Some(Inclusion {
        leaf_index: index,
        tree_size: head.size,
        leaf: B64.encode(&leaf),
        audit_path: b64s(&path),
        checkpoint: head.note,
        position: format!("{}-{}", place.0, place.1),
    }))
}

/// The inclusion proof of the leaf at `place` (`(txid, seq)`), when the newest
/// checkpoint holds it.
pub async fn inclusion_of_place(
    client: &impl Tables,
    place: (i64, i64),
) -> Result<Option<Inclusion>, ProveError> {
    let Some(head) = store::head(client).await? else {
        return Ok(None);
    };
    let Some(index) = store::index_of(client, place, head.size).await? else {
        return Ok(None);
    };
    match inclusion_of_index(client, index).await? {
        Some(p) if p.position == format!("{}-{}", place.0, place.1) => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// The consistency proof from the checkpoint of `from` leaves to that of `to`
/// (the newest when `None`).
pub async fn consistency(
    client: &impl Tables,
    from: u64,
    to: Option<u64>,
) -> Result<Option<Consistency>, ProveError> {
    let to_head = match to {
        Some(n) => store::head_of(client, n).await?,
        None => store::head(client).await?,
    };
    let Some(to_head) = to_head else {
        return Ok(None);
    };
    if from > to_head.size {
        return Ok(None);
    }
    let from_checkpoint = match from {
        0 => None,
        n => match store::head_of(client, n).await? {
            Some(h) => Some(h.note),
            None => return Ok(None),
        },
    };
    let proof = store::proof(
        client,
        &tree::consistency_spans(from, to_head.size),
        to_head.size,
    )
    .await?;
    Ok(Some(Consistency {
        from,
        to: to_head.size,
        proof: b64s(&proof),
        from_checkpoint,
        to_checkpoint: to_head.note,
    }))
}

/// Every column an event's commitment covers, as a bundle carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventColumns {
    pub id: String,
    pub source: String,
    /// Unix microseconds (and RFC 3339 in `timestamp_text`, for people).
    pub timestamp: i64,
    pub timestamp_text: String,
    pub event_type: String,
    pub target: Option<String>,
    pub routing_key: String,
    pub exchange: String,
    pub received_at: i64,
    /// The payload as stored (jsonb's text).
    pub payload: String,
    pub envelope: String,
    pub payload_member: Option<String>,
    pub properties: String,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub generation: i16,
    pub sanitized: bool,
    /// base64, when the delivery was sanitized.
    pub original_body: Option<String>,
    /// The commitment's salt, base64.
    pub salt: String,
}

/// What `candystore prove` writes: one event and its proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// `candystore-proof/v1`.
    pub format: String,
    pub event: EventColumns,
    /// The event as `GET /events/{id}/raw` serves it.
    pub raw: String,
    pub inclusion: Inclusion,
}

pub const BUNDLE_FORMAT: &str = "candystore-proof/v1";

/// Why a bundle does not prove its event.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a {BUNDLE_FORMAT} bundle")]
    Format,
    #[error("the bundle is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "the event's columns do not make the leaf's commitment: the event is not the one the tree holds"
    )]
    Commitment,
    #[error("the raw document is not the event's columns rebuilt")]
    Raw,
    #[error("the checkpoint")]
    Note(#[from] NoteError),
    #[error("the checkpoint is of a tree of {0} leaves, the proof of one of {1}")]
    Size(u64, u64),
    #[error("the audit path")]
    Path(#[from] ProofError),
}

fn micros(t: i64) -> Result<DateTime<Utc>, BundleError> {
    DateTime::from_timestamp_micros(t).ok_or(BundleError::Malformed("a time out of range"))
}

impl EventColumns {
    /// The content the commitment covers.
    fn content<'a>(&'a self, original_body: Option<&'a [u8]>) -> Result<Content<'a>, BundleError> {
        Ok(Content {
            id: &self.id,
            source: &self.source,
            timestamp: micros(self.timestamp)?,
            event_type: &self.event_type,
            target: self.target.as_deref(),
            routing_key: &self.routing_key,
            exchange: &self.exchange,
            received_at: micros(self.received_at)?,
            payload: self.payload.as_bytes(),
            envelope: self.envelope.as_bytes(),
            payload_member: self.payload_member.as_deref(),
            properties: self.properties.as_bytes(),
            session_id: self.session_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            generation: self.generation,
            sanitized: self.sanitized,
            original_body,
        })
    }
}

/// What a bundle proved.
#[derive(Debug)]
pub struct Proved {
    pub checkpoint: Checkpoint,
    pub leaf_index: u64,
}

/// Checks a bundle with the log's public key alone: the columns make the leaf,
/// the leaf is in the tree the checkpoint signs, and the raw document is the
/// columns rebuilt.
pub fn check_bundle(bundle: &Bundle, key: &VerifierKey) -> Result<Proved, BundleError> {
    if bundle.format != BUNDLE_FORMAT {
        return Err(BundleError::Format);
    }
    let p = &bundle.inclusion;
    let leaf = B64
        .decode(&p.leaf)
        .map_err(|_| BundleError::Malformed("the leaf is not base64"))?;
    let parsed = Leaf::parse(&leaf).map_err(|_| BundleError::Malformed("not a leaf"))?;
    let (time, commitment) = parsed
        .event()
        .ok_or(BundleError::Malformed("the leaf is not an event's"))?;
    let e = &bundle.event;
    let salt = B64
        .decode(&e.salt)
        .map_err(|_| BundleError::Malformed("the salt is not base64"))?;
    let body = e
        .original_body
        .as_ref()
        .map(|b| B64.decode(b))
        .transpose()
        .map_err(|_| BundleError::Malformed("the original body is not base64"))?;
    let content = e.content(body.as_deref())?;
    if content.commitment(&salt) != commitment || time != e.timestamp {
        return Err(BundleError::Commitment);
    }
    let rebuilt = crate::model::envelope::rebuild(
        e.envelope.as_bytes(),
        e.payload.as_bytes(),
        e.payload_member.as_deref(),
    )
    .ok_or(BundleError::Raw)?;
    if rebuilt != bundle.raw.as_bytes() {
        return Err(BundleError::Raw);
    }
    let checkpoint = Checkpoint::parse(key.open(&p.checkpoint)?)?;
    if checkpoint.size != p.tree_size {
        return Err(BundleError::Size(checkpoint.size, p.tree_size));
    }
    let path: Vec<Hash> = p
        .audit_path
        .iter()
        .map(|h| {
            B64.decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(BundleError::Malformed(
                    "a path hash is not 32 bytes of base64",
                ))
        })
        .collect::<Result<_, _>>()?;
    tree::verify_inclusion(
        &tree::leaf_hash(&leaf),
        p.leaf_index,
        p.tree_size,
        &path,
        &checkpoint.root,
    )?;
    Ok(Proved {
        checkpoint,
        leaf_index: p.leaf_index,
    })
}

/// Why an event has no bundle.
#[derive(Debug, thiserror::Error)]
pub enum NoBundle {
    #[error("no such event")]
    NoEvent,
    #[error(
        "the event was stored before the audit tree (migration 0019): the legacy chain covers it, without proofs"
    )]
    Legacy,
    #[error("the event was redacted: its content is gone, only its leaf remains")]
    Redacted,
    #[error(
        "the event is not in a signed checkpoint yet (the next one is at most SEAL_INTERVAL away)"
    )]
    NotYet,
    #[error(transparent)]
    Prove(#[from] ProveError),
}

/// The bundle of the event at `place`.
pub async fn bundle(
    client: &(impl GenericClient + Sync),
    place: (i64, i64),
) -> Result<Bundle, NoBundle> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {}, salt FROM events WHERE txid = $1 AND seq = $2",
                super::leaf::CONTENT_COLUMNS
            ),
            &[&place.0, &place.1],
        )
        .await
        .map_err(ProveError::from)?
        .ok_or(NoBundle::NoEvent)?;
    let salt: Option<Vec<u8>> = row.get("salt");
    let Some(salt) = salt else {
        let redacted: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM audit_redactions WHERE txid = $1 AND seq = $2)",
                &[&place.0, &place.1],
            )
            .await
            .map_err(ProveError::from)?
            .get(0);
        return Err(if redacted {
            NoBundle::Redacted
        } else {
            NoBundle::Legacy
        });
    };
    let t = |i: usize| -> DateTime<Utc> { row.get(i) };
    let event = EventColumns {
        id: row.get(0),
        source: row.get(1),
        timestamp: t(2).timestamp_micros(),
        timestamp_text: t(2).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        event_type: row.get(3),
        target: row.get(4),
        routing_key: row.get(5),
        exchange: row.get(6),
        received_at: t(7).timestamp_micros(),
        payload: row.get(8),
        envelope: row.get(9),
        payload_member: row.get(10),
        properties: row.get(11),
        session_id: row.get(12),
        correlation_id: row.get(13),
        generation: row.get(14),
        sanitized: row.get(15),
        original_body: row.get::<_, Option<Vec<u8>>>(16).map(|b| B64.encode(b)),
        salt: B64.encode(&salt),
    };
    bundle_of(event, client, place).await
}

/// The bundle of `event`, stored at `place`, against the newest checkpoint of
/// `tables`: whichever store holds them.
pub async fn bundle_of(
    event: EventColumns,
    tables: &impl Tables,
    place: (i64, i64),
) -> Result<Bundle, NoBundle> {
    let raw = crate::model::envelope::rebuild(
        event.envelope.as_bytes(),
        event.payload.as_bytes(),
        event.payload_member.as_deref(),
    )
    .map(|r| String::from_utf8_lossy(&r).into_owned())
    .unwrap_or_default();
    let inclusion = inclusion_of_place(tables, place)
        .await?
        .ok_or(NoBundle::NotYet)?;
    Ok(Bundle {
        format: BUNDLE_FORMAT.to_string(),
        event,
        raw,
        inclusion,
    })
}
