//! The audit trail over HTTP (`crate::audit` owns it): the signed checkpoint and
//! its public key, inclusion and consistency proofs, and the legacy chain's
//! checkpoints (`GET /audit/checkpoints`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::ApiState;
use super::problem::{Problem, unavailable};
use super::query::params::{DEFAULT_LIMIT, known_pairs, parse_limit};
use super::view::rfc3339;
use crate::audit::store::{Head, Place, StoreError, Tables, Tile};

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
    // The embedded store never had the chain the tree replaced.
    let Ok(pg) = state.postgres() else {
        return Ok(HttpResponse::Ok().json(Checkpoints {
            checkpoints: Vec::new(),
            next_before: None,
        }));
    };
    let client = pg.pool.get().await.map_err(unavailable)?;
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
            prev_hash: crate::model::hex::encode(r.get(6)),
            chain_hash: crate::model::hex::encode(r.get(7)),
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

/// The newest signed checkpoint, as its note (C2SP tlog-checkpoint).
#[utoipa::path(get, path = "/audit/checkpoint", tag = "audit", responses(
    (status = 200, description = "the newest signed checkpoint: origin, tree size, root hash (base64), then the Ed25519 signature line", body = String, content_type = "text/plain"),
    (status = 404, description = "no checkpoint signed yet", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now", body = Problem, content_type = "application/problem+json"),
))]
pub async fn checkpoint(state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let tree = Tree::of(&state).await?;
    let head = crate::audit::store::head(&tree)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no checkpoint has been signed yet"))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(head.note))
}

/// The public key checkpoints are signed with (`name+id+key`, as the Go note
/// tools write it). Take it from here once, then keep it: a verifier that
/// fetches it anew each time trusts whoever serves it.
#[utoipa::path(get, path = "/audit/public-key", tag = "audit", responses(
    (status = 200, description = "the checkpoint signing key's public half", body = String, content_type = "text/plain"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn public_key(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{}\n", state.public_key))
}

/// `{txid}-{seq}`, the tail's event position.
fn parse_position(value: &str) -> Result<(i64, i64), Problem> {
    value
        .split_once('-')
        .and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)))
        .ok_or_else(|| {
            Problem::bad_parameter(
                "position",
                format!("{value:?} is not a position ({{txid}}-{{seq}}, as the live tail's ids)"),
            )
        })
}

/// Where the event an `id` (and `source`) names is, when exactly one does.
async fn place_of(tree: &Tree, id: &str, source: Option<&str>) -> Result<Place, Problem> {
    let places: Vec<Place> = match tree {
        Tree::Postgres(client) => client
            .query(
                "SELECT txid, seq FROM events WHERE id = $1 AND ($2::text IS NULL OR source = $2) LIMIT 2",
                &[&id, &source],
            )
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        Tree::Sqlite(reader) => {
            let (id, source) = (id.to_string(), source.map(str::to_string));
            reader
                .read(move |c| crate::store::sqlite::read::places_of(c, &id, source.as_deref()))
                .await
                .map_err(unavailable)?
        }
    };
    match places.as_slice() {
        [] => Err(Problem::new(StatusCode::NOT_FOUND, "no such event")),
        [p] => Ok(*p),
        _ => Err(Problem::bad_parameter(
            if source.is_some() {
                "position"
            } else {
                "source"
            },
            "several events have this id: name its source, or its position",
        )),
    }
}

/// The audit tree's tables of the store the service runs on.
enum Tree {
    Postgres(deadpool_postgres::Object),
    Sqlite(crate::store::sqlite::read::Reader),
}

impl Tree {
    async fn of(state: &ApiState) -> Result<Tree, Problem> {
        Ok(match &state.store {
            super::Store::Postgres(pg) => Tree::Postgres(pg.pool.get().await.map_err(unavailable)?),
            super::Store::Sqlite(reader) => Tree::Sqlite(reader.clone()),
        })
    }
}

impl Tables for Tree {
    async fn newest_head(&self) -> Result<Option<Head>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).newest_head().await,
            Tree::Sqlite(r) => r.newest_head().await,
        }
    }
    async fn head_of(&self, size: u64) -> Result<Option<Head>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).head_of(size).await,
            Tree::Sqlite(r) => r.head_of(size).await,
        }
    }
    async fn anchor(&self, idx: u64) -> Result<Option<Place>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).anchor(idx).await,
            Tree::Sqlite(r) => r.anchor(idx).await,
        }
    }
    async fn anchor_before(&self, place: Place) -> Result<Option<(u64, Place)>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).anchor_before(place).await,
            Tree::Sqlite(r) => r.anchor_before(place).await,
        }
    }
    async fn leaves_from(
        &self,
        from: Place,
        skip: u64,
        n: u64,
    ) -> Result<Vec<(Place, Vec<u8>)>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).leaves_from(from, skip, n).await,
            Tree::Sqlite(r) => r.leaves_from(from, skip, n).await,
        }
    }
    async fn count_between(&self, from: Place, to: Place, cap: u64) -> Result<u64, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).count_between(from, to, cap).await,
            Tree::Sqlite(r) => r.count_between(from, to, cap).await,
        }
    }
    async fn tiles(&self, keys: &[(i16, i64)]) -> Result<Vec<Tile>, StoreError> {
        match self {
            Tree::Postgres(c) => (***c).tiles(keys).await,
            Tree::Sqlite(r) => r.tiles(keys).await,
        }
    }
}

