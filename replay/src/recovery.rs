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
//! 5. Replay the tail, verifying every checkpoint's state hash; the checkpoint at the
//!    snapshot's op must hold the snapshot's state. With a verify key, every signed checkpoint's
//!    signature is verified, and with `signatures_required` the journal's end must be covered
//!    (`trust.rs`): a rewritten journal stops start-up, naming the op.

use crate::checkpoint::config_digest;
use crate::data_dir::DataDir;
use crate::error::ReplayError;
use crate::replay::{ReadPlan, ReplayStats, Replayer};
use crate::trust::{JournalChecks, Verification};
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
pub fn recover<S>(
    storage: S,
    data_dir: &DataDir,
    segment_size_bytes: u64,
    verification: &Verification,
) -> Result<Recovered<S>, ReplayError>
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
    replay_tail(storage, data_dir, verification, &mut recovered)?;
    Ok(recovered)
}

/// Replays the journal after the snapshot (or from genesis), checking the join.
fn replay_tail<S>(
    storage: S,
    data_dir: &DataDir,
    verification: &Verification,
    recovered: &mut Recovered<S>,
) -> Result<(), ReplayError>
where
    S: Storage + Send + 'static,
    S::File: Send,
{
    let op_last = recovered.journal_recovered.op_last;
    let start = recovered.snapshot.as_ref().map(|(header, _)| (header.op, header.journal_checksum));
    let target = ReplayTarget { op_durable: Some(op_last), until_op: None, verification: *verification };
    replay_onto(storage, data_dir, &mut recovered.ledger, start, target, &mut recovered.replay)?;
    assert!(op_last == 0 || recovered.replay.op_last == op_last || start.is_some_and(|(op, _)| op == op_last));
    Ok(())
}

/// How far a replay goes, and what it checks on the way.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayTarget {
    /// Ops known durable: the journal ending before this is corruption (recovery knows it).
    pub op_durable: Option<u64>,
    /// Stop after this op (a drill of a past state).
    pub until_op: Option<u64>,
    /// Signatures and an external chain head (see `trust.rs`).
    pub verification: Verification,
}

/// Replays the journal onto `ledger`, which holds the state at `start`'s op (a snapshot's op
/// and the journal checksum it recorded), or the empty state when `start` is None. The record
/// at the snapshot's op must carry the recorded checksum and be a checkpoint of the
/// snapshot's state: the tail continues that history. Every record read is checked as
/// `target.verification` asks; to reach a chain head older than the snapshot, reading starts
/// there (those records are checked, not applied).
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
        let checks = JournalChecks::new(target.verification, config_digest(ledger.config()));
        stats.trust = checks.end_check(0)?;
        return Ok(());
    }
    let op_apply_first = start.map_or(1, |(op, _)| op);
    assert!(op_apply_first >= 1);
    let op_read_first = target.verification.expect_head.map_or(op_apply_first, |head| head.op.min(op_apply_first));
    let reader = match target.op_durable {
        Some(op_durable) => Reader::open_until(storage, &data_dir.root, op_read_first, op_durable)?,
        None => Reader::open(storage, &data_dir.root, op_read_first)?,
    };
    let plan = ReadPlan {
        op_apply_first,
        until_op: target.until_op,
        join: start,
        checks: JournalChecks::new(target.verification, config_digest(ledger.config())),
    };
    let mut replayer = Replayer::new(ledger.config());
    replayer.replay(ledger, reader, plan, stats)
}
