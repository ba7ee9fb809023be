//! The bridge from async handlers to the engine: a queue in front of `walletd_gateway::Client`.
//!
//! Handlers run on tokio; the client is blocking and pipelines on one connection. Between them
//! sits one bounded queue and a few dispatcher threads (not a `spawn_blocking` per request):
//! a dispatcher takes every job waiting, up to a frame's worth per operation, sends each
//! operation's jobs as one client call (so a thousand concurrent HTTP requests become a few
//! frames of thousands of events), and splits the answer among the jobs by index or id. A
//! create job carries its request's trace id; the round keeps one trace id per event, aligned
//! with the events, so the frame is traced (docs/PROTOCOL.md) and every event is journaled
//! with the trace of the request it came from. Several
//! dispatchers keep several frames in flight while the next ones fill. The codec is the
//! gateway's own (through the client): there is no second one.
//!
//! The connection is replaced when it fails: jobs in flight then end with `OutcomeUnknown`
//! (the handler answers 503 and the client retries with the same idempotency key, which the
//! engine recognises), jobs not yet sent with `Unavailable` (nothing was applied).

use crate::metrics::Metrics;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use walletd_core::{Account, AccountId, AccountLimits, BalanceRead, EventResult, Transfer, TransferId, TransferRecord};
use walletd_gateway::{Balances, Client, ClientError, ClientOptions, Created, Status};

/// Why a job did not get an engine answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    /// Nothing was sent: the engine is not reachable (or the queue is full). Safe to retry.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
    /// The request was sent and no reply came: it may have been applied. Retry with the same
    /// idempotency key and the engine returns the original outcome.
    #[error("the engine connection failed with the request in flight ({0}); its outcome is unknown: retry with the same idempotency key")]
    OutcomeUnknown(String),
    /// The engine refused the frame (nothing was applied).
    #[error("the engine refused the request: {0}")]
    Refused(Status),
}

impl From<ClientError> for EngineError {
    fn from(error: ClientError) -> EngineError {
        match error {
            ClientError::Frame(status) => EngineError::Refused(status),
            ClientError::TooManyEvents { .. } => EngineError::Refused(Status::TooManyEvents),
            other => EngineError::OutcomeUnknown(other.to_string()),
        }
    }
}

type Answer<T> = oneshot::Sender<Result<T, EngineError>>;

/// One caller's request, waiting in the queue.
enum Job {
    /// The events and the trace id of the request they came from (0: none).
    CreateTransfers(Vec<Transfer>, u128, Answer<Submitted>),
    CreateAccounts(Vec<Account>, u128, Answer<Submitted>),
    LookupAccounts(Vec<AccountId>, Answer<Vec<Account>>),
    LookupTransfers(Vec<TransferId>, Answer<Vec<TransferRecord>>),
    LookupBalances(Vec<AccountId>, Answer<Balances>),
    /// Unbatched: close, reopen and limits are rare operator calls.
    CloseAccounts(Vec<AccountId>, bool, Answer<Vec<EventResult>>),
    SetLimits(Vec<AccountLimits>, Answer<Vec<EventResult>>),
    Ping(Answer<()>),
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub addr: SocketAddr,
    /// Every address to try, `addr` first: the members of a cluster (a member that cannot be
    /// reached is passed over for the next). A single engine is the list of one.
    pub members: Vec<SocketAddr>,
    /// Dispatcher threads: frames in flight at once.
    pub dispatchers: usize,
    /// Jobs waiting at most; more are answered `Unavailable` (503, retry).
    pub queue_jobs_max: usize,
    pub request_timeout: Duration,
}

