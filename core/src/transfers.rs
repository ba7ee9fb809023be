//! create_transfers: single-phase transfers, holds (pending, with an optional timeout), and
//! their post (full or partial) or void, with linked chains and exact idempotency.
//!
//! The hot path. A batch is applied in one pass that looks ahead: for event `i + 2·L` it
//! prefetches the index entries of the transfer id and both account ids, for event `i + L` it
//! prefetches the two account records the index points to, and event `i` then finds everything
//! in cache. The lookahead is only a hint; the rules below do every lookup themselves.

use crate::index::Tag;
use crate::ledger::{Ledger, Lookahead, Phase};
use crate::output::Output;
use crate::pending::NONE;
use crate::prefetch::prefetch_read;
use crate::results::CreateTransferResult;
use crate::types::{AccountFlags, AccountId, Amount, Transfer, TransferFlags, TransferId, TransferStatus};

const LOOKAHEAD: usize = 8;
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

// The future check adds `id_future_ms_max` to the clock in milliseconds: with the bound that
// `Config::validated` enforces, the largest clock plus the largest window fits in a u64.
const _: () = assert!(u64::MAX / NS_PER_MS <= u64::MAX - crate::config::ID_FUTURE_MS_MAX_LIMIT);

impl Ledger {
    pub(crate) fn create_transfers(&mut self, timestamp_ns: u64, events: &[Transfer], output: &mut Output) {
        self.ring_evict();
        for (lookahead, transfer) in self.lookahead.iter_mut().zip(events) {
            *lookahead = Lookahead {
                id: self.transfer_index.tag(transfer.id.0).0,
                debit: self.account_index.tag(transfer.debit_account_id.0).0,
                credit: self.account_index.tag(transfer.credit_account_id.0).0,
                debit_slot: NONE,
                credit_slot: NONE,
            };
        }
        for index in 0..events.len().min(2 * LOOKAHEAD) {
            self.prefetch_index_entries(index);
        }
        self.apply_linked(
            events.len(),
            output,
            |index| events[index].flags.contains(TransferFlags::LINKED),
            |ledger, index| {
                if index + 2 * LOOKAHEAD < events.len() {
                    ledger.prefetch_index_entries(index + 2 * LOOKAHEAD);
                }
                if index + LOOKAHEAD < events.len() {
                    ledger.prefetch_accounts(index + LOOKAHEAD);
                }
                ledger.create_transfer(index, &events[index], timestamp_ns + index as u64) as u32
            },
            |ledger, index| ledger.change_of_transfer(index),
        );
    }

    fn prefetch_index_entries(&self, index: usize) {
        let lookahead = self.lookahead[index];
        self.transfer_index.prefetch(Tag(lookahead.id));
        self.account_index.prefetch(Tag(lookahead.debit));
        self.account_index.prefetch(Tag(lookahead.credit));
    }

    /// Prefetches the account records the index names for event `index`, and remembers their
    /// slots so that applying the event need not probe the index again.
    fn prefetch_accounts(&mut self, index: usize) {
        let lookahead = self.lookahead[index];
        let mut slots = [NONE; 2];
        for (slot, tag) in slots.iter_mut().zip([lookahead.debit, lookahead.credit]) {
            if let Some(found) = self.account_index.find(Tag(tag), |_| true) {
                let line = &self.accounts[found as usize];
                prefetch_read(line);
                prefetch_read(&line.0.credits_posted);
                *slot = found;
            }
        }
        self.lookahead[index].debit_slot = slots[0];
        self.lookahead[index].credit_slot = slots[1];
    }

    /// The account's slot: the prefetch's hint if it holds that id, else an index lookup.
    #[inline]
    fn account_find_hinted(&self, hint: u32, tag: u32, id: AccountId) -> Option<u32> {
        if hint != NONE && self.account(hint).id == id {
            return Some(hint);
        }
        self.account_find(Tag(tag), id)
    }

    fn create_transfer(&mut self, index: usize, transfer: &Transfer, timestamp_ns: u64) -> CreateTransferResult {
        use CreateTransferResult as R;
        if transfer.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if transfer.flags.0 & !TransferFlags::MASK != 0 {
            return R::ReservedFlag;
        }
        if transfer.id.0 == 0 {
            return R::IdMustNotBeZero;
        }
        if transfer.id.0 == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        let id_tag = Tag(self.lookahead[index].id);
        if let Some(slot) = self.ring_find(id_tag, transfer.id) {
            return transfer_exists(transfer, &self.ring[slot].0);
        }
        if transfer.id.time_ms() < self.horizon_ms {
            return R::IdTooOld;
        }
        // Cannot overflow: Config::validated bounds id_future_ms_max (asserted above).
        let future_ms_max = (timestamp_ns / NS_PER_MS)
            .checked_add(self.config.id_future_ms_max)
            .expect("id_future_ms_max is bounded by Config::validated");
        if transfer.id.time_ms() > future_ms_max {
            return R::IdTimestampInFuture;
        }
        let flags = transfer.flags;
        let phases = [TransferFlags::PENDING, TransferFlags::POST_PENDING, TransferFlags::VOID_PENDING];
        if phases.iter().filter(|flag| flags.contains(**flag)).count() > 1 {
            return R::FlagsAreMutuallyExclusive;
        }
        if flags.contains(TransferFlags::POST_PENDING) || flags.contains(TransferFlags::VOID_PENDING) {
            return self.transfer_resolve(id_tag, transfer, timestamp_ns);
        }
        self.transfer_move(index, id_tag, transfer, timestamp_ns)
    }

