//! A simulated node's storage: the Raft log and vote (`SimLog`, openraft's `RaftLogStorage`)
//! and the state machine (`SimMachine`, its `RaftStateMachine`), in memory, with durability
//! modelled the way the file-backed ones provide it.
//!
//! - A vote is durable when `save_vote` returns (the real store fsyncs before it returns).
//! - Appends, truncations and purges go into an ordered list of unsynced operations; a sync
//!   task, woken by each append and running after a seeded delay, makes every queued operation
//!   durable and only then calls the appends' `LogFlushed`. A crash keeps only what was synced,
//!   or with a seeded chance also a prefix of the unsynced operations with the last one torn
//!   (a prefix of its entries), as a file cut mid-write would.
//! - The state machine applies an entry only once the durable log holds it (as
//!   `LogStore::flushed_wait` makes the real one do), and applies exactly as
//!   `cluster/src/state_machine.rs` does: the stamped timestamp raised to
//!   `ledger.timestamp_next_min()`, commands decoded with `CommandScratch` and applied to a real
//!   `Ledger`, openraft's blank and membership entries and checkpoints recorded with the state
//!   hash. Every applied entry is kept (index, log id, entry bytes, results, state hash after),
//!   durable as the journal is once `apply` returns; a restart rebuilds the ledger by replaying
//!   that sequence and checks each recorded state hash on the way.
//!
//! Every handle carries the epoch of the node instance it was made for. A crash bumps the
//! node's epoch, so whatever the dead instance's tasks still try fails instead of touching
//! what the next instance owns.

use super::{Entry, LogId, SimConfig, SnapshotMeta, StorageError, StoredMembership, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use walletd_cluster::types::{Applied, NodeId, Proposal};
use walletd_core::{Command, CommandScratch, Config, Ledger, Output};
use walletd_gateway::protocol;
use walletd_journal::SimRng;

/// One entry as a state machine applied it: what the checker compares across nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    pub log_id: LogId,
    /// The whole entry (log id and payload), bincode-encoded.
    pub entry_bytes: Vec<u8>,
    /// The per-event results, in the protocol's encoding (empty for non-commands).
    pub results: Vec<u8>,
    pub state_hash_after: u128,
}

/// A snapshot, as the cluster's are (`cluster/src/snapshot.rs`): not a copy of the state but
/// an anchor in the applied sequence, its index and the state hash after it. A node that
/// installs one fetches the entries it lacks from a member that holds them, re-applies each
/// (its results and state hash must be the ones recorded there), and must reach the anchor's
/// state hash. The install is durable from its start (`installing`), and a node restarted
/// mid-install finishes it before its Raft starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub index: u64,
    pub state_hash: u128,
}

impl Anchor {
    const SIZE_BYTES: usize = 24;

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::SIZE_BYTES);
        bytes.extend_from_slice(&self.index.to_le_bytes());
        bytes.extend_from_slice(&self.state_hash.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Anchor> {
        if bytes.len() != Self::SIZE_BYTES {
            return None;
        }
        let index = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let state_hash = u128::from_le_bytes(bytes[8..24].try_into().expect("16 bytes"));
        Some(Anchor { index, state_hash })
    }
}

/// Entries `from..=to` (or a first part of them) of the applied sequence of some member this
/// node can reach now, or nothing: how an install fetches what it lacks.
pub type Fetch = Arc<dyn Fn(NodeId, u64, u64) -> Option<Vec<AppliedEntry>> + Send + Sync>;

/// Rounds an install tries the members before it gives up (the pause doubles to 2 s).
const INSTALL_ROUNDS_MAX: u64 = 200;

/// An operation on the Raft log, in the order the node issued it.
#[derive(Clone, Debug)]
enum LogOperation {
    Append(Vec<Entry>),
    /// Remove every entry from this index on.
    Truncate(u64),
    /// Remove every entry up to and including this log id.
    Purge(LogId),
}

#[derive(Clone, Debug, Default)]
struct LogImage {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
}

impl LogImage {
    fn operation_apply(&mut self, operation: &LogOperation) {
        match operation {
            LogOperation::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry.clone());
                }
            }
            LogOperation::Truncate(index) => {
                self.entries.split_off(index);
            }
            LogOperation::Purge(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                self.last_purged = Some(*log_id);
            }
        }
    }
}

