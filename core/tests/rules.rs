//! Ledger rules, one row per event, read like a ledger:
//! `"T1 B→A 100"  →  Ok`. Each book ends by checking balances, and the last test proves that
//! the books together reach every result code of every operation.

mod support;

use std::collections::BTreeSet;
use support::*;
use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, AccountStateResult, Amount, Batch, Config, CreateAccountResult,
    CreateTransferResult as T, LimitFlags, Query, SetLimitsResult, Transfer, TransferFlags, TransferId, TransferStatus,
};

/// Records every code a book produced, so the coverage test can check none is missing.
#[derive(Default)]
struct Seen {
    transfers: BTreeSet<u32>,
    accounts: BTreeSet<u32>,
    state: BTreeSet<u32>,
    limits: BTreeSet<u32>,
}

/// One row: a batch of transfers and the result expected for each.
fn row(h: &mut Harness, seen: &mut Seen, what: &str, transfers: &[Transfer], expected: &[T]) {
    let got = h.create_transfers(transfers);
    assert_eq!(got, expected, "{what}");
    seen.transfers.extend(got.iter().map(|code| *code as u32));
}

fn flags(transfer: Transfer, flags: u16) -> Transfer {
    Transfer { flags: TransferFlags(flags), ..transfer }
}

fn pending(transfer: Transfer, timeout_s: u32) -> Transfer {
    Transfer { flags: TransferFlags(TransferFlags::PENDING), timeout_s, ..transfer }
}

fn limits(account: u128, flags: u32, max: u128, count_max: u32) -> AccountLimits {
    AccountLimits {
        account_id: AccountId(account),
        overdraft_max: Amount(max),
        balance_max: Amount(max),
        daily_debit_amount_max: Amount(max),
        monthly_debit_amount_max: Amount(max),
        daily_debit_count_max: count_max,
        monthly_debit_count_max: count_max,
        flags: LimitFlags(flags),
        ..AccountLimits::default()
    }
}

const A: u128 = 1; // a wallet: no overdraft
const B: u128 = 2; // a settlement account: may go negative
const C: u128 = 3; // another currency (ledger 2)
const D: u128 = 4; // credits must not exceed debits
const E: u128 = 5; // closed and reopened
const MAX: u128 = u128::MAX;
const HALF: u128 = 1 << 127;

fn book_setup(h: &mut Harness) {
    let mut d = account(D, 1);
    d.flags.0 = AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
    let results = h.create_accounts(&[wallet(A), account(B, 1), account(C, 2), d, account(E, 1)]);
    assert!(results.iter().all(|r| *r == CreateAccountResult::Ok), "{results:?}");
    let results = h.create_accounts(&(10..40).map(|id| account(id, 1)).collect::<Vec<_>>());
    assert!(results.iter().all(|r| *r == CreateAccountResult::Ok));
}

