//! The service on an embedded store (`DATABASE_URL=sqlite:PATH`), against the
//! real broker: deliveries stored in the file exactly once, and the event API
//! answering as it does on PostgreSQL (the same deliveries published to a
//! service on each store, the same questions asked of both).

use std::time::Duration;

use candystore::app::AppOptions;
use serde_json::{Value, json};

use crate::helpers::{TestApp, read_sse, spawn_app_with};
use crate::support::TempSqlite;

fn rows(file: &TempSqlite, table: &str) -> i64 {
    file.look()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

async fn wait_for_file_rows(app: &TestApp, file: &TempSqlite, table: &str, n: i64) {
    app.wait_until(Duration::from_secs(20), || async { rows(file, table) >= n })
        .await;
}

/// Sixty events of three envelope generations over two days, every time
/// distinct (the stores number rows each in its own order; a tie would be
/// broken by that number).
pub(crate) fn deliveries() -> Vec<Value> {
    let start = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap();
    (0..60)
        .map(|i| {
            let at = (start + chrono::Duration::minutes(47 * i)).to_rfc3339();
            let kind = ["t.a", "t.b", "t.c"][(i % 3) as usize];
            let k = ["x", "y"][(i % 2) as usize];
            let source = ["s1", "s2"][(i % 2) as usize];
            let model = ["haiku", "sonnet", "opus"][(i % 5 % 3) as usize];
            let ratio = if i % 7 == 0 { json!(1.50) } else { json!(2) };
            let target = if i % 4 == 0 { json!("candybar") } else { json!(null) };
            let data = json!({
                "n": i,
                "k": k,
                "agent": {"model": model, "tags": [i % 4, "t"]},
                "ratio": ratio,
            });
            match i % 3 {
                0 => json!({"id": format!("e{i}"), "event_type": kind, "source": source,
                            "target": target,
                            "session_id": format!("sess{}", i % 6), "correlation_id": format!("c{}", i % 5),
                            "timestamp": at, "data": data}),
                1 => json!({"event_id": format!("e{i}"), "event_type": kind,
                            "source": {"app": source, "host": "h"},
                            "correlation_ids": [format!("c{}", i % 5)], "timestamp": at, "payload": data}),
                _ => json!({"specversion": "1.0", "id": format!("e{i}"), "type": kind,
                            "source": source, "sessionid": format!("sess{}", i % 6),
                            "time": at, "data": data}),
            }
        })
        .collect()
}

pub(crate) async fn publish_all(app: &TestApp, bodies: &[Value]) {
    for b in bodies {
        app.publish("k.x", &serde_json::to_vec(b).unwrap()).await;
    }
}

/// An answer without what differs by store and moment: each event's
/// `stored_at` and `storage_latency_ms`, and the cursor's text (it holds the
/// store's row number).
pub(crate) fn comparable(mut page: Value) -> Value {
    if let Some(events) = page.get_mut("events").and_then(Value::as_array_mut) {
        for e in events {
            let o = e.as_object_mut().unwrap();
            o.remove("stored_at");
            o.remove("storage_latency_ms");
        }
    }
    if let Some(o) = page.as_object_mut() {
        o.insert(
            "next_cursor".into(),
            json!(o.get("next_cursor").is_some_and(|c| !c.is_null())),
        );
    }
    page
}

/// Every page of `query` by cursor: the event ids in order.
async fn walk(app: &TestApp, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events?{query}&cursor={c}"),
            None => format!("/events?{query}"),
        };
        let page = app.get_json(&path).await;
        for e in page["events"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
        assert!(ids.len() <= 200, "the walk does not end: {query}");
    }
}

