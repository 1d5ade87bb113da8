//! Integration tests against the real PostgreSQL and RabbitMQ. Each test has its
//! own database, exchange and queue, so they run in parallel and leave nothing.

mod abuse;
mod api;
mod audit;
mod audit_jsonb;
mod audit_tree;
mod browser;
mod catalog;
mod cli;
mod dead_letters;
mod docs;
mod failures;
mod helpers;
mod hostile;
mod ingest;
mod jobs;
mod layers;
mod migrate;
mod observability;
mod raw_amqp;
mod replay;
mod restore;
mod setup;
mod sqlite_api;
mod sqlite_archive;
mod sqlite_audit;
mod sqlite_contains;
mod sqlite_writer;
mod storage;
#[path = "../support/mod.rs"]
mod support;
mod tail;
mod tls;
mod writer;
