//! Every metric, in one struct that owns its registry.
//!
//! Names follow `docs/contract.md`: `candystore_` prefix, `_total`
//! counters, base units. Labels carry bounded values only (event types and sources
//! are the contract's labels; no id ever becomes a label).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::HashSet;
use std::sync::RwLock;

use crate::envelope::{Record, RejectReason};

/// Longest label value taken from publishers' data; a longer one counts as `other`.
pub const MAX_LABEL_BYTES: usize = 100;
/// Every `cause` of `candystore_write_retries_total` (`sink::WriteError::cause`):
/// created at 0 so dashboards show 0, not "no data".
/// The label values of `candystore_audit_witness_failures_total`
/// (`audit::publish::Outcome::reason`).
pub const WITNESS_FAILURE_REASONS: [&str; 4] = ["rollback", "bad_proof", "unreachable", "refused"];

pub const WRITE_RETRY_CAUSES: [&str; 10] = [
    "lock_timeout",
    "connection_closed",
    "connection",
    "serialization",
    "resources",
    "server_shutdown",
    "schema",
    "server",
    "timeout",
    "refused",
];
/// Distinct values one such label may take; later new values count as `other`.
pub const MAX_LABEL_VALUES: usize = 500;
/// The value that stands for every value past the bounds.
pub const OTHER_LABEL: &str = "other";

/// The values a label taken from publishers' data (event type, source) has
/// shown so far, so that no publisher can grow the scrape without bound: a value
/// longer than [`MAX_LABEL_BYTES`], or new once [`MAX_LABEL_VALUES`] are known,
/// is reported as [`OTHER_LABEL`].
#[derive(Debug, Default)]
pub struct LabelValues {
    known: RwLock<HashSet<Box<str>>>,
}

impl LabelValues {
    /// The value to use as a label: `value` itself when within bounds.
    pub fn admit<'a>(&self, value: &'a str) -> Option<&'a str> {
        if value.len() > MAX_LABEL_BYTES || value == OTHER_LABEL {
            return None;
        }
        if self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(value)
        {
            return Some(value);
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_LABEL_VALUES && !known.contains(value) {
            return None;
        }
        known.insert(value.into());
        Some(value)
    }
}

/// Storage latency spans 1 ms to 10 s.
/// Fine below 50 ms, where a healthy pipeline's latency lies (group commit
/// writes a light load within milliseconds), so quantiles interpolate closely.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    registry: Registry,
    event_types: LabelValues,
    sources: LabelValues,
    pub labels_capped: IntCounter,
    pub streams_open: IntGauge,
    pub inflight_bytes: IntGauge,
    pub prefetch: IntGauge,
    pub events_received: IntCounterVec,
    pub events_stored: IntCounterVec,
    pub events_failed: IntCounterVec,
    /// Supervised tasks (source, sink, each background job) that ended or panicked.
    pub task_failures: IntCounterVec,
    pub storage_latency: Histogram,
    pub storage_latency_last_ms: prometheus::Gauge,
    pub consumer_connected: IntGauge,
    pub database_connections: IntGauge,
    pub deliveries_received: IntCounter,
    pub duplicates: IntCounter,
    pub replays_ignored: IntCounter,
    pub replay_marks_unauthenticated: IntCounter,
    pub audit_unattested: IntCounter,
    /// When the tree job last completed a step (appending or finding nothing new).
    pub audit_last_seal: prometheus::Gauge,
    /// Leaves in the newest signed checkpoint.
    pub audit_tree_size: IntGauge,
    /// Checkpoints a witness refused or could not be sent, by reason.
    pub audit_witness_failures: IntCounterVec,
    /// Checkpoints that could not be written to CHECKPOINT_DIR.
    pub audit_checkpoint_dir_failures: IntCounter,
    pub dead_letters: IntCounterVec,
    pub sanitized: IntCounter,
    pub write_retries: IntCounterVec,
    pub batches_committed: IntCounter,
    pub batch_rows: Histogram,
    pub batch_bytes: Histogram,
    pub batch_age: Histogram,
    pub batch_duration: HistogramVec,
    pub batch_splits: IntCounter,
    pub acks: IntCounter,
    pub ack_frames: IntCounter,
    pub ack_failures: IntCounter,
    pub reconnects: IntCounter,
    pub channel_sent: IntCounter,
    pub channel_received: IntCounter,
    pub in_flight: IntGauge,
    pub events_decoded: IntCounter,
    pub nacks: IntCounter,
    pub queue_depth: IntGauge,
    pub parked_messages: IntGauge,
    pub queue_consumers: IntGauge,
    pub writers_connected: IntGauge,
    pub pool_size: IntGauge,
    pub pool_in_use: IntGauge,
    pub pool_waiting: IntGauge,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub storage: StorageMetrics,
}

