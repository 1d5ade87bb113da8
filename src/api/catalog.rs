//! `GET /event-types` and `GET /sources`: every value seen, with its count and
//! its first and last event time, and per event type its top-level payload keys
//! with their JSON types and how often each appeared. Read from the catalog
//! tables the catalog job keeps (`storage::catalog`), a few seconds behind ingest;
//! never a GROUP BY over `events`.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::ApiState;
use super::problem::{Problem, unavailable};
use super::view::rfc3339;

/// A top-level payload key of an event type, with one JSON type.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PayloadKey {
    key: String,
    /// `object`, `array`, `string`, `number`, `boolean` or `null`; `other` for the
    /// keys counted past the cap (key "").
    json_type: String,
    /// Events of this type whose payload had this key with this type.
    count: i64,
    /// `count` over the events of this type: 1.0 for a key every event carries.
    share: f64,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventType {
    event_type: String,
    count: i64,
    first_seen: String,
    last_seen: String,
    /// At most 100 distinct keys (each with one JSON type) per type; past them,
    /// new keys are counted in one entry of `json_type` `other` (key "").
    payload_keys: Vec<PayloadKey>,
    /// The type's events carried more distinct keys than the catalog keeps.
    payload_keys_capped: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventTypes {
    event_types: Vec<EventType>,
    /// More event types follow: ask again with `after` = `next_after`.
    has_more: bool,
    next_after: Option<String>,
}

/// Event types per answer of `GET /event-types`, at most and by default.
pub const MAX_EVENT_TYPES: i64 = 1_000;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Source {
    source: String,
    count: i64,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Sources {
    sources: Vec<Source>,
}

/// `GET /sources` takes no parameter: any is unknown (the rule of every route).
fn no_parameters(req: &HttpRequest) -> Result<(), Problem> {
    super::query::params::known_pairs(req.query_string(), &[]).map(drop)
}

/// Every event type seen, by name, with its payload keys (most common first), in
/// pages of at most 1,000 types.
#[utoipa::path(get, path = "/event-types", tag = "catalog", params(
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "event types per answer (default and most: 1000)"),
    ("after" = Option<String>, Query, min_length = 1, description = "continue after this event type (`next_after` of the answer before)"),
), responses(
    (status = 200, description = "event types seen, by name", body = EventTypes),
    (status = 400, description = "a bad or unknown parameter, named in the problem", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn event_types(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    let mut limit = MAX_EVENT_TYPES;
    let mut after = String::new();
    for (name, value) in super::query::params::known_pairs(req.query_string(), &["limit", "after"])?
    {
        match name {
            "limit" => {
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_EVENT_TYPES).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_parameter("limit", format!("must be 1 to {MAX_EVENT_TYPES}"))
                    })?;
            }
            _ => after = value,
        }
    }
    if let super::Store::Sqlite(reader) = &state.store {
        let types = reader
            .read(move |c| crate::store::sqlite::catalog::event_types(c, &after, limit))
            .await
            .map_err(unavailable)?;
        return Ok(HttpResponse::Ok().json(embedded_types(types, limit)));
    }
    let client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    let mut types = client
        .query(
            "SELECT event_type, count, first_seen, last_seen, payload_keys_capped FROM catalog_event_types \
             WHERE event_type > $1 ORDER BY event_type LIMIT $2",
            &[&after, &(limit + 1)],
        )
        .await
        .map_err(unavailable)?;
    let has_more = types.len() as i64 > limit;
    types.truncate(limit as usize);
    let names: Vec<String> = types.iter().map(|t| t.get(0)).collect();
    let keys = client
        .query(
            "SELECT event_type, key, json_type, count, first_seen, last_seen FROM catalog_payload_keys \
             WHERE event_type = ANY($1) ORDER BY event_type, count DESC, key, json_type",
            &[&names],
        )
        .await
        .map_err(unavailable)?;
    let mut by_type: BTreeMap<String, Vec<&tokio_postgres::Row>> = BTreeMap::new();
    for k in &keys {
        by_type.entry(k.get(0)).or_default().push(k);
    }
    let event_types = types
        .iter()
        .map(|t| {
            let name: String = t.get(0);
            let count: i64 = t.get(1);
            let payload_keys = by_type
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|k| PayloadKey {
                    key: k.get(1),
                    json_type: k.get(2),
                    count: k.get(3),
                    share: k.get::<_, i64>(3) as f64 / count.max(1) as f64,
                    first_seen: rfc3339(k.get(4)),
                    last_seen: rfc3339(k.get(5)),
                })
                .collect();
            EventType {
                event_type: name,
                count,
                first_seen: rfc3339(t.get(2)),
                last_seen: rfc3339(t.get(3)),
                payload_keys,
                payload_keys_capped: t.get(4),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(EventTypes {
        event_types,
        has_more,
        next_after: has_more.then(|| names.last().cloned()).flatten(),
    }))
}

/// Every source seen, by name.
#[utoipa::path(get, path = "/sources", tag = "catalog", responses(
    (status = 200, description = "every source seen", body = Sources),
    (status = 400, description = "a parameter was given (there are none)", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn sources(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, Problem> {
    no_parameters(&req)?;
    if let super::Store::Sqlite(reader) = &state.store {
        let rows = reader
            .read(crate::store::sqlite::catalog::sources)
            .await
            .map_err(unavailable)?;
        let sources = rows
            .into_iter()
            .map(|(source, count, first, last)| Source {
                source,
                count,
                first_seen: micros_text(first),
                last_seen: micros_text(last),
            })
            .collect();
        return Ok(HttpResponse::Ok().json(Sources { sources }));
    }
    let client = state.postgres()?.pool.get().await.map_err(unavailable)?;
    let rows = client
        .query(
            "SELECT source, count, first_seen, last_seen FROM catalog_sources ORDER BY source",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let sources = rows
        .iter()
        .map(|r| Source {
            source: r.get(0),
            count: r.get(1),
            first_seen: rfc3339(r.get(2)),
            last_seen: rfc3339(r.get(3)),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Sources { sources }))
}

/// A time of the embedded store (µs) as the API shows times.
fn micros_text(micros: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)
        .map(rfc3339)
        .unwrap_or_default()
}

/// The embedded store's event types as `GET /event-types` answers them.
fn embedded_types(
    mut types: Vec<crate::store::sqlite::catalog::CatalogType>,
    limit: i64,
) -> EventTypes {
    let has_more = types.len() as i64 > limit;
    types.truncate(limit as usize);
    let next_after = has_more
        .then(|| types.last().map(|t| t.event_type.clone()))
        .flatten();
    let event_types = types
        .into_iter()
        .map(|t| EventType {
            payload_keys: t
                .keys
                .into_iter()
                .map(|(key, json_type, count, first, last)| PayloadKey {
                    key,
                    json_type,
                    count,
                    share: count as f64 / t.count.max(1) as f64,
                    first_seen: micros_text(first),
                    last_seen: micros_text(last),
                })
                .collect(),
            event_type: t.event_type,
            count: t.count,
            first_seen: micros_text(t.first_seen),
            last_seen: micros_text(t.last_seen),
            payload_keys_capped: t.payload_keys_capped,
        })
        .collect();
    EventTypes {
        event_types,
        has_more,
        next_after,
    }
}