fn book_single_phase(h: &mut Harness, seen: &mut Seen) {
    let ms = h.now_ms();
    let t1 = transfer(ms, 1, B, A, 100);
    row(h, seen, "T1 B→A 100", &[t1], &[T::Ok]);
    row(h, seen, "T1 again, same fields", &[t1], &[T::Exists]);
    let variants: [(Transfer, T); 11] = [
        (flags(t1, TransferFlags::PENDING), T::ExistsWithDifferentFlags),
        (Transfer { debit_account_id: AccountId(10), ..t1 }, T::ExistsWithDifferentDebitAccountId),
        (Transfer { credit_account_id: AccountId(10), ..t1 }, T::ExistsWithDifferentCreditAccountId),
        (Transfer { amount: Amount(99), ..t1 }, T::ExistsWithDifferentAmount),
        (Transfer { pending_id: TransferId(9), ..t1 }, T::ExistsWithDifferentPendingId),
        (Transfer { user_data_128: 1, ..t1 }, T::ExistsWithDifferentUserData128),
        (Transfer { user_data_64: 1, ..t1 }, T::ExistsWithDifferentUserData64),
        (Transfer { user_data_32: 1, ..t1 }, T::ExistsWithDifferentUserData32),
        (Transfer { timeout_s: 1, ..t1 }, T::ExistsWithDifferentTimeout),
        (Transfer { ledger: 2, ..t1 }, T::ExistsWithDifferentLedger),
        (Transfer { code: 2, ..t1 }, T::ExistsWithDifferentCode),
    ];
    for (variant, code) in variants {
        row(h, seen, "T1 again, one field changed", &[variant], &[code]);
    }
    let t = |low| transfer(ms, low, B, A, 1);
    let rows: Vec<(&str, Transfer, T)> = vec![
        ("timestamp set by client", Transfer { timestamp: 1, ..t(2) }, T::TimestampMustBeZero),
        ("unknown flag", flags(t(2), 1 << 9), T::ReservedFlag),
        ("id 0", Transfer { id: TransferId(0), ..t(2) }, T::IdMustNotBeZero),
        ("id MAX", Transfer { id: TransferId(MAX), ..t(2) }, T::IdMustNotBeIntMax),
        ("id from the future", transfer(ms + 60_000, 2, B, A, 1), T::IdTimestampInFuture),
        (
            "pending and post",
            flags(t(2), TransferFlags::PENDING | TransferFlags::POST_PENDING),
            T::FlagsAreMutuallyExclusive,
        ),
        ("debit 0", Transfer { debit_account_id: AccountId(0), ..t(2) }, T::DebitAccountIdMustNotBeZero),
        ("debit MAX", Transfer { debit_account_id: AccountId(MAX), ..t(2) }, T::DebitAccountIdMustNotBeIntMax),
        ("credit 0", Transfer { credit_account_id: AccountId(0), ..t(2) }, T::CreditAccountIdMustNotBeZero),
        ("credit MAX", Transfer { credit_account_id: AccountId(MAX), ..t(2) }, T::CreditAccountIdMustNotBeIntMax),
        ("A→A", transfer(ms, 2, A, A, 1), T::AccountsMustBeDifferent),
        ("single with pending_id", Transfer { pending_id: TransferId(5), ..t(2) }, T::PendingIdMustBeZero),
        ("single with timeout", Transfer { timeout_s: 5, ..t(2) }, T::TimeoutReservedForPendingTransfer),
        ("amount 0", transfer(ms, 2, B, A, 0), T::AmountMustNotBeZero),
        ("ledger 0", Transfer { ledger: 0, ..t(2) }, T::LedgerMustNotBeZero),
        ("code 0", Transfer { code: 0, ..t(2) }, T::CodeMustNotBeZero),
        ("unknown debit", transfer(ms, 2, 999, A, 1), T::DebitAccountNotFound),
        ("unknown credit", transfer(ms, 2, B, 999, 1), T::CreditAccountNotFound),
        ("B→C across currencies", transfer(ms, 2, B, C, 1), T::AccountsMustHaveTheSameLedger),
        ("B→A on ledger 2", Transfer { ledger: 2, ..t(2) }, T::TransferMustHaveTheSameLedgerAsAccounts),
        ("A→B 101: A holds 100", transfer(ms, 2, A, B, 101), T::ExceedsCredits),
        ("B→D: D's credits must not exceed its debits", transfer(ms, 2, B, D, 1), T::ExceedsDebits),
        ("A→B 100: all of it", transfer(ms, 3, A, B, 100), T::Ok),
    ];
    for (what, event, code) in rows {
        row(h, seen, what, &[event], &[code]);
    }
    assert_eq!(h.balances(A), (0, 100, 0, 100));
    assert_eq!(h.balances(B), (0, 100, 0, 100));
}

