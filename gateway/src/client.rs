//! The Rust client library: a blocking API over one TCP connection that pipelines and batches.
//!
//! Blocking calls on std threads, no async runtime: a caller's thread waits on its own one-shot
//! slot, so the library needs nothing but std. One connection carries many requests at once
//! (pipelining): writers put whole frames on the socket under a lock, and one reader thread
//! matches each reply to its waiting caller by request id, in whatever order replies come.
//! `create_transfers` and `create_accounts` calls from many threads are coalesced into shared
//! frames (batching): a caller copies its events into the open frame of its operation, and a
//! flusher thread sends that frame when it is full, or once the linger has passed since its
//! first call (by default at once: calls that arrive while a frame is being written go into the
//! next one). When the reply comes, the reader splits its sparse results among the callers,
//! each with indexes relative to its own slice. Batching amortises the per-frame cost (syscalls,
//! checksums, the server's journal write) over thousands of events, which is what makes
//! millions of transfers per second possible over a handful of connections.
//!
//! A call may carry a trace id per event (`create_transfers_traced`): the open frame then
//! becomes traced (`FLAG_TRACED`), its untraced members' events get trace id 0, and the trace
//! ids go after the events as the frame's trailer. A frame none of whose calls is traced is
//! sent exactly as before, and costs nothing more to build.
//!
//! Reconnecting is the caller's choice: after `ClientError::Closed`, `Io` or `Timeout` the
//! outcome of the requests in flight is unknown; connect again and resend them with the same
//! transfer and account ids, and the engine's idempotency returns the original outcome
//! (`exists`, or `exists_with_different_*` if the fields changed). docs/PROTOCOL.md says what
//! each operation returns on a retry.

use crate::protocol::{
    accounts_decode, balances_decode, check_reply, frame_append, frame_begin, frame_end, results_decode,
    results_timestamped_decode, transfer_records_decode, FrameError, FrameHeader, FrameOperation, ServerInfo, Status,
    BODY_SIZE_MAX_BYTES, EVENT_COUNT_MAX, FLAG_TIMESTAMP, FLAG_TRACED, HEADER_SIZE_BYTES,
};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use walletd_core::command::records_as_bytes;
use walletd_core::{
    Account, AccountId, AccountLimits, BalanceRead, EventResult, Operation, Transfer, TransferId, TransferRecord,
};

/// What went wrong with a call. The outcome of a request that failed with `Io`, `Closed` or
/// `Timeout` is unknown: it may have been applied. Resend it with the same ids.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The server refused the request with this status (nothing was applied).
    Frame(Status),
    /// The server's reply is malformed (a checksum, a size or a field is wrong).
    Protocol(String),
    /// The connection is closed.
    Closed,
    /// No reply within `ClientOptions::request_timeout`.
    Timeout,
    /// The call carries more events than one frame may: split it.
    TooManyEvents {
        operation: &'static str,
        event_count: usize,
        event_count_max: u32,
    },
    /// A cluster member that is not the leader answered; `leader` is the leader's client
    /// address when the member knows it. `ClusterClient` follows it.
    NotLeader {
        leader: Option<String>,
    },
    /// A cluster member could not commit the request in time (no majority, or no leader yet):
    /// the outcome is unknown, as after `Timeout`. Resend with the same ids.
    Unavailable,
    /// The async client already holds this many calls not yet sent (its limit): this one was
    /// not sent either. Retry later.
    QueueFull {
        calls_queued_max: u32,
    },
    /// The async client's connection ended before this call was written: nothing was sent, so
    /// nothing was applied. Retry on a new connection.
    NotSent,
}

