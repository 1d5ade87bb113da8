//! The tree job: every SEAL_INTERVAL, appends the leaves committed since the
//! last checkpoint, in the tail's order and only below its horizon (nothing can
//! appear below it later), stores the subtrees they complete, and signs a
//! checkpoint of the new tree. Then the checkpoint leaves the database: to
//! CHECKPOINT_DIR and to every witness (`audit::publish`).
//!
//! It reads `audit_leaves` only, never the events: each leaf was fixed by the
//! transaction that stored its row. With AUDIT_KEY it checks each leaf's
//! attestation as it appends it: a leaf without a valid one (appended with SQL)
//! is logged and counted, and stays in the tree for `verify` to name.
//!
//! The first step on a database that has the legacy chain (migrations 0013 to
//! 0016) seals it up to the horizon one last time and appends an anchor leaf
//! committing to its end, so the tree continues the chain.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use tokio_postgres::Client;

use super::attest::{Check, Keyring};
use super::leaf::{self, Leaf};
use super::note::{Checkpoint, SigningKey};
use super::store::{self, HEIGHT, StoreError, WIDTH};
use super::tree::{Frontier, Hash, leaf_hash};
use crate::db::HORIZON;
use crate::metrics::Metrics;

/// Leaves appended per step at most.
pub const STEP_LEAVES: i64 = 100_000;
/// The advisory lock (transaction-scoped) instances take turns by: the legacy
/// seal job's, so an old instance still running never seals beside the tree.
const LOCK_KEY: i64 = 7_236_828_094_530_679_669;

/// What one step did.
#[derive(Debug, Default)]
pub struct Appended {
    pub leaves: u64,
    /// The new checkpoint, when the tree grew (or got its first one).
    pub head: Option<store::Head>,
    /// Leaves appended without a valid attestation: `(txid, seq)`.
    pub unattested: Vec<(i64, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "this trail's checkpoints are signed by {expected}, and SIGNING_KEY_FILE holds {found}: not signing"
    )]
    OtherKey { expected: String, found: String },
}

/// The tree job's state between steps.
pub struct Tree {
    pub signer: Arc<SigningKey>,
    pub keyring: Option<Arc<Keyring>>,
    /// The right edge as of the last step, so a step reads no tile back.
    frontier: Option<Frontier>,
}

impl Tree {
    pub fn new(signer: Arc<SigningKey>, keyring: Option<Arc<Keyring>>) -> Self {
        Tree {
            signer,
            keyring,
            frontier: None,
        }
    }

    /// The right edge kept from the last step, when the stored tree is still
    /// the one it ends (`size` leaves); else it is read back.
    pub fn cached_frontier(&mut self, size: u64) -> Option<Frontier> {
        match self.frontier.take() {
            Some(f) if f.size() == size => Some(f),
            cached => {
                if let Some(f) = cached.filter(|f| f.size() > size) {
                    tracing::error!(
                        signed = f.size(),
                        stored = size,
                        "the audit tree's newest checkpoint is smaller than one this instance signed: rolled back with SQL? (witnesses and saved checkpoints will refuse what follows)"
                    );
                }
                None
            }
        }
    }

    /// Keeps the right edge for the next step.
    pub fn keep_frontier(&mut self, frontier: Frontier) {
        self.frontier = Some(frontier);
    }

