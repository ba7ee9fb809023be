//! walletd-cluster: walletd replicated on Raft (openraft 0.9), so that an op is durable on a
//! majority of nodes before its reply leaves, and any node can take over.
//!
//! The committed Raft log is the journal: every node applies each committed entry by appending
//! it to its own walletd journal and applying it to its ledger, so every node's journal holds
//! exactly the committed sequence, byte for byte, and `walletd replay` works on any of them.
//!
//! - `types` — what openraft is instantiated with (entries carry whole journal commands).
//! - `log_store` — the Raft log and vote on disk: checksummed records, fsync before an append
//!   or a vote is acknowledged, fail-stop on a failed write.
//! - `state_machine` — the journal and the ledger as the state machine, with the member's
//!   ledger snapshot replica (`walletd_replay::Snapshotter`) beside it.
//! - `snapshot` — snapshots as anchors in the journal, and the catch-up that installs one by
//!   fetching the journal records a member lacks from another member.
//! - `elections` — when this member may stand for election (not while behind the leader's
//!   commit or installing a snapshot: openraft 0.9 has no pre-vote).
//! - `network` — the members' RPCs over TCP, and the tools' requests (init, status).
//! - `node` — a node: recovery, Raft, the gateway backend that submits to the leader.
//! - `tool` — `walletd cluster init` and `status`.
//!
//! The crate depends on the engine's crates (core, journal, snapshot, replay, gateway);
//! nothing of the engine depends on it.

// openraft's traits return its own StorageError and RaftError, which are large; they are
// openraft's types, on paths that are not hot.
#![allow(clippy::result_large_err)]

pub mod elections;
pub mod error;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod snapshot;
pub mod state_machine;
pub mod tool;
pub mod types;

pub use error::ClusterError;
pub use network::{tool_request, PeerReply, PeerRequest, Status};
pub use node::{
    cluster_start, ClusterOptions, RaftTimeouts, Recovery, RunningCluster, APPEND_ENTRIES_MAX_DEFAULT,
    LOG_KEEP_ENTRIES_DEFAULT, SNAPSHOT_ENTRIES_DEFAULT,
};
pub use types::{Member, NodeId};