impl EngineOptions {
    pub fn new(addr: SocketAddr) -> EngineOptions {
        EngineOptions {
            addr,
            members: vec![addr],
            dispatchers: 4,
            queue_jobs_max: 65_536,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The answer to a create: the failures (indexed into the caller's events), the journal op
/// of the frame that carried them, at or before which everything they did happened, and the
/// engine timestamp of the caller's first event (event `i` was applied at it + `i`).
#[derive(Clone, Debug, Default)]
pub struct Submitted {
    pub results: Vec<EventResult>,
    pub op: u64,
    pub timestamp_ns: u64,
}

/// The handlers' side of the bridge. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    queue: Sender<Job>,
    /// The highest journal op a reply has carried (0: none yet): how far the engine is known
    /// to be, for the history's lag.
    op_seen: Arc<AtomicU64>,
}

struct Shared {
    options: EngineOptions,
    /// Where the next connection goes: `options.addr`, or the leader a cluster member named
    /// in a `not_leader` reply (back to `options.addr` when that one cannot be reached).
    addr_current: Mutex<SocketAddr>,
    op_seen: Arc<AtomicU64>,
    /// The current connection; `None` after it failed, until the next job connects again.
    client: Mutex<Option<Arc<Client>>>,
    metrics: Arc<Metrics>,
}

/// Owns the dispatcher threads; dropping it stops them once the queue is drained.
pub struct EngineThreads {
    threads: Vec<JoinHandle<()>>,
}

impl Drop for EngineThreads {
    fn drop(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Engine {
    /// Starts the dispatchers. The connection is made by the first job (so a gateway can start
    /// before its engine); `/readyz` says whether it is up.
    pub fn start(options: EngineOptions, metrics: Arc<Metrics>) -> (Engine, EngineThreads) {
        assert!(options.dispatchers >= 1, "at least one dispatcher");
        assert!(options.queue_jobs_max >= 1);
        let (queue, jobs) = crossbeam_channel::bounded(options.queue_jobs_max);
        let op_seen = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            addr_current: Mutex::new(options.addr),
            options,
            op_seen: Arc::clone(&op_seen),
            client: Mutex::new(None),
            metrics,
        });
        let threads = (0..shared.options.dispatchers)
            .map(|index| {
                let jobs = jobs.clone();
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("http-engine-{index}"))
                    .spawn(move || dispatcher_run(&shared, &jobs))
                    .expect("spawn a dispatcher thread")
            })
            .collect();
        (Engine { queue, op_seen }, EngineThreads { threads })
    }

    async fn call<T>(&self, job: impl FnOnce(Answer<T>) -> Job) -> Result<T, EngineError> {
        let (answer, answered) = oneshot::channel();
        match self.queue.try_send(job(answer)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(EngineError::Unavailable("the gateway's engine queue is full".into()));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(EngineError::Unavailable("the gateway is stopping".into()))
            }
        }
        answered.await.unwrap_or_else(|_| Err(EngineError::OutcomeUnknown("the dispatcher stopped".into())))
    }

    /// Failures only, indexed into `transfers`, and the frame's op; the transfers stay
    /// contiguous in one frame. `trace_id` (0: none) is journaled with each of them.
    pub async fn create_transfers(&self, transfers: Vec<Transfer>, trace_id: u128) -> Result<Submitted, EngineError> {
        assert!(!transfers.is_empty() && transfers.len() <= walletd_core::BATCH_EVENTS_MAX as usize);
        self.call(|answer| Job::CreateTransfers(transfers, trace_id, answer)).await
    }

    pub async fn create_accounts(
        &self,
        accounts: Vec<Account>,
        trace_id: u128,
    ) -> Result<Vec<EventResult>, EngineError> {
        assert!(!accounts.is_empty() && accounts.len() <= walletd_core::BATCH_EVENTS_MAX as usize);
        Ok(self.call(|answer| Job::CreateAccounts(accounts, trace_id, answer)).await?.results)
    }

    /// The highest journal op the engine has answered this gateway with, if any.
    pub fn op_seen(&self) -> Option<u64> {
        Some(self.op_seen.load(Ordering::Relaxed)).filter(|&op| op != 0)
    }

    /// The accounts found, in request order.
    pub async fn lookup_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, EngineError> {
        self.call(|answer| Job::LookupAccounts(ids, answer)).await
    }

    /// The transfers found, in request order.
    pub async fn lookup_transfers(&self, ids: Vec<TransferId>) -> Result<Vec<TransferRecord>, EngineError> {
        self.call(|answer| Job::LookupTransfers(ids, answer)).await
    }

    /// One consistent read of each account found, with its open holds.
    pub async fn lookup_balances(&self, ids: Vec<AccountId>) -> Result<Balances, EngineError> {
        self.call(|answer| Job::LookupBalances(ids, answer)).await
    }

    pub async fn close_accounts(&self, ids: Vec<AccountId>, close: bool) -> Result<Vec<EventResult>, EngineError> {
        self.call(|answer| Job::CloseAccounts(ids, close, answer)).await
    }

    pub async fn set_account_limits(&self, limits: Vec<AccountLimits>) -> Result<Vec<EventResult>, EngineError> {
        self.call(|answer| Job::SetLimits(limits, answer)).await
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.call(Job::Ping).await
    }

    /// Closes the queue: dispatchers finish what is queued and stop.
    pub fn close(self) {
        drop(self.queue);
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatchers.

/// The jobs one dispatcher sends together: per operation, the callers and their events.
#[derive(Default)]
struct Round {
    transfers: Vec<Transfer>,
    /// One per transfer: the trace id of the job it came from.
    transfer_trace_ids: Vec<u128>,
    transfer_jobs: Vec<(usize, usize, Answer<Submitted>)>,
    accounts: Vec<Account>,
    account_trace_ids: Vec<u128>,
    account_jobs: Vec<(usize, usize, Answer<Submitted>)>,
    lookup_account_ids: Vec<AccountId>,
    lookup_account_jobs: Vec<(Vec<AccountId>, Answer<Vec<Account>>)>,
    lookup_transfer_ids: Vec<TransferId>,
    lookup_transfer_jobs: Vec<(Vec<TransferId>, Answer<Vec<TransferRecord>>)>,
    lookup_balance_ids: Vec<AccountId>,
    lookup_balance_jobs: Vec<(Vec<AccountId>, Answer<Balances>)>,
    single: Vec<Job>,
}

const TRANSFERS_MAX: usize = walletd_core::BATCH_EVENTS_MAX as usize;
const LOOKUP_TRANSFERS_MAX: usize = 7279;
const LOOKUP_BALANCES_MAX: usize = 3275;

impl Round {
    /// Adds a job if its operation's frame has room; gives it back otherwise.
    fn add(&mut self, job: Job) -> Option<Job> {
        match job {
            Job::CreateTransfers(events, trace_id, answer) => {
                if self.transfers.len() + events.len() > TRANSFERS_MAX {
                    return Some(Job::CreateTransfers(events, trace_id, answer));
                }
                self.transfer_jobs.push((self.transfers.len(), events.len(), answer));
                self.transfers.extend_from_slice(&events);
                self.transfer_trace_ids.resize(self.transfers.len(), trace_id);
            }
            Job::CreateAccounts(events, trace_id, answer) => {
                if self.accounts.len() + events.len() > TRANSFERS_MAX {
                    return Some(Job::CreateAccounts(events, trace_id, answer));
                }
                self.account_jobs.push((self.accounts.len(), events.len(), answer));
                self.accounts.extend_from_slice(&events);
                self.account_trace_ids.resize(self.accounts.len(), trace_id);
            }
            Job::LookupAccounts(ids, answer) => {
                if self.lookup_account_ids.len() + ids.len() > TRANSFERS_MAX {
                    return Some(Job::LookupAccounts(ids, answer));
                }
                self.lookup_account_ids.extend_from_slice(&ids);
                self.lookup_account_jobs.push((ids, answer));
            }
            Job::LookupTransfers(ids, answer) => {
                if self.lookup_transfer_ids.len() + ids.len() > LOOKUP_TRANSFERS_MAX {
                    return Some(Job::LookupTransfers(ids, answer));
                }
                self.lookup_transfer_ids.extend_from_slice(&ids);
                self.lookup_transfer_jobs.push((ids, answer));
            }
            Job::LookupBalances(ids, answer) => {
                if self.lookup_balance_ids.len() + ids.len() > LOOKUP_BALANCES_MAX {
                    return Some(Job::LookupBalances(ids, answer));
                }
                self.lookup_balance_ids.extend_from_slice(&ids);
                self.lookup_balance_jobs.push((ids, answer));
            }
            other => self.single.push(other),
        }
        None
    }

    fn job_count(&self) -> usize {
        self.transfer_jobs.len()
            + self.account_jobs.len()
            + self.lookup_account_jobs.len()
            + self.lookup_transfer_jobs.len()
            + self.lookup_balance_jobs.len()
            + self.single.len()
    }
}

/// Jobs taken per round at most, so one round's answers are not held back for long.
const ROUND_JOBS_MAX: usize = 16_384;

fn dispatcher_run(shared: &Shared, jobs: &Receiver<Job>) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return, // The queue is closed and drained.
            },
        };
        let mut round = Round::default();
        assert!(round.add(first).is_none(), "an empty round has room for any one job");
        while round.job_count() < ROUND_JOBS_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            if let Some(job) = round.add(job) {
                carried = Some(job);
                break;
            }
        }
        round_send(shared, round);
    }
}

