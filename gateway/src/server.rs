//! The TCP server's receive and reply ends: accepting connections (up to a limit), reading and
//! checking frames, handing checked requests to the engine, and writing the engine's replies
//! back. It knows frames, not ledgers: the engine behind `Submit` is the node's pipeline.
//!
//! Each connection has a reader thread and a writer thread. The reader reads a header, checks
//! it (`FrameHeader::decode`), reads the body, checks it (`check_request`), turns it into the
//! command bytes the journal will record, proves that those decode with the ledger's own
//! decoder (`command_check`: apply expects every journaled command to decode, so one that
//! does not would panic apply and every replay after), and submits it; `Submit::submit`
//! blocks while the engine is full, so the reader stops reading its socket (backpressure:
//! nothing accepted is ever dropped). Malformed frames get their documented error reply; the errors that lose the
//! framing close the connection. A peer that starts a frame and stalls past `frame_timeout`
//! is disconnected, and so is one that sends nothing for `idle_timeout` while none of its
//! requests is in flight: otherwise `connections_max` idle sockets would lock every other
//! client out. The writer writes the frames the engine routes to the connection, in the
//! order they come; a client that stops reading its replies until its queue is full is
//! disconnected (its socket shut down) rather than allowed to stall the engine or a shutdown.
//! Nothing on the reply side blocks: routing, error replies and closing all use `try_send`.

use crate::protocol::{
    check_request, command_check, request_command_encode, FrameError, FrameHeader, FrameOperation, Status,
    HEADER_SIZE_BYTES,
};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use walletd_core::CommandScratch;

/// A checked request, for the engine.
#[derive(Debug)]
pub struct ServerRequest {
    pub connection: u64,
    pub request_id: u64,
    pub client_id: u128,
    pub operation: FrameOperation,
    pub event_count: u32,
    /// For ledger operations, the command exactly as the journal records it (the core's
    /// 16-byte command header, then the events, then, for a traced frame, its trace ids),
    /// proven to decode with the ledger's decoder into `operation` with `event_count` events;
    /// empty for ping and snapshot.
    pub command: Vec<u8>,
    /// The request asked for its timestamp in the reply (`FLAG_TIMESTAMP`, mutating
    /// operations with events only).
    pub timestamp_reply: bool,
}

/// The engine refused a request because it is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStopped;

impl std::fmt::Display for EngineStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the engine is shutting down")
    }
}

impl std::error::Error for EngineStopped {}

/// The engine: takes checked requests, and later routes each reply through `Connections`.
pub trait Submit: Send + Sync + 'static {
    /// Blocks while the engine is full.
    fn submit(&self, request: ServerRequest) -> Result<(), EngineStopped>;
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub connections_max: usize,
    /// Events per request the engine accepts (its batch limit, at most 8189): the limit of
    /// the decoder that proves each command, as apply's is.
    pub event_count_max: u32,
    /// How long a started frame may take to arrive whole.
    pub frame_timeout: Duration,
    /// How long a connection may stay silent (no byte received) while none of its requests is
    /// in flight before it is closed.
    pub idle_timeout: Duration,
    /// Replies queued for one connection before it counts as not reading.
    pub reply_queue_frames: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            connections_max: 256,
            event_count_max: crate::protocol::EVENT_COUNT_MAX,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            reply_queue_frames: 1024,
        }
    }
}

/// What a ping reply tells clients: the pinned ledger config and this server's options.
pub fn server_info(config: &walletd_core::Config, server: &ServerOptions) -> crate::protocol::ServerInfo {
    let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    crate::protocol::ServerInfo {
        transfers_max: config.transfers_max,
        batch_events_max: server.event_count_max,
        id_future_ms_max: config.id_future_ms_max,
        idle_timeout_ms: millis(server.idle_timeout),
        frame_timeout_ms: millis(server.frame_timeout),
        connections_max: u32::try_from(server.connections_max).unwrap_or(u32::MAX),
        accounts_max: config.accounts_max,
        pending_max: config.pending_max,
        limits_max: config.limits_max,
        ledgers_max: config.ledgers_max,
    }
}

/// Server counters, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub frame_errors: AtomicU64,
    pub slow_clients_dropped: AtomicU64,
}

enum Outgoing {
    Frame(Vec<u8>),
    /// Write what is queued, then close.
    Close,
}

