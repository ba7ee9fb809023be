//! The account operations: create (with linked chains), close and reopen, run-time limits, and
//! the three reads (accounts, transfers, consistent balances with their open holds). Also the
//! limit checks that a transfer makes against a limited account.

use crate::ledger::{Ledger, LimitsEntry};
use crate::output::{BalanceRead, ChangeKind, DebitUsage, Output, TransferRecord};
use crate::pending::{Side, NONE};
use crate::results::{AccountStateResult, CreateAccountResult, CreateTransferResult, SetLimitsResult};
use crate::types::{Account, AccountFlags, AccountId, AccountLimits, Amount, LimitFlags, TransferId};

impl Ledger {
    pub(crate) fn create_accounts(&mut self, timestamp_ns: u64, events: &[Account], output: &mut Output) {
        self.apply_linked(
            events.len(),
            output,
            |index| events[index].flags.contains(AccountFlags::LINKED),
            |ledger, index| ledger.create_account(&events[index], timestamp_ns + index as u64) as u32,
            |ledger, index| {
                let slot = ledger.accounts_count() - 1;
                ledger.change_of_account(ChangeKind::AccountCreated, index, timestamp_ns + index as u64, slot)
            },
        );
    }

    fn create_account(&mut self, account: &Account, timestamp_ns: u64) -> CreateAccountResult {
        use CreateAccountResult as R;
        if account.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if account.reserved != 0 {
            return R::ReservedField;
        }
        if account.flags.0 & !AccountFlags::CLIENT_MASK != 0 {
            return R::ReservedFlag;
        }
        if account.id.0 == 0 {
            return R::IdMustNotBeZero;
        }
        if account.id.0 == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if account
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        {
            return R::FlagsAreMutuallyExclusive;
        }
        let balances = [
            (account.debits_pending, R::DebitsPendingMustBeZero),
            (account.debits_posted, R::DebitsPostedMustBeZero),
            (account.credits_pending, R::CreditsPendingMustBeZero),
            (account.credits_posted, R::CreditsPostedMustBeZero),
        ];
        if let Some((_, code)) = balances.iter().find(|(amount, _)| *amount != Amount::ZERO) {
            return *code;
        }
        if account.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if account.code == 0 {
            return R::CodeMustNotBeZero;
        }
        let tag = self.account_index.tag(account.id.0);
        if let Some(slot) = self.account_find(tag, account.id) {
            return account_exists(account, self.account(slot));
        }
        if self.accounts_count() == self.config.accounts_max {
            return R::AccountsFull;
        }
        if self.ledger_slot_or_register(account.ledger).is_none() {
            return R::LedgersFull;
        }
        let stored = Account { timestamp: timestamp_ns, ..*account };
        let slot = self.accounts_count();
        self.accounts.push(crate::ledger::Line(stored));
        self.account_index.insert(tag, slot);
        self.hash_sum = self.hash_sum.wrapping_add(Ledger::account_static_hash(&stored));
        assert_eq!(self.account_limits[slot as usize], NONE);
        R::Ok
    }

    /// close_accounts (`close` true) and reopen_accounts.
    pub(crate) fn close_accounts(&mut self, timestamp_ns: u64, ids: &[AccountId], output: &mut Output, close: bool) {
        use AccountStateResult as R;
        for (index, id) in ids.iter().enumerate() {
            let code = if id.0 == 0 {
                R::AccountIdMustNotBeZero
            } else if id.0 == u128::MAX {
                R::AccountIdMustNotBeIntMax
            } else {
                match self.account_find(self.account_index.tag(id.0), *id) {
                    None => R::AccountNotFound,
                    Some(slot) => {
                        let flags = self.account(slot).flags;
                        match (close, flags.contains(AccountFlags::CLOSED)) {
                            (true, true) => R::AlreadyClosed,
                            (false, false) => R::NotClosed,
                            (true, false) => {
                                self.account_flags_set(slot, flags.0 | AccountFlags::CLOSED);
                                self.change_record(output, ChangeKind::AccountClosed, index, timestamp_ns, slot);
                                R::Ok
                            }
                            (false, true) => {
                                self.account_flags_set(slot, flags.0 & !AccountFlags::CLOSED);
                                self.change_record(output, ChangeKind::AccountReopened, index, timestamp_ns, slot);
                                R::Ok
                            }
                        }
                    }
                }
            };
            if code != R::Ok {
                output.push_result(index, code as u32);
            }
        }
    }

