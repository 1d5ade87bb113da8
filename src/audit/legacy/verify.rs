//! The legacy chain's walk, part of `candystore verify` (`audit::verify`) on a
//! database that has it: recomputes the audit chain (`legacy::seal`) and reports
//! the first event that was modified, deleted, or written into a sealed range out
//! of band, or the first checkpoint whose chain does not hold.
//!
//! Rows the seal job found without a valid writer attestation (`crate::audit::attest`)
//! are named as written out of band. With AUDIT_KEY it also rechecks every
//! attested row's MAC itself, so even seals rewritten together with their chain
//! and checkpoints do not hide a forged row.
//!
//! Retention drops whole partitions, never seals or checkpoints, and records each
//! range it dropped (`dropped_partitions`). A sealed event that is gone and whose
//! time (kept in its seal) lies in a dropped range went with its partition:
//! counted, not a finding. So `verify`
//! starts at the first checkpoint and walks them all. Seals written before they
//! kept event times (migration 0016) cannot be told apart that way: for those it
//! starts at the first checkpoint whose events are all still stored, seeded by its
//! `prev_hash`, as before. `--from` names another start.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio_postgres::Client;

use super::seal::{AttestedColumns, ROW_COLUMNS, chain_step, digest, judge};
use crate::audit::attest::Keyring;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("database")]
    Database(#[from] tokio_postgres::Error),
    #[error("no checkpoint {0}")]
    NoCheckpoint(i64),
}

/// What went wrong, at the first place it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The row no longer matches its digest.
    Modified {
        checkpoint: i64,
        txid: i64,
        seq: i64,
        id: String,
    },
    /// A sealed row is gone.
    Deleted {
        checkpoint: i64,
        txid: i64,
        seq: i64,
    },
    /// A row sits in a sealed range without a digest: written there out of band.
    Inserted {
        checkpoint: i64,
        txid: i64,
        seq: i64,
        id: String,
    },
    /// The row has no valid writer attestation: written with SQL, not by a writer.
    Unattested {
        checkpoint: i64,
        txid: i64,
        seq: i64,
        id: String,
    },
    /// The digests do not chain to the checkpoint's hash or count (the seals were
    /// altered), or a checkpoint does not continue its predecessor.
    ChainBroken { checkpoint: i64, reason: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Modified {
                checkpoint,
                txid,
                seq,
                id,
            } => write!(
                f,
                "event {id:?} (seq {seq}, txid {txid}, checkpoint {checkpoint}) was modified after it was sealed"
            ),
            Finding::Deleted {
                checkpoint,
                txid,
                seq,
            } => write!(
                f,
                "the event at seq {seq} (txid {txid}, checkpoint {checkpoint}) was deleted after it was sealed"
            ),
            Finding::Inserted {
                checkpoint,
                txid,
                seq,
                id,
            } => write!(
                f,
                "event {id:?} (seq {seq}, txid {txid}) was inserted into the range of checkpoint {checkpoint} out of band"
            ),
            Finding::Unattested {
                checkpoint,
                txid,
                seq,
                id,
            } => write!(
                f,
                "event {id:?} (seq {seq}, txid {txid}, checkpoint {checkpoint}) has no valid writer attestation: it was written out of band"
            ),
            Finding::ChainBroken { checkpoint, reason } => {
                write!(f, "checkpoint {checkpoint}: {reason}")
            }
        }
    }
}

/// What a verification covered.
#[derive(Debug, Default)]
pub struct Report {
    pub checkpoints: u64,
    pub events: u64,
    /// The first checkpoint verified.
    pub from: Option<i64>,
    pub finding: Option<Finding>,
    /// Committed events after the last checkpoint (sealed at the next SEAL_INTERVAL).
    pub unsealed: i64,
    /// Attestations rechecked with AUDIT_KEY.
    pub attestations_checked: u64,
    /// Sealed events gone with a partition retention dropped.
    pub dropped: u64,
}

