//! The async client: the blocking client's pipelining and batching, on tokio, for callers that
//! already run on a tokio runtime (the HTTP gateway). Feature `tokio`.
//!
//! Why a second client: behind an async caller the blocking `Client` costs thread hand-offs on
//! every request — caller → a thread that may block → the client's batcher → its writer, and
//! back through its reader thread and a channel — each a futex wake-up of 5–20 µs on a small
//! virtual machine, for frames of a dozen requests. Here a caller appends its events to the
//! open frame of its operation under a short lock and wakes the connection's writer task; the
//! writer takes an open frame whenever fewer than `frames_in_flight_max` frames wait for their
//! replies (so calls arriving while the engine works fill the next frame), registers it by
//! request id and writes it; the reader task matches each reply to its frame by request id,
//! in whatever order replies come, splits it among the calls the frame carried and answers
//! each through its own oneshot. Two tasks per connection, no threads, and the codec is
//! `protocol`'s, with the reply checks shared with `client`.
//!
//! What is coalesced: creates of accounts and of transfers (a call's events stay contiguous
//! and in order in one frame, so linked chains stay whole; every create asks for its
//! timestamp, and a call carries one trace id for all its events, 0 for none) and lookups of
//! accounts, transfers and balances (each call gets the records of its own ids, in its
//! order). Close, reopen, limits and ping go in frames of their own.
//!
//! Failures are the blocking client's: when the connection fails, every call in flight ends
//! with the error (`Closed`, `Io`, `Protocol`: the outcome is unknown; resend with the same ids
//! on a new connection), and the calls not yet written with `NotSent` (nothing was applied);
//! the client is then closed (`is_closed`), refuses calls with `NotSent`, and its owner
//! connects again. A call waits at most `request_timeout`
//! (`Timeout`, outcome unknown); the connection stays usable, and a frame keeps its place
//! among the `frames_in_flight_max` until its reply or the connection's end, so a connection
//! whose server stops answering stops sending: its owner replaces it. Dropping the last clone
//! closes the connection.

use crate::client::{
    client_id_generate, member_results_take, read_error, reply_records_count_check, reply_result, Balances,
    ClientError, Created,
};
use crate::protocol::{
    accounts_decode, balances_decode, check_reply, frame_begin, frame_end, results_decode, results_timestamped_decode,
    transfer_records_decode, FrameHeader, FrameOperation, ServerInfo, Status, EVENT_COUNT_MAX, FLAG_TIMESTAMP,
    FLAG_TRACED, HEADER_SIZE_BYTES,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use walletd_core::bytes::u128_at;
use walletd_core::command::records_as_bytes;
use walletd_core::{
    Account, AccountId, AccountLimits, BalanceRead, EventResult, Operation, Transfer, TransferId, TransferRecord,
};

/// Told of every reply: which frame, how many events, how long it took (send to reply).
pub type FrameObserver = Arc<dyn Fn(&FrameObserved) + Send + Sync>;

/// One frame's round trip, for metrics.
#[derive(Clone, Copy, Debug)]
pub struct FrameObserved {
    pub operation: FrameOperation,
    pub event_count: u32,
    pub round_trip: Duration,
}

#[derive(Clone)]
pub struct AsyncClientOptions {
    /// How long a call waits for its reply (and a frame write for the socket, and the
    /// connect) before `Timeout`.
    pub request_timeout: Duration,
    /// Frames sent and not yet answered, at most; while that many are out, calls fill the
    /// next frames.
    pub frames_in_flight_max: u32,
    /// Calls waiting to be sent, at most; more are refused `QueueFull` (nothing sent).
    pub calls_queued_max: u32,
    /// The client id put in every frame; `None` derives one from the time and the process id.
    pub client_id: Option<u128>,
    pub frame_observer: Option<FrameObserver>,
}

impl Default for AsyncClientOptions {
    fn default() -> AsyncClientOptions {
        AsyncClientOptions {
            request_timeout: Duration::from_secs(30),
            frames_in_flight_max: 4,
            calls_queued_max: 65_536,
            client_id: None,
            frame_observer: None,
        }
    }
}

impl fmt::Debug for AsyncClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("frames_in_flight_max", &self.frames_in_flight_max)
            .field("calls_queued_max", &self.calls_queued_max)
            .field("client_id", &self.client_id)
            .field("frame_observer", &self.frame_observer.is_some())
            .finish()
    }
}

