//! `candystore redact` on the embedded store: PostgreSQL's redaction
//! (`audit::redact`) on the file. The event's payload becomes the marker, its
//! original body and salt go, dead letters of the same delivery are emptied,
//! the receipt is kept (`audit_redactions`, migration 5) and its leaf enters the
//! tree, all in one transaction. The redaction leaf takes a place in commit
//! order, so this owns the file: the service is stopped first.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::tree::{Tables, add_leaf};
use super::{Role, Sqlite};
use crate::audit::attest::Keyring;
use crate::audit::redact::{RedactError, Redacted, marker, receipt};
use crate::audit::store::{self, Place, StoreError};

fn other(e: impl std::error::Error + Send + Sync + 'static) -> RedactError {
    RedactError::Store(StoreError::Other(Box::new(e)))
}

/// The marker as the file keeps a payload: jsonb's text.
fn marker_text(leaf_index: u64, at: DateTime<Utc>) -> String {
    let json = serde_json::to_vec(&marker(leaf_index, at)).expect("a marker serializes");
    String::from_utf8(crate::audit::jsonb::canonical(&json).expect("a marker is jsonb"))
        .expect("jsonb text is UTF-8")
}

/// Redacts the event at `place` in the file at `path`, which this process
/// owns meanwhile.
pub async fn redact(
    path: &Path,
    place: Place,
    by: &str,
    reason: &str,
    keyring: Option<&Keyring>,
    now: DateTime<Utc>,
) -> Result<Redacted, RedactError> {
    if reason.trim().is_empty() {
        return Err(RedactError::NoReason);
    }
    let (path, by, reason, keyring) = (
        path.to_owned(),
        by.to_owned(),
        reason.to_owned(),
        keyring.cloned(),
    );
    tokio::task::spawn_blocking(move || {
        let store = Sqlite::own(&path).map_err(|e| {
            RedactError::Store(StoreError::Other(crate::telemetry::error_chain(&e).into()))
        })?;
        let mut conn = store.connect(Role::Write).map_err(other)?;
        redact_in(&mut conn, place, &by, &reason, keyring.as_ref(), now)
    })
    .await
    .map_err(other)?
}

fn redact_in(
    conn: &mut Connection,
    place: Place,
    by: &str,
    reason: &str,
    keyring: Option<&Keyring>,
    now: DateTime<Utc>,
) -> Result<Redacted, RedactError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(other)?;
    let row: Option<(String, String, String, String, bool, bool)> = if place.0 == 0 {
        tx.query_row(
            "SELECT id, source, exchange, routing_key, salt IS NOT NULL, \
             EXISTS (SELECT 1 FROM audit_redactions r WHERE r.seq = e.seq) \
             FROM events e WHERE seq = ?1",
            [place.1],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()
        .map_err(other)?
    } else {
        None
    };
    let (id, source, exchange, routing_key, salted, redacted) =
        row.ok_or(RedactError::NoEvent(place.0, place.1))?;
    if redacted {
        return Err(RedactError::Already);
    }
    if !salted {
        return Err(RedactError::Legacy);
    }
    let tables = Tables(&tx);
    let head = futures::executor::block_on(store::head(&tables))?.ok_or(RedactError::NotYet)?;
    let leaf_index = futures::executor::block_on(store::index_of(&tables, place, head.size))?
        .ok_or(RedactError::NotYet)?;
    let receipt = receipt(leaf_index, place, &id, &source, by, reason, now);
    tx.execute(
        "UPDATE events SET payload = ?2, original_body = NULL, salt = NULL WHERE seq = ?1",
        params![place.1, marker_text(leaf_index, now)],
    )
    .map_err(other)?;
    // A dead letter of the same delivery: same exchange and routing key, and the
    // event's id in its body.
    let quoted = serde_json::to_vec(&id).expect("a string serializes");
    let dead_letters = tx
        .execute(
            "UPDATE dead_letter SET body = x'', detail = ?4 \
             WHERE exchange = ?1 AND routing_key = ?2 AND instr(body, ?3) > 0",
            params![
                exchange,
                routing_key,
                quoted,
                format!("redacted with the event at leaf {leaf_index}")
            ],
        )
        .map_err(other)? as u64;
    tx.execute(
        "INSERT INTO audit_redactions (leaf_index, txid, seq, receipt, redacted_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            leaf_index as i64,
            place.0,
            place.1,
            receipt,
            now.timestamp_micros()
        ],
    )
    .map_err(other)?;
    add_leaf(
        &tx,
        &crate::audit::leaf::redaction(leaf_index, receipt.as_bytes(), keyring),
    )
    .map_err(other)?;
    tx.commit().map_err(other)?;
    Ok(Redacted {
        leaf_index,
        receipt,
        dead_letters,
    })
}

/// Redacts again rows a restore brought back that a redaction covers (an
/// archive written before it); how many.
pub fn redact_restored(conn: &Connection) -> rusqlite::Result<usize> {
    let mut st = conn.prepare(
        "SELECT r.seq, r.leaf_index, r.redacted_at FROM audit_redactions r \
         JOIN events e ON e.seq = r.seq WHERE e.salt IS NOT NULL",
    )?;
    let rows: Vec<(i64, i64, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, leaf_index, at) in &rows {
        let at = DateTime::from_timestamp_micros(*at).unwrap_or_default();
        conn.execute(
            "UPDATE events SET payload = ?2, original_body = NULL, salt = NULL WHERE seq = ?1",
            params![seq, marker_text(*leaf_index as u64, at)],
        )?;
    }
    Ok(rows.len())
}
