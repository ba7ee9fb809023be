//! The follower against the run that wrote the journal: every durable op comes out once, in
//! order, with the results and the change-data feed the writer's own ledger computed; nothing
//! past the durable mark comes out; it resumes from any position (from genesis, from a snapshot,
//! between them) with the same ops after it, refuses a position from another history, and
//! follows a live writer across segment rotation and archiving. A journal of traced commands
//! gives each event's trace id back, and the same state as the untraced journal.

use std::path::Path;
use std::time::Duration;
use walletd_core::command::{batch_encode, batch_traced_encode};
use walletd_core::{
    Account, AccountId, AccountLimits, Amount, Batch, ChangeKind, Config, Ledger, LimitFlags, Output, Transfer,
    TransferFlags, TransferId,
};
use walletd_journal::{Journal, JournalConfig, RecordKind};
use walletd_replay::{Checkpoint, DataDir, DurableMark, FollowOptions, Follower, Outcome, Position, ReplayError};
use walletd_snapshot::snapshot_save;

const SEGMENT_SIZE_BYTES: u64 = 16 * 1024;
const TIME_MS: u64 = 1_800_000_000_000;

fn config() -> Config {
    Config { accounts_max: 256, transfers_max: 4096, batch_events_max: 64, ..Config::small() }
}

/// What the writer saw for one op.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    position: Position,
    results: Vec<(u32, u32)>,
    /// (kind, index, debit after, credit after) per change.
    changes: Vec<(ChangeKind, u32, u128, u128)>,
}

/// A node in one loop, without the network: ledger, journal, durable mark, snapshots.
struct TestNode {
    dir: std::path::PathBuf,
    ledger: Ledger,
    journal: Journal,
    mark: DurableMark,
    output: Output,
    body: Vec<u8>,
    now_ns: u64,
    seen: Vec<Seen>,
    /// Journal traced commands (`trace_id_of`), where the operation takes traces.
    traced: bool,
}

/// The trace id a traced `TestNode` journals with event `index` of op `op`: every third event
/// has none.
fn trace_id_of(op: u64, index: usize) -> u128 {
    if index % 3 == 2 {
        0
    } else {
        (u128::from(op) << 64) | (index as u128 + 1)
    }
}

impl TestNode {
    fn create(dir: &Path) -> TestNode {
        let data_dir = DataDir::new(dir);
        let config = data_dir.open_or_create(config()).expect("create the data directory");
        let journal_config = JournalConfig { dir: dir.to_path_buf(), segment_size_bytes: SEGMENT_SIZE_BYTES };
        let (journal, _) = Journal::open_files(journal_config).expect("open the journal");
        let mark = DurableMark::open(dir, Position::default()).expect("durable mark");
        let ledger = Ledger::new(config).expect("ledger");
        let output = Output::with_changes(ledger.config());
        TestNode {
            dir: dir.to_path_buf(),
            ledger,
            journal,
            mark,
            output,
            body: Vec::new(),
            now_ns: TIME_MS * 1_000_000,
            seen: Vec::new(),
            traced: false,
        }
    }

    fn submit(&mut self, batch: Batch<'_>) {
        self.now_ns += 1_000_000;
        let timestamp_ns = self.now_ns.max(self.ledger.timestamp_next_min());
        self.body.clear();
        let op = self.journal.op_appended() + 1;
        if self.traced && !matches!(batch, Batch::Pulse) {
            let trace_ids: Vec<u128> = (0..batch.len()).map(|index| trace_id_of(op, index)).collect();
            batch_traced_encode(&batch, &trace_ids, &mut self.body);
        } else {
            batch_encode(&batch, &mut self.body);
        }
        self.journal.append(op, timestamp_ns, RecordKind::CommandBatch, &self.body).expect("append");
        self.ledger.apply(timestamp_ns, batch, &mut self.output);
        let results = self.output.results.iter().map(|result| (result.index, result.code)).collect();
        let changes = self
            .output
            .changes
            .iter()
            .map(|change| {
                (
                    change.kind,
                    change.index,
                    change.debit_account.debits_posted.0,
                    change.credit_account.credits_posted.0,
                )
            })
            .collect();
        let position = Position { op, checksum: self.journal.checksum_last() };
        self.seen.push(Seen { position, results, changes });
    }