fn book_two_phase(h: &mut Harness, seen: &mut Seen) {
    let ms = h.now_ms();
    row(h, seen, "fund A 100", &[transfer(ms, 10, B, A, 100)], &[T::Ok]);
    let p1 = pending(transfer(ms, 11, A, B, 30), 0);
    row(h, seen, "P1 hold A→B 30", &[p1], &[T::Ok]);
    assert_eq!(h.balances(A), (30, 100, 0, 200));
    row(h, seen, "A→B 71: only 70 available", &[transfer(ms, 12, A, B, 71)], &[T::ExceedsCredits]);
    let post = |low, amount| resolve(ms, low, p1.id, amount, false);
    let rows: Vec<(&str, Transfer, T)> = vec![
        ("post of nothing", resolve(ms, 13, TransferId::from_parts(ms, 999), 0, false), T::PendingTransferNotFound),
        ("post without pending_id", resolve(ms, 13, TransferId(0), 0, false), T::PendingIdMustNotBeZero),
        ("post of id MAX", resolve(ms, 13, TransferId(MAX), 0, false), T::PendingIdMustNotBeIntMax),
        ("post of itself", resolve(ms, 13, TransferId::from_parts(ms, 13), 0, false), T::PendingIdMustBeDifferent),
        ("post with a timeout", Transfer { timeout_s: 1, ..post(13, 0) }, T::TimeoutReservedForPendingTransfer),
        (
            "post of a single-phase transfer",
            resolve(ms, 13, TransferId::from_parts(ms, 10), 0, false),
            T::PendingTransferNotPending,
        ),
        (
            "post, other debit",
            Transfer { debit_account_id: AccountId(10), ..post(13, 0) },
            T::PendingTransferHasDifferentDebitAccountId,
        ),
        (
            "post, other credit",
            Transfer { credit_account_id: AccountId(10), ..post(13, 0) },
            T::PendingTransferHasDifferentCreditAccountId,
        ),
        ("post, other ledger", Transfer { ledger: 2, ..post(13, 0) }, T::PendingTransferHasDifferentLedger),
        ("post, other code", Transfer { code: 9, ..post(13, 0) }, T::PendingTransferHasDifferentCode),
        ("post 31 of 30", post(13, 31), T::ExceedsPendingTransferAmount),
        ("void 5 of 30", resolve(ms, 13, p1.id, 5, true), T::PendingTransferHasDifferentAmount),
        ("post 10 of 30", post(13, 10), T::Ok),
        ("post again", post(14, 0), T::PendingTransferAlreadyPosted),
    ];
    for (what, event, code) in rows {
        row(h, seen, what, &[event], &[code]);
    }
    assert_eq!(h.balances(A), (0, 110, 0, 200), "the unposted 20 went back to A");
    row(h, seen, "the post resubmitted", &[post(13, 10)], &[T::Exists]);
    row(h, seen, "the post resubmitted, amount 0 (inherit)", &[post(13, 0)], &[T::Exists]);
    let p2 = pending(transfer(ms, 20, A, B, 5), 0);
    row(h, seen, "P2 hold 5", &[p2], &[T::Ok]);
    row(h, seen, "void P2", &[resolve(ms, 21, p2.id, 0, true)], &[T::Ok]);
    row(h, seen, "void P2 again", &[resolve(ms, 22, p2.id, 0, true)], &[T::PendingTransferAlreadyVoided]);
    let p3 = pending(transfer(ms, 30, A, B, 5), 1);
    row(h, seen, "P3 hold 5 for 1 s", &[p3], &[T::Ok]);
    assert_eq!(h.balances(A).0, 5);
    h.advance_ns(2 * NS_PER_S);
    h.apply(Batch::Pulse);
    assert_eq!(h.output.expired_count, 1);
    assert_eq!(h.balances(A).0, 0, "expiry released the hold");
    row(h, seen, "post P3 after it expired", &[resolve(ms, 31, p3.id, 0, false)], &[T::PendingTransferExpired]);
    h.ledger.query(Query::LookupTransfers(&[p1.id, p2.id, p3.id]), &mut h.output);
    let statuses: Vec<_> = h.output.transfers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [TransferStatus::PendingPosted, TransferStatus::PendingVoided, TransferStatus::PendingExpired]
    );
}

