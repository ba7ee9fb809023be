//! Builders shared by the root package's end-to-end tests.
#![allow(dead_code)]

use walletd_core::{Account, AccountId, Amount, Transfer, TransferId};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Plain accounts 1..=count on ledger 1.
pub fn accounts(count: u128) -> Vec<Account> {
    (1..=count).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect()
}

/// A transfer on ledger 1 whose id carries the current time (as a live client's would).
pub fn transfer(low: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id: TransferId::from_parts(now_ms(), low),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}
