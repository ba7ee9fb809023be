//! The snapshot replica: a second ledger on its own thread, fed from the durable journal.
//! When it reaches a checkpoint record where a snapshot is due (`SnapshotWhen`), it writes a
//! snapshot at that exact op. The apply thread never serialises anything, so its snapshot stall is the time to append
//! one checkpoint record; the price is a second copy of the state in memory and the replay
//! work on another core. The replica also re-verifies every checkpoint as it goes, a
//! continuous check that the journal replays to what the live ledger computed. The thread runs
//! at a lower priority, so on a small machine it uses the time the pipeline leaves idle.
//!
//! The single node's sequencer decides where snapshots go (it flags the checkpoint); a cluster
//! member decides alone, at the first checkpoint a snapshot interval after its newest snapshot,
//! because its journal must stay byte for byte the other members' (see `SnapshotWhen`). Both
//! run this same replica, and both restart from what it wrote (`recover`).

use crate::checkpoint::CHECKPOINT_SNAPSHOT;
use crate::data_dir::DataDir;
use crate::error::ReplayError;
use crate::replay::{Applied, Replayer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use walletd_core::Ledger;
use walletd_journal::{Reader, Storage};
use walletd_snapshot::snapshot_save;

/// Which checkpoints the replica writes a snapshot at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotWhen {
    /// Those flagged `CHECKPOINT_SNAPSHOT`: the single node's sequencer asks for each.
    Asked,
    /// The first checkpoint at least `ops` ops after the newest snapshot (or after op 0), flag
    /// or not: a cluster member, whose checkpoints the leader proposes for every member alike
    /// (with flags 0, so that every journal is the same bytes), snapshots on its own interval.
    Every { ops: u64 },
}

impl SnapshotWhen {
    fn due(self, flags: u32, op: u64, op_snapshot: u64) -> bool {
        match self {
            SnapshotWhen::Asked => flags & CHECKPOINT_SNAPSHOT != 0,
            SnapshotWhen::Every { ops } => op >= op_snapshot.saturating_add(ops),
        }
    }
}

/// A second copy of `ledger`, through its image (as a snapshot would carry it), for the replica.
pub fn replica_of(ledger: &Ledger) -> Ledger {
    let mut image = Vec::new();
    ledger.image_write(&mut |bytes| image.extend_from_slice(bytes));
    Ledger::image_read(&image).expect("an image of a live ledger reads back")
}

/// One snapshot the replica wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotTaken {
    pub op: u64,
    pub size_bytes: u64,
    /// Time to serialise, write, fsync and rename it (on the replica's thread).
    pub seconds: f64,
}

struct Shared {
    op_durable: AtomicU64,
    op_snapshot: AtomicU64,
    op_replayed: AtomicU64,
    stop: AtomicBool,
    /// The replica stopped on an error (logged when it happened).
    failed: AtomicBool,
    taken: Mutex<Vec<SnapshotTaken>>,
}

pub struct Snapshotter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), ReplayError>>>,
}

