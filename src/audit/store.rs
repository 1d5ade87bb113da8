//! What the tree keeps in PostgreSQL, and how any of its hashes is read back.
//!
//! - `audit_leaves`: every leaf at its place `(txid, seq)`; leaf `i` is the
//!   `i`-th in that order among those the tree holds.
//! - `audit_anchors`: the place of every 256th leaf, so a block of 256 leaves,
//!   or one leaf's index, is found by reading at most 256 leaves.
//! - `audit_tiles`: tile `(level, t)` holds the hashes of the complete subtrees
//!   of `256^level` leaves numbered `256 t` to `256 t + 255` (C2SP tlog-tiles'
//!   shape, height 8). Only complete subtrees are stored.
//! - `audit_heads`: every signed checkpoint.
//!
//! A subtree of `2^h` leaves is read from the tile of level `h / 8` (`h ≥ 8`),
//! hashing up the `2^(h mod 8)` entries under it, or from its block's leaves.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::GenericClient;

use super::tree::{Frontier, Hash, Node, leaf_hash, node_hash};

/// Leaves per block and entries per tile.
pub const WIDTH: u64 = 256;
/// Tree levels a tile spans.
pub const HEIGHT: u8 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    /// A store other than PostgreSQL (the embedded one) could not answer.
    #[error("event store")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// What the tables hold does not make the tree they claim (rows removed,
    /// added or changed with SQL).
    #[error("the stored tree is inconsistent: {0}")]
    Inconsistent(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Db(_) | StoreError::Other(_))
    }
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub root: Hash,
    pub last: (i64, i64),
    pub note: String,
}

/// A place in the tail's order, `(txid, seq)`.
pub type Place = (i64, i64);

/// A stored tile: `(level, idx)` and its hashes.
pub type Tile = ((i16, i64), Vec<u8>);

