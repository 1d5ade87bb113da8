//! The embedded store's writer against a real SQLite file, and beside
//! PostgreSQL's: the same batches leave the same rows in both.

use candystore::metrics::Metrics;
use candystore::model::envelope::Record;
use candystore::source::decode::{Properties, RawDelivery, decode};
use candystore::store::sqlite::{Sqlite, write::Handle};
use candystore::store::{WriteError, Writer};
use serde_json::json;

use crate::support::{TempDb, TempSqlite};

fn raw(body: &serde_json::Value, received_at: chrono::DateTime<chrono::Utc>) -> RawDelivery {
    RawDelivery {
        body: serde_json::to_vec(body).unwrap(),
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: "k".into(),
        properties: Properties::default(),
        received_at,
        authentic_replay: false,
    }
}

fn record(body: serde_json::Value) -> Record {
    decode(raw(&body, chrono::Utc::now()))
}

async fn write(
    w: &mut Writer,
    records: &[Record],
) -> Result<candystore::store::Written, WriteError> {
    let refs: Vec<&Record> = records.iter().collect();
    w.write(&refs, &Metrics::new()).await
}

fn sqlite_writer(file: &TempSqlite) -> (Sqlite, Writer) {
    let store = Sqlite::own(&file.path).unwrap();
    let writer = Writer::Sqlite(Handle::start(&store).unwrap());
    (store, writer)
}

