//! `GET /audit/checkpoints`: the audit chain's checkpoints, newest first
//! (`storage::seal` writes them; `candystore verify` checks them).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::ApiState;
use super::problem::{Problem, unavailable};
use super::query::params::{DEFAULT_LIMIT, known_pairs, parse_limit};
use super::view::rfc3339;

/// One sealed range of events, in the live tail's order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Checkpoint {
    id: i64,
    /// The range: after `from` (exclusive) up to `to` (inclusive), as `{txid}-{seq}`
    /// positions (the live tail's event ids).
    from: String,
    to: String,
    count: i64,
    /// SHA-256 chain hash before the range and after it, hex.
    prev_hash: String,
    chain_hash: String,
    min_timestamp: String,
    max_timestamp: String,
    sealed_at: String,
    /// The range's rows were checked against the writers' attestations (AUDIT_KEY).
    attested: bool,
    /// Rows in the range without a valid writer attestation: written out of band
    /// (`candystore verify` names them).
    unattested: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Checkpoints {
    checkpoints: Vec<Checkpoint>,
    /// Pass as `before` for the next (older) page; absent on the last.
    next_before: Option<i64>,
}

/// The audit chain's checkpoints, newest first.
#[utoipa::path(get, path = "/audit/checkpoints", tag = "audit", params(
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
    ("before" = Option<i64>, Query, description = "only checkpoints with a smaller id (next_before of the previous page)"),
), responses(
    (status = 200, description = "a page of checkpoints", body = Checkpoints),
    (status = 400, description = "a bad parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn checkpoints(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let mut limit = DEFAULT_LIMIT;
    let mut before = i64::MAX;
    for (name, value) in known_pairs(req.query_string(), &["limit", "before"])? {
        match name {
            "limit" => limit = parse_limit(&value)?,
            _ => {
                before = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Problem::bad_parameter("before", format!("{value:?} is not a checkpoint id"))
                })?
            }
        }
    }
    let client = state.pool.get().await.map_err(unavailable)?;
    let rows = client
        .query(
            "SELECT id, from_txid, from_seq, to_txid, to_seq, count, prev_hash, chain_hash, \
             min_timestamp, max_timestamp, sealed_at, attested, unattested FROM audit_checkpoints WHERE id < $1 \
             ORDER BY id DESC LIMIT $2",
            &[&before, &(limit + 1)],
        )
        .await
        .map_err(unavailable)?;
    let more = rows.len() as i64 > limit;
    let checkpoints: Vec<Checkpoint> = rows
        .iter()
        .take(limit as usize)
        .map(|r| Checkpoint {
            id: r.get(0),
            from: format!("{}-{}", r.get::<_, i64>(1), r.get::<_, i64>(2)),
            to: format!("{}-{}", r.get::<_, i64>(3), r.get::<_, i64>(4)),
            count: r.get(5),
            prev_hash: crate::hex::encode(r.get(6)),
            chain_hash: crate::hex::encode(r.get(7)),
            min_timestamp: rfc3339(r.get(8)),
            max_timestamp: rfc3339(r.get(9)),
            sealed_at: rfc3339(r.get(10)),
            attested: r.get(11),
            unattested: r.get(12),
        })
        .collect();
    let next_before = more.then(|| checkpoints.last().map(|c| c.id)).flatten();
    Ok(HttpResponse::Ok().json(Checkpoints {
        checkpoints,
        next_before,
    }))
}