#[tokio::test]
async fn deliveries_are_stored_in_the_embedded_file_exactly_once_with_dead_letters_kept() {
    let file = TempSqlite::new();
    let app = spawn_app_with(&[("DATABASE_URL", &file.url())], AppOptions::default()).await;
    let bodies = deliveries();
    publish_all(&app, &bodies).await;
    // Redeliveries of the first ten, and one body that is no event.
    publish_all(&app, &bodies[..10]).await;
    app.publish("k.x", b"{\"id\": 1, \"broken").await;
    wait_for_file_rows(&app, &file, "events", 60).await;
    wait_for_file_rows(&app, &file, "dead_letter", 1).await;
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_events_duplicate_total").await == 10.0
    })
    .await;
    assert_eq!(rows(&file, "events"), 60);
    assert_eq!(rows(&file, "audit_leaves"), 60);
    let body: Vec<u8> = file
        .look()
        .query_row("SELECT body FROM dead_letter", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, b"{\"id\": 1, \"broken");
    // Served: newest first, the raw view equal to what was published.
    let page = app.get_json("/events?limit=5").await;
    assert_eq!(page["total"], 60);
    assert_eq!(page["events"][0]["id"], "e59");
    let raw: Value = app.get_json("/events/e59/raw").await;
    assert_eq!(raw, bodies[59]);
    let one = app.get_json("/events/e3").await;
    assert_eq!(one["event_type"], "t.a");
    assert_eq!(app.get_json("/health").await["status"], "healthy");
}

