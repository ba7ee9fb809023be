//! Deterministic simulation of the node's durability: one `u64` seed drives a workload through
//! the real writer (ledger + journal + checkpoints + snapshots), the storage faults (ENOSPC on
//! write and on create, EIO on fsync), crashes at random points (unsynced data lost, the last
//! write torn, a torn prefix of the unsynced writes), and damaged snapshots. The journal lives
//! on the in-memory `SimStorage`; snapshots on real files in a temporary directory.
//!
//! The oracle is a plain in-memory ledger fed the same batches with the same timestamps (the
//! core is itself checked against the reference model). After each crash and recovery:
//! nothing acknowledged is lost (the journal reaches every op a commit reported durable), the
//! recovered state hash equals the oracle's at the recovered op, Σ debits = Σ credits
//! (`verify`), and replaying the journal from genesis gives the same state as recovery.
//!
//! A failure prints its seed: rerun one with `WALLETD_SIM_SEED=<seed> cargo test --test simulation`.

use std::path::Path;
use walletd::writer::{Clock, Writer};
use walletd::NodeError;
use walletd_benches::workload::Rng;
use walletd_core::{
    Account, AccountFlags, AccountId, Amount, Batch, Config, Ledger, Output, Transfer, TransferFlags, TransferId,
};
use walletd_journal::{JournalError, SimCrash, SimFault, SimStorage};
use walletd_replay::data_dir::DataDir;
use walletd_replay::recovery::{recover, replay_onto, ReplayTarget};
use walletd_replay::replay::ReplayStats;
use walletd_replay::Verification;
use walletd_snapshot::{snapshot_save, snapshots_list};

const SEEDS_DEFAULT: u64 = 1500;
const SEGMENT_SIZE_BYTES: u64 = 32 * 1024;
const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;

fn config() -> Config {
    Config {
        accounts_max: 48,
        transfers_max: 100,
        pending_max: 16,
        limits_max: 8,
        ledgers_max: 4,
        batch_events_max: 24,
        id_future_ms_max: 10_000,
        hash_seed: 5,
    }
}

struct SimClock {
    now_ns: u64,
}

impl Clock for SimClock {
    fn now_ns(&mut self) -> u64 {
        self.now_ns
    }
}

/// A batch kept for the oracle, with the timestamp and op the writer gave it.
enum Owned {
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
}

impl Owned {
    fn batch(&self) -> Batch<'_> {
        match self {
            Owned::Accounts(events) => Batch::CreateAccounts(events),
            Owned::Transfers(events) => Batch::CreateTransfers(events),
        }
    }
}

struct Submitted {
    op: u64,
    timestamp_ns: u64,
    batch: Owned,
}

/// The state an uninterrupted run has after every command up to `op`.
fn oracle(history: &[Submitted], op: u64) -> Ledger {
    let mut ledger = Ledger::new(config()).unwrap();
    let mut output = Output::new(ledger.config());
    for submitted in history.iter().filter(|s| s.op <= op) {
        ledger.apply(submitted.timestamp_ns, submitted.batch.batch(), &mut output);
    }
    ledger
}

/// What the seeds exercised, so the test can insist that every kind of trouble happened.
#[derive(Debug, Default)]
struct Tally {
    faults_fired: u64,
    torn_tails: u64,
    recoveries_from_snapshot: u64,
    snapshots_skipped: u64,
    unacknowledged_ops_survived: u64,
}

struct Sim<'a> {
    seed: u64,
    tally: &'a mut Tally,
    rng: Rng,
    storage: SimStorage,
    data_dir: DataDir,
    clock: SimClock,
    history: Vec<Submitted>,
    /// The highest op a commit reported durable.
    op_acknowledged: u64,
    low: u128,
}

