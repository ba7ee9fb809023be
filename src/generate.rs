//! `walletd generate`: a seeded workload through the real ledger, journal (real fsync) and
//! snapshot replica, so that a data directory exists for drills and benchmarks before the
//! network server does. Accounts are created first (resubmissions on an existing directory
//! come back as `exists`), then transfers in batches: single-phase, plus a share of holds that
//! the next batch posts or voids.

use crate::error::NodeError;
use crate::node::Trust;
use crate::writer::{Clock, SystemClock, Writer};
use std::time::Instant;
use walletd_benches::workload::{accounts, single_phase, Distribution, IdMaker, Picker, Rng};
use walletd_core::{Batch, Config, Transfer, TransferFlags, BATCH_EVENTS_MAX};
use walletd_journal::FileStorage;
use walletd_replay::checkpoint::CheckpointSigner;
use walletd_replay::data_dir::DataDir;
use walletd_replay::recovery::recover;
use walletd_replay::{replica_of, SnapshotTaken, SnapshotWhen, Snapshotter};
use walletd_snapshot::SNAPSHOTS_KEPT_DEFAULT;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub transfers: u64,
    pub accounts: u64,
    pub seed: u64,
    pub batch_size: usize,
    /// Batches per fsync.
    pub commit_batches: u64,
    /// A checkpoint record every this many ops.
    pub checkpoint_ops: u64,
    /// A snapshot at the first checkpoint this many ops after the last one.
    pub snapshot_ops: u64,
    pub segment_size_bytes: u64,
    /// Percent of transfers that are holds (posted or voided in the next batch).
    pub two_phase_percent: u64,
    pub distribution: Distribution,
    /// Print `durable <op>` on stdout after every commit (for crash tests).
    pub print_durable: bool,
    /// The signing key and what start-up verifies.
    pub trust: Trust,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            transfers: 1_000_000,
            accounts: 10_000,
            seed: 1,
            batch_size: BATCH_EVENTS_MAX as usize,
            commit_batches: 1,
            checkpoint_ops: 64,
            snapshot_ops: 1024,
            segment_size_bytes: 256 << 20,
            two_phase_percent: 5,
            distribution: Distribution::Uniform,
            print_durable: false,
            trust: Trust::default(),
        }
    }
}

/// The config a new data directory gets: room for the accounts asked for (and more).
pub fn config_for(accounts_count: u64) -> Config {
    Config {
        accounts_max: u32::try_from((accounts_count * 2).max(1 << 16)).expect("accounts fit in u32"),
        transfers_max: (1 << 20) - BATCH_EVENTS_MAX,
        pending_max: 1 << 18,
        limits_max: 1 << 16,
        ledgers_max: 256,
        batch_events_max: BATCH_EVENTS_MAX,
        id_future_ms_max: 10_000,
        hash_seed: 0x77a1_1e7d,
    }
}

#[derive(Clone, Debug)]
pub struct GenerateReport {
    pub op_durable: u64,
    pub accounts: u64,
    pub transfers_submitted: u64,
    pub transfers_created: u64,
    pub seconds: f64,
    pub commits: u64,
    pub state_hash: u128,
    pub snapshots: Vec<SnapshotTaken>,
    pub segments_archived: usize,
    /// Longest checkpoint append on the apply path: the snapshot stall.
    pub checkpoint_ns_max: u64,
    pub recovery_seconds: f64,
    /// What recovery repaired or set aside before the run, one line each.
    pub recovery_notes: Vec<String>,
}

pub fn generate(data_dir: &DataDir, options: &GenerateOptions) -> Result<GenerateReport, NodeError> {
    assert!(options.batch_size >= 2 && options.batch_size <= BATCH_EVENTS_MAX as usize);
    let recovery_start = Instant::now();
    let _lock = data_dir.lock()?;
    data_dir.open_or_create(config_for(options.accounts))?;
    let verification = options.trust.start_verification()?;
    let recovered = recover(FileStorage::default(), data_dir, options.segment_size_bytes, &verification)?;
    let recovery_seconds = recovery_start.elapsed().as_secs_f64();
    let recovery_notes = recovered.notes();
    let op_start = recovered.journal.op_durable();
    let op_snapshot = recovered.snapshot.as_ref().map_or(0, |(header, _)| header.op);
    let seal_first = options.trust.seal_first(op_start, &recovered.replay.trust);
    let signer = (options.trust.signing_key.clone())
        .map(|key| CheckpointSigner::new(key, options.checkpoint_ops, &recovered.config));
    let snapshotter = Snapshotter::start(
        replica_of(&recovered.ledger),
        op_start,
        op_snapshot,
        FileStorage::default(),
        data_dir.clone(),
        SNAPSHOTS_KEPT_DEFAULT,
        SnapshotWhen::Asked,
    )?;
    let mut writer = Writer::new(recovered.ledger, recovered.journal);
    writer.signer = signer;
    let mut run = Run {
        writer,
        snapshotter,
        clock: SystemClock,
        options: options.clone(),
        batches_since_commit: 0,
        op_checkpoint: op_start,
        // The snapshot interval counts from the newest snapshot, across runs, as `serve` does.
        op_snapshot_requested: op_snapshot,
        // What is older than the recovered snapshot was archived (or kept live) by the run
        // that wrote it; only a newer snapshot archives more.
        op_archived: op_snapshot,
        segments_archived: 0,
    };
    run.writer.durable_mark_publish(&data_dir.root)?;
    let start = Instant::now();
    if seal_first {
        run.checkpoint(false)?; // covers what recovery found with a signature at once
    }
    run.accounts_create()?;
    let transfers_submitted = run.transfers()?;
    run.checkpoint(true)?;
    run.commit()?;
    let seconds = start.elapsed().as_secs_f64();
    let Run { mut writer, snapshotter, mut segments_archived, op_archived, .. } = run;
    let snapshots = snapshotter.finish()?;
    // The replica has caught up: archive what is older than the snapshot before the final one
    // (the journal after it stays live, so falling back to it needs nothing from archive/).
    let fallback = snapshots.len().checked_sub(2).map(|index| &snapshots[index]);
    if let Some(fallback) = fallback.filter(|snapshot| snapshot.op > op_archived) {
        segments_archived += writer.journal.archive_before(fallback.op)?.len();
    }
    Ok(GenerateReport {
        op_durable: writer.journal.op_durable(),
        accounts: u64::from(writer.ledger.accounts_count()),
        transfers_submitted,
        transfers_created: writer.ledger.transfers_created(),
        seconds,
        commits: writer.commits,
        state_hash: writer.ledger.state_hash(),
        snapshots,
        segments_archived,
        checkpoint_ns_max: writer.checkpoint_ns_max,
        recovery_seconds,
        recovery_notes,
    })
}