impl Snapshotter {
    /// Starts the replica `replica`, whose state includes every op up to `op_replica`;
    /// `op_snapshot` is the newest snapshot already on disk (0: none), which a restart carries
    /// over so that the snapshot interval and the gauges go on from it, not from 0.
    pub fn start<S: Storage + Send + 'static>(
        replica: Ledger,
        op_replica: u64,
        op_snapshot: u64,
        storage: S,
        data_dir: DataDir,
        kept: usize,
        when: SnapshotWhen,
    ) -> Result<Snapshotter, ReplayError>
    where
        S::File: Send,
    {
        assert!(op_snapshot <= op_replica, "the replica starts at or after the newest snapshot");
        assert!(when != SnapshotWhen::Every { ops: 0 }, "a snapshot interval of at least one op");
        let shared = Arc::new(Shared {
            op_durable: AtomicU64::new(op_replica),
            op_snapshot: AtomicU64::new(op_snapshot),
            op_replayed: AtomicU64::new(op_replica),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            taken: Mutex::new(Vec::new()),
        });
        let reader = Reader::open_until(storage, &data_dir.root, op_replica + 1, op_replica)?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("snapshot".to_string())
            .spawn(move || {
                thread_priority_lower();
                let result = replica_run(replica, reader, data_dir, kept, when, &thread_shared);
                if let Err(error) = &result {
                    replica_failed(error, &thread_shared);
                }
                result
            })
            .map_err(|source| ReplayError::Io { path: "snapshot thread".into(), source })?;
        Ok(Snapshotter { shared, thread: Some(thread) })
    }

    /// Tells the replica that ops up to `op` are durable.
    pub fn durable(&self, op: u64) {
        self.shared.op_durable.fetch_max(op, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// The op of the newest snapshot: written by this replica, or else the one recovered at
    /// start (0 if none).
    pub fn op_snapshot(&self) -> u64 {
        self.shared.op_snapshot.load(Ordering::Acquire)
    }

    /// Whether the replica stopped on an error (no more snapshots until a restart).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The last op the replica has applied.
    pub fn op_replayed(&self) -> u64 {
        self.shared.op_replayed.load(Ordering::Acquire)
    }

    pub fn taken(&self) -> Vec<SnapshotTaken> {
        self.shared.taken.lock().expect("snapshot list lock").clone()
    }

    /// Catches up with every durable op, then stops; returns the replica's error if it had one.
    pub fn finish(mut self) -> Result<Vec<SnapshotTaken>, ReplayError> {
        self.shared.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("finish once");
        thread.thread().unpark();
        thread.join().expect("snapshot thread panicked")?;
        Ok(self.taken())
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Reports a replica failure when it happens. A checkpoint mismatch means replaying the
/// journal does not give the state the live ledger had: the node stops (fail-stop) rather
/// than go on from a state its journal cannot reproduce. Other failures (a snapshot that
/// cannot be written) stop snapshots only; the node serves on and the metric says so.
fn replica_failed(error: &ReplayError, shared: &Shared) {
    shared.failed.store(true, Ordering::Release);
    if let ReplayError::CheckpointMismatch { .. } = error {
        tracing::error!(%error, "the journal does not replay to the live state: stopping (fail-stop)");
        eprintln!("walletd: {error}; stopping (fail-stop)");
        std::process::exit(70);
    }
    tracing::error!(%error, "snapshot replica stopped: no more snapshots until a restart");
}

/// The replica only has to keep up by the next snapshot: on a small machine it should take
/// the cores the pipeline leaves idle, not compete with it. A nice value of 10 does that.
fn thread_priority_lower() {
    // SAFETY: gettid and setpriority touch no memory; they only change this thread's
    // scheduling priority. Failure (no permission) leaves the default priority.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if result != 0 {
        tracing::debug!("could not lower the snapshot replica's priority");
    }
}

fn replica_run<S: Storage>(
    mut replica: Ledger,
    mut reader: Reader<S>,
    data_dir: DataDir,
    kept: usize,
    when: SnapshotWhen,
    shared: &Shared,
) -> Result<(), ReplayError> {
    let mut replayer = Replayer::new(replica.config());
    let mut op_replayed = shared.op_replayed.load(Ordering::Acquire);
    loop {
        let op_durable = shared.op_durable.load(Ordering::Acquire);
        if op_durable > op_replayed {
            reader.follow(op_durable);
            while let Some(record) = reader.next_record()? {
                assert_eq!(record.op, op_replayed + 1, "the replica reads every op in order");
                let applied = replayer.record_apply(&mut replica, &record)?;
                if let Applied::Checkpoint(checkpoint) = applied {
                    if when.due(checkpoint.flags, record.op, shared.op_snapshot.load(Ordering::Acquire)) {
                        let start = Instant::now();
                        // The O(n) scan of every invariant, off the apply path (a broken
                        // invariant panics: fail-stop).
                        replica.verify();
                        let saved = snapshot_save(&data_dir.snapshots(), record.op, record.checksum, &replica, kept)?;
                        let taken = SnapshotTaken {
                            op: record.op,
                            size_bytes: saved.size_bytes,
                            seconds: start.elapsed().as_secs_f64(),
                        };
                        shared.taken.lock().expect("snapshot list lock").push(taken);
                        shared.op_snapshot.store(record.op, Ordering::Release);
                    }
                }
                op_replayed = record.op;
                shared.op_replayed.store(op_replayed, Ordering::Release);
            }
            assert_eq!(op_replayed, op_durable);
        } else if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        } else {
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}
