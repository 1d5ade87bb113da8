//! What `candystore replay` reads from the embedded file: the installation's
//! replay secret (migration 6) and the selected events in (time, seq) order,
//! keyset-paged, with what rebuilds each as it was published.

use rusqlite::{Connection, OptionalExtension, ToSql};

use crate::model::query::{Cursor, EventQuery};

/// The installation's replay secret; `None` in a file not yet migrated to 6.
pub fn secret(conn: &Connection) -> rusqlite::Result<Option<Vec<u8>>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'replay_secret'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_row("SELECT secret FROM replay_secret", [], |r| r.get(0))
        .optional()
}

/// A stored event as a replay publishes it again.
#[derive(Debug)]
pub struct Stored {
    pub seq: i64,
    /// Microseconds since the epoch, UTC.
    pub timestamp: i64,
    pub routing_key: String,
    /// The envelope without its payload, the payload (jsonb's text) and the
    /// member it came from: `model::envelope::rebuild` makes the body again.
    pub envelope: String,
    pub payload: String,
    pub payload_member: Option<String>,
    /// The AMQP properties as received (JSON text).
    pub properties: String,
}

/// `q`'s conditions and the position to continue after.
fn selected(q: &EventQuery, after: Option<Cursor>) -> (String, Vec<Box<dyn ToSql + Send>>) {
    let (mut filter, mut params) = super::read::conditions(q);
    if let Some(c) = after {
        filter = super::read::past(&filter, &mut params, "\"timestamp\"", ">", c);
    }
    (filter, params)
}

/// How many events `q` selects past `after`.
pub fn count(conn: &Connection, q: &EventQuery, after: Option<Cursor>) -> rusqlite::Result<u64> {
    let (filter, params) = selected(q, after);
    let n: i64 = conn.query_row(
        &format!("SELECT count(*) FROM events WHERE {filter}"),
        &super::read::refs(&params)[..],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// The next events `q` selects past `after`, oldest first, each handed to
/// `each` as it is read (none held here): at most `limit`, and no more once they
/// hold `max_bytes` of envelope and payload (one larger event is a page of its
/// own). Says whether a bound closed the page.
pub fn page(
    conn: &Connection,
    q: &EventQuery,
    after: Option<Cursor>,
    limit: usize,
    max_bytes: usize,
    mut each: impl FnMut(Stored),
) -> rusqlite::Result<bool> {
    let (filter, params) = selected(q, after);
    let mut statement = conn.prepare_cached(&format!(
        "SELECT seq, \"timestamp\", routing_key, envelope, payload, payload_member, properties \
         FROM events WHERE {filter} ORDER BY \"timestamp\", seq LIMIT {limit}"
    ))?;
    let mut rows = statement.query(&super::read::refs(&params)[..])?;
    let (mut read, mut bytes) = (0, 0);
    while let Some(r) = rows.next()? {
        let event = Stored {
            seq: r.get(0)?,
            timestamp: r.get(1)?,
            routing_key: r.get(2)?,
            envelope: super::column_text(r, 3)?,
            payload: r.get(4)?,
            payload_member: r.get(5)?,
            properties: super::column_text(r, 6)?,
        };
        bytes += event.envelope.len() + event.payload.len();
        read += 1;
        each(event);
        if bytes >= max_bytes {
            return Ok(true);
        }
    }
    Ok(read == limit)
}
