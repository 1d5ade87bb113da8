use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::model::envelope::{Record, RejectReason, rebuild};

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn delivery(body: &[u8]) -> RawDelivery {
    RawDelivery {
        body: body.to_vec(),
        repairs: Default::default(),
        exchange: "events".into(),
        routing_key: "rk.default".into(),
        properties: Properties::default(),
        received_at: received(),
        authentic_replay: false,
    }
}

fn event(r: Record) -> Box<Event> {
    match r {
        Record::Event(e) => e,
        Record::DeadLetter(d) => panic!(
            "expected an event, got a dead letter: {} {}",
            d.reason.as_str(),
            d.detail
        ),
        Record::Replayed => panic!("expected an event, got a replay"),
    }
}

fn dead(r: Record) -> Box<DeadLetter> {
    match r {
        Record::DeadLetter(d) => d,
        Record::Event(e) => panic!("expected a dead letter, got event {}", e.id),
        Record::Replayed => panic!("expected a dead letter, got a replay"),
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

const GEN1: &str = r#"{"id":"2f0d6a3e-2b7c-4a7e-9e0b-5f1f2f3a4b5c","event_type":"transcription.segment.completed","source":"whisperlivekit","target":"candybar","timestamp":"2026-11-20T14:03:11.482Z","session_id":"abc-123","correlation_id":"7c4d58ac","data":{"text":"...","confidence":0.93}}"#;
const GEN2: &str = r#"{"event_id":"5af3fbd6","event_type":"fireflies.transcript.ready","timestamp":"2026-03-02T09:15:00+00:00","version":"1.0.0","source":{"host":"big-chungus","type":"agent","app":"n8n"},"correlation_ids":["a28a87c4"],"agent_context":{"type":"claude-code"},"payload":{"session_id":"s-2","n":1}}"#;
const GEN3: &str = r#"{"specversion":"1.0","id":"31e013eb","type":"bloodbank.v1.repo.decision.recorded","source":"hermes://agent/33god-pm","subject":"x","time":"2026-08-04T05:32:12Z","datacontenttype":"application/json","correlationid":"a28a87c4","causationid":null,"actor":{"agent_id":"33god-pm"},"ordering_key":"repo:33god","data":{"session_id":"from-data"}}"#;

#[test]
fn generation_1_is_projected_as_the_spec_says() {
    let e = event(decode(delivery(GEN1.as_bytes())));
    assert_eq!(e.generation, Generation::Original);
    assert_eq!(e.id, "2f0d6a3e-2b7c-4a7e-9e0b-5f1f2f3a4b5c");
    assert_eq!(e.event_type, "transcription.segment.completed");
    assert_eq!(e.source, "whisperlivekit");
    assert_eq!(e.target.as_deref(), Some("candybar"));
    assert_eq!(e.timestamp.to_rfc3339(), "2026-11-20T14:03:11.482+00:00");
    assert_eq!(e.session_id.as_deref(), Some("abc-123"));
    assert_eq!(e.correlation_id.as_deref(), Some("7c4d58ac"));
    assert_eq!(
        json_of(&e.payload),
        json!({"text": "...", "confidence": 0.93})
    );
    assert_eq!(e.routing_key, "rk.default");
    assert!(!e.sanitized);
}

#[test]
fn generation_2_takes_the_app_then_the_host_and_the_first_correlation_id() {
    let e = event(decode(delivery(GEN2.as_bytes())));
    assert_eq!(e.generation, Generation::Typed);
    assert_eq!((e.id.as_str(), e.source.as_str()), ("5af3fbd6", "n8n"));
    assert_eq!(e.session_id.as_deref(), Some("s-2"));
    assert_eq!(e.correlation_id.as_deref(), Some("a28a87c4"));
    assert_eq!(e.target, None);
    assert_eq!(json_of(&e.payload), json!({"session_id": "s-2", "n": 1}));

    let no_app = GEN2.replace(r#","app":"n8n""#, "");
    assert_eq!(
        event(decode(delivery(no_app.as_bytes()))).source,
        "big-chungus"
    );
    let plain = GEN2.replace(
        r#"{"host":"big-chungus","type":"agent","app":"n8n"}"#,
        r#""plain-source""#,
    );
    assert_eq!(
        event(decode(delivery(plain.as_bytes()))).source,
        "plain-source"
    );
}

#[test]
fn generation_3_keeps_non_uuid_ids_and_reads_the_session_from_data() {
    let e = event(decode(delivery(GEN3.as_bytes())));
    assert_eq!(e.generation, Generation::CloudEvents);
    assert_eq!(e.id, "31e013eb");
    assert_eq!(e.event_type, "bloodbank.v1.repo.decision.recorded");
    assert_eq!(e.source, "hermes://agent/33god-pm");
    assert_eq!(e.session_id.as_deref(), Some("from-data"));
    assert_eq!(e.correlation_id.as_deref(), Some("a28a87c4"));
    let with_ext = GEN3.replace(
        r#""ordering_key""#,
        r#""sessionid":"from-ext","ordering_key""#,
    );
    assert_eq!(
        event(decode(delivery(with_ext.as_bytes())))
            .session_id
            .as_deref(),
        Some("from-ext")
    );
}

#[test]
fn the_raw_envelope_is_rebuilt_equal_as_json_for_every_generation() {
    for body in [GEN1, GEN2, GEN3, r#"{"event_type":"no.payload","id":"1"}"#] {
        let e = event(decode(delivery(body.as_bytes())));
        let rebuilt: Value =
            serde_json::from_slice(&rebuild(&e.envelope, &e.payload, e.payload_member).unwrap())
                .unwrap();
        assert_eq!(rebuilt, json_of(body.as_bytes()), "{body}");
        assert!(
            !String::from_utf8_lossy(&e.envelope).contains("confidence"),
            "the payload is not stored twice"
        );
    }
}

#[test]
fn absent_members_fall_back_to_the_amqp_properties() {
    let mut d = delivery(br#"{"data": {"k": 1}}"#);
    d.routing_key = "from.routing.key".into();
    d.properties.message_id = Some("m-1".into());
    d.properties.app_id = Some("app-1".into());
    d.properties.correlation_id = Some("c-1".into());
    d.properties.timestamp = Some(1_700_000_000);
    let e = event(decode(d));
    assert_eq!(e.event_type, "from.routing.key");
    assert_eq!(e.id, "m-1");
    assert_eq!(e.source, "app-1");
    assert_eq!(e.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(e.timestamp.timestamp(), 1_700_000_000);

    let e = event(decode(delivery(br#"{"data": {}}"#)));
    assert_eq!(e.source, "unknown");
    assert_eq!(
        e.timestamp,
        received(),
        "no time anywhere: the receive time"
    );
}

#[test]
fn a_body_without_an_id_gets_the_same_derived_id_every_time() {
    let a = event(decode(delivery(
        br#"{"event_type": "t", "data": {"n": 1}}"#,
    )));
    let b = event(decode(delivery(
        br#"{"event_type": "t", "data": {"n": 1}}"#,
    )));
    let c = event(decode(delivery(
        br#"{"event_type": "t", "data": {"n": 2}}"#,
    )));
    assert_eq!(a.id, b.id);
    assert_ne!(a.id, c.id);
    assert!(uuid::Uuid::parse_str(&a.id).is_ok());
}

#[test]
fn identifiers_are_kept_as_sent() {
    let e = event(decode(delivery(
        br#"{"id": 42, "event_type": "t", "session_id": "not a uuid at all", "data": {}}"#,
    )));
    assert_eq!(e.id, "42");
    assert_eq!(e.session_id.as_deref(), Some("not a uuid at all"));
}

#[test]
fn times_with_any_offset_are_stored_as_utc_and_without_one_are_read_as_utc() {
    let cases = [
        ("2026-11-20T14:03:11.482Z", "2026-11-20T14:03:11.482+00:00"),
        ("2026-11-20T16:03:11+02:00", "2026-11-20T14:03:11+00:00"),
        ("2026-11-20T09:03:11-05:00", "2026-11-20T14:03:11+00:00"),
        ("2026-11-20T14:03:11", "2026-11-20T14:03:11+00:00"),
        ("2026-11-20 14:03:11.5", "2026-11-20T14:03:11.500+00:00"),
        ("2026-11-20T14:03:11+0000", "2026-11-20T14:03:11+00:00"),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse_time(input).map(|t| t.to_rfc3339()),
            Some(want.to_owned()),
            "{input}"
        );
    }
    for bad in [
        "yesterday",
        "",
        "99999-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
    ] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
    let e = event(decode(delivery(
        br#"{"event_type": "t", "timestamp": "garbage"}"#,
    )));
    assert_eq!(
        e.timestamp,
        received(),
        "an unreadable time falls back; the original stays in the envelope"
    );
    assert!(String::from_utf8_lossy(&e.envelope).contains("garbage"));
}

#[test]
fn what_is_not_an_event_is_dead_lettered_with_its_reason_and_bytes() {
    let cases: [(&[u8], RejectReason); 8] = [
        (b"", RejectReason::EmptyBody),
        (b"  \n", RejectReason::EmptyBody),
        (b"\xff\xfe", RejectReason::InvalidUtf8),
        (b"not json", RejectReason::InvalidJson),
        (b"[1,2]", RejectReason::NotAnObject),
        (b"\"a string\"", RejectReason::NotAnObject),
        (
            br#"{"unrelated": true}"#,
            RejectReason::UnrecognisedEnvelope,
        ),
        (br#"{"id": "x", "data": "#, RejectReason::InvalidJson),
    ];
    for (body, reason) in cases {
        let d = dead(decode(delivery(body)));
        assert_eq!(d.reason, reason, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(d.body, body);
        assert_eq!(d.routing_key, "rk.default");
        assert!(!d.detail.is_empty());
    }
    let raw_nul = dead(decode(delivery(b"{\"a\": \0}")));
    assert_eq!(raw_nul.reason, RejectReason::InvalidJson);
    assert!(!raw_nul.detail.contains('\0'), "{:?}", raw_nul.detail);
    let mut no_key = delivery(br#"{"data": {}}"#);
    no_key.routing_key = String::new();
    assert_eq!(dead(decode(no_key)).reason, RejectReason::MissingEventType);
    let long = format!(
        r#"{{"id": "{}", "event_type": "t"}}"#,
        "i".repeat(MAX_IDENT_BYTES + 1)
    );
    let d = dead(decode(delivery(long.as_bytes())));
    assert_eq!(d.reason, RejectReason::FieldTooLong);
    assert!(d.detail.starts_with("id "), "{}", d.detail);
}

#[test]
fn a_redelivered_dead_letter_has_the_same_fingerprint() {
    let a = dead(decode(delivery(b"oops")));
    let b = dead(decode(delivery(b"oops")));
    let mut other = delivery(b"oops");
    other.routing_key = "elsewhere".into();
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_ne!(a.fingerprint, dead(decode(other)).fingerprint);
}

#[test]
fn nul_is_removed_from_strings_and_keys_and_the_original_is_kept() {
    let body = br#"{"id": "n\u0000ul", "event_type": "t", "data": {"k\u0000ey": ["a\u0000"], "ok": "\\u0000 is text"}}"#;
    let e = event(decode(delivery(body)));
    assert!(e.sanitized);
    assert_eq!(e.id, "nul");
    assert_eq!(
        json_of(&e.payload),
        json!({"key": ["a"], "ok": "\\u0000 is text"})
    );
    assert_eq!(e.body, body.to_vec());

    let clean = br#"{"id": "x", "event_type": "t", "data": {"ok": "\\u0000 is text"}}"#;
    assert!(
        !event(decode(delivery(clean))).sanitized,
        "an escaped backslash is not a NUL"
    );

    let mut d = delivery(GEN1.as_bytes());
    d.routing_key = "rk\0x".into();
    d.properties.app_id = Some("a\0b".into());
    let e = event(decode(d));
    assert!(e.sanitized);
    assert_eq!(e.routing_key, "rkx");
    let props = json_of(&e.properties);
    assert_eq!(props["app_id"], "ab");
    assert_eq!(
        props["routing_key_hex"],
        crate::model::hex::encode(b"rk\0x")
    );
}

/// The JSON value with NUL removed from every string and key, as decode does.
fn without_nul(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('\0', "")),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map(".*", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn decode_never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512), key in ".{0,40}") {
        let mut d = delivery(&body);
        d.routing_key = key;
        if let Record::DeadLetter(d) = decode(d) {
            for text in [&d.detail, &d.routing_key, &d.exchange] {
                prop_assert!(!text.contains('\0'), "dead-letter text must be storable: {:?}", text);
            }
        }
    }

    #[test]
    fn what_decode_accepts_holds_no_text_postgresql_refuses(
        id in arb_json(), kind in arb_json(), data in arb_json(), key in ".{0,40}", generation in 0..3usize
    ) {
        let (id_key, type_key, data_key) = [("id", "event_type", "data"), ("event_id", "event_type", "payload"), ("id", "type", "data")][generation];
        let mut obj = serde_json::Map::new();
        if generation == 2 { obj.insert("specversion".into(), json!("1.0")); }
        obj.insert(id_key.into(), id);
        obj.insert(type_key.into(), kind);
        obj.insert(data_key.into(), data);
        let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
        let mut d = delivery(&body);
        d.routing_key = key;
        if let Record::Event(e) = decode(d) {
            for text in [&e.id, &e.event_type, &e.source] {
                prop_assert!(!text.contains('\0') && !text.is_empty());
            }
            // An empty routing key is a valid one (and valid text); NUL is not.
            prop_assert!(!e.routing_key.contains('\0'));
            for json in [&e.payload, &e.envelope, &e.properties] {
                let parsed: Value = serde_json::from_slice(json).expect("valid json");
                prop_assert!(!serde_json::to_string(&parsed).unwrap().contains("\\u0000"));
            }
            prop_assert!(e.id.len() <= MAX_IDENT_BYTES);
        }
    }

    #[test]
    fn the_rebuilt_envelope_equals_the_published_one(data in arb_json(), extra in prop::collection::hash_map("[a-z]{1,8}", arb_json(), 0..4)) {
        let mut obj: serde_json::Map<String, Value> = extra.into_iter().collect();
        obj.insert("specversion".into(), json!("1.0"));
        obj.insert("type".into(), json!("t"));
        obj.insert("data".into(), data);
        let published = Value::Object(obj);
        let text = serde_json::to_string(&published).unwrap();
        let e = event(decode(delivery(text.as_bytes())));
        // What comes back is what was published, less any NUL (which is then flagged).
        let rebuilt: Value =
            serde_json::from_slice(&rebuild(&e.envelope, &e.payload, e.payload_member).unwrap())
                .unwrap();
        prop_assert_eq!(e.sanitized, text.contains("\\u0000"));
        prop_assert_eq!(rebuilt, without_nul(published));
    }
}
#[test]
fn numbers_are_stored_exactly_or_not_at_all() {
    let big = br#"{"event_type": "t", "data": {"n": 123456789012345678901234567890, "f": 0.1, "g": 1.0355977503574113e-173}}"#;
    let e = event(decode(delivery(big)));
    let text = String::from_utf8_lossy(&e.payload).into_owned();
    assert!(text.contains("123456789012345678901234567890"), "{text}");
    assert_eq!(
        json_of(&e.payload)["g"].as_f64(),
        Some(1.0355977503574113e-173)
    );
    assert_eq!(json_of(&e.payload)["f"].as_f64(), Some(0.1));
    // Beyond 128-bit integers and f64, a number cannot be carried without changing
    // it: the delivery is dead-lettered whole instead.
    for body in [
        &br#"{"event_type": "t", "data": {"n": 1e400}}"#[..],
        br#"{"event_type": "t", "data": {"n": 1234567890123456789012345678901234567890123}}"#,
    ] {
        assert_eq!(
            dead(decode(delivery(body))).reason,
            RejectReason::InvalidJson
        );
    }
}

/// Decodes through the tree path only, as bodies below `LARGE_BODY_BYTES` are.
fn decode_as_tree(body: &[u8]) -> Projected {
    let props = Properties::default();
    let ctx = Context {
        routing_key: "rk.default",
        properties: &props,
        received_at: received(),
    };
    match project_value(body, body, &ctx) {
        Ok(p) => p,
        Err(r) => panic!("tree path refused: {}", r.detail),
    }
}

#[test]
fn large_bodies_are_projected_exactly_as_small_ones_without_a_tree() {
    let big: Vec<u64> = (0..100_000).collect();
    let filler = json!({"rows": big, "session_id": "s-big"});
    let mut bodies = Vec::new();
    for template in [GEN1, GEN2, GEN3] {
        let mut v: Value = serde_json::from_str(template).unwrap();
        let member = if template == GEN2 { "payload" } else { "data" };
        v[member] = filler.clone();
        // A large member that is not the payload, and one projection reads.
        v["extra"] = json!({"list": (0..20_000).collect::<Vec<u32>>()});
        bodies.push(serde_json::to_vec(&v).unwrap());
    }
    // An array payload, and a payload member that is not an object.
    bodies.push(
        serde_json::to_vec(
            &json!({"specversion": "1.0", "type": "t", "source": "s", "id": "a", "data": big}),
        )
        .unwrap(),
    );
    for body in &bodies {
        assert!(body.len() >= LARGE_BODY_BYTES);
        let fast = event(decode(delivery(body)));
        let tree = decode_as_tree(body);
        assert_eq!(fast.id, tree.id);
        assert_eq!(fast.event_type, tree.event_type);
        assert_eq!(fast.source, tree.source);
        assert_eq!(fast.session_id, tree.session_id);
        assert_eq!(fast.correlation_id, tree.correlation_id);
        assert_eq!(fast.timestamp, tree.timestamp);
        assert_eq!(fast.payload_member, tree.payload_member);
        assert_eq!(json_of(&fast.payload), json_of(&tree.payload));
        assert_eq!(json_of(&fast.envelope), json_of(&tree.envelope));
        let rebuilt: Value = serde_json::from_slice(
            &rebuild(&fast.envelope, &fast.payload, fast.payload_member).unwrap(),
        )
        .unwrap();
        assert_eq!(rebuilt, json_of(body));
    }
    let gen2 = event(decode(delivery(&bodies[1])));
    assert_eq!(
        gen2.session_id.as_deref(),
        Some("s-big"),
        "read from the set-aside payload"
    );
}

#[test]
fn a_large_body_that_is_not_json_or_not_an_envelope_is_refused_as_a_small_one_is() {
    let mut broken =
        serde_json::to_vec(&json!({"event_type": "t", "data": vec![1; 200_000]})).unwrap();
    broken.pop();
    assert_eq!(
        dead(decode(delivery(&broken))).reason,
        RejectReason::InvalidJson
    );
    let alien = serde_json::to_vec(&json!({"what": vec![1; 200_000]})).unwrap();
    assert_eq!(
        dead(decode(delivery(&alien))).reason,
        RejectReason::UnrecognisedEnvelope
    );
}

#[test]
fn depth_is_counted_on_the_bytes_outside_strings() {
    let nest = |d: usize| format!("{}1{}", "[".repeat(d), "]".repeat(d));
    assert!(!json_depth_exceeds(nest(128).as_bytes(), 128));
    assert!(json_depth_exceeds(nest(129).as_bytes(), 128));
    // Many brackets side by side are not depth.
    let wide = format!("[{}]", vec!["[1]"; 1000].join(","));
    assert!(!json_depth_exceeds(wide.as_bytes(), 128));
    // Brackets inside strings (also after an escaped quote) do not count.
    let quoted = format!(r#"{{"s": "\"{}"}}"#, "[".repeat(500));
    assert!(!json_depth_exceeds(quoted.as_bytes(), 128));
}

#[test]
fn a_delivery_with_an_authentic_replay_mark_is_not_an_event_to_store_again() {
    let mut raw = delivery(br#"{"id": "r-1", "event_type": "x", "data": {}}"#);
    raw.authentic_replay = true;
    assert!(matches!(decode(raw), Record::Replayed));
    // The header alone (any publisher can set it) leaves it an event.
    let mut raw = delivery(br#"{"id": "r-1", "event_type": "x", "data": {}}"#);
    let mut headers = serde_json::Map::new();
    headers.insert(crate::model::replay_mark::HEADER.into(), 42.into());
    raw.properties.headers = Some(headers);
    assert_eq!(event(decode(raw)).id, "r-1");
    // Any other header leaves it an event.
    let mut raw = delivery(br#"{"id": "r-1", "event_type": "x", "data": {}}"#);
    let mut headers = serde_json::Map::new();
    headers.insert("x-other".into(), 42.into());
    raw.properties.headers = Some(headers);
    assert_eq!(event(decode(raw)).id, "r-1");
}

#[test]
fn skewed_load_events_are_stored_as_the_skewed_fill_stores_its_rows() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let mut targets = std::collections::BTreeSet::new();
    let mut sessions = std::collections::HashMap::<String, u32>::new();
    for i in 0..2_000 {
        let (routing_key, body) = crate::source::publish::skewed_event(&mut rng, "run", i);
        let e = event(decode(delivery(&body)));
        assert_eq!(e.event_type, routing_key);
        let t: u32 = e.event_type["evt.".len()..e.event_type.len() - ".done".len()]
            .parse()
            .unwrap();
        assert!(t < 60, "{}", e.event_type);
        assert!(e.source.starts_with("svc-"), "{}", e.source);
        targets.insert(e.target.clone());
        let session = e.session_id.unwrap();
        assert!(
            session.len() == 32 && session.bytes().all(|b| b.is_ascii_hexdigit()),
            "{session}"
        );
        *sessions.entry(session).or_insert(0) += 1;
        let payload = json_of(&e.payload);
        assert!(
            ["opus", "sonnet", "haiku", "gpt"]
                .contains(&payload["agent"]["model"].as_str().unwrap()),
            "{payload}"
        );
        assert!(
            payload["repo"]["name"]
                .as_str()
                .unwrap()
                .starts_with("repo-")
        );
        assert_eq!(payload["counter"], i);
        assert!((550..800).contains(&e.payload.len()), "{}", e.payload.len());
    }
    // A missing target is stored as none, as the fill leaves it NULL.
    assert_eq!(
        targets,
        [None, Some("candybar".into()), Some("hermes".into())].into()
    );
    // The fill's session names, md5('session-' || k) as PostgreSQL prints it; the
    // largest session is k = 0 (PostgreSQL: 2fad5b7464f7758e83e4d801b2af1879).
    assert_eq!(
        sessions.iter().max_by_key(|(_, n)| **n).unwrap().0,
        "2fad5b7464f7758e83e4d801b2af1879"
    );
}
