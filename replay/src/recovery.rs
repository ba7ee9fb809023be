//! Start-up: the newest valid snapshot, plus the journal's tail replayed on top, gives the
//! state an uninterrupted run would have. Step by step:
//!
//! 1. Read the config the directory was created with (`ledger.conf`).
//! 2. Remove snapshot temporaries a crash left; load the newest snapshot that passes its
//!    checksum and state hash. A damaged one is reported and moved to `snapshots/quarantine/`
//!    (so it is never counted among the kept ones again), and the next older one is tried (its
//!    tail is longer, that is all).
//! 3. Open the journal: a torn tail is truncated and reported; corruption stops start-up with
//!    the segment, offset and op, for the operator (`walletd journal truncate`).
//! 4. Check that the journal reaches the snapshot's op and that the record at that op has the
//!    checksum the snapshot recorded: the tail continues exactly the history the snapshot saw.
//! 5. Replay the tail, verifying every checkpoint.

use crate::data_dir::DataDir;
use crate::error::ReplayError;
use crate::replay::{ReplayStats, Replayer};
use std::path::PathBuf;
use walletd_core::{Config, Ledger};
use walletd_journal::{Journal, Reader, Storage};
use walletd_snapshot::{
    snapshot_load_newest, snapshot_quarantine, snapshot_temporaries_remove, Loaded, SnapshotError, SnapshotHeader,
};

/// A recovered node's state, journal open for appending.
pub struct Recovered<S: Storage> {
    pub config: Config,
    pub ledger: Ledger,
    pub journal: Journal<S>,
    pub journal_recovered: walletd_journal::Recovered,
    /// The snapshot started from, if any.
    pub snapshot: Option<(SnapshotHeader, PathBuf)>,
    /// Newer snapshots that failed their checks, with why (now in `snapshots/quarantine/`).
    pub snapshots_skipped: Vec<SnapshotError>,
    /// Snapshot temporaries a crash left, removed.
    pub snapshot_temporaries_removed: Vec<PathBuf>,
    pub replay: ReplayStats,
}

impl<S: Storage> Recovered<S> {
    /// One line per thing recovery repaired or set aside (also logged as warnings).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for error in &self.snapshots_skipped {
            notes.push(format!("skipped and quarantined a damaged snapshot: {error}"));
        }
        for path in &self.snapshot_temporaries_removed {
            notes.push(format!("removed a snapshot temporary a crash left: {}", path.display()));
        }
        if let Some(torn) = &self.journal_recovered.torn_tail {
            notes.push(format!("truncated a torn journal tail: {torn:?}"));
        }
        for path in &self.journal_recovered.segments_regrown {
            notes.push(format!("regrew a journal segment cut short: {}", path.display()));
        }
        for path in &self.journal_recovered.temporaries_removed {
            notes.push(format!("removed a journal segment whose creation a crash interrupted: {}", path.display()));
        }
        for note in &notes {
            tracing::warn!("recovery: {note}");
        }
        notes
    }
}

/// Recovers the node in `data_dir` (which must exist; see `DataDir::open_or_create`).
pub fn recover<S>(storage: S, data_dir: &DataDir, segment_size_bytes: u64) -> Result<Recovered<S>, ReplayError>
where
    S: Storage + Send + 'static,
    S::File: Send,
{
    let config = data_dir.config_read()?;
    let snapshot_temporaries_removed = snapshot_temporaries_remove(&data_dir.snapshots())?;
    let (loaded, snapshots_skipped) = snapshot_load_newest(&data_dir.snapshots())?;
    for skipped in &snapshots_skipped {
        if let SnapshotError::Corrupt { path, .. } = skipped {
            snapshot_quarantine(&data_dir.snapshots(), path)?;
        }
    }
    let (journal, journal_recovered) = Journal::open(storage.clone(), data_dir.journal_config(segment_size_bytes))?;
    let (ledger, snapshot) = match loaded {
        Some(Loaded { ledger, header, path }) => {
            if ledger.config() != &config {
                return Err(ReplayError::Discontinuity {
                    reason: format!("snapshot {} was taken with another config than ledger.conf", path.display()),
                });
            }
            (ledger, Some((header, path)))
        }
        None => (Ledger::new(config)?, None),
    };
    let op_snapshot = snapshot.as_ref().map_or(0, |(header, _)| header.op);
    if journal_recovered.op_last < op_snapshot {
        return Err(ReplayError::Discontinuity {
            reason: format!(
                "the journal ends at op {} but the newest snapshot is at op {op_snapshot}: journal records the \
                 snapshot saw are missing",
                journal_recovered.op_last
            ),
        });
    }
    let mut recovered = Recovered {
        config,
        ledger,
        journal,
        journal_recovered,
        snapshot,
        snapshots_skipped,
        snapshot_temporaries_removed,
        replay: ReplayStats::default(),
    };
    replay_tail(storage, data_dir, &mut recovered)?;
    Ok(recovered)
}

