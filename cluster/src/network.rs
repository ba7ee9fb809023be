//! The transport between members: openraft's RPCs over plain TCP, one request at a time per
//! connection, each as a length-prefixed frame of a bincode-encoded serde value:
//!
//! ```text
//! offset size field
//!      0    4 body_size_bytes (little-endian, at most FRAME_BODY_SIZE_MAX_BYTES)
//!      4    n body: a PeerRequest (to a member) or a PeerReply (back)
//! ```
//!
//! The same port takes `walletd cluster init` (the one-time initialisation of a new cluster)
//! and `walletd cluster status`, and serves the journal to a member installing a snapshot
//! (`JournalRead`: the one request answered with several frames, chunks of records and then an
//! empty one). A connection that fails is dropped and opened again on the next
//! RPC; openraft retries and backs off on its own. Members reach each other only on the
//! addresses their membership entry names.
//!
//! An AppendEntries carries up to 16 commands of about 1 MiB each, shared with the Raft log's
//! cache (`bytes::Bytes`). Its frame body is the request with the commands' bytes taken out
//! (`PeerRequest::AppendEntries`, which lists their sizes), then those bytes, in entry order:
//! the sender writes them from the entries with one vectored write, never copying them into
//! the frame; the receiver reads the body into one buffer and the commands become slices of
//! it, never copied out. The members of a cluster run one walletd version: this transport
//! carries no version of its own.

use crate::elections::Elections;
use crate::snapshot::{journal_frames_send, JournalRecord};
use crate::state_machine::StateMachine;
use crate::types::{Entry, Proposal};
use crate::types::{Member, NodeId, Raft, TypeConfig, Vote};
use bytes::{Bytes, BytesMut};
use openraft::error::{
    ClientWriteError, Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, OptionalSend, Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Cursor, IoSlice};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A frame body at most: `max_payload_entries` (32) entries of up to one full batch each.
pub const FRAME_BODY_SIZE_MAX_BYTES: u32 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An AppendEntries whose commands are empty here: their bytes follow this value in the
    /// frame, `command_sizes` long each, in the order of the entries (see the module doc).
    AppendEntries {
        rpc: AppendEntriesRequest<TypeConfig>,
        command_sizes: Vec<u32>,
    },
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot (an anchor in the journal, see `snapshot`), installed before the reply.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta<NodeId, Member>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The journal records `op_first..=op_last`, for a member installing a snapshot: answered
    /// with `JournalRecords` chunks, the last one empty.
    JournalRead {
        op_first: u64,
        op_last: u64,
    },
    /// `walletd cluster init`: the members of a new cluster.
    Init(BTreeMap<NodeId, Member>),
    /// `walletd cluster status`.
    Status,
    /// `walletd cluster add`: a new member, caught up as a learner, then made a voter.
    MemberAdd(NodeId, Member),
    /// `walletd cluster remove`: a voter taken out of the membership.
    MemberRemove(NodeId),
}

/// Why a membership change was not made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// Only the leader changes the membership; this is the leader when this member knows it.
    NotLeader(Option<(NodeId, Member)>),
    Refused(String),
}

/// What a member says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub node_id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub state: String,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub members: BTreeMap<NodeId, Member>,
    /// The member's ledger config (`config_hex`): equal on every member.
    pub ledger_config: String,
    /// How it signs checkpoints (`checkpoint_signing_describe`): equal on every member.
    pub checkpoint_signing: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// A chunk of journal records (empty: the end), or why the member cannot serve them.
    JournalRecords(Result<Vec<JournalRecord>, String>),
    Init(Result<(), String>),
    Status(Status),
    /// The voters once the change is committed.
    Membership(Result<BTreeMap<NodeId, Member>, MembershipRefusal>),
}

/// Takes the commands' bytes out of `entries` (leaving them empty): the tail of an
/// AppendEntries frame, and the sizes its request lists.
fn commands_take(entries: &mut [Entry]) -> (Vec<Bytes>, Vec<u32>) {
    let mut commands = Vec::new();
    let mut sizes = Vec::new();
    for entry in entries {
        if let EntryPayload::Normal(Proposal::Command { command, .. }) = &mut entry.payload {
            sizes.push(u32::try_from(command.len()).expect("a command under 4 GiB"));
            commands.push(std::mem::take(command));
        }
    }
    (commands, sizes)
}

