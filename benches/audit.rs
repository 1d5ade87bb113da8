//! The audit tree against the real PostgreSQL on this machine (`make bench`).
//!
//! 1. Appending: BENCH_AUDIT_BACKLOG (1,000,000) attested event leaves waiting,
//!    the tree job's steps until it has caught up: leaves per second, every
//!    attestation checked (it must outpace ingest).
//! 2. The tree grown to BENCH_AUDIT_LEAVES (10,000,000): inclusion proofs of
//!    random leaves and consistency proofs between random signed sizes, as the
//!    API reads them (p50, p99, max), and their sizes; the checkpoint's size.
//! 3. `verify --checkpoint`'s walk of the whole tree: leaves per second.
//!
//! The leaves are made here (random commitments, real AUDIT_KEY attestations)
//! and written straight into `audit_leaves`, so the figures are the tree's own,
//! not ingest's. Writes `reports/audit.md`.

#[path = "../tests/support/mod.rs"]
mod support;
use support::{PG, connect};

use std::time::{Duration, Instant};

use candystore::audit::attest::Keyring;
use candystore::audit::job::Tree;
use candystore::audit::note::SigningKey;
use candystore::audit::{leaf, proof};
use tokio_postgres::Client;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Appends `n` attested event leaves after `from` (their seq), each chunk at
/// its own transaction's place, as writers' leaves are.
async fn add_leaves(db: &Client, ring: &Keyring, from: i64, n: i64) {
    const CHUNK: i64 = 50_000;
    let mut at = from;
    while at < from + n {
        let k = CHUNK.min(from + n - at);
        let seqs: Vec<i64> = (at..at + k).collect();
        let leaves: Vec<Vec<u8>> = seqs
            .iter()
            .map(|s| {
                let commitment = leaf::Content {
                    id: &s.to_string(),
                    source: "bench",
                    timestamp: chrono::Utc::now(),
                    event_type: "bench",
                    target: None,
                    routing_key: "bench",
                    exchange: "bench",
                    received_at: chrono::Utc::now(),
                    payload: b"{}",
                    envelope: b"{}",
                    payload_member: None,
                    properties: b"{}",
                    session_id: None,
                    correlation_id: None,
                    generation: 1,
                    sanitized: false,
                    original_body: None,
                }
                .commitment(&leaf::salt());
                leaf::event(chrono::Utc::now(), &commitment, Some(ring))
            })
            .collect();
        db.execute(
            "INSERT INTO audit_leaves (txid, seq, leaf) \
             SELECT pg_current_xact_id()::text::bigint, * FROM unnest($1::bigint[], $2::bytea[])",
            &[&seqs, &leaves],
        )
        .await
        .unwrap();
        at += k;
    }
}

/// Steps the tree until it has appended everything; returns the leaves appended
/// and the time it took.
async fn catch_up(tree: &mut Tree, c: &mut Client) -> (u64, Duration) {
    let t = Instant::now();
    let mut total = 0;
    loop {
        let a = tree.step(c).await.unwrap();
        assert!(a.unattested.is_empty(), "every leaf is attested");
        total += a.leaves;
        if a.leaves < candystore::audit::job::STEP_LEAVES as u64 {
            return (total, t.elapsed());
        }
    }
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *ms.last().unwrap())
}

