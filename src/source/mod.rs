//! The source: RabbitMQ deliveries in, decoded records with their ack tokens out.
//!
//! `amqp` is the only module in the crate that uses lapin. `decode` is pure. What
//! leaves this module is an [`Inbound`]: a record and the token that acks it, which
//! only the sink may settle.

pub mod ack;
pub mod amqp;
pub mod decode;
pub mod prefetch;
pub mod publish;

use tokio::time::Instant;

use crate::envelope::Record;
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
    pub memory: tokio::sync::OwnedSemaphorePermit,
}
