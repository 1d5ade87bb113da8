//! The embedded store's catalog: every stored event counted once into the
//! catalog tables (event types, sources, each type's top-level payload keys with
//! their JSON types), so `GET /event-types` and `GET /sources` read small tables.
//!
//! The same rules as PostgreSQL's catalog job (`storage::catalog`): a step counts
//! the next [`STEP_ROWS`] events past its position and moves the position in one
//! transaction, so no event is counted twice or missed; a type keeps at most
//! [`MAX_KEYS_PER_TYPE`] keys, and within a step the new keys past the room left
//! are ranked by count, then key, then type, the rest counted in one `other` row.
//! Steps run on the writer thread, between batches (one writer: a step never
//! waits for a lock nor makes a batch wait for one).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, params};

pub use crate::storage::catalog::{MAX_KEYS_PER_TYPE, OTHER_KEYS, STEP_ROWS};

use crate::store::contains::{Json, parse};

/// jsonb_typeof's name of a value's type.
fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// Counts, first and last event time of one group.
#[derive(Debug, Clone, Copy)]
struct Seen {
    n: i64,
    first: i64,
    last: i64,
}

impl Seen {
    fn new(t: i64) -> Self {
        Seen {
            n: 1,
            first: t,
            last: t,
        }
    }

    fn add(&mut self, t: i64) {
        self.n += 1;
        self.first = self.first.min(t);
        self.last = self.last.max(t);
    }
}

fn count<K: Ord>(map: &mut BTreeMap<K, Seen>, key: K, t: i64) {
    map.entry(key)
        .and_modify(|s| s.add(t))
        .or_insert_with(|| Seen::new(t));
}