/// Replays the journal after the snapshot (or from genesis), checking the join.
fn replay_tail<S>(storage: S, data_dir: &DataDir, recovered: &mut Recovered<S>) -> Result<(), ReplayError>
where
    S: Storage + Send + 'static,
    S::File: Send,
{
    let op_last = recovered.journal_recovered.op_last;
    let start = recovered.snapshot.as_ref().map(|(header, _)| (header.op, header.journal_checksum));
    let target = ReplayTarget { op_durable: Some(op_last), until_op: None };
    replay_onto(storage, data_dir, &mut recovered.ledger, start, target, &mut recovered.replay)?;
    assert!(op_last == 0 || recovered.replay.op_last == op_last || start.is_some_and(|(op, _)| op == op_last));
    Ok(())
}

/// How far a replay goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayTarget {
    /// Ops known durable: the journal ending before this is corruption (recovery knows it).
    pub op_durable: Option<u64>,
    /// Stop after this op (a drill of a past state).
    pub until_op: Option<u64>,
}

/// Replays the journal onto `ledger`, which holds the state at `start`'s op (a snapshot's op
/// and the journal checksum it recorded), or the empty state when `start` is None. The record
/// at the snapshot's op must carry the recorded checksum: the tail continues that history.
pub fn replay_onto<S>(
    storage: S,
    data_dir: &DataDir,
    ledger: &mut Ledger,
    start: Option<(u64, u128)>,
    target: ReplayTarget,
    stats: &mut ReplayStats,
) -> Result<(), ReplayError>
where
    S: Storage + Send + 'static,
    S::File: Send,
{
    if target.op_durable == Some(0) {
        return Ok(());
    }
    let (op_snapshot, checksum_snapshot) = start.unwrap_or((0, 0));
    let mut reader = match target.op_durable {
        Some(op_durable) => Reader::open_until(storage, &data_dir.root, op_snapshot.max(1), op_durable)?,
        None => Reader::open(storage, &data_dir.root, op_snapshot.max(1))?,
    };
    if op_snapshot > 0 {
        let Some(record) = reader.next_record()? else {
            return Err(ReplayError::Discontinuity { reason: journal_short_of(&reader, op_snapshot) });
        };
        assert_eq!(record.op, op_snapshot);
        if record.checksum != checksum_snapshot {
            return Err(ReplayError::Discontinuity {
                reason: format!(
                    "the journal record at op {op_snapshot} has checksum {:032x}, the snapshot recorded {checksum_snapshot:032x}",
                    record.checksum
                ),
            });
        }
        stats.op_last = op_snapshot;
    }
    let mut replayer = Replayer::new(ledger.config());
    replayer.replay(ledger, reader, target.until_op, stats)
}

/// Why a journal does not reach a snapshot's op, in the words an operator needs: where it
/// ends, and whether a torn record follows.
fn journal_short_of<S: Storage>(reader: &Reader<S>, op_snapshot: u64) -> String {
    let Some(end) = reader.end() else {
        return format!("the journal ends before the snapshot's op {op_snapshot}");
    };
    let torn = match &end.torn_tail {
        Some((segment, offset)) => {
            format!(", followed by a record cut short at byte offset {offset} of {}", segment.display())
        }
        None => String::new(),
    };
    format!(
        "the journal's last valid record is op {}{torn}, but the snapshot is at op {op_snapshot}: journal records \
         the snapshot saw are missing",
        end.op_last
    )
}
