//! A load publisher: `candystore publish` and the ingest benchmarks use it to put
//! realistic envelopes of all three generations onto the exchange, with publisher
//! confirms so a count published is a count the broker holds.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

/// What to publish.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub count: u64,
    /// Approximate body size in bytes.
    pub size: usize,
    /// Events per second; 0 publishes as fast as confirms allow.
    pub rate: u64,
    /// 1, 2 or 3 for one generation; 0 cycles through all three.
    pub generation: u8,
    /// Added to ids so runs do not collide.
    pub run_id: String,
    /// What fills the body up to `size`.
    pub shape: Shape,
    /// Leave the envelope's time out (CloudEvents' `time` is optional): the
    /// events are stored at their receive time and claim their (id, source).
    pub without_time: bool,
    /// Date event `i` `i % days_back + 1` days ago (a backlog of that many past
    /// days, or a backfill); 0 dates every event now.
    pub days_back: u32,
}

/// What pads a sample event to its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// A text member (the realistic case).
    #[default]
    Text,
    /// One array of single-digit integers as the payload (generation 1): the
    /// worst case for a parser that builds a tree.
    IntArray,
    /// Generation-1 envelopes shaped like `loadtest/fill-skewed.sql`'s rows (see
    /// [`skewed_event`]): live traffic that looks like the data already stored.
    Skewed,
}

pub struct Publisher {
    _connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    /// Connects and declares the exchange as the consumer does (durable topic).
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        super::amqp::declare_exchange(&channel, exchange).await?;
        Ok(Self {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes one body (persistent) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), lapin::Error> {
        self.publish_nowait(routing_key, body, props).await?.await?;
        Ok(())
    }

    async fn publish_nowait(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
    }

    /// Publishes `spec.count` sample events, pacing to `spec.rate`, with up to 1,000
    /// confirms outstanding. Returns the elapsed time.
    pub async fn publish_load(&self, spec: &LoadSpec) -> Result<Duration, lapin::Error> {
        let start = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x5ca1ab1e);
        for i in 0..spec.count {
            if spec.rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / spec.rate as f64);
                tokio::time::sleep_until(due).await;
            }
            let generation = if spec.generation == 0 {
                (i % 3) as u8 + 1
            } else {
                spec.generation
            };
            let (routing_key, body) = match spec.shape {
                Shape::Text if spec.without_time => {
                    sample_event_without_time(&spec.run_id, i, spec.size, generation)
                }
                Shape::Text if spec.days_back > 0 => {
                    let days = (i % u64::from(spec.days_back)) as i64 + 1;
                    let at = chrono::Utc::now() - chrono::Duration::days(days);
                    sample_event_at(&spec.run_id, i, spec.size, generation, at)
                }
                Shape::Text => sample_event(&spec.run_id, i, spec.size, generation),
                Shape::IntArray => int_array_event(&spec.run_id, i, spec.size),
                Shape::Skewed => skewed_event(&mut rng, &spec.run_id, i),
            };
            pending.push_back(
                self.publish_nowait(&routing_key, &body, BasicProperties::default())
                    .await?,
            );
            if pending.len() >= 1_000
                && let Some(confirm) = pending.pop_front()
            {
                confirm.await?;
            }
        }
        for confirm in pending {
            confirm.await?;
        }
        Ok(start.elapsed())
    }
}

/// A generation-1 envelope whose payload is one array of about `size / 2`
/// single-digit integers.
pub fn int_array_event(run_id: &str, i: u64, size: usize) -> (String, Vec<u8>) {
    let head = format!(
        r#"{{"id":"{run_id}-{i:010}","event_type":"load.int_array","source":"loader","data":["#
    );
    let n = (size.saturating_sub(head.len() + 2) / 2).max(1);
    let mut body = Vec::with_capacity(head.len() + 2 * n + 2);
    body.extend_from_slice(head.as_bytes());
    for k in 0..n {
        if k > 0 {
            body.push(b',');
        }
        body.push(b'0' + (k % 10) as u8);
    }
    body.extend_from_slice(b"]}");
    ("load.int_array".into(), body)
}

