//! The RabbitMQ consumer: the only lapin user besides the load publisher.
//!
//! Declares the durable topic exchange (if missing), the durable queue and its
//! bindings, sets QoS, consumes with manual acks, decodes each delivery and sends it
//! into the bounded channel. It never acks: the tokens it hands out are settled by
//! the sink after COMMIT. When the connection drops it reconnects with back-off;
//! tokens of the old channel then fail to ack and the broker redelivers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

use super::MemoryShare;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inbound;
use super::ack::{AckChannel, AckError, AckToken, Acknowledge};
use super::decode::{self, FrameRepairs, Properties, RawDelivery};
use super::prefetch::Prefetch;
use crate::metrics::Metrics;
use crate::model::replay_mark::{self, Mark};
use crate::retry::Backoff;

/// The kind of queue this service declares and consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    /// A quorum queue with a delivery limit: a message that has been delivered
    /// RABBIT_DELIVERY_LIMIT times without an ack (because it killed the consumer,
    /// say) is moved by the broker to `<queue>.parked` instead of looping forever.
    Quorum,
}

/// What the consumer needs to know.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub url: String,
    pub exchange: String,
    pub queue: String,
    pub bindings: Vec<String>,
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message before the broker parks it.
    pub delivery_limit: u32,
    pub prefetch_count: u16,
    pub retry_max_backoff: Duration,
    /// How often the queue's depth is read from the broker.
    pub queue_depth_interval: Duration,
    /// Decoded records held between the consumer and COMMIT, in bytes at most.
    pub max_inflight_bytes: usize,
    /// The installation's replay secret (`replay_mark`): only a delivery whose
    /// mark it authenticates is taken for a replay. `None`: every mark is stored.
    pub replay_key: Option<crate::model::replay_mark::ReplayKey>,
}

/// Whether the consumer is connected, for health checks.
#[derive(Debug, Default)]
pub struct BrokerStatus {
    connected: AtomicBool,
}

impl BrokerStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The broker connection left open after the consumer stopped, so the sink can
/// still ack what it holds. Close it once the sink is done.
pub struct BrokerLink {
    connection: Arc<Connection>,
    channel: Channel,
}

