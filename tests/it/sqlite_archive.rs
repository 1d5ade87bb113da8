//! Archives between the stores: the embedded store's events archived in
//! PostgreSQL's format, restored into PostgreSQL, archived from there and
//! restored into a new embedded file; every event intact at each step (its raw
//! view compared with what was published) and `verify` passing on each far
//! side, where the restored events joined the trail as new writes.

use candystore::app::AppOptions;
use candystore::audit::attest::Keyring;
use candystore::audit::verify::Options;
use serde_json::Value;

use crate::audit::{KEY, outside_key};
use crate::audit_tree::checkpoint_covering;
use crate::helpers::{TestApp, connect, spawn_app_with};
use crate::sqlite_api::{comparable, deliveries, publish_all};
use crate::support::TempSqlite;

/// `candystore ARGS` against `database_url`: its exit code and output.
async fn cli(database_url: &str, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) =
        crate::support::run_candystore(args, &[("DATABASE_URL", database_url), ("AUDIT_KEY", KEY)])
            .await;
    (code, format!("{stdout}{stderr}"))
}

/// Every published event's raw view, as `app` serves it.
async fn raw_views(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for b in deliveries() {
        let id = b
            .get("id")
            .or_else(|| b.get("event_id"))
            .and_then(Value::as_str)
            .unwrap();
        out.push(app.get_json(&format!("/events/{id}/raw")).await);
    }
    out
}