struct Run {
    writer: Writer<FileStorage>,
    snapshotter: Snapshotter,
    clock: SystemClock,
    options: GenerateOptions,
    batches_since_commit: u64,
    op_checkpoint: u64,
    op_snapshot_requested: u64,
    op_archived: u64,
    segments_archived: usize,
}

impl Run {
    fn submit(&mut self, batch: Batch<'_>) -> Result<(), NodeError> {
        self.writer.submit(&mut self.clock, batch)?;
        self.batches_since_commit += 1;
        let op = self.writer.journal.op_appended();
        if op - self.op_checkpoint >= self.options.checkpoint_ops {
            let snapshot = op - self.op_snapshot_requested >= self.options.snapshot_ops;
            self.checkpoint(snapshot)?;
        }
        if self.batches_since_commit >= self.options.commit_batches {
            self.commit()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, snapshot: bool) -> Result<(), NodeError> {
        self.op_checkpoint = self.writer.checkpoint(snapshot)?;
        if snapshot {
            self.op_snapshot_requested = self.op_checkpoint;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), NodeError> {
        let op_durable = self.writer.commit()?;
        self.batches_since_commit = 0;
        if self.options.print_durable {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "durable {op_durable}").and_then(|()| stdout.flush());
        }
        self.snapshotter.durable(op_durable);
        let op_snapshot = self.snapshotter.op_snapshot();
        if op_snapshot > self.op_archived {
            self.segments_archived += self.writer.journal.archive_before(op_snapshot)?.len();
            self.op_archived = op_snapshot;
        }
        Ok(())
    }

    fn accounts_create(&mut self) -> Result<(), NodeError> {
        let all = accounts(self.options.accounts);
        for chunk in all.chunks(self.options.batch_size) {
            self.submit(Batch::CreateAccounts(chunk))?;
        }
        Ok(())
    }

    /// Submits the transfers; returns how many.
    fn transfers(&mut self) -> Result<u64, NodeError> {
        let mut rng = Rng(self.options.seed);
        let picker = Picker::new(self.options.accounts.max(2), self.options.distribution, &mut rng);
        let mut ids = IdMaker::with_prefix(self.options.seed);
        let mut batch: Vec<Transfer> = Vec::with_capacity(self.options.batch_size);
        let mut holds: Vec<Transfer> = Vec::new();
        let mut submitted = 0u64;
        while submitted < self.options.transfers {
            let time_ms = self.clock.now_ns().max(self.writer.ledger.timestamp_next_min()) / 1_000_000;
            // Resolve the previous batch's holds first: post most, void some.
            let resolving = holds.len().min(self.options.batch_size / 2);
            let count = (self.options.batch_size - resolving).min((self.options.transfers - submitted) as usize);
            single_phase(&mut batch, count, &picker, &mut rng, &mut ids, time_ms);
            for transfer in batch.iter_mut() {
                if rng.below(100) < self.options.two_phase_percent {
                    transfer.flags = TransferFlags(TransferFlags::PENDING);
                    transfer.timeout_s = 60;
                }
            }
            for hold in holds.drain(..resolving) {
                let flag = if rng.below(10) == 0 { TransferFlags::VOID_PENDING } else { TransferFlags::POST_PENDING };
                batch.push(Transfer {
                    id: ids.next(time_ms),
                    pending_id: hold.id,
                    flags: TransferFlags(flag),
                    ..Transfer::default()
                });
            }
            holds.extend(batch.iter().filter(|t| t.flags.contains(TransferFlags::PENDING)).copied());
            self.submit(Batch::CreateTransfers(&batch))?;
            submitted += batch.len() as u64;
        }
        Ok(submitted)
    }
}
