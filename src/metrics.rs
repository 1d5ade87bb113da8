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

use crate::model::envelope::{Record, RejectReason};

/// Longest label value taken from publishers' data; a longer one counts as `other`.
pub const MAX_LABEL_BYTES: usize = 100;
/// The API's read connections at a scrape, whichever store they read.
#[derive(Debug, Clone, Copy)]
pub struct PoolReading {
    /// Connections of the read pool.
    pub size: usize,
    pub in_use: usize,
    /// Requests waiting for one.
    pub waiting: usize,
    /// Every connection the API holds (the read pool and the probes').
    pub connections: usize,
}

/// The label values of `candystore_audit_witness_failures_total`
/// (`audit::publish::Outcome::reason`).
pub const WITNESS_FAILURE_REASONS: [&str; 4] = ["rollback", "bad_proof", "unreachable", "refused"];

/// Every `cause` of `candystore_write_retries_total` (`store::WriteError::cause`):
/// created at 0 so dashboards show 0, not "no data".
pub const WRITE_RETRY_CAUSES: [&str; 11] = [
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
    "rerouted",
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

/// Declares a set of metrics once each: its field, its type and how it is made
/// (name, help, labels, buckets). The struct and its `register`, which makes
/// every metric and registers it, come from the one list; the struct's other
/// fields are given with what they start as (`$registry` names the registry).
macro_rules! metric_set {
    (
        $(#[$sattr:meta])*
        pub struct $name:ident($registry:ident) {
            $( $xvis:vis $xf:ident: $xty:ty = $xinit:expr; )*
        }
        metrics {
            $( $(#[$attr:meta])* $field:ident: $ty:ty = $make:expr, )*
        }
    ) => {
        $(#[$sattr])*
        pub struct $name {
            $( $xvis $xf: $xty, )*
            $( $(#[$attr])* pub $field: $ty, )*
        }

        impl $name {
            fn register($registry: &Registry) -> Self {
                $name {
                    $( $field: register($registry, $make), )*
                    $( $xf: $xinit, )*
                }
            }
        }
    };
}

/// Makes one metric's registration: a bad definition or a name used twice is
/// a bug found by the first test that makes `Metrics`.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<M>,
) -> M {
    let m = made.expect("metric definition is valid");
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

fn counter(name: &str, help: &str) -> prometheus::Result<IntCounter> {
    IntCounter::new(name, help)
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn int_gauge(name: &str, help: &str) -> prometheus::Result<IntGauge> {
    IntGauge::new(name, help)
}

fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str) -> prometheus::Result<Gauge> {
    Gauge::new(name, help)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    GaugeVec::new(Opts::new(name, help), labels)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

fn histogram_vec(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

/// `n` buckets from `start`, each `factor` times the one before.
fn exponential(start: f64, factor: f64, n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, n).expect("valid buckets")
}

metric_set! {
    /// Every metric, in one registry; label values from publishers' data bounded.
    pub struct Metrics(registry) {
        registry: Registry = registry.clone();
        event_types: LabelValues = LabelValues::default();
        sources: LabelValues = LabelValues::default();
        pub storage: StorageMetrics = StorageMetrics::register(registry);
    }
    metrics {
        labels_capped: IntCounter = counter(
            "candystore_metric_labels_capped_total",
            "Event types or sources counted as \"other\" because they were too long or too many distinct values were already known",
        ),
        large_reads: IntCounter = counter(
            "candystore_api_large_reads_total",
            "Reads of one large event or dead letter (over 256 KiB stored) run for the API, each shared by every client asking for it at that moment; at most 4 at once",
        ),
        streams_open: IntGauge = int_gauge(
            "candystore_streams_open",
            "Live-tail (SSE) streams open now; at most STREAM_MAX_CLIENTS",
        ),
        inflight_bytes: IntGauge = int_gauge(
            "candystore_inflight_bytes",
            "Bytes of decoded records held between the consumer and COMMIT (0 once every batch is written); at most MAX_INFLIGHT_BYTES",
        ),
        prefetch: IntGauge = int_gauge(
            "candystore_prefetch",
            "The consumer's prefetch now: PREFETCH_COUNT, or less while deliveries are so large that PREFETCH_COUNT of them would pass MAX_INFLIGHT_BYTES",
        ),
        events_received: IntCounterVec = counter_vec(
            "candystore_events_received_total",
            "Events received from Bloodbank",
            &["event_type", "source"],
        ),
        events_stored: IntCounterVec = counter_vec(
            "candystore_events_stored_total",
            "Events stored (new rows committed)",
            &["event_type"],
        ),
        events_failed: IntCounterVec = counter_vec(
            "candystore_events_failed_total",
            "Deliveries that could not be stored as events (dead-lettered)",
            &["event_type", "error_type"],
        ),
        /// Supervised tasks (source, sink, each background job) that ended or panicked.
        task_failures: IntCounterVec = counter_vec(
            "candystore_task_failures_total",
            "Supervised tasks (source, sink, maintenance, audit-tree, catalog) that panicked or ended before shutdown; the first is logged and the process exits for its supervisor to restart it",
            &["task"],
        ),
        storage_latency: Histogram = histogram(
            "candystore_storage_latency_seconds",
            "From delivery to the commit that stored it",
            LATENCY_BUCKETS,
        ),
        storage_latency_last_ms: Gauge = gauge(
            "candystore_storage_latency_milliseconds",
            "The latest committed batch's storage latency: its oldest delivery to its commit, in milliseconds (the original design's gauge; the histogram is candystore_storage_latency_seconds)",
        ),
        consumer_connected: IntGauge = int_gauge(
            "candystore_consumer_connected",
            "1 while consuming from the broker, else 0",
        ),
        database_connections: IntGauge = int_gauge(
            "candystore_database_connections",
            "Open PostgreSQL connections (writer and read pool)",
        ),
        deliveries_received: IntCounter = counter(
            "candystore_deliveries_received_total",
            "Deliveries taken from the broker, events or not",
        ),
        duplicates: IntCounter = counter(
            "candystore_events_duplicate_total",
            "Deliveries whose event was already stored (redeliveries and repeats)",
        ),
        replays_ignored: IntCounter = counter(
            "candystore_replays_ignored_total",
            "Deliveries published by `candystore replay` (an authentic x-candystore-replay mark): acked, not stored again",
        ),
        replay_marks_unauthenticated: IntCounter = counter(
            "candystore_replay_marks_unauthenticated_total",
            "Deliveries with an x-candystore-replay header this installation did not make for them: stored like any event",
        ),
        audit_unattested: IntCounter = counter(
            "candystore_audit_unattested_total",
            "Leaves (or, before the tree, events) the audit job found without a valid writer attestation (AUDIT_KEY): written out of band",
        ),
        /// When the tree job last completed a step (appending or finding nothing new).
        audit_last_seal: Gauge = gauge(
            "candystore_audit_last_seal_timestamp_seconds",
            "When the audit tree's job last completed a step (Unix seconds); it stops moving when appending or signing fails",
        ),
        /// Leaves in the newest signed checkpoint.
        audit_tree_size: IntGauge = int_gauge(
            "candystore_audit_tree_size",
            "Leaves in the audit tree's newest signed checkpoint",
        ),
        /// Checkpoints a witness refused or could not be sent, by reason.
        audit_witness_failures: IntCounterVec = counter_vec(
            "candystore_audit_witness_failures_total",
            "Checkpoints a witness did not cosign, by reason: rollback (409: it has seen a larger tree), bad_proof (422), unreachable, refused (any other answer)",
            &["reason"],
        ),
        /// Checkpoints that could not be written to CHECKPOINT_DIR.
        audit_checkpoint_dir_failures: IntCounter = counter(
            "candystore_audit_checkpoint_dir_failures_total",
            "Signed checkpoints that could not be written to CHECKPOINT_DIR",
        ),
        dead_letters: IntCounterVec = counter_vec(
            "candystore_dead_letters_total",
            "Rows written to dead_letter, by reason",
            &["reason"],
        ),
        sanitized: IntCounter = counter(
            "candystore_events_sanitized_total",
            "Events stored with text PostgreSQL refuses removed",
        ),
        write_retries: IntCounterVec = counter_vec(
            "candystore_write_retries_total",
            "Batch writes retried, by cause",
            &["cause"],
        ),
        batches_committed: IntCounter = counter(
            "candystore_batches_committed_total",
            "Batch transactions committed",
        ),
        batch_rows: Histogram = histogram(
            "candystore_batch_rows",
            "Deliveries per committed batch",
            &exponential(1.0, 2.0, 15),
        ),
        batch_bytes: Histogram = histogram(
            "candystore_batch_bytes",
            "Bytes held by a batch at flush",
            &exponential(1024.0, 4.0, 10),
        ),
        batch_age: Histogram = histogram(
            "candystore_batch_age_seconds",
            "Age of a batch's oldest delivery at flush",
            LATENCY_BUCKETS,
        ),
        batch_duration: HistogramVec = histogram_vec(
            "candystore_batch_duration_seconds",
            "Time spent in each step of a batch write",
            DURATION_BUCKETS,
            &["step"],
        ),
        batch_splits: IntCounter = counter(
            "candystore_batch_splits_total",
            "Batches split to isolate a row PostgreSQL refused",
        ),
        acks: IntCounter = counter("candystore_acks_total", "Deliveries acknowledged after commit"),
        ack_frames: IntCounter = counter(
            "candystore_ack_frames_total",
            "basic.ack frames sent (multiple-acks cover many deliveries)",
        ),
        ack_failures: IntCounter = counter(
            "candystore_ack_failures_total",
            "Acks that failed because their channel was gone (redelivered later)",
        ),
        reconnects: IntCounter = counter(
            "candystore_reconnects_total",
            "Broker connections re-established after a failure",
        ),
        channel_sent: IntCounter = counter(
            "candystore_channel_sent_total",
            "Records the consumer put into the batch channel",
        ),
        channel_received: IntCounter = counter(
            "candystore_channel_received_total",
            "Records the writer took from the batch channel",
        ),
        in_flight: IntGauge = int_gauge(
            "candystore_events_in_flight",
            "Deliveries received and not yet settled (channel, batch, write)",
        ),
        events_decoded: IntCounter = counter(
            "candystore_events_decoded_total",
            "Deliveries decoded into events (the rest are dead-lettered)",
        ),
        nacks: IntCounter = counter(
            "candystore_nacks_total",
            "Deliveries nacked; Candystore never nacks (unsettled deliveries are redelivered), so this stays 0",
        ),
        queue_depth: IntGauge = int_gauge(
            "candystore_queue_depth",
            "Messages ready in RABBIT_QUEUE, read from the broker at an interval: the ingest lag",
        ),
        parked_messages: IntGauge = int_gauge(
            "candystore_parked_messages",
            "Messages the broker set aside in <RABBIT_QUEUE>.parked after RABBIT_DELIVERY_LIMIT unacked deliveries (quorum queues; always 0 for classic)",
        ),
        queue_consumers: IntGauge = int_gauge(
            "candystore_queue_consumers",
            "Consumers on RABBIT_QUEUE, read with the depth",
        ),
        writers_connected: IntGauge = int_gauge(
            "candystore_writer_connections",
            "Open connections of the batch writers",
        ),
        pool_size: IntGauge = int_gauge(
            "candystore_database_pool_size",
            "Connections open in the API's read pool",
        ),
        pool_in_use: IntGauge = int_gauge(
            "candystore_database_pool_in_use",
            "Read-pool connections lent to requests right now",
        ),
        pool_waiting: IntGauge = int_gauge(
            "candystore_database_pool_waiting",
            "Requests waiting for a read-pool connection",
        ),
        http_requests: IntCounterVec = counter_vec(
            "candystore_http_requests_total",
            "HTTP requests served, by route, method and status",
            &["route", "method", "status"],
        ),
        http_duration: HistogramVec = histogram_vec(
            "candystore_http_request_duration_seconds",
            "HTTP request latency by route",
            DURATION_BUCKETS,
            &["route"],
        ),
    }
}

/// The partitioned tables' names, the `table` label of the storage metrics
/// (`storage::Table::ALL`'s names; a test there keeps the two equal).
pub const PARTITIONED_TABLES: [&str; 2] = ["events", "dead_letter"];

metric_set! {
    /// What the maintenance job (`storage::maintain`) exports.
    pub struct StorageMetrics(registry) {}
    metrics {
        partitions: IntGaugeVec = int_gauge_vec(
            "candystore_partitions",
            "Partitions of each table, the default partition included",
            &["table"],
        ),
        oldest_partition: GaugeVec = gauge_vec(
            "candystore_oldest_partition_timestamp_seconds",
            "Start of each table's oldest partition (Unix time): how far back the stored history reaches",
            &["table"],
        ),
        partition_bytes: IntGaugeVec = int_gauge_vec(
            "candystore_partition_bytes",
            "Bytes on disk of each partition (heap, TOAST and indexes)",
            &["table", "partition"],
        ),
        default_rows: IntGaugeVec = int_gauge_vec(
            "candystore_default_partition_rows",
            "Rows in each table's default partition after the last maintenance run (drained to 0 unless a partition could not be made)",
            &["table"],
        ),
        created: IntCounterVec = counter_vec(
            "candystore_partitions_created_total",
            "Partitions created by the maintenance job",
            &["table"],
        ),
        dropped: IntCounterVec = counter_vec(
            "candystore_partitions_dropped_total",
            "Partitions dropped by retention",
            &["table"],
        ),
        archived: IntCounterVec = counter_vec(
            "candystore_partitions_archived_total",
            "Partitions archived to ARCHIVE_DIR by retention",
            &["table"],
        ),
        deferred: IntGaugeVec = int_gauge_vec(
            "candystore_partitions_deferred",
            "Partitions the last maintenance run wanted but left for the next runs (it creates at most 100 per table)",
            &["table"],
        ),
        unanalyzed: IntGaugeVec = int_gauge_vec(
            "candystore_partitions_unanalyzed",
            "Partitions of each table holding rows that have never been analysed, after the last maintenance run: the planner only guesses about them",
            &["table"],
        ),
        analyzed: IntCounterVec = counter_vec(
            "candystore_partitions_analyzed_total",
            "Partitions the maintenance job analysed because their statistics were missing or far behind",
            &["table"],
        ),
        range_failures: IntCounterVec = counter_vec(
            "candystore_maintenance_range_failures_total",
            "Partitions the maintenance job failed to create or split (logged with the range); the run went on and the next one retries",
            &["table"],
        ),
        last_run: Gauge = gauge(
            "candystore_maintenance_last_run_timestamp_seconds",
            "When the maintenance job last ran on this instance (Unix time), whatever its outcome",
        ),
        last_success: Gauge = gauge(
            "candystore_maintenance_last_success_timestamp_seconds",
            "When the maintenance job last completed on this instance (Unix time)",
        ),
        failures: IntCounter = counter(
            "candystore_maintenance_failures_total",
            "Maintenance runs that failed (logged with the cause); the next run tries again",
        ),
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::register(&Registry::new()).with_bounded_labels()
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
    pub fn observe_pool(&self, read: PoolReading) {
        self.pool_size.set(read.size as i64);
        self.pool_in_use.set(read.in_use as i64);
        self.pool_waiting.set(read.waiting as i64);
        self.database_connections
            .set(read.connections as i64 + self.writers_connected.get());
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
