//! The audit trail against whoever can write to the database with SQL, each
//! attack tried with and without the keys: `candystore verify` must name the
//! event, the leaf or the checkpoint (`audit::verify`).

use candystore::app::AppOptions;
use candystore::audit::attest::Keyring;
use candystore::audit::leaf::{self, CONTENT_COLUMNS};
use candystore::audit::note::{Checkpoint, SigningKey, VerifierKey};
use candystore::audit::tree::{Frontier, leaf_hash};
use candystore::audit::verify::{Finding, Options, Report, verify};

use crate::audit_tree::checkpoint_covering;
use crate::helpers::{TestApp, connect, gen1, spawn_app_with};

pub const KEY: &str = "an-audit-key-of-at-least-32-characters";

/// The public key of the app's own signing key file: a key from outside the
/// database, as an operator holds it.
pub fn outside_key(app: &TestApp) -> VerifierKey {
    let text = std::fs::read_to_string(app.key_file()).unwrap();
    SigningKey::parse(&text).unwrap().verifier()
}

pub async fn run_verify(
    app: &TestApp,
    keyring: Option<&Keyring>,
    key: Option<&VerifierKey>,
) -> Report {
    let rows = connect(&app.db_url).await;
    verify(
        &app.db,
        &rows,
        Options {
            keyring,
            key,
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

async fn verify_saved(app: &TestApp, saved: &str) -> Report {
    let rows = connect(&app.db_url).await;
    let key = outside_key(app);
    verify(
        &app.db,
        &rows,
        Options {
            key: Some(&key),
            saved: Some(saved),
            tree_only: true,
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

async fn publish_n(app: &TestApp, prefix: &str, range: std::ops::Range<usize>) {
    for i in range.clone() {
        app.publish("audit", &gen1(&format!("{prefix}-{i}"), "audit"))
            .await;
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

fn ring() -> Keyring {
    Keyring::new(&[KEY.to_string()]).unwrap()
}

#[tokio::test]
async fn a_payload_changed_before_its_checkpoint_is_named_with_or_without_the_key() {
    // No checkpoint will cover these events during the test: the leaves wait.
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "1h"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    publish_n(&app, "w", 0..8).await;
    app.wait_for_rows("events", 8).await;
    let key = outside_key(&app);
    // The first checkpoint (empty) is signed by the step that adds the key leaf.
    checkpoint_covering(&app, &key, 0).await;
    let clean = run_verify(&app, Some(&ring()), Some(&key)).await;
    assert!(clean.ok(), "{:?}", clean.findings);
    // The eight events' leaves, none in a checkpoint, and the key leaf that
    // introduced AUDIT_KEY (in the first checkpoint or not, as that step went).
    assert_eq!((clean.leaves, clean.events, clean.attestations), (9, 8, 9));
    assert!(clean.pending >= 8, "{clean:?}");

    app.db
        .execute(
            "UPDATE events SET payload = jsonb_set(payload, '{amount}', '1000000') WHERE id = 'w-7'",
            &[],
        )
        .await
        .unwrap();
    let at = position(&app, "w-7").await;
    for keyring in [None, Some(ring())] {
        let report = run_verify(&app, keyring.as_ref(), Some(&key)).await;
        assert_eq!(
            report.findings,
            vec![Finding::Modified {
                id: "w-7".into(),
                position: at,
                index: None
            }],
            "with the key: {}",
            keyring.is_some()
        );
    }
}

/// A copy of the stored event `like` as `id`, inserted with SQL at transaction
/// `txid` (this one's when `None`) and a fresh `seq`.
async fn copy_event(app: &TestApp, like: &str, id: &str, txid: Option<i64>) {
    app.db
        .execute(
            "INSERT INTO events (id, event_type, source, target, routing_key, exchange, \"timestamp\", \
             received_at, payload, session_id, correlation_id, generation, envelope, payload_member, \
             properties, sanitized, original_body, salt, txid) \
             SELECT $2, event_type, source, target, routing_key, exchange, \"timestamp\", received_at, \
             payload, session_id, correlation_id, generation, envelope, payload_member, properties, \
             sanitized, original_body, salt, coalesce($3, pg_current_xact_id()::text::bigint) \
             FROM events WHERE id = $1",
            &[&like, &id, &txid],
        )
        .await
        .unwrap();
}

/// What an attacker with SQL and the documented formats computes: the leaf of
/// a row as it now stands, with its own salt (no AUDIT_KEY: no attestation).
async fn forged_leaf(app: &TestApp, id: &str) -> Vec<u8> {
    let row = app
        .db
        .query_one(
            &format!("SELECT txid, seq, {CONTENT_COLUMNS}, salt FROM events WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    let content = candystore::audit::verify::content(&row);
    let salt: Vec<u8> = row.get(19);
    leaf::event(content.timestamp, &content.commitment(&salt), None)
}

/// Rewrites every checkpoint to the tree the stored leaves make now, signed
/// with a key of the attacker's, which also replaces the trail's public key.
async fn resign_everything(app: &TestApp) {
    let leaves: Vec<Vec<u8>> = app
        .db
        .query("SELECT leaf FROM audit_leaves ORDER BY txid, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let heads: Vec<i64> = app
        .db
        .query("SELECT size FROM audit_heads ORDER BY size", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let origin: String = app
        .db
        .query_one("SELECT origin FROM audit_trail", &[])
        .await
        .unwrap()
        .get(0);
    let forger = SigningKey::generate(&origin).unwrap();
    let mut f = Frontier::default();
    let mut roots = vec![f.root()];
    for l in &leaves {
        f.append(leaf_hash(l), |_, _| {});
        roots.push(f.root());
    }
    for size in heads {
        let root = roots[size as usize];
        let note = forger.sign(
            &Checkpoint {
                origin: origin.clone(),
                size: size as u64,
                root,
            }
            .body(),
        );
        app.db
            .execute(
                "UPDATE audit_heads SET root = $2, note = $3 WHERE size = $1",
                &[&size, &root.as_slice(), &note],
            )
            .await
            .unwrap();
    }
    app.db
        .execute(
            "UPDATE audit_trail SET public_key = $1",
            &[&forger.verifier().encode()],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_payload_changed_after_its_checkpoint_with_leaves_and_checkpoints_rewritten_is_named() {
    for with_key in [false, true] {
        let mut settings = vec![("SEAL_INTERVAL", "100ms")];
        if with_key {
            settings.push(("AUDIT_KEY", KEY));
        }
        let mut app = spawn_app_with(&settings, AppOptions::default()).await;
        publish_n(&app, "a", 0..20).await;
        app.wait_for_rows("events", 20).await;
        let key = outside_key(&app);
        checkpoint_covering(&app, &key, 20).await;
        app.stop().await;

        app.db
            .execute(
                "UPDATE events SET payload = jsonb_set(payload, '{amount}', '1000000') WHERE id = 'a-7'",
                &[],
            )
            .await
            .unwrap();
        let forged = forged_leaf(&app, "a-7").await;
        let at = position(&app, "a-7").await;
        app.db
            .execute(
                "UPDATE audit_leaves SET leaf = $3 WHERE txid = $1 AND seq = $2",
                &[&at.0, &at.1, &forged],
            )
            .await
            .unwrap();
        resign_everything(&app).await;

        // With the public key from outside the database, every checkpoint from
        // the forged leaf on is named.
        let report = run_verify(&app, None, Some(&key)).await;
        assert!(
            report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::BadSignature { .. })),
            "{:?}",
            report.findings
        );
        if with_key {
            // AUDIT_KEY names the leaf itself, even without the public key.
            let report = run_verify(&app, Some(&ring()), None).await;
            assert!(
                report.findings.iter().any(|f| matches!(f,
                    Finding::Unattested { position, index: Some(_) } if *position == at)),
                "{:?}",
                report.findings
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_event_and_rows_inserted_with_sql_at_any_position_are_named() {
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    publish_n(&app, "d", 0..10).await;
    app.wait_for_rows("events", 10).await;
    let key = outside_key(&app);
    checkpoint_covering(&app, &key, 10).await;
    let clean = run_verify(&app, Some(&ring()), Some(&key)).await;
    assert!(clean.ok(), "{:?}", clean.findings);
    assert_eq!(clean.attestations, 11, "ten events and the key leaf");

    let deleted = position(&app, "d-3").await;
    app.db
        .execute("DELETE FROM events WHERE id = 'd-3'", &[])
        .await
        .unwrap();
    // Copies of a stored row: at a fresh position, and at two no writer uses.
    for (id, txid) in [
        ("forged-0", None),
        ("forged-1", Some(-1i64)),
        ("forged-2", Some(9_000_000_000_000_000_000)),
    ] {
        copy_event(&app, "d-5", id, txid).await;
    }
    // And one with a leaf of its own, as the writer would make it, but without
    // the key: the tree job appends it.
    copy_event(&app, "d-6", "forged-3", None).await;
    let leaf = forged_leaf(&app, "forged-3").await;
    let forged3 = position(&app, "forged-3").await;
    app.db
        .execute(
            "INSERT INTO audit_leaves (txid, seq, leaf) VALUES ($1, $2, $3)",
            &[&forged3.0, &forged3.1, &leaf],
        )
        .await
        .unwrap();
    checkpoint_covering(&app, &key, 12).await;

    let report = run_verify(&app, Some(&ring()), Some(&key)).await;
    let f = &report.findings;
    assert!(
        f.iter().any(
            |f| matches!(f, Finding::Deleted { position, index: Some(_) } if *position == deleted)
        ),
        "{f:?}"
    );
    for id in ["forged-0", "forged-1", "forged-2"] {
        assert!(
            f.iter()
                .any(|f| matches!(f, Finding::NotInTree { id: i, .. } if i == id)),
            "{id}: {f:?}"
        );
    }
    assert!(
        f.iter().any(|f| matches!(f, Finding::Unattested { position, index: Some(_) } if *position == forged3)),
        "{f:?}"
    );
    // Without AUDIT_KEY, all but the leaf made without it are still named.
    let report = run_verify(&app, None, Some(&key)).await;
    assert_eq!(report.findings.len(), 4, "{:?}", report.findings);
}

#[tokio::test]
async fn a_tree_truncated_and_grown_again_is_a_rollback_against_a_saved_checkpoint() {
    let app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    publish_n(&app, "r", 0..30).await;
    app.wait_for_rows("events", 30).await;
    let key = outside_key(&app);
    let (saved, cp) = checkpoint_covering(&app, &key, 30).await;
    assert_eq!(cp.size, 30);
    assert!(verify_saved(&app, &saved).await.ok());

    // Delete an event with its leaf and every checkpoint after it: the tree job
    // (with the real key) appends the rest again and signs smaller trees.
    let at = position(&app, "r-10").await;
    app.db
        .batch_execute(&format!(
            "BEGIN; DELETE FROM events WHERE id = 'r-10'; \
             DELETE FROM audit_leaves WHERE txid = {} AND seq = {}; \
             DELETE FROM audit_heads WHERE last_txid > {0} OR (last_txid = {0} AND last_seq >= {1}); COMMIT",
            at.0, at.1
        ))
        .await
        .unwrap();
    checkpoint_covering(&app, &key, 29).await;
    let report = verify_saved(&app, &saved).await;
    assert!(
        matches!(
            report.findings.first(),
            Some(Finding::Rollback {
                seen: 30,
                size: 29,
                ..
            })
        ),
        "{:?}",
        report.findings
    );
    // Grown past the saved size again: the same size, another root.
    publish_n(&app, "r", 30..35).await;
    checkpoint_covering(&app, &key, 34).await;
    let report = verify_saved(&app, &saved).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Rollback { seen: 30, .. })),
        "{:?}",
        report.findings
    );
    // The full verify names nothing but what the saved checkpoint shows: the
    // tree was rebuilt consistently, which is why checkpoints are kept outside.
    let full = run_verify(&app, None, Some(&key)).await;
    assert!(full.ok(), "{:?}", full.findings);
}

#[tokio::test]
async fn an_emptied_tree_is_a_finding_not_an_empty_success() {
    let mut app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    publish_n(&app, "e", 0..12).await;
    app.wait_for_rows("events", 12).await;
    let key = outside_key(&app);
    let (saved, _) = checkpoint_covering(&app, &key, 12).await;
    app.stop().await;
    // The stopped job's last transaction may still hold its locks for a moment.
    let mut tries = 0;
    while let Err(e) = app
        .db
        .batch_execute(
            "BEGIN; TRUNCATE audit_leaves, audit_heads, audit_anchors, audit_tiles; \
             DELETE FROM events WHERE id = 'e-4'; COMMIT",
        )
        .await
    {
        tries += 1;
        assert!(tries < 20, "{e}");
        let _ = app.db.batch_execute("ROLLBACK").await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let report = run_verify(&app, None, Some(&key)).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Emptied { rows: 11 })),
        "{:?}",
        report.findings
    );
    assert_eq!(
        report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::NotInTree { .. }))
            .count(),
        11
    );
    let report = verify_saved(&app, &saved).await;
    assert!(matches!(
        report.findings.first(),
        Some(Finding::Rollback {
            seen: 12,
            size: 0,
            ..
        })
    ));
}

#[tokio::test]
async fn an_upgrade_from_before_the_tree_continues_the_legacy_chain_and_judges_both() {
    // A database of migration 0008: the service runs while the online migration
    // is pending, and its writers store rows without leaves.
    let mut app = crate::helpers::spawn_app_prepared(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
        8,
        "",
    )
    .await;
    publish_n(&app, "before", 0..10).await;
    app.wait_for_rows("events", 10).await;
    let mut c = connect(&app.db_url).await;
    candystore::schema::migrate(&mut c).await.unwrap();
    // Writers pick the tree up on their next batch, without a restart.
    publish_n(&app, "after", 0..10).await;
    app.wait_for_rows("events", 20).await;
    app.stop().await;
    app.start(AppOptions::default()).await;
    let key = outside_key(&app);
    checkpoint_covering(&app, &key, 11).await;
    let report = run_verify(&app, Some(&ring()), Some(&key)).await;
    assert!(report.ok(), "{:?}", report.findings);
    // Rows from before the tree are the legacy chain's (it sealed everything up
    // to its end, rows with leaves too); rows after it are compared with leaves.
    assert!(report.legacy_events >= 10, "{report:?}");
    assert!(report.events >= 10, "{report:?}");
    // The first leaf commits to the legacy chain's end.
    let kinds: Vec<i32> = app
        .db
        .query(
            "SELECT get_byte(leaf, 0) FROM audit_leaves ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == 0).count(), 1, "{kinds:?}");

    // A legacy row changed is named by the legacy chain.
    app.db
        .execute(
            "UPDATE events SET payload = '{\"forged\": true}' WHERE id = 'before-3'",
            &[],
        )
        .await
        .unwrap();
    let report = run_verify(&app, Some(&ring()), Some(&key)).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Legacy(f)] if f.contains("before-3")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn events_gone_with_retention_are_counted_a_restore_is_judged_again_and_a_forged_drop_excuses_nothing()
 {
    use candystore::storage::{PartitionInterval, maintain};
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    let key = outside_key(&app);
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
    checkpoint_covering(&app, &key, 14).await;
    let target = candystore::db::pg_config(&app.db_url).unwrap();
    let mut c = candystore::storage::connect(&target).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cs-audit-{}", uuid::Uuid::new_v4()));
    let report = maintain::run_once(
        &mut c,
        &maintain::Options {
            layout: candystore::storage::partition::Layout::with_interval(PartitionInterval::Day),
            retention: Some(std::time::Duration::from_secs(5 * 86_400)),
            archive_dir: Some(dir.clone()),
            keyring: Some(std::sync::Arc::new(ring())),
        },
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap();
    assert!(!report.dropped.is_empty(), "{report:?}");
    assert_eq!(app.count("events").await, 7);
    // The drop's own leaf enters the tree too.
    checkpoint_covering(&app, &key, 15).await;
    for keyring in [None, Some(ring())] {
        let report = run_verify(&app, keyring.as_ref(), Some(&key)).await;
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!((report.events, report.dropped), (7, 6), "{report:?}");
    }
    // Restored from the archive retention wrote: the rows go back to their places
    // and are compared with their leaves again.
    let manifest = candystore::storage::archive::read_manifest(&dir)
        .unwrap()
        .unwrap();
    let files: Vec<std::path::PathBuf> = manifest.files.iter().map(|e| dir.join(&e.file)).collect();
    candystore::storage::archive::restore(&mut c, &files, None, None)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(app.count("events").await, 13);
    let report = run_verify(&app, Some(&ring()), Some(&key)).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.events, report.dropped), (13, 0), "{report:?}");

    // An event deleted, and a dropped range recorded with SQL to cover it.
    let at = position(&app, "new-5").await;
    app.db
        .batch_execute(
            "DELETE FROM events WHERE id = 'new-5'; \
             INSERT INTO dropped_partitions (table_name, partition, from_time, to_time, rows) \
             VALUES ('events', 'events_p_forged', now() - interval '1 day', now() + interval '1 day', 1)",
        )
        .await
        .unwrap();
    let report = run_verify(&app, None, Some(&key)).await;
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::ForgedRetention { partition } if partition == "events_p_forged")),
        "{:?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Deleted { position, .. } if *position == at)),
        "{:?}",
        report.findings
    );
}

/// A witness of the app's log on a port of its own; its state file is removed
/// when the returned guard drops.
struct TestWitness {
    url: String,
    witness: std::sync::Arc<candystore::audit::witness::Witness>,
    dir: std::path::PathBuf,
    server: actix_web::dev::ServerHandle,
}

impl TestWitness {
    async fn start(log: VerifierKey) -> Self {
        let dir = std::env::temp_dir().join(format!("cs-witness-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let witness = std::sync::Arc::new(
            candystore::audit::witness::Witness::open(
                vec![log],
                SigningKey::generate("witness.test").unwrap(),
                dir.join("state.json"),
            )
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = candystore::audit::witness::serve(listener, witness.clone()).unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        TestWitness {
            url,
            witness,
            dir,
            server: handle,
        }
    }
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let server = self.server.clone();
        tokio::spawn(async move { server.stop(false).await });
    }
}

#[tokio::test]
async fn a_witness_keeps_the_tree_it_saw_and_refuses_a_rollback_and_a_fork() {
    // The app's key exists only once it started: start it, then restart it with
    // the witness and a checkpoint directory.
    let mut app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    let key = outside_key(&app);
    app.stop().await;
    let witness = TestWitness::start(key.clone()).await;
    let checkpoints = std::env::temp_dir().join(format!("cs-checkpoints-{}", uuid::Uuid::new_v4()));
    app.set("WITNESS_URLS", &witness.url);
    app.set("CHECKPOINT_DIR", &checkpoints.display().to_string());
    app.start(AppOptions::default()).await;
    publish_n(&app, "w", 0..20).await;
    app.wait_for_rows("events", 20).await;
    let (_, cp) = checkpoint_covering(&app, &key, 20).await;
    let origin = cp.origin.clone();
    app.wait_until(std::time::Duration::from_secs(10), || async {
        witness
            .witness
            .seen(&origin)
            .await
            .is_some_and(|s| s.size >= 20)
    })
    .await;
    // The checkpoint directory holds the newest note, signed.
    let latest = std::fs::read_to_string(checkpoints.join("latest")).unwrap();
    assert!(Checkpoint::parse(key.open(&latest).unwrap()).unwrap().size >= 20);

    // Rolled back with SQL: the last event, its leaf and the checkpoints after
    // it; the service signs a smaller tree, then one of the same size again.
    let at = position(&app, "w-19").await;
    app.db
        .batch_execute(&format!(
            "BEGIN; DELETE FROM events WHERE id = 'w-19'; \
             DELETE FROM audit_leaves WHERE txid = {0} AND seq = {1}; \
             DELETE FROM audit_heads WHERE last_txid > {0} OR (last_txid = {0} AND last_seq >= {1}); COMMIT",
            at.0, at.1
        ))
        .await
        .unwrap();
    app.wait_until(std::time::Duration::from_secs(10), || async {
        app.metric_labelled(
            "candystore_audit_witness_failures_total",
            "reason=\"rollback\"",
        )
        .await
            >= 1.0
    })
    .await;
    publish_n(&app, "w", 100..101).await;
    app.wait_for_rows("events", 20).await;
    let (_, same) = checkpoint_covering(&app, &key, 20).await;
    assert_eq!(same.size, 20, "another tree of the size the witness saw");
    assert_ne!(same.root, cp.root);
    app.wait_until(std::time::Duration::from_secs(10), || async {
        app.metric_labelled(
            "candystore_audit_witness_failures_total",
            "reason=\"rollback\"",
        )
        .await
            >= 2.0
    })
    .await;
    // The witness still holds the tree it cosigned.
    assert_eq!(
        witness.witness.seen(&origin).await.unwrap().root,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cp.root)
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&checkpoints);
}

#[tokio::test]
async fn a_redacted_event_verifies_as_redacted_and_its_content_is_gone_everywhere() {
    let app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    let key = outside_key(&app);
    publish_n(&app, "x", 0..5).await;
    let mut secret: serde_json::Value = serde_json::from_slice(&gen1("x-secret", "audit")).unwrap();
    secret["data"]["text"] = "s3cr3t-payload".into();
    app.publish("audit", &serde_json::to_vec(&secret).unwrap())
        .await;
    // A dead letter of the same delivery (a refused redelivery, say).
    app.db
        .execute(
            "WITH k AS (INSERT INTO dead_letter_keys (fingerprint, received_at) VALUES ('\\x0909', now()) RETURNING 1) \
             INSERT INTO dead_letter (fingerprint, received_at, exchange, routing_key, properties, body, reason, detail) \
             SELECT '\\x0909', now(), $1, 'audit', '{}', convert_to('{\"id\": \"x-secret\", \"secret\": \"s3cr3t\"}', 'UTF8'), 'invalid_json', 'x' FROM k",
            &[&app.exchange],
        )
        .await
        .unwrap();
    app.wait_for_rows("events", 6).await;
    checkpoint_covering(&app, &key, 6).await;
    let at = position(&app, "x-secret").await;
    let mut c = connect(&app.db_url).await;
    let done = candystore::audit::redact::redact(
        &mut c,
        at,
        "dpo@example",
        "erasure request 42",
        Some(&ring()),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(done.dead_letters, 1);
    // Gone from the row, the dead letter, and what the API serves.
    let (payload, salt, body): (serde_json::Value, Option<Vec<u8>>, Vec<u8>) = {
        let r = app
            .db
            .query_one(
                "SELECT payload, salt, (SELECT body FROM dead_letter WHERE fingerprint = '\\x0909') \
                 FROM events WHERE id = 'x-secret'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        payload["candystore_redacted"]["leaf_index"],
        done.leaf_index
    );
    assert_eq!((salt, body), (None, Vec::new()));
    for path in ["/events/x-secret", "/events/x-secret/raw"] {
        let text = app
            .http
            .get(app.api(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("candystore_redacted"), "{path}: {text}");
        assert!(!text.contains("s3cr3t"), "{path}: {text}");
    }
    // An archive written now does not hold it either.
    let dir = std::env::temp_dir().join(format!("cs-redacted-{}", uuid::Uuid::new_v4()));
    let table = candystore::storage::Table::Events;
    for p in candystore::storage::partition::list(&app.db, table)
        .await
        .unwrap()
    {
        if p.range.is_some() {
            candystore::storage::archive::archive_partition(
                &app.db,
                table,
                &p,
                &dir,
                None,
                candystore::storage::archive::Pace::Full,
            )
            .await
            .unwrap();
        }
    }
    let mut archived = String::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "zst") {
            let bytes = zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap();
            archived.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        archived.contains("x-secret") && !archived.contains("s3cr3t"),
        "{archived}"
    );
    checkpoint_covering(&app, &key, 7).await;
    for keyring in [None, Some(ring())] {
        let report = run_verify(&app, keyring.as_ref(), Some(&key)).await;
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!((report.redacted, report.events), (1, 6), "{report:?}");
    }
    // Its leaf is still proved; a bundle of its content is refused.
    let res = app
        .http
        .get(app.api(&format!(
            "/audit/proof/inclusion?position={}-{}",
            at.0, at.1
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(matches!(
        candystore::audit::proof::bundle(&app.db, at).await,
        Err(candystore::audit::proof::NoBundle::Legacy
            | candystore::audit::proof::NoBundle::Redacted)
    ));

    // A "redaction" with SQL: content and salt deleted, a receipt written.
    let other = position(&app, "x-4").await;
    let idx: i64 = {
        let p: candystore::audit::proof::Inclusion = app
            .http
            .get(app.api("/audit/proof/inclusion?id=x-4"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        p.leaf_index as i64
    };
    app.db
        .execute(
            "UPDATE events SET payload = '{}', salt = NULL WHERE id = 'x-4'",
            &[],
        )
        .await
        .unwrap();
    app.db
        .execute(
            "INSERT INTO audit_redactions (leaf_index, txid, seq, receipt) VALUES ($1, $2, $3, '{}')",
            &[&idx, &other.0, &other.1],
        )
        .await
        .unwrap();
    let report = run_verify(&app, None, Some(&key)).await;
    assert!(
        report
            .findings
            .contains(&Finding::ForgedRedaction { leaf_index: idx }),
        "{:?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Modified { id, .. } if id == "x-4")),
        "{:?}",
        report.findings
    );
}

/// Why `start` refused, as `main` reports it (exit 2 naming the variable).
async fn refused(app: &TestApp) -> String {
    match candystore::app::start(app.settings(), AppOptions::default()).await {
        Ok(_) => panic!("started"),
        Err(e) => match e.downcast_ref::<candystore::config::ConfigError>() {
            Some(candystore::config::ConfigError::Refused { name, .. }) => name.to_string(),
            _ => panic!("refused for another reason: {e:#}"),
        },
    }
}

#[tokio::test]
async fn keys_cannot_trap_an_operator_rotation_and_loss_keep_verify_honest() {
    const B: &str = "a-second-audit-key-of-32-characters-b";
    const C: &str = "a-third-audit-key-of-32-characters-ccc";
    let mut app = spawn_app_with(
        &[("SEAL_INTERVAL", "100ms"), ("AUDIT_KEY", KEY)],
        AppOptions::default(),
    )
    .await;
    let key = outside_key(&app);
    publish_n(&app, "k", 0..5).await;
    app.wait_for_rows("events", 5).await;
    checkpoint_covering(&app, &key, 6).await;
    app.stop().await;

    // One start without AUDIT_KEY, as a new user might: refused, naming it.
    app.set("AUDIT_KEY", "");
    assert_eq!(refused(&app).await, "AUDIT_KEY");
    // Another signing key than the trail's: refused, naming its file.
    let other_key = std::env::temp_dir().join(format!("cs-other-{}.key", uuid::Uuid::new_v4()));
    app.set("AUDIT_KEY", KEY);
    app.set("SIGNING_KEY_FILE", &other_key.display().to_string());
    assert_eq!(refused(&app).await, "SIGNING_KEY_FILE");
    let _ = std::fs::remove_file(&other_key);
    app.set("SIGNING_KEY_FILE", &app.key_file().display().to_string());

    // Rotation: the new key attests, the old one still verifies.
    app.set("AUDIT_KEY", &format!("{B},{KEY}"));
    app.start(AppOptions::default()).await;
    publish_n(&app, "k", 5..10).await;
    app.wait_for_rows("events", 10).await;
    checkpoint_covering(&app, &key, 12).await;
    let both = Keyring::new(&[B.to_string(), KEY.to_string()]).unwrap();
    let report = run_verify(&app, Some(&both), Some(&key)).await;
    assert!(report.ok(), "{:?}", report.findings);
    // Ten events and one key leaf per key: everything checked.
    assert_eq!((report.attestations, report.retired_key), (12, 0));
    // The old key dropped from the ring: its leaves are reported, not flagged.
    let new_only = Keyring::new(&[B.to_string()]).unwrap();
    let report = run_verify(&app, Some(&new_only), Some(&key)).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.attestations, report.retired_key), (6, 6));
    app.stop().await;

    // Both keys lost: a new one is introduced, and what the lost keys attested
    // is reported as not checked, never as forged.
    app.set("AUDIT_KEY", C);
    app.start(AppOptions::default()).await;
    publish_n(&app, "k", 10..12).await;
    app.wait_for_rows("events", 12).await;
    checkpoint_covering(&app, &key, 15).await;
    let lost = Keyring::new(&[C.to_string()]).unwrap();
    let report = run_verify(&app, Some(&lost), Some(&key)).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.attestations, report.retired_key), (3, 12));
    // A leaf attested with a key no signed key leaf introduced is forged.
    let at = position(&app, "k-11").await;
    let forger = Keyring::new(&["an-attackers-key-of-32-characters-zzz".to_string()]).unwrap();
    let bytes: Vec<u8> = app
        .db
        .query_one(
            "SELECT leaf FROM audit_leaves WHERE txid = $1 AND seq = $2",
            &[&at.0, &at.1],
        )
        .await
        .unwrap()
        .get(0);
    let (time, commitment) = leaf::Leaf::parse(&bytes).unwrap().event().unwrap();
    let forged = leaf::event(
        chrono::DateTime::from_timestamp_micros(time).unwrap(),
        &commitment,
        Some(&forger),
    );
    app.db
        .execute(
            "UPDATE audit_leaves SET leaf = $3 WHERE txid = $1 AND seq = $2",
            &[&at.0, &at.1, &forged],
        )
        .await
        .unwrap();
    let report = run_verify(&app, Some(&lost), Some(&key)).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Unattested { position, .. } if *position == at)),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_cluster_whose_transaction_ids_are_behind_the_stored_rows_is_refused() {
    // As after a logical dump restored into a new cluster: rows carry txids the
    // cluster has not reached.
    let mut app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    publish_n(&app, "t", 0..3).await;
    app.wait_for_rows("events", 3).await;
    app.stop().await;
    app.db
        .execute(
            "UPDATE events SET txid = pg_current_xact_id()::text::bigint + 1000000000 WHERE id = 't-2'",
            &[],
        )
        .await
        .unwrap();
    let err = match candystore::app::start(app.settings(), AppOptions::default()).await {
        Ok(_) => panic!("started on a cluster behind its rows"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("transaction ids") && err.contains("AUDIT.md"),
        "{err}"
    );
}