/// The current connection, connecting if there is none.
fn client_get(shared: &Shared) -> Result<Arc<Client>, EngineError> {
    let mut current = shared.client.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(client) = current.as_ref() {
        return Ok(Arc::clone(client));
    }
    let options = ClientOptions { request_timeout: shared.options.request_timeout, ..ClientOptions::default() };
    let addr = *shared.addr_current.lock().unwrap_or_else(|poison| poison.into_inner());
    let client = Client::connect(addr, options).map_err(|error| {
        // That member (or a leader named earlier) may be gone: the next try goes to the next
        // address given, which names the leader once there is one.
        *shared.addr_current.lock().unwrap_or_else(|poison| poison.into_inner()) = member_after(shared, addr);
        EngineError::Unavailable(format!("cannot connect to {addr}: {error}"))
    })?;
    tracing::info!(engine = %addr, "connected to the engine");
    let client = Arc::new(client);
    *current = Some(Arc::clone(&client));
    Ok(client)
}

/// The address given after `addr` (the first one after an address not given, such as a
/// leader a member named).
fn member_after(shared: &Shared, addr: SocketAddr) -> SocketAddr {
    let members = &shared.options.members;
    match members.iter().position(|member| *member == addr) {
        Some(index) => members[(index + 1) % members.len()],
        None => members.first().copied().unwrap_or(shared.options.addr),
    }
}