impl Sim<'_> {
    fn workload_batch(&mut self) -> Owned {
        let now_ms = self.clock.now_ns / 1_000_000;
        if self.rng.below(8) == 0 {
            let count = 1 + self.rng.below(6);
            let accounts = (0..count)
                .map(|_| {
                    let id = 1 + u128::from(self.rng.below(40));
                    let flags = if id % 3 == 0 { AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS } else { 0 };
                    Account { id: AccountId(id), ledger: 1, code: 1, flags: AccountFlags(flags), ..Account::default() }
                })
                .collect();
            return Owned::Accounts(accounts);
        }
        let count = 1 + self.rng.below(24);
        let transfers = (0..count).map(|_| self.transfer(now_ms)).collect();
        Owned::Transfers(transfers)
    }

    fn transfer(&mut self, now_ms: u64) -> Transfer {
        self.low += 1;
        let mut transfer = Transfer {
            id: TransferId::from_parts(now_ms, self.low),
            debit_account_id: AccountId(1 + u128::from(self.rng.below(42))),
            credit_account_id: AccountId(1 + u128::from(self.rng.below(42))),
            amount: Amount(1 + u128::from(self.rng.below(500))),
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        match self.rng.below(10) {
            0 | 1 => {
                transfer.flags = TransferFlags(TransferFlags::PENDING);
                transfer.timeout_s = self.rng.below(3) as u32;
            }
            2 if self.low > 10 => {
                let pending = TransferId::from_parts(now_ms, self.low - 1 - u128::from(self.rng.below(10)));
                transfer = Transfer {
                    id: transfer.id,
                    pending_id: pending,
                    flags: TransferFlags(TransferFlags::POST_PENDING),
                    ..Transfer::default()
                };
            }
            3 => transfer.flags = TransferFlags(TransferFlags::LINKED),
            _ => {}
        }
        transfer
    }

    /// Runs until a fault stops the writer or `steps` batches were submitted.
    fn run(&mut self, writer: &mut Writer<SimStorage>, steps: u64) -> Result<(), NodeError> {
        for _ in 0..steps {
            self.clock.now_ns += self.rng.below(400_000_000);
            let owned = self.workload_batch();
            let op = writer.journal.op_appended() + 1;
            let timestamp_ns = self.clock.now_ns.max(writer.ledger.timestamp_next_min());
            // Kept before the append: a failed append may still have reached the disk.
            self.history.push(Submitted { op, timestamp_ns, batch: owned });
            let batch = self.history.last().expect("just pushed").batch.batch();
            assert_eq!(writer.submit(&mut self.clock, batch)?, op);
            match self.rng.below(10) {
                0..=4 => self.op_acknowledged = writer.commit()?,
                5 => self.checkpoint_and_snapshot(writer)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A checkpoint; sometimes, once durable, a snapshot of the state at its op.
    fn checkpoint_and_snapshot(&mut self, writer: &mut Writer<SimStorage>) -> Result<(), NodeError> {
        let snapshot = self.rng.below(2) == 0;
        let op = writer.checkpoint(snapshot)?;
        self.op_acknowledged = writer.commit()?;
        if snapshot {
            let checksum = writer.journal.checksum_last();
            snapshot_save(&self.data_dir.snapshots(), op, checksum, &writer.ledger, 2)?;
        }
        Ok(())
    }

    fn fault_inject(&mut self) {
        let faults = [SimFault::WriteNoSpace, SimFault::CreateNoSpace, SimFault::SyncIo];
        let fault = faults[self.rng.below(3) as usize];
        self.storage.fail_after(fault, self.rng.below(12) as u32);
    }

    fn crash(&mut self) {
        let modes = [SimCrash::LoseUnsynced, SimCrash::TornLastWrite, SimCrash::TornPrefix];
        self.storage.crash(modes[self.rng.below(3) as usize]);
        if self.rng.below(6) == 0 {
            snapshot_damage(&self.data_dir.snapshots(), self.rng.next_u64());
        }
    }

    /// Recovers and checks everything the module promises; returns the writer to go on with.
    fn recover_and_check(&mut self, round: u32) -> Writer<SimStorage> {
        let recovered = recover(self.storage.clone(), &self.data_dir, SEGMENT_SIZE_BYTES, &Verification::default())
            .unwrap_or_else(|error| panic!("seed {} round {round}: recovery failed: {error}", self.seed));
        let op_last = recovered.journal_recovered.op_last;
        self.tally.torn_tails += u64::from(recovered.journal_recovered.torn_tail.is_some());
        self.tally.recoveries_from_snapshot += u64::from(recovered.snapshot.is_some());
        self.tally.snapshots_skipped += recovered.snapshots_skipped.len() as u64;
        self.tally.unacknowledged_ops_survived += u64::from(op_last > self.op_acknowledged);
        assert!(
            op_last >= self.op_acknowledged,
            "seed {}: lost acknowledged ops ({op_last} < {})",
            self.seed,
            self.op_acknowledged
        );
        let expected = oracle(&self.history, op_last);
        assert_eq!(
            recovered.ledger.state_hash(),
            expected.state_hash(),
            "seed {} round {round}: state differs from the oracle at op {op_last}",
            self.seed
        );
        recovered.ledger.verify();
        let mut genesis = Ledger::new(config()).unwrap();
        let target = ReplayTarget { op_durable: Some(op_last), ..ReplayTarget::default() };
        replay_onto(self.storage.clone(), &self.data_dir, &mut genesis, None, target, &mut ReplayStats::default())
            .unwrap_or_else(|error| panic!("seed {} round {round}: replay from genesis failed: {error}", self.seed));
        assert_eq!(
            genesis.state_hash(),
            recovered.ledger.state_hash(),
            "seed {}: genesis replay != recovery",
            self.seed
        );
        // Ops after the recovered end never happened: forget them so the oracle agrees.
        self.history.retain(|submitted| submitted.op <= op_last);
        self.op_acknowledged = op_last;
        Writer::new(recovered.ledger, recovered.journal)
    }
}

/// Flips a byte in the middle of the newest snapshot, if there is one.
fn snapshot_damage(dir: &Path, random: u64) {
    let Some((_, path)) = snapshots_list(dir).unwrap().into_iter().next() else { return };
    let mut bytes = std::fs::read(&path).unwrap();
    let index = 128 + (random as usize % (bytes.len() - 144));
    bytes[index] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
}

fn run_seed(seed: u64, root: &Path, tally: &mut Tally) {
    let data_dir = DataDir::new(root.join(format!("seed-{seed}")));
    data_dir.open_or_create(config()).unwrap();
    let mut sim = Sim {
        seed,
        tally,
        rng: Rng(seed),
        storage: SimStorage::new(seed),
        data_dir,
        clock: SimClock { now_ns: EPOCH_NS },
        history: Vec::new(),
        op_acknowledged: 0,
        low: 0,
    };
    let mut writer = sim.recover_and_check(0);
    for round in 1..=4 {
        if sim.rng.below(3) > 0 {
            sim.fault_inject();
        }
        let steps = 5 + sim.rng.below(40);
        match sim.run(&mut writer, steps) {
            Ok(()) => {}
            Err(NodeError::Replay(walletd_replay::ReplayError::Journal(error))) => {
                assert!(error.is_fail_stop() || matches!(error, JournalError::Io { .. }), "seed {seed}: {error}");
                sim.tally.faults_fired += 1;
            }
            Err(other) => panic!("seed {seed}: unexpected error {other}"),
        }
        drop(writer);
        sim.crash();
        writer = sim.recover_and_check(round);
    }
}

#[test]
fn recovery_after_faults_and_crashes_equals_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let seeds: Vec<u64> = match std::env::var("WALLETD_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("WALLETD_SIM_SEED must be a u64")],
        Err(_) => {
            let count = std::env::var("WALLETD_SIM_SEEDS").map_or(SEEDS_DEFAULT, |n| n.parse().expect("a count"));
            (0..count).collect()
        }
    };
    let mut tally = Tally::default();
    let seeds_count = seeds.len();
    for seed in seeds {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(seed, root.path(), &mut tally)));
        if let Err(panic) = outcome {
            eprintln!("simulation failed with seed {seed}: rerun with WALLETD_SIM_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
        std::fs::remove_dir_all(root.path().join(format!("seed-{seed}"))).unwrap();
    }
    eprintln!("{seeds_count} seeds: {tally:?}");
    if seeds_count >= 100 {
        assert!(tally.faults_fired > 0, "no injected fault ever fired: {tally:?}");
        assert!(tally.torn_tails > 0, "no crash ever tore the tail: {tally:?}");
        assert!(tally.recoveries_from_snapshot > 0, "no recovery started from a snapshot: {tally:?}");
        assert!(tally.snapshots_skipped > 0, "no damaged snapshot was ever skipped: {tally:?}");
        assert!(tally.unacknowledged_ops_survived > 0, "no unacknowledged op ever survived a crash: {tally:?}");
    }
}
