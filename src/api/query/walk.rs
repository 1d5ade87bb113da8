//! Pages of `payload_contains` read partition by partition, newest first,
//! stopping when the page is full.
//!
//! A document may be common (one event in six), rare (a thousand in 10M), or
//! common yesterday and absent from today's newest rows; the planner cannot tell
//! these apart (time and document are correlated; its estimates assume not). The
//! page's first partition is judged on its newest 1,000 rows in order, then on
//! its document index below them (bounded either way, see `statement`). When
//! that partition does not fill the page, the matches are sparse and must be
//! looked for further back. Planned per value over
//! every partition, its estimate decides the plan: PostgreSQL estimates a rare
//! document from a 1,000-entry histogram per partition (24 ms of planning over 65
//! partitions) and, when the estimate is a few times too high, walks partitions
//! in time order looking for it (447 ms at 10M events). A generic plan over the
//! whole table ANDs the document's GIN bitmap with the time index's (reading the
//! whole time index of each partition). So this walk asks each partition on its
//! own, newest first, with one statement per partition planned without the value
//! (a GIN probe, the few matches sorted): a handful of partitions for a value of
//! ten matches a day, all of them only for a value with less than a page in the
//! whole table. The statements of a round go out together (pipelined on the
//! connection), and rounds double: 1, 2, 4, 8, … partitions.
//!
//! A plain "where is this document" page (no cursor, no time bounds) that the
//! first round does not fill reads the matches of every partition below that
//! round at once instead, newest first, up to the document cap
//! ([`every_match`]; the first round's rows lead the page): under the
//! cap that is the page and the exact total in one read; past it, the
//! partitions read whole usually hold the page, and no round is needed.

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::EventQuery;
use tokio_postgres::types::{ToSql, Type};

use super::span::Partitions;
use super::sql::{
    EVENTS, FetchedPage, MAX_PAGE_BYTES, PageBuilder, generic_plans, read_page, reusable,
};
use crate::api::problem::{Problem, unavailable};
use crate::api::view::COLUMNS;
use crate::model::query::SqlParams;
use crate::storage::partition::Range;

/// The newest rows of the first partition judged in order before its filters'
/// indexes are asked (see [`statement`]): enough to fill a page of a document
/// one event in ten holds.
const NEWEST_ROWS: i64 = 1_000;

/// The most rows read on in order below the newest ones, for a document dense
/// enough among them to fill the page within these rows at that density (see
/// [`statement`]).
const FURTHER_ROWS: i64 = 10_000;

/// What a walk read.
pub(crate) struct Walked {
    pub page: FetchedPage,
    /// The oldest partition start the walk reached (the matches from there to now
    /// are known), and the rows it has by the statistics.
    pub reached: Option<DateTime<Utc>>,
    /// The page was filled in the first round: the partition the page starts in
    /// (or one ahead of it) holds more than a page of matches.
    pub filled_in_first_round: bool,
    /// What the walk learnt of the total.
    pub matches: Matches,
}

/// The number of matches, as far as the walk knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Matches {
    /// Not counted.
    Unknown,
    /// Counted: every match was read.
    Exactly(i64),
    /// More than this many (counting stopped at the cap).
    MoreThan(i64),
}

