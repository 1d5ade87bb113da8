//! Partitions made before a batch is written: a backlog of days (after an
//! outage) or a backfill of history would otherwise land in the default partition,
//! and every day of it would then have to be moved out under a lock on the whole
//! table. Before writing, the writer looks up each row's time in the partitions it
//! knows; a time no partition covers gets its partition first
//! (`storage::partition::Layout`: an interval within the window around now, a year
//! before it, the far future after it), empty, so made in milliseconds without
//! moving a row (`partition::create_empty`; when the default partition already
//! holds rows of that range, they and the new ones wait for the maintenance job's
//! move).
//!
//! Bounded, so a publisher choosing its dates cannot make a batch wait for
//! hundreds of partitions nor make thousands: at most [`MAX_PER_BATCH`] new ranges
//! a batch, and outside the window at most [`MAX_OUTSIDE_PER_HOUR`] an hour per
//! writer (a backfill of history spans a few years; a publisher's random dates
//! are left to the maintenance job, which bounds its own work per run and alerts).
//! A partition that cannot be made is logged and left to the maintenance job too:
//! it never fails the batch.
//!
//! Rows of the window left in the default partition (past the batch's bound, or
//! of a range the default partition already held rows of, which only a move can
//! make) wake the maintenance job, at most once per [`WAKE_GAP`] a writer, so they
//! are moved out within seconds rather than at its next scheduled run. Rows
//! outside the window wait for that run: a publisher's dates must not set the
//! pace at which partitions are made.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::jobs::Wake;
use crate::metrics::Metrics;
use crate::storage::partition::{self, Layout, Range};
use crate::storage::{self, StorageError, Table};

/// New partitions one batch may make before it is written.
pub const MAX_PER_BATCH: usize = 32;
/// New partitions outside the window one writer may make in an hour.
pub const MAX_OUTSIDE_PER_HOUR: usize = 24;
/// After a partition could not be made (or the tables are not partitioned yet,
/// during the online migration), batches are written without looking for this
/// long: a failing creation is not retried, and logged, on every batch. Short,
/// since what a backlog writes meanwhile lands in the default partition.
const PAUSE_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(5);
/// A writer wakes the maintenance job at most this often (a publisher's dates
/// outside every bound would otherwise wake it on every batch).
pub const WAKE_GAP: std::time::Duration = std::time::Duration::from_secs(10);

/// What one writer knows of the partitions, and its connection to make them.
pub struct PartitionsAhead {
    target: crate::db::PgTarget,
    layout: Layout,
    client: Option<Client>,
    /// The ranges of `events` and `dead_letter`, sorted by start; `None` until
    /// first read (and after a failure).
    known: Option<[Vec<Range>; 2]>,
    /// No look before this (after a failure).
    paused_until: Option<tokio::time::Instant>,
    /// When this writer made its latest partitions outside the window.
    outside: std::collections::VecDeque<tokio::time::Instant>,
    /// The maintenance job's wake, and when this writer last rang it.
    maintenance: Wake,
    woke_at: Option<tokio::time::Instant>,
    /// Ranges `create_empty` declined (the default partition holds rows of them:
    /// the maintenance job's move), and when: not asked for again for
    /// [`WAKE_GAP`], so a backlog of such a range does not cost every batch a
    /// look under the partition lock.
    declined: Vec<(Table, Range, tokio::time::Instant)>,
}

fn index(table: Table) -> usize {
    match table {
        Table::Events => 0,
        Table::DeadLetter => 1,
    }
}

/// Whether a sorted list of ranges covers `t`.
fn covered(ranges: &[Range], t: DateTime<Utc>) -> bool {
    let i = ranges.partition_point(|r| r.start <= t);
    i > 0 && ranges[i - 1].contains(t)
}

impl PartitionsAhead {
    pub fn new(target: crate::db::PgTarget, layout: Layout, maintenance: Wake) -> Self {
        Self {
            target,
            layout,
            client: None,
            known: None,
            paused_until: None,
            outside: std::collections::VecDeque::new(),
            maintenance,
            woke_at: None,
            declined: Vec::new(),
        }
    }

