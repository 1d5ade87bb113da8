//! `candystore verify`: judges every row and every leaf, whatever its place or
//! the instance that wrote it, and the tree against its signed checkpoints.
//!
//! 1. The tree: `audit_leaves` in the tail's order is recomputed; at every
//!    signed size the root must be the signed root, each note must carry a valid
//!    signature by the key given from outside the database (`--public-key`, or
//!    SIGNING_KEY_FILE's public half), and the stored tiles must hold the
//!    recomputed subtrees. A checkpoint saved earlier (`--checkpoint`) must be a
//!    tree the current one extends: the current leaves up to its size make its
//!    root, and the tree is not smaller (a rollback).
//! 2. The rows (unless `tree_only`): `events` and `audit_leaves` are walked side
//!    by side in `(txid, seq)` order. A row's columns and salt must make its
//!    leaf's commitment (modified otherwise); a row without a leaf was written
//!    out of band; an event leaf without its row was deleted, unless its time
//!    lies in a range retention dropped. Leaves not yet in a checkpoint are
//!    judged the same way, so there is no window between a commit and the next
//!    checkpoint.
//! 3. With AUDIT_KEY, every leaf's attestation: from the trail's first attested
//!    leaf on (or the first valid one seen), a missing or wrong one is named.
//! 4. Rows stored before the tree (no salt, at or before the legacy chain's
//!    end) are judged by the legacy chain (`ops::verify`), and reported as such.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use sha2::Digest;
use tokio_postgres::Client;

use super::attest::{Check, Keyring};
use super::leaf::{CONTENT_COLUMNS, Content, Kind, Leaf};
use super::note::{Checkpoint, VerifierKey};
use super::store::{HEIGHT, Head, Place, WIDTH};
use super::tree::{Frontier, leaf_hash};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    /// A store other than PostgreSQL (the embedded one) could not answer.
    #[error("event store")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the saved checkpoint: {0}")]
    Saved(String),
}

/// Something `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The row's columns no longer make its leaf's commitment.
    Modified {
        id: String,
        position: (i64, i64),
        index: Option<u64>,
    },
    /// An event leaf whose row is gone (and not with a dropped partition).
    Deleted {
        position: (i64, i64),
        index: Option<u64>,
    },
    /// A row with no leaf, after the legacy chain: written out of band.
    NotInTree { id: String, position: (i64, i64) },
    /// A leaf without a valid attestation where one is required.
    Unattested {
        position: (i64, i64),
        index: Option<u64>,
    },
    /// The recomputed tree is not the signed one at this size.
    TreeRewritten { size: u64, reason: String },
    /// A stored checkpoint whose signature does not hold.
    BadSignature { size: u64, reason: String },
    /// The tree is smaller than, or does not extend, a checkpoint seen before.
    Rollback {
        seen: u64,
        size: u64,
        reason: String,
    },
    /// Rows are stored but the tree reaches none of them: it was emptied.
    Emptied { rows: i64 },
    /// A leaf at a place no writer's transaction has reached.
    Impossible { position: (i64, i64) },
    /// A dropped range recorded after the tree began, without its leaf: it
    /// excuses no missing event.
    ForgedRetention { partition: String },
    /// A redaction receipt the tree holds no leaf of (written with SQL).
    ForgedRedaction { leaf_index: i64 },
    /// What the legacy chain's walk found.
    Legacy(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |p: &(i64, i64), i: &Option<u64>| match i {
            Some(i) => format!("position {}-{}, leaf {i}", p.0, p.1),
            None => format!("position {}-{}, not in a checkpoint yet", p.0, p.1),
        };
        match self {
            Finding::Modified {
                id,
                position,
                index,
            } => write!(
                f,
                "event {id:?} ({}) was modified after it was stored: its columns no longer make its leaf",
                at(position, index)
            ),
            Finding::Deleted { position, index } => write!(
                f,
                "the event at {} was deleted: its leaf has no row, and no dropped partition covers its time",
                at(position, index)
            ),
            Finding::NotInTree { id, position } => write!(
                f,
                "event {id:?} (position {}-{}) has no leaf: it was written out of band",
                position.0, position.1
            ),
            Finding::Unattested { position, index } => write!(
                f,
                "the leaf at {} has no valid attestation (AUDIT_KEY): it was written out of band",
                at(position, index)
            ),
            Finding::TreeRewritten { size, reason } => {
                write!(f, "the signed tree of {size} leaves: {reason}")
            }
            Finding::BadSignature { size, reason } => {
                write!(f, "the checkpoint of {size} leaves: {reason}")
            }
            Finding::Rollback { seen, size, reason } => write!(
                f,
                "the tree ({size} leaves) does not extend the checkpoint of {seen} leaves seen before: {reason}"
            ),
            Finding::Emptied { rows } => write!(
                f,
                "{rows} event(s) are stored and the tree reaches none of them: the audit tree was emptied"
            ),
            Finding::Impossible { position } => write!(
                f,
                "a leaf sits at position {}-{}, which no transaction has reached: inserted with SQL",
                position.0, position.1
            ),
            Finding::ForgedRetention { partition } => write!(
                f,
                "dropped_partitions records {partition:?} dropped, but the tree holds no such drop: recorded with SQL"
            ),
            Finding::ForgedRedaction { leaf_index } => write!(
                f,
                "audit_redactions holds a receipt for leaf {leaf_index} that the tree holds no redaction of: written with SQL"
            ),
            Finding::Legacy(f2) => write!(f, "the legacy chain: {f2}"),
        }
    }
}