    /// A single-phase transfer or a new hold.
    fn transfer_move(
        &mut self,
        index: usize,
        id_tag: Tag,
        transfer: &Transfer,
        timestamp_ns: u64,
    ) -> CreateTransferResult {
        use CreateTransferResult as R;
        let pending = transfer.flags.contains(TransferFlags::PENDING);
        if let Some(code) = transfer_fields_check(transfer, pending) {
            return code;
        }
        let lookahead = self.lookahead[index];
        let Some(debit_slot) =
            self.account_find_hinted(lookahead.debit_slot, lookahead.debit, transfer.debit_account_id)
        else {
            return R::DebitAccountNotFound;
        };
        let Some(credit_slot) =
            self.account_find_hinted(lookahead.credit_slot, lookahead.credit, transfer.credit_account_id)
        else {
            return R::CreditAccountNotFound;
        };
        let (debit, credit) = (self.account(debit_slot), self.account(credit_slot));
        if debit.ledger != credit.ledger {
            return R::AccountsMustHaveTheSameLedger;
        }
        if transfer.ledger != debit.ledger {
            return R::TransferMustHaveTheSameLedgerAsAccounts;
        }
        if debit.flags.contains(AccountFlags::CLOSED) {
            return R::DebitAccountClosed;
        }
        if credit.flags.contains(AccountFlags::CLOSED) {
            return R::CreditAccountClosed;
        }
        if pending && self.pending_is_full() {
            return R::PendingTransfersFull;
        }
        let expires_at_ns = match (pending, transfer.timeout_s) {
            (true, timeout_s) if timeout_s > 0 => match timestamp_ns.checked_add(u64::from(timeout_s) * NS_PER_S) {
                Some(expires_at_ns) if expires_at_ns != u64::MAX => expires_at_ns,
                _ => return R::OverflowsTimeout,
            },
            _ => u64::MAX,
        };
        let amount = transfer.amount;
        if let Some(code) = balances_check(debit, credit, amount, pending) {
            return code;
        }
        let (debit_flags, credit_flags, ledger) = (debit.flags, credit.flags, debit.ledger);
        if debit_flags.contains(AccountFlags::LIMITS) {
            let code = self.limits_check_debit(debit_slot, amount, timestamp_ns);
            if code != R::Ok {
                return code;
            }
        }
        if credit_flags.contains(AccountFlags::LIMITS) {
            let code = self.limits_check_credit(credit_slot, amount);
            if code != R::Ok {
                return code;
            }
        }
        let accounts =
            Moved { debit_slot, credit_slot, ledger, debit_limited: debit_flags.contains(AccountFlags::LIMITS) };
        self.transfer_move_apply(id_tag, transfer, timestamp_ns, accounts, expires_at_ns);
        R::Ok
    }

    /// The effects of a single-phase transfer or a new hold that passed every check.
    fn transfer_move_apply(
        &mut self,
        id_tag: Tag,
        transfer: &Transfer,
        timestamp_ns: u64,
        accounts: Moved,
        expires_at_ns: u64,
    ) {
        let Moved { debit_slot, credit_slot, ledger, debit_limited } = accounts;
        let amount = transfer.amount;
        let totals_slot = self.totals_slot(ledger);
        if transfer.flags.contains(TransferFlags::PENDING) {
            let position = self.ring_push(id_tag, transfer, timestamp_ns, TransferStatus::Pending);
            self.entry_apply(debit_slot, credit_slot, Phase::Pending, amount, totals_slot, false);
            let stored = Transfer { timestamp: timestamp_ns, ..*transfer };
            self.pending_insert(&stored, debit_slot, credit_slot, expires_at_ns, position);
        } else {
            assert_eq!(expires_at_ns, u64::MAX, "only a hold expires");
            self.ring_push(id_tag, transfer, timestamp_ns, TransferStatus::Posted);
            self.entry_apply(debit_slot, credit_slot, Phase::Posted, amount, totals_slot, false);
        }
        if debit_limited {
            self.limits_count_debit(debit_slot, amount, timestamp_ns);
        }
    }

