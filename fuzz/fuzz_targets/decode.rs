//! Decode never panics, and what it accepts as an event is what PostgreSQL can
//! store: no NUL in any text, identifiers within bounds, payload and envelope
//! valid JSON within the depth rule that rebuild back into one object.
#![no_main]

use candystore::model::envelope::{Record, json_has_nul, rebuild};
use candystore::model::envelope::MAX_IDENT_BYTES;
use candystore::source::decode::{MAX_JSON_DEPTH, Properties, RawDelivery, decode, json_depth_exceeds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte (when there is one) picks a routing key, the rest is the body.
    let (key, body) = match data.split_first() {
        Some((k, rest)) if *k < 8 => (format!("fuzz.{k}"), rest),
        _ => (String::new(), data),
    };
    let record = decode(RawDelivery {
        body: body.to_vec(),
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: key,
        properties: Properties::default(),
        received_at: chrono::Utc::now(),
        authentic_replay: false,
    });
    match record {
        Record::Event(e) => {
            for text in [&e.id, &e.event_type, &e.source, &e.routing_key] {
                assert!(!text.contains('\0'));
            }
            for ident in [&e.id, &e.event_type, &e.source] {
                assert!(ident.len() <= MAX_IDENT_BYTES);
            }
            for json in [&e.payload, &e.envelope, &e.properties] {
                assert!(!json_depth_exceeds(json, MAX_JSON_DEPTH));
                let v: serde_json::Value = serde_json::from_slice(json).expect("valid json");
                assert!(!json_has_nul(&v), "no NUL in any string or key");
            }
            let doc = rebuild(&e.envelope, &e.payload, e.payload_member).expect("an object");
            let _: serde_json::Value = serde_json::from_slice(&doc).expect("rebuilds to json");
        }
        Record::DeadLetter(d) => {
            assert_eq!(d.body, body, "a dead letter keeps the bytes");
            assert!(!d.detail.contains('\0'));
        }
        Record::Replayed => panic!("only a mark that checks out is taken for a replay"),
    }
});