/// What to check, and with what.
#[derive(Default)]
pub struct Options<'a> {
    pub keyring: Option<&'a Keyring>,
    /// The checkpoints' public key, from outside the database.
    pub key: Option<&'a VerifierKey>,
    /// A checkpoint saved earlier (its signed note).
    pub saved: Option<&'a str>,
    /// Only the tree and the saved checkpoint, not the rows.
    pub tree_only: bool,
}

/// Findings named at most; the rest are counted.
pub const MAX_FINDINGS: usize = 100;

/// What a verification covered and found.
#[derive(Debug, Default)]
pub struct Report {
    pub tree_size: u64,
    /// Signed checkpoints whose root was recomputed.
    pub checkpoints: u64,
    /// Of those, whose signature was checked with a key from outside.
    pub signatures: u64,
    pub leaves: u64,
    /// Leaves appended after the newest checkpoint (judged all the same).
    pub pending: u64,
    /// Rows compared with their leaf.
    pub events: u64,
    /// Leaf attestations that held with AUDIT_KEY.
    pub attestations: u64,
    /// Leaves attested with a key no longer in AUDIT_KEY (retired or lost) that
    /// a signed key leaf introduced: not checked.
    pub retired_key: u64,
    /// Event leaves whose row went with a partition retention dropped.
    pub dropped: u64,
    /// Events redacted (`candystore redact`): content gone, receipt in the tree.
    pub redacted: u64,
    /// Rows stored before the tree, judged by the legacy chain.
    pub legacy_events: u64,
    pub legacy_checkpoints: u64,
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`].
    pub more: u64,
}

impl Report {
    /// Records a finding (named up to [`MAX_FINDINGS`], then counted).
    pub fn find(&mut self, f: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.more += 1;
        }
    }

    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// What `verify` reads of a store besides its two walks.
#[derive(Default)]
pub struct Trail {
    /// Every signed checkpoint, smallest tree first.
    pub heads: Vec<Head>,
    pub tiles: HashMap<(i16, i64), Vec<u8>>,
    /// The index of the trail's first attested leaf.
    pub attested_from: Option<i64>,
    /// Where the legacy chain ends (PostgreSQL databases older than the tree).
    pub legacy_end: Option<Place>,
    /// Time ranges retention dropped that the tree holds a leaf of.
    pub dropped: Vec<(i64, i64)>,
    /// Leaves whose event was redacted, with a receipt the tree holds.
    pub redacted: HashSet<u64>,
    /// AUDIT_KEY ids the trail introduced with a signed key leaf.
    pub introduced: HashSet<[u8; 4]>,
    /// The newest transaction: no leaf can sit after it.
    pub newest_txid: i64,
}

/// An event row as `verify` reads it, from whichever store.
pub trait EventRow {
    fn place(&self) -> Place;
    fn id(&self) -> &str;
    fn salt(&self) -> Option<&[u8]>;
    /// The columns its leaf commits to.
    fn content(&self) -> Content<'_>;
}

/// A row read with `txid, seq, CONTENT_COLUMNS, salt`.
impl EventRow for tokio_postgres::Row {
    fn place(&self) -> Place {
        (self.get(0), self.get(1))
    }
    fn id(&self) -> &str {
        self.get("id")
    }
    fn salt(&self) -> Option<&[u8]> {
        self.get("salt")
    }
    fn content(&self) -> Content<'_> {
        content(self)
    }
}

/// Verifies the trail in PostgreSQL. `rows` is a second connection the rows
/// are read on, side by side with the leaves.
pub async fn verify(
    client: &Client,
    rows: &Client,
    opts: Options<'_>,
) -> Result<Report, VerifyError> {
    let mut report = Report::default();
    let heads: Vec<Head> = client
        .query(
            "SELECT size, root, last_txid, last_seq, note FROM audit_heads ORDER BY size",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let root: Vec<u8> = r.get(1);
            Head {
                size: r.get::<_, i64>(0) as u64,
                root: root.try_into().unwrap_or([0; 32]),
                last: (r.get(2), r.get(3)),
                note: r.get(4),
            }
        })
        .collect();
    let saved = begin(&heads, &opts, &mut report)?;
    let tiles: HashMap<(i16, i64), Vec<u8>> = client
        .query("SELECT level, idx, hashes FROM audit_tiles", &[])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let attested_from: Option<i64> = client
        .query_opt("SELECT attested_from FROM audit_trail", &[])
        .await?
        .and_then(|r| r.get(0));
    let legacy_end: Option<(i64, i64)> = client
        .query_opt(
            "SELECT to_txid, to_seq FROM audit_checkpoints ORDER BY to_txid DESC, to_seq DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| (r.get(0), r.get(1)));
    let dropped = dropped_ranges(client, &mut report).await?;
    let redacted = redactions(client, &mut report).await?;
    let introduced = introduced_keys(client, opts.key).await?;
    let newest_txid: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await?
        .get(0);
    let trail = Trail {
        heads,
        tiles,
        attested_from,
        legacy_end,
        dropped,
        redacted,
        introduced,
        newest_txid,
    };

    let leaves = client
        .query_raw(
            "SELECT txid, seq, leaf FROM audit_leaves ORDER BY txid, seq",
            std::iter::empty::<i64>(),
        )
        .await?
        .map_ok(|r| ((r.get(0), r.get(1)), r.get(2)))
        .map_err(VerifyError::from);
    let events = if opts.tree_only {
        None
    } else {
        Some(
            rows.query_raw(
                &format!(
                    "SELECT txid, seq, {CONTENT_COLUMNS}, salt FROM events ORDER BY txid, seq"
                ),
                std::iter::empty::<i64>(),
            )
            .await?
            .map_err(VerifyError::from),
        )
    };
    let legacy_rows = walk(&trail, leaves, events, saved.as_ref(), &opts, &mut report).await?;
    if !opts.tree_only {
        let rows_stored: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .get(0);
        emptied(&mut report, rows_stored, legacy_rows);
        if legacy_end.is_some() {
            let legacy = crate::audit::legacy::verify::verify(client, None, opts.keyring)
                .await
                .map_err(|e| match e {
                    crate::audit::legacy::verify::VerifyError::Database(e) => VerifyError::Db(e),
                    other => VerifyError::Saved(other.to_string()),
                })?;
            report.legacy_checkpoints = legacy.checkpoints;
            report.legacy_events = legacy.events;
            if let Some(f) = legacy.finding {
                report.find(Finding::Legacy(f.to_string()));
            }
        }
    }
    Ok(report)
}

/// Before the walk, whichever store: every stored note checked, the saved
/// checkpoint read, and a tree smaller than it named.
pub fn begin(
    heads: &[Head],
    opts: &Options<'_>,
    report: &mut Report,
) -> Result<Option<Checkpoint>, VerifyError> {
    check_notes(heads, opts.key, report);
    let saved = match opts.saved {
        Some(note) => Some(saved_checkpoint(note, opts.key)?),
        None => None,
    };
    report.tree_size = heads.last().map_or(0, |h| h.size);
    if let Some(s) = &saved
        && s.size > report.tree_size
    {
        report.find(Finding::Rollback {
            seen: s.size,
            size: report.tree_size,
            reason: "the tree is smaller now".into(),
        });
    }
    Ok(saved)
}

/// After the walk: rows stored that the tree reaches none of.
pub fn emptied(report: &mut Report, rows_stored: i64, legacy_rows: i64) {
    if report.leaves == 0 && rows_stored > legacy_rows {
        report.find(Finding::Emptied {
            rows: rows_stored - legacy_rows,
        });
    }
}

/// The leaves and (unless `tree_only`) the rows, each in the tail's order,
/// walked side by side: every leaf's attestation, every row against its leaf,
/// the tree recomputed at every signed size and against the stored tiles.
/// Returns how many rows the legacy chain covers.
pub async fn walk<E: EventRow>(
    trail: &Trail,
    leaves: impl Stream<Item = Result<(Place, Vec<u8>), VerifyError>>,
    events: Option<impl Stream<Item = Result<E, VerifyError>>>,
    saved: Option<&Checkpoint>,
    opts: &Options<'_>,
    report: &mut Report,
) -> Result<i64, VerifyError> {
    let last_in_tree = trail.heads.last().map_or((i64::MIN, i64::MIN), |h| h.last);
    futures::pin_mut!(leaves);
    let mut events = events.map(Box::pin);
    let mut next_row = match &mut events {
        Some(s) => s.try_next().await?,
        None => None,
    };
    let mut frontier = Frontier::default();
    let mut heads_iter = trail.heads.iter().peekable();
    let mut seen_valid = false;
    let mut legacy_rows: i64 = 0;
    // The empty tree's checkpoint, if one was signed.
    check_size(&frontier, &mut heads_iter, saved, report);
    while let Some((place, bytes)) = leaves.try_next().await? {
        report.leaves += 1;
        let in_tree = place <= last_in_tree;
        let index = in_tree.then(|| frontier.size());
        if !in_tree {
            report.pending += 1;
            if place.0 > trail.newest_txid {
                report.find(Finding::Impossible { position: place });
            }
        }
        let parsed = Leaf::parse(&bytes).ok();
        // The attestation.
        if let Some(k) = opts.keyring {
            let check = parsed.map_or(Check::Invalid, |l| l.check(k));
            let required = seen_valid
                || trail
                    .attested_from
                    .is_some_and(|from| index.is_none_or(|i| i as i64 >= from));
            let retired = parsed
                .and_then(|l| l.attested_by())
                .is_some_and(|id| !k.ids().contains(&id) && trail.introduced.contains(&id));
            match check {
                Check::Valid => {
                    seen_valid = true;
                    report.attestations += 1;
                }
                Check::Missing if !required => {}
                Check::Invalid if retired => report.retired_key += 1,
                _ => report.find(Finding::Unattested {
                    position: place,
                    index,
                }),
            }
        }
        // The rows before this leaf have none.
        while let Some(row) = &next_row {
            if row.place() >= place {
                break;
            }
            judge_leafless(row, trail.legacy_end, report, &mut legacy_rows);
            next_row = events.as_mut().expect("rows are read").try_next().await?;
        }
        // The row at this leaf's place, if any.
        let row = match &next_row {
            Some(r) if r.place() == place => {
                let r = next_row.take();
                next_row = events.as_mut().expect("rows are read").try_next().await?;
                r
            }
            _ => None,
        };
        if let (Some(leaf), false) = (parsed, opts.tree_only) {
            judge_event(
                leaf,
                row.as_ref(),
                (place, index),
                &trail.dropped,
                &trail.redacted,
                report,
            );
        }
        if in_tree {
            frontier.append(leaf_hash(&bytes), |node, hash| {
                if node.level >= HEIGHT && node.level % HEIGHT == 0 {
                    let key = (i16::from(node.level / HEIGHT), (node.index / WIDTH) as i64);
                    let at = (node.index % WIDTH) as usize * 32;
                    if trail.tiles.get(&key).and_then(|t| t.get(at..at + 32)) != Some(&hash[..]) {
                        report.find(Finding::TreeRewritten {
                            size: node.end(),
                            reason: format!(
                                "the stored subtree of leaves {}..{} is not the one the leaves make (tiles altered)",
                                node.start(),
                                node.end()
                            ),
                        });
                    }
                }
            });
            check_size(&frontier, &mut heads_iter, saved, report);
        }
    }
    while let Some(row) = &next_row {
        judge_leafless(row, trail.legacy_end, report, &mut legacy_rows);
        next_row = events.as_mut().expect("rows are read").try_next().await?;
    }
    // Heads of sizes the leaves never reached.
    for h in heads_iter {
        report.find(Finding::TreeRewritten {
            size: h.size,
            reason: format!(
                "only {} leaves are stored before its last place: leaves were deleted",
                frontier.size()
            ),
        });
    }
    if let Some(s) = saved
        && frontier.size() < s.size
        && report.tree_size >= s.size
    {
        report.find(Finding::Rollback {
            seen: s.size,
            size: frontier.size(),
            reason: "fewer leaves are stored than it covered".into(),
        });
    }
    Ok(legacy_rows)
}

/// The time ranges retention dropped that excuse a missing event: those the tree
/// holds a leaf of. A range recorded after the tree began without one is named.
async fn dropped_ranges(
    client: &Client,
    report: &mut Report,
) -> Result<Vec<(i64, i64)>, VerifyError> {
    let in_tree: std::collections::HashSet<Vec<u8>> = client
        .query(
            "SELECT substring(leaf FROM 2 FOR 32) FROM audit_leaves WHERE get_byte(leaf, 0) = 3",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let began: Option<DateTime<Utc>> = client
        .query_opt("SELECT created_at FROM audit_trail", &[])
        .await?
        .map(|r| r.get(0));
    let mut ranges = Vec::new();
    for r in client
        .query(
            "SELECT table_name, partition, from_time, to_time, rows, dropped_at FROM dropped_partitions \
             WHERE table_name = 'events'",
            &[],
        )
        .await?
    {
        let (from, to): (DateTime<Utc>, DateTime<Utc>) = (r.get(2), r.get(3));
        let record = super::leaf::retention_record(r.get(0), r.get(1), from, to, r.get(4));
        let digest: Vec<u8> = sha2::Sha256::digest(&record).to_vec();
        if in_tree.contains(&digest) {
            ranges.push((from.timestamp_micros(), to.timestamp_micros()));
        } else if began.is_some_and(|b| r.get::<_, DateTime<Utc>>(5) >= b) {
            report.find(Finding::ForgedRetention {
                partition: r.get(1),
            });
        }
    }
    Ok(ranges)
}

/// The AUDIT_KEY ids the trail introduced: key leaves whose signature by the
/// checkpoint key (from outside the database) holds. None without that key.
async fn introduced_keys(
    client: &Client,
    key: Option<&VerifierKey>,
) -> Result<std::collections::HashSet<[u8; 4]>, VerifyError> {
    let Some(key) = key else {
        return Ok(Default::default());
    };
    Ok(client
        .query(
            "SELECT leaf FROM audit_leaves WHERE get_byte(leaf, 0) = 4",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| Leaf::parse(r.get(0)).ok()?.key(key))
        .collect())
}

/// The leaves whose events were redacted: those whose receipt's SHA-256 the
/// tree holds in a redaction leaf. A receipt without one is named.
async fn redactions(
    client: &Client,
    report: &mut Report,
) -> Result<std::collections::HashSet<u64>, VerifyError> {
    let in_tree: std::collections::HashSet<(i64, Vec<u8>)> = client
        .query(
            "SELECT ('x' || encode(substring(leaf FROM 2 FOR 8), 'hex'))::bit(64)::bigint, \
             substring(leaf FROM 10 FOR 32) FROM audit_leaves WHERE get_byte(leaf, 0) = 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = std::collections::HashSet::new();
    for r in client
        .query("SELECT leaf_index, receipt FROM audit_redactions", &[])
        .await?
    {
        let (index, receipt): (i64, String) = (r.get(0), r.get(1));
        let digest = sha2::Sha256::digest(receipt.as_bytes()).to_vec();
        if in_tree.contains(&(index, digest)) {
            out.insert(index as u64);
        } else {
            report.find(Finding::ForgedRedaction { leaf_index: index });
        }
    }
    Ok(out)
}

/// Each stored note: its body must be the row's size and root, signed by the
/// key from outside when there is one.
fn check_notes(heads: &[Head], key: Option<&VerifierKey>, report: &mut Report) {
    for h in heads {
        let body = match key {
            Some(k) => match k.open(&h.note) {
                Ok(b) => {
                    report.signatures += 1;
                    b
                }
                Err(e) => {
                    report.find(Finding::BadSignature {
                        size: h.size,
                        reason: e.to_string(),
                    });
                    continue;
                }
            },
            None => match super::note::split_note(&h.note) {
                Ok((b, _)) => b,
                Err(e) => {
                    report.find(Finding::BadSignature {
                        size: h.size,
                        reason: e.to_string(),
                    });
                    continue;
                }
            },
        };
        match Checkpoint::parse(body) {
            Ok(cp) if cp.size == h.size && cp.root == h.root => {}
            _ => report.find(Finding::BadSignature {
                size: h.size,
                reason: "its note does not say the size and root stored beside it".into(),
            }),
        }
    }
}

fn saved_checkpoint(note: &str, key: Option<&VerifierKey>) -> Result<Checkpoint, VerifyError> {
    let key = key.ok_or_else(|| {
        VerifyError::Saved("a saved checkpoint is checked with the public key: give it".into())
    })?;
    let body = key
        .open(note)
        .map_err(|e| VerifyError::Saved(e.to_string()))?;
    Checkpoint::parse(body).map_err(|e| VerifyError::Saved(e.to_string()))
}

/// At every signed size (and the saved checkpoint's), the recomputed root.
fn check_size(
    frontier: &Frontier,
    heads: &mut std::iter::Peekable<std::slice::Iter<'_, Head>>,
    saved: Option<&Checkpoint>,
    report: &mut Report,
) {
    let size = frontier.size();
    while let Some(h) = heads.peek() {
        if h.size > size {
            break;
        }
        if h.size == size {
            report.checkpoints += 1;
            if frontier.root() != h.root {
                report.find(Finding::TreeRewritten {
                    size,
                    reason: "the stored leaves no longer make its root: a leaf was inserted, deleted or changed".into(),
                });
            }
        }
        heads.next();
    }
    if let Some(s) = saved
        && s.size == size
        && frontier.root() != s.root
    {
        report.find(Finding::Rollback {
            seen: s.size,
            size,
            reason: "the stored leaves make another tree of that size (a fork)".into(),
        });
    }
}

/// A row with no leaf: stored before the tree, or written out of band.
fn judge_leafless(
    row: &impl EventRow,
    legacy_end: Option<Place>,
    report: &mut Report,
    legacy_rows: &mut i64,
) {
    let at = row.place();
    if row.salt().is_none() && legacy_end.is_some_and(|end| at <= end) {
        *legacy_rows += 1;
        return;
    }
    report.find(Finding::NotInTree {
        id: row.id().to_string(),
        position: at,
    });
}

/// An event leaf against its row (or its absence).
fn judge_event(
    leaf: Leaf<'_>,
    row: Option<&impl EventRow>,
    (place, index): ((i64, i64), Option<u64>),
    dropped: &[(i64, i64)],
    redacted: &std::collections::HashSet<u64>,
    report: &mut Report,
) {
    if leaf.kind != Kind::Event {
        if let Some(r) = row {
            // A row at a place only a job's own leaf may have.
            report.find(Finding::NotInTree {
                id: r.id().to_string(),
                position: place,
            });
        }
        return;
    }
    let (time, commitment) = leaf.event().expect("an event leaf");
    let Some(row) = row else {
        if dropped.iter().any(|&(a, b)| a <= time && time < b) {
            report.dropped += 1;
        } else {
            report.find(Finding::Deleted {
                position: place,
                index,
            });
        }
        return;
    };
    report.events += 1;
    let salt = row.salt();
    if salt.is_none() && index.is_some_and(|i| redacted.contains(&i)) {
        report.redacted += 1;
        return;
    }
    let made = salt.map(|salt| row.content().commitment(salt));
    if made != Some(commitment) {
        report.find(Finding::Modified {
            id: row.id().to_string(),
            position: place,
            index,
        });
    }
}

/// The committed columns of a row read with `txid, seq, CONTENT_COLUMNS, salt`.
pub fn content(row: &tokio_postgres::Row) -> Content<'_> {
    let text = |i: usize| -> &str { row.get(i) };
    Content {
        id: text(2),
        source: text(3),
        timestamp: row.get(4),
        event_type: text(5),
        target: row.get(6),
        routing_key: text(7),
        exchange: text(8),
        received_at: row.get(9),
        payload: text(10).as_bytes(),
        envelope: text(11).as_bytes(),
        payload_member: row.get(12),
        properties: text(13).as_bytes(),
        session_id: row.get(14),
        correlation_id: row.get(15),
        generation: row.get(16),
        sanitized: row.get(17),
        original_body: row.get::<_, Option<&[u8]>>(18),
    }
}
