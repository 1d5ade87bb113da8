//! The embedded store's tables, and the migrations that make them.
//!
//! The same rows as PostgreSQL's, in SQLite's types: times are microseconds
//! since the Unix epoch (UTC), as the API's cursors are; `payload` is jsonb's
//! canonical text (`audit::jsonb`), so an event reads back byte for byte as it
//! does from PostgreSQL, and its leaf commits to the same text; `envelope` and
//! `properties` are the published text, as PostgreSQL's `json` keeps it.
//!
//! `seq` is an event's position: one writer thread commits in turn, so a row's
//! `seq` is its place in commit order, and everything past a position is new
//! (what PostgreSQL's live tail needs a horizon for). `AUTOINCREMENT` keeps a
//! deleted row's `seq` from ever being given again.
//!
//! Applied in order, each in one transaction with `PRAGMA user_version` raised
//! to its number: a file is either before or after each one.

use rusqlite::Connection;

/// The migrations, in order; a file's `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: events, identity keys, dead letters, the audit tree's leaves.
    r#"
CREATE TABLE events (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT    NOT NULL,
    event_type         TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    target             TEXT,
    routing_key        TEXT    NOT NULL,
    exchange           TEXT    NOT NULL,
    "timestamp"        INTEGER NOT NULL,
    received_at        INTEGER NOT NULL,
    stored_at          INTEGER NOT NULL,
    payload            TEXT    NOT NULL,
    session_id         TEXT,
    correlation_id     TEXT,
    storage_latency_ms REAL,
    generation         INTEGER NOT NULL CHECK (generation BETWEEN 1 AND 3),
    envelope           TEXT    NOT NULL,
    payload_member     TEXT,
    properties         TEXT    NOT NULL,
    sanitized          INTEGER NOT NULL DEFAULT 0,
    original_body      BLOB,
    salt               BLOB
) STRICT;
-- An event with its own time is one row per (id, source, timestamp)
-- (docs/identity.md); a fallback-timed one claims its (id, source) first.
CREATE UNIQUE INDEX events_identity ON events (id, source, "timestamp");
CREATE TABLE event_keys (
    id          TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    "timestamp" INTEGER NOT NULL,
    PRIMARY KEY (id, source)
) STRICT, WITHOUT ROWID;
-- Newest first by time, `seq` the tie-break: the API's order.
CREATE INDEX events_time ON events ("timestamp" DESC, seq DESC);
CREATE INDEX events_type ON events (event_type, "timestamp" DESC, seq DESC);
CREATE INDEX events_source ON events (source, "timestamp" DESC, seq DESC);
CREATE INDEX events_target ON events (target, "timestamp" DESC, seq DESC) WHERE target IS NOT NULL;
CREATE INDEX events_session ON events (session_id, "timestamp" DESC, seq DESC) WHERE session_id IS NOT NULL;
CREATE INDEX events_correlation ON events (correlation_id, "timestamp" DESC, seq DESC) WHERE correlation_id IS NOT NULL;

CREATE TABLE dead_letter (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint  BLOB    NOT NULL UNIQUE,
    received_at  INTEGER NOT NULL,
    stored_at    INTEGER NOT NULL,
    exchange     TEXT    NOT NULL,
    routing_key  TEXT    NOT NULL,
    properties   TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    reason       TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    replay_count INTEGER NOT NULL DEFAULT 0,
    replayed_at  INTEGER
) STRICT;
CREATE INDEX dead_letter_received ON dead_letter (received_at DESC);
CREATE INDEX dead_letter_reason ON dead_letter (reason, received_at DESC);

-- An event's leaf (`audit::leaf`) at the event's seq, written in the event's
-- transaction: no row is committed without its leaf.
CREATE TABLE audit_leaves (
    seq  INTEGER PRIMARY KEY,
    leaf BLOB    NOT NULL
) STRICT;
"#,
    // 2: the catalog (`catalog.rs`): event types, sources, each type's top-level
    // payload keys, counted behind ingest from a position.
    r#"
