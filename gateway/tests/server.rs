//! The gateway's receive end against an in-test engine that records what it is handed and
//! answers only when the test says so: idle connections are closed (and a connection waiting
//! for its reply is not idle), and nothing reaches the engine that the ledger's own decoder
//! would refuse. No test asserts on timing: each waits, with a bounded deadline, for the event
//! it needs (a request reaching the engine, a connection closing).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use walletd_core::{Command, CommandScratch};
use walletd_gateway::protocol::*;
use walletd_gateway::server::{serve, Acceptor, Connections, EngineStopped, ServerOptions, ServerRequest, Submit};

/// How long a test waits for an event before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// An engine that keeps every request it is handed and answers none by itself.
#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<ServerRequest>>,
    arrived: Condvar,
}

impl Submit for Recorder {
    fn submit(&self, request: ServerRequest) -> Result<(), EngineStopped> {
        self.requests.lock().unwrap().push(request);
        self.arrived.notify_all();
        Ok(())
    }
}

impl Recorder {
    /// Waits until `count` requests have arrived.
    fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut requests = self.requests.lock().unwrap();
        while requests.len() < count {
            let now = Instant::now();
            assert!(now < deadline, "{count} requests did not reach the engine");
            requests = self.arrived.wait_timeout(requests, deadline - now).unwrap().0;
        }
    }
}

/// A gateway on 127.0.0.1 in front of a `Recorder`.
struct Gateway {
    addr: SocketAddr,
    engine: Arc<Recorder>,
    connections: Arc<Connections>,
    acceptor: Option<Acceptor>,
}

