//! The pipeline, wired in one place: receive → sequence → journal ∥ apply → reply.
//!
//! - **receive** (the gateway's connection threads) frames, checks and validates a request, then
//!   hands it to the sequencer over a bounded channel; a full channel blocks the connection
//!   thread, which stops reading its socket (backpressure, nothing dropped).
//! - **sequence** (one thread, the ring's single producer) gives each mutating request its op
//!   and its timestamp — the only clock read — and inserts a checkpoint every `checkpoint_ops`
//!   ops (with a snapshot request every `snapshot_ops`, counted from the newest snapshot's op,
//!   which may be from an earlier run). It claims a ring slot; a full ring makes it wait, so
//!   the channel fills, so the clients slow down.
//! - **journal** and **apply** consume the ring side by side (the disruptor's two first
//!   consumers). Journal appends every command and checkpoint and commits (one fdatasync) at
//!   the end of each batch the ring hands it: group commit. Apply runs the ledger ahead of the
//!   fsync (speculatively) and leaves each outcome in its slot. A checkpoint slot is the one
//!   place journal waits for apply: the checkpoint carries the state hash only apply knows.
//! - **reply** runs after both: the disruptor advances a consumer's cursor only after its whole
//!   batch, so a slot reaches reply only once its command is durable and applied
//!   (`op <= min(op_durable, op_applied)`); reads too wait for every write before them. Reply
//!   does not take that on trust: it asserts the gate against the `op_durable` and
//!   `op_applied` that journal and apply publish, and `tests/pipeline.rs` holds a sync to show
//!   that no reply passes it.
//!
//! A journal failure is fatal: the journal thread logs it and exits the process (fail-stop);
//! no reply for a command that a restart would not reproduce can leave.

use crate::metrics::Metrics;
use crate::node::Trust;
use crate::writer::Clock;
use crossbeam_channel::{Receiver, Sender};
use disruptor::wait_strategies::WaitStrategy;
use disruptor::{build_single_producer, Producer, Sequence};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use walletd_core::command::{Command, CommandScratch, TRACE_ID_SIZE_BYTES};
use walletd_core::{Ledger, Output, Query};
use walletd_gateway::protocol::{self, FrameOperation};
use walletd_journal::{Journal, RecordKind, Storage};
use walletd_replay::checkpoint::{checkpoint_encode, Checkpoint, CheckpointSigner, RecordAt, CHECKPOINT_SNAPSHOT};
use walletd_replay::{DurableMark, Position, Snapshotter};

/// A validated request, from the receive stage.
#[derive(Debug)]
pub struct Request {
    pub connection: u64,
    pub request_id: u64,
    pub client_id: u128,
    pub operation: FrameOperation,
    pub event_count: u32,
    /// For ledger operations, the command as the journal records it (already checked; traced
    /// when the request was, its trace ids after the events); empty for ping and snapshot.
    pub command: Vec<u8>,
    /// The reply carries the request's timestamp after its results (`FLAG_TIMESTAMP`).
    pub timestamp_reply: bool,
}

/// What the reply stage hands back to the gateway. The body is borrowed from the ring slot, so
/// the slot keeps its buffer (and its capacity) for the next request: apply never allocates
/// for a reply.
#[derive(Debug)]
pub struct Reply<'a> {
    pub connection: u64,
    pub request_id: u64,
    pub client_id: u128,
    pub operation: FrameOperation,
    /// The request's journal op (0 for reads and pings).
    pub op: u64,
    /// The body ends with the request's timestamp (the request asked for it).
    pub timestamp_reply: bool,
    pub record_count: u32,
    pub body: &'a [u8],
}

/// Where replies go (the gateway's connection registry).
pub type ReplyRoute = Arc<dyn Fn(&Reply<'_>) + Send + Sync>;

/// How idle pipeline threads wait. On a machine with few cores, spinning threads take the
/// cores the work needs: `Park` (the default) spins briefly, yields, then sleeps until another
/// pipeline thread makes progress; `Backoff` spins, yields, then sleeps 50 µs at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    BusySpin,
    Yield,
    Backoff,
    Park,
}

impl std::str::FromStr for WaitKind {
    type Err = String;

    fn from_str(text: &str) -> Result<WaitKind, String> {
        match text {
            "busy-spin" => Ok(WaitKind::BusySpin),
            "yield" => Ok(WaitKind::Yield),
            "backoff" => Ok(WaitKind::Backoff),
            "park" => Ok(WaitKind::Park),
            other => Err(format!("unknown wait strategy {other:?}: use park, backoff, yield or busy-spin")),
        }
    }
}

