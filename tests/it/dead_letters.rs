//! `GET /dead-letters` and `GET /dead-letters/{id}` against dead letters the real
//! pipeline stored.

use serde_json::Value;

use crate::both_stores;
use crate::helpers::{On, TestApp, spawn_app, spawn_app_on};
use candystore::app::AppOptions;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.http.get(app.api(path)).send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Publishes the poison bodies and waits until all are dead letters.
async fn poison(app: &TestApp) -> Vec<(&'static str, &'static [u8])> {
    let bodies: Vec<(&str, &[u8])> = vec![
        ("dl.json", b"{not json"),
        ("dl.utf8", b"\xff\xfe{}"),
        ("dl.array", b"[1, 2, 3]"),
        ("dl.json", b"{still not json"),
        ("dl.envelope", br#"{"hello": "world"}"#),
    ];
    for (key, body) in &bodies {
        app.publish(key, body).await;
    }
    app.wait_for_rows("dead_letter", bodies.len() as i64).await;
    bodies
}

async fn dead_letters_are_listed_newest_first_and_each_shows_its_body(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let bodies = poison(&app).await;
    let (status, page) = get(&app, "/dead-letters").await;
    assert_eq!(status, 200, "{page}");
    let listed = page["dead_letters"].as_array().unwrap();
    assert_eq!(listed.len(), bodies.len());
    assert_eq!(page["has_more"], false);
    // Newest first: the last published is the first listed.
    assert_eq!(listed[0]["routing_key"], "dl.envelope");
    assert_eq!(listed[0]["reason"], "unrecognised_envelope");
    assert!(
        listed[0].get("body_base64").is_none(),
        "a list has no bodies"
    );
    for d in listed {
        let (status, one) = get(&app, &format!("/dead-letters/{}", d["id"])).await;
        assert_eq!(status, 200, "{one}");
        let (_, body) = bodies
            .iter()
            .find(|(key, body)| {
                *key == d["routing_key"] && body.len() as i64 == d["body_bytes"].as_i64().unwrap()
            })
            .unwrap();
        let decoded = base64_decode(one["body_base64"].as_str().unwrap());
        assert_eq!(&decoded, body, "{one}");
        match std::str::from_utf8(body) {
            Ok(text) => assert_eq!(one["body_text"], text),
            Err(_) => assert!(one.get("body_text").is_none(), "{one}"),
        }
    }
}

async fn dead_letters_filter_and_page_by_cursor(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    poison(&app).await;
    let (_, page) = get(&app, "/dead-letters?reason=invalid_json").await;
    let keys: Vec<&str> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["routing_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["dl.json", "dl.json"]);
    let (_, page) = get(&app, "/dead-letters?routing_key=dl.array").await;
    assert_eq!(page["dead_letters"][0]["reason"], "not_an_object");
    let (_, page) = get(&app, "/dead-letters?end_time=2000-01-01T00:00:00Z").await;
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 0);
    // Two at a time, by cursor: every dead letter once, newest first.
    let mut ids = Vec::new();
    let mut path = "/dead-letters?limit=2".to_owned();
    loop {
        let (status, page) = get(&app, &path).await;
        assert_eq!(status, 200, "{page}");
        for d in page["dead_letters"].as_array().unwrap() {
            ids.push(d["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/dead-letters?limit=2&cursor={c}"),
            None => break,
        }
    }
    // The same order as one page holding them all (receive time, newest first).
    let (_, all) = get(&app, "/dead-letters?limit=100").await;
    let in_one: Vec<i64> = all["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, in_one);
    assert_eq!(ids.len(), 5);
}

async fn a_bad_dead_letter_request_names_its_parameter(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    for (query, name) in [
        ("reason=nope", "reason"),
        ("routing_key=", "routing_key"),
        ("start_time=yesterday", "start_time"),
        ("limit=0", "limit"),
        ("reason=invalid_json&reason=too_deep", "reason"),
        ("cursor=zz", "cursor"),
    ] {
        let (status, problem) = get(&app, &format!("/dead-letters?{query}")).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(problem["parameter"], name, "{query}: {problem}");
    }
    let (status, problem) = get(&app, "/dead-letters?offset=5").await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("offset"));
    for id in ["12345", "abc", "-1"] {
        let (status, _) = get(&app, &format!("/dead-letters/{id}")).await;
        assert_eq!(status, 404, "{id}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_dead_letter_replayed_after_its_cause_was_fixed_is_stored_once() {
    use candystore::ops::dead_letters::{self as dl, Filter};
    let app = spawn_app().await;
    crate::helpers::refuse_event_type(&app, "fixme").await;
    let body = crate::helpers::gen1("fixed-1", "fixme");
    let props = lapin::BasicProperties::default()
        .with_message_id("m-1".into())
        .with_app_id("producer".into())
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            h.insert("attempt".into(), lapin::types::AMQPValue::LongLongInt(3));
            h
        });
    app.publish_with("fix.me", &body, props).await;
    app.wait_for_rows("dead_letter", 1).await;
    let id: i64 = app
        .db
        .query_one("SELECT seq FROM dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    // DROP TRIGGER locks the table, then each partition, while the seal and
    // catalog jobs read them the other way: a deadlock PostgreSQL breaks by
    // cancelling one side (seen once). Ours is simply tried again.
    for attempt in 1.. {
        match app.db.batch_execute("DROP TRIGGER refuse ON events").await {
            Ok(()) => break,
            Err(e)
                if attempt < 5
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {}
            Err(e) => panic!("drop trigger: {e}"),
        }
    }

    let publisher = candystore::source::publish::Republisher::connect(crate::helpers::AMQP)
        .await
        .unwrap();
    let only = Filter {
        ids: vec![id],
        ..Filter::default()
    };
    let store = dl::Store::Postgres(crate::helpers::connect(&app.db_url).await);
    let done = dl::replay(&store, &publisher, &only, None, false)
        .await
        .unwrap();
    assert_eq!((done.replayed, done.skipped), (vec![id], vec![]));
    app.wait_for_rows("events", 1).await;
    let stored = app
        .db
        .query_one("SELECT properties, id, event_type FROM events", &[])
        .await
        .unwrap();
    let properties: Value = stored.get(0);
    assert_eq!(properties["message_id"], "m-1");
    assert_eq!(properties["app_id"], "producer");
    assert_eq!(properties["headers"]["attempt"], 3);
    assert_eq!(stored.get::<_, String>(1), "fixed-1");

    // Once replayed, again only with force; and a second copy is still one event.
    let again = dl::replay(&store, &publisher, &only, None, false)
        .await
        .unwrap();
    assert_eq!((again.replayed, again.skipped), (vec![], vec![id]));
    let forced = dl::replay(&store, &publisher, &only, None, true)
        .await
        .unwrap();
    assert_eq!(forced.replayed, vec![id]);
    app.wait_until(std::time::Duration::from_secs(10), || async {
        app.metric("candystore_events_duplicate_total").await >= 1.0
    })
    .await;
    assert_eq!(app.count("events").await, 1);
    let (count, at): (i32, Option<chrono::DateTime<chrono::Utc>>) = {
        let r = app
            .db
            .query_one("SELECT replay_count, replayed_at FROM dead_letter", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(count, 2);
    assert!(at.is_some());
}

#[tokio::test]
async fn purge_deletes_only_the_selected_dead_letters_and_never_events() {
    use candystore::ops::dead_letters::{self as dl, Filter};
    let app = spawn_app().await;
    poison(&app).await;
    app.publish("ok", &crate::helpers::gen1("kept-1", "ok"))
        .await;
    app.wait_for_rows("events", 1).await;
    let json = Filter {
        reason: Some("invalid_json".into()),
        ..Filter::default()
    };
    let mut store = dl::Store::Postgres(crate::helpers::connect(&app.db_url).await);
    let would = dl::purge(&mut store, &json, true).await.unwrap();
    assert_eq!(would.len(), 2);
    assert_eq!(
        app.count("dead_letter").await,
        5,
        "a dry run deletes nothing"
    );
    let gone = dl::purge(&mut store, &json, false).await.unwrap();
    let mut ids: Vec<i64> = gone.iter().map(|d| d.id).collect();
    let mut expected: Vec<i64> = would.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert_eq!(app.count("dead_letter").await, 3);
    assert_eq!(app.count("events").await, 1);
    // The fingerprints went too: the same delivery again is kept again.
    app.publish("dl.json", b"{not json").await;
    app.wait_for_rows("dead_letter", 4).await;
}

both_stores!(
    dead_letters_are_listed_newest_first_and_each_shows_its_body,
    dead_letters_filter_and_page_by_cursor,
    a_bad_dead_letter_request_names_its_parameter,
);
