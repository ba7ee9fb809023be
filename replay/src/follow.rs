//! The follower: the one seam every platform part consumes (the Kafka exporter, the PostgreSQL
//! projection, replication). For each durable op it yields the command **and its outcome**:
//! the batch as the ledger consumed it, the per-event result codes, and the change-data feed
//! (one `Change` per successful event and per expiry, with the after-images of the accounts it
//! touched as of that change). The journal holds only commands; the outcomes are recomputed
//! here by a replica ledger, and every checkpoint's state hash is verified on the way, which
//! is the proof that they are the outcomes the live node computed.
//!
//! It is read-only on a live data directory: it takes no lock, writes nothing, and reads no
//! further than the durable mark the node publishes (`durable.rs`), so it never yields an op
//! that a power loss could take back. It follows the journal as it grows, into new segments
//! and into `journal/archive/` when the node archives under it.
//!
//! It resumes from any position: `Follower::open(dir, Some(position))` yields the op after
//! `position`, first checking that the journal's record at `position.op` has
//! `position.checksum`, so a consumer that stored its position with its output (in the same
//! transaction or message) resumes exactly, and one pointed at another history is refused.
//! Starting state: the newest snapshot at or before the position, then the journal up to it.

use crate::checkpoint::Checkpoint;
use crate::data_dir::DataDir;
use crate::durable::{durable_read, Position};
use crate::error::ReplayError;
use crate::replay::{command_apply, Applied, Replayer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use walletd_core::{Batch, CommandScratch, Ledger, Output, TraceIds};
use walletd_journal::{FileStorage, Reader, RecordKind};
use walletd_snapshot::{snapshot_load, snapshots_list};

#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    /// How long `wait` sleeps between looks at the durable mark when caught up.
    pub poll_interval: Duration,
}

impl Default for FollowOptions {
    fn default() -> FollowOptions {
        FollowOptions { poll_interval: Duration::from_millis(5) }
    }
}

/// What one op was.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// A command batch, as the ledger consumed it, and what it did: `output.results` (the
    /// failed events' codes; an event not listed succeeded) and `output.changes`; and the
    /// trace id each event's request carried (`trace_ids.get(i)`, 0 for none: every event of
    /// an untraced command, as every command journaled before traces existed).
    Command { batch: Batch<'a>, output: &'a Output, trace_ids: TraceIds<'a> },
    /// A checkpoint, whose state hash the follower's ledger has just matched.
    Checkpoint(Checkpoint),
}

/// One durable op.
#[derive(Clone, Copy, Debug)]
pub struct Op<'a> {
    pub op: u64,
    /// The ledger timestamp of the batch (event `i` has `timestamp_ns + i`).
    pub timestamp_ns: u64,
    /// The chain checksum of the op's record: the journal's head once this op is in.
    pub checksum: u128,
    pub outcome: Outcome<'a>,
}

impl Op<'_> {
    /// The position after this op, which a consumer stores with what it made of it.
    pub fn position(&self) -> Position {
        Position { op: self.op, checksum: self.checksum }
    }
}

/// Where the follower may read to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// The node's published mark (`DIR/op_durable`).
    Mark,
    /// No mark was ever published (a directory no node has run on since marks exist): the
    /// journal's valid end, by recovery's rule, is all there is.
    JournalEnd,
}

pub struct Follower {
    root: PathBuf,
    options: FollowOptions,
    ledger: Ledger,
    replayer: Replayer,
    scratch: CommandScratch,
    output: Output,
    /// Opened once there is an op to read.
    reader: Option<Reader<FileStorage>>,
    /// The last op yielded, or the start.
    position: Position,
    /// Ops up to here may be read.
    op_durable: u64,
    durability: Durability,
}

impl Follower {
    /// A follower of the data directory `dir` whose first op is the one after `after` (op 1
    /// when None). Refuses a position past the durable journal or naming another history.
    pub fn open(dir: &Path, after: Option<Position>, options: FollowOptions) -> Result<Follower, ReplayError> {
        let data_dir = DataDir::new(dir);
        let config = data_dir.config_read()?;
        let (durability, op_durable) = match durable_read(dir)? {
            Some(mark) => (Durability::Mark, mark.op),
            None => (Durability::JournalEnd, u64::MAX),
        };
        let target = after.unwrap_or_default();
        if target.op > op_durable {
            return Err(ReplayError::Discontinuity {
                reason: format!(
                    "the follower's position is op {} but the journal is durable only to op {op_durable}: this is \
                     not the journal the position was taken from",
                    target.op
                ),
            });
        }
        let (ledger, start) = start_state(&data_dir, target.op, config)?;
        let mut follower = Follower {
            root: dir.to_path_buf(),
            options,
            replayer: Replayer::new(ledger.config()),
            scratch: CommandScratch::new(ledger.config().batch_events_max),
            output: Output::with_changes(ledger.config()),
            ledger,
            reader: None,
            position: start,
            op_durable,
            durability,
        };
        follower.catch_up(start, target)?;
        assert_eq!(follower.position, target);
        Ok(follower)
    }

