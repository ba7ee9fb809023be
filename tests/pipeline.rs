//! The pipeline without the network: requests in through the channel, replies captured from
//! the route. Replies carry the outcomes, reads see the writes before them, and after a restart
//! the state is the one that was acknowledged. No reply leaves while the sync that makes its
//! op durable is held (a journal storage whose sync waits for the test), even once apply has
//! run it. A node that restarts often still snapshots.

mod common;

use common::transfer;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use walletd::generate::config_for;
use walletd::node::{Node, NodeOptions};
use walletd::pipeline::{PipelineOptions, Reply, ReplyRoute, Request};
use walletd_core::command::records_as_bytes;
use walletd_core::{Account, AccountId, Amount, Operation, Transfer};
use walletd_gateway::protocol::FrameOperation;
use walletd_journal::{FileSegment, FileStorage, OpenMode, Storage, StorageFile};
use walletd_replay::data_dir::DataDir;

fn options() -> NodeOptions {
    let pipeline = PipelineOptions { checkpoint_ops: 4, snapshot_ops: 8, ..PipelineOptions::default() };
    NodeOptions { config: config_for(1000), segment_size_bytes: 1 << 20, pipeline }
}

fn request(id: u64, operation: Operation, events: &[u8], count: usize) -> Request {
    let mut command = Vec::new();
    walletd_core::command::command_encode(operation, events, count as u32, &mut command);
    Request {
        connection: 1,
        request_id: id,
        client_id: 9,
        operation: FrameOperation::Ledger(operation),
        event_count: count as u32,
        command,
        timestamp_reply: false,
    }
}

/// A reply, copied out of the ring slot it borrows from.
struct Got {
    request_id: u64,
    op: u64,
    record_count: u32,
    body: Vec<u8>,
}

fn start(dir: &DataDir) -> (Node, mpsc::Receiver<Got>) {
    start_with(dir, options())
}

fn start_with(dir: &DataDir, options: NodeOptions) -> (Node, mpsc::Receiver<Got>) {
    let (route, receiver) = route_to_channel(|| {});
    (Node::start(dir, options, route).unwrap(), receiver)
}

/// A route that copies each reply into a channel, calling `observe` first (on the reply thread,
/// at the moment the reply leaves).
fn route_to_channel(observe: impl Fn() + Send + Sync + 'static) -> (ReplyRoute, mpsc::Receiver<Got>) {
    let (sender, receiver) = mpsc::channel();
    let sender = Mutex::new(sender);
    let route = Arc::new(move |reply: &Reply<'_>| {
        observe();
        let got = Got {
            request_id: reply.request_id,
            op: reply.op,
            record_count: reply.record_count,
            body: reply.body.to_vec(),
        };
        sender.lock().unwrap().send(got).unwrap()
    });
    (route, receiver)
}

