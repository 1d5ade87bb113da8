//! What happens when things go wrong: crashes, outages, signals, bad settings.

use std::process::Stdio;
use std::time::Duration;

use candystore::app::AppOptions;

use crate::helpers::{AMQP, AMQP_ADDR, PG_ADDR, Proxy, TempDb, gen1, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_consumer_stopped_between_commit_and_ack_gives_one_row_after_restart() {
    let (mut app, proxy) = crate::helpers::spawn_app_losing_acks().await;
    let n = i64::from(crate::helpers::LOSING_ACKS_PREFETCH);
    for i in 0..n {
        app.publish("c.a", &gen1(&format!("ca-{i}"), "c.a")).await;
    }
    app.wait_for_rows("events", n).await;
    // Acked by the service, and every ack lost: the broker holds them all.
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_acks_total").await == n as f64
    })
    .await;
    app.crash().await;
    // Its sockets close with it.
    proxy.reset();

    // The broker redelivers all of them; each is already stored.
    app.start(AppOptions::default()).await;
    app.wait_until(Duration::from_secs(15), || async {
        app.metric("candystore_acks_total").await == n as f64
            && app.metric("candystore_events_duplicate_total").await == n as f64
    })
    .await;
    assert_eq!(app.count("events").await, n);
    assert_eq!(
        app.metric("candystore_events_duplicate_total").await,
        n as f64
    );
    assert_eq!(app.metric("candystore_events_stored_total").await, 0.0);
    assert_eq!(app.queue_state().await.0, 0);
}

#[tokio::test]
async fn the_database_unreachable_mid_stream_loses_nothing_and_acks_nothing() {
    let proxy = Proxy::start(PG_ADDR).await;
    let url = format!("postgres://postgres@{}/{{db}}", proxy.addr);
    let app = spawn_app_with(
        &[("DATABASE_URL", &url), ("PREFETCH_COUNT", "20")],
        AppOptions::default(),
    )
    .await;
    for i in 0..20 {
        app.publish("d.b", &gen1(&format!("before-{i}"), "d.b"))
            .await;
    }
    app.wait_for_rows("events", 20).await;
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_acks_total").await == 20.0
    })
    .await;

    proxy.cut();
    for i in 0..100 {
        app.publish("d.b", &gen1(&format!("during-{i}"), "d.b"))
            .await;
    }
    // While the database is away nothing more is stored, acked or dead-lettered,
    // and intake stops at the prefetch: the rest waits in the queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.count("events").await, 20);
    assert_eq!(app.count("dead_letter").await, 0);
    assert_eq!(app.metric("candystore_acks_total").await, 20.0);
    assert!(app.metric("candystore_write_retries_total").await >= 1.0);
    let (ready, _) = app.queue_state().await;
    assert!(
        ready >= 80,
        "at most PREFETCH_COUNT deliveries leave the queue, {ready} ready"
    );
    let health = app.http.get(app.api("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);

    proxy.restore();
    assert_eq!(app.wait_for_rows("events", 120).await, 120);
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_acks_total").await == 120.0
    })
    .await;
    assert_eq!(app.count("dead_letter").await, 0);
}

#[tokio::test]
async fn a_broker_connection_drop_reconnects_and_resumes() {
    let proxy = Proxy::start(AMQP_ADDR).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = spawn_app_with(&[("RABBIT_URL", &url)], AppOptions::default()).await;
    for i in 0..30 {
        app.publish("b.r", &gen1(&format!("br-{i}"), "b.r")).await;
    }
    app.wait_for_rows("events", 30).await;

    proxy.cut();
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_consumer_connected").await == 0.0
    })
    .await;
    for i in 30..60 {
        app.publish("b.r", &gen1(&format!("br-{i}"), "b.r")).await;
    }
    proxy.restore();
    app.wait_until(Duration::from_secs(15), || async {
        app.metric("candystore_consumer_connected").await == 1.0
    })
    .await;
    assert_eq!(app.wait_for_rows("events", 60).await, 60);
    assert!(app.metric("candystore_reconnects_total").await >= 1.0);
    app.wait_until(Duration::from_secs(10), || async {
        app.queue_state().await.0 == 0
    })
    .await;
}