/// A connection to walletd. Cheap to clone; the clones share the connection, and the last one
/// dropped closes it.
#[derive(Clone)]
pub struct AsyncClient {
    handle: Arc<Handle>,
}

/// Closes the connection when the last clone of the client goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(&ClientError::Closed);
    }
}

/// The open frames, the frames in flight, and what wakes the two tasks.
struct Shared {
    client_id: u128,
    options: AsyncClientOptions,
    request_id_next: AtomicU64,
    open: Mutex<Open>,
    pending: Mutex<Pending>,
    /// A permit per frame in flight, held by its entry in `pending`.
    in_flight: Arc<Semaphore>,
    /// Wakes the writer: a call joined an open frame, or the client closed.
    writer_wake: Notify,
    /// Told (all waiters) each time a call joins an open frame.
    call_joined: Notify,
    /// Stops the reader when the client is closed from elsewhere.
    reader_stop: Notify,
    closed: AtomicBool,
}

/// What kind of frame a call goes into: the five coalesced operations, and frames of one call.
const KIND_CREATE_ACCOUNTS: usize = 0;
const KIND_CREATE_TRANSFERS: usize = 1;
const KIND_LOOKUP_ACCOUNTS: usize = 2;
const KIND_LOOKUP_TRANSFERS: usize = 3;
const KIND_LOOKUP_BALANCES: usize = 4;
const KIND_ALONE: usize = 5;
const KIND_COUNT: usize = 6;

/// Frame buffers kept for reuse, at most.
const SPARES_MAX: usize = 8;

struct Open {
    /// Per kind, the frames not yet sent, oldest first; calls join the newest.
    queues: [VecDeque<OpenFrame>; KIND_COUNT],
    calls_queued: u32,
    /// The kind the writer looks at first next time, so no kind waits behind a busy one.
    kind_next: usize,
    spares: Vec<Vec<u8>>,
    closed: bool,
}

/// A frame being filled: a header placeholder, then the events (or ids) of its members.
struct OpenFrame {
    operation: FrameOperation,
    frame: Vec<u8>,
    event_count: u32,
    /// Once a traced call joined: a trace id per event (0 for untraced calls' events).
    trace_ids: Vec<u128>,
    members: Vec<Member>,
}

/// One call's share of a frame: events `event_start..event_start + event_count`.
struct Member {
    event_start: u32,
    event_count: u32,
    answer: Answer,
}

type Sender<T> = oneshot::Sender<Result<T, ClientError>>;

/// Where a call's answer goes, by what the call asked for.
enum Answer {
    Created(Sender<Created>),
    Accounts(Sender<Vec<Account>>),
    Transfers(Sender<Vec<TransferRecord>>),
    Balances(Sender<Balances>),
    Results(Sender<Vec<EventResult>>),
    Ping(Sender<Option<ServerInfo>>),
}

impl Answer {
    /// Ends the call with `error`. A caller that timed out no longer listens: nothing to do.
    fn fail(self, error: &ClientError) {
        let error = error.clone();
        match self {
            Answer::Created(sender) => drop(sender.send(Err(error))),
            Answer::Accounts(sender) => drop(sender.send(Err(error))),
            Answer::Transfers(sender) => drop(sender.send(Err(error))),
            Answer::Balances(sender) => drop(sender.send(Err(error))),
            Answer::Results(sender) => drop(sender.send(Err(error))),
            Answer::Ping(sender) => drop(sender.send(Err(error))),
        }
    }
}

/// The frames in flight, by request id. Once `closed`, nothing is added.
struct Pending {
    frames: HashMap<u64, InFlight>,
    closed: bool,
}