    /// Post (fully or partly) or void a hold.
    fn transfer_resolve(&mut self, id_tag: Tag, transfer: &Transfer, timestamp_ns: u64) -> CreateTransferResult {
        use CreateTransferResult as R;
        let post = transfer.flags.contains(TransferFlags::POST_PENDING);
        if transfer.pending_id.0 == 0 {
            return R::PendingIdMustNotBeZero;
        }
        if transfer.pending_id.0 == u128::MAX {
            return R::PendingIdMustNotBeIntMax;
        }
        if transfer.pending_id == transfer.id {
            return R::PendingIdMustBeDifferent;
        }
        if transfer.timeout_s != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        let slot = match self.pending.find(transfer.pending_id.0) {
            Some(slot) => slot,
            None => return self.pending_missing(transfer.pending_id),
        };
        let entry = self.pending.entries[slot as usize];
        if entry.status != TransferStatus::Pending {
            return resolved_code(entry.status);
        }
        assert!(entry.expires_at_ns > timestamp_ns, "an expired hold was not swept");
        let held = entry.transfer;
        if let Some(code) = resolve_fields_check(transfer, &held, post) {
            return code;
        }
        let amount = if post && transfer.amount.0 != 0 { transfer.amount } else { held.amount };
        let (debit, credit) = (*self.account(entry.debit_slot), *self.account(entry.credit_slot));
        if post {
            if debit.flags.contains(AccountFlags::CLOSED) {
                return R::DebitAccountClosed;
            }
            if credit.flags.contains(AccountFlags::CLOSED) {
                return R::CreditAccountClosed;
            }
            if debit.debits_posted.checked_add(amount).is_none() {
                return R::OverflowsDebitsPosted;
            }
            if credit.credits_posted.checked_add(amount).is_none() {
                return R::OverflowsCreditsPosted;
            }
        }
        let stored = Transfer {
            debit_account_id: held.debit_account_id,
            credit_account_id: held.credit_account_id,
            amount,
            ledger: held.ledger,
            code: held.code,
            ..*transfer
        };
        let status = if post { TransferStatus::Posted } else { TransferStatus::Voided };
        self.ring_push(id_tag, &stored, timestamp_ns, status);
        let totals_slot = self.totals_slot(held.ledger);
        self.entry_apply(entry.debit_slot, entry.credit_slot, Phase::Pending, held.amount, totals_slot, true);
        if post {
            self.entry_apply(entry.debit_slot, entry.credit_slot, Phase::Posted, amount, totals_slot, false);
        }
        let resolved = if post { TransferStatus::PendingPosted } else { TransferStatus::PendingVoided };
        self.pending_resolve(slot, resolved);
        R::Ok
    }

    /// Why a post or void names no open hold.
    fn pending_missing(&self, pending_id: TransferId) -> CreateTransferResult {
        match self.ring_find(self.transfer_index.tag(pending_id.0), pending_id) {
            Some(slot) => {
                let status = self.ring_status[slot];
                assert!(status != TransferStatus::Pending, "an open hold missing from the pending table");
                resolved_code(status)
            }
            None if pending_id.time_ms() < self.horizon_ms => CreateTransferResult::PendingTransferTooOld,
            None => CreateTransferResult::PendingTransferNotFound,
        }
    }
}

/// The accounts a checked transfer moves money between.
#[derive(Clone, Copy)]
struct Moved {
    debit_slot: u32,
    credit_slot: u32,
    ledger: u32,
    debit_limited: bool,
}

/// The code for posting or voiding a transfer whose status is already `status`.
fn resolved_code(status: TransferStatus) -> CreateTransferResult {
    use CreateTransferResult as R;
    match status {
        TransferStatus::PendingPosted => R::PendingTransferAlreadyPosted,
        TransferStatus::PendingVoided => R::PendingTransferAlreadyVoided,
        TransferStatus::PendingExpired => R::PendingTransferExpired,
        TransferStatus::Posted | TransferStatus::Voided => R::PendingTransferNotPending,
        TransferStatus::Pending => unreachable!("an open hold is not resolved"),
    }
}

/// Field rules of a single-phase transfer or a new hold that need no lookup.
fn transfer_fields_check(transfer: &Transfer, pending: bool) -> Option<CreateTransferResult> {
    use CreateTransferResult as R;
    let checks = [
        (transfer.debit_account_id.0 == 0, R::DebitAccountIdMustNotBeZero),
        (transfer.debit_account_id.0 == u128::MAX, R::DebitAccountIdMustNotBeIntMax),
        (transfer.credit_account_id.0 == 0, R::CreditAccountIdMustNotBeZero),
        (transfer.credit_account_id.0 == u128::MAX, R::CreditAccountIdMustNotBeIntMax),
        (transfer.debit_account_id == transfer.credit_account_id, R::AccountsMustBeDifferent),
        (transfer.pending_id.0 != 0, R::PendingIdMustBeZero),
        (!pending && transfer.timeout_s != 0, R::TimeoutReservedForPendingTransfer),
        (transfer.amount.0 == 0, R::AmountMustNotBeZero),
        (transfer.ledger == 0, R::LedgerMustNotBeZero),
        (transfer.code == 0, R::CodeMustNotBeZero),
    ];
    checks.iter().find(|(failed, _)| *failed).map(|(_, code)| *code)
}

