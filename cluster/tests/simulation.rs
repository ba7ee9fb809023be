//! A seeded simulation of a three-node (or five-node) cluster, in the style of TigerBeetle's
//! VOPR: openraft itself (the cluster's version, with the cluster's timeouts), run in one
//! process on a tokio current-thread runtime with paused time, so that simulated seconds cost
//! microseconds.
//!
//! The `sleep`s here are simulated time, not waits on the machine: the fault schedule's moments,
//! a fault's duration before it undoes itself, and a client's pause before it asks again for a
//! leader. With paused time a sleep returns as soon as every task is idle, so none of them
//! makes the test slower or its outcome depend on the machine's speed; nothing is asserted
//! about wall-clock time.
//!
//! - The network (`simulation/network.rs`) loses, delays, reorders and duplicates RPCs and
//!   cuts links (a node isolated, a leader isolated, one direction of a link).
//! - Storage (`simulation/storage.rs`) makes appends durable only at a sync, so a crash loses
//!   what was not synced, sometimes keeping a torn part of it; the state machine applies the
//!   cluster's `Proposal`s to a real `walletd_core::Ledger` with the cluster's timestamp rule;
//!   snapshots are anchors, as the cluster's are, and an install fetches the entries it lacks
//!   from a member it can reach.
//! - Clients (`simulation/workload.rs`) send create_accounts then create_transfers batches to
//!   whichever node leads, with a deadline, resend on an unknown outcome (the ids make it
//!   safe), and record every acknowledged write with its log id.
//!
//! One `u64` seed fixes the fault schedule (what happens when, to which node or to the
//! leader), every message's fate, the syncs' delays and the workload. After the workload the
//! network heals, every node restarts, the cluster settles, and the checker asserts: every
//! acknowledged write is applied on every node at its log id with the same results; every
//! node's applied sequence is the same bytes up to the shortest; the state hash after each
//! index is the same everywhere, and leader ids never go back along it; money sums to zero
//! on every node (and `Ledger::verify`); no node's vote ever goes back, across crashes too
//! (openraft 0.9's election safety: one leader per leader id, see `metrics_watch`). A
//! violation panics with the seed and the command that replays it.
//!
//! Reproducible as far as tokio allows: openraft's election timeouts come from the seed
//! (`simulation/runtime.rs`) and the runtime has one thread, but two `select!`s in openraft
//! (a replication backoff, and the metrics wait the settle uses) pick a random ready branch
//! when both are ready at once, so two runs of one seed can part ways there; the fault
//! schedule and the workload never do. docs/TESTING.md says what this covers and what not.
//!
//! Replay one seed: `WALLETD_CLUSTER_SIM_SEED=<seed> cargo test -p walletd-cluster --test
//! simulation -- --nocapture`; more seeds: `WALLETD_CLUSTER_SIM_SEEDS=<count>`; five nodes:
//! `WALLETD_CLUSTER_SIM_NODES=5`.

#![allow(clippy::result_large_err)]

#[path = "simulation/network.rs"]
mod network;
#[path = "simulation/runtime.rs"]
mod runtime;
#[path = "simulation/storage.rs"]
mod storage;
#[path = "simulation/workload.rs"]
mod workload;

