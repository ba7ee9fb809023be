//! The server end to end, on a real socket and real files: create and transfer through the
//! client, restart, same balances; every malformed frame gets its documented reply (or a
//! closed connection), the server keeps serving everyone else, and nothing of it reaches the
//! ledger; a peer that stalls mid-frame, idle connections and connections over the limit are
//! shed; a ping reply tells the server's limits; a retried request after a reconnect returns
//! the original outcome; and the real binary, SIGKILLed under load, restarts with every
//! acknowledged transfer and the state hash `walletd replay` computes. No test sleeps for a
//! fixed time or asserts a duration: each waits, with a bounded deadline, for the event it
//! needs (a reply, a close, a metric reaching a value).

mod common;

use common::{accounts, serve_binary, transfer, ServerChild};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use walletd::generate::config_for;
use walletd::node::NodeOptions;
use walletd::pipeline::PipelineOptions;
use walletd::serve::{serve_start, RunningServer, ServeOptions};
use walletd_core::command::records_as_bytes;
use walletd_core::{Account, AccountId, Amount, CreateTransferResult, Operation, Transfer, TransferId};
use walletd_gateway::protocol::{
    frame_append, header_seal, request_append, results_timestamped_decode, FrameHeader, FrameOperation, Status,
    FLAG_REPLY, FLAG_TIMESTAMP, HEADER_SIZE_BYTES,
};
use walletd_gateway::server::ServerOptions;
use walletd_gateway::{Client, ClientOptions};
use walletd_replay::data_dir::DataDir;

fn server(dir: &Path, frame_timeout: Duration, connections_max: usize) -> RunningServer {
    server_with(dir, ServerOptions { frame_timeout, connections_max, ..ServerOptions::default() })
}

fn server_with(dir: &Path, server: ServerOptions) -> RunningServer {
    let options = ServeOptions {
        data_dir: DataDir::new(dir),
        addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        node: NodeOptions {
            config: config_for(1000),
            segment_size_bytes: 4 << 20,
            pipeline: PipelineOptions { checkpoint_ops: 16, snapshot_ops: 64, ..PipelineOptions::default() },
        },
        server,
    };
    serve_start(options).expect("server starts")
}

fn client(addr: SocketAddr) -> Client {
    let options = ClientOptions { request_timeout: Duration::from_secs(20), ..ClientOptions::default() };
    Client::connect(addr, options).expect("client connects")
}

#[test]
fn create_transfer_restart_same_balances() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let client_one = client(running.local_addr);
    assert!(client_one.create_accounts(&accounts(3)).unwrap().is_empty());
    let transfers: Vec<Transfer> = (1..=100u128).map(|i| transfer(i, 1 + i % 2, 3, i)).collect();
    assert!(client_one.create_transfers(&transfers).unwrap().is_empty());
    let before = client_one.lookup_accounts(&[AccountId(1), AccountId(2), AccountId(3)]).unwrap();
    assert_eq!(before[2].credits_posted, Amount((1..=100).sum()));
    drop(client_one);
    running.shutdown();

    let running = server(dir.path(), Duration::from_secs(10), 16);
    assert!(running.started.op >= 2);
    let client_two = client(running.local_addr);
    let after = client_two.lookup_accounts(&[AccountId(1), AccountId(2), AccountId(3)]).unwrap();
    assert_eq!(after, before, "the same balances after a restart");
    drop(client_two);
    running.shutdown();
}