fn book_overflow(h: &mut Harness, seen: &mut Seen) {
    let ms = h.now_ms();
    let rows: Vec<(&str, Transfer, T)> = vec![
        ("10→11 MAX", transfer(ms, 40, 10, 11, MAX), T::Ok),
        ("10→12 1: 10's debits_posted is MAX", transfer(ms, 41, 10, 12, 1), T::OverflowsDebitsPosted),
        ("12→11 1: 11's credits_posted is MAX", transfer(ms, 42, 12, 11, 1), T::OverflowsCreditsPosted),
        ("hold 13→14 MAX", pending(transfer(ms, 43, 13, 14, MAX), 0), T::Ok),
        ("hold 13→12 1", pending(transfer(ms, 44, 13, 12, 1), 0), T::OverflowsDebitsPending),
        ("hold 12→14 1", pending(transfer(ms, 45, 12, 14, 1), 0), T::OverflowsCreditsPending),
        ("hold 15→16 2^127", pending(transfer(ms, 46, 15, 16, HALF), 0), T::Ok),
        ("15→17 2^127: pending + posted overflow", transfer(ms, 47, 15, 17, HALF), T::OverflowsDebits),
        ("18→16 2^127: pending + posted overflow", transfer(ms, 48, 18, 16, HALF), T::OverflowsCredits),
    ];
    for (what, event, code) in rows {
        row(h, seen, what, &[event], &[code]);
    }
    // A timeout past the end of u64 nanoseconds (year 2554) needs a clock near it.
    let mut late = Harness::new(Config::small());
    late.now_ns = u64::MAX - 1_000_000 * NS_PER_S;
    late.create_accounts(&[account(1, 1), account(2, 1)]);
    let t = pending(transfer(late.now_ms(), 1, 1, 2, 1), u32::MAX);
    row(&mut late, seen, "hold with a timeout past 2554", &[t], &[T::OverflowsTimeout]);
}

fn book_closed_and_limits(h: &mut Harness, seen: &mut Seen) {
    let ms = h.now_ms();
    let closed =
        h.apply(Batch::CloseAccounts(&[AccountId(E), AccountId(E), AccountId(0), AccountId(MAX), AccountId(999)]));
    seen.state.extend(closed.iter().copied());
    use AccountStateResult as S;
    let expected =
        [S::Ok, S::AlreadyClosed, S::AccountIdMustNotBeZero, S::AccountIdMustNotBeIntMax, S::AccountNotFound];
    assert_eq!(closed, expected.map(|code| code as u32));
    row(h, seen, "E→B while E is closed", &[transfer(ms, 50, E, B, 1)], &[T::DebitAccountClosed]);
    row(h, seen, "B→E while E is closed", &[transfer(ms, 51, B, E, 1)], &[T::CreditAccountClosed]);
    let reopened = h.apply(Batch::ReopenAccounts(&[AccountId(E), AccountId(E)]));
    seen.state.extend(reopened.iter().copied());
    assert_eq!(reopened, [S::Ok as u32, S::NotClosed as u32]);
    row(h, seen, "B→E after reopening", &[transfer(ms, 52, B, E, 1)], &[T::Ok]);

    use LimitFlags as F;
    let set = h.set_limits(&[
        limits(20, F::OVERDRAFT, 50, 0),
        limits(21, F::BALANCE_MAX, 100, 0),
        limits(22, F::DAILY_DEBIT_AMOUNT, 100, 0),
        limits(23, F::DAILY_DEBIT_COUNT, 0, 2),
        limits(24, F::MONTHLY_DEBIT_AMOUNT, 100, 0),
        limits(25, F::MONTHLY_DEBIT_COUNT, 0, 1),
    ]);
    assert_eq!(set, [0; 6]);
    seen.limits.extend(set);
    let rows: Vec<(&str, Transfer, T)> = vec![
        ("20→B 51: overdraft to 50 only", transfer(ms, 60, 20, B, 51), T::OverdraftLimitExceeded),
        ("20→B 50", transfer(ms, 61, 20, B, 50), T::Ok),
        ("B→21 101: balance capped at 100", transfer(ms, 62, B, 21, 101), T::BalanceLimitExceeded),
        ("B→21 100", transfer(ms, 63, B, 21, 100), T::Ok),
        ("22→B 60", transfer(ms, 64, 22, B, 60), T::Ok),
        ("22→B 41: 100 a day", transfer(ms, 65, 22, B, 41), T::DailyDebitAmountExceeded),
        ("23→B 1", transfer(ms, 66, 23, B, 1), T::Ok),
        ("23→B 1", transfer(ms, 67, 23, B, 1), T::Ok),
        ("23→B 1: two a day", transfer(ms, 68, 23, B, 1), T::DailyDebitCountExceeded),
        ("24→B 100", transfer(ms, 69, 24, B, 100), T::Ok),
        ("24→B 1: 100 a month", transfer(ms, 70, 24, B, 1), T::MonthlyDebitAmountExceeded),
        ("25→B 1", transfer(ms, 71, 25, B, 1), T::Ok),
        ("25→B 1: one a month", transfer(ms, 72, 25, B, 1), T::MonthlyDebitCountExceeded),
    ];
    for (what, event, code) in rows {
        row(h, seen, what, &[event], &[code]);
    }
    // The next UTC day resets the daily caps but not the monthly ones (2026-11-23 is in November).
    h.advance_ns(86_400 * NS_PER_S);
    let ms = h.now_ms();
    row(h, seen, "22→B 41 the next day", &[transfer(ms, 80, 22, B, 41)], &[T::Ok]);
    row(h, seen, "23→B 1 the next day", &[transfer(ms, 81, 23, B, 1)], &[T::Ok]);
    row(h, seen, "24→B 1 the next day, same month", &[transfer(ms, 82, 24, B, 1)], &[T::MonthlyDebitAmountExceeded]);
    // Removing the limits (flags 0) lifts them.
    assert_eq!(h.set_limits(&[limits(24, 0, 0, 0)]), [0]);
    row(h, seen, "24→B 1 without limits", &[transfer(ms, 83, 24, B, 1)], &[T::Ok]);
    assert!(h.lookup_account(24).unwrap().flags.0 & AccountFlags::LIMITS == 0);

    use SetLimitsResult as L;
    let bad = [
        (AccountLimits { timestamp: 1, ..limits(20, 0, 0, 0) }, L::TimestampMustBeZero),
        (AccountLimits { reserved: [1; 28], ..limits(20, 0, 0, 0) }, L::ReservedField),
        (limits(20, 1 << 20, 0, 0), L::ReservedFlag),
        (limits(0, 0, 0, 0), L::AccountIdMustNotBeZero),
        (limits(MAX, 0, 0, 0), L::AccountIdMustNotBeIntMax),
        (limits(999, 0, 0, 0), L::AccountNotFound),
    ];
    for (event, code) in bad {
        let got = h.set_limits(&[event]);
        assert_eq!(got, [code as u32]);
        seen.limits.insert(got[0]);
    }
    let mut full = Harness::new(Config { limits_max: 1, ..Config::small() });
    full.create_accounts(&[account(1, 1), account(2, 1)]);
    let got = full.set_limits(&[limits(1, F::OVERDRAFT, 1, 0), limits(2, F::OVERDRAFT, 1, 0)]);
    assert_eq!(got, [0, L::LimitsFull as u32]);
    seen.limits.extend(got);
}

