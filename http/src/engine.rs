//! The bridge from async handlers to the engine: `walletd_gateway::AsyncClient`, on the
//! gateway's own runtime.
//!
//! Handlers call the engine as async functions; the client coalesces concurrent calls into
//! frames on the connection's writer task (so a thousand concurrent HTTP requests become a few
//! frames of thousands of events), keeps `--http-frames-in-flight` frames in flight, and its
//! reader task answers each call with its own share of the reply. Nothing here runs on a
//! thread of its own, so a request costs no thread hand-off between the handler and the
//! socket. A create carries its request's trace id, journaled with each of its events
//! (docs/PROTOCOL.md, "Traced requests"). The codec is the gateway's own (through the client):
//! there is no second one.
//!
//! This module owns what the client leaves to its owner: which engine member to talk to
//! (the first address given, the leader a `not_leader` reply names, the next member when one
//! cannot be reached), reconnecting when a connection fails, the metrics (every frame's round
//! trip, the size of transfer frames), the highest op seen, and the mapping of client errors
//! to what a handler can answer. When the connection fails, calls in flight end with
//! `OutcomeUnknown` (the handler answers 503 and the client retries with the same idempotency
//! key, which the engine recognises); calls that could not be sent end with `Unavailable`
//! (nothing was applied).

use crate::metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use walletd_core::{Account, AccountId, AccountLimits, EventResult, Operation, Transfer, TransferId, TransferRecord};
use walletd_gateway::{
    AsyncClient, AsyncClientOptions, Balances, ClientError, Created, FrameObserved, FrameOperation, Status,
};

/// Why a call did not get an engine answer.
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
            ClientError::QueueFull { .. } => EngineError::Unavailable("the gateway's engine queue is full".into()),
            ClientError::NotSent => {
                EngineError::Unavailable("the engine connection ended before the request was sent".into())
            }
            other => EngineError::OutcomeUnknown(other.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub addr: SocketAddr,
    /// Every address to try, `addr` first: the members of a cluster (a member that cannot be
    /// reached is passed over for the next). A single engine is the list of one.
    pub members: Vec<SocketAddr>,
    /// Engine frames sent and not yet answered, at most: while that many are out, calls
    /// fill the next frames.
    pub frames_in_flight_max: u32,
    /// Calls waiting to be sent at most; more are answered `Unavailable` (503, retry).
    pub calls_queued_max: u32,
    pub request_timeout: Duration,
}

