//! Time ranges of partitions: the interval they are cut by, which range a time
//! falls in, the partitions a table has, and creating one, moving any rows the
//! default partition holds for its range into it.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use tokio_postgres::Client;

use super::{StorageError, Table};

/// How `events` and `dead_letter` are cut: PARTITION_INTERVAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionInterval {
    Day,
    /// ISO weeks, Monday 00:00 UTC to Monday.
    Week,
    /// Calendar months in UTC.
    Month,
}

impl PartitionInterval {
    /// Parses `1 day`, `1d`, `day`, `daily` (and the same for week and month).
    pub fn parse(s: &str) -> Option<Self> {
        let t: String = s
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let t = t.strip_prefix('1').unwrap_or(&t);
        match t {
            "d" | "day" | "days" | "daily" => Some(Self::Day),
            "w" | "week" | "weeks" | "weekly" => Some(Self::Week),
            "mo" | "month" | "months" | "monthly" => Some(Self::Month),
            _ => None,
        }
    }

    /// The start of the interval that holds `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let d = t.date_naive();
        let day = match self {
            Self::Day => d,
            Self::Week => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
            Self::Month => NaiveDate::from_ymd_opt(d.year(), d.month(), 1).expect("valid month"),
        };
        midnight(day)
    }

    /// The start of the interval after the one that starts at `start`.
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        let d = start.date_naive();
        let day = match self {
            Self::Day => d + Duration::days(1),
            Self::Week => d + Duration::days(7),
            Self::Month => {
                let (y, m) = if d.month() == 12 {
                    (d.year() + 1, 1)
                } else {
                    (d.year(), d.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1).expect("valid month")
            }
        };
        midnight(day)
    }
}

impl fmt::Display for PartitionInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Day => "1 day",
            Self::Week => "1 week",
            Self::Month => "1 month",
        })
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// `[start, end)` in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Range {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// The range a new partition for time `t` should cover: its interval, cut back
/// where it would overlap an existing partition (after PARTITION_INTERVAL changed,
/// say). `None` when a partition already holds `t`.
pub fn range_for(
    t: DateTime<Utc>,
    interval: PartitionInterval,
    existing: &[Range],
) -> Option<Range> {
    if existing.iter().any(|r| r.contains(t)) {
        return None;
    }
    let floor = interval.floor(t);
    Some(cut(
        Range {
            start: floor,
            end: interval.next(floor),
        },
        t,
        existing,
    ))
}

/// The part of `within` (which holds `t`) that no existing partition covers,
/// around `t`; `None` when a partition holds `t` already.
pub(crate) fn gap_within(t: DateTime<Utc>, within: Range, existing: &[Range]) -> Option<Range> {
    if existing.iter().any(|r| r.contains(t)) {
        return None;
    }
    Some(cut(within, t, existing))
}

/// `r` (which holds `t`) cut back to the gap between existing partitions that holds `t`.
fn cut(mut r: Range, t: DateTime<Utc>, existing: &[Range]) -> Range {
    for e in existing {
        if e.end <= t && e.end > r.start {
            r.start = e.end;
        }
        if e.start > t && e.start < r.end {
            r.end = e.start;
        }
    }
    r
}

/// The first instant no event time reaches: decode keeps years 1 to 9999, so
/// 10000-01-01 bounds the far future's partition.
pub fn end_of_time() -> DateTime<Utc> {
    midnight(NaiveDate::from_ymd_opt(10_000, 1, 1).expect("chrono reaches year 10000"))
}

/// How partitions are cut: by PARTITION_INTERVAL within a window around now, and
/// coarsely outside it, so that no publisher can make a partition per day of
/// history or of the future by choosing its events' dates.
///
/// Within `[now − past, now + future]` (widened to whole intervals): one partition
/// per interval. Before it: one per calendar year, cut at the window's start (the
/// window moves forward, so a year partition never re-enters it). After it: one
/// partition up to the end of time, whose head the maintenance job splits off
/// ([`Layout::split_due`]) as the window reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub interval: PartitionInterval,
    /// PARTITION_WINDOW_PAST.
    pub past: Duration,
    /// PARTITION_WINDOW_FUTURE.
    pub future: Duration,
}

