//! The maintenance job: partitions made ahead, the default partition drained,
//! RETENTION applied (archiving first when ARCHIVE_DIR is set), metrics exported.
//!
//! It runs at start-up and every MAINTENANCE_INTERVAL, on a connection of its
//! own, under a session advisory lock taken with `pg_try_advisory_lock`: when
//! several instances share a database, one runs it and the others skip that turn.
//! Every statement waits at most `db::LOCK_TIMEOUT` for a lock; a run that
//! could not get one fails, is counted, and the next run does the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::partition::{self, Layout, Partition, PartitionInterval, Range};
use super::{StorageError, Table, archive, statistics};
use crate::metrics::Metrics;

/// Key of the maintenance job's advisory lock ("cs-maint" in ASCII).
pub const MAINTENANCE_LOCK: i64 = 0x6373_2d6d_6169_6e74;

/// Intervals ahead of the current one that always have a partition.
pub const AHEAD: u32 = 2;

/// Partitions one run creates per table at most. The window bounds how many
/// partitions of an interval there can be (about 400 days' worth by default);
/// this bounds one run's work and lock time. What is left is created by the
/// next runs, exported as `candystore_partitions_deferred` and alerted on.
pub const MAX_CREATED_PER_RUN: usize = 100;

#[derive(Clone, Debug)]
pub struct Options {
    /// PARTITION_INTERVAL and the window around now it applies in.
    pub layout: Layout,
    /// Partitions that end more than this long ago are dropped; `None` keeps all.
    pub retention: Option<Duration>,
    /// Where retention archives a partition before it drops it.
    pub archive_dir: Option<PathBuf>,
    /// AUDIT_KEY: the leaf each dropped range adds to the audit tree is attested.
    pub keyring: Option<std::sync::Arc<crate::audit::attest::Keyring>>,
}

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Another instance held the lock: this run did nothing.
    pub skipped: bool,
    pub created: Vec<String>,
    /// Rows moved out of the default partitions.
    pub drained: u64,
    /// Partitions analysed because their statistics were missing or far behind
    /// (each moved one is analysed by the move itself).
    pub analyzed: Vec<String>,
    pub archived: Vec<String>,
    pub dropped: Vec<String>,
    /// Partitions wanted but left for the next run ([`MAX_CREATED_PER_RUN`]).
    pub deferred: usize,
    /// Ranges whose partition could not be made this run (logged, counted,
    /// retried by the next run); the rest of the run went on.
    pub failed: Vec<String>,
}

/// The times whose partitions must exist: now and [`AHEAD`] intervals on.
pub fn ahead(now: DateTime<Utc>, interval: PartitionInterval) -> Vec<DateTime<Utc>> {
    let mut t = interval.floor(now);
    let mut out = vec![now];
    for _ in 0..AHEAD {
        t = interval.next(t);
        out.push(t);
    }
    out
}

/// The partitions retention drops at `now`: every one whose range ended before
/// `now - retention`, oldest first. Never the default partition.
pub fn past_retention(
    partitions: &[Partition],
    now: DateTime<Utc>,
    retention: Duration,
) -> Vec<&Partition> {
    let Ok(window) = chrono::Duration::from_std(retention) else {
        return Vec::new();
    };
    let cutoff = now - window;
    partitions
        .iter()
        .filter(|p| p.range.is_some_and(|r| r.end <= cutoff))
        .collect()
}

/// One run, at `now`, on `client` (a [`super::connect`] connection).
pub async fn run_once(
    client: &mut Client,
    opts: &Options,
    now: DateTime<Utc>,
    metrics: Option<&Metrics>,
) -> Result<Report, StorageError> {
    if !try_lock(client).await? {
        tracing::debug!("maintenance: another instance holds the lock; skipping this run");
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    }
    let result = run_locked(client, opts, now, metrics).await;
    unlock(client).await;
    result
}

/// Takes the maintenance lock for this session if no other session holds it.
pub(crate) async fn try_lock(client: &Client) -> Result<bool, StorageError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await?
        .get(0))
}

