//! The sink: drains the bounded channel into batches, writes each batch in one
//! transaction (through the store's [`Writer`], PostgreSQL or SQLite), and settles
//! the batch's acks only after that COMMIT returned.
//!
//! It is the only place acks are settled. Retryable failures are retried with
//! back-off forever (the channel and the prefetch stop intake meanwhile); a batch
//! PostgreSQL refuses is split until the refused row is alone, and that row goes to
//! `dead_letter` while the rest is stored.

pub(crate) mod batch;
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::model::envelope::{DeadLetter, Record};
use crate::retry::Backoff;
use crate::sink::batch::{Batch, Batcher, Limits};
use crate::source::{self, AckToken, Inbound};
use crate::store::{WriteError, Writer, Written};

/// Knobs of the sink that are not settings.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub limits: Limits,
    pub retry_max_backoff: Duration,
}

/// Runs until the channel is closed and everything it held is committed and acked.
///
/// Up to `writers.len()` batches are written at once, each on its own connection,
/// so one batch's COPY overlaps another's COMMIT. Batches are settled strictly in
/// the order they were closed, whatever order their commits finish in, so acks stay
/// in delivery-tag order and one multiple-ack covers each batch.
pub async fn run(
    mut rx: mpsc::Receiver<Inbound>,
    writers: Vec<Writer>,
    opts: SinkOptions,
    metrics: Arc<Metrics>,
) {
    assert!(!writers.is_empty(), "the sink needs at least one writer");
    let mut batcher = Batcher::new(opts.limits);
    let mut idle = writers;
    let mut in_flight = FuturesOrdered::new();
    let mut closed = false;
    let mut progress = progress::Progress::start(progress::Reading::of(&metrics), Instant::now());
    let mut minute = tokio::time::interval_at(Instant::now() + progress::EVERY, progress::EVERY);
    minute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !(closed && in_flight.is_empty()) {
        tokio::select! {
            _ = minute.tick() => {
                if let Some(line) = progress.line(progress::Reading::of(&metrics), Instant::now()) {
                    tracing::info!("{line}");
                }
            }
            batch = batcher.next_batch(&mut rx, |i: &Inbound| i.record.size_bytes()), if !closed && !idle.is_empty() => {
                match batch {
                    Some(batch) => {
                        let writer = idle.pop().expect("guarded by the branch condition");
                        in_flight.push_back(write_batch(batch, writer, opts.clone(), metrics.clone()));
                    }
                    None => closed = true,
                }
            }
            Some((writer, done)) = in_flight.next(), if !in_flight.is_empty() => {
                settle(done, &metrics).await;
                idle.push(writer);
            }
        }
    }
    tracing::debug!("sink drained");
}

/// A committed batch waiting for its acks.
struct Committed {
    tokens: Vec<AckToken>,
    /// The records' units of `candystore_in_flight`, lowered once they are acked.
    in_flight: Vec<crate::metrics::Raised>,
    written: Written,
    rows: usize,
    bytes: usize,
    reason: &'static str,
    started: Instant,
}

async fn write_batch(
    batch: Batch<Inbound>,
    mut writer: Writer,
    opts: SinkOptions,
    metrics: Arc<Metrics>,
) -> (Writer, Committed) {
    let n = batch.items.len();
    metrics.channel_received.inc_by(n as u64);
    metrics.batch_rows.observe(n as f64);
    metrics.batch_bytes.observe(batch.bytes as f64);
    metrics
        .batch_age
        .observe(batch.opened.elapsed().as_secs_f64());
    let started = Instant::now();
    let mut records = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    // The records' share of MAX_INFLIGHT_BYTES is given back once they are written.
    let mut memory = Vec::with_capacity(n);
    // Each record counts as in flight until its batch is settled.
    let mut in_flight = Vec::with_capacity(n);
    for item in batch.items {
        records.push(item.record);
        tokens.push(item.ack);
        received.push(item.received);
        memory.push(item.memory);
        in_flight.push(item.in_flight);
    }
    let written = write_all(&mut records, &mut writer, &opts, &metrics).await;
    let committed = Instant::now();
    let mut oldest = Duration::ZERO;
    for r in received {
        let latency = committed - r;
        oldest = oldest.max(latency);
        metrics.storage_latency.observe(latency.as_secs_f64());
    }
    metrics
        .storage_latency_last_ms
        .set(oldest.as_secs_f64() * 1e3);
    record_written(&written, &records, &metrics);
    drop(records);
    drop(memory);
    metrics.batches_committed.inc();
    let done = Committed {
        tokens,
        in_flight,
        written,
        rows: n,
        bytes: batch.bytes,
        reason: batch.reason.as_str(),
        started,
    };
    (writer, done)
}