/// Forgets a connection that failed (unless another thread replaced it already).
fn client_failed(shared: &Shared, client: &Arc<Client>, error: &ClientError) {
    if !matches!(error, ClientError::Closed | ClientError::Io(_) | ClientError::Timeout | ClientError::Protocol(_)) {
        return;
    }
    let mut current = shared.client.lock().unwrap_or_else(|poison| poison.into_inner());
    if current.as_ref().is_some_and(|held| Arc::ptr_eq(held, client)) {
        tracing::warn!(%error, "the engine connection failed; the next request reconnects");
        *current = None;
    }
}

/// One client call, timed, with the connection forgotten if it broke. A cluster member that
/// is not the leader refuses it (nothing applied) and names the leader: the call is made once
/// more there, and later ones go there too.
fn client_call<T>(
    shared: &Shared,
    client: &Arc<Client>,
    call: impl Fn(&Client) -> Result<T, ClientError>,
) -> Result<T, EngineError> {
    let start = Instant::now();
    let mut result = call(client);
    if let Err(ClientError::NotLeader { leader: Some(leader) }) = &result {
        if let Some(redirected) = leader_follow(shared, client, leader) {
            result = call(&redirected);
        }
    }
    shared.metrics.engine_rtt_record(start.elapsed());
    result.map_err(|error| {
        client_failed(shared, client, &error);
        match error {
            // Refused by a member that is not the leader: nothing was applied.
            ClientError::NotLeader { leader } => EngineError::Unavailable(match leader {
                Some(leader) => format!("the engine's leader is changing (last named: {leader}); retry"),
                None => "the engine cluster has no leader at the moment (an election); retry".to_string(),
            }),
            error => EngineError::from(error),
        }
    })
}