    fn checkpoint(&mut self) {
        let op = self.journal.op_appended() + 1;
        let body = Checkpoint::of(&self.ledger, 0).encode();
        let timestamp_ns = self.journal.timestamp_ns_last().max(self.ledger.timestamp_last());
        self.journal.append(op, timestamp_ns, RecordKind::Checkpoint, &body).expect("append a checkpoint");
        let position = Position { op, checksum: self.journal.checksum_last() };
        self.seen.push(Seen { position, results: Vec::new(), changes: Vec::new() });
    }

    /// Commits and publishes the durable mark.
    fn commit(&mut self) {
        let op = self.journal.commit().expect("commit");
        self.mark.publish(Position { op, checksum: self.journal.checksum_last() }).expect("publish");
    }

    fn snapshot(&mut self) -> u64 {
        let op = self.journal.op_durable();
        let data_dir = DataDir::new(&self.dir);
        snapshot_save(&data_dir.snapshots(), op, self.journal.checksum_last(), &self.ledger, 2).expect("snapshot");
        op
    }

    /// A workload touching every kind of change: accounts, single-phase transfers (some
    /// refused), holds posted partly, voided and expired, a failed linked chain, close, reopen.
    fn workload(&mut self, round: u64) {
        if round == 0 {
            let accounts: Vec<Account> =
                (1..=8u128).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect();
            self.submit(Batch::CreateAccounts(&accounts));
        }
        let base = u128::from(round) * 100;
        let time_ms = self.now_ns / 1_000_000;
        let transfer = |low: u128, debit: u128, credit: u128, amount: u128| Transfer {
            id: TransferId::from_parts(time_ms, base + low),
            debit_account_id: AccountId(debit),
            credit_account_id: AccountId(credit),
            amount: Amount(amount),
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let hold = |low, debit, credit, amount, timeout_s| Transfer {
            flags: TransferFlags(TransferFlags::PENDING),
            timeout_s,
            ..transfer(low, debit, credit, amount)
        };
        let resolve = |low, pending: u128, amount, flags| Transfer {
            pending_id: TransferId::from_parts(time_ms, base + pending),
            debit_account_id: AccountId(0),
            credit_account_id: AccountId(0),
            flags: TransferFlags(flags),
            ledger: 0,
            code: 0,
            ..transfer(low, 0, 0, amount)
        };
        let linked = |t: Transfer| Transfer { flags: TransferFlags(t.flags.0 | TransferFlags::LINKED), ..t };
        let first = vec![
            transfer(1, 1, 2, 100),
            transfer(2, 2, 1, 30),
            transfer(3, 1, 1, 5), // refused: same account
            hold(4, 3, 4, 50, 0),
            hold(5, 4, 3, 20, 0),
            hold(6, 5, 6, 7, 1), // expires a second later
            linked(transfer(7, 1, 3, 9)),
            transfer(8, 1, 99, 9), // fails the chain: no such account
        ];
        self.submit(Batch::CreateTransfers(&first));
        let second = vec![
            resolve(10, 4, 20, TransferFlags::POST_PENDING),
            resolve(11, 5, 0, TransferFlags::VOID_PENDING),
            transfer(12, 2, 3, 1),
        ];
        self.submit(Batch::CreateTransfers(&second));
        self.now_ns += 2_000_000_000;
        self.submit(Batch::Pulse);
        self.submit(Batch::CloseAccounts(&[AccountId(8)]));
        self.submit(Batch::ReopenAccounts(&[AccountId(8)]));
        let limits = AccountLimits {
            account_id: AccountId(7),
            daily_debit_count_max: 1000,
            flags: LimitFlags(LimitFlags::DAILY_DEBIT_COUNT),
            ..AccountLimits::default()
        };
        self.submit(Batch::SetAccountLimits(&[limits]));
    }
}

fn follow_all(dir: &Path, after: Option<Position>) -> (Vec<Seen>, Follower) {
    let mut follower = Follower::open(dir, after, FollowOptions::default()).expect("open a follower");
    let mut seen = Vec::new();
    while let Some(op) = follower.next_op().expect("next op") {
        let position = op.position();
        let (results, changes) = match op.outcome {
            Outcome::Command { output, .. } => (
                output.results.iter().map(|result| (result.index, result.code)).collect(),
                output
                    .changes
                    .iter()
                    .map(|change| {
                        let (debit, credit) =
                            (change.debit_account.debits_posted.0, change.credit_account.credits_posted.0);
                        (change.kind, change.index, debit, credit)
                    })
                    .collect(),
            ),
            Outcome::Checkpoint(_) => (Vec::new(), Vec::new()),
        };
        seen.push(Seen { position, results, changes });
    }
    (seen, follower)
}

#[test]
fn the_follower_yields_every_durable_op_with_the_outcome_the_writer_computed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::create(dir.path());
    for round in 0..4 {
        node.workload(round);
        node.checkpoint();
        node.commit();
    }
    let (seen, follower) = follow_all(dir.path(), None);
    assert_eq!(seen, node.seen, "the follower's ops, results and changes are the writer's");
    assert_eq!(follower.ledger().state_hash(), node.ledger.state_hash());
    assert_eq!(follower.position(), node.seen.last().expect("ops").position);
    let kinds: std::collections::BTreeSet<_> = seen.iter().flat_map(|s| s.changes.iter().map(|c| c.0 as u8)).collect();
    assert_eq!(kinds.len(), 9, "the workload makes every kind of change: {kinds:?}");
}