/// (event type, key, JSON type): one row of `catalog_payload_keys`.
type KeyOf = (String, String, &'static str);

/// Counts the next events past the catalog's position; returns how many.
pub fn step(conn: &mut Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let position: i64 = tx.query_row("SELECT seq FROM catalog_position", [], |r| r.get(0))?;
    let mut types: BTreeMap<String, Seen> = BTreeMap::new();
    let mut sources: BTreeMap<String, Seen> = BTreeMap::new();
    let mut keys: BTreeMap<KeyOf, Seen> = BTreeMap::new();
    let mut last = position;
    let mut rows = 0;
    {
        let mut batch = tx.prepare_cached(
            "SELECT seq, event_type, source, \"timestamp\", payload FROM events \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut read = batch.query(params![position, STEP_ROWS])?;
        while let Some(row) = read.next()? {
            let (seq, event_type, source, t): (i64, String, String, i64) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            let payload = row.get_ref(4)?.as_bytes().unwrap_or(b"{}");
            if let Ok(Json::Object(members)) = parse(payload) {
                for (key, value) in members {
                    count(&mut keys, (event_type.clone(), key, json_type(&value)), t);
                }
            }
            count(&mut types, event_type, t);
            count(&mut sources, source, t);
            last = seq;
            rows += 1;
        }
    }
    if rows == 0 {
        tx.finish()?;
        return Ok(0);
    }
    // The keys each type already has, and the room left for new ones.
    let mut known: HashMap<String, Vec<(String, String)>> = HashMap::new();
    {
        let mut kept = tx.prepare_cached(
            "SELECT key, json_type FROM catalog_payload_keys WHERE event_type = ?1 AND json_type <> ?2",
        )?;
        for event_type in types.keys() {
            let have = kept
                .query_map(params![event_type, OTHER_KEYS], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
            known.insert(event_type.clone(), have);
        }
    }
    // New keys ranked by count, then key, then type; those past the room are
    // counted together.
    let mut new_by_type: BTreeMap<&str, Vec<(&KeyOf, &Seen)>> = BTreeMap::new();
    let mut upserts: Vec<((String, String, String), Seen)> = Vec::new();
    for (k, seen) in &keys {
        let is_known = known
            .get(&k.0)
            .is_some_and(|have| have.iter().any(|(key, t)| *key == k.1 && t == k.2));
        if is_known {
            upserts.push(((k.0.clone(), k.1.clone(), k.2.to_owned()), *seen));
        } else {
            new_by_type.entry(&k.0).or_default().push((k, seen));
        }
    }
    let mut capped: Vec<String> = Vec::new();
    for (event_type, mut new) in new_by_type {
        new.sort_by(|(a, sa), (b, sb)| {
            sb.n.cmp(&sa.n)
                .then_with(|| a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(b.2))
        });
        let room = (MAX_KEYS_PER_TYPE - known.get(event_type).map_or(0, |h| h.len() as i64)).max(0);
        let mut other: Option<Seen> = None;
        for (rank, (k, seen)) in new.into_iter().enumerate() {
            if (rank as i64) < room {
                upserts.push(((k.0.clone(), k.1.clone(), k.2.to_owned()), *seen));
            } else {
                other = Some(match other {
                    None => *seen,
                    Some(o) => Seen {
                        n: o.n + seen.n,
                        first: o.first.min(seen.first),
                        last: o.last.max(seen.last),
                    },
                });
            }
        }
        if let Some(o) = other {
            upserts.push((
                (event_type.to_owned(), String::new(), OTHER_KEYS.to_owned()),
                o,
            ));
            capped.push(event_type.to_owned());
        }
    }
    {
        let mut upsert_type = tx.prepare_cached(
            "INSERT INTO catalog_event_types AS c (event_type, count, first_seen, last_seen, payload_keys_capped) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (event_type) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = min(c.first_seen, excluded.first_seen), last_seen = max(c.last_seen, excluded.last_seen), \
             payload_keys_capped = c.payload_keys_capped OR excluded.payload_keys_capped",
        )?;
        for (t, s) in &types {
            upsert_type.execute(params![t, s.n, s.first, s.last, capped.contains(t)])?;
        }
        let mut upsert_source = tx.prepare_cached(
            "INSERT INTO catalog_sources AS c (source, count, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (source) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = min(c.first_seen, excluded.first_seen), last_seen = max(c.last_seen, excluded.last_seen)",
        )?;
        for (source, s) in &sources {
            upsert_source.execute(params![source, s.n, s.first, s.last])?;
        }
        let mut upsert_key = tx.prepare_cached(
            "INSERT INTO catalog_payload_keys AS c (event_type, key, json_type, count, first_seen, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_type, key, json_type) DO UPDATE SET \
             count = c.count + excluded.count, first_seen = min(c.first_seen, excluded.first_seen), \
             last_seen = max(c.last_seen, excluded.last_seen)",
        )?;
        for ((t, k, j), s) in &upserts {
            upsert_key.execute(params![t, k, j, s.n, s.first, s.last])?;
        }
        tx.execute("UPDATE catalog_position SET seq = ?1", [last])?;
    }
    tx.commit()?;
    Ok(rows)
}

/// One event type of the catalog, with its keys (most common first).
#[derive(Debug, Clone)]
pub struct CatalogType {
    pub event_type: String,
    pub count: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub payload_keys_capped: bool,
    /// (key, json type, count, first seen, last seen)
    pub keys: Vec<(String, String, i64, i64, i64)>,
}

/// The event types after `after`, by name, at most `limit` and one more (which
/// says more follow).
pub fn event_types(
    conn: &Connection,
    after: &str,
    limit: i64,
) -> rusqlite::Result<Vec<CatalogType>> {
    let mut types = conn
        .prepare_cached(
            "SELECT event_type, count, first_seen, last_seen, payload_keys_capped FROM catalog_event_types \
             WHERE event_type > ?1 ORDER BY event_type LIMIT ?2",
        )?
        .query_map(params![after, limit + 1], |r| {
            Ok(CatalogType {
                event_type: r.get(0)?,
                count: r.get(1)?,
                first_seen: r.get(2)?,
                last_seen: r.get(3)?,
                payload_keys_capped: r.get(4)?,
                keys: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut keys = conn.prepare_cached(
        "SELECT key, json_type, count, first_seen, last_seen FROM catalog_payload_keys \
         WHERE event_type = ?1 ORDER BY count DESC, key, json_type",
    )?;
    for t in types.iter_mut().take(limit as usize) {
        t.keys = keys
            .query_map([&t.event_type], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    Ok(types)
}

/// Every source: (source, count, first seen, last seen), by name.
pub fn sources(conn: &Connection) -> rusqlite::Result<Vec<(String, i64, i64, i64)>> {
    conn.prepare_cached(
        "SELECT source, count, first_seen, last_seen FROM catalog_sources ORDER BY source",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
    .collect()
}
