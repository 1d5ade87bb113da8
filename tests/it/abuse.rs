//! The API under abuse, as a hostile client would try it: too many live-tail
//! streams, clients that never read, bad path ids and cursors.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_stores;
use crate::helpers::{On, TestApp, gen1, spawn_app, spawn_app_on, spawn_app_with};
use candystore::app::AppOptions;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.http.get(app.api(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_hundred_and_fifty_streams_share_one_poller_and_the_api_and_probes_still_answer() {
    let app = spawn_app().await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..150 {
        let res = app
            .http
            .get(app.api("/events/stream"))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => open.push(res),
            503 => {
                assert_eq!(res.headers()["content-type"], "application/problem+json");
                assert!(res.headers().contains_key("retry-after"));
                let p: Value = res.json().await.unwrap();
                assert!(p["detail"].as_str().unwrap().contains("at most 100"), "{p}");
                refused += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        (open.len(), refused),
        (100, 50),
        "STREAM_MAX_CLIENTS defaults to 100"
    );
    assert_eq!(app.metric("candystore_streams_open").await, 100.0);

    // The streams hold no read-pool connection between polls: the API answers
    // (not after a 5 s statement timeout) and so do the probes.
    for path in ["/health", "/ready", "/events?limit=5"] {
        let started = std::time::Instant::now();
        let (status, _) = get(&app, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // Every stream gets the new event.
    app.publish("fan.out", &gen1("fan-1", "fan.out")).await;
    let mut got = 0;
    for res in open.iter_mut() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("the event reaches every stream")
            .unwrap()
            .unwrap();
        assert!(std::str::from_utf8(&chunk).unwrap().contains("fan-1"));
        got += 1;
    }
    assert_eq!(got, 100);
    drop(open);
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_streams_open").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_stream_client_that_never_reads_is_cut_after_the_write_timeout() {
    let app = spawn_app_with(&[("STREAM_WRITE_TIMEOUT", "1s")], Default::default()).await;
    let mut silent = tokio::net::TcpStream::connect(app.running().api_addr)
        .await
        .unwrap();
    silent
        .write_all(b"GET /events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_streams_open").await == 1.0
    })
    .await;
    // 40 MB of events: far more than the socket buffers hold.
    let filler = "x".repeat(200_000);
    for i in 0..200 {
        let body = serde_json::to_vec(&json!({
            "id": format!("big-{i}"), "event_type": "big", "data": {"fill": filler}
        }))
        .unwrap();
        app.publish("big", &body).await;
    }
    app.wait_for_rows("events", 200).await;
    app.wait_until(Duration::from_secs(20), || async {
        app.metric("candystore_streams_open").await == 0.0
    })
    .await;
    // The server closed the socket: reading drains what was buffered, then ends.
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was closed by the server");
    assert!(total < 40_000_000, "not everything was sent: {total} bytes");
    // The service is fine, and other clients are served.
    assert_eq!(get(&app, "/health").await.0, 200);
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_lifetime_and_the_client_resumes_without_loss() {
    let app = spawn_app_with(&[("STREAM_MAX_LIFETIME", "2s")], Default::default()).await;
    let res = app
        .http
        .get(app.api("/events/stream?last_event_id=0"))
        .send()
        .await
        .unwrap();
    app.publish("life", &gen1("life-1", "life")).await;
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the stream ends by itself")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(body.contains("life-1"), "{body}");
    assert!(body.contains("retry: 1000"), "{body}");
    let last_id: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_owned();
    app.publish("life", &gen1("life-2", "life")).await;
    app.wait_for_rows("events", 2).await;
    let mut res = app
        .http
        .get(app.api("/events/stream"))
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.contains("life-2") && !text.contains("life-1"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_path_ids_and_cursors_get_client_errors_not_503() {
    let app = spawn_app().await;
    app.publish("ok", &gen1("ok-1", "ok")).await;
    app.wait_for_rows("events", 1).await;
    for path in [
        "/events/a%00b",
        "/events/a%00b/raw",
        "/sessions/a%00b",
        "/correlations/a%00b",
    ] {
        let (status, problem) = get(&app, path).await;
        assert_eq!(status, 404, "{path}: {problem}");
    }
    let long = "x".repeat(5000);
    assert_eq!(get(&app, &format!("/events/{long}")).await.0, 404);

    // A cursor dated year -100000, well-formed otherwise.
    let micros: i64 = -100_000 * 31_556_952 * 1_000_000;
    let cursor = candystore::api::query::Cursor {
        timestamp_micros: micros,
        seq: 1,
    }
    .encode();
    let (status, problem) = get(&app, &format!("/events?cursor={cursor}")).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["parameter"], "cursor");

    let (status, problem) = get(&app, "/events?offset=100001").await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("cursor"),
        "{problem}"
    );
    assert_eq!(get(&app, "/events?offset=100000").await.0, 200);
}

/// Twenty clients reading one ~2 MB event (ten the view, ten the raw envelope),
/// and four one 2 MB dead letter: every answer whole, read through the shared
/// large reads (`candystore_api_large_reads_total`), which small rows never use.
async fn many_clients_reading_one_large_event_share_one_read(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    // About 2 MB that compresses poorly, so it is stored large.
    let noise: Vec<String> = (0..40_000)
        .map(|i| {
            format!(
                "{:016x}{:016x}",
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i
            )
        })
        .collect();
    let body = serde_json::to_vec(
        &json!({"id": "large-1", "event_type": "large", "data": {"noise": noise}}),
    )
    .unwrap();
    app.publish("large", &body).await;
    app.publish(
        "small",
        br#"{"id": "small-1", "event_type": "small", "data": {}}"#,
    )
    .await;
    let mut junk = vec![b'x'; 2 << 20];
    junk[0] = b'{';
    app.publish("junk", &junk).await;
    app.wait_for_rows("events", 2).await;
    app.wait_for_rows("dead_letter", 1).await;
    let stored = app
        .int(match on {
            On::Postgres => {
                "SELECT pg_column_size(payload)::bigint FROM events WHERE id = 'large-1'"
            }
            On::Sqlite => "SELECT octet_length(payload) FROM events WHERE id = 'large-1'",
        })
        .await;
    assert!(
        stored > 256 << 10,
        "stored in {stored} bytes: the large path"
    );
    let reads = || app.metric("candystore_api_large_reads_total");
    for path in ["/events/small-1", "/events/small-1/raw"] {
        assert_eq!(get(&app, path).await.0, 200);
    }
    assert_eq!(reads().await, 0.0, "small rows are read directly");
    let fetches = (0..20).map(|i| {
        let url = app.api(if i % 2 == 0 {
            "/events/large-1/raw"
        } else {
            "/events/large-1"
        });
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    });
    let answers = futures::future::join_all(fetches).await;
    let published: Value = serde_json::from_slice(&body).unwrap();
    for (i, (status, bytes)) in answers.iter().enumerate() {
        assert_eq!(*status, 200);
        let v: Value = serde_json::from_slice(bytes).unwrap();
        if i % 2 == 0 {
            assert_eq!(v, published, "raw is the envelope as published");
        } else {
            assert_eq!(v["payload"], published["data"]);
        }
    }
    let after_events = reads().await;
    assert!(
        (2.0..=20.0).contains(&after_events),
        "each kind read through the shared reads at least once: {after_events}"
    );
    let (_, listed) = get(&app, "/dead-letters").await;
    let id = listed["dead_letters"][0]["id"].clone();
    let path = format!("/dead-letters/{id}");
    let dead = (0..4).map(|_| get(&app, &path));
    for (status, d) in futures::future::join_all(dead).await {
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["body_text"].as_str().map(str::len), Some(junk.len()));
    }
    assert!(reads().await > after_events, "the dead letter too");
}

both_stores!(many_clients_reading_one_large_event_share_one_read);

#[tokio::test]
async fn the_openapi_document_states_the_bounds_and_error_answers() {
    let app = spawn_app().await;
    let (status, doc) = get(&app, "/openapi.json").await;
    assert_eq!(status, 200);
    let param = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} documents {name}"))["schema"]
            .clone()
    };
    assert_eq!(param("/events", "limit")["maximum"], 1000);
    assert_eq!(param("/events", "offset")["maximum"], 100000);
    for path in ["/events", "/events/stream"] {
        assert_eq!(param(path, "session_id")["maxLength"], 1024, "{path}");
        assert_eq!(param(path, "start_time")["format"], "date-time", "{path}");
    }
    assert_eq!(
        param("/events/stream", "last_event_id")["pattern"],
        "^[0-9]+(-[0-9]+)?$"
    );
    for (path, codes) in [
        ("/events", &["200", "400", "401", "503"][..]),
        ("/events/stream", &["200", "400", "401", "503"]),
        ("/events/{id}", &["200", "401", "404", "503"]),
        (
            "/sessions/{session_id}",
            &["200", "400", "401", "404", "503"],
        ),
    ] {
        let documented = &doc["paths"][path]["get"]["responses"];
        for code in codes {
            assert!(documented.get(code).is_some(), "{path} documents {code}");
        }
    }
    let r = app.http.delete(app.api("/events")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

#[tokio::test]
async fn six_clients_reading_one_30_mb_dead_letter_share_one_read_encoded_outside_the_database() {
    let mut app = spawn_app().await;
    // 30 MB of text that is not JSON: a dead letter, stored in a few kB.
    let body: Vec<u8> = (0..30_000_000u32)
        .map(|i| b"not json "[(i % 9) as usize])
        .collect();
    app.publish("dead.large", &body).await;
    app.wait_for_rows("dead_letter", 1).await;
    let id: i64 = app
        .db
        .query_one("SELECT seq FROM dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    // The real binary, so its peak RSS is its own.
    app.stop().await;
    let served = crate::helpers::ServedBinary::start(&app).await;
    let url = format!("{}/dead-letters/{id}", served.base);
    let http = reqwest::Client::new();
    let fetches = (0..6).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    });
    let answers = futures::future::join_all(fetches).await;
    for (status, bytes) in &answers {
        assert_eq!(
            *status,
            200,
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
        let v: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(v["body_bytes"], 30_000_000);
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["body_base64"].as_str().unwrap())
            .unwrap();
        assert!(decoded == body, "the body exactly");
        assert_eq!(v["body_text"].as_str().map(str::len), Some(30_000_000));
    }
    let peak_kb = served.stop().await;
    eprintln!("serve peak RSS {peak_kb} kB");
    // One row, its base64 and text, and one JSON rendering, shared by the six:
    // each client's own copy made it 646-712 MB, and 5 of 6 timed out.
    assert!(peak_kb < 350 * 1024, "peak RSS {peak_kb} kB");
}

#[tokio::test]
async fn stream_payload_filters_are_bounded_and_judge_large_or_costly_events_in_the_database() {
    let app = spawn_app().await;
    // The longest pattern a stream takes: 1,990 sevens.
    let pattern = format!("{{\"a\":[{}7]}}", "7,".repeat(1_989));
    assert!(pattern.len() <= 4096);
    let too_long = format!("{{\"a\":[{}7]}}", "7,".repeat(2_100));
    let res = app
        .http
        .get(app.api("/events/stream"))
        .query(&[("payload_contains", too_long.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("payload_contains"),
        "{problem}"
    );

    let mut streams = Vec::new();
    for _ in 0..4 {
        let res = app
            .http
            .get(app.api("/events/stream"))
            .query(&[("payload_contains", pattern.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        streams.push(res);
    }
    let event = |id: &str, a: Vec<i64>| {
        serde_json::to_vec(&json!({"id": id, "event_type": "f", "source": "s", "data": {"a": a}}))
            .unwrap()
    };
    // Small and matching; large (~170 kB: PostgreSQL judges) and matching;
    // ~60 kB without a seven (in memory the check would cost 20 million
    // comparisons: past the budget, PostgreSQL judges); small and matching.
    let probes = {
        let app = &app;
        async move {
            let mut worst = Duration::ZERO;
            for _ in 0..40 {
                let t = std::time::Instant::now();
                let r = app.http.get(app.api("/health")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            worst
        }
    };
    let publish = async {
        app.publish("f", &event("m1", vec![7])).await;
        app.publish("f", &event("l1", (0..30_000).collect())).await;
        app.publish(
            "f",
            &event(
                "s2",
                (0..10_000)
                    .map(|i| if i % 10 == 7 { 8 } else { i % 10 })
                    .collect(),
            ),
        )
        .await;
        app.publish("f", &event("m2", vec![7, 7])).await;
    };
    let reads =
        futures::future::join_all(streams.into_iter().map(|s| crate::helpers::read_sse(s, 3)));
    let (worst, got, ()) = tokio::join!(probes, reads, publish);
    assert!(worst < Duration::from_secs(1), "/health took {worst:?}");
    for events in got {
        // Storage order, which concurrent writers make differ from publish order.
        let mut ids: Vec<&str> = events
            .iter()
            .map(|(_, e)| e["id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["l1", "m1", "m2"]);
    }
}

#[tokio::test]
async fn a_payload_filtered_stream_meeting_a_20_mb_array_event_builds_no_tree_of_it() {
    let mut app = spawn_app().await;
    app.stop().await;
    let served = crate::helpers::ServedBinary::start(&app).await;
    let base = served.base.clone();
    let http = reqwest::Client::new();
    let stream = http
        .get(format!("{base}/events/stream"))
        .query(&[("payload_contains", r#"{"k": 1}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // 10 million one-digit integers (20 MB), and the key the stream asks for.
    let mut body =
        br#"{"id": "big", "event_type": "big", "source": "s", "data": {"k": 1, "arr": ["#.to_vec();
    for i in 0..10_000_000u32 {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'0' + (i % 10) as u8);
    }
    body.extend_from_slice(b"]}}");
    app.publish("big", &body).await;
    app.publish(
        "small",
        br#"{"id": "small", "event_type": "small", "source": "s", "data": {"k": 1}}"#,
    )
    .await;
    let got = crate::helpers::read_sse(stream, 2).await;
    let mut ids: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["big", "small"]);
    drop(got);
    let peak_kb = served.stop().await;
    eprintln!("serve peak RSS {peak_kb} kB");
    // Ingest, the tail's frame and the stream's copy of it; a tree of the
    // payload made it 420-548 MB (210 MB with a type-filtered stream).
    assert!(peak_kb < 300 * 1024, "peak RSS {peak_kb} kB");
}
