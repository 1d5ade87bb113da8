//! Redaction that still verifies: `candystore redact` removes an event's payload
//! and every copy of its body, and the tree still verifies.
//!
//! The event's leaf commits to its content through a salted commitment
//! (`audit::leaf`): deleting the content and the salt leaves the leaf, so the
//! tree and every proof stand, and nothing left can be checked against a guess
//! of the content. What replaces the payload is a marker,
//! `{"candystore_redacted": {"at", "leaf_index"}}`, so every view shows it.
//! A receipt (who, when, why, which leaf) is kept in `audit_redactions`, and
//! its SHA-256 enters the tree as a leaf of its own, attested with AUDIT_KEY:
//! `verify` reports the event as redacted, never as modified, and a receipt
//! written with SQL is named. Archives are written from the rows, so one written
//! after a redaction does not hold the content; a restore of an older one
//! redacts the rows it brings back again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::attest::Keyring;
use super::store;

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("no event at position {0}-{1}")]
    NoEvent(i64, i64),
    #[error(
        "the event was stored before the audit tree: the legacy chain covers it, and a redaction would read as a modification there"
    )]
    Legacy,
    #[error("the event is redacted already")]
    Already,
    #[error("the event is not in a signed checkpoint yet: try again after SEAL_INTERVAL")]
    NotYet,
    #[error("a reason is required")]
    NoReason,
}

/// The receipt, as stored and hashed.
#[derive(Debug, Serialize)]
pub struct Receipt<'a> {
    pub format: &'static str,
    pub leaf_index: u64,
    pub position: String,
    pub id: &'a str,
    pub source: &'a str,
    pub by: &'a str,
    pub at: String,
    pub reason: &'a str,
}

/// What a redaction did.
#[derive(Debug)]
pub struct Redacted {
    pub leaf_index: u64,
    pub receipt: String,
    /// Dead letters of the same delivery whose bodies were emptied.
    pub dead_letters: u64,
}

/// Redacts the event at `place`, in one transaction.
pub async fn redact(
    client: &mut Client,
    place: (i64, i64),
    by: &str,
    reason: &str,
    keyring: Option<&Keyring>,
    now: DateTime<Utc>,
) -> Result<Redacted, RedactError> {
    if reason.trim().is_empty() {
        return Err(RedactError::NoReason);
    }
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT id, source, exchange, routing_key, salt IS NOT NULL, \
             EXISTS (SELECT 1 FROM audit_redactions r WHERE r.txid = e.txid AND r.seq = e.seq) \
             FROM events e WHERE txid = $1 AND seq = $2 FOR UPDATE",
            &[&place.0, &place.1],
        )
        .await?
        .ok_or(RedactError::NoEvent(place.0, place.1))?;
    let (id, source, exchange, routing_key): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if row.get::<_, bool>(5) {
        return Err(RedactError::Already);
    }
    if !row.get::<_, bool>(4) {
        return Err(RedactError::Legacy);
    }
    let head = store::head(&tx).await?.ok_or(RedactError::NotYet)?;
    let leaf_index = store::index_of(&tx, place, head.size)
        .await?
        .ok_or(RedactError::NotYet)?;
    let receipt = receipt(leaf_index, place, &id, &source, by, reason, now);
    let marker = marker(leaf_index, now);
    tx.execute(
        "UPDATE events SET payload = $3, original_body = NULL, salt = NULL WHERE txid = $1 AND seq = $2",
        &[&place.0, &place.1, &marker],
    )
    .await?;
    // A dead letter of the same delivery: same exchange and routing key, and
    // the event's id in its body.
    let quoted = serde_json::to_vec(&id).expect("a string serializes");
    let dead_letters = tx
        .execute(
            "UPDATE dead_letter SET body = '\\x'::bytea, detail = $4 \
             WHERE exchange = $1 AND routing_key = $2 AND position($3::bytea IN body) > 0",
            &[
                &exchange,
                &routing_key,
                &quoted,
                &format!("redacted with the event at leaf {leaf_index}"),
            ],
        )
        .await?;
    tx.execute(
        "INSERT INTO audit_redactions (leaf_index, txid, seq, receipt, redacted_at) VALUES ($1, $2, $3, $4, $5)",
        &[&(leaf_index as i64), &place.0, &place.1, &receipt, &now],
    )
    .await?;
    store::add_leaf(
        &tx,
        &super::leaf::redaction(leaf_index, receipt.as_bytes(), keyring),
    )
    .await?;
    tx.commit().await?;
    Ok(Redacted {
        leaf_index,
        receipt,
        dead_letters,
    })
}

/// The receipt of a redaction, as stored and hashed into its leaf.
pub fn receipt(
    leaf_index: u64,
    place: (i64, i64),
    id: &str,
    source: &str,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> String {
    serde_json::to_string(&Receipt {
        format: "candystore-redaction/v1",
        leaf_index,
        position: format!("{}-{}", place.0, place.1),
        id,
        source,
        by,
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        reason,
    })
    .expect("a receipt serializes")
}

/// What replaces a redacted event's payload.
pub fn marker(leaf_index: u64, at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "candystore_redacted": {
            "at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "leaf_index": leaf_index,
        }
    })
}

/// Redacts again the restored rows a redaction covers (a restore of an archive
/// written before the redaction), in the restore's transaction.
pub const REDACT_RESTORED: &str = "UPDATE events e SET payload = jsonb_build_object('candystore_redacted', \
     jsonb_build_object('at', r.redacted_at, 'leaf_index', r.leaf_index)), original_body = NULL, salt = NULL \
     FROM audit_redactions r WHERE e.txid = r.txid AND e.seq = r.seq AND e.salt IS NOT NULL";
