//! Candystore: the event store and audit trail of the 33GOD ecosystem.
//!
//! Data flows `source` (RabbitMQ deliveries → decoded records) → `sink` (batched by
//! size, bytes or age; COPY in one transaction, then ack). `api` serves what was
//! stored from a separate read pool; `storage` keeps the tables partitioned, retained
//! and archived; `model` is the data they all speak; `config`, `metrics` and
//! `telemetry` sit beside.
//! ARCHITECTURE.md has the map and the invariants.

pub mod api;
pub mod app;
pub mod audit;
pub mod config;
pub mod db;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod ops;
pub(crate) mod retry;
pub mod schema;
pub mod sink;
pub mod source;
pub mod storage;
pub mod store;
pub mod telemetry;