struct InFlight {
    operation: FrameOperation,
    event_count: u32,
    members: Vec<Member>,
    /// A coalesced lookup's ids, to give each member the records of its own (kept only when
    /// the frame has more than one member).
    ids: Vec<u128>,
    sent_at: Instant,
    _permit: OwnedSemaphorePermit,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl AsyncClient {
    /// Connects and starts the connection's reader and writer tasks on the current runtime.
    pub async fn connect(address: SocketAddr, options: AsyncClientOptions) -> Result<AsyncClient, ClientError> {
        assert!(options.frames_in_flight_max >= 1, "at least one frame in flight");
        assert!(options.calls_queued_max >= 1, "room for at least one call");
        let stream = match tokio::time::timeout(options.request_timeout, TcpStream::connect(address)).await {
            Ok(connected) => connected.map_err(ClientError::Io)?,
            Err(_) => return Err(ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        };
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            client_id: options.client_id.unwrap_or_else(client_id_generate),
            in_flight: Arc::new(Semaphore::new(options.frames_in_flight_max as usize)),
            options,
            request_id_next: AtomicU64::new(1),
            open: Mutex::new(Open {
                queues: Default::default(),
                calls_queued: 0,
                kind_next: 0,
                spares: Vec::new(),
                closed: false,
            }),
            pending: Mutex::new(Pending { frames: HashMap::new(), closed: false }),
            writer_wake: Notify::new(),
            call_joined: Notify::new(),
            reader_stop: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(reader_run(Arc::clone(&shared), read));
        tokio::spawn(writer_run(Arc::clone(&shared), write));
        Ok(AsyncClient { handle: Arc::new(Handle { shared }) })
    }

    pub fn client_id(&self) -> u128 {
        self.handle.shared.client_id
    }

    /// Whether the connection has ended: every later call fails `NotSent`; connect again.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.closed.load(Ordering::Acquire)
    }

    /// Calls waiting to be sent (joined an open frame that is not yet written).
    pub fn calls_queued(&self) -> u32 {
        lock(&self.handle.shared.open).calls_queued
    }

    /// Waits until at least `count` calls wait to be sent (for a caller that holds the frames in
    /// flight and wants the next frame filled first); returns the count then.
    pub async fn calls_queued_wait(&self, count: u32) -> u32 {
        let shared = &self.handle.shared;
        loop {
            let mut joined = std::pin::pin!(shared.call_joined.notified());
            joined.as_mut().enable();
            let queued = self.calls_queued();
            if queued >= count {
                return queued;
            }
            joined.await;
        }
    }

    /// Whether two clients are clones of one connection.
    pub fn same_connection(&self, other: &AsyncClient) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// Ends the connection now: calls in flight fail `Closed`, calls not yet sent `NotSent`.
    pub fn close(&self) {
        self.handle.shared.close(&ClientError::Closed);
    }

    /// Creates transfers, batched with other calls; `trace_id` (0: none) is journaled with each
    /// of them. The failures (indexed into `transfers`), the frame's op and the timestamp of
    /// `transfers[0]` (event `i` was applied at it + `i`).
    pub async fn create_transfers(&self, transfers: &[Transfer], trace_id: u128) -> Result<Created, ClientError> {
        if transfers.is_empty() {
            return Ok(Created::default());
        }
        let (sender, receiver) = oneshot::channel();
        let events = records_as_bytes(transfers);
        self.join(KIND_CREATE_TRANSFERS, Operation::CreateTransfers, events, trace_id, Answer::Created(sender))?;
        self.answer_wait(receiver).await
    }

    /// `create_transfers` for accounts.
    pub async fn create_accounts(&self, accounts: &[Account], trace_id: u128) -> Result<Created, ClientError> {
        if accounts.is_empty() {
            return Ok(Created::default());
        }
        let (sender, receiver) = oneshot::channel();
        let events = records_as_bytes(accounts);
        self.join(KIND_CREATE_ACCOUNTS, Operation::CreateAccounts, events, trace_id, Answer::Created(sender))?;
        self.answer_wait(receiver).await
    }

    /// The accounts found, in request order (missing ids are skipped).
    pub async fn lookup_accounts(&self, ids: &[AccountId]) -> Result<Vec<Account>, ClientError> {
        let (sender, receiver) = oneshot::channel();
        let events = records_as_bytes(ids);
        self.join(KIND_LOOKUP_ACCOUNTS, Operation::LookupAccounts, events, 0, Answer::Accounts(sender))?;
        self.answer_wait(receiver).await
    }

    /// The transfers found and their status, in request order (missing ids are skipped).
    pub async fn lookup_transfers(&self, ids: &[TransferId]) -> Result<Vec<TransferRecord>, ClientError> {
        let (sender, receiver) = oneshot::channel();
        let events = records_as_bytes(ids);
        self.join(KIND_LOOKUP_TRANSFERS, Operation::LookupTransfers, events, 0, Answer::Transfers(sender))?;
        self.answer_wait(receiver).await
    }

    /// One consistent read of each account found, with its open holds.
    pub async fn lookup_balances(&self, ids: &[AccountId]) -> Result<Balances, ClientError> {
        let (sender, receiver) = oneshot::channel();
        let events = records_as_bytes(ids);
        self.join(KIND_LOOKUP_BALANCES, Operation::LookupBalances, events, 0, Answer::Balances(sender))?;
        self.answer_wait(receiver).await
    }

    pub async fn close_accounts(&self, ids: &[AccountId]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::CloseAccounts, records_as_bytes(ids)).await
    }

