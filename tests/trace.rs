//! Trace ids end to end, on the real binaries and real sockets: an HTTP request's
//! `traceparent` reaches the journal with that request's transfer (read back by the follower,
//! read-only on the live data directory, and by `walletd journal print`), however the gateway
//! coalesced requests into frames; the Rust client's traced calls, mixed with untraced ones from
//! other threads into shared frames, keep each event's trace id; a traced frame of the wrong
//! size is refused with `bad_body_size` on a kept connection, and nothing is journaled.

mod common;
mod http_harness;

use http_harness::{http_raw, token, Engine, Gateway};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use walletd_core::{Batch, Transfer};
use walletd_gateway::protocol::{
    batch_request_traced_append, frame_append, header_seal, FrameHeader, FrameOperation, FLAG_TRACED,
};
use walletd_gateway::{Client, ClientOptions, Status, HEADER_SIZE_BYTES};
use walletd_replay::{FollowOptions, Follower, Outcome};

const UNLIMITED: &[&str] = &["--rate-limit-per-s", "0"];

/// Every transfer in the durable journal of `dir` so far: id → the trace id it was journaled
/// with. Reads until the follower has caught up with the durable mark and holds `expected_count`
/// transfers at least, or the deadline passes.
fn journaled_traces(dir: &Path, expected_count: usize) -> BTreeMap<u128, u128> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut follower = Follower::open(dir, None, FollowOptions::default()).expect("open a follower");
    let mut traces = BTreeMap::new();
    loop {
        while let Some(op) = follower.next_op().expect("the follower reads every durable op") {
            if let Outcome::Command { batch: Batch::CreateTransfers(transfers), trace_ids, .. } = op.outcome {
                for (index, transfer) in transfers.iter().enumerate() {
                    traces.insert(transfer.id.0, trace_ids.get(index));
                }
            }
        }
        if traces.len() >= expected_count {
            return traces;
        }
        assert!(Instant::now() < deadline, "only {} of {expected_count} transfers were journaled", traces.len());
        follower.wait(Duration::from_millis(50)).expect("wait for the durable mark");
    }
}

fn traceparent(trace_id: u128) -> String {
    format!("00-{trace_id:032x}-00f067aa0ba902b7-01")
}

fn wallet(gateway: SocketAddr, user: &str) -> String {
    let body = json!({ "currency": "USD" }).to_string();
    let response = http_raw(gateway, "POST", "/v1/wallets", Some(&token(user, &[])), Some(&body), &[]);
    assert_eq!(response.status, 201, "{response:?}");
    response.json["id"].as_str().unwrap().to_string()
}

fn id_of(text: &str) -> u128 {
    walletd_http::ids::id_parse(text).expect("a UUID")
}

