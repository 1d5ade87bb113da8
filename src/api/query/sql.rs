//! Page queries: the keyset and deferred-join SQL every paged route uses, reading
//! a page within its row and byte bounds, and the statements reused with their
//! generic plan.

use chrono::{DateTime, Utc};
use futures::{TryStreamExt, pin_mut};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement, ToStatement};

use super::params::{Cursor, Paging};
use crate::api::problem::{Problem, unavailable};
use crate::api::view::COLUMNS;
use crate::model::query::{JsonText, SqlParams};

/// The most payload a page (or a live-tail chunk) holds. A page stops short of
/// `limit` rather than pass it, so a page of large events cannot exhaust memory;
/// `has_more` and `next_cursor` stay exact.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// Counted per event beside its payload, for its other fields.
pub(crate) const EVENT_OVERHEAD_BYTES: usize = 512;

/// A table pages are read from: the columns a page selects, the time column that
/// orders it (ties broken by `seq`), and what a row counts towards
/// [`MAX_PAGE_BYTES`].
pub(crate) struct Listing {
    pub table: &'static str,
    pub columns: &'static str,
    /// The time column, unquoted.
    pub time: &'static str,
    /// The row's size as a page counts it.
    pub row_bytes: fn(&Row) -> Result<usize, Problem>,
}

/// `events`, in (timestamp, seq) order; a row counts its payload.
pub(crate) const EVENTS: Listing = Listing {
    table: "events",
    columns: COLUMNS,
    time: "timestamp",
    row_bytes: payload_bytes,
};

fn payload_bytes(row: &Row) -> Result<usize, Problem> {
    let JsonText(payload) = row.try_get("payload").map_err(unavailable)?;
    Ok(payload.len() + EVENT_OVERHEAD_BYTES)
}

/// Which way a page walks the (time, seq) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// `GET /events`, `GET /dead-letters`: newest first.
    NewestFirst,
    /// The timelines: oldest first.
    OldestFirst,
}

/// The statement for one page of `listing` rows matching `filter`, in `order`,
/// asking for `limit + 1` rows (see [`fetch_page`]), with its paging parameters
/// pushed after the filter's.
///
/// A cursor continues after its position (keyset: the same cost at any depth),
/// also bounding the time column so partitions before or after it are pruned. An
/// offset is skipped on the index alone (an index-only scan where the visibility
/// map allows) to find the page's first position, and the page is read from there
/// like a cursor page (a lateral join: the position bounds the index scans and
/// prunes partitions when the executor reaches them). It used to be a join of the
/// whole table with the page's keys, which over 90 partitions could be planned as
/// a hash join reading every partition (past the 5 s statement timeout).
pub(crate) fn page_sql(
    listing: &Listing,
    filter: &str,
    order: Order,
    paging: &Paging,
    params: &mut SqlParams,
) -> Result<String, Problem> {
    let Listing {
        table,
        columns,
        time,
        ..
    } = listing;
    let by = match order {
        Order::NewestFirst => format!("\"{time}\" DESC, seq DESC"),
        Order::OldestFirst => format!("\"{time}\", seq"),
    };
    let mut filter = filter.to_owned();
    if let Some(c) = &paging.cursor {
        let t = params.push(super::params::cursor_time(c)?);
        let s = params.push(c.seq);
        let (after, bound) = match order {
            Order::NewestFirst => ("<", "<="),
            Order::OldestFirst => (">", ">="),
        };
        filter.push_str(&format!(
            " AND (\"{time}\", seq) {after} ({t}, {s}) AND \"{time}\" {bound} {t}"
        ));
    }
    let limit = params.push(paging.limit + 1);
    if paging.offset == 0 {
        return Ok(format!(
            "SELECT {columns} FROM {table} WHERE {filter} ORDER BY {by} LIMIT {limit}"
        ));
    }
    let offset = params.push(paging.offset);
    let (from, bound) = match order {
        Order::NewestFirst => ("<=", "<="),
        Order::OldestFirst => (">=", ">="),
    };
    Ok(format!(
        "SELECT page.* FROM (SELECT \"{time}\" AS at, seq AS at_seq FROM {table} WHERE {filter} \
         ORDER BY {by} OFFSET {offset} LIMIT 1) start, \
         LATERAL (SELECT {columns} FROM {table} WHERE {filter} \
         AND (\"{time}\", seq) {from} (start.at, start.at_seq) AND \"{time}\" {bound} start.at \
         ORDER BY {by} LIMIT {limit}) page ORDER BY {page_by}",
        page_by = by
            .replace(&format!("\"{time}\""), &format!("page.\"{time}\""))
            .replace("seq", "page.seq"),
    ))
}

