//! The audit tree in the embedded store: PostgreSQL's tables of the same names
//! (migration 3), at places `(0, seq)`, read through [`audit::store::Tables`]
//! so nodes, the frontier and every proof are computed by the same code as on
//! PostgreSQL, and appended by [`step`] on the writer thread.
//!
//! On the writer thread there is no horizon to wait for: the thread is the one
//! writer, so every leaf it can read is committed, and no leaf can later appear
//! below one it read (`seq` grows with each commit).

use std::future::{Future, ready};

use rusqlite::{Connection, OptionalExtension, params};

use super::read::Reader;
use crate::audit::job::{Appended, Growth, JobError, STEP_LEAVES, Tree, tile_appends};
use base64::Engine;

use crate::audit::leaf;
use crate::audit::proof::{self, Bundle, EventColumns, NoBundle, ProveError};
use crate::audit::store::{self, Head, Place, StoreError, Tile, hash32, tile_counts};

/// The tree's tables on one connection (the writer's, or a reader's).
pub struct Tables<'c>(pub &'c Connection);

fn other(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Other(Box::new(e))
}

/// `seq` bounds for comparing `(0, seq)` with a place of any store: the
/// smallest `seq` whose place is at or after `place`.
fn seq_from(place: Place) -> i64 {
    match place.0 {
        t if t < 0 => i64::MIN,
        0 => place.1,
        _ => i64::MAX,
    }
}

/// The smallest `seq` whose place is after `place`.
fn seq_after(place: Place) -> i64 {
    match place.0 {
        t if t < 0 => i64::MIN,
        0 => place.1.saturating_add(1),
        _ => i64::MAX,
    }
}

const HEAD: &str = "SELECT size, root, last_txid, last_seq, note FROM audit_heads";

fn head_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Vec<u8>, i64, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_head(row: Option<(i64, Vec<u8>, i64, i64, String)>) -> Result<Option<Head>, StoreError> {
    row.map(|(size, root, txid, seq, note)| {
        Ok(Head {
            size: size as u64,
            root: hash32(&root, "a stored root")?,
            last: (txid, seq),
            note,
        })
    })
    .transpose()
}

pub fn newest_head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    to_head(
        conn.query_row(&format!("{HEAD} ORDER BY size DESC LIMIT 1"), [], head_row)
            .optional()
            .map_err(other)?,
    )
}

pub fn head_of(conn: &Connection, size: u64) -> Result<Option<Head>, StoreError> {
    to_head(
        conn.query_row(&format!("{HEAD} WHERE size = ?1"), [size as i64], head_row)
            .optional()
            .map_err(other)?,
    )
}

/// Every signed checkpoint, smallest tree first.
pub fn heads(conn: &Connection) -> Result<Vec<Head>, StoreError> {
    let mut st = conn
        .prepare(&format!("{HEAD} ORDER BY size"))
        .map_err(other)?;
    let rows = st
        .query_map([], head_row)
        .map_err(other)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(other)?;
    rows.into_iter()
        .map(|r| to_head(Some(r)).map(|h| h.expect("a row")))
        .collect()
}

fn anchor(conn: &Connection, idx: u64) -> Result<Option<Place>, StoreError> {
    conn.query_row(
        "SELECT txid, seq FROM audit_anchors WHERE idx = ?1",
        [idx as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(other)
}

fn anchor_before(conn: &Connection, place: Place) -> Result<Option<(u64, Place)>, StoreError> {
    conn.query_row(
        "SELECT idx, txid, seq FROM audit_anchors WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
        [seq_after(place)],
        |r| Ok((r.get::<_, i64>(0)? as u64, (r.get(1)?, r.get(2)?))),
    )
    .optional()
    .map_err(other)
}

fn leaves_from(
    conn: &Connection,
    from: Place,
    skip: u64,
    n: u64,
) -> Result<Vec<(Place, Vec<u8>)>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT seq, leaf FROM audit_leaves WHERE seq >= ?1 ORDER BY seq LIMIT ?3 OFFSET ?2",
        )
        .map_err(other)?;
    st.query_map(params![seq_from(from), skip as i64, n as i64], |r| {
        Ok(((0, r.get(0)?), r.get(1)?))
    })
    .map_err(other)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(other)
}

fn count_between(conn: &Connection, from: Place, to: Place, cap: u64) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM audit_leaves WHERE seq >= ?1 AND seq < ?2 \
         ORDER BY seq LIMIT ?3)",
        params![seq_from(from), seq_from(to), cap as i64],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(other)
}