impl BrokerLink {
    /// Closes the consuming channel, then the connection, each waiting for the
    /// broker's close-ok, so nothing is left closing when the connection goes.
    pub async fn close(self) {
        if let Err(e) = bounded(self.channel.close(200, "candystore shutting down".into())).await {
            tracing::debug!(error = %e, "consuming channel already closed");
        }
        if let Err(e) = bounded(
            self.connection
                .close(200, "candystore shutting down".into()),
        )
        .await
        {
            tracing::debug!(error = %e, "broker connection already closed");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("broker")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    Cancelled,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// The longest any one call to the broker (connect, declare, QoS, consume, ack,
/// close) may take. A broker that stops answering is treated as a lost connection.
pub const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one broker call within [`BROKER_CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(SourceError::Broker),
        Err(_) => Err(SourceError::Timeout(BROKER_CALL_TIMEOUT)),
    }
}

enum Outcome {
    /// Asked to stop; the connection and the consuming channel stay open for the
    /// final acks.
    Stopped(Arc<Connection>, Channel),
    /// The writer is gone: nothing more to do.
    WriterGone,
}

/// Consumes until `stop` fires, reconnecting with back-off on any broker failure.
pub async fn run(
    cfg: SourceConfig,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    status: Arc<BrokerStatus>,
    stop: CancellationToken,
) -> Option<BrokerLink> {
    let mut backoff = Backoff::new(Duration::from_millis(100), cfg.retry_max_backoff);
    // Outlives reconnects: records of a lost session may still be in the pipeline.
    let budget = Arc::new(tokio::sync::Semaphore::new(cfg.max_inflight_bytes));
    let mut attempt: u64 = 0;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        if attempt > 0 {
            metrics.reconnects.inc();
        }
        attempt += 1;
        let result = session(&cfg, &tx, &metrics, &status, &stop, &mut backoff, &budget).await;
        status.connected.store(false, Ordering::Relaxed);
        metrics.consumer_connected.set(0);
        match result {
            Ok(Outcome::Stopped(connection, channel)) => {
                return Some(BrokerLink {
                    connection,
                    channel,
                });
            }
            Ok(Outcome::WriterGone) => return None,
            Err(_) => {}
        }
        let wait = backoff.next_wait();
        if let Err(e) = &result {
            let error = crate::telemetry::error_chain(e);
            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "broker connection lost");
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    cfg: &SourceConfig,
    tx: &mpsc::Sender<Inbound>,
    metrics: &Arc<Metrics>,
    status: &BrokerStatus,
    stop: &CancellationToken,
    backoff: &mut Backoff,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<Outcome, SourceError> {
    let props = ConnectionProperties::default().with_connection_name("candystore".into());
    let connection = Arc::new(bounded(Connection::connect(&cfg.url, props)).await?);
    let channel = bounded(connection.create_channel()).await?;
    bounded(declare(&channel, cfg)).await?;
    let mut prefetch = Prefetch::new(cfg.prefetch_count, cfg.max_inflight_bytes);
    bounded(channel.basic_qos(prefetch.current(), BasicQosOptions::default())).await?;
    // One consumer at a time: a new prefetch subscribes anew only once the
    // cancelled consumer is drained and settled (below).
    let mut consumer = Some(subscribe(&channel, cfg).await?);
    metrics.prefetch.set(i64::from(prefetch.current()));
    let acks = AckChannel::new(LapinAcks {
        channel: channel.clone(),
        _connection: connection.clone(),
    });
    let parked = (cfg.queue_type == QueueType::Quorum).then(|| parked_queue(&cfg.queue));
    let depth = AbortOnDrop(Some(tokio::spawn(poll_depth(
        connection.clone(),
        cfg.queue.clone(),
        parked,
        cfg.queue_depth_interval,
        metrics.clone(),
        stop.clone(),
    ))));
    status.connected.store(true, Ordering::Relaxed);
    metrics.consumer_connected.set(1);
    backoff.reset();
    tracing::info!(queue = %cfg.queue, exchange = %cfg.exchange, prefetch = cfg.prefetch_count, "consuming");

    // Asked to stop: cancel the consumer, let the queue-depth task close its channel,
    // and hand back what the sink still acks on.
    let stopped = |connection: Arc<Connection>,
                   channel: Channel,
                   tag: String,
                   depth: AbortOnDrop| async move {
        if let Err(e) =
            bounded(channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())).await
        {
            tracing::debug!(error = %e, "basic.cancel failed");
        }
        depth.finish(CHANNEL_CLOSE_WAIT).await;
        Ok(Outcome::Stopped(connection, channel))
    };
    // A new prefetch, waiting for the cancelled consumer to be drained and for every
    // delivery it handed over to be settled: RabbitMQ counts unacked deliveries per
    // consumer, so a new consumer subscribed while the old one's are in hand would
    // take a whole prefetch more (PREFETCH_COUNT would not bound what is in hand).
    let mut pending: Option<u16> = None;
    loop {
        if consumer.is_none() {
            let Some(n) = pending.take() else {
                return Err(SourceError::Cancelled);
            };
            // Normally everything in hand settles within a batch write. Should some of
            // it not (a write retrying), subscribe after SETTLE_WAIT with what is left
            // of the prefetch, so the bound holds and intake never stalls.
            let window = loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return stopped(connection, channel, String::new(), depth).await,
                    _ = acks.all_settled() => break n,
                    _ = tokio::time::sleep(SETTLE_WAIT) => {
                        let held = acks.unsettled();
                        if held < usize::from(n) {
                            break n - held as u16;
                        }
                    }
                }
            };
            bounded(channel.basic_qos(window, BasicQosOptions::default())).await?;
            consumer = Some(subscribe(&channel, cfg).await?);
            metrics.prefetch.set(i64::from(window));
            continue;
        }
        let consumer_tag = consumer
            .as_ref()
            .map(|c: &Subscription| c.tag.clone())
            .unwrap_or_default();
        let Some(current) = consumer.as_mut() else {
            return Err(SourceError::Cancelled);
        };
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => return stopped(connection, channel, consumer_tag, depth).await,
            next = current.consumer.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                // A consumer we cancelled to change the prefetch is drained.
                None if pending.is_some() => {
                    consumer = None;
                    continue;
                }
                None => return Err(SourceError::Cancelled),
            },
        };
        let received = Instant::now();
        let tag = delivery.delivery_tag;
        let before = prefetch.current();
        if let Some(n) = prefetch.observe(delivery.data.len()) {
            if n < before {
                tracing::info!(
                    prefetch = n,
                    bytes = delivery.data.len(),
                    "prefetch lowered to fit MAX_INFLIGHT_BYTES"
                );
            } else {
                tracing::debug!(prefetch = n, "prefetch raised");
            }
            if pending.is_none() {
                bounded(
                    channel
                        .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await?;
            }
            pending = Some(n);
        }
        let consumer_tag = consumer.as_ref().map(|c| c.tag.clone()).unwrap_or_default();
        tracing::trace!(tag, routing_key = %delivery.routing_key, bytes = delivery.data.len(), "delivery received");
        let mut raw = raw_delivery(delivery);
        let mark = replay_mark::check(
            cfg.replay_key.as_ref(),
            raw.properties
                .headers
                .as_ref()
                .and_then(|h| h.get(replay_mark::HEADER)),
            &raw.routing_key,
            &raw.body,
        );
        raw.authentic_replay = mark == Mark::Authentic;
        if mark == Mark::Unauthenticated {
            metrics.replay_marks_unauthenticated.inc();
            tracing::debug!(tag, "replay mark does not check out: stored like any event");
        }
        let record = decode::decode(raw);
        metrics.observe_received(&record);
        let in_flight = crate::metrics::Raised::new(&metrics.in_flight);
        // Wait for room under MAX_INFLIGHT_BYTES (a record larger than the whole
        // budget takes all of it). Meanwhile nothing is read, acks go on, and the
        // broker stops at PREFETCH_COUNT unacked deliveries.
        let share = record.size_bytes().clamp(1, cfg.max_inflight_bytes) as u32;
        let memory = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                drop(in_flight);
                return stopped(connection, channel, consumer_tag, depth).await;
            }
            share = MemoryShare::acquire(budget, cfg.max_inflight_bytes, share, &metrics.inflight_bytes) => match share {
                Some(s) => s,
                None => return Ok(Outcome::WriterGone),
            },
        };
        let inbound = Inbound {
            record,
            ack: AckToken::new(acks.clone(), tag),
            received,
            memory,
            in_flight,
        };
        tokio::select! {
            biased;
            sent = tx.send(inbound) => {
                if sent.is_err() {
                    return Ok(Outcome::WriterGone);
                }
                metrics.channel_sent.inc();
            }
            _ = stop.cancelled() => {
                // The record in hand is dropped unacked: the broker redelivers it.
                return stopped(connection, channel, consumer_tag, depth).await;
            }
        }
    }
}

/// One `basic.consume` and its tag.
struct Subscription {
    tag: String,
    consumer: lapin::Consumer,
}

async fn subscribe(channel: &Channel, cfg: &SourceConfig) -> Result<Subscription, SourceError> {
    let tag = format!("candystore-{}", uuid::Uuid::new_v4());
    let consumer = bounded(channel.basic_consume(
        cfg.queue.as_str().into(),
        tag.as_str().into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await?;
    Ok(Subscription { tag, consumer })
}

/// How long a new prefetch waits for the deliveries in hand to settle before it
/// subscribes with what is left of it.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// How long a stopping session waits for its side channel to close cleanly.
const CHANNEL_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Aborts a background task when the session that started it ends (a lost
/// connection); on a clean stop, `finish` lets it end on its own first.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Waits up to `within` for the task to end by itself (it watches the same stop
    /// token), then aborts it.
    async fn finish(mut self, within: Duration) {
        if let Some(handle) = self.0.take() {
            let abort = handle.abort_handle();
            if tokio::time::timeout(within, handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Reads the queue's depth (ready messages) and consumer count at an interval, on
/// a channel of its own: the lag operators watch.
async fn poll_depth(
    connection: Arc<Connection>,
    queue: String,
    parked: Option<String>,
    every: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let Ok(channel) = bounded(connection.create_channel()).await else {
        return;
    };
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // Closed here, not dropped: a channel still closing when the connection
                // closes makes lapin log an error on every clean shutdown.
                if let Err(e) = channel.close(200, "candystore shutting down".into()).await {
                    tracing::debug!(error = %e, "closing the queue-depth channel");
                }
                return;
            }
            _ = ticks.tick() => {}
        }
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let read = |name: String| {
            let channel = channel.clone();
            async move {
                bounded(channel.queue_declare(name.as_str().into(), passive, FieldTable::default()))
                    .await
            }
        };
        match read(queue.clone()).await {
            Ok(q) => {
                metrics.queue_depth.set(i64::from(q.message_count()));
                metrics.queue_consumers.set(i64::from(q.consumer_count()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the queue depth");
                return;
            }
        }
        if let Some(parked) = &parked {
            match read(parked.clone()).await {
                Ok(q) => metrics.parked_messages.set(i64::from(q.message_count())),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the parked queue's depth");
                    return;
                }
            }
        }
    }
}

/// The queue a quorum queue's broker moves a message to once it has been
/// delivered RABBIT_DELIVERY_LIMIT times without an ack.
pub fn parked_queue(queue: &str) -> String {
    format!("{queue}.parked")
}

async fn declare(channel: &Channel, cfg: &SourceConfig) -> Result<(), lapin::Error> {
    if !cfg.exchange.is_empty() {
        declare_exchange(channel, &cfg.exchange).await?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut args = FieldTable::default();
    if cfg.queue_type == QueueType::Quorum {
        // Second line of defence: a message that kills the process before its
        // batch commits is redelivered at most `delivery_limit` times, then set
        // aside by the broker (alerted on) instead of crashing every restart.
        let parked = parked_queue(&cfg.queue);
        channel
            .queue_declare(parked.as_str().into(), durable, FieldTable::default())
            .await?;
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(cfg.delivery_limit as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(parked.as_str().into()),
        );
    }
    channel
        .queue_declare(cfg.queue.as_str().into(), durable, args)
        .await?;
    if !cfg.exchange.is_empty() {
        for key in &cfg.bindings {
            channel
                .queue_bind(
                    cfg.queue.as_str().into(),
                    cfg.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Declares the durable topic exchange Bloodbank publishes to, if it is missing.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

struct LapinAcks {
    channel: Channel,
    /// Keeps the connection open while any token of this channel is unsettled.
    _connection: Arc<Connection>,
}

impl Acknowledge for LapinAcks {
    fn ack(&self, tag: u64, multiple: bool) -> BoxFuture<'_, Result<(), AckError>> {
        Box::pin(async move {
            bounded(self.channel.basic_ack(tag, BasicAckOptions { multiple }))
                .await
                .map_err(|e| AckError {
                    tag,
                    reason: e.to_string(),
                })
        })
    }
}

fn raw_delivery(d: lapin::message::Delivery) -> RawDelivery {
    let p = &d.properties;
    let mut repairs = FrameRepairs::default();
    // The patched AMQP parser hands over short strings that were not UTF-8 with
    // U+FFFD in place of the bad bytes (patches/README.md): note which ones.
    let mut text = |field: &'static str, v: &str| {
        if v.contains(char::REPLACEMENT_CHARACTER) && !repairs.not_utf8.contains(&field) {
            repairs.not_utf8.push(field);
        }
        v.to_owned()
    };
    let exchange = text("exchange", d.exchange.as_str());
    let routing_key = text("routing_key", d.routing_key.as_str());
    let mut s = |field: &'static str, v: &Option<lapin::types::ShortString>| {
        v.as_ref().map(|s| text(field, s.as_str()))
    };
    let message_id = s("message_id", p.message_id());
    let content_type = s("content_type", p.content_type());
    let content_encoding = s("content_encoding", p.content_encoding());
    let correlation_id = s("correlation_id", p.correlation_id());
    let kind = s("type", p.kind());
    let app_id = s("app_id", p.app_id());
    let user_id = s("user_id", p.user_id());
    let reply_to = s("reply_to", p.reply_to());
    let expiration = s("expiration", p.expiration());
    let cluster_id = s("cluster_id", p.cluster_id());
    let mut headers_json = HeadersJson::default();
    let headers = p.headers().as_ref().map(|t| headers_json.table(t, 1));
    if headers_json.replaced_text {
        repairs.not_utf8.push("headers");
    }
    repairs.headers_too_deep = headers_json.too_deep;
    let properties = Properties {
        message_id,
        timestamp: *p.timestamp(),
        content_type,
        content_encoding,
        correlation_id,
        kind,
        app_id,
        user_id,
        reply_to,
        expiration,
        priority: *p.priority(),
        delivery_mode: *p.delivery_mode(),
        cluster_id,
        headers,
        headers_wire: p.headers().as_ref().and_then(headers_wire),
        headers_sanitized: headers_json.sanitized,
    };
    RawDelivery {
        exchange,
        routing_key,
        received_at: chrono::Utc::now(),
        properties,
        repairs,
        body: d.data,
        authentic_replay: false,
    }
}

/// Headers in AMQP's wire form, as hex: what `properties.headers_amqp` keeps, so a
/// replay publishes every header value with its own AMQP type.
fn headers_wire(t: &FieldTable) -> Option<String> {
    let table = lapin::types::generation::gen_field_table(t);
    let bytes = cookie_factory::gen_simple(table, Vec::new()).ok()?;
    Some(crate::model::hex::encode(&bytes))
}

/// Converts AMQP headers to JSON. Byte strings that are not clean UTF-8 text are
/// kept as `{"$hex": ...}`; NUL is removed from names and short strings.
#[derive(Debug, Default)]
pub struct HeadersJson {
    /// A name or value was rewritten (NUL removed, bytes kept as hex).
    pub sanitized: bool,
    /// A name or short string held U+FFFD: the parser replaced bytes that were not UTF-8.
    pub replaced_text: bool,
    /// A table or array sat deeper than the parser decodes (its content arrived as bytes).
    pub too_deep: bool,
}

impl HeadersJson {
    /// The table at nesting level `depth` (1 for the headers themselves).
    pub fn table(
        &mut self,
        t: &FieldTable,
        depth: usize,
    ) -> serde_json::Map<String, serde_json::Value> {
        t.inner()
            .iter()
            .map(|(k, v)| (self.text(k.as_str()), self.value(v, depth + 1)))
            .collect()
    }

    fn text(&mut self, s: &str) -> String {
        if s.contains(char::REPLACEMENT_CHARACTER) {
            self.replaced_text = true;
        }
        if s.contains('\0') {
            self.sanitized = true;
            s.replace('\0', "")
        } else {
            s.to_owned()
        }
    }

    fn value(&mut self, v: &AMQPValue, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        let hex = |b: &[u8]| serde_json::json!({ "$hex": crate::model::hex::encode(b) });
        if depth > lapin::types::parsing::MAX_NESTING_DEPTH {
            // Only a container cut off by the parser, or the innermost value of a
            // publisher nesting this deep, can sit here.
            self.too_deep = true;
        }
        match v {
            AMQPValue::Boolean(b) => J::Bool(*b),
            AMQPValue::ShortShortInt(n) => (*n).into(),
            AMQPValue::ShortShortUInt(n) => (*n).into(),
            AMQPValue::ShortInt(n) => (*n).into(),
            AMQPValue::ShortUInt(n) => (*n).into(),
            AMQPValue::LongInt(n) => (*n).into(),
            AMQPValue::LongUInt(n) => (*n).into(),
            AMQPValue::LongLongInt(n) => (*n).into(),
            AMQPValue::Float(f) => float(f64::from(*f)),
            AMQPValue::Double(f) => float(*f),
            AMQPValue::DecimalValue(d) => {
                serde_json::json!({ "$decimal": { "scale": d.scale, "value": d.value } })
            }
            AMQPValue::ShortString(s) => J::String(self.text(s.as_str())),
            AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
                Ok(text) if !text.contains('\0') => J::String(text.to_owned()),
                _ => {
                    self.sanitized = true;
                    hex(s.as_bytes())
                }
            },
            AMQPValue::FieldArray(a) => J::Array(
                a.as_slice()
                    .iter()
                    .map(|v| self.value(v, depth + 1))
                    .collect(),
            ),
            AMQPValue::Timestamp(t) => serde_json::json!({ "$timestamp": t }),
            AMQPValue::FieldTable(t) => J::Object(self.table(t, depth)),
            AMQPValue::ByteArray(b) => hex(b.as_slice()),
            AMQPValue::Void => J::Null,
        }
    }
}

fn float(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(f.to_string()))
}