impl Clone for ClientError {
    /// One failure may end many calls (a batch, or every call in flight when the connection
    /// closes); `io::Error` is not `Clone`, so its kind and message are copied.
    fn clone(&self) -> ClientError {
        match self {
            ClientError::Io(error) => ClientError::Io(io::Error::new(error.kind(), error.to_string())),
            ClientError::Frame(status) => ClientError::Frame(*status),
            ClientError::Protocol(message) => ClientError::Protocol(message.clone()),
            ClientError::Closed => ClientError::Closed,
            ClientError::Timeout => ClientError::Timeout,
            ClientError::TooManyEvents { operation, event_count, event_count_max } => {
                ClientError::TooManyEvents { operation, event_count: *event_count, event_count_max: *event_count_max }
            }
            ClientError::NotLeader { leader } => ClientError::NotLeader { leader: leader.clone() },
            ClientError::Unavailable => ClientError::Unavailable,
            ClientError::QueueFull { calls_queued_max } => {
                ClientError::QueueFull { calls_queued_max: *calls_queued_max }
            }
            ClientError::NotSent => ClientError::NotSent,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(error) => {
                write!(f, "I/O error on the walletd connection: {error}; reconnect and resend with the same ids")
            }
            ClientError::Frame(status) => write!(f, "walletd refused the request: {status}"),
            ClientError::Protocol(message) => {
                write!(f, "walletd sent a malformed reply: {message}; check that client and server versions match")
            }
            ClientError::Closed => write!(
                f,
                "the walletd connection is closed; the outcome of requests in flight is unknown: reconnect and resend with the same ids"
            ),
            ClientError::Timeout => write!(
                f,
                "no reply from walletd within the request timeout; the outcome is unknown: resend with the same ids"
            ),
            ClientError::TooManyEvents { operation, event_count, event_count_max } => write!(
                f,
                "{operation} call has {event_count} events, at most {event_count_max} fit in one frame: split the call"
            ),
            ClientError::NotLeader { leader: Some(leader) } => {
                write!(f, "this walletd cluster member is not the leader; the leader is at {leader}: resend there")
            }
            ClientError::NotLeader { leader: None } => {
                write!(f, "this walletd cluster member is not the leader and knows no leader yet: retry later")
            }
            ClientError::Unavailable => write!(
                f,
                "the walletd cluster could not commit the request in time (no majority or no leader); the outcome is \
                 unknown: resend with the same ids"
            ),
            ClientError::QueueFull { calls_queued_max } => write!(
                f,
                "the client holds {calls_queued_max} calls waiting to be sent, its limit: this one was not sent; \
                 retry later"
            ),
            ClientError::NotSent => write!(
                f,
                "the walletd connection ended before this call was sent: nothing was applied; retry on a new connection"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(error: FrameError) -> ClientError {
        ClientError::Protocol(error.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long a call waits for its reply (and a frame write for the socket) before `Timeout`.
    pub request_timeout: Duration,
    /// How long an open batch waits for more calls after its first before it is sent. Zero
    /// sends at once; calls arriving meanwhile fill the next frame.
    pub batch_linger: Duration,
    /// Events per batched frame, 1..=8189. A batch is sent as soon as it is full.
    pub batch_events_max: u32,
    /// The client id put in every frame; `None` derives one from the time and the process id.
    pub client_id: Option<u128>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            batch_linger: Duration::ZERO,
            batch_events_max: EVENT_COUNT_MAX,
            client_id: None,
        }
    }
}

/// The answer to a create: the failures (indexed into the caller's events), the journal op of
/// the frame that carried them, and the engine timestamp of the caller's first event (its
/// event `i` was applied at `timestamp_ns + i`: the one a `lookup` would return for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Created {
    pub results: Vec<EventResult>,
    pub op: u64,
    pub timestamp_ns: u64,
}

/// A successful reply (status 0): its header and its body, checked against the body checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub header: FrameHeader,
    pub body: Vec<u8>,
}

/// The answer to `lookup_balances`: one read per account found, in request order, and their
/// open holds (`holds_of`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    pub reads: Vec<BalanceRead>,
    pub holds: Vec<Transfer>,
}

impl Balances {
    pub fn holds_of(&self, read: &BalanceRead) -> &[Transfer] {
        let start = read.holds_start as usize;
        &self.holds[start..start + read.holds_count as usize]
    }
}

/// A connection to walletd. `Send + Sync`: share it (e.g. in an `Arc`) among threads; their
/// calls are pipelined on the one connection and their creates batched together.
pub struct Client {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
};

const BATCHER_ACCOUNTS: usize = 0;
const BATCHER_TRANSFERS: usize = 1;

struct Shared {
    client_id: u128,
    options: ClientOptions,
    request_id_next: AtomicU64,
    /// For `shutdown` only: a write or read happens on the clones below.
    stream: TcpStream,
    writer: Mutex<TcpStream>,
    pending: Mutex<Pending>,
    batchers: [Batcher; 2],
}

/// The callers waiting for replies, by request id. Once `closed`, nothing is added.
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

enum Waiter {
    Reply { operation: FrameOperation, slot: Arc<Slot<Result<Reply, ClientError>>> },
    Batch(BatchInFlight),
}

/// A sent batch: who gets which of its events' results.
struct BatchInFlight {
    operation: FrameOperation,
    event_count: u32,
    members: Vec<Member>,
}

/// One caller's share of a batch: events `event_start..event_start + event_count`.
struct Member {
    event_start: u32,
    event_count: u32,
    call: Arc<BatchCall>,
}

struct BatchCall {
    /// The caller's results, the op of the frame that carried them and their timestamp.
    slot: Slot<Result<Created, ClientError>>,
    /// The request id of the frame that carries the call; 0 while its batch is open.
    request_id: AtomicU64,
}

/// A one-shot value that one thread fills and another waits for. The first fill wins.
struct Slot<T> {
    value: Mutex<Option<T>>,
    filled: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Slot<T> {
        Slot { value: Mutex::new(None), filled: Condvar::new() }
    }

    fn fill(&self, value: T) {
        let mut guard = lock(&self.value);
        if guard.is_none() {
            *guard = Some(value);
            self.filled.notify_all();
        }
    }