/// Releases it (ending the session would too).
pub(crate) async fn unlock(client: &Client) {
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await;
}

async fn run_locked(
    client: &mut Client,
    opts: &Options,
    now: DateTime<Utc>,
    metrics: Option<&Metrics>,
) -> Result<Report, StorageError> {
    let mut report = Report::default();
    for table in Table::ALL {
        if !super::is_partitioned(client, table).await? {
            tracing::warn!(
                table = table.name(),
                "maintenance: the table is not partitioned yet; run `candystore migrate`"
            );
            continue;
        }
        let mut existing = partition::ranges_in(client, table.name()).await?;
        // The far-future partition's head, once the window reaches it.
        if let Some((far, at)) = opts.layout.split_due(now, &existing) {
            match partition::split_head(client, table, far, at).await {
                Ok(moved) => {
                    tracing::info!(table = table.name(), from = %far.start, to = %at, rows_moved_to_default = moved, "far-future partition's head split off");
                    existing = partition::ranges_in(client, table.name()).await?;
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => failed(table, far, &e, metrics, &mut report),
            }
        }
        // Ahead, then whatever the default partition holds, in time order.
        let mut wanted = ahead(now, opts.layout.interval);
        let stray = client
            .query(
                &format!(
                    "SELECT DISTINCT date_trunc('day', {t} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day FROM {d} ORDER BY day LIMIT 1000",
                    t = table.time_column(),
                    d = table.default_partition()
                ),
                &[],
            )
            .await?;
        wanted.extend(stray.iter().map(|r| r.get::<_, DateTime<Utc>>(0)));
        let mut created = 0;
        let mut deferred = 0;
        for t in wanted {
            let Some(range) = opts.layout.range_for(t, now, &existing) else {
                continue;
            };
            if created >= MAX_CREATED_PER_RUN {
                deferred += 1;
                existing.push(range);
                continue;
            }
            // Tried once per run: a range that fails is not tried again below.
            existing.push(range);
            match partition::create(client, table, range).await {
                // A writer made one there first.
                Ok(None) => {}
                Ok(Some((name, moved))) => {
                    created += 1;
                    tracing::info!(table = table.name(), partition = %name, from = %range.start, to = %range.end, rows_moved_from_default = moved, "partition created");
                    if let Some(m) = metrics {
                        m.storage.created.with_label_values(&[table.name()]).inc();
                    }
                    report.drained += moved;
                    report.created.push(name);
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => failed(table, range, &e, metrics, &mut report),
            }
        }
        if deferred > 0 {
            tracing::warn!(
                table = table.name(),
                deferred,
                max = MAX_CREATED_PER_RUN,
                "maintenance: more partitions wanted than one run creates; the next runs go on"
            );
        }
        report.deferred += deferred;
        if let Some(m) = metrics {
            m.storage
                .deferred
                .with_label_values(&[table.name()])
                .set(deferred as i64);
        }
        // Statistics: whatever lost or never had them (the default partition after
        // a move, partitions filled while no worker got to them).
        let refreshed = statistics::refresh(client, table).await?;
        if !refreshed.analyzed.is_empty() {
            tracing::info!(table = table.name(), partitions = ?refreshed.analyzed, left = refreshed.left, "partitions analysed: their statistics were missing or far behind");
        }
        if let Some(m) = metrics {
            m.storage
                .analyzed
                .with_label_values(&[table.name()])
                .inc_by(refreshed.analyzed.len() as u64);
            m.storage
                .unanalyzed
                .with_label_values(&[table.name()])
                .set(statistics::unanalyzed(client, table).await?);
        }
        report.analyzed.extend(refreshed.analyzed);
        if let Some(retention) = opts.retention {
            let partitions = partition::list(client, table).await?;
            for p in past_retention(&partitions, now, retention) {
                let range = p.range.expect("never the default partition");
                if let Some(dir) = &opts.archive_dir {
                    let entry = archive::archive_partition(
                        client,
                        table,
                        p,
                        dir,
                        None,
                        archive::BACKGROUND_PACE,
                    )
                    .await?;
                    tracing::info!(table = table.name(), partition = %p.name, rows = entry.rows, file = %entry.file, "partition archived");
                    if let Some(m) = metrics {
                        m.storage.archived.with_label_values(&[table.name()]).inc();
                    }
                    report.archived.push(p.name.clone());
                }
                let rows =
                    drop_partition(client, table, &p.name, range, opts.keyring.as_deref()).await?;
                tracing::info!(table = table.name(), partition = %p.name, from = %range.start, to = %range.end, rows, bytes = p.bytes, "partition dropped by retention");
                if let Some(m) = metrics {
                    m.storage.dropped.with_label_values(&[table.name()]).inc();
                }
                report.dropped.push(p.name.clone());
            }
        }
        if let Some(m) = metrics {
            export(client, table, m).await?;
        }
    }
    Ok(report)
}

/// Whether an error ends the run (the connection is gone) rather than just the
/// range it happened on.
fn is_fatal(e: &StorageError) -> bool {
    match e {
        StorageError::Db(e) => e.is_closed(),
        StorageError::Connect(_) => true,
        _ => false,
    }
}

/// A range whose partition could not be made or split: logged and counted, and
/// the run goes on. The next run tries it again.
fn failed(
    table: Table,
    range: Range,
    e: &StorageError,
    metrics: Option<&Metrics>,
    report: &mut Report,
) {
    tracing::error!(table = table.name(), from = %range.start, to = %range.end, error = %crate::telemetry::error_chain(e), "maintenance: partition failed; skipped until the next run");
    if let Some(m) = metrics {
        m.storage
            .range_failures
            .with_label_values(&[table.name()])
            .inc();
    }
    report
        .failed
        .push(format!("{} {}..{}", table.name(), range.start, range.end));
}

/// Drops a partition and the redelivery keys of its range, and records the range
/// in `dropped_partitions` and, for `events`, as a leaf of the audit tree (so a
/// range recorded with SQL excuses no missing event) and takes its rows out of
/// the session counts, in one transaction.
/// Returns the rows it held, by the statistics.
pub async fn drop_partition(
    client: &mut Client,
    table: Table,
    name: &str,
    range: Range,
    keyring: Option<&crate::audit::attest::Keyring>,
) -> Result<i64, StorageError> {
    let (keys, key_time) = table.keys();
    let rows = super::estimated_rows(client, name).await?;
    let tx = client.transaction().await?;
    if table == Table::Events {
        // Session summaries count what is stored: the rows go, their counts too.
        super::catalog::uncount_dropped(&tx, name).await?;
    }
    tx.batch_execute(&format!("DROP TABLE {name}")).await?;
    tx.execute(
        &format!("DELETE FROM {keys} WHERE {key_time} >= $1 AND {key_time} < $2"),
        &[&range.start, &range.end],
    )
    .await?;
    tx.execute(
        "INSERT INTO dropped_partitions (table_name, partition, from_time, to_time, rows) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&table.name(), &name, &range.start, &range.end, &rows],
    )
    .await?;
    if table == Table::Events && crate::audit::store::has_tree(&tx).await? {
        let record =
            crate::audit::leaf::retention_record(table.name(), name, range.start, range.end, rows);
        crate::audit::store::add_leaf(&tx, &crate::audit::leaf::retention(&record, keyring))
            .await?;
    }
    tx.commit().await?;
    Ok(rows)
}

async fn export(client: &Client, table: Table, m: &Metrics) -> Result<(), StorageError> {
    let partitions = partition::list(client, table).await?;
    let t = table.name();
    m.storage
        .partitions
        .with_label_values(&[t])
        .set(partitions.len() as i64);
    if let Some(oldest) = partitions.iter().find_map(|p| p.range) {
        m.storage
            .oldest_partition
            .with_label_values(&[t])
            .set(oldest.start.timestamp() as f64);
    }
    // Dropped partitions must not linger as series.
    for p in partitions.iter() {
        m.storage
            .partition_bytes
            .with_label_values(&[t, &p.name])
            .set(p.bytes);
    }
    let live: std::collections::HashSet<&str> =
        partitions.iter().map(|p| p.name.as_str()).collect();
    for family in prometheus::core::Collector::collect(&m.storage.partition_bytes) {
        for metric in family.get_metric() {
            let labels: Vec<(&str, &str)> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let table_label = labels.iter().find(|(n, _)| *n == "table").map(|l| l.1);
            let part = labels.iter().find(|(n, _)| *n == "partition").map(|l| l.1);
            if let (Some(tl), Some(p)) = (table_label, part)
                && tl == t
                && !live.contains(p)
            {
                let _ = m.storage.partition_bytes.remove_label_values(&[tl, p]);
            }
        }
    }
    let default_rows: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1000000) s",
                table.default_partition()
            ),
            &[],
        )
        .await?
        .get(0);
    m.storage
        .default_rows
        .with_label_values(&[t])
        .set(default_rows);
    Ok(())
}