impl Gateway {
    fn start(options: ServerOptions) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Arc::new(Recorder::default());
        let connections = Arc::new(Connections::default());
        let submit: Arc<dyn Submit> = Arc::clone(&engine) as Arc<dyn Submit>;
        let acceptor = serve(listener, options, submit, Arc::clone(&connections)).unwrap();
        Gateway { addr, engine, connections, acceptor: Some(acceptor) }
    }

    /// Answers a recorded request with an empty successful reply, as an engine would.
    fn answer(&self, request: &ServerRequest) {
        let header = FrameHeader {
            operation: request.operation.code(),
            request_id: request.request_id,
            client_id: request.client_id,
            ..FrameHeader::default()
        };
        self.connections.reply(request.connection, &FrameHeader::reply_to(&header, Status::Ok, 0, 0), &[]);
    }

    /// Waits until the server counts `count` open connections.
    fn wait_open(&self, count: usize) {
        wait_until("the connections are open", || self.connections.open_count() == count);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.acceptor.take().unwrap().stop();
        self.connections.close_all();
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

/// Whether the connection is open now (nothing to read, no end of stream), without waiting.
fn open_now(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = matches!(stream.read(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

fn reply_read(stream: &mut TcpStream) -> FrameHeader {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
    stream.read_exact(&mut header_bytes).expect("a reply");
    let header = FrameHeader::decode(&header_bytes).expect("the reply decodes");
    let mut body = vec![0u8; header.body_size_bytes as usize];
    stream.read_exact(&mut body).expect("the reply's body");
    header
}

fn ping_frame(request_id: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    request_append(FrameOperation::Ping, request_id, 7, &[], 0, &mut frame);
    frame
}

#[test]
fn idle_connections_are_closed_and_one_waiting_for_its_reply_is_not_idle() {
    let options = ServerOptions { idle_timeout: Duration::from_millis(300), ..ServerOptions::default() };
    let gateway = Gateway::start(options);
    let mut waiting = TcpStream::connect(gateway.addr).unwrap();
    waiting.write_all(&ping_frame(1)).unwrap();
    gateway.engine.wait_for(1);
    // Connected after `waiting` last sent a byte: if waiting for a reply counted as idle,
    // `waiting` would reach the idle timeout first.
    let mut silent = TcpStream::connect(gateway.addr).unwrap();
    gateway.wait_open(2);
    assert!(closed(&mut silent), "a silent connection with nothing in flight is closed");
    assert!(open_now(&mut waiting), "a connection waiting for its reply is kept");
    let request = gateway.engine.requests.lock().unwrap().pop().unwrap();
    gateway.answer(&request);
    let reply = reply_read(&mut waiting);
    assert_eq!((reply.request_id, reply.status), (1, Status::Ok as u16));
    assert!(closed(&mut waiting), "once answered and silent, it is idle too");
    gateway.wait_open(0);
}

#[test]
fn every_request_handed_to_the_engine_decodes_as_apply_decodes_it() {
    const EVENT_COUNT_MAX: u32 = 4; // the engine's batch limit, as the node sets it
    let gateway = Gateway::start(ServerOptions { event_count_max: EVENT_COUNT_MAX, ..ServerOptions::default() });
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    // Every operation with 0, 1, the limit and one over of its events, with bodies of distinct
    // bytes; and bodies one byte short.
    let mut sent: Vec<(u64, FrameOperation, u32, Vec<u8>)> = Vec::new();
    let mut request_id = 0;
    for operation in FrameOperation::ALL {
        for event_count in [0, 1, EVENT_COUNT_MAX, EVENT_COUNT_MAX + 1] {
            let size_bytes = event_count as usize * operation.event_size_bytes();
            let body: Vec<u8> =
                (0..size_bytes).map(|index| (index * 7 + usize::from(operation.code())) as u8).collect();
            for cut_bytes in [0, 1] {
                if cut_bytes > body.len() {
                    continue;
                }
                request_id += 1;
                let body = body[..body.len() - cut_bytes].to_vec();
                let mut frame = Vec::new();
                frame_append(&FrameHeader::request(operation, request_id, 7, event_count), &body, &mut frame);
                stream.write_all(&frame).unwrap();
                sent.push((request_id, operation, event_count, body));
            }
        }
    }
    // Each request is either refused (a reply now) or handed to the engine (no reply until
    // it answers): replies plus requests handed on account for every request sent.
    let mut refused_count = 0;
    let deadline = Instant::now() + DEADLINE;
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    loop {
        let handed_count = gateway.engine.requests.lock().unwrap().len();
        if refused_count + handed_count == sent.len() {
            break;
        }
        assert!(Instant::now() < deadline, "every request is refused or handed on");
        let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
        match stream.read_exact(&mut header_bytes) {
            Ok(()) => {
                let header = FrameHeader::decode(&header_bytes).unwrap();
                assert_ne!(header.status, Status::Ok as u16, "only refusals are answered here");
                refused_count += 1;
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("the connection failed: {error}"),
        }
    }
    let requests = gateway.engine.requests.lock().unwrap();
    assert!(requests.len() >= 20 && refused_count >= 20, "both kinds were exercised");
    let mut scratch = CommandScratch::new(EVENT_COUNT_MAX);
    for request in requests.iter() {
        let (_, operation, event_count, body) =
            sent.iter().find(|(id, ..)| *id == request.request_id).expect("a request that was sent");
        assert_eq!((request.operation, request.event_count), (*operation, *event_count));
        let FrameOperation::Ledger(ledger_operation) = request.operation else {
            assert!(request.command.is_empty(), "ping and snapshot carry no command");
            continue;
        };
        let decoded = scratch.decode(&request.command).expect("apply can decode every command it is handed");
        let (is_batch, decoded_count) = match decoded {
            Command::Batch(batch) => (true, batch.len() as u32),
            Command::Query(_) => (false, *event_count),
        };
        assert_eq!(is_batch, ledger_operation.is_mutating());
        assert_eq!(decoded_count, *event_count);
        assert_eq!(&request.command[16..], &body[..], "the journal records the client's events");
    }
    for request in requests.iter() {
        gateway.answer(request);
    }
}