impl Layout {
    /// Just an interval, with the default window (tests and tools).
    pub fn with_interval(interval: PartitionInterval) -> Self {
        Self {
            interval,
            past: Duration::days(DEFAULT_WINDOW_PAST_DAYS),
            future: Duration::days(DEFAULT_WINDOW_FUTURE_DAYS),
        }
    }

    /// The window at `now`, in whole intervals.
    pub fn window(&self, now: DateTime<Utc>) -> Range {
        let floor_past = self.interval.floor(clamp_time(now - self.past));
        let floor_future = self.interval.floor(clamp_time(now + self.future));
        Range {
            start: floor_past,
            end: self.interval.next(floor_future).min(end_of_time()),
        }
    }

    /// The range a new partition for `t` should cover at `now`; `None` when a
    /// partition already holds `t`.
    pub fn range_for(
        &self,
        t: DateTime<Utc>,
        now: DateTime<Utc>,
        existing: &[Range],
    ) -> Option<Range> {
        if existing.iter().any(|r| r.contains(t)) {
            return None;
        }
        let window = self.window(now);
        let base = if t < window.start {
            let year = NaiveDate::from_ymd_opt(t.year(), 1, 1).expect("1 january exists");
            let next = NaiveDate::from_ymd_opt(t.year() + 1, 1, 1).expect("1 january exists");
            Range {
                start: midnight(year),
                end: midnight(next).min(window.start),
            }
        } else if t >= window.end {
            Range {
                start: window.end,
                end: end_of_time(),
            }
        } else {
            let floor = self.interval.floor(t);
            Range {
                start: floor,
                end: self.interval.next(floor),
            }
        };
        Some(cut(base, t, existing))
    }

    /// The far-future partition whose head the window has reached at `now`, and
    /// where to split it: its rows before that point must go to partitions of
    /// their interval, or every event of those days would stay in one partition.
    pub fn split_due(
        &self,
        now: DateTime<Utc>,
        existing: &[Range],
    ) -> Option<(Range, DateTime<Utc>)> {
        let window = self.window(now);
        existing
            .iter()
            .find(|r| r.end == end_of_time() && r.start < window.end && window.end < r.end)
            .map(|r| (*r, window.end))
    }
}

/// PARTITION_WINDOW_PAST's default, in days.
pub const DEFAULT_WINDOW_PAST_DAYS: i64 = 366;
/// PARTITION_WINDOW_FUTURE's default, in days.
pub const DEFAULT_WINDOW_FUTURE_DAYS: i64 = 31;

/// `t`, kept within the years events can have (1 to 9999).
fn clamp_time(t: DateTime<Utc>) -> DateTime<Utc> {
    let first = midnight(NaiveDate::from_ymd_opt(1, 1, 1).expect("year 1 exists"));
    t.clamp(first, end_of_time())
}

/// A partition of a table, as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// `None` for the default partition.
    pub range: Option<Range>,
    /// Heap, TOAST and indexes.
    pub bytes: i64,
}

/// The partitions of `table`, oldest first, the default partition last.
pub async fn list(client: &Client, table: Table) -> Result<Vec<Partition>, StorageError> {
    list_in(client, table.name()).await
}

/// The ranges of `parent`'s partitions (the default partition has none).
pub(crate) async fn ranges_in(client: &Client, parent: &str) -> Result<Vec<Range>, StorageError> {
    Ok(list_in(client, parent)
        .await?
        .into_iter()
        .filter_map(|p| p.range)
        .collect())
}

pub(crate) async fn list_in(client: &Client, parent: &str) -> Result<Vec<Partition>, StorageError> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid), pg_total_relation_size(c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1)",
            &[&parent],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.get(0);
        let bound: String = r.get(1);
        let range = if bound.trim() == "DEFAULT" {
            None
        } else {
            Some(parse_bound(&bound).ok_or_else(|| StorageError::Bound {
                partition: name.clone(),
                bound: bound.clone(),
            })?)
        };
        out.push(Partition {
            name,
            range,
            bytes: r.get(2),
        });
    }
    out.sort_by_key(|p| (p.range.is_none(), p.range));
    Ok(out)
}