/// The state machine in memory; `applied` is its durable part (the journal's analogue).
struct MachineState {
    config: Config,
    /// The node's clock's offset, non-zero only under `Flaw::ApplyWithLocalClock`.
    clock_offset_ns: u64,
    ledger: Ledger,
    output: Output,
    scratch: CommandScratch,
    applied: Vec<AppliedEntry>,
    membership: StoredMembership,
}

impl MachineState {
    fn new(config: Config, clock_offset_ns: u64) -> MachineState {
        MachineState {
            config,
            clock_offset_ns,
            ledger: Ledger::new(config).expect("the simulation's ledger config is valid"),
            output: Output::new(&config),
            scratch: CommandScratch::new(config.batch_events_max),
            applied: Vec::new(),
            membership: StoredMembership::default(),
        }
    }

    fn last_applied(&self) -> Option<LogId> {
        self.applied.last().map(|applied| applied.log_id)
    }

    /// Applies one entry as `cluster/src/state_machine.rs` does, and records it.
    fn entry_apply(&mut self, entry: &Entry) -> Result<Applied, String> {
        let index_expected = self.applied.len() as u64;
        if entry.log_id.index != index_expected {
            return Err(format!("entry {} applied where index {index_expected} was next", entry.log_id));
        }
        let op = entry.log_id.index + 1;
        let applied = match &entry.payload {
            EntryPayload::Normal(Proposal::Command { timestamp_ns, command }) => {
                let timestamp_ns = (*timestamp_ns + self.clock_offset_ns).max(self.ledger.timestamp_next_min());
                let Command::Batch(batch) = self.scratch.decode(command).map_err(|error| error.to_string())? else {
                    return Err(format!("entry {} holds a query", entry.log_id));
                };
                self.ledger.apply(timestamp_ns, batch, &mut self.output);
                let mut body = Vec::new();
                let record_count = protocol::results_encode(&self.output.results, &mut body);
                Applied { op, timestamp_ns, record_count, body }
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                Applied { op, timestamp_ns: 0, record_count: 0, body: Vec::new() }
            }
            EntryPayload::Normal(Proposal::Checkpoint) | EntryPayload::Blank => {
                Applied { op, timestamp_ns: 0, record_count: 0, body: Vec::new() }
            }
        };
        self.applied.push(AppliedEntry {
            log_id: entry.log_id,
            entry_bytes: bincode::serialize(entry).expect("an entry encodes"),
            results: applied.body.clone(),
            state_hash_after: self.ledger.state_hash(),
        });
        Ok(applied)
    }

    /// A fresh ledger fed the durable applied sequence again: the restart's recovery. Any
    /// state hash that differs from the one recorded is a determinism failure.
    fn rebuilt(config: Config, clock_offset_ns: u64, applied: &[AppliedEntry]) -> Result<MachineState, String> {
        let mut machine = MachineState::new(config, clock_offset_ns);
        for recorded in applied {
            let entry: Entry = bincode::deserialize(&recorded.entry_bytes).expect("an applied entry decodes");
            machine.entry_apply(&entry)?;
            let replayed = machine.applied.last().expect("just applied");
            if replayed != recorded {
                return Err(format!(
                    "replaying entry {} after a restart gave state hash {:#x} and {} result bytes, not {:#x} and {}",
                    recorded.log_id,
                    replayed.state_hash_after,
                    replayed.results.len(),
                    recorded.state_hash_after,
                    recorded.results.len()
                ));
            }
        }
        Ok(machine)
    }
}

struct NodeState {
    /// Bumped by every crash: handles of an older epoch are fenced off.
    epoch: u64,
    vote: Option<Vote>,
    durable: LogImage,
    /// What reads see: `durable` with `unsynced` applied.
    volatile: LogImage,
    unsynced: Vec<LogOperation>,
    callbacks: Vec<LogFlushed<SimConfig>>,
    machine: MachineState,
    /// Wakes the sync task of the live instance (each instance has its own, so a dead
    /// instance's task cannot take a wake-up meant for the next one's).
    sync_wanted: Arc<Notify>,
    /// The newest snapshot built or installed (durable: the real one's `raft/snapshot`).
    snapshot: Option<(SnapshotMeta, Anchor)>,
    /// An install under way (durable: the real one's `raft/installing`).
    installing: Option<(SnapshotMeta, Anchor)>,
    installs_completed: u64,
    /// What went wrong inside storage (reported by the checker with the seed).
    violations: Vec<String>,
}