/// A pseudo-random sequence, the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let backlog = knob("BENCH_AUDIT_BACKLOG", 1_000_000) as i64;
    let total = knob("BENCH_AUDIT_LEAVES", 10_000_000) as i64;
    let samples = knob("BENCH_AUDIT_PROOFS", 2_000) as usize;
    let name = format!("cs_bench_audit_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&format!("{PG}/postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{PG}/{name}");
    let mut c = connect(&url).await;
    candystore::schema::migrate(&mut c).await.unwrap();
    let ring = Keyring::new(&["a-bench-audit-key-of-at-least-32-chars".to_string()]).unwrap();
    let signer = std::sync::Arc::new(SigningKey::generate("candystore.bench/audit").unwrap());
    let mut tree = Tree::new(signer.clone(), Some(std::sync::Arc::new(ring.clone())));
    let mut report = format!(
        "# Audit tree benchmark\n\nMeasured by `make bench` (`cargo bench --bench audit`) against the local PostgreSQL \
         ({} cores, stock settings), {}. Leaves are attested event leaves made by the bench and written straight into \
         `audit_leaves`; the tree job (`audit::job::Tree::step`, 100,000 leaves a step at most) appends them, checking \
         every attestation with AUDIT_KEY, stores the tiles and signs a checkpoint each step.\n\n| measure | result | beside |\n|---|---|---|\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );

    println!("appending a backlog of {backlog} leaves...");
    add_leaves(&c, &ring, 1, backlog).await;
    c.batch_execute("VACUUM ANALYZE audit_leaves")
        .await
        .unwrap();
    let (n, took) = catch_up(&mut tree, &mut c).await;
    assert!(n >= backlog as u64, "appended {n}");
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "  {n} leaves in {:.1} s: {rate:.0} leaves/s",
        took.as_secs_f64()
    );
    report += &format!(
        "| appending a backlog of {backlog} leaves, every attestation checked | **{rate:.0} leaves/s** ({n} in {:.1} s) | \
         ingest drains at ~8,000 events/s on this machine (reports/ingest.md) |\n",
        took.as_secs_f64()
    );

    println!("growing the tree to {total} leaves...");
    let mut grown = backlog;
    let mut append_time = Duration::ZERO;
    while grown < total {
        let k = (total - grown).min(1_000_000);
        add_leaves(&c, &ring, grown + 1, k).await;
        let (_, took) = catch_up(&mut tree, &mut c).await;
        append_time += took;
        grown += k;
        println!("  {grown}");
    }
    for table in ["audit_leaves", "audit_tiles", "audit_anchors"] {
        c.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .unwrap();
    }
    report += &format!(
        "| appending from {backlog} to {total} leaves, a million at a time | **{:.0} leaves/s** | the tree's size does not slow it |\n",
        (total - backlog) as f64 / append_time.as_secs_f64()
    );

    let head = candystore::audit::store::head(&c).await.unwrap().unwrap();
    assert!(
        head.size > total as u64,
        "the tree holds every leaf: {}",
        head.size
    );
    let mut rng = Lcg(42);
    let mut times = Vec::with_capacity(samples);
    let mut size = 0;
    for _ in 0..samples {
        let index = rng.below(head.size);
        let t = Instant::now();
        let p = proof::inclusion_of_index(&c, index).await.unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = size.max(serde_json::to_vec(&p).unwrap().len());
        assert_eq!(p.tree_size, head.size);
    }
    let (p50, p99, max) = percentiles(times);
    let path_len = candystore::audit::tree::inclusion_spans(head.size / 3, head.size).len();
    println!("  inclusion p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    report += &format!(
        "| inclusion proof of a random leaf of {} (as `GET /audit/proof/inclusion?index=` reads it), {samples} samples | **p50 {p50:.2} ms, p99 {p99:.2} ms** (max {max:.2}) | target ≤ 10 ms; {path_len} hashes, at most {size} bytes of JSON with the checkpoint |\n",
        head.size
    );
    let sizes: Vec<i64> = c
        .query(
            "SELECT size FROM audit_heads WHERE size > 0 ORDER BY size",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..samples / 4 {
        let a = sizes[rng.below(sizes.len() as u64) as usize] as u64;
        let t = Instant::now();
        let p = proof::consistency(&c, a, None).await.unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = size.max(serde_json::to_vec(&p).unwrap().len());
    }
    let (p50, p99, max) = percentiles(times);
    println!("  consistency p50 {p50:.2} ms, p99 {p99:.2} ms");
    report += &format!(
        "| consistency proof from a random signed size to the newest ({} samples) | **p50 {p50:.2} ms, p99 {p99:.2} ms** (max {max:.2}) | at most {size} bytes of JSON with both checkpoints |\n",
        samples / 4
    );
    report += &format!(
        "| a signed checkpoint (`GET /audit/checkpoint`) | **{} bytes** | origin, size, root, one Ed25519 signature line |\n",
        head.note.len()
    );
    let bytes: Vec<(String, i64)> = c
        .query(
            "SELECT t, pg_total_relation_size(t::regclass) FROM unnest(ARRAY['audit_leaves', 'audit_tiles', 'audit_anchors', 'audit_heads']) t",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let text: Vec<String> = bytes
        .iter()
        .map(|(t, b)| format!("{t} {:.1} B", *b as f64 / head.size as f64))
        .collect();
    report += &format!(
        "| storage per leaf at {} leaves, indexes included | {} | |\n",
        head.size,
        text.join(", ")
    );

    println!("verify --checkpoint over {} leaves...", head.size);
    let rows = connect(&url).await;
    let key = signer.verifier();
    let t = Instant::now();
    let r = candystore::audit::verify::verify(
        &c,
        &rows,
        candystore::audit::verify::Options {
            key: Some(&key),
            saved: Some(&head.note),
            tree_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(r.ok(), "{:?}", r.findings);
    report += &format!(
        "| `verify --checkpoint` (the tree recomputed, {} signatures checked) | **{:.0} leaves/s** ({:.1} s) | |\n",
        r.signatures,
        head.size as f64 / took,
        took
    );
    drop((c, rows));
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    std::fs::create_dir_all("reports").unwrap();
    std::fs::write("reports/audit.md", &report).unwrap();
    println!("\n{report}\nwrote reports/audit.md");
}