    /// The value, once filled, or `None` at the deadline.
    fn wait_until(&self, deadline: Instant) -> Option<T> {
        let mut guard = lock(&self.value);
        loop {
            if let Some(value) = guard.take() {
                return Some(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = self.filled.wait_timeout(guard, deadline - now).unwrap_or_else(|poison| poison.into_inner()).0;
        }
    }

    fn try_take(&self) -> Option<T> {
        lock(&self.value).take()
    }
}

/// Locks, ignoring poison: the client's state stays consistent across a panicking caller
/// (every critical section completes its update before it can panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Coalesces one operation's calls into frames.
struct Batcher {
    operation: Operation,
    state: Mutex<BatchState>,
    /// Signals the flusher: a call joined, a caller waits for room, or the client closed.
    joined: Condvar,
    /// Signals callers: the open batch was taken, so there is room again.
    taken: Condvar,
}

struct BatchState {
    /// The open frame: a header placeholder and the events of `members`, in order.
    frame: Vec<u8>,
    /// Once a traced call joined the open batch: one trace id per event of the batch (0 for
    /// the events of untraced calls), the frame's trailer. Empty while no call is traced.
    trace_ids: Vec<u128>,
    traced: bool,
    members: Vec<Member>,
    event_count: u32,
    /// When the first member joined the open batch.
    opened_at: Option<Instant>,
    /// Callers waiting for the open batch to be taken because their events do not fit.
    room_waiting_count: u32,
    /// A sent frame's buffer, kept for the next batch.
    spare: Option<Vec<u8>>,
    closed: bool,
}

impl Batcher {
    fn new(operation: Operation) -> Batcher {
        let mut frame = Vec::new();
        frame_begin(&mut frame);
        Batcher {
            operation,
            state: Mutex::new(BatchState {
                frame,
                trace_ids: Vec::new(),
                traced: false,
                members: Vec::new(),
                event_count: 0,
                opened_at: None,
                room_waiting_count: 0,
                spare: None,
                closed: false,
            }),
            joined: Condvar::new(),
            taken: Condvar::new(),
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.joined.notify_all();
        self.taken.notify_all();
    }
}

impl Client {
    /// Connects to a walletd gateway and starts the reader and the two batch flushers.
    pub fn connect(address: impl ToSocketAddrs, options: ClientOptions) -> Result<Client, ClientError> {
        assert!(options.batch_events_max >= 1, "batch_events_max must be at least 1");
        assert!(options.batch_events_max <= EVENT_COUNT_MAX, "batch_events_max is at most 8189");
        let stream = stream_connect(address, options.request_timeout)?;
        let shared = Arc::new(Shared {
            client_id: options.client_id.unwrap_or_else(client_id_generate),
            options,
            request_id_next: AtomicU64::new(1),
            writer: Mutex::new(stream.try_clone().map_err(ClientError::Io)?),
            stream,
            pending: Mutex::new(Pending { waiters: HashMap::new(), closed: false }),
            batchers: [Batcher::new(Operation::CreateAccounts), Batcher::new(Operation::CreateTransfers)],
        });
        let reader_stream = shared.stream.try_clone().map_err(ClientError::Io)?;
        let mut threads = Vec::with_capacity(3);
        let reader_shared = Arc::clone(&shared);
        threads.push(thread_spawn("walletd-client-reader", move || reader_run(&reader_shared, reader_stream))?);
        for (index, name) in
            [(BATCHER_ACCOUNTS, "walletd-client-accounts"), (BATCHER_TRANSFERS, "walletd-client-transfers")]
        {
            let flusher_shared = Arc::clone(&shared);
            threads.push(thread_spawn(name, move || batch_flusher_run(&flusher_shared, index))?);
        }
        Ok(Client { shared, threads })
    }

    pub fn client_id(&self) -> u128 {
        self.shared.client_id
    }

    /// Creates accounts; returns the failures only, indexed into `accounts`. Batched with other
    /// threads' calls.
    pub fn create_accounts(&self, accounts: &[Account]) -> Result<Vec<EventResult>, ClientError> {
        Ok(self.create_accounts_with_op(accounts, None)?.0)
    }

    /// `create_accounts` with a trace id per account (`trace_ids[i]` is `accounts[i]`'s; 0:
    /// none), journaled with the accounts for followers to read.
    pub fn create_accounts_traced(
        &self,
        accounts: &[Account],
        trace_ids: &[u128],
    ) -> Result<Vec<EventResult>, ClientError> {
        Ok(self.create_accounts_with_op(accounts, Some(trace_ids))?.0)
    }

    /// `create_accounts` (traced when `trace_ids` is given, one per account), with the journal
    /// op of the frame that carried them (0 when nothing was sent): everything they did
    /// happened at or before it.
    pub fn create_accounts_with_op(
        &self,
        accounts: &[Account],
        trace_ids: Option<&[u128]>,
    ) -> Result<(Vec<EventResult>, u64), ClientError> {
        let created = self.create_accounts_created(accounts, trace_ids)?;
        Ok((created.results, created.op))
    }

    /// `create_accounts_with_op`, with the timestamp each account was created at.
    pub fn create_accounts_created(
        &self,
        accounts: &[Account],
        trace_ids: Option<&[u128]>,
    ) -> Result<Created, ClientError> {
        if let Some(trace_ids) = trace_ids {
            assert_eq!(accounts.len(), trace_ids.len(), "one trace id per account");
        }
        batch_submit(&self.shared, BATCHER_ACCOUNTS, records_as_bytes(accounts), accounts.len(), trace_ids)
    }

    /// Creates transfers; returns the failures only, indexed into `transfers`. Batched with
    /// other threads' calls; a call's transfers stay contiguous and in order in one frame, so
    /// linked chains are kept whole.
    pub fn create_transfers(&self, transfers: &[Transfer]) -> Result<Vec<EventResult>, ClientError> {
        Ok(self.create_transfers_with_op(transfers, None)?.0)
    }

    /// `create_transfers` with a trace id per transfer (`trace_ids[i]` is `transfers[i]`'s,
    /// typically the W3C trace id of the request it came from; 0: none). The trace ids are
    /// journaled with the transfers, never read by the ledger, and given back per event by the
    /// follower (docs/PROTOCOL.md, "Traced requests").
    pub fn create_transfers_traced(
        &self,
        transfers: &[Transfer],
        trace_ids: &[u128],
    ) -> Result<Vec<EventResult>, ClientError> {
        Ok(self.create_transfers_with_op(transfers, Some(trace_ids))?.0)
    }

    /// `create_transfers` (traced when `trace_ids` is given, one per transfer), with the journal
    /// op of the frame that carried them (0 when nothing was sent). The op is what makes a
    /// refusal datable: a transfer refused `id_too_old` at op R was applied, if ever, before R
    /// (the HTTP gateway asks the history up to R).
    pub fn create_transfers_with_op(
        &self,
        transfers: &[Transfer],
        trace_ids: Option<&[u128]>,
    ) -> Result<(Vec<EventResult>, u64), ClientError> {
        let created = self.create_transfers_created(transfers, trace_ids)?;
        Ok((created.results, created.op))
    }

    /// `create_transfers_with_op`, with the timestamp each transfer was applied at: a transfer
    /// created now (no result listed) is stored as sent with that timestamp, so a caller that
    /// needs the stored record of a new transfer need not read it back.
    pub fn create_transfers_created(
        &self,
        transfers: &[Transfer],
        trace_ids: Option<&[u128]>,
    ) -> Result<Created, ClientError> {
        if let Some(trace_ids) = trace_ids {
            assert_eq!(transfers.len(), trace_ids.len(), "one trace id per transfer");
        }
        batch_submit(&self.shared, BATCHER_TRANSFERS, records_as_bytes(transfers), transfers.len(), trace_ids)
    }

    pub fn close_accounts(&self, ids: &[AccountId]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::CloseAccounts, records_as_bytes(ids), ids.len())
    }

    pub fn reopen_accounts(&self, ids: &[AccountId]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::ReopenAccounts, records_as_bytes(ids), ids.len())
    }

    pub fn set_account_limits(&self, limits: &[AccountLimits]) -> Result<Vec<EventResult>, ClientError> {
        self.results_request(Operation::SetAccountLimits, records_as_bytes(limits), limits.len())
    }

    /// The accounts found, in request order (missing ids are skipped).
    pub fn lookup_accounts(&self, ids: &[AccountId]) -> Result<Vec<Account>, ClientError> {
        let operation = FrameOperation::Ledger(Operation::LookupAccounts);
        let reply = self.typed_request(operation, records_as_bytes(ids), ids.len())?;
        records_count_check(&reply, ids.len())?;
        let mut accounts = Vec::with_capacity(reply.header.event_count as usize);
        accounts_decode(operation, reply.header.event_count, &reply.body, &mut accounts)?;
        Ok(accounts)
    }

    /// The transfers found and their status, in request order (missing ids are skipped).
    pub fn lookup_transfers(&self, ids: &[TransferId]) -> Result<Vec<TransferRecord>, ClientError> {
        let operation = FrameOperation::Ledger(Operation::LookupTransfers);
        let reply = self.typed_request(operation, records_as_bytes(ids), ids.len())?;
        records_count_check(&reply, ids.len())?;
        let mut records = Vec::with_capacity(reply.header.event_count as usize);
        transfer_records_decode(operation, reply.header.event_count, &reply.body, &mut records)?;
        Ok(records)
    }

    /// Balances, limits, usage and open holds of each account found, as one consistent read.
    pub fn lookup_balances(&self, ids: &[AccountId]) -> Result<Balances, ClientError> {
        let operation = FrameOperation::Ledger(Operation::LookupBalances);
        let reply = self.typed_request(operation, records_as_bytes(ids), ids.len())?;
        records_count_check(&reply, ids.len())?;
        let mut balances = Balances::default();
        balances_decode(operation, reply.header.event_count, &reply.body, &mut balances.reads, &mut balances.holds)?;
        Ok(balances)
    }

    /// Advances the engine's clock (pending transfers expire); returns the pulse's journal op.
    pub fn pulse(&self) -> Result<u64, ClientError> {
        let reply = self.typed_request(FrameOperation::Ledger(Operation::Pulse), &[], 0)?;
        records_count_check(&reply, 0)?;
        Ok(reply.header.op)
    }

    /// A round trip to the gateway, which answers without touching the ledger.
    pub fn ping(&self) -> Result<(), ClientError> {
        let reply = self.typed_request(FrameOperation::Ping, &[], 0)?;
        records_count_check(&reply, 0)
    }

    /// The server's limits (its idempotency window, `id_future_ms_max`, events per request,
    /// timeouts, …), from a ping's reply; `None` from a server too old to send them.
    pub fn server_info(&self) -> Result<Option<ServerInfo>, ClientError> {
        let reply = self.typed_request(FrameOperation::Ping, &[], 0)?;
        records_count_check(&reply, 0)?;
        Ok(ServerInfo::decode(&reply.body)?)
    }

    /// Admin: asks the node to take a snapshot now; returns its op.
    pub fn snapshot(&self) -> Result<u64, ClientError> {
        let reply = self.typed_request(FrameOperation::Snapshot, &[], 0)?;
        records_count_check(&reply, 0)?;
        Ok(reply.header.op)
    }

    /// Sends `body` as one frame of `operation`, unbatched and unchecked, and returns the reply
    /// as it came (for benchmarks and protocol tests). `event_count` is `body.len()` divided by
    /// the operation's event size (0 for operations without events): a body that is not whole
    /// events is sent as it is, and the server judges it.
    pub fn request(&self, operation: FrameOperation, body: &[u8]) -> Result<Reply, ClientError> {
        if body.len() > BODY_SIZE_MAX_BYTES as usize {
            let event_count = body.len() / operation.event_size_bytes().max(1);
            return Err(ClientError::TooManyEvents {
                operation: operation.name(),
                event_count,
                event_count_max: operation.event_count_max(),
            });
        }
        let event_count = body.len().checked_div(operation.event_size_bytes()).unwrap_or(0) as u32;
        request_send(&self.shared, operation, event_count, body)
    }

    fn results_request(
        &self,
        operation: Operation,
        events: &[u8],
        event_count: usize,
    ) -> Result<Vec<EventResult>, ClientError> {
        let operation = FrameOperation::Ledger(operation);
        if event_count == 0 {
            // Nothing to do, and the server refuses an empty mutating request (no_events).
            return Ok(Vec::new());
        }
        let reply = self.typed_request(operation, events, event_count)?;
        let mut results = Vec::new();
        results_decode(operation, reply.header.event_count, &reply.body, &mut results)?;
        if results.last().is_some_and(|last| last.index as usize >= event_count) {
            return Err(ClientError::Protocol(format!(
                "{} reply has a result for an event index past the {event_count} sent",
                operation.name()
            )));
        }
        Ok(results)
    }

    fn typed_request(
        &self,
        operation: FrameOperation,
        events: &[u8],
        event_count: usize,
    ) -> Result<Reply, ClientError> {
        assert_eq!(events.len(), event_count * operation.event_size_bytes());
        events_count_check(operation, event_count, operation.event_count_max())?;
        request_send(&self.shared, operation, event_count as u32, events)
    }
}

impl Drop for Client {
    /// Closes the connection: calls still waiting get `Closed`; the threads are joined.
    fn drop(&mut self) {
        let _ = self.shared.stream.shutdown(Shutdown::Both);
        for batcher in &self.shared.batchers {
            batcher.close();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn events_count_check(operation: FrameOperation, event_count: usize, event_count_max: u32) -> Result<(), ClientError> {
    if event_count > event_count_max as usize {
        return Err(ClientError::TooManyEvents { operation: operation.name(), event_count, event_count_max });
    }
    Ok(())
}

/// A read returns at most one record per id asked for; pulse, ping and snapshot none.
fn records_count_check(reply: &Reply, event_count_sent: usize) -> Result<(), ClientError> {
    reply_records_count_check(&reply.header, event_count_sent)
}

pub(crate) fn reply_records_count_check(header: &FrameHeader, event_count_sent: usize) -> Result<(), ClientError> {
    if header.event_count as usize > event_count_sent {
        return Err(ClientError::Protocol(format!(
            "reply has {} records for {event_count_sent} events sent",
            header.event_count
        )));
    }
    Ok(())
}

fn stream_connect(address: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut error_last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to nothing");
    for address in address.to_socket_addrs().map_err(ClientError::Io)? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(ClientError::Io)?;
                // A server that stops reading must not hold a writer (and the lock) forever.
                stream.set_write_timeout(Some(timeout)).map_err(ClientError::Io)?;
                return Ok(stream);
            }
            Err(error) => error_last = error,
        }
    }
    Err(ClientError::Io(error_last))
}

fn thread_spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ClientError> {
    std::thread::Builder::new().name(name.to_string()).spawn(run).map_err(ClientError::Io)
}

/// A client id unlikely to collide: the time in ns, the process id and a per-process counter,
/// mixed. Never zero.
pub(crate) fn client_id_generate() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let time_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let high = splitmix64(time_ns ^ (u64::from(std::process::id()) << 32));
    let low = splitmix64(high ^ count.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    ((u128::from(high) << 64) | u128::from(low)).max(1)
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Unbatched requests.

fn request_send(
    shared: &Shared,
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
) -> Result<Reply, ClientError> {
    assert!(body.len() <= BODY_SIZE_MAX_BYTES as usize, "callers check the body size");
    let deadline = Instant::now() + shared.options.request_timeout;
    let slot = Arc::new(Slot::new());
    let request_id = shared.request_id_next.fetch_add(1, Ordering::Relaxed);
    assert!(request_id != 0, "request ids start at 1");
    pending_insert(shared, request_id, Waiter::Reply { operation, slot: Arc::clone(&slot) })?;
    let mut frame = Vec::with_capacity(HEADER_SIZE_BYTES + body.len());
    frame_append(&FrameHeader::request(operation, request_id, shared.client_id, event_count), body, &mut frame);
    if let Err(error) = frame_write(shared, &frame) {
        pending_remove(shared, request_id);
        return Err(error);
    }
    match slot.wait_until(deadline) {
        Some(result) => result,
        None => {
            pending_remove(shared, request_id);
            // The reply may have arrived between the deadline and the removal.
            slot.try_take().unwrap_or(Err(ClientError::Timeout))
        }
    }
}

fn pending_insert(shared: &Shared, request_id: u64, waiter: Waiter) -> Result<(), ClientError> {
    let mut pending = lock(&shared.pending);
    if pending.closed {
        return Err(ClientError::Closed);
    }
    let previous = pending.waiters.insert(request_id, waiter);
    assert!(previous.is_none(), "request id reused");
    Ok(())
}

fn pending_remove(shared: &Shared, request_id: u64) -> Option<Waiter> {
    lock(&shared.pending).waiters.remove(&request_id)
}

/// Writes one whole frame. A failed or timed-out write may have sent part of it, so the
/// stream's framing is lost: the connection is shut down and every call in flight ends.
fn frame_write(shared: &Shared, frame: &[u8]) -> Result<(), ClientError> {
    assert!(frame.len() >= HEADER_SIZE_BYTES, "a frame has a header");
    let result = lock(&shared.writer).write_all(frame);
    result.map_err(|error| {
        let _ = shared.stream.shutdown(Shutdown::Both);
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                ClientError::Closed
            }
            _ => ClientError::Io(error),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Batched requests.

/// Puts a caller's events into its operation's open batch and waits for its results.
fn batch_submit(
    shared: &Shared,
    batcher_index: usize,
    events: &[u8],
    event_count: usize,
    trace_ids: Option<&[u128]>,
) -> Result<Created, ClientError> {
    let batcher = &shared.batchers[batcher_index];
    let operation = FrameOperation::Ledger(batcher.operation);
    assert_eq!(events.len(), event_count * operation.event_size_bytes());
    events_count_check(operation, event_count, shared.options.batch_events_max)?;
    if event_count == 0 {
        return Ok(Created::default());
    }
    let deadline = Instant::now() + shared.options.request_timeout;
    let call = Arc::new(BatchCall { slot: Slot::new(), request_id: AtomicU64::new(0) });
    {
        let mut state = batch_room_wait(shared, batcher, event_count as u32, deadline)?;
        if state.members.is_empty() {
            state.opened_at = Some(Instant::now());
        }
        state.frame.extend_from_slice(events);
        batch_trace_ids_add(&mut state, trace_ids, event_count);
        let event_start = state.event_count;
        state.members.push(Member { event_start, event_count: event_count as u32, call: Arc::clone(&call) });
        state.event_count += event_count as u32;
        assert!(state.event_count <= shared.options.batch_events_max);
    }
    batcher.joined.notify_one();
    match call.slot.wait_until(deadline) {
        Some(result) => result,
        None => batch_call_abandon(shared, batcher, &call),
    }
}

/// Keeps the open batch's trailer aligned with its events: the first traced call makes the
/// batch traced (the events before it get trace id 0); once traced, an untraced call's events
/// get 0 too. Called before `event_count` is added to the batch's.
fn batch_trace_ids_add(state: &mut BatchState, trace_ids: Option<&[u128]>, event_count: usize) {
    if trace_ids.is_none() && !state.traced {
        return; // untraced into untraced: nothing to keep
    }
    if !state.traced {
        assert!(state.trace_ids.is_empty(), "an untraced batch has no trailer");
        state.traced = true;
        state.trace_ids.resize(state.event_count as usize, 0);
    }
    match trace_ids {
        Some(trace_ids) => state.trace_ids.extend_from_slice(trace_ids),
        None => state.trace_ids.resize(state.trace_ids.len() + event_count, 0),
    }
    assert_eq!(state.trace_ids.len(), state.event_count as usize + event_count, "a trace id per event");
}

/// Waits until the open batch has room for `event_count` more events.
fn batch_room_wait<'a>(
    shared: &Shared,
    batcher: &'a Batcher,
    event_count: u32,
    deadline: Instant,
) -> Result<MutexGuard<'a, BatchState>, ClientError> {
    let mut state = lock(&batcher.state);
    loop {
        if state.closed {
            return Err(ClientError::Closed);
        }
        if state.event_count + event_count <= shared.options.batch_events_max {
            return Ok(state);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout);
        }
        state.room_waiting_count += 1;
        batcher.joined.notify_one();
        state = batcher.taken.wait_timeout(state, deadline - now).unwrap_or_else(|poison| poison.into_inner()).0;
        state.room_waiting_count -= 1;
    }
}

/// A batched call timed out. If its frame was sent, the frame's waiter is removed and all its
/// members time out together (they share one reply); if its batch is still open, its events
/// go out with it and the reply is dropped. Either way the outcome is unknown to the caller.
fn batch_call_abandon(shared: &Shared, batcher: &Batcher, call: &BatchCall) -> Result<Created, ClientError> {
    let state = lock(&batcher.state);
    let request_id = call.request_id.load(Ordering::Acquire);
    if request_id != 0 {
        if let Some(Waiter::Batch(batch)) = pending_remove(shared, request_id) {
            batch_fail(&batch, &ClientError::Timeout);
        }
    }
    drop(state);
    call.slot.try_take().unwrap_or(Err(ClientError::Timeout))
}

/// The flusher of one batcher: sends the open batch when it is full, when callers wait for
/// room, or when the linger has passed since its first call.
fn batch_flusher_run(shared: &Shared, batcher_index: usize) {
    let batcher = &shared.batchers[batcher_index];
    let mut state = lock(&batcher.state);
    loop {
        while state.members.is_empty() && !state.closed {
            state = batcher.joined.wait(state).unwrap_or_else(|poison| poison.into_inner());
        }
        state = batch_linger_wait(shared, batcher, state);
        if state.closed {
            let members = std::mem::take(&mut state.members);
            for member in members {
                member.call.slot.fill(Err(ClientError::Closed));
            }
            return;
        }
        let (mut frame, taken) = batch_take(shared, batcher, &mut state);
        drop(state);
        if let Some(taken) = taken {
            batch_send(shared, FrameOperation::Ledger(batcher.operation), &mut frame, taken);
        }
        state = lock(&batcher.state);
        frame.truncate(HEADER_SIZE_BYTES);
        state.spare = Some(frame);
    }
}

fn batch_linger_wait<'a>(
    shared: &Shared,
    batcher: &'a Batcher,
    mut state: MutexGuard<'a, BatchState>,
) -> MutexGuard<'a, BatchState> {
    let linger = shared.options.batch_linger;
    loop {
        let full = state.event_count >= shared.options.batch_events_max || state.room_waiting_count > 0;
        let Some(opened_at) = state.opened_at else { return state };
        let elapsed = opened_at.elapsed();
        if state.closed || full || elapsed >= linger {
            return state;
        }
        state = batcher.joined.wait_timeout(state, linger - elapsed).unwrap_or_else(|poison| poison.into_inner()).0;
    }
}

