//! The live tail's in-memory containment check never panics, and within its
//! budget it decides exactly as the unbounded check does (the unbounded check
//! follows PostgreSQL's jsonb `@>`, tested against the server in tests/it).
#![no_main]

use candystore::api::tail::{CONTAINMENT_STEPS, jsonb_contains, jsonb_contains_within};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Document and pattern, separated by the first NUL.
    let Some(cut) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (Ok(doc), Ok(pattern)) = (
        serde_json::from_slice::<serde_json::Value>(&data[..cut]),
        serde_json::from_slice::<serde_json::Value>(&data[cut + 1..]),
    ) else {
        return;
    };
    let mut steps = CONTAINMENT_STEPS;
    if let Some(found) = jsonb_contains_within(&doc, &pattern, &mut steps) {
        assert_eq!(found, jsonb_contains(&doc, &pattern));
    }
});