#[tokio::test]
async fn the_event_api_answers_the_same_on_both_stores() {
    let file = TempSqlite::new();
    let lite = spawn_app_with(&[("DATABASE_URL", &file.url())], AppOptions::default()).await;
    let pg = spawn_app_with(&[], AppOptions::default()).await;
    let bodies = deliveries();
    publish_all(&lite, &bodies).await;
    publish_all(&pg, &bodies).await;
    let bad: [&[u8]; 3] = [b"{\"id\": 1, \"broken", b"[1, 2]", b"\xff\xfe"];
    for app in [&lite, &pg] {
        for (i, body) in bad.iter().enumerate() {
            app.publish(&format!("bad.{i}"), body).await;
        }
    }
    wait_for_file_rows(&lite, &file, "events", 60).await;
    wait_for_file_rows(&lite, &file, "dead_letter", 3).await;
    pg.wait_for_rows("events", 60).await;
    pg.wait_for_rows("dead_letter", 3).await;
    let queries = [
        "limit=10",
        "limit=7&offset=20",
        "limit=1000",
        "event_type=t.b",
        "event_type=t.b&source=s2",
        "source=s1&limit=3&offset=4",
        "target=candybar",
        "session_id=sess2",
        "correlation_id=c3",
        "start_time=2026-12-01T10:00:00Z&end_time=2026-12-02T03:00:00Z",
        "start_time=2026-12-02",
        "end_time=2026-12-01T05:29:00Z",
        "event_type=nothing",
        "payload_contains=%7B%22k%22%3A%22x%22%7D",
        "payload_contains=%7B%22ratio%22%3A1.5%7D",
        "payload_contains=%7B%22ratio%22%3A2.0%7D",
        "payload_contains=%7B%22agent%22%3A%7B%22model%22%3A%22opus%22%7D%7D",
        "payload_contains=%7B%22agent%22%3A%7B%22tags%22%3A%5B%22t%22%2C3%5D%7D%7D",
        "payload_contains=%7B%22agent%22%3A%7B%22tags%22%3A%5B3%2C2%5D%7D%7D",
        "payload_contains=%7B%22agent%22%3A%7B%7D%2C%22n%22%3A12%7D",
        "payload_contains=%7B%22k%22%3A%5B%22x%22%5D%7D",
        "payload_contains=%7B%7D&limit=2",
        "payload_contains=%7B%22k%22%3A%22y%22%7D&source=s2&limit=4",
    ];
    for q in queries {
        let a = comparable(pg.get_json(&format!("/events?{q}")).await);
        let b = comparable(lite.get_json(&format!("/events?{q}")).await);
        assert_eq!(a, b, "GET /events?{q}");
    }
    for q in [
        "limit=7",
        "event_type=t.c&limit=4",
        "payload_contains=%7B%22k%22%3A%22y%22%7D&limit=6",
    ] {
        let a = walk(&pg, q).await;
        assert!(!a.is_empty());
        assert_eq!(a, walk(&lite, q).await, "cursor walk of {q}");
    }
    for id in ["e0", "e31", "e59"] {
        let mut a = pg.get_json(&format!("/events/{id}")).await;
        let mut b = lite.get_json(&format!("/events/{id}")).await;
        for v in [&mut a, &mut b] {
            v.as_object_mut().unwrap().remove("stored_at");
            v.as_object_mut().unwrap().remove("storage_latency_ms");
        }
        assert_eq!(a, b, "/events/{id}");
        let a = pg.get_json(&format!("/events/{id}/raw")).await;
        assert_eq!(a, lite.get_json(&format!("/events/{id}/raw")).await);
    }
    // Timelines: summary and pages, oldest first.
    for path in [
        "/sessions/sess2",
        "/sessions/sess4?limit=3",
        "/sessions/sess0?limit=2&offset=3",
        "/correlations/c3",
        "/correlations/c1?limit=4",
    ] {
        let a = comparable(pg.get_json(path).await);
        let b = comparable(lite.get_json(path).await);
        assert_eq!(a, b, "GET {path}");
    }
    for (store, app) in [("PostgreSQL", &pg), ("SQLite", &lite)] {
        let res = app
            .http
            .get(app.api("/sessions/nobody"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{store}");
    }
    // Dead letters: the same reasons, details, keys and bodies (times and the
    // exchange are each service's own).
    let letters = |page: Value| -> Vec<Value> {
        page["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| json!([d["reason"], d["detail"], d["routing_key"], d["body_bytes"]]))
            .collect()
    };
    for q in ["", "?limit=2", "?reason=invalid_json", "?routing_key=bad.1"] {
        let a = letters(pg.get_json(&format!("/dead-letters{q}")).await);
        assert!(!a.is_empty(), "{q}");
        assert_eq!(
            a,
            letters(lite.get_json(&format!("/dead-letters{q}")).await),
            "/dead-letters{q}"
        );
    }
    let newest = lite.get_json("/dead-letters?limit=1").await;
    let id = newest["dead_letters"][0]["id"].as_i64().unwrap();
    let one = lite.get_json(&format!("/dead-letters/{id}")).await;
    assert_eq!(one["body_base64"], "//4=");
    assert_eq!(one["reason"], "invalid_utf8");
    assert!(one.get("body_text").is_none(), "{one}");
    // The catalog, once each store has counted every event.
    let counted = |page: Value| -> i64 {
        page["sources"]
            .as_array()
            .map_or(0, |s| s.iter().map(|s| s["count"].as_i64().unwrap()).sum())
    };
    for app in [&pg, &lite] {
        app.wait_until(Duration::from_secs(20), || async {
            counted(app.get_json("/sources").await) == 60
        })
        .await;
    }
    for path in [
        "/sources",
        "/event-types",
        "/event-types?limit=2",
        "/event-types?after=t.a",
    ] {
        let a = pg.get_json(path).await;
        assert_eq!(a, lite.get_json(path).await, "GET {path}");
    }
    // Bad requests are refused alike, naming the parameter.
    for q in [
        "limit=0",
        "cursor=zz",
        "payload_contains=%5B1%5D",
        "start_time=soon",
    ] {
        let a = pg
            .http
            .get(pg.api(&format!("/events?{q}")))
            .send()
            .await
            .unwrap();
        let b = lite
            .http
            .get(lite.api(&format!("/events?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 400, "{q}");
        assert_eq!(b.status(), 400, "{q}");
        assert_eq!(a.text().await.unwrap(), b.text().await.unwrap(), "{q}");
    }
    let missing = lite
        .http
        .get(lite.api("/events/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_live_tail_on_the_embedded_store_sends_each_event_once_in_order_and_resumes_after_its_last_id()
 {
    let file = TempSqlite::new();
    let app = spawn_app_with(&[("DATABASE_URL", &file.url())], AppOptions::default()).await;
    let bodies = deliveries();
    // Stored before the stream opens: not sent (a stream starts at the head).
    publish_all(&app, &bodies[..10]).await;
    wait_for_file_rows(&app, &file, "events", 10).await;
    let all = app
        .http
        .get(app.api("/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 200);
    let filtered = app
        .http
        .get(app.api("/events/stream?event_type=t.b&payload_contains=%7B%22k%22%3A%22y%22%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(filtered.status(), 200);
    publish_all(&app, &bodies[10..40]).await;
    let got = read_sse(all, 30).await;
    let ids: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    let want: Vec<String> = (10..40).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, want);
    // Positions are (0, seq): one writer commits in seq order.
    assert!(got.iter().all(|((txid, _), _)| *txid == 0));
    assert!(got.windows(2).all(|w| w[0].0.1 < w[1].0.1));
    // The filtered stream: t.b events (i % 3 == 1) whose k is "y" (i odd).
    let want: Vec<String> = (10..40)
        .filter(|i| i % 3 == 1 && i % 2 == 1)
        .map(|i| format!("e{i}"))
        .collect();
    let got_filtered = read_sse(filtered, want.len()).await;
    let ids: Vec<String> = got_filtered
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, want);
    // Resumed after the 20th event sent: the rest, then what comes next.
    let (txid, seq) = got[19].0;
    let resumed = app
        .http
        .get(app.api("/events/stream"))
        .header("last-event-id", format!("{txid}-{seq}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    publish_all(&app, &bodies[40..45]).await;
    let rest = read_sse(resumed, 15).await;
    let ids: Vec<&str> = rest
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (30..45).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, want);
    // An id past the newest is refused, as on PostgreSQL.
    let past = app
        .http
        .get(app.api("/events/stream"))
        .header("last-event-id", "0-999999")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 400);
}

/// `candystore ARGS` on the embedded file: (exit code, stdout, stderr).
async fn cli(file: &TempSqlite, args: &[&str]) -> (i32, String, String) {
    crate::support::run_candystore(args, &[("DATABASE_URL", &file.url())]).await
}

#[tokio::test]
async fn the_dead_letter_commands_list_show_replay_and_purge_the_embedded_store_beside_its_service()
{
    let file = TempSqlite::new();
    let app = spawn_app_with(&[("DATABASE_URL", &file.url())], AppOptions::default()).await;
    app.publish("k.bad", b"{\"id\": 1, \"broken").await;
    app.publish("k.worse", b"\xff\xfe not even text").await;
    wait_for_file_rows(&app, &file, "dead_letter", 2).await;

    let (code, out, err) = cli(&file, &["dead-letters", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two: {out}");
    assert!(
        lines[1].ends_with("k.worse") && lines[2].ends_with("k.bad"),
        "newest first: {out}"
    );
    let id = |line: &str| line.split_whitespace().next().unwrap().to_owned();
    let (bad, worse) = (id(lines[2]), id(lines[1]));

    let (code, out, err) = cli(&file, &["dead-letters", "show", &bad]).await;
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["body_text"], "{\"id\": 1, \"broken");
    assert_eq!(shown["routing_key"], "k.bad");
    let (code, out, _) = cli(&file, &["dead-letters", "show", &worse]).await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert!(
        shown["body_hex"].as_str().unwrap().starts_with("fffe"),
        "{shown}"
    );
    let (code, _, err) = cli(&file, &["dead-letters", "show", "999"]).await;
    assert_eq!(code, 2, "{err}");

    // Replayed to the service's own exchange: the same delivery again (kept
    // once), and the replay recorded in the file beside the running service.
    let (code, out, err) = cli(
        &file,
        &["dead-letters", "replay", &bad, "--exchange", &app.exchange],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    let (code, out, _) = cli(
        &file,
        &["dead-letters", "replay", &bad, "--exchange", &app.exchange],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("skipped"), "replayed before: {out}");
    let count: i64 = file
        .look()
        .query_row(
            "SELECT replay_count FROM dead_letter WHERE seq = ?1",
            [bad.parse::<i64>().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 1);

    // Purged by reason: the other stays; a dry run deletes nothing.
    let (code, out, _) = cli(
        &file,
        &[
            "dead-letters",
            "purge",
            "--routing-key",
            "k.worse",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("would delete 1 dead letter(s)"), "{out}");
    assert_eq!(rows(&file, "dead_letter"), 2);
    let (code, out, _) = cli(
        &file,
        &["dead-letters", "purge", "--routing-key", "k.worse"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("deleted 1 dead letter(s)"), "{out}");
    assert_eq!(rows(&file, "dead_letter"), 1);
    // The service goes on storing into the file.
    app.publish("k.third", b"nope").await;
    wait_for_file_rows(&app, &file, "dead_letter", 2).await;
}