/// One open connection, as the reply side sees it.
struct Open {
    writer: SyncSender<Outgoing>,
    /// A handle on the socket, to cut a connection whose writer cannot keep up.
    stream: TcpStream,
    /// Requests submitted and not yet answered, shared with the connection's reader (which
    /// does not time out a connection that waits for a reply).
    in_flight: Arc<AtomicU64>,
}

/// The open connections' reply queues: where the engine's replies are routed. Nothing here
/// blocks: a connection whose queue is full is cut (its socket shut down), so one client that
/// stops reading can stall neither the engine nor a shutdown.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
    pub counters: ServerCounters,
}

impl Connections {
    /// Routes a reply frame to its connection; a connection that is gone loses it, one that
    /// is not reading is cut.
    pub fn send(&self, connection: u64, frame: Vec<u8>) {
        let mut open = self.open.lock().expect("connections lock");
        let Some(entry) = open.get(&connection) else { return };
        let in_flight_before = entry.in_flight.fetch_sub(1, Ordering::AcqRel);
        assert!(in_flight_before > 0, "a reply for a connection with no request in flight");
        if let Err(TrySendError::Full(_)) = entry.writer.try_send(Outgoing::Frame(frame)) {
            tracing::warn!(connection, "client is not reading its replies; disconnecting it");
            self.counters.slow_clients_dropped.fetch_add(1, Ordering::Relaxed);
            let _ = entry.stream.shutdown(Shutdown::Both);
            open.remove(&connection);
        }
    }

    /// Encodes and routes a reply.
    pub fn reply(&self, connection: u64, header: &FrameHeader, body: &[u8]) {
        let mut frame = Vec::with_capacity(HEADER_SIZE_BYTES + body.len());
        crate::protocol::frame_append(header, body, &mut frame);
        self.send(connection, frame);
    }

    fn register(&self, writer: SyncSender<Outgoing>, stream: TcpStream, in_flight: Arc<AtomicU64>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().expect("connections lock").insert(id, Open { writer, stream, in_flight });
        id
    }