fn tiles(conn: &Connection, keys: &[(i16, i64)]) -> Result<Vec<Tile>, StoreError> {
    let mut st = conn
        .prepare_cached("SELECT hashes FROM audit_tiles WHERE level = ?1 AND idx = ?2")
        .map_err(other)?;
    let mut out = Vec::with_capacity(keys.len());
    for &key in keys {
        if let Some(h) = st
            .query_row(params![key.0, key.1], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(other)?
        {
            out.push((key, h));
        }
    }
    Ok(out)
}

/// Answered at once: the connection is this thread's.
impl store::Tables for Tables<'_> {
    fn newest_head(&self) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send {
        ready(newest_head(self.0))
    }
    fn head_of(&self, size: u64) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send {
        ready(head_of(self.0, size))
    }
    fn anchor(&self, idx: u64) -> impl Future<Output = Result<Option<Place>, StoreError>> + Send {
        ready(anchor(self.0, idx))
    }
    fn anchor_before(
        &self,
        place: Place,
    ) -> impl Future<Output = Result<Option<(u64, Place)>, StoreError>> + Send {
        ready(anchor_before(self.0, place))
    }
    fn leaves_from(
        &self,
        from: Place,
        skip: u64,
        n: u64,
    ) -> impl Future<Output = Result<Vec<(Place, Vec<u8>)>, StoreError>> + Send {
        ready(leaves_from(self.0, from, skip, n))
    }
    fn count_between(
        &self,
        from: Place,
        to: Place,
        cap: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        ready(count_between(self.0, from, to, cap))
    }
    fn tiles(
        &self,
        keys: &[(i16, i64)],
    ) -> impl Future<Output = Result<Vec<Tile>, StoreError>> + Send {
        ready(tiles(self.0, keys))
    }
}

/// The API's reads: each on a read connection, off the runtime.
impl store::Tables for Reader {
    async fn newest_head(&self) -> Result<Option<Head>, StoreError> {
        self.read_tree(newest_head).await
    }
    async fn head_of(&self, size: u64) -> Result<Option<Head>, StoreError> {
        self.read_tree(move |c| head_of(c, size)).await
    }
    async fn anchor(&self, idx: u64) -> Result<Option<Place>, StoreError> {
        self.read_tree(move |c| anchor(c, idx)).await
    }
    async fn anchor_before(&self, place: Place) -> Result<Option<(u64, Place)>, StoreError> {
        self.read_tree(move |c| anchor_before(c, place)).await
    }
    async fn leaves_from(
        &self,
        from: Place,
        skip: u64,
        n: u64,
    ) -> Result<Vec<(Place, Vec<u8>)>, StoreError> {
        self.read_tree(move |c| leaves_from(c, from, skip, n)).await
    }
    async fn count_between(&self, from: Place, to: Place, cap: u64) -> Result<u64, StoreError> {
        self.read_tree(move |c| count_between(c, from, to, cap))
            .await
    }
    async fn tiles(&self, keys: &[(i16, i64)]) -> Result<Vec<Tile>, StoreError> {
        let keys = keys.to_vec();
        self.read_tree(move |c| tiles(c, &keys)).await
    }
}

impl Reader {
    /// Runs a read of the tree's tables on a read connection.
    async fn read_tree<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        // The read's own errors travel inside its answer; the pool's outside.
        self.read(move |c| Ok(f(c))).await.map_err(other)?
    }
}

/// Adds a leaf that is not a writer's (a key, a redaction, a dropped range) at
/// a fresh place: a `seq` taken from the events' own sequence, so no event
/// will ever be stored at it.
pub fn add_leaf(conn: &Connection, leaf: &[u8]) -> rusqlite::Result<Place> {
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'events', 0 \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')",
        [],
    )?;
    let seq: i64 = conn.query_row(
        "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'events' RETURNING seq",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO audit_leaves (seq, leaf) VALUES (?1, ?2)",
        params![seq, leaf],
    )?;
    Ok((0, seq))
}

/// Drops what a larger tree left beyond `size` leaves (anchors, tile entries).
fn truncate_to(conn: &Connection, size: u64) -> rusqlite::Result<usize> {
    let mut dropped = conn.execute("DELETE FROM audit_anchors WHERE idx >= ?1", [size as i64])?;
    for (level, count) in tile_counts(size) {
        dropped += conn.execute(
            "DELETE FROM audit_tiles WHERE level = ?1 AND idx * 256 >= ?2",
            params![level, count],
        )?;
        dropped += conn.execute(
            "UPDATE audit_tiles SET hashes = substr(hashes, 1, (?2 - idx * 256) * 32) \
             WHERE level = ?1 AND length(hashes) > (?2 - idx * 256) * 32",
            params![level, count],
        )?;
    }
    Ok(dropped)
}

