//! The types openraft is instantiated with: what a Raft log entry carries (`Proposal`), what
//! applying it answers (`Applied`), and what a member is (`Member`: the address its peers reach
//! it on and the address its clients do, which a follower names in a `not_leader` reply).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

pub type NodeId = u64;

/// A member of the cluster, as its membership entry in the Raft log records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where the other members send Raft RPCs (`--raft-addr`).
    pub raft_addr: String,
    /// Where clients speak the binary protocol (`--addr`): a follower's `not_leader` reply
    /// names the leader's.
    pub client_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft {} client {}", self.raft_addr, self.client_addr)
    }
}

/// One Raft log entry's application data. Every entry becomes exactly one journal record, so a
/// node's journal op for Raft index `i` is `i + 1` (the first entry, the initial membership,
/// has index 0): the journal alone says how far a node has applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// One request's command exactly as the journal records it (the core's 16-byte command
    /// header and up to 8189 events), and the time the leader stamped it with. Apply uses
    /// `max(timestamp_ns, ledger.timestamp_next_min())`, a function of the log alone, so
    /// every node journals and applies the same timestamp.
    Command {
        timestamp_ns: u64,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// A checkpoint: every node journals its state hash here, and `walletd replay` checks it.
    Checkpoint,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Command { timestamp_ns, command } => {
                write!(f, "command of {} bytes at {timestamp_ns}", command.len())
            }
            Proposal::Checkpoint => f.write_str("checkpoint"),
        }
    }
}

/// What applying one entry answered: its journal op, and for a command the reply body the
/// engine made (per-event results in the protocol's encoding).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub op: u64,
    /// The timestamp the command was applied at (its event `i` at it + `i`); 0 for a
    /// checkpoint.
    pub timestamp_ns: u64,
    pub record_count: u32,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

openraft::declare_raft_types!(
    /// walletd's Raft: entries carry journal commands, members carry two addresses.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
