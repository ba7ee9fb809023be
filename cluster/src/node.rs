//! A cluster node: the data directory recovered, Raft started on it (the log store and the
//! journal state machine), the peer transport listening, and the gateway taking clients'
//! requests with a backend that submits them to Raft.
//!
//! What the backend does with each checked request:
//!
//! - a write (a mutating ledger command) is proposed with the time stamped now, in the order
//!   the requests arrive; the reply leaves when `client_write` completes, that is once the
//!   entry is committed (durable in the Raft log of a majority) and applied here (journaled
//!   with an fdatasync, and applied to the ledger), carrying the engine's results. On a member
//!   that is not the leader, openraft refuses it and the reply is `not_leader` with the
//!   leader's client address. A write not committed within `write_timeout` is answered
//!   `unavailable` (outcome unknown): a leader cut off from its majority never acknowledges;
//! - a read waits for the connection's earlier writes, then for `ensure_linearizable` (a read
//!   index: the leader confirms with a majority that it is still the leader, and waits until
//!   it has applied what was committed when the read arrived), then queries the ledger;
//! - a ping is answered at once; a snapshot request proposes a checkpoint (each member's
//!   ledger snapshot replica writes a snapshot there if its own interval is due).
//!
//! After every `checkpoint_entries` commands it proposes, the leader proposes a checkpoint
//! entry, so every journal carries state hashes (signed, when the members sign) at the same
//! ops, which `walletd replay` verifies on each node.

use crate::elections::Elections;
use crate::error::ClusterError;
use crate::log_store::LogStore;
use crate::metrics::WriteCounters;
use crate::network::{peer_serve, Local, PeerNetwork};
use crate::snapshot::Snapshots;
use crate::state_machine::{Machine, StateMachine};
use crate::types::{Applied, Member, NodeId, Proposal, Raft};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use walletd_core::Config;
use walletd_gateway::protocol::{FrameHeader, FrameOperation, Status};
use walletd_gateway::server::{
    serve, server_info, Acceptor, Connections, EngineStopped, ServerOptions, ServerRequest, Submit,
};
use walletd_journal::FileStorage;
use walletd_replay::checkpoint::{hex, CheckpointSigner};
use walletd_replay::data_dir::DataDir;
use walletd_replay::recovery::recover;
use walletd_replay::{
    replica_of, DirLock, DurableMark, Position, SigningKey, SnapshotWhen, Snapshotter, TrustReport, Verification,
};
use walletd_snapshot::SNAPSHOTS_KEPT_DEFAULT;

