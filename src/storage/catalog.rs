//! The catalog job: every committed event is counted once into the catalog tables
//! (event types, sources, and each event type's top-level payload keys with their
//! JSON types), so `GET /event-types` and `GET /sources` read a few small tables
//! instead of grouping the whole of `events`.
//!
//! It reads events in the live tail's order, `(txid, seq)`, only below the same
//! horizon ([`HORIZON`]): rows there are committed and no row can appear below it
//! later. Each step counts the next rows and moves the position in one transaction,
//! so no event is counted twice or missed, whatever fails in between. Instances
//! take turns through a transaction-scoped advisory lock. It never touches the
//! writers' path: ingest does not wait for it, and a catalog behind by a few
//! seconds catches up by itself.
//!
//! What it does not follow: partitions dropped by retention or archived stay
//! counted (the catalog says what was seen), and rows restored from an archive
//! (back at their old positions, behind the catalog's) are not counted again.

use std::time::Duration;

use tokio_postgres::Client;

use super::StorageError;
use super::tail_index::HORIZON;

/// Events counted per step (one transaction) at most.
pub const STEP_ROWS: i64 = 10_000;
/// How long the job rests once it has caught up.
const REST: Duration = Duration::from_secs(1);
/// The advisory lock (transaction-scoped) instances take turns by.
const LOCK_KEY: i64 = 7_236_828_094_530_679_668;

fn step_sql() -> String {
    let upsert = |table: &str, column: &str| {
        format!(
            "INSERT INTO {table} AS c ({column}, count, first_seen, last_seen) \
             SELECT {column}, count(*), min(\"timestamp\"), max(\"timestamp\") FROM batch GROUP BY {column} \
             ON CONFLICT ({column}) DO UPDATE SET count = c.count + excluded.count, \
               first_seen = least(c.first_seen, excluded.first_seen), \
               last_seen = greatest(c.last_seen, excluded.last_seen)"
        )
    };
    format!(
        "WITH batch AS MATERIALIZED ( \
           SELECT e.txid, e.seq, e.event_type, e.source, e.\"timestamp\", e.payload FROM events e \
           WHERE (e.txid, e.seq) > ($1, $2) AND e.txid < {HORIZON} \
           ORDER BY e.txid, e.seq LIMIT {STEP_ROWS}), \
         types AS ({types}), \
         sources AS ({sources}), \
         keys AS ( \
           INSERT INTO catalog_payload_keys AS c (event_type, key, json_type, count, first_seen, last_seen) \
           SELECT b.event_type, k.key, jsonb_typeof(k.value), count(*), min(b.\"timestamp\"), max(b.\"timestamp\") \
           FROM batch b CROSS JOIN LATERAL jsonb_each( \
             CASE WHEN jsonb_typeof(b.payload) = 'object' THEN b.payload ELSE '{{}}'::jsonb END) k \
           GROUP BY 1, 2, 3 \
           ON CONFLICT (event_type, key, json_type) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = least(c.first_seen, excluded.first_seen), \
             last_seen = greatest(c.last_seen, excluded.last_seen)), \
         last AS (SELECT txid, seq FROM batch ORDER BY txid DESC, seq DESC LIMIT 1), \
         moved AS (UPDATE catalog_position p SET txid = last.txid, seq = last.seq FROM last RETURNING 1) \
         SELECT count(*) FROM batch",
        types = upsert("catalog_event_types", "event_type"),
        sources = upsert("catalog_sources", "source"),
    )
}

/// Counts the next committed events (at most [`STEP_ROWS`]) into the catalog.
/// Returns how many; 0 when there were none or another instance holds the turn.
pub async fn step(client: &mut Client) -> Result<u64, StorageError> {
    let tx = client.transaction().await?;
    if !super::job::take_turn(&tx, LOCK_KEY).await? {
        return Ok(0);
    }
    // The position as parameters, so it bounds the index scans (as a joined row it
    // would only filter them, and each step would read everything counted before).
    let pos = tx
        .query_one("SELECT txid, seq FROM catalog_position", &[])
        .await?;
    let (txid, seq): (i64, i64) = (pos.get(0), pos.get(1));
    let n: i64 = tx.query_one(&step_sql(), &[&txid, &seq]).await?.get(0);
    tx.commit().await?;
    Ok(n as u64)
}

/// The catalog as a background job: at once again while it finds full steps
/// (catching up), otherwise every [`REST`].
pub struct CatalogJob;

impl super::job::Job for CatalogJob {
    const NAME: &'static str = "catalog";

    fn retry_in(&self) -> Duration {
        REST * 5
    }

    async fn step(&mut self, client: &mut Client) -> Result<Duration, StorageError> {
        let n = step(client).await?;
        Ok(if n as i64 >= STEP_ROWS {
            Duration::ZERO
        } else {
            REST
        })
    }
}