fn db(e: rusqlite::Error) -> JobError {
    JobError::Store(other(e))
}

/// One step of the tree on the writer thread: append every leaf committed
/// since the newest checkpoint (up to [`STEP_LEAVES`]), store the subtrees they
/// complete, and sign, in one transaction (`audit::job::Tree::step`'s steps).
pub fn step(conn: &mut Connection, tree: &mut Tree) -> Result<Appended, JobError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    check_trail(&tx, tree)?;
    introduce_keys(&tx, tree)?;
    let head = newest_head(&tx)?;
    let (size, last) = match &head {
        Some(h) => (h.size, h.last),
        None => (0, (i64::MIN, i64::MIN)),
    };
    let frontier = match tree.cached_frontier(size) {
        Some(f) => f,
        None => {
            let dropped = truncate_to(&tx, size).map_err(db)?;
            if dropped > 0 {
                tracing::warn!(
                    size,
                    dropped,
                    "dropped anchors and tiles beyond the stored tree"
                );
            }
            futures::executor::block_on(store::frontier(&Tables(&tx), size))?
        }
    };
    let attested_from: Option<i64> = tx
        .query_row("SELECT attested_from FROM audit_trail", [], |r| r.get(0))
        .map_err(db)?;
    let mut growth = Growth::new(frontier, attested_from, last, tree.keyring.as_deref());
    {
        let mut st = tx
            .prepare("SELECT seq, leaf FROM audit_leaves WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
            .map_err(db)?;
        let mut rows = st
            .query(params![seq_after(last), STEP_LEAVES])
            .map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            growth.push((0, r.get(0).map_err(db)?), r.get(1).map_err(db)?);
        }
    }
    if growth.unchanged() && head.is_some() {
        tx.commit().map_err(db)?;
        let (frontier, appended) = growth.into_parts();
        tree.keep_frontier(frontier);
        return Ok(appended);
    }
    {
        let mut st = tx
            .prepare_cached("INSERT INTO audit_anchors (idx, txid, seq) VALUES (?1, ?2, ?3)")
            .map_err(db)?;
        for &(idx, (txid, seq)) in &growth.anchors {
            st.execute(params![idx as i64, txid, seq]).map_err(db)?;
        }
    }
    for t in tile_appends(&growth.tiles) {
        let key = params![t.level, t.tile as i64];
        let stored: Option<Vec<u8>> = tx
            .query_row(
                "SELECT hashes FROM audit_tiles WHERE level = ?1 AND idx = ?2",
                key,
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match stored {
            None if t.offset == 0 => tx.execute(
                "INSERT INTO audit_tiles (level, idx, hashes) VALUES (?1, ?2, ?3)",
                params![t.level, t.tile as i64, t.bytes],
            ),
            Some(mut hashes) if hashes.len() as u64 == t.offset => {
                hashes.extend_from_slice(&t.bytes);
                tx.execute(
                    "UPDATE audit_tiles SET hashes = ?3 WHERE level = ?1 AND idx = ?2",
                    params![t.level, t.tile as i64, hashes],
                )
            }
            _ => return Err(t.misplaced().into()),
        }
        .map_err(db)?;
    }
    if growth.attested_from != attested_from {
        tx.execute(
            "UPDATE audit_trail SET attested_from = ?1",
            [growth.attested_from],
        )
        .map_err(db)?;
    }
    let (head, frontier, mut appended) = growth.sign(&tree.signer);
    tx.execute(
        "INSERT INTO audit_heads (size, root, last_txid, last_seq, note) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            head.size as i64,
            head.root.as_slice(),
            head.last.0,
            head.last.1,
            head.note
        ],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    tree.keep_frontier(frontier);
    appended.head = Some(head);
    Ok(appended)
}

/// Records this trail's origin and key on its first step; refuses to sign with
/// another key after that.
fn check_trail(conn: &Connection, tree: &Tree) -> Result<(), JobError> {
    let ours = tree.signer.verifier().encode();
    let expected: Option<String> = conn
        .query_row("SELECT public_key FROM audit_trail", [], |r| r.get(0))
        .optional()
        .map_err(db)?;
    match expected {
        Some(expected) if expected != ours => Err(JobError::OtherKey {
            expected,
            found: ours,
        }),
        Some(_) => Ok(()),
        None => conn
            .execute(
                "INSERT INTO audit_trail (one, origin, public_key) VALUES (1, ?1, ?2)",
                params![tree.signer.name(), ours],
            )
            .map(drop)
            .map_err(db),
    }
}

