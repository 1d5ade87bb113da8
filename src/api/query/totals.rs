//! `total` for `GET /events`: exact while counting is cheap, otherwise the
//! planner's estimate, flagged, and never below what the page proves. A request
//! counts at most [`EXACT_TOTAL_UP_TO`] + 1 rows ([`EXACT_DOCUMENT_TOTAL_UP_TO`] + 1
//! with `payload_contains`), or [`EXACT_WHILE_UNANALYZED`] + 1 while a partition
//! holding rows has no statistics yet (a new table before its first analyze, when
//! the planner's estimate is a guess: 13,344 for 5,000 rows).

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use crate::api::problem::{Problem, unavailable};
use crate::api::sizes::TableSizes;

/// Up to this many matching rows `total` is an exact count; past it, the planner's
/// estimate (and `total_is_estimate: true`), so no request ever counts the table.
pub const EXACT_TOTAL_UP_TO: i64 = 1_000;
/// The same cap for a request with `payload_contains`. Counting a document's matches
/// reads every match's row: its GIN index (`jsonb_path_ops`, a hash per path) can
/// only say where a match may be, and each candidate is checked in the heap, a page
/// per match spread over every partition (1,000 of them: ~12 ms from the OS cache,
/// more than the 10 ms a document page may take). An index counts the other
/// filters' matches without the rows.
pub const EXACT_DOCUMENT_TOTAL_UP_TO: i64 = 250;
/// A planner estimate above this many times the cap is taken as "past the cap"
/// without counting: the count would only confirm it, and for a broad
/// `payload_contains` it is the costly part.
const ESTIMATE_TRUSTED_ABOVE_CAP: i64 = 10;

/// Up to how many matches `q`'s total is counted exactly.
pub(crate) fn exact_up_to(q: &super::EventQuery) -> i64 {
    if q.payload_contains.is_some() {
        EXACT_DOCUMENT_TOTAL_UP_TO
    } else {
        EXACT_TOTAL_UP_TO
    }
}
/// While a partition holding rows has no statistics, matches are counted up to this many.
/// Autovacuum analyzes a new partition after its first 50 rows and then every 10%
/// more, so this state is short and its tables small.
pub const EXACT_WHILE_UNANALYZED: i64 = 100_000;

/// What a page already tells about the number of matching events.
pub(crate) struct Seen {
    /// offset + rows on the page
    pub through: i64,
    pub has_more: bool,
    /// the page began at a known position in the whole result (no cursor, and not
    /// past the end), so `through` matching events are known to exist
    pub whole_prefix: bool,
    /// the time window the page was read under (its lower bound and the anchor),
    /// if it needed none wider
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// matches known to exist whatever the page shows (a walk that stopped
    /// counting at the cap knows of the cap and one); 0 when nothing is known
    pub known: i64,
}

/// `total` for `GET /events`: exact up to `cap` matching events ([`exact_up_to`]),
/// otherwise the planner's estimate, flagged. Free when the page settles it (the last
/// page, or an offset already past the cap). Otherwise the plan's row estimate comes
/// first (planning only); when it expects far more than the cap, the estimate is the
/// answer, and only when it does not is there a count, stopped at `cap + 1` rows. No
/// request ever counts more.
pub(crate) async fn total(
    client: &tokio_postgres::Client,
    sizes: &TableSizes,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    seen: Seen,
    cap: i64,
) -> Result<(i64, bool), Problem> {
    if seen.whole_prefix && !seen.has_more {
        return Ok((seen.through, false));
    }
    let mut at_least = if seen.whole_prefix {
        seen.through + 1
    } else {
        0
    }
    .max(seen.known);
    if at_least <= EXACT_WHILE_UNANALYZED
        && !sizes
            .statistics_current(client)
            .await
            .map_err(unavailable)?
    {
        let exact = capped_count(client, filter, params, EXACT_WHILE_UNANALYZED).await?;
        if exact <= EXACT_WHILE_UNANALYZED {
            return Ok((exact.max(seen.through), false));
        }
        at_least = at_least.max(exact);
    }
    // The page came from a window of recent partitions: estimate from that window
    // and scale by the table's size, rather than plan the filter over every
    // partition. Past the exact range the answer is an estimate either way.
    if let Some((lower, upper)) = seen.window
        && let Some(estimate) = scaled_estimate(client, sizes, filter, params, lower, upper).await?
        && (at_least > cap || estimate > cap)
    {
        return Ok((estimate.max(at_least), true));
    }
    let explain = format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE {filter}");
    let plan: serde_json::Value = client
        .query_one(&explain, params)
        .await
        .map_err(unavailable)?
        .get(0);
    let estimate = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64;
    if at_least > cap || estimate > ESTIMATE_TRUSTED_ABOVE_CAP * cap {
        return Ok((estimate.max(at_least), true));
    }
    let exact = capped_count(client, filter, params, cap).await?;
    if exact <= cap {
        Ok((exact, false))
    } else {
        Ok((estimate.max(exact).max(at_least), true))
    }
}