#[test]
fn nothing_past_the_durable_mark_comes_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::create(dir.path());
    node.workload(0);
    node.commit();
    let durable = node.seen.len();
    node.workload(1); // appended, written to the file, not committed
    let mut follower = Follower::open(dir.path(), None, FollowOptions::default()).expect("open");
    let mut count = 0;
    while follower.next_op().expect("next").is_some() {
        count += 1;
    }
    assert_eq!(count, durable, "only the committed ops");
    assert!(!follower.wait(Duration::ZERO).expect("wait"), "nothing more is durable");
    node.commit();
    assert!(follower.wait(Duration::from_secs(60)).expect("wait"), "the commit is seen");
    while follower.next_op().expect("next").is_some() {
        count += 1;
    }
    assert_eq!(count, node.seen.len());
}

#[test]
fn the_follower_resumes_from_any_position_with_the_same_ops_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::create(dir.path());
    let mut snapshot_op = 0;
    for round in 0..6 {
        node.workload(round);
        node.checkpoint();
        node.commit();
        if round == 2 {
            snapshot_op = node.snapshot();
        }
    }
    assert!(snapshot_op > 0);
    let ops = node.seen.len() as u64;
    for after in [1, snapshot_op - 1, snapshot_op, snapshot_op + 1, ops / 2, ops - 1, ops] {
        let position = node.seen[after as usize - 1].position;
        let (seen, follower) = follow_all(dir.path(), Some(position));
        assert_eq!(seen, node.seen[after as usize..], "resumed after op {after}");
        assert_eq!(follower.ledger().state_hash(), node.ledger.state_hash(), "resumed after op {after}");
    }
}

#[test]
fn a_position_from_another_history_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::create(dir.path());
    node.workload(0);
    node.commit();
    let real = node.seen[2].position;
    let forged = Position { op: real.op, checksum: real.checksum ^ 1 };
    let error = Follower::open(dir.path(), Some(forged), FollowOptions::default()).err().expect("refused");
    assert!(matches!(error, ReplayError::Discontinuity { .. }), "{error}");
    assert!(error.to_string().contains("another history"), "{error}");
    let ahead = Position { op: node.seen.len() as u64 + 5, checksum: 0 };
    let error = Follower::open(dir.path(), Some(ahead), FollowOptions::default()).err().expect("refused");
    assert!(error.to_string().contains("durable only to op"), "{error}");
}

