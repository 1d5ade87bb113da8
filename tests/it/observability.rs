//! What operators see: metrics that balance, and a dashboard and alert rules that
//! only query metrics the service exports.

use std::collections::BTreeSet;
use std::time::Duration;

use candystore::app::AppOptions;

use crate::both_stores;
use crate::helpers::{On, gen1, spawn_app_on, spawn_app_with};

async fn the_books_balance_after_a_mixed_stream(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let mut published = 0.0;
    for i in 0..60 {
        app.publish("m.x", &gen1(&format!("m-{i}"), "m.x")).await;
        published += 1.0;
        if i % 5 == 0 {
            app.publish("m.x", &gen1(&format!("m-{i}"), "m.x")).await; // a repeat
            app.publish("m.bad", format!("not json {i}").as_bytes())
                .await; // a poison body
            published += 2.0;
        }
    }
    app.wait_until(Duration::from_secs(15), || async {
        app.metric("candystore_acks_total").await == published
    })
    .await;
    let received = app.metric("candystore_deliveries_received_total").await;
    let stored = app.metric("candystore_events_stored_total").await;
    let duplicates = app.metric("candystore_events_duplicate_total").await;
    let dead = app.metric("candystore_dead_letters_total").await;
    let in_flight = app.metric("candystore_events_in_flight").await;
    assert_eq!(received, published);
    assert_eq!(
        (stored, duplicates, dead, in_flight),
        (60.0, 12.0, 12.0, 0.0)
    );
    assert_eq!(
        received,
        stored + duplicates + dead + in_flight,
        "received = stored + duplicates + dead-lettered + in flight"
    );
    assert_eq!(app.metric("candystore_events_decoded_total").await, 72.0);
    assert_eq!(app.metric("candystore_channel_sent_total").await, published);
    assert_eq!(
        app.metric("candystore_channel_received_total").await,
        published
    );
    assert_eq!(app.count("events").await as f64, stored);
    assert_eq!(app.count("dead_letter").await as f64, dead);
    // Every record's share of MAX_INFLIGHT_BYTES is given back, and the gauge says so.
    assert_eq!(app.metric("candystore_inflight_bytes").await, 0.0);
}

#[tokio::test]
async fn the_queue_depth_and_consumers_are_read_from_the_broker() {
    let app = spawn_app_with(&[("QUEUE_DEPTH_INTERVAL", "100ms")], AppOptions::default()).await;
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_queue_consumers").await == 1.0
    })
    .await;
    assert_eq!(app.metric("candystore_queue_depth").await, 0.0);
}

async fn api_requests_are_counted_by_route_pattern_and_status(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    for path in ["/health", "/health", "/no/such/thing"] {
        app.http.get(app.api(path)).send().await.unwrap();
    }
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"candystore_http_requests_total{method="GET",route="/health",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"candystore_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_enabled_false_turns_the_endpoint_off() {
    let app = spawn_app_with(&[("METRICS_ENABLED", "false")], AppOptions::default()).await;
    assert!(app.running().metrics_addr.is_none());
    app.publish("off.x", &gen1("off-1", "off.x")).await;
    assert_eq!(
        app.wait_for_rows("events", 1).await,
        1,
        "ingest runs without metrics"
    );
}

/// Metric names a PromQL text mentions, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("candystore_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(base.to_owned());
        i = end;
    }
    names
}

async fn every_metric_the_dashboard_and_the_alert_rules_query_is_exported(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    app.publish("d.x", &gen1("d-1", "d.x")).await;
    app.publish("d.bad", b"nope").await;
    app.http.get(app.api("/health")).send().await.unwrap();
    app.wait_for_rows("dead_letter", 1).await;
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_acks_total").await == 2.0
    })
    .await;
    let exported: BTreeSet<String> = app
        .metrics_text()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["ops/grafana/candystore.json", "ops/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let queried = metric_names(&text);
        assert!(queried.len() >= 5, "{file} queries {queried:?}");
        // Partitions are what PostgreSQL adds: the embedded store has none to
        // count, and an alert on them stays silent there.
        let missing: Vec<_> = queried
            .difference(&exported)
            .filter(|m| on == On::Postgres || !m.contains("partition"))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics that are not exported: {missing:?}"
        );
    }
    // The dashboard has the panels operators asked for.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/ops/grafana/candystore.json")).unwrap(),
    )
    .unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Ingest rate",
        "Batch latency percentiles by step",
        "Storage latency (delivery → commit)",
        "Failures by reason",
        "Queue lag and in-flight",
        "API latency",
    ] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
}

