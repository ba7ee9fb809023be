//! walletd-export: the journal is the outbox.
//!
//! `walletd export kafka` follows a data directory (the follower: each durable op with its
//! command and its outcome, read-only, resumable) and publishes one `transaction.completed`
//! event per transfer the ledger completed, keyed by transfer id, exactly once without Kafka
//! transactions; `walletd notify` consumes them and delivers signed webhooks, with a
//! dead-letter topic for what it cannot deliver. Both are their own processes: a broker or a
//! webhook receiver that is slow or down never slows the engine, because the journal is the
//! buffer.
//!
//! - `event` — the event model and its JSON (schema/transaction.completed.v1.json).
//! - `encode` — the hot path: an op's events straight into Kafka record parts, same bytes.
//! - `exporter` — the follower thread writing Produce requests, the session sending them, and
//!   the resume rule.
//! - `produce` — the exporter's own idempotent producer: InitProducerId, Produce, record batches.
//! - `tail` — reading each partition's last event on start.
//! - `wire` — the Kafka protocol's primitive encodings, which `produce` and `tail` share.
//! - `notify` — the consumer group, the webhook, retries, the dead-letter topic and re-drive.
//! - `metrics` — the Prometheus text endpoint of both processes.
//! - `broker` — the test harness: a Kafka-protocol broker (tansu) on a free port.

pub mod broker;
pub mod encode;
pub mod error;
pub mod event;
pub mod exporter;
pub mod metrics;
pub mod notify;
pub mod produce;
pub mod tail;
mod wire;

pub use error::ExportError;
pub use event::{
    events_of, op_records_reference, partition_of, Event, EventPosition, ReferenceRecord, Status, EVENT_TYPE,
    SCHEMA_JSON,
};