    pub(crate) fn set_account_limits(&mut self, timestamp_ns: u64, events: &[AccountLimits], output: &mut Output) {
        for (index, limits) in events.iter().enumerate() {
            let code = self.set_account_limit(limits, timestamp_ns + index as u64);
            if code != SetLimitsResult::Ok {
                output.push_result(index, code as u32);
            } else if output.changes_enabled() {
                let slot = self.account_find(self.account_index.tag(limits.account_id.0), limits.account_id);
                let slot = slot.expect("limits were set on an account that exists");
                self.change_record(output, ChangeKind::AccountLimitsSet, index, timestamp_ns, slot);
            }
        }
    }

    /// Records an account event's change, if the output records changes.
    fn change_record(&self, output: &mut Output, kind: ChangeKind, index: usize, timestamp_ns: u64, slot: u32) {
        if output.changes_enabled() {
            output.change_push(self.change_of_account(kind, index, timestamp_ns + index as u64, slot));
        }
    }

    fn set_account_limit(&mut self, limits: &AccountLimits, timestamp_ns: u64) -> SetLimitsResult {
        use SetLimitsResult as R;
        if limits.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if limits.reserved != [0; 28] {
            return R::ReservedField;
        }
        if limits.flags.0 & !LimitFlags::MASK != 0 {
            return R::ReservedFlag;
        }
        if limits.account_id.0 == 0 {
            return R::AccountIdMustNotBeZero;
        }
        if limits.account_id.0 == u128::MAX {
            return R::AccountIdMustNotBeIntMax;
        }
        let Some(account_slot) = self.account_find(self.account_index.tag(limits.account_id.0), limits.account_id)
        else {
            return R::AccountNotFound;
        };
        let stored = AccountLimits { timestamp: timestamp_ns, ..*limits };
        match self.account_limits[account_slot as usize] {
            NONE if self.limits.len() == self.config.limits_max as usize => return R::LimitsFull,
            NONE => {
                let entry = LimitsEntry { limits: stored, usage: DebitUsage::default(), account_slot };
                self.account_limits[account_slot as usize] = self.limits_push(entry);
            }
            slot => self.limits_update(slot, |entry| entry.limits = stored),
        }
        let flags = self.account(account_slot).flags.0;
        let flags = if stored.flags.0 == 0 { flags & !AccountFlags::LIMITS } else { flags | AccountFlags::LIMITS };
        self.account_flags_set(account_slot, flags);
        R::Ok
    }

    /// The debit-side limits of a limited account for a new debit of `amount`.
    pub(crate) fn limits_check_debit(
        &mut self,
        account_slot: u32,
        amount: Amount,
        timestamp_ns: u64,
    ) -> CreateTransferResult {
        use CreateTransferResult as R;
        let entry = self.limits[self.account_limits[account_slot as usize] as usize];
        let (limits, usage) = (entry.limits, entry.usage);
        let account = *self.account(account_slot);
        if limits.flags.contains(LimitFlags::OVERDRAFT) {
            // An overflow is refused with its own code. The transfer rules refuse the same sum
            // first (balances_check), so this is the check standing on its own, not a new rule.
            let debits = account.debits_pending.checked_add(account.debits_posted).and_then(|d| d.checked_add(amount));
            let Some(debits) = debits.map(|debits| debits.0) else {
                return R::OverflowsDebits;
            };
            if debits > account.credits_posted.0.saturating_add(limits.overdraft_max.0) {
                return R::OverdraftLimitExceeded;
            }
        }
        let (day, month) = self.calendar_period(timestamp_ns);
        let (day_amount, day_count) = if usage.day == day { (usage.day_amount.0, usage.day_count) } else { (0, 0) };
        let (month_amount, month_count) =
            if usage.month == month { (usage.month_amount.0, usage.month_count) } else { (0, 0) };
        let checks = [
            (
                LimitFlags::DAILY_DEBIT_AMOUNT,
                exceeds(day_amount, amount.0, limits.daily_debit_amount_max.0),
                R::DailyDebitAmountExceeded,
            ),
            (
                LimitFlags::DAILY_DEBIT_COUNT,
                exceeds(day_count.into(), 1, limits.daily_debit_count_max.into()),
                R::DailyDebitCountExceeded,
            ),
            (
                LimitFlags::MONTHLY_DEBIT_AMOUNT,
                exceeds(month_amount, amount.0, limits.monthly_debit_amount_max.0),
                R::MonthlyDebitAmountExceeded,
            ),
            (
                LimitFlags::MONTHLY_DEBIT_COUNT,
                exceeds(month_count.into(), 1, limits.monthly_debit_count_max.into()),
                R::MonthlyDebitCountExceeded,
            ),
        ];
        match checks.iter().find(|(flag, exceeded, _)| limits.flags.contains(*flag) && *exceeded) {
            Some((_, _, code)) => *code,
            None => R::Ok,
        }
    }

