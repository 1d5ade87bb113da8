//! End to end: publish to the real RabbitMQ, read back from the real PostgreSQL.

use std::time::Duration;

use candystore::app::AppOptions;
use candystore::source::publish::sample_event;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::json;

use crate::both_stores;
use crate::helpers::{On, gen1, spawn_app, spawn_app_on, spawn_app_with};

#[tokio::test]
async fn every_published_event_is_stored_exactly_once() {
    let app = spawn_app().await;
    let n = 300;
    for i in 0..n {
        let (key, body) = sample_event("once", i, 600, (i % 3) as u8 + 1);
        app.publish(&key, &body).await;
    }
    assert_eq!(app.wait_for_rows("events", n as i64).await, n as i64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.count("events").await,
        n as i64,
        "no event is stored twice"
    );
    assert_eq!(app.count("dead_letter").await, 0);
    let generations: Vec<(i16, i64)> = app
        .db
        .query(
            "SELECT generation, count(*) FROM events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(generations, vec![(1, 100), (2, 100), (3, 100)]);
    // Everything committed was acked: the queue is empty and the books balance.
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_acks_total").await == n as f64
    })
    .await;
    assert_eq!(app.queue_state().await.0, 0);
    assert_eq!(app.metric("candystore_events_stored_total").await, n as f64);
    assert_eq!(
        app.metric("candystore_events_received_total").await,
        n as f64
    );
    assert_eq!(
        app.metric("candystore_storage_latency_seconds_count").await,
        n as f64
    );
    // The original design's gauge: the latest batch's oldest delivery → commit.
    let last_ms = app.metric("candystore_storage_latency_milliseconds").await;
    assert!(
        last_ms > 0.0 && last_ms < 30_000.0,
        "the latest batch's storage latency in ms: {last_ms}"
    );
}