    pub async fn reopen_accounts(&self, ids: &[AccountId]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::ReopenAccounts, records_as_bytes(ids)).await
    }

    pub async fn set_account_limits(&self, limits: &[AccountLimits]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::SetAccountLimits, records_as_bytes(limits)).await
    }

    /// A round trip through the server's pipeline; the server's limits, `None` from a server
    /// too old to send them.
    pub async fn ping(&self) -> Result<Option<ServerInfo>, ClientError> {
        let (sender, receiver) = oneshot::channel();
        self.join_frame(KIND_ALONE, FrameOperation::Ping, &[], 0, 0, Answer::Ping(sender))?;
        self.answer_wait(receiver).await
    }

    async fn results_request(&self, operation: Operation, events: &[u8]) -> Result<Vec<EventResult>, ClientError> {
        if events.is_empty() {
            // Nothing to do, and the server refuses an empty mutating request (no_events).
            return Ok(Vec::new());
        }
        let (sender, receiver) = oneshot::channel();
        let operation = FrameOperation::Ledger(operation);
        let event_count = events_count(operation, events)?;
        self.join_frame(KIND_ALONE, operation, events, event_count, 0, Answer::Results(sender))?;
        self.answer_wait(receiver).await
    }

    fn join(
        &self,
        kind: usize,
        operation: Operation,
        events: &[u8],
        trace_id: u128,
        answer: Answer,
    ) -> Result<(), ClientError> {
        let operation = FrameOperation::Ledger(operation);
        let event_count = events_count(operation, events)?;
        self.join_frame(kind, operation, events, event_count, trace_id, answer)
    }

    /// Puts a call's events into the newest open frame of its kind that has room (a new one
    /// otherwise; a frame of its own for `KIND_ALONE`) and wakes the writer.
    fn join_frame(
        &self,
        kind: usize,
        operation: FrameOperation,
        events: &[u8],
        event_count: u32,
        trace_id: u128,
        answer: Answer,
    ) -> Result<(), ClientError> {
        let shared = &self.handle.shared;
        assert_eq!(events.len(), event_count as usize * operation.event_size_bytes());
        assert!(trace_id == 0 || operation.is_mutating_with_events(), "only creates are traced");
        {
            let mut open = lock(&shared.open);
            if open.closed {
                return Err(ClientError::NotSent);
            }
            let calls_queued_max = shared.options.calls_queued_max;
            if open.calls_queued >= calls_queued_max {
                return Err(ClientError::QueueFull { calls_queued_max });
            }
            let event_count_max = operation.event_count_max().max(1);
            let room = kind != KIND_ALONE
                && open.queues[kind].back().is_some_and(|frame| frame.event_count + event_count <= event_count_max);
            if !room {
                let mut frame = open.spares.pop().unwrap_or_default();
                frame.clear();
                frame_begin(&mut frame);
                let open_frame =
                    OpenFrame { operation, frame, event_count: 0, trace_ids: Vec::new(), members: Vec::new() };
                open.queues[kind].push_back(open_frame);
            }
            open.calls_queued += 1;
            let frame = open.queues[kind].back_mut().expect("a frame with room");
            frame_member_add(frame, events, event_count, trace_id, answer);
        }
        shared.writer_wake.notify_one();
        shared.call_joined.notify_waiters();
        Ok(())
    }

    async fn answer_wait<T>(&self, receiver: oneshot::Receiver<Result<T, ClientError>>) -> Result<T, ClientError> {
        match tokio::time::timeout(self.handle.shared.options.request_timeout, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed), // dropped unanswered: the connection ended
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

/// The events in `events`, refused before sending when the frame could not hold them (or
/// their reply).
fn events_count(operation: FrameOperation, events: &[u8]) -> Result<u32, ClientError> {
    let event_count = events.len() / operation.event_size_bytes();
    let event_count_max = operation.event_count_max();
    if event_count > event_count_max as usize {
        return Err(ClientError::TooManyEvents { operation: operation.name(), event_count, event_count_max });
    }
    Ok(event_count as u32)
}

/// Appends a call's events and keeps the trailer aligned with them: the first traced call
/// makes the frame traced (the events before it get trace id 0), and once it is, an untraced
/// call's events get 0 too.
fn frame_member_add(frame: &mut OpenFrame, events: &[u8], event_count: u32, trace_id: u128, answer: Answer) {
    assert!(frame.event_count + event_count <= EVENT_COUNT_MAX, "the caller checked the room");
    let traced = !frame.trace_ids.is_empty() || trace_id != 0;
    if traced {
        frame.trace_ids.resize(frame.event_count as usize, 0);
        frame.trace_ids.resize((frame.event_count + event_count) as usize, trace_id);
    }
    frame.frame.extend_from_slice(events);
    frame.members.push(Member { event_start: frame.event_count, event_count, answer });
    frame.event_count += event_count;
    assert!(!traced || frame.trace_ids.len() == frame.event_count as usize, "a trace id per event");
}

impl Shared {
    /// Ends the connection: nothing more is sent, every call in flight fails with `error` and
    /// every call not yet sent with `NotSent`. Idempotent.
    fn close(&self, error: &ClientError) {
        self.closed.store(true, Ordering::Release);
        let queues = {
            let mut open = lock(&self.open);
            open.closed = true;
            open.calls_queued = 0;
            std::mem::take(&mut open.queues)
        };
        let frames: Vec<InFlight> = {
            let mut pending = lock(&self.pending);
            pending.closed = true;
            pending.frames.drain().map(|(_, frame)| frame).collect()
        };
        for member in queues.into_iter().flatten().flat_map(|frame| frame.members) {
            member.answer.fail(&ClientError::NotSent);
        }
        for member in frames.into_iter().flat_map(|frame| frame.members) {
            member.answer.fail(error);
        }
        self.in_flight.close();
        self.writer_wake.notify_one();
        self.reader_stop.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// Takes open frames, one per free place in flight, registers them and writes them, until the
/// client closes or a write fails.
async fn writer_run(shared: Arc<Shared>, mut write: OwnedWriteHalf) {
    loop {
        let Ok(permit) = Arc::clone(&shared.in_flight).acquire_owned().await else {
            return; // closed
        };
        let mut frame = loop {
            match frame_take(&shared) {
                Taken::Frame(frame) => break frame,
                Taken::Closed => return,
                Taken::Nothing => shared.writer_wake.notified().await,
            }
        };
        let Some(request_id) = frame_register(&shared, &mut frame, permit) else {
            return; // closed meanwhile: its members failed
        };
        let written = tokio::time::timeout(shared.options.request_timeout, write.write_all(&frame.frame)).await;
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(write_error(error)),
            Err(_) => Some(ClientError::Timeout),
        };
        if let Some(error) = error {
            // Part of the frame may be out: the stream's framing is lost.
            let in_flight = lock(&shared.pending).frames.remove(&request_id);
            for member in in_flight.into_iter().flat_map(|frame| frame.members) {
                member.answer.fail(&error);
            }
            shared.close(&error);
            return;
        }
        frame_recycle(&shared, frame.frame);
    }
}

enum Taken {
    Frame(OpenFrame),
    Nothing,
    Closed,
}

/// The oldest open frame of the next kind that has one.
fn frame_take(shared: &Shared) -> Taken {
    let mut open = lock(&shared.open);
    if open.closed {
        return Taken::Closed;
    }
    for offset in 0..KIND_COUNT {
        let kind = (open.kind_next + offset) % KIND_COUNT;
        if let Some(frame) = open.queues[kind].pop_front() {
            open.kind_next = (kind + 1) % KIND_COUNT;
            open.calls_queued -= frame.members.len() as u32;
            return Taken::Frame(frame);
        }
    }
    assert_eq!(open.calls_queued, 0, "no call waits outside a frame");
    Taken::Nothing
}

/// Completes a taken frame (trailer, header) and puts it among the frames in flight; `None`
/// when the client closed meanwhile (its members are failed).
fn frame_register(shared: &Shared, frame: &mut OpenFrame, permit: OwnedSemaphorePermit) -> Option<u64> {
    let operation = frame.operation;
    assert_eq!(frame.frame.len(), HEADER_SIZE_BYTES + frame.event_count as usize * operation.event_size_bytes());
    assert!(!frame.members.is_empty(), "a frame is opened by its first call");
    let mut flags = 0;
    if operation == FrameOperation::Ledger(Operation::CreateTransfers)
        || operation == FrameOperation::Ledger(Operation::CreateAccounts)
    {
        // Every create asks for its timestamp, so each call learns its events' own.
        flags |= FLAG_TIMESTAMP;
    }
    if !frame.trace_ids.is_empty() {
        frame.frame.extend_from_slice(records_as_bytes(&frame.trace_ids));
        flags |= FLAG_TRACED;
    }
    let request_id = shared.request_id_next.fetch_add(1, Ordering::Relaxed);
    assert!(request_id != 0, "request ids start at 1");
    let header = FrameHeader::request(operation, request_id, shared.client_id, frame.event_count);
    frame_end(&mut frame.frame, 0, &FrameHeader { flags, ..header });
    let ids = if frame.members.len() > 1 && is_lookup(operation) {
        let ids = &frame.frame[HEADER_SIZE_BYTES..];
        ids.chunks_exact(16).map(|id| u128_at(id, 0)).collect()
    } else {
        Vec::new()
    };
    let in_flight = InFlight {
        operation,
        event_count: frame.event_count,
        members: std::mem::take(&mut frame.members),
        ids,
        sent_at: Instant::now(),
        _permit: permit,
    };
    let mut pending = lock(&shared.pending);
    if pending.closed {
        drop(pending);
        in_flight.members.into_iter().for_each(|member| member.answer.fail(&ClientError::NotSent));
        return None;
    }
    let previous = pending.frames.insert(request_id, in_flight);
    assert!(previous.is_none(), "request id reused");
    Some(request_id)
}

fn is_lookup(operation: FrameOperation) -> bool {
    matches!(
        operation,
        FrameOperation::Ledger(Operation::LookupAccounts | Operation::LookupTransfers | Operation::LookupBalances)
    )
}

fn frame_recycle(shared: &Shared, mut frame: Vec<u8>) {
    frame.clear();
    let mut open = lock(&shared.open);
    if open.spares.len() < SPARES_MAX {
        open.spares.push(frame);
    }
}

fn write_error(error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ClientError::Closed
        }
        _ => ClientError::Io(error),
    }
}

