//! `candystore restore` given hostile archives: every line read with a length
//! limit, every row checked against its file's manifest entry, and nothing
//! loaded from a file that fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use candystore::storage::archive::{self, Entry, Manifest};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, peak_rss_kb, spawn_app};

fn day() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// An archived event row of 2026-01-01.
fn row(seq: i64, txid: i64, at: DateTime<Utc>) -> Value {
    json!({
        "seq": seq, "id": format!("restored-{seq}"), "event_type": "t.restored", "source": "svc",
        "target": null, "routing_key": "t.restored", "exchange": "x",
        "timestamp": at, "received_at": at, "stored_at": at, "payload": {"n": seq},
        "session_id": null, "correlation_id": null, "storage_latency_ms": 1.0, "generation": 1,
        "envelope": "{}", "payload_member": "data", "properties": "{}", "sanitized": false,
        "original_body": null, "attestation": null, "txid": txid
    })
}

/// Writes `lines` as an archive of 2026-01-01 in a fresh directory, with a
/// manifest entry that agrees with the file (rows, SHA-256), and `max_seq`.
fn archive_of(lines: &[Vec<u8>], max_seq: Option<i64>) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("cs-restore-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = "events_p20260101.ndjson.zst";
    let path = dir.join(file);
    let mut enc =
        zstd::stream::write::Encoder::new(std::fs::File::create(&path).unwrap(), 3).unwrap();
    for l in lines {
        enc.write_all(l).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        files: vec![Entry {
            table: "events".into(),
            partition: "events_p20260101".into(),
            file: file.into(),
            from: day(),
            to: day() + chrono::Duration::days(1),
            rows: lines.len() as u64,
            bytes: bytes.len() as u64,
            sha256: candystore::model::hex::encode(&Sha256::digest(&bytes)),
            archived_at: Utc::now(),
            max_seq,
            max_txid: None,
            store: None,
        }],
    };
    std::fs::write(
        dir.join(archive::MANIFEST),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    (dir, path)
}

async fn restore(app: &TestApp, path: &Path) -> Result<(), String> {
    let target = candystore::db::pg_config(&app.db_url).unwrap();
    let mut c = candystore::storage::connect(&target).await.unwrap();
    archive::restore(&mut c, &[path.to_owned()], None, None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn partitions(app: &TestApp) -> i64 {
    app.db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every hostile file below is refused whole, naming its line, and leaves
/// the table, its partitions and the sequence as they were.
async fn refused(app: &TestApp, path: &Path, want: &str) {
    let (events, parts) = (app.count("events").await, partitions(app).await);
    let err = restore(app, path).await.unwrap_err();
    assert!(err.contains(want), "{err}");
    assert!(err.contains("events_p20260101.ndjson.zst"), "{err}");
    assert_eq!(app.count("events").await, events, "{err}");
    assert_eq!(partitions(app).await, parts, "{err}");
}

#[tokio::test]
async fn rows_outside_their_file_or_its_manifest_are_refused_with_their_line_number() {
    let app = spawn_app().await;
    let line = |v: Value| serde_json::to_vec(&v).unwrap();
    let at = day() + chrono::Duration::hours(5);

    // seq 2^63 - 1, which would push the sequence to its end (no max_seq stated:
    // the hard ceiling, 2^62, applies).
    let (dir, path) = archive_of(&[line(row(1, 1, at)), line(row(i64::MAX, 1, at))], None);
    refused(
        &app,
        &path,
        "line 2: seq 9223372036854775807 is outside 1..=",
    )
    .await;
    std::fs::remove_dir_all(dir).unwrap();
    // Above the manifest's highest seq.
    let (dir, path) = archive_of(&[line(row(50, 1, at))], Some(40));
    refused(&app, &path, "line 1: seq 50 is outside 1..=40").await;
    std::fs::remove_dir_all(dir).unwrap();
    // 40 rows of 40 different days, in a file of one day.
    let days: Vec<Vec<u8>> = (0..40)
        .map(|d| line(row(d + 1, 1, at + chrono::Duration::days(d))))
        .collect();
    let (dir, path) = archive_of(&days, None);
    refused(
        &app,
        &path,
        "line 2: time 2026-01-02 05:00:00 UTC lies outside",
    )
    .await;
    std::fs::remove_dir_all(dir).unwrap();
    // A txid no transaction of this database has had: it would sit ahead of
    // every live-tail position.
    let (dir, path) = archive_of(&[line(row(1, i64::MAX / 2, at))], None);
    refused(&app, &path, "line 1: txid 4611686018427387903 is outside").await;
    std::fs::remove_dir_all(dir).unwrap();
    // A key twice: the value checked must be the value loaded.
    let mut twice = line(row(1, 1, at));
    twice.pop();
    twice.extend_from_slice(br#","seq":9223372036854775807}"#);
    let (dir, path) = archive_of(&[twice], None);
    refused(&app, &path, "line 1: duplicate field `seq`").await;
    std::fs::remove_dir_all(dir).unwrap();
    // Without its manifest, nothing says what the file should hold.
    let (dir, path) = archive_of(&[line(row(1, 1, at))], None);
    std::fs::remove_file(dir.join(archive::MANIFEST)).unwrap();
    refused(&app, &path, "no entry for it in manifest.json").await;
    std::fs::remove_dir_all(dir).unwrap();

    // A good file of the same shape restores, into one partition, and the
    // sequence moves to its highest seq and no further.
    let (dir, path) = archive_of(&[line(row(7, 1, at)), line(row(9, 1, at))], Some(9));
    restore(&app, &path).await.unwrap();
    assert_eq!(app.count("events_p20260101").await, 2);
    app.publish(
        "t.after",
        br#"{"id": "after", "event_type": "t.after", "source": "svc", "data": {}}"#,
    )
    .await;
    app.wait_for_rows("events", 3).await;
    let seq: i64 = app
        .db
        .query_one("SELECT seq FROM events WHERE id = 'after'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(seq > 9 && seq < 100, "{seq}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_archive_holding_one_line_longer_than_the_limit_is_refused_without_reading_it_whole() {
    let app = spawn_app().await;
    // A few kB compressed: one line of MAX_LINE_BYTES + 64 MiB.
    let long = vec![b'a'; archive::MAX_LINE_BYTES + (64 << 20)];
    let (dir, path) = archive_of(&[long], None);
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("restore")
        .arg(&path)
        .env_clear()
        .env("DATABASE_URL", &app.db_url)
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (status, peak_kb, stderr) = peak_rss_kb(child).await;
    assert!(!status.success());
    assert!(
        stderr.contains("events_p20260101.ndjson.zst") && stderr.contains("line 1 is longer than"),
        "{stderr}"
    );
    assert!(peak_kb < 100 * 1024, "peak RSS {peak_kb} kB");
    assert_eq!(app.count("events").await, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Lines that pass every check of the file and its manifest but that the
/// embedded store's own parser cannot take: refused with the file and line
/// named, wherever they are, and nothing of the file loaded.
#[tokio::test]
async fn crafted_lines_reaching_the_embedded_stores_parser_are_refused_and_leave_nothing() {
    let file = crate::support::TempSqlite::new();
    let line = |v: Value| serde_json::to_vec(&v).unwrap();
    let at = day() + chrono::Duration::hours(5);
    let with = |seq: i64, key: &str, value: Value| {
        let mut r = row(seq, 1, at);
        r["salt"] = json!("00".repeat(16));
        r[key] = value;
        line(r)
    };
    let good = || with(1, "sanitized", json!(false));
    let restore = |path: PathBuf| {
        let db = file.path.clone();
        async move {
            candystore::store::sqlite::archive::restore(&db, &[path], None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let events = || -> i64 {
        file.look()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap_or(0)
    };
    for (bad, want) in [
        // jsonb refuses a NUL in text, and a lone surrogate.
        (
            line({
                let mut r = row(2, 1, at);
                r["payload"] = json!({"t": "a\u{0}b"});
                r
            }),
            "payload",
        ),
        (
            {
                let mut l = with(2, "payload", json!({"t": "x"}));
                let text = String::from_utf8(l.clone()).unwrap();
                l = text.replace(r#""t":"x""#, r#""t":"\ud800""#).into_bytes();
                l
            },
            "payload",
        ),
        (
            with(2, "original_body", json!("not base64!")),
            "original_body",
        ),
        (with(2, "salt", json!("zz")), "salt is not hex"),
    ] {
        let (dir, path) = archive_of(&[good(), bad], None);
        let err = match restore(path).await {
            Ok(()) => panic!("loaded: {want}; {} event(s)", events()),
            Err(e) => e,
        };
        assert!(err.contains("line 2") && err.contains(want), "{err}");
        assert!(err.contains("events_p20260101.ndjson.zst"), "{err}");
        assert_eq!(events(), 0, "nothing of the file loaded: {err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
    // Past the first chunk read: still nothing of the file.
    let mut long: Vec<Vec<u8>> = (1..=archive::RESTORE_CHUNK as i64 + 1)
        .map(|seq| with(seq, "sanitized", json!(false)))
        .collect();
    long.push(with(20_000, "salt", json!("zz")));
    let (dir, path) = archive_of(&long, None);
    let err = restore(path).await.unwrap_err();
    assert!(err.contains("line 10002: salt is not hex"), "{err}");
    assert_eq!(events(), 0, "nothing of the file loaded: {err}");
    std::fs::remove_dir_all(dir).unwrap();
    // The good line alone restores.
    let (dir, path) = archive_of(&[good()], None);
    restore(path).await.unwrap();
    assert_eq!(events(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}
