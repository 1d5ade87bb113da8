//! The replay mark: how ingest tells a delivery `candystore replay` published
//! (already stored: acked, not stored again) from one a publisher merely labelled
//! so.
//!
//! Any publisher can set any header, so the header alone proves nothing: a
//! publisher that set it would have its events acked and dropped, missing from the
//! audit trail alone. The mark is therefore a MAC, HMAC-SHA256 with the
//! installation's secret (`replay_secret`, migration 0017, made by the database at
//! migrate time) over the routing key and body the delivery carries, so it cannot
//! be moved onto another body either. A delivery whose mark does not check out is
//! stored like any event; a real replay of a stored event is absorbed by the
//! identity rule anyway, so nothing is stored twice either way.
//!
//! Pure but for [`load`]. The header's value: `v1:<seq>:<64 hex digits>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The AMQP header the mark travels in.
pub const HEADER: &str = "x-candystore-replay";

const DOMAIN: &[u8] = b"candystore-replay-v1";

/// What a delivery's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// No header: an ordinary delivery.
    Absent,
    /// A mark this installation made for exactly this routing key and body.
    Authentic,
    /// A header that is not such a mark (forged, copied onto another body, made by
    /// another installation, or from before marks were authenticated): the
    /// delivery is stored like any event.
    Unauthenticated,
}

/// The installation's replay secret.
#[derive(Clone)]
pub struct ReplayKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayKey(***)")
    }
}

impl ReplayKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: HmacSha256::new_from_slice(secret).expect("hmac takes a key of any length"),
        }
    }

    /// A key for another use of the installation's secret (`purpose` names it),
    /// which shares nothing with the replay marks: HMAC(secret, purpose).
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"candystore derived key\0");
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }

    /// The MAC state over what a mark covers.
    fn over(&self, seq: i64, routing_key: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&seq.to_be_bytes());
        mac.update(&(routing_key.len() as u64).to_be_bytes());
        mac.update(routing_key.as_bytes());
        mac.update(body);
        mac
    }

    /// The header value marking a replay of event `seq`, published with exactly
    /// this routing key and body.
    pub fn mark(&self, seq: i64, routing_key: &str, body: &[u8]) -> String {
        format!(
            "v1:{seq}:{}",
            crate::model::hex::encode(&self.over(seq, routing_key, body).finalize().into_bytes())
        )
    }

    /// Judges a delivery's header (as decode's JSON has it) against its routing
    /// key and body.
    pub fn check(&self, value: Option<&serde_json::Value>, routing_key: &str, body: &[u8]) -> Mark {
        let Some(value) = value else {
            return Mark::Absent;
        };
        let Some(text) = value.as_str() else {
            return Mark::Unauthenticated;
        };
        let mut parts = text.splitn(3, ':');
        let (Some("v1"), Some(seq), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Mark::Unauthenticated;
        };
        let (Ok(seq), Some(mac)) = (seq.parse::<i64>(), decode_hex(mac)) else {
            return Mark::Unauthenticated;
        };
        // verify_slice compares in constant time.
        match self.over(seq, routing_key, body).verify_slice(&mac) {
            Ok(()) => Mark::Authentic,
            Err(_) => Mark::Unauthenticated,
        }
    }
}

/// Judges a header without a key (none could be loaded): any mark is unauthenticated.
pub fn check(
    key: Option<&ReplayKey>,
    value: Option<&serde_json::Value>,
    routing_key: &str,
    body: &[u8],
) -> Mark {
    match (key, value) {
        (_, None) => Mark::Absent,
        (Some(k), v) => k.check(v, routing_key, body),
        (None, Some(_)) => Mark::Unauthenticated,
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Reads the installation's secret. `None` when the table is missing (a database
/// not yet migrated to 0017): every mark is then unauthenticated.
pub async fn load(
    client: &tokio_postgres::Client,
) -> Result<Option<ReplayKey>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('replay_secret') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT secret FROM replay_secret", &[])
        .await?;
    Ok(row.map(|r| ReplayKey::new(r.get::<_, &[u8]>(0))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ReplayKey {
        ReplayKey::new(&[7u8; 32])
    }

    #[test]
    fn a_mark_made_for_a_delivery_is_authentic_for_it() {
        let m = key().mark(42, "agent.task.started", b"{\"id\":1}");
        assert_eq!(
            key().check(Some(&json!(m)), "agent.task.started", b"{\"id\":1}"),
            Mark::Authentic
        );
    }

    #[test]
    fn a_mark_moved_onto_another_body_or_routing_key_is_not() {
        let m = json!(key().mark(42, "a.b", b"one"));
        assert_eq!(key().check(Some(&m), "a.b", b"two"), Mark::Unauthenticated);
        assert_eq!(key().check(Some(&m), "a.c", b"one"), Mark::Unauthenticated);
    }

    #[test]
    fn a_mark_of_another_installation_is_not() {
        let m = json!(ReplayKey::new(&[8u8; 32]).mark(1, "k", b"b"));
        assert_eq!(key().check(Some(&m), "k", b"b"), Mark::Unauthenticated);
    }

    #[test]
    fn any_other_header_value_is_unauthenticated_and_no_header_is_absent() {
        for v in [
            json!(42),
            json!("yes"),
            json!("v1:1:zz"),
            json!("v1:x:00"),
            json!({"$hex": "00"}),
            json!(null),
        ] {
            assert_eq!(
                key().check(Some(&v), "k", b"b"),
                Mark::Unauthenticated,
                "{v}"
            );
        }
        assert_eq!(key().check(None, "k", b"b"), Mark::Absent);
        assert_eq!(
            check(None, Some(&json!("v1:1:00")), "k", b"b"),
            Mark::Unauthenticated
        );
    }

    #[test]
    fn a_changed_seq_breaks_the_mark() {
        let m = key().mark(42, "k", b"b").replace(":42:", ":43:");
        assert_eq!(
            key().check(Some(&json!(m)), "k", b"b"),
            Mark::Unauthenticated
        );
    }
}