/// Puts the commands back into `entries`: slices of `tail`, `sizes` long each, in order.
fn commands_restore(entries: &mut [Entry], sizes: &[u32], tail: &Bytes) -> std::io::Result<()> {
    let mut sizes = sizes.iter();
    let mut at = 0usize;
    for entry in entries {
        if let EntryPayload::Normal(Proposal::Command { command, .. }) = &mut entry.payload {
            assert!(command.is_empty(), "a command travels in the frame's tail");
            let Some(size) = sizes.next() else {
                return Err(std::io::Error::other("an AppendEntries lists fewer command sizes than commands"));
            };
            let end = at + *size as usize;
            if end > tail.len() {
                return Err(std::io::Error::other("an AppendEntries' commands run past the end of its frame"));
            }
            *command = tail.slice(at..end);
            at = end;
        }
    }
    if sizes.next().is_some() || at != tail.len() {
        return Err(std::io::Error::other("an AppendEntries' frame holds bytes that are no command of it"));
    }
    Ok(())
}

/// Reads one frame's body into `buffer` (reused once every slice of the last body is
/// dropped), without zeroing it first.
async fn frame_receive(stream: &mut TcpStream, buffer: &mut BytesMut) -> std::io::Result<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await?;
    let size = u32::from_le_bytes(size);
    if size > FRAME_BODY_SIZE_MAX_BYTES {
        return Err(std::io::Error::other(format!("a peer frame says {size} bytes: over the limit")));
    }
    let size = size as usize;
    buffer.clear();
    buffer.reserve(size);
    let mut body = (&mut *stream).take(size as u64);
    while buffer.len() < size {
        if body.read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    assert_eq!(buffer.len(), size, "a frame read stops at its end");
    Ok(buffer.split().freeze())
}

/// Decodes a request's frame body: the commands of an AppendEntries become slices of it.
fn peer_request_decode(body: &Bytes) -> std::io::Result<PeerRequest> {
    let mut reader: &[u8] = body;
    let mut request: PeerRequest = bincode::deserialize_from(&mut reader).map_err(std::io::Error::other)?;
    let tail = body.slice(body.len() - reader.len()..);
    match &mut request {
        PeerRequest::AppendEntries { rpc, command_sizes } => commands_restore(&mut rpc.entries, command_sizes, &tail)?,
        _ if !tail.is_empty() => return Err(std::io::Error::other("a peer request with bytes after its end")),
        _ => {}
    }
    Ok(request)
}

/// Encodes the start of a frame into `head`: the body's size (`value`'s encoding and then
/// `tail`), then `value`.
fn frame_head_encode<T: Serialize>(value: &T, tail: &[Bytes], head: &mut Vec<u8>) -> std::io::Result<()> {
    head.clear();
    head.extend_from_slice(&[0u8; 4]);
    bincode::serialize_into(&mut *head, value).map_err(std::io::Error::other)?;
    let size = head.len() - 4 + tail.iter().map(Bytes::len).sum::<usize>();
    let size = u32::try_from(size).ok().filter(|size| *size <= FRAME_BODY_SIZE_MAX_BYTES);
    let Some(size) = size else {
        return Err(std::io::Error::other("a peer frame over the size limit"));
    };
    head[0..4].copy_from_slice(&size.to_le_bytes());
    Ok(())
}

/// Writes a frame: `value` (encoded into `head`, reused), then `tail` as it is, with vectored
/// writes.
async fn frame_write_vectored<T: Serialize>(
    stream: &mut TcpStream,
    value: &T,
    tail: &[Bytes],
    head: &mut Vec<u8>,
) -> std::io::Result<()> {
    frame_head_encode(value, tail, head)?;
    let parts = std::iter::once(&head[..]).chain(tail.iter().map(|bytes| &bytes[..]));
    let mut slices: Vec<IoSlice<'_>> = parts.filter(|part| !part.is_empty()).map(IoSlice::new).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

pub(crate) async fn frame_write<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    stream.write_all(&frame_encode(value)?).await
}