    /// Forgets a connection and lets its writer finish what is queued, then close.
    fn unregister(&self, id: u64) {
        let removed = self.open.lock().expect("connections lock").remove(&id);
        if let Some(entry) = removed {
            if entry.writer.try_send(Outgoing::Close).is_err() {
                let _ = entry.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Closes every connection after its queued replies are written (or at once, if its
    /// writer is stuck).
    pub fn close_all(&self) {
        let all: Vec<Open> = self.open.lock().expect("connections lock").drain().map(|(_, entry)| entry).collect();
        for entry in all {
            if entry.writer.try_send(Outgoing::Close).is_err() {
                let _ = entry.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Connections whose reader is still running (a cut connection counts until it has ended).
    pub fn open_count(&self) -> usize {
        self.counters.connections_open.load(Ordering::Relaxed) as usize
    }
}

/// A running acceptor: `stop` ends it and, within `POLL`, every reader thread.
pub struct Acceptor {
    local_addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Acceptor {
    /// Stops accepting and reading new frames, and waits for the reader threads to end (so
    /// they no longer hold the engine). Replies already routed are still written.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // The accept blocks (so a new connection is served at once, not at the next poll):
        // wake it with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        self.thread.join().expect("accept thread panicked");
    }
}

/// Accepts connections until `Acceptor::stop`.
pub fn serve(
    listener: TcpListener,
    options: ServerOptions,
    engine: Arc<dyn Submit>,
    connections: Arc<Connections>,
) -> std::io::Result<Acceptor> {
    listener.set_nonblocking(false)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new().name("accept".to_string()).spawn(move || {
        let stop = thread_stop;
        let mut readers: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let accepted = listener.accept();
            if stop.load(Ordering::Acquire) {
                break;
            }
            match accepted {
                Ok((stream, peer)) => {
                    readers.retain(|reader| !reader.is_finished());
                    if connections.open_count() >= options.connections_max {
                        connection_refuse(stream, &connections.counters);
                        continue;
                    }
                    tracing::debug!(%peer, "connection accepted");
                    match connection_start(stream, &options, &engine, &connections, &stop) {
                        Ok(reader) => readers.push(reader),
                        Err(error) => tracing::warn!(%error, "could not start a connection"),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    std::thread::sleep(POLL);
                }
            }
        }
        for reader in readers {
            let _ = reader.join();
        }
    })?;
    Ok(Acceptor { local_addr, stop, thread })
}

const POLL: Duration = Duration::from_millis(50);
/// A reply write that cannot progress this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Over the limit: one `busy` reply, then close.
fn connection_refuse(mut stream: TcpStream, counters: &ServerCounters) {
    counters.connections_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("connection refused: at the connection limit");
    let header =
        FrameHeader { flags: crate::protocol::FLAG_REPLY, status: Status::Busy as u16, ..FrameHeader::default() };
    let mut frame = Vec::new();
    crate::protocol::frame_append(&header, &[], &mut frame);
    let _ = stream.set_nonblocking(false).and_then(|()| stream.write_all(&frame));
    let _ = stream.shutdown(Shutdown::Both);
}

fn connection_start(
    stream: TcpStream,
    options: &ServerOptions,
    engine: &Arc<dyn Submit>,
    connections: &Arc<Connections>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (writer_queue, writer_receive) = sync_channel(options.reply_queue_frames);
    let in_flight = Arc::new(AtomicU64::new(0));
    let id = connections.register(writer_queue.clone(), stream.try_clone()?, Arc::clone(&in_flight));
    connections.counters.connections_open.fetch_add(1, Ordering::Relaxed);
    let write_stream = stream.try_clone()?;
    std::thread::Builder::new().name(format!("write-{id}")).spawn(move || writer_run(write_stream, writer_receive))?;
    let reader = Reader {
        id,
        stream,
        options: options.clone(),
        engine: Arc::clone(engine),
        connections: Arc::clone(connections),
        writer: writer_queue,
        stop: Arc::clone(stop),
        in_flight,
        scratch: CommandScratch::new(options.event_count_max),
    };
    std::thread::Builder::new().name(format!("read-{id}")).spawn(move || reader.run())
}

fn writer_run(mut stream: TcpStream, queue: Receiver<Outgoing>) {
    while let Ok(outgoing) = queue.recv() {
        match outgoing {
            Outgoing::Frame(frame) => {
                if stream.write_all(&frame).is_err() {
                    break;
                }
            }
            Outgoing::Close => break,
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

struct Reader {
    id: u64,
    stream: TcpStream,
    options: ServerOptions,
    engine: Arc<dyn Submit>,
    connections: Arc<Connections>,
    writer: SyncSender<Outgoing>,
    stop: Arc<AtomicBool>,
    /// This connection's requests submitted and not yet answered (`Connections::send` counts
    /// the answers).
    in_flight: Arc<AtomicU64>,
    /// The ledger's decoder, sized as apply's, to prove each command before it is submitted.
    scratch: CommandScratch,
}

/// How a read of a frame part ended.
enum ReadOutcome {
    Complete,
    /// The peer closed before the frame began.
    Closed,
    /// Nothing arrived for `idle_timeout` between frames while no request was in flight.
    Idle,
    /// The peer closed, stalled or failed mid-frame, or the server is stopping.
    Abandoned(&'static str),
}

impl Reader {
    fn run(mut self) {
        let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
        let mut body = Vec::with_capacity(crate::protocol::TRACED_BODY_SIZE_MAX_BYTES as usize);
        loop {
            match self.read_exact_within(&mut header_bytes, false) {
                ReadOutcome::Complete => {}
                ReadOutcome::Closed => break,
                ReadOutcome::Idle => {
                    tracing::debug!(connection = self.id, "idle connection closed");
                    break;
                }
                ReadOutcome::Abandoned(why) => {
                    tracing::debug!(connection = self.id, why, "connection ended");
                    break;
                }
            }
            if !self.frame_handle(&header_bytes, &mut body) {
                break;
            }
        }
        self.connections.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        // When the server stops, the connection stays registered: the replies of requests
        // already taken still arrive, and `close_all` closes it after the engine has drained.
        if !self.stop.load(Ordering::Acquire) {
            self.connections.unregister(self.id);
        }
    }

    /// Reads and handles one frame whose header is in `header_bytes`; false closes.
    fn frame_handle(&mut self, header_bytes: &[u8; HEADER_SIZE_BYTES], body: &mut Vec<u8>) -> bool {
        let header = match FrameHeader::decode(header_bytes) {
            Ok(header) => header,
            Err(error) => {
                self.error_reply(FrameHeader::error_reply_to(header_bytes, error), error);
                return false; // the framing cannot be trusted any more
            }
        };
        body.resize(header.body_size_bytes as usize, 0);
        if let ReadOutcome::Abandoned(why) = self.read_exact_within(body, true).or_closed() {
            tracing::debug!(connection = self.id, why, "connection ended mid-frame");
            return false;
        }
        match self.request_build(&header, body) {
            Ok(request) => {
                // Counted before the engine can answer, so the answer never finds it at zero.
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                self.engine.submit(request).is_ok()
            }
            Err(error) => {
                let queued = self.error_reply(FrameHeader::reply_to(&header, error.status(), 0, 0), error);
                queued && !error.status().closes_connection()
            }
        }
    }

    fn request_build(&mut self, header: &FrameHeader, body: &[u8]) -> Result<ServerRequest, FrameError> {
        let operation = check_request(header, body)?;
        let mut command = Vec::new();
        if let FrameOperation::Ledger(ledger_operation) = operation {
            if header.event_count > self.options.event_count_max {
                return Err(FrameError::TooManyEvents {
                    operation,
                    event_count: header.event_count,
                    event_count_max: self.options.event_count_max,
                });
            }
            command.reserve_exact(walletd_core::command::COMMAND_HEADER_SIZE_BYTES + body.len());
            request_command_encode(header, ledger_operation, body, &mut command);
            if let Err(error) = command_check(ledger_operation, header.event_count, &command, &mut self.scratch) {
                // The frame checks should have refused it: a gap between them and the ledger.
                let connection = self.id;
                tracing::warn!(connection, %error, "a request passed the frame checks, not the ledger's decoder");
                return Err(error);
            }
        }
        Ok(ServerRequest {
            connection: self.id,
            request_id: header.request_id,
            client_id: header.client_id,
            operation,
            event_count: header.event_count,
            command,
            timestamp_reply: header.flags & crate::protocol::FLAG_TIMESTAMP != 0,
        })
    }

    /// Queues an error reply; false when the connection must close (its queue is full: the
    /// client is not reading).
    fn error_reply(&self, reply: FrameHeader, error: FrameError) -> bool {
        self.connections.counters.frame_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(connection = self.id, %error, "malformed frame");
        let mut frame = Vec::with_capacity(HEADER_SIZE_BYTES);
        crate::protocol::frame_append(&reply, &[], &mut frame);
        self.writer.try_send(Outgoing::Frame(frame)).is_ok()
    }

    /// Fills `buffer` from the socket. Between frames it waits (checking `stop`) until the
    /// connection has been idle for `idle_timeout`: silent, with no request in flight (a
    /// client waiting for a reply is not idle; its idle time starts when the reply is routed).
    /// Once a frame has begun (`in_frame`, or any header byte read) it allows `frame_timeout`.
    fn read_exact_within(&mut self, buffer: &mut [u8], in_frame: bool) -> ReadOutcome {
        assert!(!buffer.is_empty() || in_frame, "a header read reads something");
        let mut filled = 0;
        let mut started: Option<Instant> = in_frame.then(Instant::now);
        let mut idle_since = Instant::now();
        while filled < buffer.len() {
            if self.stop.load(Ordering::Acquire) {
                // A frame not read whole is never executed: stopping may cut it.
                return ReadOutcome::Abandoned("the server is stopping");
            }
            if started.is_some_and(|at| at.elapsed() > self.options.frame_timeout) {
                return ReadOutcome::Abandoned("a frame stalled past the frame timeout");
            }
            if started.is_none() {
                if self.in_flight.load(Ordering::Acquire) > 0 {
                    idle_since = Instant::now();
                } else if idle_since.elapsed() >= self.options.idle_timeout {
                    return ReadOutcome::Idle;
                }
            }
            match self.stream.read(&mut buffer[filled..]) {
                Ok(0) if filled == 0 && !in_frame => return ReadOutcome::Closed,
                Ok(0) => return ReadOutcome::Abandoned("the peer closed mid-frame"),
                Ok(read) => {
                    filled += read;
                    started.get_or_insert_with(Instant::now);
                }
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                }
                Err(_) => return ReadOutcome::Abandoned("the socket failed"),
            }
        }
        ReadOutcome::Complete
    }
}

impl ReadOutcome {
    /// Mid-frame, a clean close is abandonment too.
    fn or_closed(self) -> ReadOutcome {
        match self {
            ReadOutcome::Closed => ReadOutcome::Abandoned("the peer closed mid-frame"),
            other => other,
        }
    }
}