/// A create's reply carries the timestamp its events were applied at: every caller of the
/// client, its calls coalesced into shared frames, learns each new transfer's stored timestamp
/// (what a lookup returns) without reading it back; a raw frame without the timestamp bit gets
/// the reply it always got, and the bit on a read is refused.
#[test]
fn a_create_reply_carries_the_timestamp_each_event_was_applied_at() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let shared = std::sync::Arc::new(client(running.local_addr));
    assert!(shared.create_accounts(&accounts(3)).unwrap().is_empty());
    let callers: Vec<_> = (0..4u128)
        .map(|caller| {
            let shared = std::sync::Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut created = Vec::new();
                for round in 0..20u128 {
                    // Every seventh transfer fails (debit = credit), so results and timestamps
                    // interleave.
                    let transfers: Vec<Transfer> = (0..1 + (round % 5))
                        .map(|i| {
                            let low = caller << 32 | round << 8 | i;
                            let credit = if (round + i) % 7 == 3 { 1 } else { 2 };
                            transfer(low + 1, 1, credit, 1 + i)
                        })
                        .collect();
                    let answer = shared.create_transfers_created(&transfers, None).unwrap();
                    created.push((transfers, answer));
                }
                created
            })
        })
        .collect();
    let mut timestamps = std::collections::HashSet::new();
    for caller in callers {
        for (transfers, answer) in caller.join().unwrap() {
            assert!(answer.op > 0 && answer.timestamp_ns > 0);
            let failed: Vec<u32> = answer.results.iter().map(|result| result.index).collect();
            let expected: Vec<u32> = (0..transfers.len() as u32)
                .filter(|&index| transfers[index as usize].credit_account_id == AccountId(1))
                .collect();
            assert_eq!(failed, expected, "the failures, indexed into the caller's own transfers");
            let ids: Vec<TransferId> = transfers.iter().map(|transfer| transfer.id).collect();
            let stored = shared.lookup_transfers(&ids).unwrap();
            assert_eq!(stored.len(), transfers.len() - failed.len());
            for record in stored {
                let index = transfers.iter().position(|transfer| transfer.id == record.transfer.id).unwrap();
                let timestamp = answer.timestamp_ns + index as u64;
                assert_eq!(record.transfer, Transfer { timestamp, ..transfers[index] }, "stored as sent, at t + i");
                assert!(timestamps.insert(timestamp), "every timestamp is unique");
            }
        }
    }
    drop(shared);

    let mut stream = TcpStream::connect(running.local_addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (header, body) = exchange_body(&mut stream, &create_frame(1, 50)).unwrap();
    assert_eq!((header.status, header.flags, body.len()), (0, FLAG_REPLY, 0), "no bit: the reply as before");
    let stamped = patched(create_frame(2, 51), 40, &FLAG_TIMESTAMP.to_le_bytes());
    let (header, body) = exchange_body(&mut stream, &stamped).unwrap();
    assert_eq!((header.status, header.flags, header.event_count), (0, FLAG_REPLY | FLAG_TIMESTAMP, 0));
    let mut results = Vec::new();
    let operation = FrameOperation::Ledger(Operation::CreateAccounts);
    let timestamp_ns = results_timestamped_decode(operation, 0, &body, &mut results).unwrap();
    let account = client(running.local_addr).lookup_accounts(&[AccountId(51)]).unwrap();
    assert_eq!(account[0].timestamp, timestamp_ns, "the trailer is the account's timestamp");
    let read = patched(good_frame(3), 40, &FLAG_TIMESTAMP.to_le_bytes());
    let (header, _) = exchange_body(&mut stream, &read).unwrap();
    assert_eq!(header.status, Status::BadBodySize as u16, "the timestamp bit on a read is refused");
    running.shutdown();
}

/// Writes raw bytes and reads one reply header (None if the connection closed).
fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<FrameHeader> {
    stream.write_all(bytes).ok()?;
    reply_read(stream)
}

fn reply_read(stream: &mut TcpStream) -> Option<FrameHeader> {
    reply_read_body(stream).map(|(header, _)| header)
}

/// Writes raw bytes and reads one reply, header and body (None if the connection closed).
fn exchange_body(stream: &mut TcpStream, bytes: &[u8]) -> Option<(FrameHeader, Vec<u8>)> {
    stream.write_all(bytes).ok()?;
    reply_read_body(stream)
}

fn reply_read_body(stream: &mut TcpStream) -> Option<(FrameHeader, Vec<u8>)> {
    let mut header = [0u8; HEADER_SIZE_BYTES];
    stream.read_exact(&mut header).ok()?;
    let header = FrameHeader::decode(&header).expect("the server's reply decodes");
    let mut body = vec![0u8; header.body_size_bytes as usize];
    stream.read_exact(&mut body).ok()?;
    Some((header, body))
}

/// How long a test waits for an event (a reply, a close) before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits for the server to close the connection: true at end of stream (or a reset), false if
/// it is still open at the deadline. Bytes that arrive first are read and dropped.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// Polls `condition` until it holds; fails after `DEADLINE`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn good_frame(request_id: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    let ids = [AccountId(1)];
    request_append(
        FrameOperation::Ledger(Operation::LookupAccounts),
        request_id,
        7,
        records_as_bytes(&ids),
        1,
        &mut frame,
    );
    frame
}

