//! The audit tree through the running service: leaves fixed by the writers,
//! appended and signed by the tree job, proofs served over HTTP and checked
//! with the public key alone.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use candystore::app::AppOptions;
use candystore::audit::note::{Checkpoint, VerifierKey};
use candystore::audit::proof::{Consistency, Inclusion};
use candystore::audit::tree;
use serde_json::Value;

use crate::helpers::{TestApp, gen1, spawn_app_with};
use crate::support::TempSqlite;

/// The served checkpoint, once it covers `n` leaves.
pub async fn checkpoint_covering(app: &TestApp, key: &VerifierKey, n: u64) -> (String, Checkpoint) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let res = app
            .http
            .get(app.api("/audit/checkpoint"))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            let note = res.text().await.unwrap();
            let body = key
                .open(&note)
                .expect("the served checkpoint is signed by the served key");
            let cp = Checkpoint::parse(body).unwrap();
            if cp.size >= n {
                return (note, cp);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint covers {n} leaves"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn public_key(app: &TestApp) -> VerifierKey {
    let text = app
        .http
        .get(app.api("/audit/public-key"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    VerifierKey::parse(&text).unwrap()
}

fn hashes(list: &[String]) -> Vec<[u8; 32]> {
    list.iter()
        .map(|h| B64.decode(h).unwrap().try_into().unwrap())
        .collect()
}

/// RFC 9162's MTH over leaf bytes, straight from the definition.
fn mth(leaves: &[Vec<u8>]) -> [u8; 32] {
    match leaves.len() {
        0 => tree::empty_root(),
        1 => tree::leaf_hash(&leaves[0]),
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            tree::node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Where a test reads what the service stored.
enum Stored<'a> {
    Postgres,
    Sqlite(&'a TempSqlite),
}

impl Stored<'_> {
    /// Every leaf, in the tail's order.
    async fn leaves(&self, app: &TestApp) -> Vec<Vec<u8>> {
        match self {
            Stored::Postgres => app
                .db
                .query("SELECT leaf FROM audit_leaves ORDER BY txid, seq", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Stored::Sqlite(file) => {
                let conn = file.look();
                let mut st = conn
                    .prepare("SELECT leaf FROM audit_leaves ORDER BY seq")
                    .unwrap();
                st.query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
        }
    }

    /// The place of the event `id`, as the tail names it.
    async fn place(&self, app: &TestApp, id: &str) -> String {
        match self {
            Stored::Postgres => {
                let r = app
                    .db
                    .query_one("SELECT txid, seq FROM events WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                format!("{}-{}", r.get::<_, i64>(0), r.get::<_, i64>(1))
            }
            Stored::Sqlite(file) => {
                let seq: i64 = file
                    .look()
                    .query_row("SELECT seq FROM events WHERE id = ?1", [id], |r| r.get(0))
                    .unwrap();
                format!("0-{seq}")
            }
        }
    }
}

#[tokio::test]
async fn every_stored_event_is_proved_in_a_signed_checkpoint_that_extends_the_last() {
    let app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    every_event_is_proved(&app, Stored::Postgres).await;
}

#[tokio::test]
async fn on_the_embedded_store_every_event_is_proved_in_a_signed_checkpoint_that_extends_the_last()
{
    let file = TempSqlite::new();
    // In the file's own directory, removed with it.
    let dir = file.path.with_file_name("checkpoints");
    let app = spawn_app_with(
        &[
            ("DATABASE_URL", &file.url()),
            ("SEAL_INTERVAL", "100ms"),
            ("CHECKPOINT_DIR", dir.to_str().unwrap()),
        ],
        AppOptions::default(),
    )
    .await;
    let latest = every_event_is_proved(&app, Stored::Sqlite(&file)).await;
    // Each checkpoint also left the file: the newest is in CHECKPOINT_DIR.
    app.wait_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(dir.join("latest")).is_ok_and(|n| n == latest)
    })
    .await;
}

/// Publishes 700 events in two rounds and checks, through the API alone, that
/// each round's checkpoint is the tree of the stored leaves, that events are
/// proved in it by id, that the later tree extends the earlier, and that bad
/// requests are named; returns the newest checkpoint's note.
async fn every_event_is_proved(app: &TestApp, stored: Stored<'_>) -> String {
    let key = public_key(app).await;
    for i in 0..40 {
        app.publish("audit", &gen1(&format!("t-{i}"), "audit"))
            .await;
    }
    let (first_note, first) = checkpoint_covering(app, &key, 40).await;
    // The root is the tree of the stored leaves, in the tail's order.
    let leaves = stored.leaves(app).await;
    assert_eq!(leaves.len() as u64, first.size);
    assert_eq!(mth(&leaves), first.root);

    for i in 40..700 {
        app.publish("audit", &gen1(&format!("t-{i}"), "audit"))
            .await;
    }
    let (latest_note, latest) = checkpoint_covering(app, &key, 700).await;
    assert_eq!(mth(&stored.leaves(app).await), latest.root);

    // Each event, by id: its leaf is in the newest tree.
    for id in ["t-0", "t-39", "t-255", "t-256", "t-511", "t-699"] {
        let p: Inclusion = app
            .http
            .get(app.api(&format!("/audit/proof/inclusion?id={id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(p.tree_size, latest.size, "{id}");
        let body = key.open(&p.checkpoint).unwrap();
        let cp = Checkpoint::parse(body).unwrap();
        let leaf = B64.decode(&p.leaf).unwrap();
        tree::verify_inclusion(
            &tree::leaf_hash(&leaf),
            p.leaf_index,
            p.tree_size,
            &hashes(&p.audit_path),
            &cp.root,
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        // The leaf is the event's own: at its row's place.
        assert_eq!(p.position, stored.place(app, id).await);
    }

    // The newest tree extends the first one.
    let c: Consistency = app
        .http
        .get(app.api(&format!("/audit/proof/consistency?from={}", first.size)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c.from_checkpoint.as_deref(), Some(first_note.as_str()));
    let to = Checkpoint::parse(key.open(&c.to_checkpoint).unwrap()).unwrap();
    tree::verify_consistency(
        first.size,
        to.size,
        &first.root,
        &to.root,
        &hashes(&c.proof),
    )
    .unwrap();

    // Bad requests name their parameter.
    for (query, parameter) in [
        ("", "id"),
        ("?index=x", "index"),
        ("?position=12", "position"),
        ("?id=t-1&index=3", "position"),
    ] {
        let res = app
            .http
            .get(app.api(&format!("/audit/proof/inclusion{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["parameter"], parameter, "{query}");
    }
    let res = app
        .http
        .get(app.api("/audit/proof/consistency?from=5&to=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    latest_note
}

/// Runs a command; returns its exit code and standard output.
async fn run(cmd: &mut tokio::process::Command) -> (i32, String, String) {
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_third_party_checks_one_event_with_the_public_key_alone_in_rust_and_in_python() {
    let app = spawn_app_with(&[("SEAL_INTERVAL", "100ms")], AppOptions::default()).await;
    let key = public_key(&app).await;
    for i in 0..5 {
        app.publish("audit", &gen1(&format!("p-{i}"), "audit"))
            .await;
    }
    // Text PostgreSQL refuses, removed: the original body is committed too.
    app.publish(
        "audit",
        br#"{"event_id":"p-nul","event_type":"audit","source":"s","payload":{"note":"a\u0000b","n":1.50e1}}"#,
    )
    .await;
    app.wait_for_rows("events", 6).await;
    let (_, cp) = checkpoint_covering(&app, &key, 6).await;
    let dir = std::env::temp_dir().join(format!("cs-proof-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_proof.py");
    let vkey = key.encode();
    for id in ["p-0", "p-3", "p-nul"] {
        let (code, bundle, err) = run(tokio::process::Command::new(env!(
            "CARGO_BIN_EXE_candystore"
        ))
        .args(["prove", id])
        .env_clear()
        .env("DATABASE_URL", &app.db_url)
        .env("LOG_LEVEL", "warn"))
        .await;
        assert_eq!(code, 0, "{err}");
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, &bundle).unwrap();
        let (code, out, err) = run(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
                .args([
                    "verify-proof",
                    path.to_str().unwrap(),
                    "--public-key",
                    &vkey,
                ])
                .env_clear()
                .env("LOG_LEVEL", "warn"),
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("proved:"), "{out}");
        let (code, out, err) = run(tokio::process::Command::new("python3").args([
            script,
            "inclusion",
            path.to_str().unwrap(),
            &vkey,
        ]))
        .await;
        assert_eq!(code, 0, "python: {out}{err}");

        // The same bundle with the payload changed, or signed by another key,
        // proves nothing, to either implementation.
        let mut forged: Value = serde_json::from_str(&bundle).unwrap();
        forged["event"]["payload"] = Value::String("{\"n\": 2}".into());
        let forged_path = dir.join(format!("{id}-forged.json"));
        std::fs::write(&forged_path, forged.to_string()).unwrap();
        let other = candystore::audit::note::SigningKey::generate(key.name())
            .unwrap()
            .verifier()
            .encode();
        for (path, k) in [(&forged_path, &vkey), (&path, &other)] {
            let (code, out, _) = run(tokio::process::Command::new(env!(
                "CARGO_BIN_EXE_candystore"
            ))
            .args(["verify-proof", path.to_str().unwrap(), "--public-key", k])
            .env_clear())
            .await;
            assert_eq!(code, 3, "{out}");
            let (code, _, err) = run(tokio::process::Command::new("python3").args([
                script,
                "inclusion",
                path.to_str().unwrap(),
                k,
            ]))
            .await;
            assert_eq!(code, 3, "python: {err}");
        }
    }
    // A consistency proof, checked in Python too.
    for i in 5..9 {
        app.publish("audit", &gen1(&format!("p-{i}"), "audit"))
            .await;
    }
    checkpoint_covering(&app, &key, cp.size + 4).await;
    let proof = app
        .http
        .get(app.api(&format!("/audit/proof/consistency?from={}", cp.size)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let path = dir.join("consistency.json");
    std::fs::write(&path, &proof).unwrap();
    let (code, out, err) = run(tokio::process::Command::new("python3").args([
        script,
        "consistency",
        path.to_str().unwrap(),
        &vkey,
    ]))
    .await;
    assert_eq!(code, 0, "python: {out}{err}");
    let mut forged: Value = serde_json::from_str(&proof).unwrap();
    if let Some(first) = forged["proof"].get_mut(0) {
        *first = Value::String(B64.encode([7u8; 32]));
    }
    std::fs::write(&path, forged.to_string()).unwrap();
    let (code, _, _) = run(tokio::process::Command::new("python3").args([
        script,
        "consistency",
        path.to_str().unwrap(),
        &vkey,
    ]))
    .await;
    assert_eq!(code, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_tree_job_appends_a_backlog_of_many_steps_and_tiles_and_proofs_hold_across_them() {
    // A backlog far larger than the connection's buffers (the job once waited
    // on itself with one), over several tile levels' worth of anchors.
    let db = crate::helpers::TempDb::new(true).await;
    let mut c = db.client().await;
    let n: i64 = 70_000;
    c.execute(
        "INSERT INTO audit_leaves (txid, seq, leaf) \
         SELECT 1, g, '\\x01'::bytea || int8send(g) || sha256(int8send(g)) FROM generate_series(1, $1::bigint) g",
        &[&n],
    )
    .await
    .unwrap();
    let signer =
        std::sync::Arc::new(candystore::audit::note::SigningKey::generate("t/backlog").unwrap());
    let mut tree = candystore::audit::job::Tree::new(signer.clone(), None);
    let mut total = 0;
    let mut steps = 0;
    while total < n as u64 {
        let a = tokio::time::timeout(Duration::from_secs(60), tree.step(&mut c))
            .await
            .expect("a step finishes")
            .unwrap();
        total += a.leaves;
        steps += 1;
        assert!(steps < 10);
    }
    assert_eq!(total, n as u64);
    // Tiles of level 1 (256 leaves each) and level 2 (65,536) were stored.
    let tiles: Vec<(i16, i64)> = c
        .query(
            "SELECT level, idx FROM audit_tiles ORDER BY level, idx",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(tiles.contains(&(2, 0)), "{tiles:?}");
    // A fresh job (no cached edge) continues from the stored tiles.
    c.execute(
        "INSERT INTO audit_leaves (txid, seq, leaf) \
         SELECT 1, g, '\\x01'::bytea || int8send(g) || sha256(int8send(g)) FROM generate_series($1::bigint + 1, $1::bigint + 1000) g",
        &[&n],
    )
    .await
    .unwrap();
    let mut again = candystore::audit::job::Tree::new(signer.clone(), None);
    let a = again.step(&mut c).await.unwrap();
    let head = a.head.unwrap();
    assert_eq!(head.size, n as u64 + 1000);
    // Its root is the tree of all the leaves, and proofs across the blocks hold.
    let leaves: Vec<Vec<u8>> = c
        .query("SELECT leaf FROM audit_leaves ORDER BY txid, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut f = tree::Frontier::default();
    for l in &leaves {
        f.append(tree::leaf_hash(l), |_, _| {});
    }
    assert_eq!(f.root(), head.root);
    let key = signer.verifier();
    for index in [0u64, 255, 256, 65_535, 65_536, 70_999] {
        let p = candystore::audit::proof::inclusion_of_index(&c, index)
            .await
            .unwrap()
            .unwrap();
        let cp = Checkpoint::parse(key.open(&p.checkpoint).unwrap()).unwrap();
        tree::verify_inclusion(
            &tree::leaf_hash(&leaves[index as usize]),
            index,
            cp.size,
            &hashes(&p.audit_path),
            &cp.root,
        )
        .unwrap_or_else(|e| panic!("{index}: {e}"));
    }
    let c2 = candystore::audit::proof::consistency(&c, 70_000, None)
        .await
        .unwrap()
        .unwrap();
    let old = Checkpoint::parse(key.open(c2.from_checkpoint.as_deref().unwrap()).unwrap()).unwrap();
    tree::verify_consistency(70_000, head.size, &old.root, &head.root, &hashes(&c2.proof)).unwrap();
    drop(c);
    db.drop_it().await;
}
