//! RFC 9457 problem details: every error answer of the API is
//! `application/problem+json`. 4xx answers explain; 5xx answers are opaque and the
//! cause is logged once where it happened.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// RFC 9457 problem details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            parameter: None,
        }
    }

    /// A 400 naming the query parameter at fault.
    pub fn bad_parameter(name: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            parameter: Some(name),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                format!("invalid parameter {name}: {detail}"),
            )
        }
    }

    /// The answer with a `Retry-After` header (seconds), for a 503 that will pass.
    pub fn response_with_retry_after(&self, seconds: u32) -> HttpResponse {
        let mut r = self.response();
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(seconds),
        );
        r
    }

    pub fn response(&self) -> HttpResponse {
        HttpResponse::build(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type("application/problem+json")
        .json(self)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.detail)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

/// The answer for a path no route serves.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no resource at {}", req.path()),
    )
    .response()
}

/// The answer for a method the ticket resource does not serve (it serves POST).
pub async fn method_not_allowed_post(req: actix_web::HttpRequest) -> HttpResponse {
    let mut r = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not served at {}; use POST", req.method(), req.path()),
    )
    .response();
    r.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("POST"),
    );
    r
}

/// The answer for a method a resource does not serve (every other resource serves GET).
pub async fn method_not_allowed(req: actix_web::HttpRequest) -> HttpResponse {
    let mut r = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not served at {}; use GET", req.method(), req.path()),
    )
    .response();
    r.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("GET"),
    );
    r
}

/// A failure to answer: logged here once with its cause chain and SQLSTATE (the
/// request's span adds the route), answered with an opaque 503.
///
/// A data exception (SQLSTATE class 22) can only come from a value a client sent
/// that validation let through: it is answered 400, never 503.
pub(crate) fn unavailable(e: impl std::error::Error + 'static) -> Problem {
    let error = crate::telemetry::error_chain(&e);
    let sqlstate = sqlstate(&e);
    if sqlstate.as_deref().is_some_and(|c| c.starts_with("22")) {
        tracing::warn!(%error, sqlstate, "query refused a value from the request");
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "a value in the request is out of the range the event store can compare",
        );
    }
    tracing::error!(%error, sqlstate, "query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the event store cannot answer right now",
    )
}

/// The SQLSTATE of a PostgreSQL error, wherever it sits in the chain.
fn sqlstate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            return pg.code().map(|c| c.code().to_owned());
        }
        cur = err.source();
    }
    None
}

impl From<crate::model::query::InvalidFilter> for Problem {
    fn from(e: crate::model::query::InvalidFilter) -> Self {
        Problem::bad_parameter(e.name, e.reason)
    }
}