/// Takes the open batch (its frame, members and a request id) and registers it as in flight;
/// returns the frame (its trailer appended, if traced) and, unless the connection closed (its
/// members then failed), the request id and shape to send it with.
fn batch_take(shared: &Shared, batcher: &Batcher, state: &mut BatchState) -> (Vec<u8>, Option<BatchTaken>) {
    let event_size_bytes = batcher.operation.event_size_bytes();
    assert!(!state.members.is_empty(), "taking an empty batch");
    assert_eq!(state.frame.len(), HEADER_SIZE_BYTES + state.event_count as usize * event_size_bytes);
    let mut next = state.spare.take().unwrap_or_default();
    if next.is_empty() {
        frame_begin(&mut next);
    }
    let mut frame = std::mem::replace(&mut state.frame, next);
    let traced = std::mem::take(&mut state.traced);
    if traced {
        assert_eq!(state.trace_ids.len(), state.event_count as usize);
        frame.extend_from_slice(records_as_bytes(&state.trace_ids));
        state.trace_ids.clear();
    }
    let request_id = shared.request_id_next.fetch_add(1, Ordering::Relaxed);
    let members = std::mem::take(&mut state.members);
    for member in &members {
        member.call.request_id.store(request_id, Ordering::Release);
    }
    let event_count = state.event_count;
    let batch = BatchInFlight { operation: FrameOperation::Ledger(batcher.operation), event_count, members };
    state.event_count = 0;
    state.opened_at = None;
    batcher.taken.notify_all();
    let mut pending = lock(&shared.pending);
    if pending.closed {
        batch_fail(&batch, &ClientError::Closed);
        return (frame, None);
    }
    pending.waiters.insert(request_id, Waiter::Batch(batch));
    (frame, Some(BatchTaken { request_id, event_count, traced }))
}