#[tokio::test]
async fn sigterm_mid_stream_exits_zero_and_loses_nothing() {
    let mut app = spawn_app().await;
    // The in-process service steps aside; a real process takes the queue.
    app.stop().await;
    let settings = app.settings();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("serve")
        .env_clear()
        .env("SIGNING_KEY_FILE", app.key_file())
        .env("DATABASE_URL", &settings.database_url)
        .env("RABBIT_URL", AMQP)
        .env("RABBIT_EXCHANGE", &app.exchange)
        .env("RABBIT_QUEUE", &app.queue)
        .env("API_PORT", "0")
        .env("METRICS_PORT", "0")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the candystore binary");

    let n = 2_000;
    let publisher = async {
        for i in 0..n {
            app.publish("s.t", &gen1(&format!("st-{i}"), "s.t")).await;
        }
    };
    let terminator = async {
        // Signal once storage is under way, while publishing continues.
        app.wait_for_rows("events", 200).await;
        let pid = child.id().expect("running") as i32;
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    tokio::join!(publisher, terminator);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit status {status:?}; stderr: {stderr}");
    // A clean shutdown logs no error, lapin's included (channels are closed in order).
    assert!(
        !stderr.lines().any(|l| l.contains("ERROR")),
        "errors logged on a clean shutdown: {stderr}"
    );
    let stored_by_child = app.count("events").await;
    assert!(
        stored_by_child >= 200 && stored_by_child <= n,
        "{stored_by_child}"
    );

    // Whatever the child did not store is still in the queue: restart and drain.
    app.start(AppOptions::default()).await;
    assert_eq!(app.wait_for_rows("events", n).await, n);
    app.wait_until(Duration::from_secs(10), || async {
        app.queue_state().await.0 == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("events").await, n);
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_a_line_naming_the_variable() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("serve")
        .env_clear()
        .env("FLUSH_INTERVAL", "fast")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FLUSH_INTERVAL=\"fast\""), "{stderr}");
}

#[tokio::test]
async fn serve_refuses_to_start_on_an_unmigrated_database() {
    let db = TempDb::new(false).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("LOG_LEVEL", "off")
        .output()
        .await
        .unwrap();
    db.drop_it().await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("candystore migrate"), "{stderr}");
}

#[tokio::test]
async fn shutdown_with_the_database_away_gives_up_in_bounded_time_and_acks_nothing() {
    let proxy = Proxy::start(PG_ADDR).await;
    let url = format!("postgres://postgres@{}/{{db}}", proxy.addr);
    let mut app = spawn_app_with(
        &[("DATABASE_URL", &url), ("SHUTDOWN_TIMEOUT", "2s")],
        AppOptions::default(),
    )
    .await;
    proxy.cut();
    for i in 0..10 {
        app.publish("g.u", &gen1(&format!("gu-{i}"), "g.u")).await;
    }
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_write_retries_total").await >= 1.0
    })
    .await;
    let started = tokio::time::Instant::now();
    let result = app.running.take().unwrap().shutdown().await;
    assert!(
        matches!(result, Err(candystore::app::ShutdownError::Timeout(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by SHUTDOWN_TIMEOUT"
    );

    // Nothing is written or acked after giving up, even once the database is back;
    // a new instance then stores all ten.
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.count("events").await, 0);
    app.start(AppOptions::default()).await;
    assert_eq!(app.wait_for_rows("events", 10).await, 10);
}

#[tokio::test]
async fn a_header_that_is_not_text_is_kept_as_hex_and_the_event_flagged() {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let app = spawn_app().await;
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("blob"),
        AMQPValue::LongString(LongString::from(vec![0xff_u8, 0x00, 0x41])),
    );
    headers.insert(
        ShortString::from("fine"),
        AMQPValue::LongString(LongString::from("ok")),
    );
    app.publish_with(
        "h.x",
        &gen1("h-1", "h.x"),
        BasicProperties::default().with_headers(headers),
    )
    .await;
    app.wait_for_rows("events", 1).await;
    let r = app
        .db
        .query_one("SELECT sanitized, properties::jsonb -> 'headers' ->> 'fine', properties::jsonb -> 'headers' -> 'blob' ->> '$hex', original_body FROM events", &[])
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(1), "ok");
    assert_eq!(r.get::<_, String>(2), "ff0041");
    assert_eq!(r.get::<_, Vec<u8>>(3), gen1("h-1", "h.x"));
}