fn book_linked(h: &mut Harness, seen: &mut Seen) {
    let ms = h.now_ms();
    let linked = |t: Transfer| flags(t, t.flags.0 | TransferFlags::LINKED);
    let before = (h.balances(A), h.balances(B));
    row(
        h,
        seen,
        "payment B→A 50 + fee A→B 1000 (fails): all or nothing",
        &[linked(transfer(ms, 90, B, A, 50)), transfer(ms, 91, A, B, 1000)],
        &[T::LinkedEventFailed, T::ExceedsCredits],
    );
    assert_eq!((h.balances(A), h.balances(B)), before, "the chain left no trace");
    row(
        h,
        seen,
        "a failed chain, then an unrelated transfer in the same batch",
        &[linked(transfer(ms, 97, B, A, 1)), transfer(ms, 98, A, B, 1_000_000), transfer(ms, 99, B, A, 1)],
        &[T::LinkedEventFailed, T::ExceedsCredits, T::Ok],
    );
    row(
        h,
        seen,
        "a chain left open at the end of the batch",
        &[linked(transfer(ms, 92, B, A, 1))],
        &[T::LinkedEventChainOpen],
    );
    row(
        h,
        seen,
        "payment + fee, both fine",
        &[linked(transfer(ms, 90, B, A, 50)), transfer(ms, 91, A, B, 5)],
        &[T::Ok, T::Ok],
    );
    // A hold posted inside a chain that then fails stays open.
    let hold = pending(transfer(ms, 93, B, A, 7), 0);
    row(h, seen, "hold B→A 7", &[hold], &[T::Ok]);
    row(
        h,
        seen,
        "post the hold, then a failing transfer, linked",
        &[linked(resolve(ms, 94, hold.id, 0, false)), transfer(ms, 95, A, B, 1_000_000)],
        &[T::LinkedEventFailed, T::ExceedsCredits],
    );
    row(h, seen, "the hold is still open: post it", &[resolve(ms, 96, hold.id, 0, false)], &[T::Ok]);
}

