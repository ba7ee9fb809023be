//! The `walletd` binary's library half: the wiring of ledger, journal and snapshots into a
//! node (recovery, replay, the snapshot replica, the offline generator), shared by the binary,
//! the benchmarks and the end-to-end tests. The rules live in `walletd-core`; the bytes on
//! disk in `walletd-journal` and `walletd-snapshot`.

pub mod cli;
pub mod error;
pub mod export;
pub mod generate;
pub mod journal_print;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod serve;
pub mod writer;

pub use error::NodeError;