/// Acks a committed batch. The only place the pipeline acks anything.
async fn settle(done: Committed, metrics: &Metrics) {
    let settled = source::ack::settle(done.tokens).await;
    metrics.acks.inc_by(settled.acked as u64);
    metrics.ack_frames.inc_by(settled.frames as u64);
    metrics.ack_failures.inc_by(settled.failed as u64);
    drop(done.in_flight);
    tracing::debug!(
        rows = done.rows,
        bytes = done.bytes,
        reason = done.reason,
        stored = done.written.stored_total(),
        duplicates = done.written.duplicates,
        dead_letters = done.written.dead_letters,
        elapsed_ms = done.started.elapsed().as_secs_f64() * 1e3,
        "batch committed"
    );
}

fn record_written(w: &Written, records: &[Record], metrics: &Metrics) {
    for (event_type, n) in &w.stored {
        metrics
            .events_stored
            .with_label_values(&[metrics.event_type_label(event_type)])
            .inc_by(*n);
    }
    // Books: every delivery is stored, a duplicate, or dead-lettered. A redelivered
    // dead letter counts as dead-lettered again (the table keeps one row).
    metrics.duplicates.inc_by(w.duplicates);
    for r in records {
        match r {
            Record::DeadLetter(d) => {
                metrics
                    .dead_letters
                    .with_label_values(&[d.reason.as_str()])
                    .inc();
                metrics
                    .events_failed
                    .with_label_values(&[
                        metrics.event_type_label(d.event_type.as_deref().unwrap_or("unknown")),
                        d.reason.as_str(),
                    ])
                    .inc();
            }
            Record::Event(e) if e.sanitized => metrics.sanitized.inc(),
            Record::Event(_) => {}
            Record::Replayed => metrics.replays_ignored.inc(),
        }
    }
}

/// Writes of one part in a row that may find the partitions changed under them
/// (`WriteError::Rerouted`) before its rows are judged refused: each change is one
/// partition attached, so a second write already sees it; more say the rows fit
/// no partition at all.
const MAX_REROUTES: u32 = 5;

/// Writes every record, retrying what the database could not take now and
/// splitting what it refused. Returns only once all of it is committed.
/// A record PostgreSQL refuses on its own is replaced, in `records`, by its dead letter.
async fn write_all(
    records: &mut [Record],
    writer: &mut Writer,
    opts: &SinkOptions,
    metrics: &Metrics,
) -> Written {
    let mut total = Written::default();
    let mut backoff = Backoff::new(Duration::from_millis(50), opts.retry_max_backoff);
    // Writes in a row that found the partitions changed under them (reset by a
    // write that succeeds).
    let mut rerouted = 0;
    // Ranges of `records` still to write, last one first.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..records.len());
    while let Some(range) = todo.pop() {
        let part: Vec<&Record> = records[range.clone()].iter().collect();
        let result = writer.write(&part, metrics).await;
        match result {
            Ok(w) => {
                total.absorb(w);
                backoff.reset();
                rerouted = 0;
            }
            Err(e)
                if e.is_retryable()
                    || (e.is_rerouted() && rerouted < MAX_REROUTES)
                    || matches!(part[..], [Record::DeadLetter(_)]) =>
            {
                if e.is_rerouted() {
                    rerouted += 1;
                }
                metrics.write_retries.with_label_values(&[e.cause()]).inc();
                let wait = backoff.next_wait();
                log_retry(&e, wait, part.len());
                tokio::time::sleep(wait).await;
                todo.push(range);
            }
            Err(e) if range.len() == 1 => {
                let detail = crate::telemetry::error_chain(&e);
                tracing::warn!(error = %detail, "database refused one event; dead-lettering it");
                if let Record::Event(ev) = &records[range.start] {
                    records[range.start] =
                        Record::DeadLetter(Box::new(DeadLetter::refused_by_database(ev, &detail)));
                }
                todo.push(range);
            }
            Err(_) => {
                metrics.batch_splits.inc();
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
        }
    }
    total
}

fn log_retry(e: &WriteError, backoff: Duration, rows: usize) {
    let chain = crate::telemetry::error_chain(e);
    if backoff >= Duration::from_secs(1) {
        tracing::error!(error = %chain, rows, retry_in_ms = backoff.as_millis() as u64, "batch write failed; retrying");
    } else {
        tracing::warn!(error = %chain, rows, retry_in_ms = backoff.as_millis() as u64, "batch write failed; retrying");
    }
}
