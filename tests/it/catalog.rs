//! `GET /event-types` and `GET /sources`, kept by the catalog job from a mixed
//! stream through the real pipeline.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{On, TestApp, spawn_app_on};
use candystore::app::AppOptions;

async fn get(app: &TestApp, path: &str) -> Value {
    let res = app.http.get(app.api(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

async fn the_catalog_counts_types_sources_and_payload_keys_of_a_mixed_stream(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let mut stream: Vec<(&str, Value)> = Vec::new();
    for i in 0..5 {
        stream.push((
            "a",
            json!({"id": format!("a-{i}"), "event_type": "a.created", "source": "svc-a",
            "timestamp": format!("2026-11-20T10:00:0{i}Z"), "data": {"n": i, "name": "x"}}),
        ));
    }
    // A producer change: `n` becomes text, `name` disappears, `tags` appears.
    for i in 5..7 {
        stream.push(("a", json!({"id": format!("a-{i}"), "event_type": "a.created", "source": "svc-a",
            "timestamp": format!("2026-11-20T11:00:0{i}Z"), "data": {"n": format!("{i}"), "tags": ["t"]}})));
    }
    for i in 0..3 {
        stream.push((
            "b",
            json!({"specversion": "1.0", "id": format!("b-{i}"), "type": "b.done",
            "source": "svc-b", "time": format!("2026-11-21T09:00:0{i}Z"), "data": {"ok": true}}),
        ));
    }
    // Not an object: counted, with no keys.
    stream.push((
        "c",
        json!({"id": "c-0", "event_type": "c.raw", "source": "svc-b",
        "timestamp": "2026-11-22T00:00:00Z", "data": [1, 2]}),
    ));
    let n = stream.len() as i64;
    for (key, body) in &stream {
        app.publish(key, &serde_json::to_vec(body).unwrap()).await;
    }
    app.wait_for_rows("events", n).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let types = loop {
        let types = get(&app, "/event-types").await;
        let counted: i64 = types["event_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["count"].as_i64().unwrap())
            .sum();
        if counted == n {
            break types;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counted {counted} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_name = |name: &str| -> Value {
        types["event_types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["event_type"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {types}"))
    };
    let a = by_name("a.created");
    assert_eq!(a["count"], 7);
    assert_eq!(a["first_seen"], "2026-11-20T10:00:00Z");
    assert_eq!(a["last_seen"], "2026-11-20T11:00:06Z");
    let keys: Vec<(String, String, i64, String)> = a["payload_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_owned(),
                k["json_type"].as_str().unwrap().to_owned(),
                k["count"].as_i64().unwrap(),
                k["last_seen"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("n", "number", 5, "2026-11-20T10:00:04Z"),
        ("name", "string", 5, "2026-11-20T10:00:04Z"),
        ("n", "string", 2, "2026-11-20T11:00:06Z"),
        ("tags", "array", 2, "2026-11-20T11:00:06Z"),
    ] {
        let e = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2,
            expected.3.to_owned(),
        );
        assert!(keys.contains(&e), "{e:?} in {keys:?}");
    }
    assert_eq!(keys.len(), 4, "{keys:?}");
    let b = by_name("b.done");
    assert_eq!(b["count"], 3);
    assert_eq!(b["payload_keys"][0]["key"], "ok");
    assert_eq!(b["payload_keys"][0]["share"], 1.0);
    assert_eq!(by_name("c.raw")["payload_keys"], json!([]));

    let sources = get(&app, "/sources").await;
    let counts: Vec<(String, i64)> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_owned(),
                s["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("svc-a".to_owned(), 7), ("svc-b".to_owned(), 4)]);

    // Counted once: more steps change nothing.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(get(&app, "/event-types").await, types);
}

async fn catalog_endpoints_refuse_unknown_and_bad_parameters_naming_them(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    for (path, name) in [
        ("/event-types?x=1", "x"),
        ("/event-types?limit=0", "limit"),
        ("/event-types?limit=1001", "limit"),
        ("/event-types?limit=5&limit=6", "limit"),
        ("/sources?x=1", "x"),
    ] {
        let res = app.http.get(app.api(path)).send().await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{path}: {problem}"
        );
    }
}

/// Waits until the catalog has counted `n` events.
async fn counted(app: &TestApp, n: i64) {
    app.wait_until(Duration::from_secs(20), || async {
        app.int("SELECT CAST(coalesce(sum(count), 0) AS BIGINT) FROM catalog_event_types")
            .await
            == n
    })
    .await;
}

async fn an_event_with_fifty_thousand_keys_adds_a_bounded_catalog_and_answer(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let known =
        json!({"id": "k-0", "event_type": "wide", "source": "s", "data": {"a": 1, "b": "x"}});
    app.publish("wide", &serde_json::to_vec(&known).unwrap())
        .await;
    counted(&app, 1).await;
    let data: serde_json::Map<String, Value> = (0..50_000)
        .map(|i| (format!("key{i:05}"), json!(i)))
        .collect();
    let wide = json!({"id": "k-1", "event_type": "wide", "source": "s", "data": data});
    app.publish("wide", &serde_json::to_vec(&wide).unwrap())
        .await;
    // Later events: a known key is still counted as itself, a new one as other.
    let later =
        json!({"id": "k-2", "event_type": "wide", "source": "s", "data": {"a": 2, "zzz": true}});
    app.publish("wide", &serde_json::to_vec(&later).unwrap())
        .await;
    counted(&app, 3).await;

    let rows = app
        .int("SELECT count(*) FROM catalog_payload_keys WHERE event_type = 'wide'")
        .await;
    assert_eq!(rows, 101, "100 keys and the other bucket");
    let res = app.http.get(app.api("/event-types")).send().await.unwrap();
    let bytes = res.bytes().await.unwrap();
    assert!(bytes.len() < 40_000, "answered {} bytes", bytes.len());
    let types: Value = serde_json::from_slice(&bytes).unwrap();
    let t = &types["event_types"][0];
    assert_eq!(t["payload_keys_capped"], true);
    let keys = t["payload_keys"].as_array().unwrap();
    let find = |k: &str, ty: &str| {
        keys.iter()
            .find(|e| e["key"] == k && e["json_type"] == ty)
            .map(|e| e["count"].as_i64().unwrap())
    };
    assert_eq!(find("a", "number"), Some(2));
    assert_eq!(find("b", "string"), Some(1));
    // 100 kept: a, b and 98 of the wide event's; the other 49,902 and zzz.
    assert_eq!(find("", "other"), Some(49_902 + 1));
    assert_eq!(find("zzz", "boolean"), None);
}

async fn event_types_come_in_pages_by_name(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    for t in ["t.c", "t.a", "t.b"] {
        let e = json!({"id": t, "event_type": t, "source": "s", "data": {}});
        app.publish(t, &serde_json::to_vec(&e).unwrap()).await;
    }
    counted(&app, 3).await;
    let first = get(&app, "/event-types?limit=2").await;
    let names: Vec<&str> = first["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t.a", "t.b"]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["next_after"], "t.b");
    let rest = get(&app, "/event-types?limit=2&after=t.b").await;
    assert_eq!(rest["event_types"][0]["event_type"], "t.c");
    assert_eq!(rest["event_types"].as_array().unwrap().len(), 1);
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["next_after"], Value::Null);
}

both_stores!(
    the_catalog_counts_types_sources_and_payload_keys_of_a_mixed_stream,
    catalog_endpoints_refuse_unknown_and_bad_parameters_naming_them,
    an_event_with_fifty_thousand_keys_adds_a_bounded_catalog_and_answer,
    event_types_come_in_pages_by_name,
);