#[test]
fn an_http_request_trace_id_is_journaled_with_its_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let gateway = Gateway::start(engine.addr, UNLIMITED);
    let addr = gateway.addr;
    let alice = wallet(addr, "alice");
    let bob = wallet(addr, "bob");
    let deposit = json!({ "wallet_id": alice, "amount": "100.00", "currency": "USD", "idempotency_key": "d1" });
    let response =
        http_raw(addr, "POST", "/v1/deposits", Some(&token("ops", &["operator"])), Some(&deposit.to_string()), &[]);
    assert_eq!(response.status, 201, "{response:?}");

    // Concurrent single transfers, each with its own trace: the gateway may put them in one
    // frame; each must keep its own trace id.
    let count = 8u128;
    let barrier = Arc::new(Barrier::new(count as usize));
    let senders: Vec<_> = (1..=count)
        .map(|index| {
            let (alice, bob, barrier) = (alice.clone(), bob.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let trace_id = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_0000 | index;
                let header = traceparent(trace_id);
                let body = json!({ "sender_id": alice, "receiver_id": bob, "amount": "1.00",
                    "idempotency_key": format!("t{index}") })
                .to_string();
                barrier.wait();
                let headers = [("traceparent", header.as_str())];
                let response =
                    http_raw(addr, "POST", "/v1/transfers", Some(&token("alice", &[])), Some(&body), &headers);
                assert_eq!(response.status, 201, "{response:?}");
                let returned = response.header("traceparent").expect("the trace is returned").to_string();
                assert!(returned.starts_with(&format!("00-{trace_id:032x}-")), "{returned}");
                (id_of(response.json["transaction_id"].as_str().unwrap()), trace_id)
            })
        })
        .collect();
    let mut expected: Vec<(u128, u128)> = senders.into_iter().map(|sender| sender.join().unwrap()).collect();

    // A batch request: every transfer of it carries the request's trace id.
    let batch_trace = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
    let items: Vec<_> = (0..3)
        .map(|index| json!({ "sender_id": alice, "receiver_id": bob, "amount": "0.50", "idempotency_key": format!("b{index}") }))
        .collect();
    let body = json!({ "transfers": items }).to_string();
    let header = traceparent(batch_trace);
    let response = http_raw(
        addr,
        "POST",
        "/v1/transfers/batch",
        Some(&token("alice", &[])),
        Some(&body),
        &[("traceparent", &header)],
    );
    assert_eq!(response.status, 200, "{response:?}");
    for result in response.json["results"].as_array().expect("results") {
        expected.push((id_of(result["transfer"]["transaction_id"].as_str().expect("an id")), batch_trace));
    }
    // A request without a traceparent gets one made by the gateway, and that one is journaled.
    let body = json!({ "sender_id": alice, "receiver_id": bob, "amount": "0.25", "idempotency_key": "n1" });
    let response = http_raw(addr, "POST", "/v1/transfers", Some(&token("alice", &[])), Some(&body.to_string()), &[]);
    assert_eq!(response.status, 201, "{response:?}");
    let made = response.header("traceparent").expect("a trace is made").split('-').nth(1).unwrap().to_string();
    expected.push((id_of(response.json["transaction_id"].as_str().unwrap()), u128::from_str_radix(&made, 16).unwrap()));

    // The deposit is a transfer too, with its own (made) trace: 1 + the ones above.
    let journaled = journaled_traces(dir.path(), expected.len() + 1);
    for (id, trace_id) in &expected {
        assert_eq!(journaled.get(id), Some(trace_id), "transfer {id:032x} is journaled with its request's trace");
    }
    assert!(journaled.values().all(|trace_id| *trace_id != 0), "every HTTP transfer is traced: {journaled:x?}");

    // `walletd journal print` shows them.
    let printed = std::process::Command::new(http_harness::WALLETD)
        .args(["journal", "print", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("walletd journal print runs");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(text.contains(" UTC create_transfers ") && text.contains(" events traced checksum "), "{text}");
    for (id, trace_id) in &expected {
        let line =
            text.lines().find(|line| line.contains(&format!("transfer {id:032x} "))).expect("the transfer is printed");
        assert!(line.ends_with(&format!("trace {trace_id:032x}")), "{line}");
    }
}

fn client(addr: SocketAddr, linger: Duration) -> Client {
    let options =
        ClientOptions { request_timeout: Duration::from_secs(30), batch_linger: linger, ..ClientOptions::default() };
    Client::connect(addr, options).expect("client connects")
}

/// Threads share one client and its batcher: traced and untraced calls coalesce into frames,
/// and every transfer is journaled with its own call's trace id (0 for the untraced calls).
#[test]
fn traced_and_untraced_calls_coalesce_and_keep_their_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, _) = common::serve_binary(dir.path(), &["--http", "off"]);
    let shared = Arc::new(client(addr, Duration::from_millis(20)));
    shared.create_accounts(&common::accounts(8)).expect("accounts");
    let threads = 6u128;
    let calls = 20u128;
    let barrier = Arc::new(Barrier::new(threads as usize));
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (client, barrier) = (Arc::clone(&shared), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut sent = Vec::new();
                for call in 0..calls {
                    let low = 1000 * (thread + 1) + call * 4;
                    let transfers: Vec<Transfer> =
                        (0..3).map(|index| common::transfer(low + index, 1 + thread % 4, 5 + index % 4, 1)).collect();
                    let traced = (thread + call) % 2 == 0;
                    let trace_ids: Vec<u128> =
                        (0..3).map(|index| (thread << 96) | (call << 32) | (index + 1)).collect();
                    let failures = if traced {
                        client.create_transfers_traced(&transfers, &trace_ids)
                    } else {
                        client.create_transfers(&transfers)
                    };
                    assert!(failures.expect("acknowledged").is_empty());
                    for (transfer, trace_id) in transfers.iter().zip(&trace_ids) {
                        sent.push((transfer.id.0, if traced { *trace_id } else { 0 }));
                    }
                }
                sent
            })
        })
        .collect();
    let expected: Vec<(u128, u128)> = workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect();
    let journaled = journaled_traces(dir.path(), expected.len());
    assert_eq!(journaled.len(), expected.len());
    for (id, trace_id) in &expected {
        assert_eq!(journaled.get(id), Some(trace_id), "transfer {id:032x}");
    }
    // Whether calls shared frames depends on timing; say how many mixed ones there were.
    let mut follower = Follower::open(dir.path(), None, FollowOptions::default()).unwrap();
    let (mut frames, mut mixed) = (0, 0);
    while let Some(op) = follower.next_op().unwrap() {
        if let Outcome::Command { batch: Batch::CreateTransfers(transfers), trace_ids, .. } = op.outcome {
            frames += 1;
            let zeros = (0..transfers.len()).filter(|&index| trace_ids.get(index) == 0).count();
            mixed += usize::from(zeros > 0 && zeros < transfers.len());
        }
    }
    eprintln!("{frames} create_transfers commands, {mixed} mixing traced and untraced calls");
}