/// A whole frame (size and body) for `value`.
pub(crate) fn frame_encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let size = bincode::serialized_size(value).map_err(std::io::Error::other)?;
    let size = u32::try_from(size).ok().filter(|size| *size <= FRAME_BODY_SIZE_MAX_BYTES);
    let Some(size) = size else {
        return Err(std::io::Error::other("a peer frame over the size limit"));
    };
    let mut frame = Vec::with_capacity(4 + size as usize);
    frame.extend_from_slice(&size.to_le_bytes());
    bincode::serialize_into(&mut frame, value).map_err(std::io::Error::other)?;
    Ok(frame)
}

pub(crate) async fn frame_read<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await?;
    let size = u32::from_le_bytes(size);
    if size > FRAME_BODY_SIZE_MAX_BYTES {
        return Err(std::io::Error::other(format!("a peer frame says {size} bytes: over the limit")));
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    bincode::deserialize(&body).map_err(std::io::Error::other)
}

/// What the RPC server answers with: this member's Raft, id, ledger config, and its journal
/// (the data directory and the state machine that says how far it is durable).
#[derive(Clone)]
pub struct Local {
    pub raft: Raft,
    pub node_id: NodeId,
    pub config: walletd_core::Config,
    /// How this member signs checkpoints (`checkpoint_signing_describe`).
    pub checkpoint_signing: String,
    pub data_root: PathBuf,
    pub machine: StateMachine,
    /// Told after each AppendEntries whether this member's log is behind the leader's commit.
    pub elections: Arc<Elections>,
}