#[test]
fn replies_carry_outcomes_and_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new(root.path());
    let (node, replies) = start(&dir);
    let requests = node.pipeline.requests();
    let accounts: Vec<Account> =
        (1..=4u128).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect();
    requests.send(request(1, Operation::CreateAccounts, records_as_bytes(&accounts), 4)).unwrap();
    let transfers: Vec<Transfer> =
        (0..20u64).map(|i| transfer(u128::from(i) + 1, 1 + u128::from(i % 2), 3, 10)).collect();
    let mut bad = transfers.clone();
    bad[5].amount = Amount(0);
    requests.send(request(2, Operation::CreateTransfers, records_as_bytes(&bad[..10]), 10)).unwrap();
    requests.send(request(3, Operation::LookupAccounts, records_as_bytes(&[AccountId(3)]), 1)).unwrap();
    requests
        .send(Request {
            connection: 1,
            request_id: 4,
            client_id: 9,
            operation: FrameOperation::Ping,
            event_count: 0,
            command: vec![],
            timestamp_reply: false,
        })
        .unwrap();
    requests
        .send(Request {
            connection: 1,
            request_id: 5,
            client_id: 9,
            operation: FrameOperation::Snapshot,
            event_count: 0,
            command: vec![],
            timestamp_reply: false,
        })
        .unwrap();
    let got: Vec<Got> = (0..5).map(|_| replies.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert_eq!(got.iter().map(|r| r.request_id).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "replies in sequence order");
    assert_eq!((got[0].record_count, got[0].op), (0, 1), "accounts created at op 1");
    assert_eq!(got[1].record_count, 1, "one failure");
    assert_eq!(&got[1].body[..], &[5u8, 0, 0, 0, 20, 0, 0, 0], "event 5: AmountMustNotBeZero (20)");
    let account: Account = walletd_core::types::record_from_bytes::<Account>(&got[2].body);
    assert_eq!(account.credits_posted, Amount(90), "the read sees the nine transfers before it");
    assert_eq!(got[4].op, 3, "the snapshot checkpoint has its own op");
    assert!(node.pipeline.metrics.op_durable.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    drop(requests);
    node.shutdown();

    let (node, replies) = start(&dir);
    assert_eq!(node.started.op, 3, "everything acknowledged is there");
    let requests = node.pipeline.requests();
    requests.send(request(6, Operation::LookupAccounts, records_as_bytes(&[AccountId(3)]), 1)).unwrap();
    let reply = replies.recv_timeout(Duration::from_secs(10)).unwrap();
    let account: Account = walletd_core::types::record_from_bytes::<Account>(&reply.body);
    assert_eq!(account.credits_posted, Amount(90), "the same balance after the restart");
    drop(requests);
    node.shutdown();
}

/// A node that restarts before any one run reaches `snapshot_ops` still snapshots: the
/// interval counts from the newest snapshot's op, not from each start. Right after each
/// restart, before any write, the progress gauges read the recovered ops.
#[test]
fn snapshots_are_taken_on_a_node_that_restarts_often() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new(root.path());
    let (checkpoint_ops, snapshot_ops) = (4, 16);
    let mut options = options();
    options.pipeline = PipelineOptions { checkpoint_ops, snapshot_ops, ..PipelineOptions::default() };
    let mut op_last = 0;
    for run in 0..4u64 {
        let (node, replies) = start_with(&dir, options.clone());
        assert_eq!(node.started.op, op_last, "run {run}: recovered everything");
        let metrics = &node.pipeline.metrics;
        assert_eq!(metrics.op_replica.load(Ordering::Relaxed), op_last, "run {run}: the replica's gauge");
        let op_snapshot = node.started.snapshot_op.unwrap_or(0);
        assert_eq!(metrics.op_snapshot.load(Ordering::Relaxed), op_snapshot, "run {run}: the snapshot gauge");
        let requests = node.pipeline.requests();
        if run == 0 {
            requests.send(request(1, Operation::CreateAccounts, records_as_bytes(&common::accounts(2)), 2)).unwrap();
        }
        // Six commands a run (five after the accounts) and one checkpoint: 7 ops < snapshot_ops.
        for index in u64::from(run == 0)..6 {
            let low = u128::from(run * 100 + index);
            let one = [transfer(low, 1, 2, 1)];
            requests.send(request(2 + index, Operation::CreateTransfers, records_as_bytes(&one), 1)).unwrap();
        }
        for _ in 0..6 {
            let reply = replies.recv_timeout(Duration::from_secs(10)).expect("a reply");
            assert_eq!(reply.record_count, 0, "run {run}: request {} succeeded", reply.request_id);
        }
        drop(requests);
        let op_run_end = node.pipeline.metrics.op_durable.load(Ordering::Relaxed);
        assert_eq!(op_run_end - op_last, 7, "run {run}: six commands and one checkpoint");
        assert!(op_run_end - op_last < snapshot_ops, "run {run}: no run alone reaches snapshot_ops");
        op_last = op_run_end;
        node.shutdown();
    }
    let (node, _replies) = start_with(&dir, options);
    // Ops 1..=28 over four runs, a checkpoint at 5, 12, 19 and 26: the first checkpoint more
    // than snapshot_ops after genesis (the newest snapshot, none) is op 19.
    assert_eq!(node.started.snapshot_op, Some(19), "a snapshot once the total passed snapshot_ops");
    assert_eq!(node.started.ops_replayed, op_last - 19, "start-up replays only the tail after it");
    assert_eq!(node.pipeline.metrics.op_snapshot.load(Ordering::Relaxed), 19);
    assert_eq!(node.pipeline.metrics.op_replica.load(Ordering::Relaxed), op_last);
    node.shutdown();
}

/// How long a test waits for an event before it calls the event missing.
const WAIT_MAX: Duration = Duration::from_secs(20);

/// A gate on the journal's syncs, held and released by the test. A sync entered while the gate
/// is held waits (before it syncs anything) until the test releases it.
#[derive(Default)]
struct SyncGate {
    state: Mutex<SyncGateState>,
    changed: Condvar,
}

#[derive(Default)]
struct SyncGateState {
    held: bool,
    syncs_entered: u64,
}