/// A generation-1 envelope drawn as `loadtest/fill-skewed.sql` draws its rows: 60
/// event types with a cubic skew, 12 sources (nine in ten from the type's home),
/// 10% target `candybar` and 5% `hermes`, sessions named as the fill names them
/// (`md5('session-' || k)`, `k` with the fill's power law, so live events join its
/// large sessions), 0.3% up to an hour late, and the fill's ~700-byte payload
/// (`agent {name, model}`, `repo {name}` of 5,000 skewed names, `status` `error`
/// in 2%, a text, a counter). Its size is the fill's, whatever `--size` says.
pub fn skewed_event(rng: &mut impl rand::Rng, run_id: &str, i: u64) -> (String, Vec<u8>) {
    use md5::Digest;
    let md5 = |text: &str| {
        md5::Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut u = || rng.random::<f64>();
    let t = (60.0 * u().powi(3)) as u32;
    let source = if u() < 0.9 {
        t % 12
    } else {
        (12.0 * u().powi(2)) as u32
    };
    let target = match u() {
        x if x < 0.10 => Some("candybar"),
        x if x < 0.15 => Some("hermes"),
        _ => None,
    };
    let agent = (40.0 * u().powi(2)) as u32;
    let model = ["opus", "sonnet", "haiku", "gpt"][(4.0 * u().powi(2)) as usize];
    let repo = (5000.0 * u().powi(2)) as u32;
    let status = if u() < 0.02 { "error" } else { "ok" };
    let session = (200_000.0 * u().powf(4.5)) as u32;
    let late = if u() < 0.003 {
        chrono::Duration::milliseconds((u() * 3_600_000.0) as i64)
    } else {
        chrono::Duration::zero()
    };
    let text = "the agent read the diff, ran the tests and wrote a summary; ".repeat(10);
    let from = (i % 40) as usize;
    let event_type = format!("evt.{t}.done");
    let body = serde_json::json!({
        "id": md5(&format!("{run_id}-{i}")),
        "event_type": event_type,
        "source": format!("svc-{source}"),
        "target": target,
        "timestamp": (chrono::Utc::now() - late).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "session_id": md5(&format!("session-{session}")),
        "correlation_id": md5(&format!("corr-{run_id}-{}", i / 5)),
        "data": {
            "agent": { "name": format!("agent-{agent}"), "model": model },
            "repo": { "name": format!("repo-{repo}") },
            "status": status,
            "message": format!("step {i} of task {}: {}", md5(&i.to_string()), &text[from..(from + 480).min(text.len())]),
            "counter": i,
        }
    });
    (event_type, serde_json::to_vec(&body).unwrap_or_default())
}

/// A realistic envelope of the given generation, padded to about `size` bytes.
/// Returns the routing key and the body.
pub fn sample_event(run_id: &str, i: u64, size: usize, generation: u8) -> (String, Vec<u8>) {
    sample_event_at(run_id, i, size, generation, chrono::Utc::now())
}

/// [`sample_event`] dated `at`.
pub fn sample_event_at(
    run_id: &str,
    i: u64,
    size: usize,
    generation: u8,
    at: chrono::DateTime<chrono::Utc>,
) -> (String, Vec<u8>) {
    let session = format!("session-{}", i % 97);
    let kinds = [
        "transcription.segment.completed",
        "agent.task.started",
        "repo.decision.recorded",
        "calendar.sync.finished",
    ];
    let kind = kinds[(i % kinds.len() as u64) as usize];
    let id = format!("{run_id}-{i:010}");
    let now = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut body = match generation {
        1 => serde_json::json!({
            "id": id, "event_type": kind, "source": "whisperlivekit", "target": "candybar",
            "timestamp": now, "session_id": session, "correlation_id": format!("corr-{}", i % 1009),
            "data": { "text": "", "confidence": 0.93, "seq": i }
        }),
        2 => serde_json::json!({
            "event_id": id, "event_type": kind, "timestamp": now, "version": "1.0.0",
            "source": { "host": "big-chungus", "type": "agent", "app": "n8n" },
            "correlation_ids": [format!("corr-{}", i % 1009)],
            "agent_context": { "type": "claude-code", "name": "loader", "instance_id": "1" },
            "payload": { "session_id": session, "text": "", "seq": i }
        }),
        _ => serde_json::json!({
            "specversion": "1.0", "id": id, "type": format!("bloodbank.v1.{kind}"),
            "source": "hermes://agent/33god-pm", "subject": kind, "time": now,
            "datacontenttype": "application/json", "correlationid": format!("corr-{}", i % 1009),
            "producer": "loader", "service": "33god", "domain": "repo", "kind": "event",
            "sessionid": session, "data": { "text": "", "seq": i }
        }),
    };
    let base = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(0);
    let pad = size.saturating_sub(base);
    let member = if generation == 2 { "payload" } else { "data" };
    if let Some(text) = body.get_mut(member).and_then(|d| d.get_mut("text")) {
        *text = serde_json::Value::String(
            "lorem ipsum dolor sit amet ".repeat(pad / 27 + 1)[..pad].to_owned(),
        );
    }
    let routing_key = kind.to_owned();
    (routing_key, serde_json::to_vec(&body).unwrap_or_default())
}

/// [`sample_event`] without the envelope's time member.
pub fn sample_event_without_time(
    run_id: &str,
    i: u64,
    size: usize,
    generation: u8,
) -> (String, Vec<u8>) {
    let (routing_key, body) = sample_event(run_id, i, size, generation);
    let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("timestamp");
        object.remove("time");
    }
    (routing_key, serde_json::to_vec(&value).unwrap_or_default())
}