/// Maintenance as a background job: now, then every `every`.
pub struct MaintenanceJob {
    pub opts: Options,
    pub every: Duration,
    pub metrics: Arc<Metrics>,
    /// Rung by a writer that left rows in the default partition
    /// (`store::postgres::partitions`), so they are moved out in seconds, not at the next
    /// scheduled run.
    pub wake: crate::jobs::Wake,
}

impl crate::jobs::Job for MaintenanceJob {
    const NAME: &'static str = "maintenance";
    type Error = StorageError;

    fn retry_in(&self) -> Duration {
        self.every
    }

    fn wake(&self) -> Option<crate::jobs::Wake> {
        Some(self.wake.clone())
    }

    async fn step(&mut self, client: &mut Client) -> Result<Duration, StorageError> {
        let m = &self.metrics.storage;
        m.last_run.set(Utc::now().timestamp() as f64);
        match run_once(client, &self.opts, Utc::now(), Some(&self.metrics)).await {
            Ok(report) => {
                m.last_success.set(Utc::now().timestamp() as f64);
                if !report.skipped {
                    tracing::debug!(?report, "maintenance run done");
                }
                Ok(self.every)
            }
            Err(e) => {
                m.failures.inc();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn part(name: &str, a: &str, b: &str) -> Partition {
        Partition {
            name: name.into(),
            range: Some(Range {
                start: t(a),
                end: t(b),
            }),
            bytes: 0,
        }
    }

    #[test]
    fn ahead_means_the_current_interval_and_the_next_two() {
        let now = t("2026-11-28T13:00:00Z");
        assert_eq!(
            ahead(now, PartitionInterval::Day),
            vec![now, t("2026-11-29T00:00:00Z"), t("2026-11-30T00:00:00Z")]
        );
        assert_eq!(
            ahead(now, PartitionInterval::Month),
            vec![now, t("2026-12-01T00:00:00Z"), t("2027-01-01T00:00:00Z")]
        );
    }

    #[test]
    fn retention_takes_only_partitions_that_ended_before_the_window() {
        let parts = vec![
            part("p1", "2026-08-29T00:00:00Z", "2026-08-30T00:00:00Z"),
            part("p2", "2026-08-30T00:00:00Z", "2026-08-31T00:00:00Z"),
            part("p3", "2026-08-31T00:00:00Z", "2026-09-01T00:00:00Z"),
            Partition {
                name: "default".into(),
                range: None,
                bytes: 0,
            },
        ];
        // 90 days before 2026-11-28T12:00 is 2026-08-30T12:00: p2 still holds
        // events inside the window, so only p1 goes.
        let now = t("2026-11-28T12:00:00Z");
        let gone: Vec<_> = past_retention(&parts, now, Duration::from_secs(90 * 86_400))
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(gone, vec!["p1"]);
    }
}