    /// One step: append what was committed, store its subtrees, sign.
    pub async fn step(&mut self, client: &mut Client) -> Result<Appended, JobError> {
        let legacy = finish_legacy_chain(client, self.keyring.as_deref()).await?;
        let tx = client.transaction().await?;
        if !crate::jobs::take_turn(&tx, LOCK_KEY).await? {
            return Ok(Appended::default());
        }
        self.check_trail(&tx).await?;
        self.introduce_keys(&tx).await?;
        let head = store::head(&tx).await?;
        if let (None, Some(end)) = (&head, legacy) {
            let anchor = leaf::anchor(end.to, end.count, &end.chain_hash, self.keyring.as_deref());
            store::add_leaf(&tx, &anchor).await?;
            tracing::info!(
                to_txid = end.to.0,
                to_seq = end.to.1,
                events = end.count,
                "the audit tree continues the legacy chain: its first leaf commits to the chain's last checkpoint"
            );
        }
        let (size, last) = match &head {
            Some(h) => (h.size, h.last),
            None => (0, (i64::MIN, i64::MIN)),
        };
        let frontier = match self.cached_frontier(size) {
            Some(f) => f,
            None => {
                let dropped = store::truncate_to(&tx, size).await?;
                if dropped > 0 {
                    tracing::warn!(
                        size,
                        dropped,
                        "dropped anchors and tiles beyond the stored tree"
                    );
                }
                store::frontier(&tx, size).await?
            }
        };
        // Read before the leaves' stream: a query sent while it is open would
        // wait behind rows nobody reads.
        let attested_from: Option<i64> = tx
            .query_one("SELECT attested_from FROM audit_trail", &[])
            .await?
            .get(0);
        let began = attested_from;
        let rows = tx
            .query_raw(
                &format!(
                    "SELECT txid, seq, leaf FROM audit_leaves WHERE (txid, seq) > ($1, $2) \
                     AND txid < {HORIZON} ORDER BY txid, seq LIMIT {STEP_LEAVES}"
                ),
                [
                    &last.0 as &(dyn tokio_postgres::types::ToSql + Sync),
                    &last.1,
                ],
            )
            .await?;
        futures::pin_mut!(rows);
        let mut growth = Growth::new(frontier, attested_from, last, self.keyring.as_deref());
        while let Some(row) = rows.try_next().await? {
            growth.push((row.get(0), row.get(1)), row.get(2));
        }
        if growth.unchanged() && head.is_some() {
            let (frontier, appended) = growth.into_parts();
            self.frontier = Some(frontier);
            return Ok(appended);
        }
        if !growth.anchors.is_empty() {
            let (idx, (txid, seq)): (Vec<i64>, (Vec<i64>, Vec<i64>)) = growth
                .anchors
                .iter()
                .map(|&(i, (t, s))| (i as i64, (t, s)))
                .unzip();
            tx.execute(
                "INSERT INTO audit_anchors (idx, txid, seq) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
                &[&idx, &txid, &seq],
            )
            .await?;
        }
        store_tiles(&tx, &growth.tiles).await?;
        if growth.attested_from != began {
            tx.execute(
                "UPDATE audit_trail SET attested_from = $1",
                &[&growth.attested_from],
            )
            .await?;
        }
        let (head, frontier, mut appended) = growth.sign(&self.signer);
        tx.execute(
            "INSERT INTO audit_heads (size, root, last_txid, last_seq, note) VALUES ($1, $2, $3, $4, $5)",
            &[&(head.size as i64), &head.root.as_slice(), &head.last.0, &head.last.1, &head.note],
        )
        .await?;
        tx.commit().await?;
        self.frontier = Some(frontier);
        appended.head = Some(head);
        Ok(appended)
    }
    /// Adds a key leaf for each AUDIT_KEY the trail has none of yet, so a leaf
    /// attested with a key later retired or lost is told from a forged one.
    async fn introduce_keys(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), JobError> {
        let Some(ring) = &self.keyring else {
            return Ok(());
        };
        let known: Vec<String> = tx
            .query_one("SELECT keys FROM audit_trail", &[])
            .await?
            .get(0);
        for id in ring.ids() {
            let hex = crate::model::hex::encode(&id);
            if known.contains(&hex) {
                continue;
            }
            store::add_leaf(tx, &leaf::key(id, &self.signer, ring)).await?;
            tx.execute(
                "UPDATE audit_trail SET keys = array_append(keys, $1)",
                &[&hex],
            )
            .await?;
            tracing::info!(key_id = %hex, "AUDIT_KEY introduced to the audit trail");
        }
        Ok(())
    }