// ---------------------------------------------------------------------------------------------
// The reader.

/// Reads replies until the connection ends (or the client closes), then ends every call.
async fn reader_run(shared: Arc<Shared>, read: OwnedReadHalf) {
    let mut reader = BufReader::with_capacity(1 << 16, read);
    let mut body = Vec::new();
    let error = loop {
        let header = tokio::select! {
            header = reply_read(&mut reader, &mut body) => header,
            () = shared.reader_stop.notified() => Err(ClientError::Closed),
        };
        if let Err(error) = header.and_then(|header| reply_dispatch(&shared, &header, &body)) {
            break error;
        }
    };
    shared.close(&error);
}

/// One reply frame's header, its body into `body`; an error means the stream is unreadable.
async fn reply_read(reader: &mut BufReader<OwnedReadHalf>, body: &mut Vec<u8>) -> Result<FrameHeader, ClientError> {
    let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
    reader.read_exact(&mut header_bytes).await.map_err(read_error)?;
    let header = FrameHeader::decode(&header_bytes)?;
    body.resize(header.body_size_bytes as usize, 0);
    reader.read_exact(body).await.map_err(read_error)?;
    Ok(header)
}

/// Answers the calls of the frame a reply is for. An error reply with request id 0 (which no
/// request has) is about the connection itself: it ends the connection, with its status.
fn reply_dispatch(shared: &Shared, header: &FrameHeader, body: &[u8]) -> Result<(), ClientError> {
    let checked = check_reply(header, body);
    if let Ok(status) = checked {
        if status != Status::Ok && header.request_id == 0 {
            return Err(ClientError::Frame(status));
        }
    }
    let Some(frame) = lock(&shared.pending).frames.remove(&header.request_id) else {
        return Ok(()); // not ours, or already failed
    };
    if let Some(observer) = &shared.options.frame_observer {
        let round_trip = frame.sent_at.elapsed();
        observer(&FrameObserved { operation: frame.operation, event_count: frame.event_count, round_trip });
    }
    match reply_result(checked, header, body, shared.client_id, frame.operation) {
        Ok(()) => frame_answer(frame, header, body),
        Err(error) => frame.members.into_iter().for_each(|member| member.answer.fail(&error)),
    }
    Ok(())
}