/// The reads of the tree's tables every store answers (PostgreSQL through any
/// client; the embedded store through its own). Everything above them (nodes,
/// the frontier, proofs, indexes) is computed here once, for every store.
pub trait Tables {
    /// The newest checkpoint.
    fn newest_head(&self) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;
    /// The checkpoint of a tree of `size` leaves, when one was signed.
    fn head_of(&self, size: u64) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;
    /// The place of leaf `idx` (a multiple of [`WIDTH`]).
    fn anchor(&self, idx: u64) -> impl Future<Output = Result<Option<Place>, StoreError>> + Send;
    /// The newest anchor at or before `place`: its index and place.
    fn anchor_before(
        &self,
        place: Place,
    ) -> impl Future<Output = Result<Option<(u64, Place)>, StoreError>> + Send;
    /// Up to `n` leaves, skipping `skip`, from `from` on in order.
    fn leaves_from(
        &self,
        from: Place,
        skip: u64,
        n: u64,
    ) -> impl Future<Output = Result<Vec<(Place, Vec<u8>)>, StoreError>> + Send;
    /// How many leaves lie in `[from, to)`, counted up to `cap`.
    fn count_between(
        &self,
        from: Place,
        to: Place,
        cap: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The stored tiles of `keys` (`(level, idx)`) there are.
    fn tiles(
        &self,
        keys: &[(i16, i64)],
    ) -> impl Future<Output = Result<Vec<Tile>, StoreError>> + Send;
}

/// PostgreSQL's tables, through any client.
impl<C: GenericClient + Sync> Tables for C {
    async fn newest_head(&self) -> Result<Option<Head>, StoreError> {
        let row = self
            .query_opt(
                "SELECT size, root, last_txid, last_seq, note FROM audit_heads ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?;
        row.as_ref().map(head_row).transpose()
    }

    async fn head_of(&self, size: u64) -> Result<Option<Head>, StoreError> {
        let row = self
            .query_opt(
                "SELECT size, root, last_txid, last_seq, note FROM audit_heads WHERE size = $1",
                &[&(size as i64)],
            )
            .await?;
        row.as_ref().map(head_row).transpose()
    }

    async fn anchor(&self, idx: u64) -> Result<Option<Place>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT txid, seq FROM audit_anchors WHERE idx = $1",
                &[&(idx as i64)],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn anchor_before(&self, place: Place) -> Result<Option<(u64, Place)>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT idx, txid, seq FROM audit_anchors WHERE (txid, seq) <= ($1, $2) \
                 ORDER BY txid DESC, seq DESC LIMIT 1",
                &[&place.0, &place.1],
            )
            .await?
            .map(|r| (r.get::<_, i64>(0) as u64, (r.get(1), r.get(2)))))
    }

    async fn leaves_from(
        &self,
        from: Place,
        skip: u64,
        n: u64,
    ) -> Result<Vec<(Place, Vec<u8>)>, StoreError> {
        Ok(self
            .query(
                "SELECT txid, seq, leaf FROM audit_leaves WHERE (txid, seq) >= ($1, $2) \
                 ORDER BY txid, seq OFFSET $3 LIMIT $4",
                &[&from.0, &from.1, &(skip as i64), &(n as i64)],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    async fn count_between(&self, from: Place, to: Place, cap: u64) -> Result<u64, StoreError> {
        let n: i64 = self
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM audit_leaves WHERE (txid, seq) >= ($1, $2) \
                 AND (txid, seq) < ($3, $4) ORDER BY txid, seq LIMIT $5) l",
                &[&from.0, &from.1, &to.0, &to.1, &(cap as i64)],
            )
            .await?
            .get(0);
        Ok(n as u64)
    }

    async fn tiles(&self, keys: &[(i16, i64)]) -> Result<Vec<Tile>, StoreError> {
        let (levels, idxs): (Vec<i16>, Vec<i64>) = keys.iter().copied().unzip();
        Ok(self
            .query(
                "SELECT level, idx, hashes FROM audit_tiles \
                 WHERE (level, idx) IN (SELECT * FROM unnest($1::smallint[], $2::bigint[]))",
                &[&levels, &idxs],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }
}

/// A stored hash, checked for its length.
pub fn hash32(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Inconsistent(format!("{what} is not 32 bytes")))
}

/// The newest checkpoint.
pub async fn head(tables: &impl Tables) -> Result<Option<Head>, StoreError> {
    tables.newest_head().await
}

/// The checkpoint of a tree of `size` leaves, when one was signed.
pub async fn head_of(tables: &impl Tables, size: u64) -> Result<Option<Head>, StoreError> {
    tables.head_of(size).await
}

/// A row of `size, root, last_txid, last_seq, note`.
fn head_row(r: &tokio_postgres::Row) -> Result<Head, StoreError> {
    Ok(Head {
        size: r.get::<_, i64>(0) as u64,
        root: hash32(r.get(1), "a stored root")?,
        last: (r.get(2), r.get(3)),
        note: r.get(4),
    })
}

/// The leaves `[start, start + n)` (within one block), read from their anchor.
pub async fn leaves(tables: &impl Tables, start: u64, n: u64) -> Result<Vec<Vec<u8>>, StoreError> {
    let block = start / WIDTH * WIDTH;
    debug_assert!(start + n <= block + WIDTH);
    let anchor = tables
        .anchor(block)
        .await?
        .ok_or_else(|| StoreError::Inconsistent(format!("no anchor for leaf {block}")))?;
    let rows = tables.leaves_from(anchor, start - block, n).await?;
    if rows.len() as u64 != n {
        return Err(StoreError::Inconsistent(format!(
            "{} of the {n} leaves from {start} are stored",
            rows.len()
        )));
    }
    Ok(rows.into_iter().map(|(_, leaf)| leaf).collect())
}

/// The root of the complete binary tree over `hashes` (a power of two of them).
fn hash_up(hashes: &[Hash]) -> Hash {
    let mut level: Vec<Hash> = hashes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

/// The hashes of `nodes` (complete subtrees of a tree of `size` leaves), read
/// with one query per block of leaves and one for all the tiles.
pub async fn nodes(
    tables: &impl Tables,
    nodes: &[Node],
    size: u64,
) -> Result<HashMap<Node, Hash>, StoreError> {
    let mut blocks: BTreeSet<u64> = BTreeSet::new();
    let mut tiles: BTreeSet<(i16, i64)> = BTreeSet::new();
    for n in nodes {
        if n.end() > size {
            return Err(StoreError::Inconsistent(format!(
                "{n:?} is not a complete subtree of a tree of {size}"
            )));
        }
        if n.level < HEIGHT {
            blocks.insert(n.start() / WIDTH);
        } else {
            let tile_level = n.level / HEIGHT;
            let first = n.index << (n.level % HEIGHT);
            tiles.insert((i16::from(tile_level), (first / WIDTH) as i64));
        }
    }
    let mut block_hashes: HashMap<u64, Vec<Hash>> = HashMap::new();
    for b in blocks {
        let start = b * WIDTH;
        let n = WIDTH.min(size - start);
        let leaves = leaves(tables, start, n).await?;
        block_hashes.insert(b, leaves.iter().map(|l| leaf_hash(l)).collect());
    }
    let mut tile_hashes: BTreeMap<(i16, i64), Vec<u8>> = BTreeMap::new();
    if !tiles.is_empty() {
        let keys: Vec<(i16, i64)> = tiles.into_iter().collect();
        tile_hashes.extend(tables.tiles(&keys).await?);
    }
    let mut out = HashMap::with_capacity(nodes.len());
    for &n in nodes {
        let hash = if n.level < HEIGHT {
            let b = n.start() / WIDTH;
            let hashes = &block_hashes[&b];
            let from = (n.start() - b * WIDTH) as usize;
            hash_up(&hashes[from..from + (1usize << n.level)])
        } else {
            let tile_level = n.level / HEIGHT;
            let r = n.level % HEIGHT;
            let first = n.index << r;
            let key = (i16::from(tile_level), (first / WIDTH) as i64);
            let bytes = tile_hashes
                .get(&key)
                .ok_or_else(|| StoreError::Inconsistent(format!("tile {key:?} is missing")))?;
            let from = (first % WIDTH) as usize * 32;
            let to = from + (32usize << r);
            let entries = bytes
                .get(from..to)
                .ok_or_else(|| StoreError::Inconsistent(format!("tile {key:?} is too short")))?;
            let entries: Vec<Hash> = entries
                .chunks(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect();
            hash_up(&entries)
        };
        out.insert(n, hash);
    }
    Ok(out)
}

/// The right edge of the stored tree of `size` leaves.
pub async fn frontier(tables: &impl Tables, size: u64) -> Result<Frontier, StoreError> {
    let edge = Frontier::edge(size);
    let hashes = nodes(tables, &edge, size).await?;
    Frontier::from_edge(size, edge.iter().map(|n| hashes[n]).collect())
        .ok_or_else(|| StoreError::Inconsistent("the edge does not match the size".into()))
}

/// The hashes a proof lists, for the leaf ranges `spans` of a tree of `size`.
pub async fn proof(
    tables: &impl Tables,
    spans: &[(u64, u64)],
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    let wanted: Vec<Node> = spans
        .iter()
        .flat_map(|&(a, b)| super::tree::decompose(a, b))
        .collect();
    let hashes = nodes(tables, &wanted, size).await?;
    Ok(spans
        .iter()
        .map(|&(a, b)| super::tree::range_hash(a, b, |n| hashes[&n]))
        .collect())
}

/// The index of the leaf at `place` in the tree of `size` leaves, if it holds it.
pub async fn index_of(
    tables: &impl Tables,
    place: Place,
    size: u64,
) -> Result<Option<u64>, StoreError> {
    let Some((idx, anchor)) = tables.anchor_before(place).await? else {
        return Ok(None);
    };
    let before = tables.count_between(anchor, place, WIDTH + 1).await?;
    let index = idx + before;
    Ok((before < WIDTH && index < size).then_some(index))
}

/// One leaf, with its place, by index.
pub async fn leaf_at(
    tables: &impl Tables,
    index: u64,
) -> Result<Option<(Place, Vec<u8>)>, StoreError> {
    let block = index / WIDTH * WIDTH;
    let Some(anchor) = tables.anchor(block).await? else {
        return Ok(None);
    };
    Ok(tables
        .leaves_from(anchor, index - block, 1)
        .await?
        .into_iter()
        .next())
}

/// Drops what a larger tree left beyond `size` leaves (anchors, tile entries),
/// so appending from `size` starts clean. Nothing to drop in the normal course;
/// after a rollback with SQL, the rest would block every append.
pub async fn truncate_to(client: &impl GenericClient, size: u64) -> Result<u64, StoreError> {
    let mut dropped = client
        .execute(
            "DELETE FROM audit_anchors WHERE idx >= $1",
            &[&(size as i64)],
        )
        .await?;
    for (level, count) in tile_counts(size) {
        dropped += client
            .execute(
                "DELETE FROM audit_tiles WHERE level = $1 AND idx * 256 >= $2",
                &[&level, &count],
            )
            .await?;
        dropped += client
            .execute(
                "UPDATE audit_tiles SET hashes = substring(hashes FROM 1 FOR (($2 - idx * 256) * 32)::int) \
                 WHERE level = $1 AND length(hashes) > ($2 - idx * 256) * 32",
                &[&level, &count],
            )
            .await?;
    }
    Ok(dropped)
}

/// For each tile level a tree of `size` leaves may have stored, how many
/// entries it holds at that level (complete subtrees of `256^level` leaves):
/// what [`truncate_to`] keeps.
pub fn tile_counts(size: u64) -> Vec<(i16, i64)> {
    let mut out = Vec::new();
    let mut level: i16 = 1;
    loop {
        let shift = u32::from(HEIGHT) * level as u32;
        if shift >= 64 {
            break;
        }
        let count = (size >> shift) as i64;
        out.push((level, count));
        if count == 0 {
            break;
        }
        level += 1;
    }
    out
}

/// The tree's tables are there (migration 0019).
pub async fn has_tree(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('audit_leaves') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Adds a leaf that is not a writer's (an anchor, a redaction, a dropped range)
/// at a fresh place in the tail's order: this transaction, and a new `seq` from
/// the events' sequence.
pub async fn add_leaf(
    client: &impl GenericClient,
    leaf: &[u8],
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO audit_leaves (txid, seq, leaf) \
             VALUES (pg_current_xact_id()::text::bigint, nextval(pg_get_serial_sequence('events', 'seq')), $1) \
             RETURNING txid, seq",
            &[&leaf],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