    /// Records this trail's origin and key on its first step; refuses to sign
    /// with another key after that.
    async fn check_trail(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), JobError> {
        let ours = self.signer.verifier().encode();
        let row = tx
            .query_opt("SELECT public_key FROM audit_trail", &[])
            .await?;
        match row {
            Some(r) => {
                let expected: String = r.get(0);
                if expected != ours {
                    return Err(JobError::OtherKey {
                        expected,
                        found: ours,
                    });
                }
            }
            None => {
                tx.execute(
                    "INSERT INTO audit_trail (origin, public_key) VALUES ($1, $2)",
                    &[&self.signer.name(), &ours],
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Stores the tile entries of completed subtrees (in the order they completed),
/// appending to each tile; a tile whose stored length is not where the entry
/// goes was changed by someone else, and the step fails.
async fn store_tiles(
    tx: &tokio_postgres::Transaction<'_>,
    entries: &[(u8, u64, Hash)],
) -> Result<(), JobError> {
    for t in tile_appends(entries) {
        let offset = t.offset as i32;
        let (level, tile) = (i16::from(t.level), t.tile as i64);
        let n = tx
            .execute(
                "INSERT INTO audit_tiles (level, idx, hashes) SELECT $1, $2, $3 WHERE $4 = 0 \
                 ON CONFLICT (level, idx) DO UPDATE SET hashes = audit_tiles.hashes || EXCLUDED.hashes \
                 WHERE length(audit_tiles.hashes) = $4",
                &[&level, &tile, &t.bytes, &offset],
            )
            .await?;
        let n = if n == 0 && offset != 0 {
            // Not there to append to: insert can't run (offset ≠ 0).
            tx.execute(
                "UPDATE audit_tiles SET hashes = hashes || $3 \
                 WHERE level = $1 AND idx = $2 AND length(hashes) = $4",
                &[&level, &tile, &t.bytes, &offset],
            )
            .await?
        } else {
            n
        };
        if n != 1 {
            return Err(t.misplaced().into());
        }
    }
    Ok(())
}

/// Entries appended to one tile: `bytes` go at byte `offset` of tile
/// `(level, tile)`.
pub struct TileAppend {
    pub level: u8,
    pub tile: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The first entry's index at its level.
    first: u64,
}

impl TileAppend {
    /// The error when the stored tile does not end at `offset`.
    pub fn misplaced(&self) -> StoreError {
        StoreError::Inconsistent(format!(
            "tile ({}, {}) does not end where entry {} goes",
            self.level, self.tile, self.first
        ))
    }
}

/// The tile entries of completed subtrees, grouped by the tile they extend.
pub fn tile_appends(entries: &[(u8, u64, Hash)]) -> Vec<TileAppend> {
    let mut out: Vec<TileAppend> = Vec::new();
    for &(level, index, hash) in entries {
        let tile = index / WIDTH;
        match out.last_mut() {
            Some(t) if t.level == level && t.tile == tile => t.bytes.extend_from_slice(&hash),
            _ => out.push(TileAppend {
                level,
                tile,
                offset: (index % WIDTH) * 32,
                bytes: hash.to_vec(),
                first: index,
            }),
        }
    }
    out
}

/// The leaves of one step, appended in order: the tree they make, and what
/// they add to the tables (anchors, tile entries, the first attested leaf).
pub struct Growth<'k> {
    keyring: Option<&'k Keyring>,
    frontier: Frontier,
    pub attested_from: Option<i64>,
    /// `(index, place)` of every leaf that starts a block.
    pub anchors: Vec<(u64, (i64, i64))>,
    /// `(tile level, index at that level, hash)` of every completed subtree a
    /// tile keeps.
    pub tiles: Vec<(u8, u64, Hash)>,
    pub appended: Appended,
    newest: (i64, i64),
}

impl<'k> Growth<'k> {
    /// Growth from the tree `frontier` ends, whose last leaf is at `last`.
    pub fn new(
        frontier: Frontier,
        attested_from: Option<i64>,
        last: (i64, i64),
        keyring: Option<&'k Keyring>,
    ) -> Self {
        Growth {
            keyring,
            frontier,
            attested_from,
            anchors: Vec::new(),
            tiles: Vec::new(),
            appended: Appended::default(),
            newest: last,
        }
    }

    /// Appends the leaf at `place`, checking its attestation with AUDIT_KEY.
    pub fn push(&mut self, place: (i64, i64), bytes: Vec<u8>) {
        let index = self.frontier.size();
        if let Some(k) = self.keyring {
            // From the first attested leaf on, every leaf must be.
            match Leaf::parse(&bytes).map_or(Check::Invalid, |l| l.check(k)) {
                Check::Valid => {
                    self.attested_from.get_or_insert(index as i64);
                }
                Check::Missing if self.attested_from.is_none() => {}
                Check::Missing | Check::Invalid => self.appended.unattested.push(place),
            }
        }
        if index.is_multiple_of(WIDTH) {
            self.anchors.push((index, place));
        }
        let tiles = &mut self.tiles;
        self.frontier.append(leaf_hash(&bytes), |node, hash| {
            if node.level >= HEIGHT && node.level % HEIGHT == 0 {
                tiles.push((node.level / HEIGHT, node.index, *hash));
            }
        });
        self.newest = place;
        self.appended.leaves += 1;
    }

    /// The grown tree's edge, when nothing was appended.
    pub fn unchanged(&self) -> bool {
        self.appended.leaves == 0
    }

    /// The checkpoint of the grown tree, signed; the edge and what was appended.
    pub fn sign(self, signer: &SigningKey) -> (store::Head, Frontier, Appended) {
        let size = self.frontier.size();
        let root = self.frontier.root();
        let note = signer.sign(
            &Checkpoint {
                origin: signer.name().to_string(),
                size,
                root,
            }
            .body(),
        );
        // An empty tree's "last leaf" sits before every place.
        let head = store::Head {
            size,
            root,
            last: self.newest,
            note,
        };
        (head, self.frontier, self.appended)
    }

    /// The edge, when the step ends without signing.
    pub fn into_parts(self) -> (Frontier, Appended) {
        (self.frontier, self.appended)
    }
}

/// Before the tree's first checkpoint, on a database that holds rows stored
/// before the tree (by writers without leaves, sealed by the legacy chain or
/// not): the legacy chain's end, after sealing every such row up to the horizon
/// (each step its own transaction). Nothing when there is nothing before.
async fn finish_legacy_chain(
    client: &mut Client,
    keyring: Option<&Keyring>,
) -> Result<Option<LegacyEnd>, JobError> {
    let started: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM audit_heads)", &[])
        .await?
        .get(0);
    if started {
        return Ok(None);
    }
    // Once, before the first checkpoint: was anything stored before the tree?
    let before: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM audit_checkpoints) OR EXISTS (SELECT 1 FROM events WHERE salt IS NULL)",
            &[],
        )
        .await?
        .get(0);
    if !before {
        return Ok(None);
    }
    loop {
        let sealed = crate::audit::legacy::seal::step(client, keyring).await?;
        if sealed.needs_key {
            tracing::warn!(
                "the legacy chain is attested and AUDIT_KEY is not set here: anchoring the tree to its last checkpoint as it stands"
            );
        }
        if sealed.events < crate::audit::legacy::seal::SEAL_MAX_EVENTS {
            break;
        }
    }
    let Some(row) = client
        .query_opt(
            "SELECT to_txid, to_seq, chain_hash, (SELECT sum(count) FROM audit_checkpoints)::bigint \
             FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let hash: Vec<u8> = row.get(2);
    Ok(Some(LegacyEnd {
        to: (row.get(0), row.get(1)),
        chain_hash: hash
            .try_into()
            .map_err(|_| StoreError::Inconsistent("a legacy chain hash is not 32 bytes".into()))?,
        count: row.get(3),
    }))
}

/// Where the legacy chain ends: its last checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct LegacyEnd {
    pub to: (i64, i64),
    pub chain_hash: Hash,
    pub count: i64,
}

impl crate::jobs::Failure for JobError {
    fn is_retryable(&self) -> bool {
        match self {
            JobError::Db(_) => true,
            JobError::Store(e) => e.is_retryable(),
            JobError::OtherKey { .. } => false,
        }
    }

