//! The types openraft is instantiated with: what a Raft log entry carries (`Proposal`), what
//! applying it answers (`Applied`), and what a member is (`Member`: the address its peers reach
//! it on and the address its clients do, which a follower names in a `not_leader` reply).
//!
//! A command's bytes (up to about 1 MiB) are a `Bytes`: the gateway's request buffer becomes
//! the proposal, the Raft log keeps the entry in its cache of recent entries, and each reader
//! (apply, one replication stream per follower) clones a pointer, never the bytes. Encoded,
//! they are a serde byte string exactly as before (bincode: a u64 length, then the bytes), so
//! the Raft log on disk is unchanged; `entry_encode_split` encodes an entry without its
//! command's bytes, which the writers then write from where they are.

use bytes::Bytes;
use openraft::EntryPayload;
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
    Command { timestamp_ns: u64, command: Bytes },
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

/// Encodes `entry` (bincode, as `bincode::serialize` would) into `head`, except for a
/// command's bytes, which are returned: `head` then the returned bytes are the entry's
/// encoding. A command is the last field of the entry, so its bytes are its encoding's tail
/// (after their u64 length).
pub fn entry_encode_split<'entry>(entry: &'entry Entry, head: &mut Vec<u8>) -> Option<&'entry Bytes> {
    let EntryPayload::Normal(Proposal::Command { timestamp_ns, command }) = &entry.payload else {
        bincode::serialize_into(&mut *head, entry).expect("a Raft entry encodes");
        return None;
    };
    let hollow = Entry {
        log_id: entry.log_id,
        payload: EntryPayload::Normal(Proposal::Command { timestamp_ns: *timestamp_ns, command: Bytes::new() }),
    };
    let start = head.len();
    bincode::serialize_into(&mut *head, &hollow).expect("a Raft entry encodes");
    assert!(head.len() >= start + 8, "an entry encodes to more than its command's length");
    let length_at = head.len() - 8;
    assert_eq!(head[length_at..], [0u8; 8], "an empty command encodes as a zero length, last");
    head[length_at..].copy_from_slice(&(command.len() as u64).to_le_bytes());
    Some(command)
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(3, 2), index), payload }
    }

    #[test]
    fn an_entry_split_from_its_command_encodes_as_the_whole_entry() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut entries = vec![entry(0, EntryPayload::Blank), entry(1, EntryPayload::Normal(Proposal::Checkpoint))];
        for (index, size) in [0usize, 1, 7, 16, 4096, 100_003].into_iter().enumerate() {
            let command: Vec<u8> = (0..size)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let proposal = Proposal::Command { timestamp_ns: seed, command: Bytes::from(command) };
            entries.push(entry(2 + index as u64, EntryPayload::Normal(proposal)));
        }
        for entry in &entries {
            let whole = bincode::serialize(entry).expect("encodes");
            let mut head = vec![0xaa; 3]; // appends after what the buffer holds
            let tail = entry_encode_split(entry, &mut head);
            let mut split = head[3..].to_vec();
            split.extend_from_slice(tail.map_or(&[][..], |tail| &tail[..]));
            assert_eq!(split, whole, "entry {}", entry.log_id.index);
            let decoded: Entry = bincode::deserialize(&whole).expect("decodes");
            assert_eq!(decoded.payload, entry.payload);
        }
    }
}
