//! `GET /openapi.json` (generated with utoipa from the handlers' annotations) and
//! `GET /docs`, a page that renders it. Everything is compiled into the binary:
//! no CDN, nothing fetched at build or run time.

use actix_web::HttpResponse;
use utoipa::OpenApi;

use super::{audit, catalog, dead_letters, events, health, stream, tickets, timeline, view};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Candystore",
        description = "The event store and audit trail of the 33GOD ecosystem. Errors are application/problem+json. With API_TOKEN set, every route but /health and /ready needs `Authorization: Bearer <token>`."
    ),
    paths(
        health::health,
        health::ready,
        events::list,
        events::one,
        events::raw,
        stream::stream,
        tickets::issue,
        timeline::sessions,
        timeline::correlations,
        dead_letters::list,
        dead_letters::one,
        audit::checkpoints,
        audit::checkpoint,
        audit::public_key,
        audit::inclusion,
        audit::consistency,
        catalog::event_types,
        catalog::sources,
        spec,
        docs
    ),
    components(schemas(
        view::EventView,
        events::Page,
        timeline::Timeline,
        timeline::Summary,
        dead_letters::DeadLetterView,
        dead_letters::DeadLetterPage,
        tickets::Ticket,
        audit::Checkpoints,
        audit::Checkpoint,
        crate::audit::proof::Inclusion,
        crate::audit::proof::Consistency,
        catalog::EventTypes,
        catalog::EventType,
        catalog::PayloadKey,
        catalog::Sources,
        catalog::Source,
        super::problem::Problem
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "docs", responses((status = 200, description = "OpenAPI 3.1 document"), (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn spec() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

/// A page that renders the OpenAPI document, served from the binary.
#[utoipa::path(get, path = "/docs", tag = "docs", responses((status = 200, description = "HTML page"), (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("docs/index.html"))
}
