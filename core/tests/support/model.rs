//! The reference model: the ledger's rules written as plainly as possible, with BTreeMaps, a
//! VecDeque for the idempotency window, a naive calendar, and linked chains undone by cloning
//! the whole state. It shares no code with the real ledger beyond the record types and the
//! result codes; the real ledger is checked against it event by event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, AccountStateResult as S, Amount, Config, CreateAccountResult as A,
    CreateTransferResult as T, DebitUsage, LimitFlags, SetLimitsResult as L, Transfer, TransferFlags, TransferId,
    TransferStatus,
};

#[derive(Clone, Debug)]
pub struct Hold {
    pub transfer: Transfer,
    pub expires_at_ns: Option<u64>,
}

#[derive(Clone, Default)]
pub struct State {
    pub accounts: BTreeMap<u128, Account>,
    pub transfers: BTreeMap<u128, (Transfer, TransferStatus)>,
    pub window: VecDeque<u128>,
    pub horizon_ms: u64,
    pub holds: BTreeMap<u128, Hold>,
    pub limits: BTreeMap<u128, (AccountLimits, DebitUsage)>,
    /// Ledger codes registered (by their first account): part of the state, so a chain that
    /// registers one and fails gives it back.
    pub ledgers: BTreeSet<u32>,
}

pub struct Model {
    pub config: Config,
    pub state: State,
}

impl Model {
    pub fn new(config: Config) -> Model {
        Model { config: config.validated().expect("config"), state: State::default() }
    }