fn create_frame(request_id: u64, low: u128) -> Vec<u8> {
    let mut frame = Vec::new();
    let account = [Account { id: AccountId(low), ledger: 1, code: 1, ..Account::default() }];
    request_append(
        FrameOperation::Ledger(Operation::CreateAccounts),
        request_id,
        7,
        records_as_bytes(&account),
        1,
        &mut frame,
    );
    frame
}

/// Patches a header field and reseals the header checksum.
fn patched(mut frame: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    let header: &mut [u8; HEADER_SIZE_BYTES] = (&mut frame[..HEADER_SIZE_BYTES]).try_into().unwrap();
    header_seal(header);
    frame
}

#[test]
fn malformed_frames_get_their_replies_and_never_reach_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 64);
    let addr = running.local_addr;
    let op_before = running_op_durable(&running);
    // Errors that lose the framing: a reply with the status, then the connection closes.
    let closing: Vec<(Vec<u8>, Status)> = vec![
        (
            {
                let mut f = create_frame(1, 900);
                f[0] = b'X';
                f
            },
            Status::BadMagic,
        ),
        (patched(create_frame(2, 901), 4, &2u16.to_le_bytes()), Status::BadVersion),
        (
            {
                let mut f = create_frame(3, 902);
                f[20] ^= 1;
                f
            },
            Status::BadHeaderChecksum,
        ),
        (patched(create_frame(4, 903), 36, &(2u32 << 20).to_le_bytes()), Status::BodyTooLarge),
        // Request id 0 is reserved for replies about the connection: refused, and closed, even
        // when the frame has another fault too.
        (create_frame(0, 904), Status::RequestIdZero),
        (
            {
                let mut f = create_frame(0, 905);
                let last = f.len() - 1;
                f[last] ^= 1;
                f
            },
            Status::RequestIdZero,
        ),
    ];
    for (frame, status) in closing {
        let mut stream = TcpStream::connect(addr).unwrap();
        let reply = exchange(&mut stream, &frame).expect("an error reply before closing");
        assert_eq!(reply.status, status as u16, "{status:?}");
        assert!(closed(&mut stream), "{status:?} closes the connection");
    }
    // Errors that spoil one request: the reply, and the same connection goes on working.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let kept: Vec<(Vec<u8>, Status)> = vec![
        (
            {
                let mut f = create_frame(10, 910);
                let last = f.len() - 1;
                f[last] ^= 1;
                f
            },
            Status::BadBodyChecksum,
        ),
        (patched(create_frame(11, 911), 6, &999u16.to_le_bytes()), Status::UnknownOperation),
        (patched(create_frame(12, 912), 32, &2u32.to_le_bytes()), Status::BadBodySize),
        (patched(create_frame(13, 913), 40, &1u16.to_le_bytes()), Status::BadBodySize),
        (too_many_events_frame(14), Status::TooManyEvents),
        (empty_create_frame(15), Status::NoEvents),
    ];
    for (frame, status) in kept {
        let reply = exchange(&mut stream, &frame).expect("a reply, connection kept");
        assert_eq!(reply.status, status as u16, "{status:?}");
        let ok = exchange(&mut stream, &good_frame(99)).expect("the connection still serves");
        assert_eq!((ok.status, ok.request_id), (0, 99));
    }
    // A frame cut short, then closed: the server drops that connection only.
    let mut cut = TcpStream::connect(addr).unwrap();
    cut.write_all(&create_frame(20, 920)[..100]).unwrap();
    drop(cut);
    let check = client(addr);
    let found = check.lookup_accounts(&(900..=920u128).map(AccountId).collect::<Vec<_>>()).unwrap();
    assert!(found.is_empty(), "no malformed request created anything: {found:?}");
    assert_eq!(running_op_durable(&running), op_before, "nothing malformed was journaled");
    drop(check);
    running.shutdown();
}

/// A create_accounts request without accounts: it would be journaled and change nothing.
fn empty_create_frame(request_id: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    request_append(FrameOperation::Ledger(Operation::CreateAccounts), request_id, 7, &[], 0, &mut frame);
    frame
}

fn too_many_events_frame(request_id: u64) -> Vec<u8> {
    // 8190 ids claimed in the header (one over the limit), with a body to match.
    let ids = vec![0u8; 8190 * 16];
    let header = FrameHeader::request(FrameOperation::Ledger(Operation::LookupAccounts), request_id, 7, 8190);
    let mut frame = Vec::new();
    frame_append(&header, &ids, &mut frame);
    frame
}

