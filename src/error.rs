//! The node's operating errors: what the wiring itself can fail at (a socket, a thread), plus
//! everything reading the data directory back can fail at (`ReplayError`). Each says what
//! failed and, where there is one, what the operator can do. Business rejections are never
//! here: they are result codes.

use std::path::PathBuf;
use walletd_core::ConfigError;
use walletd_journal::JournalError;
use walletd_replay::ReplayError;
use walletd_snapshot::SnapshotError;

#[derive(Debug)]
pub enum NodeError {
    Io { path: PathBuf, source: std::io::Error },
    Replay(ReplayError),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Io { path, source } => write!(f, "I/O on {}: {source}", path.display()),
            NodeError::Replay(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<ReplayError> for NodeError {
    fn from(error: ReplayError) -> NodeError {
        NodeError::Replay(error)
    }
}

impl From<JournalError> for NodeError {
    fn from(error: JournalError) -> NodeError {
        NodeError::Replay(ReplayError::Journal(error))
    }
}

impl From<SnapshotError> for NodeError {
    fn from(error: SnapshotError) -> NodeError {
        NodeError::Replay(ReplayError::Snapshot(error))
    }
}

impl From<ConfigError> for NodeError {
    fn from(error: ConfigError) -> NodeError {
        NodeError::Replay(ReplayError::Config(error))
    }
}