#[tokio::test]
async fn each_generation_is_projected_onto_the_columns() {
    let app = spawn_app().await;
    app.publish(
        "transcription.segment.completed",
        &gen1(
            "2f0d6a3e-2b7c-4a7e-9e0b-5f1f2f3a4b5c",
            "transcription.segment.completed",
        ),
    )
    .await;
    let typed = json!({
        "event_id": "5af3fbd6-c28f-45d5-8b83-54287f5c5ca1",
        "event_type": "fireflies.transcript.ready",
        "timestamp": "2026-03-02T09:15:00+02:00",
        "version": "1.0.0",
        "source": { "host": "big-chungus", "type": "agent", "app": "n8n" },
        "correlation_ids": ["a28a87c4-7b72-41a3-9ecc-d21e136aefb2", "other"],
        "payload": { "session_id": "sess-2", "words": 12 }
    });
    app.publish(
        "fireflies.transcript.ready",
        &serde_json::to_vec(&typed).unwrap(),
    )
    .await;
    let cloud = json!({
        "specversion": "1.0", "id": "not-a-uuid-42", "type": "bloodbank.v1.repo.decision.recorded",
        "source": "hermes://agent/33god-pm", "time": "2026-08-04T05:32:12Z",
        "correlationid": "corr-3", "sessionid": "sess-3", "ordering_key": "repo:33god",
        "data": { "decision": "ship" }
    });
    app.publish(
        "bloodbank.evt.v1.repo.decision.recorded",
        &serde_json::to_vec(&cloud).unwrap(),
    )
    .await;
    app.wait_for_rows("events", 3).await;

    let rows = app
        .db
        .query(
            "SELECT generation, id, event_type, source, target, to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS'), \
             session_id, correlation_id, payload::text, routing_key FROM events ORDER BY generation",
            &[],
        )
        .await
        .unwrap();
    let row = |i: usize| -> Vec<Option<String>> {
        (1..10)
            .map(|c| rows[i].get::<_, Option<String>>(c))
            .collect()
    };
    assert_eq!(
        row(0),
        [
            Some("2f0d6a3e-2b7c-4a7e-9e0b-5f1f2f3a4b5c"),
            Some("transcription.segment.completed"),
            Some("whisperlivekit"),
            Some("candybar"),
            Some("2026-11-20T14:03:11.482"),
            Some("abc-123"),
            Some("7c4d58ac-4a34-4261-b7a7-a99cdf62813a"),
            Some(r#"{"text": "hello", "confidence": 0.93}"#),
            Some("transcription.segment.completed"),
        ]
        .map(|s| s.map(str::to_owned))
    );
    assert_eq!(
        row(1),
        [
            Some("5af3fbd6-c28f-45d5-8b83-54287f5c5ca1"),
            Some("fireflies.transcript.ready"),
            Some("n8n"),
            None,
            Some("2026-03-02T07:15:00.000"),
            Some("sess-2"),
            Some("a28a87c4-7b72-41a3-9ecc-d21e136aefb2"),
            Some(r#"{"words": 12, "session_id": "sess-2"}"#),
            Some("fireflies.transcript.ready"),
        ]
        .map(|s| s.map(str::to_owned))
    );
    assert_eq!(
        row(2),
        [
            Some("not-a-uuid-42"),
            Some("bloodbank.v1.repo.decision.recorded"),
            Some("hermes://agent/33god-pm"),
            None,
            Some("2026-08-04T05:32:12.000"),
            Some("sess-3"),
            Some("corr-3"),
            Some(r#"{"decision": "ship"}"#),
            Some("bloodbank.evt.v1.repo.decision.recorded"),
        ]
        .map(|s| s.map(str::to_owned))
    );
}

#[tokio::test]
async fn missing_members_fall_back_to_amqp_properties() {
    let app = spawn_app().await;
    let body = br#"{"event_type": "legacy.thing", "data": {"x": 1}}"#;
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("trace"),
        AMQPValue::LongString(LongString::from("t-1")),
    );
    let props = BasicProperties::default()
        .with_message_id("msg-77".into())
        .with_app_id("legacy-app".into())
        .with_correlation_id("corr-77".into())
        .with_timestamp(1_767_225_600)
        .with_headers(headers);
    app.publish_with("legacy.thing", body, props).await;
    // No id and no message id: the id is derived from the body, the same each time.
    app.publish("legacy.other", br#"{"event_type": "legacy.other"}"#)
        .await;
    app.publish("legacy.other", br#"{"event_type": "legacy.other"}"#)
        .await;
    app.wait_for_rows("events", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.count("events").await,
        2,
        "a repeated body without an id is one event"
    );

    let r = app
        .db
        .query_one(
            "SELECT id, source, correlation_id, \"timestamp\" = to_timestamp(1767225600), properties::jsonb -> 'headers' ->> 'trace' \
             FROM events WHERE event_type = 'legacy.thing'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "msg-77");
    assert_eq!(r.get::<_, String>(1), "legacy-app");
    assert_eq!(r.get::<_, String>(2), "corr-77");
    assert!(
        r.get::<_, bool>(3),
        "the AMQP timestamp is used when the envelope has none"
    );
    assert_eq!(r.get::<_, String>(4), "t-1");
    let r = app
        .db
        .query_one(
            "SELECT source, length(id) FROM events WHERE event_type = 'legacy.other'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "unknown");
    assert_eq!(r.get::<_, i32>(1), 36, "a derived id is a UUID");
}

async fn the_same_event_published_twice_gives_one_row(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let body = gen1("dup-1", "a.b");
    app.publish("a.b", &body).await;
    app.publish("a.b", &body).await;
    // The same CloudEvents id from two sources is two events.
    for source in ["svc://one", "svc://two", "svc://one"] {
        let ce =
            json!({"specversion": "1.0", "id": "7", "type": "c.d", "source": source, "data": {}});
        app.publish("c.d", &serde_json::to_vec(&ce).unwrap()).await;
    }
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_acks_total").await == 5.0
    })
    .await;
    assert_eq!(app.count("events").await, 3);
    assert_eq!(app.metric("candystore_events_duplicate_total").await, 2.0);
}

#[tokio::test]
async fn poison_bodies_land_in_dead_letter_while_everything_else_is_stored() {
    let app = spawn_app().await;
    let poison: [(&str, &[u8]); 6] = [
        ("not_json", b"hello, world"),
        ("invalid_utf8", b"{\"id\": \"\xff\xfe\"}"),
        ("array", b"[1, 2, 3]"),
        ("empty", b""),
        ("unrecognised", br#"{"hello": "world"}"#),
        ("truncated", br#"{"id": "x", "event_type": "#),
    ];
    for (i, (key, body)) in poison.iter().enumerate() {
        app.publish(key, body).await;
        app.publish("good.event", &gen1(&format!("good-{i}"), "good.event"))
            .await;
    }
    // NUL inside JSON strings and keys: stored sanitised, the original kept.
    let nul = br#"{"id": "nul-1", "event_type": "has.nul", "data": {"te\u0000xt": "a\u0000b"}}"#;
    app.publish("has.nul", nul).await;

    app.wait_for_rows("events", 7).await;
    app.wait_for_rows("dead_letter", 6).await;
    let rows = app
        .db
        .query(
            "SELECT routing_key, reason, body, detail FROM dead_letter ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Vec<u8>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let reasons = [
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "empty_body",
        "unrecognised_envelope",
        "invalid_json",
    ];
    for ((key, body), reason) in poison.iter().zip(reasons) {
        assert!(
            got.iter()
                .any(|(k, r, b)| k == key && r == reason && b == body),
            "{key} must be dead-lettered as {reason} with its raw bytes; got {got:?}"
        );
    }
    assert!(
        rows.iter().all(|r| !r.get::<_, String>(3).is_empty()),
        "every dead letter says why"
    );

    let r = app
        .db
        .query_one(
            "SELECT sanitized, payload::text, original_body FROM events WHERE id = 'nul-1'",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(1), r#"{"text": "ab"}"#);
    assert_eq!(r.get::<_, Vec<u8>>(2), nul.to_vec());
    assert_eq!(app.metric("candystore_dead_letters_total").await, 6.0);
    assert_eq!(app.metric("candystore_events_failed_total").await, 6.0);
}

#[tokio::test]
async fn a_row_postgres_refuses_goes_to_dead_letter_and_the_rest_is_stored() {
    // A prefetch of 100 (the slow start's end is known).
    let app = spawn_app_with(
        &[("BATCH_SIZE", "40"), ("PREFETCH_COUNT", "100")],
        AppOptions::default(),
    )
    .await;
    // A rule PostgreSQL enforces that decode cannot know about.
    crate::helpers::refuse_event_type(&app, "refused").await;
    // Past the prefetch's slow start first, so 40 deliveries can be in hand at once.
    for i in 0..120 {
        app.publish("warm", &gen1(&format!("w-{i}"), "warm")).await;
    }
    app.wait_for_rows("events", 120).await;
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_prefetch").await == 100.0
    })
    .await;
    // Hold the writer back while the deliveries queue, so the refused one is
    // written in a batch with others (a free writer takes a batch at once).
    let blocker = crate::helpers::connect(&app.db_url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    for i in 0..40 {
        let kind = if i == 17 { "refused" } else { "fine" };
        app.publish(kind, &gen1(&format!("r-{i}"), kind)).await;
    }
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_events_in_flight").await == 40.0
    })
    .await;
    blocker.batch_execute("COMMIT").await.unwrap();
    app.wait_for_rows("events", 120 + 39).await;
    app.wait_for_rows("dead_letter", 1).await;
    let r = app
        .db
        .query_one("SELECT reason, detail, body FROM dead_letter", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "rejected_by_database");
    assert!(
        r.get::<_, String>(1).contains("refused by test"),
        "{}",
        r.get::<_, String>(1)
    );
    assert_eq!(r.get::<_, Vec<u8>>(2), gen1("r-17", "refused"));
    assert!(app.metric("candystore_batch_splits_total").await >= 1.0);
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_acks_total").await == 160.0
    })
    .await;
}

#[tokio::test]
async fn a_batch_size_larger_than_the_prefetch_does_not_stall() {
    // Were batches not capped at the prefetch, each 10 events would wait 30s.
    let app = spawn_app_with(
        &[
            ("BATCH_SIZE", "1000"),
            ("PREFETCH_COUNT", "10"),
            ("FLUSH_INTERVAL", "30s"),
        ],
        AppOptions::default(),
    )
    .await;
    for i in 0..100 {
        app.publish("x.y", &gen1(&format!("s-{i}"), "x.y")).await;
    }
    assert_eq!(app.wait_for_rows("events", 100).await, 100);
}

#[tokio::test]
async fn health_reports_database_and_broker_without_credentials() {
    let app = spawn_app_with(
        &[(
            "DATABASE_URL",
            "postgres://postgres:sekret@127.0.0.1:5432/{db}",
        )],
        AppOptions::default(),
    )
    .await;
    let res = app.http.get(app.api("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains("sekret"), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["broker_state"], "connected");
    let ready = app.http.get(app.api("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let missing = app.http.get(app.api("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

both_stores!(the_same_event_published_twice_gives_one_row,);