fn running_op_durable(running: &RunningServer) -> u64 {
    metrics_of(running.metrics_addr.expect("metrics on")).0
}

/// (op_durable, state hash text) from the metrics endpoint.
fn metrics_of(addr: SocketAddr) -> (u64, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let op =
        text.lines().find_map(|l| l.strip_prefix("walletd_op_durable ")).expect("op_durable").trim().parse().unwrap();
    let hash = text.lines().find_map(|l| l.split("state_hash=\"").nth(1)).expect("state info")[..32].to_string();
    (op, hash)
}

#[test]
fn a_stalled_half_frame_and_excess_connections_are_shed() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(1), 2);
    let addr = running.local_addr;
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(&create_frame(1, 930)[..40]).unwrap();
    assert!(closed(&mut stalled), "a peer that stalls mid-frame is disconnected");
    let _first = client(addr);
    let _second = client(addr);
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = reply_read(&mut third).expect("a busy reply");
    assert_eq!(reply.status, Status::Busy as u16);
    assert!(closed(&mut third));
    let ok = exchange(&mut TcpStream::connect(addr).unwrap(), &good_frame(5));
    assert!(ok.is_none() || ok.unwrap().status == Status::Busy as u16, "still at the limit");
    drop(_first);
    drop(_second);
    running.shutdown();
}

#[test]
fn idle_connections_at_the_limit_are_cut_and_a_new_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        ServerOptions { connections_max: 2, idle_timeout: Duration::from_secs(1), ..ServerOptions::default() };
    let running = server_with(dir.path(), options);
    let metrics = running.metrics_addr.unwrap();
    // Two sockets that never send a byte take every connection slot.
    let mut idle = [TcpStream::connect(running.local_addr).unwrap(), TcpStream::connect(running.local_addr).unwrap()];
    wait_until("both idle sockets hold a slot", || metric(metrics, "walletd_connections_open") == 2);
    for stream in &mut idle {
        assert!(closed(stream), "the server closes an idle connection");
    }
    let late = client(running.local_addr);
    late.ping().expect("a new client is served once the idle connections are cut");
    drop(late);
    running.shutdown();
}

#[test]
fn a_ping_reply_tells_the_server_limits_and_old_clients_still_ping() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        connections_max: 7,
        frame_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(42),
        ..ServerOptions::default()
    };
    let running = server_with(dir.path(), options);
    let config = config_for(1000).validated().unwrap();
    let client = client(running.local_addr);
    let info = client.server_info().unwrap().expect("this server sends its limits");
    assert_eq!(info.transfers_max, config.transfers_max, "the idempotency window");
    assert_eq!(info.id_future_ms_max, config.id_future_ms_max);
    assert_eq!(info.batch_events_max, config.batch_events_max);
    assert_eq!((info.accounts_max, info.pending_max), (config.accounts_max, config.pending_max));
    assert_eq!((info.limits_max, info.ledgers_max), (config.limits_max, config.ledgers_max));
    assert_eq!((info.connections_max, info.frame_timeout_ms, info.idle_timeout_ms), (7, 3000, 42_000));
    // A client that expects an empty ping reply checks only that it has no records.
    client.ping().expect("ping works as before");
    let mut stream = TcpStream::connect(running.local_addr).unwrap();
    let mut ping = Vec::new();
    request_append(FrameOperation::Ping, 1, 7, &[], 0, &mut ping);
    let reply = exchange(&mut stream, &ping).expect("a ping reply");
    assert_eq!((reply.status, reply.event_count, reply.op), (0, 0, 0));
    assert_eq!(reply.body_size_bytes as usize, walletd_gateway::protocol::SERVER_INFO_SIZE_BYTES);
    drop((client, stream));
    running.shutdown();
}

#[test]
fn a_retried_request_after_a_reconnect_returns_the_original_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let first = client(running.local_addr);
    first.create_accounts(&accounts(2)).unwrap();
    let payment = transfer(1, 1, 2, 500);
    assert!(first.create_transfers(&[payment]).unwrap().is_empty());
    drop(first); // the connection is gone, as if the reply had been lost
    let second = client(running.local_addr);
    let results = second.create_transfers(&[payment]).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].code, CreateTransferResult::Exists as u32, "the original outcome, not a second payment");
    let changed = Transfer { amount: Amount(501), ..payment };
    assert_eq!(
        second.create_transfers(&[changed]).unwrap()[0].code,
        CreateTransferResult::ExistsWithDifferentAmount as u32
    );
    let balances = second.lookup_accounts(&[AccountId(2)]).unwrap();
    assert_eq!(balances[0].credits_posted, Amount(500), "money moved once");
    drop(second);
    running.shutdown();
}

