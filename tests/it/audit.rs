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
    let report = verify(&app.db, None).await.unwrap();
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
    let finding = verify(&app.db, None).await.unwrap().finding;
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
        verify(&app.db, None).await.unwrap().finding,
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
    let finding = verify(&app.db, None).await.unwrap().finding;
    assert!(
        matches!(&finding, Some(Finding::Inserted { id, .. }) if id == "forged-1"),
        "{finding:?}"
    );
    app.db
        .execute("DELETE FROM events WHERE id = 'forged-1'", &[])
        .await
        .unwrap();
    assert_eq!(verify(&app.db, None).await.unwrap().finding, None);

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
    let finding = verify(&app.db, None).await.unwrap().finding;
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
    assert_eq!(verify(&app.db, None).await.unwrap().finding, None);

    // A sealed row deleted.
    let (txid, seq) = position(&app, "e-12").await;
    app.db
        .execute("DELETE FROM events WHERE id = 'e-12'", &[])
        .await
        .unwrap();
    let finding = verify(&app.db, None).await.unwrap().finding;
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
