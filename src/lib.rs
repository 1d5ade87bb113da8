//! Candystore: the event store and audit trail of the 33GOD ecosystem.
//!
//! Data flows `source` (RabbitMQ deliveries → decoded records) → `batch` (size, bytes
//! or age) → `sink` (COPY in one transaction, then ack). `api` serves what was
//! stored from a separate read pool; `storage` keeps the tables partitioned, retained
//! and archived; `config`, `metrics` and `telemetry` sit beside.
//! ARCHITECTURE.md has the map and the invariants.

pub mod api;
pub mod app;
pub mod audit;
pub(crate) mod batch;
pub mod config;
pub mod db;
pub mod envelope;
pub mod hex;
pub mod jobs;
pub mod metrics;
pub mod ops;
pub mod query;
pub(crate) mod replay_mark;
pub(crate) mod retry;
pub mod schema;
pub mod sink;
pub mod source;
pub mod storage;
pub mod supervise;
pub mod telemetry;