/// Adds a key leaf for each AUDIT_KEY the trail has none of yet.
fn introduce_keys(conn: &Connection, tree: &Tree) -> Result<(), JobError> {
    let Some(ring) = &tree.keyring else {
        return Ok(());
    };
    let known: String = conn
        .query_row("SELECT keys FROM audit_trail", [], |r| r.get(0))
        .map_err(db)?;
    let mut known: Vec<String> = serde_json::from_str(&known)
        .map_err(|e| JobError::Store(StoreError::Inconsistent(format!("audit_trail.keys: {e}"))))?;
    for id in ring.ids() {
        let hex = crate::model::hex::encode(&id);
        if known.contains(&hex) {
            continue;
        }
        add_leaf(conn, &leaf::key(id, &tree.signer, ring)).map_err(db)?;
        known.push(hex.clone());
        conn.execute(
            "UPDATE audit_trail SET keys = ?1",
            [serde_json::to_string(&known).expect("strings serialize")],
        )
        .map_err(db)?;
        tracing::info!(key_id = %hex, "AUDIT_KEY introduced to the audit trail");
    }
    Ok(())
}

/// A read-only connection on the file at `path`, beside its owner.
fn look(path: &std::path::Path) -> Result<Connection, StoreError> {
    super::beside(path, false).map_err(other)
}

/// The places of the events `id` (of `source`, when given) names in the file
/// at `path`; two at most.
pub async fn places_of(
    path: &std::path::Path,
    id: &str,
    source: Option<&str>,
) -> Result<Vec<Place>, StoreError> {
    let (path, id, source) = (path.to_owned(), id.to_owned(), source.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        super::read::places_of(&look(&path)?, &id, source.as_deref()).map_err(other)
    })
    .await
    .map_err(other)?
}

/// The proof bundle (`candystore prove`) of the event at `place` in the file at
/// `path`, read beside its owner: its committed columns and salt, and its
/// inclusion in the newest checkpoint.
pub async fn bundle(path: &std::path::Path, place: Place) -> Result<Bundle, NoBundle> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = look(&path).map_err(ProveError::from)?;
        let event = event_columns(&conn, place)?;
        futures::executor::block_on(proof::bundle_of(event, &Tables(&conn), place))
    })
    .await
    .map_err(|e| NoBundle::Prove(ProveError::Store(other(e))))?
}

