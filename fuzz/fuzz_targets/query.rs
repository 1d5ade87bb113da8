//! The query-string parser of `GET /events` never panics; whatever it accepts
//! is within the documented bounds.
#![no_main]

use candystore::api::query::params::{MAX_LIMIT, MAX_OFFSET};
use candystore::api::query::{Cursor, EventQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = EventQuery::parse(query) {
        assert!((1..=MAX_LIMIT).contains(&q.paging.limit));
        assert!((0..=MAX_OFFSET).contains(&q.paging.offset));
        for (_, v) in &q.filters {
            assert!(!v.is_empty() && !v.contains('\0'));
        }
        if let (Some(s), Some(e)) = (q.start_time, q.end_time) {
            assert!(s <= e);
        }
        if let Some(c) = q.paging.cursor {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
    }
    let _ = Cursor::decode(query);
});
