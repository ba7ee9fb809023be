//! walletd-core: the ledger state machine.
//!
//! A deterministic double-entry ledger. `Ledger::apply(timestamp, batch, output)` is a pure
//! function of the state and its arguments: no I/O, no clock (the timestamp is an argument the
//! sequencer chose and the journal recorded), no randomness, no randomly seeded hash maps and
//! no allocation after `Ledger::new`. Replaying the same batches gives the same results and
//! the same `state_hash()`, bit for bit, on any machine.
//!
//! Business rejections are result codes (`results`), never errors; an operating error cannot
//! happen here; a broken invariant panics, because continuing would move money wrongly.

mod accounts;
pub mod bytes;
pub mod calendar;
pub mod command;
pub mod config;
mod hash;
pub mod image;
mod index;
pub mod ledger;
pub mod output;
mod pending;
mod prefetch;
pub mod results;
mod transfers;
pub mod types;

pub use command::{Command, CommandError, CommandHeader, CommandScratch, Operation, TraceIds};
pub use config::{Config, ConfigError, BATCH_EVENTS_MAX, ID_FUTURE_MS_MAX_LIMIT};
pub use image::{ImageError, ImageHeader};
pub use ledger::{Batch, Ledger, LedgerTotals, MemoryBytes, Query};
pub use output::{
    BalanceRead, Change, ChangeKind, DebitUsage, EventResult, Output, TransferRecord, CHANGE_INDEX_EXPIRY,
};
pub use results::{AccountStateResult, CreateAccountResult, CreateTransferResult, SetLimitsResult};
pub use types::{
    Account, AccountFlags, AccountId, AccountLimits, Amount, LimitFlags, Transfer, TransferFlags, TransferId,
    TransferStatus,
};