    /// Expires holds due by the batch's last timestamp; returns how many.
    pub fn expire(&mut self, timestamp_end_ns: u64) -> u32 {
        let due: Vec<u128> = self
            .state
            .holds
            .iter()
            .filter(|(_, hold)| hold.expires_at_ns.is_some_and(|at| at <= timestamp_end_ns))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            let hold = self.state.holds.remove(id).unwrap();
            let amount = hold.transfer.amount.0;
            self.state.accounts.get_mut(&hold.transfer.debit_account_id.0).unwrap().debits_pending.0 -= amount;
            self.state.accounts.get_mut(&hold.transfer.credit_account_id.0).unwrap().credits_pending.0 -= amount;
            if let Some(entry) = self.state.transfers.get_mut(id) {
                entry.1 = TransferStatus::PendingExpired;
            }
        }
        due.len() as u32
    }

    /// Runs events through `each` with linked-chain semantics; returns one code per event.
    fn linked(
        &mut self,
        count: usize,
        is_linked: impl Fn(usize) -> bool,
        mut each: impl FnMut(&mut Model, usize) -> u32,
    ) -> Vec<u32> {
        let mut codes = vec![0u32; count];
        let mut chain: Option<(usize, State)> = None;
        let mut failed = false;
        for index in 0..count {
            let linked = is_linked(index);
            if chain.is_none() && linked {
                chain = Some((index, self.state.clone()));
                failed = false;
            }
            let code = if failed {
                1
            } else if linked && index + 1 == count {
                2
            } else {
                each(self, index)
            };
            if code != 0 && !failed {
                if let Some((start, saved)) = &chain {
                    self.state = saved.clone();
                    codes[*start..index].fill(1);
                    failed = true;
                }
            }
            codes[index] = code;
            if chain.is_some() && !linked {
                chain = None;
                failed = false;
            }
        }
        codes
    }

    pub fn create_accounts(&mut self, timestamp_ns: u64, events: &[Account]) -> Vec<u32> {
        self.linked(
            events.len(),
            |i| events[i].flags.contains(AccountFlags::LINKED),
            |model, i| model.create_account(&events[i], timestamp_ns + i as u64) as u32,
        )
    }

    fn create_account(&mut self, a: &Account, timestamp_ns: u64) -> A {
        if a.timestamp != 0 {
            return A::TimestampMustBeZero;
        }
        if a.reserved != 0 {
            return A::ReservedField;
        }
        if a.flags.0 & !AccountFlags::CLIENT_MASK != 0 {
            return A::ReservedFlag;
        }
        if a.id.0 == 0 {
            return A::IdMustNotBeZero;
        }
        if a.id.0 == u128::MAX {
            return A::IdMustNotBeIntMax;
        }
        let both = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
        if a.flags.0 & both == both {
            return A::FlagsAreMutuallyExclusive;
        }
        if a.debits_pending.0 != 0 {
            return A::DebitsPendingMustBeZero;
        }
        if a.debits_posted.0 != 0 {
            return A::DebitsPostedMustBeZero;
        }
        if a.credits_pending.0 != 0 {
            return A::CreditsPendingMustBeZero;
        }
        if a.credits_posted.0 != 0 {
            return A::CreditsPostedMustBeZero;
        }
        if a.ledger == 0 {
            return A::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return A::CodeMustNotBeZero;
        }
        if let Some(e) = self.state.accounts.get(&a.id.0) {
            let stored_flags = e.flags.0 & !(AccountFlags::CLOSED | AccountFlags::LIMITS);
            return if a.flags.0 != stored_flags {
                A::ExistsWithDifferentFlags
            } else if a.user_data_128 != e.user_data_128 {
                A::ExistsWithDifferentUserData128
            } else if a.user_data_64 != e.user_data_64 {
                A::ExistsWithDifferentUserData64
            } else if a.user_data_32 != e.user_data_32 {
                A::ExistsWithDifferentUserData32
            } else if a.ledger != e.ledger {
                A::ExistsWithDifferentLedger
            } else if a.code != e.code {
                A::ExistsWithDifferentCode
            } else {
                A::Exists
            };
        }
        if self.state.accounts.len() == self.config.accounts_max as usize {
            return A::AccountsFull;
        }
        if !self.state.ledgers.contains(&a.ledger) {
            if self.state.ledgers.len() == self.config.ledgers_max as usize {
                return A::LedgersFull;
            }
            self.state.ledgers.insert(a.ledger);
        }
        self.state.accounts.insert(a.id.0, Account { timestamp: timestamp_ns, ..*a });
        A::Ok
    }

    pub fn close_accounts(&mut self, ids: &[AccountId], close: bool) -> Vec<u32> {
        ids.iter()
            .map(|id| {
                if id.0 == 0 {
                    return S::AccountIdMustNotBeZero as u32;
                }
                if id.0 == u128::MAX {
                    return S::AccountIdMustNotBeIntMax as u32;
                }
                let Some(account) = self.state.accounts.get_mut(&id.0) else {
                    return S::AccountNotFound as u32;
                };
                let closed = account.flags.0 & AccountFlags::CLOSED != 0;
                if close && closed {
                    return S::AlreadyClosed as u32;
                }
                if !close && !closed {
                    return S::NotClosed as u32;
                }
                account.flags.0 ^= AccountFlags::CLOSED;
                0
            })
            .collect()
    }

    pub fn set_limits(&mut self, timestamp_ns: u64, events: &[AccountLimits]) -> Vec<u32> {
        let mut codes = Vec::new();
        for (i, l) in events.iter().enumerate() {
            let code = if l.timestamp != 0 {
                L::TimestampMustBeZero
            } else if l.reserved != [0; 28] {
                L::ReservedField
            } else if l.flags.0 & !LimitFlags::MASK != 0 {
                L::ReservedFlag
            } else if l.account_id.0 == 0 {
                L::AccountIdMustNotBeZero
            } else if l.account_id.0 == u128::MAX {
                L::AccountIdMustNotBeIntMax
            } else if !self.state.accounts.contains_key(&l.account_id.0) {
                L::AccountNotFound
            } else if !self.state.limits.contains_key(&l.account_id.0)
                && self.state.limits.len() == self.config.limits_max as usize
            {
                L::LimitsFull
            } else {
                let stored = AccountLimits { timestamp: timestamp_ns + i as u64, ..*l };
                let usage = self.state.limits.get(&l.account_id.0).map(|e| e.1).unwrap_or_default();
                self.state.limits.insert(l.account_id.0, (stored, usage));
                let account = self.state.accounts.get_mut(&l.account_id.0).unwrap();
                if l.flags.0 == 0 {
                    account.flags.0 &= !AccountFlags::LIMITS;
                } else {
                    account.flags.0 |= AccountFlags::LIMITS;
                }
                L::Ok
            };
            codes.push(code as u32);
        }
        codes
    }

    pub fn create_transfers(&mut self, timestamp_ns: u64, events: &[Transfer]) -> Vec<u32> {
        while self.state.window.len() > self.config.transfers_max as usize {
            let id = self.state.window.pop_front().unwrap();
            self.state.transfers.remove(&id);
            self.state.horizon_ms = self.state.horizon_ms.max(TransferId(id).time_ms() + 1);
        }
        self.linked(
            events.len(),
            |i| events[i].flags.contains(TransferFlags::LINKED),
            |model, i| model.create_transfer(&events[i], timestamp_ns + i as u64) as u32,
        )
    }

    fn create_transfer(&mut self, t: &Transfer, ts: u64) -> T {
        if t.timestamp != 0 {
            return T::TimestampMustBeZero;
        }
        if t.flags.0 & !TransferFlags::MASK != 0 {
            return T::ReservedFlag;
        }
        if t.id.0 == 0 {
            return T::IdMustNotBeZero;
        }
        if t.id.0 == u128::MAX {
            return T::IdMustNotBeIntMax;
        }
        if let Some((e, _)) = self.state.transfers.get(&t.id.0) {
            return exists(t, e);
        }
        if t.id.time_ms() < self.state.horizon_ms {
            return T::IdTooOld;
        }
        if t.id.time_ms() > ts / 1_000_000 + self.config.id_future_ms_max {
            return T::IdTimestampInFuture;
        }
        let pending = t.flags.contains(TransferFlags::PENDING);
        let post = t.flags.contains(TransferFlags::POST_PENDING);
        let void = t.flags.contains(TransferFlags::VOID_PENDING);
        if u8::from(pending) + u8::from(post) + u8::from(void) > 1 {
            return T::FlagsAreMutuallyExclusive;
        }
        if post || void {
            self.resolve(t, ts, post)
        } else {
            self.move_money(t, ts, pending)
        }
    }

    fn move_money(&mut self, t: &Transfer, ts: u64, pending: bool) -> T {
        let checks = [
            (t.debit_account_id.0 == 0, T::DebitAccountIdMustNotBeZero),
            (t.debit_account_id.0 == u128::MAX, T::DebitAccountIdMustNotBeIntMax),
            (t.credit_account_id.0 == 0, T::CreditAccountIdMustNotBeZero),
            (t.credit_account_id.0 == u128::MAX, T::CreditAccountIdMustNotBeIntMax),
            (t.debit_account_id == t.credit_account_id, T::AccountsMustBeDifferent),
            (t.pending_id.0 != 0, T::PendingIdMustBeZero),
            (!pending && t.timeout_s != 0, T::TimeoutReservedForPendingTransfer),
            (t.amount.0 == 0, T::AmountMustNotBeZero),
            (t.ledger == 0, T::LedgerMustNotBeZero),
            (t.code == 0, T::CodeMustNotBeZero),
        ];
        if let Some((_, code)) = checks.iter().find(|(bad, _)| *bad) {
            return *code;
        }
        let Some(dr) = self.state.accounts.get(&t.debit_account_id.0).copied() else {
            return T::DebitAccountNotFound;
        };
        let Some(cr) = self.state.accounts.get(&t.credit_account_id.0).copied() else {
            return T::CreditAccountNotFound;
        };
        if dr.ledger != cr.ledger {
            return T::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != dr.ledger {
            return T::TransferMustHaveTheSameLedgerAsAccounts;
        }
        if dr.flags.0 & AccountFlags::CLOSED != 0 {
            return T::DebitAccountClosed;
        }
        if cr.flags.0 & AccountFlags::CLOSED != 0 {
            return T::CreditAccountClosed;
        }
        if pending && self.state.holds.len() == self.config.pending_max as usize {
            return T::PendingTransfersFull;
        }
        let mut expires_at_ns = None;
        if pending && t.timeout_s > 0 {
            match ts.checked_add(u64::from(t.timeout_s) * 1_000_000_000) {
                Some(at) if at != u64::MAX => expires_at_ns = Some(at),
                _ => return T::OverflowsTimeout,
            }
        }
        let a = t.amount.0;
        if pending {
            if dr.debits_pending.0.checked_add(a).is_none() {
                return T::OverflowsDebitsPending;
            }
            if cr.credits_pending.0.checked_add(a).is_none() {
                return T::OverflowsCreditsPending;
            }
        } else {
            if dr.debits_posted.0.checked_add(a).is_none() {
                return T::OverflowsDebitsPosted;
            }
            if cr.credits_posted.0.checked_add(a).is_none() {
                return T::OverflowsCreditsPosted;
            }
        }
        let Some(debits) = dr.debits_pending.0.checked_add(dr.debits_posted.0).and_then(|x| x.checked_add(a)) else {
            return T::OverflowsDebits;
        };
        let Some(credits) = cr.credits_pending.0.checked_add(cr.credits_posted.0).and_then(|x| x.checked_add(a)) else {
            return T::OverflowsCredits;
        };
        if dr.flags.0 & AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0 && debits > dr.credits_posted.0 {
            return T::ExceedsCredits;
        }
        if cr.flags.0 & AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS != 0 && credits > cr.debits_posted.0 {
            return T::ExceedsDebits;
        }
        let (day, month) = period(ts);
        if dr.flags.0 & AccountFlags::LIMITS != 0 {
            let code = self.debit_limits(&dr, a, day, month);
            if code != T::Ok {
                return code;
            }
        }
        if cr.flags.0 & AccountFlags::LIMITS != 0 {
            let (l, _) = self.state.limits[&cr.id.0];
            if l.flags.0 & LimitFlags::BALANCE_MAX != 0 && credits > cr.debits_posted.0.saturating_add(l.balance_max.0)
            {
                return T::BalanceLimitExceeded;
            }
        }
        let stored = Transfer { timestamp: ts, ..*t };
        let status = if pending { TransferStatus::Pending } else { TransferStatus::Posted };
        self.remember(stored, status);
        let dr = self.state.accounts.get_mut(&t.debit_account_id.0).unwrap();
        if pending {
            dr.debits_pending.0 += a;
        } else {
            dr.debits_posted.0 += a;
        }
        let cr = self.state.accounts.get_mut(&t.credit_account_id.0).unwrap();
        if pending {
            cr.credits_pending.0 += a;
            self.state.holds.insert(t.id.0, Hold { transfer: stored, expires_at_ns });
        } else {
            cr.credits_posted.0 += a;
        }
        if let Some((_, usage)) = self.state.limits.get_mut(&t.debit_account_id.0) {
            if dr_limited(&self.state.accounts[&t.debit_account_id.0]) {
                if usage.day != day {
                    *usage = DebitUsage { day, day_count: 0, day_amount: Amount(0), ..*usage };
                }
                if usage.month != month {
                    *usage = DebitUsage { month, month_count: 0, month_amount: Amount(0), ..*usage };
                }
                usage.day_amount.0 = usage.day_amount.0.saturating_add(a);
                usage.month_amount.0 = usage.month_amount.0.saturating_add(a);
                usage.day_count = usage.day_count.saturating_add(1);
                usage.month_count = usage.month_count.saturating_add(1);
            }
        }
        T::Ok
    }

    fn debit_limits(&self, dr: &Account, a: u128, day: u32, month: u32) -> T {
        let (l, u) = self.state.limits[&dr.id.0];
        let has = |flag| l.flags.0 & flag != 0;
        let over = |used: u128, max: u128| used.checked_add(a).is_none_or(|total| total > max);
        let over_count = |used: u32, max: u32| u64::from(used) + 1 > u64::from(max);
        if has(LimitFlags::OVERDRAFT)
            && dr.debits_pending.0 + dr.debits_posted.0 + a > dr.credits_posted.0.saturating_add(l.overdraft_max.0)
        {
            return T::OverdraftLimitExceeded;
        }
        let (day_amount, day_count) = if u.day == day { (u.day_amount.0, u.day_count) } else { (0, 0) };
        let (month_amount, month_count) = if u.month == month { (u.month_amount.0, u.month_count) } else { (0, 0) };
        if has(LimitFlags::DAILY_DEBIT_AMOUNT) && over(day_amount, l.daily_debit_amount_max.0) {
            return T::DailyDebitAmountExceeded;
        }
        if has(LimitFlags::DAILY_DEBIT_COUNT) && over_count(day_count, l.daily_debit_count_max) {
            return T::DailyDebitCountExceeded;
        }
        if has(LimitFlags::MONTHLY_DEBIT_AMOUNT) && over(month_amount, l.monthly_debit_amount_max.0) {
            return T::MonthlyDebitAmountExceeded;
        }
        if has(LimitFlags::MONTHLY_DEBIT_COUNT) && over_count(month_count, l.monthly_debit_count_max) {
            return T::MonthlyDebitCountExceeded;
        }
        T::Ok
    }

    fn resolve(&mut self, t: &Transfer, ts: u64, post: bool) -> T {
        if t.pending_id.0 == 0 {
            return T::PendingIdMustNotBeZero;
        }
        if t.pending_id.0 == u128::MAX {
            return T::PendingIdMustNotBeIntMax;
        }
        if t.pending_id == t.id {
            return T::PendingIdMustBeDifferent;
        }
        if t.timeout_s != 0 {
            return T::TimeoutReservedForPendingTransfer;
        }
        let Some(hold) = self.state.holds.get(&t.pending_id.0).cloned() else {
            return match self.state.transfers.get(&t.pending_id.0) {
                Some((_, TransferStatus::PendingPosted)) => T::PendingTransferAlreadyPosted,
                Some((_, TransferStatus::PendingVoided)) => T::PendingTransferAlreadyVoided,
                Some((_, TransferStatus::PendingExpired)) => T::PendingTransferExpired,
                Some(_) => T::PendingTransferNotPending,
                None if t.pending_id.time_ms() < self.state.horizon_ms => T::PendingTransferTooOld,
                None => T::PendingTransferNotFound,
            };
        };
        let p = hold.transfer;
        let differs = |value: u128, held: u128| value != 0 && value != held;
        if differs(t.debit_account_id.0, p.debit_account_id.0) {
            return T::PendingTransferHasDifferentDebitAccountId;
        }
        if differs(t.credit_account_id.0, p.credit_account_id.0) {
            return T::PendingTransferHasDifferentCreditAccountId;
        }
        if differs(t.ledger.into(), p.ledger.into()) {
            return T::PendingTransferHasDifferentLedger;
        }
        if differs(t.code.into(), p.code.into()) {
            return T::PendingTransferHasDifferentCode;
        }
        if post && t.amount > p.amount {
            return T::ExceedsPendingTransferAmount;
        }
        if !post && differs(t.amount.0, p.amount.0) {
            return T::PendingTransferHasDifferentAmount;
        }
        let amount = if post && t.amount.0 != 0 { t.amount.0 } else { p.amount.0 };
        let dr = self.state.accounts[&p.debit_account_id.0];
        let cr = self.state.accounts[&p.credit_account_id.0];
        if post {
            if dr.flags.0 & AccountFlags::CLOSED != 0 {
                return T::DebitAccountClosed;
            }
            if cr.flags.0 & AccountFlags::CLOSED != 0 {
                return T::CreditAccountClosed;
            }
            if dr.debits_posted.0.checked_add(amount).is_none() {
                return T::OverflowsDebitsPosted;
            }
            if cr.credits_posted.0.checked_add(amount).is_none() {
                return T::OverflowsCreditsPosted;
            }
        }
        let stored = Transfer {
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount: Amount(amount),
            ledger: p.ledger,
            code: p.code,
            timestamp: ts,
            ..*t
        };
        self.remember(stored, if post { TransferStatus::Posted } else { TransferStatus::Voided });
        self.state.holds.remove(&p.id.0);
        if let Some(entry) = self.state.transfers.get_mut(&p.id.0) {
            entry.1 = if post { TransferStatus::PendingPosted } else { TransferStatus::PendingVoided };
        }
        let dr = self.state.accounts.get_mut(&p.debit_account_id.0).unwrap();
        dr.debits_pending.0 -= p.amount.0;
        if post {
            dr.debits_posted.0 += amount;
        }
        let cr = self.state.accounts.get_mut(&p.credit_account_id.0).unwrap();
        cr.credits_pending.0 -= p.amount.0;
        if post {
            cr.credits_posted.0 += amount;
        }
        T::Ok
    }

    fn remember(&mut self, transfer: Transfer, status: TransferStatus) {
        self.state.transfers.insert(transfer.id.0, (transfer, status));
        self.state.window.push_back(transfer.id.0);
    }

    pub fn lookup_transfer(&self, id: u128) -> Option<(Transfer, TransferStatus)> {
        self.state
            .transfers
            .get(&id)
            .copied()
            .or_else(|| self.state.holds.get(&id).map(|h| (h.transfer, TransferStatus::Pending)))
    }

    /// Ids of the holds on an account (either side), sorted.
    pub fn holds_of(&self, account: u128) -> Vec<u128> {
        self.state
            .holds
            .values()
            .filter(|h| h.transfer.debit_account_id.0 == account || h.transfer.credit_account_id.0 == account)
            .map(|h| h.transfer.id.0)
            .collect()
    }
}

