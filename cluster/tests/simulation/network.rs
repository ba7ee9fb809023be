//! The simulated network: openraft's `RaftNetworkFactory`/`RaftNetwork` in memory, between
//! the node instances registered on one `Fabric`.
//!
//! Each RPC is planned from the fabric's seeded generator when it is sent: lost on the way
//! (the sender waits, up to its timeout or `LOST_WAIT_MAX`, then sees a network error), delivered after a
//! delay (usually short, sometimes long, so that RPCs overtake each other), delivered twice
//! (the copy later, its answer thrown away), or delivered with its answer lost (the receiver
//! acted on it, the sender never hears). Links can be cut one way or both ways (partitions,
//! an isolated leader) and healed later. A message to or from a node instance that crashed,
//! or across a cut link at the moment of delivery, is lost. Every fault is counted.

use super::{SimConfig, SimRaft};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use walletd_cluster::types::{Member, NodeId};
use walletd_journal::SimRng;

/// How long a sender waits at most for a lost request before its call fails: a connection
/// that broke is noticed (reset, keepalive) long before openraft's longest timeout, the
/// snapshot install's 600 s, which would otherwise stall replication to that member for
/// minutes after every lost install request.
const LOST_WAIT_MAX: Duration = Duration::from_secs(1);

/// Counts of what the network did to messages.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageFaults {
    pub lost: u64,
    pub replies_lost: u64,
    pub duplicated: u64,
    pub delayed_long: u64,
    /// Sent to, or from, a crashed instance or across a cut link.
    pub blocked: u64,
    pub delivered: u64,
}

impl MessageFaults {
    /// The faults injected on messages (a message blocked by a partition or a crash is the
    /// effect of that fault, counted there).
    pub fn injected(&self) -> u64 {
        self.lost + self.replies_lost + self.duplicated + self.delayed_long
    }
}

/// The network's knobs, changed by the fault schedule.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    pub loss_percent: u64,
    pub duplicate_percent: u64,
    pub delay_long_percent: u64,
    pub delay_short_max_us: u64,
    pub delay_long_max_us: u64,
}

impl Weather {
    pub const CALM: Weather = Weather {
        loss_percent: 0,
        duplicate_percent: 0,
        delay_long_percent: 0,
        delay_short_max_us: 500,
        delay_long_max_us: 500,
    };
}

struct FabricState {
    rng: SimRng,
    weather: Weather,
    /// The live instance of each node: its epoch and its Raft.
    instances: BTreeMap<NodeId, (u64, SimRaft)>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: MessageFaults,
}

/// Every node instance's mailbox, and the faults between them.
pub struct Fabric {
    state: Mutex<FabricState>,
}

/// What happens to one RPC.
enum Plan {
    Lost { wait: Duration },
    Delivered { request_delay: Duration, reply_delay: Duration, reply_lost: bool, duplicate: Option<Duration> },
}

