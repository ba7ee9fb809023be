//! The state machine: the node's walletd journal and ledger, as openraft's `RaftStateMachine`.
//!
//! Applying a committed entry appends it to the journal and applies it to the ledger — the
//! same steps as the single-node writer — so every node's journal holds exactly the committed
//! sequence, and `walletd replay` works on any node's data directory. Each entry becomes one
//! journal record: a command entry its `CommandBatch`; a checkpoint entry, and openraft's own
//! blank (leader) and membership entries, a `Checkpoint` of the state hash (signed when the
//! members sign: Ed25519 signatures are deterministic, so every member writes the same
//! bytes). So the journal op of
//! Raft index `i` is `i + 1`, and the applied position is read from the journal at start-up
//! (the journal is the truth): `op_durable - 1`. A batch of entries is committed with one
//! fdatasync before `apply` returns, so an entry the leader answers for is durable in its
//! journal, not only in the Raft log of a majority.
//!
//! Apply is deterministic: the timestamp used is `max(stamped, ledger.timestamp_next_min())`,
//! a function of the log, so all journals are byte-for-byte equal. A journal that cannot be
//! written stops the node (fail-stop), as in the single-node pipeline.
//!
//! Raft's snapshots are anchors in the journal (see `snapshot`): building one reads the applied
//! position; installing one fetches the journal records this member lacks from another.
//!
//! Ledger snapshots are the single node's (`walletd_replay::Snapshotter`): a replica ledger on
//! its own thread follows this journal as each commit makes it durable and writes a snapshot at
//! the first checkpoint `--snapshot-ops` ops after its newest one, so a restart loads it and
//! replays only the journal after it. Apply's part is telling the replica the durable op (an
//! atomic store and an unpark), and, once a newer snapshot is written, moving the journal
//! segments wholly before it to `journal/archive/`, as the single node does.

use crate::log_store::{fail_stop, LogStore};
use crate::snapshot::{JournalAnchor, JournalRecord, Snapshots, StoredSnapshot};
use crate::types::{Applied, Entry, LogId, Member, NodeId, Proposal, StorageError, StoredMembership, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError};
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};
use walletd_core::{Command, CommandScratch, Config, Ledger, Output, Query};
use walletd_gateway::protocol;
use walletd_journal::{record_header_encode, FileStorage, Journal, Record, RecordKind};
use walletd_replay::checkpoint::{checkpoint_encode, Checkpoint, CheckpointSigner, RecordAt};
use walletd_replay::replay::Replayer;
use walletd_replay::{DurableMark, Position, Snapshotter};

/// The journal and the ledger, shared between apply (openraft's state machine task) and the
/// linearizable reads (which query the ledger once the read index is applied).
pub struct Machine {
    ledger: Ledger,
    journal: Journal<FileStorage>,
    output: Output,
    scratch: CommandScratch,
    durable_mark: DurableMark,
    /// The ledger snapshot replica, told of every commit.
    snapshotter: Snapshotter,
    /// Signs every checkpoint (the same key on every member, so the same bytes).
    signer: Option<CheckpointSigner>,
    /// The op up to which journal segments were archived (the newest ledger snapshot then).
    op_archived: u64,
    /// Journal archive moves that failed (housekeeping: the node goes on).
    pub archive_failures: u64,
    /// The log id of the last entry applied, and the membership as of it (openraft's applied
    /// state; a snapshot is built from them).
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// What `Machine::records_append` did with a chunk: the records journaled and applied (and
/// committed), and why it stopped before the end of the chunk, if it did.
pub struct RecordsAppended {
    pub appended: u64,
    pub refused: Option<String>,
}

impl Machine {
    pub fn new(
        ledger: Ledger,
        journal: Journal<FileStorage>,
        durable_mark: DurableMark,
        snapshotter: Snapshotter,
        signer: Option<CheckpointSigner>,
    ) -> Machine {
        assert_eq!(journal.op_appended(), journal.op_durable(), "the state machine starts from a durable journal");
        assert!(snapshotter.op_snapshot() <= journal.op_durable(), "the journal reaches the newest snapshot");
        // Archiving up to the recovered snapshot was the business of the run that wrote it.
        let op_archived = snapshotter.op_snapshot();
        let output = Output::new(ledger.config());
        let scratch = CommandScratch::new(ledger.config().batch_events_max);
        Machine {
            ledger,
            journal,
            output,
            scratch,
            durable_mark,
            snapshotter,
            signer,
            op_archived,
            archive_failures: 0,
            applied: None,
            membership: StoredMembership::default(),
        }
    }