/// A batch taken to be sent: its frame's request id and shape.
struct BatchTaken {
    request_id: u64,
    event_count: u32,
    traced: bool,
}

fn batch_send(shared: &Shared, operation: FrameOperation, frame: &mut [u8], taken: BatchTaken) {
    let BatchTaken { request_id, event_count, traced } = taken;
    let trace_size_bytes = if traced { walletd_core::command::TRACE_ID_SIZE_BYTES } else { 0 };
    let event_size_bytes = operation.event_size_bytes() + trace_size_bytes;
    assert_eq!(frame.len(), HEADER_SIZE_BYTES + event_count as usize * event_size_bytes);
    assert!(event_count >= 1 && event_count <= shared.options.batch_events_max);
    let header = FrameHeader::request(operation, request_id, shared.client_id, event_count);
    // Every batched create asks for its timestamp, so each caller learns its events' own.
    let flags = if traced { FLAG_TRACED | FLAG_TIMESTAMP } else { FLAG_TIMESTAMP };
    frame_end(frame, 0, &FrameHeader { flags, ..header });
    if let Err(error) = frame_write(shared, frame) {
        if let Some(Waiter::Batch(batch)) = pending_remove(shared, request_id) {
            batch_fail(&batch, &error);
        }
    }
}

fn batch_fail(batch: &BatchInFlight, error: &ClientError) {
    for member in &batch.members {
        member.call.slot.fill(Err(error.clone()));
    }
}

