//! Shared by the core's tests: a seeded generator, record builders, a harness that applies
//! batches and returns dense results, and the reference model.
#![allow(dead_code)]

pub mod model;

use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, Amount, Batch, Config, CreateAccountResult, CreateTransferResult,
    Ledger, Output, Query, Transfer, TransferFlags, TransferId,
};

/// 2026-11-22T00:00:00Z in nanoseconds: tests run at a realistic time.
pub const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;
pub const NS_PER_MS: u64 = 1_000_000;
pub const NS_PER_S: u64 = 1_000_000_000;

/// SplitMix64: tiny, seeded, and the same everywhere.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..bound.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next() % bound
    }

    /// True with probability percent/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn account(id: u128, ledger: u32) -> Account {
    Account { id: AccountId(id), ledger, code: 1, ..Account::default() }
}

pub fn wallet(id: u128) -> Account {
    Account { flags: AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS), ..account(id, 1) }
}

/// A transfer on ledger 1 whose id carries the time `time_ms`.
pub fn transfer(time_ms: u64, low: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id: TransferId::from_parts(time_ms, low),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// A post (or, with `void`, a void) of the hold `pending`, inheriting its fields.
pub fn resolve(time_ms: u64, low: u128, pending: TransferId, amount: u128, void: bool) -> Transfer {
    let flag = if void { TransferFlags::VOID_PENDING } else { TransferFlags::POST_PENDING };
    Transfer {
        id: TransferId::from_parts(time_ms, low),
        pending_id: pending,
        amount: Amount(amount),
        flags: TransferFlags(flag),
        ..Transfer::default()
    }
}

/// A ledger driven like the pipeline drives it: a clock that moves forward, dense results.
pub struct Harness {
    pub ledger: Ledger,
    pub output: Output,
    pub now_ns: u64,
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        let ledger = Ledger::new(config).expect("config");
        let output = Output::new(ledger.config());
        Harness { ledger, output, now_ns: EPOCH_NS }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ns / NS_PER_MS
    }

    pub fn advance_ns(&mut self, ns: u64) {
        self.now_ns += ns;
    }

    /// Applies a batch at the current time (moved past the last event) and returns one code
    /// per event.
    pub fn apply(&mut self, batch: Batch<'_>) -> Vec<u32> {
        self.now_ns = self.now_ns.max(self.ledger.timestamp_next_min());
        self.ledger.apply(self.now_ns, batch, &mut self.output);
        self.now_ns = self.ledger.timestamp_next_min();
        (0..batch.len() as u32).map(|index| self.output.code_of(index)).collect()
    }

    pub fn create_accounts(&mut self, accounts: &[Account]) -> Vec<CreateAccountResult> {
        let codes = self.apply(Batch::CreateAccounts(accounts));
        codes.into_iter().map(|code| CreateAccountResult::from_u32(code).expect("known code")).collect()
    }

    pub fn create_transfers(&mut self, transfers: &[Transfer]) -> Vec<CreateTransferResult> {
        let codes = self.apply(Batch::CreateTransfers(transfers));
        codes.into_iter().map(|code| CreateTransferResult::from_u32(code).expect("known code")).collect()
    }

    pub fn set_limits(&mut self, limits: &[AccountLimits]) -> Vec<u32> {
        self.apply(Batch::SetAccountLimits(limits))
    }

    pub fn lookup_account(&mut self, id: u128) -> Option<Account> {
        self.ledger.query(Query::LookupAccounts(&[AccountId(id)]), &mut self.output);
        self.output.accounts.first().copied()
    }

    /// (debits_pending, debits_posted, credits_pending, credits_posted)
    pub fn balances(&mut self, id: u128) -> (u128, u128, u128, u128) {
        let account = self.lookup_account(id).expect("account exists");
        (account.debits_pending.0, account.debits_posted.0, account.credits_pending.0, account.credits_posted.0)
    }
}