/// A successful reply, decoded: what its frame's members share.
enum Decoded {
    Created { results: Vec<EventResult>, op: u64, timestamp_ns: u64 },
    Accounts(Vec<Account>),
    Transfers(Vec<TransferRecord>),
    Balances(Balances),
    Results(Vec<EventResult>),
    Ping(Option<ServerInfo>),
}

/// Decodes a successful reply and gives each member its share; a malformed body fails them all.
fn frame_answer(frame: InFlight, header: &FrameHeader, body: &[u8]) {
    let InFlight { operation, event_count, members, ids, .. } = frame;
    match reply_decode(operation, event_count, header, body) {
        Ok(Decoded::Created { results, op, timestamp_ns }) => created_split(&results, op, timestamp_ns, members),
        Ok(Decoded::Accounts(accounts)) => lookup_split(accounts, members, &ids, |account| account.id.0),
        Ok(Decoded::Transfers(records)) => lookup_split(records, members, &ids, |record| record.transfer.id.0),
        Ok(Decoded::Balances(balances)) => balances_split(balances, members, &ids),
        Ok(decoded) => alone_answer(decoded, members),
        Err(error) => members.into_iter().for_each(|member| member.answer.fail(&error)),
    }
}

fn reply_decode(
    operation: FrameOperation,
    event_count: u32,
    header: &FrameHeader,
    body: &[u8],
) -> Result<Decoded, ClientError> {
    let records_count = header.event_count;
    let decoded = match operation {
        FrameOperation::Ledger(Operation::CreateAccounts | Operation::CreateTransfers) => {
            if header.flags & FLAG_TIMESTAMP == 0 {
                let message = "a reply to a batched create has no timestamp (the server predates the timestamp flag)";
                return Err(ClientError::Protocol(message.into()));
            }
            let mut results = Vec::with_capacity(records_count as usize);
            let timestamp_ns = results_timestamped_decode(operation, records_count, body, &mut results)?;
            results_indexes_check(&results, event_count)?;
            Decoded::Created { results, op: header.op, timestamp_ns }
        }
        FrameOperation::Ledger(Operation::LookupAccounts) => {
            reply_records_count_check(header, event_count as usize)?;
            let mut accounts = Vec::with_capacity(records_count as usize);
            accounts_decode(operation, records_count, body, &mut accounts)?;
            Decoded::Accounts(accounts)
        }
        FrameOperation::Ledger(Operation::LookupTransfers) => {
            reply_records_count_check(header, event_count as usize)?;
            let mut records = Vec::with_capacity(records_count as usize);
            transfer_records_decode(operation, records_count, body, &mut records)?;
            Decoded::Transfers(records)
        }
        FrameOperation::Ledger(Operation::LookupBalances) => {
            reply_records_count_check(header, event_count as usize)?;
            let mut balances = Balances::default();
            balances_decode(operation, records_count, body, &mut balances.reads, &mut balances.holds)?;
            Decoded::Balances(balances)
        }
        FrameOperation::Ping => {
            reply_records_count_check(header, 0)?;
            Decoded::Ping(ServerInfo::decode(body)?)
        }
        FrameOperation::Ledger(_) => {
            let mut results = Vec::new();
            results_decode(operation, records_count, body, &mut results)?;
            results_indexes_check(&results, event_count)?;
            Decoded::Results(results)
        }
        FrameOperation::Snapshot => unreachable!("the async client sends no snapshot requests"),
    };
    Ok(decoded)
}

