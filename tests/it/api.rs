//! The query API against the real service and PostgreSQL, with events stored by
//! the real pipeline.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{On, TestApp, event_ids, read_sse, spawn_app, spawn_app_on, walk_cursors};
use candystore::app::AppOptions;

/// Publishes `n` generation-1 events: sessions s0..s2, types t0..t1, and pairs of
/// events sharing one timestamp so the tie-break matters.
async fn seed(app: &TestApp, n: usize) {
    for i in 0..n {
        let body = json!({
            "id": format!("e-{i:03}"),
            "event_type": format!("t{}", i % 2),
            "source": if i % 5 == 0 { "svc-b" } else { "svc-a" },
            "target": if i % 4 == 0 { Value::from("candybar") } else { Value::Null },
            "timestamp": format!("2026-11-20T14:00:{:02}Z", i / 2),
            "session_id": format!("s{}", i % 3),
            "correlation_id": format!("c{}", i % 7),
            "data": { "i": i }
        });
        app.publish("seed", &serde_json::to_vec(&body).unwrap())
            .await;
    }
    app.wait_for_rows("events", n as i64).await;
}

async fn get(app: &TestApp, path: &str) -> (u16, Value, String) {
    let res = app.http.get(app.api(path)).send().await.unwrap();
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        res.json().await.unwrap_or(Value::Null),
        content_type,
    )
}

async fn events_come_newest_first_with_a_stable_tie_break_and_the_contract_fields(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 20).await;
    let (status, page, _) = get(&app, "/events?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            page["total"].as_i64(),
            page["limit"].as_i64(),
            page["offset"].as_i64()
        ),
        (Some(20), Some(5), Some(0))
    );
    assert_eq!(page["has_more"], true);
    assert_eq!(page["total_is_estimate"], false);
    let times: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        [
            "2026-11-20T14:00:09Z",
            "2026-11-20T14:00:09Z",
            "2026-11-20T14:00:08Z",
            "2026-11-20T14:00:08Z",
            "2026-11-20T14:00:07Z"
        ]
    );
    let first = &page["events"][0];
    let keys: HashSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let contract: HashSet<&str> = [
        "id",
        "event_type",
        "source",
        "target",
        "routing_key",
        "timestamp",
        "stored_at",
        "payload",
        "session_id",
        "correlation_id",
        "storage_latency_ms",
    ]
    .into();
    assert_eq!(keys, contract);
    // The same request twice gives the same order.
    let (_, again, _) = get(&app, "/events?limit=5").await;
    assert_eq!(event_ids(&page), event_ids(&again));
}

async fn offset_walks_and_cursor_walks_visit_every_event_exactly_once(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 41).await;
    let mut by_offset = Vec::new();
    for offset in (0..41).step_by(6) {
        let (status, page, _) = get(&app, &format!("/events?limit=6&offset={offset}")).await;
        // (Once, in clean-clone run 73, this walk came back with no event at all;
        // each page's answer is checked so that a next time says what it was.)
        assert_eq!(status, 200, "offset {offset}: {page}");
        assert_eq!(
            event_ids(&page).len(),
            6.min(41 - offset),
            "offset {offset}: {page}"
        );
        by_offset.extend(event_ids(&page));
    }
    assert_eq!(by_offset.len(), 41);
    assert_eq!(by_offset.iter().collect::<HashSet<_>>().len(), 41);

    let mut by_cursor = Vec::new();
    let mut path = "/events?limit=4&session_id=s1".to_owned();
    loop {
        let (status, page, _) = get(&app, &path).await;
        assert_eq!(status, 200);
        by_cursor.extend(event_ids(&page));
        // New events keep arriving during the walk.
        if by_cursor.len() == 4 {
            app.publish("late", br#"{"id": "late-1", "event_type": "t0", "session_id": "s1", "timestamp": "2026-11-20T14:00:30Z"}"#).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/events?limit=4&session_id=s1&cursor={c}"),
            None => {
                assert_eq!(page["has_more"], false);
                break;
            }
        }
    }
    let expected: HashSet<String> = (0..41)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("e-{i:03}"))
        .collect();
    let seen: HashSet<String> = by_cursor.iter().cloned().collect();
    assert_eq!(seen.len(), by_cursor.len(), "no event twice");
    assert_eq!(
        seen, expected,
        "every matching event once (the late newer event sorts before the walk's position)"
    );
}

