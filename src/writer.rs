//! The writer: sequence, journal, apply and group commit in one loop, for `walletd generate`
//! and the simulation (the network server runs the same steps as a pipeline of threads).
//! Each batch is stamped with the one clock read (never before the ledger's next timestamp),
//! appended to the journal, applied, and made durable by a commit that covers every batch
//! since the last one. A failed append or commit is fatal: the writer is poisoned with the
//! journal, and the node must restart and recover.

use crate::error::NodeError;
use std::time::Instant;
use walletd_core::command::batch_encode;
use walletd_core::{Batch, Ledger, Output};
use walletd_journal::{Journal, RecordKind, Storage};
use walletd_replay::checkpoint::{checkpoint_encode, Checkpoint, CheckpointSigner, RecordAt, CHECKPOINT_SNAPSHOT};
use walletd_replay::{DurableMark, Position};

/// Where the clock comes from: the wall clock, or a test's.
pub trait Clock {
    fn now_ns(&mut self) -> u64;
}

/// Nanoseconds since the Unix epoch.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&mut self) -> u64 {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
        u64::try_from(since_epoch.as_nanos()).expect("nanoseconds fit in u64 until 2554")
    }
}

pub struct Writer<S: Storage> {
    pub ledger: Ledger,
    pub journal: Journal<S>,
    pub output: Output,
    body: Vec<u8>,
    /// Longest time a checkpoint record took to append (the apply thread's snapshot stall).
    pub checkpoint_ns_max: u64,
    pub commits: u64,
    /// Published after every commit, for followers in other processes (none in simulations).
    durable_mark: Option<DurableMark>,
    /// Signs each checkpoint (none: unsigned checkpoints).
    pub signer: Option<CheckpointSigner>,
}

impl<S: Storage> Writer<S> {
    pub fn new(ledger: Ledger, journal: Journal<S>) -> Writer<S> {
        assert_eq!(journal.op_appended(), journal.op_durable(), "a writer starts from a durable journal");
        let output = Output::new(ledger.config());
        let body = Vec::with_capacity(16 + 128 * ledger.config().batch_events_max as usize);
        Writer { ledger, journal, output, body, checkpoint_ns_max: 0, commits: 0, durable_mark: None, signer: None }
    }

    /// Publishes the durable mark of the data directory `dir` now and after every commit.
    pub fn durable_mark_publish(&mut self, dir: &std::path::Path) -> Result<(), NodeError> {
        let position = Position { op: self.journal.op_durable(), checksum: self.journal.checksum_last() };
        self.durable_mark = Some(DurableMark::open(dir, position)?);
        Ok(())
    }

    /// Journals and applies one batch; its results are in `self.output`. Not durable until
    /// `commit`. Returns the batch's op.
    pub fn submit(&mut self, clock: &mut impl Clock, batch: Batch<'_>) -> Result<u64, NodeError> {
        let timestamp_ns = clock.now_ns().max(self.ledger.timestamp_next_min());
        self.body.clear();
        batch_encode(&batch, &mut self.body);
        let op = self.journal.op_appended() + 1;
        self.journal.append(op, timestamp_ns, RecordKind::CommandBatch, &self.body)?;
        self.ledger.apply(timestamp_ns, batch, &mut self.output);
        Ok(op)
    }

    /// Appends a checkpoint of the current state, asking for a snapshot if `snapshot`.
    pub fn checkpoint(&mut self, snapshot: bool) -> Result<u64, NodeError> {
        let start = Instant::now();
        let flags = if snapshot { CHECKPOINT_SNAPSHOT } else { 0 };
        let checkpoint = Checkpoint::of(&self.ledger, flags);
        let op = self.journal.op_appended() + 1;
        let timestamp_ns = self.journal.timestamp_ns_last().max(self.ledger.timestamp_last());
        let at = RecordAt { op, timestamp_ns, checksum_prev: self.journal.checksum_last() };
        let (body, size_bytes) = checkpoint_encode(&checkpoint, self.signer.as_ref(), &at);
        self.journal.append(op, timestamp_ns, RecordKind::Checkpoint, &body[..size_bytes])?;
        self.checkpoint_ns_max = self.checkpoint_ns_max.max(start.elapsed().as_nanos() as u64);
        Ok(op)
    }

    /// Makes everything appended durable (one sync); returns op_durable.
    pub fn commit(&mut self) -> Result<u64, NodeError> {
        let op_durable = self.journal.commit()?;
        self.commits += 1;
        assert_eq!(op_durable, self.journal.op_appended());
        if let Some(mark) = &mut self.durable_mark {
            mark.publish(Position { op: op_durable, checksum: self.journal.checksum_last() })?;
        }
        Ok(op_durable)
    }
}