/// Verifies from checkpoint `from` (or the first whose events are all stored) to
/// the last, stopping at the first finding. With `keyring`, attestations are
/// rechecked too.
pub async fn verify(
    client: &Client,
    from: Option<i64>,
    keyring: Option<&Keyring>,
) -> Result<Report, VerifyError> {
    let start = match from {
        Some(id) => {
            client
                .query_opt("SELECT id FROM audit_checkpoints WHERE id = $1", &[&id])
                .await?
                .ok_or(VerifyError::NoCheckpoint(id))?;
            id
        }
        // From the first checkpoint, unless seals without event times (before
        // migration 0016) come first: those are walked only from the first
        // checkpoint whose events are all still stored (retention drops partitions
        // oldest first, so a checkpoint whose events are all at or after the oldest
        // stored event still has them all), and the timestamped ones in any case.
        None => client
            .query_one(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM audit_checkpoints WHERE NOT timestamped) THEN 1 \
                 ELSE least( \
                   coalesce((SELECT min(id) FROM audit_checkpoints \
                     WHERE min_timestamp >= (SELECT min(\"timestamp\") FROM events)), \
                     (SELECT max(id) + 1 FROM audit_checkpoints), 1), \
                   (SELECT max(id) + 1 FROM audit_checkpoints WHERE NOT timestamped)) END",
                &[],
            )
            .await?
            .get(0),
    };
    // The time ranges of the partitions retention dropped.
    let dropped_ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = client
        .query(
            "SELECT from_time, to_time FROM dropped_partitions WHERE table_name = 'events'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let checkpoints = client
        .query(
            "SELECT id, from_txid, from_seq, to_txid, to_seq, count, prev_hash, chain_hash \
             FROM audit_checkpoints WHERE id >= $1 ORDER BY id",
            &[&start],
        )
        .await?;
    let mut report = Report {
        from: checkpoints.first().map(|c| c.get(0)),
        ..Report::default()
    };
    let mut previous: Option<Vec<u8>> = None;
    // Attestation began before the first checkpoint verified: every row must
    // then carry a valid one.
    let mut began: bool = client
        .query_opt(
            "SELECT attested FROM audit_checkpoints WHERE id < $1 ORDER BY id DESC LIMIT 1",
            &[&start],
        )
        .await?
        .is_some_and(|r| r.get(0));
    for cp in &checkpoints {
        let id: i64 = cp.get("id");
        let range = (
            cp.get::<_, i64>("from_txid"),
            cp.get::<_, i64>("from_seq"),
            cp.get::<_, i64>("to_txid"),
            cp.get::<_, i64>("to_seq"),
        );
        let prev: Vec<u8> = cp.get("prev_hash");
        if let Some(p) = &previous
            && *p != prev
        {
            report.finding = Some(Finding::ChainBroken {
                checkpoint: id,
                reason: "it does not continue the previous checkpoint's chain".into(),
            });
            return Ok(report);
        }
        let walk = Walk {
            checkpoint: id,
            keyring,
            began: &mut began,
            dropped_ranges: &dropped_ranges,
        };
        if let Some(f) = check_range(client, walk, range, &mut report).await? {
            report.finding = Some(f);
            return Ok(report);
        }
        // The seals themselves: they must chain to the checkpoint's hash.
        let seals = client
            .query(
                "SELECT digest, attested FROM audit_seals WHERE (txid, seq) > ($1, $2) AND (txid, seq) <= ($3, $4) \
                 ORDER BY txid, seq",
                &[&range.0, &range.1, &range.2, &range.3],
            )
            .await?;
        let mut hash: [u8; 32] = prev.clone().try_into().unwrap_or([0; 32]);
        for s in &seals {
            let d: Vec<u8> = s.get(0);
            hash = chain_step(&hash, &d.try_into().unwrap_or([0; 32]), s.get(1));
        }
        let expected: Vec<u8> = cp.get("chain_hash");
        if seals.len() as i64 != cp.get::<_, i64>("count") || hash.as_slice() != expected {
            report.finding = Some(Finding::ChainBroken {
                checkpoint: id,
                reason: format!(
                    "its {} seal(s) do not chain to its hash (count {}): the seals were altered",
                    seals.len(),
                    cp.get::<_, i64>("count")
                ),
            });
            return Ok(report);
        }
        previous = Some(expected);
        report.checkpoints += 1;
    }
    let (t, s) = checkpoints
        .last()
        .map(|c| (c.get::<_, i64>("to_txid"), c.get::<_, i64>("to_seq")))
        .unwrap_or((0, 0));
    report.unsealed = client
        .query_one(
            "SELECT count(*) FROM events WHERE (txid, seq) > ($1, $2)",
            &[&t, &s],
        )
        .await?
        .get(0);
    Ok(report)
}

/// One checkpoint's walk.
struct Walk<'a> {
    checkpoint: i64,
    keyring: Option<&'a Keyring>,
    /// A valid attestation was seen (or sealed) before: a missing one is a finding.
    began: &'a mut bool,
    /// The time ranges of the partitions retention dropped.
    dropped_ranges: &'a [(DateTime<Utc>, DateTime<Utc>)],
}

impl Walk<'_> {
    /// The sealed event `seal` (a row of the seals query), not stored, went with a
    /// partition retention dropped: its time lies in a dropped range.
    fn dropped(&self, seal: &tokio_postgres::Row) -> bool {
        let time: Option<DateTime<Utc>> = seal.get(4);
        time.is_some_and(|t| self.dropped_ranges.iter().any(|(a, b)| *a <= t && t < *b))
    }
}

/// Walks one checkpoint's rows and seals side by side, in `(txid, seq)` order.
async fn check_range(
    client: &Client,
    walk: Walk<'_>,
    (from_txid, from_seq, to_txid, to_seq): (i64, i64, i64, i64),
    report: &mut Report,
) -> Result<Option<Finding>, VerifyError> {
    let checkpoint = walk.checkpoint;
    let keyring = walk.keyring;
    let seals = client
        .query(
            "SELECT txid, seq, digest, attested, \"timestamp\" FROM audit_seals WHERE (txid, seq) > ($1, $2) AND (txid, seq) <= ($3, $4) \
             ORDER BY txid, seq",
            &[&from_txid, &from_seq, &to_txid, &to_seq],
        )
        .await?;
    let rows = client
        .query_raw(
            &format!(
                "SELECT {ROW_COLUMNS} FROM events WHERE (txid, seq) > ($1, $2) AND (txid, seq) <= ($3, $4) \
                 ORDER BY txid, seq"
            ),
            [
                &from_txid as &(dyn tokio_postgres::types::ToSql + Sync),
                &from_seq,
                &to_txid,
                &to_seq,
            ],
        )
        .await?;
    futures::pin_mut!(rows);
    let mut seals = seals.iter().peekable();
    let mut columns: Option<AttestedColumns> = None;
    let mut pending = None;
    loop {
        let row = match pending.take() {
            Some(row) => row,
            None => match rows.try_next().await? {
                Some(row) => row,
                None => break,
            },
        };
        let pos = (row.get::<_, i64>("txid"), row.get::<_, i64>("seq"));
        let id: String = row.get("id");
        let Some(seal) = seals.peek() else {
            return Ok(Some(Finding::Inserted {
                checkpoint,
                txid: pos.0,
                seq: pos.1,
                id,
            }));
        };
        let sealed = (seal.get::<_, i64>(0), seal.get::<_, i64>(1));
        match sealed.cmp(&pos) {
            Ordering::Less if walk.dropped(seal) => {
                report.dropped += 1;
                seals.next();
                // The same row, against the next seal.
                pending = Some(row);
                continue;
            }
            Ordering::Less => {
                return Ok(Some(Finding::Deleted {
                    checkpoint,
                    txid: sealed.0,
                    seq: sealed.1,
                }));
            }
            Ordering::Greater => {
                return Ok(Some(Finding::Inserted {
                    checkpoint,
                    txid: pos.0,
                    seq: pos.1,
                    id,
                }));
            }
            Ordering::Equal => {
                let stored: Vec<u8> = seal.get(2);
                if digest(&row)?.as_slice() != stored {
                    return Ok(Some(Finding::Modified {
                        checkpoint,
                        txid: pos.0,
                        seq: pos.1,
                        id,
                    }));
                }
                let sealed_as: Option<bool> = seal.get(3);
                // The seal's own verdict; with the key, the MAC itself as well.
                let unattested = match (sealed_as, keyring) {
                    (Some(false), _) => true,
                    (_, Some(k)) => {
                        let columns = columns.get_or_insert_with(|| AttestedColumns::of(&row));
                        report.attestations_checked += 1;
                        // The seal job's own rule, applied to the MAC found now.
                        judge(columns.check(k, &row)?, walk.began) == Some(false)
                    }
                    (Some(true), None) => {
                        *walk.began = true;
                        false
                    }
                    (None, None) => *walk.began,
                };
                if unattested {
                    return Ok(Some(Finding::Unattested {
                        checkpoint,
                        txid: pos.0,
                        seq: pos.1,
                        id,
                    }));
                }
                seals.next();
                report.events += 1;
            }
        }
    }
    for seal in seals {
        if walk.dropped(seal) {
            report.dropped += 1;
            continue;
        }
        return Ok(Some(Finding::Deleted {
            checkpoint,
            txid: seal.get(0),
            seq: seal.get(1),
        }));
    }
    Ok(None)
}