/// The committed columns of the event at `place`.
fn event_columns(conn: &Connection, place: Place) -> Result<EventColumns, NoBundle> {
    let at = |e: rusqlite::Error| NoBundle::Prove(ProveError::Store(other(e)));
    if place.0 != 0 {
        return Err(NoBundle::NoEvent);
    }
    let text = super::column_text;
    let row = conn
        .query_row(
            r#"SELECT id, source, "timestamp", event_type, target, routing_key, exchange,
                received_at, payload, envelope, payload_member, properties, session_id,
                correlation_id, generation, sanitized, original_body, salt
            FROM events WHERE seq = ?1"#,
            [place.1],
            |r| {
                let micros: i64 = r.get(2)?;
                let salt: Option<Vec<u8>> = r.get(17)?;
                Ok((
                    EventColumns {
                        id: r.get(0)?,
                        source: r.get(1)?,
                        timestamp: micros,
                        timestamp_text: chrono::DateTime::from_timestamp_micros(micros)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                            .unwrap_or_default(),
                        event_type: r.get(3)?,
                        target: r.get(4)?,
                        routing_key: r.get(5)?,
                        exchange: r.get(6)?,
                        received_at: r.get(7)?,
                        payload: text(r, 8)?,
                        envelope: text(r, 9)?,
                        payload_member: r.get(10)?,
                        properties: text(r, 11)?,
                        session_id: r.get(12)?,
                        correlation_id: r.get(13)?,
                        generation: r.get(14)?,
                        sanitized: r.get(15)?,
                        original_body: r
                            .get::<_, Option<Vec<u8>>>(16)?
                            .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
                        salt: String::new(),
                    },
                    salt,
                ))
            },
        )
        .optional()
        .map_err(at)?;
    let Some((mut event, salt)) = row else {
        return Err(NoBundle::NoEvent);
    };
    let Some(salt) = salt else {
        return Err(NoBundle::Legacy);
    };
    event.salt = base64::engine::general_purpose::STANDARD.encode(salt);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::executor::block_on;

    use super::*;
    use crate::audit::note::{Checkpoint, SigningKey};
    use crate::audit::proof;
    use crate::audit::tree::{leaf_hash, node_hash, verify_consistency, verify_inclusion};
    use crate::store::sqlite::{Role, Sqlite};

    /// RFC 9162's MTH over leaf bytes, from the definition.
    fn mth(leaves: &[Vec<u8>]) -> [u8; 32] {
        match leaves.len() {
            0 => crate::audit::tree::empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn add_leaves(conn: &mut Connection, all: &mut Vec<Vec<u8>>, n: usize) {
        let tx = conn.transaction().unwrap();
        for _ in 0..n {
            let leaf: Vec<u8> = (0..40).map(|_| rand::random::<u8>()).collect();
            add_leaf(&tx, &leaf).unwrap();
            all.push(leaf);
        }
        tx.commit().unwrap();
    }

    fn b64(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn hashes(list: &[String]) -> Vec<[u8; 32]> {
        list.iter().map(|h| b64(h).try_into().unwrap()).collect()
    }

    /// Every leaf named here is proved against the newest head.
    fn proves(conn: &Connection, head: &Head, indexes: &[u64], all: &[Vec<u8>]) {
        for &i in indexes {
            let p = block_on(proof::inclusion_of_index(&Tables(conn), i))
                .unwrap()
                .unwrap_or_else(|| panic!("no proof of {i}"));
            assert_eq!(b64(&p.leaf), all[i as usize], "leaf {i}");
            verify_inclusion(
                &leaf_hash(&all[i as usize]),
                i,
                head.size,
                &hashes(&p.audit_path),
                &head.root,
            )
            .unwrap_or_else(|e| panic!("leaf {i}: {e}"));
        }
    }

    #[test]
    fn a_backlog_of_several_steps_makes_the_tree_of_every_leaf_and_a_rollback_with_sql_is_appended_over()
     {
        let dir = crate::store::sqlite::tests::tempdir();
        let store = Sqlite::own(&dir.join("store.db")).unwrap();
        let mut conn = store.connect(Role::Write).unwrap();
        let signer = Arc::new(SigningKey::generate("test.example/log").unwrap());
        let mut tree = Tree::new(signer.clone(), None);
        let mut all = Vec::new();
        // More than one step (STEP_LEAVES) and past 256², so tiles of two
        // levels are stored.
        let backlog = STEP_LEAVES as usize + 2_000;
        add_leaves(&mut conn, &mut all, backlog);
        let first = step(&mut conn, &mut tree).unwrap().head.unwrap();
        assert_eq!(first.size, STEP_LEAVES as u64);
        let second = step(&mut conn, &mut tree).unwrap().head.unwrap();
        assert_eq!(second.size, backlog as u64);
        assert_eq!(second.root, mth(&all));
        let signed = signer.verifier().open(&second.note).unwrap();
        assert_eq!(Checkpoint::parse(signed).unwrap().root, second.root);
        let level2: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit_tiles WHERE level = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(level2, 1);
        proves(
            &conn,
            &second,
            &[0, 255, 256, 65_535, 65_536, backlog as u64 - 1],
            &all,
        );
        // Nothing new: no new checkpoint.
        assert!(step(&mut conn, &mut tree).unwrap().head.is_none());

        // Someone deletes the newest checkpoint with SQL; a new instance (no
        // edge kept) truncates what the larger tree stored and appends again.
        conn.execute(
            "DELETE FROM audit_heads WHERE size = ?1",
            [second.size as i64],
        )
        .unwrap();
        add_leaves(&mut conn, &mut all, 300);
        let mut fresh = Tree::new(signer.clone(), None);
        let third = step(&mut conn, &mut fresh).unwrap().head.unwrap();
        assert_eq!(third.size, all.len() as u64);
        assert_eq!(third.root, mth(&all));
        proves(&conn, &third, &[1, 70_000, all.len() as u64 - 1], &all);
        let c = block_on(proof::consistency(&Tables(&conn), first.size, None))
            .unwrap()
            .unwrap();
        verify_consistency(
            first.size,
            third.size,
            &first.root,
            &third.root,
            &hashes(&c.proof),
        )
        .unwrap();
        // Another key is refused.
        let other = Arc::new(SigningKey::generate("test.example/log").unwrap());
        let e = step(&mut conn, &mut Tree::new(other, None)).unwrap_err();
        assert!(matches!(e, JobError::OtherKey { .. }), "{e}");
        drop((conn, store));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