use network::{Fabric, SimNetwork, Weather};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{EntryPayload, MessageSummary, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::{AppliedEntry, Flaw, NodeStorage};
use walletd_cluster::types::{Applied, Member, NodeId, Proposal};
use walletd_cluster::{RaftTimeouts, APPEND_ENTRIES_MAX_DEFAULT};
use walletd_core::{Config, Query};
use walletd_journal::SimRng;
use workload::Workload;

openraft::declare_raft_types!(
    /// The cluster's entry and reply types (`Proposal`, `Applied`, `Member`), on the
    /// simulation's storage and network.
    pub SimConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<SimConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SimRuntime,
);

pub type SimRaft = openraft::Raft<SimConfig>;
pub type Entry = openraft::Entry<SimConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;

/// Members of the simulated cluster: 3, or 5 with `WALLETD_CLUSTER_SIM_NODES=5`.
const NODE_COUNT_DEFAULT: u64 = 3;
const CLIENT_COUNT: u64 = 3;
/// About 110,000 injected faults (23,000 of them scheduled: crashes, restarts, isolations,
/// cuts, storms) in about 20 s here; the test asserts at least 10,000.
const SEEDS_DEFAULT: u64 = 300;
/// Seeds each deliberate flaw gets to be caught in.
const FLAW_SEEDS_MAX: u64 = 40;
/// Simulated time the clients send writes and the fault schedule runs.
const WORKLOAD_MS: u64 = 20_000;
/// A client's deadline for one write, before it counts the outcome unknown.
const WRITE_TIMEOUT_MS: u64 = 3_000;
const WRITE_ATTEMPTS_MAX: u64 = 8;
/// The longest a sync takes after the append that asked for it.
const SYNC_DELAY_MAX_US: u64 = 3_000;
/// A crash with unsynced appends keeps a torn prefix of them this often.
const TORN_PERCENT: u64 = 50;
const SNAPSHOT_ENTRIES: u64 = 100;
const LOG_KEEP_ENTRIES: u64 = 20;
/// Entries one journal fetch of an install carries at most.
const FETCH_ENTRIES_MAX: usize = 32;
/// How long a crash aimed at an unsynced append waits for one.
const MID_APPEND_WAIT_MS: u64 = 200;
const SETTLE_ROUNDS_MAX: u64 = 40;
const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;

fn ledger_config() -> Config {
    Config {
        accounts_max: 64,
        transfers_max: 4096,
        pending_max: 256,
        limits_max: 8,
        ledgers_max: 4,
        batch_events_max: 64,
        id_future_ms_max: 10_000,
        hash_seed: 11,
    }
}

fn raft_config() -> Arc<openraft::Config> {
    let timeouts = RaftTimeouts::default();
    let config = openraft::Config {
        cluster_name: "walletd-simulation".to_string(),
        heartbeat_interval: timeouts.heartbeat_ms,
        election_timeout_min: timeouts.election_timeout_min_ms,
        election_timeout_max: timeouts.election_timeout_max_ms,
        max_payload_entries: APPEND_ENTRIES_MAX_DEFAULT,
        // The cluster's policy, with counts small enough that a 20 s run builds snapshots,
        // purges the log behind them and sends them to members that fell behind.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_ENTRIES),
        max_in_snapshot_log_to_keep: LOG_KEEP_ENTRIES,
        install_snapshot_timeout: 600_000,
        ..openraft::Config::default()
    };
    Arc::new(config.validate().expect("the cluster's Raft config is valid"))
}

/// How a run is set up.
#[derive(Clone, Copy, Debug)]
struct SimOptions {
    flaw: Flaw,
    node_count: u64,
}

/// Which node a fault hits: a given one, or whichever leads when it strikes.
#[derive(Clone, Copy, Debug)]
enum Target {
    Node(NodeId),
    Leader,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Killed (whatever it had not synced is lost), restarted after `down_ms`. With
    /// `mid_append`, the kill waits (a little) for an append that is not synced yet.
    /// `second_down` allows it while another node is down already.
    Crash { target: Target, down_ms: u64, mid_append: bool, second_down: bool },
    /// Every link to and from the node cut for `duration_ms`.
    Isolate { target: Target, duration_ms: u64 },
    /// One direction of one link cut.
    LinkCut { from: NodeId, to: NodeId, duration_ms: u64 },
    /// Loss, duplication and long delays on every link for a while.
    Storm { weather: Weather, duration_ms: u64 },
}

/// The seed's fault schedule: (simulated ms since start, fault), in time order.
fn schedule(seed: u64, node_count: u64) -> Vec<(u64, Fault)> {
    let mut rng = SimRng::new(seed ^ 0x5c4e_d01e_f417_5eed);
    let mut faults = Vec::new();
    let mut at_ms = 200 + rng.below(300);
    while at_ms < WORKLOAD_MS && faults.len() < 1_000 {
        let node = 1 + rng.below(node_count);
        let target = if rng.chance(40) { Target::Leader } else { Target::Node(node) };
        let fault = match rng.below(100) {
            0..=39 => Fault::Crash {
                target,
                down_ms: 20 + rng.below(1_500),
                mid_append: rng.chance(50),
                second_down: rng.chance(20),
            },
            40..=64 => Fault::Isolate { target, duration_ms: 50 + rng.below(1_500) },
            65..=79 => {
                let to = 1 + (node + rng.below(node_count - 1)) % node_count;
                Fault::LinkCut { from: node, to, duration_ms: 50 + rng.below(1_500) }
            }
            _ => {
                let weather = Weather {
                    loss_percent: 5 + rng.below(30),
                    duplicate_percent: rng.below(20),
                    delay_long_percent: rng.below(30),
                    delay_short_max_us: 2_000,
                    delay_long_max_us: 20_000 + rng.below(100_000),
                };
                Fault::Storm { weather, duration_ms: 100 + rng.below(2_000) }
            }
        };
        faults.push((at_ms, fault));
        at_ms += 50 + rng.below(400);
    }
    faults
}

/// What the schedule did, by kind (the network's own counts are added at the end).
#[derive(Clone, Copy, Debug, Default)]
struct FaultCounts {
    crashes: u64,
    crashes_of_leader: u64,
    crashes_losing_unsynced: u64,
    torn_appends: u64,
    restarts: u64,
    isolations: u64,
    isolations_of_leader: u64,
    link_cuts: u64,
    storms: u64,
    skipped: u64,
}

impl FaultCounts {
    fn scheduled(&self) -> u64 {
        self.crashes + self.restarts + self.isolations + self.link_cuts + self.storms
    }
}

/// A write a client had acknowledged.
#[derive(Clone, Debug)]
struct Acknowledged {
    log_id: LogId,
    proposal: Proposal,
    applied: Applied,
}

struct Cluster {
    node_count: u64,
    fabric: Arc<Fabric>,
    storages: BTreeMap<NodeId, Arc<NodeStorage>>,
    raft_config: Arc<openraft::Config>,
    rng: Mutex<SimRng>,
    instance_next: Mutex<u64>,
    /// Term → the nodes seen leading in it. openraft 0.9's leader ids are (term, node id),
    /// ordered, so two nodes can lead one after the other in one term (see `metrics_watch`).
    leaders: Mutex<BTreeMap<u64, BTreeSet<NodeId>>>,
    /// Each node's highest vote seen, across its instances: it must never go back.
    votes: Mutex<BTreeMap<NodeId, Vote>>,
    violations: Mutex<Vec<String>>,
    faults: Mutex<FaultCounts>,
    /// Nodes whose start is under way (so a restart and the settle cannot start one twice).
    starting: Mutex<BTreeSet<NodeId>>,
    /// Set when the settle begins: faults still pending (a crash waiting for an append) are
    /// dropped.
    quiet: std::sync::atomic::AtomicBool,
}

impl Cluster {
    fn new(seed: u64, options: SimOptions) -> Arc<Cluster> {
        let SimOptions { flaw, node_count } = options;
        let storages: BTreeMap<NodeId, Arc<NodeStorage>> =
            (1..=node_count).map(|node_id| (node_id, NodeStorage::new(ledger_config(), flaw, node_id))).collect();
        let fabric = Fabric::new(seed ^ 0x0e70_0e70_0e70_0e70);
        for storage in storages.values() {
            storage.fetch_set(fetch_from_members(Arc::clone(&fabric), storages.clone()));
        }
        Arc::new(Cluster {
            node_count,
            fabric,
            storages,
            raft_config: raft_config(),
            rng: Mutex::new(SimRng::new(seed ^ 0x7a5c_0000_1111_2222)),
            instance_next: Mutex::new(1),
            leaders: Mutex::new(BTreeMap::new()),
            votes: Mutex::new(BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultCounts::default()),
            starting: Mutex::new(BTreeSet::new()),
            quiet: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn node_ids(&self) -> std::ops::RangeInclusive<NodeId> {
        1..=self.node_count
    }

    fn violation(&self, what: String) {
        let mut violations = self.violations.lock().expect("violations");
        if !violations.contains(&what) {
            violations.push(what);
        }
    }

    fn rng_fork(&self) -> SimRng {
        SimRng::new(self.rng.lock().expect("rng").next_u64())
    }

    fn count(&self, change: impl FnOnce(&mut FaultCounts)) {
        change(&mut self.faults.lock().expect("fault counts"));
    }

    fn raft(&self, node_id: NodeId) -> Option<SimRaft> {
        self.fabric.instance(node_id)
    }

    /// A new instance of the node on its durable storage.
    async fn start(self: &Arc<Cluster>, node_id: NodeId) {
        if self.raft(node_id).is_some() || !self.starting.lock().expect("starting").insert(node_id) {
            return;
        }
        self.instance_start(node_id).await;
        self.starting.lock().expect("starting").remove(&node_id);
    }

    async fn instance_start(self: &Arc<Cluster>, node_id: NodeId) {
        let epoch = {
            let mut next = self.instance_next.lock().expect("instances");
            *next += 1;
            *next
        };
        let (log, machine, sync) = self.storages[&node_id].instance(self.rng_fork(), SYNC_DELAY_MAX_US);
        tokio::spawn(sync);
        if let Err(error) = machine.install_resume().await {
            return self.violation(format!("node {node_id} could not finish its install at restart: {error}"));
        }
        let network = SimNetwork { fabric: Arc::clone(&self.fabric), node_id, epoch };
        match SimRaft::new(node_id, Arc::clone(&self.raft_config), network, log, machine).await {
            Ok(raft) => {
                self.fabric.register(node_id, epoch, raft.clone());
                tokio::spawn(metrics_watch(Arc::clone(self), node_id, raft));
            }
            Err(error) => self.violation(format!("node {node_id} could not restart: {error}")),
        }
    }

    /// The node leading in the highest term among the live instances, if any.
    fn leader(&self) -> Option<NodeId> {
        self.node_ids()
            .filter_map(|node_id| {
                let raft = self.raft(node_id)?;
                let metrics = raft.metrics().borrow().clone();
                (metrics.state == ServerState::Leader).then_some((metrics.current_term, node_id))
            })
            .max()
            .map(|(_, node_id)| node_id)
    }

    fn resolve(&self, target: Target) -> Option<NodeId> {
        match target {
            Target::Node(node_id) => Some(node_id),
            Target::Leader => self.leader(),
        }
    }

    fn down_count(&self) -> u64 {
        self.node_ids().filter(|node_id| self.raft(*node_id).is_none()).count() as u64
    }

    /// Kills the node's instance: unsynced appends are lost or torn, its Raft stops.
    fn crash(&self, node_id: NodeId) -> bool {
        if self.quiet.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let Some(raft) = self.fabric.unregister(node_id) else { return false };
        let loss = {
            let mut rng = self.rng.lock().expect("rng");
            self.storages[&node_id].crash(&mut rng, TORN_PERCENT)
        };
        self.count(|counts| {
            counts.crashes += 1;
            counts.crashes_losing_unsynced += u64::from(loss.operations_unsynced > 0);
            counts.torn_appends += u64::from(loss.torn);
        });
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
        true
    }

    fn isolate(&self, node_id: NodeId, cut: bool) {
        for other in self.node_ids().filter(|other| *other != node_id) {
            if cut {
                self.fabric.link_cut(node_id, other);
                self.fabric.link_cut(other, node_id);
            } else {
                self.fabric.link_heal(node_id, other);
                self.fabric.link_heal(other, node_id);
            }
        }
    }

    fn applied(&self) -> BTreeMap<NodeId, Vec<AppliedEntry>> {
        self.storages.iter().map(|(node_id, storage)| (*node_id, storage.applied())).collect()
    }
}

/// An install's journal fetch: from the first other member this node can reach both ways
/// that holds the entries (the real fetch goes over the peer port, the source first).
fn fetch_from_members(fabric: Arc<Fabric>, storages: BTreeMap<NodeId, Arc<NodeStorage>>) -> storage::Fetch {
    Arc::new(move |node_id, from, to| {
        storages.iter().filter(|(source, _)| **source != node_id).find_map(|(source, storage)| {
            if !fabric.fetch_possible(node_id, *source) {
                return None;
            }
            let entries = storage.applied_range(from, to, FETCH_ENTRIES_MAX);
            (!entries.is_empty()).then_some(entries)
        })
    })
}

/// Watches one instance's metrics: records the leaders of each term, and checks that the
/// node's vote never goes back, within an instance or across a crash and restart (a vote is
/// durable before it is answered: a node that forgot one could vote twice and let two
/// leaders share a leader id).
///
/// "No two leaders in one term" is not an invariant of openraft 0.9 as the cluster builds it
/// (without the `single-term-leader` feature): a leader id is (term, node id), totally
/// ordered, and a node that voted for (t, 1) may later grant (t, 2). Election safety there
/// is "one leader per leader id", which a node's vote, never going back, guarantees; the
/// leaders per term are counted and reported instead.
async fn metrics_watch(cluster: Arc<Cluster>, node_id: NodeId, raft: SimRaft) {
    let mut metrics = raft.metrics();
    // Bounded: each turn waits for a change of this instance's metrics, which stop with it.
    for _ in 0..10_000_000u64 {
        let (state, term, vote) = {
            let now = metrics.borrow();
            (now.state, now.current_term, now.vote)
        };
        if state == ServerState::Leader {
            cluster.leaders.lock().expect("leaders").entry(term).or_default().insert(node_id);
        }
        // A new instance reports the default vote until it has read its own from storage.
        let highest = *cluster.votes.lock().expect("votes").entry(node_id).or_insert(vote);
        if vote != Vote::default() && vote < highest {
            cluster.violation(format!("node {node_id}'s vote went back from {highest} to {vote}"));
        } else if vote > highest {
            cluster.votes.lock().expect("votes").insert(node_id, vote);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the schedule; each fault undoes itself (restart, heal) after its duration.
async fn faults_run(cluster: Arc<Cluster>, schedule: Vec<(u64, Fault)>, start: tokio::time::Instant) {
    for (at_ms, fault) in schedule {
        tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
        fault_inject(&cluster, fault);
    }
}

fn fault_inject(cluster: &Arc<Cluster>, fault: Fault) {
    let undo_after = |cluster: &Arc<Cluster>, after_ms: u64, undo: Box<dyn FnOnce(Arc<Cluster>) + Send>| {
        let cluster = Arc::clone(cluster);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            undo(cluster);
        });
    };
    match fault {
        Fault::Crash { target, down_ms, mid_append, second_down } => {
            let Some(node_id) = cluster.resolve(target) else { return cluster.count(|counts| counts.skipped += 1) };
            if cluster.down_count() >= 1 && !second_down {
                return cluster.count(|counts| counts.skipped += 1);
            }
            let cluster = Arc::clone(cluster);
            tokio::spawn(async move {
                if mid_append {
                    cluster.storages[&node_id].unsynced_wait(Duration::from_millis(MID_APPEND_WAIT_MS)).await;
                }
                if !cluster.crash(node_id) {
                    return cluster.count(|counts| counts.skipped += 1);
                }
                cluster.count(|counts| counts.crashes_of_leader += u64::from(matches!(target, Target::Leader)));
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                if cluster.raft(node_id).is_none() {
                    cluster.start(node_id).await;
                    cluster.count(|counts| counts.restarts += 1);
                }
            });
        }
        Fault::Isolate { target, duration_ms } => {
            let Some(node_id) = cluster.resolve(target) else { return cluster.count(|counts| counts.skipped += 1) };
            cluster.isolate(node_id, true);
            cluster.count(|counts| {
                counts.isolations += 1;
                counts.isolations_of_leader += u64::from(matches!(target, Target::Leader));
            });
            undo_after(cluster, duration_ms, Box::new(move |cluster| cluster.isolate(node_id, false)));
        }
        Fault::LinkCut { from, to, duration_ms } => {
            cluster.fabric.link_cut(from, to);
            cluster.count(|counts| counts.link_cuts += 1);
            undo_after(cluster, duration_ms, Box::new(move |cluster| cluster.fabric.link_heal(from, to)));
        }
        Fault::Storm { weather, duration_ms } => {
            cluster.fabric.weather_set(weather);
            cluster.count(|counts| counts.storms += 1);
            undo_after(cluster, duration_ms, Box::new(|cluster| cluster.fabric.weather_set(Weather::CALM)));
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    acknowledged: Vec<Acknowledged>,
    outcomes_unknown: u64,
    commands_abandoned: u64,
}

/// One client: commands one at a time to the leader it knows, each resent (same bytes, so
/// the same ids) until acknowledged or `WRITE_ATTEMPTS_MAX` attempts failed.
async fn client_run(cluster: Arc<Cluster>, client_index: u64, seed: u64, start: tokio::time::Instant) -> ClientReport {
    let mut workload = Workload::new(seed, client_index, CLIENT_COUNT);
    let mut rng = SimRng::new(seed ^ (client_index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = ClientReport::default();
    let mut leader_hint: Option<NodeId> = None;
    let deadline = start + Duration::from_millis(WORKLOAD_MS);
    let batch_events_max = ledger_config().batch_events_max;
    // Bounded in count and, through the deadline, in simulated time.
    for _ in 0..1_000_000u64 {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let command = bytes::Bytes::from(workload.command_next(now_ns(start) / 1_000_000, batch_events_max));
        let mut acknowledged = false;
        for _ in 0..WRITE_ATTEMPTS_MAX {
            let target = leader_hint.or_else(|| cluster.leader()).unwrap_or(1 + rng.below(cluster.node_count));
            let Some(raft) = cluster.raft(target) else {
                leader_hint = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let proposal = Proposal::Command { timestamp_ns: now_ns(start), command: command.clone() };
            let write = raft.client_write(proposal.clone());
            match tokio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), write).await {
                Ok(Ok(response)) => {
                    report.acknowledged.push(Acknowledged {
                        log_id: response.log_id,
                        proposal,
                        applied: response.data,
                    });
                    acknowledged = true;
                    break;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                    leader_hint = forward.leader_id.filter(|leader| *leader != target);
                    if leader_hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    report.outcomes_unknown += 1;
                    leader_hint = None;
                }
            }
        }
        report.commands_abandoned += u64::from(!acknowledged);
        tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
    }
    report
}

/// The leader's clock reading, as the cluster's dispatcher stamps a proposal.
fn now_ns(start: tokio::time::Instant) -> u64 {
    EPOCH_NS + u64::try_from(start.elapsed().as_nanos()).expect("simulated time fits in u64")
}

/// Heals the network, restarts every node, and waits until every node has applied all that
/// the leader holds. Bounded in rounds and, per round, in simulated time.
async fn settle(cluster: &Arc<Cluster>) -> Result<u64, String> {
    cluster.quiet.store(true, std::sync::atomic::Ordering::Relaxed);
    cluster.fabric.heal_all();
    for node_id in cluster.node_ids() {
        if cluster.raft(node_id).is_none() {
            cluster.start(node_id).await;
        }
    }
    for _ in 0..SETTLE_ROUNDS_MAX {
        let Some(leader) = cluster.leader() else {
            let raft = cluster.raft(1).ok_or("node 1 did not restart")?;
            let _ = raft.wait(Some(Duration::from_secs(1))).state(ServerState::Leader, "a leader").await;
            continue;
        };
        let leader_raft = cluster.raft(leader).ok_or("the leader went away")?;
        let Some(index_last) = leader_raft.metrics().borrow().last_log_index else { continue };
        let mut caught_up = true;
        for node_id in cluster.node_ids() {
            let raft = cluster.raft(node_id).ok_or(format!("node {node_id} is not running"))?;
            let wait = raft.wait(Some(Duration::from_secs(5)));
            caught_up &= wait.applied_index_at_least(Some(index_last), "settled").await.is_ok();
        }
        if caught_up && cluster.leader() == Some(leader) {
            return Ok(index_last);
        }
    }
    let nodes: Vec<String> = cluster
        .node_ids()
        .map(|node_id| match cluster.raft(node_id) {
            Some(raft) => format!(
                "node {node_id}: {}, storage: {}",
                raft.metrics().borrow().summary(),
                cluster.storages[&node_id].describe()
            ),
            None => format!("node {node_id}: not running"),
        })
        .collect();
    Err(format!("the healed cluster did not settle within {SETTLE_ROUNDS_MAX} rounds: {}", nodes.join("; ")))
}

/// The checker: every invariant over every node, as one list of violations.
fn check(cluster: &Cluster, acknowledged: &[Acknowledged]) -> Vec<String> {
    let mut violations = cluster.violations.lock().expect("violations").clone();
    for (node_id, storage) in &cluster.storages {
        violations.extend(storage.violations().into_iter().map(|what| format!("node {node_id}: {what}")));
    }
    for node_id in cluster.node_ids() {
        match cluster.raft(node_id).map(|raft| raft.metrics().borrow().running_state.clone()) {
            Some(Ok(())) => {}
            Some(Err(fatal)) => violations.push(format!("node {node_id}'s Raft stopped: {fatal}")),
            None => violations.push(format!("node {node_id} is not running after the settle")),
        }
    }
    let applied = cluster.applied();
    for write in acknowledged {
        for (node_id, sequence) in &applied {
            if let Some(why) = acknowledged_check(write, sequence.get(write.log_id.index as usize)) {
                violations.push(format!("acknowledged write at {}: node {node_id} {why}", write.log_id));
            }
        }
    }
    for (node_id, sequence) in &applied {
        if let Some(pair) = sequence.windows(2).find(|pair| pair[1].log_id.leader_id < pair[0].log_id.leader_id) {
            violations.push(format!(
                "node {node_id} applied {} after {}: leader ids went back",
                pair[1].log_id, pair[0].log_id
            ));
        }
    }
    let (first_id, first) = applied.iter().next().expect("nodes");
    for (node_id, sequence) in applied.iter().skip(1) {
        let common = first.len().min(sequence.len());
        if let Some(index) = (0..common).find(|index| first[*index].entry_bytes != sequence[*index].entry_bytes) {
            violations.push(format!("nodes {first_id} and {node_id} applied different entries at index {index}"));
        }
        if let Some(index) =
            (0..common).find(|index| first[*index].state_hash_after != sequence[*index].state_hash_after)
        {
            violations.push(format!("nodes {first_id} and {node_id} have different state hashes after index {index}"));
        }
        if let Some(index) = (0..common).find(|index| first[*index].results != sequence[*index].results) {
            violations.push(format!("nodes {first_id} and {node_id} have different results at index {index}"));
        }
    }
    for (node_id, storage) in &cluster.storages {
        if let Some(why) = storage.with_ledger(money_check) {
            violations.push(format!("node {node_id}: {why}"));
        }
    }
    violations
}

fn acknowledged_check(write: &Acknowledged, entry: Option<&AppliedEntry>) -> Option<String> {
    let Some(entry) = entry else { return Some("never applied it".to_string()) };
    if entry.log_id != write.log_id {
        return Some(format!("applied {} there instead", entry.log_id));
    }
    let decoded: Entry = bincode::deserialize(&entry.entry_bytes).expect("an applied entry decodes");
    if decoded.payload != EntryPayload::Normal(write.proposal.clone()) {
        return Some("applied another payload there".to_string());
    }
    if entry.results != write.applied.body || write.applied.op != write.log_id.index + 1 {
        return Some("applied it with other results than the client was given".to_string());
    }
    None
}

/// Σ debits = Σ credits over the workload's accounts, posted and pending, and `verify`.
fn money_check(ledger: &walletd_core::Ledger, output: &mut walletd_core::Output) -> Option<String> {
    ledger.verify();
    let ids = Workload::account_ids(CLIENT_COUNT);
    ledger.query(Query::LookupAccounts(&ids), output);
    let (mut debits_posted, mut credits_posted, mut debits_pending, mut credits_pending) = (0u128, 0u128, 0u128, 0u128);
    for account in &output.accounts {
        debits_posted += account.debits_posted.0;
        credits_posted += account.credits_posted.0;
        debits_pending += account.debits_pending.0;
        credits_pending += account.credits_pending.0;
    }
    if debits_posted != credits_posted || debits_pending != credits_pending {
        return Some(format!(
            "money does not sum to zero: posted debits {debits_posted} credits {credits_posted}, pending debits \
             {debits_pending} credits {credits_pending}"
        ));
    }
    None
}

struct SeedReport {
    faults: FaultCounts,
    message_faults: network::MessageFaults,
    acknowledged: u64,
    outcomes_unknown: u64,
    commands_abandoned: u64,
    index_last: u64,
    terms_led: u64,
    snapshots_installed: u64,
    /// Terms in which more than one node led (allowed by openraft's leader ids).
    terms_led_twice: u64,
    simulated: Duration,
}

impl SeedReport {
    fn faults_injected(&self) -> u64 {
        self.faults.scheduled() + self.message_faults.injected()
    }
}

async fn seed_run(seed: u64, options: SimOptions) -> Result<SeedReport, Vec<String>> {
    let start = tokio::time::Instant::now();
    let cluster = Cluster::new(seed, options);
    for node_id in cluster.node_ids() {
        cluster.start(node_id).await;
    }
    let members: BTreeMap<NodeId, Member> = cluster
        .node_ids()
        .map(|node_id| (node_id, Member { raft_addr: format!("sim:{node_id}"), client_addr: format!("sim:{node_id}") }))
        .collect();
    let first = cluster.raft(1).expect("node 1 started");
    first.initialize(members).await.map_err(|error| vec![format!("initialize: {error}")])?;
    let faults = tokio::spawn(faults_run(Arc::clone(&cluster), schedule(seed, options.node_count), start));
    let clients: Vec<_> = (0..CLIENT_COUNT)
        .map(|client_index| tokio::spawn(client_run(Arc::clone(&cluster), client_index, seed, start)))
        .collect();
    let mut reports = Vec::new();
    for client in clients {
        reports.push(client.await.expect("a client task"));
    }
    faults.await.expect("the fault task");
    let settled = settle(&cluster).await;
    let acknowledged: Vec<Acknowledged> = reports.iter().flat_map(|report| report.acknowledged.clone()).collect();
    let mut violations = check(&cluster, &acknowledged);
    let index_last = match settled {
        Ok(index_last) => index_last,
        Err(why) => {
            violations.push(why);
            0
        }
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    let faults = *cluster.faults.lock().expect("fault counts");
    let (terms_led, terms_led_twice) = {
        let leaders = cluster.leaders.lock().expect("leaders");
        (leaders.len() as u64, leaders.values().filter(|nodes| nodes.len() > 1).count() as u64)
    };
    Ok(SeedReport {
        faults,
        message_faults: cluster.fabric.faults(),
        acknowledged: acknowledged.len() as u64,
        outcomes_unknown: reports.iter().map(|report| report.outcomes_unknown).sum(),
        commands_abandoned: reports.iter().map(|report| report.commands_abandoned).sum(),
        index_last,
        terms_led,
        terms_led_twice,
        snapshots_installed: cluster.storages.values().map(|storage| storage.installs_completed()).sum(),
        simulated: start.elapsed(),
    })
}

thread_local! {
    /// Panics on this thread: openraft's tasks run on it, and a panic in one of them stops
    /// that node's Raft without reaching the test.
    static PANIC_COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn panic_count_install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANIC_COUNT.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
}

fn seed_run_blocking(seed: u64, options: SimOptions) -> Result<SeedReport, Vec<String>> {
    panic_count_install();
    let panics_before = PANIC_COUNT.with(|count| count.get());
    runtime::seed(seed ^ 0x0e1e_c710_0000_0001);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let outcome = runtime.block_on(seed_run(seed, options));
    drop(runtime);
    let panics = PANIC_COUNT.with(|count| count.get()) - panics_before;
    match outcome {
        Ok(_) if panics > 0 => Err(vec![format!("{panics} panics in the simulation's tasks (printed above)")]),
        Err(mut violations) if panics > 0 => {
            violations.push(format!("{panics} panics in the simulation's tasks (printed above)"));
            Err(violations)
        }
        outcome => outcome,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// Sums over the seeds of one run.
#[derive(Default)]
struct Totals {
    faults: FaultCounts,
    message_faults: network::MessageFaults,
    faults_injected: u64,
    acknowledged: u64,
    terms_led_twice: u64,
    snapshots_installed: u64,
    simulated: Duration,
}

impl Totals {
    fn add(&mut self, report: &SeedReport) {
        self.faults = add_counts(self.faults, report.faults);
        let (totals, seed) = (&mut self.message_faults, &report.message_faults);
        totals.lost += seed.lost;
        totals.replies_lost += seed.replies_lost;
        totals.duplicated += seed.duplicated;
        totals.delayed_long += seed.delayed_long;
        totals.blocked += seed.blocked;
        totals.delivered += seed.delivered;
        self.faults_injected += report.faults_injected();
        self.acknowledged += report.acknowledged;
        self.terms_led_twice += report.terms_led_twice;
        self.snapshots_installed += report.snapshots_installed;
        self.simulated += report.simulated;
    }
}

fn seed_report_print(seed: u64, report: &SeedReport, wall: Duration) {
    println!(
        "seed {seed}: {} faults ({} scheduled: {:?}; {} on messages: {:?}), {} writes acknowledged, {} outcomes \
         unknown, {} commands abandoned, {} entries, {} snapshots installed, {} terms with a leader ({} with two), \
         {:.1} s simulated in {} ms",
        report.faults_injected(),
        report.faults.scheduled(),
        report.faults,
        report.message_faults.injected(),
        report.message_faults,
        report.acknowledged,
        report.outcomes_unknown,
        report.commands_abandoned,
        report.index_last + 1,
        report.snapshots_installed,
        report.terms_led,
        report.terms_led_twice,
        report.simulated.as_secs_f64(),
        wall.as_millis()
    );
}

/// Runs the seeds in order; the first that fails stops the run with its violations (a
/// panic inside the simulation is one too).
fn seeds_run(seeds: &[u64], options: SimOptions, print: bool) -> Result<Totals, (u64, Vec<String>)> {
    let mut totals = Totals::default();
    for &seed in seeds {
        let wall_seed = Instant::now();
        let report = match std::panic::catch_unwind(|| seed_run_blocking(seed, options)) {
            Ok(Ok(report)) => report,
            Ok(Err(violations)) => return Err((seed, violations)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                    .unwrap_or_default();
                return Err((seed, vec![format!("panicked: {what}")]));
            }
        };
        if print {
            seed_report_print(seed, &report, wall_seed.elapsed());
        }
        totals.add(&report);
    }
    Ok(totals)
}

#[test]
fn cluster_simulation() {
    let seeds: Vec<u64> = match env_u64("WALLETD_CLUSTER_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_u64("WALLETD_CLUSTER_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT)).collect(),
    };
    let node_count = env_u64("WALLETD_CLUSTER_SIM_NODES").unwrap_or(NODE_COUNT_DEFAULT);
    assert!(node_count == 3 || node_count == 5, "WALLETD_CLUSTER_SIM_NODES is 3 or 5");
    let wall_start = Instant::now();
    let totals = match seeds_run(&seeds, SimOptions { flaw: Flaw::None, node_count }, true) {
        Ok(totals) => totals,
        Err((seed, violations)) => panic!(
            "cluster simulation seed {seed} ({node_count} nodes) failed:\n  {}\nreplay: WALLETD_CLUSTER_SIM_NODES={node_count} \
             WALLETD_CLUSTER_SIM_SEED={seed} cargo test -p walletd-cluster --test simulation -- --nocapture",
            violations.join("\n  ")
        ),
    };
    println!(
        "cluster simulation: {node_count} nodes, {} seeds, {} faults injected ({} scheduled: {:?}; on messages: {:?}), {} writes \
         acknowledged and found on every node, {} snapshots installed, {} terms led by two nodes, {:.0} s simulated in \
         {:.1} s",
        seeds.len(),
        totals.faults_injected,
        totals.faults.scheduled(),
        totals.faults,
        totals.message_faults,
        totals.acknowledged,
        totals.snapshots_installed,
        totals.terms_led_twice,
        totals.simulated.as_secs_f64(),
        wall_start.elapsed().as_secs_f64()
    );
    if seeds.len() as u64 == SEEDS_DEFAULT {
        assert!(totals.faults_injected >= 10_000, "the default run injects at least 10,000 faults");
    }
}

/// The checker is only worth its silence if it speaks up: each deliberate bug (two of
/// durability, one of determinism) must be caught within a few seeds.
#[test]
fn cluster_simulation_finds_flaws() {
    let seeds: Vec<u64> = (1..=FLAW_SEEDS_MAX).collect();
    for flaw in [Flaw::AcknowledgeBeforeSync, Flaw::VoteNotDurable, Flaw::ApplyWithLocalClock] {
        match seeds_run(&seeds, SimOptions { flaw, node_count: NODE_COUNT_DEFAULT }, false) {
            Ok(totals) => panic!(
                "{flaw:?} went unnoticed over {FLAW_SEEDS_MAX} seeds ({} faults, {} writes acknowledged)",
                totals.faults_injected, totals.acknowledged
            ),
            Err((seed, violations)) => println!("{flaw:?}: caught by seed {seed}: {}", violations[0]),
        }
    }
}

fn add_counts(a: FaultCounts, b: FaultCounts) -> FaultCounts {
    FaultCounts {
        crashes: a.crashes + b.crashes,
        crashes_of_leader: a.crashes_of_leader + b.crashes_of_leader,
        crashes_losing_unsynced: a.crashes_losing_unsynced + b.crashes_losing_unsynced,
        torn_appends: a.torn_appends + b.torn_appends,
        restarts: a.restarts + b.restarts,
        isolations: a.isolations + b.isolations,
        isolations_of_leader: a.isolations_of_leader + b.isolations_of_leader,
        link_cuts: a.link_cuts + b.link_cuts,
        storms: a.storms + b.storms,
        skipped: a.skipped + b.skipped,
    }
}
