//! walletd-history: history and audit in PostgreSQL.
//!
//! - `project` — the projection: every durable op (from the follower, `walletd_replay::Follower`)
//!   into PostgreSQL exactly once, with its position in the same transaction, bulk-loaded with
//!   binary `COPY` straight into the tables (`rows`, `pgtypes`).
//! - `schema` — the versioned migrations in `history/migrations/`, applied at start.
//! - `query` — what the history holds: a wallet's transactions (cursor-paged), one transfer, a
//!   statement, a balance as of a time, and "was this id applied" for the HTTP gateway.
//! - `reconcile` — at one op, PostgreSQL against the engine's state and the journal's checksum.
//! - `metrics` — lag and reconciliation as Prometheus metrics.
//! - `harness` — a throwaway PostgreSQL for tests and benchmarks.
//!
//! Async at the edges: PostgreSQL is spoken on tokio; the follower stays on its own thread.
//! Tables and the exactly-once argument: docs/HISTORY.md.

pub mod cli;
pub mod error;
pub mod harness;
pub mod metrics;
pub mod pgtypes;
pub mod project;
pub mod query;
pub mod reconcile;
pub mod rows;
pub mod schema;

pub use error::HistoryError;
pub use project::{project, ProjectOptions, ProjectReport};