/// Parses `FOR VALUES FROM ('2026-11-28 00:00:00+00') TO ('2026-11-29 00:00:00+00')`,
/// as PostgreSQL prints it in a session whose TimeZone is UTC.
pub fn parse_bound(bound: &str) -> Option<Range> {
    let mut quoted = bound.split('\'').skip(1).step_by(2);
    let start = parse_pg_time(quoted.next()?)?;
    let end = parse_pg_time(quoted.next()?)?;
    Some(Range { start, end })
}

fn parse_pg_time(s: &str) -> Option<DateTime<Utc>> {
    // chrono reads a year of more than four digits only with a sign.
    let year_digits = s.find('-')?;
    let signed;
    let s = if year_digits > 4 {
        signed = format!("+{s}");
        &signed
    } else {
        s
    };
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The name of the partition of `table` that starts at `start`.
pub fn partition_name(table: Table, start: DateTime<Utc>) -> String {
    format!("{}_p{}", table.name(), start.format("%Y%m%d"))
}

/// A time as a PostgreSQL literal, for every time a partition can be bounded by
/// (years 1 to 10000). chrono writes year 10000 as `+10000`, which PostgreSQL
/// refuses, so the year is written here.
pub(crate) fn pg_time(t: DateTime<Utc>) -> String {
    format!("{:04}-{}", t.year(), t.format("%m-%d %H:%M:%S%.6f+00"))
}

/// Creates the partition of `table` for `range` and attaches it, moving into it
/// any rows the default partition holds for that range, in one transaction.
///
/// Locks, each waited for at most the session's `lock_timeout`. When the default
/// partition holds nothing of the range (the usual case: partitions are made
/// ahead): EXCLUSIVE on the default partition (writes routed to it wait, reads go
/// on), then, to attach, SHARE UPDATE EXCLUSIVE on the table (neither reads nor
/// writes wait) and ACCESS EXCLUSIVE on the default partition for the scan that
/// proves it holds nothing of the range: milliseconds while it is small, as the
/// maintenance job keeps it.
///
/// When rows must move, ACCESS EXCLUSIVE on the whole table first, so nothing
/// reads while they move: under the weaker lock, a query planned with the old
/// partitions and run after the commit would find the moved rows in neither
/// place (a count briefly short). Readers and writers wait for the move, which
/// takes as long as the rows the default partition held for the range.
///
/// Partitions are made by the maintenance job and, ahead of a batch that needs
/// one, by the writers (`store::postgres::partitions`): every creation takes the session
/// advisory lock [`PARTITION_LOCK`] and looks at the partitions again under it,
/// so `None` says another session made one overlapping `range` first.
pub async fn create(
    client: &mut Client,
    table: Table,
    range: Range,
) -> Result<Option<(String, u64)>, StorageError> {
    create_in(client, table, table.name(), range).await
}

/// Key of the session advisory lock every partition creation takes ("cs-parts").
pub const PARTITION_LOCK: i64 = 0x6373_2d70_6172_7473;

/// As [`create`], under a parent of another name (the online migration's `_new`).
pub(crate) async fn create_in(
    client: &mut Client,
    table: Table,
    parent: &str,
    range: Range,
) -> Result<Option<(String, u64)>, StorageError> {
    let step = holding_partition_lock(client, async |client: &mut Client| {
        if overlaps(client, parent, range).await? {
            return Ok(Step::Done(None));
        }
        if default_holds(client, table, range).await? {
            return Ok(Step::Move);
        }
        let name = create_empty_locked(client, table, parent, range).await?;
        Ok(Step::Done(Some((name, 0))))
    })
    .await?;
    match step {
        Step::Done(made) => Ok(made),
        Step::Move => move_from_default(client, table, parent, range).await,
    }
}

enum Step {
    Done(Option<(String, u64)>),
    Move,
}

/// Makes the partition of `table` for `range` only when that moves no row: `None`
/// when a partition overlapping `range` exists, or when the default partition
/// holds rows of `range` (then the maintenance job moves them, [`create`]). What
/// the writers use: a creation that moves no row takes milliseconds.
pub async fn create_empty(
    client: &mut Client,
    table: Table,
    range: Range,
) -> Result<Option<String>, StorageError> {
    let parent = table.name();
    holding_partition_lock(client, async |client: &mut Client| {
        if overlaps(client, parent, range).await? || default_holds(client, table, range).await? {
            return Ok(None);
        }
        create_empty_locked(client, table, parent, range)
            .await
            .map(Some)
    })
    .await
}

/// Runs `f` holding [`PARTITION_LOCK`], released however `f` ends.
async fn holding_partition_lock<T>(
    client: &mut Client,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&PARTITION_LOCK])
        .await?;
    let result = f(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&PARTITION_LOCK])
        .await;
    result
}

