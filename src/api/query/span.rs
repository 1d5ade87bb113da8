//! Where the rows of `events` lie: its ranged partitions, and whether its default
//! partition holds a row.
//!
//! When the default partition holds nothing, every row lies between the oldest
//! partition's start and the newest one's end, and a page bounded by that span in
//! literals lets PostgreSQL leave the default partition out of the plan. With it
//! gone, the partitions are ordered by time and a newest-first page is planned as
//! an ordered Append: partition after partition, each started only when the page
//! still needs rows, instead of a Merge Append that descends every partition's
//! index before it returns a row (a session of 300 events spread over 90 days: 95
//! descents for a page that lies in the newest 30).

use std::sync::{Arc, Mutex};

use crate::api::problem::{Problem, unavailable};
use crate::storage::partition::{Range, parse_bound, pg_time};

/// Ranged partitions (name, range), newest first.
type Ranged = Arc<Vec<(String, Range)>>;

/// The partitions of `events`.
pub(crate) struct Partitions {
    /// The ranged partitions, newest first.
    pub ranged: Ranged,
    /// The default partition holds a row (which may lie at any time).
    pub default_holds: bool,
}

impl Partitions {
    /// The times every row lies within, when that is known: the default partition
    /// holds nothing.
    pub fn span(&self) -> Option<Range> {
        if self.default_holds {
            return None;
        }
        let start = self.ranged.iter().map(|(_, r)| r.start).min()?;
        let end = self.ranged.iter().map(|(_, r)| r.end).max()?;
        Some(Range { start, end })
    }
}

/// The ranged partitions of `events` as last read, with the set of their table
/// oids they were read for. Reading the bounds costs ~0.8 ms at 95 partitions
/// (PostgreSQL prints each bound), more than a page; which tables are attached
/// costs an index lookup. So each request asks which tables are attached and
/// reads the bounds again only when that set changed (a partition made, dropped
/// or attached). Partitions are never re-bounded in place: a changed range is a
/// new table.
#[derive(Default)]
pub struct KnownPartitions {
    cached: Mutex<Option<(Vec<i64>, Ranged)>>,
}

impl KnownPartitions {
    /// The partitions of `events` now; `None` when it is not partitioned.
    pub(crate) async fn read(
        &self,
        client: &deadpool_postgres::Client,
    ) -> Result<Option<Partitions>, Problem> {
        // Both statements prepared once per connection: parsing them is most of
        // their cost.
        let attached = client
            .prepare_cached(
                "SELECT c.relkind = 'p', \
                        coalesce((SELECT array_agg(inhrelid::int8 ORDER BY inhrelid) \
                                  FROM pg_inherits WHERE inhparent = c.oid), '{}'), \
                        to_regclass('events_default') IS NOT NULL \
                 FROM pg_class c WHERE c.oid = to_regclass('events')",
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = client
            .query_opt(&attached, &[])
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let (partitioned, oids, has_default): (bool, Vec<i64>, bool) =
            (row.get(0), row.get(1), row.get(2));
        if !partitioned {
            return Ok(None);
        }
        let known = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(read_for, _)| *read_for == oids)
            .map(|(_, ranged)| ranged.clone());
        let ranged = match known {
            Some(ranged) => ranged,
            None => {
                let ranged = Arc::new(ranged(client).await?);
                *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((oids, ranged.clone()));
                ranged
            }
        };
        // Asked on every request: a row lands in the default partition whenever a
        // publisher dates an event where no partition is (until the maintenance job
        // moves it), and a page must not miss it. Asked through `events` (the API's
        // role may read no partition by name): the times no ranged partition covers,
        // in literals, leave only the default partition in the plan.
        let default_holds = has_default && {
            let holds = client
                .prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE {})",
                    uncovered(&ranged)
                ))
                .await
                .map_err(unavailable)?;
            client
                .query_one(&holds, &[])
                .await
                .map_err(unavailable)?
                .get(0)
        };
        Ok(Some(Partitions {
            ranged,
            default_holds,
        }))
    }
}

