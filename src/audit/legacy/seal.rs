//! The legacy audit chain (migrations 0013 to 0018), before the Merkle tree:
//! kept so databases that have it stay verifiable, and sealed one last time by
//! the tree job's first step, whose anchor leaf commits to its end. Nothing
//! seals with it after that.
//!
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
//!
//! A row inserted with SQL after the last seal, at a fresh position, would be
//! sealed like a writer's row; the writers' attestations ([`crate::audit::attest`]) tell
//! them apart. With AUDIT_KEY set, each row's MAC is checked as it is sealed. From
//! the first attested row on, every later row must carry a valid one: a row
//! without it is sealed as *unattested* (`audit_seals.attested = false`, and its
//! chain step says so, see [`chain_step`]), counted in
//! `candystore_audit_unattested_total`, logged, and named by `verify`. Once the
//! chain is attested, an instance without AUDIT_KEY does not seal.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use postgres_types::{FromSql, Type};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Row};

use crate::audit::attest::{ATTESTED_COLUMNS, Check, Keyring};

use crate::db::HORIZON;

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
/// How many columns [`SEALED_COLUMNS`] names: a digest covers the first this many
/// columns of a row read with [`ROW_COLUMNS`].
pub const SEALED_COUNT: usize = 19;
/// What the seal job and `verify` read of each row: the sealed columns, then the
/// writer's attestation (not digested: it is checked with the key instead).
pub const ROW_COLUMNS: &str = "txid, seq, id, source, \"timestamp\", event_type, target, \
    routing_key, exchange, received_at, payload, envelope, payload_member, properties, \
    session_id, correlation_id, generation, sanitized, original_body, attestation";

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

