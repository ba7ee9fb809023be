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

/// What a change did, for a follower's change-data feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChangeKind {
    AccountCreated = 1,
    AccountClosed = 2,
    AccountReopened = 3,
    AccountLimitsSet = 4,
    /// A single-phase transfer: posted at once.
    TransferPosted = 5,
    /// A hold (pending transfer) placed.
    HoldPlaced = 6,
    /// A hold posted, fully or partly (`transfer` is the posting transfer, its amount resolved).
    HoldPosted = 7,
    /// A hold voided (`transfer` is the voiding transfer, its amount resolved to the hold's).
    HoldVoided = 8,
    /// A hold that timed out (`transfer` is the hold itself).
    HoldExpired = 9,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::AccountCreated => "account_created",
            ChangeKind::AccountClosed => "account_closed",
            ChangeKind::AccountReopened => "account_reopened",
            ChangeKind::AccountLimitsSet => "account_limits_set",
            ChangeKind::TransferPosted => "transfer_posted",
            ChangeKind::HoldPlaced => "hold_placed",
            ChangeKind::HoldPosted => "hold_posted",
            ChangeKind::HoldVoided => "hold_voided",
            ChangeKind::HoldExpired => "hold_expired",
        }
    }

    pub fn is_transfer(self) -> bool {
        self as u8 >= ChangeKind::TransferPosted as u8
    }
}

/// One change a batch made, in the order it made them, with the after-images of the accounts
/// it touched as of that change (not as of the end of the batch): what TigerBeetle's
/// change-data events carry. Expiries come first (they happen at the start of the batch), then
/// each event that succeeded, in index order; the events of a linked chain that failed leave
/// none. Recorded only into an output made with `Output::with_changes` (the follower's); the
/// live pipeline does not pay for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The event's index in its batch; `CHANGE_INDEX_EXPIRY` for an expiry.
    pub index: u32,
    /// When it happened on the ledger's clock: the event's timestamp, or for an expiry the
    /// batch's first timestamp (holds expire at the start of the batch).
    pub timestamp_ns: u64,
    /// For a transfer change, the transfer as stored (timestamp assigned, a post's or void's
    /// inherited fields resolved); all zero for an account change.
    pub transfer: Transfer,
    /// After the change: the transfer's debit account, or the account of an account change.
    pub debit_account: Account,
    /// After the change: the transfer's credit account; all zero for an account change.
    pub credit_account: Account,
}

/// `Change::index` of an expiry, which belongs to no event.
pub const CHANGE_INDEX_EXPIRY: u32 = u32::MAX;

/// The reply buffers of one batch or query.
#[derive(Debug)]
pub struct Output {
    pub results: Vec<EventResult>,
    pub accounts: Vec<Account>,
    pub transfers: Vec<TransferRecord>,
    pub balances: Vec<BalanceRead>,
    pub holds: Vec<Transfer>,
    /// Pending transfers that expired at the start of the batch.
    pub expired_count: u32,
    /// The change-data feed (see `Change`); empty unless made with `with_changes`.
    pub changes: Vec<Change>,
    changes_enabled: bool,
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
            changes: Vec::new(),
            changes_enabled: false,
        }
    }

    /// An output that also records every change a batch makes (`changes`). Its capacity is the
    /// most one batch can make: every open hold expiring at its start, plus one per event.
    pub fn with_changes(config: &Config) -> Output {
        let capacity = config.pending_max as usize + 2 * config.batch_events_max as usize;
        Output { changes: Vec::with_capacity(capacity), changes_enabled: true, ..Output::new(config) }
    }

    pub fn changes_enabled(&self) -> bool {
        self.changes_enabled
    }

    pub(crate) fn change_push(&mut self, change: Change) {
        assert!(self.changes_enabled);
        assert!(self.changes.len() < self.changes.capacity(), "changes over capacity");
        if let Some(last) = self.changes.last() {
            assert!(last.timestamp_ns <= change.timestamp_ns, "changes in time order");
        }
        self.changes.push(change);
    }

    pub fn clear(&mut self) {
        self.results.clear();
        self.accounts.clear();
        self.transfers.clear();
        self.balances.clear();
        self.holds.clear();
        self.expired_count = 0;
        self.changes.clear();
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
