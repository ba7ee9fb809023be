//! A node in one loop for the export crate's tests, without the network: ledger, journal,
//! durable mark and snapshots in a temp directory, with a workload that makes every kind of
//! transfer change (single-phase, holds placed, posted partly, voided and expired, a failed
//! linked chain) and some that make none (refusals, account changes, checkpoints).

#![allow(dead_code)]

use std::path::Path;
use walletd_core::command::{batch_encode, batch_traced_encode};
use walletd_core::{Account, AccountId, Amount, Batch, Config, Ledger, Output, Transfer, TransferFlags, TransferId};
use walletd_journal::{Journal, JournalConfig, RecordKind};
use walletd_replay::{Checkpoint, DataDir, DurableMark, Position};
use walletd_snapshot::snapshot_save;

const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;
const TIME_MS: u64 = 1_800_000_000_000;
pub const ACCOUNTS: u128 = 16;

pub fn config() -> Config {
    Config { accounts_max: 256, transfers_max: 1 << 16, batch_events_max: 256, ..Config::small() }
}

pub struct TestNode {
    pub dir: std::path::PathBuf,
    pub ledger: Ledger,
    journal: Journal,
    mark: DurableMark,
    output: Output,
    body: Vec<u8>,
    now_ns: u64,
    low: u128,
    /// Transfer changes the writer's own ledger made (the expected event count).
    pub transfer_changes: u64,
}

impl TestNode {
    pub fn create(dir: &Path) -> TestNode {
        let data_dir = DataDir::new(dir);
        let config = data_dir.open_or_create(config()).expect("create the data directory");
        let journal_config = JournalConfig { dir: dir.to_path_buf(), segment_size_bytes: SEGMENT_SIZE_BYTES };
        let (journal, _) = Journal::open_files(journal_config).expect("open the journal");
        let mark = DurableMark::open(dir, Position::default()).expect("durable mark");
        let ledger = Ledger::new(config).expect("ledger");
        let output = Output::with_changes(ledger.config());
        let mut node = TestNode {
            dir: dir.to_path_buf(),
            ledger,
            journal,
            mark,
            output,
            body: Vec::new(),
            now_ns: TIME_MS * 1_000_000,
            low: 0,
            transfer_changes: 0,
        };
        let accounts: Vec<Account> =
            (1..=ACCOUNTS).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect();
        node.submit(Batch::CreateAccounts(&accounts));
        node.commit();
        node
    }

    pub fn submit(&mut self, batch: Batch<'_>) {
        self.submit_traced(batch, None);
    }

    /// `submit`, the command carrying `trace_ids` (one per event) when given.
    pub fn submit_traced(&mut self, batch: Batch<'_>, trace_ids: Option<&[u128]>) {
        self.now_ns += 1_000_000;
        let timestamp_ns = self.now_ns.max(self.ledger.timestamp_next_min());
        self.body.clear();
        match trace_ids {
            Some(trace_ids) => batch_traced_encode(&batch, trace_ids, &mut self.body),
            None => batch_encode(&batch, &mut self.body),
        }
        let op = self.journal.op_appended() + 1;
        self.journal.append(op, timestamp_ns, RecordKind::CommandBatch, &self.body).expect("append");
        self.ledger.apply(timestamp_ns, batch, &mut self.output);
        self.transfer_changes += self.output.changes.iter().filter(|change| change.kind.is_transfer()).count() as u64;
    }

    pub fn checkpoint(&mut self) {
        let op = self.journal.op_appended() + 1;
        let body = Checkpoint::of(&self.ledger, 0).encode();
        let timestamp_ns = self.journal.timestamp_ns_last().max(self.ledger.timestamp_last());
        self.journal.append(op, timestamp_ns, RecordKind::Checkpoint, &body).expect("append a checkpoint");
    }

    /// Commits and publishes the durable mark.
    pub fn commit(&mut self) {
        let op = self.journal.commit().expect("commit");
        self.mark.publish(Position { op, checksum: self.journal.checksum_last() }).expect("publish");
    }

    pub fn snapshot(&mut self) {
        let op = self.journal.op_durable();
        let data_dir = DataDir::new(&self.dir);
        snapshot_save(&data_dir.snapshots(), op, self.journal.checksum_last(), &self.ledger, 2).expect("snapshot");
    }

    fn id(&mut self) -> TransferId {
        self.low += 1;
        TransferId::from_parts(self.now_ns / 1_000_000, self.low)
    }

    /// One round: `size` single-phase transfers, holds (one posted partly, one voided, one that
    /// expires), a refused transfer and a failed linked chain (untraced); then the post and
    /// the void, traced; then a pulse past the expiry.
    pub fn round(&mut self, size: u128) {
        let mut batch = Vec::new();
        for k in 0..size {
            let (debit, credit) = (1 + k % ACCOUNTS, 1 + (k + 1 + k / ACCOUNTS) % ACCOUNTS);
            let id = self.id();
            batch.push(transfer(id, debit, credit.max(1), 1 + k % 7));
        }
        batch.retain(|t| t.debit_account_id != t.credit_account_id);
        let (hold_posted, hold_voided, hold_expiring) = (self.id(), self.id(), self.id());
        batch.push(Transfer { flags: TransferFlags(TransferFlags::PENDING), ..transfer(hold_posted, 1, 2, 50) });
        batch.push(Transfer { flags: TransferFlags(TransferFlags::PENDING), ..transfer(hold_voided, 3, 4, 20) });
        batch.push(Transfer {
            flags: TransferFlags(TransferFlags::PENDING),
            timeout_s: 1,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: 7,
            ..transfer(hold_expiring, 5, 6, 7)
        });
        let same = self.id();
        batch.push(transfer(same, 1, 1, 5)); // refused: same account
        let (chain_first, chain_last) = (self.id(), self.id());
        batch.push(Transfer { flags: TransferFlags(TransferFlags::LINKED), ..transfer(chain_first, 1, 3, 9) });
        batch.push(transfer(chain_last, 1, 999, 9)); // fails the chain: no such account
        self.submit(Batch::CreateTransfers(&batch));
        let resolve = |id, pending_id, amount, flags| Transfer {
            id,
            pending_id,
            amount: Amount(amount),
            flags: TransferFlags(flags),
            ..Transfer::default()
        };
        let (post, void) = (self.id(), self.id());
        let second = [
            resolve(post, hold_posted, 20, TransferFlags::POST_PENDING),
            resolve(void, hold_voided, 0, TransferFlags::VOID_PENDING),
        ];
        let trace_ids = [post.0 << 1 | 1, void.0 << 1 | 1];
        self.submit_traced(Batch::CreateTransfers(&second), Some(&trace_ids));
        self.now_ns += 2_000_000_000;
        self.submit(Batch::Pulse);
    }
}

fn transfer(id: TransferId, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// A data directory with `rounds` rounds, a checkpoint and a commit after each, and a snapshot
/// in the middle.
pub fn journal_written(dir: &Path, rounds: u32, size: u128) -> TestNode {
    let mut node = TestNode::create(dir);
    for round in 0..rounds {
        node.round(size);
        node.checkpoint();
        node.commit();
        if round == rounds / 2 {
            node.snapshot();
        }
    }
    node
}