/// Splits a batch's sparse results among its members, re-indexed into each caller's slice.
fn batch_reply_distribute(batch: BatchInFlight, header: &FrameHeader, body: &[u8]) {
    let mut results = Vec::with_capacity(header.event_count as usize);
    if header.flags & FLAG_TIMESTAMP == 0 {
        let message = "a reply to a batched create has no timestamp (the server predates the timestamp flag)";
        return batch_fail(&batch, &ClientError::Protocol(message.into()));
    }
    let timestamp_ns = match results_timestamped_decode(batch.operation, header.event_count, body, &mut results) {
        Ok(timestamp_ns) => timestamp_ns,
        Err(error) => return batch_fail(&batch, &error.into()),
    };
    if results.last().is_some_and(|last| last.index >= batch.event_count) {
        let message = format!("a result's index is past the {} events of the batch", batch.event_count);
        return batch_fail(&batch, &ClientError::Protocol(message));
    }
    let mut cursor = 0;
    for member in &batch.members {
        let own = member_results_take(&results, &mut cursor, member.event_start, member.event_count);
        let timestamp_ns = timestamp_ns + u64::from(member.event_start);
        member.call.slot.fill(Ok(Created { results: own, op: header.op, timestamp_ns }));
    }
    assert_eq!(cursor, results.len(), "every result went to a member");
}