/// Writes `frame` and reads one reply header off a raw connection.
fn exchange(stream: &mut TcpStream, frame: &[u8]) -> FrameHeader {
    stream.write_all(frame).expect("write");
    let mut header = [0u8; HEADER_SIZE_BYTES];
    stream.read_exact(&mut header).expect("a reply");
    let header = FrameHeader::decode(&header).expect("a valid reply header");
    let mut body = vec![0u8; header.body_size_bytes as usize];
    stream.read_exact(&mut body).expect("the reply body");
    header
}

#[test]
fn a_traced_frame_of_the_wrong_size_is_refused_and_the_connection_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, _) = common::serve_binary(dir.path(), &["--http", "off"]);
    client(addr, Duration::ZERO).create_accounts(&common::accounts(2)).expect("accounts");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let transfers = [common::transfer(1, 1, 2, 5)];
    // The traced bit without the trailer.
    let untraced_body = walletd_core::command::records_as_bytes(&transfers[..]).to_vec();
    let operation = FrameOperation::Ledger(walletd_core::Operation::CreateTransfers);
    let header = FrameHeader { flags: FLAG_TRACED, ..FrameHeader::request(operation, 1, 7, 1) };
    let mut frame = Vec::new();
    frame_append(&header, &untraced_body, &mut frame);
    let reply = exchange(&mut stream, &frame);
    assert_eq!((reply.request_id, reply.status), (1, Status::BadBodySize as u16));
    // A reserved flag bit beside the traced one, on a correct traced body.
    let mut frame = Vec::new();
    batch_request_traced_append(&Batch::CreateTransfers(&transfers), &[42], 2, 7, &mut frame);
    let mut bad_flags = frame.clone();
    bad_flags[40] |= 1 << 3; // bit 2 is the timestamp flag; bit 3 is reserved
    let mut sealed: [u8; HEADER_SIZE_BYTES] = bad_flags[..HEADER_SIZE_BYTES].try_into().unwrap();
    header_seal(&mut sealed);
    bad_flags[..HEADER_SIZE_BYTES].copy_from_slice(&sealed);
    let reply = exchange(&mut stream, &bad_flags);
    assert_eq!((reply.request_id, reply.status), (2, Status::BadBodySize as u16));
    // The same connection then takes the well-formed traced frame.
    let reply = exchange(&mut stream, &frame);
    assert_eq!((reply.request_id, reply.status, reply.event_count), (2, Status::Ok as u16, 0));
    let journaled = journaled_traces(dir.path(), 1);
    assert_eq!(journaled.into_iter().collect::<Vec<_>>(), [(transfers[0].id.0, 42)], "only the good frame");
}

/// A data directory the walletd before traces wrote (`walletd generate --transfers 400
/// --accounts 20 --batch 100 --segment-size 65536`, its snapshot left out): its commands are
/// untraced and replay to the state hash that run recorded; a node started on it journals
/// traced commands after them, and the mixed journal replays with every checkpoint verified.
#[test]
fn a_journal_from_before_traces_replays_unchanged_and_takes_traced_commands_after_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-before-traces");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("journal")).unwrap();
    for file in ["ledger.conf", "op_durable", "journal/segment-00000000000000000001.wal"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).expect("copy the fixture");
    }
    let replay = |dir: &Path| {
        let output = std::process::Command::new(http_harness::WALLETD)
            .args(["replay", "--from-genesis", "--data-dir"])
            .arg(dir)
            .output()
            .expect("walletd replay runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let before = replay(dir.path());
    assert!(before.contains("state hash    d7ea702b694a380949e4a4ebc52725de"), "{before}");
    assert!(before.contains("journal head  6:a73f1002351e8ff7cc7bd3106ce7d608"), "{before}");
    assert!(before.contains("1 checkpoints verified"), "{before}");
    let journaled = journaled_traces(dir.path(), 400);
    assert_eq!(journaled.len(), 400);
    assert!(journaled.values().all(|trace_id| *trace_id == 0), "an old journal's events have no trace");

    let (server, addr, _) = common::serve_binary(dir.path(), &["--http", "off", "--checkpoint-ops", "2"]);
    let client = client(addr, Duration::ZERO);
    let transfers: Vec<Transfer> = (1..=4).map(|low| common::transfer(1_000_000 + low, 1 + low, 10 + low, 1)).collect();
    let failures = client.create_transfers_traced(&transfers, &[11, 12, 0, 14]).expect("acknowledged");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(client.create_transfers(&[common::transfer(2_000_000, 3, 4, 1)]).expect("acknowledged").is_empty());
    drop(client);
    drop(server);
    let journaled = journaled_traces(dir.path(), 405);
    let traced: Vec<u128> = transfers.iter().map(|transfer| journaled[&transfer.id.0]).collect();
    assert_eq!(traced, [11, 12, 0, 14]);
    let after = replay(dir.path());
    assert!(after.contains("checkpoints verified"), "{after}");
    assert!(!after.contains(" 1 checkpoints verified"), "the node added checkpoints: {after}");
}