/// Every stored event's `seq` and id, in `seq` order.
fn places(file: &TempSqlite) -> Vec<(i64, String)> {
    let conn = file.look();
    let mut st = conn
        .prepare("SELECT seq, id FROM events ORDER BY seq")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn ring() -> Keyring {
    Keyring::new(&[KEY.to_string()]).unwrap()
}

#[tokio::test]
async fn events_move_from_the_embedded_store_to_postgresql_and_back_intact_and_verified_on_each_side()
 {
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let bodies = deliveries();
    let settings = [("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)];

    // 1. Stored in an embedded file, with a dead letter.
    let first = TempSqlite::new();
    let lite = spawn_app_with(
        &[&settings[..], &[("DATABASE_URL", &first.url())]].concat(),
        AppOptions::default(),
    )
    .await;
    publish_all(&lite, &bodies).await;
    lite.publish("k.x", b"{\"id\": 1, \"broken").await;
    checkpoint_covering(&lite, &outside_key(&lite), 61).await;
    let published = raw_views(&lite).await;
    assert_eq!(
        published, bodies,
        "the embedded store serves what was published"
    );
    let page = comparable(lite.get_json("/events?limit=100").await);
    let dead_count = |page: Value| page["dead_letters"].as_array().map(Vec::len);
    assert_eq!(dead_count(lite.get_json("/dead-letters").await), Some(1));

    // 2. Archived beside the running service, in PostgreSQL's format.
    let to_pg = first.path.with_file_name("to-postgres");
    let (code, out) = cli(
        &first.url(),
        &[
            "archive",
            "--before",
            &tomorrow,
            "--to",
            to_pg.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("events_p20261201.ndjson.zst: "), "{out}");

    // 3. Restored into PostgreSQL: every event as it was, verified there.
    // It has a dead letter of its own already, at the `seq` the file's has.
    let pg = spawn_app_with(&settings, AppOptions::default()).await;
    pg.publish("k.x", b"not an event at all").await;
    pg.wait_for_rows("dead_letter", 1).await;
    let (code, out) = cli(&pg.db_url, &["restore", to_pg.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(raw_views(&pg).await, bodies);
    assert_eq!(comparable(pg.get_json("/events?limit=100").await), page);
    let dead_pg = pg.get_json("/dead-letters").await;
    assert_eq!(dead_count(dead_pg.clone()), Some(2), "{dead_pg}");
    let mut texts = Vec::new();
    for d in dead_pg["dead_letters"].as_array().unwrap() {
        let one = pg.get_json(&format!("/dead-letters/{}", d["id"])).await;
        texts.push(one["body_text"].as_str().unwrap().to_owned());
    }
    texts.sort();
    assert_eq!(
        texts,
        ["not an event at all", "{\"id\": 1, \"broken"],
        "{dead_pg}"
    );
    let key = outside_key(&pg);
    checkpoint_covering(&pg, &key, 61).await;
    let rows = connect(&pg.db_url).await;
    let report = candystore::audit::verify::verify(
        &pg.db,
        &rows,
        Options {
            keyring: Some(&ring()),
            key: Some(&key),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.events, 60, "{report:?}");
    // A second restore adds nothing.
    let (code, out) = cli(&pg.db_url, &["restore", to_pg.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("(0 new, ").count(), 3, "{out}");

    // 4. Archived from PostgreSQL, restored into a new embedded file.
    let back = first.path.with_file_name("to-sqlite");
    let (code, out) = cli(
        &pg.db_url,
        &[
            "archive",
            "--before",
            &tomorrow,
            "--to",
            back.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let second = TempSqlite::new();
    let (code, out) = cli(&second.url(), &["restore", back.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    let report = candystore::store::sqlite::verify::verify(
        &second.path,
        Options {
            keyring: Some(&ring()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.events, report.leaves), (60, 60), "{report:?}");
    let lite2 = spawn_app_with(
        &[&settings[..], &[("DATABASE_URL", &second.url())]].concat(),
        AppOptions::default(),
    )
    .await;
    assert_eq!(raw_views(&lite2).await, bodies);
    assert_eq!(comparable(lite2.get_json("/events?limit=100").await), page);
    assert_eq!(dead_count(lite2.get_json("/dead-letters").await), Some(2));

    // 5. Home again: events deleted from the first file come back from its own
    // archive at their places, where its tree holds their leaves.
    let mut lite = lite;
    lite.stop().await;
    let before = places(&first);
    rusqlite::Connection::open(&first.path)
        .unwrap()
        .execute("DELETE FROM events WHERE id IN ('e3', 'e17', 'e44')", [])
        .unwrap();
    let (code, out) = cli(&first.url(), &["restore", to_pg.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(2 new, 29 already stored)"), "{out}");
    assert_eq!(places(&first), before);
    let report = candystore::store::sqlite::verify::verify(
        &first.path,
        Options {
            keyring: Some(&ring()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.events, 60);
}

#[tokio::test]
async fn retention_on_the_embedded_store_archives_and_drops_old_days_and_verify_counts_what_it_took()
 {
    let file = TempSqlite::new();
    let archive = file.path.with_file_name("archive");
    let app = spawn_app_with(
        &[
            ("DATABASE_URL", &file.url()),
            ("SEAL_INTERVAL", "100ms"),
            ("AUDIT_KEY", KEY),
            ("RETENTION", "2d"),
            ("ARCHIVE_DIR", archive.to_str().unwrap()),
            ("MAINTENANCE_INTERVAL", "200ms"),
        ],
        AppOptions::default(),
    )
    .await;
    let bodies = deliveries();
    publish_all(&app, &bodies).await;
    // Three events of now, which retention keeps.
    let now = chrono::Utc::now().to_rfc3339();
    for i in 0..3 {
        app.publish(
            "k.x",
            &serde_json::to_vec(
                &serde_json::json!({"id": format!("now-{i}"), "event_type": "t.now",
                "source": "s1", "timestamp": now, "data": {"i": i}}),
            )
            .unwrap(),
        )
        .await;
    }
    let count = |file: &TempSqlite| -> i64 {
        file.look()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    // Every old day archived, then dropped; the new events stay.
    app.wait_until(std::time::Duration::from_secs(30), || async {
        count(&file) == 3 && app.get_json("/events/now-2").await["id"] == "now-2"
    })
    .await;
    let key = outside_key(&app);
    // 63 events, the key leaf and the two days' retention leaves.
    checkpoint_covering(&app, &key, 66).await;
    let report = candystore::store::sqlite::verify::verify(
        &file.path,
        Options {
            keyring: Some(&ring()),
            key: Some(&key),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.events, report.dropped), (3, 60), "{report:?}");

    // What was archived restores elsewhere whole.
    let pg = spawn_app_with(&[("AUDIT_KEY", KEY)], AppOptions::default()).await;
    let (code, out) = cli(&pg.db_url, &["restore", archive.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(raw_views(&pg).await, bodies);

    // A drop recorded with SQL excuses nothing, and is named.
    let w = rusqlite::Connection::open(&file.path).unwrap();
    w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    w.execute(
        "INSERT INTO dropped_ranges (table_name, partition, from_time, to_time, rows, dropped_at) \
         SELECT 'events', 'events_p20990101', 0, 9000000000000000, 1, 0",
        [],
    )
    .unwrap();
    w.execute("DELETE FROM events WHERE id = 'now-1'", [])
        .unwrap();
    let report = candystore::store::sqlite::verify::verify(
        &file.path,
        Options {
            key: Some(&key),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    use candystore::audit::verify::Finding;
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::ForgedRetention { partition } if partition == "events_p20990101")),
        "{:?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Deleted { .. })),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn archive_with_drop_empties_the_embedded_store_s_old_days_and_a_restore_brings_them_home() {
    let file = TempSqlite::new();
    let mut app = spawn_app_with(
        &[("DATABASE_URL", &file.url()), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    publish_all(&app, &deliveries()).await;
    app.wait_until(std::time::Duration::from_secs(20), || async {
        app.get_json("/events?limit=1").await["total"] == 60
    })
    .await;
    let stored = places(&file);
    let dir = file.path.with_file_name("archive");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    // While the service owns the file, dropping is refused, naming it.
    let (code, out) = cli(
        &file.url(),
        &[
            "archive",
            "--before",
            &tomorrow,
            "--to",
            dir.to_str().unwrap(),
            "--drop",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("in use by another candystore process"),
        "{out}"
    );
    app.stop().await;
    let (code, out) = cli(
        &file.url(),
        &[
            "archive",
            "--before",
            &tomorrow,
            "--to",
            dir.to_str().unwrap(),
            "--drop",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dropped events_p20261201 (31 rows)"), "{out}");
    assert!(places(&file).is_empty());
    let verified = |file: &TempSqlite| {
        let path = file.path.clone();
        async move {
            candystore::store::sqlite::verify::verify(
                &path,
                Options {
                    keyring: Some(&ring()),
                    ..Options::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let report = verified(&file).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.events, report.dropped), (0, 60));
    // Home again, at the same places; each row meets its leaf.
    let (code, out) = cli(&file.url(), &["restore", dir.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(places(&file), stored);
    let report = verified(&file).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.events, 60);
}