    /// Wakes the maintenance job when a row of the batch within the window has no
    /// partition (`known` as read after this batch's creations), at most once per
    /// [`WAKE_GAP`].
    fn wake_maintenance_if_left(&mut self, times: &[(Table, DateTime<Utc>)], now: DateTime<Utc>) {
        let Some(known) = &self.known else { return };
        let window = self.layout.window(now);
        if !times
            .iter()
            .any(|&(table, t)| window.contains(t) && !covered(&known[index(table)], t))
        {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.woke_at.is_some_and(|at| now < at + WAKE_GAP) {
            return;
        }
        self.woke_at = Some(now);
        tracing::debug!("writer: rows left in the default partition; waking the maintenance job");
        self.maintenance.wake();
    }

    /// Makes the partitions the batch's times need (see the module's docs).
    pub async fn ensure(
        &mut self,
        times: &[(Table, DateTime<Utc>)],
        now: DateTime<Utc>,
        metrics: &Metrics,
    ) {
        if self
            .paused_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return;
        }
        let outcome = self.ensure_inner(times, now, metrics).await;
        self.wake_maintenance_if_left(times, now);
        if let Err(e) = outcome {
            if matches!(e, StorageError::NotPartitioned { .. }) {
                tracing::debug!(
                    "writer: the tables are not partitioned yet; no partitions made ahead"
                );
            } else {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "writer: cannot make a partition ahead of a batch; its rows wait in the default partition for the maintenance job");
            }
            self.paused_until = Some(tokio::time::Instant::now() + PAUSE_AFTER_FAILURE);
            self.known = None;
            if self.client.as_ref().is_some_and(Client::is_closed) {
                self.client = None;
            }
        }
    }

    async fn ensure_inner(
        &mut self,
        times: &[(Table, DateTime<Utc>)],
        now: DateTime<Utc>,
        metrics: &Metrics,
    ) -> Result<(), StorageError> {
        let window = self.layout.window(now);
        if self.known.is_none() {
            self.known = Some(self.read().await?);
        }
        let known = self.known.as_ref().expect("read above");
        let hour_ago = tokio::time::Instant::now() - std::time::Duration::from_secs(3600);
        while self.outside.front().is_some_and(|t| *t < hour_ago) {
            self.outside.pop_front();
        }
        let mut outside_left = MAX_OUTSIDE_PER_HOUR.saturating_sub(self.outside.len());
        let declined_since = tokio::time::Instant::now() - WAKE_GAP;
        self.declined.retain(|(_, _, at)| *at >= declined_since);
        // The ranges wanted, at most MAX_PER_BATCH, each once.
        let mut wanted: Vec<(Table, Range)> = Vec::new();
        for &(table, t) in times {
            if covered(&known[index(table)], t) {
                continue;
            }
            if wanted.iter().any(|(w, r)| *w == table && r.contains(t))
                || self
                    .declined
                    .iter()
                    .any(|(w, r, _)| *w == table && r.contains(t))
            {
                continue;
            }
            if wanted.len() == MAX_PER_BATCH {
                break;
            }
            if !window.contains(t) {
                if outside_left == 0 {
                    continue;
                }
                outside_left -= 1;
                self.outside.push_back(tokio::time::Instant::now());
            }
            if let Some(range) = self.layout.range_for(t, now, &known[index(table)]) {
                wanted.push((table, range));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let client = match &mut self.client {
            Some(c) if !c.is_closed() => c,
            slot => slot.insert(storage::connect(&self.target).await?),
        };
        let mut declined = Vec::new();
        for (table, range) in wanted {
            if let Some(name) = partition::create_empty(client, table, range).await? {
                tracing::info!(table = table.name(), partition = %name, from = %range.start, to = %range.end, "partition created ahead of a batch");
                metrics
                    .storage
                    .created
                    .with_label_values(&[table.name()])
                    .inc();
            } else {
                declined.push((table, range));
            }
        }
        // Ours, and whatever another writer or the maintenance job made meanwhile.
        let known = self.read().await?;
        let at = tokio::time::Instant::now();
        self.declined.extend(
            declined
                .into_iter()
                .filter(|(table, range)| !covered(&known[index(*table)], range.start))
                .map(|(table, range)| (table, range, at)),
        );
        self.known = Some(known);
        Ok(())
    }

    async fn read(&mut self) -> Result<[Vec<Range>; 2], StorageError> {
        let client = match &mut self.client {
            Some(c) if !c.is_closed() => c,
            slot => slot.insert(storage::connect(&self.target).await?),
        };
        let mut out = [Vec::new(), Vec::new()];
        for table in Table::ALL {
            if !storage::is_partitioned(client, table).await? {
                return Err(StorageError::NotPartitioned {
                    table: table.name(),
                });
            }
            let mut ranges = partition::ranges_in(client, table.name()).await?;
            ranges.sort();
            out[index(table)] = ranges;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_time_is_covered_only_by_a_range_that_holds_it() {
        let day = |a: &str, b: &str| Range {
            start: t(a),
            end: t(b),
        };
        let ranges = vec![
            day("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"),
            day("2026-11-03T00:00:00Z", "2026-11-04T00:00:00Z"),
        ];
        assert!(covered(&ranges, t("2026-11-01T00:00:00Z")));
        assert!(covered(&ranges, t("2026-11-03T23:59:59Z")));
        assert!(!covered(&ranges, t("2026-11-02T00:00:00Z")));
        assert!(!covered(&ranges, t("2026-10-31T23:59:59Z")));
        assert!(!covered(&ranges, t("2026-11-04T00:00:00Z")));
        assert!(!covered(&[], t("2026-11-04T00:00:00Z")));
    }
}