/// Points the gateway at the leader a member named, and connects to it.
fn leader_follow(shared: &Shared, client: &Arc<Client>, leader: &str) -> Option<Arc<Client>> {
    let leader: SocketAddr = leader.parse().ok()?;
    {
        let mut current = shared.client.lock().unwrap_or_else(|poison| poison.into_inner());
        if current.as_ref().is_some_and(|held| Arc::ptr_eq(held, client)) {
            *current = None;
        }
    }
    *shared.addr_current.lock().unwrap_or_else(|poison| poison.into_inner()) = leader;
    tracing::info!(%leader, "the engine member is not the leader: following it to the leader");
    client_get(shared).ok()
}

fn round_send(shared: &Shared, round: Round) {
    let client = match client_get(shared) {
        Ok(client) => client,
        Err(error) => return round_fail(round, &error),
    };
    let Round {
        transfers,
        transfer_trace_ids,
        transfer_jobs,
        accounts,
        account_trace_ids,
        account_jobs,
        lookup_account_ids,
        lookup_account_jobs,
        lookup_transfer_ids,
        lookup_transfer_jobs,
        lookup_balance_ids,
        lookup_balance_jobs,
        single,
    } = round;
    if !account_jobs.is_empty() {
        assert_eq!(account_trace_ids.len(), accounts.len(), "a trace id per account");
        let traced = account_trace_ids.iter().any(|&trace_id| trace_id != 0);
        let trace_ids = traced.then_some(account_trace_ids.as_slice());
        let result = client_call(shared, &client, |client| client.create_accounts_created(&accounts, trace_ids));
        results_split(shared, result, account_jobs);
    }
    if !transfer_jobs.is_empty() {
        shared.metrics.engine_batch_record(transfers.len());
        assert_eq!(transfer_trace_ids.len(), transfers.len(), "a trace id per transfer");
        let traced = transfer_trace_ids.iter().any(|&trace_id| trace_id != 0);
        let trace_ids = traced.then_some(transfer_trace_ids.as_slice());
        let result = client_call(shared, &client, |client| client.create_transfers_created(&transfers, trace_ids));
        results_split(shared, result, transfer_jobs);
    }
    if !lookup_account_jobs.is_empty() {
        let result = client_call(shared, &client, |client| client.lookup_accounts(&lookup_account_ids));
        lookups_split(result, lookup_account_jobs, |account: &Account| account.id);
    }
    if !lookup_transfer_jobs.is_empty() {
        let result = client_call(shared, &client, |client| client.lookup_transfers(&lookup_transfer_ids));
        lookups_split(result, lookup_transfer_jobs, |record: &TransferRecord| record.transfer.id);
    }
    if !lookup_balance_jobs.is_empty() {
        let result = client_call(shared, &client, |client| client.lookup_balances(&lookup_balance_ids));
        balances_split(result, lookup_balance_jobs);
    }
    for job in single {
        single_send(shared, &client, job);
    }
}

fn single_send(shared: &Shared, client: &Arc<Client>, job: Job) {
    match job {
        Job::CloseAccounts(ids, close, answer) => {
            let result = client_call(shared, client, |client| {
                if close {
                    client.close_accounts(&ids)
                } else {
                    client.reopen_accounts(&ids)
                }
            });
            let _ = answer.send(result);
        }
        Job::SetLimits(limits, answer) => {
            let _ = answer.send(client_call(shared, client, |client| client.set_account_limits(&limits)));
        }
        Job::Ping(answer) => {
            let _ = answer.send(client_call(shared, client, |client| client.ping()));
        }
        _ => unreachable!("batched jobs are sent by round_send"),
    }
}

