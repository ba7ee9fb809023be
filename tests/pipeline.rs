//! The pipeline without the network: requests in through the channel, replies captured from
//! the route. Replies carry the outcomes, arrive only once durable, reads see the writes before
//! them, and after a restart the state is the one that was acknowledged.

mod common;

use common::transfer;
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
    (Node::start(dir, options(), route).unwrap(), receiver)
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