    pub fn op_durable(&self) -> u64 {
        self.journal.op_durable()
    }

    pub fn checksum_last(&self) -> u128 {
        self.journal.checksum_last()
    }

    /// The ledger snapshot replica (its progress, for the metrics).
    pub fn snapshotter(&self) -> &Snapshotter {
        &self.snapshotter
    }

    pub fn config(&self) -> &Config {
        self.ledger.config()
    }

    pub fn state_hash(&self) -> u128 {
        self.ledger.state_hash()
    }

    /// Answers a read (a `lookup_*` command) from the ledger as it is now: returns the record
    /// count and fills `body`.
    pub fn query(&mut self, command: &[u8], body: &mut Vec<u8>) -> u32 {
        let Command::Query(query) = self.scratch.decode(command).expect("receive validated the query") else {
            panic!("a read request that is not a query reached the state machine");
        };
        self.ledger.query(query, &mut self.output);
        let output = &self.output;
        match query {
            Query::LookupAccounts(_) => protocol::accounts_encode(&output.accounts, body),
            Query::LookupTransfers(_) => protocol::transfer_records_encode(&output.transfers, body),
            Query::LookupBalances(_) => protocol::balances_encode(&output.balances, &output.holds, body),
        }
    }

    /// Journals and applies one entry (not yet durable: `commit`).
    fn entry_apply(&mut self, entry: &Entry) -> Applied {
        let op = self.journal.op_appended() + 1;
        if op != entry.log_id.index + 1 {
            fail_stop(
                "state machine apply",
                &format!(
                    "entry {} would be journal op {op}, not {}: the journal and the Raft log disagree",
                    entry.log_id,
                    entry.log_id.index + 1
                ),
            );
        }
        self.applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Normal(Proposal::Command { timestamp_ns, command }) => {
                self.command_apply(op, *timestamp_ns, command)
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                self.checkpoint_append(op)
            }
            EntryPayload::Normal(Proposal::Checkpoint) | EntryPayload::Blank => self.checkpoint_append(op),
        }
    }

    /// Journals and applies records another member sent (a snapshot install), each checked
    /// first: in sequence, continuing this journal's chain, its bytes giving its checksum. A
    /// record that continues another chain, or that replay refuses (a checkpoint whose state
    /// hash is not this ledger's), means the journals diverge: fail-stop. Commits what it
    /// appended with one fdatasync.
    pub fn records_append(&mut self, records: &[JournalRecord], replayer: &mut Replayer) -> RecordsAppended {
        let mut appended = 0u64;
        let mut refused = None;
        for record in records {
            if let Err(reason) = self.record_append(record, replayer) {
                refused = Some(reason);
                break;
            }
            appended += 1;
        }
        if appended > 0 {
            self.commit();
        }
        RecordsAppended { appended, refused }
    }

    fn record_append(&mut self, record: &JournalRecord, replayer: &mut Replayer) -> Result<(), String> {
        let op = self.journal.op_appended() + 1;
        if record.op != op {
            return Err(format!("the source sent op {} where op {op} comes next", record.op));
        }
        let kind = RecordKind::from_u16(record.kind)
            .ok_or_else(|| format!("the source sent op {op} of an unknown kind {}", record.kind))?;
        let checksum_prev = self.journal.checksum_last();
        if record.checksum_prev != checksum_prev {
            fail_stop(
                "snapshot install",
                &format!(
                    "op {op} from the source continues checksum {:032x}, but this member's journal ends at op {} \
                     with checksum {checksum_prev:032x}: the journals diverge",
                    record.checksum_prev,
                    op - 1
                ),
            );
        }
        let header = record_header_encode(op, record.timestamp_ns, kind, &record.body, checksum_prev);
        let checksum = u128::from_le_bytes(header[48..64].try_into().expect("16 bytes"));
        if checksum != record.checksum {
            return Err(format!("op {op} arrived damaged: its bytes do not give its checksum"));
        }
        if let Err(error) = self.journal.append(op, record.timestamp_ns, kind, &record.body) {
            fail_stop("journal append", &error.to_string());
        }
        let read = Record { op, timestamp_ns: record.timestamp_ns, kind, body: &record.body, checksum_prev, checksum };
        if let Err(error) = replayer.record_apply(&mut self.ledger, &read) {
            fail_stop("snapshot install", &format!("applying op {op}: {error}"));
        }
        Ok(())
    }