fn results_indexes_check(results: &[EventResult], event_count: u32) -> Result<(), ClientError> {
    if results.last().is_some_and(|last| last.index >= event_count) {
        let message = format!("a result's index is past the {event_count} events of the frame");
        return Err(ClientError::Protocol(message));
    }
    Ok(())
}

fn mismatch() -> ClientError {
    ClientError::Protocol("the reply's kind does not match the call's (a bug in the async client)".into())
}

/// Splits a create's sparse results among its members, re-indexed into each call's events;
/// each gets the frame's op and its own first event's timestamp.
fn created_split(results: &[EventResult], op: u64, timestamp_ns: u64, members: Vec<Member>) {
    let mut cursor = 0;
    for member in members {
        let own = member_results_take(results, &mut cursor, member.event_start, member.event_count);
        let timestamp_ns = timestamp_ns + u64::from(member.event_start);
        match member.answer {
            Answer::Created(sender) => drop(sender.send(Ok(Created { results: own, op, timestamp_ns }))),
            other => other.fail(&mismatch()),
        }
    }
    assert_eq!(cursor, results.len(), "every result went to a member");
}

/// A record type a lookup answers with, and where each member's share goes.
trait LookupRecord: Copy {
    fn send(records: Vec<Self>, answer: Answer);
}