/// The ranged partitions of `events`, newest first.
async fn ranged(client: &tokio_postgres::Client) -> Result<Vec<(String, Range)>, Problem> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass('events')",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let mut ranged: Vec<(String, Range)> = rows
        .iter()
        .filter_map(|r| parse_bound(&r.get::<_, String>(1)).map(|range| (r.get(0), range)))
        .collect();
    ranged.sort_by_key(|p| std::cmp::Reverse(p.1.start));
    Ok(ranged)
}

/// A condition on the time column true of the times no range of `ranged` covers:
/// where the rows of the default partition lie.
fn uncovered(ranged: &[(String, Range)]) -> String {
    let mut ranges: Vec<Range> = ranged.iter().map(|(_, r)| *r).collect();
    ranges.sort_by_key(|r| r.start);
    let mut gaps = Vec::new();
    let mut covered_to: Option<chrono::DateTime<chrono::Utc>> = None;
    for r in &ranges {
        match covered_to {
            None => gaps.push(format!(
                "\"timestamp\" < '{}'::timestamptz",
                pg_time(r.start)
            )),
            Some(to) if to < r.start => gaps.push(format!(
                "(\"timestamp\" >= '{}'::timestamptz AND \"timestamp\" < '{}'::timestamptz)",
                pg_time(to),
                pg_time(r.start)
            )),
            Some(_) => {}
        }
        covered_to = Some(covered_to.map_or(r.end, |to| to.max(r.end)));
    }
    match covered_to {
        Some(to) => gaps.push(format!("\"timestamp\" >= '{}'::timestamptz", pg_time(to))),
        None => gaps.push("TRUE".to_owned()),
    }
    gaps.join(" OR ")
}

/// `span` as a condition on the time column, in literals (a parameter would leave
/// the pruning to the executor, after the plan has chosen a Merge Append).
pub(crate) fn within(span: Range) -> String {
    format!(
        "\"timestamp\" >= '{}'::timestamptz AND \"timestamp\" < '{}'::timestamptz",
        pg_time(span.start),
        pg_time(span.end)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn day(d: u32) -> Range {
        let start = Utc.with_ymd_and_hms(2026, 12, d, 0, 0, 0).unwrap();
        Range {
            start,
            end: start + chrono::Duration::days(1),
        }
    }

    #[test]
    fn the_span_runs_from_the_oldest_start_to_the_newest_end_when_the_default_is_empty() {
        let p = Partitions {
            ranged: Arc::new(vec![("b".into(), day(3)), ("a".into(), day(1))]),
            default_holds: false,
        };
        let span = p.span().unwrap();
        assert_eq!(span.start, day(1).start);
        assert_eq!(span.end, day(3).end);
        assert!(span.contains(day(2).start));
        assert_eq!(
            within(span),
            "\"timestamp\" >= '2026-12-01 00:00:00.000000+00'::timestamptz \
             AND \"timestamp\" < '2026-12-04 00:00:00.000000+00'::timestamptz"
        );
    }

    #[test]
    fn the_uncovered_times_are_before_after_and_between_the_ranges() {
        let ranged = vec![
            ("c".to_owned(), day(5)),
            ("b".to_owned(), day(2)),
            ("a".to_owned(), day(1)),
        ];
        assert_eq!(
            uncovered(&ranged),
            "\"timestamp\" < '2026-12-01 00:00:00.000000+00'::timestamptz OR \
             (\"timestamp\" >= '2026-12-03 00:00:00.000000+00'::timestamptz \
             AND \"timestamp\" < '2026-12-05 00:00:00.000000+00'::timestamptz) OR \
             \"timestamp\" >= '2026-12-06 00:00:00.000000+00'::timestamptz"
        );
        assert_eq!(uncovered(&[]), "TRUE");
    }

    #[test]
    fn there_is_no_span_while_the_default_partition_holds_a_row_or_nothing_is_ranged() {
        let held = Partitions {
            ranged: Arc::new(vec![("a".into(), day(1))]),
            default_holds: true,
        };
        assert!(held.span().is_none());
        let bare = Partitions {
            ranged: Arc::default(),
            default_holds: false,
        };
        assert!(bare.span().is_none());
    }
}
