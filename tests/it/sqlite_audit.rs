//! The audit trail of the embedded store against whoever can write its file:
//! the attacks `audit.rs` tries on PostgreSQL, made with SQL on the SQLite file
//! while the service runs, each named by `verify` (the library call and the
//! command).

use candystore::app::AppOptions;
use candystore::audit::attest::Keyring;
use candystore::audit::note::VerifierKey;
use candystore::audit::verify::{Finding, Options, Report};
use candystore::store::sqlite::verify::verify;

use crate::audit::{KEY, outside_key};
use crate::audit_tree::checkpoint_covering;
use crate::helpers::{TestApp, gen1, spawn_app_with};
use crate::support::{TempSqlite, candystore};

fn ring() -> Keyring {
    Keyring::new(&[KEY.to_string()]).unwrap()
}

async fn run_verify(file: &TempSqlite, keyring: Option<&Keyring>, key: &VerifierKey) -> Report {
    verify(
        &file.path,
        Options {
            keyring,
            key: Some(key),
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

async fn verify_saved(file: &TempSqlite, key: &VerifierKey, saved: &str) -> Report {
    verify(
        &file.path,
        Options {
            key: Some(key),
            saved: Some(saved),
            tree_only: true,
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

/// A writing connection of the attacker's on the service's file.
fn attacker(file: &TempSqlite) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(&file.path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn
}

fn seq(file: &TempSqlite, id: &str) -> i64 {
    file.look()
        .query_row("SELECT seq FROM events WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

async fn publish_n(app: &TestApp, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        app.publish("audit", &gen1(&format!("{prefix}-{i}"), "audit"))
            .await;
    }
}

/// `candystore verify` on the file: its exit code and what it printed.
fn verify_command(app: &TestApp, file: &TempSqlite) -> (i32, String) {
    let key_file = app.key_file().display().to_string();
    let out = candystore(
        &["verify"],
        &[
            ("DATABASE_URL", &file.url()),
            ("SIGNING_KEY_FILE", &key_file),
            ("AUDIT_KEY", KEY),
        ],
    )
    .output()
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The service on `file`, sealing every 100 ms, its rows attested with
/// AUDIT_KEY when `attested`.
async fn spawn_on_file(file: &TempSqlite, attested: bool) -> TestApp {
    let url = file.url();
    let mut settings = vec![("DATABASE_URL", url.as_str()), ("SEAL_INTERVAL", "100ms")];
    if attested {
        settings.push(("AUDIT_KEY", KEY));
    }
    spawn_app_with(&settings, AppOptions::default()).await
}

#[tokio::test]
async fn on_the_embedded_store_every_rewrite_of_rows_leaves_tiles_or_checkpoints_is_named() {
    let file = TempSqlite::new();
    let app = spawn_on_file(&file, true).await;
    let key = outside_key(&app);
    // Past 256 leaves, so a tile is stored.
    publish_n(&app, "a", 0..300).await;
    let (saved, first) = checkpoint_covering(&app, &key, 301).await;
    assert_eq!(first.size, 301, "300 events and the key leaf");
    let clean = run_verify(&file, Some(&ring()), &key).await;
    assert!(clean.ok(), "{:?}", clean.findings);
    assert_eq!(
        (clean.leaves, clean.events, clean.attestations),
        (301, 300, 301)
    );
    assert!(clean.checkpoints >= 1 && clean.signatures == clean.checkpoints);
    let (code, out) = verify_command(&app, &file);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("verified the tree of 301 leaves"), "{out}");

    let w = attacker(&file);
    // A payload changed; an event deleted; a row copied in without a leaf; a
    // row with a leaf of the attacker's making (no AUDIT_KEY).
    w.execute(
        "UPDATE events SET payload = json_set(payload, '$.amount', 1000000) WHERE id = 'a-7'",
        [],
    )
    .unwrap();
    let deleted = seq(&file, "a-3");
    w.execute("DELETE FROM events WHERE id = 'a-3'", [])
        .unwrap();
    let copy = |id: &str| {
        w.execute(
            "INSERT INTO events (id, event_type, source, target, routing_key, exchange, \"timestamp\", \
             received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms, generation, \
             envelope, payload_member, properties, sanitized, original_body, salt) \
             SELECT ?2, event_type, source, target, routing_key, exchange, \"timestamp\", received_at, \
             stored_at, payload, session_id, correlation_id, storage_latency_ms, generation, envelope, \
             payload_member, properties, sanitized, original_body, salt FROM events WHERE id = ?1",
            ["a-5", id],
        )
        .unwrap();
    };
    copy("forged-0");
    copy("forged-1");
    let forged1 = seq(&file, "forged-1");
    // Its leaf: the copied event's, without the attestation only AUDIT_KEY
    // makes (kind and body: 41 bytes); it commits to the other row.
    w.execute(
        "INSERT INTO audit_leaves (seq, leaf) SELECT ?1, substr(leaf, 1, 41) FROM audit_leaves WHERE seq = ?2",
        [forged1, seq(&file, "a-5")],
    )
    .unwrap();
    let (_, grown) = checkpoint_covering(&app, &key, 302).await;
    assert_eq!(grown.size, 302, "the forged leaf is appended by the job");

    let report = run_verify(&file, Some(&ring()), &key).await;
    let f = &report.findings;
    let modified = seq(&file, "a-7");
    assert!(
        f.iter().any(|f| matches!(f, Finding::Modified { id, position, index: Some(_) } if id == "a-7" && *position == (0, modified))),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|f| matches!(f, Finding::Deleted { position, .. } if *position == (0, deleted))),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|f| matches!(f, Finding::NotInTree { id, .. } if id == "forged-0")),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|f| matches!(f, Finding::Modified { id, .. } if id == "forged-1")),
        "{f:?}"
    );
    assert!(
        f.iter().any(
            |f| matches!(f, Finding::Unattested { position, .. } if *position == (0, forged1))
        ),
        "{f:?}"
    );
    let (code, out) = verify_command(&app, &file);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT VERIFIED: event \"a-7\""), "{out}");

    // A stored subtree altered: named, though the leaves are intact.
    w.execute(
        "UPDATE audit_tiles SET hashes = CAST(zeroblob(32) || substr(hashes, 33) AS BLOB) WHERE level = 1 AND idx = 0",
        [],
    )
    .unwrap();
    let report = run_verify(&file, None, &key).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::TreeRewritten { size: 256, .. })),
        "{:?}",
        report.findings
    );
    // A checkpoint's note changed: its signature no longer holds.
    w.execute(
        "UPDATE audit_heads SET note = substr(note, 1, length(note) - 8) || \
         CASE substr(note, length(note) - 7, 4) WHEN 'AAAA' THEN 'BBBB' ELSE 'AAAA' END || \
         substr(note, length(note) - 3) WHERE size = ?1",
        [first.size as i64],
    )
    .unwrap();
    let report = run_verify(&file, None, &key).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::BadSignature { size, .. } if *size == first.size)),
        "{:?}",
        report.findings
    );

    // A leaf deleted with every checkpoint after it: the job signs a smaller
    // tree, which the checkpoint saved outside shows as a rollback.
    let gone = seq(&file, "a-100");
    w.execute_batch(&format!(
        "BEGIN IMMEDIATE; DELETE FROM audit_leaves WHERE seq = {gone}; \
         DELETE FROM audit_heads WHERE last_seq >= {gone}; COMMIT"
    ))
    .unwrap();
    checkpoint_covering(&app, &key, 301).await;
    let report = verify_saved(&file, &key, &saved).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Rollback { seen: 301, .. })),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn an_event_of_the_embedded_store_is_proved_to_a_third_party_by_its_bundle() {
    let file = TempSqlite::new();
    let app = spawn_on_file(&file, false).await;
    let key = outside_key(&app);
    publish_n(&app, "p", 0..5).await;
    checkpoint_covering(&app, &key, 5).await;
    let url = file.url();
    let prove = |args: &[&str]| {
        candystore(&[&["prove"], args].concat(), &[("DATABASE_URL", &url)])
            .output()
            .unwrap()
    };
    // Beside the running service, read-only.
    let out = prove(&["p-2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: candystore::audit::proof::Bundle = serde_json::from_slice(&out.stdout).unwrap();
    let proved = candystore::audit::proof::check_bundle(&bundle, &key).unwrap();
    assert_eq!(bundle.event.id, "p-2");
    assert_eq!(
        bundle.inclusion.position,
        format!("0-{}", seq(&file, "p-2"))
    );
    let raw: serde_json::Value = serde_json::from_str(&bundle.raw).unwrap();
    assert_eq!(raw, app.get_json("/events/p-2/raw").await);
    assert!(proved.checkpoint.size >= 5);
    // By position too; an id that names nothing is said so.
    let out = prove(&["--position", &bundle.inclusion.position]);
    assert_eq!(out.status.code(), Some(0));
    let out = prove(&["nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event \"nope\""));
}

#[tokio::test]
async fn a_redacted_event_of_the_embedded_store_verifies_as_redacted_even_after_a_restore_of_an_older_archive()
 {
    let file = TempSqlite::new();
    let mut app = spawn_on_file(&file, true).await;
    let key = outside_key(&app);
    publish_n(&app, "r", 0..5).await;
    checkpoint_covering(&app, &key, 6).await;
    app.stop().await;
    let url = file.url();
    let run = |args: &[&str]| {
        candystore(args, &[("DATABASE_URL", &url), ("AUDIT_KEY", KEY)])
            .output()
            .unwrap()
    };
    // An archive from before the redaction.
    let dir = file.path.with_file_name("archive");
    let out = run(&[
        "archive",
        "--before",
        "2099-01-01",
        "--to",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&[
        "redact",
        "r-3",
        "--reason",
        "erasure request 42",
        "--by",
        "ops",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("erasure request 42"));
    let (payload, salt): (String, Option<Vec<u8>>) = file
        .look()
        .query_row(
            "SELECT payload, salt FROM events WHERE id = 'r-3'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        payload.starts_with("{\"candystore_redacted\": {\"at\": "),
        "{payload}"
    );
    assert!(salt.is_none());
    let report = run_verify(&file, Some(&ring()), &key).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.redacted, report.events), (1, 5), "{report:?}");
    // Twice is refused.
    let out = run(&["redact", "r-3", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(1));

    // The older archive restored home: the event comes back redacted.
    rusqlite::Connection::open(&file.path)
        .unwrap()
        .execute("DELETE FROM events WHERE id IN ('r-3', 'r-4')", [])
        .unwrap();
    let out = run(&["restore", dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: String = file
        .look()
        .query_row("SELECT payload FROM events WHERE id = 'r-3'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(restored, payload);
    let report = run_verify(&file, Some(&ring()), &key).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.redacted, report.events), (1, 5), "{report:?}");

    // A receipt written with SQL excuses nothing, and is named.
    let w = attacker(&file);
    w.execute(
        "INSERT INTO audit_redactions VALUES (2, 0, ?1, '{}', 0)",
        [seq(&file, "r-1")],
    )
    .unwrap();
    let report = run_verify(&file, None, &key).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::ForgedRedaction { leaf_index: 2 })),
        "{:?}",
        report.findings
    );
}