    /// After an install: the applied state is the snapshot's.
    pub fn snapshot_installed(&mut self, meta: &SnapshotMeta<NodeId, Member>) {
        assert_eq!(meta.last_log_id.map(|log_id| log_id.index + 1), Some(self.journal.op_durable()));
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
    }

    /// A snapshot of what is applied now (nothing to copy: an anchor).
    fn snapshot_build(&self, node_id: NodeId) -> Option<StoredSnapshot> {
        let last_log_id = self.applied?;
        let op = self.journal.op_durable();
        assert_eq!(op, last_log_id.index + 1, "the journal holds exactly the applied entries");
        let anchor = JournalAnchor { op, checksum: self.journal.checksum_last(), source: node_id };
        let meta = SnapshotMeta {
            last_log_id: Some(last_log_id),
            last_membership: self.membership.clone(),
            snapshot_id: format!("{}-{}", last_log_id.leader_id.term, last_log_id.index),
        };
        Some(StoredSnapshot { meta, anchor })
    }

    fn command_apply(&mut self, op: u64, timestamp_stamped_ns: u64, command: &[u8]) -> Applied {
        let timestamp_ns = timestamp_stamped_ns.max(self.ledger.timestamp_next_min());
        if let Err(error) = self.journal.append(op, timestamp_ns, RecordKind::CommandBatch, command) {
            fail_stop("journal append", &error.to_string());
        }
        let Command::Batch(batch) = self.scratch.decode(command).expect("the leader's receive validated the command")
        else {
            panic!("a Raft entry at op {op} holds a query: only mutating commands are proposed");
        };
        self.ledger.apply(timestamp_ns, batch, &mut self.output);
        let mut body = Vec::new();
        let record_count = protocol::results_encode(&self.output.results, &mut body);
        Applied { op, timestamp_ns, record_count, body }
    }

    fn checkpoint_append(&mut self, op: u64) -> Applied {
        let checkpoint = Checkpoint::of(&self.ledger, 0);
        let timestamp_ns = self.journal.timestamp_ns_last().max(self.ledger.timestamp_last());
        let at = RecordAt { op, timestamp_ns, checksum_prev: self.journal.checksum_last() };
        let (body, size_bytes) = checkpoint_encode(&checkpoint, self.signer.as_ref(), &at);
        if let Err(error) = self.journal.append(op, timestamp_ns, RecordKind::Checkpoint, &body[..size_bytes]) {
            fail_stop("journal append", &error.to_string());
        }
        Applied { op, timestamp_ns: 0, record_count: 0, body: Vec::new() }
    }

    /// One fdatasync for everything appended; publishes the durable mark for followers.
    fn commit(&mut self) {
        let op_durable = match self.journal.commit() {
            Ok(op_durable) => op_durable,
            Err(error) => fail_stop("journal commit", &error.to_string()),
        };
        assert_eq!(op_durable, self.journal.op_appended(), "a commit covers every append");
        let position = Position { op: op_durable, checksum: self.journal.checksum_last() };
        if let Err(error) = self.durable_mark.publish(position) {
            // Followers (exporter, projection) wait until it is written; the node goes on.
            tracing::error!(%error, "could not publish the durable mark");
        }
        self.snapshotter.durable(op_durable);
        self.archive_maybe();
    }

    /// Once the replica wrote a newer snapshot: the segments wholly before it move to
    /// `journal/archive/` (kept, and still read by replay, an install's source and followers).
    /// Housekeeping, not durability: a failure is logged and counted, and the node goes on.
    fn archive_maybe(&mut self) {
        let op_snapshot = self.snapshotter.op_snapshot();
        if op_snapshot <= self.op_archived {
            return;
        }
        match self.journal.archive_before(op_snapshot) {
            Ok(archived) if !archived.is_empty() => {
                tracing::info!(
                    segments = archived.len(),
                    op_snapshot,
                    "archived journal segments older than the snapshot"
                );
            }
            Ok(_) => {}
            Err(error) => {
                self.archive_failures += 1;
                tracing::error!(%error, "could not archive journal segments; they stay live");
            }
        }
        self.op_archived = op_snapshot;
    }
}