CREATE TABLE catalog_event_types (
    event_type          TEXT    PRIMARY KEY,
    count               INTEGER NOT NULL,
    first_seen          INTEGER NOT NULL,
    last_seen           INTEGER NOT NULL,
    payload_keys_capped INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE TABLE catalog_sources (
    source     TEXT    PRIMARY KEY,
    count      INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE catalog_payload_keys (
    event_type TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    json_type  TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (event_type, key, json_type)
) STRICT, WITHOUT ROWID;
CREATE TABLE catalog_position (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
) STRICT;
INSERT INTO catalog_position VALUES (1, 0);
"#,
    // 3: the audit tree (`super::tree`): PostgreSQL's tables of the same names,
    // at places `(0, seq)`; the store's identity.
    r#"
CREATE TABLE audit_anchors (
    idx  INTEGER PRIMARY KEY,
    txid INTEGER NOT NULL,
    seq  INTEGER NOT NULL
) STRICT;
CREATE INDEX audit_anchors_place ON audit_anchors (txid, seq);
CREATE TABLE audit_tiles (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hashes BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;
CREATE TABLE audit_heads (
    size      INTEGER PRIMARY KEY,
    root      BLOB    NOT NULL,
    last_txid INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    note      TEXT    NOT NULL
) STRICT;
-- The store's identity, named by its archives (PostgreSQL's 0023).
CREATE TABLE store_identity (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id  TEXT    NOT NULL
) STRICT;
INSERT INTO store_identity VALUES (1, lower(hex(randomblob(16))));
CREATE TABLE audit_trail (
    one           INTEGER PRIMARY KEY CHECK (one = 1),
    origin        TEXT    NOT NULL,
    public_key    TEXT    NOT NULL,
    attested_from INTEGER,
    keys          TEXT    NOT NULL DEFAULT '[]'
) STRICT;
"#,
    // 4: the days retention dropped (`super::retention`; PostgreSQL's
    // `dropped_partitions`): `verify` excuses an event leaf without its row when
    // its time lies in a dropped day the tree holds the record of.
    r#"
CREATE TABLE dropped_ranges (
    id         INTEGER PRIMARY KEY,
    table_name TEXT    NOT NULL,
    partition  TEXT    NOT NULL,
    from_time  INTEGER NOT NULL,
    to_time    INTEGER NOT NULL,
    rows       INTEGER NOT NULL,
    dropped_at INTEGER NOT NULL
) STRICT;
"#,
    // 5: redaction receipts (`super::redact`; PostgreSQL's `audit_redactions`).
    r#"
CREATE TABLE audit_redactions (
    leaf_index  INTEGER PRIMARY KEY,
    txid        INTEGER NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    receipt     TEXT    NOT NULL,
    redacted_at INTEGER NOT NULL
) STRICT;
"#,
    // 6: the installation's replay secret (`super::replay`; PostgreSQL's 0017):
    // the key of the replay marks and the stream tickets. `randomblob` is
    // SQLite's ChaCha20 generator, seeded from the operating system.
    r#"
CREATE TABLE replay_secret (
    one    INTEGER PRIMARY KEY CHECK (one = 1),
    secret BLOB    NOT NULL CHECK (length(secret) = 32)
) STRICT;
INSERT INTO replay_secret VALUES (1, randomblob(32));
"#,
];

/// Migrations this binary knows and the file has not had.
pub fn pending(conn: &Connection) -> rusqlite::Result<usize> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(MIGRATIONS.len().saturating_sub(applied.max(0) as usize))
}

/// Why the file's tables cannot be used by this binary.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the file is at schema version {found}, newer than this binary knows ({known}): run a newer candystore"
    )]
    Newer { found: i64, known: usize },
    #[error("migration {number} of the embedded store failed")]
    Failed {
        number: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read the file's schema version")]
    Read(#[source] rusqlite::Error),
}

/// Applies the migrations the file has not had; returns how many ran.
pub fn migrate(conn: &mut Connection) -> Result<usize, SchemaError> {
    let applied: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(SchemaError::Read)?;
    if applied > MIGRATIONS.len() as i64 {
        return Err(SchemaError::Newer {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    let mut ran = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let number = i + 1;
        let failed = |source| SchemaError::Failed { number, source };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", number as i64)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_every_migration_once_and_a_second_run_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(pending(&conn).unwrap(), MIGRATIONS.len());
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(pending(&conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tables,
            [
                "audit_anchors",
                "audit_heads",
                "audit_leaves",
                "audit_redactions",
                "audit_tiles",
                "audit_trail",
                "catalog_event_types",
                "catalog_payload_keys",
                "catalog_position",
                "catalog_sources",
                "dead_letter",
                "dropped_ranges",
                "event_keys",
                "events",
                "replay_secret",
                "store_identity"
            ]
        );
        // Each file its own replay secret, of 32 bytes.
        let mut other = Connection::open_in_memory().unwrap();
        migrate(&mut other).unwrap();
        let secret = |c: &Connection| -> Vec<u8> {
            c.query_row("SELECT secret FROM replay_secret", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(secret(&conn).len(), 32);
        assert_ne!(secret(&conn), secret(&other));
    }

    #[test]
    fn a_file_from_a_newer_binary_is_refused_and_left_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(matches!(e, SchemaError::Newer { found: 99, .. }), "{e}");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 99);
    }
}
