//! The audit chain: committed events are sealed, in the live tail's order
//! `(txid, seq)` and only below its horizon ([`HORIZON`]: committed, and nothing
//! can appear below it later), so sealing never waits for or slows the writers.
//!
//! Each event gets a digest: SHA-256 over every stored column in PostgreSQL's
//! binary form, length-prefixed ([`digest`]). Digests are kept in `audit_seals`
//! and chained, `h = SHA-256(h_prev ‖ digest)`, from 32 zero bytes; each step seals
//! up to [`SEAL_MAX_EVENTS`] events and writes a checkpoint (range, count, the
//! chain hash before and after, the range's event times) in the same transaction.
//! `ops::verify` recomputes digests and chain: a modified row no longer matches
//! its digest, a deleted row leaves a digest without its row, a row written into
//! a sealed range has no digest, and a changed digest breaks the chain.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use postgres_types::{FromSql, Type};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Row};
use tokio_util::sync::CancellationToken;

use super::StorageError;
use super::tail_index::HORIZON;

/// Events sealed per step (one checkpoint) at most.
pub const SEAL_MAX_EVENTS: i64 = 100_000;
/// The advisory lock (transaction-scoped) instances take turns by.
const LOCK_KEY: i64 = 7_236_828_094_530_679_669;
/// The chain hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Every column of `events` a digest covers, in digest order.
pub const SEALED_COLUMNS: &str = "txid, seq, id, source, \"timestamp\", event_type, target, \
    routing_key, exchange, received_at, payload, envelope, payload_member, properties, \
    session_id, correlation_id, generation, sanitized, original_body";

/// A column's value as PostgreSQL sends it in binary, whatever its type.
struct Wire<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Wire<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The digest of one event row read with [`SEALED_COLUMNS`]: SHA-256 over each
/// column's binary form, each prefixed by its length (`u64::MAX` for NULL).
pub fn digest(row: &Row) -> Result<[u8; 32], tokio_postgres::Error> {
    let mut h = Sha256::new();
    for i in 0..row.len() {
        let Wire(value) = row.try_get(i)?;
        match value {
            Some(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            None => h.update(u64::MAX.to_le_bytes()),
        }
    }
    Ok(h.finalize().into())
}

/// The next chain hash.
pub fn chain(prev: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(digest);
    h.finalize().into()
}

/// What one step sealed.
#[derive(Debug, Default)]
pub struct Sealed {
    pub events: i64,
    pub checkpoint: Option<i64>,
}

/// Seals the next committed events (at most [`SEAL_MAX_EVENTS`]) and writes their
/// checkpoint. Nothing when there are none or another instance holds the turn.
pub async fn step(client: &mut Client) -> Result<Sealed, StorageError> {
    let tx = client.transaction().await?;
    let turn: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?
        .get(0);
    if !turn {
        return Ok(Sealed::default());
    }
    let last = tx
        .query_opt(
            "SELECT to_txid, to_seq, chain_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let (from_txid, from_seq, prev) = match &last {
        Some(r) => {
            let hash: Vec<u8> = r.get(2);
            (
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                hash.try_into().unwrap_or(GENESIS),
            )
        }
        None => (0, 0, GENESIS),
    };
    let rows = tx
        .query_raw(
            &format!(
                "SELECT {SEALED_COLUMNS} FROM events WHERE (txid, seq) > ($1, $2) AND txid < {HORIZON} \
                 ORDER BY txid, seq LIMIT {SEAL_MAX_EVENTS}"
            ),
            [&from_txid as &(dyn tokio_postgres::types::ToSql + Sync), &from_seq],
        )
        .await?;
    futures::pin_mut!(rows);
    let (mut txids, mut seqs, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    let mut hash = prev;
    let (mut min_ts, mut max_ts): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    while let Some(row) = rows.try_next().await? {
        let d = digest(&row)?;
        hash = chain(&hash, &d);
        let ts: DateTime<Utc> = row.get("timestamp");
        min_ts = Some(min_ts.map_or(ts, |m| m.min(ts)));
        max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
        txids.push(row.get::<_, i64>("txid"));
        seqs.push(row.get::<_, i64>("seq"));
        digests.push(d.to_vec());
    }
    let (Some(&to_txid), Some(&to_seq), Some(min_ts), Some(max_ts)) =
        (txids.last(), seqs.last(), min_ts, max_ts)
    else {
        return Ok(Sealed::default());
    };
    for ((t, s), d) in txids
        .chunks(10_000)
        .zip(seqs.chunks(10_000))
        .zip(digests.chunks(10_000))
    {
        tx.execute(
            "INSERT INTO audit_seals (txid, seq, digest) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&t, &s, &d],
        )
        .await?;
    }
    let count = txids.len() as i64;
    let id: i64 = tx
        .query_one(
            "INSERT INTO audit_checkpoints (from_txid, from_seq, to_txid, to_seq, count, prev_hash, chain_hash, \
             min_timestamp, max_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                &from_txid,
                &from_seq,
                &to_txid,
                &to_seq,
                &count,
                &prev.as_slice(),
                &hash.as_slice(),
                &min_ts,
                &max_ts,
            ],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Sealed {
        events: count,
        checkpoint: Some(id),
    })
}

/// Seals every `every` (at once again while steps are full) until `stop`.
pub async fn run_forever(target: crate::db::PgTarget, every: Duration, stop: CancellationToken) {
    let mut client: Option<Client> = None;
    loop {
        let outcome = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(super::connect(&target).await?);
            }
            step(client.as_mut().expect("connected above")).await
        };
        let outcome = tokio::select! {
            o = outcome => o,
            _ = stop.cancelled() => return,
        };
        let rest = match outcome {
            Ok(s) if s.events >= SEAL_MAX_EVENTS => Duration::ZERO,
            Ok(s) => {
                if let Some(id) = s.checkpoint {
                    tracing::debug!(checkpoint = id, events = s.events, "sealed");
                }
                every
            }
            Err(e) => {
                // A schema an online migration has not finished yet (no `txid`, or
                // these tables still waiting behind it) is not worth more than a debug line.
                let undefined_table = matches!(&e, StorageError::Db(db)
                    if db.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                        || db.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN));
                if undefined_table {
                    tracing::debug!(error = %e, "audit tables not there yet");
                } else {
                    tracing::warn!(error = %e, "sealing failed; retrying");
                }
                client = None;
                every
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = stop.cancelled() => return,
        }
    }
}
