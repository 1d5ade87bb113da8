//! Bearer-token authentication. With API_TOKEN set, every route but `/health` and
//! `/ready` needs `Authorization: Bearer <token>`; otherwise a 401 problem.
//! Tokens are compared as SHA-256 digests in constant time, against every
//! configured token, so neither timing nor length tells anything.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};

use super::problem::Problem;

/// Paths anyone may call: probes must work without credentials.
const OPEN_PATHS: [&str; 2] = ["/health", "/ready"];

/// The accepted tokens, as digests.
#[derive(Clone, Default)]
pub struct Auth {
    digests: Vec<[u8; 32]>,
}

impl Auth {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether an `Authorization` header value carries an accepted token.
    pub fn allows(&self, header: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(token) = header.and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        }) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every token, without stopping early.
        self.digests
            .iter()
            .fold(false, |found, d| found | constant_time_eq(d, &given))
    }
}

/// Whether a query string carries a `ticket` parameter.
fn has_ticket(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "ticket" || pair.starts_with("ticket="))
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: lets open paths and accepted tokens through, answers 401 otherwise.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // A live-tail request with a ticket carries its own credential: the stream
    // handler spends the ticket (or answers 401) before it does anything else.
    let ticketed = req.path() == "/events/stream" && has_ticket(req.query_string());
    let allowed = OPEN_PATHS.contains(&req.path())
        || ticketed
        || req.method() == actix_web::http::Method::OPTIONS
        || req.app_data::<web::Data<Auth>>().is_none_or(|auth| {
            auth.allows(
                req.headers()
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )
        });
    if allowed {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "this API needs Authorization: Bearer <token>",
    )
    .response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"candystore\""),
    );
    Ok(req.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_bearer_token_is_accepted() {
        let auth = Auth::new(&["0123456789abcdef".into(), "fedcba9876543210".into()]);
        assert!(auth.allows(Some("Bearer 0123456789abcdef")));
        assert!(auth.allows(Some("bearer fedcba9876543210")));
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer wrong"),
            Some("Basic 0123456789abcdef"),
            Some("0123456789abcdef"),
        ] {
            assert!(!auth.allows(bad), "{bad:?}");
        }
        assert!(Auth::new(&[]).allows(None), "no tokens: the API is open");
    }
}