/// Serves the members' RPCs (and init, status, membership changes, journal reads) on
/// `listener` until the runtime stops. `local.config` is this member's ledger config: every
/// member must have the same.
pub fn peer_serve(listener: TcpListener, local: Local) {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(peer_connection(stream, local.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "raft accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

async fn peer_connection(mut stream: TcpStream, local: Local) {
    let raft = &local.raft;
    let mut buffer = BytesMut::new();
    loop {
        let request = frame_receive(&mut stream, &mut buffer).await;
        let request = request.and_then(|body| peer_request_decode(&body));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%error, "raft connection ended");
                }
                return;
            }
        };
        let reply = match request {
            PeerRequest::AppendEntries { rpc, .. } => {
                let leader_commit = rpc.leader_commit.map(|log_id| log_id.index);
                let sent_last =
                    rpc.entries.last().map(|entry| entry.log_id.index).or(rpc.prev_log_id.map(|id| id.index));
                let result = raft.append_entries(rpc).await;
                // How far this member's log now reaches, as far as this RPC tells.
                let held_last = match &result {
                    Ok(AppendEntriesResponse::Success) => Some(sent_last),
                    Ok(AppendEntriesResponse::PartialSuccess(matched)) => Some(matched.map(|id| id.index)),
                    Ok(AppendEntriesResponse::Conflict) => Some(None),
                    Ok(AppendEntriesResponse::HigherVote(_)) | Err(_) => None, // not from our leader
                };
                if let (Some(held_last), Some(commit)) = (held_last, leader_commit) {
                    local.elections.behind_set(held_last.is_none_or(|last| last < commit));
                }
                PeerReply::AppendEntries(result)
            }
            PeerRequest::Vote(rpc) => PeerReply::Vote(raft.vote(rpc).await),
            PeerRequest::Snapshot { vote, meta, data } => {
                let snapshot = Snapshot { meta, snapshot: Box::new(Cursor::new(data)) };
                PeerReply::Snapshot(raft.install_full_snapshot(vote, snapshot).await)
            }
            PeerRequest::JournalRead { op_first, op_last } => {
                journal_send(&mut stream, &local, op_first, op_last).await;
                return;
            }
            PeerRequest::Init(members) => PeerReply::Init(init(&local, members).await),
            PeerRequest::Status => PeerReply::Status(status_of(raft, &local)),
            PeerRequest::MemberAdd(id, member) => PeerReply::Membership(member_add(&local, id, member).await),
            PeerRequest::MemberRemove(id) => PeerReply::Membership(member_remove(raft, id).await),
        };
        if frame_write(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// Sends the journal records `op_first..=op_last` in chunks, then an empty chunk; or why not.
async fn journal_send(stream: &mut TcpStream, local: &Local, op_first: u64, op_last: u64) {
    let op_durable = tokio::task::block_in_place(|| local.machine.machine().op_durable());
    if op_first == 0 || op_first > op_last || op_last > op_durable {
        let reason = format!(
            "node {} holds the journal to op {op_durable}: it cannot send ops {op_first}..={op_last}",
            local.node_id
        );
        let _ = frame_write(stream, &PeerReply::JournalRecords(Err(reason))).await;
        return;
    }
    tracing::info!(op_first, op_last, "sending journal records to a member installing a snapshot");
    // Read and encoded on the blocking pool: the runtime's two workers run Raft itself.
    let (frames, mut receiver) = tokio::sync::mpsc::channel(2);
    let root = local.data_root.clone();
    tokio::task::spawn_blocking(move || journal_frames_send(&root, op_first, op_last, &frames));
    while let Some(frame) = receiver.recv().await {
        if stream.write_all(&frame).await.is_err() {
            return; // dropping the receiver stops the reader
        }
    }
}

/// How long a member's status may take when another asks for it (init, add).
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Another member's status, over a connection of its own.
async fn status_fetch(raft_addr: &str) -> Result<Status, String> {
    let fetch = async {
        let mut stream = TcpStream::connect(raft_addr).await?;
        frame_write(&mut stream, &PeerRequest::Status).await?;
        frame_read::<PeerReply>(&mut stream).await
    };
    match tokio::time::timeout(STATUS_TIMEOUT, fetch).await {
        Ok(Ok(PeerReply::Status(status))) => Ok(status),
        Ok(Ok(other)) => Err(format!("{raft_addr} answered a status request with {other:?}")),
        Ok(Err(error)) => Err(format!("cannot reach {raft_addr}: {error}")),
        Err(_) => Err(format!("{raft_addr} did not answer within {} s", STATUS_TIMEOUT.as_secs())),
    }
}

/// Refuses a member whose ledger config is not this member's: replicas of one ledger must
/// apply the same commands to the same config, or their states diverge; and one that signs
/// checkpoints otherwise, or their journals' bytes would.
async fn config_check(local: &Local, id: NodeId, member: &Member) -> Result<(), String> {
    let status = status_fetch(&member.raft_addr).await?;
    if status.node_id != id {
        return Err(format!("{} is node {}, not node {id}", member.raft_addr, status.node_id));
    }
    let ours = config_hex(&local.config);
    if status.ledger_config != ours {
        return Err(format!(
            "node {id}'s ledger config ({}) is not node {}'s ({ours}): every member must be created with the same \
             --accounts-max",
            status.ledger_config, local.node_id
        ));
    }
    if status.checkpoint_signing != local.checkpoint_signing {
        return Err(format!(
            "node {id} signs checkpoints as \"{}\", node {} as \"{}\": every member must be started with the same \
             --signing-key and --checkpoint-ops, or their journals differ",
            status.checkpoint_signing, local.node_id, local.checkpoint_signing
        ));
    }
    Ok(())
}

/// `walletd cluster init`: every other member must answer, with this member's ledger config.
async fn init(local: &Local, members: BTreeMap<NodeId, Member>) -> Result<(), String> {
    for (id, member) in members.iter().filter(|(id, _)| **id != local.node_id) {
        config_check(local, *id, member).await?;
    }
    tracing::info!(?members, "initialising a new cluster");
    local.raft.initialize(members).await.map_err(|error| error.to_string())
}

/// How long a new member may take to catch up from the log before `cluster add` gives up.
pub const MEMBER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

type MembershipError = RaftError<NodeId, ClientWriteError<NodeId, Member>>;

fn membership_refusal(error: MembershipError) -> MembershipRefusal {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            MembershipRefusal::NotLeader(forward.leader_id.zip(forward.leader_node))
        }
        other => MembershipRefusal::Refused(other.to_string()),
    }
}

fn voters_in(membership: &crate::types::Membership) -> BTreeMap<NodeId, Member> {
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    membership.nodes().filter(|(id, _)| voters.contains(id)).map(|(id, member)| (*id, member.clone())).collect()
}

