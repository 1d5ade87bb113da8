//! `candystore replay` (`ops::replay`): stored events published again to an
//! exchange of the test's own, compared with what the API serves as `/raw`.

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::both_stores;
use crate::helpers::{AMQP, On, TestApp, spawn_app_on};
use candystore::api::query::{Cursor, EventQuery};
use candystore::app::AppOptions;
use candystore::ops::replay::{self, Progress, Replay};

/// An exchange and a queue bound to it with `#`, deleted when dropped.
struct Sink {
    channel: lapin::Channel,
    exchange: String,
    queue: String,
    _conn: lapin::Connection,
}

/// Replays every stored event to `exchange`, confirmed.
async fn replay_all(app: &TestApp, exchange: &str) -> Progress {
    replay_selected(app, "", exchange).await
}

/// Replays the events `query` (`GET /events`'s filters) selects to `exchange`.
async fn replay_selected(app: &TestApp, query: &str, exchange: &str) -> Progress {
    let publisher = candystore::source::publish::Republisher::connect(AMQP)
        .await
        .unwrap();
    let selected = EventQuery::parse(query).unwrap();
    let job = Replay {
        query: &selected,
        exchange,
        rate: 0,
        resume: None,
    };
    let mut progress = Progress::default();
    replay::run(
        &app.ops_store().await,
        &publisher,
        &job,
        &mut progress,
        |_| {},
    )
    .await
    .unwrap();
    progress
}

/// Declares `queue` and binds it to `exchange` with `key`.
async fn bound_queue(channel: &lapin::Channel, queue: &str, exchange: &str, key: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

impl Sink {
    async fn new(app: &TestApp) -> Self {
        let conn = lapin::Connection::connect(AMQP, Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let exchange = format!("{}_replay_x", app.name);
        let queue = format!("{}_replay_q", app.name);
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        bound_queue(&channel, &queue, &exchange, "#").await;
        Sink {
            channel,
            exchange,
            queue,
            _conn: conn,
        }
    }

    /// Every message waiting: (body, properties).
    async fn drain(&self) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m);
        }
        out
    }
}

impl Drop for Sink {
    /// Also when the test panics: nothing is left on the broker.
    fn drop(&mut self) {
        crate::support::remove_queue_and_exchange(&self.exchange, &self.queue);
    }
}

async fn publish_mix(app: &TestApp, n: u64) {
    for i in 0..n {
        let (key, body) =
            candystore::source::publish::sample_event(&app.name, i, 300, (i % 3) as u8 + 1);
        let props = lapin::BasicProperties::default()
            .with_message_id(format!("m-{i}").into())
            .with_content_type("application/json".into());
        app.publish_with(&key, &body, props).await;
    }
    app.wait_for_rows("events", n as i64).await;
}