    /// Replays silently from the starting state to `target`, checking the join with the
    /// snapshot and the target's checksum.
    fn catch_up(&mut self, start: Position, target: Position) -> Result<(), ReplayError> {
        if start.op > 0 {
            self.reader_open(start.op)?;
            let reader = self.reader.as_mut().expect("just opened");
            let record = reader.next_record()?.ok_or_else(|| ReplayError::Discontinuity {
                reason: format!("the journal no longer holds op {}, where the follower starts", start.op),
            })?;
            assert_eq!(record.op, start.op);
            if record.checksum != start.checksum {
                return Err(ReplayError::Discontinuity {
                    reason: format!(
                        "the journal record at op {} has checksum {:032x}, the snapshot recorded {:032x}",
                        record.op, record.checksum, start.checksum
                    ),
                });
            }
        }
        while self.position.op < target.op {
            if self.reader.is_none() {
                self.reader_open(self.position.op + 1)?;
            }
            let reader = self.reader.as_mut().expect("opened above");
            let record = reader.next_record()?.ok_or_else(|| ReplayError::Discontinuity {
                reason: format!("the journal ends at op {} before the follower's position", self.position.op),
            })?;
            self.replayer.record_apply(&mut self.ledger, &record)?;
            self.position = Position { op: record.op, checksum: record.checksum };
        }
        if self.position != target {
            return Err(ReplayError::Discontinuity {
                reason: format!(
                    "the journal record at op {} has checksum {:032x}, the follower's position says {:032x}: \
                     the position was taken from another history",
                    target.op, self.position.checksum, target.checksum
                ),
            });
        }
        Ok(())
    }

    fn reader_open(&mut self, op_first: u64) -> Result<(), ReplayError> {
        assert!(self.reader.is_none());
        let storage = FileStorage::default();
        self.reader = Some(match self.durability {
            Durability::Mark => Reader::open_until(storage, &self.root, op_first, self.op_durable)?,
            Durability::JournalEnd => Reader::open(storage, &self.root, op_first)?,
        });
        Ok(())
    }

    /// The next durable op with its outcome, or None when the follower has caught up with the
    /// durable journal (call again later, or `wait`).
    pub fn next_op(&mut self) -> Result<Option<Op<'_>>, ReplayError> {
        if self.position.op >= self.op_durable && !self.durable_refresh()? {
            return Ok(None);
        }
        if self.reader.is_none() {
            self.reader_open(self.position.op + 1)?;
        }
        let Follower { reader, ledger, replayer, scratch, output, position, op_durable, durability, .. } = self;
        let reader = reader.as_mut().expect("opened above");
        let Some(record) = reader.next_record()? else {
            assert_eq!(*durability, Durability::JournalEnd, "a durable op is never missing without an error");
            *op_durable = position.op;
            return Ok(None);
        };
        assert_eq!(record.op, position.op + 1, "a follower yields every op in order");
        let (op, timestamp_ns, checksum) = (record.op, record.timestamp_ns, record.checksum);
        let outcome = match record.kind {
            RecordKind::CommandBatch => {
                let batch = command_apply(scratch, ledger, &record, output)?;
                // command_apply decoded the same bytes: their header is sound.
                let trace_ids =
                    TraceIds::of_command(record.body).map_err(|error| ReplayError::bad_record(op, error))?;
                assert_eq!(trace_ids.event_count() as usize, batch.len(), "a trace id per event");
                Outcome::Command { batch, output: &*output, trace_ids }
            }
            RecordKind::Checkpoint => match replayer.record_apply(ledger, &record)? {
                Applied::Checkpoint(checkpoint) => Outcome::Checkpoint(checkpoint),
                Applied::Command { .. } => unreachable!("a checkpoint record applies as a checkpoint"),
            },
        };
        *position = Position { op, checksum };
        Ok(Some(Op { op, timestamp_ns, checksum, outcome }))
    }

    /// Waits until an op is ready for `next_op`, or `timeout` passes; true if one is ready.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, ReplayError> {
        let start = Instant::now();
        loop {
            if self.position.op < self.op_durable || self.durable_refresh()? {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(self.options.poll_interval.min(timeout.saturating_sub(start.elapsed())));
        }
    }

    /// Reads the durable mark again; true if it moved past the follower.
    fn durable_refresh(&mut self) -> Result<bool, ReplayError> {
        if self.durability == Durability::JournalEnd {
            return Ok(self.op_durable > self.position.op);
        }
        let mark = durable_read(&self.root)?.ok_or_else(|| ReplayError::DataDir {
            path: self.root.clone(),
            reason: "the durable mark (op_durable) disappeared while following".into(),
        })?;
        if mark.op < self.op_durable {
            return Err(ReplayError::Discontinuity {
                reason: format!(
                    "the durable mark went back from op {} to op {}: the journal was truncated or replaced under \
                     the follower",
                    self.op_durable, mark.op
                ),
            });
        }
        if mark.op > self.op_durable {
            self.op_durable = mark.op;
            if let Some(reader) = &mut self.reader {
                reader.follow(mark.op);
            }
        }
        Ok(self.op_durable > self.position.op)
    }

    /// The last op yielded (or where the follower started) and its checksum.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The durable op as last read (`u64::MAX` until the end is found, for a directory with
    /// no durable mark).
    pub fn op_durable(&self) -> u64 {
        self.op_durable
    }

    /// The follower's ledger: the state after `position().op`.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

/// The newest snapshot at or before `op` that loads (a snapshot the node removes or damages
/// meanwhile is passed over), else the empty ledger; and the position it stands at.
fn start_state(data_dir: &DataDir, op: u64, config: walletd_core::Config) -> Result<(Ledger, Position), ReplayError> {
    let snapshots = data_dir.snapshots();
    let listed = if snapshots.exists() { snapshots_list(&snapshots)? } else { Vec::new() };
    for (snapshot_op, path) in listed.iter().rev() {
        if *snapshot_op > op {
            continue;
        }
        match snapshot_load(path) {
            Ok(loaded) if loaded.ledger.config() == &config => {
                let position = Position { op: loaded.header.op, checksum: loaded.header.journal_checksum };
                return Ok((loaded.ledger, position));
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "a snapshot with another config than ledger.conf: passed over")
            }
            Err(error) => tracing::warn!(%error, "a snapshot that does not load: passed over"),
        }
    }
    Ok((Ledger::new(config)?, Position::default()))
}
