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