    fn schema_pending(&self) -> bool {
        match self {
            JobError::Db(e) | JobError::Store(StoreError::Db(e)) => crate::jobs::pending_code(e),
            _ => false,
        }
    }
}

/// The tree as a background job: a step every SEAL_INTERVAL (at once again while
/// steps are full), each checkpoint published after its commit.
pub struct TreeJob {
    /// A fault the tests inject: the job panics at its first step.
    #[cfg(feature = "fault-injection")]
    pub panic_at_first_step: bool,
    pub tree: Tree,
    pub after: AfterStep,
}

/// What follows a step of the tree, whichever store took it.
pub struct AfterStep {
    pub every: Duration,
    pub publisher: super::publish::Publisher,
    pub metrics: Arc<Metrics>,
}

impl AfterStep {
    /// Counts and logs what the step appended, publishes its checkpoint (the
    /// consistency proofs for witnesses read from `tables`); returns when the
    /// next step is due.
    pub async fn record(&mut self, appended: &Appended, tables: &impl store::Tables) -> Duration {
        self.metrics
            .audit_last_seal
            .set(chrono::Utc::now().timestamp() as f64);
        if !appended.unattested.is_empty() {
            self.metrics
                .audit_unattested
                .inc_by(appended.unattested.len() as u64);
            for (txid, seq) in appended.unattested.iter().take(10) {
                tracing::error!(
                    txid,
                    seq,
                    "a leaf without a valid attestation was appended to the audit tree: written out of band?"
                );
            }
        }
        if let Some(head) = &appended.head {
            self.metrics.audit_tree_size.set(head.size as i64);
            tracing::debug!(
                size = head.size,
                leaves = appended.leaves,
                "checkpoint signed"
            );
            self.publisher.publish(tables, head, &self.metrics).await;
        }
        if appended.leaves >= STEP_LEAVES as u64 {
            Duration::ZERO
        } else {
            self.every
        }
    }
}

impl crate::jobs::Job for TreeJob {
    const NAME: &'static str = "audit-tree";
    type Error = JobError;

    fn retry_in(&self) -> Duration {
        self.after.every
    }

    async fn step(&mut self, client: &mut Client) -> Result<Duration, JobError> {
        #[cfg(feature = "fault-injection")]
        if self.panic_at_first_step {
            panic!("injected fault: the audit tree's job panicked");
        }
        let appended = self.tree.step(client).await?;
        Ok(self.after.record(&appended, &*client).await)
    }
}