fn book_window(seen: &mut Seen) {
    // A window of 64 transfers (batches of at most 64): the 65th pushes the first out.
    let config = Config { transfers_max: 64, batch_events_max: 64, ..Config::small() };
    let mut h = Harness::new(config);
    h.create_accounts(&[account(1, 1), account(2, 1)]);
    let ms = h.now_ms();
    let hold = pending(transfer(ms, 1, 1, 2, 5), 0);
    row(&mut h, seen, "hold at ms", &[hold], &[T::Ok]);
    for batch in 0..2u128 {
        let events: Vec<_> = (0..40u128).map(|i| transfer(ms + 1, 100 + batch * 40 + i, 1, 2, 1)).collect();
        row(&mut h, seen, "fill the window", &events, &[T::Ok; 40]);
    }
    // 81 remembered > 64: the next batch forgets the 17 oldest, the hold's record among them.
    row(&mut h, seen, "the hold again: forgotten, refused", &[hold], &[T::IdTooOld]);
    assert_eq!(h.ledger.horizon_ms(), ms + 2);
    row(&mut h, seen, "a new id from before the horizon", &[transfer(ms + 1, 999, 1, 2, 1)], &[T::IdTooOld]);
    row(&mut h, seen, "the hold is open still: post it", &[resolve(ms + 2, 1, hold.id, 0, false)], &[T::Ok]);
    row(&mut h, seen, "post it again", &[resolve(ms + 2, 2, hold.id, 0, false)], &[T::PendingTransferTooOld]);

    let mut small = Harness::new(Config { pending_max: 1, ..Config::small() });
    small.create_accounts(&[account(1, 1), account(2, 1)]);
    let ms = small.now_ms();
    row(
        &mut small,
        seen,
        "two holds, room for one",
        &[pending(transfer(ms, 1, 1, 2, 1), 0), pending(transfer(ms, 2, 1, 2, 1), 0)],
        &[T::Ok, T::PendingTransfersFull],
    );
}

fn book_accounts(seen: &mut Seen) {
    use CreateAccountResult as R;
    let mut h = Harness::new(Config { accounts_max: 4, ledgers_max: 2, ..Config::small() });
    let a = account(1, 1);
    let with = |f: fn(&mut Account)| {
        let mut account = account(2, 1);
        f(&mut account);
        account
    };
    let rows: Vec<(&str, Account, R)> = vec![
        ("account 1", a, R::Ok),
        ("account 1 again", a, R::Exists),
        ("timestamp set", with(|a| a.timestamp = 1), R::TimestampMustBeZero),
        ("reserved set", with(|a| a.reserved = 1), R::ReservedField),
        ("closed flag from a client", with(|a| a.flags.0 = AccountFlags::CLOSED), R::ReservedFlag),
        ("id 0", with(|a| a.id = AccountId(0)), R::IdMustNotBeZero),
        ("id MAX", with(|a| a.id = AccountId(MAX)), R::IdMustNotBeIntMax),
        ("both balance flags", with(|a| a.flags.0 = 6), R::FlagsAreMutuallyExclusive),
        ("debits_pending", with(|a| a.debits_pending = Amount(1)), R::DebitsPendingMustBeZero),
        ("debits_posted", with(|a| a.debits_posted = Amount(1)), R::DebitsPostedMustBeZero),
        ("credits_pending", with(|a| a.credits_pending = Amount(1)), R::CreditsPendingMustBeZero),
        ("credits_posted", with(|a| a.credits_posted = Amount(1)), R::CreditsPostedMustBeZero),
        ("ledger 0", with(|a| a.ledger = 0), R::LedgerMustNotBeZero),
        ("code 0", with(|a| a.code = 0), R::CodeMustNotBeZero),
        ("1 with other flags", Account { flags: AccountFlags(2), ..a }, R::ExistsWithDifferentFlags),
        ("1 with other user_data_128", Account { user_data_128: 1, ..a }, R::ExistsWithDifferentUserData128),
        ("1 with other user_data_64", Account { user_data_64: 1, ..a }, R::ExistsWithDifferentUserData64),
        ("1 with other user_data_32", Account { user_data_32: 1, ..a }, R::ExistsWithDifferentUserData32),
        ("1 on another ledger", Account { ledger: 2, ..a }, R::ExistsWithDifferentLedger),
        ("1 with another code", Account { code: 2, ..a }, R::ExistsWithDifferentCode),
        ("account 2 on ledger 2", account(2, 2), R::Ok),
        ("account 3 on a third ledger", account(3, 3), R::LedgersFull),
        ("account 3", account(3, 1), R::Ok),
        ("account 4", account(4, 1), R::Ok),
        ("account 5: four is the most", account(5, 1), R::AccountsFull),
    ];
    for (what, event, code) in rows {
        let got = h.create_accounts(&[event]);
        assert_eq!(got, [code], "{what}");
        seen.accounts.insert(got[0] as u32);
    }
    let mut h = Harness::new(Config::small());
    let linked = Account { flags: AccountFlags(AccountFlags::LINKED), ..account(1, 1) };
    let got = h.create_accounts(&[linked, Account { code: 0, ..account(2, 1) }]);
    assert_eq!(got, [R::LinkedEventFailed, R::CodeMustNotBeZero]);
    assert!(h.lookup_account(1).is_none(), "the failed chain created nothing");
    let got = h.create_accounts(&[linked]);
    assert_eq!(got, [R::LinkedEventChainOpen]);
    seen.accounts.extend([R::LinkedEventFailed as u32, R::LinkedEventChainOpen as u32]);
}