/// The results of one member of a batch (events `event_start..event_start + event_count`),
/// re-indexed into its own slice, from the batch's sparse results at `cursor`; members are
/// taken in order, so `cursor` moves past them.
pub(crate) fn member_results_take(
    results: &[EventResult],
    cursor: &mut usize,
    event_start: u32,
    event_count: u32,
) -> Vec<EventResult> {
    let event_end = event_start + event_count;
    let mut own = Vec::new();
    while *cursor < results.len() && results[*cursor].index < event_end {
        let result = results[*cursor];
        assert!(result.index >= event_start, "members cover the batch in order");
        own.push(EventResult { index: result.index - event_start, code: result.code });
        *cursor += 1;
    }
    own
}

// ---------------------------------------------------------------------------------------------
// The reader.

/// Reads replies until the connection ends, then ends every call still waiting.
fn reader_run(shared: &Shared, stream: TcpStream) {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let error = loop {
        match reply_read(&mut reader) {
            Ok((header, body)) => {
                if let Err(error) = reply_dispatch(shared, header, body) {
                    break error;
                }
            }
            Err(error) => break error,
        }
    };
    let _ = shared.stream.shutdown(Shutdown::Both);
    let waiters: Vec<Waiter> = {
        let mut pending = lock(&shared.pending);
        pending.closed = true;
        pending.waiters.drain().map(|(_, waiter)| waiter).collect()
    };
    for waiter in waiters {
        waiter_fail(waiter, &error);
    }
    for batcher in &shared.batchers {
        batcher.close();
    }
}