/// One page of `q` (newest first, from its cursor, no offset) read partition by
/// partition. Run it in a transaction with generic plans (`sql::generic_plans`).
/// `None` when the walk cannot answer exactly: the default partition holds rows
/// (which may lie at any time).
pub(crate) async fn newest_first(
    tx: &deadpool_postgres::Transaction<'_>,
    pool: &deadpool_postgres::Pool,
    parts: &Partitions,
    q: &EventQuery,
) -> Result<Option<Walked>, Problem> {
    if parts.default_holds {
        return Ok(None);
    }
    let client = tx.client();
    let ranged = &parts.ranged;
    let limit = q.paging.limit;
    let cursor = match &q.paging.cursor {
        Some(c) => Some((super::params::cursor_time(c)?, c.seq)),
        None => None,
    };
    // Rows at or before `upper`, at or after `lower`.
    let upper = match (cursor.map(|c| c.0), q.end_time) {
        (Some(c), Some(e)) => Some(c.min(e)),
        (c, e) => c.or(e),
    };
    let lower = q.start_time;
    let todo: Vec<&(String, Range)> = ranged
        .iter()
        .filter(|(_, r)| upper.is_none_or(|u| r.start <= u) && lower.is_none_or(|l| r.end > l))
        .collect();
    let mut page = PageBuilder::new(&EVENTS, limit, MAX_PAGE_BYTES);
    let mut reached = None;
    let mut filled_in_first_round = false;
    let mut matches = Matches::Unknown;
    let mut next = 0;
    // The first round: the partition the page starts in and those ahead of it
    // (made in advance, empty unless a publisher sent times to come), as one
    // span judged on its newest rows first: one statement, where a statement per
    // partition ahead cost a parse, a plan and a probe each (~0.4 ms). Then 2, 4,
    // 8, … partitions at once, a statement each, the matches known to be sparse.
    let start = upper.unwrap_or_else(Utc::now);
    let starts_in = todo
        .iter()
        .position(|(_, r)| r.start <= start)
        .unwrap_or(todo.len().saturating_sub(1));
    let mut round = starts_in + 1;
    'walk: while next < todo.len() {
        let parts = &todo[next..(next + round).min(todo.len())];
        let first = next == 0;
        next += parts.len();
        round = if first { 2 } else { round * 2 };
        filled_in_first_round = first;
        let want = limit - page.len() as i64 + 1;
        // What each statement of the round reads, newest first.
        let spans: Vec<Range> = match parts {
            [(_, newest), .., (_, oldest)] if first => vec![Range {
                start: oldest.start,
                end: newest.end,
            }],
            _ => parts.iter().map(|(_, range)| *range).collect(),
        };
        let statements: Vec<(String, SqlParams, Vec<Type>)> = spans
            .iter()
            .map(|span| {
                let newest = first.then_some(NEWEST_ROWS.max(want));
                statement(q, *span, cursor, want, newest)
            })
            .collect();
        // A round holds at most a page's bytes, whatever its partitions return.
        let budget = MAX_PAGE_BYTES / spans.len();
        // The first round of a plain page (no cursor, no time bounds) is the same
        // statement for every document all day: prepared once per connection, its
        // plan kept (~0.7 ms of planning a request). The others, whose text
        // follows the cursor's partition, unnamed and typed here: one message each
        // way, no separate prepare (and, in `generic_plans`, planned without the
        // values).
        let plain = first && cursor.is_none() && lower.is_none() && q.end_time.is_none();
        let mut pages = try_join_all(statements.iter().map(|(sql, params, types)| async move {
            let stream = if plain {
                let statement = reusable(tx, sql).await?;
                client.query_raw(&statement, params.all()).await
            } else {
                let typed = params
                    .all()
                    .into_iter()
                    .zip(types.iter().cloned())
                    .collect::<Vec<(&(dyn ToSql + Sync), Type)>>();
                client.query_typed_raw(sql, typed).await
            }
            .map_err(unavailable)?;
            read_page(&EVENTS, stream, want, budget).await
        }))
        .await?;
        // The first round did not fill the page: the document is sparse here. A
        // plain "where is this document" page (no cursor, no time bounds) reads
        // every match at once when there are few, which gives the exact total too.
        if first
            && !pages.iter().any(|p| p.has_more)
            && pages.iter().map(|p| p.rows.len()).sum::<usize>() < limit as usize
            && next < todo.len()
            && cursor.is_none()
            && q.start_time.is_none()
            && q.end_time.is_none()
        {
            let cap = super::totals::exact_up_to(q);
            match every_match(tx, pool, pages, &todo[next..], q, cap).await? {
                Everything::Counted(page, total) => {
                    return Ok(Some(Walked {
                        page,
                        reached: todo.last().map(|(_, r)| r.start),
                        filled_in_first_round: false,
                        matches: Matches::Exactly(total),
                    }));
                }
                // More than the cap, the page known: the total is an estimate
                // from the rows as far back as the page reaches.
                Everything::PastTheCap(page) => {
                    let last = page
                        .rows
                        .last()
                        .map(|r| r.get::<_, DateTime<Utc>>("timestamp"));
                    return Ok(Some(Walked {
                        reached: last
                            .and_then(|t| todo.iter().map(|(_, r)| r.start).find(|s| *s <= t)),
                        page,
                        filled_in_first_round: false,
                        matches: Matches::MoreThan(cap),
                    }));
                }
                // More than the cap: the walk goes on for the page (from the
                // first round's rows, handed back); the total is an estimate, and
                // nothing counts these matches again.
                Everything::Unknown(first) => {
                    matches = Matches::MoreThan(cap);
                    pages = first;
                }
            }
        }
        for (part, span) in pages.into_iter().zip(&spans) {
            reached = Some(span.start);
            // Rows left in this partition come before every later partition's.
            if !page.append(part)? {
                break 'walk;
            }
        }
    }
    let page = page.finish();
    Ok(Some(Walked {
        filled_in_first_round: page.has_more && filled_in_first_round,
        page,
        reached,
        matches,
    }))
}