#[test]
fn the_books_reach_every_result_code_and_keep_the_invariants() {
    let mut seen = Seen::default();
    let mut h = Harness::new(Config::small());
    book_setup(&mut h);
    book_single_phase(&mut h, &mut seen);
    book_two_phase(&mut h, &mut seen);
    book_overflow(&mut h, &mut seen);
    book_closed_and_limits(&mut h, &mut seen);
    book_linked(&mut h, &mut seen);
    h.ledger.verify();
    book_window(&mut seen);
    book_accounts(&mut seen);

    let missing =
        |all: Vec<u32>, seen: &BTreeSet<u32>| -> Vec<u32> { all.into_iter().filter(|c| !seen.contains(c)).collect() };
    let transfers = missing(T::ALL.iter().map(|c| *c as u32).collect(), &seen.transfers);
    let names: Vec<_> = transfers.iter().map(|c| T::from_u32(*c).unwrap()).collect();
    assert!(names.is_empty(), "transfer codes no book reaches: {names:?}");
    let accounts = missing(CreateAccountResult::ALL.iter().map(|c| *c as u32).collect(), &seen.accounts);
    assert!(accounts.is_empty(), "account codes no book reaches: {accounts:?}");
    let state = missing(AccountStateResult::ALL.iter().map(|c| *c as u32).collect(), &seen.state);
    // Ok is implied by the successful close and reopen.
    assert!(state.is_empty() || state == [0], "close/reopen codes no book reaches: {state:?}");
    let limits = missing(SetLimitsResult::ALL.iter().map(|c| *c as u32).collect(), &seen.limits);
    assert!(limits.is_empty(), "limit codes no book reaches: {limits:?}");
}