/// Headers RabbitMQ reads as extra routing keys (sender-selected distribution):
/// a replay to another exchange must not be routed by what a publisher put there.
pub const DISTRIBUTION_HEADERS: [&str; 2] = ["CC", "BCC"];

/// The routing key a delivery was received with: the stored one, or, when decode
/// had to remove NUL from it, the original it kept in `routing_key_hex`.
pub fn received_routing_key(stored: &str, properties: &serde_json::Value) -> String {
    properties
        .get("routing_key_hex")
        .and_then(|h| h.as_str())
        .and_then(unhex)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| stored.to_owned())
}

/// The AMQP properties stored with a delivery (`properties`, as decode wrote them),
/// turned back into properties to publish with, and the distribution headers left
/// out. Headers come from their wire form (`headers_amqp`), so every value keeps
/// its AMQP type; rows stored before it was kept fall back to the JSON, where
/// header integers come back as 64-bit integers, `{"$hex": …}` as bytes and
/// `{"$timestamp": …}` as a timestamp. `user_id` is left out: the broker refuses
/// one that is not the publishing connection's own user.
fn properties_from_json(p: &serde_json::Value) -> (BasicProperties, Vec<&'static str>) {
    use lapin::types::ShortString;
    let text = |key: &str| {
        p.get(key)
            .and_then(|v| v.as_str())
            .map(|s| ShortString::from(s.to_owned()))
    };
    let mut props = BasicProperties::default();
    if let Some(v) = text("message_id") {
        props = props.with_message_id(v);
    }
    if let Some(v) = text("content_type") {
        props = props.with_content_type(v);
    }
    if let Some(v) = text("content_encoding") {
        props = props.with_content_encoding(v);
    }
    if let Some(v) = text("correlation_id") {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = text("type") {
        props = props.with_type(v);
    }
    if let Some(v) = text("app_id") {
        props = props.with_app_id(v);
    }
    if let Some(v) = text("reply_to") {
        props = props.with_reply_to(v);
    }
    if let Some(v) = text("expiration") {
        props = props.with_expiration(v);
    }
    if let Some(v) = text("cluster_id") {
        props = props.with_cluster_id(v);
    }
    if let Some(v) = p.get("timestamp").and_then(|v| v.as_u64()) {
        props = props.with_timestamp(v);
    }
    if let Some(v) = p.get("priority").and_then(|v| v.as_u64()) {
        props = props.with_priority(v.min(255) as u8);
    }
    if let Some(v) = p.get("delivery_mode").and_then(|v| v.as_u64()) {
        props = props.with_delivery_mode(v.min(255) as u8);
    }
    let wire = p
        .get(super::decode::HEADERS_WIRE)
        .and_then(|h| h.as_str())
        .and_then(unhex)
        .and_then(|b| {
            lapin::types::parsing::parse_field_table(b.as_slice())
                .ok()
                .map(|(_, t)| t)
        });
    let headers = match (wire, p.get("headers")) {
        (Some(t), _) => Some(t),
        (None, Some(serde_json::Value::Object(h))) => Some(table_from_json(h)),
        (None, _) => None,
    };
    let mut stripped = Vec::new();
    if let Some(mut headers) = headers {
        for name in DISTRIBUTION_HEADERS {
            if headers.inner().contains_key(name) {
                headers = headers
                    .inner()
                    .iter()
                    .filter(|(k, _)| k.as_str() != name)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
                    .into();
                stripped.push(name);
            }
        }
        props = props.with_headers(headers);
    }
    (props, stripped)
}

fn table_from_json(map: &serde_json::Map<String, serde_json::Value>) -> lapin::types::FieldTable {
    let mut table = lapin::types::FieldTable::default();
    for (k, v) in map {
        table.insert(k.clone().into(), value_from_json(v));
    }
    table
}

fn value_from_json(v: &serde_json::Value) -> lapin::types::AMQPValue {
    use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, LongString};
    use serde_json::Value as J;
    match v {
        J::Null => AMQPValue::Void,
        J::Bool(b) => AMQPValue::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        J::String(s) => AMQPValue::LongString(LongString::from(s.clone())),
        J::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_from_json).collect::<Vec<_>>(),
        )),
        J::Object(o) if o.len() == 1 => {
            if let Some(bytes) = o.get("$hex").and_then(|h| h.as_str()).and_then(unhex) {
                AMQPValue::ByteArray(ByteArray::from(bytes))
            } else if let Some(t) = o.get("$timestamp").and_then(|t| t.as_u64()) {
                AMQPValue::Timestamp(t)
            } else if let Some(d) = o.get("$decimal") {
                AMQPValue::DecimalValue(DecimalValue {
                    scale: d.get("scale").and_then(|s| s.as_u64()).unwrap_or(0) as u8,
                    value: d.get("value").and_then(|s| s.as_u64()).unwrap_or(0) as u32,
                })
            } else {
                AMQPValue::FieldTable(table_from_json(o))
            }
        }
        J::Object(o) => AMQPValue::FieldTable(table_from_json(o)),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A publisher to any exchange, for replays: nothing is declared (the exchange
/// must exist), every publish waits for the broker's confirm, and a message the
/// broker could not route is an error (`mandatory`), never silently lost.
pub struct Republisher {
    connection: Connection,
    channel: Channel,
}

/// Why a replay publish failed.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("broker")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm the message (nacked)")]
    Nacked,
    #[error("exchange {exchange:?} does not exist on the broker (declare it, or name another)")]
    NoExchange { exchange: String },
    #[error(
        "the broker could not route the message: exchange {exchange:?} has no binding for {routing_key:?}"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl Republisher {
    pub async fn connect(url: &str) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Refuses an exchange that does not exist, before anything is published to it.
    pub async fn check_exchange(&self, exchange: &str) -> Result<(), RepublishError> {
        if super::probe::exchange_exists(&self.connection, exchange).await? {
            Ok(())
        } else {
            Err(RepublishError::NoExchange {
                exchange: exchange.to_owned(),
            })
        }
    }

    /// Publishes `body` exactly as it was received: with the AMQP properties
    /// stored beside it (as decode wrote them; the headers from their wire form,
    /// so every value keeps its AMQP type) and the routing key byte for byte (the
    /// stored one had NUL removed: `routing_key_hex` keeps the original). The
    /// `CC` and `BCC` headers are left out (logged): RabbitMQ would route the copy
    /// to the keys they name on the target exchange too. Waits for the confirm.
    /// `replay_of` (the installation's key and the event's `seq`) marks the message
    /// with [`crate::model::replay_mark::HEADER`], a MAC over the routing key and body sent.
    pub async fn publish(
        &self,
        exchange: &str,
        stored_routing_key: &str,
        body: &[u8],
        properties: &serde_json::Value,
        replay_of: Option<(&crate::model::replay_mark::ReplayKey, i64)>,
    ) -> Result<(), RepublishError> {
        self.start(exchange, stored_routing_key, body, properties, replay_of)
            .await?
            .await
    }

    /// As [`Republisher::publish`], without waiting for the confirm: the returned
    /// future resolves to it. The broker confirms in publishing order.
    pub async fn start(
        &self,
        exchange: &str,
        stored_routing_key: &str,
        body: &[u8],
        properties: &serde_json::Value,
        replay_of: Option<(&crate::model::replay_mark::ReplayKey, i64)>,
    ) -> Result<
        impl std::future::Future<Output = Result<(), RepublishError>> + Send + 'static,
        RepublishError,
    > {
        let routing_key = received_routing_key(stored_routing_key, properties);
        let (mut props, stripped) = properties_from_json(properties);
        if !stripped.is_empty() {
            tracing::info!(
                headers = ?stripped,
                exchange,
                "replay: sender-selected distribution headers left out"
            );
        }
        if let Some((key, seq)) = replay_of {
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(
                crate::model::replay_mark::HEADER.into(),
                lapin::types::AMQPValue::LongString(key.mark(seq, &routing_key, body).into()),
            );
            props = props.with_headers(headers);
        }
        let pending = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?;
        let exchange = exchange.to_owned();
        Ok(async move {
            match pending.await? {
                lapin::Confirmation::Ack(None) => Ok(()),
                lapin::Confirmation::Ack(Some(_)) => Err(RepublishError::Unroutable {
                    exchange,
                    routing_key,
                }),
                _ => Err(RepublishError::Nacked),
            }
        })
    }
}