fn dr_limited(account: &Account) -> bool {
    account.flags.0 & AccountFlags::LIMITS != 0
}

fn exists(t: &Transfer, e: &Transfer) -> T {
    let resolving = t.flags.0 & (TransferFlags::POST_PENDING | TransferFlags::VOID_PENDING) != 0;
    let differs = |value: u128, stored: u128| value != stored && !(resolving && value == 0);
    if t.flags != e.flags {
        T::ExistsWithDifferentFlags
    } else if differs(t.debit_account_id.0, e.debit_account_id.0) {
        T::ExistsWithDifferentDebitAccountId
    } else if differs(t.credit_account_id.0, e.credit_account_id.0) {
        T::ExistsWithDifferentCreditAccountId
    } else if differs(t.amount.0, e.amount.0) {
        T::ExistsWithDifferentAmount
    } else if t.pending_id != e.pending_id {
        T::ExistsWithDifferentPendingId
    } else if t.user_data_128 != e.user_data_128 {
        T::ExistsWithDifferentUserData128
    } else if t.user_data_64 != e.user_data_64 {
        T::ExistsWithDifferentUserData64
    } else if t.user_data_32 != e.user_data_32 {
        T::ExistsWithDifferentUserData32
    } else if t.timeout_s != e.timeout_s {
        T::ExistsWithDifferentTimeout
    } else if differs(t.ledger.into(), e.ledger.into()) {
        T::ExistsWithDifferentLedger
    } else if differs(t.code.into(), e.code.into()) {
        T::ExistsWithDifferentCode
    } else {
        T::Exists
    }
}

/// (days since 1970-01-01, months since 1970-01) by walking the calendar month by month.
pub fn period(timestamp_ns: u64) -> (u32, u32) {
    let day = (timestamp_ns / (86_400 * 1_000_000_000)) as u32;
    let mut remaining = day;
    let mut months = 0u32;
    let mut year = 1970u32;
    loop {
        for month in 1..=12u32 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let length = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            if remaining < length {
                return (day, months);
            }
            remaining -= length;
            months += 1;
        }
        year += 1;
    }
}