#[test]
fn a_balance_read_shows_balances_limits_and_open_holds_together() {
    let mut h = Harness::new(Config::small());
    h.create_accounts(&[wallet(A), account(B, 1)]);
    let ms = h.now_ms();
    h.create_transfers(&[transfer(ms, 1, B, A, 100)]);
    h.set_limits(&[limits(A, LimitFlags::DAILY_DEBIT_AMOUNT, 1000, 0)]);
    let holds: Vec<_> = (0..3).map(|i| pending(transfer(ms, 10 + i, A, B, 10), 60)).collect();
    assert_eq!(h.create_transfers(&holds), [T::Ok; 3]);
    h.create_transfers(&[resolve(ms, 20, holds[1].id, 0, true)]);
    h.ledger.query(Query::LookupBalances(&[AccountId(A), AccountId(999)]), &mut h.output);
    assert_eq!(h.output.balances.len(), 1, "unknown accounts are left out");
    let read = h.output.balances[0];
    assert_eq!(read.account.debits_pending, Amount(20));
    assert_eq!(read.account.credits_posted, Amount(100));
    assert_eq!(read.limits.daily_debit_amount_max, Amount(1000));
    assert_eq!(read.usage.day_amount, Amount(30), "holds count toward the day when placed");
    assert_eq!((read.holds_count_total, read.holds_count), (2, 2));
    let mut ids: Vec<_> = h.output.holds_of(&read).iter().map(|t| t.id).collect();
    ids.sort();
    assert_eq!(ids, [holds[0].id, holds[2].id]);
}

#[test]
fn a_failed_chain_gives_back_the_ledger_it_registered() {
    use CreateAccountResult as R;
    let mut h = Harness::new(Config { ledgers_max: 2, ..Config::small() });
    assert_eq!(h.create_accounts(&[account(1, 1)]), [R::Ok]);
    // The same failing batch, with and without a chain that registers ledger 2 first.
    let mut twin = Harness::new(Config { ledgers_max: 2, ..Config::small() });
    assert_eq!(twin.create_accounts(&[account(1, 1)]), [R::Ok]);
    let linked = Account { flags: AccountFlags(AccountFlags::LINKED), ..account(2, 2) };
    let bad = Account { code: 0, ..account(3, 1) };
    assert_eq!(h.create_accounts(&[linked, bad]), [R::LinkedEventFailed, R::CodeMustNotBeZero]);
    assert_eq!(twin.create_accounts(&[Account { code: 0, ..account(2, 2) }, bad]), [R::CodeMustNotBeZero; 2]);
    assert_eq!(h.ledger.ledger_totals(), twin.ledger.ledger_totals(), "the registration was rolled back");
    assert_eq!(h.ledger.state_hash(), twin.ledger.state_hash());
    h.ledger.verify();
    // The slot the chain took is free again: a third ledger fits beside ledger 1.
    assert_eq!(h.create_accounts(&[account(4, 3)]), [R::Ok], "ledgers_max is 2 and only ledger 1 is in use");
    assert_eq!(h.create_accounts(&[account(5, 2)]), [R::LedgersFull]);
    // A transfer on the ledger registered after the rollback finds its totals.
    assert_eq!(h.create_accounts(&[account(6, 3)]), [R::Ok]);
    let ms = h.now_ms();
    assert_eq!(h.create_transfers(&[Transfer { ledger: 3, ..transfer(ms, 1, 4, 6, 10) }]), [T::Ok]);
    h.ledger.verify();
}

#[test]
fn id_future_ms_max_is_at_most_a_day_and_holds_exactly_up_to_the_end_of_time() {
    const DAY_MS: u64 = 86_400_000;
    for too_far in [DAY_MS + 1, u64::MAX] {
        let error = walletd_core::Ledger::new(Config { id_future_ms_max: too_far, ..Config::small() }).err();
        let message = error.map(|error| error.to_string()).unwrap_or_default();
        assert!(message.contains("id_future_ms_max"), "{too_far}: {message:?}");
    }
    let mut h = Harness::new(Config { id_future_ms_max: DAY_MS, ..Config::small() });
    h.create_accounts(&[account(1, 1), account(2, 1)]);
    let ms = h.now_ms();
    let rows = [transfer(ms + DAY_MS, 1, 1, 2, 1), transfer(ms + DAY_MS + 1, 2, 1, 2, 1)];
    assert_eq!(h.create_transfers(&rows), [T::Ok, T::IdTimestampInFuture]);
    // The largest clock a batch can carry, with the largest window ahead of it.
    h.now_ns = u64::MAX - 1_000;
    let ms = h.now_ms();
    let rows = [transfer(ms + DAY_MS, 3, 1, 2, 1), transfer(ms + DAY_MS + 1, 4, 1, 2, 1)];
    assert_eq!(h.create_transfers(&rows), [T::Ok, T::IdTimestampInFuture]);
    h.ledger.verify();
}