async fn raw(app: &TestApp, id: &str) -> Value {
    app.http
        .get(app.api(&format!("/events/{id}/raw")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn a_replay_publishes_every_stored_envelope_as_published_in_time_order(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    publish_mix(&app, 30).await;
    let sink = Sink::new(&app).await;
    let publisher = candystore::source::publish::Republisher::connect(AMQP)
        .await
        .unwrap();
    let everything = EventQuery::parse("").unwrap();
    let job = Replay {
        query: &everything,
        exchange: &sink.exchange,
        rate: 0,
        resume: None,
    };
    let store = app.ops_store().await;
    assert_eq!(replay::count(&store, &job).await.unwrap(), 30);
    // A selection by payload (a SQL function on the embedded store).
    let by_payload = EventQuery::parse("payload_contains={}").unwrap();
    let selected = Replay {
        query: &by_payload,
        ..job
    };
    assert_eq!(replay::count(&store, &selected).await.unwrap(), 30);
    let mut positions: Vec<Cursor> = Vec::new();
    let mut progress = Progress::default();
    replay::run(
        &app.ops_store().await,
        &publisher,
        &job,
        &mut progress,
        |p| positions.push(p.position.unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(progress.published, 30);

    let got = sink.drain().await;
    assert_eq!(got.len(), 30);
    let mut last_time = i64::MIN;
    for (m, at) in got.iter().zip(&positions) {
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        let id = body
            .get("id")
            .or_else(|| body.get("event_id"))
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        assert_eq!(
            body,
            raw(&app, &id).await,
            "{id}: the envelope as published"
        );
        let props = &m.delivery.properties;
        assert!(
            props.message_id().is_some(),
            "{id}: original properties kept"
        );
        let headers = props.headers().as_ref().unwrap();
        let Some(AMQPValue::LongString(mark)) = headers.inner().get("x-candystore-replay") else {
            panic!("{id}: not marked as a replay");
        };
        assert!(
            mark.to_string().starts_with(&format!("v1:{}:", at.seq)),
            "{id}: marked as a replay of seq {}",
            at.seq
        );
        assert!(at.timestamp_micros >= last_time, "time order");
        last_time = at.timestamp_micros;
    }

    // Resumed after the tenth: the other twenty, the same as before.
    let resumed = Replay {
        resume: Some(positions[9]),
        ..job
    };
    let mut again = Progress::default();
    replay::run(
        &app.ops_store().await,
        &publisher,
        &resumed,
        &mut again,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.published, 20);
    let rest = sink.drain().await;
    let bodies = |ms: &[lapin::message::BasicGetMessage]| -> Vec<Vec<u8>> {
        ms.iter().map(|m| m.delivery.data.clone()).collect()
    };
    assert_eq!(bodies(&rest), bodies(&got[10..]));
}

async fn candystore_ingests_its_own_replay_without_adding_a_row(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    publish_mix(&app, 12).await;
    let progress = replay_selected(&app, "event_type=agent.task.started", &app.exchange).await;
    assert!(progress.published > 0);
    app.wait_until(std::time::Duration::from_secs(10), || async {
        app.metric("candystore_replays_ignored_total").await == progress.published as f64
    })
    .await;
    assert_eq!(app.count("events").await, 12);
    assert_eq!(
        app.queue_state().await.0,
        0,
        "every replayed delivery acked"
    );
}

async fn a_publisher_that_sets_the_replay_header_itself_has_its_events_stored(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    // Any value a publisher may choose, the old plain seq among them.
    let values = [
        AMQPValue::LongLongInt(42),
        AMQPValue::LongString("yes".into()),
        AMQPValue::LongString(format!("v1:1:{}", "ab".repeat(32)).into()),
        AMQPValue::Boolean(true),
    ];
    for (i, v) in values.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert("x-candystore-replay".into(), v.clone());
        let props = lapin::BasicProperties::default().with_headers(headers);
        let body =
            format!(r#"{{"id": "forged-{i}", "event_type": "x.y", "source": "s", "data": {{}}}}"#);
        app.publish_with("x.y", body.as_bytes(), props).await;
    }
    app.wait_for_rows("events", values.len() as i64).await;
    assert_eq!(
        app.metric("candystore_replay_marks_unauthenticated_total")
            .await,
        values.len() as f64
    );
    assert_eq!(app.metric("candystore_replays_ignored_total").await, 0.0);
}

async fn a_real_replay_mark_copied_onto_another_body_does_not_hide_it(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    publish_mix(&app, 3).await;
    // What a consumer of the exchange sees of a real replay: its mark.
    let sink = Sink::new(&app).await;
    replay_all(&app, &sink.exchange).await;
    let seen = sink.drain().await;
    assert_eq!(seen.len(), 3);
    let m = &seen[0];
    let headers = m.delivery.properties.headers().clone().unwrap();
    let mark = headers.inner().get("x-candystore-replay").unwrap().clone();
    // The same mark on a new event (same routing key), and on the same body under
    // another routing key, is stored; the real replay, published again to the
    // service's exchange, is not.
    let mut forged = FieldTable::default();
    forged.insert("x-candystore-replay".into(), mark);
    let props = lapin::BasicProperties::default().with_headers(forged);
    let key = m.delivery.routing_key.as_str().to_owned();
    app.publish_with(
        &key,
        br#"{"id": "smuggled", "event_type": "x.y", "source": "s", "data": {}}"#,
        props.clone(),
    )
    .await;
    app.wait_for_rows("events", 4).await;
    assert_eq!(
        app.metric("candystore_replay_marks_unauthenticated_total")
            .await,
        1.0
    );
    app.publish_with(&key, &m.delivery.data, m.delivery.properties.clone())
        .await;
    app.wait_until(std::time::Duration::from_secs(10), || async {
        app.metric("candystore_replays_ignored_total").await == 1.0
    })
    .await;
    assert_eq!(app.count("events").await, 4);
}

async fn a_replay_publishes_what_was_received_types_and_routing_key_exact_and_no_cc_or_bcc(on: On) {
    use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString};
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    let sink = Sink::new(&app).await;
    // A second queue on the target exchange, bound to the key CC names.
    let cc_queue = format!("{}_cc_q", app.name);
    bound_queue(&sink.channel, &cc_queue, &sink.exchange, "cc.target").await;
    let mut headers = FieldTable::default();
    let mut shaped = FieldTable::default();
    shaped.insert("$hex".into(), AMQPValue::LongString("00ff".into()));
    let mut stamp = FieldTable::default();
    stamp.insert("$timestamp".into(), AMQPValue::LongLongInt(5));
    headers.insert("looks-like-bytes".into(), AMQPValue::FieldTable(shaped));
    headers.insert("looks-like-a-time".into(), AMQPValue::FieldTable(stamp));
    headers.insert("small".into(), AMQPValue::ShortShortInt(-3));
    headers.insert("float".into(), AMQPValue::Float(1.5));
    headers.insert("when".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255])),
    );
    headers.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
    );
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from("cc.target"),
        )])),
    );
    headers.insert(
        "BCC".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from("cc.target"),
        )])),
    );
    let routing_key = "typed.nul\0key";
    app.publish_with(
        routing_key,
        br#"{"id": "typed", "event_type": "typed.x", "source": "s", "data": {}}"#,
        lapin::BasicProperties::default().with_headers(headers.clone()),
    )
    .await;
    app.wait_for_rows("events", 1).await;
    let stored_key = app.text("SELECT routing_key FROM events").await;
    assert_eq!(stored_key, "typed.nulkey", "stored without NUL");

    replay_all(&app, &sink.exchange).await;
    let got = sink.drain().await;
    assert_eq!(got.len(), 1);
    let m = &got[0].delivery;
    assert_eq!(m.routing_key.as_str(), routing_key, "byte for byte");
    let mut replayed = m.properties.headers().clone().unwrap();
    assert!(replayed.inner().contains_key("x-candystore-replay"));
    replayed = replayed
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-candystore-replay")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    let mut want = headers;
    want = want
        .inner()
        .iter()
        .filter(|(k, _)| !["CC", "BCC"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    assert_eq!(
        replayed, want,
        "every header with its AMQP type, no CC or BCC"
    );
    // Nothing reached the queue bound to the key CC named.
    let cc = sink
        .channel
        .basic_get(cc_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(cc.is_none(), "routed by CC");
    let _ = sink
        .channel
        .queue_delete(cc_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

async fn cli_replays_of_a_large_selection_hold_a_bounded_number_of_bytes(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    // 48 events of ~2 MB (96 MB selected), and 24 dead letters of 2 MB.
    let n = 48;
    for i in 0..n {
        let (key, body) = candystore::source::publish::sample_event(&app.name, i, 2 << 20, 1);
        app.publish(&key, &body).await;
    }
    for i in 0..24u8 {
        let mut junk = vec![b'x'; 2 << 20];
        junk[0] = i;
        app.publish("not.json", &junk).await;
    }
    app.wait_for_rows("events", n as i64).await;
    app.wait_for_rows("dead_letter", 24).await;
    let sink = Sink::new(&app).await;
    let settings = app.settings();
    for args in [
        vec!["replay", "--exchange", sink.exchange.as_str()],
        vec![
            "dead-letters",
            "replay",
            "--all",
            "--exchange",
            sink.exchange.as_str(),
        ],
    ] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
            .args(&args)
            .env_clear()
            .env("DATABASE_URL", &settings.database_url)
            .env("RABBIT_URL", AMQP)
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (status, peak_kb, stderr) = crate::helpers::peak_rss_kb(child).await;
        assert!(status.success(), "{args:?}: {stderr}");
        // A page of at most 16 MiB, its rebuilt bodies and the unconfirmed
        // publishes (16 MiB): 82-93 MB measured with this debug binary; the code
        // that read pages of 1,000 peaked at 195 MB here, and grew with the selection.
        assert!(peak_kb < 120 * 1024, "{args:?}: peak RSS {peak_kb} kB");
        eprintln!("{args:?}: peak RSS {peak_kb} kB");
    }
    let got = sink.drain().await;
    assert_eq!(got.len(), n as usize + 24);
}

async fn a_replay_to_a_missing_or_unbound_exchange_says_so_once_without_dumping_messages(on: On) {
    let app = spawn_app_on(on, &[], AppOptions::default()).await;
    publish_mix(&app, 3).await;
    app.wait_for_rows("events", 3).await;
    let settings = app.settings();
    let sink = Sink::new(&app).await;
    let run = |exchange: String| {
        let url = settings.database_url.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
                .args(["replay", "--exchange", &exchange])
                .env_clear()
                .env("DATABASE_URL", url)
                .env("RABBIT_URL", AMQP)
                .env("LOG_FORMAT", "console")
                .output()
                .await
                .unwrap();
            (
                out.status.code().unwrap(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // No such exchange: refused before anything is published, exit 2, one line.
    let missing = format!("{}_missing", app.exchange);
    let (code, stderr) = run(missing.clone()).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "candystore: exchange {missing:?} does not exist on the broker (declare it, or name another)"
        )
    );
    // An exchange with no binding: the first unroutable event stops it, exit 1,
    // named in one line with the position so far, and no message dumped.
    sink.channel
        .queue_unbind(
            sink.queue.as_str().into(),
            sink.exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (code, stderr) = run(sink.exchange.clone()).await;
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("stopped: replayed 0 event(s)"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("the broker could not route the message")
            && lines[1].contains("has no binding for"),
        "{stderr}"
    );
    assert!(!stderr.contains("BasicReturnMessage"), "{stderr}");
}

both_stores!(
    a_replay_publishes_every_stored_envelope_as_published_in_time_order,
    candystore_ingests_its_own_replay_without_adding_a_row,
    a_publisher_that_sets_the_replay_header_itself_has_its_events_stored,
    a_real_replay_mark_copied_onto_another_body_does_not_hide_it,
    a_replay_publishes_what_was_received_types_and_routing_key_exact_and_no_cc_or_bcc,
    cli_replays_of_a_large_selection_hold_a_bounded_number_of_bytes,
    a_replay_to_a_missing_or_unbound_exchange_says_so_once_without_dumping_messages,
);
