//! The batch writer against the real PostgreSQL, without the broker.

use std::collections::HashMap;

use candystore::metrics::Metrics;
use candystore::model::envelope::Record;
use candystore::source::decode::{Properties, RawDelivery, decode};
use candystore::store::postgres::write::Writer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::helpers::TempDb;

fn raw(body: Vec<u8>, routing_key: &str) -> RawDelivery {
    RawDelivery {
        body,
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: routing_key.into(),
        properties: Properties::default(),
        received_at: chrono::Utc::now(),
        authentic_replay: false,
    }
}

#[tokio::test]
async fn repeats_inside_one_batch_leave_one_row_and_are_counted() {
    let db = TempDb::new(true).await;
    let mut writer = Writer::new(candystore::db::pg_config(&db.url).unwrap());
    let metrics = Metrics::new();
    let body =
        serde_json::to_vec(&json!({"id": "same", "event_type": "t", "source": "s", "data": {}}))
            .unwrap();
    let records: Vec<Record> = (0..3).map(|_| decode(raw(body.clone(), "t"))).collect();
    let refs: Vec<&Record> = records.iter().collect();
    let w = writer.write(&refs, &metrics).await.unwrap();
    assert_eq!(w.stored_total(), 1);
    assert_eq!(w.duplicates, 2);
    // A redelivery in a later batch is a duplicate too.
    let w = writer.write(&refs[..1], &metrics).await.unwrap();
    assert_eq!((w.stored_total(), w.duplicates), (0, 1));
    db.drop_it().await;
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[\\x00-\\x1f\"\\\\/]{0,6}",
        "\\PC{0,16}",
        Just("\u{0}".to_owned()),
        Just("a\u{0}b\u{0}".to_owned()),
        Just("🦀\u{feff}\u{fffd}\u{10ffff}".to_owned()),
        Just("x".repeat(3000)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::hash_map(text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Envelopes of every generation, with hostile values in every member.
fn envelope() -> impl Strategy<Value = Vec<u8>> {
    let member = prop_oneof![json_value(), text().prop_map(Value::String)];
    let time = prop_oneof![
        Just(json!("2026-11-20T14:03:11.482Z")),
        Just(json!("2026-11-20T14:03:11+05:30")),
        Just(json!("2026-11-20 14:03:11")),
        Just(json!("99999-01-01T00:00:00Z")),
        Just(json!(1.7e9)),
        Just(json!(-5)),
        json_value(),
    ];
    (
        0..3u8,
        member.clone(),
        member.clone(),
        member.clone(),
        member.clone(),
        time,
        json_value(),
        prop::collection::hash_map(text(), json_value(), 0..4),
    )
        .prop_map(|(generation, id, kind, source, sid, time, data, extra)| {
            let mut obj: serde_json::Map<String, Value> = extra.into_iter().collect();
            match generation {
                0 => {
                    obj.insert("id".into(), id);
                    obj.insert("event_type".into(), kind);
                    obj.insert("source".into(), source);
                    obj.insert("session_id".into(), sid);
                    obj.insert("timestamp".into(), time);
                    obj.insert("data".into(), data);
                }
                1 => {
                    obj.insert("event_id".into(), id);
                    obj.insert("event_type".into(), kind);
                    obj.insert("source".into(), json!({"app": source, "host": sid}));
                    obj.insert("correlation_ids".into(), json!([sid]));
                    obj.insert("timestamp".into(), time);
                    obj.insert("payload".into(), data);
                }
                _ => {
                    obj.insert("specversion".into(), json!("1.0"));
                    obj.insert("id".into(), id);
                    obj.insert("type".into(), kind);
                    obj.insert("source".into(), source);
                    obj.insert("sessionid".into(), sid);
                    obj.insert("time".into(), time);
                    obj.insert("data".into(), data);
                }
            }
            serde_json::to_vec(&Value::Object(obj)).unwrap()
        })
}

#[test]
fn whatever_decode_accepts_postgresql_accepts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TempDb::new(true));
    let writer = std::cell::RefCell::new(Writer::new(candystore::db::pg_config(&db.url).unwrap()));
    let metrics = Metrics::new();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let routing_key = prop_oneof![Just(String::new()), text()];
    let result = runner.run(
        &prop::collection::vec((envelope(), routing_key), 1..40),
        |deliveries| {
            let records: Vec<Record> = deliveries
                .into_iter()
                .map(|(body, key)| decode(raw(body, &key.chars().take(200).collect::<String>())))
                .collect();
            let refs: Vec<&Record> = records.iter().collect();
            let written = rt
                .block_on(writer.borrow_mut().write(&refs, &metrics))
                .map_err(|e| {
                    TestCaseError::fail(format!(
                        "PostgreSQL refused a decoded batch: {}",
                        candystore::telemetry::error_chain(&e)
                    ))
                })?;
            let events = records
                .iter()
                .filter(|r| matches!(r, Record::Event(_)))
                .count() as u64;
            let dead = records.len() as u64 - events;
            prop_assert_eq!(written.stored_total() + written.duplicates, events);
            prop_assert_eq!(written.dead_letters + written.dead_letter_duplicates, dead);
            Ok(())
        },
    );
    let counts: HashMap<&str, i64> = rt.block_on(async {
        let c = db.client().await;
        let mut m = HashMap::new();
        for t in ["events", "dead_letter"] {
            m.insert(
                t,
                c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        m
    });
    rt.block_on(db.drop_it());
    result.unwrap();
    assert!(
        counts["events"] > 0,
        "the generator produced storable events"
    );
}
