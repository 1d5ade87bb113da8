//! Restore's line check never panics, and whatever it accepts lies inside the
//! file's manifest entry: its range, and a seq no higher than stated.
#![no_main]

use candystore::storage::Table;
use candystore::storage::archive::{Entry, MAX_RESTORED_SEQ, check_line};
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let entry = Entry {
        table: "events".into(),
        partition: "events_p20260101".into(),
        file: "events_p20260101.ndjson.zst".into(),
        from,
        to: from + chrono::Duration::days(1),
        rows: 1,
        bytes: 1,
        sha256: String::new(),
        archived_at: from,
        max_seq: Some(1_000),
        max_txid: None,
        store: None,
    };
    for table in [Table::Events, Table::DeadLetter] {
        if let Ok(at) = check_line(line, table, &entry, 5_000) {
            assert!(entry.from <= at && at < entry.to);
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let seq = v["seq"].as_i64().unwrap();
            assert!((1..=1_000.min(MAX_RESTORED_SEQ)).contains(&seq));
            if let Some(txid) = v.get("txid").and_then(|t| t.as_i64()) {
                assert!((0..5_000).contains(&txid));
            }
        }
    }
});