impl EngineOptions {
    pub fn new(addr: SocketAddr) -> EngineOptions {
        EngineOptions {
            addr,
            members: vec![addr],
            frames_in_flight_max: 4,
            calls_queued_max: 65_536,
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
    shared: Arc<Shared>,
}

struct Shared {
    options: EngineOptions,
    /// Where the next connection goes: `options.addr`, or the leader a cluster member named
    /// in a `not_leader` reply (back to `options.addr` when that one cannot be reached).
    addr_current: Mutex<SocketAddr>,
    /// The highest journal op a reply has carried (0: none yet): how far the engine is known
    /// to be, for the history's lag.
    op_seen: AtomicU64,
    /// The current connection; `None` before the first call and after one failed.
    client: Mutex<Option<AsyncClient>>,
    /// Held while connecting, so that many calls arriving without a connection make one.
    connecting: tokio::sync::Mutex<()>,
    /// Once closed, no call connects again.
    closed: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Engine {
    /// The bridge; the connection is made by the first call (so a gateway can start before
    /// its engine); `/readyz` says whether it is up.
    pub fn start(options: EngineOptions, metrics: Arc<Metrics>) -> Engine {
        assert!(options.frames_in_flight_max >= 1, "at least one frame in flight");
        assert!(options.calls_queued_max >= 1);
        assert!(!options.members.is_empty(), "at least one engine address");
        let shared = Shared {
            addr_current: Mutex::new(options.addr),
            options,
            op_seen: AtomicU64::new(0),
            client: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
            metrics,
        };
        Engine { shared: Arc::new(shared) }
    }

    /// Failures only, indexed into `transfers`, and the frame's op; the transfers stay
    /// contiguous in one frame. `trace_id` (0: none) is journaled with each of them.
    pub async fn create_transfers(&self, transfers: Vec<Transfer>, trace_id: u128) -> Result<Submitted, EngineError> {
        assert!(!transfers.is_empty() && transfers.len() <= walletd_core::BATCH_EVENTS_MAX as usize);
        let transfers = transfers.as_slice();
        let created =
            self.call(move |client| async move { client.create_transfers(transfers, trace_id).await }).await?;
        Ok(self.submitted(created))
    }

    pub async fn create_accounts(
        &self,
        accounts: Vec<Account>,
        trace_id: u128,
    ) -> Result<Vec<EventResult>, EngineError> {
        assert!(!accounts.is_empty() && accounts.len() <= walletd_core::BATCH_EVENTS_MAX as usize);
        let accounts = accounts.as_slice();
        let created = self.call(move |client| async move { client.create_accounts(accounts, trace_id).await }).await?;
        Ok(self.submitted(created).results)
    }

    fn submitted(&self, created: Created) -> Submitted {
        let Created { results, op, timestamp_ns } = created;
        self.shared.op_seen.fetch_max(op, Ordering::Relaxed);
        Submitted { results, op, timestamp_ns }
    }

    /// The highest journal op the engine has answered this gateway with, if any.
    pub fn op_seen(&self) -> Option<u64> {
        Some(self.shared.op_seen.load(Ordering::Relaxed)).filter(|&op| op != 0)
    }

    /// The accounts found, in request order.
    pub async fn lookup_accounts(&self, ids: Vec<AccountId>) -> Result<Vec<Account>, EngineError> {
        let ids = ids.as_slice();
        self.call(move |client| async move { client.lookup_accounts(ids).await }).await
    }

    /// The transfers found, in request order.
    pub async fn lookup_transfers(&self, ids: Vec<TransferId>) -> Result<Vec<TransferRecord>, EngineError> {
        let ids = ids.as_slice();
        self.call(move |client| async move { client.lookup_transfers(ids).await }).await
    }

    /// One consistent read of each account found, with its open holds.
    pub async fn lookup_balances(&self, ids: Vec<AccountId>) -> Result<Balances, EngineError> {
        let ids = ids.as_slice();
        self.call(move |client| async move { client.lookup_balances(ids).await }).await
    }

    pub async fn close_accounts(&self, ids: Vec<AccountId>, close: bool) -> Result<Vec<EventResult>, EngineError> {
        let ids = ids.as_slice();
        self.call(move |client| async move {
            if close {
                client.close_accounts(ids).await
            } else {
                client.reopen_accounts(ids).await
            }
        })
        .await
    }

    pub async fn set_account_limits(&self, limits: Vec<AccountLimits>) -> Result<Vec<EventResult>, EngineError> {
        let limits = limits.as_slice();
        self.call(move |client| async move { client.set_account_limits(limits).await }).await
    }

    /// A round trip through the engine's whole pipeline.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.call(|client| async move { client.ping().await.map(drop) }).await
    }

    /// Closes the connection and makes no new one: calls still in flight end `OutcomeUnknown`.
    pub fn close(self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(client) = lock(&self.shared.client).take() {
            client.close();
        }
    }

    /// One client call on the current connection. A cluster member that is not the leader
    /// refuses it (nothing applied) and names the leader: the call is made once more there,
    /// and later ones go there too.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EngineError>
    where
        F: Fn(AsyncClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let client = self.client_get().await?;
        let mut result = call(client.clone()).await;
        let mut used = client;
        if let Err(ClientError::NotLeader { leader: Some(leader) }) = &result {
            if let Some(redirected) = self.leader_follow(&used, leader).await {
                result = call(redirected.clone()).await;
                used = redirected;
            }
        }
        result.map_err(|error| {
            self.client_failed(&used, &error);
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

    /// The current connection, connecting if there is none (or it ended).
    async fn client_get(&self) -> Result<AsyncClient, EngineError> {
        if let Some(client) = self.client_live() {
            return Ok(client);
        }
        let _connecting = self.shared.connecting.lock().await;
        if let Some(client) = self.client_live() {
            return Ok(client); // another call connected meanwhile
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("the gateway is stopping".into()));
        }
        let addr = *lock(&self.shared.addr_current);
        let client = AsyncClient::connect(addr, self.client_options()).await.map_err(|error| {
            // That member (or a leader named earlier) may be gone: the next try goes to the
            // next address given, which names the leader once there is one.
            *lock(&self.shared.addr_current) = self.member_after(addr);
            EngineError::Unavailable(format!("cannot connect to {addr}: {error}"))
        })?;
        tracing::info!(engine = %addr, "connected to the engine");
        *lock(&self.shared.client) = Some(client.clone());
        Ok(client)
    }

    fn client_live(&self) -> Option<AsyncClient> {
        lock(&self.shared.client).as_ref().filter(|client| !client.is_closed()).cloned()
    }

    fn client_options(&self) -> AsyncClientOptions {
        let metrics = Arc::clone(&self.shared.metrics);
        let observer = move |observed: &FrameObserved| {
            metrics.engine_rtt_record(observed.round_trip);
            if observed.operation == FrameOperation::Ledger(Operation::CreateTransfers) {
                metrics.engine_batch_record(observed.event_count as usize);
            }
        };
        AsyncClientOptions {
            request_timeout: self.shared.options.request_timeout,
            frames_in_flight_max: self.shared.options.frames_in_flight_max,
            calls_queued_max: self.shared.options.calls_queued_max,
            client_id: None,
            frame_observer: Some(Arc::new(observer)),
        }
    }

    /// The address given after `addr` (the first one after an address not given, such as a
    /// leader a member named).
    fn member_after(&self, addr: SocketAddr) -> SocketAddr {
        let members = &self.shared.options.members;
        match members.iter().position(|member| *member == addr) {
            Some(index) => members[(index + 1) % members.len()],
            None => members[0],
        }
    }

    /// Forgets a connection that failed or stopped answering in time (unless another call
    /// replaced it already); the next call connects again. Calls still in flight on it keep
    /// it until they end.
    fn client_failed(&self, client: &AsyncClient, error: &ClientError) {
        if !matches!(error, ClientError::Closed | ClientError::Io(_) | ClientError::Timeout | ClientError::Protocol(_))
        {
            return;
        }
        let mut current = lock(&self.shared.client);
        if current.as_ref().is_some_and(|held| held.same_connection(client)) {
            tracing::warn!(%error, "the engine connection failed; the next request reconnects");
            *current = None;
        }
    }

    /// Points the gateway at the leader a member named, and connects to it.
    async fn leader_follow(&self, client: &AsyncClient, leader: &str) -> Option<AsyncClient> {
        let leader: SocketAddr = leader.parse().ok()?;
        {
            let mut current = lock(&self.shared.client);
            if current.as_ref().is_some_and(|held| held.same_connection(client)) {
                *current = None;
                *lock(&self.shared.addr_current) = leader;
                tracing::info!(%leader, "the engine member is not the leader: following it to the leader");
            }
        }
        self.client_get().await.ok()
    }
}
