//! Planner statistics for partitions filled outside normal ingest.
//!
//! Autovacuum analyses a partition after enough inserts, but only when a worker
//! gets to it: with a 10M-row move out of the default partition (whose vacuum
//! keeps the workers busy), 90 of 93 partitions still had no statistics half an
//! hour later, and every plan over them was blind (`/events` requests ran into
//! the statement timeout). So whatever fills a partition in bulk analyses it in
//! the same job ([`analyze`]: the move out of the default partition, `restore`,
//! the online migration), and the maintenance job analyses what is left
//! ([`refresh`]): a partition holding rows that was never analysed, or that has
//! changed more than it held when it last was.

use tokio_postgres::Client;

use super::{StorageError, Table};

/// Partitions [`refresh`] analyses in one run at most; the next runs go on.
/// ANALYZE reads a fixed sample (30,000 rows at the default statistics target,
/// 300,000 for `payload`), so each costs about the same whatever its size:
/// 0.1–0.5 s for a day of events.
pub const MAX_ANALYZED_PER_RUN: usize = 64;

/// Below this many rows changed, a partition's statistics are not worth a run
/// of their own (autovacuum's own threshold is 50 plus 10% of the rows).
const CHANGED_AT_LEAST: i64 = 1_000;

/// Analyses one table or partition: its statistics are current when this returns.
pub async fn analyze(client: &Client, name: &str) -> Result<(), StorageError> {
    client
        .batch_execute(&format!("ANALYZE {}", quote_ident(name)))
        .await?;
    Ok(())
}

/// The partitions of `table` (the default one included) whose statistics are
/// missing or far behind: rows and never analysed, or more rows changed since
/// the last analyse than it counted then. Most changed first.
pub async fn stale(client: &Client, table: Table) -> Result<Vec<String>, StorageError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE i.inhparent = $1::text::regclass AND c.relkind = 'r' \
               AND ((c.reltuples < 0 AND pg_relation_size(c.oid) > 0) \
                    OR s.n_mod_since_analyze >= greatest($2::int8, c.reltuples::int8)) \
             ORDER BY s.n_mod_since_analyze DESC, c.relname",
            &[&table.name(), &CHANGED_AT_LEAST],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What [`refresh`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub analyzed: Vec<String>,
    /// Stale partitions left for the next run ([`MAX_ANALYZED_PER_RUN`]).
    pub left: usize,
}

/// Analyses the stale partitions of `table` ([`stale`]), up to
/// [`MAX_ANALYZED_PER_RUN`]. A partition whose analyse fails (a lock not granted
/// in time) is logged and left for the next run; a lost connection ends it.
pub async fn refresh(client: &Client, table: Table) -> Result<Refreshed, StorageError> {
    let stale = stale(client, table).await?;
    let mut done = Refreshed {
        left: stale.len().saturating_sub(MAX_ANALYZED_PER_RUN),
        ..Refreshed::default()
    };
    for name in stale.into_iter().take(MAX_ANALYZED_PER_RUN) {
        match analyze(client, &name).await {
            Ok(()) => done.analyzed.push(name),
            Err(StorageError::Db(e)) if !e.is_closed() => {
                tracing::warn!(partition = %name, error = %e, "maintenance: analyse failed; the next run tries again");
                done.left += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Partitions of `table` holding rows that have never been analysed: what the
/// planner can only guess about (exported, and alerted on when it lasts).
pub async fn unanalyzed(client: &Client, table: Table) -> Result<i64, StorageError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass AND c.relkind = 'r' \
               AND c.reltuples < 0 AND pg_relation_size(c.oid) > 0",
            &[&table.name()],
        )
        .await?
        .get(0))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
