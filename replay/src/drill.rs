//! The disaster-recovery drill and the journal tools an operator runs by hand: `drill`
//! rebuilds the state (from the newest snapshot or from genesis) and proves every checkpoint
//! on the way; `audit` walks the hash chain alone (both verify signed checkpoints and an
//! external chain head when given a key or a head); `truncate` is the explicit answer to
//! corruption. Each returns a report for the command line to print; none writes, except
//! `truncate`, which takes the data directory's lock.
//!
//! A drill uses recovery's rule for the end of the journal (a bad record followed by any valid
//! one is corruption, refused with segment, offset and op) and reads to the journal's end even
//! when it applies only up to `until_op`, so its report says how far it applied against how far
//! the journal reaches, and a green drill means the whole journal verified.

use crate::checkpoint::config_digest;
use crate::data_dir::DataDir;
use crate::durable::{durable_read, DurableMark, Position};
use crate::error::ReplayError;
use crate::recovery::{replay_onto, ReplayTarget};
use crate::replay::ReplayStats;
use crate::trust::{JournalChecks, TrustReport, Verification};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use walletd_core::Ledger;
use walletd_journal::{FileStorage, JournalEnd, Reader};
use walletd_snapshot::snapshot_load_newest;

#[derive(Clone, Debug, Default)]
pub struct DrillOptions {
    /// Ignore snapshots: replay the whole journal (archive/ included) from op 1.
    pub from_genesis: bool,
    /// Apply up to this op (the rest of the journal is still verified).
    pub until_op: Option<u64>,
    /// Signatures and an external chain head to check (`trust.rs`).
    pub verification: Verification,
}

#[derive(Clone, Debug, Serialize)]
pub struct LedgerReport {
    pub ledger: u32,
    pub debits_posted: String,
    pub credits_posted: String,
    pub debits_pending: String,
    pub credits_pending: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub mode: &'static str,
    /// The op the state was rebuilt to.
    pub ops: u64,
    /// The last valid op in the journal (≥ `ops`).
    pub journal_op_last: u64,
    /// A record cut short after the journal's last valid op (recovery zeroes it at the next
    /// start), as "segment at byte offset".
    pub torn_tail: Option<String>,
    pub snapshot_op: Option<u64>,
    pub records: u64,
    pub checkpoints_verified: u64,
    pub accounts: u64,
    pub transfers: u64,
    pub pending: u64,
    pub state_hash: String,
    pub snapshot_load_seconds: f64,
    pub seconds: f64,
    pub transfers_per_second: f64,
    pub ledgers: Vec<LedgerReport>,
    /// Snapshots that failed their checks and were passed over, with why.
    pub snapshots_skipped: Vec<String>,
    /// Signed checkpoints and the chain head.
    pub trust: TrustReport,
}

/// Rebuilds the state in `data_dir` and verifies it; read-only.
pub fn drill(data_dir: &DataDir, options: &DrillOptions) -> Result<DrillReport, ReplayError> {
    let config = data_dir.config_read()?;
    let load_start = Instant::now();
    let mut snapshots_skipped = Vec::new();
    let (mut ledger, start) = if options.from_genesis {
        (Ledger::new(config)?, None)
    } else {
        let (loaded, skipped) = snapshot_load_newest(&data_dir.snapshots())?;
        snapshots_skipped.extend(skipped.iter().map(|error| error.to_string()));
        match loaded {
            Some(loaded) if options.until_op.is_none_or(|until| loaded.header.op <= until) => {
                (loaded.ledger, Some((loaded.header.op, loaded.header.journal_checksum)))
            }
            _ => (Ledger::new(config)?, None),
        }
    };
    let snapshot_load_seconds = load_start.elapsed().as_secs_f64();
    let mut stats = ReplayStats::default();
    let target = ReplayTarget { op_durable: None, until_op: options.until_op, verification: options.verification };
    replay_onto(FileStorage::default(), data_dir, &mut ledger, start, target, &mut stats)?;
    ledger.verify();
    let end = stats.journal_end.clone().unwrap_or(JournalEnd { op_last: stats.op_last, torn_tail: None });
    assert!(end.op_last >= stats.op_last, "the journal reaches at least as far as the replay applied");
    if options.until_op.is_none() && end.op_last != stats.op_last {
        return Err(ReplayError::Discontinuity {
            reason: format!("replay stopped at op {} but the journal reaches op {}", stats.op_last, end.op_last),
        });
    }
    Ok(DrillReport {
        mode: if start.is_some() { "snapshot+journal" } else { "genesis" },
        ops: stats.op_last,
        journal_op_last: end.op_last,
        torn_tail: end.torn_tail.as_ref().map(|(segment, offset)| position_text(segment, *offset)),
        snapshot_op: start.map(|(op, _)| op),
        records: stats.records,
        checkpoints_verified: stats.checkpoints_verified,
        accounts: u64::from(ledger.accounts_count()),
        transfers: ledger.transfers_created(),
        pending: u64::from(ledger.pending_count()),
        state_hash: format!("{:032x}", ledger.state_hash()),
        snapshot_load_seconds,
        seconds: stats.seconds,
        transfers_per_second: stats.transfers_per_second(),
        ledgers: ledger
            .ledger_totals()
            .iter()
            .map(|t| LedgerReport {
                ledger: t.ledger,
                debits_posted: t.debits_posted.to_string(),
                credits_posted: t.credits_posted.to_string(),
                debits_pending: t.debits_pending.to_string(),
                credits_pending: t.credits_pending.to_string(),
            })
            .collect(),
        snapshots_skipped,
        trust: stats.trust,
    })
}