/// What [`every_match`] learnt.
enum Everything {
    /// Every match was read: the page and the exact total (at most the cap).
    Counted(FetchedPage, i64),
    /// More than the cap match; the page is known all the same (the partitions
    /// read whole hold it).
    PastTheCap(FetchedPage),
    /// More than the cap match, and the partitions read whole do not hold the
    /// page: the walk goes on for it, from the first round's rows (given back).
    Unknown(Vec<FetchedPage>),
}

/// A page of `q` (no cursor, no time bounds) and its exact total, read from every
/// match at once when there are at most `cap`: `first`, every match of the
/// newest partitions (the walk's first round, which held less than a page), then
/// those of `todo`, the partitions below them, fetched once for
/// both the page and the count (a GIN probe of each partition), where rounds of
/// partitions and then a count would read them twice. The newer and the older
/// half of the partitions are read at once on two connections (a thousand
/// matches are a thousand heap pages, ~12 ms from the OS cache on one backend).
///
/// Each half is read partition by partition, newest first (see
/// [`newest_matches`]), and stops at the cap and one matches. So past the cap
/// the partitions read whole hold the newest matches of their half: when they
/// hold the page, it is answered from them (the total is then "more than the
/// cap"), and nothing is read again.
async fn every_match(
    tx: &deadpool_postgres::Transaction<'_>,
    pool: &deadpool_postgres::Pool,
    first: Vec<FetchedPage>,
    todo: &[&(String, Range)],
    q: &EventQuery,
    cap: i64,
) -> Result<Everything, Problem> {
    let (newer, older) = todo.split_at(todo.len() / 2);
    let (newer, older) = match (newer, older) {
        ([], only) | (only, []) => (newest_matches(tx, q, only, cap).await?, None),
        (newer, older) => {
            let mut other = pool.get().await.map_err(unavailable)?;
            let other = generic_plans(&mut other).await?;
            let (a, b) = futures::try_join!(
                newest_matches(tx, q, newer, cap),
                newest_matches(&other, q, older, cap)
            )?;
            other.commit().await.map_err(unavailable)?;
            (a, Some(b))
        }
    };
    let ahead: i64 = first.iter().map(|p| p.rows.len() as i64).sum();
    let total = ahead + newer.matches + older.as_ref().map_or(0, |o| o.matches);
    let counted = newer.matches <= cap && older.as_ref().is_none_or(|o| o.matches <= cap);
    // The first round's partitions come first, then the halves, which do not
    // overlap in time: the newer one's rows come first.
    let mut page = PageBuilder::new(&EVENTS, q.paging.limit, MAX_PAGE_BYTES);
    for part in first {
        // Less than a page in all, nothing more in them: never full here.
        page.append(part)?;
    }
    let mut known = true;
    for half in std::iter::once(newer).chain(older) {
        let (part, whole) = half.known(cap);
        let (before, offered) = (page.len(), part.rows.len());
        if !page.append(part)? {
            // The page was full within rows known to be the newest, or more
            // rows follow: known when the half was read whole, or when the page
            // took all it may hold.
            known = page.len() - before < offered || whole || page.len() as i64 == q.paging.limit;
            break;
        }
    }
    let page = page.finish();
    Ok(match (counted && total <= cap, known) {
        (true, _) => Everything::Counted(page, total),
        (false, true) => Everything::PastTheCap(page),
        // The first round's rows lead the page whole (fewer than a page, within
        // its bytes: that round's budget was the page's): handed back as read.
        (false, false) => {
            let mut rows = page.rows;
            rows.truncate(ahead as usize);
            Everything::Unknown(vec![FetchedPage {
                rows,
                has_more: false,
                next_cursor: None,
            }])
        }
    })
}

/// The newest rows of a half's matches (a page and one), how many it read (at
/// most the cap and one), and how many of those lie in partitions read whole.
struct Half {
    page: FetchedPage,
    matches: i64,
    whole: i64,
}