/// A writer on another thread commits, rotates segments and archives them while the
/// follower reads: every op arrives once, in order, with the writer's outcome.
#[test]
fn a_live_writer_that_rotates_and_archives_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::create(dir.path());
    node.workload(0);
    node.commit();
    let root = dir.path().to_path_buf();
    let (done_send, done) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut archived = 0;
        for round in 1..40 {
            node.workload(round);
            node.checkpoint();
            node.commit();
            if round % 5 == 0 {
                let op = node.snapshot();
                archived += node.journal.archive_before(op).expect("archive").len();
            }
        }
        done_send.send(()).expect("the test waits");
        (node.seen, node.ledger.state_hash(), archived)
    });
    let mut follower = Follower::open(&root, None, FollowOptions::default()).expect("open");
    let mut positions = Vec::new();
    let mut writer_done = false;
    loop {
        while let Some(op) = follower.next_op().expect("next") {
            positions.push(op.position());
        }
        if writer_done {
            break;
        }
        writer_done = done.recv_timeout(Duration::from_millis(1)).is_ok();
        follower.wait(Duration::from_millis(50)).expect("wait");
    }
    let (seen, state_hash, archived) = writer.join().expect("writer");
    assert!(archived > 2, "segments were archived under the follower: {archived}");
    let expected: Vec<Position> = seen.iter().map(|s| s.position).collect();
    assert_eq!(positions, expected);
    assert_eq!(follower.ledger().state_hash(), state_hash);
    // And a follower opened now, from genesis, reads through archive/.
    let (again, _) = follow_all(&root, None);
    assert_eq!(again, seen);
}

/// The same workload journaled with and without trace ids: the follower gives each event's
/// trace id back (0 for every event of an untraced command), and the two journals give the same
/// results, changes, checkpoints and state hash: the ledger never reads a trace id.
#[test]
fn traced_commands_give_their_trace_ids_and_the_same_state() {
    let mut hashes = Vec::new();
    let mut outcomes = Vec::new();
    for traced in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = TestNode::create(dir.path());
        node.traced = traced;
        for round in 0..3 {
            node.workload(round);
            node.checkpoint();
            node.commit();
        }
        let mut follower = Follower::open(dir.path(), None, FollowOptions::default()).expect("open a follower");
        let (mut commands, mut checkpoints, mut events) = (0, 0, 0);
        while let Some(op) = follower.next_op().expect("next op, every checkpoint verified") {
            match op.outcome {
                Outcome::Command { batch, trace_ids, .. } => {
                    commands += 1;
                    assert_eq!(trace_ids.event_count() as usize, batch.len());
                    assert_eq!(trace_ids.is_traced(), traced && !batch.is_empty(), "op {}", op.op);
                    for index in 0..batch.len() {
                        let expected = if traced { trace_id_of(op.op, index) } else { 0 };
                        assert_eq!(trace_ids.get(index), expected, "op {} event {index}", op.op);
                        events += 1;
                    }
                }
                Outcome::Checkpoint(_) => checkpoints += 1,
            }
        }
        assert!(commands >= 18 && checkpoints == 3 && events > 30, "{commands} {checkpoints} {events}");
        assert_eq!(follower.ledger().state_hash(), node.ledger.state_hash());
        hashes.push(node.ledger.state_hash());
        let seen: Vec<_> = node.seen.iter().map(|seen| (seen.results.clone(), seen.changes.clone())).collect();
        outcomes.push(seen);
    }
    assert_eq!(hashes[0], hashes[1], "the same state hash with and without trace ids");
    assert_eq!(outcomes[0], outcomes[1], "the same results and changes with and without trace ids");
}