/// The matches of `filter`, counted up to `cap` + 1 under a plan made once per
/// connection (`sql::reusable`, in `tx`); `marker` starts the statement's text, to
/// keep plans made under other settings apart.
async fn reused_capped_count(
    tx: &deadpool_postgres::Transaction<'_>,
    marker: &str,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    cap: i64,
) -> Result<i64, Problem> {
    let counted = super::sql::reusable(
        tx,
        &format!(
            "{marker}SELECT count(*) FROM (SELECT 1 FROM events WHERE {filter} LIMIT {}) s",
            cap + 1
        ),
    )
    .await?;
    Ok(tx
        .query_one(&counted, params)
        .await
        .map_err(unavailable)?
        .get(0))
}

/// The matches of `filter` when there are at most [`EXACT_TOTAL_UP_TO`], counted
/// under a reused plan (for filters whose plan fits every value: see
/// `sql::reusable`); `None` when there are more.
pub(crate) async fn counted_up_to_cap(
    client: &mut deadpool_postgres::Client,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<i64>, Problem> {
    let tx = super::sql::generic_plans(client).await?;
    let n = reused_capped_count(&tx, "", filter, params, EXACT_TOTAL_UP_TO).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok((n <= EXACT_TOTAL_UP_TO).then_some(n))
}

/// `total` for a page read partition by partition (`walk`), whose `seen.window`
/// runs from the oldest partition it reached to its anchor: the page's matches
/// scaled by the rows of the whole table over the rows in that window (no
/// planning: the planner's estimate is what
/// the walk avoids), and below ten times `cap` a count of at most `cap` + 1
/// matches, run like the walk (a generic plan of GIN probes, `tx`), unless the
/// walk already knows of more (`Seen::known`). While statistics are missing, as
/// [`total`].
pub(crate) async fn walked_total(
    tx: &deadpool_postgres::Transaction<'_>,
    sizes: &TableSizes,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    seen: Seen,
    cap: i64,
) -> Result<(i64, bool), Problem> {
    if seen.whole_prefix && !seen.has_more {
        return Ok((seen.through, false));
    }
    if !sizes
        .statistics_current(tx.client())
        .await
        .map_err(unavailable)?
    {
        return total(tx.client(), sizes, filter, params, seen, cap).await;
    }
    let at_least = if seen.whole_prefix {
        seen.through + 1
    } else {
        0
    }
    .max(seen.known);
    let rows = match seen.window {
        Some((lower, anchor)) => sizes
            .rows_between(tx.client(), lower, anchor)
            .await
            .map_err(unavailable)?,
        None => None,
    };
    let estimate = match rows {
        Some((all, inside)) => scaled(seen.through.max(1) as f64, all, inside),
        None => seen.through.max(1),
    };
    if at_least > cap || estimate > ESTIMATE_TRUSTED_ABOVE_CAP * cap {
        return Ok((estimate.max(at_least), true));
    }
    // Under the walk's settings, so its own text: a cached plan keeps the
    // settings it was made under.
    let exact = reused_capped_count(tx, "/* walk */ ", filter, params, cap).await?;
    if exact <= cap {
        Ok((exact, false))
    } else {
        Ok((estimate.max(exact).max(at_least), true))
    }
}

/// The planner's estimate of the matches from `lower` to `upper` (the window the
/// page was read in, so only its partitions are planned), scaled by the rows of the
/// whole table over the rows in the window (partition statistics, cached). Without
/// a filter, the table's rows. `None` on a plain table.
async fn scaled_estimate(
    client: &tokio_postgres::Client,
    sizes: &TableSizes,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
) -> Result<Option<i64>, Problem> {
    let Some((all, inside)) = sizes
        .rows_between(client, lower, upper)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    if filter == "TRUE" {
        return Ok(Some(all.round() as i64));
    }
    let n = params.len() + 1;
    let mut with_window: Vec<&(dyn ToSql + Sync)> = params.to_vec();
    with_window.extend([&lower as &(dyn ToSql + Sync), &upper]);
    let plan: serde_json::Value = client
        .query_one(
            &format!(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE {filter} \
                 AND \"timestamp\" >= ${n} AND \"timestamp\" <= ${}",
                n + 1
            ),
            &with_window,
        )
        .await
        .map_err(unavailable)?
        .get(0);
    let matching = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0);
    Ok(Some(scaled(matching, all, inside)))
}

/// `matching` rows of the `inside` ones scaled to `all` the table's rows, and
/// never more than those: a table of 121 rows has no total of 283.
fn scaled(matching: f64, all: f64, inside: f64) -> i64 {
    (matching * (all / inside.max(1.0)).max(1.0))
        .min(all)
        .round() as i64
}

/// The matches, counted up to `cap + 1` rows at most.
async fn capped_count(
    client: &tokio_postgres::Client,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    cap: i64,
) -> Result<i64, Problem> {
    let capped = format!(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE {filter} LIMIT {}) s",
        cap + 1
    );
    Ok(client
        .query_one(&capped, params)
        .await
        .map_err(unavailable)?
        .get(0))
}