/// The state machine openraft drives: the shared `Machine`, the Raft log (to name the log id
/// and membership of the applied index at start-up, and to complete purges the journal had not
/// reached), and the snapshots.
#[derive(Clone)]
pub struct StateMachine {
    machine: Arc<Mutex<Machine>>,
    log: LogStore,
    snapshots: Arc<Snapshots>,
    node_id: NodeId,
}

impl StateMachine {
    pub fn new(machine: Machine, log: LogStore, snapshots: Arc<Snapshots>, node_id: NodeId) -> StateMachine {
        StateMachine { machine: Arc::new(Mutex::new(machine)), log, snapshots, node_id }
    }

    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().expect("the state machine lock (a panic under it stops the node)")
    }

    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// Finishes an install a crash interrupted (before Raft starts); returns the records
    /// fetched.
    pub async fn install_resume(&self, snapshot: StoredSnapshot) -> u64 {
        self.snapshots.install_resume(&self.machine, &self.log, snapshot).await
    }
}

fn storage_error(reason: String) -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error(reason)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Reads the applied position under the machine lock (so the anchor and the log id agree)
    /// and keeps it durably as this member's newest snapshot.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let built = self.machine().snapshot_build(self.node_id);
        let Some(snapshot) = built else {
            return Err(storage_error("no entry is applied yet: there is nothing to snapshot".to_string()));
        };
        tokio::task::block_in_place(|| self.snapshots.keep(snapshot.clone()));
        tracing::info!(op = snapshot.anchor.op, "snapshot built");
        Ok(snapshot.snapshot())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    /// The applied index is the journal's (op − 1); its log id and membership come from the
    /// Raft log, or from the newest snapshot where the log before it is purged.
    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let mut machine = self.machine();
        let op_durable = machine.op_durable();
        let Some(index) = op_durable.checked_sub(1) else {
            return Ok((None, StoredMembership::default()));
        };
        let snapshot = self.snapshots.current().filter(|snapshot| snapshot.index() <= index);
        let from_snapshot =
            snapshot.as_ref().filter(|snapshot| snapshot.index() == index).and_then(|s| s.meta.last_log_id);
        let Some(log_id) = self.log.log_id_at(index).or(from_snapshot) else {
            let reason = format!(
                "the journal holds op {op_durable} (Raft index {index}) but neither the Raft log nor the snapshot names \
                 that entry: this data directory's Raft log is not the one its journal was applied from"
            );
            return Err(storage_error(reason));
        };
        let from_log =
            self.log.membership_at(index).map(|(log_id, membership)| StoredMembership::new(Some(log_id), membership));
        let from_snapshot = snapshot.map(|snapshot| snapshot.meta.last_membership);
        let membership = match (from_log, from_snapshot) {
            (Some(log), Some(snapshot)) if snapshot.log_id() > log.log_id() => snapshot,
            (Some(log), _) => log,
            (None, Some(snapshot)) => snapshot,
            (None, None) => StoredMembership::default(),
        };
        machine.applied = Some(log_id);
        machine.membership = membership.clone();
        Ok((Some(log_id), membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(index_last) = entries.last().map(|entry| entry.log_id.index) else { return Ok(Vec::new()) };
        let mut machine = self.machine();
        let applied = tokio::task::block_in_place(|| {
            // Never journal an entry the Raft log could still lose (see `LogStore::flushed_wait`).
            self.log.flushed_wait(index_last);
            let applied: Vec<Applied> = entries.iter().map(|entry| machine.entry_apply(entry)).collect();
            if !applied.is_empty() {
                machine.commit();
            }
            self.log.applied_advance(index_last);
            applied
        });
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    /// Snapshots travel whole (`PeerClient::full_snapshot`), never in chunks; this buffer is
    /// for openraft's chunked receiver, which a member of this cluster does not use.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let snapshot = StoredSnapshot::decode(meta.clone(), snapshot.get_ref()).map_err(storage_error)?;
        self.snapshots.install(&self.machine, &self.log, snapshot).await;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snapshots.current().map(|snapshot| snapshot.snapshot()))
    }
}