/// Yields the core each time there is nothing to do.
#[derive(Clone, Copy)]
pub struct Yield;

impl WaitStrategy for Yield {
    fn wait_for(&self, _sequence: Sequence) {
        std::thread::yield_now();
    }
}

/// Spins ~100 times, yields ~100 times, then sleeps 50 µs per try, per awaited sequence.
#[derive(Clone, Copy)]
pub struct Backoff;

thread_local! {
    static BACKOFF: Cell<(Sequence, u32)> = const { Cell::new((-1, 0)) };
}

impl WaitStrategy for Backoff {
    fn wait_for(&self, sequence: Sequence) {
        let tries = BACKOFF.with(|state| {
            let (awaited, tries) = state.get();
            let tries = if awaited == sequence { tries.saturating_add(1) } else { 0 };
            state.set((sequence, tries));
            tries
        });
        match tries {
            0..=99 => std::hint::spin_loop(),
            100..=199 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
}

/// Spins ~64 times, then parks until a pipeline thread it waits on counts progress (or 1 ms
/// passes, a bound that is never needed for a wake-up but keeps an idle thread's worst case
/// known). There are two progress counts (eventcounts): `SEQUENCED`, which the sequencer
/// counts after each publish and journal and apply park on, and `STAGED`, which journal and
/// apply count at the end of each batch and whenever they start to wait (by then the
/// disruptor has published their cursors), and reply parks on. So a parked thread is woken
/// only by the threads that could have given it work; an idle pipeline costs no CPU, and a
/// busy one never parks.
///
/// No yield phase: on a loaded machine a `sched_yield` hands the core to any runnable thread
/// for a whole time slice, which cost more than the futex wake-up it saves (a profile of the
/// HTTP benchmark had the pipeline threads' yields at 16% of the serving process's samples).
#[derive(Clone, Copy)]
pub struct Park;

const PARK_SPINS: u32 = 63;

/// A progress count that threads can sleep on.
struct Progress {
    count: AtomicU64,
    parked: AtomicU32,
    lock: Mutex<()>,
    moved: Condvar,
}

impl Progress {
    const fn new() -> Progress {
        Progress { count: AtomicU64::new(0), parked: AtomicU32::new(0), lock: Mutex::new(()), moved: Condvar::new() }
    }

    /// Counts progress and wakes the threads parked on it, if any (a load and an add when
    /// none are).
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|poison| poison.into_inner());
            self.moved.notify_all();
        }
    }

    /// Sleeps while the count is still `seen`, at most `timeout`. A notify after `seen` was
    /// read is never missed: the count and the parked count are both sequentially consistent,
    /// so either the notifier sees this thread parked (and wakes it under the lock) or this
    /// thread sees the new count.
    fn wait(&self, seen: u64, timeout: Duration) {
        self.parked.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|poison| poison.into_inner());
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::SeqCst) == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = self.moved.wait_timeout(guard, deadline - now).unwrap_or_else(|poison| poison.into_inner()).0;
        }
        drop(guard);
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Published by the sequencer; journal and apply wait on it. One per process, shared by every
/// pipeline in it (a second pipeline only adds spurious wake-ups).
static SEQUENCED: Progress = Progress::new();
/// Journal's and apply's progress; reply waits on it.
static STAGED: Progress = Progress::new();

/// What a pipeline thread parks on, and the count its own progress moves (set by each stage
/// on its thread as it starts).
#[derive(Clone, Copy)]
struct ParkRole {
    waits_on: &'static Progress,
    tells: Option<&'static Progress>,
}

const ROLE_STAGE: ParkRole = ParkRole { waits_on: &SEQUENCED, tells: Some(&STAGED) };
const ROLE_REPLY: ParkRole = ParkRole { waits_on: &STAGED, tells: None };

thread_local! {
    static PARK_ROLE: Cell<ParkRole> = const { Cell::new(ROLE_STAGE) };
    /// (awaited sequence, tries, the count of `waits_on` when the wait for it began).
    static PARK: Cell<(Sequence, u32, u64)> = const { Cell::new((-1, 0, 0)) };
}

fn park_role_set(role: ParkRole) {
    PARK_ROLE.with(|cell| cell.set(role));
}

