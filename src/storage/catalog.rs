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
//!
//! The same step counts each event with a session into `session_counts` (by
//! session, event type and source: what a session's summary shows, migration
//! 0020). Those counts follow what is stored: retention subtracts the rows it
//! drops and restore adds the rows it brings back, each under [`hold`] so no
//! step moves the position meanwhile ([`uncount_dropped`], [`SESSION_COUNT_RESTORED`]).

use std::time::Duration;

use tokio_postgres::Client;

use super::StorageError;
use crate::db::HORIZON;

/// Events counted per step (one transaction) at most.
pub const STEP_ROWS: i64 = 10_000;
/// How long the job rests once it has caught up.
const REST: Duration = Duration::from_secs(1);
/// The advisory lock (transaction-scoped) instances take turns by; migration
/// 0020 takes it by number.
const LOCK_KEY: i64 = 7_236_828_094_530_679_668;

/// Distinct top-level payload keys (each with one JSON type) the catalog keeps
/// per event type. Past it, a type's new keys are counted together in one row of
/// [`OTHER_KEYS`] and the type is flagged `payload_keys_capped`: a publisher
/// sending events with 50,000 keys each cannot grow the catalog (or the answer
/// of `GET /event-types`) without bound.
pub const MAX_KEYS_PER_TYPE: i64 = 100;
/// The `json_type` of the row that counts the keys past the cap (its key is '').
/// No JSON type has this name, so no real key can land in it.
pub const OTHER_KEYS: &str = "other";

/// Adds each new event with a session to `session_counts` (a CTE of the step).
const SESSIONS: &str = "sessions AS ( \
   INSERT INTO session_counts AS c (session_id, event_type, source, events) \
   SELECT session_id, event_type, source, count(*) FROM batch WHERE session_id IS NOT NULL \
   GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
   ON CONFLICT (session_id, event_type, source) DO UPDATE SET events = c.events + excluded.events), ";

fn step_sql(sessions: bool) -> String {
    format!(
        "WITH batch AS MATERIALIZED ( \
           SELECT e.txid, e.seq, e.event_type, e.source, e.session_id, e.\"timestamp\", e.payload FROM events e \
           WHERE (e.txid, e.seq) > ($1, $2) AND e.txid < {HORIZON} \
           ORDER BY e.txid, e.seq LIMIT {STEP_ROWS}), \
         keys_in AS MATERIALIZED ( \
           SELECT b.event_type, k.key, jsonb_typeof(k.value) AS json_type, count(*) AS n, \
             min(b.\"timestamp\") AS first_seen, max(b.\"timestamp\") AS last_seen \
           FROM batch b CROSS JOIN LATERAL jsonb_each( \
             CASE WHEN jsonb_typeof(b.payload) = 'object' THEN b.payload ELSE '{{}}'::jsonb END) k \
           GROUP BY 1, 2, 3), \
         rooms AS ( \
           SELECT event_type, {MAX_KEYS_PER_TYPE} - count(*) AS room FROM catalog_payload_keys \
           WHERE json_type <> '{OTHER_KEYS}' AND event_type IN (SELECT event_type FROM keys_in) \
           GROUP BY event_type), \
         judged AS MATERIALIZED ( \
           SELECT ki.*, c.key IS NOT NULL AS known, coalesce(r.room, {MAX_KEYS_PER_TYPE}) AS room, \
             row_number() OVER (PARTITION BY ki.event_type, c.key IS NULL \
                                ORDER BY ki.n DESC, ki.key, ki.json_type) AS rank \
           FROM keys_in ki \
           LEFT JOIN catalog_payload_keys c \
             ON c.event_type = ki.event_type AND c.key = ki.key AND c.json_type = ki.json_type \
           LEFT JOIN rooms r ON r.event_type = ki.event_type), \
         overflow AS (SELECT DISTINCT event_type FROM judged WHERE NOT known AND rank > room), \
         kept AS ( \
           SELECT event_type, key, json_type, n, first_seen, last_seen FROM judged WHERE known OR rank <= room \
           UNION ALL \
           SELECT event_type, '', '{OTHER_KEYS}', sum(n)::bigint, min(first_seen), max(last_seen) \
           FROM judged WHERE NOT known AND rank > room GROUP BY event_type), \
         types AS ( \
           INSERT INTO catalog_event_types AS c (event_type, count, first_seen, last_seen, payload_keys_capped) \
           SELECT b.event_type, count(*), min(b.\"timestamp\"), max(b.\"timestamp\"), \
             b.event_type IN (SELECT event_type FROM overflow) \
           FROM batch b GROUP BY b.event_type \
           ON CONFLICT (event_type) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = least(c.first_seen, excluded.first_seen), \
             last_seen = greatest(c.last_seen, excluded.last_seen), \
             payload_keys_capped = c.payload_keys_capped OR excluded.payload_keys_capped), \
         sources AS ( \
           INSERT INTO catalog_sources AS c (source, count, first_seen, last_seen) \
           SELECT source, count(*), min(\"timestamp\"), max(\"timestamp\") FROM batch GROUP BY source \
           ON CONFLICT (source) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = least(c.first_seen, excluded.first_seen), \
             last_seen = greatest(c.last_seen, excluded.last_seen)), \
         keys AS ( \
           INSERT INTO catalog_payload_keys AS c (event_type, key, json_type, count, first_seen, last_seen) \
           SELECT event_type, key, json_type, n, first_seen, last_seen FROM kept \
           ON CONFLICT (event_type, key, json_type) DO UPDATE SET count = c.count + excluded.count, \
             first_seen = least(c.first_seen, excluded.first_seen), \
             last_seen = greatest(c.last_seen, excluded.last_seen)), \
         {sessions} \
         last AS (SELECT txid, seq FROM batch ORDER BY txid DESC, seq DESC LIMIT 1), \
         moved AS (UPDATE catalog_position p SET txid = last.txid, seq = last.seq FROM last RETURNING 1) \
         SELECT count(*) FROM batch",
        sessions = if sessions { SESSIONS } else { "" }
    )
}