/// The inclusion proof of one event (or leaf) in the newest signed checkpoint.
#[utoipa::path(get, path = "/audit/proof/inclusion", tag = "audit", params(
    ("id" = Option<String>, Query, description = "the event's id"),
    ("source" = Option<String>, Query, description = "the event's source, when several events share the id"),
    ("position" = Option<String>, Query, description = "or the leaf's position, {txid}-{seq}"),
    ("index" = Option<u64>, Query, description = "or the leaf's index in the tree"),
), responses(
    (status = 200, description = "the leaf, its index, the audit path and the checkpoint it is against", body = crate::audit::proof::Inclusion),
    (status = 400, description = "no or conflicting selectors, or a bad value, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such event, or not in a signed checkpoint yet (the next is at most SEAL_INTERVAL away)", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now", body = Problem, content_type = "application/problem+json"),
))]
pub async fn inclusion(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let (mut id, mut source, mut position, mut index) = (None, None, None, None);
    for (name, value) in known_pairs(req.query_string(), &["id", "source", "position", "index"])? {
        match name {
            "id" => id = Some(value),
            "source" => source = Some(value),
            "position" => position = Some(parse_position(&value)?),
            _ => {
                index = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n < i64::MAX as u64)
                        .ok_or_else(|| {
                            Problem::bad_parameter(
                                "index",
                                format!("{value:?} is not a leaf index"),
                            )
                        })?,
                )
            }
        }
    }
    let tree = Tree::of(&state).await?;
    let proof = match (id, position, index) {
        (Some(id), None, None) => {
            let place = place_of(&tree, &id, source.as_deref()).await?;
            crate::audit::proof::inclusion_of_place(&tree, place).await
        }
        (None, Some(place), None) if source.is_none() => {
            crate::audit::proof::inclusion_of_place(&tree, place).await
        }
        (None, None, Some(index)) if source.is_none() => {
            crate::audit::proof::inclusion_of_index(&tree, index).await
        }
        (None, None, None) => {
            return Err(Problem::bad_parameter(
                "id",
                "name the event (id, with source if need be), or give position or index",
            ));
        }
        _ => {
            return Err(Problem::bad_parameter(
                "position",
                "give one of id (with source), position or index",
            ));
        }
    }
    .map_err(unavailable)?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not in a signed checkpoint: stored before the audit tree, or not appended yet (at most SEAL_INTERVAL)",
        )
    })?;
    Ok(HttpResponse::Ok().json(proof))
}

/// The consistency proof between two signed checkpoints.
#[utoipa::path(get, path = "/audit/proof/consistency", tag = "audit", params(
    ("from" = u64, Query, description = "the size of the earlier tree (a checkpoint was signed at it), or 0"),
    ("to" = Option<u64>, Query, description = "the size of the later tree; default the newest"),
), responses(
    (status = 200, description = "the proof and both checkpoints", body = crate::audit::proof::Consistency),
    (status = 400, description = "a bad or missing parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "no checkpoint was signed at one of the sizes", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now", body = Problem, content_type = "application/problem+json"),
))]
pub async fn consistency(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let (mut from, mut to) = (None, None);
    for (name, value) in known_pairs(req.query_string(), &["from", "to"])? {
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|n| *n < i64::MAX as u64)
            .ok_or_else(|| Problem::bad_parameter(name, format!("{value:?} is not a tree size")))?;
        if name == "from" {
            from = Some(n);
        } else {
            to = Some(n);
        }
    }
    let from = from.ok_or_else(|| Problem::bad_parameter("from", "from is required"))?;
    if to.is_some_and(|t| t < from) {
        return Err(Problem::bad_parameter("to", "to is smaller than from"));
    }
    let tree = Tree::of(&state).await?;
    let proof = crate::audit::proof::consistency(&tree, from, to)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no checkpoint was signed at one of these sizes",
            )
        })?;
    Ok(HttpResponse::Ok().json(proof))
}
