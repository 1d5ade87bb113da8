//! PostgreSQL over TLS, against the local server (Debian's PostgreSQL serves TLS
//! with its own self-signed certificate, issued to `localhost`).

use candystore::db;

use crate::helpers::{PG, connect, gen1, spawn_app_with};

/// The server's certificate, which is its own CA.
async fn server_certificate() -> String {
    let admin = connect(&format!("{PG}/postgres")).await;
    let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(on, "on", "the local PostgreSQL serves TLS");
    admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_service_stores_and_serves_over_verified_postgresql_tls() {
    let cert = server_certificate().await;
    let url = format!(
        "postgres://postgres@localhost:5432/{{db}}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert}"
    );
    let app = spawn_app_with(
        &[
            ("DATABASE_URL", url.as_str()),
            ("READ_DATABASE_URL", url.as_str()),
        ],
        Default::default(),
    )
    .await;
    app.publish("tls.a", &gen1("tls-1", "tls.a")).await;
    app.wait_for_rows("events", 1).await;
    let r = app.http.get(app.api("/events/tls-1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Every connection of the service (writer, read pool, probes) is encrypted.
    let rows = app
        .db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND a.application_name = 'candystore'",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 2, "writer and read pool connected");
    assert!(rows.iter().all(|r| r.get::<_, bool>(0)), "all over TLS");
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_name_and_verify_ca_accepts_it() {
    let cert = server_certificate().await;
    // The certificate names localhost, not 127.0.0.1.
    let full = format!(
        "postgres://postgres@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert={cert}"
    );
    let err = db::connect(&db::pg_config(&full).unwrap())
        .await
        .unwrap_err();
    let chain = candystore::telemetry::error_chain(&err);
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    let ca = full.replace("verify-full", "verify-ca");
    let client = db::connect(&db::pg_config(&ca).unwrap()).await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // A root that did not issue it is refused, whatever the mode.
    let wrong = ca.replace(&cert, "/etc/ssl/certs/ca-certificates.crt");
    assert!(db::connect(&db::pg_config(&wrong).unwrap()).await.is_err());
}

#[test]
fn a_missing_root_certificate_stops_start_up_naming_the_variable() {
    let err = candystore::config::Settings::try_from_pairs([(
        "DATABASE_URL",
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
    )])
    .expect_err("refused")
    .to_string();
    assert!(err.starts_with("invalid DATABASE_URL="), "{err}");
    assert!(err.contains("/nonexistent.pem"), "{err}");
}

#[tokio::test]
async fn the_api_reads_as_a_read_only_role_given_by_read_database_url() {
    let role = format!("cs_reader_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&format!("{PG}/postgres")).await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    {
        let app = spawn_app_with(
            &[
                (
                    "READ_DATABASE_URL",
                    &format!("postgres://{role}@127.0.0.1:5432/{{db}}"),
                ),
                ("SEAL_INTERVAL", "200ms"),
            ],
            Default::default(),
        )
        .await;
        // The grants the project ships for the role.
        let grants = include_str!("../../sql/roles/reader.sql").replace("candystore_reader", &role);
        app.db.batch_execute(&grants).await.unwrap();
        app.publish("ro.a", &gen1("ro-1", "ro.a")).await;
        app.publish("ro.a", &gen1("ro-2", "ro.a")).await;
        app.publish("ro.bad", b"{not json").await;
        app.wait_for_rows("events", 2).await;
        app.wait_for_rows("dead_letter", 1).await;
        // Both events in a signed checkpoint, read through the role. Each is
        // waited for: the tree takes rows in commit order, which two writers may
        // make the reverse of the publishing order (clean-clone run 15 of
        // 2026-12-06 found ro-2 signed and ro-1 not yet).
        for id in ["ro-1", "ro-2"] {
            app.wait_until(std::time::Duration::from_secs(20), || async {
                let r = app
                    .http
                    .get(app.api(&format!("/audit/proof/inclusion?id={id}")))
                    .send()
                    .await;
                r.is_ok_and(|r| r.status() == 200)
            })
            .await;
        }
        let dead: i64 = app
            .db
            .query_one("SELECT max(seq) FROM dead_letter", &[])
            .await
            .unwrap()
            .get(0);
        // A page by one filter, a document's (read partition by partition), a
        // session's with more to come (its total from the session counts).
        for path in [
            "/events?event_type=ro.a",
            "/events?payload_contains=%7B%7D",
            "/events?session_id=abc-123&limit=1",
        ] {
            let r = app.http.get(app.api(path)).send().await.unwrap();
            let status = r.status().as_u16();
            let page: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{path}: {page}");
            assert!(
                page["events"][0]["id"].as_str().unwrap().starts_with("ro-"),
                "{path}: {page}"
            );
        }
        // Every other read route (each GET the OpenAPI document lists), and the
        // live tail by ticket: nothing the API serves needs a write or a table the
        // role cannot read.
        let id = "ro-1";
        let paths = [
            "/events?source=whisperlivekit".to_owned(),
            format!("/events/{id}"),
            format!("/events/{id}/raw"),
            "/sessions/abc-123".to_owned(),
            "/event-types".to_owned(),
            "/sources".to_owned(),
            "/correlations/7c4d58ac-4a34-4261-b7a7-a99cdf62813a".to_owned(),
            "/dead-letters".to_owned(),
            format!("/dead-letters/{dead}"),
            "/audit/checkpoints".to_owned(),
            "/audit/checkpoint".to_owned(),
            "/audit/public-key".to_owned(),
            "/audit/proof/inclusion?id=ro-1".to_owned(),
            "/audit/proof/consistency?from=0".to_owned(),
            "/openapi.json".to_owned(),
            "/docs".to_owned(),
            "/health".to_owned(),
            "/ready".to_owned(),
        ];
        for path in &paths {
            let r = app.http.get(app.api(path)).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{path}: {body}");
        }
        assert_eq!(app.open_stream_by_ticket(None).await.1, 200);
        // No documented route was left out above.
        let spec: serde_json::Value = app.get_json("/openapi.json").await;
        for pattern in spec["paths"].as_object().unwrap().keys() {
            let covered = pattern.starts_with("/events/stream")
                || paths.iter().any(|p| {
                    let p = p.split('?').next().unwrap();
                    let (a, b): (Vec<&str>, Vec<&str>) =
                        (pattern.split('/').collect(), p.split('/').collect());
                    a.len() == b.len()
                        && a.iter().zip(&b).all(|(x, y)| x.starts_with('{') || x == y)
                });
            assert!(covered, "{pattern} is not called under the read-only role");
        }
        let readers: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert!(readers >= 1, "the read pool connected as {role}");
        // The role could not write even if a query tried.
        let ro =
            connect(&format!("{PG}/{}", app.name).replace("postgres@", &format!("{role}@"))).await;
        let denied = ro.batch_execute("DELETE FROM events").await.unwrap_err();
        assert_eq!(
            denied.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
    }
    // The app's database is dropped on a thread of its own; wait for it.
    for _ in 0..100 {
        if admin
            .batch_execute(&format!("DROP ROLE {role}"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("cannot drop role {role}");
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let token = "metrics-secret-0123456789";
    let app = spawn_app_with(&[("METRICS_TOKEN", token)], Default::default()).await;
    let addr = app.running().metrics_addr.unwrap();
    let url = format!("http://{addr}/metrics");
    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app
        .http
        .get(&url)
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("candystore_consumer_connected 1")
    );
}