/// Splits a frame's sparse results among its jobs, re-indexed into each job's events; each
/// job gets the frame's op and its own first event's timestamp.
fn results_split(shared: &Shared, result: Result<Created, EngineError>, jobs: Vec<(usize, usize, Answer<Submitted>)>) {
    let Created { results, op, timestamp_ns } = match result {
        Ok(answer) => answer,
        Err(error) => {
            for (_, _, answer) in jobs {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut cursor = 0;
    for (start, count, answer) in jobs {
        let end = start + count;
        let mut own = Vec::new();
        while cursor < results.len() && (results[cursor].index as usize) < end {
            let result = results[cursor];
            assert!(result.index as usize >= start, "jobs cover the frame in order");
            own.push(EventResult { index: result.index - start as u32, code: result.code });
            cursor += 1;
        }
        let timestamp_ns = timestamp_ns + start as u64;
        let _ = answer.send(Ok(Submitted { results: own, op, timestamp_ns }));
    }
    assert_eq!(cursor, results.len(), "every result went to a job");
    shared.op_seen.fetch_max(op, Ordering::Relaxed);
}

/// Answers each lookup job with the records of its own ids, in its order.
fn lookups_split<Id: Copy + Eq + std::hash::Hash, R: Copy>(
    result: Result<Vec<R>, EngineError>,
    jobs: Vec<(Vec<Id>, Answer<Vec<R>>)>,
    id_of: impl Fn(&R) -> Id,
) {
    let records = match result {
        Ok(records) => records,
        Err(error) => {
            for (_, answer) in jobs {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
    };
    let by_id: HashMap<Id, R> = records.iter().map(|record| (id_of(record), *record)).collect();
    for (ids, answer) in jobs {
        let own: Vec<R> = ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
        let _ = answer.send(Ok(own));
    }
}

fn balances_split(result: Result<Balances, EngineError>, jobs: Vec<(Vec<AccountId>, Answer<Balances>)>) {
    let balances = match result {
        Ok(balances) => balances,
        Err(error) => {
            for (_, answer) in jobs {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
    };
    let by_id: HashMap<AccountId, &BalanceRead> = balances.reads.iter().map(|read| (read.account.id, read)).collect();
    for (ids, answer) in jobs {
        let mut own = Balances::default();
        for id in &ids {
            if let Some(read) = by_id.get(id) {
                let holds = balances.holds_of(read);
                let mut read = **read;
                read.holds_start = own.holds.len() as u32;
                own.holds.extend_from_slice(holds);
                own.reads.push(read);
            }
        }
        let _ = answer.send(Ok(own));
    }
}

fn round_fail(round: Round, error: &EngineError) {
    let fail = |answer: Answer<Vec<EventResult>>| {
        let _ = answer.send(Err(error.clone()));
    };
    let fail_submit = |answer: Answer<Submitted>| {
        let _ = answer.send(Err(error.clone()));
    };
    round.transfer_jobs.into_iter().for_each(|(_, _, answer)| fail_submit(answer));
    round.account_jobs.into_iter().for_each(|(_, _, answer)| fail_submit(answer));
    for (_, answer) in round.lookup_account_jobs {
        let _ = answer.send(Err(error.clone()));
    }
    for (_, answer) in round.lookup_transfer_jobs {
        let _ = answer.send(Err(error.clone()));
    }
    for (_, answer) in round.lookup_balance_jobs {
        let _ = answer.send(Err(error.clone()));
    }
    for job in round.single {
        match job {
            Job::CloseAccounts(_, _, answer) | Job::SetLimits(_, answer) => fail(answer),
            Job::Ping(answer) => {
                let _ = answer.send(Err(error.clone()));
            }
            _ => unreachable!("only single jobs are in `single`"),
        }
    }
}