/// One page of rows, with whether more follow and, if so, the cursor to continue.
pub(crate) struct FetchedPage {
    pub rows: Vec<Row>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// Runs a page query that asks for up to `limit + 1` rows, reading them as they
/// arrive, and keeps up to `limit` of them and up to [`MAX_PAGE_BYTES`] of payload
/// (always at least one row). A row seen past the page is what makes `has_more` true,
/// so it is exact in both cases. Rows past the page are never held.
pub(crate) async fn fetch_page<C: GenericClient, S: ?Sized + ToStatement + Sync + Send>(
    listing: &Listing,
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    limit: i64,
) -> Result<FetchedPage, Problem> {
    fetch_page_within(listing, client, statement, params, limit, MAX_PAGE_BYTES).await
}

/// [`fetch_page`] holding at most `max_bytes` of payload (always at least one row).
pub(crate) async fn fetch_page_within<C: GenericClient, S: ?Sized + ToStatement + Sync + Send>(
    listing: &Listing,
    client: &C,
    statement: &S,
    params: &[&(dyn ToSql + Sync)],
    limit: i64,
    max_bytes: usize,
) -> Result<FetchedPage, Problem> {
    let stream = client
        .query_raw(statement, params.iter().copied())
        .await
        .map_err(unavailable)?;
    read_page(listing, stream, limit, max_bytes).await
}

/// Reads a page from `stream` as [`fetch_page_within`] does.
pub(crate) async fn read_page(
    listing: &Listing,
    stream: tokio_postgres::RowStream,
    limit: i64,
    max_bytes: usize,
) -> Result<FetchedPage, Problem> {
    pin_mut!(stream);
    let mut page = PageBuilder::new(listing, limit, max_bytes);
    while let Some(row) = stream.try_next().await.map_err(unavailable)? {
        if !page.push(row)? {
            break;
        }
    }
    Ok(page.finish())
}

/// A page filled row by row, in page order, within `limit` rows and `max_bytes`
/// of payload (always at least one row).
pub(crate) struct PageBuilder<'l> {
    listing: &'l Listing,
    limit: i64,
    max_bytes: usize,
    rows: Vec<Row>,
    bytes: usize,
    has_more: bool,
}

impl<'l> PageBuilder<'l> {
    pub fn new(listing: &'l Listing, limit: i64, max_bytes: usize) -> Self {
        PageBuilder {
            listing,
            limit,
            max_bytes,
            rows: Vec::new(),
            bytes: 0,
            has_more: false,
        }
    }

    /// Adds `row` to the page; `false` when it is past the page (which then has
    /// more, and takes no more rows).
    pub fn push(&mut self, row: Row) -> Result<bool, Problem> {
        let size = (self.listing.row_bytes)(&row)?;
        if self.rows.len() as i64 >= self.limit
            || (!self.rows.is_empty() && self.bytes + size > self.max_bytes)
        {
            self.has_more = true;
            return Ok(false);
        }
        self.bytes += size;
        self.rows.push(row);
        Ok(true)
    }

    /// Adds the rows of `part`, a page of what comes next in page order; `false`
    /// when the page is full or rows follow `part` that it did not hold (nothing
    /// after it may be added then).
    pub fn append(&mut self, part: FetchedPage) -> Result<bool, Problem> {
        for row in part.rows {
            if !self.push(row)? {
                return Ok(false);
            }
        }
        if part.has_more {
            self.more_follow();
            return Ok(false);
        }
        Ok(true)
    }

    /// The rows the page holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Rows follow the page that were not offered to it.
    fn more_follow(&mut self) {
        self.has_more = true;
    }

    pub fn finish(self) -> FetchedPage {
        let next_cursor = self.has_more.then(|| self.rows.last()).flatten().map(|r| {
            let t: DateTime<Utc> = r.get(self.listing.time);
            Cursor {
                timestamp_micros: t.timestamp_micros(),
                seq: r.get("seq"),
            }
            .encode()
        });
        FetchedPage {
            rows: self.rows,
            has_more: self.has_more,
            next_cursor,
        }
    }
}

/// The most statements a read connection keeps prepared (see [`reusable`]); past it
/// the connection's cache is emptied and refills with the shapes in use. A generic
/// plan over 95 partitions takes ~1 MB of the server's memory (measured with
/// `pg_backend_memory_contexts`), so this bounds it at ~64 MB per read connection
/// (the pool hands out the connection used last, so a few connections stay hot
/// and the others hold little). Each shape of request uses one to four statements
/// (a window each, its count, a timeline's summary): at 16, the 18 shapes of
/// `loadtest/query/skewed.js` emptied the cache over and over, and each refill
/// planned every partition again (first page p50 1.8 → 12 ms).
const MAX_CACHED_STATEMENTS: usize = 64;

