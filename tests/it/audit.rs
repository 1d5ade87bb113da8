//! The audit chain: events sealed behind ingest, `GET /audit/checkpoints`, and
//! `candystore verify` (`ops::verify`) catching each kind of tampering.

use std::time::Duration;

use candystore::app::AppOptions;
use candystore::ops::verify::{Finding, verify};
use serde_json::Value;

use crate::helpers::{TestApp, gen1, spawn_app_with};

/// Waits until checkpoints cover `n` events; returns them (newest first).
async fn sealed(app: &TestApp, n: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page: Value = app
            .http
            .get(app.api("/audit/checkpoints"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count: i64 = page["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["count"].as_i64().unwrap())
            .sum();
        if count >= n {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sealed {count} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (txid, seq) of an event.
async fn position(app: &TestApp, id: &str) -> (i64, i64) {
    let r = app
        .db
        .query_one("SELECT txid, seq FROM events WHERE id = $1", &[&id])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn verify_names_a_modified_an_inserted_and_a_deleted_event() {
    let app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    // Two rounds, so the events span several writing transactions.
    for round in 0..2 {
        for i in round * 10..round * 10 + 10 {
            app.publish("audit", &gen1(&format!("e-{i}"), "audit"))
                .await;
        }
        app.wait_for_rows("events", round * 10 + 10).await;
    }
    let page = sealed(&app, 20).await;
    let newest = &page["checkpoints"][0];
    assert_eq!(newest["chain_hash"].as_str().unwrap().len(), 64);
    let report = verify(&app.db, None, None).await.unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.events, 20);

    // A payload altered with SQL.
    let original: Value = app
        .db
        .query_one("SELECT payload FROM events WHERE id = 'e-5'", &[])
        .await
        .unwrap()
        .get(0);
    app.db
        .execute(
            "UPDATE events SET payload = '{\"forged\": true}' WHERE id = 'e-5'",
            &[],
        )
        .await
        .unwrap();
    let (txid, seq) = position(&app, "e-5").await;
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::Modified { id, seq: s, txid: t, .. }) if id == "e-5" && *s == seq && *t == txid),
        "{finding:?}"
    );
    app.db
        .execute(
            "UPDATE events SET payload = $1 WHERE id = 'e-5'",
            &[&original],
        )
        .await
        .unwrap();
    assert_eq!(
        verify(&app.db, None, None).await.unwrap().finding,
        None,
        "restored"
    );

    // A row written with SQL into a sealed range: just after the first event's
    // position, before every later transaction's rows.
    let (txid, seq) = position(&app, "e-0").await;
    app.db
        .execute(
            "INSERT INTO events (seq, txid, id, event_type, source, target, routing_key, exchange, \"timestamp\", \
             received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms, generation, envelope, \
             payload_member, properties, sanitized, original_body) OVERRIDING SYSTEM VALUE \
             SELECT $2, $1, 'forged-1', event_type, source, target, routing_key, exchange, \"timestamp\", \
             received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms, generation, envelope, \
             payload_member, properties, sanitized, original_body FROM events WHERE id = 'e-0'",
            &[&txid, &(seq + 1_000_000)],
        )
        .await
        .unwrap();
    let next_txid: i64 = app
        .db
        .query_one(
            "SELECT min(txid) FROM events WHERE txid > $1 AND id LIKE 'e-%'",
            &[&txid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        next_txid > txid,
        "the events span more than one transaction"
    );
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::Inserted { id, .. }) if id == "forged-1"),
        "{finding:?}"
    );
    app.db
        .execute("DELETE FROM events WHERE id = 'forged-1'", &[])
        .await
        .unwrap();
    assert_eq!(verify(&app.db, None, None).await.unwrap().finding, None);

    // A row altered together with its seal, recomputed: the chain breaks.
    let e3: Value = app
        .db
        .query_one("SELECT payload FROM events WHERE id = 'e-3'", &[])
        .await
        .unwrap()
        .get(0);
    let e3_seal: Vec<u8> = app
        .db
        .query_one(
            "SELECT digest FROM audit_seals s JOIN events e USING (txid, seq) WHERE e.id = 'e-3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    app.db
        .execute(
            "UPDATE events SET payload = '{\"forged\": 2}' WHERE id = 'e-3'",
            &[],
        )
        .await
        .unwrap();
    let row = app
        .db
        .query_one(
            &format!(
                "SELECT {} FROM events WHERE id = 'e-3'",
                candystore::storage::seal::SEALED_COLUMNS
            ),
            &[],
        )
        .await
        .unwrap();
    let forged = candystore::storage::seal::digest(&row).unwrap();
    let (txid, seq) = position(&app, "e-3").await;
    app.db
        .execute(
            "UPDATE audit_seals SET digest = $3 WHERE txid = $1 AND seq = $2",
            &[&txid, &seq, &forged.as_slice()],
        )
        .await
        .unwrap();
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::ChainBroken { .. })),
        "a seal recomputed for a forged row does not chain: {finding:?}"
    );
    // Put both back: the history verifies again.
    let (txid, seq) = position(&app, "e-3").await;
    app.db
        .execute("UPDATE events SET payload = $1 WHERE id = 'e-3'", &[&e3])
        .await
        .unwrap();
    app.db
        .execute(
            "UPDATE audit_seals SET digest = $3 WHERE txid = $1 AND seq = $2",
            &[&txid, &seq, &e3_seal],
        )
        .await
        .unwrap();
    assert_eq!(verify(&app.db, None, None).await.unwrap().finding, None);

    // A sealed row deleted.
    let (txid, seq) = position(&app, "e-12").await;
    app.db
        .execute("DELETE FROM events WHERE id = 'e-12'", &[])
        .await
        .unwrap();
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert_eq!(
        finding
            .as_ref()
            .map(|f| (f.to_string().contains("deleted"), f.clone())),
        Some((
            true,
            Finding::Deleted {
                checkpoint: match finding {
                    Some(Finding::Deleted { checkpoint, .. }) => checkpoint,
                    _ => 0,
                },
                txid,
                seq
            }
        )),
        "{finding:?}"
    );
}