/// What a crash did to the unsynced part of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashLoss {
    /// Log operations not synced when the node died: lost, or kept in part.
    pub operations_unsynced: usize,
    /// Some of them survived, the last one an append cut short (a torn write).
    pub torn: bool,
}

/// One node's storage, across its crashes and restarts.
pub struct NodeStorage {
    state: Mutex<NodeState>,
    /// Bumped after every sync and every crash; `apply` waits on it.
    synced: watch::Sender<u64>,
    /// Bumped after every append; a crash aimed at an unsynced append waits on it.
    appended: watch::Sender<u64>,
    flaw: Flaw,
    node_id: NodeId,
    /// Set once by the cluster, which knows the other members.
    fetch: OnceLock<Fetch>,
}

/// A deliberate durability bug, for the test that proves the checker catches each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    None,
    /// `LogFlushed` is called at the append, before any sync.
    AcknowledgeBeforeSync,
    /// A crash forgets the vote.
    VoteNotDurable,
    /// The state machine stamps commands with the node's own clock (here: a reading a few
    /// nanoseconds off per node) instead of the timestamp in the entry.
    ApplyWithLocalClock,
}

impl NodeStorage {
    pub fn new(config: Config, flaw: Flaw, node_id: NodeId) -> Arc<NodeStorage> {
        let clock_offset_ns = if flaw == Flaw::ApplyWithLocalClock { node_id * 1_000 } else { 0 };
        Arc::new(NodeStorage {
            state: Mutex::new(NodeState {
                epoch: 0,
                vote: None,
                durable: LogImage::default(),
                volatile: LogImage::default(),
                unsynced: Vec::new(),
                callbacks: Vec::new(),
                machine: MachineState::new(config, clock_offset_ns),
                sync_wanted: Arc::new(Notify::new()),
                snapshot: None,
                installing: None,
                installs_completed: 0,
                violations: Vec::new(),
            }),
            synced: watch::channel(0).0,
            appended: watch::channel(0).0,
            flaw,
            node_id,
            fetch: OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().expect("the simulated storage lock")
    }

    /// Handles for a new instance of the node (at start and after each restart), and the sync
    /// task it needs, which the caller spawns. The ledger is rebuilt from the durable part.
    pub fn instance(
        self: &Arc<NodeStorage>,
        sync_rng: SimRng,
        sync_delay_max_us: u64,
    ) -> (SimLog, SimMachine, impl std::future::Future<Output = ()> + Send + 'static) {
        let (epoch, sync_wanted) = {
            let mut state = self.lock();
            state.epoch += 1;
            state.sync_wanted = Arc::new(Notify::new());
            let (config, clock_offset_ns) = (state.machine.config, state.machine.clock_offset_ns);
            match MachineState::rebuilt(config, clock_offset_ns, &state.machine.applied) {
                Ok(machine) => state.machine = machine,
                Err(violation) => state.violations.push(violation),
            }
            (state.epoch, Arc::clone(&state.sync_wanted))
        };
        let handle = Handle { storage: Arc::clone(self), epoch, sync_wanted };
        let sync = sync_run(handle.clone(), sync_rng, sync_delay_max_us);
        (SimLog { handle: handle.clone() }, SimMachine { handle }, sync)
    }

    /// The instance dies: unsynced log operations are lost (or, with `rng`'s chance, a torn
    /// prefix of them survives); the vote and the applied sequence were durable already.
    pub fn crash(&self, rng: &mut SimRng, torn_percent: u64) -> CrashLoss {
        let loss = {
            let mut state = self.lock();
            state.epoch += 1;
            state.callbacks.clear();
            state.sync_wanted.notify_one(); // the dead instance's sync task sees it and ends
            let unsynced = std::mem::take(&mut state.unsynced);
            let mut loss = CrashLoss { operations_unsynced: unsynced.len(), ..CrashLoss::default() };
            if !unsynced.is_empty() && rng.chance(torn_percent) {
                // The writes reached the disk in order up to some point, the last one cut.
                let kept_count = 1 + rng.below(unsynced.len() as u64) as usize;
                for (position, operation) in unsynced.iter().take(kept_count).enumerate() {
                    let operation = match operation {
                        LogOperation::Append(entries) if position + 1 == kept_count => {
                            loss.torn = true;
                            LogOperation::Append(entries[..rng.below(entries.len() as u64) as usize].to_vec())
                        }
                        other => other.clone(),
                    };
                    state.durable.operation_apply(&operation);
                }
            }
            state.volatile = state.durable.clone();
            if self.flaw == Flaw::VoteNotDurable {
                state.vote = None;
            }
            loss
        };
        self.synced.send_modify(|count| *count += 1);
        loss
    }

    /// Waits until the live instance has an append that is not synced yet (true), or
    /// `timeout` passes (false).
    pub async fn unsynced_wait(&self, timeout: Duration) -> bool {
        let mut appended = self.appended.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        // Bounded: each turn waits for an append, and the deadline ends the wait.
        for _ in 0..100_000u64 {
            if !self.lock().unsynced.is_empty() {
                return true;
            }
            match tokio::time::timeout_at(deadline, appended.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
        false
    }

    pub fn fetch_set(&self, fetch: Fetch) {
        assert!(self.fetch.set(fetch).is_ok(), "the fetch is set once");
    }

    /// Entries `from..=to` of this node's applied sequence, as far as it has them (at most
    /// `count_max`), for another node's install.
    pub fn applied_range(&self, from: u64, to: u64, count_max: usize) -> Vec<AppliedEntry> {
        let state = self.lock();
        let applied = &state.machine.applied;
        let end = applied.len().min(to as usize + 1).min(from as usize + count_max);
        applied.get(from as usize..end).map(<[AppliedEntry]>::to_vec).unwrap_or_default()
    }

    /// A line on the node's storage, for a report of a cluster that did not settle.
    pub fn describe(&self) -> String {
        let state = self.lock();
        format!(
            "epoch {}, vote {:?}, durable log {:?}..={:?} (purged {:?}), volatile to {:?}, {} unsynced, {} applied, \
             installing {:?}",
            state.epoch,
            state.vote,
            state.durable.entries.keys().next(),
            state.durable.entries.keys().next_back(),
            state.durable.last_purged,
            state.volatile.entries.keys().next_back(),
            state.unsynced.len(),
            state.machine.applied.len(),
            state.installing.as_ref().map(|(meta, anchor)| (meta.last_log_id, anchor.index)),
        )
    }

    pub fn installs_completed(&self) -> u64 {
        self.lock().installs_completed
    }

    pub fn applied(&self) -> Vec<AppliedEntry> {
        self.lock().machine.applied.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Runs `query` against the node's ledger as it is now.
    pub fn with_ledger<T>(&self, query: impl FnOnce(&Ledger, &mut Output) -> T) -> T {
        let mut state = self.lock();
        let machine = &mut state.machine;
        query(&machine.ledger, &mut machine.output)
    }
}

/// A node's storage as one instance of it sees it.
#[derive(Clone)]
struct Handle {
    storage: Arc<NodeStorage>,
    epoch: u64,
    sync_wanted: Arc<Notify>,
}

fn crashed(what: &str) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(format!("{what}: this instance of the node crashed"))).into()
}

impl Handle {
    /// The node's state, if this handle's instance is still the live one.
    fn live(&self, what: &str) -> Result<MutexGuard<'_, NodeState>, StorageError> {
        let state = self.storage.lock();
        if state.epoch != self.epoch {
            return Err(crashed(what));
        }
        Ok(state)
    }
}

/// Makes everything queued durable after a seeded delay, then acknowledges the appends.
async fn sync_run(handle: Handle, mut rng: SimRng, sync_delay_max_us: u64) {
    // Bounded: an instance lives for a bounded simulated time, and each turn waits for work.
    for _ in 0..10_000_000u64 {
        handle.sync_wanted.notified().await;
        // Now and then a slow disk: ten times the usual delay at most.
        let delay_max_us = if rng.chance(10) { 10 * sync_delay_max_us } else { sync_delay_max_us };
        tokio::time::sleep(Duration::from_micros(rng.below(delay_max_us + 1))).await;
        let callbacks = {
            let Ok(mut state) = handle.live("sync") else { return };
            let operations = std::mem::take(&mut state.unsynced);
            for operation in &operations {
                state.durable.operation_apply(operation);
            }
            std::mem::take(&mut state.callbacks)
        };
        handle.storage.synced.send_modify(|count| *count += 1);
        for callback in callbacks {
            callback.log_io_completed(Ok(()));
        }
    }
}

/// The Raft log and vote of one node instance.
#[derive(Clone)]
pub struct SimLog {
    handle: Handle,
}

impl RaftLogReader<SimConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = self.handle.live("read the log")?;
        let start = match range.start_bound() {
            Bound::Included(start) => Bound::Included(*start),
            Bound::Excluded(start) => Bound::Excluded(*start),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(end) => Bound::Included(*end),
            Bound::Excluded(end) => Bound::Excluded(*end),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(state.volatile.entries.range((start, end)).map(|(_, entry)| entry.clone()).collect())
    }
}

impl RaftLogStorage<SimConfig> for SimLog {
    type LogReader = SimLog;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, StorageError> {
        let state = self.handle.live("log state")?;
        let last = state.volatile.entries.values().next_back().map(|entry| entry.log_id).or(state.volatile.last_purged);
        Ok(LogState { last_purged_log_id: state.volatile.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> SimLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.handle.live("save the vote")?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.handle.live("read the vote")?.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut state = self.handle.live("append")?;
            let operation = LogOperation::Append(entries);
            state.volatile.operation_apply(&operation);
            state.unsynced.push(operation);
            if self.handle.storage.flaw == Flaw::AcknowledgeBeforeSync {
                callback.log_io_completed(Ok(()));
            } else {
                state.callbacks.push(callback);
            }
        }
        self.handle.sync_wanted.notify_one();
        self.handle.storage.appended.send_modify(|count| *count += 1);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut state = self.handle.live("truncate")?;
        let operation = LogOperation::Truncate(log_id.index);
        state.volatile.operation_apply(&operation);
        state.unsynced.push(operation);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut state = self.handle.live("purge")?;
        let operation = LogOperation::Purge(log_id);
        state.volatile.operation_apply(&operation);
        state.unsynced.push(operation);
        Ok(())
    }
}

/// The state machine of one node instance.
#[derive(Clone)]
pub struct SimMachine {
    handle: Handle,
}

fn unsupported(what: &str) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(format!("{what}: snapshots are not built"))).into()
}

