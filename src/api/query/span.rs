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

use crate::api::problem::{Problem, unavailable};
use crate::storage::partition::{Range, parse_bound, pg_time};

/// The partitions of `events`.
pub(crate) struct Partitions {
    /// The ranged partitions, newest first.
    pub ranged: Vec<(String, Range)>,
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

/// The partitions of `events`; `None` when it is not partitioned.
pub(crate) async fn partitions(
    client: &tokio_postgres::Client,
) -> Result<Option<Partitions>, Problem> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid), \
                    c.relname = 'events_default' AND EXISTS (SELECT 1 FROM events_default) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass('events')",
            &[],
        )
        .await
        .map_err(unavailable)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut ranged = Vec::new();
    let mut default_holds = false;
    for r in &rows {
        let name: String = r.get(0);
        let bound: String = r.get(1);
        default_holds |= r.get::<_, bool>(2);
        if let Some(range) = parse_bound(&bound) {
            ranged.push((name, range));
        }
    }
    ranged.sort_by_key(|p| std::cmp::Reverse(p.1.start));
    Ok(Some(Partitions {
        ranged,
        default_holds,
    }))
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
            ranged: vec![("b".into(), day(3)), ("a".into(), day(1))],
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
    fn there_is_no_span_while_the_default_partition_holds_a_row_or_nothing_is_ranged() {
        let held = Partitions {
            ranged: vec![("a".into(), day(1))],
            default_holds: true,
        };
        assert!(held.span().is_none());
        let bare = Partitions {
            ranged: vec![],
            default_holds: false,
        };
        assert!(bare.span().is_none());
    }
}