/// Whether migration 0020 has made `session_counts` (a service may run while it
/// is pending).
pub(crate) async fn has_session_counts(
    client: &impl tokio_postgres::GenericClient,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('session_counts') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Waits for the catalog's turn and keeps it until `tx` ends: no step runs
/// meanwhile, so its position holds still.
pub(crate) async fn hold(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StorageError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    Ok(())
}

/// Subtracts from `session_counts` the rows of partition `name` that the catalog
/// has counted, in `tx` (the drop's), under [`hold`]; counts that reach zero go.
/// Rows past the position were never counted and, dropped, never will be.
pub(crate) async fn uncount_dropped(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<(), StorageError> {
    if !has_session_counts(tx).await? {
        return Ok(());
    }
    hold(tx).await?;
    let emptied = tx
        .query(
            &format!(
                "WITH gone AS (SELECT e.session_id, e.event_type, e.source, count(*) AS n \
                 FROM {name} e, catalog_position p \
                 WHERE e.session_id IS NOT NULL AND (e.txid, e.seq) <= (p.txid, p.seq) GROUP BY 1, 2, 3) \
                 , updated AS (UPDATE session_counts c SET events = c.events - g.n FROM gone g \
                 WHERE c.session_id = g.session_id AND c.event_type = g.event_type AND c.source = g.source \
                 RETURNING c.session_id, c.event_type, c.source, c.events) \
                 SELECT session_id, event_type, source FROM updated WHERE events <= 0"
            ),
            &[],
        )
        .await?;
    let column = |i: usize| -> Vec<String> { emptied.iter().map(|r| r.get(i)).collect() };
    tx.execute(
        "DELETE FROM session_counts WHERE (session_id, event_type, source) IN \
         (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
        &[&column(0), &column(1), &column(2)],
    )
    .await?;
    Ok(())
}

/// A CTE for a statement whose `ins` CTE returned restored rows (`txid`, `seq`,
/// `session_id`, `event_type`, `source`): adds those at or below the catalog's
/// position (the job counts the others when it gets there). Run under [`hold`].
pub(crate) const SESSION_COUNT_RESTORED: &str = "restored_sessions AS ( \
   INSERT INTO session_counts AS c (session_id, event_type, source, events) \
   SELECT i.session_id, i.event_type, i.source, count(*) FROM ins i, catalog_position p \
   WHERE i.session_id IS NOT NULL AND (i.txid, i.seq) <= (p.txid, p.seq) \
   GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
   ON CONFLICT (session_id, event_type, source) DO UPDATE SET events = c.events + excluded.events)";

/// Counts the next committed events (at most [`STEP_ROWS`]) into the catalog.
/// Returns how many; 0 when there were none or another instance holds the turn.
pub async fn step(client: &mut Client) -> Result<u64, StorageError> {
    let tx = client.transaction().await?;
    if !crate::jobs::take_turn(&tx, LOCK_KEY).await? {
        return Ok(0);
    }
    // The position as parameters, so it bounds the index scans (as a joined row it
    // would only filter them, and each step would read everything counted before).
    let pos = tx
        .query_one("SELECT txid, seq FROM catalog_position", &[])
        .await?;
    let (txid, seq): (i64, i64) = (pos.get(0), pos.get(1));
    let sessions = has_session_counts(&tx).await?;
    let n: i64 = tx
        .query_one(&step_sql(sessions), &[&txid, &seq])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(n as u64)
}

/// The catalog as a background job: at once again while it finds full steps
/// (catching up), otherwise every [`REST`].
pub struct CatalogJob;

impl crate::jobs::Job for CatalogJob {
    const NAME: &'static str = "catalog";
    type Error = StorageError;

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