impl Fabric {
    pub fn new(seed: u64) -> Arc<Fabric> {
        Arc::new(Fabric {
            state: Mutex::new(FabricState {
                rng: SimRng::new(seed),
                weather: Weather::CALM,
                instances: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults: MessageFaults::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FabricState> {
        self.state.lock().expect("the fabric lock")
    }

    pub fn register(&self, node_id: NodeId, epoch: u64, raft: SimRaft) {
        self.lock().instances.insert(node_id, (epoch, raft));
    }

    pub fn unregister(&self, node_id: NodeId) -> Option<SimRaft> {
        self.lock().instances.remove(&node_id).map(|(_, raft)| raft)
    }

    /// The live instance of the node, if it runs.
    pub fn instance(&self, node_id: NodeId) -> Option<SimRaft> {
        self.lock().instances.get(&node_id).map(|(_, raft)| raft.clone())
    }

    pub fn weather_set(&self, weather: Weather) {
        self.lock().weather = weather;
    }

    pub fn link_cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn link_heal(&self, from: NodeId, to: NodeId) {
        self.lock().cut.remove(&(from, to));
    }

    pub fn heal_all(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.weather = Weather::CALM;
    }

    /// Whether `node` can fetch from `source` now (the source runs, the link is not cut
    /// either way), for a journal fetch outside Raft's RPCs.
    pub fn fetch_possible(&self, node: NodeId, source: NodeId) -> bool {
        let state = self.lock();
        state.instances.contains_key(&source)
            && !state.cut.contains(&(node, source))
            && !state.cut.contains(&(source, node))
    }

    pub fn faults(&self) -> MessageFaults {
        self.lock().faults
    }

    /// The instance that a message from `from` (at `epoch`) to `to` reaches now, if any.
    fn reachable(&self, from: NodeId, epoch: u64, to: NodeId) -> Option<SimRaft> {
        let mut state = self.lock();
        let sender_live = state.instances.get(&from).is_some_and(|(live, _)| *live == epoch);
        let target = state.instances.get(&to).map(|(_, raft)| raft.clone());
        if sender_live && !state.cut.contains(&(from, to)) {
            if let Some(target) = target {
                state.faults.delivered += 1;
                return Some(target);
            }
        }
        state.faults.blocked += 1;
        None
    }

    fn plan(&self, hard_ttl: Duration) -> Plan {
        let mut state = self.lock();
        let weather = state.weather;
        let rng = &mut state.rng;
        if rng.chance(weather.loss_percent) {
            let wait_max_us = u64::try_from(hard_ttl.min(LOST_WAIT_MAX).as_micros()).expect("fits").max(1);
            let wait = Duration::from_micros(1 + rng.below(wait_max_us));
            state.faults.lost += 1;
            return Plan::Lost { wait };
        }
        let delay = |rng: &mut SimRng, faults: &mut MessageFaults| {
            if rng.chance(weather.delay_long_percent) {
                faults.delayed_long += 1;
                Duration::from_micros(rng.below(weather.delay_long_max_us + 1))
            } else {
                Duration::from_micros(rng.below(weather.delay_short_max_us + 1))
            }
        };
        let FabricState { rng, faults, .. } = &mut *state;
        let request_delay = delay(rng, faults);
        let reply_delay = delay(rng, faults);
        let reply_lost = rng.chance(weather.loss_percent);
        if reply_lost {
            faults.replies_lost += 1;
        }
        let duplicate = rng.chance(weather.duplicate_percent).then(|| {
            faults.duplicated += 1;
            Duration::from_micros(rng.below(weather.delay_long_max_us + 1))
        });
        Plan::Delivered { request_delay, reply_delay, reply_lost, duplicate }
    }
}

/// The factory one node instance makes its clients with.
#[derive(Clone)]
pub struct SimNetwork {
    pub fabric: Arc<Fabric>,
    pub node_id: NodeId,
    pub epoch: u64,
}

impl RaftNetworkFactory<SimConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> SimClient {
        SimClient { network: self.clone(), target }
    }
}

pub struct SimClient {
    network: SimNetwork,
    target: NodeId,
}

fn lost<E: std::error::Error>(what: &str) -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())))
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the member is down or cut off",
    )))
}

impl SimClient {
    /// Carries one RPC through the fabric: `deliver` hands it to the target's Raft.
    async fn call<Request, Response, Error, Fut>(
        &self,
        request: Request,
        option: &RPCOption,
        deliver: impl Fn(SimRaft, Request) -> Fut,
    ) -> Result<Response, RPCError<NodeId, Member, RaftError<NodeId, Error>>>
    where
        Request: Clone + Send + 'static,
        Error: std::error::Error + Send + 'static,
        Fut: std::future::Future<Output = Result<Response, RaftError<NodeId, Error>>> + Send + 'static,
        Response: Send + 'static,
    {
        let SimNetwork { fabric, node_id, epoch } = &self.network;
        let (request_delay, reply_delay, reply_lost, duplicate) = match fabric.plan(option.hard_ttl()) {
            Plan::Lost { wait } => {
                tokio::time::sleep(wait).await;
                return Err(lost("the request was lost"));
            }
            Plan::Delivered { request_delay, reply_delay, reply_lost, duplicate } => {
                (request_delay, reply_delay, reply_lost, duplicate)
            }
        };
        tokio::time::sleep(request_delay).await;
        let Some(target) = fabric.reachable(*node_id, *epoch, self.target) else { return Err(unreachable()) };
        if let Some(duplicate_delay) = duplicate {
            let copy = deliver(target.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(duplicate_delay).await;
                let _ = copy.await;
            });
        }
        let response = deliver(target, request).await;
        tokio::time::sleep(reply_delay).await;
        if reply_lost {
            return Err(lost("the reply was lost"));
        }
        if !self.reply_path_open() {
            return Err(lost("the reply could not come back"));
        }
        response.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }

    /// Whether a reply from the target can reach this instance now: the link is not cut and
    /// this instance is still the live one.
    fn reply_path_open(&self) -> bool {
        let SimNetwork { fabric, node_id, epoch } = &self.network;
        let mut state = fabric.lock();
        let live = state.instances.get(node_id).is_some_and(|(live, _)| live == epoch);
        let open = live && !state.cut.contains(&(self.target, *node_id));
        if !open {
            state.faults.blocked += 1;
        }
        open
    }
}

impl RaftNetwork<SimConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(rpc, &option, |raft, rpc| async move { raft.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(rpc, &option, |raft, rpc| async move { raft.install_snapshot(rpc).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(rpc, &option, |raft, rpc| async move { raft.vote(rpc).await }).await
    }

    /// The cluster's own backoff (`network.rs`): 25, 50, 100, then every 200 ms.
    fn backoff(&self) -> openraft::network::Backoff {
        let pauses = [25, 50, 100].into_iter().chain(std::iter::repeat(200)).map(Duration::from_millis);
        openraft::network::Backoff::new(pauses)
    }
}
