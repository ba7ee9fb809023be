//! The node's operating errors: each says what failed and, where there is one, what the
//! operator can do. Business rejections are never here: they are result codes.

use std::path::PathBuf;
use walletd_core::{CommandError, ConfigError};
use walletd_journal::JournalError;
use walletd_snapshot::SnapshotError;

#[derive(Debug)]
pub enum NodeError {
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
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Io { path, source } => write!(f, "I/O on {}: {source}", path.display()),
            NodeError::Journal(error) => write!(f, "journal: {error}"),
            NodeError::Snapshot(error) => write!(f, "snapshot: {error}"),
            NodeError::Config(error) => write!(f, "{error}"),
            NodeError::DataDir { path, reason } => write!(f, "data directory {}: {reason}", path.display()),
            NodeError::BadRecord { op, reason } => write!(f, "journal record at op {op} cannot be replayed: {reason}"),
            NodeError::CheckpointMismatch { op, recorded, computed } => write!(
                f,
                "state hash mismatch at checkpoint op {op}: the journal recorded {recorded:032x}, replay computed \
                 {computed:032x}; this replay diverged from the run that wrote the journal"
            ),
            NodeError::Discontinuity { reason } => write!(f, "snapshot and journal do not join: {reason}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<JournalError> for NodeError {
    fn from(error: JournalError) -> NodeError {
        NodeError::Journal(error)
    }
}

impl From<SnapshotError> for NodeError {
    fn from(error: SnapshotError) -> NodeError {
        NodeError::Snapshot(error)
    }
}

impl From<ConfigError> for NodeError {
    fn from(error: ConfigError) -> NodeError {
        NodeError::Config(error)
    }
}

impl NodeError {
    pub(crate) fn bad_record(op: u64, error: CommandError) -> NodeError {
        NodeError::BadRecord { op, reason: error.to_string() }
    }
}