impl SyncGate {
    /// Holds every sync from now on; returns how many syncs were entered so far.
    fn hold(&self) -> u64 {
        let mut state = self.state.lock().unwrap();
        assert!(!state.held, "the gate is held once at a time");
        state.held = true;
        state.syncs_entered
    }

    fn release(&self) {
        let mut state = self.state.lock().unwrap();
        assert!(state.held, "release after hold");
        state.held = false;
        self.changed.notify_all();
    }

    fn held(&self) -> bool {
        self.state.lock().unwrap().held
    }

    /// Waits until more than `count` syncs have been entered.
    fn wait_entered(&self, count: u64) {
        let state = self.state.lock().unwrap();
        let (state, waited) =
            self.changed.wait_timeout_while(state, WAIT_MAX, |state| state.syncs_entered <= count).unwrap();
        assert!(!waited.timed_out(), "no sync entered after the first {count}");
        assert!(state.syncs_entered > count);
    }

    /// Called by a sync: counts it, then waits while the gate is held.
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.syncs_entered += 1;
        self.changed.notify_all();
        let _state = self.changed.wait_while(state, |state| state.held).unwrap();
    }
}

/// Journal storage on the real file system whose file syncs pass through a `SyncGate`.
#[derive(Clone)]
struct GatedStorage {
    inner: FileStorage,
    gate: Arc<SyncGate>,
}

struct GatedFile {
    inner: FileSegment,
    gate: Arc<SyncGate>,
}

impl GatedStorage {
    fn wrap(&self, inner: FileSegment) -> GatedFile {
        GatedFile { inner, gate: Arc::clone(&self.gate) }
    }
}