fn position_text(segment: &Path, offset: u64) -> String {
    format!("{} at byte offset {offset}", segment.display())
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub mode: &'static str,
    /// The last valid op (the chain was verified from op 1 to here).
    pub ops: u64,
    pub records: u64,
    pub bytes: u64,
    pub torn_tail: Option<String>,
    pub seconds: f64,
    pub records_per_second: f64,
    /// Signed checkpoints and the chain head.
    pub trust: TrustReport,
}

/// Walks the whole journal (archive/ and live) verifying every checksum and the hash chain,
/// with recovery's rule for its end, and every signature and the chain head as
/// `verification` asks (no state is rebuilt, so state hashes are the drill's part).
pub fn audit(data_dir: &DataDir, verification: &Verification) -> Result<AuditReport, ReplayError> {
    let start = Instant::now();
    // Signatures are bound to ledger.conf; without a key the audit needs nothing but the journal.
    let digest = match verification.verify_key {
        Some(_) => config_digest(&data_dir.config_read()?),
        None => 0,
    };
    let mut checks = JournalChecks::new(*verification, digest);
    let mut reader = Reader::open(FileStorage::default(), &data_dir.root, 1)?;
    let (mut records, mut bytes, mut op) = (0u64, 0u64, 0u64);
    while let Some(record) = reader.next_record()? {
        checks.record_check(&record)?;
        records += 1;
        bytes += record.body.len() as u64 + 64;
        op = record.op;
    }
    let end = reader.end().cloned().unwrap_or(JournalEnd { op_last: op, torn_tail: None });
    assert_eq!(end.op_last, op, "the reader ends after the last record it returned");
    let trust = checks.end_check(end.op_last)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(AuditReport {
        mode: "audit",
        ops: op,
        records,
        bytes,
        torn_tail: end.torn_tail.as_ref().map(|(segment, offset)| position_text(segment, *offset)),
        seconds,
        records_per_second: records as f64 / seconds.max(1e-9),
        trust,
    })
}

/// What `truncate` did.
#[derive(Clone, Debug)]
pub struct TruncateReport {
    pub truncated: walletd_journal::Truncated,
    /// The journal's last op after the cut.
    pub op_last: u64,
    /// Snapshots past the new end, moved to `snapshots/quarantine/`: (op, new path).
    pub snapshots_quarantined: Vec<(u64, PathBuf)>,
}

/// Cuts the journal at a corrupt record (`walletd journal truncate SEGMENT OFFSET`), moving
/// what follows to `journal/quarantine/`, then sets aside the snapshots past the new end,
/// which describe ops the journal no longer holds, and moves the durable mark back to the new
/// end. Takes the directory's lock.
pub fn truncate(data_dir: &DataDir, segment: &Path, offset: u64) -> Result<TruncateReport, ReplayError> {
    let _lock = data_dir.lock()?;
    let truncated = walletd_journal::truncate_at(&data_dir.root, segment, offset)?;
    // Opening the journal finds its new end (from the live segments; history is not read).
    let (journal, recovered) =
        walletd_journal::Journal::open_files(walletd_journal::JournalConfig::new(&data_dir.root))?;
    drop(journal);
    let op_last = recovered.op_last;
    // Followers must not read past the new end: the mark goes back with it, which a follower
    // that had read further reports as a rewritten journal.
    if durable_read(&data_dir.root)?.is_some() {
        DurableMark::open(&data_dir.root, Position { op: op_last, checksum: recovered.checksum_last })?;
    }
    let snapshots = data_dir.snapshots();
    let mut snapshots_quarantined = Vec::new();
    for (op, path) in walletd_snapshot::snapshots_list(&snapshots)? {
        if op > op_last {
            snapshots_quarantined.push((op, walletd_snapshot::snapshot_quarantine(&snapshots, &path)?));
        }
    }
    Ok(TruncateReport { truncated, op_last, snapshots_quarantined })
}