async fn database_connections_count_the_writers_and_the_read_pool(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    app.publish("c.x", &gen1("c-1", "c.x")).await;
    app.wait_for_rows("events", 1).await;
    app.http.get(app.api("/events")).send().await.unwrap(); // opens a read-pool connection
    app.http.get(app.api("/health")).send().await.unwrap(); // opens a probe connection
    let writers = app.metric("candystore_writer_connections").await;
    let pool = app.metric("candystore_database_pool_size").await;
    assert!(
        writers >= 1.0,
        "the writer that stored the event is connected"
    );
    assert!(pool >= 1.0, "the query used the read pool");
    // PostgreSQL's probes have a connection of their own; the embedded
    // store's read through its one reader.
    let probes = if on == On::Postgres { 1.0 } else { 0.0 };
    assert_eq!(
        app.metric("candystore_database_connections").await,
        writers + pool + probes,
        "writers, the read pool and the probes' connection"
    );
}

/// `serve` with no server to reach: it logs its settings, then fails to start.
/// (exit status, the JSON log lines, stderr whole).
async fn serve_unreachable(level: &str) -> (bool, Vec<serde_json::Value>, String) {
    // Port 1 refuses connections.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("serve")
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/candystore",
        )
        .env("RABBIT_URL", "amqp://guest:rabbitpw@127.0.0.1:1/%2f")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", level)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("rabbitpw"),
        "{stderr}"
    );
    let lines = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    (out.status.success(), lines, stderr)
}

#[tokio::test]
async fn start_up_logs_the_settings_changed_at_info_and_every_one_at_debug_secrets_redacted() {
    // At info: one line, the settings not at their default.
    let (ok, lines, stderr) = serve_unreachable("info").await;
    assert!(!ok);
    assert!(!lines.iter().any(|v| v["message"] == "setting"), "{stderr}");
    let starting: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("candystore starting"))
        })
        .collect();
    assert_eq!(starting.len(), 1, "{stderr}");
    assert_eq!(
        starting[0]["settings"],
        // LOG_LEVEL=info and LOG_FORMAT=json are the defaults.
        "RABBIT_URL=amqp://guest:***@127.0.0.1:1/%2f \
         DATABASE_URL=postgres://postgres:***@127.0.0.1:1/candystore"
    );
    // The failure is logged once, with its cause, and not printed again.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("cannot connect"), "{}", errors[0]);
    assert!(!stderr.contains("candystore: "), "{stderr}");

    // At debug: every setting, each on its line.
    let (_, lines, stderr) = serve_unreachable("debug").await;
    let settings: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["message"] == "setting").collect();
    assert_eq!(
        settings.len(),
        candystore::config::VARIABLES.len(),
        "{stderr}"
    );
    let db = settings
        .iter()
        .find(|v| v["setting"] == "DATABASE_URL")
        .unwrap();
    assert_eq!(
        db["value"],
        "postgres://postgres:***@127.0.0.1:1/candystore"
    );
}

#[tokio::test]
async fn every_form_of_database_password_stays_out_of_health_logs_and_errors() {
    // `?password=`: accepted by tokio-postgres (trust auth ignores it here).
    let app = spawn_app_with(
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/{db}?password=canary-query",
        )],
        AppOptions::default(),
    )
    .await;
    let started = std::time::Instant::now();
    let health = app
        .http
        .get(app.api("/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(!health.contains("canary-query"), "{health}");
    assert!(health.contains("password=***"), "{health}");

    // Each form in the start-up log (port 1: it logs its settings, then fails),
    // and a key=value string, which is refused, in the error naming the variable.
    for (url, refused) in [
        ("postgres://postgres:canary-user@127.0.0.1:1/db", false),
        (
            "postgres://postgres@127.0.0.1:1/db?password=canary-query",
            false,
        ),
        (
            "postgres://postgres@127.0.0.1:1/db?sslpassword=canary-ssl",
            false,
        ),
        ("host=127.0.0.1 port=1 password=canary-kv dbname=db", true),
        ("host=127.0.0.1 password='canary quoted' dbname=db", true),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", url)
            .env("RABBIT_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("LOG_FORMAT", "json")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}");
        assert!(!text.contains("canary"), "{url}: {text}");
        if refused {
            assert_eq!(out.status.code(), Some(2), "{url}: {text}");
            assert!(text.contains("DATABASE_URL"), "{url}: {text}");
            assert!(text.contains("password=***"), "{url}: {text}");
        } else {
            assert!(text.contains("***"), "{url}: {text}");
        }
    }
}

both_stores!(
    the_books_balance_after_a_mixed_stream,
    api_requests_are_counted_by_route_pattern_and_status,
    every_metric_the_dashboard_and_the_alert_rules_query_is_exported,
    database_connections_count_the_writers_and_the_read_pool,
);