    /// The credit-side limit of a limited account for a new credit of `amount`.
    pub(crate) fn limits_check_credit(&self, account_slot: u32, amount: Amount) -> CreateTransferResult {
        let limits = &self.limits[self.account_limits[account_slot as usize] as usize].limits;
        let account = self.account(account_slot);
        if limits.flags.contains(LimitFlags::BALANCE_MAX) {
            // As for the overdraft: refused with its own code, and by balances_check first.
            let credits =
                account.credits_pending.checked_add(account.credits_posted).and_then(|c| c.checked_add(amount));
            let Some(credits) = credits.map(|credits| credits.0) else {
                return CreateTransferResult::OverflowsCredits;
            };
            if credits > account.debits_posted.0.saturating_add(limits.balance_max.0) {
                return CreateTransferResult::BalanceLimitExceeded;
            }
        }
        CreateTransferResult::Ok
    }

    /// Counts a debit (single-phase or a new hold) toward the account's day and month.
    pub(crate) fn limits_count_debit(&mut self, account_slot: u32, amount: Amount, timestamp_ns: u64) {
        let (day, month) = self.calendar_period(timestamp_ns);
        let slot = self.account_limits[account_slot as usize];
        assert!(slot != NONE);
        self.limits_update(slot, |entry| {
            let usage = &mut entry.usage;
            if usage.day != day {
                (usage.day, usage.day_amount, usage.day_count) = (day, Amount::ZERO, 0);
            }
            if usage.month != month {
                (usage.month, usage.month_amount, usage.month_count) = (month, Amount::ZERO, 0);
            }
            usage.day_amount = Amount(usage.day_amount.0.saturating_add(amount.0));
            usage.month_amount = Amount(usage.month_amount.0.saturating_add(amount.0));
            usage.day_count = usage.day_count.saturating_add(1);
            usage.month_count = usage.month_count.saturating_add(1);
        });
    }

    pub(crate) fn lookup_accounts(&self, ids: &[AccountId], output: &mut Output) {
        for id in ids {
            if let Some(slot) = self.account_find(self.account_index.tag(id.0), *id) {
                assert!(output.accounts.len() < output.accounts.capacity());
                output.accounts.push(*self.account(slot));
            }
        }
    }

    pub(crate) fn lookup_transfers(&self, ids: &[TransferId], output: &mut Output) {
        for id in ids {
            if let Some(slot) = self.ring_find(self.transfer_index.tag(id.0), *id) {
                assert!(output.transfers.len() < output.transfers.capacity());
                output.transfers.push(TransferRecord { transfer: self.ring[slot].0, status: self.ring_status[slot] });
            } else if let Some(slot) = self.pending.find(id.0) {
                // An open hold older than the window: still known, through the pending table.
                let entry = &self.pending.entries[slot as usize];
                output.transfers.push(TransferRecord { transfer: entry.transfer, status: entry.status });
            }
        }
    }

