//! Rows per partition of `events`, from the statistics, refreshed at most every
//! [`REFRESH`]: what `GET /events` scales a recent window's estimate by, so that a
//! page read from the newest partitions never plans its `total` over all of them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::storage::partition::parse_bound;

const REFRESH: Duration = Duration::from_secs(30);

/// (range, rows); the default partition (or a plain table) has no range.
type Sizes = Vec<Size>;
type Size = (Option<(DateTime<Utc>, DateTime<Utc>)>, f64);

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
    /// is not partitioned (nothing to scale by). See [`rows_inside`].
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
        Ok(Some(rows_inside(&sizes, lower, upper, Utc::now())))
    }
}

/// (rows in the table, rows from `lower` to `upper`) at `now`. A partition that
/// straddles a bound counts in proportion to the part of its rows' span inside,
/// and its rows' span ends at `now` when it begins before: events are stamped
/// when they happen, so the partition holding the present has its rows behind it
/// (spread over its whole range, today's at 10:00 would count 10/24 of its rows
/// in a window ending now, and a page's total scaled by the rest came out 2.3
/// times the table). The default partition counts whole: its rows may lie
/// anywhere, and a window's plan always reads it.
fn rows_inside(
    sizes: &Sizes,
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (f64, f64) {
    let all = sizes.iter().map(|(_, n)| n).sum();
    let inside = sizes
        .iter()
        .map(|(range, n)| match range {
            None => *n,
            Some((start, end)) => {
                let end = if *start < now { now.min(*end) } else { *end };
                let overlap = (end.min(upper) - *start.max(&lower)).num_seconds().max(0);
                n * overlap as f64 / (end - *start).num_seconds().max(1) as f64
            }
        })
        .sum();
    (all, inside)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::{Size, rows_inside};

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, day, hour, 0, 0).unwrap()
    }

    fn day(d: u32, rows: f64) -> Size {
        (Some((at(d, 0), at(d + 1, 0))), rows)
    }

    #[test]
    fn the_partition_holding_the_present_has_all_its_rows_behind_it() {
        // At 10:00 today's partition holds ten hours of events, all of them in a
        // window that ends now (clean-clone CI at 10:16: counted as 10/24 of them).
        let sizes = vec![day(5, 24.0), day(6, 10.0), day(7, 1.0), (None, 0.0)];
        let (all, inside) = rows_inside(&sizes, at(6, 0), at(6, 10), at(6, 10));
        assert_eq!(all, 35.0);
        assert_eq!(inside, 10.0);
    }

    #[test]
    fn a_window_ending_before_the_present_counts_the_share_of_the_rows_span_it_covers() {
        let sizes = vec![day(5, 24.0), day(6, 10.0)];
        // Half of yesterday, and today's rows from midnight to 05:00 of the ten
        // hours they span.
        let (_, inside) = rows_inside(&sizes, at(5, 12), at(6, 5), at(6, 10));
        assert_eq!(inside, 12.0 + 5.0);
    }

    #[test]
    fn future_partitions_and_the_default_one_count_by_their_whole_range() {
        let sizes = vec![day(7, 8.0), (None, 3.0)];
        let (_, inside) = rows_inside(&sizes, at(7, 0), at(7, 6), at(6, 10));
        assert_eq!(inside, 2.0 + 3.0);
    }
}
