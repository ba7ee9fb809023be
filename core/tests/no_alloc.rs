//! The apply loop allocates nothing after `Ledger::new`: a counting global allocator watches
//! every operation (transfers with chains, holds, posts, voids, expiries, limits; accounts;
//! close and reopen; queries) after a warm-up, and the count must stay zero.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use support::*;
use walletd_core::{AccountId, AccountLimits, Amount, Batch, Config, LimitFlags, Query, Transfer, TransferFlags};

struct Counting;

thread_local! {
    /// Counting is per thread, so tests running side by side do not count each other; so is
    /// the count, or one test's allocations would show in the other's.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: the caller upholds GlobalAlloc's contract; we pass it through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: as above.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One round of every operation; `round` keeps ids fresh.
fn round(h: &mut Harness, round: u128, accounts: &[walletd_core::Account], ids: &[AccountId]) {
    let ms = h.now_ms();
    let mut transfers: Vec<Transfer> = Vec::with_capacity(64);
    for i in 0..20u128 {
        let low = round * 1000 + i;
        let mut t = transfer(ms, low, 1 + i % 10, 1 + (i + 1) % 10, 5);
        match i % 5 {
            0 => t.flags.0 = TransferFlags::PENDING,
            1 => t.flags.0 = TransferFlags::PENDING,
            2 => t.flags.0 = TransferFlags::LINKED,
            3 => t.amount = Amount(u128::MAX),
            _ => {}
        }
        if i % 5 == 1 {
            t.timeout_s = 1;
        }
        transfers.push(t);
    }
    let posts: Vec<Transfer> = (0..4u128)
        .map(|i| resolve(ms, round * 1000 + 500 + i, transfers[(i * 5) as usize].id, 0, i % 2 == 1))
        .collect();
    let limits = [AccountLimits {
        account_id: AccountId(3),
        flags: LimitFlags(LimitFlags::DAILY_DEBIT_COUNT),
        daily_debit_count_max: 1000,
        ..Default::default()
    }];

    COUNTING.with(|counting| counting.set(true));
    h.ledger.apply(h.now_ns, Batch::CreateTransfers(&transfers), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::CreateTransfers(&posts), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::CreateTransfers(&transfers), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min() + 2 * NS_PER_S;
    h.ledger.apply(h.now_ns, Batch::Pulse, &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::CreateAccounts(accounts), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::CloseAccounts(&ids[9..]), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::ReopenAccounts(&ids[9..]), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.apply(h.now_ns, Batch::SetAccountLimits(&limits), &mut h.output);
    h.now_ns = h.ledger.timestamp_next_min();
    h.ledger.query(Query::LookupAccounts(ids), &mut h.output);
    h.ledger.query(Query::LookupBalances(ids), &mut h.output);
    h.ledger.query(Query::LookupTransfers(&[transfers[0].id, posts[0].id]), &mut h.output);
    COUNTING.with(|counting| counting.set(false));
}

#[test]
fn apply_and_query_allocate_nothing_after_construction() {
    let mut h = Harness::new(Config { transfers_max: 64, batch_events_max: 64, ..Config::small() });
    let accounts: Vec<_> = (1..=10u128).map(|id| account(id, 1)).collect();
    let ids: Vec<AccountId> = (1..=10u128).map(AccountId).collect();
    h.create_accounts(&accounts);
    round(&mut h, 0, &accounts, &ids);
    ALLOCATIONS.with(|count| count.set(0));
    // Enough rounds to wrap the 64-transfer window several times.
    for number in 1..40 {
        round(&mut h, number, &accounts, &ids);
    }
    assert!(h.ledger.transfers_created() > 3 * 64, "the window wrapped");
    assert_eq!(allocations(), 0, "the apply loop allocated");
}

/// A follower's output records the change-data feed; that allocates nothing either.
#[test]
fn apply_with_the_change_feed_allocates_nothing() {
    let config = Config { transfers_max: 64, batch_events_max: 64, ..Config::small() };
    let mut h = Harness::new(config);
    h.output = walletd_core::Output::with_changes(h.ledger.config());
    let accounts: Vec<_> = (1..=10u128).map(|id| account(id, 1)).collect();
    let ids: Vec<AccountId> = (1..=10u128).map(AccountId).collect();
    h.create_accounts(&accounts);
    round(&mut h, 0, &accounts, &ids);
    ALLOCATIONS.with(|count| count.set(0));
    for number in 1..40 {
        round(&mut h, number, &accounts, &ids);
    }
    assert!(h.output.changes_enabled());
    assert_eq!(allocations(), 0, "the apply loop allocated while recording changes");
}

#[test]
fn the_counter_sees_an_allocation() {
    COUNTING.with(|counting| counting.set(true));
    let before = allocations();
    let boxed = std::hint::black_box(Box::new(7u64));
    let after = allocations();
    COUNTING.with(|counting| counting.set(false));
    drop(boxed);
    assert!(after > before, "the counting allocator must count");
}
