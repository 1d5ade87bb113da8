//! Rows per partition of `events`, from the statistics, refreshed at most every
//! [`REFRESH`]: what `GET /events` scales a recent window's estimate by, so that a
//! page read from the newest partitions never plans its `total` over all of them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::storage::partition::parse_bound;

const REFRESH: Duration = Duration::from_secs(30);

/// (range, rows); the default partition (or a plain table) has no range.
type Sizes = Vec<(Option<(DateTime<Utc>, DateTime<Utc>)>, f64)>;

#[derive(Default)]
pub struct TableSizes {
    cached: Mutex<Option<(Instant, Sizes, bool)>>,
}

impl TableSizes {
    /// The partitions' sizes, and whether their statistics are current.
    async fn sizes(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(Sizes, bool), tokio_postgres::Error> {
        if let Some((at, sizes, current)) = &*self.cached.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < REFRESH
        {
            return Ok((sizes.clone(), *current));
        }
        let rows = client
            .query(
                "SELECT greatest(c.reltuples, 0)::float8, pg_get_expr(c.relpartbound, c.oid), \
                        c.reltuples < 0 AND pg_relation_size(c.oid) > 0 \
                 FROM pg_class c \
                 WHERE c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass) \
                    OR (c.oid = 'events'::regclass AND c.relkind = 'r')",
                &[],
            )
            .await?;
        // A partition holding rows but never analyzed has no statistics at all: the
        // planner guesses its rows from its size. (Once analyzed, its estimates scale
        // with the table; pg_stat's change counters arrive too late to judge by.)
        let current = !rows.iter().any(|r| r.get::<_, bool>(2));
        let sizes: Sizes = rows
            .iter()
            .map(|r| {
                let bound: Option<String> = r.get(1);
                let range = bound
                    .as_deref()
                    .and_then(parse_bound)
                    .map(|r| (r.start, r.end));
                (range, r.get::<_, f64>(0))
            })
            .collect();
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), sizes.clone(), current));
        Ok((sizes, current))
    }

    /// Whether the planner has statistics for every partition holding rows: false
    /// for a new table (or partition) before its first analyze.
    pub async fn statistics_current(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        Ok(self.sizes(client).await?.1)
    }

    /// (rows in the table, rows from `lower` to `upper`), or `None` when the table
    /// is not partitioned (nothing to scale by). A partition that straddles a bound
    /// counts in proportion to its range inside. The default partition counts whole:
    /// its rows may lie anywhere, and a window's plan always reads it.
    pub async fn rows_between(
        &self,
        client: &tokio_postgres::Client,
        lower: DateTime<Utc>,
        upper: DateTime<Utc>,
    ) -> Result<Option<(f64, f64)>, tokio_postgres::Error> {
        let (sizes, _) = self.sizes(client).await?;
        if !sizes.iter().any(|(r, _)| r.is_some()) {
            return Ok(None);
        }
        let all = sizes.iter().map(|(_, n)| n).sum();
        let inside = sizes
            .iter()
            .map(|(range, n)| match range {
                None => *n,
                Some((start, end)) => {
                    let overlap = (*end.min(&upper) - *start.max(&lower)).num_seconds().max(0);
                    n * overlap as f64 / (*end - *start).num_seconds().max(1) as f64
                }
            })
            .sum();
        Ok(Some((all, inside)))
    }
}