async fn every_filter_selects_what_it_names(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 30).await;
    let count = |q: &'static str| {
        let app = &app;
        async move {
            get(app, &format!("/events?limit=1000&{q}")).await.1["total"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(count("session_id=s0").await, 10);
    assert_eq!(count("event_type=t1").await, 15);
    assert_eq!(count("source=svc-b").await, 6);
    assert_eq!(count("target=candybar").await, 8);
    assert_eq!(count("correlation_id=c3").await, 4);
    assert_eq!(
        count("start_time=2026-11-20T14:00:10Z").await,
        10,
        "start_time is inclusive"
    );
    assert_eq!(
        count("end_time=2026-11-20T14:00:01Z").await,
        4,
        "end_time is inclusive"
    );
    assert_eq!(
        count("start_time=2026-11-20T15:00:05%2B01:00&end_time=2026-11-20T14:00:05Z").await,
        2,
        "offsets are honoured"
    );
    assert_eq!(count("session_id=s0&event_type=t0&source=svc-a").await, 4);
    assert_eq!(count("session_id=nobody").await, 0);
}

#[tokio::test]
async fn payload_contains_matches_by_jsonb_containment_through_its_index() {
    let app = spawn_app().await;
    let docs = [
        json!({"id": "p1", "event_type": "build", "data": {"status": "failed", "repo": {"name": "bloodbank"}, "tags": ["ci", "nightly"]}}),
        json!({"id": "p2", "event_type": "build", "data": {"status": "passed", "repo": {"name": "bloodbank"}, "tags": ["ci"]}}),
        json!({"id": "p3", "event_type": "deploy", "data": {"status": "failed", "repo": {"name": "candystore"}, "n": 3}}),
        json!({"id": "p4", "event_type": "deploy", "data": {"status": "failed", "n": 3.0}}),
    ];
    for doc in &docs {
        app.publish("pc", &serde_json::to_vec(doc).unwrap()).await;
    }
    app.wait_for_rows("events", 4).await;
    let matching = |filter: &'static str| {
        let app = &app;
        async move {
            let q: String = url_encode(filter);
            let (status, page, _) = get(app, &format!("/events?payload_contains={q}")).await;
            assert_eq!(status, 200, "{filter}: {page}");
            let mut ids = event_ids(&page);
            ids.sort();
            assert_eq!(page["total"].as_i64(), Some(ids.len() as i64), "{filter}");
            ids
        }
    };
    assert_eq!(matching(r#"{"status":"failed"}"#).await, ["p1", "p3", "p4"]);
    assert_eq!(
        matching(r#"{"repo":{"name":"bloodbank"}}"#).await,
        ["p1", "p2"]
    );
    assert_eq!(
        matching(r#"{"tags":["nightly"]}"#).await,
        ["p1"],
        "arrays match by containment"
    );
    assert_eq!(
        matching(r#"{"n":3}"#).await,
        ["p3", "p4"],
        "numbers compare as numbers"
    );
    assert_eq!(
        matching(r#"{"status":"failed","repo":{"name":"candystore"}}"#).await,
        ["p3"]
    );
    assert_eq!(
        matching("{}").await,
        ["p1", "p2", "p3", "p4"],
        "the empty object is in every payload"
    );
    assert_eq!(
        matching(r#"{"status":"unknown"}"#).await,
        Vec::<String>::new()
    );
    // Combined with the other filters.
    let (_, page, _) = get(
        &app,
        &format!(
            "/events?event_type=build&payload_contains={}",
            url_encode(r#"{"status":"failed"}"#)
        ),
    )
    .await;
    assert_eq!(event_ids(&page), ["p1"]);
    // The GIN index (each partition's) serves the search (the planner would scan a
    // table this small).
    let plan: Vec<String> = {
        app.db
            .batch_execute("SET enable_seqscan = off")
            .await
            .unwrap();
        app.db
            .query(
                "EXPLAIN SELECT id FROM events WHERE payload @> $1::jsonb",
                &[&json!({"status": "failed"})],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert!(
        plan.iter()
            .any(|l| l.contains("Bitmap Index Scan on events_") && l.contains("payload")),
        "{plan:?}"
    );
    // Bad documents are refused, by name.
    for bad in ["{nope", "[1]", "\"text\"", r#"{"a":"\u0000"}"#] {
        let (status, problem, _) = get(
            &app,
            &format!("/events?payload_contains={}", url_encode(bad)),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(problem["parameter"], "payload_contains", "{bad}: {problem}");
    }
}

fn url_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap()[1..].to_owned()
}

/// Inserts `n` events straight into the table (the pipeline is tested elsewhere)
/// and analyzes it: ids `bulk-1..=n`, one per second, session `small` for every
/// 100th, `big` for the rest.
async fn bulk_insert(app: &TestApp, n: i64) {
    insert_rows(app, n).await;
    app.db.batch_execute("ANALYZE events").await.unwrap();
}

/// As [`bulk_insert`], without the analyze.
async fn insert_rows(app: &TestApp, n: i64) {
    app.db
        .execute(
            "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", received_at, \
             payload, session_id, generation, envelope, properties) \
             SELECT 'bulk-' || g, 'bulk', 'svc', 'bulk', 'events', \
                    timestamptz '2026-11-01T00:00:00Z' + g * interval '1 second', now(), \
                    jsonb_build_object('g', g), CASE WHEN g % 100 = 0 THEN 'small' ELSE 'big' END, \
                    1, '{}', '{}' \
             FROM generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_before_its_first_analyze_is_counted_exactly() {
    let app = spawn_app().await;
    // Autovacuum off, so the statistics stay missing while the test runs.
    app.db
        .batch_execute(
            "DO $$ DECLARE p regclass; BEGIN \
               FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'events'::regclass LOOP \
                 EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false)', p); \
               END LOOP; END $$",
        )
        .await
        .unwrap();
    insert_rows(&app, 5_000).await;
    for (q, want) in [
        ("limit=10", 5_000),
        ("source=svc&limit=10", 5_000),
        ("session_id=big&limit=10", 4_950),
        ("session_id=small&limit=10", 50),
        (
            "start_time=2026-11-01T00:00:01Z&end_time=2026-11-01T00:33:20Z&limit=5",
            2_000,
        ),
    ] {
        let (status, page, _) = get(&app, &format!("/events?{q}")).await;
        assert_eq!(status, 200, "{q}: {page}");
        assert_eq!(
            (page["total"].as_i64(), page["total_is_estimate"].as_bool()),
            (Some(want), Some(false)),
            "{q}: the planner has no statistics yet, so its estimate is a guess"
        );
    }
}

#[tokio::test]
async fn total_is_exact_up_to_a_thousand_and_past_that_an_estimate_that_says_so() {
    let app = spawn_app().await;
    bulk_insert(&app, 12_000).await;
    let total = |q: &'static str| {
        let app = &app;
        async move {
            let (status, page, _) = get(app, &format!("/events?{q}")).await;
            assert_eq!(status, 200, "{q}: {page}");
            (
                page["total"].as_i64().unwrap(),
                page["total_is_estimate"].as_bool().unwrap(),
            )
        }
    };
    let (n, estimated) = total("limit=10").await;
    assert!(estimated, "12,000 matches are past the exact cap");
    assert!(
        n > 1_000,
        "an estimate is never below what is known to exist: {n}"
    );
    // Past the cap by the planner's estimate, by a count, and by the offset alone.
    for q in [
        "offset=900&limit=50",
        "start_time=2026-11-01T00:10:00Z&end_time=2026-11-01T01:33:19Z",
        "offset=990&limit=60",
    ] {
        let (n, estimated) = total(q).await;
        assert!(estimated && n > 1_000, "{q}: {n}");
    }
    assert_eq!(
        total("offset=11950&limit=100").await,
        (12_000, false),
        "the last page knows the exact total"
    );
    assert_eq!(total("session_id=small").await, (120, false));
    assert_eq!(
        total("session_id=small&offset=5&limit=2").await,
        (120, false)
    );
    assert_eq!(
        total("session_id=small&offset=500").await,
        (120, false),
        "past the end"
    );
    assert_eq!(total("session_id=nobody&offset=50").await, (0, false));
    assert_eq!(
        total("start_time=2026-11-01T00:10:00Z&end_time=2026-11-01T00:19:59Z&limit=1").await,
        (600, false),
        "counted exactly below the cap"
    );
    let (_, page, _) = get(&app, "/events?session_id=small&limit=3").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        get(
            &app,
            &format!("/events?session_id=small&limit=3&cursor={cursor}")
        )
        .await
        .1["total"],
        120,
        "with a cursor, total still counts every match"
    );
    // Offset pages are served by the deferred join: same rows as a direct walk.
    let (_, deep, _) = get(&app, "/events?offset=1990&limit=5").await;
    assert_eq!(
        event_ids(&deep),
        [
            "bulk-10010",
            "bulk-10009",
            "bulk-10008",
            "bulk-10007",
            "bulk-10006"
        ]
    );
}

#[tokio::test]
async fn a_query_the_database_cannot_answer_ends_at_the_statement_timeout_with_an_opaque_problem() {
    let app = spawn_app().await;
    seed(&app, 3).await;
    // Another session holds the table: every read of it waits.
    app.db
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, problem, content_type) = get(&app, "/events?session_id=s1").await;
    let waited = started.elapsed();
    app.db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(status, 503, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert!(
        waited < std::time::Duration::from_secs(10),
        "bounded by the 5 s statement timeout, took {waited:?}"
    );
    let detail = problem["detail"].as_str().unwrap();
    for internal in ["statement", "timeout", "events", "lock", "postgres", "SQL"] {
        assert!(
            !detail.to_lowercase().contains(&internal.to_lowercase()),
            "opaque: {detail}"
        );
    }
    // The service answers again as soon as the database does.
    assert_eq!(get(&app, "/events?session_id=s1").await.0, 200);
}

#[tokio::test]
async fn a_page_of_large_events_stops_at_the_byte_cap_and_the_walk_still_visits_every_event_once() {
    use candystore::api::query::sql::MAX_PAGE_BYTES;
    let app = spawn_app().await;
    // 30 events of about 1 MB each, in one session.
    app.db
        .execute(
            "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", received_at, \
             payload, session_id, generation, envelope, properties) \
             SELECT 'big-' || g, 'big', 'svc', 'big', 'events', \
                    timestamptz '2026-11-01T00:00:00Z' + g * interval '1 second', now(), \
                    jsonb_build_object('g', g, 'blob', repeat('x', 1000000)), 'heavy', 1, '{}', '{}' \
             FROM generate_series(1, 30) g",
            &[],
        )
        .await
        .unwrap();
    let (status, page, _) = get(&app, "/events?limit=1000").await;
    assert_eq!(status, 200);
    let n = page["events"].as_array().unwrap().len();
    assert!((1..30).contains(&n), "a page under the cap, got {n}");
    assert!(n * 1_000_000 <= MAX_PAGE_BYTES, "{n} events of 1 MB");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["total"], 30, "total is not cut by the cap");
    assert_eq!(page["events"][0]["payload"]["g"], 30);

    // Cursor walk, offset walk (advancing by what came back), timeline and live tail:
    // every event once.
    let expected: Vec<String> = (1..=30).rev().map(|g| format!("big-{g}")).collect();
    assert_eq!(walk_cursors(&app, "/events?limit=1000").await, expected);
    let mut by_offset = Vec::new();
    loop {
        let (_, page, _) = get(
            &app,
            &format!("/events?limit=1000&offset={}", by_offset.len()),
        )
        .await;
        by_offset.extend(event_ids(&page));
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(by_offset, expected);
    let (_, timeline, _) = get(&app, "/sessions/heavy?limit=1000").await;
    assert_eq!(timeline["summary"]["count"], 30);
    assert!(timeline["events"].as_array().unwrap().len() < 30);
    assert_eq!(timeline["has_more"], true);
    let res = app
        .http
        .get(app.api("/events/stream?last_event_id=0"))
        .send()
        .await
        .unwrap();
    let tail: Vec<String> = read_sse(res, 30)
        .await
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tail, expected.iter().rev().cloned().collect::<Vec<_>>());
}

async fn one_event_by_id_and_a_problem_when_unknown(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 3).await;
    let (status, event, _) = get(&app, "/events/e-001").await;
    assert_eq!(status, 200);
    assert_eq!(event["id"], "e-001");
    assert_eq!(event["payload"], json!({"i": 1}));
    let (status, problem, content_type) = get(&app, "/events/nope").await;
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    assert!(problem["detail"].as_str().unwrap().contains("nope"));
}

async fn the_raw_envelope_comes_back_as_published_for_every_generation(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let published = [
        json!({"id": "g1", "event_type": "a.b", "source": "s", "timestamp": "2026-11-20T14:03:11.482+02:00", "data": {"x": [1, 2.5, null]}, "extra": true}),
        json!({"event_id": "g2", "event_type": "c.d", "timestamp": "2026-03-02T09:15:00+00:00", "version": "1.0.0",
               "source": {"host": "h", "type": "agent", "app": "n8n"}, "correlation_ids": ["x"], "payload": {"session_id": "s"}}),
        json!({"specversion": "1.0", "id": "g3", "type": "e.f", "source": "hermes://x", "time": "2026-08-04T05:32:12Z",
               "causationid": null, "actor": {"agent_id": "pm"}, "ordering_key": "k", "data": {"deep": {"er": "é🦀"}}}),
        json!({"id": "g4", "event_type": "no.data"}),
    ];
    for doc in &published {
        app.publish("raw", &serde_json::to_vec(doc).unwrap()).await;
    }
    app.wait_for_rows("events", 4).await;
    for doc in &published {
        let id = doc
            .get("id")
            .or(doc.get("event_id"))
            .unwrap()
            .as_str()
            .unwrap();
        let (status, raw, _) = get(&app, &format!("/events/{id}/raw")).await;
        assert_eq!(status, 200);
        assert_eq!(&raw, doc, "{id}");
    }
}

async fn every_bad_parameter_gets_a_problem_naming_it(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("offset=-3", "offset"),
        ("start_time=tuesday", "start_time"),
        ("end_time=2026-02-30T00:00:00Z", "end_time"),
        ("cursor=not-a-cursor", "cursor"),
        ("colour=red", "colour"),
    ] {
        let (status, problem, content_type) = get(&app, &format!("/events?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(content_type, "application/problem+json", "{query}");
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{query}: {problem}"
        );
    }
}

async fn a_session_timeline_is_in_time_order_with_a_summary_and_pages(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 30).await;
    let (status, t, _) = get(&app, "/sessions/s1?limit=4").await;
    assert_eq!(status, 200);
    let summary = &t["summary"];
    assert_eq!(summary["count"], 10);
    assert_eq!(summary["first_timestamp"], "2026-11-20T14:00:00Z");
    assert_eq!(summary["last_timestamp"], "2026-11-20T14:00:14Z");
    assert_eq!(summary["by_event_type"], json!({"t0": 5, "t1": 5}));
    assert_eq!(summary["by_source"], json!({"svc-a": 8, "svc-b": 2}));
    // Oldest first; walking the cursors visits the ten events once, in order.
    let walked = walk_cursors(&app, "/sessions/s1?limit=4").await;
    let expected: Vec<String> = (0..30)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("e-{i:03}"))
        .collect();
    assert_eq!(walked, expected);
    // The same walk by offsets.
    let mut by_offset = Vec::new();
    for offset in (0..10).step_by(3) {
        let (_, page, _) = get(&app, &format!("/sessions/s1?limit=3&offset={offset}")).await;
        assert_eq!(page["has_more"], offset + 3 < 10, "offset {offset}");
        by_offset.extend(event_ids(&page));
    }
    assert_eq!(by_offset, expected);

    let (status, c, _) = get(&app, "/correlations/c3").await;
    assert_eq!(status, 200);
    assert_eq!(c["summary"]["count"], 4);
    let (status, problem, content_type) = get(&app, "/sessions/nobody").await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert!(problem["detail"].as_str().unwrap().contains("nobody"));
    let (status, _, _) = get(&app, "/sessions/s1?limit=0").await;
    assert_eq!(status, 400);
}

const TOKEN: &str = "candybar-token-0123456789";

async fn with_api_token_set_everything_but_the_probes_needs_the_bearer_token(on: On) {
    let app = spawn_app_on(
        on,
        &[("API_TOKEN", &format!("other-token-9876543210,{TOKEN}"))],
        AppOptions::default(),
    )
    .await;
    seed(&app, 2).await;
    for path in ["/health", "/ready"] {
        assert_eq!(get(&app, path).await.0, 200, "{path} stays open");
    }
    for path in [
        "/events",
        "/events/e-000",
        "/events/e-000/raw",
        "/sessions/s0",
        "/correlations/c0",
        "/no/such/route",
    ] {
        let res = app.http.get(app.api(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(
            res.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let wrong = app
            .http
            .get(app.api(path))
            .bearer_auth("candybar-token-012345678X")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let ok = app
        .http
        .get(app.api("/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = app
        .http
        .get(app.api("/events/e-000"))
        .header("authorization", "bearer other-token-9876543210")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

async fn without_api_token_the_api_is_open(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    assert_eq!(get(&app, "/events").await.0, 200);
}

async fn cors_allows_the_configured_origins_only(on: On) {
    let app = spawn_app_on(
        on,
        &[
            ("CORS_ALLOWED_ORIGINS", "http://candybar.local:3000"),
            ("API_TOKEN", TOKEN),
        ],
        AppOptions::default(),
    )
    .await;
    // A preflight needs no token and names what may follow.
    let pre = app
        .http
        .request(reqwest::Method::OPTIONS, app.api("/events"))
        .header("origin", "http://candybar.local:3000")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://candybar.local:3000"
    );
    let res = app
        .http
        .get(app.api("/events"))
        .header("origin", "http://candybar.local:3000")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://candybar.local:3000"
    );
    let other = app
        .http
        .get(app.api("/events"))
        .header("origin", "http://evil.example")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

async fn the_live_tail_resumes_with_last_event_id_without_gaps_or_repeats(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    // Stored before the tail starts. A stream starts at the newest event whose
    // transaction is older than every one still running on the server, so these
    // are sent too when another database's long write was running when it
    // started: the stream follows `event_type=live`, which they are not.
    seed(&app, 3).await;
    let res = app
        .http
        .get(app.api("/events/stream?event_type=live"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    for i in 0..4 {
        app.publish(
            "live",
            &serde_json::to_vec(&json!({"id": format!("live-{i}"), "event_type": "live"})).unwrap(),
        )
        .await;
    }
    // One chunk may carry several events; the client takes in two, then drops.
    let mut first = read_sse(res, 2).await;
    first.truncate(2);
    let last_id = first[1].0;

    // The client drops; more events arrive; it reconnects with Last-Event-ID.
    for i in 4..7 {
        app.publish(
            "live",
            &serde_json::to_vec(&json!({"id": format!("live-{i}"), "event_type": "live"})).unwrap(),
        )
        .await;
    }
    let res = app
        .http
        .get(app.api("/events/stream?event_type=live"))
        .header("last-event-id", format!("{}-{}", last_id.0, last_id.1))
        .send()
        .await
        .unwrap();
    // A repeat would show twice; a gap would leave one out. Stream order is storage
    // order: two writers may store live-1 before live-0.
    let rest = read_sse(res, 5).await;
    let mut seen: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "live-0", "live-1", "live-2", "live-3", "live-4", "live-5", "live-6"
        ]
    );
    assert!(
        first
            .iter()
            .chain(&rest)
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0].0 < w[1].0),
        "ids increase"
    );
}

async fn the_live_tail_applies_the_filters(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let res = app
        .http
        .get(app.api("/events/stream?session_id=s1&last_event_id=0"))
        .send()
        .await
        .unwrap();
    let by_payload = app
        .http
        .get(app.api(&format!(
            "/events/stream?last_event_id=0&payload_contains={}",
            url_encode(r#"{"i":4}"#)
        )))
        .send()
        .await
        .unwrap();
    seed(&app, 9).await;
    let got = read_sse(res, 3).await;
    let mut ids: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    ids.sort(); // storage order, which concurrent writers make differ from publish order
    assert_eq!(ids, ["e-001", "e-004", "e-007"]);
    let got = read_sse(by_payload, 1).await;
    assert_eq!(got[0].1["id"], "e-004");
    let (status, problem, _) = get(&app, "/events/stream?limit=5").await;
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("limit"));
    let res = app
        .http
        .get(app.api("/events/stream"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

async fn the_openapi_document_describes_every_route_and_the_docs_page_is_self_contained(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    seed(&app, 1).await;
    let (status, spec, _) = get(&app, "/openapi.json").await;
    assert_eq!(status, 200);
    let documented: HashSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served = [
        ("/health", "/health"),
        ("/ready", "/ready"),
        ("/events", "/events"),
        ("/events/{id}", "/events/e-000"),
        ("/events/{id}/raw", "/events/e-000/raw"),
        ("/sessions/{session_id}", "/sessions/s0"),
        ("/correlations/{correlation_id}", "/correlations/c0"),
        ("/openapi.json", "/openapi.json"),
        ("/docs", "/docs"),
        ("/dead-letters", "/dead-letters"),
        ("/event-types", "/event-types"),
        ("/sources", "/sources"),
        ("/audit/checkpoints", "/audit/checkpoints"),
        ("/audit/checkpoint", "/audit/checkpoint"),
        ("/audit/public-key", "/audit/public-key"),
        (
            "/audit/proof/consistency",
            "/audit/proof/consistency?from=0",
        ),
    ];
    for (pattern, example) in served {
        assert!(
            documented.contains(pattern),
            "{pattern} is not documented: {documented:?}"
        );
        let res = app.http.get(app.api(example)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{example}");
    }
    // Served, but not with a 200 here: a stream, and a dead letter this test has not.
    assert!(documented.contains("/events/stream"));
    assert!(documented.contains("/dead-letters/{id}"));
    assert!(documented.contains("/events/stream/tickets"), "a POST");
    assert!(
        documented.contains("/audit/proof/inclusion"),
        "tested in audit_tree.rs"
    );
    assert_eq!(
        documented.len(),
        served.len() + 4,
        "every documented path is served: {documented:?}"
    );
    let list_params: Vec<&str> = spec["paths"]["/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "session_id",
        "event_type",
        "source",
        "target",
        "correlation_id",
        "start_time",
        "end_time",
        "limit",
        "offset",
        "cursor",
    ] {
        assert!(
            list_params.contains(&p),
            "GET /events does not document {p}"
        );
    }

    let page = app
        .http
        .get(app.api("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("openapi.json"));
    for external in ["http://", "https://", "src=\"//", "cdn"] {
        assert!(
            !page.contains(external),
            "the docs page must not load anything from elsewhere ({external})"
        );
    }
}

both_stores!(
    events_come_newest_first_with_a_stable_tie_break_and_the_contract_fields,
    offset_walks_and_cursor_walks_visit_every_event_exactly_once,
    every_filter_selects_what_it_names,
    one_event_by_id_and_a_problem_when_unknown,
    the_raw_envelope_comes_back_as_published_for_every_generation,
    every_bad_parameter_gets_a_problem_naming_it,
    a_session_timeline_is_in_time_order_with_a_summary_and_pages,
    without_api_token_the_api_is_open,
    the_live_tail_resumes_with_last_event_id_without_gaps_or_repeats,
    the_live_tail_applies_the_filters,
    the_openapi_document_describes_every_route_and_the_docs_page_is_self_contained,
    with_api_token_set_everything_but_the_probes_needs_the_bearer_token,
    cors_allows_the_configured_origins_only,
);
