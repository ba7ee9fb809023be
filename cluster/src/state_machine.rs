//! The state machine: the node's walletd journal and ledger, as openraft's `RaftStateMachine`.
//!
//! Applying a committed entry appends it to the journal and applies it to the ledger — the
//! same steps as the single-node writer — so every node's journal holds exactly the committed
//! sequence, and `walletd replay` works on any node's data directory. Each entry becomes one
//! journal record: a command entry its `CommandBatch`; a checkpoint entry, and openraft's own
//! blank (leader) and membership entries, a `Checkpoint` of the state hash. So the journal op of
//! Raft index `i` is `i + 1`, and the applied position is read from the journal at start-up
//! (the journal is the truth): `op_durable - 1`. A batch of entries is committed with one
//! fdatasync before `apply` returns, so an entry the leader answers for is durable in its
//! journal, not only in the Raft log of a majority.
//!
//! Apply is deterministic: the timestamp used is `max(stamped, ledger.timestamp_next_min())`,
//! a function of the log, so all journals are byte-for-byte equal. A journal that cannot be
//! written stops the node (fail-stop), as in the single-node pipeline.
//!
//! Snapshots are not built: openraft's snapshot policy is `Never` and the Raft log is never
//! purged, so a lagging follower always catches up from the log. Installing a snapshot is
//! refused with a clear error (see ARCHITECTURE.md, "not yet").

use crate::log_store::{fail_stop, LogStore};
use crate::types::{Applied, Entry, LogId, Member, NodeId, Proposal, StorageError, StoredMembership, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError};
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};
use walletd_core::{Command, CommandScratch, Ledger, Output, Query};
use walletd_gateway::protocol;
use walletd_journal::{FileStorage, Journal, RecordKind};
use walletd_replay::checkpoint::{checkpoint_encode, Checkpoint, RecordAt};
use walletd_replay::{DurableMark, Position};

/// The journal and the ledger, shared between apply (openraft's state machine task) and the
/// linearizable reads (which query the ledger once the read index is applied).
pub struct Machine {
    ledger: Ledger,
    journal: Journal<FileStorage>,
    output: Output,
    scratch: CommandScratch,
    durable_mark: DurableMark,
}

impl Machine {
    pub fn new(ledger: Ledger, journal: Journal<FileStorage>, durable_mark: DurableMark) -> Machine {
        assert_eq!(journal.op_appended(), journal.op_durable(), "the state machine starts from a durable journal");
        let output = Output::new(ledger.config());
        let scratch = CommandScratch::new(ledger.config().batch_events_max);
        Machine { ledger, journal, output, scratch, durable_mark }
    }

    pub fn op_durable(&self) -> u64 {
        self.journal.op_durable()
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
        match &entry.payload {
            EntryPayload::Normal(Proposal::Command { timestamp_ns, command }) => {
                self.command_apply(op, *timestamp_ns, command)
            }
            EntryPayload::Normal(Proposal::Checkpoint) | EntryPayload::Blank | EntryPayload::Membership(_) => {
                self.checkpoint_append(op)
            }
        }
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
        Applied { op, record_count, body }
    }

    fn checkpoint_append(&mut self, op: u64) -> Applied {
        let checkpoint = Checkpoint::of(&self.ledger, 0);
        let timestamp_ns = self.journal.timestamp_ns_last().max(self.ledger.timestamp_last());
        let at = RecordAt { op, timestamp_ns, checksum_prev: self.journal.checksum_last() };
        let (body, size_bytes) = checkpoint_encode(&checkpoint, None, &at);
        if let Err(error) = self.journal.append(op, timestamp_ns, RecordKind::Checkpoint, &body[..size_bytes]) {
            fail_stop("journal append", &error.to_string());
        }
        Applied { op, record_count: 0, body: Vec::new() }
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
    }
}

/// The state machine openraft drives: the shared `Machine` and the Raft log (to name the log
/// id and membership of the applied index).
#[derive(Clone)]
pub struct StateMachine {
    machine: Arc<Mutex<Machine>>,
    log: LogStore,
}

impl StateMachine {
    pub fn new(machine: Machine, log: LogStore) -> StateMachine {
        StateMachine { machine: Arc::new(Mutex::new(machine)), log }
    }

    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().expect("the state machine lock (a panic under it stops the node)")
    }
}

fn unsupported(what: &str) -> StorageError {
    let reason = format!(
        "{what}: snapshots are not built in this version (the Raft log is kept whole, so a follower catches up from \
         the log); a node that needs one must be rebuilt from another member's data directory"
    );
    StorageIOError::write_state_machine(openraft::AnyError::error(reason)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        Err(unsupported("build a snapshot"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let op_durable = self.machine().op_durable();
        let Some(index) = op_durable.checked_sub(1) else {
            return Ok((None, StoredMembership::default()));
        };
        let Some(log_id) = self.log.log_id_at(index) else {
            let reason = format!(
                "the journal holds op {op_durable} (Raft index {index}) but the Raft log has no entry there: this data \
                 directory's Raft log is not the one its journal was applied from"
            );
            return Err(StorageIOError::read_state_machine(openraft::AnyError::error(reason)).into());
        };
        let membership = match self.log.membership_at(index) {
            Some((membership_log_id, membership)) => StoredMembership::new(Some(membership_log_id), membership),
            None => StoredMembership::default(),
        };
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
            applied
        });
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Err(unsupported("receive a snapshot"))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, Member>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        Err(unsupported("install a snapshot"))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(None)
    }
}