/// Raft's timing. With openraft 0.9 a follower stands for election once it has heard nothing
/// from the leader for the leader's lease (the election timeout's maximum) plus its own
/// election timeout (drawn once between the min and the max), so a failover takes about
/// `max + [min, max]` plus one vote round trip and the new leader's first commit: with the
/// defaults, a heartbeat every 40 ms and 100–200 ms, 300–400 ms of silence before the vote
/// (docs/BENCHMARKS.md measures the gaps). Larger values tolerate longer stalls of a loaded
/// leader before it is deposed, at the cost of a longer failover.
#[derive(Clone, Copy, Debug)]
pub struct RaftTimeouts {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTimeouts {
    fn default() -> RaftTimeouts {
        RaftTimeouts { heartbeat_ms: 40, election_timeout_min_ms: 100, election_timeout_max_ms: 200 }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub node_id: NodeId,
    pub data_dir: DataDir,
    /// The binary protocol's address, for clients.
    pub addr: SocketAddr,
    /// The members' RPCs.
    pub raft_addr: SocketAddr,
    /// The config a new data directory gets (an existing one keeps its own). Every member
    /// must be created with the same one.
    pub config: Config,
    pub segment_size_bytes: u64,
    pub server: ServerOptions,
    pub timeouts: RaftTimeouts,
    /// How long a write may wait to commit before it is answered `unavailable`.
    pub write_timeout: Duration,
    /// Writes between the checkpoints the leader proposes.
    pub checkpoint_entries: u64,
    /// Requests in flight in Raft at once; more wait (and the gateway stops reading).
    pub in_flight_max: usize,
    /// Entries per AppendEntries RPC at most (an entry is a whole request, up to a full batch
    /// of about 1 MiB). Fewer keep each RPC short, so a follower hears from the leader often
    /// under load (heartbeats wait behind a replication RPC in flight); too few leave
    /// followers trailing, which slows failover. At most 32, which keeps a frame within the
    /// peer transport's limit.
    pub append_entries_max: u64,
    /// Entries applied between two snapshots; each lets the Raft log before it (less
    /// `log_keep_entries`) be purged. A snapshot is an anchor in the journal: building one
    /// costs nothing but an fsync of a small file.
    pub snapshot_entries: u64,
    /// Entries kept in the Raft log behind the newest snapshot, so that a member a little
    /// behind catches up from the log rather than by a snapshot install.
    pub log_keep_entries: u64,
    /// Journal ops between two ledger snapshots (`--snapshot-ops`, as on the single node): the
    /// replica writes one at the first checkpoint this many ops after its newest, and a
    /// restart loads the newest valid one and replays only the journal after it.
    pub ledger_snapshot_ops: u64,
    /// Checkpoints signed with this Ed25519 key, as on the single node. Every member holds the
    /// same key (init and add refuse a member that signs otherwise): the signature is
    /// deterministic, so every journal stays the same bytes.
    pub signing_key: Option<SigningKey>,
    /// What start-up verifies of the journal before Raft starts (signatures, a chain head).
    pub verification: Verification,
}

/// The default of `ClusterOptions::append_entries_max`.
pub const APPEND_ENTRIES_MAX_DEFAULT: u64 = 16;
/// The default of `ClusterOptions::snapshot_entries`: with full batches of about 1 MiB, a
/// snapshot every gigabyte or so of log.
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 1024;
/// The default of `ClusterOptions::log_keep_entries`.
pub const LOG_KEEP_ENTRIES_DEFAULT: u64 = 1024;
/// How long a leader waits for a member to answer a snapshot, that is, to fetch the journal it
/// lacks (gigabytes for a new member). Short on purpose: a connection that died silently must
/// not stall the member's replication for long, and a resend costs nothing — a member still
/// installing answers it at once (the snapshot is not newer than what it accepted), and the
/// leader goes on with the log after the snapshot, which the member applies once its install
/// is done.
pub const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A node running in this process.
pub struct RunningCluster {
    pub local_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub node_id: NodeId,
    /// The journal's op at start-up.
    pub op: u64,
    /// What recovery started from and replayed (before any install finished at start-up).
    pub recovery: Recovery,
    /// A snapshot install a crash had interrupted, finished at start-up: its op and the journal
    /// records fetched.
    pub install_finished: Option<(u64, u64)>,
    raft: Raft,
    runtime: tokio::runtime::Runtime,
    acceptor: Acceptor,
    connections: Arc<Connections>,
    machine: StateMachine,
    outcomes: Arc<WriteCounters>,
    _lock: DirLock,
}

/// What a member's start-up recovered: the ledger snapshot it loaded (if any), the journal
/// records it replayed after it, and what it repaired or set aside (a damaged snapshot
/// quarantined, a torn journal tail cut), one line each.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub snapshot_op: Option<u64>,
    pub records_replayed: u64,
    /// The op recovery reached.
    pub op: u64,
    pub notes: Vec<String>,
    /// The signatures and chain head start-up verified.
    pub trust: TrustReport,
}

const NODE_ID_FILE: &str = "node_id";

/// Recovers the data directory, starts Raft and the gateway. Returns once both listen.
pub fn cluster_start(options: ClusterOptions) -> Result<RunningCluster, ClusterError> {
    assert!(options.timeouts.election_timeout_min_ms > options.timeouts.heartbeat_ms);
    assert!(options.checkpoint_entries >= 1 && options.in_flight_max >= 1);
    assert!((1..=32).contains(&options.append_entries_max), "append_entries_max is 1..=32");
    assert!(options.snapshot_entries >= 1, "snapshot_entries is at least 1");
    assert!(options.ledger_snapshot_ops >= 1, "ledger_snapshot_ops is at least 1");
    let lock = options.data_dir.lock()?;
    let config = options.data_dir.open_or_create(options.config)?;
    let raft_dir = options.data_dir.root.join("raft");
    node_id_pin(&raft_dir, options.node_id)?;
    let recovered =
        recover(FileStorage::default(), &options.data_dir, options.segment_size_bytes, &options.verification)?;
    // Commands between two checkpoints are at most `checkpoint_entries` (see `dispatch_run`),
    // which is the interval a signature promises.
    let signer = options.signing_key.clone().map(|key| CheckpointSigner::new(key, options.checkpoint_entries, &config));
    let checkpoint_signing = checkpoint_signing_describe(options.signing_key.as_ref(), options.checkpoint_entries);
    let (log, opened) = LogStore::open(&raft_dir)?;
    // A member behind the leader's commit, or installing a snapshot, does not stand for
    // election; it stands again after three election timeouts with neither (`elections`).
    let elections = Elections::new(Duration::from_millis(3 * options.timeouts.election_timeout_max_ms));
    let (snapshots, install_interrupted) = Snapshots::open(&raft_dir, options.node_id, Arc::clone(&elections))?;
    let op = recovered.journal.op_durable();
    let recovery = Recovery {
        snapshot_op: recovered.snapshot.as_ref().map(|(header, _)| header.op),
        records_replayed: recovered.replay.records,
        op,
        notes: recovered.notes(),
        trust: recovered.replay.trust.clone(),
    };
    if op > 0 && opened.last.is_none() && snapshots.current().is_none() && install_interrupted.is_none() {
        return Err(ClusterError::Refused(format!(
            "{} holds a journal to op {op} but no Raft log: a single-node data directory cannot join a cluster \
             (not yet supported); start the member on an empty directory",
            options.data_dir.root.display()
        )));
    }
    let position = Position { op, checksum: recovered.journal.checksum_last() };
    let durable_mark = DurableMark::open(&options.data_dir.root, position)?;
    if let Some(index) = op.checked_sub(1) {
        log.applied_advance(index);
    }
    let snapshotter = Snapshotter::start(
        replica_of(&recovered.ledger),
        op,
        recovery.snapshot_op.unwrap_or(0),
        FileStorage::default(),
        options.data_dir.clone(),
        SNAPSHOTS_KEPT_DEFAULT,
        SnapshotWhen::Every { ops: options.ledger_snapshot_ops },
    )?;
    let machine = Machine::new(recovered.ledger, recovered.journal, durable_mark, snapshotter, signer);
    let machine = StateMachine::new(machine, log.clone(), Arc::new(snapshots), options.node_id);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cluster")
        .enable_all()
        .build()
        .map_err(|source| ClusterError::Io { what: "start the async runtime".into(), source })?;
    let install_finished = install_interrupted.map(|snapshot| {
        let op = snapshot.anchor.op;
        tracing::warn!(op, "a snapshot install was interrupted: finishing it before Raft starts");
        (op, runtime.block_on(machine.install_resume(snapshot)))
    });
    let op = machine.machine().op_durable();
    let raft_config = raft_config(&options)?;
    let raft_listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.raft_addr))
        .map_err(|source| ClusterError::Io { what: format!("listen on {} for Raft", options.raft_addr), source })?;
    let raft_addr =
        raft_listener.local_addr().map_err(|source| ClusterError::Io { what: "raft listener".into(), source })?;
    let raft = runtime
        .block_on(Raft::new(options.node_id, raft_config, PeerNetwork, log, machine.clone()))
        .map_err(|error| ClusterError::Raft(error.to_string()))?;
    runtime.block_on(async { elections.raft_set(raft.clone()) });
    let local = Local {
        raft: raft.clone(),
        node_id: options.node_id,
        config,
        checkpoint_signing,
        data_root: options.data_dir.root.clone(),
        machine: machine.clone(),
        elections,
    };
    runtime.block_on(async { peer_serve(raft_listener, local) });
    let (acceptor, connections, local_addr, outcomes) =
        gateway_start(&options, &config, &runtime, &raft, machine.clone())?;
    tracing::info!(node_id = options.node_id, %raft_addr, %local_addr, op, log_entries = opened.entries, "cluster node started");
    Ok(RunningCluster {
        local_addr,
        raft_addr,
        node_id: options.node_id,
        op,
        recovery: recovery.clone(),
        install_finished,
        raft,
        runtime,
        acceptor,
        connections,
        machine,
        outcomes,
        _lock: lock,
    })
}

