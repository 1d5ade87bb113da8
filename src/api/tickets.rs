//! `POST /events/stream/tickets`: a short-lived ticket for the live tail, for
//! browsers. EventSource cannot send an `Authorization` header, so a page asks for
//! a ticket with its bearer token (a CORS fetch), then opens
//! `GET /events/stream?ticket=…`.
//!
//! A ticket is signed, not stored: its expiry and 128 random bits, with an
//! HMAC-SHA256 under a key derived from the installation's secret (`replay_secret`,
//! the same on every instance). Issuing and spending it write nothing, so the API
//! runs on a replica or under a read-only role. It is valid for [`TICKET_TTL_SECS`]
//! on any instance and spent by its first use on each instance that sees it (the
//! instance remembers spent tickets until they expire). It is never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::ApiState;
use super::problem::Problem;

/// How long a ticket may wait to be used.
pub const TICKET_TTL_SECS: i64 = 60;

/// Spent tickets one instance remembers at most (each until it expires): past
/// this many spent within a minute, a ticket is refused with a 503 until the
/// oldest expire.
const MAX_SPENT: usize = 100_000;

/// What the MAC covers first, so no other use of the key can make a ticket.
const DOMAIN: &[u8] = b"candystore stream ticket v1\0";

type HmacSha256 = Hmac<Sha256>;

/// Makes and checks tickets: the key, and the tickets this instance has spent.
pub struct Tickets {
    mac: HmacSha256,
    /// Nonce → expiry (Unix seconds) of each ticket spent here and not yet expired.
    spent: Mutex<HashMap<[u8; 16], i64>>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(***)")
    }
}

/// Why a ticket is not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a ticket, not signed with this installation's key, expired, or spent.
    Invalid,
    /// This instance holds [`MAX_SPENT`] unexpired spent tickets.
    Busy,
}

impl Tickets {
    /// Tickets under `key` (derived from the installation's secret, so that every
    /// instance accepts every other's).
    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(key).expect("hmac takes a key of any length"),
            spent: Mutex::default(),
        }
    }

    fn tag(&self, expires: i64, nonce: &[u8; 16]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&expires.to_be_bytes());
        mac.update(nonce);
        mac
    }

    /// A ticket valid until `now + TICKET_TTL_SECS`: 112 hex digits (expiry,
    /// nonce, MAC).
    pub fn issue(&self, now: i64) -> String {
        let nonce: [u8; 16] = rand::random();
        let expires = now + TICKET_TTL_SECS;
        let tag = self.tag(expires, &nonce).finalize().into_bytes();
        format!(
            "{}{}{}",
            crate::model::hex::encode(&expires.to_be_bytes()),
            crate::model::hex::encode(&nonce),
            crate::model::hex::encode(&tag)
        )
    }

    /// Spends `ticket` at `now`: Ok once per instance for a ticket this
    /// installation issued that has not expired.
    pub fn spend(&self, ticket: &str, now: i64) -> Result<(), Refused> {
        let bytes = crate::model::hex::decode(ticket).map_err(|_| Refused::Invalid)?;
        let e: [u8; 56] = bytes.as_slice().try_into().map_err(|_| Refused::Invalid)?;
        let expires = i64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
        let nonce: [u8; 16] = e[8..24].try_into().expect("16 bytes");
        self.tag(expires, &nonce)
            .verify_slice(&e[24..])
            .map_err(|_| Refused::Invalid)?;
        if expires <= now || expires > now + TICKET_TTL_SECS {
            return Err(Refused::Invalid);
        }
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent.len() >= MAX_SPENT {
            spent.retain(|_, until| *until > now);
            if spent.len() >= MAX_SPENT {
                return Err(Refused::Busy);
            }
        }
        match spent.insert(nonce, expires) {
            None => Ok(()),
            Some(_) => Err(Refused::Invalid),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Pass as `GET /events/stream?ticket=…`, once, within `expires_in` seconds.
    ticket: String,
    expires_in: i64,
}

/// A short-lived ticket for `GET /events/stream?ticket=` (for EventSource, which
/// cannot send the bearer token).
#[utoipa::path(post, path = "/events/stream/tickets", tag = "events", responses(
    (status = 201, description = "a ticket, valid for 60 s, for one stream", body = Ticket),
    (status = 401, description = "a bearer token is required (API_TOKEN is set)", body = Problem, content_type = "application/problem+json"),
))]
pub async fn issue(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::build(StatusCode::CREATED).json(Ticket {
        ticket: state.tickets.issue(chrono::Utc::now().timestamp()),
        expires_in: TICKET_TTL_SECS,
    })
}

/// Spends a ticket: Ok once for a ticket issued less than [`TICKET_TTL_SECS`] ago,
/// a 401 problem for any other value (unknown, spent or expired alike).
pub fn spend(state: &ApiState, ticket: &str) -> Result<(), Problem> {
    match state.tickets.spend(ticket, chrono::Utc::now().timestamp()) {
        Ok(()) => Ok(()),
        Err(Refused::Invalid) => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "the stream ticket is unknown, spent or expired: ask POST /events/stream/tickets for another",
        )),
        Err(Refused::Busy) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many stream tickets were spent in the last minute; retry later",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_900_000;

    #[test]
    fn a_ticket_is_spent_once_and_only_before_it_expires() {
        let t = Tickets::new(b"installation secret");
        let a = t.issue(NOW);
        assert_eq!(a.len(), 112);
        assert_eq!(t.spend(&a, NOW + 1), Ok(()));
        assert_eq!(t.spend(&a, NOW + 2), Err(Refused::Invalid), "spent");
        let b = t.issue(NOW);
        assert_eq!(
            t.spend(&b, NOW + TICKET_TTL_SECS),
            Err(Refused::Invalid),
            "expired"
        );
    }

    #[test]
    fn another_installation_s_ticket_or_an_altered_one_is_refused() {
        let ours = Tickets::new(b"installation secret");
        let theirs = Tickets::new(b"another secret");
        assert_eq!(ours.spend(&theirs.issue(NOW), NOW), Err(Refused::Invalid));
        // Every instance of one installation accepts the others' tickets.
        let sibling = Tickets::new(b"installation secret");
        assert_eq!(sibling.spend(&ours.issue(NOW), NOW), Ok(()));
        // A later expiry, written over a real ticket, breaks its MAC.
        let real = ours.issue(NOW);
        let later = format!(
            "{}{}",
            crate::model::hex::encode(&(NOW + 3600).to_be_bytes()),
            &real[16..]
        );
        assert_eq!(ours.spend(&later, NOW), Err(Refused::Invalid));
        for junk in ["", "zz", &"0".repeat(112), &real[..110]] {
            assert_eq!(ours.spend(junk, NOW), Err(Refused::Invalid), "{junk}");
        }
    }
}