/// A child server killed when dropped, so a failing test leaves no server running.
/// Starts the real binary; returns it and the addresses it printed.
fn binary_start(dir: &Path) -> (ServerChild, SocketAddr, SocketAddr) {
    let args = ["--metrics-addr", "127.0.0.1:0", "--checkpoint-ops", "16", "--snapshot-ops", "64"];
    let (child, addr, metrics) =
        serve_binary(dir, &[&args[..], &["--segment-size", "8388608", "--accounts-max", "4096"]].concat());
    (child, addr, metrics.expect("a metrics address"))
}

#[test]
fn kill_9_under_load_keeps_every_acknowledged_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, metrics) = binary_start(dir.path());
    let load = std::sync::Arc::new(client(addr));
    load.create_accounts(&accounts(100)).unwrap();
    let mut acknowledged: Vec<Transfer> = Vec::new();
    let mut low = 0u128;
    let requests = "walletd_requests_total{operation=\"create_transfers\"}";
    // 20 acknowledged batches, then SIGKILL once a 21st has reached the server.
    for round in 0..=20u64 {
        let batch: Vec<Transfer> = (0..500)
            .map(|_| {
                low += 1;
                transfer(low, 1 + low % 50, 51 + low % 50, 1 + low % 7)
            })
            .collect();
        if round == 20 {
            let in_flight = batch.clone();
            let sender = std::thread::spawn({
                let load = std::sync::Arc::clone(&load);
                move || load.create_transfers(&in_flight)
            });
            wait_until("the last batch reaches the server", || metric(metrics, requests) > round);
            child.0.kill().unwrap();
            let _ = sender.join();
            break;
        }
        assert!(load.create_transfers(&batch).unwrap().is_empty());
        acknowledged.extend(batch);
    }
    let _ = child.0.wait();
    assert!(acknowledged.len() >= 5000, "load ran");

    let (mut child, addr, metrics) = binary_start(dir.path());
    let check = client(addr);
    for chunk in acknowledged.chunks(7000) {
        let ids: Vec<TransferId> = chunk.iter().map(|t| t.id).collect();
        let found = check.lookup_transfers(&ids).unwrap();
        assert_eq!(found.len(), chunk.len(), "every acknowledged transfer is there");
    }
    let all = check.lookup_accounts(&(1..=100u128).map(AccountId).collect::<Vec<_>>()).unwrap();
    let debits: u128 = all.iter().map(|a| a.debits_posted.0).sum();
    let credits: u128 = all.iter().map(|a| a.credits_posted.0).sum();
    assert_eq!(debits, credits, "money sums to zero");
    let (_, live_hash) = metrics_of(metrics);
    drop(check);
    // SIGTERM: a graceful stop.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
    let output = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["replay", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state_hash"].as_str().unwrap(), live_hash, "replay agrees with the live server");
}

#[test]
fn a_second_writer_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let options = ServeOptions {
        data_dir: DataDir::new(dir.path()),
        addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        node: NodeOptions {
            config: config_for(1000),
            segment_size_bytes: 4 << 20,
            pipeline: PipelineOptions::default(),
        },
        server: ServerOptions::default(),
    };
    let refused = serve_start(options).err().expect("a second server on the same directory is refused");
    let message = refused.to_string();
    assert!(message.contains("locked by another walletd process"), "{message}");
    assert!(message.contains(&std::process::id().to_string()), "names the holder's pid: {message}");
    running.shutdown();
    // Once the first has stopped, the directory can be opened again.
    server(dir.path(), Duration::from_secs(10), 16).shutdown();
}