impl LookupRecord for Account {
    fn send(records: Vec<Account>, answer: Answer) {
        match answer {
            Answer::Accounts(sender) => drop(sender.send(Ok(records))),
            other => other.fail(&mismatch()),
        }
    }
}

impl LookupRecord for TransferRecord {
    fn send(records: Vec<TransferRecord>, answer: Answer) {
        match answer {
            Answer::Transfers(sender) => drop(sender.send(Ok(records))),
            other => other.fail(&mismatch()),
        }
    }
}

/// Answers each member of a lookup with the records of its own ids, in its order. A frame of
/// one call gives it the records as they came.
fn lookup_split<R: LookupRecord>(records: Vec<R>, members: Vec<Member>, ids: &[u128], id_of: impl Fn(&R) -> u128) {
    if members.len() == 1 {
        let member = members.into_iter().next().expect("one member");
        return R::send(records, member.answer);
    }
    assert_eq!(ids.len(), members.iter().map(|member| member.event_count as usize).sum::<usize>());
    let by_id: HashMap<u128, R> = records.iter().map(|record| (id_of(record), *record)).collect();
    for member in members {
        let own_ids = &ids[member.event_start as usize..(member.event_start + member.event_count) as usize];
        let own: Vec<R> = own_ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
        R::send(own, member.answer);
    }
}

/// `lookup_split` for balance reads, each with its holds.
fn balances_split(balances: Balances, members: Vec<Member>, ids: &[u128]) {
    let send = |own: Balances, answer: Answer| match answer {
        Answer::Balances(sender) => drop(sender.send(Ok(own))),
        other => other.fail(&mismatch()),
    };
    if members.len() == 1 {
        let member = members.into_iter().next().expect("one member");
        return send(balances, member.answer);
    }
    let by_id: HashMap<u128, &BalanceRead> = balances.reads.iter().map(|read| (read.account.id.0, read)).collect();
    for member in members {
        let own_ids = &ids[member.event_start as usize..(member.event_start + member.event_count) as usize];
        let mut own = Balances::default();
        for read in own_ids.iter().filter_map(|id| by_id.get(id).copied()) {
            let holds = balances.holds_of(read);
            let mut read = *read;
            read.holds_start = own.holds.len() as u32;
            own.holds.extend_from_slice(holds);
            own.reads.push(read);
        }
        send(own, member.answer);
    }
}

/// The answer of a frame of one call.
fn alone_answer(decoded: Decoded, members: Vec<Member>) {
    assert_eq!(members.len(), 1, "a frame of its own has one call");
    let answer = members.into_iter().next().expect("one member").answer;
    match (decoded, answer) {
        (Decoded::Results(results), Answer::Results(sender)) => drop(sender.send(Ok(results))),
        (Decoded::Ping(info), Answer::Ping(sender)) => drop(sender.send(Ok(info))),
        (_, other) => other.fail(&mismatch()),
    }
}