fn count(file: &TempSqlite, sql: &str) -> i64 {
    file.look().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn repeats_inside_one_batch_and_across_batches_leave_one_row_each_and_are_counted() {
    let file = TempSqlite::new();
    let (_store, mut w) = sqlite_writer(&file);
    let same = json!({"id": "same", "event_type": "t", "source": "s", "timestamp": "2026-12-01T10:00:00Z", "data": {}});
    let records: Vec<Record> = (0..3).map(|_| record(same.clone())).collect();
    let done = write(&mut w, &records).await.unwrap();
    assert_eq!((done.stored_total(), done.duplicates), (1, 2));
    let again = write(&mut w, &records[..1]).await.unwrap();
    assert_eq!((again.stored_total(), again.duplicates), (0, 1));
    assert_eq!(count(&file, "SELECT count(*) FROM events"), 1);
    // Every stored event has its leaf, at its seq.
    assert_eq!(
        count(
            &file,
            "SELECT count(*) FROM events e JOIN audit_leaves l ON l.seq = e.seq WHERE length(e.salt) = 32"
        ),
        1
    );
}

#[tokio::test]
async fn a_fallback_timed_event_is_one_row_whatever_time_each_delivery_gives_it() {
    let file = TempSqlite::new();
    let (_store, mut w) = sqlite_writer(&file);
    // No time in the envelope: each delivery falls back to its receive time.
    let body = json!({"id": "no-time", "event_type": "t", "source": "s", "data": {}});
    let first = decode(raw(&body, chrono::Utc::now() - chrono::Duration::hours(1)));
    let second = decode(raw(&body, chrono::Utc::now()));
    let done = write(&mut w, &[first]).await.unwrap();
    assert_eq!(done.stored_total(), 1);
    let done = write(&mut w, &[second]).await.unwrap();
    assert_eq!((done.stored_total(), done.duplicates), (0, 1));
    // Two events with their own times are two rows, though id and source match.
    let at = |t: &str| {
        record(json!({"id": "timed", "event_type": "t", "source": "s", "timestamp": t, "data": {}}))
    };
    let done = write(
        &mut w,
        &[at("2026-12-01T10:00:00Z"), at("2026-12-01T11:00:00Z")],
    )
    .await
    .unwrap();
    assert_eq!(done.stored_total(), 2);
    assert_eq!(count(&file, "SELECT count(*) FROM events"), 3);
    assert_eq!(count(&file, "SELECT count(*) FROM event_keys"), 1);
}

#[tokio::test]
async fn a_dead_letter_is_stored_once_with_its_bytes_and_a_redelivery_is_counted() {
    let file = TempSqlite::new();
    let (_store, mut w) = sqlite_writer(&file);
    let bad = RawDelivery {
        body: b"{not json \xff".to_vec(),
        ..raw(&json!({}), chrono::Utc::now())
    };
    let dead = decode(bad.clone());
    assert!(matches!(dead, Record::DeadLetter(_)));
    let done = write(&mut w, &[dead]).await.unwrap();
    assert_eq!(done.dead_letters, 1);
    let done = write(&mut w, &[decode(bad)]).await.unwrap();
    assert_eq!((done.dead_letters, done.dead_letter_duplicates), (0, 1));
    let body: Vec<u8> = file
        .look()
        .query_row("SELECT body FROM dead_letter", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, b"{not json \xff");
}

#[tokio::test]
async fn a_payload_jsonb_cannot_hold_is_refused_as_postgresql_refuses_it() {
    let file = TempSqlite::new();
    let (_store, mut w) = sqlite_writer(&file);
    // Nothing decode takes is past numeric's range (it refuses numbers beyond
    // f64 and 128-bit integers), so the payload is set here: 200,001 digits
    // before the point, which jsonb refuses.
    let mut r = record(json!({"id": "big", "event_type": "t", "source": "s", "data": {}}));
    let Record::Event(e) = &mut r else {
        panic!("an event")
    };
    e.payload = br#"{"n": 1e200000}"#.to_vec();
    let e = write(&mut w, &[r]).await.unwrap_err();
    assert!(matches!(e, WriteError::Refused(_)), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(count(&file, "SELECT count(*) FROM events"), 0);
}

/// The columns both stores keep, in one text form: times as microseconds.
const PG_ROWS: &str = "SELECT id, source, (extract(epoch FROM \"timestamp\") * 1000000)::int8, event_type, target, \
    routing_key, exchange, (extract(epoch FROM received_at) * 1000000)::int8, payload::text, envelope::text, \
    payload_member, properties::text, session_id, correlation_id, generation::int8, sanitized, original_body \
    FROM events ORDER BY seq";
const SQLITE_ROWS: &str = "SELECT id, source, \"timestamp\", event_type, target, routing_key, exchange, \
    received_at, payload, envelope, payload_member, properties, session_id, correlation_id, generation, \
    sanitized != 0, original_body FROM events ORDER BY seq";

/// One stored event, every column both stores keep.
#[derive(Debug, PartialEq)]
struct Stored {
    id: String,
    source: String,
    timestamp: i64,
    event_type: String,
    target: Option<String>,
    routing_key: String,
    exchange: String,
    received_at: i64,
    payload: String,
    envelope: String,
    payload_member: Option<String>,
    properties: String,
    session_id: Option<String>,
    correlation_id: Option<String>,
    generation: i64,
    sanitized: bool,
    original_body: Option<Vec<u8>>,
}

#[tokio::test]
async fn the_same_deliveries_leave_the_same_rows_in_both_stores() {
    let db = TempDb::new(true).await;
    let file = TempSqlite::new();
    let (_store, mut lite) = sqlite_writer(&file);
    let mut pg = Writer::Postgres(Box::new(candystore::store::postgres::write::Writer::new(
        candystore::db::pg_config(&db.url).unwrap(),
    )));
    let received = chrono::Utc::now();
    let bodies = [
        // Each generation, keys out of jsonb's order, a duplicate key, numbers
        // jsonb rewrites, escapes, a NUL PostgreSQL cannot hold (sanitised).
        json!({"id": "g1", "event_type": "t.one", "source": "s", "session_id": "sess",
               "timestamp": "2026-12-01T10:00:00.123456Z", "data": {"zz": 1, "a": [1.50e1, 0.0, -0], "é": "\u{1}"}}),
        json!({"event_id": "g2", "event_type": "t.two", "source": {"app": "a", "host": "h"},
               "correlation_ids": ["c1"], "timestamp": "2026-12-01T10:00:01Z", "payload": {"b": {"c": null}}}),
        json!({"specversion": "1.0", "id": "g3", "type": "t.three", "source": "s3",
               "time": "2026-12-01T10:00:02+05:30", "data": {"text": "a\u{0}b"}}),
        json!({"id": "g4", "event_type": "t.one", "source": "s", "data": {"no": "time"}}),
    ];
    let mut records: Vec<Record> = bodies.iter().map(|b| decode(raw(b, received))).collect();
    records.push(decode(RawDelivery {
        body: br#"{"id": "dup", "event_type": "t", "source": "s", "data": {"k": 1, "k": 2}}"#
            .to_vec(),
        ..raw(&json!({}), received)
    }));
    let a = write(&mut pg, &records).await.unwrap();
    let b = write(&mut lite, &records).await.unwrap();
    assert_eq!(a.stored_total(), 5);
    assert_eq!(
        (a.stored_total(), a.duplicates, a.dead_letters),
        (b.stored_total(), b.duplicates, b.dead_letters)
    );
    let client = db.client().await;
    let in_pg: Vec<Stored> = client
        .query(PG_ROWS, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| Stored {
            id: r.get(0),
            source: r.get(1),
            timestamp: r.get(2),
            event_type: r.get(3),
            target: r.get(4),
            routing_key: r.get(5),
            exchange: r.get(6),
            received_at: r.get(7),
            payload: r.get(8),
            envelope: r.get(9),
            payload_member: r.get(10),
            properties: r.get(11),
            session_id: r.get(12),
            correlation_id: r.get(13),
            generation: r.get(14),
            sanitized: r.get(15),
            original_body: r.get(16),
        })
        .collect();
    let look = file.look();
    let in_sqlite: Vec<Stored> = look
        .prepare(SQLITE_ROWS)
        .unwrap()
        .query_map([], |r| {
            Ok(Stored {
                id: r.get(0)?,
                source: r.get(1)?,
                timestamp: r.get(2)?,
                event_type: r.get(3)?,
                target: r.get(4)?,
                routing_key: r.get(5)?,
                exchange: r.get(6)?,
                received_at: r.get(7)?,
                payload: r.get(8)?,
                envelope: r.get(9)?,
                payload_member: r.get(10)?,
                properties: r.get(11)?,
                session_id: r.get(12)?,
                correlation_id: r.get(13)?,
                generation: r.get(14)?,
                sanitized: r.get(15)?,
                original_body: r.get(16)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(client);
    db.drop_it().await;
    assert_eq!(in_pg.len(), 5);
    for (p, s) in in_pg.iter().zip(&in_sqlite) {
        assert_eq!(p, s);
    }
    assert_eq!(in_pg.len(), in_sqlite.len());
}

#[tokio::test]
async fn the_catalog_counts_each_event_once_and_caps_a_types_keys_as_postgresql_does() {
    use candystore::store::sqlite::{Role, catalog};
    let file = TempSqlite::new();
    let (store, mut w) = sqlite_writer(&file);
    // One type with 105 distinct keys over three events (the first two share
    // 60 keys; the third brings 45 new ones), one other type with two keys.
    let keys = |range: std::ops::Range<i32>| -> serde_json::Map<String, serde_json::Value> {
        range.map(|i| (format!("k{i:03}"), json!(i))).collect()
    };
    let records = vec![
        record(
            json!({"id": "a", "event_type": "wide", "source": "s1", "timestamp": "2026-12-01T10:00:00Z", "data": keys(0..60)}),
        ),
        record(
            json!({"id": "b", "event_type": "wide", "source": "s1", "timestamp": "2026-12-01T11:00:00Z", "data": keys(0..60)}),
        ),
        record(
            json!({"id": "c", "event_type": "narrow", "source": "s2", "timestamp": "2026-12-01T09:00:00Z", "data": {"x": "1", "y": [1]}}),
        ),
    ];
    write(&mut w, &records).await.unwrap();
    let mut conn = store.connect(Role::Write).unwrap();
    assert_eq!(catalog::step(&mut conn).unwrap(), 3);
    assert_eq!(
        catalog::step(&mut conn).unwrap(),
        0,
        "nothing counted twice"
    );
    write(
        &mut w,
        &[record(json!({"id": "d", "event_type": "wide", "source": "s1", "timestamp": "2026-12-01T12:00:00Z", "data": keys(60..105)}))],
    )
    .await
    .unwrap();
    assert_eq!(catalog::step(&mut conn).unwrap(), 1);
    let types = catalog::event_types(&conn, "", 10).unwrap();
    let wide = types.iter().find(|t| t.event_type == "wide").unwrap();
    assert_eq!(wide.count, 3);
    assert!(wide.payload_keys_capped);
    // 100 keys kept (the first 60, then the 40 first by name of the new ones),
    // the other 5 counted in one row.
    assert_eq!(wide.keys.len(), 101);
    let other = wide
        .keys
        .iter()
        .find(|k| k.1 == catalog::OTHER_KEYS)
        .unwrap();
    assert_eq!((other.0.as_str(), other.2), ("", 5));
    assert!(wide.keys.iter().any(|k| k.0 == "k099"));
    assert!(!wide.keys.iter().any(|k| k.0 == "k100"));
    let narrow = types.iter().find(|t| t.event_type == "narrow").unwrap();
    let kinds: Vec<(&str, &str)> = narrow
        .keys
        .iter()
        .map(|k| (k.0.as_str(), k.1.as_str()))
        .collect();
    assert_eq!(kinds, [("x", "string"), ("y", "array")]);
    let sources = catalog::sources(&conn).unwrap();
    assert_eq!(
        sources
            .iter()
            .map(|s| (s.0.as_str(), s.1))
            .collect::<Vec<_>>(),
        [("s1", 3), ("s2", 1)]
    );
}