impl SimMachine {
    /// Waits until the durable log holds `log_id` (the real state machine's `flushed_wait`).
    async fn durable_wait(&self, log_id: LogId) -> Result<(), StorageError> {
        let mut synced = self.handle.storage.synced.subscribe();
        // Bounded: each turn waits for a sync or a crash, and an instance sees boundedly many.
        for _ in 0..10_000_000u64 {
            {
                let state = self.handle.live("apply")?;
                if state.durable.entries.get(&log_id.index).is_some_and(|entry| entry.log_id == log_id) {
                    return Ok(());
                }
            }
            if synced.changed().await.is_err() {
                break;
            }
        }
        Err(crashed("apply"))
    }
}

impl SimMachine {
    /// Finishes an install a crash interrupted, before the node's Raft starts (as the real
    /// node does at start-up).
    pub async fn install_resume(&self) -> Result<(), StorageError> {
        let installing = self.handle.live("resume an install")?.installing.clone();
        match installing {
            Some((meta, anchor)) => self.install_run(&meta, anchor).await,
            None => Ok(()),
        }
    }

    /// Fetches and re-applies the entries up to the anchor, then records the snapshot.
    async fn install_run(&self, meta: &SnapshotMeta, anchor: Anchor) -> Result<(), StorageError> {
        let fetch = Arc::clone(self.handle.storage.fetch.get().expect("the cluster set the fetch"));
        let mut pause = Duration::from_millis(50);
        for _ in 0..INSTALL_ROUNDS_MAX {
            let next = self.handle.live("install")?.machine.applied.len() as u64;
            if next > anchor.index {
                return self.install_finish(meta, anchor);
            }
            match fetch(self.handle.storage.node_id, next, anchor.index) {
                Some(entries) if !entries.is_empty() => {
                    self.fetched_apply(&entries)?;
                    pause = Duration::from_millis(50);
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(StorageIOError::write_snapshot(None, openraft::AnyError::error("no member could serve the install")).into())
    }

    fn fetched_apply(&self, entries: &[AppliedEntry]) -> Result<(), StorageError> {
        let mut state = self.handle.live("install")?;
        for fetched in entries {
            let entry: Entry = bincode::deserialize(&fetched.entry_bytes).expect("a fetched entry decodes");
            let outcome = state.machine.entry_apply(&entry);
            let replayed = state.machine.applied.last().cloned();
            let violation = match outcome {
                Err(violation) => Some(violation),
                Ok(_) if replayed.as_ref() != Some(fetched) => {
                    Some(format!("entry {} fetched for an install applies differently here", fetched.log_id))
                }
                Ok(_) => None,
            };
            if let Some(violation) = violation {
                state.violations.push(violation.clone());
                return Err(StorageIOError::write_snapshot(None, openraft::AnyError::error(violation)).into());
            }
        }
        Ok(())
    }

    fn install_finish(&self, meta: &SnapshotMeta, anchor: Anchor) -> Result<(), StorageError> {
        let mut state = self.handle.live("install")?;
        let last = state.machine.applied.get(anchor.index as usize).cloned();
        let reached = last
            .as_ref()
            .is_some_and(|last| last.state_hash_after == anchor.state_hash && Some(last.log_id) == meta.last_log_id);
        if !reached {
            let violation = format!("an install reached {last:?}, not the anchor {anchor:?} of {meta:?}");
            state.violations.push(violation.clone());
            return Err(StorageIOError::write_snapshot(None, openraft::AnyError::error(violation)).into());
        }
        if state.machine.applied.len() as u64 == anchor.index + 1 {
            state.machine.membership = meta.last_membership.clone();
        }
        state.installing = None;
        state.snapshot = Some((meta.clone(), anchor));
        state.installs_completed += 1;
        Ok(())
    }
}

fn snapshot_of(meta: &SnapshotMeta, anchor: Anchor) -> Snapshot<SimConfig> {
    Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(anchor.encode())) }
}

impl RaftSnapshotBuilder<SimConfig> for SimMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<SimConfig>, StorageError> {
        let mut state = self.handle.live("build a snapshot")?;
        let Some(last) = state.machine.applied.last().cloned() else { return Err(unsupported("build a snapshot")) };
        let anchor = Anchor { index: last.log_id.index, state_hash: last.state_hash_after };
        let meta = SnapshotMeta {
            last_log_id: Some(last.log_id),
            last_membership: state.machine.membership.clone(),
            snapshot_id: format!("{}-{:x}", last.log_id, anchor.state_hash),
        };
        state.snapshot = Some((meta.clone(), anchor));
        Ok(snapshot_of(&meta, anchor))
    }
}

impl RaftStateMachine<SimConfig> for SimMachine {
    type SnapshotBuilder = SimMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.handle.live("applied state")?;
        Ok((state.machine.last_applied(), state.machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(log_id_last) = entries.last().map(|entry| entry.log_id) else { return Ok(Vec::new()) };
        self.durable_wait(log_id_last).await?;
        let mut state = self.handle.live("apply")?;
        let mut applied = Vec::with_capacity(entries.len());
        for entry in &entries {
            match state.machine.entry_apply(entry) {
                Ok(one) => applied.push(one),
                Err(violation) => {
                    state.violations.push(violation.clone());
                    return Err(StorageIOError::write_state_machine(openraft::AnyError::error(violation)).into());
                }
            }
        }
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> SimMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let Some(anchor) = Anchor::decode(snapshot.get_ref()) else {
            return Err(StorageIOError::write_snapshot(None, openraft::AnyError::error("a damaged anchor")).into());
        };
        self.handle.live("install")?.installing = Some((meta.clone(), anchor));
        self.install_run(meta, anchor).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SimConfig>>, StorageError> {
        let state = self.handle.live("read the snapshot")?;
        Ok(state.snapshot.as_ref().map(|(meta, anchor)| snapshot_of(meta, *anchor)))
    }
}