fn voters_of(response: &openraft::raft::ClientWriteResponse<TypeConfig>) -> BTreeMap<NodeId, Member> {
    response.membership.as_ref().map(voters_in).unwrap_or_default()
}

fn voters_now(raft: &Raft) -> BTreeMap<NodeId, Member> {
    voters_in(raft.metrics().borrow().membership_config.membership())
}

/// Adds `id` as a learner, waits until it has caught up with the log, then makes it a voter
/// (a joint configuration, then the new one, each committed by the old and new majorities).
async fn member_add(local: &Local, id: NodeId, member: Member) -> Result<BTreeMap<NodeId, Member>, MembershipRefusal> {
    let raft = &local.raft;
    let voters = voters_now(raft);
    if let Some(existing) = voters.get(&id) {
        return Err(MembershipRefusal::Refused(format!(
            "node {id} is already a voter (at {}/{}): remove it first to replace it",
            existing.raft_addr, existing.client_addr
        )));
    }
    let leader = raft.metrics().borrow().current_leader;
    if leader != Some(local.node_id) {
        // The leader checks the new member; a follower names the leader (as openraft would).
        let named = leader.and_then(|leader| {
            let metrics = raft.metrics().borrow().clone();
            let member = metrics.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, m)| m.clone());
            member.map(|member| (leader, member))
        });
        return Err(MembershipRefusal::NotLeader(named));
    }
    config_check(local, id, &member).await.map_err(MembershipRefusal::Refused)?;
    tracing::info!(node_id = id, raft_addr = %member.raft_addr, "adding a member: catching it up as a learner");
    match tokio::time::timeout(MEMBER_CATCH_UP_TIMEOUT, raft.add_learner(id, member, true)).await {
        Ok(added) => added.map_err(membership_refusal)?,
        Err(_) => {
            return Err(MembershipRefusal::Refused(format!(
                "node {id} did not catch up within {} s: is it running, on the address given?",
                MEMBER_CATCH_UP_TIMEOUT.as_secs()
            )))
        }
    };
    let changes = openraft::ChangeMembers::AddVoterIds([id].into());
    let response = raft.change_membership(changes, false).await.map_err(membership_refusal)?;
    tracing::info!(node_id = id, voters = ?voters_of(&response).keys().collect::<Vec<_>>(), "member added");
    Ok(voters_of(&response))
}

/// Removes the voter `id` (not retained as a learner).
async fn member_remove(raft: &Raft, id: NodeId) -> Result<BTreeMap<NodeId, Member>, MembershipRefusal> {
    let voters = voters_now(raft);
    if !voters.contains_key(&id) {
        let ids: Vec<String> = voters.keys().map(NodeId::to_string).collect();
        return Err(MembershipRefusal::Refused(format!("node {id} is not a voter; the voters are {}", ids.join(", "))));
    }
    if voters.len() == 1 {
        return Err(MembershipRefusal::Refused(format!("node {id} is the only voter: a cluster keeps at least one")));
    }
    let changes = openraft::ChangeMembers::RemoveVoters([id].into());
    let response = raft.change_membership(changes, false).await.map_err(membership_refusal)?;
    tracing::info!(node_id = id, voters = ?voters_of(&response).keys().collect::<Vec<_>>(), "member removed");
    Ok(voters_of(&response))
}

/// A ledger config as the hex of its 40 bytes (the layout of `ledger.conf`'s body).
pub fn config_hex(config: &walletd_core::Config) -> String {
    config.encode().iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn status_of(raft: &Raft, local: &Local) -> Status {
    let metrics = raft.metrics().borrow().clone();
    let members = metrics.membership_config.nodes().map(|(id, member)| (*id, member.clone())).collect();
    Status {
        node_id: local.node_id,
        term: metrics.current_term,
        leader: metrics.current_leader,
        state: format!("{:?}", metrics.state),
        last_log_index: metrics.last_log_index,
        last_applied_index: metrics.last_applied.map(|log_id| log_id.index),
        members,
        ledger_config: config_hex(&local.config),
        checkpoint_signing: local.checkpoint_signing.clone(),
    }
}

/// Makes a client per member; openraft asks for one per replication stream.
pub struct PeerNetwork;

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient { target, addr: node.raft_addr.clone(), stream: None, head: Vec::new() }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
    /// A request's encoding without its commands' bytes (reused from call to call).
    head: Vec<u8>,
}