/// Overflow and balance-flag rules for moving (or holding) `amount` from debit to credit.
fn balances_check(
    debit: &crate::types::Account,
    credit: &crate::types::Account,
    amount: Amount,
    pending: bool,
) -> Option<CreateTransferResult> {
    use CreateTransferResult as R;
    if pending {
        if debit.debits_pending.checked_add(amount).is_none() {
            return Some(R::OverflowsDebitsPending);
        }
        if credit.credits_pending.checked_add(amount).is_none() {
            return Some(R::OverflowsCreditsPending);
        }
    } else {
        if debit.debits_posted.checked_add(amount).is_none() {
            return Some(R::OverflowsDebitsPosted);
        }
        if credit.credits_posted.checked_add(amount).is_none() {
            return Some(R::OverflowsCreditsPosted);
        }
    }
    let Some(debits) = debit.debits_pending.checked_add(debit.debits_posted).and_then(|d| d.checked_add(amount)) else {
        return Some(R::OverflowsDebits);
    };
    let Some(credits) = credit.credits_pending.checked_add(credit.credits_posted).and_then(|c| c.checked_add(amount))
    else {
        return Some(R::OverflowsCredits);
    };
    if debit.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > debit.credits_posted {
        return Some(R::ExceedsCredits);
    }
    if credit.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > credit.debits_posted {
        return Some(R::ExceedsDebits);
    }
    None
}

/// Rules of a post or void against the hold it names. Zero account ids, ledger and code
/// inherit the hold's.
fn resolve_fields_check(transfer: &Transfer, held: &Transfer, post: bool) -> Option<CreateTransferResult> {
    use CreateTransferResult as R;
    let differs = |value: u128, held_value: u128| value != 0 && value != held_value;
    if differs(transfer.debit_account_id.0, held.debit_account_id.0) {
        return Some(R::PendingTransferHasDifferentDebitAccountId);
    }
    if differs(transfer.credit_account_id.0, held.credit_account_id.0) {
        return Some(R::PendingTransferHasDifferentCreditAccountId);
    }
    if differs(transfer.ledger.into(), held.ledger.into()) {
        return Some(R::PendingTransferHasDifferentLedger);
    }
    if differs(transfer.code.into(), held.code.into()) {
        return Some(R::PendingTransferHasDifferentCode);
    }
    if post && transfer.amount > held.amount {
        return Some(R::ExceedsPendingTransferAmount);
    }
    if !post && differs(transfer.amount.0, held.amount.0) {
        return Some(R::PendingTransferHasDifferentAmount);
    }
    None
}

/// The outcome of resubmitting a remembered transfer: `Exists` when every field the client
/// gave matches (a zero that a post or void inherits matches what it resolved to).
fn transfer_exists(transfer: &Transfer, existing: &Transfer) -> CreateTransferResult {
    use CreateTransferResult as R;
    let resolving =
        transfer.flags.contains(TransferFlags::POST_PENDING) || transfer.flags.contains(TransferFlags::VOID_PENDING);
    let differs = |value: u128, stored: u128| value != stored && !(resolving && value == 0);
    let checks = [
        (transfer.flags != existing.flags, R::ExistsWithDifferentFlags),
        (differs(transfer.debit_account_id.0, existing.debit_account_id.0), R::ExistsWithDifferentDebitAccountId),
        (differs(transfer.credit_account_id.0, existing.credit_account_id.0), R::ExistsWithDifferentCreditAccountId),
        (differs(transfer.amount.0, existing.amount.0), R::ExistsWithDifferentAmount),
        (transfer.pending_id != existing.pending_id, R::ExistsWithDifferentPendingId),
        (transfer.user_data_128 != existing.user_data_128, R::ExistsWithDifferentUserData128),
        (transfer.user_data_64 != existing.user_data_64, R::ExistsWithDifferentUserData64),
        (transfer.user_data_32 != existing.user_data_32, R::ExistsWithDifferentUserData32),
        (transfer.timeout_s != existing.timeout_s, R::ExistsWithDifferentTimeout),
        (differs(transfer.ledger.into(), existing.ledger.into()), R::ExistsWithDifferentLedger),
        (differs(transfer.code.into(), existing.code.into()), R::ExistsWithDifferentCode),
    ];
    checks.iter().find(|(failed, _)| *failed).map_or(R::Exists, |(_, code)| *code)
}