async fn overlaps(client: &Client, parent: &str, range: Range) -> Result<bool, StorageError> {
    Ok(ranges_in(client, parent)
        .await?
        .iter()
        .any(|r| r.start < range.end && range.start < r.end))
}

/// Whether the default partition holds a row of `range` (one probe of its time index).
async fn default_holds(client: &Client, table: Table, range: Range) -> Result<bool, StorageError> {
    let (default, time) = (table.default_partition(), table.time_column());
    let (from, to) = (pg_time(range.start), pg_time(range.end));
    Ok(client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {default} WHERE {time} >= '{from}' AND {time} < '{to}')"
            ),
            &[],
        )
        .await?
        .get(0))
}

/// Every column `parent` has now, quoted, in order (later migrations add some,
/// e.g. `txid`, which a moved row must keep: it is the row's place in the live tail).
async fn columns_of(client: &Client, parent: &str) -> Result<String, StorageError> {
    Ok(client
        .query_one(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&parent],
        )
        .await?
        .get(0))
}

/// How long a creation waits for a lock on the table or its default partition
/// before it gives up (and is tried again later): a lock request that waits
/// makes every query that comes after it wait too.
pub const CREATE_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The comment on a move's copy until it is attached.
const MOVING_MARK: &str = "candystore: a partition being moved out of the default partition";

/// A move's switch that found its locks taken is tried this often, a second apart.
const SWITCH_ATTEMPTS: u32 = 5;

/// Creates and attaches an empty partition (the default partition holds no row of
/// `range`, checked under [`PARTITION_LOCK`], and writers cannot add one meanwhile:
/// the default partition is locked against writes first).
async fn create_empty_locked(
    client: &mut Client,
    table: Table,
    parent: &str,
    range: Range,
) -> Result<String, StorageError> {
    let name = partition_name(table, range.start);
    let default = table.default_partition();
    let time = table.time_column();
    let (from, to) = (pg_time(range.start), pg_time(range.end));
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {default} IN EXCLUSIVE MODE",
        CREATE_LOCK_TIMEOUT.as_millis()
    ))
    .await?;
    let late: bool = tx
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {default} WHERE {time} >= '{from}' AND {time} < '{to}')"
            ),
            &[],
        )
        .await?
        .get(0);
    if late {
        // A row arrived between the look and the lock: the move's business.
        return Err(StorageError::DefaultChanged { range: name });
    }
    tx.batch_execute(&format!(
        "CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION) \
         WITH (autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000); {extra} \
         ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}')",
        extra = table.partition_settings(&name),
    ))
    .await?;
    tx.commit().await?;
    Ok(name)
}