/// How a call failed before the member answered.
enum CallError {
    /// Could not connect: the member is down or unreachable.
    Connect(std::io::Error),
    /// The connection failed or timed out mid-call.
    Io(std::io::Error),
}

impl PeerClient {
    /// Sends `request` and then `tail` (an AppendEntries' commands) in one frame; reads the
    /// reply.
    async fn call(&mut self, request: &PeerRequest, tail: &[Bytes], timeout: Duration) -> Result<PeerReply, CallError> {
        let result = tokio::time::timeout(timeout, self.call_within(request, tail)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(CallError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))),
        };
        if result.is_err() {
            self.stream = None; // a half-used connection cannot be trusted: open a new one
        }
        result
    }

    async fn call_within(&mut self, request: &PeerRequest, tail: &[Bytes]) -> Result<PeerReply, CallError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).await.map_err(CallError::Connect)?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        frame_write_vectored(stream, request, tail, &mut self.head).await.map_err(CallError::Io)?;
        frame_read(stream).await.map_err(CallError::Io)
    }

    fn rpc_error<E: std::error::Error>(&self, error: CallError) -> RPCError<NodeId, Member, E> {
        match error {
            CallError::Connect(error) => RPCError::Unreachable(Unreachable::new(&error)),
            CallError::Io(error) => RPCError::Network(NetworkError::new(&error)),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &PeerReply) -> RPCError<NodeId, Member, E> {
        let error = std::io::Error::other(format!("member {} answered with the wrong reply: {reply:?}", self.target));
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let (commands, command_sizes) = commands_take(&mut rpc.entries);
        let request = PeerRequest::AppendEntries { rpc, command_sizes };
        match self.call(&request, &commands, option.hard_ttl()).await {
            Ok(PeerReply::AppendEntries(result)) => {
                result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(other) => Err(self.unexpected(&other)),
            Err(error) => Err(self.rpc_error(error)),
        }
    }

    /// Not used: `full_snapshot` sends a snapshot whole (it is a few dozen bytes).
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let error = std::io::Error::other("snapshots are sent whole (full_snapshot), not in chunks");
        Err(RPCError::Network(NetworkError::new(&error)))
    }

    /// Sends the snapshot (an anchor) in one request; the member answers once it has fetched
    /// the journal to the anchor, which may take long (`SNAPSHOT_INSTALL_TIMEOUT`).
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let target = self.target;
        let request = PeerRequest::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = self.call(&request, &[], option.hard_ttl()) => reply,
        };
        match reply {
            Ok(PeerReply::Snapshot(Ok(response))) => Ok(response),
            Ok(PeerReply::Snapshot(Err(fatal))) => Err(StreamingError::RemoteError(RemoteError::new(target, fatal))),
            Ok(other) => {
                let error = std::io::Error::other(format!("member {target} answered a snapshot with {other:?}"));
                Err(StreamingError::Network(NetworkError::new(&error)))
            }
            Err(CallError::Connect(error)) => Err(StreamingError::Unreachable(Unreachable::new(&error))),
            Err(CallError::Io(error)) => Err(StreamingError::Network(NetworkError::new(&error))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(&PeerRequest::Vote(rpc), &[], option.hard_ttl()).await {
            Ok(PeerReply::Vote(result)) => {
                result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(other) => Err(self.unexpected(&other)),
            Err(error) => Err(self.rpc_error(error)),
        }
    }

    /// The pauses before retrying a member that did not answer: 25 ms, doubling to 200 ms.
    /// openraft's default is 500 ms each time, which leaves a member that restarts behind by
    /// up to half a second more; and a member behind when the leader fails cannot be elected
    /// and slows the election of one that can. A refused connection on a LAN costs one round
    /// trip, so trying five times a second is cheap.
    fn backoff(&self) -> openraft::network::Backoff {
        let pauses = [25, 50, 100].into_iter().chain(std::iter::repeat(200)).map(Duration::from_millis);
        openraft::network::Backoff::new(pauses)
    }
}

/// A one-off request from a tool (`walletd cluster init`, `status`) to the member at `addr`,
/// on a blocking socket: the tools run no async runtime.
pub fn tool_request(addr: &str, request: &PeerRequest, timeout: Duration) -> std::io::Result<PeerReply> {
    use std::io::{Read, Write};
    let address = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = bincode::serialize(request).map_err(std::io::Error::other)?;
    stream.write_all(&(body.len() as u32).to_le_bytes())?;
    stream.write_all(&body)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = u32::from_le_bytes(size);
    if size > FRAME_BODY_SIZE_MAX_BYTES {
        return Err(std::io::Error::other(format!("a reply of {size} bytes: over the limit")));
    }
    let mut reply = vec![0u8; size as usize];
    stream.read_exact(&mut reply)?;
    bincode::deserialize(&reply).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    fn append_entries(commands: &[&[u8]]) -> AppendEntriesRequest<TypeConfig> {
        let log_id = |index| LogId::new(CommittedLeaderId::new(2, 1), index);
        let mut entries = vec![Entry { log_id: log_id(4), payload: EntryPayload::Blank }];
        for (at, command) in commands.iter().enumerate() {
            let proposal = Proposal::Command { timestamp_ns: 7 + at as u64, command: Bytes::copy_from_slice(command) };
            entries.push(Entry { log_id: log_id(5 + 2 * at as u64), payload: EntryPayload::Normal(proposal) });
            entries
                .push(Entry { log_id: log_id(6 + 2 * at as u64), payload: EntryPayload::Normal(Proposal::Checkpoint) });
        }
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(3)),
            entries,
            leader_commit: Some(log_id(2)),
        }
    }

    /// The frame `frame_write_vectored` writes, as one buffer.
    fn frame_of(rpc: AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
        let mut rpc = rpc;
        let (commands, command_sizes) = commands_take(&mut rpc.entries);
        let request = PeerRequest::AppendEntries { rpc, command_sizes };
        let mut frame = Vec::new();
        frame_head_encode(&request, &commands, &mut frame).expect("encodes");
        commands.iter().for_each(|command| frame.extend_from_slice(command));
        frame
    }

    #[test]
    fn an_append_entries_frame_carries_its_commands_after_the_request_and_decodes_to_slices_of_it() {
        let commands: [&[u8]; 4] = [b"first command", b"", &[0xee; 70_000], b"last"];
        let rpc = append_entries(&commands);
        let frame = frame_of(append_entries(&commands));
        let size = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(size, frame.len() - 4);
        let body = Bytes::from(frame).slice(4..);
        let PeerRequest::AppendEntries { rpc: decoded, command_sizes } = peer_request_decode(&body).expect("decodes")
        else {
            panic!("not an AppendEntries");
        };
        assert_eq!(command_sizes, [13, 0, 70_000, 4]);
        assert_eq!(decoded.entries, rpc.entries);
        assert_eq!(
            (decoded.vote, decoded.prev_log_id, decoded.leader_commit),
            (rpc.vote, rpc.prev_log_id, rpc.leader_commit)
        );
        let body_range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        for entry in &decoded.entries {
            if let EntryPayload::Normal(Proposal::Command { command, .. }) = &entry.payload {
                assert!(
                    command.is_empty() || body_range.contains(&(command.as_ptr() as usize)),
                    "a slice of the frame"
                );
            }
        }
    }

    #[test]
    fn an_append_entries_frame_whose_tail_does_not_match_its_sizes_is_refused() {
        let frame = frame_of(append_entries(&[b"abc", b"defgh"]));
        let short = Bytes::copy_from_slice(&frame[4..frame.len() - 1]);
        assert!(peer_request_decode(&short).is_err(), "a tail one byte short");
        let mut long = frame[4..].to_vec();
        long.push(0);
        assert!(peer_request_decode(&Bytes::from(long)).is_err(), "a byte after the last command");
        let mut status = Vec::new();
        frame_head_encode(&PeerRequest::Status, &[Bytes::from_static(b"x")], &mut status).expect("encodes");
        status.push(b'x');
        assert!(peer_request_decode(&Bytes::copy_from_slice(&status[4..])).is_err(), "bytes after a status request");
    }
}