/// How a member signs its checkpoints, as `cluster status` shows it and init and add compare:
/// `none`, or the public key and the interval. Both are in every signed checkpoint's bytes, so
/// members that differ in either would write different journals.
pub fn checkpoint_signing_describe(signing_key: Option<&SigningKey>, checkpoint_entries: u64) -> String {
    match signing_key {
        None => "none".to_string(),
        Some(key) => {
            format!("ed25519 {} every {checkpoint_entries} commands", hex(&key.verifying_key().to_bytes()))
        }
    }
}

fn raft_config(options: &ClusterOptions) -> Result<Arc<openraft::Config>, ClusterError> {
    let timeouts = options.timeouts;
    let config = openraft::Config {
        cluster_name: "walletd".to_string(),
        heartbeat_interval: timeouts.heartbeat_ms,
        election_timeout_min: timeouts.election_timeout_min_ms,
        election_timeout_max: timeouts.election_timeout_max_ms,
        max_payload_entries: options.append_entries_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_entries),
        max_in_snapshot_log_to_keep: options.log_keep_entries,
        install_snapshot_timeout: u64::try_from(SNAPSHOT_INSTALL_TIMEOUT.as_millis()).expect("fits"),
        ..openraft::Config::default()
    };
    config.validate().map(Arc::new).map_err(|error| ClusterError::Refused(format!("Raft timeouts: {error}")))
}