/// The end of a stage's batch: whoever parks on its progress may go on.
fn progress_tell() {
    if let Some(progress) = PARK_ROLE.with(Cell::get).tells {
        progress.notify();
    }
}

impl WaitStrategy for Park {
    fn wait_for(&self, sequence: Sequence) {
        let role = PARK_ROLE.with(Cell::get);
        let (awaited, tries, seen) = PARK.with(Cell::get);
        let tries = if awaited == sequence { tries + 1 } else { 0 };
        match tries {
            0 => {
                // Starting to wait: this thread's cursor is published, so whoever waits on it
                // may go on. The count is read before anything this thread could then miss.
                let seen = role.waits_on.count.load(Ordering::SeqCst);
                if let Some(tells) = role.tells {
                    tells.notify();
                }
                PARK.with(|state| state.set((sequence, 0, seen)));
                std::hint::spin_loop();
            }
            1..=PARK_SPINS => {
                PARK.with(|state| state.set((sequence, tries, seen)));
                std::hint::spin_loop();
            }
            _ => {
                role.waits_on.wait(seen, Duration::from_millis(1));
                // Woken (or timed out): spin again before parking, from the count now.
                let now = role.waits_on.count.load(Ordering::SeqCst);
                PARK.with(|state| state.set((sequence, 1, now)));
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Ring slots (a power of two); each holds one request of up to one batch.
    pub ring_slots: usize,
    pub wait: WaitKind,
    /// Cores to pin journal, apply and reply to, in that order (none: unpinned).
    pub pin_cores: Option<[usize; 3]>,
    pub checkpoint_ops: u64,
    pub snapshot_ops: u64,
    /// Requests waiting for the sequencer before receive blocks.
    pub queue_requests: usize,
    /// The data directory whose durable mark (`op_durable`) the journal stage publishes after
    /// every commit, for followers in other processes; none: not published.
    pub durable_mark_dir: Option<std::path::PathBuf>,
    /// Tamper evidence: the key checkpoints are signed with, and what start-up verifies.
    pub trust: Trust,
    /// Write a checkpoint before the first request. The node sets it when it signs and the
    /// recovered journal does not end with a signed checkpoint, so a recovered tail (or an
    /// old unsigned journal) is covered by a signature at once, not `checkpoint_ops` later.
    pub checkpoint_first: bool,
}

impl Default for PipelineOptions {
    fn default() -> PipelineOptions {
        PipelineOptions {
            ring_slots: 64,
            wait: WaitKind::Park,
            pin_cores: None,
            checkpoint_ops: 256,
            snapshot_ops: 16_384,
            queue_requests: 256,
            durable_mark_dir: None,
            trust: Trust::default(),
            checkpoint_first: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    Empty,
    Command,
    Query,
    Checkpoint { snapshot: bool },
    Ping,
}

/// The result apply leaves for reply (and, for a checkpoint, for journal).
#[derive(Default)]
struct Outcome {
    record_count: u32,
    body: Vec<u8>,
    checkpoint: Option<Checkpoint>,
}

/// One ring slot.
struct Slot {
    kind: SlotKind,
    connection: u64,
    request_id: u64,
    client_id: u128,
    /// The request's operation; `Snapshot` for a checkpoint the sequencer inserted.
    operation: FrameOperation,
    op: u64,
    timestamp_ns: u64,
    /// The reply ends with `timestamp_ns` (a command whose request asked for it).
    timestamp_reply: bool,
    /// The command as journaled: a 16-byte command header, the events, and for a traced request
    /// its trace ids (apply decodes the events only: the ledger never sees a trace id).
    command: Vec<u8>,
    outcome: Mutex<Outcome>,
    checkpoint_ready: AtomicBool,
}

impl Slot {
    fn new(batch_events_max: u32) -> Slot {
        Slot {
            kind: SlotKind::Empty,
            connection: 0,
            request_id: 0,
            client_id: 0,
            operation: FrameOperation::Snapshot,
            op: 0,
            timestamp_ns: 0,
            timestamp_reply: false,
            // Room for a traced command (a trace id after each event), so no slot ever grows.
            command: Vec::with_capacity(16 + (128 + TRACE_ID_SIZE_BYTES) * batch_events_max as usize),
            outcome: Mutex::new(Outcome::default()),
            checkpoint_ready: AtomicBool::new(false),
        }
    }
}

/// A running pipeline: send requests into `requests`; `shutdown` drains it.
pub struct Pipeline {
    requests: Option<Sender<Request>>,
    sequencer: Option<JoinHandle<()>>,
    snapshotter: Arc<Snapshotter>,
    pub metrics: Arc<Metrics>,
}

impl Pipeline {
    /// A handle for the receive stage. Sending blocks while the pipeline is full.
    pub fn requests(&self) -> Sender<Request> {
        self.requests.as_ref().expect("pipeline running").clone()
    }

    /// Stops taking requests, finishes (journals, applies, replies to) everything taken, and
    /// waits for the snapshot replica to catch up. Every sender from `requests()` must be
    /// dropped first or this waits for them.
    pub fn shutdown(mut self) {
        drop(self.requests.take());
        if let Some(sequencer) = self.sequencer.take() {
            sequencer.join().expect("sequencer thread panicked");
        }
        if let Ok(snapshotter) = Arc::try_unwrap(self.snapshotter) {
            if let Err(error) = snapshotter.finish() {
                tracing::error!(%error, "snapshot replica failed");
            }
        }
    }
}

struct JournalStage<S: Storage> {
    journal: Journal<S>,
    durable_mark: Option<DurableMark>,
    appended: bool,
    snapshotter: Arc<Snapshotter>,
    op_archived: u64,
    metrics: Arc<Metrics>,
    /// Signs each checkpoint the journal appends (none: unsigned checkpoints).
    signer: Option<CheckpointSigner>,
}

struct ApplyStage {
    ledger: Ledger,
    output: Output,
    scratch: CommandScratch,
    metrics: Arc<Metrics>,
}

struct Sequencer<C: Clock> {
    clock: C,
    op_next: u64,
    timestamp_next_min: u64,
    op_checkpoint: u64,
    /// Where the snapshot interval counts from: the last snapshot asked for, or (before one
    /// is) the newest snapshot on disk, so a node that restarts often still snapshots.
    op_snapshot: u64,
    /// The op of the last snapshot asked for (0: none), and the replica that writes them.
    op_snapshot_requested: u64,
    snapshotter: Arc<Snapshotter>,
    /// When the clock warning was last logged.
    clock_warned_ns: u64,
    options: PipelineOptions,
    metrics: Arc<Metrics>,
}

/// Starts the pipeline on a recovered ledger and journal. `route` receives every reply. The
/// journal's storage is the real file system in a node, or a test's (one that holds a sync).
pub fn pipeline_start<C, S>(
    ledger: Ledger,
    journal: Journal<S>,
    snapshotter: Snapshotter,
    clock: C,
    route: ReplyRoute,
    options: PipelineOptions,
) -> Pipeline
where
    C: Clock + Send + 'static,
    S: Storage + Send + 'static,
    S::File: Send,
{
    assert!(options.ring_slots.is_power_of_two(), "ring_slots must be a power of two");
    assert_eq!(journal.op_appended(), journal.op_durable());
    let metrics = Arc::new(Metrics::default());
    let snapshotter = Arc::new(snapshotter);
    let op_last = journal.op_durable();
    metrics.op_durable.store(op_last, Ordering::Relaxed);
    metrics.op_applied.store(op_last, Ordering::Relaxed);
    metrics.op_published.store(op_last, Ordering::Relaxed);
    // The newest snapshot may be from an earlier run: the interval counts from it, and the
    // gauges read what recovery found until the replica moves them.
    let op_snapshot = snapshotter.op_snapshot();
    assert!(op_snapshot <= op_last, "the journal reaches the newest snapshot");
    metrics.op_snapshot.store(op_snapshot, Ordering::Relaxed);
    metrics.op_replica.store(snapshotter.op_replayed(), Ordering::Relaxed);
    metrics.state_hash_set(ledger.state_hash());
    let sequencer = Sequencer {
        clock,
        op_next: op_last + 1,
        timestamp_next_min: ledger.timestamp_next_min().max(journal.timestamp_ns_last()),
        op_checkpoint: op_last,
        op_snapshot,
        op_snapshot_requested: 0,
        snapshotter: Arc::clone(&snapshotter),
        clock_warned_ns: 0,
        options: options.clone(),
        metrics: Arc::clone(&metrics),
    };
    let batch_events_max = ledger.config().batch_events_max;
    let durable_mark = options.durable_mark_dir.as_ref().map(|dir| {
        let position = Position { op: op_last, checksum: journal.checksum_last() };
        DurableMark::open(dir, position).unwrap_or_else(|error| fail_stop(error))
    });
    let signer = (options.trust.signing_key.clone())
        .map(|key| CheckpointSigner::new(key, options.checkpoint_ops, ledger.config()));
    let journal_stage = JournalStage {
        journal,
        durable_mark,
        appended: false,
        snapshotter: Arc::clone(&snapshotter),
        // Archiving up to the recovered snapshot was the business of the run that wrote it.
        op_archived: op_snapshot,
        metrics: Arc::clone(&metrics),
        signer,
    };
    let apply_stage = ApplyStage {
        output: Output::new(ledger.config()),
        scratch: CommandScratch::new(batch_events_max),
        ledger,
        metrics: Arc::clone(&metrics),
    };
    let (sender, receiver) = crossbeam_channel::bounded(options.queue_requests);
    let reply_stage = ReplyStage { route, metrics: Arc::clone(&metrics) };
    let stages = Stages { journal: journal_stage, apply: apply_stage, reply: reply_stage, batch_events_max };
    let handle = match options.wait {
        WaitKind::BusySpin => sequencer_spawn(sequencer, receiver, stages, disruptor::BusySpin),
        WaitKind::Yield => sequencer_spawn(sequencer, receiver, stages, Yield),
        WaitKind::Backoff => sequencer_spawn(sequencer, receiver, stages, Backoff),
        WaitKind::Park => sequencer_spawn(sequencer, receiver, stages, Park),
    };
    Pipeline { requests: Some(sender), sequencer: Some(handle), snapshotter, metrics }
}

struct Stages<S: Storage> {
    journal: JournalStage<S>,
    apply: ApplyStage,
    reply: ReplyStage,
    batch_events_max: u32,
}

/// Reply's state: where replies go, and the progress the other stages publish, which the gate
/// is checked against.
struct ReplyStage {
    route: ReplyRoute,
    metrics: Arc<Metrics>,
}

fn sequencer_spawn<C, S, W>(
    mut sequencer: Sequencer<C>,
    receiver: Receiver<Request>,
    stages: Stages<S>,
    wait: W,
) -> JoinHandle<()>
where
    C: Clock + Send + 'static,
    S: Storage + Send + 'static,
    S::File: Send,
    W: WaitStrategy + 'static,
{
    let Stages { journal, apply, reply, batch_events_max } = stages;
    let pins = sequencer.options.pin_cores;
    let ring_slots = sequencer.options.ring_slots;
    std::thread::Builder::new()
        .name("sequence".to_string())
        .spawn(move || {
            let builder = build_single_producer(ring_slots, move || Slot::new(batch_events_max), wait);
            let builder = match pins {
                Some([core, _, _]) => disruptor::ProcessorSettings::pin_at_core(builder, core),
                None => builder,
            };
            let builder = disruptor::ProcessorSettings::thread_name(builder, "journal").handle_events_and_state_with(
                journal_handle,
                move || {
                    park_role_set(ROLE_STAGE);
                    journal
                },
            );
            let builder = match pins {
                Some([_, core, _]) => disruptor::ProcessorSettings::pin_at_core(builder, core),
                None => builder,
            };
            let builder = disruptor::ProcessorSettings::thread_name(builder, "apply")
                .handle_events_and_state_with(apply_handle, move || {
                    park_role_set(ROLE_STAGE);
                    apply
                })
                .and_then();
            let builder = match pins {
                Some([_, _, core]) => disruptor::ProcessorSettings::pin_at_core(builder, core),
                None => builder,
            };
            let mut producer = disruptor::ProcessorSettings::thread_name(builder, "reply")
                .handle_events_and_state_with(reply_handle, move || {
                    park_role_set(ROLE_REPLY);
                    reply
                })
                .build();
            if sequencer.options.checkpoint_first {
                sequencer.checkpoint_publish(&mut producer, false);
            }
            while let Ok(request) = receiver.recv() {
                sequencer.sequence(&mut producer, request);
            }
            // Dropping the producer lets the consumers finish every published slot, then joins them.
            drop(producer);
        })
        .expect("spawn the sequencer")
}

impl<C: Clock> Sequencer<C> {
    fn sequence(&mut self, producer: &mut impl Producer<Slot>, request: Request) {
        self.metrics.request(request.operation);
        let kind = match request.operation {
            FrameOperation::Ledger(operation) if operation.is_mutating() => SlotKind::Command,
            FrameOperation::Ledger(_) => SlotKind::Query,
            FrameOperation::Ping => SlotKind::Ping,
            FrameOperation::Snapshot => SlotKind::Checkpoint { snapshot: true },
        };
        // A snapshot requested while an earlier one is not yet written joins that one: a
        // client cannot queue up snapshots of the whole state faster than the disk writes them.
        let pending = self.op_snapshot_requested > self.snapshotter.op_snapshot() && !self.snapshotter.failed();
        let (kind, (op, timestamp_ns)) = match kind {
            SlotKind::Checkpoint { snapshot: true } if pending => (SlotKind::Ping, (self.op_snapshot_requested, 0)),
            kind => (kind, self.stamp(kind, request.event_count)),
        };
        self.publish(producer, |slot| {
            slot.kind = kind;
            slot.connection = request.connection;
            slot.request_id = request.request_id;
            slot.client_id = request.client_id;
            slot.operation = request.operation;
            slot.op = op;
            slot.timestamp_ns = timestamp_ns;
            slot.timestamp_reply = request.timestamp_reply && kind == SlotKind::Command;
            slot.command.clear();
            slot.command.extend_from_slice(&request.command);
            slot.checkpoint_ready.store(false, Ordering::Relaxed);
        });
        if kind == SlotKind::Command {
            self.checkpoint_maybe(producer);
        }
    }

    /// The op and timestamp of a slot: commands consume `max(count, 1)` timestamps.
    fn stamp(&mut self, kind: SlotKind, event_count: u32) -> (u64, u64) {
        match kind {
            SlotKind::Command => {
                let now_ns = self.clock.now_ns();
                self.clock_behind_check(now_ns);
                let timestamp_ns = now_ns.max(self.timestamp_next_min);
                self.timestamp_next_min = timestamp_ns + u64::from(event_count.max(1));
                self.op_next += 1;
                (self.op_next - 1, timestamp_ns)
            }
            SlotKind::Checkpoint { snapshot } => {
                self.op_next += 1;
                self.op_checkpoint = self.op_next - 1;
                if snapshot {
                    self.op_snapshot = self.op_checkpoint;
                    self.op_snapshot_requested = self.op_checkpoint;
                }
                (self.op_next - 1, self.timestamp_next_min - 1)
            }
            SlotKind::Query | SlotKind::Ping | SlotKind::Empty => (0, 0),
        }
    }

    /// Ledger time never goes back, so after the wall clock steps back (or after it once ran
    /// ahead) ledger time leads it, and holds expire early by wall time. That cannot be undone
    /// without breaking determinism; it is made visible instead: a gauge, and a warning at most
    /// once a minute while the lead is over a second.
    fn clock_behind_check(&mut self, now_ns: u64) {
        let behind_ns = self.timestamp_next_min.saturating_sub(now_ns);
        self.metrics.clock_behind_ns.store(behind_ns, Ordering::Relaxed);
        if behind_ns > 1_000_000_000 && now_ns >= self.clock_warned_ns + 60_000_000_000 {
            self.clock_warned_ns = now_ns;
            tracing::warn!(
                behind_ms = behind_ns / 1_000_000,
                "the wall clock is behind the ledger's time (it stepped back, or ran ahead before)"
            );
        }
    }

    /// A checkpoint every `checkpoint_ops` ops; it asks for a snapshot every `snapshot_ops`.
    fn checkpoint_maybe(&mut self, producer: &mut impl Producer<Slot>) {
        if self.op_next - 1 - self.op_checkpoint < self.options.checkpoint_ops {
            return;
        }
        let snapshot = self.op_next - self.op_snapshot > self.options.snapshot_ops;
        self.checkpoint_publish(producer, snapshot);
    }

    fn checkpoint_publish(&mut self, producer: &mut impl Producer<Slot>, snapshot: bool) {
        let kind = SlotKind::Checkpoint { snapshot };
        let (op, timestamp_ns) = self.stamp(kind, 0);
        self.publish(producer, |slot| {
            slot.kind = kind;
            slot.connection = 0;
            slot.operation = FrameOperation::Snapshot;
            slot.op = op;
            slot.timestamp_ns = timestamp_ns;
            slot.timestamp_reply = false;
            slot.command.clear();
            slot.checkpoint_ready.store(false, Ordering::Relaxed);
        });
    }

    /// Claims a slot, waiting (not spinning) while the ring is full.
    fn publish(&mut self, producer: &mut impl Producer<Slot>, fill: impl FnOnce(&mut Slot)) {
        let mut fill = Some(fill);
        loop {
            let attempt = producer.try_publish(|slot| (fill.take().expect("filled once"))(slot));
            match attempt {
                Ok(_) => {
                    SEQUENCED.notify();
                    break;
                }
                Err(_) => {
                    self.metrics.ring_full_waits.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
        self.metrics.op_published.store(self.op_next - 1, Ordering::Relaxed);
    }
}

fn fail_stop(error: impl std::fmt::Display) -> ! {
    tracing::error!(%error, "journal failed: stopping the node (fail-stop); restart it to recover from disk");
    eprintln!("walletd: journal failed: {error}; stopping (fail-stop). Restart to recover from disk.");
    std::process::exit(70);
}

fn journal_handle<S: Storage>(stage: &mut JournalStage<S>, slot: &Slot, _sequence: Sequence, end_of_batch: bool) {
    match slot.kind {
        SlotKind::Command => {
            let appended = stage.journal.append(slot.op, slot.timestamp_ns, RecordKind::CommandBatch, &slot.command);
            appended.unwrap_or_else(|error| fail_stop(error));
            stage.appended = true;
        }
        SlotKind::Checkpoint { .. } => {
            let start = Instant::now();
            // The one wait on apply: the checkpoint carries the state hash at this op.
            while !slot.checkpoint_ready.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            let checkpoint = slot.outcome.lock().expect("outcome lock").checkpoint.expect("checkpoint ready");
            // Signed here, where the chain is known: the signature covers the record before.
            let at =
                RecordAt { op: slot.op, timestamp_ns: slot.timestamp_ns, checksum_prev: stage.journal.checksum_last() };
            let (body, size_bytes) = checkpoint_encode(&checkpoint, stage.signer.as_ref(), &at);
            let appended =
                stage.journal.append(slot.op, slot.timestamp_ns, RecordKind::Checkpoint, &body[..size_bytes]);
            appended.unwrap_or_else(|error| fail_stop(error));
            stage.appended = true;
            stage.metrics.checkpoint_seconds.observe(start.elapsed().as_secs_f64());
        }
        SlotKind::Query | SlotKind::Ping | SlotKind::Empty => {}
    }
    if end_of_batch && stage.appended {
        let start = Instant::now();
        let op_durable = stage.journal.commit().unwrap_or_else(|error| fail_stop(error));
        stage.metrics.fsync_seconds.observe(start.elapsed().as_secs_f64());
        stage.metrics.op_durable.store(op_durable, Ordering::Release);
        durable_publish(stage, op_durable);
        stage.appended = false;
        stage.snapshotter.durable(op_durable);
        journal_housekeeping(stage);
    }
    if end_of_batch {
        progress_tell();
    }
}

/// Tells followers in other processes what is durable. The mark is a hint (it only ever
/// understates), so a failed write is logged and counted, never fatal: followers wait, and
/// nothing wrong is published.
fn durable_publish<S: Storage>(stage: &mut JournalStage<S>, op_durable: u64) {
    if let Some(mark) = &mut stage.durable_mark {
        let position = Position { op: op_durable, checksum: stage.journal.checksum_last() };
        if let Err(error) = mark.publish(position) {
            stage.metrics.durable_mark_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "could not publish the durable mark; followers wait until it is written");
        }
    }
}

/// After a commit: replica progress into the metrics, and archiving what the newest snapshot
/// made history. Archiving is housekeeping, not durability: a failure is logged and counted,
/// and the node goes on.
fn journal_housekeeping<S: Storage>(stage: &mut JournalStage<S>) {
    let metrics = &stage.metrics;
    metrics.op_replica.store(stage.snapshotter.op_replayed(), Ordering::Relaxed);
    metrics.replica_failed.store(u64::from(stage.snapshotter.failed()), Ordering::Relaxed);
    let op_snapshot = stage.snapshotter.op_snapshot();
    if op_snapshot <= stage.op_archived {
        return;
    }
    metrics.op_snapshot.store(op_snapshot, Ordering::Relaxed);
    match stage.journal.archive_before(op_snapshot) {
        Ok(archived) if !archived.is_empty() => {
            tracing::info!(segments = archived.len(), op_snapshot, "archived journal segments older than the snapshot");
        }
        Ok(_) => {}
        Err(error) => {
            metrics.archive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "could not archive journal segments; they stay live");
        }
    }
    stage.op_archived = op_snapshot;
}

fn apply_handle(stage: &mut ApplyStage, slot: &Slot, _sequence: Sequence, end_of_batch: bool) {
    apply_slot(stage, slot);
    if end_of_batch {
        progress_tell();
    }
}

fn apply_slot(stage: &mut ApplyStage, slot: &Slot) {
    let start = Instant::now();
    let mut outcome = slot.outcome.lock().expect("outcome lock");
    outcome.record_count = 0;
    outcome.body.clear();
    match slot.kind {
        SlotKind::Command => {
            let Command::Batch(batch) = stage.scratch.decode(&slot.command).expect("receive validated the command")
            else {
                unreachable!("a command slot holds a batch");
            };
            stage.ledger.apply(slot.timestamp_ns, batch, &mut stage.output);
            stage.metrics.batch_events.observe(batch.len() as f64);
            results_count(&stage.metrics, slot.operation, batch.len() as u64, &stage.output);
            outcome.record_count = protocol::results_encode(&stage.output.results, &mut outcome.body);
            if slot.timestamp_reply {
                protocol::timestamp_encode(slot.timestamp_ns, &mut outcome.body);
            }
            stage.metrics.state_hash_set(stage.ledger.state_hash());
            stage.metrics.op_applied.store(slot.op, Ordering::Release);
        }
        SlotKind::Query => {
            let Command::Query(query) = stage.scratch.decode(&slot.command).expect("receive validated the query")
            else {
                unreachable!("a query slot holds a query");
            };
            stage.ledger.query(query, &mut stage.output);
            let output = &stage.output;
            let body = &mut outcome.body;
            outcome.record_count = match query {
                Query::LookupAccounts(_) => protocol::accounts_encode(&output.accounts, body),
                Query::LookupTransfers(_) => protocol::transfer_records_encode(&output.transfers, body),
                // Lists holds only while the reply fits in one frame (a cut read says so).
                Query::LookupBalances(_) => protocol::balances_encode(&output.balances, &output.holds, body),
            };
        }
        SlotKind::Checkpoint { snapshot } => {
            let flags = if snapshot { CHECKPOINT_SNAPSHOT } else { 0 };
            outcome.checkpoint = Some(Checkpoint::of(&stage.ledger, flags));
            stage.metrics.snapshot_stall_seconds.observe(start.elapsed().as_secs_f64());
            drop(outcome);
            slot.checkpoint_ready.store(true, Ordering::Release);
            stage.metrics.op_applied.store(slot.op, Ordering::Release);
            return;
        }
        SlotKind::Ping | SlotKind::Empty => {}
    }
    stage.metrics.apply_seconds.observe(start.elapsed().as_secs_f64());
}

fn results_count(metrics: &Metrics, operation: FrameOperation, events: u64, output: &Output) {
    for result in &output.results {
        metrics.events_add(operation, result.code, 1);
    }
    metrics.events_add(operation, 0, events - output.results.len() as u64);
}

fn reply_handle(stage: &mut ReplyStage, slot: &Slot, _sequence: Sequence, _end_of_batch: bool) {
    reply_gate_check(&stage.metrics, slot.op);
    if slot.connection == 0 {
        return; // a checkpoint the sequencer inserted: nobody is waiting
    }
    let outcome = slot.outcome.lock().expect("outcome lock");
    let reply = Reply {
        connection: slot.connection,
        request_id: slot.request_id,
        client_id: slot.client_id,
        operation: slot.operation,
        op: slot.op,
        timestamp_reply: slot.timestamp_reply,
        record_count: outcome.record_count,
        body: &outcome.body,
    };
    (stage.route)(&reply);
}

/// The reply gate, `op <= min(op_durable, op_applied)`, checked against the numbers journal and
/// apply publish themselves, not against the ring's cursors that order the stages: if the
/// wiring or the disruptor ever let a slot through early, the node stops here (a panic is
/// fail-stop) instead of acknowledging what a restart might not reproduce. Reads and pings
/// carry op 0 (or, for a snapshot request that joined a pending one, that snapshot's op).
fn reply_gate_check(metrics: &Metrics, op: u64) {
    let op_durable = metrics.op_durable.load(Ordering::Acquire);
    let op_applied = metrics.op_applied.load(Ordering::Acquire);
    assert!(op <= op_durable, "reply gate: a reply for op {op} before it is durable (op_durable {op_durable})");
    assert!(op <= op_applied, "reply gate: a reply for op {op} before it is applied (op_applied {op_applied})");
}
