//! The pipeline without the network: requests in through the channel, replies captured from
//! the route. Replies carry the outcomes, arrive only once durable, reads see the writes before
//! them, and after a restart the state is the one that was acknowledged.

mod common;

use common::transfer;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use walletd::generate::config_for;
use walletd::node::{Node, NodeOptions};
use walletd::pipeline::{PipelineOptions, Reply, Request};
use walletd_core::command::records_as_bytes;
use walletd_core::{Account, AccountId, Amount, Operation, Transfer};
use walletd_gateway::protocol::FrameOperation;
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
    let (sender, receiver) = mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    let route = Arc::new(move |reply: &Reply<'_>| {
        let got = Got {
            request_id: reply.request_id,
            op: reply.op,
            record_count: reply.record_count,
            body: reply.body.to_vec(),
        };
        sender.lock().unwrap().send(got).unwrap()
    });
    (Node::start(dir, options, route).unwrap(), receiver)
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