/// A data directory belongs to one member for life: its node id is written on first start and
/// checked on every later one.
fn node_id_pin(raft_dir: &Path, node_id: NodeId) -> Result<(), ClusterError> {
    let io = |source| ClusterError::Io { what: format!("{}", raft_dir.join(NODE_ID_FILE).display()), source };
    std::fs::create_dir_all(raft_dir).map_err(io)?;
    let path = raft_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == node_id.to_string() => Ok(()),
        Ok(text) => Err(ClusterError::Refused(format!(
            "{} belongs to node {}, not node {node_id}: give each member its own data directory",
            raft_dir.parent().unwrap_or(raft_dir).display(),
            text.trim()
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let temporary = raft_dir.join("node_id.tmp");
            std::fs::write(&temporary, format!("{node_id}\n")).map_err(io)?;
            std::fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io)?;
            std::fs::rename(&temporary, &path).map_err(io)?;
            std::fs::File::open(raft_dir).and_then(|dir| dir.sync_all()).map_err(io)
        }
        Err(error) => Err(io(error)),
    }
}

/// Prints a line whenever this node's view of the leader changes (scripts and tests wait on
/// these): `cluster: node N is the leader in term T`, `cluster: node N follows node L in term
/// T`, or `cluster: node N knows no leader in term T`.
async fn leader_report(raft: Raft, node_id: NodeId) {
    let mut metrics = raft.metrics();
    let mut reported = None;
    loop {
        let (leader, term) = {
            let now = metrics.borrow();
            (now.current_leader, now.current_term)
        };
        if reported != Some((leader, term)) {
            reported = Some((leader, term));
            match leader {
                Some(leader) if leader == node_id => println!("cluster: node {node_id} is the leader in term {term}"),
                Some(leader) => println!("cluster: node {node_id} follows node {leader} in term {term}"),
                None => println!("cluster: node {node_id} knows no leader in term {term}"),
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn gateway_start(
    options: &ClusterOptions,
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    raft: &Raft,
    machine: StateMachine,
) -> Result<(Acceptor, Arc<Connections>, SocketAddr, Arc<WriteCounters>), ClusterError> {
    let io = |what: String| move |source| ClusterError::Io { what, source };
    let listener = std::net::TcpListener::bind(options.addr).map_err(io(format!("listen on {}", options.addr)))?;
    let local_addr = listener.local_addr().map_err(io("listener".into()))?;
    let mut server_options = options.server.clone();
    server_options.event_count_max = server_options.event_count_max.min(config.batch_events_max);
    let connections = Arc::new(Connections::default());
    let (requests, receiver) = mpsc::channel(options.in_flight_max);
    let outcomes = Arc::new(WriteCounters::default());
    let dispatch = Arc::new(Dispatch {
        raft: raft.clone(),
        machine,
        connections: Arc::clone(&connections),
        ping_body: server_info(config, &server_options).encode().to_vec(),
        write_timeout: options.write_timeout,
        checkpoint_entries: options.checkpoint_entries,
        outcomes: Arc::clone(&outcomes),
    });
    runtime.spawn(dispatch_run(dispatch, receiver, options.in_flight_max));
    let engine: Arc<dyn Submit> = Arc::new(Engine { requests });
    let acceptor =
        serve(listener, server_options, engine, Arc::clone(&connections)).map_err(io("accept thread".into()))?;
    Ok((acceptor, connections, local_addr, outcomes))
}

impl RunningCluster {
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This member's metrics, for a scraper on another thread (see `metrics`).
    pub fn metrics(&self) -> crate::metrics::ClusterMetrics {
        crate::metrics::ClusterMetrics::new(
            self.raft.clone(),
            Arc::clone(&self.outcomes),
            self.machine.clone(),
            self.recovery.clone(),
        )
    }

    /// Starts printing this node's view of the leader on stdout, one line per change (after
    /// the start-up lines, so scripts read those first).
    pub fn leader_report_start(&self) {
        self.runtime.spawn(leader_report(self.raft.clone(), self.node_id));
    }

    /// Stops taking requests, stops Raft, closes the connections.
    pub fn shutdown(self) {
        self.acceptor.stop();
        if let Err(error) = self.runtime.block_on(self.raft.shutdown()) {
            tracing::warn!(%error, "Raft did not stop cleanly");
        }
        self.connections.close_all();
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The gateway's engine: requests go to the dispatcher (blocking when it is full, so the
/// connection stops being read).
struct Engine {
    requests: mpsc::Sender<ServerRequest>,
}

impl Submit for Engine {
    fn submit(&self, request: ServerRequest) -> Result<(), EngineStopped> {
        self.requests.blocking_send(request).map_err(|_| EngineStopped)
    }
}

struct Dispatch {
    raft: Raft,
    machine: StateMachine,
    connections: Arc<Connections>,
    ping_body: Vec<u8>,
    write_timeout: Duration,
    checkpoint_entries: u64,
    outcomes: Arc<WriteCounters>,
}

/// Takes requests in arrival order: writes are proposed in that order (so one connection's
/// writes commit in the order it sent them); their answers are awaited by tasks.
///
/// After every `checkpoint_entries` commands proposed, a checkpoint is proposed (fire and
/// forget: it is a state hash, signed when the members sign). This task is the member's only
/// proposer of commands, and Raft keeps a leader's entries of one term in the order proposed
/// (an entry survives only with those before it), while every leader starts its term with a
/// blank entry, which is a checkpoint too. So no journal holds more than `checkpoint_entries`
/// commands between two checkpoints, the interval a signed checkpoint promises.
async fn dispatch_run(dispatch: Arc<Dispatch>, mut receiver: mpsc::Receiver<ServerRequest>, in_flight_max: usize) {
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let mut commands_since_checkpoint = 0u64;
    // Per connection, the completion of its newest write: a read waits for it.
    let mut writes_last: HashMap<u64, watch::Receiver<bool>> = HashMap::new();
    while let Some(mut request) = receiver.recv().await {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("the semaphore is never closed");
        if writes_last.len() > 4096 {
            writes_last.retain(|_, done| !*done.borrow());
        }
        match request.operation {
            FrameOperation::Ping => {
                dispatch.reply(&request, Status::Ok, 0, 0, &dispatch.ping_body);
            }
            FrameOperation::Ledger(operation) if !operation.is_mutating() => {
                let write_before = writes_last.get(&request.connection).cloned();
                let dispatch = Arc::clone(&dispatch);
                tokio::spawn(async move {
                    dispatch.read(request, write_before).await;
                    drop(permit);
                });
            }
            FrameOperation::Ledger(_) | FrameOperation::Snapshot => {
                let proposal = match request.operation {
                    FrameOperation::Snapshot => {
                        commands_since_checkpoint = 0;
                        Proposal::Checkpoint
                    }
                    // The request's buffer becomes the entry's, shared from here on.
                    _ => {
                        commands_since_checkpoint += 1;
                        Proposal::Command {
                            timestamp_ns: now_ns(),
                            command: std::mem::take(&mut request.command).into(),
                        }
                    }
                };
                let (done, done_receiver) = watch::channel(false);
                writes_last.insert(request.connection, done_receiver);
                let answer = dispatch.raft.client_write_ff(proposal).await;
                if commands_since_checkpoint == dispatch.checkpoint_entries {
                    let _ = dispatch.raft.client_write_ff(Proposal::Checkpoint).await;
                    commands_since_checkpoint = 0;
                }
                let dispatch = Arc::clone(&dispatch);
                tokio::spawn(async move {
                    match answer {
                        Ok(answer) => dispatch.write_answer(&request, answer).await,
                        Err(_) => dispatch.reply(&request, Status::ShuttingDown, 0, 0, &[]),
                    }
                    let _ = done.send(true);
                    drop(permit);
                });
            }
        }
    }
}

type WriteAnswer = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<crate::types::TypeConfig>>;

impl Dispatch {
    async fn write_answer(&self, request: &ServerRequest, answer: WriteAnswer) {
        let outcome = tokio::time::timeout(self.write_timeout, answer).await;
        match outcome {
            Ok(Ok(Ok(response))) => {
                let Applied { op, timestamp_ns, record_count, mut body } = response.data;
                WriteCounters::add(&self.outcomes.ok);
                if request.timestamp_reply && timestamp_ns != 0 {
                    walletd_gateway::protocol::timestamp_encode(timestamp_ns, &mut body);
                }
                self.reply(request, Status::Ok, op, record_count, &body);
            }
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(forward)))) => {
                WriteCounters::add(&self.outcomes.not_leader);
                self.not_leader(request, &forward)
            }
            Ok(Ok(Err(ClientWriteError::ChangeMembershipError(_)))) | Ok(Err(_)) | Err(_) => {
                WriteCounters::add(&self.outcomes.unavailable);
                self.reply(request, Status::Unavailable, 0, 0, &[]);
            }
        }
    }

    async fn read(&self, request: ServerRequest, write_before: Option<watch::Receiver<bool>>) {
        if let Some(mut done) = write_before {
            let _ = done.wait_for(|done| *done).await;
        }
        match tokio::time::timeout(self.write_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                let mut body = Vec::new();
                let record_count =
                    tokio::task::block_in_place(|| self.machine.machine().query(&request.command, &mut body));
                self.reply(&request, Status::Ok, 0, record_count, &body);
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                self.not_leader(&request, &forward)
            }
            Ok(Err(_)) | Err(_) => self.reply(&request, Status::Unavailable, 0, 0, &[]),
        }
    }

    fn not_leader(&self, request: &ServerRequest, forward: &ForwardToLeader<NodeId, Member>) {
        let leader = forward.leader_node.as_ref().map(|member| member.client_addr.as_bytes()).unwrap_or_default();
        let leader =
            if leader.len() <= walletd_gateway::protocol::NOT_LEADER_ADDRESS_SIZE_MAX_BYTES { leader } else { &[] };
        self.reply(request, Status::NotLeader, 0, 0, leader);
    }

    fn reply(&self, request: &ServerRequest, status: Status, op: u64, record_count: u32, body: &[u8]) {
        let header = FrameHeader {
            operation: request.operation.code(),
            request_id: request.request_id,
            client_id: request.client_id,
            ..FrameHeader::default()
        };
        let mut reply = FrameHeader::reply_to(&header, status, op, record_count);
        if status == Status::Ok && request.timestamp_reply {
            reply.flags |= walletd_gateway::protocol::FLAG_TIMESTAMP;
        }
        self.connections.reply(request.connection, &reply, body);
    }
}

fn now_ns() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since_epoch.as_nanos()).expect("nanoseconds fit in u64 until 2554")
}
