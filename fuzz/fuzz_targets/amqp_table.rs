//! The patched AMQP field-table parser never fails on text that is not UTF-8
//! and never recurses past its depth limit, whatever the bytes.
#![no_main]

use amq_protocol_types::parsing::{parse_field_table, parse_short_string};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_field_table(data);
    // A complete short string always parses, whatever its bytes.
    if let Some((&len, rest)) = data.split_first()
        && rest.len() >= len as usize
    {
        assert!(parse_short_string(data).is_ok());
    }
});
