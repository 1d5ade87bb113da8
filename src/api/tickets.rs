//! `POST /events/stream/tickets`: a single-use ticket for the live tail, for
//! browsers. EventSource cannot send an `Authorization` header, so a page asks for
//! a ticket with its bearer token (a CORS fetch), then opens
//! `GET /events/stream?ticket=…`. A ticket is 256 random bits, valid for
//! [`TICKET_TTL`], spent by its first use on any instance (the table holds only its
//! SHA-256), and never logged.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::problem::{Problem, unavailable};

/// How long a ticket may wait to be used.
pub const TICKET_TTL_SECS: i64 = 60;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Pass as `GET /events/stream?ticket=…`, once, within `expires_in` seconds.
    ticket: String,
    expires_in: i64,
}

fn digest(ticket: &str) -> Vec<u8> {
    Sha256::digest(ticket.as_bytes()).to_vec()
}

/// A single-use ticket for `GET /events/stream?ticket=` (for EventSource, which
/// cannot send the bearer token).
#[utoipa::path(post, path = "/events/stream/tickets", tag = "events", responses(
    (status = 201, description = "a ticket, valid for 60 s, for one stream", body = Ticket),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "the event store cannot answer now (opaque; the cause is logged)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn issue(state: web::Data<ApiState>) -> Result<HttpResponse, Problem> {
    let ticket = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let client = state.pool.get().await.map_err(unavailable)?;
    // The read pool's sessions are read-only by default; this write is the exception.
    client
        .batch_execute("BEGIN READ WRITE")
        .await
        .map_err(unavailable)?;
    let written = async {
        client
            .execute(
                "DELETE FROM stream_tickets WHERE expires_at < now() - interval '1 minute'",
                &[],
            )
            .await?;
        client
            .execute(
                "INSERT INTO stream_tickets (digest, expires_at) VALUES ($1, now() + make_interval(secs => $2))",
                &[&digest(&ticket), &(TICKET_TTL_SECS as f64)],
            )
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = written {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(unavailable(e));
    }
    Ok(HttpResponse::build(StatusCode::CREATED).json(Ticket {
        ticket,
        expires_in: TICKET_TTL_SECS,
    }))
}

/// Spends a ticket: Ok once for a ticket issued less than [`TICKET_TTL_SECS`] ago,
/// a 401 problem for any other value (unknown, spent or expired alike).
pub async fn spend(state: &ApiState, ticket: &str) -> Result<(), Problem> {
    let client = state.pool.get().await.map_err(unavailable)?;
    client
        .batch_execute("BEGIN READ WRITE")
        .await
        .map_err(unavailable)?;
    let spent = client
        .query_opt(
            "DELETE FROM stream_tickets WHERE digest = $1 AND expires_at > now() RETURNING 1",
            &[&digest(ticket)],
        )
        .await;
    let committed = client.batch_execute("COMMIT").await;
    match (spent, committed) {
        (Ok(Some(_)), Ok(())) => Ok(()),
        (Ok(None), Ok(())) => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "the stream ticket is unknown, spent or expired: ask POST /events/stream/tickets for another",
        )),
        (Err(e), _) | (_, Err(e)) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(unavailable(e))
        }
    }
}
