//! jsonb containment (`store::contains`: the live tail's in-memory filter and the
//! embedded store's `payload_contains`) never panics on any text, and within its
//! budget it decides exactly as the unbounded check does (the unbounded check
//! follows PostgreSQL's jsonb `@>`, tested against the server in tests/it).
#![no_main]

use candystore::api::tail::CONTAINMENT_STEPS;
use candystore::store::contains::{contains, contains_within, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Document and pattern, separated by the first NUL.
    let Some(cut) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (Ok(doc), Ok(pattern)) = (parse(&data[..cut]), parse(&data[cut + 1..])) else {
        return;
    };
    let mut steps = CONTAINMENT_STEPS;
    if let Some(found) = contains_within(&doc, &pattern, &mut steps) {
        assert_eq!(found, contains(&doc, &pattern));
    }
});
