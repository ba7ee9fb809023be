//! The ledger: every balance in memory, changed only by `apply(timestamp, batch)`, a pure
//! function of the state and its arguments. The state lives in flat arrays of fixed-size records
//! allocated once from the config (accounts, the transfer ring, the pending table, limits), so a
//! snapshot is a copy of arrays and the apply loop never allocates.
//!
//! This file holds the state, the batch driver (timestamps, expiry, linked chains and their
//! rollback) and the invariants (running totals, the state hash, `verify`). The rules of each
//! operation are in `accounts.rs` and `transfers.rs`.

use crate::config::{Config, ConfigError};
use crate::hash::{hash_record, hash_words, id_hash};
use crate::index::{Index, Tag};
use crate::output::{Change, ChangeKind, DebitUsage, Output, CHANGE_INDEX_EXPIRY};
use crate::pending::{PendingEntry, PendingTable, NONE};
use crate::results::{CreateAccountResult, CreateTransferResult};
use crate::types::{
    Account, AccountId, AccountLimits, Amount, Transfer, TransferFlags, TransferId, TransferStatus, Words,
};

/// A mutating batch: it is journaled, gets timestamps and changes state.
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    /// No events: advances the clock so that pending transfers expire without traffic.
    Pulse,
    CreateAccounts(&'a [Account]),
    CreateTransfers(&'a [Transfer]),
    CloseAccounts(&'a [AccountId]),
    ReopenAccounts(&'a [AccountId]),
    SetAccountLimits(&'a [AccountLimits]),
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        match self {
            Batch::Pulse => 0,
            Batch::CreateAccounts(events) => events.len(),
            Batch::CreateTransfers(events) => events.len(),
            Batch::CloseAccounts(events) | Batch::ReopenAccounts(events) => events.len(),
            Batch::SetAccountLimits(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read: answered from the applied state, consumes no timestamp and changes nothing.
#[derive(Clone, Copy, Debug)]
pub enum Query<'a> {
    LookupAccounts(&'a [AccountId]),
    LookupTransfers(&'a [TransferId]),
    /// Balances, limits, usage and open holds of each account, as one consistent answer.
    LookupBalances(&'a [AccountId]),
}

/// The four balances of an account, as indexes for the state hash weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Balance {
    DebitsPending = 0,
    DebitsPosted = 1,
    CreditsPending = 2,
    CreditsPosted = 3,
}

/// Whether an entry moves pending (reserved) or posted money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Posted,
}

/// Running totals of one ledger (currency). Wrapping sums: the invariant compares them with the
/// sums over accounts, which wrap identically, so no amount can make the check overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub ledger: u32,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

/// An account record aligned to a cache line, so that a 128-byte record spans exactly two.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Line<T>(pub T);

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LimitsEntry {
    pub limits: AccountLimits,
    pub usage: DebitUsage,
    pub account_slot: u32,
}

impl LimitsEntry {
    fn hash(&self) -> u128 {
        let usage = &self.usage;
        let words = [
            u64::from(usage.day) | (u64::from(usage.day_count) << 32),
            u64::from(usage.month) | (u64::from(usage.month_count) << 32),
            usage.day_amount.0 as u64,
            (usage.day_amount.0 >> 64) as u64,
            usage.month_amount.0 as u64,
            (usage.month_amount.0 >> 64) as u64,
        ];
        hash_record(&self.limits.words(), SEED_LIMITS).wrapping_add(hash_words(&words, SEED_USAGE))
    }
}

/// Before-images that undo a linked chain.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Undo {
    Account { slot: u32, before: Account },
    Totals { slot: u32, before: LedgerTotals },
    Limits { slot: u32, before: LimitsEntry },
    RingStatus { position: u64, before: TransferStatus, before_hash: u128 },
    PendingInsert { slot: u32 },
    PendingResolve { slot: u32 },
}

/// Where a linked chain began, to roll back to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainMark {
    hash_sum: u128,
    balance_sums: [u128; 4],
    ring_tail: u64,
    accounts_count: u32,
    /// Ledgers (currencies) registered before the chain: a chain that registers one and
    /// fails gives the slot back.
    ledgers_count: u32,
    undo_len: usize,
}

/// The parts of the state hash that are sums over records (see `Ledger::state_hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashSums {
    /// Every record's hash: accounts (static fields), ring, holds, limits, ledger codes.
    pub records: u128,
    /// Per balance: Σ over accounts of weight(account id) × balance.
    pub balances: [u128; 4],
}

/// An odd 128-bit weight of a value for the weighted sums of the state hash: odd, so a change
/// of any amount changes the weighted sum.
#[inline]
fn weight(value: u128, seed: u64) -> u128 {
    let base = id_hash(value, seed);
    (u128::from(base) << 64) | u128::from(base.rotate_left(32)) | 1
}

/// Index tags of one transfer event, computed before the apply loop so it can prefetch ahead.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lookahead {
    pub id: u32,
    pub debit: u32,
    pub credit: u32,
    /// Account slots the prefetch found by tag (NONE if none): a hint, confirmed by id.
    pub debit_slot: u32,
    pub credit_slot: u32,
}

const SEED_ACCOUNT: u64 = 0xacc0_0017;
const SEED_WEIGHT: u64 = 0x3e16_4700;
const SEED_RING: u64 = 0x7a17_0000;
const SEED_PENDING: u64 = 0x9e7d_1700;
const SEED_LIMITS: u64 = 0x1171_7500;
const SEED_USAGE: u64 = 0x05a6_e000;
const SEED_DIGEST: u64 = 0xd16e_5700;
const SEED_LEDGER: u64 = 0x1ed6_e700;
/// Evictions ahead of the current one whose index entries are prefetched: the eviction loop
/// does little per entry, so it looks far ahead.
const EVICT_PREFETCH_DISTANCE: u64 = 64;

/// The ledger state machine.
pub struct Ledger {
    pub(crate) config: Config,
    pub(crate) accounts: Vec<Line<Account>>,
    pub(crate) account_index: Index,
    /// Per account slot: its slot in `limits`, or NONE.
    pub(crate) account_limits: Vec<u32>,
    pub(crate) limits: Vec<LimitsEntry>,
    /// The idempotency window: the last `transfers_max` transfers, oldest at `ring_head`.
    pub(crate) ring: Vec<Line<Transfer>>,
    pub(crate) ring_status: Vec<TransferStatus>,
    pub(crate) ring_hash: Vec<u128>,
    pub(crate) ring_head: u64,
    pub(crate) ring_tail: u64,
    pub(crate) transfer_index: Index,
    /// Transfer ids whose embedded time is below this may have been forgotten: refused.
    pub(crate) horizon_ms: u64,
    pub(crate) pending: PendingTable,
    pub(crate) ledgers: Vec<LedgerTotals>,
    pub(crate) ledger_index: Index,
    /// The timestamp of the last event applied (batches take `count` consecutive ones).
    pub(crate) timestamp_last: u64,
    /// Wrapping sum of every record's hash (see `state_hash`); balances are kept apart.
    pub(crate) hash_sum: u128,
    /// Per balance (debits_pending, debits_posted, credits_pending, credits_posted): the
    /// wrapping sum over accounts of weight(id) × balance, updated with one multiply.
    pub(crate) balance_sums: [u128; 4],
    /// `transfer_ring_size() - 1`.
    pub(crate) ring_mask: u64,
    /// (ledger, totals slot) of the last lookup: most batches move one currency.
    pub(crate) totals_cache: (u32, u32),
    // Scratch, not state:
    pub(crate) undo: Vec<Undo>,
    pub(crate) chain: Option<ChainMark>,
    /// Holds resolved inside the open chain, not yet removed from the table.
    pub(crate) pending_resolved_in_chain: u32,
    pub(crate) lookahead: Vec<Lookahead>,
    /// (day, month) of the last calendar lookup.
    pub(crate) calendar: (u32, u32),
}

const _: () = assert!(CreateAccountResult::LinkedEventFailed as u32 == CreateTransferResult::LinkedEventFailed as u32);
const _: () =
    assert!(CreateAccountResult::LinkedEventChainOpen as u32 == CreateTransferResult::LinkedEventChainOpen as u32);
const LINKED_EVENT_FAILED: u32 = CreateTransferResult::LinkedEventFailed as u32;
const LINKED_EVENT_CHAIN_OPEN: u32 = CreateTransferResult::LinkedEventChainOpen as u32;

impl Ledger {
    /// Allocates every table from the config. This is the only place the ledger allocates.
    pub fn new(config: Config) -> Result<Ledger, ConfigError> {
        let config = config.validated()?;
        let ring_size = config.transfer_ring_size() as usize;
        let batch = config.batch_events_max as usize;
        let seed = config.hash_seed;
        Ok(Ledger {
            accounts: Vec::with_capacity(config.accounts_max as usize),
            account_index: Index::new(config.accounts_max, seed),
            account_limits: vec![NONE; config.accounts_max as usize],
            limits: Vec::with_capacity(config.limits_max as usize),
            ring: vec![Line::default(); ring_size],
            ring_status: vec![TransferStatus::Posted; ring_size],
            ring_hash: vec![0; ring_size],
            ring_head: 0,
            ring_tail: 0,
            transfer_index: Index::new(ring_size as u32, seed ^ 0x7a),
            horizon_ms: 0,
            pending: PendingTable::new(config.pending_max + config.batch_events_max, config.accounts_max, seed),
            ledgers: Vec::with_capacity(config.ledgers_max as usize),
            ledger_index: Index::new(config.ledgers_max, seed ^ 0x1e),
            timestamp_last: 0,
            hash_sum: 0,
            balance_sums: [0; 4],
            ring_mask: u64::from(config.transfer_ring_size() - 1),
            totals_cache: (0, NONE),
            // A chain touches at most: two accounts, two totals, two limits, a ring status
            // and a pending entry per event.
            undo: Vec::with_capacity(batch * 8),
            chain: None,
            pending_resolved_in_chain: 0,
            lookahead: vec![Lookahead::default(); batch],
            calendar: (u32::MAX, 0),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The smallest timestamp the next batch may carry.
    pub fn timestamp_next_min(&self) -> u64 {
        self.timestamp_last + 1
    }

    pub fn timestamp_last(&self) -> u64 {
        self.timestamp_last
    }

    pub fn accounts_count(&self) -> u32 {
        self.accounts.len() as u32
    }

    /// Transfers in the idempotency window.
    pub fn transfers_count(&self) -> u32 {
        (self.ring_tail - self.ring_head) as u32
    }

    /// Transfers ever created (the ring's tail position).
    pub fn transfers_created(&self) -> u64 {
        self.ring_tail
    }

    /// Open holds.
    pub fn pending_count(&self) -> u32 {
        self.pending.count() - self.pending_resolved_in_chain
    }

    pub(crate) fn pending_is_full(&self) -> bool {
        self.pending_count() >= self.config.pending_max
    }

    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    pub fn ledger_totals(&self) -> &[LedgerTotals] {
        &self.ledgers
    }

    /// Bytes of memory the state occupies, by table.
    pub fn memory_bytes(&self) -> MemoryBytes {
        let accounts = self.accounts.capacity() * 128 + self.account_limits.len() * 4;
        let ring = self.ring.len() * (128 + 16 + 1);
        MemoryBytes {
            accounts: accounts as u64 + self.account_index.size_bytes(),
            transfers: ring as u64 + self.transfer_index.size_bytes(),
            pending: self.pending.size_bytes(),
            limits: (self.limits.capacity() * core::mem::size_of::<LimitsEntry>()) as u64,
        }
    }

    /// Applies one mutating batch at `timestamp_ns`: event `i` gets `timestamp_ns + i`. First,
    /// every pending transfer whose timeout falls at or before the batch's last timestamp
    /// expires. Never fails: each event's outcome is a result code in `output`.
    pub fn apply(&mut self, timestamp_ns: u64, batch: Batch<'_>, output: &mut Output) {
        assert!(timestamp_ns > self.timestamp_last, "timestamps must increase (sequencer bug)");
        assert!(batch.len() <= self.config.batch_events_max as usize, "batch over batch_events_max");
        assert!(self.chain.is_none());
        output.clear();
        let count = batch.len().max(1) as u64;
        let timestamp_end = timestamp_ns.checked_add(count - 1).expect("timestamp overflow");
        self.expire_until(timestamp_ns, timestamp_end, output);
        match batch {
            Batch::Pulse => {}
            Batch::CreateAccounts(events) => self.create_accounts(timestamp_ns, events, output),
            Batch::CreateTransfers(events) => self.create_transfers(timestamp_ns, events, output),
            Batch::CloseAccounts(events) => self.close_accounts(timestamp_ns, events, output, true),
            Batch::ReopenAccounts(events) => self.close_accounts(timestamp_ns, events, output, false),
            Batch::SetAccountLimits(events) => self.set_account_limits(timestamp_ns, events, output),
        }
        self.timestamp_last = timestamp_end;
        assert!(self.chain.is_none(), "a chain outlived its batch");
        self.undo.clear();
        self.verify_totals();
        #[cfg(feature = "verify")]
        self.verify();
    }

    /// Answers a read from the applied state.
    pub fn query(&self, query: Query<'_>, output: &mut Output) {
        assert!(self.chain.is_none());
        output.clear();
        match query {
            Query::LookupAccounts(ids) => self.lookup_accounts(ids, output),
            Query::LookupTransfers(ids) => self.lookup_transfers(ids, output),
            Query::LookupBalances(ids) => self.lookup_balances(ids, output),
        }
    }

    /// Runs `count` events through `each`, which returns a result code, handling linked
    /// chains: a chain's events are applied in turn, and at the first failure everything the
    /// chain did is rolled back and its other events are reported `LinkedEventFailed`.
    pub(crate) fn apply_linked(
        &mut self,
        count: usize,
        output: &mut Output,
        linked: impl Fn(usize) -> bool,
        mut each: impl FnMut(&mut Ledger, usize) -> u32,
        change_of: impl Fn(&Ledger, usize) -> Change,
    ) {
        let mut chain_start: Option<usize> = None;
        let mut chain_failed = false;
        // Changes recorded before the open chain began: a rollback drops the chain's.
        let mut chain_changes_len = 0;
        for index in 0..count {
            let is_linked = linked(index);
            if chain_start.is_none() && is_linked {
                self.chain_begin();
                chain_start = Some(index);
                chain_failed = false;
                chain_changes_len = output.changes.len();
            }
            let code = if chain_failed {
                LINKED_EVENT_FAILED
            } else if is_linked && index + 1 == count {
                LINKED_EVENT_CHAIN_OPEN
            } else {
                each(self, index)
            };
            if code == 0 && output.changes_enabled() {
                output.change_push(change_of(self, index));
            }
            if code != 0 {
                if let (Some(start), false) = (chain_start, chain_failed) {
                    self.chain_rollback();
                    output.changes.truncate(chain_changes_len);
                    (start..index).for_each(|member| output.push_result(member, LINKED_EVENT_FAILED));
                    chain_failed = true;
                }
                output.push_result(index, code);
            }
            if chain_start.is_some() && !is_linked {
                if !chain_failed {
                    self.chain_commit();
                }
                chain_start = None;
                chain_failed = false;
            }
        }
        if chain_start.is_some() {
            assert!(chain_failed, "an open chain at the end of a batch must have failed");
        }
        assert!(self.chain.is_none());
    }

    fn chain_begin(&mut self) {
        assert!(self.chain.is_none());
        assert!(self.undo.is_empty());
        self.chain = Some(ChainMark {
            hash_sum: self.hash_sum,
            balance_sums: self.balance_sums,
            ring_tail: self.ring_tail,
            accounts_count: self.accounts_count(),
            ledgers_count: self.ledgers.len() as u32,
            undo_len: self.undo.len(),
        });
    }

    fn chain_commit(&mut self) {
        let mark = self.chain.take().expect("chain_commit without a chain");
        // Holds resolved inside the chain close now that the chain stands.
        for position in mark.undo_len..self.undo.len() {
            if let Undo::PendingResolve { slot } = self.undo[position] {
                self.pending_remove(slot);
            }
        }
        self.undo.clear();
        self.pending_resolved_in_chain = 0;
    }

    fn chain_rollback(&mut self) {
        let mark = self.chain.take().expect("chain_rollback without a chain");
        while self.undo.len() > mark.undo_len {
            match self.undo.pop().expect("undo entry") {
                Undo::Account { slot, before } => self.accounts[slot as usize].0 = before,
                Undo::Totals { slot, before } => self.ledgers[slot as usize] = before,
                Undo::Limits { slot, before } => self.limits[slot as usize] = before,
                Undo::RingStatus { position, before, before_hash } => {
                    let slot = self.ring_slot(position);
                    self.ring_status[slot] = before;
                    self.ring_hash[slot] = before_hash;
                }
                Undo::PendingInsert { slot } => self.pending.remove(slot),
                Undo::PendingResolve { slot } => self.pending.entries[slot as usize].status = TransferStatus::Pending,
            }
        }
        while self.ring_tail > mark.ring_tail {
            self.ring_tail -= 1;
            let slot = self.ring_slot(self.ring_tail);
            let tag = self.transfer_index.tag(self.ring[slot].0.id.0);
            self.transfer_index.remove(tag, slot as u32);
        }
        while self.accounts_count() > mark.accounts_count {
            let account = self.accounts.pop().expect("account to roll back").0;
            let tag = self.account_index.tag(account.id.0);
            self.account_index.remove(tag, self.accounts.len() as u32);
        }
        self.chain_rollback_ledgers(mark.ledgers_count);
        self.hash_sum = mark.hash_sum;
        self.balance_sums = mark.balance_sums;
        self.undo.truncate(mark.undo_len);
        self.pending_resolved_in_chain = 0;
    }

    /// Unregisters the ledgers a failed chain registered (newest first). Their totals are zero:
    /// a chain registers a ledger only by creating its first account, and account chains move
    /// no money. The one-entry totals cache may name a removed slot, so it is cleared.
    fn chain_rollback_ledgers(&mut self, ledgers_count: u32) {
        assert!(self.ledgers.len() >= ledgers_count as usize, "a chain only adds ledgers");
        while self.ledgers.len() > ledgers_count as usize {
            let totals = self.ledgers.pop().expect("ledger to roll back");
            assert_eq!(totals, LedgerTotals { ledger: totals.ledger, ..LedgerTotals::default() });
            let tag = self.ledger_index.tag(u128::from(totals.ledger));
            self.ledger_index.remove(tag, self.ledgers.len() as u32);
        }
        if self.totals_cache.1 != NONE && self.totals_cache.1 >= ledgers_count {
            self.totals_cache = (0, NONE);
        }
        assert_eq!(self.ledger_index.count(), ledgers_count);
    }

    pub(crate) fn undo_push(&mut self, undo: Undo) {
        if self.chain.is_some() {
            assert!(self.undo.len() < self.undo.capacity(), "undo log over capacity");
            self.undo.push(undo);
        }
    }

    // ----- accounts and balances -----

    #[inline]
    pub(crate) fn account_find(&self, tag: Tag, id: AccountId) -> Option<u32> {
        let accounts = &self.accounts;
        self.account_index.find(tag, |slot| accounts[slot as usize].0.id == id)
    }

    pub(crate) fn account(&self, slot: u32) -> &Account {
        &self.accounts[slot as usize].0
    }

    /// The static part of an account's hash: every field but the balances.
    pub(crate) fn account_static_hash(account: &Account) -> u128 {
        let mut words = account.words();
        words[2..10].fill(0);
        hash_record(&words, SEED_ACCOUNT)
    }

    /// The weight of an account's balances in the state hash: odd, so a change of any amount
    /// changes the weighted sum.
    #[inline]
    fn balance_weight(&self, id: AccountId) -> u128 {
        weight(id.0, self.config.hash_seed ^ SEED_WEIGHT)
    }

    /// The hash of a ledger (currency) code's registration: a record of the state like any other.
    fn ledger_registration_hash(ledger: u32) -> u128 {
        hash_words(&[u64::from(ledger)], SEED_LEDGER)
    }

    /// One double entry: `amount` onto (or, with `subtract`, off) the debit account's debits
    /// and the credit account's credits, pending or posted, and the ledger's running totals.
    /// The only way balances change, so every movement has both sides by construction. The
    /// caller has checked that nothing overflows and passes the ledger's totals slot.
    #[inline]
    pub(crate) fn entry_apply(
        &mut self,
        debit_slot: u32,
        credit_slot: u32,
        phase: Phase,
        amount: Amount,
        totals_slot: u32,
        subtract: bool,
    ) {
        assert!(debit_slot != credit_slot, "an entry needs two accounts");
        if self.chain.is_some() {
            let (debit, credit) = (self.accounts[debit_slot as usize].0, self.accounts[credit_slot as usize].0);
            self.undo_push(Undo::Account { slot: debit_slot, before: debit });
            self.undo_push(Undo::Account { slot: credit_slot, before: credit });
            self.undo_push(Undo::Totals { slot: totals_slot, before: self.ledgers[totals_slot as usize] });
        }
        let (debit_balance, credit_balance) = match phase {
            Phase::Pending => (Balance::DebitsPending, Balance::CreditsPending),
            Phase::Posted => (Balance::DebitsPosted, Balance::CreditsPosted),
        };
        let ledger = self.ledgers[totals_slot as usize].ledger;
        self.balance_change(debit_slot, debit_balance, amount, ledger, subtract);
        self.balance_change(credit_slot, credit_balance, amount, ledger, subtract);
        let totals = &mut self.ledgers[totals_slot as usize];
        let (debits, credits) = match phase {
            Phase::Pending => (&mut totals.debits_pending, &mut totals.credits_pending),
            Phase::Posted => (&mut totals.debits_posted, &mut totals.credits_posted),
        };
        if subtract {
            *debits = debits.wrapping_sub(amount.0);
            *credits = credits.wrapping_sub(amount.0);
        } else {
            *debits = debits.wrapping_add(amount.0);
            *credits = credits.wrapping_add(amount.0);
        }
    }

    /// One side of an entry: the account's balance and its weighted sum in the state hash.
    #[inline(always)]
    fn balance_change(&mut self, slot: u32, balance: Balance, amount: Amount, ledger: u32, subtract: bool) {
        let account = &self.accounts[slot as usize].0;
        assert_eq!(account.ledger, ledger, "an entry across ledgers");
        let weighted = self.balance_weight(account.id).wrapping_mul(amount.0);
        let field = Self::balance_field(&mut self.accounts[slot as usize].0, balance);
        let sum = &mut self.balance_sums[balance as usize];
        if subtract {
            field.0 = field.0.checked_sub(amount.0).expect("balance underflow: a hold was released twice");
            *sum = sum.wrapping_sub(weighted);
        } else {
            field.0 = field.0.checked_add(amount.0).expect("balance overflow: caller must check");
            *sum = sum.wrapping_add(weighted);
        }
    }

    fn balance_field(account: &mut Account, balance: Balance) -> &mut Amount {
        match balance {
            Balance::DebitsPending => &mut account.debits_pending,
            Balance::DebitsPosted => &mut account.debits_posted,
            Balance::CreditsPending => &mut account.credits_pending,
            Balance::CreditsPosted => &mut account.credits_posted,
        }
    }

    /// Sets an account's flags (close, reopen, limits), keeping the hash in step.
    pub(crate) fn account_flags_set(&mut self, slot: u32, flags: u16) {
        let before = self.accounts[slot as usize].0;
        assert!(self.chain.is_none(), "flag changes are not chained");
        let mut after = before;
        after.flags.0 = flags;
        self.hash_sum = self
            .hash_sum
            .wrapping_sub(Self::account_static_hash(&before))
            .wrapping_add(Self::account_static_hash(&after));
        self.accounts[slot as usize].0 = after;
    }

    // ----- ledgers (currencies) -----

    /// The totals slot of a ledger code, registering it if new; None when `ledgers_max` are in use.
    pub(crate) fn ledger_slot_or_register(&mut self, ledger: u32) -> Option<u32> {
        if let Some(slot) = self.ledger_slot(ledger) {
            return Some(slot);
        }
        if self.ledgers.len() == self.config.ledgers_max as usize {
            return None;
        }
        let slot = self.ledgers.len() as u32;
        self.ledgers.push(LedgerTotals { ledger, ..LedgerTotals::default() });
        self.ledger_index.insert(self.ledger_index.tag(u128::from(ledger)), slot);
        self.hash_sum = self.hash_sum.wrapping_add(Self::ledger_registration_hash(ledger));
        Some(slot)
    }

    /// The totals slot of a ledger that an account uses (always registered). Slots never
    /// move; the one slot that can go away (a registration a failed chain rolls back) clears
    /// the one-entry cache when it does.
    #[inline]
    pub(crate) fn totals_slot(&mut self, ledger: u32) -> u32 {
        if self.totals_cache.0 == ledger && self.totals_cache.1 != NONE {
            return self.totals_cache.1;
        }
        let slot = self.ledger_slot(ledger).expect("an account's ledger is registered");
        self.totals_cache = (ledger, slot);
        slot
    }

    pub(crate) fn ledger_slot(&self, ledger: u32) -> Option<u32> {
        let ledgers = &self.ledgers;
        self.ledger_index
            .find(self.ledger_index.tag(u128::from(ledger)), |slot| ledgers[slot as usize].ledger == ledger)
    }

    // ----- the transfer ring (idempotency window) -----

    #[inline(always)]
    pub(crate) fn ring_slot(&self, position: u64) -> usize {
        (position & self.ring_mask) as usize
    }

    fn ring_record_hash(transfer: &Transfer, status: TransferStatus) -> u128 {
        hash_record(&transfer.words(), SEED_RING ^ status as u64)
    }

    /// The ring slot of a remembered transfer.
    #[inline]
    pub(crate) fn ring_find(&self, tag: Tag, id: TransferId) -> Option<usize> {
        let ring = &self.ring;
        self.transfer_index.find(tag, |slot| ring[slot as usize].0.id == id).map(|slot| slot as usize)
    }

    /// Remembers a transfer, stamped with `timestamp_ns`; returns its ring position.
    pub(crate) fn ring_push(
        &mut self,
        tag: Tag,
        transfer: &Transfer,
        timestamp_ns: u64,
        status: TransferStatus,
    ) -> u64 {
        assert!(self.ring_tail - self.ring_head <= self.ring_mask, "ring full");
        assert!(timestamp_ns != 0);
        let position = self.ring_tail;
        let slot = self.ring_slot(position);
        let record = &mut self.ring[slot].0;
        *record = *transfer;
        record.timestamp = timestamp_ns;
        let hash = Self::ring_record_hash(record, status);
        self.ring_status[slot] = status;
        self.ring_hash[slot] = hash;
        self.ring_tail += 1;
        self.transfer_index.insert(tag, slot as u32);
        self.hash_sum = self.hash_sum.wrapping_add(hash);
        position
    }

    /// Changes the status of a remembered transfer, if it is still in the window.
    pub(crate) fn ring_status_set(&mut self, position: u64, status: TransferStatus) {
        if position < self.ring_head {
            return;
        }
        assert!(position < self.ring_tail);
        let slot = self.ring_slot(position);
        let before_hash = self.ring_hash[slot];
        self.undo_push(Undo::RingStatus { position, before: self.ring_status[slot], before_hash });
        let hash = Self::ring_record_hash(&self.ring[slot].0, status);
        self.ring_status[slot] = status;
        self.ring_hash[slot] = hash;
        self.hash_sum = self.hash_sum.wrapping_sub(before_hash).wrapping_add(hash);
    }

    /// Forgets the oldest transfers until at most `transfers_max` remain, raising the horizon
    /// past each forgotten id so that a resubmission of it is refused, never applied twice.
    pub(crate) fn ring_evict(&mut self) {
        let window = u64::from(self.config.transfers_max);
        let evict_count = (self.ring_tail - self.ring_head).saturating_sub(window);
        let distance = EVICT_PREFETCH_DISTANCE;
        for ahead in 0..evict_count.min(distance) {
            self.ring_prefetch_index(self.ring_head + ahead);
        }
        for evicted in 0..evict_count {
            if evicted + distance < evict_count {
                self.ring_prefetch_index(self.ring_head + distance);
            }
            let slot = self.ring_slot(self.ring_head);
            let id = self.ring[slot].0.id;
            self.transfer_index.remove(self.transfer_index.tag(id.0), slot as u32);
            self.hash_sum = self.hash_sum.wrapping_sub(self.ring_hash[slot]);
            self.horizon_ms = self.horizon_ms.max(id.time_ms() + 1);
            self.ring_head += 1;
        }
        assert!(self.ring_tail - self.ring_head <= window);
    }

    fn ring_prefetch_index(&self, position: u64) {
        let slot = self.ring_slot(position);
        self.transfer_index.prefetch(self.transfer_index.tag(self.ring[slot].0.id.0));
    }

    // ----- pending transfers -----

    fn pending_hash(entry: &PendingEntry) -> u128 {
        hash_record(&entry.transfer.words(), SEED_PENDING)
    }

    pub(crate) fn pending_insert(
        &mut self,
        transfer: &Transfer,
        debit_slot: u32,
        credit_slot: u32,
        expires_at_ns: u64,
        ring_position: u64,
    ) {
        let slot = self.pending.insert(transfer, debit_slot, credit_slot, expires_at_ns, ring_position);
        self.hash_sum = self.hash_sum.wrapping_add(Self::pending_hash(&self.pending.entries[slot as usize]));
        self.undo_push(Undo::PendingInsert { slot });
    }

    /// Marks a hold posted, voided or expired; it closes now, or when its chain commits.
    pub(crate) fn pending_resolve(&mut self, slot: u32, status: TransferStatus) {
        let entry = &mut self.pending.entries[slot as usize];
        assert_eq!(entry.status, TransferStatus::Pending, "a hold resolves once");
        assert!(matches!(
            status,
            TransferStatus::PendingPosted | TransferStatus::PendingVoided | TransferStatus::PendingExpired
        ));
        entry.status = status;
        let position = entry.ring_position;
        self.ring_status_set(position, status);
        if self.chain.is_some() {
            self.undo_push(Undo::PendingResolve { slot });
            self.pending_resolved_in_chain += 1;
        } else {
            self.pending_remove(slot);
        }
    }

    fn pending_remove(&mut self, slot: u32) {
        let hash = Self::pending_hash(&self.pending.entries[slot as usize]);
        self.hash_sum = self.hash_sum.wrapping_sub(hash);
        self.pending.remove(slot);
    }

    /// Expires, in (expires_at, id) order, every hold whose timeout is at or before
    /// `timestamp_end`, at the start of the batch that begins at `timestamp_ns`.
    fn expire_until(&mut self, timestamp_ns: u64, timestamp_end: u64, output: &mut Output) {
        assert!(timestamp_ns <= timestamp_end);
        while let Some((expires_at_ns, slot)) = self.pending.expiry_next() {
            if expires_at_ns > timestamp_end {
                break;
            }
            let entry = self.pending.entries[slot as usize];
            assert!(expires_at_ns > entry.transfer.timestamp);
            let totals_slot = self.totals_slot(entry.transfer.ledger);
            self.entry_apply(
                entry.debit_slot,
                entry.credit_slot,
                Phase::Pending,
                entry.transfer.amount,
                totals_slot,
                true,
            );
            self.pending_resolve(slot, TransferStatus::PendingExpired);
            output.expired_count += 1;
            if output.changes_enabled() {
                let (debit_account, credit_account) =
                    (*self.account(entry.debit_slot), *self.account(entry.credit_slot));
                output.change_push(Change {
                    kind: ChangeKind::HoldExpired,
                    index: CHANGE_INDEX_EXPIRY,
                    timestamp_ns,
                    transfer: entry.transfer,
                    debit_account,
                    credit_account,
                });
            }
        }
    }

    // ----- the change-data feed -----

    /// The change a transfer event that just succeeded made: the transfer as stored (the
    /// ring's newest) and its accounts as they are now.
    pub(crate) fn change_of_transfer(&self, index: usize) -> Change {
        assert!(self.ring_tail > self.ring_head, "a transfer that succeeded is in the ring");
        let transfer = self.ring[self.ring_slot(self.ring_tail - 1)].0;
        let kind = if transfer.flags.contains(TransferFlags::PENDING) {
            ChangeKind::HoldPlaced
        } else if transfer.flags.contains(TransferFlags::POST_PENDING) {
            ChangeKind::HoldPosted
        } else if transfer.flags.contains(TransferFlags::VOID_PENDING) {
            ChangeKind::HoldVoided
        } else {
            ChangeKind::TransferPosted
        };
        let account_of = |id: AccountId| {
            let slot = self.account_find(self.account_index.tag(id.0), id).expect("a transfer's accounts exist");
            *self.account(slot)
        };
        Change {
            kind,
            index: index as u32,
            timestamp_ns: transfer.timestamp,
            transfer,
            debit_account: account_of(transfer.debit_account_id),
            credit_account: account_of(transfer.credit_account_id),
        }
    }

    /// The change an account event made: the account as it is now.
    pub(crate) fn change_of_account(&self, kind: ChangeKind, index: usize, timestamp_ns: u64, slot: u32) -> Change {
        assert!(!kind.is_transfer());
        Change {
            kind,
            index: index as u32,
            timestamp_ns,
            transfer: Transfer::default(),
            debit_account: *self.account(slot),
            credit_account: Account::default(),
        }
    }

    // ----- limits -----

    pub(crate) fn limits_update(&mut self, slot: u32, update: impl FnOnce(&mut LimitsEntry)) {
        let before = self.limits[slot as usize];
        self.undo_push(Undo::Limits { slot, before });
        let mut after = before;
        update(&mut after);
        self.hash_sum = self.hash_sum.wrapping_sub(before.hash()).wrapping_add(after.hash());
        self.limits[slot as usize] = after;
    }

    pub(crate) fn limits_push(&mut self, entry: LimitsEntry) -> u32 {
        assert!(self.limits.len() < self.config.limits_max as usize);
        let slot = self.limits.len() as u32;
        self.hash_sum = self.hash_sum.wrapping_add(entry.hash());
        self.limits.push(entry);
        slot
    }

    /// (day, month) of a timestamp, cached across the events of a batch.
    pub(crate) fn calendar_period(&mut self, timestamp_ns: u64) -> (u32, u32) {
        let day = crate::calendar::day_of(timestamp_ns);
        if self.calendar.0 != day {
            self.calendar = (day, crate::calendar::month_of_day(day));
        }
        self.calendar
    }

    // ----- the state hash and the invariants -----

    /// A 128-bit digest of the whole state, in O(1): the wrapping sum of every record's hash
    /// (accounts, remembered transfers with their status, open holds, limits with usage, the
    /// registered ledger codes), kept up to date event by event; the weighted sums of the
    /// accounts' balances and of the ledgers' running totals; folded with the scalars (window
    /// bounds, horizon, clock, counts). Two ledgers with equal digests hold the same state;
    /// `state_hash_recompute` derives it from scratch for snapshots and tests.
    pub fn state_hash(&self) -> u128 {
        self.state_digest(&HashSums { records: self.hash_sum, balances: self.balance_sums })
    }

    fn state_digest(&self, sums: &HashSums) -> u128 {
        // Five 128-bit sums as two words each, then eight scalars.
        let mut words = [0u64; 5 * 2 + 8];
        let sums = [sums.records].into_iter().chain(sums.balances);
        for (pair, sum) in words.chunks_exact_mut(2).zip(sums) {
            pair[0] = sum as u64;
            pair[1] = (sum >> 64) as u64;
        }
        let scalars = [
            self.ring_head,
            self.ring_tail,
            self.horizon_ms,
            self.timestamp_last,
            u64::from(self.accounts_count()),
            u64::from(self.pending.count()),
            self.limits.len() as u64,
            self.ledgers.len() as u64,
        ];
        words[5 * 2..].copy_from_slice(&scalars);
        hash_words(&words, SEED_DIGEST)
    }

    /// The state hash computed from every record: O(n).
    pub fn state_hash_recompute(&self) -> u128 {
        self.state_digest(&self.hash_sums_compute())
    }

    /// The state hash's sums from every record, checking each stored ring hash on the way.
    pub(crate) fn hash_sums_compute(&self) -> HashSums {
        let mut sum = 0u128;
        let mut balance_sums = [0u128; 4];
        for line in &self.accounts {
            let account = &line.0;
            sum = sum.wrapping_add(Self::account_static_hash(account));
            let weight = self.balance_weight(account.id);
            let balances =
                [account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted];
            for (total, amount) in balance_sums.iter_mut().zip(balances) {
                *total = total.wrapping_add(weight.wrapping_mul(amount.0));
            }
        }
        for position in self.ring_head..self.ring_tail {
            let slot = self.ring_slot(position);
            let hash = Self::ring_record_hash(&self.ring[slot].0, self.ring_status[slot]);
            assert_eq!(hash, self.ring_hash[slot], "ring hash of position {position}");
            sum = sum.wrapping_add(hash);
        }
        for slot in self.pending.slots() {
            sum = sum.wrapping_add(Self::pending_hash(&self.pending.entries[slot as usize]));
        }
        for (slot, entry) in self.limits.iter().enumerate() {
            assert_eq!(self.account_limits[entry.account_slot as usize], slot as u32, "limits back-pointer");
            sum = sum.wrapping_add(entry.hash());
        }
        // The running totals are not hashed: they are a function of the accounts (Σ of their
        // balances per ledger), checked as such by `verify` and by `image_read`; hashing them
        // too would cost every entry a multiply-add and tell nothing new.
        for totals in &self.ledgers {
            sum = sum.wrapping_add(Self::ledger_registration_hash(totals.ledger));
        }
        HashSums { records: sum, balances: balance_sums }
    }

    /// O(ledgers), after every batch: Σ debits = Σ credits per ledger, posted and pending.
    fn verify_totals(&self) {
        for totals in &self.ledgers {
            assert_eq!(
                totals.debits_posted, totals.credits_posted,
                "ledger {}: posted debits != credits",
                totals.ledger
            );
            assert_eq!(
                totals.debits_pending, totals.credits_pending,
                "ledger {}: pending debits != credits",
                totals.ledger
            );
        }
    }

    /// O(n): every invariant, checked by scanning. Tests, the simulator and snapshots call it.
    pub fn verify(&self) {
        self.verify_totals();
        let mut sums: Vec<LedgerTotals> =
            self.ledgers.iter().map(|t| LedgerTotals { ledger: t.ledger, ..Default::default() }).collect();
        let mut holds_debit = vec![0u128; self.accounts.len()];
        let mut holds_credit = vec![0u128; self.accounts.len()];
        for slot in self.pending.slots() {
            let entry = &self.pending.entries[slot as usize];
            assert_eq!(entry.status, TransferStatus::Pending, "a resolved hold outlived its chain");
            holds_debit[entry.debit_slot as usize] += entry.transfer.amount.0;
            holds_credit[entry.credit_slot as usize] += entry.transfer.amount.0;
        }
        for (slot, line) in self.accounts.iter().enumerate() {
            let account = &line.0;
            assert_eq!(self.account_find(self.account_index.tag(account.id.0), account.id), Some(slot as u32));
            assert_eq!(
                account.debits_pending.0, holds_debit[slot],
                "account {:#x}: debits_pending != its holds",
                account.id.0
            );
            assert_eq!(
                account.credits_pending.0, holds_credit[slot],
                "account {:#x}: credits_pending != its holds",
                account.id.0
            );
            let has_limits = self.account_limits[slot] != NONE
                && self.limits[self.account_limits[slot] as usize].limits.flags.0 != 0;
            assert_eq!(account.flags.contains(crate::types::AccountFlags::LIMITS), has_limits, "limits flag");
            let totals = sums.iter_mut().find(|t| t.ledger == account.ledger).expect("account ledger registered");
            totals.debits_pending = totals.debits_pending.wrapping_add(account.debits_pending.0);
            totals.debits_posted = totals.debits_posted.wrapping_add(account.debits_posted.0);
            totals.credits_pending = totals.credits_pending.wrapping_add(account.credits_pending.0);
            totals.credits_posted = totals.credits_posted.wrapping_add(account.credits_posted.0);
        }
        assert_eq!(sums, self.ledgers, "running totals != sums over accounts");
        assert_eq!(self.account_index.count(), self.accounts_count());
        assert_eq!(u64::from(self.transfer_index.count()), self.ring_tail - self.ring_head);
        for position in self.ring_head..self.ring_tail {
            let slot = self.ring_slot(position);
            let id = self.ring[slot].0.id;
            assert_eq!(self.ring_find(self.transfer_index.tag(id.0), id), Some(slot));
        }
        self.pending.verify();
        assert_eq!(self.state_hash_recompute(), self.state_hash(), "incremental state hash != recomputed");
    }
}

/// Bytes of memory the state occupies, by table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBytes {
    pub accounts: u64,
    pub transfers: u64,
    pub pending: u64,
    pub limits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::AccountId;

    const TIMESTAMP_NS: u64 = 1_795_305_600 * 1_000_000_000;

    fn account(id: u128, ledger: u32) -> Account {
        Account { id: AccountId(id), ledger, code: 1, ..Account::default() }
    }

    #[test]
    fn the_state_hash_covers_the_ledger_registry() {
        let mut ledger = Ledger::new(Config::small()).expect("config");
        let mut output = Output::new(ledger.config());
        ledger.apply(TIMESTAMP_NS, Batch::CreateAccounts(&[account(1, 1), account(2, 1)]), &mut output);
        assert!(output.results.is_empty());
        let before = ledger.state_hash();
        assert_eq!(ledger.state_hash_recompute(), before);

        // A registration alone (what a rolled-back chain used to leave behind) changes it.
        assert_eq!(ledger.ledger_slot_or_register(7), Some(1));
        assert_ne!(ledger.state_hash(), before, "the registry is in the incremental hash");
        assert_eq!(ledger.state_hash_recompute(), ledger.state_hash(), "incremental and recomputed agree");
    }
}
