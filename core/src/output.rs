//! What a batch or a query produces, written into buffers the caller owns and reuses: the apply
//! loop pushes into vectors whose capacity was reserved from the config, so it never allocates.

use crate::config::Config;
use crate::types::{Account, AccountLimits, Amount, Transfer, TransferStatus};

/// A failed event: its index in the batch and its result code. Results are sparse: an event
/// that succeeded has no entry, and entries are in index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventResult {
    pub index: u32,
    pub code: u32,
}

/// A remembered transfer and what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub transfer: Transfer,
    pub status: TransferStatus,
}

/// How much an account with velocity limits has debited in the current UTC day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebitUsage {
    /// Days since 1970-01-01 of the last counted debit.
    pub day: u32,
    pub day_count: u32,
    /// Months since 1970-01 of the last counted debit.
    pub month: u32,
    pub month_count: u32,
    pub day_amount: Amount,
    pub month_amount: Amount,
}

/// One consistent balance read: the account, its limits and usage, and where its open holds
/// are in `Output::holds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceRead {
    pub account: Account,
    /// All zero when the account has no limits.
    pub limits: AccountLimits,
    pub usage: DebitUsage,
    /// Open holds on the account, debit and credit side.
    pub holds_count_total: u32,
    /// The first of this account's holds in `Output::holds`.
    pub holds_start: u32,
    /// Holds listed; fewer than the total when the output's hold capacity ran out.
    pub holds_count: u32,
}

/// The reply buffers of one batch or query.
pub struct Output {
    pub results: Vec<EventResult>,
    pub accounts: Vec<Account>,
    pub transfers: Vec<TransferRecord>,
    pub balances: Vec<BalanceRead>,
    pub holds: Vec<Transfer>,
    /// Pending transfers that expired at the start of the batch.
    pub expired_count: u32,
}

impl Output {
    pub fn new(config: &Config) -> Output {
        let capacity = config.batch_events_max as usize;
        Output {
            results: Vec::with_capacity(capacity),
            accounts: Vec::with_capacity(capacity),
            transfers: Vec::with_capacity(capacity),
            balances: Vec::with_capacity(capacity),
            holds: Vec::with_capacity(capacity),
            expired_count: 0,
        }
    }

    pub fn clear(&mut self) {
        self.results.clear();
        self.accounts.clear();
        self.transfers.clear();
        self.balances.clear();
        self.holds.clear();
        self.expired_count = 0;
    }

    pub(crate) fn push_result(&mut self, index: usize, code: u32) {
        assert!(code != 0, "success is not listed");
        assert!(self.results.len() < self.results.capacity(), "results over capacity");
        if let Some(last) = self.results.last() {
            assert!((last.index as usize) < index, "results out of order");
        }
        self.results.push(EventResult { index: index as u32, code });
    }

    /// The result code of event `index` (0 when it succeeded).
    pub fn code_of(&self, index: u32) -> u32 {
        match self.results.binary_search_by_key(&index, |result| result.index) {
            Ok(position) => self.results[position].code,
            Err(_) => 0,
        }
    }

    /// The holds listed for one balance read.
    pub fn holds_of(&self, read: &BalanceRead) -> &[Transfer] {
        let start = read.holds_start as usize;
        &self.holds[start..start + read.holds_count as usize]
    }
}