#[tokio::test]
async fn an_audit_tree_job_that_stops_makes_the_service_unready() {
    let opts = AppOptions {
        fault: Some(candystore::app::Fault::AuditTreePanics),
    };
    let app = spawn_app_with(&[], opts).await;
    let supervisor = app.running().supervisor();
    tokio::time::timeout(Duration::from_secs(10), supervisor.failed())
        .await
        .expect("the failure is noticed");
    let cause = supervisor.cause().unwrap();
    assert!(cause.starts_with("audit-tree: panicked"), "{cause}");
    let r = app.http.get(app.api("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // Counted by name (the counter is raised just after /ready turns).
    app.wait_until(Duration::from_secs(5), || async {
        app.metric_labelled("candystore_task_failures_total", "task=\"audit-tree\"")
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_sink_that_panics_makes_the_service_unready_and_loses_nothing() {
    let opts = AppOptions {
        fault: Some(candystore::app::Fault::SinkPanics),
    };
    let mut app = spawn_app_with(&[("SHUTDOWN_TIMEOUT", "10s")], opts).await;
    app.publish("p.a", &gen1("p-1", "p.a")).await;
    let supervisor = app.running().supervisor();
    tokio::time::timeout(Duration::from_secs(10), supervisor.failed())
        .await
        .expect("the failure is noticed");
    let cause = supervisor.cause().unwrap();
    assert!(
        cause.starts_with("sink: panicked: injected fault"),
        "{cause}"
    );

    let r = app.http.get(app.api("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("pipeline task failed"),
        "{body}"
    );

    // What main does next: shut down within SHUTDOWN_TIMEOUT (then exit 70).
    let running = app.running.take().unwrap();
    let started = std::time::Instant::now();
    let _ = running.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(11));
    // The event the sink held was never acked: it is back in the queue.
    app.wait_until(Duration::from_secs(10), || async {
        app.queue_state().await == (1, 0)
    })
    .await;
    assert_eq!(app.count("events").await, 0);
}

#[tokio::test]
async fn an_event_routed_to_the_default_partition_while_its_partition_is_attached_is_stored_not_dead_lettered()
 {
    let app = spawn_app().await;
    // What the maintenance job (or another writer) does to make the partition of a
    // time the default partition would take (`partition::create_empty_locked`),
    // held open: the default partition locked against writes, the new partition
    // attached, not yet committed.
    let attacher = crate::helpers::connect(&app.db_url).await;
    attacher
        .batch_execute(
            "BEGIN; LOCK TABLE events_default IN EXCLUSIVE MODE; \
             CREATE TABLE events_p20261120 (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
             ALTER TABLE events ATTACH PARTITION events_p20261120 \
               FOR VALUES FROM ('2026-11-20 00:00:00+00') TO ('2026-11-21 00:00:00+00')",
        )
        .await
        .unwrap();
    // Dated 2026-11-20: routed by the partitions the writer's statement sees, the
    // default one, whose lock it then waits for.
    app.publish("r.a", &gen1("routed-1", "r.a")).await;
    app.wait_until(Duration::from_secs(10), || async {
        app.db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '%INSERT INTO events (id%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    attacher.batch_execute("COMMIT").await.unwrap();
    // PostgreSQL checks the default partition's constraint again once the writer
    // has its lock, and refuses the row it routed there; written again, the row
    // goes to the new partition.
    app.wait_until(Duration::from_secs(20), || async {
        app.count("events").await + app.count("dead_letter").await > 0
    })
    .await;
    let dead: Vec<String> = app
        .db
        .query("SELECT reason || ': ' || detail FROM dead_letter", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    let stored: Vec<(String, String)> = app
        .db
        .query("SELECT id, tableoid::regclass::text FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [("routed-1".to_owned(), "events_p20261120".to_owned())]
    );
    assert_eq!(
        app.metric_labelled("candystore_write_retries_total", "cause=\"rerouted\"")
            .await,
        1.0,
        "the row was refused once by the default partition's new constraint"
    );
    app.wait_until(Duration::from_secs(10), || async {
        app.queue_state().await == (0, 1)
    })
    .await;
}

#[tokio::test]
async fn a_session_holding_a_lock_the_writer_needs_times_the_write_out_and_nothing_is_lost() {
    let app = spawn_app().await;
    let blocker = crate::helpers::connect(&app.db_url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    for i in 0..20 {
        app.publish("l.a", &gen1(&format!("lock-{i}"), "l.a")).await;
    }
    // The writer gives up waiting after LOCK_TIMEOUT (5s) and retries.
    app.wait_until(Duration::from_secs(20), || async {
        app.metrics_text().await.lines().any(|l| {
            l.starts_with("candystore_write_retries_total{cause=\"lock_timeout\"} ")
                && !l.ends_with(" 0")
        })
    })
    .await;
    assert_eq!(app.count("events").await, 0);
    let health = app.http.get(app.api("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process serves while it waits");

    blocker.batch_execute("COMMIT").await.unwrap();
    // Every event stored once, nothing left in the queue or unacked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.count("events").await < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: Vec<String> = app
        .db
        .query("SELECT id FROM events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        stored.len(),
        20,
        "stored {stored:?}; dead letters {:?}; queue (ready, consumers) {:?}; metrics:\n{}",
        app.db
            .query("SELECT reason || ': ' || detail FROM dead_letter", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>(),
        app.queue_state().await,
        app.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with("candystore_") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(app.queue_state().await, (0, 1));
}