#[test]
fn a_client_that_never_reads_is_cut_and_shutdown_does_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let addr = running.local_addr;
    let mut ping = Vec::new();
    request_append(FrameOperation::Ping, 1, 7, &[], 0, &mut ping);
    let mut flood = TcpStream::connect(addr).unwrap();
    flood.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // Pings whose replies are never read: the reply queue fills and the server cuts us off.
    let frames: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 4096).collect();
    let mut cut = false;
    for _ in 0..400 {
        if flood.write_all(&frames).is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client that never reads its replies is disconnected");
    let other = client(addr);
    other.ping().expect("everyone else is still served");
    drop(other);
    // The server let go of the cut client (its reader ended) while the client still holds
    // its socket open and reads nothing: shutdown has nothing of it to wait for.
    let metrics = running.metrics_addr.unwrap();
    wait_until("the server let go of both clients", || metric(metrics, "walletd_connections_open") == 0);
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        running.shutdown();
        done.send(()).unwrap();
    });
    stopped.recv_timeout(DEADLINE).expect("shutdown finishes with the cut client's socket still open");
    drop(flood);
}

#[test]
fn a_graceful_stop_answers_every_request_it_executed() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let setup = client(running.local_addr);
    setup.create_accounts(&accounts(10)).unwrap();
    drop(setup);
    let mut stream = TcpStream::connect(running.local_addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answered_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answered = std::thread::spawn({
        let answered_count = std::sync::Arc::clone(&answered_count);
        move || {
            let mut count = 0u64;
            while reply_read(&mut reader).is_some() {
                count += 1;
                answered_count.store(count, std::sync::atomic::Ordering::Release);
            }
            count
        }
    });
    let mut low = 10_000u128;
    let writer = std::thread::spawn(move || {
        for request_id in 1..=300u64 {
            let batch: Vec<Transfer> = (0..2000)
                .map(|_| {
                    low += 1;
                    transfer(low, 1 + low % 5, 6 + low % 5, 1)
                })
                .collect();
            let mut frame = Vec::new();
            request_append(
                FrameOperation::Ledger(Operation::CreateTransfers),
                request_id,
                7,
                records_as_bytes(&batch),
                2000,
                &mut frame,
            );
            if stream.write_all(&frame).is_err() {
                break;
            }
        }
    });
    // Stop once requests are being executed and answered, with more still arriving.
    wait_until("a first reply", || answered_count.load(std::sync::atomic::Ordering::Acquire) > 0);
    running.shutdown();
    let _ = writer.join();
    let answered = answered.join().unwrap();
    let restarted = server(dir.path(), Duration::from_secs(10), 16);
    // Every transfer moved 1: the requests executed are the debits posted over 2000 per request.
    let check = client(restarted.local_addr);
    let debits: u128 = check
        .lookup_accounts(&(1..=10u128).map(AccountId).collect::<Vec<_>>())
        .unwrap()
        .iter()
        .map(|a| a.debits_posted.0)
        .sum();
    drop(check);
    assert_eq!(debits % 2000, 0, "requests are all or nothing");
    let executed = (debits / 2000) as u64;
    assert!(answered > 0, "some requests were answered before the stop");
    assert_eq!(answered, executed, "every request executed was answered, and only those");
    restarted.shutdown();
}

/// One gauge or counter from the metrics endpoint.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_failed_archive_is_counted_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path(), Duration::from_secs(10), 16);
    let metrics = running.metrics_addr.unwrap();
    let load = client(running.local_addr);
    load.create_accounts(&accounts(10)).unwrap();
    // A file already named like the first segment in archive/: moving the segment there is
    // refused (an archive never overwrites).
    let archive = dir.path().join("journal").join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(archive.join("segment-00000000000000000001.wal"), b"an operator's restored copy").unwrap();
    // ~128 KiB per request: 4 MiB segments rotate, and snapshots come every 64 ops.
    let mut low = 0u128;
    let mut failures = 0;
    for _ in 0..400 {
        let batch: Vec<Transfer> = (0..1000)
            .map(|_| {
                low += 1;
                transfer(low, 1 + low % 5, 6 + low % 5, 1)
            })
            .collect();
        assert!(load.create_transfers(&batch).unwrap().is_empty(), "the server serves on");
        failures = metric(metrics, "walletd_archive_failures_total");
        if failures > 0 {
            break;
        }
    }
    assert!(failures > 0, "the archive was attempted and refused");
    assert!(load.create_transfers(&[transfer(low + 1, 1, 6, 1)]).unwrap().is_empty(), "still serving after it");
    assert!(archive.join("segment-00000000000000000001.wal").exists());
    assert!(dir.path().join("journal").join("segment-00000000000000000001.wal").exists(), "the segment stayed live");
    drop(load);
    running.shutdown();
}