/// One reply frame; an error here means the stream can no longer be read.
fn reply_read(reader: &mut impl Read) -> Result<(FrameHeader, Vec<u8>), ClientError> {
    let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
    reader.read_exact(&mut header_bytes).map_err(read_error)?;
    let header = FrameHeader::decode(&header_bytes)?;
    let mut body = vec![0u8; header.body_size_bytes as usize];
    reader.read_exact(&mut body).map_err(read_error)?;
    assert_eq!(body.len(), header.body_size_bytes as usize);
    Ok((header, body))
}

pub(crate) fn read_error(error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ClientError::Closed
        }
        _ => ClientError::Io(error),
    }
}

/// Hands one reply to its caller. Returns an error when the connection must end: an error
/// reply with request id 0 (which no request has) is about the connection itself — the server
/// lost the framing, or refuses the connection — and every call in flight ends with it.
fn reply_dispatch(shared: &Shared, header: FrameHeader, body: Vec<u8>) -> Result<(), ClientError> {
    let checked = check_reply(&header, &body);
    if let Ok(status) = checked {
        if status != Status::Ok && header.request_id == 0 {
            return Err(ClientError::Frame(status));
        }
    }
    let Some(waiter) = pending_remove(shared, header.request_id) else {
        return Ok(()); // Its caller timed out: nobody waits for this reply.
    };
    let operation = match &waiter {
        Waiter::Reply { operation, .. } => *operation,
        Waiter::Batch(batch) => batch.operation,
    };
    let result = reply_result(checked, &header, &body, shared.client_id, operation);
    match (waiter, result) {
        (waiter, Err(error)) => waiter_fail(waiter, &error),
        (Waiter::Reply { slot, .. }, Ok(())) => slot.fill(Ok(Reply { header, body })),
        (Waiter::Batch(batch), Ok(())) => batch_reply_distribute(batch, &header, &body),
    }
    Ok(())
}

/// What a reply to one request of `operation` says, once `check_reply` judged it (`checked`):
/// `Ok` for records to decode, or the call's error. Shared with the async client.
pub(crate) fn reply_result(
    checked: Result<Status, FrameError>,
    header: &FrameHeader,
    body: &[u8],
    client_id: u128,
    operation: FrameOperation,
) -> Result<(), ClientError> {
    match checked {
        Err(error) => Err(ClientError::from(error)),
        Ok(_) if header.client_id != client_id => {
            Err(ClientError::Protocol(format!("reply for client {:#x}, not this client", header.client_id)))
        }
        Ok(_) if header.operation != operation.code() => Err(ClientError::Protocol(format!(
            "reply to request {} is for operation {}, the request was {}",
            header.request_id,
            header.operation,
            operation.name()
        ))),
        Ok(Status::Ok) => Ok(()),
        Ok(Status::NotLeader) => {
            let leader = std::str::from_utf8(body).expect("check_reply checked the address").to_string();
            Err(ClientError::NotLeader { leader: (!leader.is_empty()).then_some(leader) })
        }
        Ok(Status::Unavailable) => Err(ClientError::Unavailable),
        Ok(status) => Err(ClientError::Frame(status)),
    }
}

fn waiter_fail(waiter: Waiter, error: &ClientError) {
    match waiter {
        Waiter::Reply { slot, .. } => slot.fill(Err(error.clone())),
        Waiter::Batch(batch) => batch_fail(&batch, error),
    }
}

/// Why a connection failed, in words a person can act on (for command-line tools).
pub fn connect_reason(error: &ClientError) -> String {
    match error {
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens there; start `walletd serve`, or pass --addr HOST:PORT".into()
        }
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            "timed out connecting: check the address and that the host is reachable".into()
        }
        other => other.to_string(),
    }
}