/// A read-only transaction in which prepared statements run with their generic
/// plan (`plan_cache_mode = force_generic_plan`, for this transaction only): one
/// plan per statement and connection, made once, instead of planning every
/// partition on every request (~5 ms at 95 partitions, PostgreSQL 15). Left to
/// itself PostgreSQL keeps planning per request whenever the per-value plan looks a
/// little cheaper, which it does for rare values, the very queries that must visit
/// every partition. Dropped without commit, the transaction rolls back and the
/// setting with it.
///
/// Only for [`reusable`] statements.
pub(crate) async fn generic_plans(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, Problem> {
    generic_plans_at(client, tokio_postgres::IsolationLevel::ReadCommitted).await
}

/// [`generic_plans`] at `isolation`: `RepeatableRead` when several statements must
/// see one snapshot (a summary read from counts and the rows past them).
pub(crate) async fn generic_plans_at(
    client: &mut deadpool_postgres::Client,
    isolation: tokio_postgres::IsolationLevel,
) -> Result<deadpool_postgres::Transaction<'_>, Problem> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(isolation)
        .start()
        .await
        .map_err(unavailable)?;
    // No parallel workers either: the read pool's sessions plan none
    // (`db::read_pool`), and said again here because some pages depend on it
    // (`walk::newest_matches`). One round trip for both.
    tx.batch_execute(
        "SET LOCAL plan_cache_mode = force_generic_plan; \
         SET LOCAL max_parallel_workers_per_gather = 0",
    )
    .await
    .map_err(unavailable)?;
    Ok(tx)
}

/// `sql` prepared once per connection and reused (run it in [`generic_plans`]).
///
/// Only for statements whose generic plan is right for every value of their
/// parameters: at most one equality filter, time bounds, a cursor, limit and
/// offset. Each filter column leads an index (`(column, "timestamp" DESC, seq
/// DESC)`), so the plan reads that index in each partition whatever the value, in
/// page order, and time bounds prune partitions when the executor starts. Not for
/// `payload @>`, whose generic plan assumes an average selectivity and can walk a
/// partition in time order looking for a rare document (seconds where the
/// per-value plan takes milliseconds), nor for two equality filters, where the
/// generic plan picks one index whatever the values and may walk every match of a
/// common value looking for a rare one. docs/queries.md.
pub(crate) async fn reusable(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<Statement, Problem> {
    if tx.statement_cache.size() >= MAX_CACHED_STATEMENTS {
        tx.statement_cache.clear();
    }
    tx.prepare_cached(sql).await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(order: Order, paging: Paging) -> (String, usize) {
        let mut params = SqlParams::default();
        let filter = format!("source = {}", params.push("a".to_owned()));
        let sql = page_sql(&EVENTS, &filter, order, &paging, &mut params).unwrap();
        (sql, params.len())
    }

    #[test]
    fn a_first_page_is_one_indexed_read_in_its_order() {
        let (s, n) = sql(Order::NewestFirst, Paging::default());
        assert_eq!(
            s,
            format!(
                "SELECT {COLUMNS} FROM events WHERE source = $1 ORDER BY \"timestamp\" DESC, seq DESC LIMIT $2"
            )
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn a_cursor_continues_after_its_position_in_either_order() {
        let cursor = Some(Cursor {
            timestamp_micros: 1_764_000_000_000_000,
            seq: 9,
        });
        let paging = Paging {
            cursor,
            ..Paging::default()
        };
        let (newest, n) = sql(Order::NewestFirst, paging);
        assert!(
            newest.contains("(\"timestamp\", seq) < ($2, $3) AND \"timestamp\" <= $2"),
            "{newest}"
        );
        assert_eq!(n, 4);
        let (oldest, _) = sql(Order::OldestFirst, paging);
        assert!(
            oldest.contains("(\"timestamp\", seq) > ($2, $3) AND \"timestamp\" >= $2"),
            "{oldest}"
        );
        assert!(
            oldest.ends_with("ORDER BY \"timestamp\", seq LIMIT $4"),
            "{oldest}"
        );
    }

    #[test]
    fn an_offset_finds_the_page_start_on_the_index_then_reads_on_from_it() {
        let paging = Paging {
            offset: 200,
            ..Paging::default()
        };
        let (s, n) = sql(Order::OldestFirst, paging);
        assert_eq!(
            s,
            format!(
                "SELECT page.* FROM (SELECT \"timestamp\" AS at, seq AS at_seq FROM events WHERE source = $1 \
                 ORDER BY \"timestamp\", seq OFFSET $3 LIMIT 1) start, \
                 LATERAL (SELECT {COLUMNS} FROM events WHERE source = $1 \
                 AND (\"timestamp\", seq) >= (start.at, start.at_seq) AND \"timestamp\" >= start.at \
                 ORDER BY \"timestamp\", seq LIMIT $2) page ORDER BY page.\"timestamp\", page.seq"
            )
        );
        assert_eq!(n, 3);
        let (newest, _) = sql(Order::NewestFirst, paging);
        assert!(
            newest.contains(
                "(\"timestamp\", seq) <= (start.at, start.at_seq) AND \"timestamp\" <= start.at"
            ),
            "{newest}"
        );
        assert!(
            newest.ends_with("ORDER BY page.\"timestamp\" DESC, page.seq DESC"),
            "{newest}"
        );
    }
}
