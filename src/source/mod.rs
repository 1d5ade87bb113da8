//! The source: RabbitMQ deliveries in, decoded records with their ack tokens out.
//!
//! The source is the only part of the crate that uses lapin (`amqp` consumes,
//! `publish` publishes, `probe` asks what `candystore check` needs). `decode` is pure. What
//! leaves this module is an [`Inbound`]: a record and the token that acks it, which
//! only the sink may settle.

pub mod ack;
pub mod amqp;
pub mod decode;
pub mod prefetch;
pub mod probe;
pub mod publish;

use tokio::time::Instant;

use crate::model::envelope::Record;
pub use ack::{AckChannel, AckToken, Acknowledge, RecordingAcks, Settled};

/// One delivery on its way to the sink.
#[derive(Debug)]
pub struct Inbound {
    pub record: Record,
    pub ack: AckToken,
    /// When the delivery came off the socket: the start of its storage latency.
    pub received: Instant,
    /// This record's share of MAX_INFLIGHT_BYTES, given back when it is dropped
    /// (after its batch committed, or when it is abandoned unacked).
    pub memory: MemoryShare,
    /// Its unit of `candystore_in_flight` (received, not yet settled).
    pub in_flight: crate::metrics::Raised,
}

/// A record's share of MAX_INFLIGHT_BYTES. Dropping it gives the share back and
/// sets `candystore_inflight_bytes` to what is still held, so the gauge falls when
/// a batch is written, not only when the next delivery arrives.
#[derive(Debug)]
pub struct MemoryShare {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    max: usize,
    gauge: prometheus::IntGauge,
}

impl MemoryShare {
    /// Waits for `share` bytes of the `max`-byte budget; `None` when it was closed.
    pub async fn acquire(
        budget: &std::sync::Arc<tokio::sync::Semaphore>,
        max: usize,
        share: u32,
        gauge: &prometheus::IntGauge,
    ) -> Option<Self> {
        let permit = budget.clone().acquire_many_owned(share).await.ok()?;
        gauge.set(held(max, budget.available_permits()));
        Some(Self {
            permit: Some(permit),
            max,
            gauge: gauge.clone(),
        })
    }
}

impl Drop for MemoryShare {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let free = permit.semaphore().available_permits() + permit.num_permits();
            drop(permit);
            self.gauge.set(held(self.max, free));
        }
    }
}

/// Bytes of the `max`-byte budget held while `free` are available.
fn held(max: usize, free: usize) -> i64 {
    max.saturating_sub(free) as i64
}
