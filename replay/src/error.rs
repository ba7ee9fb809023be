//! The operating errors of reading a data directory back: recovery, replay and following. Each
//! says what failed and, where there is one, what the operator can do. Business rejections are
//! never here: they are result codes, journaled and replayed like anything else.

use std::path::PathBuf;
use walletd_core::{CommandError, ConfigError};
use walletd_journal::JournalError;
use walletd_snapshot::SnapshotError;

#[derive(Debug)]
pub enum ReplayError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Journal(JournalError),
    Snapshot(SnapshotError),
    Config(ConfigError),
    /// `ledger.conf` is missing, damaged, or disagrees with what was asked.
    DataDir {
        path: PathBuf,
        reason: String,
    },
    /// A journal record that is well-formed on disk but not a command the ledger could have
    /// consumed (a fault or a bug): replay stops there.
    BadRecord {
        op: u64,
        reason: String,
    },
    /// The state after replaying up to a checkpoint does not hash to what was recorded.
    CheckpointMismatch {
        op: u64,
        recorded: u128,
        computed: u128,
    },
    /// The snapshot and the journal do not join up.
    Discontinuity {
        reason: String,
    },
    /// A signed checkpoint whose signature does not verify under the verify key (or that was
    /// signed by another key, or for another config).
    CheckpointSignature {
        op: u64,
        reason: String,
    },
    /// Signatures are required (`--verify-key`) and the journal's end is not covered by one.
    SignaturesMissing {
        op: u64,
        reason: String,
    },
    /// The journal disagrees with an externally held chain head (`--expect-head`).
    ChainHead {
        op: u64,
        reason: String,
    },
    /// A key file or key text that cannot be used.
    Key {
        path: Option<PathBuf>,
        reason: String,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io { path, source } => write!(f, "I/O on {}: {source}", path.display()),
            ReplayError::Journal(error) => write!(f, "journal: {error}"),
            ReplayError::Snapshot(error) => write!(f, "snapshot: {error}"),
            ReplayError::Config(error) => write!(f, "{error}"),
            ReplayError::DataDir { path, reason } => write!(f, "data directory {}: {reason}", path.display()),
            ReplayError::BadRecord { op, reason } => {
                write!(f, "journal record at op {op} cannot be replayed: {reason}")
            }
            ReplayError::CheckpointMismatch { op, recorded, computed } => write!(
                f,
                "state hash mismatch at checkpoint op {op}: the journal recorded {recorded:032x}, replay computed \
                 {computed:032x}; this replay diverged from the run that wrote the journal"
            ),
            ReplayError::Discontinuity { reason } => write!(f, "snapshot and journal do not join: {reason}"),
            ReplayError::CheckpointSignature { op, reason } => write!(
                f,
                "checkpoint signature refused at op {op}: {reason}; the journal was rewritten (or is not this key's); \
                 restore it from a replica or backup"
            ),
            ReplayError::SignaturesMissing { op, reason } => {
                write!(f, "journal not covered by signatures (op {op}): {reason}")
            }
            ReplayError::ChainHead { op, reason } => write!(f, "chain head mismatch at op {op}: {reason}"),
            ReplayError::Key { path: Some(path), reason } => write!(f, "key {}: {reason}", path.display()),
            ReplayError::Key { path: None, reason } => write!(f, "key: {reason}"),
        }
    }
}

impl std::error::Error for ReplayError {}

impl From<JournalError> for ReplayError {
    fn from(error: JournalError) -> ReplayError {
        ReplayError::Journal(error)
    }
}

impl From<SnapshotError> for ReplayError {
    fn from(error: SnapshotError) -> ReplayError {
        ReplayError::Snapshot(error)
    }
}

impl From<ConfigError> for ReplayError {
    fn from(error: ConfigError) -> ReplayError {
        ReplayError::Config(error)
    }
}

impl ReplayError {
    pub fn bad_record(op: u64, error: CommandError) -> ReplayError {
        ReplayError::BadRecord { op, reason: error.to_string() }
    }
}