impl Half {
    /// The rows known to be the half's newest matches, in order, and whether what
    /// follows them is known too (`has_more` is exact). Past the cap, the rows of
    /// the last partition reached are a few of its matches, not its newest: the
    /// rows before them are the known ones, and more follow.
    fn known(self, cap: i64) -> (FetchedPage, bool) {
        let Half {
            mut page,
            matches,
            whole,
        } = self;
        // Every match read; or the page stopped (at its limit or its bytes) at
        // a row the partitions read whole hold.
        if matches <= cap || (page.rows.len() as i64) < whole {
            return (page, true);
        }
        page.rows.truncate(whole as usize);
        page.has_more = true;
        page.next_cursor = None;
        (page, false)
    }
}

/// The newest page of `q`'s matches in `parts` (newest first, each a partition;
/// see [`Half`]), reading at most the cap and one matches: a `UNION ALL` of one
/// fenced GIN probe per partition, each pruned to its partition by literal
/// bounds, under the cap's LIMIT. An Append runs its children in the order given
/// and stops at the LIMIT, so every partition but the last one reached is read
/// whole. A Parallel Append would run them in any order: the read pool's
/// sessions plan no parallel workers (`db::read_pool`), and `generic_plans`
/// says so again for the transaction, since the page depends on it.
async fn newest_matches(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &EventQuery,
    parts: &[&(String, Range)],
    cap: i64,
) -> Result<Half, Problem> {
    let mut params = SqlParams::default();
    let filter = q.conditions(&mut params);
    let want = params.push(q.paging.limit + 1);
    let arms: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(k, (_, range))| {
            format!(
                "SELECT {COLUMNS}, {k} AS k FROM \
                   (SELECT {COLUMNS} FROM events WHERE {within} AND {filter} OFFSET 0) p{k}",
                within = super::span::within(*range),
            )
        })
        .collect();
    let sql = format!(
        "WITH m AS MATERIALIZED ({arms} LIMIT {cap}), \
              l AS (SELECT max(k) AS last FROM m) \
         SELECT m.*, count(*) OVER () AS matches, \
                count(*) FILTER (WHERE m.k < l.last) OVER () AS whole \
         FROM m, l ORDER BY \"timestamp\" DESC, seq DESC LIMIT {want}",
        arms = arms.join(" UNION ALL "),
        cap = cap + 1
    );
    let statement = reusable(tx, &sql).await?;
    let refs = params.all();
    let stream = tx
        .query_raw(&statement, refs.iter().copied())
        .await
        .map_err(unavailable)?;
    let page = read_page(&EVENTS, stream, q.paging.limit, MAX_PAGE_BYTES).await?;
    let (matches, whole) = match page.rows.first() {
        Some(row) => (
            row.try_get::<_, i64>("matches").map_err(unavailable)?,
            row.try_get::<_, i64>("whole").map_err(unavailable)?,
        ),
        None => (0, 0),
    };
    Ok(Half {
        page,
        matches,
        whole,
    })
}