/// Moves the default partition's rows of `range` into a new partition without
/// holding the table while they are copied:
///
/// 1. A table of the partition's name, shaped and indexed like the parent and
///    constrained to `range` (so attaching it reads none of its rows), gets a copy
///    of the rows, while they stay in the default partition for every reader.
/// 2. The switch, one transaction under ACCESS EXCLUSIVE on the table (readers
///    and writers wait; see docs/storage.md, for why a move
///    needs that lock): rows written or changed in the default partition since the
///    copy are copied again, rows deleted since leave the copy, the originals are
///    deleted, the table is attached. It costs the change since the copy plus one
///    delete of the rows, not their copy: 100,000 rows in ~0.1 s.
///
/// The switch waits at most [`CREATE_LOCK_TIMEOUT`] for its lock, and is tried
/// [`SWITCH_ATTEMPTS`] times; a copy left by a move that never switched is
/// dropped by the next.
async fn move_from_default(
    client: &mut Client,
    table: Table,
    parent: &str,
    range: Range,
) -> Result<Option<(String, u64)>, StorageError> {
    let name = partition_name(table, range.start);
    let default = table.default_partition();
    let time = table.time_column();
    let (from, to) = (pg_time(range.start), pg_time(range.end));
    let within = format!("{time} >= '{from}' AND {time} < '{to}'");
    let columns = columns_of(client, parent).await?;
    // A copy left by a move that never switched: marked as ours, and never a
    // partition (its range would have overlapped). Anything else of that name is
    // in the way, and the creation below fails on it.
    let leftover: bool = client
        .query_one(
            "SELECT coalesce((SELECT NOT relispartition AND obj_description(oid, 'pg_class') = $2 \
             FROM pg_class WHERE oid = to_regclass($1)), false)",
            &[&name, &MOVING_MARK],
        )
        .await?
        .get(0);
    if leftover {
        client.batch_execute(&format!("DROP TABLE {name}")).await?;
    }
    client
        .batch_execute(&format!(
            "CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
             INCLUDING COMPRESSION INCLUDING INDEXES) \
             WITH (autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000); {extra} \
             ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK ({within}); \
             COMMENT ON TABLE {name} IS '{MOVING_MARK}'",
            extra = table.partition_settings(&name),
        ))
        .await?;
    let tx = client.transaction().await?;
    let snapshot: String = tx
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    tx.execute(
        &format!("INSERT INTO {name} ({columns}) SELECT {columns} FROM {default} WHERE {within}"),
        &[],
    )
    .await?;
    tx.commit().await?;
    // Born with statistics: the copy holds (nearly) every row it will, and its
    // statistics stay with it when it is attached. Left to autovacuum, a bulk move
    // of many days waits for workers busy vacuuming the default partition.
    super::statistics::analyze(client, &name).await?;
    let keys = table.key_columns();
    let key_match = keys
        .split(", ")
        .map(|k| format!("p.{k} = d.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    // A row's xmin as the full transaction id (PostgreSQL 15 has no cast): the
    // current epoch, or the one before when the 32 bits are past the current ones.
    let xmin8 = "((((pg_current_xact_id()::text::int8 >> 32) - \
                  CASE WHEN d.xmin::text::int8 > (pg_current_xact_id()::text::int8 & 4294967295) THEN 1 ELSE 0 END) << 32) \
                  | d.xmin::text::int8)::text::xid8";
    for attempt in 1..=SWITCH_ATTEMPTS {
        let switched = holding_partition_lock(client, async |client: &mut Client| {
            let tx = client.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE",
                CREATE_LOCK_TIMEOUT.as_millis()
            ))
            .await?;
            // Written or changed since the copy: copied again.
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE cs_move_fresh ON COMMIT DROP AS \
                 SELECT {columns} FROM {default} d WHERE {within} \
                 AND NOT pg_visible_in_snapshot({xmin8}, '{snapshot}'::pg_snapshot)"
            ))
            .await?;
            tx.batch_execute(&format!(
                "DELETE FROM {name} p USING cs_move_fresh d WHERE {key_match}; \
                 INSERT INTO {name} ({columns}) SELECT {columns} FROM cs_move_fresh"
            ))
            .await?;
            // Deleted since the copy: out of it too.
            let count = |t: &str| format!("SELECT count(*) FROM {t} WHERE {within}");
            let copied: i64 = tx.query_one(&count(&name), &[]).await?.get(0);
            let there: i64 = tx.query_one(&count(default), &[]).await?.get(0);
            if copied != there {
                tx.execute(
                    &format!(
                        "DELETE FROM {name} p WHERE NOT EXISTS \
                         (SELECT 1 FROM {default} d WHERE {key_match} AND d.{within_d})",
                        within_d = within.replace(" AND ", " AND d.")
                    ),
                    &[],
                )
                .await?;
            }
            let moved = tx
                .execute(&format!("DELETE FROM {default} WHERE {within}"), &[])
                .await?;
            let copied: i64 = tx.query_one(&count(&name), &[]).await?.get(0);
            if copied != moved as i64 {
                // Never attach a copy that differs from what leaves: roll back.
                return Err(StorageError::DefaultChanged { range: name.clone() });
            }
            tx.batch_execute(&format!(
                "ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}'); \
                 COMMENT ON TABLE {name} IS NULL"
            ))
            .await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await;
        match switched {
            Ok(moved) => return Ok(Some((name, moved))),
            Err(StorageError::Db(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && attempt < SWITCH_ATTEMPTS =>
            {
                tracing::debug!(partition = %name, attempt, "partition switch found its locks taken; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Splits the head `[far.start, at)` off the far-future partition `far`: the
/// partition is detached, its rows before `at` are put back through the parent
/// (into the default partition, which the maintenance job then drains into
/// partitions of their interval), and it is attached again for `[at, far.end)`
/// under the name of its new start. One transaction under ACCESS EXCLUSIVE on
/// the table: as long as reading the far partition once (it holds only events
/// dated past the window). Returns the rows moved.
pub async fn split_head(
    client: &mut Client,
    table: Table,
    far: Range,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    holding_partition_lock(client, async |client: &mut Client| {
        split_head_locked(client, table, far, at).await
    })
    .await
}

async fn split_head_locked(
    client: &mut Client,
    table: Table,
    far: Range,
    at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let parent = table.name();
    let old = partition_name(table, far.start);
    let new = partition_name(table, at);
    let time = table.time_column();
    let columns = columns_of(client, parent).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE"))
        .await?;
    let (at_lit, end_lit) = (pg_time(at), pg_time(far.end));
    tx.batch_execute(&format!(
        "ALTER TABLE {parent} DETACH PARTITION {old}; \
         CREATE TEMP TABLE cs_split_head (LIKE {parent}) ON COMMIT DROP;"
    ))
    .await?;
    let moved = tx
        .execute(
            &format!(
                "WITH moved AS (DELETE FROM {old} WHERE {time} < '{at_lit}' RETURNING {columns}) \
                 INSERT INTO cs_split_head ({columns}) SELECT {columns} FROM moved"
            ),
            &[],
        )
        .await?;
    tx.batch_execute(&format!(
        "ALTER TABLE {old} RENAME TO {new}; \
         ALTER TABLE {parent} ATTACH PARTITION {new} FOR VALUES FROM ('{at_lit}') TO ('{end_lit}'); \
         INSERT INTO {parent} ({columns}) SELECT {columns} FROM cs_split_head;"
    ))
    .await?;
    tx.commit().await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn intervals_parse_in_the_spellings_people_write() {
        for (s, want) in [
            ("1 day", PartitionInterval::Day),
            ("1d", PartitionInterval::Day),
            ("daily", PartitionInterval::Day),
            ("1 week", PartitionInterval::Week),
            ("1w", PartitionInterval::Week),
            ("1 month", PartitionInterval::Month),
            ("1mo", PartitionInterval::Month),
            (" Month ", PartitionInterval::Month),
        ] {
            assert_eq!(PartitionInterval::parse(s), Some(want), "{s}");
        }
        for s in ["", "2 days", "1h", "1 year", "1m"] {
            assert_eq!(PartitionInterval::parse(s), None, "{s}");
        }
    }

    #[test]
    fn intervals_start_at_midnight_monday_and_the_first_of_the_month_in_utc() {
        let x = t("2026-11-28T23:59:59.999+00:00");
        assert_eq!(PartitionInterval::Day.floor(x), t("2026-11-28T00:00:00Z"));
        assert_eq!(PartitionInterval::Week.floor(x), t("2026-11-23T00:00:00Z"));
        assert_eq!(PartitionInterval::Month.floor(x), t("2026-11-01T00:00:00Z"));
        assert_eq!(
            PartitionInterval::Month.next(t("2026-12-01T00:00:00Z")),
            t("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            PartitionInterval::Week.next(t("2026-11-23T00:00:00Z")),
            t("2026-11-30T00:00:00Z")
        );
        // An offset is only another way of writing the same instant.
        assert_eq!(
            PartitionInterval::Day.floor(t("2026-11-29T01:00:00+02:00")),
            t("2026-11-28T00:00:00Z")
        );
    }

    #[test]
    fn a_new_range_stops_where_an_existing_partition_begins_or_ends() {
        let day = |a: &str, b: &str| Range {
            start: t(a),
            end: t(b),
        };
        let existing = vec![
            day("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"),
            day("2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z"),
        ];
        // Covered already.
        assert_eq!(
            range_for(t("2026-11-01T12:00:00Z"), PartitionInterval::Day, &existing),
            None
        );
        // A free day.
        assert_eq!(
            range_for(t("2026-11-03T12:00:00Z"), PartitionInterval::Day, &existing),
            Some(day("2026-11-03T00:00:00Z", "2026-11-04T00:00:00Z"))
        );
        // A week around existing days is cut down to the gap holding the time.
        assert_eq!(
            range_for(
                t("2026-11-03T12:00:00Z"),
                PartitionInterval::Week,
                &existing
            ),
            Some(day("2026-11-02T00:00:00Z", "2026-11-05T00:00:00Z"))
        );
        assert_eq!(
            range_for(
                t("2026-11-07T12:00:00Z"),
                PartitionInterval::Week,
                &existing
            ),
            Some(day("2026-11-06T00:00:00Z", "2026-11-09T00:00:00Z"))
        );
    }

    #[test]
    fn bounds_at_the_ends_of_time_are_written_and_read_as_postgresql_takes_them() {
        assert_eq!(pg_time(end_of_time()), "10000-01-01 00:00:00.000000+00");
        assert_eq!(
            pg_time(t("0001-01-01T00:00:00Z")),
            "0001-01-01 00:00:00.000000+00"
        );
        let r = parse_bound(
            "FOR VALUES FROM ('9999-12-31 00:00:00+00') TO ('10000-01-01 00:00:00+00')",
        )
        .unwrap();
        assert_eq!(r.end, end_of_time());
        assert_eq!(r.start, t("9999-12-31T00:00:00Z"));
    }

    #[test]
    fn far_from_now_a_partition_is_a_year_before_the_window_and_one_after_it() {
        let layout = Layout::with_interval(PartitionInterval::Day);
        let now = t("2026-12-03T10:00:00Z");
        let window = layout.window(now);
        assert_eq!(window.start, t("2025-12-02T00:00:00Z"));
        assert_eq!(window.end, t("2027-01-04T00:00:00Z"));
        // Inside: a day.
        assert_eq!(
            layout.range_for(t("2026-06-01T05:00:00Z"), now, &[]),
            Some(Range {
                start: t("2026-06-01T00:00:00Z"),
                end: t("2026-06-02T00:00:00Z")
            })
        );
        // Before: the calendar year, cut at the window's start.
        assert_eq!(
            layout.range_for(t("1999-03-04T00:00:00Z"), now, &[]),
            Some(Range {
                start: t("1999-01-01T00:00:00Z"),
                end: t("2000-01-01T00:00:00Z")
            })
        );
        assert_eq!(
            layout.range_for(t("2025-07-01T00:00:00Z"), now, &[]),
            Some(Range {
                start: t("2025-01-01T00:00:00Z"),
                end: t("2025-12-02T00:00:00Z")
            })
        );
        assert_eq!(
            layout
                .range_for(t("0001-01-01T00:00:00Z"), now, &[])
                .unwrap()
                .start,
            t("0001-01-01T00:00:00Z")
        );
        // After: one partition to the end of time, for 2027-02 as for 9999-12-31.
        let far = Range {
            start: t("2027-01-04T00:00:00Z"),
            end: end_of_time(),
        };
        assert_eq!(
            layout.range_for(t("9999-12-31T23:59:59Z"), now, &[]),
            Some(far)
        );
        assert_eq!(
            layout.range_for(t("2027-02-01T00:00:00Z"), now, &[]),
            Some(far)
        );
        assert_eq!(
            layout.range_for(t("2030-01-01T00:00:00Z"), now, &[far]),
            None
        );
        // Ten days later the window has reached its head: split at the window's end.
        assert_eq!(layout.split_due(now, &[far]), None);
        let later = t("2026-12-13T10:00:00Z");
        assert_eq!(
            layout.split_due(later, &[far]),
            Some((far, t("2027-01-14T00:00:00Z")))
        );
    }

    #[test]
    fn bounds_are_read_as_postgresql_prints_them() {
        let r = parse_bound(
            "FOR VALUES FROM ('2026-11-28 00:00:00+00') TO ('2026-11-29 00:00:00.5+00')",
        )
        .unwrap();
        assert_eq!(r.start, t("2026-11-28T00:00:00Z"));
        assert_eq!(r.end, t("2026-11-29T00:00:00.5Z"));
        assert_eq!(parse_bound("DEFAULT"), None);
        assert_eq!(pg_time(r.end), "2026-11-29 00:00:00.500000+00");
    }
}
