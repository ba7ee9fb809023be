//! `ClusterError`: why a cluster node could not start, or a cluster tool could not finish.

use crate::log_store::LogStoreError;
use walletd_replay::ReplayError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("Raft could not start: {0}")]
    Raft(String),
}
