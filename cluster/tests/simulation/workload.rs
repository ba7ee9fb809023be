//! The clients' seeded workload: each client first creates its accounts, then sends batches
//! of transfers among every client's accounts — deposits from a settlement account (which may
//! go negative), wallet-to-wallet payments that may be refused for want of funds, holds that
//! expire and posts of earlier holds — encoded exactly as the gateway hands commands to the
//! cluster (`batch_encode`, the journal's command bytes).

use std::collections::VecDeque;
use walletd_core::command::batch_encode;
use walletd_core::{Account, AccountFlags, AccountId, Amount, Batch, Transfer, TransferFlags, TransferId};
use walletd_journal::SimRng;

/// Accounts each client owns: the first is its settlement account, the others are wallets.
pub const ACCOUNTS_PER_CLIENT: u64 = 6;

const RECENT_COUNT: usize = 8;

pub struct Workload {
    rng: SimRng,
    client_index: u64,
    client_count: u64,
    accounts_created: bool,
    transfers_sent: u128,
    /// This client's latest transfer ids, for posts of earlier holds.
    recent: VecDeque<TransferId>,
}

impl Workload {
    pub fn new(seed: u64, client_index: u64, client_count: u64) -> Workload {
        Workload {
            rng: SimRng::new(seed ^ (client_index + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)),
            client_index,
            client_count,
            accounts_created: false,
            transfers_sent: 0,
            recent: VecDeque::with_capacity(RECENT_COUNT),
        }
    }

    /// The ids of every client's accounts (for the checker's sum).
    pub fn account_ids(client_count: u64) -> Vec<AccountId> {
        (0..client_count * ACCOUNTS_PER_CLIENT).map(|index| AccountId(u128::from(index) + 1)).collect()
    }

    /// The next command's bytes; `now_ms` is the client's clock (transfer ids embed it).
    pub fn command_next(&mut self, now_ms: u64, batch_events_max: u32) -> Vec<u8> {
        let mut command = Vec::new();
        if !self.accounts_created {
            self.accounts_created = true;
            let accounts: Vec<Account> = (0..ACCOUNTS_PER_CLIENT)
                .map(|offset| {
                    let id = self.client_index * ACCOUNTS_PER_CLIENT + offset + 1;
                    let flags = if offset == 0 { 0 } else { AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS };
                    Account {
                        id: AccountId(u128::from(id)),
                        ledger: 1,
                        code: 1,
                        flags: AccountFlags(flags),
                        ..Account::default()
                    }
                })
                .collect();
            batch_encode(&Batch::CreateAccounts(&accounts), &mut command);
            return command;
        }
        let count = 1 + self.rng.below(u64::from(batch_events_max).min(16));
        let transfers: Vec<Transfer> = (0..count).map(|_| self.transfer(now_ms)).collect();
        batch_encode(&Batch::CreateTransfers(&transfers), &mut command);
        command
    }

    fn account_any(&mut self) -> AccountId {
        AccountId(1 + u128::from(self.rng.below(self.client_count * ACCOUNTS_PER_CLIENT)))
    }

    fn transfer(&mut self, now_ms: u64) -> Transfer {
        self.transfers_sent += 1;
        let low = (u128::from(self.client_index) << 64) | self.transfers_sent;
        let id = TransferId::from_parts(now_ms, low);
        let settlement = AccountId(u128::from(self.client_index * ACCOUNTS_PER_CLIENT + 1));
        let mut transfer = Transfer {
            id,
            debit_account_id: self.account_any(),
            credit_account_id: self.account_any(),
            amount: Amount(1 + u128::from(self.rng.below(1_000))),
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        match self.rng.below(10) {
            0..=2 => transfer.debit_account_id = settlement,
            3 => {
                transfer.flags = TransferFlags(TransferFlags::PENDING);
                transfer.timeout_s = self.rng.below(3) as u32;
            }
            4 if !self.recent.is_empty() => {
                // A post of one of this client's recent transfers: a hold or not, open or not.
                let earlier = self.recent[self.rng.below(self.recent.len() as u64) as usize];
                transfer = Transfer {
                    id,
                    pending_id: earlier,
                    flags: TransferFlags(TransferFlags::POST_PENDING),
                    ..Transfer::default()
                };
            }
            5 => transfer.flags = TransferFlags(TransferFlags::LINKED),
            _ => {}
        }
        if self.recent.len() == RECENT_COUNT {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        transfer
    }
}