impl Storage for GatedStorage {
    type File = GatedFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn create_file(&self, path: &Path, size_bytes: u64) -> io::Result<GatedFile> {
        self.inner.create_file(path, size_bytes).map(|file| self.wrap(file))
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<GatedFile> {
        self.inner.open_file(path, mode).map(|file| self.wrap(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

impl StorageFile for GatedFile {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn grow(&mut self, size_bytes: u64) -> io::Result<()> {
        self.inner.grow(size_bytes)
    }

    fn read_at(&mut self, offset: u64, size_bytes: usize) -> io::Result<&[u8]> {
        self.inner.read_at(offset, size_bytes)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }

    fn sync(&mut self, offset: u64, size_bytes: u64) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync(offset, size_bytes)
    }
}

/// Waits until `done` holds (it reads another thread's progress).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        std::thread::yield_now();
    }
}

/// Apply runs ahead of the fsync, but reply waits for it: with the journal held inside the
/// sync that covers op 2, and apply known to have run op 2, no reply has left, nor one for the
/// read behind it; once the sync is released both arrive, and none left while it was held.
#[test]
fn no_reply_leaves_before_the_sync_that_makes_it_durable() {
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new(root.path());
    let gate = Arc::new(SyncGate::default());
    let storage = GatedStorage { inner: FileStorage::default(), gate: Arc::clone(&gate) };
    let replies_while_held = Arc::new(AtomicU64::new(0));
    let (route, replies) = {
        let (gate, replies_while_held) = (Arc::clone(&gate), Arc::clone(&replies_while_held));
        route_to_channel(move || {
            if gate.held() {
                replies_while_held.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let node = Node::start_on(storage, &dir, options(), route).unwrap();
    let metrics = Arc::clone(&node.pipeline.metrics);
    let requests = node.pipeline.requests();
    requests.send(request(1, Operation::CreateAccounts, records_as_bytes(&common::accounts(3)), 3)).unwrap();
    let created = replies.recv_timeout(WAIT_MAX).expect("the accounts' reply");
    assert_eq!((created.request_id, created.op, created.record_count), (1, 1, 0), "accounts created at op 1");

    let syncs_before = gate.hold();
    let one = [transfer(1, 1, 3, 10)];
    requests.send(request(2, Operation::CreateTransfers, records_as_bytes(&one), 1)).unwrap();
    requests.send(request(3, Operation::LookupAccounts, records_as_bytes(&[AccountId(3)]), 1)).unwrap();
    gate.wait_entered(syncs_before);
    wait_until("apply to run op 2", || metrics.op_applied.load(Ordering::Acquire) >= 2);
    assert_eq!(metrics.op_durable.load(Ordering::Acquire), 1, "the sync is held: op 2 is not durable");
    match replies.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(early) => {
            panic!("the reply to request {} (op {}) left before its sync returned", early.request_id, early.op)
        }
        Err(TryRecvError::Disconnected) => panic!("the reply stage stopped"),
    }

    gate.release();
    let transferred = replies.recv_timeout(WAIT_MAX).expect("the transfer's reply once the sync returns");
    assert_eq!((transferred.request_id, transferred.op, transferred.record_count), (2, 2, 0), "transfer at op 2");
    assert!(metrics.op_durable.load(Ordering::Acquire) >= 2, "its reply came after op 2 was durable");
    let read = replies.recv_timeout(WAIT_MAX).expect("the read's reply");
    assert_eq!(read.request_id, 3, "the read waited behind the write");
    let account: Account = walletd_core::types::record_from_bytes::<Account>(&read.body);
    assert_eq!(account.credits_posted, Amount(10), "the read sees the transfer before it");
    assert_eq!(replies_while_held.load(Ordering::SeqCst), 0, "no reply left while a sync was held");
    drop(requests);
    node.shutdown();
}

/// Sends `batches` transfer batches and waits for every reply.
fn submit_transfers(node: &Node, replies: &mpsc::Receiver<Got>, id_first: u64, batches: u64) {
    let requests = node.pipeline.requests();
    for batch in 0..batches {
        let id = id_first + batch;
        let transfers: Vec<Transfer> =
            (0..5u64).map(|i| transfer(u128::from(id * 100 + i), 1 + u128::from(i % 2), 3, 1)).collect();
        requests.send(request(id, Operation::CreateTransfers, records_as_bytes(&transfers), 5)).unwrap();
    }
    for _ in 0..batches {
        replies.recv_timeout(Duration::from_secs(10)).expect("a reply");
    }
}

/// The pipeline's journal stage signs every checkpoint; a node that starts signing seals what
/// it recovered with a checkpoint first; the drill verifies it all with the public key.
#[test]
fn the_pipeline_signs_its_checkpoints_and_seals_what_it_recovered() {
    use walletd_replay::{DrillOptions, ReplayError, SigningKey, Verification};
    let root = tempfile::tempdir().unwrap();
    let dir = DataDir::new(root.path());
    let (node, replies) = start(&dir);
    let accounts: Vec<Account> =
        (1..=4u128).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect();
    node.pipeline.requests().send(request(1, Operation::CreateAccounts, records_as_bytes(&accounts), 4)).unwrap();
    replies.recv_timeout(Duration::from_secs(10)).expect("accounts created");
    submit_transfers(&node, &replies, 2, 6);
    let op_unsigned_end = node.pipeline.metrics.op_durable.load(std::sync::atomic::Ordering::Acquire);
    node.shutdown();

    let key = SigningKey::from_bytes(&[5; 32]);
    let mut signing = options();
    signing.pipeline.trust.signing_key = Some(key.clone());
    let (sender, replies) = mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    let route = Arc::new(move |reply: &Reply<'_>| {
        let got = Got { request_id: reply.request_id, op: reply.op, record_count: 0, body: Vec::new() };
        sender.lock().unwrap().send(got).unwrap()
    });
    let node = Node::start(&dir, signing, route).unwrap();
    assert_eq!(node.started.op, op_unsigned_end);
    submit_transfers(&node, &replies, 10, 9);
    node.shutdown();

    let mut reader =
        walletd_journal::Reader::open(walletd_journal::FileStorage::default(), root.path(), op_unsigned_end + 1)
            .unwrap();
    let seal = reader.next_record().unwrap().expect("the signing node's first record");
    assert_eq!(seal.kind, walletd_journal::RecordKind::Checkpoint, "a checkpoint seals the recovered journal");
    assert_eq!(seal.body.len(), walletd_replay::CHECKPOINT_SIGNED_SIZE_BYTES, "signed");

    let verify = |key: SigningKey| DrillOptions {
        from_genesis: true,
        until_op: None,
        verification: Verification {
            verify_key: Some(key.verifying_key()),
            signatures_required: true,
            expect_head: None,
        },
    };
    let report = walletd_replay::drill(&dir, &verify(key.clone())).expect("every signature verifies");
    assert!(report.trust.checkpoints_signed_verified >= 3, "{:?}", report.trust);
    assert!(report.trust.ops_unsigned_tail <= 4, "at most checkpoint_ops uncovered: {:?}", report.trust);
    let other = walletd_replay::drill(&dir, &verify(SigningKey::from_bytes(&[6; 32])));
    assert!(matches!(other, Err(ReplayError::CheckpointSignature { op, .. }) if op == op_unsigned_end + 1));
}