/// One partition's statement: `q`'s filters (without its time bounds), the time
/// bounds and the cursor only where they cut into the partition, newest first,
/// `want` rows at most.
///
/// Its filters are fenced (`OFFSET 0`) from the time conditions, which would
/// otherwise tempt a plan made without their values into ANDing the time index
/// (reading most of it): the filters are judged on their own indexes (the
/// document's GIN), their few matches then cut by time and sorted.
///
/// `newest: Some(n)` (the partition a page starts in, where the matches may be
/// dense) first judges the partition's newest `n` rows in order (the time index,
/// `n` rows at most), and goes to the filters' indexes below them only when those
/// rows hold less than the page. A common document costs `n` rows, never a bitmap
/// of every match; a document absent from the newest rows (time and document are
/// correlated: yesterday's, not today's) costs `n` rows and one probe, never a
/// walk of the whole partition in order. Between the two, a document that did
/// not fill the page but is dense enough among the newest rows to fill it within
/// [`FURTHER_ROWS`] more at that density (a page of 100: 10 of 1,000) is read on
/// in order, streamed, as far as that density says the page needs (twice that,
/// at most [`FURTHER_ROWS`] rows), and the index is asked only below what was
/// read: a document in 2% of the rows costs ~5,000 rows, where the index's
/// bitmap would be every match in the partition (3,700 in a partition of
/// 178,000 rows; 1.7M in a day of 1,000 events/s).
fn statement(
    q: &EventQuery,
    range: Range,
    cursor: Option<(DateTime<Utc>, i64)>,
    want: i64,
    newest: Option<i64>,
) -> (String, SqlParams, Vec<Type>) {
    let mut params = SqlParams::default();
    let untimed = EventQuery {
        filters: q.filters.clone(),
        payload_contains: q.payload_contains.clone(),
        ..EventQuery::default()
    };
    let filter = untimed.conditions(&mut params);
    // `conditions` pushes the filters' text, then the document.
    let mut types = vec![Type::TEXT; q.filters.len()];
    if q.payload_contains.is_some() {
        types.push(Type::JSONB);
    }
    let mut cuts = vec!["TRUE".to_owned()];
    if let Some(l) = q.start_time
        && range.start < l
    {
        cuts.push(format!("\"timestamp\" >= {}", params.push(l)));
        types.push(Type::TIMESTAMPTZ);
    }
    // end_time is inclusive: a partition ending at or before it lies inside.
    if let Some(e) = q.end_time
        && range.end > e
    {
        cuts.push(format!("\"timestamp\" <= {}", params.push(e)));
        types.push(Type::TIMESTAMPTZ);
    }
    if let Some((at, seq)) = cursor
        && range.end > at
    {
        let t = params.push(at);
        let s = params.push(seq);
        types.extend([Type::TIMESTAMPTZ, Type::INT8]);
        cuts.push(format!(
            "(\"timestamp\", seq) < ({t}, {s}) AND \"timestamp\" <= {t}"
        ));
    }
    let cuts = cuts.join(" AND ");
    debug_assert_eq!(types.len(), params.len());
    // Through `events` (the API's role may read no partition by name), the
    // partition's range in literals: planned, it is that partition alone.
    let part = format!("events WHERE {}", super::span::within(range));
    let matches = format!("(SELECT {COLUMNS} FROM {part} AND {filter} OFFSET 0) g WHERE {cuts}");
    let order = "ORDER BY \"timestamp\" DESC, seq DESC";
    let sql = match newest {
        None => format!("SELECT {COLUMNS} FROM {matches} {order} LIMIT {want}"),
        // The conditions on `newest` and `hits` hold no column of a row: each is
        // judged once, before the probe below runs at all, and `newest` is read
        // only as far as `hits` needs when the page fills there.
        // `further`'s LIMIT is 0 (its scan never starts) unless the newest rows
        // held less than the page, and enough to fill it within FURTHER_ROWS
        // more at their density (its CASE divides only then). The index is asked
        // below the oldest row read in order: between the oldest match `further`
        // found and the last row it read there is none.
        Some(n) => format!(
            "WITH newest AS MATERIALIZED (SELECT {COLUMNS} FROM {part} AND {cuts} {order} LIMIT {n}), \
                  hits AS MATERIALIZED (SELECT * FROM newest WHERE {filter} LIMIT {want}), \
                  further AS MATERIALIZED (SELECT * FROM (SELECT {COLUMNS} FROM {part} AND {cuts} \
                    AND (\"timestamp\", seq) < (SELECT \"timestamp\", seq FROM newest \
                                               ORDER BY \"timestamp\", seq LIMIT 1) \
                    AND \"timestamp\" <= (SELECT min(\"timestamp\") FROM newest) {order} \
                    LIMIT (SELECT CASE WHEN count(*) < {want} \
                           AND count(*) * ({n} + {FURTHER_ROWS}) >= {want} * {n} \
                           THEN least({FURTHER_ROWS}, 2 * {want} * {n} / count(*)) ELSE 0 END FROM hits)) r \
                    WHERE {filter} LIMIT {want}) \
             SELECT {COLUMNS} FROM (SELECT * FROM hits UNION ALL SELECT * FROM further \
               UNION ALL SELECT {COLUMNS} FROM {matches} \
               AND (SELECT count(*) FROM hits) + (SELECT count(*) FROM further) < {want} \
               AND (SELECT count(*) FROM newest) = {n} \
               AND (\"timestamp\", seq) < (SELECT \"timestamp\", seq FROM \
                   (SELECT \"timestamp\", seq FROM newest UNION ALL SELECT \"timestamp\", seq FROM further) b \
                   ORDER BY \"timestamp\", seq LIMIT 1)) u \
             {order} LIMIT {want}"
        ),
    };
    (sql, params, types)
}