const KEY: &str = "audit-key-for-tests-0123456789abcdef";

/// Inserts a copy of the event `like` as `id`, with SQL, in a transaction of its
/// own: a fresh position after everything sealed. `attestation` is what the copy
/// carries (`None`: none).
async fn insert_with_sql(app: &TestApp, like: &str, id: &str, attestation: Option<Vec<u8>>) {
    app.db
        .execute(
            "INSERT INTO events (id, event_type, source, target, routing_key, exchange, \"timestamp\", \
             received_at, payload, session_id, correlation_id, generation, envelope, payload_member, \
             properties, sanitized, original_body, attestation) \
             SELECT $2, event_type, source, target, routing_key, exchange, \"timestamp\", received_at, \
             payload, session_id, correlation_id, generation, envelope, payload_member, properties, \
             sanitized, original_body, $3 FROM events WHERE id = $1",
            &[&like, &id, &attestation],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn with_audit_key_an_event_inserted_with_sql_after_the_last_seal_is_named() {
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    // Every column a writer attests, across the generations: targets, sessions,
    // correlation ids, a fallback time, text PostgreSQL refuses (NUL), no payload.
    let bodies: Vec<Vec<u8>> = vec![
        r#"{"id": "g1", "event_type": "audit.one", "source": "svc-a", "target": "candybar",
            "timestamp": "2026-11-20T09:00:00+02:00", "session_id": "s-0",
            "correlation_id": "c-0", "data": {"text": "é ✓"}}"#
            .as_bytes()
            .to_vec(),
        br#"{"event_id": "g2", "event_type": "audit.two", "source": {"host": "h", "app": "svc"},
            "target": "t", "session_id": "s-1", "correlation_ids": ["c-1"],
            "timestamp": "2026-11-20T10:00:00Z", "payload": {"k": [1, 2.50, "x"]}}"#
            .to_vec(),
        br#"{"specversion": "1.0", "id": "g3", "type": "audit.three", "source": "svc-c",
            "time": "2026-11-20T10:00:01.123456789Z", "data": {"a": {"b": null}}}"#
            .to_vec(),
        br#"{"id": "fallback", "event_type": "audit.no_time", "data": 1}"#.to_vec(),
        br#"{"id": "nul", "event_type": "audit.nul", "data": {"te\u0000xt": "a\u0000b"}}"#.to_vec(),
        br#"{"id": "bare", "event_type": "audit.bare"}"#.to_vec(),
    ];
    let n = bodies.len() as i64;
    for b in &bodies {
        app.publish("audit.mixed", b).await;
    }
    app.wait_for_rows("events", n).await;
    let page = sealed(&app, n).await;
    assert_eq!(page["checkpoints"][0]["attested"], true, "{page}");
    let ring = candystore::audit::attest::Keyring::new(&[KEY.to_string()]).unwrap();
    // The writers' rows all check: no false alarm, with the key or without it.
    let report = verify(&app.db, None, Some(&ring)).await.unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.attestations_checked, n as u64);
    assert_eq!(verify(&app.db, None, None).await.unwrap().finding, None);
    let flagged: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM audit_seals WHERE attested IS NOT TRUE",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(flagged, 0);
    assert_eq!(app.metric("candystore_audit_unattested_total").await, 0.0);
    let last_seal = app
        .metric("candystore_audit_last_seal_timestamp_seconds")
        .await;
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 60.0..=now + 1.0).contains(&last_seal), "{last_seal}");

    // A row inserted with SQL, after the last seal: sealed, but as unattested.
    insert_with_sql(&app, "g3", "forged-fresh", None).await;
    let page = sealed(&app, n + 1).await;
    assert_eq!(page["checkpoints"][0]["unattested"], 1, "{page}");
    app.wait_until(Duration::from_secs(5), || async {
        app.metric("candystore_audit_unattested_total").await == 1.0
    })
    .await;
    for keyring in [None, Some(&ring)] {
        let finding = verify(&app.db, None, keyring).await.unwrap().finding;
        assert!(
            matches!(&finding, Some(Finding::Unattested { id, .. }) if id == "forged-fresh"),
            "{finding:?}"
        );
        assert!(finding.unwrap().to_string().contains("out of band"));
    }
    // The seal's verdict rewritten as "valid": the chain no longer holds, and with
    // the key the MAC itself names the row.
    app.db
        .execute(
            "UPDATE audit_seals SET attested = true WHERE attested = false",
            &[],
        )
        .await
        .unwrap();
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::ChainBroken { .. })),
        "{finding:?}"
    );
    let finding = verify(&app.db, None, Some(&ring)).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::Unattested { id, .. }) if id == "forged-fresh"),
        "{finding:?}"
    );
    // Cleared instead: still named, since attestation began before it.
    app.db
        .execute(
            "UPDATE audit_seals SET attested = NULL WHERE txid = (SELECT txid FROM events WHERE id = 'forged-fresh')",
            &[],
        )
        .await
        .unwrap();
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::Unattested { id, .. }) if id == "forged-fresh"),
        "{finding:?}"
    );
    app.db
        .execute(
            "UPDATE audit_seals SET attested = false WHERE attested IS NULL",
            &[],
        )
        .await
        .unwrap();
    app.db
        .execute("DELETE FROM events WHERE id = 'forged-fresh'", &[])
        .await
        .unwrap();

    // A writer's attestation copied onto another row does not hold for it.
    let stolen: Vec<u8> = app
        .db
        .query_one("SELECT attestation FROM events WHERE id = 'g2'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stolen.len(), candystore::audit::attest::LEN);
    insert_with_sql(&app, "g2", "forged-copy", Some(stolen)).await;
    app.wait_until(Duration::from_secs(10), || async {
        app.metric("candystore_audit_unattested_total").await == 2.0
    })
    .await;
    let seal: Option<bool> = app
        .db
        .query_one(
            "SELECT s.attested FROM audit_seals s JOIN events e USING (txid, seq) WHERE e.id = 'forged-copy'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seal, Some(false));

    // Once the chain is attested, an instance without the key does not seal.
    let mut client = crate::helpers::connect(&app.settings().database_url).await;
    insert_with_sql(&app, "g1", "while-keyless", None).await;
    let step = candystore::storage::seal::step(&mut client, None)
        .await
        .unwrap();
    assert!(step.needs_key && step.events == 0, "{step:?}");
}

#[tokio::test]
async fn after_retention_every_checkpoint_verifies_and_a_restore_is_verified_again() {
    use candystore::storage::{PartitionInterval, maintain};
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    let event = |id: &str, t: chrono::DateTime<chrono::Utc>| {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": id, "type": "audit.retention", "source": "svc",
            "time": t.to_rfc3339(), "data": {"n": 1}
        }))
        .unwrap()
    };
    let old = PartitionInterval::Day.floor(chrono::Utc::now()) - chrono::Duration::days(10);
    for i in 0..5 {
        app.publish(
            "audit.old",
            &event(&format!("old-{i}"), old + chrono::Duration::hours(i)),
        )
        .await;
    }
    app.wait_for_rows("events", 5).await;
    sealed(&app, 5).await;
    // The old day gets its partition (its rows move out of the default one, their
    // positions and digests unchanged), then today's events are sealed after them.
    let target = candystore::db::pg_config(&app.db_url).unwrap();
    let mut c = candystore::storage::connect(&target).await.unwrap();
    let keep_all = maintain::Options {
        layout: candystore::storage::partition::Layout::with_interval(PartitionInterval::Day),
        retention: None,
        archive_dir: None,
    };
    maintain::run_once(&mut c, &keep_all, chrono::Utc::now(), None)
        .await
        .unwrap();
    let ring = candystore::audit::attest::Keyring::new(&[KEY.to_string()]).unwrap();
    assert_eq!(
        verify(&app.db, None, Some(&ring)).await.unwrap().finding,
        None
    );
    // Today's events, and among them a late one of the old day: sealed in the same
    // checkpoint, which retention will leave half stored.
    for i in 0..7 {
        app.publish("audit.new", &event(&format!("new-{i}"), chrono::Utc::now()))
            .await;
        if i == 3 {
            app.publish(
                "audit.old",
                &event("late-old", old + chrono::Duration::hours(6)),
            )
            .await;
        }
    }
    app.wait_for_rows("events", 13).await;
    sealed(&app, 13).await;

    let dir = std::env::temp_dir().join(format!("cs-audit-{}", uuid::Uuid::new_v4()));
    let report = maintain::run_once(
        &mut c,
        &maintain::Options {
            retention: Some(Duration::from_secs(5 * 86_400)),
            archive_dir: Some(dir.clone()),
            ..keep_all
        },
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap();
    assert!(!report.dropped.is_empty(), "{report:?}");
    assert_eq!(app.count("events").await, 7);
    // Seals and checkpoints stay. Every checkpoint is walked, the half-stored one
    // too: the sealed events timed before every partition left went with the
    // dropped day, and everything still stored verifies.
    let checkpoints: i64 = app
        .db
        .query_one("SELECT count(*) FROM audit_checkpoints", &[])
        .await
        .unwrap()
        .get(0);
    for keyring in [None, Some(&ring)] {
        let report = verify(&app.db, None, keyring).await.unwrap();
        assert_eq!(report.finding, None, "{report:?}");
        assert_eq!(
            (
                report.from,
                report.checkpoints,
                report.events,
                report.dropped
            ),
            (Some(1), checkpoints as u64, 7, 6),
            "{report:?}"
        );
    }
    // Restored from the archive retention wrote: the rows go back to their places
    // in the chain, and verify covers them again, from the first checkpoint.
    let manifest = candystore::storage::archive::read_manifest(&dir)
        .unwrap()
        .unwrap();
    let files: Vec<std::path::PathBuf> = manifest.files.iter().map(|e| dir.join(&e.file)).collect();
    candystore::storage::archive::restore(&mut c, &files, None)
        .await
        .unwrap();
    assert_eq!(app.count("events").await, 13);
    for keyring in [None, Some(&ring)] {
        let report = verify(&app.db, None, keyring).await.unwrap();
        assert_eq!(report.finding, None, "{report:?}");
        assert_eq!(
            (report.from, report.events, report.dropped),
            (Some(1), 13, 0),
            "{report:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A stored event deleted with SQL is still named: its time is not before
    // every partition.
    let (txid, seq) = position(&app, "new-5").await;
    app.db
        .execute("DELETE FROM events WHERE id = 'new-5'", &[])
        .await
        .unwrap();
    let finding = verify(&app.db, None, None).await.unwrap().finding;
    assert!(
        matches!(finding, Some(Finding::Deleted { txid: t, seq: s, .. }) if (t, s) == (txid, seq)),
        "{finding:?}"
    );
}

#[tokio::test]
async fn an_upgrade_from_before_partitioning_with_audit_key_set_raises_no_false_alarm() {
    // A database of migration 0008 (no partitions, no txid, no audit tables): the
    // service runs while the online migration is pending, and its writers store
    // rows unattested, since `attestation` does not exist yet.
    let mut app = crate::helpers::spawn_app_prepared(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
        8,
        "",
    )
    .await;
    for i in 0..10 {
        app.publish("audit.up", &gen1(&format!("before-{i}"), "audit.up"))
            .await;
    }
    app.wait_for_rows("events", 10).await;
    let mut c = crate::helpers::connect(&app.db_url).await;
    candystore::db::migrate(&mut c).await.unwrap();
    // Restarted after `migrate`, as README asks: every row from now on is attested.
    app.stop().await;
    app.start(AppOptions::default()).await;
    for i in 0..10 {
        app.publish("audit.up", &gen1(&format!("after-{i}"), "audit.up"))
            .await;
    }
    app.wait_for_rows("events", 20).await;
    sealed(&app, 20).await;
    let (attested, unchecked, flagged): (i64, i64, i64) = {
        let r = app
            .db
            .query_one(
                "SELECT count(*) FILTER (WHERE attested), count(*) FILTER (WHERE attested IS NULL), \
                 count(*) FILTER (WHERE NOT attested) FROM audit_seals",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((attested, unchecked, flagged), (10, 10, 0));
    let ring = candystore::audit::attest::Keyring::new(&[KEY.to_string()]).unwrap();
    let report = verify(&app.db, None, Some(&ring)).await.unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.events, 20);
}