    pub(crate) fn lookup_balances(&self, ids: &[AccountId], output: &mut Output) {
        for id in ids {
            let Some(slot) = self.account_find(self.account_index.tag(id.0), *id) else {
                continue;
            };
            let limits_slot = self.account_limits[slot as usize];
            let (limits, usage) = match limits_slot {
                NONE => (AccountLimits::default(), DebitUsage::default()),
                limits_slot => {
                    let entry = &self.limits[limits_slot as usize];
                    (entry.limits, entry.usage)
                }
            };
            let mut read = BalanceRead {
                account: *self.account(slot),
                limits,
                usage,
                holds_count_total: 0,
                holds_start: output.holds.len() as u32,
                holds_count: 0,
            };
            for side in [Side::Debit, Side::Credit] {
                for hold in self.pending.holds(side, slot) {
                    read.holds_count_total += 1;
                    if output.holds.len() < output.holds.capacity() {
                        output.holds.push(self.pending.entries[hold as usize].transfer);
                        read.holds_count += 1;
                    }
                }
            }
            assert!(read.holds_count <= read.holds_count_total);
            output.balances.push(read);
        }
    }
}

/// Whether `used + amount` would pass `max` (an overflow passes it).
fn exceeds(used: u128, amount: u128, max: u128) -> bool {
    used.checked_add(amount).is_none_or(|total| total > max)
}

fn account_exists(account: &Account, existing: &Account) -> CreateAccountResult {
    use CreateAccountResult as R;
    let stored_flags = existing.flags.0 & !(AccountFlags::CLOSED | AccountFlags::LIMITS);
    if account.flags.0 != stored_flags {
        return R::ExistsWithDifferentFlags;
    }
    if account.user_data_128 != existing.user_data_128 {
        return R::ExistsWithDifferentUserData128;
    }
    if account.user_data_64 != existing.user_data_64 {
        return R::ExistsWithDifferentUserData64;
    }
    if account.user_data_32 != existing.user_data_32 {
        return R::ExistsWithDifferentUserData32;
    }
    if account.ledger != existing.ledger {
        return R::ExistsWithDifferentLedger;
    }
    if account.code != existing.code {
        return R::ExistsWithDifferentCode;
    }
    R::Exists
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ledger::Batch;
    use crate::types::{Transfer, TransferId};

    const TIMESTAMP_NS: u64 = 1_795_305_600 * 1_000_000_000;

    /// Account 1 debited and account 2 credited by u128::MAX, both with limits in force.
    fn at_the_top() -> Ledger {
        let mut ledger = Ledger::new(Config::small()).expect("config");
        let mut output = Output::new(ledger.config());
        let account = |id: u128| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() };
        ledger.apply(TIMESTAMP_NS, Batch::CreateAccounts(&[account(1), account(2)]), &mut output);
        let transfer = Transfer {
            id: TransferId::from_parts(TIMESTAMP_NS / 1_000_000, 1),
            debit_account_id: AccountId(1),
            credit_account_id: AccountId(2),
            amount: Amount(u128::MAX),
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        ledger.apply(TIMESTAMP_NS + 10, Batch::CreateTransfers(&[transfer]), &mut output);
        let limits = |id: u128, flags: u32| AccountLimits {
            account_id: AccountId(id),
            overdraft_max: Amount(u128::MAX),
            balance_max: Amount(u128::MAX),
            flags: LimitFlags(flags),
            ..AccountLimits::default()
        };
        let both = [limits(1, LimitFlags::OVERDRAFT), limits(2, LimitFlags::BALANCE_MAX)];
        ledger.apply(TIMESTAMP_NS + 20, Batch::SetAccountLimits(&both), &mut output);
        assert!(output.results.is_empty(), "{:?}", output.results);
        assert_eq!(ledger.account(0).debits_posted, Amount(u128::MAX));
        assert_eq!(ledger.account(1).credits_posted, Amount(u128::MAX));
        ledger
    }

    // The transfer rules refuse these sums first (OverflowsDebits / OverflowsCredits); the limit
    // checks must still not overflow if they are ever called on their own or in another order.
    #[test]
    fn the_limit_checks_refuse_an_overflowing_sum_with_its_code() {
        let mut ledger = at_the_top();
        let timestamp_ns = TIMESTAMP_NS + 30;
        assert_eq!(ledger.limits_check_debit(0, Amount(1), timestamp_ns), CreateTransferResult::OverflowsDebits);
        assert_eq!(ledger.limits_check_credit(1, Amount(1)), CreateTransferResult::OverflowsCredits);
        assert_eq!(ledger.limits_check_debit(0, Amount(0), timestamp_ns), CreateTransferResult::Ok);
        assert_eq!(ledger.limits_check_credit(1, Amount(0)), CreateTransferResult::Ok);
    }
}