/// The partitioned tables' names, the `table` label of the storage metrics
/// (`storage::Table::ALL`'s names; a test there keeps the two equal).
pub const PARTITIONED_TABLES: [&str; 2] = ["events", "dead_letter"];

/// What the maintenance job (`storage::maintain`) exports.
pub struct StorageMetrics {
    pub partitions: IntGaugeVec,
    pub oldest_partition: GaugeVec,
    pub partition_bytes: IntGaugeVec,
    pub default_rows: IntGaugeVec,
    pub created: IntCounterVec,
    pub dropped: IntCounterVec,
    pub archived: IntCounterVec,
    pub deferred: IntGaugeVec,
    pub unanalyzed: IntGaugeVec,
    pub analyzed: IntCounterVec,
    pub range_failures: IntCounterVec,
    pub last_run: Gauge,
    pub last_success: Gauge,
    pub failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        };
        let rows_buckets = prometheus::exponential_buckets(1.0, 2.0, 15).expect("valid buckets");
        let bytes_buckets =
            prometheus::exponential_buckets(1024.0, 4.0, 10).expect("valid buckets");
        Metrics {
            events_received: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_events_received_total",
                    "Events received from Bloodbank"
                ),
                &["event_type", "source"]
            )),
            events_stored: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_events_stored_total",
                    "Events stored (new rows committed)"
                ),
                &["event_type"]
            )),
            events_failed: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_events_failed_total",
                    "Deliveries that could not be stored as events (dead-lettered)"
                ),
                &["event_type", "error_type"]
            )),
            task_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_task_failures_total",
                    "Supervised tasks (source, sink, maintenance, audit-tree, catalog) that panicked or ended before shutdown; the first is logged and the process exits for its supervisor to restart it"
                ),
                &["task"]
            )),
            storage_latency: reg!(histogram(
                "candystore_storage_latency_seconds",
                "From delivery to the commit that stored it",
                LATENCY_BUCKETS
            )),
            storage_latency_last_ms: reg!(prometheus::Gauge::new(
                "candystore_storage_latency_milliseconds",
                "The latest committed batch's storage latency: its oldest delivery to its commit, in milliseconds (the original design's gauge; the histogram is candystore_storage_latency_seconds)"
            )),
            consumer_connected: reg!(IntGauge::new(
                "candystore_consumer_connected",
                "1 while consuming from the broker, else 0"
            )),
            database_connections: reg!(IntGauge::new(
                "candystore_database_connections",
                "Open PostgreSQL connections (writer and read pool)"
            )),
            deliveries_received: reg!(IntCounter::new(
                "candystore_deliveries_received_total",
                "Deliveries taken from the broker, events or not"
            )),
            duplicates: reg!(IntCounter::new(
                "candystore_events_duplicate_total",
                "Deliveries whose event was already stored (redeliveries and repeats)"
            )),
            replays_ignored: reg!(IntCounter::new(
                "candystore_replays_ignored_total",
                "Deliveries published by `candystore replay` (an authentic x-candystore-replay mark): acked, not stored again"
            )),
            replay_marks_unauthenticated: reg!(IntCounter::new(
                "candystore_replay_marks_unauthenticated_total",
                "Deliveries with an x-candystore-replay header this installation did not make for them: stored like any event"
            )),
            audit_last_seal: reg!(prometheus::Gauge::new(
                "candystore_audit_last_seal_timestamp_seconds",
                "When the audit tree's job last completed a step (Unix seconds); it stops moving when appending or signing fails"
            )),
            audit_tree_size: reg!(IntGauge::new(
                "candystore_audit_tree_size",
                "Leaves in the audit tree's newest signed checkpoint"
            )),
            audit_witness_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_audit_witness_failures_total",
                    "Checkpoints a witness did not cosign, by reason: rollback (409: it has seen a larger tree), bad_proof (422), unreachable, refused (any other answer)"
                ),
                &["reason"]
            )),
            audit_checkpoint_dir_failures: reg!(IntCounter::new(
                "candystore_audit_checkpoint_dir_failures_total",
                "Signed checkpoints that could not be written to CHECKPOINT_DIR"
            )),
            audit_unattested: reg!(IntCounter::new(
                "candystore_audit_unattested_total",
                "Leaves (or, before the tree, events) the audit job found without a valid writer attestation (AUDIT_KEY): written out of band"
            )),
            dead_letters: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_dead_letters_total",
                    "Rows written to dead_letter, by reason"
                ),
                &["reason"]
            )),
            sanitized: reg!(IntCounter::new(
                "candystore_events_sanitized_total",
                "Events stored with text PostgreSQL refuses removed"
            )),
            write_retries: reg!(IntCounterVec::new(
                Opts::new(
                    "candystore_write_retries_total",
                    "Batch writes retried, by cause"
                ),
                &["cause"]
            )),
            batches_committed: reg!(IntCounter::new(
                "candystore_batches_committed_total",
                "Batch transactions committed"
            )),
            batch_rows: reg!(histogram(
                "candystore_batch_rows",
                "Deliveries per committed batch",
                &rows_buckets
            )),
            batch_bytes: reg!(histogram(
                "candystore_batch_bytes",
                "Bytes held by a batch at flush",
                &bytes_buckets
            )),
            batch_age: reg!(histogram(
                "candystore_batch_age_seconds",
                "Age of a batch's oldest delivery at flush",
                LATENCY_BUCKETS
            )),
            batch_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "candystore_batch_duration_seconds",
                    "Time spent in each step of a batch write"
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["step"]
            )),
            batch_splits: reg!(IntCounter::new(
                "candystore_batch_splits_total",
                "Batches split to isolate a row PostgreSQL refused"
            )),
            acks: reg!(IntCounter::new(
                "candystore_acks_total",
                "Deliveries acknowledged after commit"
            )),
            ack_frames: reg!(IntCounter::new(
                "candystore_ack_frames_total",
                "basic.ack frames sent (multiple-acks cover many deliveries)"
            )),
            ack_failures: reg!(IntCounter::new(
                "candystore_ack_failures_total",
                "Acks that failed because their channel was gone (redelivered later)"
            )),
            reconnects: reg!(IntCounter::new(
                "candystore_reconnects_total",
                "Broker connections re-established after a failure"
            )),
            channel_sent: reg!(IntCounter::new(
                "candystore_channel_sent_total",
                "Records the consumer put into the batch channel"
            )),
            channel_received: reg!(IntCounter::new(
                "candystore_channel_received_total",
                "Records the writer took from the batch channel"
            )),
            in_flight: reg!(IntGauge::new(
                "candystore_events_in_flight",
                "Deliveries received and not yet settled (channel, batch, write)"
            )),
            events_decoded: reg!(IntCounter::new(
                "candystore_events_decoded_total",
                "Deliveries decoded into events (the rest are dead-lettered)"
            )),
            nacks: reg!(IntCounter::new(
                "candystore_nacks_total",
                "Deliveries nacked; Candystore never nacks (unsettled deliveries are redelivered), so this stays 0"
            )),
            queue_depth: reg!(IntGauge::new(
                "candystore_queue_depth",
                "Messages ready in RABBIT_QUEUE, read from the broker at an interval: the ingest lag"
            )),
            parked_messages: reg!(IntGauge::new(
                "candystore_parked_messages",
                "Messages the broker set aside in <RABBIT_QUEUE>.parked after RABBIT_DELIVERY_LIMIT unacked deliveries (quorum queues; always 0 for classic)"
            )),
            queue_consumers: reg!(IntGauge::new(
                "candystore_queue_consumers",
                "Consumers on RABBIT_QUEUE, read with the depth"
            )),
            writers_connected: reg!(IntGauge::new(
                "candystore_writer_connections",
                "Open connections of the batch writers"
            )),
            pool_size: reg!(IntGauge::new(
                "candystore_database_pool_size",
                "Connections open in the API's read pool"
            )),
            pool_in_use: reg!(IntGauge::new(
                "candystore_database_pool_in_use",
                "Read-pool connections lent to requests right now"
            )),
            pool_waiting: reg!(IntGauge::new(
                "candystore_database_pool_waiting",
                "Requests waiting for a read-pool connection"
            )),
            http_requests: reg!(IntCounterVec::new(
                Opts::new("candystore_http_requests_total", "HTTP requests served, by route, method and status"),
                &["route", "method", "status"]
            )),
            http_duration: reg!(HistogramVec::new(
                HistogramOpts::new("candystore_http_request_duration_seconds", "HTTP request latency by route")
                    .buckets(DURATION_BUCKETS.to_vec()),
                &["route"]
            )),
            labels_capped: reg!(IntCounter::new(
                "candystore_metric_labels_capped_total",
                "Event types or sources counted as \"other\" because they were too long or too many distinct values were already known"
            )),
            streams_open: reg!(IntGauge::new(
                "candystore_streams_open",
                "Live-tail (SSE) streams open now; at most STREAM_MAX_CLIENTS"
            )),
            inflight_bytes: reg!(IntGauge::new(
                "candystore_inflight_bytes",
                "Bytes of decoded records held between the consumer and COMMIT (0 once every batch is written); at most MAX_INFLIGHT_BYTES"
            )),
            prefetch: reg!(IntGauge::new(
                "candystore_prefetch",
                "The consumer's prefetch now: PREFETCH_COUNT, or less while deliveries are so large that PREFETCH_COUNT of them would pass MAX_INFLIGHT_BYTES"
            )),
            storage: StorageMetrics {
                partitions: reg!(IntGaugeVec::new(
                    Opts::new("candystore_partitions", "Partitions of each table, the default partition included"),
                    &["table"]
                )),
                oldest_partition: reg!(GaugeVec::new(
                    Opts::new(
                        "candystore_oldest_partition_timestamp_seconds",
                        "Start of each table's oldest partition (Unix time): how far back the stored history reaches"
                    ),
                    &["table"]
                )),
                partition_bytes: reg!(IntGaugeVec::new(
                    Opts::new("candystore_partition_bytes", "Bytes on disk of each partition (heap, TOAST and indexes)"),
                    &["table", "partition"]
                )),
                default_rows: reg!(IntGaugeVec::new(
                    Opts::new(
                        "candystore_default_partition_rows",
                        "Rows in each table's default partition after the last maintenance run (drained to 0 unless a partition could not be made)"
                    ),
                    &["table"]
                )),
                created: reg!(IntCounterVec::new(
                    Opts::new("candystore_partitions_created_total", "Partitions created by the maintenance job"),
                    &["table"]
                )),
                dropped: reg!(IntCounterVec::new(
                    Opts::new("candystore_partitions_dropped_total", "Partitions dropped by retention"),
                    &["table"]
                )),
                archived: reg!(IntCounterVec::new(
                    Opts::new("candystore_partitions_archived_total", "Partitions archived to ARCHIVE_DIR by retention"),
                    &["table"]
                )),
                deferred: reg!(IntGaugeVec::new(
                    Opts::new(
                        "candystore_partitions_deferred",
                        "Partitions the last maintenance run wanted but left for the next runs (it creates at most 100 per table)"
                    ),
                    &["table"]
                )),
                unanalyzed: reg!(IntGaugeVec::new(
                    Opts::new(
                        "candystore_partitions_unanalyzed",
                        "Partitions of each table holding rows that have never been analysed, after the last maintenance run: the planner only guesses about them"
                    ),
                    &["table"]
                )),
                analyzed: reg!(IntCounterVec::new(
                    Opts::new(
                        "candystore_partitions_analyzed_total",
                        "Partitions the maintenance job analysed because their statistics were missing or far behind"
                    ),
                    &["table"]
                )),
                range_failures: reg!(IntCounterVec::new(
                    Opts::new(
                        "candystore_maintenance_range_failures_total",
                        "Partitions the maintenance job failed to create or split (logged with the range); the run went on and the next one retries"
                    ),
                    &["table"]
                )),
                last_run: reg!(Gauge::new(
                    "candystore_maintenance_last_run_timestamp_seconds",
                    "When the maintenance job last ran on this instance (Unix time), whatever its outcome"
                )),
                last_success: reg!(Gauge::new(
                    "candystore_maintenance_last_success_timestamp_seconds",
                    "When the maintenance job last completed on this instance (Unix time)"
                )),
                failures: reg!(IntCounter::new(
                    "candystore_maintenance_failures_total",
                    "Maintenance runs that failed (logged with the cause); the next run tries again"
                )),
            },
            event_types: LabelValues::default(),
            sources: LabelValues::default(),
            registry,
        }
        .with_bounded_labels()
    }

    /// Creates every series whose label values are known in advance, so they are
    /// exported (at 0) before anything happens and dashboards show 0, not "no data".
    fn with_bounded_labels(self) -> Self {
        for r in RejectReason::ALL {
            self.dead_letters.with_label_values(&[r.as_str()]);
        }
        // Every reason a witness may give, at 0 from the start: the alert on it
        // sees a series before the first failure.
        for reason in WITNESS_FAILURE_REASONS {
            self.audit_witness_failures.with_label_values(&[reason]);
        }
        for cause in WRITE_RETRY_CAUSES {
            self.write_retries.with_label_values(&[cause]);
        }
        for step in ["copy", "insert", "commit"] {
            self.batch_duration.with_label_values(&[step]);
        }
        for table in PARTITIONED_TABLES {
            let t = [table];
            self.storage.created.with_label_values(&t);
            self.storage.dropped.with_label_values(&t);
            self.storage.archived.with_label_values(&t);
            self.storage.deferred.with_label_values(&t);
            self.storage.unanalyzed.with_label_values(&t);
            self.storage.analyzed.with_label_values(&t);
            self.storage.range_failures.with_label_values(&t);
        }
        self
    }

    /// Sets the gauges that are read rather than counted, just before a scrape.
    /// `read` is the API's pool; `probe` the probes' own (counted in the total only).
    pub fn observe_pool(&self, read: deadpool_postgres::Status, probe: deadpool_postgres::Status) {
        self.pool_size.set(read.size as i64);
        self.pool_in_use
            .set(read.size.saturating_sub(read.available) as i64);
        self.pool_waiting.set(read.waiting as i64);
        self.database_connections
            .set((read.size + probe.size) as i64 + self.writers_connected.get());
    }

    /// Counts one delivery as received.
    pub fn observe_received(&self, record: &Record) {
        self.deliveries_received.inc();
        if let Record::Event(e) = record {
            self.events_decoded.inc();
            let source = self.source_label(&e.source);
            self.events_received
                .with_label_values(&[self.event_type_label(&e.event_type), source])
                .inc();
        }
    }

    /// An event type as a label value: itself, or `other` past the bounds.
    pub fn event_type_label<'a>(&self, event_type: &'a str) -> &'a str {
        self.event_types.admit(event_type).unwrap_or_else(|| {
            self.labels_capped.inc();
            OTHER_LABEL
        })
    }

    /// A source as a label value: itself, or `other` past the bounds.
    pub fn source_label<'a>(&self, source: &'a str) -> &'a str {
        self.sources.admit(source).unwrap_or_else(|| {
            self.labels_capped.inc();
            OTHER_LABEL
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One unit of a gauge, held: raised when made, lowered when dropped, so the gauge
/// counts what is alive on every path (sent, abandoned at shutdown, or settled),
/// never by hand.
#[derive(Debug)]
pub struct Raised(IntGauge);

impl Raised {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_surplus_label_values_count_as_other() {
        let m = Metrics::new();
        assert_eq!(m.event_type_label("user.created"), "user.created");
        assert_eq!(
            m.event_type_label(&"x".repeat(MAX_LABEL_BYTES + 1)),
            OTHER_LABEL
        );
        for i in 1..MAX_LABEL_VALUES {
            assert_eq!(m.event_type_label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.event_type_label("one.too.many"), OTHER_LABEL);
        assert_eq!(
            m.event_type_label("user.created"),
            "user.created",
            "known values stay"
        );
        assert_eq!(m.source_label("svc"), "svc", "each label has its own bound");
        assert_eq!(m.labels_capped.get(), 2);
    }
}