/// The digest of one event row read with [`ROW_COLUMNS`]: SHA-256 over each
/// sealed column's binary form, each prefixed by its length (`u64::MAX` for NULL).
pub fn digest(row: &Row) -> Result<[u8; 32], tokio_postgres::Error> {
    let mut h = Sha256::new();
    for i in 0..SEALED_COUNT.min(row.len()) {
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
    chain_step(prev, digest, None)
}

/// What an unattested row's chain step adds, so its flag cannot be cleared
/// without breaking the chain.
const UNATTESTED: &[u8] = b"unattested";

/// The next chain hash for a row whose seal says `attested`: `SHA-256(prev ‖
/// digest)`, with [`UNATTESTED`] appended for a row found unattested (a chain
/// sealed before attestations existed is unchanged).
pub fn chain_step(prev: &[u8; 32], digest: &[u8; 32], attested: Option<bool>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(digest);
    if attested == Some(false) {
        h.update(UNATTESTED);
    }
    h.finalize().into()
}

/// Where each of [`ATTESTED_COLUMNS`] and `attestation` sit in a row read with
/// [`ROW_COLUMNS`].
pub struct AttestedColumns {
    columns: [usize; ATTESTED_COLUMNS.len()],
    attestation: usize,
}

impl AttestedColumns {
    pub fn of(row: &Row) -> Self {
        let at = |name: &str| {
            row.columns()
                .iter()
                .position(|c| c.name() == name)
                .expect("ROW_COLUMNS names every attested column")
        };
        AttestedColumns {
            columns: ATTESTED_COLUMNS.map(at),
            attestation: at("attestation"),
        }
    }

    /// Checks the row's attestation with `keyring`.
    pub fn check(&self, keyring: &Keyring, row: &Row) -> Result<Check, tokio_postgres::Error> {
        let Wire(stored) = row.try_get(self.attestation)?;
        let mut values = [None; ATTESTED_COLUMNS.len()];
        for (v, &i) in values.iter_mut().zip(&self.columns) {
            let Wire(value) = row.try_get(i)?;
            *v = value;
        }
        Ok(keyring.check(stored, values))
    }
}

/// What the seal job makes of one row's attestation: `Some(true)` valid,
/// `Some(false)` unattested, `None` not checked. `began` (a valid attestation was
/// sealed before) turns a missing one from "not checked" into "unattested".
pub fn judge(check: Check, began: &mut bool) -> Option<bool> {
    match check {
        Check::Valid => {
            *began = true;
            Some(true)
        }
        Check::Invalid => Some(false),
        Check::Missing if *began => Some(false),
        Check::Missing => None,
    }
}

/// What one step sealed.
#[derive(Debug, Default)]
pub struct Sealed {
    pub events: i64,
    pub checkpoint: Option<i64>,
    /// Rows sealed as unattested: `(txid, seq, id)`.
    pub unattested: Vec<(i64, i64, String)>,
    /// Nothing sealed: the chain is attested and this instance has no AUDIT_KEY.
    pub needs_key: bool,
}

/// Seals the next committed events (at most [`SEAL_MAX_EVENTS`]) and writes their
/// checkpoint, checking attestations with `keyring`. Nothing when there are none
/// or another instance holds the turn.
pub async fn step(
    client: &mut Client,
    keyring: Option<&Keyring>,
) -> Result<Sealed, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if !crate::jobs::take_turn(&tx, LOCK_KEY).await? {
        return Ok(Sealed::default());
    }
    let last = tx
        .query_opt(
            "SELECT to_txid, to_seq, chain_hash, attested FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let (from_txid, from_seq, prev, mut began) = match &last {
        Some(r) => {
            let hash: Vec<u8> = r.get(2);
            (
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                hash.try_into().unwrap_or(GENESIS),
                r.get::<_, bool>(3),
            )
        }
        None => (0, 0, GENESIS, false),
    };
    if began && keyring.is_none() {
        return Ok(Sealed {
            needs_key: true,
            ..Sealed::default()
        });
    }
    let rows = tx
        .query_raw(
            &format!(
                "SELECT {ROW_COLUMNS} FROM events WHERE (txid, seq) > ($1, $2) AND txid < {HORIZON} \
                 ORDER BY txid, seq LIMIT {SEAL_MAX_EVENTS}"
            ),
            [&from_txid as &(dyn tokio_postgres::types::ToSql + Sync), &from_seq],
        )
        .await?;
    futures::pin_mut!(rows);
    let (mut txids, mut seqs, mut digests, mut flags, mut times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unattested = Vec::new();
    let mut hash = prev;
    let (mut min_ts, mut max_ts): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut columns: Option<AttestedColumns> = None;
    while let Some(row) = rows.try_next().await? {
        let d = digest(&row)?;
        let attested = match keyring {
            Some(k) => {
                let columns = columns.get_or_insert_with(|| AttestedColumns::of(&row));
                judge(columns.check(k, &row)?, &mut began)
            }
            None => None,
        };
        if attested == Some(false) {
            unattested.push((row.get("txid"), row.get("seq"), row.get("id")));
        }
        flags.push(attested);
        hash = chain_step(&hash, &d, attested);
        let ts: DateTime<Utc> = row.get("timestamp");
        times.push(ts);
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
    for ((((t, s), d), a), ts) in txids
        .chunks(10_000)
        .zip(seqs.chunks(10_000))
        .zip(digests.chunks(10_000))
        .zip(flags.chunks(10_000))
        .zip(times.chunks(10_000))
    {
        tx.execute(
            "INSERT INTO audit_seals (txid, seq, digest, attested, \"timestamp\") \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::boolean[], $5::timestamptz[])",
            &[&t, &s, &d, &a, &ts],
        )
        .await?;
    }
    let count = txids.len() as i64;
    let unattested_count = unattested.len() as i64;
    let id: i64 = tx
        .query_one(
            "INSERT INTO audit_checkpoints (from_txid, from_seq, to_txid, to_seq, count, prev_hash, chain_hash, \
             min_timestamp, max_timestamp, attested, unattested, timestamped) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, true) RETURNING id",
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
                &began,
                &unattested_count,
            ],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Sealed {
        events: count,
        checkpoint: Some(id),
        unattested,
        needs_key: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_read_for_sealing_is_the_sealed_columns_then_the_attestation() {
        let sealed: Vec<&str> = SEALED_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(sealed.len(), SEALED_COUNT);
        let read: Vec<&str> = ROW_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(&read[..SEALED_COUNT], &sealed[..]);
        assert_eq!(read[SEALED_COUNT..], ["attestation"]);
        // Every attested column is sealed too.
        for c in ATTESTED_COLUMNS {
            assert!(
                sealed.iter().any(|s| s.trim_matches('"') == c),
                "{c} is sealed"
            );
        }
    }

    #[test]
    fn only_an_unattested_row_changes_its_chain_step() {
        let (prev, d) = ([1u8; 32], [2u8; 32]);
        assert_eq!(chain_step(&prev, &d, None), chain(&prev, &d));
        assert_eq!(chain_step(&prev, &d, Some(true)), chain(&prev, &d));
        assert_ne!(chain_step(&prev, &d, Some(false)), chain(&prev, &d));
    }

    #[test]
    fn a_missing_attestation_is_a_finding_only_after_the_first_valid_one() {
        let mut began = false;
        assert_eq!(judge(Check::Missing, &mut began), None);
        assert_eq!(judge(Check::Invalid, &mut began), Some(false));
        assert!(!began);
        assert_eq!(judge(Check::Valid, &mut began), Some(true));
        assert!(began);
        assert_eq!(judge(Check::Missing, &mut began), Some(false));
    }
}
