//! End-to-end durability of the real `walletd` binary on real files: a run replays to the same
//! state from its snapshot and from genesis; kill -9 in the middle of a run loses no op it
//! reported durable, and the next run recovers and carries on; a flipped byte in a sealed
//! segment stops both start-up and replay with the segment, offset and op, until the operator
//! truncates there (with flags, or with the command the message prints); a damaged newest
//! snapshot falls back to the older one; and a torn, cut-short journal tail is repaired on
//! restart, while a cut through a record a snapshot holds is refused. Tamper evidence: a
//! journal rewritten with its whole chain recomputed, a flipped signature byte and another
//! key's signatures are refused by `serve`, `replay` and the audit given the verify key; an
//! external chain head is matched or refused; unsigned journals still replay without a key.
//!
//! The workloads are small (8 MiB segments, batches of 512 transfers) so that segments rotate,
//! checkpoints and snapshots happen, and each test takes a few seconds. The tests use the
//! library crates only to find where records and snapshots lie on disk, never to do the work.
//!

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use walletd_journal::{record_header_encode, record_size_bytes, FileStorage, Reader, RecordKind};
use walletd_snapshot::{snapshot_load, snapshots_list};

const WALLETD: &str = env!("CARGO_BIN_EXE_walletd");
const SEGMENT_SIZE_BYTES: u64 = 8 << 20;
const ACCOUNTS_COUNT: u64 = 5_000;
/// Events per batch (one journal op): small, so that a small workload makes hundreds of ops,
/// a checkpoint every 64 of them and several 8 MiB segments.
const BATCH_EVENTS: u64 = 512;
/// Ops between snapshot requests: every checkpoint asks for one.
const SNAPSHOT_OPS_OFTEN: u64 = 16;
/// Ops between snapshot requests: none before the final checkpoint, so nothing is archived.
const SNAPSHOT_OPS_NEVER: u64 = 1 << 40;
/// Longest any one command may run before the test kills it and fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn tempdir() -> tempfile::TempDir {
    let base = Path::new("/work/tmp");
    let builder = tempfile::Builder::new().prefix("walletd-durability-").to_owned();
    if base.is_dir() { builder.tempdir_in(base) } else { builder.tempdir() }.expect("create a temporary directory")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// What one run of the binary printed.
struct Ran {
    args: Vec<String>,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn expect_success(self) -> Ran {
        assert!(self.success, "walletd {} failed:\n{}\n{}", self.args.join(" "), self.stdout, self.stderr);
        self
    }

    fn expect_failure(self) -> Ran {
        assert!(
            !self.success,
            "walletd {} succeeded but must not:\n{}\n{}",
            self.args.join(" "),
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.is_empty(), "a failure says why on stderr");
        self
    }

    /// The value of a `label   value …` line of `generate`'s report.
    fn report_value(&self, label: &str) -> &str {
        let line = self.stdout.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| {
            panic!("no `{label}` line in the output of walletd {}:\n{}", self.args.join(" "), self.stdout)
        });
        line[label.len()..].split_whitespace().next().expect("a value after the label")
    }
}

fn walletd_command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut command = Command::new(WALLETD);
    command.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1").stdin(Stdio::null());
    command
}

fn read_all_in_thread(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `walletd args…` to the end (killed and failed after COMMAND_TIMEOUT).
fn walletd(args: &[&str]) -> Ran {
    let mut child = walletd_command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn walletd");
    let stdout = read_all_in_thread(child.stdout.take().expect("stdout"));
    let stderr = read_all_in_thread(child.stderr.take().expect("stderr"));
    // The child's exit is the event: a thread waits for it and reports; the test waits on that
    // report, killing the child (by pid) only if it never comes.
    let pid = child.id();
    let (exited, exit) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = exited.send(child.wait().expect("reap walletd"));
    });
    let status = match exit.recv_timeout(COMMAND_TIMEOUT) {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("walletd {} did not finish within {COMMAND_TIMEOUT:?}", args.join(" "));
        }
    };
    waiter.join().expect("the waiter thread");
    Ran {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        success: status.success(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn generate_args(dir: &Path, transfers: u64, seed: u64, snapshot_ops: u64) -> Vec<String> {
    let mut args: Vec<String> = vec!["generate".into(), "--data-dir".into(), path_str(dir).into()];
    for (flag, value) in [
        ("--transfers", transfers),
        ("--accounts", ACCOUNTS_COUNT),
        ("--seed", seed),
        ("--batch", BATCH_EVENTS),
        ("--snapshot-ops", snapshot_ops),
        ("--segment-size", SEGMENT_SIZE_BYTES),
    ] {
        args.push(flag.into());
        args.push(value.to_string());
    }
    args
}

fn generate(dir: &Path, transfers: u64, seed: u64, snapshot_ops: u64) -> Ran {
    let args = generate_args(dir, transfers, seed, snapshot_ops);
    walletd(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// What `generate` reported on success.
struct Generated {
    ops: u64,
    state_hash: String,
    segments_archived: u64,
}

fn generate_ok(dir: &Path, transfers: u64, seed: u64, snapshot_ops: u64) -> Generated {
    let ran = generate(dir, transfers, seed, snapshot_ops).expect_success();
    let state_hash = ran.report_value("state hash").to_string();
    assert_eq!(state_hash.len(), 32, "a 128-bit hash in hex: {state_hash}");
    let ops = ran.report_value("ops durable").parse().expect("ops durable is a number");
    let snapshots_line = ran.stdout.lines().find(|line| line.starts_with("snapshots")).expect("snapshots line");
    let segments_archived = snapshots_line
        .split(", ")
        .find_map(|part| part.strip_suffix(" segments archived"))
        .expect("the snapshots line counts archived segments")
        .parse()
        .expect("a count");
    Generated { ops, state_hash, segments_archived }
}

/// `walletd replay --json`'s report (the fields these tests check).
#[derive(Debug, Deserialize)]
struct Replayed {
    mode: String,
    ops: u64,
    snapshot_op: Option<u64>,
    records: u64,
    checkpoints_verified: u64,
    accounts: u64,
    transfers: u64,
    state_hash: String,
}

/// Where a replay starts.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    Snapshot,
    Genesis,
}

fn replay_run(dir: &Path, from: Start) -> (Ran, Option<Replayed>) {
    let mut args = vec!["replay", "--data-dir", path_str(dir), "--json"];
    if from == Start::Genesis {
        args.push("--from-genesis");
    }
    let ran = walletd(&args);
    let report = ran.success.then(|| serde_json::from_str(ran.stdout.trim()).expect("replay --json prints one object"));
    (ran, report)
}

fn replay(dir: &Path, from: Start) -> Replayed {
    let (ran, report) = replay_run(dir, from);
    let report = report.unwrap_or_else(|| {
        panic!("walletd {} failed:\n{}", ran.args.join(" "), ran.stderr);
    });
    match from {
        Start::Genesis => {
            assert_eq!(report.mode, "genesis");
            assert_eq!(report.snapshot_op, None);
            assert_eq!(report.records, report.ops, "from genesis, every op 1..=ops is read");
        }
        Start::Snapshot => {
            assert_eq!(report.mode, "snapshot+journal", "a snapshot exists: {report:?}");
            let snapshot_op = report.snapshot_op.expect("the snapshot's op");
            assert!(snapshot_op > 0);
            assert_eq!(report.records, report.ops - snapshot_op, "only the tail after the snapshot is read");
        }
    }
    report
}

/// `replay --audit --json`: ops in the whole journal (archive/ and live), hash chain intact.
fn audit(dir: &Path) -> Ran {
    walletd(&["replay", "--data-dir", path_str(dir), "--audit", "--json"])
}

fn audit_ops(dir: &Path) -> u64 {
    let ran = audit(dir).expect_success();
    let report: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("audit --json prints one object");
    report["ops"].as_u64().expect("audit reports ops")
}

/// Replays from the newest snapshot and from genesis, audits, and checks they all agree;
/// returns the genesis replay.
fn replays_agree(dir: &Path) -> Replayed {
    let genesis = replay(dir, Start::Genesis);
    let snapshot = replay(dir, Start::Snapshot);
    assert_eq!(snapshot.state_hash, genesis.state_hash, "snapshot {snapshot:?}\ngenesis {genesis:?}");
    assert_eq!(snapshot.ops, genesis.ops);
    assert_eq!(snapshot.accounts, genesis.accounts);
    assert_eq!(snapshot.transfers, genesis.transfers);
    assert_eq!(audit_ops(dir), genesis.ops, "the audit walks the same journal");
    genesis
}

fn journal_dir(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// Segment files in `dir`, in op order.
fn segments_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension() == Some(OsStr::new("wal")))
        .collect();
    paths.sort();
    paths
}

fn snapshot_ops(dir: &Path) -> Vec<u64> {
    snapshots_list(&dir.join("snapshots")).expect("list snapshots").into_iter().map(|(op, _)| op).collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).expect("open for damage");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read the byte");
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).expect("write the flipped byte");
}

/// Where a verified record lies, and what it holds.
struct Located {
    op: u64,
    kind: RecordKind,
    segment: PathBuf,
    offset: u64,
    timestamp_ns: u64,
    checksum: u128,
    body: Vec<u8>,
}

/// Every record from `op_first` on, in op order (bodies copied only when `bodies`).
fn records_from(dir: &Path, op_first: u64, bodies: bool) -> Vec<Located> {
    let mut reader = Reader::open(FileStorage::default(), dir, op_first).expect("open a journal reader");
    let mut found = Vec::new();
    while let Some(record) = reader.next_record().expect("a verified record") {
        let (op, kind, timestamp_ns, checksum) = (record.op, record.kind, record.timestamp_ns, record.checksum);
        let body = if bodies { record.body.to_vec() } else { vec![0; record.body.len()] };
        let (segment, offset) = reader.position().expect("the position of the record just read");
        found.push(Located { op, kind, segment: segment.to_path_buf(), offset, timestamp_ns, checksum, body });
    }
    found
}

/// The segment, byte offset and op named by a `journal corrupt: …` message.
fn corrupt_place(stderr: &str) -> (PathBuf, u64, u64) {
    let rest = stderr.split("journal corrupt: ").nth(1).unwrap_or_else(|| panic!("no corruption message:\n{stderr}"));
    let (segment, rest) = rest.split_once(" at byte offset ").expect("the message names a byte offset");
    let (offset, rest) = rest.split_once(", where op ").expect("the message names the op");
    let op = rest.split_whitespace().next().expect("an op");
    (PathBuf::from(segment), offset.parse().expect("offset"), op.parse().expect("op"))
}

#[test]
fn replay_from_snapshot_equals_replay_from_genesis_and_the_live_run() {
    let dir = tempdir();
    let generated = generate_ok(dir.path(), 200_000, 1, SNAPSHOT_OPS_OFTEN);
    let archived = segments_in(&journal_dir(dir.path()).join("archive"));
    let live = segments_in(&journal_dir(dir.path()));
    assert!(archived.len() + live.len() >= 3, "the workload rotated segments: {archived:?} {live:?}");
    assert_eq!(archived.len() as u64, generated.segments_archived);
    assert!(!archived.is_empty(), "snapshots let sealed segments move to archive/");
    assert_eq!(snapshot_ops(dir.path()).len(), 2, "the newest two snapshots are kept");

    let genesis = replay(dir.path(), Start::Genesis);
    assert_eq!(genesis.state_hash, generated.state_hash, "genesis replay reaches the live run's state");
    assert_eq!(genesis.ops, generated.ops);
    assert_eq!(genesis.accounts, ACCOUNTS_COUNT);
    assert!(genesis.transfers >= 200_000, "{genesis:?}");
    assert!(genesis.checkpoints_verified >= generated.ops / 64, "a checkpoint every 64 ops: {genesis:?}");

    let snapshot = replay(dir.path(), Start::Snapshot);
    assert_eq!(snapshot.state_hash, generated.state_hash, "snapshot replay reaches the live run's state");
    assert_eq!(snapshot.ops, generated.ops);
    assert_eq!(snapshot.snapshot_op, snapshot_ops(dir.path()).first().copied(), "the newest snapshot is used");
    assert_eq!(snapshot.transfers, genesis.transfers);

    let audited = audit(dir.path()).expect_success();
    assert!(audited.stdout.contains(&format!("\"ops\":{}", generated.ops)), "{}", audited.stdout);
}

/// Spawns `generate --print-durable` with a workload far larger than the test waits for, lets
/// it report `durable_min` commits (or run for a bounded time), SIGKILLs it, and returns the
/// first and last op it reported durable.
fn generate_and_kill(dir: &Path, seed: u64, durable_min: usize) -> (u64, u64) {
    let mut args = generate_args(dir, 50_000_000, seed, SNAPSHOT_OPS_OFTEN);
    args.push("--print-durable".into());
    let mut child: Child =
        walletd_command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn generate");
    let stderr = read_all_in_thread(child.stderr.take().expect("stderr"));
    let (lines_sender, lines) = mpsc::channel();
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                return;
            }
        }
    });
    let durable_of = |line: &str| line.strip_prefix("durable ").map(|op| op.parse::<u64>().expect("an op"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut durable: Vec<u64> = Vec::new();
    while durable.len() < durable_min {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => durable.extend(durable_of(&line)),
            Err(_) => break,
        }
    }
    child.kill().expect("SIGKILL generate");
    let status = child.wait().expect("reap generate");
    // Lines printed before it died were durable too: read them to the end of the pipe.
    reader.join().expect("stdout reader");
    durable.extend(lines.try_iter().filter_map(|line| durable_of(&line)));
    let stderr = stderr.join().expect("stderr reader");
    assert!(!status.success(), "generate was killed, not finished:\n{stderr}");
    assert!(durable.len() >= durable_min.min(3), "generate reported too few commits before the deadline:\n{stderr}");
    assert!(durable.windows(2).all(|pair| pair[0] < pair[1]), "durable ops only grow: {durable:?}");
    (durable[0], *durable.last().expect("at least one durable op"))
}

#[test]
fn kill_9_during_generate_loses_no_durable_op() {
    let dir = tempdir();
    let mut ops_recovered = 0;
    // Kill early (during account creation), before the first checkpoint, and later, once
    // segments rotate and snapshots are being written (a `.tmp` is often left behind).
    for (round, durable_min) in [3usize, 40, 250, 400].into_iter().enumerate() {
        let (durable_first, durable_last) = generate_and_kill(dir.path(), 11 + round as u64, durable_min);
        assert!(
            durable_first > ops_recovered,
            "round {round}: the run recovered ops 1..={ops_recovered} and carried on after them, \
             but its first commit reported op {durable_first}"
        );
        let genesis = replay(dir.path(), Start::Genesis);
        assert!(
            genesis.ops >= durable_last,
            "round {round}: generate reported op {durable_last} durable, the journal holds only {}",
            genesis.ops
        );
        let (ran, snapshot) = replay_run(dir.path(), Start::Snapshot);
        let snapshot =
            snapshot.unwrap_or_else(|| panic!("round {round}: replay from snapshot failed:\n{}", ran.stderr));
        assert_eq!(snapshot.state_hash, genesis.state_hash, "round {round}");
        assert_eq!(snapshot.ops, genesis.ops, "round {round}");
        assert!(
            snapshot.snapshot_op.unwrap_or(0) <= durable_last,
            "round {round}: a snapshot only follows durable ops"
        );
        assert_eq!(audit_ops(dir.path()), genesis.ops, "round {round}");
        eprintln!(
            "kill -9 round {round}: reported durable {durable_first}..={durable_last}, journal holds {} ops, \
             snapshot at {:?}",
            genesis.ops, snapshot.snapshot_op
        );
        ops_recovered = genesis.ops;
    }
    // A run that finishes recovers the last kill's leftovers and carries on.
    let generated = generate_ok(dir.path(), 20_000, 99, SNAPSHOT_OPS_OFTEN);
    assert!(generated.ops > ops_recovered, "the last run appended after op {ops_recovered}");
    let genesis = replays_agree(dir.path());
    assert_eq!(genesis.ops, generated.ops);
    assert_eq!(genesis.state_hash, generated.state_hash);
    assert_eq!(genesis.accounts, ACCOUNTS_COUNT, "resubmitted accounts came back as `exists`");
}

/// A data directory whose journal has several live (sealed) segments and no archive, with one
/// byte flipped in the body of a record in the middle of the first segment. Returns the
/// located record (op, segment, offset) and the ops the journal held.
fn journal_with_a_flipped_byte(dir: &Path) -> (Located, u64) {
    let generated = generate_ok(dir, 200_000, 3, SNAPSHOT_OPS_NEVER);
    assert_eq!(generated.segments_archived, 0);
    let live = segments_in(&journal_dir(dir));
    assert!(live.len() >= 3, "the corrupt segment is sealed, and not the last: {live:?}");
    let mut in_first: Vec<Located> =
        records_from(dir, 1, false).into_iter().filter(|record| record.segment == live[0]).collect();
    assert!(in_first.len() > 10, "the first segment holds many records");
    let middle = in_first.swap_remove(in_first.len() / 2);
    assert!(middle.body.len() > 16);
    flip_byte(&middle.segment, middle.offset + 64 + middle.body.len() as u64 / 2);
    (middle, generated.ops)
}

#[test]
fn a_flipped_byte_mid_journal_is_refused_then_truncated_by_the_operator() {
    let dir = tempdir();
    let (damaged, ops_before) = journal_with_a_flipped_byte(dir.path());
    let segment_bytes = fs::read(&damaged.segment).expect("read the damaged segment");
    let place = |stderr: &str| {
        assert!(stderr.contains(&damaged.segment.display().to_string()), "names the segment:\n{stderr}");
        assert_eq!(corrupt_place(stderr), (damaged.segment.clone(), damaged.offset, damaged.op), "{stderr}");
    };

    // Start-up refuses, and touches nothing.
    let live_before = segments_in(&journal_dir(dir.path()));
    let refused = generate(dir.path(), 1_000, 4, SNAPSHOT_OPS_NEVER).expect_failure();
    place(&refused.stderr);
    assert!(fs::read(&damaged.segment).expect("read the segment") == segment_bytes, "a refusal repairs nothing");
    assert_eq!(segments_in(&journal_dir(dir.path())), live_before);
    // Replay and audit from genesis refuse with the same place.
    let (ran, _) = replay_run(dir.path(), Start::Genesis);
    assert!(!ran.success, "replay from genesis must refuse a corrupt journal:\n{}", ran.stdout);
    place(&ran.stderr);
    place(&audit(dir.path()).expect_failure().stderr);

    // The operator accepts the loss of the op and everything after it.
    let (segment, offset, _) = corrupt_place(&ran.stderr);
    let offset_text = offset.to_string();
    let truncated = walletd(&[
        "journal",
        "truncate",
        "--data-dir",
        path_str(dir.path()),
        "--segment",
        path_str(&segment),
        "--offset",
        &offset_text,
    ])
    .expect_success();
    assert!(truncated.stdout.contains("truncated"), "{}", truncated.stdout);
    let quarantine = journal_dir(dir.path()).join("quarantine");
    let copy_name = format!("{}.truncated-at-{offset}", segment.file_name().expect("name").to_string_lossy());
    assert!(fs::read(quarantine.join(copy_name)).expect("the evidence is kept") == segment_bytes);
    for later in &live_before[1..] {
        assert!(quarantine.join(later.file_name().expect("name")).exists(), "{later:?} moved to quarantine/");
    }
    assert_eq!(segments_in(&journal_dir(dir.path())), vec![segment.clone()]);

    let genesis = replay(dir.path(), Start::Genesis);
    assert_eq!(genesis.ops, damaged.op - 1, "the journal ends just before the damaged op");
    assert!(genesis.ops < ops_before);
    assert_eq!(audit_ops(dir.path()), damaged.op - 1);
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_older_one() {
    let dir = tempdir();
    let generated = generate_ok(dir.path(), 200_000, 5, SNAPSHOT_OPS_OFTEN);
    let snapshots = snapshots_list(&dir.path().join("snapshots")).expect("list snapshots");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let ((newest_op, newest), (older_op, _)) = (snapshots[0].clone(), snapshots[1].clone());
    assert_eq!(newest_op, generated.ops, "the final checkpoint is snapshotted");
    assert!(older_op < newest_op);
    let size = fs::metadata(&newest).expect("newest snapshot").len();
    flip_byte(&newest, size / 2);

    let (ran, snapshot) = replay_run(dir.path(), Start::Snapshot);
    let snapshot = snapshot.unwrap_or_else(|| panic!("replay must fall back, not fail:\n{}", ran.stderr));
    assert_eq!(snapshot.mode, "snapshot+journal");
    assert_eq!(snapshot.snapshot_op, Some(older_op), "the older snapshot is used");
    assert_eq!(snapshot.records, newest_op - older_op, "and the journal tail after it replayed");
    assert_eq!(snapshot.state_hash, generated.state_hash);
    assert!(ran.stderr.contains(&newest.display().to_string()), "the damaged snapshot is named:\n{}", ran.stderr);
    let genesis = replay(dir.path(), Start::Genesis);
    assert_eq!(genesis.state_hash, snapshot.state_hash);

    // Start-up falls back the same way, and the run carries on.
    let carried_on = generate_ok(dir.path(), 20_000, 6, SNAPSHOT_OPS_OFTEN);
    assert!(carried_on.ops > newest_op);
    let genesis = replays_agree(dir.path());
    assert_eq!(genesis.state_hash, carried_on.state_hash);
    assert_eq!(snapshot_ops(dir.path())[0], carried_on.ops, "a fresh snapshot was written");
}

/// Generates, then returns the last record of the journal (with its body).
fn generate_and_locate_the_last_record(dir: &Path, seed: u64) -> (Generated, Located) {
    let generated = generate_ok(dir, 100_000, seed, SNAPSHOT_OPS_OFTEN);
    let mut records = records_from(dir, generated.ops, true);
    assert_eq!(records.len(), 1, "op {} is the last", generated.ops);
    let last = records.pop().expect("the last record");
    assert_eq!(last.op, generated.ops);
    assert_eq!(Some(&last.segment), segments_in(&journal_dir(dir)).last(), "it is in the last live segment");
    (generated, last)
}

#[test]
fn a_torn_journal_tail_is_truncated_on_restart() {
    let dir = tempdir();
    let (generated, last) = generate_and_locate_the_last_record(dir.path(), 7);
    // The crash came while the next op was being written: its header and half its body
    // reached the file, which was then cut short mid-record.
    let data_end = last.offset + record_size_bytes(last.body.len() as u64);
    let torn_body = &last.body[..last.body.len().min(4096)];
    let header =
        record_header_encode(last.op + 1, last.timestamp_ns + 1, RecordKind::CommandBatch, torn_body, last.checksum);
    let written = [&header[..], &torn_body[..torn_body.len() / 2]].concat();
    assert!(data_end + record_size_bytes(torn_body.len() as u64) <= SEGMENT_SIZE_BYTES, "the torn op fits");
    let file = fs::OpenOptions::new().write(true).open(&last.segment).expect("open the last segment");
    file.write_all_at(&written, data_end).expect("write the torn record");
    file.set_len(data_end + written.len() as u64).expect("cut the file mid-record");
    drop(file);

    // A read-only replay stops before the torn op.
    assert_eq!(replay(dir.path(), Start::Genesis).ops, generated.ops);
    // Restart: the segment is regrown, the torn op zeroed, and the run carries on after the
    // last durable op.
    let carried_on = generate_ok(dir.path(), 20_000, 8, SNAPSHOT_OPS_OFTEN);
    assert_eq!(fs::metadata(&last.segment).expect("segment").len(), SEGMENT_SIZE_BYTES, "the segment was regrown");
    assert!(carried_on.ops > generated.ops);
    let genesis = replays_agree(dir.path());
    assert_eq!(genesis.ops, carried_on.ops);
    assert_eq!(genesis.state_hash, carried_on.state_hash);
    let after = records_from(dir.path(), last.op, false);
    assert_eq!(after[0].checksum, last.checksum, "the last durable op is intact");
}

#[test]
fn a_cut_through_a_record_the_newest_snapshot_holds_is_refused() {
    let dir = tempdir();
    let (generated, last) = generate_and_locate_the_last_record(dir.path(), 9);
    assert_eq!(snapshot_ops(dir.path())[0], last.op, "the newest snapshot holds the last op");
    // Not a torn write (the op was durable before the snapshot was taken): the disk lost it.
    let file = fs::OpenOptions::new().write(true).open(&last.segment).expect("open the last segment");
    file.set_len(last.offset + 64 + 3).expect("cut the file mid-record");
    drop(file);

    let refused = generate(dir.path(), 1_000, 10, SNAPSHOT_OPS_OFTEN).expect_failure();
    let (op_lost, op_before) = (generated.ops.to_string(), (generated.ops - 1).to_string());
    assert!(refused.stderr.contains(&format!("journal ends at op {op_before}")), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("snapshot is at op {op_lost}")), "{}", refused.stderr);
    let (ran, _) = replay_run(dir.path(), Start::Snapshot);
    assert!(!ran.success, "replay from the snapshot cannot join the journal");
    assert_eq!(replay(dir.path(), Start::Genesis).ops, generated.ops - 1, "the journal before the cut is intact");
}

/// The corruption message names a command for the operator; run exactly as printed (the data
/// directory implied by the segment's path), it does what the message says.
#[test]
fn the_truncate_command_the_corruption_message_names_works_as_printed() {
    let dir = tempdir();
    let (damaged, _) = journal_with_a_flipped_byte(dir.path());
    let refused = generate(dir.path(), 1_000, 4, SNAPSHOT_OPS_NEVER).expect_failure();
    let command = refused.stderr.split("run `").nth(1).and_then(|rest| rest.split('`').next()).unwrap_or_else(|| {
        panic!("the message names a command:\n{}", refused.stderr);
    });
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..3], ["walletd", "journal", "truncate"], "{command}");
    walletd(&words[1..]).expect_success();
    assert_eq!(replay(dir.path(), Start::Genesis).ops, damaged.op - 1, "the journal ends just before the damaged op");
}

// ---------------------------------------------------------------------------------------------
// Reproductions of product bugs: these fail today. See the report that accompanies them.

/// `walletd journal truncate` cuts the journal but leaves snapshots taken after the cut, so the
/// node refuses to start ("the journal ends at op N but the newest snapshot is at op M").
#[test]

fn the_node_starts_again_after_the_operator_truncates() {
    let dir = tempdir();
    let (damaged, _) = journal_with_a_flipped_byte(dir.path());
    let offset = damaged.offset.to_string();
    let args = [
        "journal",
        "truncate",
        "--data-dir",
        path_str(dir.path()),
        "--segment",
        path_str(&damaged.segment),
        "--offset",
        &offset,
    ];
    walletd(&args).expect_success();
    let carried_on = generate_ok(dir.path(), 1_000, 4, SNAPSHOT_OPS_OFTEN);
    assert!(carried_on.ops >= damaged.op);
    replays_agree(dir.path());
}

/// With `kept` = 2, a run that starts next to a corrupt newest snapshot keeps the corrupt file
/// as the fallback and deletes the good older one.
#[test]

fn every_snapshot_kept_after_a_fallback_is_loadable() {
    let dir = tempdir();
    generate_ok(dir.path(), 200_000, 5, SNAPSHOT_OPS_OFTEN);
    let newest = snapshots_list(&dir.path().join("snapshots")).expect("list")[0].1.clone();
    flip_byte(&newest, fs::metadata(&newest).expect("newest").len() / 2);
    generate_ok(dir.path(), 20_000, 6, SNAPSHOT_OPS_OFTEN);
    for (op, path) in snapshots_list(&dir.path().join("snapshots")).expect("list") {
        assert!(snapshot_load(&path).is_ok(), "the kept snapshot at op {op} ({}) does not load", path.display());
    }
}

/// A snapshot being written when the process died leaves `snapshot-….tmp`, which no later run
/// removes (snapshots can be gigabytes).
#[test]

fn a_restart_removes_a_leftover_snapshot_temporary() {
    let dir = tempdir();
    generate_ok(dir.path(), 20_000, 1, SNAPSHOT_OPS_OFTEN);
    let leftover = dir.path().join("snapshots").join("snapshot-00000000000000999999.tmp");
    fs::write(&leftover, vec![0x55; 1 << 20]).expect("write a leftover");
    generate_ok(dir.path(), 20_000, 2, SNAPSHOT_OPS_OFTEN);
    assert!(!leftover.exists(), "the leftover temporary is still there");
}

/// Recovery zeroes a torn tail, regrows a cut segment and skips a damaged snapshot, and returns
/// all of it in `Recovered`, but `generate` prints none of it: the operator never learns.
#[test]

fn a_restart_reports_the_damaged_snapshot_it_skipped() {
    let dir = tempdir();
    generate_ok(dir.path(), 200_000, 5, SNAPSHOT_OPS_OFTEN);
    let newest = snapshots_list(&dir.path().join("snapshots")).expect("list")[0].1.clone();
    flip_byte(&newest, fs::metadata(&newest).expect("newest").len() / 2);
    let ran = generate(dir.path(), 1_000, 6, SNAPSHOT_OPS_OFTEN).expect_success();
    let output = format!("{}{}", ran.stdout, ran.stderr);
    assert!(output.contains(&newest.display().to_string()), "nothing names the skipped snapshot:\n{output}");
}

/// The drill must never report green on a damaged journal: a flipped byte in a record in the
/// middle of the *last live* segment (valid records after it) is refused by replay from a
/// snapshot, from genesis and by the audit, with start-up's segment/offset/op message.
#[test]
fn a_flipped_byte_in_the_last_live_segment_fails_every_drill() {
    let dir = tempdir();
    let generated = generate_ok(dir.path(), 200_000, 5, 16);
    let live = segments_in(&journal_dir(dir.path()));
    let last = live.last().expect("a live segment").clone();
    let snapshot_op = *snapshot_ops(dir.path()).last().expect("a snapshot");
    let mut in_last: Vec<Located> = records_from(dir.path(), snapshot_op.max(1), false)
        .into_iter()
        .filter(|record| record.segment == last && record.op > snapshot_op)
        .collect();
    assert!(in_last.len() > 4, "the last segment holds records after the snapshot");
    let middle = in_last.swap_remove(in_last.len() / 2);
    assert!(middle.op < generated.ops, "valid records follow the damaged one");
    flip_byte(&middle.segment, middle.offset + 64 + middle.body.len() as u64 / 2);

    let place = |what: &str, ran: &Ran| {
        assert!(!ran.success, "{what} must refuse a damaged journal:\n{}", ran.stdout);
        assert_eq!(corrupt_place(&ran.stderr), (middle.segment.clone(), middle.offset, middle.op), "{what}");
    };
    place("replay from the snapshot", &replay_run(dir.path(), Start::Snapshot).0);
    place("replay from genesis", &replay_run(dir.path(), Start::Genesis).0);
    place("the audit", &audit(dir.path()));
    let until = (middle.op - 1).to_string();
    let ran = walletd(&["replay", "--data-dir", path_str(dir.path()), "--until-op", &until, "--json"]);
    place("a replay that stops before the damage", &ran);
    place("start-up", &generate(dir.path(), 1_000, 6, SNAPSHOT_OPS_NEVER));
}

/// A drill of a past state still verifies the whole journal and says how far it reaches.
#[test]
fn a_drill_to_a_past_op_reports_how_far_the_journal_reaches() {
    let dir = tempdir();
    let generated = generate_ok(dir.path(), 30_000, 7, SNAPSHOT_OPS_NEVER);
    let until = (generated.ops / 2).to_string();
    let ran =
        walletd(&["replay", "--data-dir", path_str(dir.path()), "--from-genesis", "--until-op", &until, "--json"])
            .expect_success();
    let report: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("one object");
    assert_eq!(report["ops"].as_u64(), Some(generated.ops / 2));
    assert_eq!(report["journal_op_last"].as_u64(), Some(generated.ops));
    assert_eq!(report["torn_tail"], serde_json::Value::Null);
}

/// `walletd replay | head -1`: a reader that stops reading ends the report quietly, with no
/// panic and no backtrace on stderr.
#[test]
fn a_closed_output_pipe_ends_a_report_quietly() {
    let dir = tempdir();
    generate_ok(dir.path(), 2_000, 8, SNAPSHOT_OPS_NEVER);
    let mut child = walletd_command(&["replay", "--data-dir", path_str(dir.path())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("walletd replay starts");
    drop(child.stdout.take()); // the reader is gone before the report is written
    let stderr = read_all_in_thread(child.stderr.take().expect("stderr"));
    let status = child.wait().expect("walletd replay ends");
    let stderr = stderr.join().expect("stderr read");
    assert!(!stderr.contains("panicked"), "no panic on a closed pipe:\n{stderr}");
    assert!(status.code().is_none_or(|code| code == 0), "ended by SIGPIPE or success: {status:?}");
}

// ---------------------------------------------------------------------------------------------
// Tamper evidence: signed checkpoints and the external chain head.

/// `walletd keygen --out DIR/name.key`: returns the private key's path and the public key (hex).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let ran = walletd(&["keygen", "--out", path_str(&out)]).expect_success();
    let public_key = ran.stdout.trim().to_string();
    assert_eq!(public_key.len(), 64, "a 32-byte public key in hex: {public_key}");
    assert_eq!(fs::read_to_string(dir.join(format!("{name}.pub"))).expect("the .pub file").trim(), public_key);
    (out, public_key)
}

/// `generate` signing its checkpoints with `key`.
fn generate_signed(dir: &Path, transfers: u64, seed: u64, key: &Path) -> Generated {
    let mut args = generate_args(dir, transfers, seed, SNAPSHOT_OPS_NEVER);
    args.extend(["--signing-key".to_string(), path_str(key).to_string()]);
    let ran = walletd(&args.iter().map(String::as_str).collect::<Vec<_>>()).expect_success();
    let ops = ran.report_value("ops durable").parse().expect("ops durable is a number");
    Generated { ops, state_hash: ran.report_value("state hash").to_string(), segments_archived: 0 }
}

/// `replay --json` with extra flags; the report as JSON when it succeeded.
fn replay_with(dir: &Path, extra: &[&str]) -> (Ran, Option<serde_json::Value>) {
    let mut args = vec!["replay", "--data-dir", path_str(dir), "--json"];
    args.extend_from_slice(extra);
    let ran = walletd(&args);
    let report = ran.success.then(|| serde_json::from_str(ran.stdout.trim()).expect("one JSON object"));
    (ran, report)
}

/// Starts `walletd serve` on `dir` (any free port) with `extra` flags. Ok once it listens (it is
/// then killed); Err with what it printed if it exits first.
fn serve_starts(dir: &Path, extra: &[&str]) -> Result<(), Ran> {
    let mut args = vec!["serve", "--data-dir", path_str(dir), "--addr", "127.0.0.1:0", "--accounts-max", "65536"];
    args.extend_from_slice(extra);
    let mut child = walletd_command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn serve");
    let stderr = read_all_in_thread(child.stderr.take().expect("stderr"));
    let stdout = child.stdout.take().expect("stdout");
    let (lines_sender, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_sender.send(line);
        }
    });
    let listening = loop {
        match lines.recv_timeout(COMMAND_TIMEOUT) {
            Ok(line) if line.starts_with("walletd listening on") => break true,
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("serve neither listened nor exited"),
        }
    };
    if listening {
        child.kill().expect("stop serve");
    }
    let status = child.wait().expect("reap serve");
    reader.join().expect("stdout reader");
    let ran = Ran {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        success: status.success(),
        stdout: lines.try_iter().collect::<Vec<_>>().join("\n"),
        stderr: stderr.join().expect("stderr reader"),
    };
    if listening {
        Ok(())
    } else {
        Err(ran)
    }
}

/// Writes `records` back with their (possibly edited) bodies and recomputes every header's
/// checksum from the first one on, chained from `checksum_prev`: what someone who can write the
/// files but holds no key can do. The records must be consecutive and in one segment.
fn rechain(records: &mut [Located], checksum_prev: u128) {
    assert!(records.iter().all(|record| record.segment == records[0].segment), "the records lie in one segment");
    assert!(records.windows(2).all(|pair| pair[1].op == pair[0].op + 1), "consecutive records");
    let mut checksum_prev = checksum_prev;
    for record in records.iter_mut() {
        let header = record_header_encode(record.op, record.timestamp_ns, record.kind, &record.body, checksum_prev);
        let file = fs::OpenOptions::new().write(true).open(&record.segment).expect("open the segment");
        file.write_all_at(&header, record.offset).expect("write the header");
        file.write_all_at(&record.body, record.offset + 64).expect("write the body");
        record.checksum = u128::from_le_bytes(header[48..64].try_into().expect("16 bytes"));
        checksum_prev = record.checksum;
    }
}

/// The record before `op`'s checksum (0 for op 1).
fn checksum_before(dir: &Path, op: u64) -> u128 {
    if op == 1 {
        return 0;
    }
    records_from(dir, op - 1, false)[0].checksum
}

const CREATE_TRANSFERS: u16 = 3;
const TRANSFER_AMOUNT_OFFSET: usize = 48;
const TRANSFER_FLAGS_OFFSET: usize = 118;

/// The rewrite attack of issue 7: in the last transfer batch before the journal's last signed
/// checkpoint, lower one single-phase transfer's amount by one; recompute that record's
/// checksum and every later one's; give every later checkpoint the state hash and counts a
/// replay of the edited journal computes there (so state hashes pass too); and delete the
/// snapshots, which recorded the old chain. Returns the edited op.
fn rewrite_an_amount_and_everything_after(dir: &Path) -> u64 {
    let checkpoints: Vec<Located> =
        records_from(dir, 1, false).into_iter().filter(|r| r.kind == RecordKind::Checkpoint).collect();
    let signed_last = checkpoints.last().expect("a checkpoint");
    let before_last = checkpoints[checkpoints.len() - 2].op;
    let mut tail = records_from(dir, before_last + 1, true);
    assert_eq!(tail.last().expect("records").op, signed_last.op, "the journal ends with its final checkpoint");
    let edited_index = tail.iter().rposition(|record| record.kind == RecordKind::CommandBatch).expect("a command");
    let edited = &mut tail[edited_index];
    assert_eq!(u16::from_le_bytes([edited.body[0], edited.body[1]]), CREATE_TRANSFERS);
    let event = (0..(edited.body.len() - 16) / 128)
        .map(|index| 16 + index * 128)
        .find(|at| {
            let flags = u16::from_le_bytes([edited.body[at + TRANSFER_FLAGS_OFFSET], edited.body[at + 119]]);
            let amount = u128::from_le_bytes(edited.body[at + TRANSFER_AMOUNT_OFFSET..][..16].try_into().unwrap());
            flags == 0 && amount > 1
        })
        .expect("a single-phase transfer");
    let amount_at = event + TRANSFER_AMOUNT_OFFSET;
    let amount = u128::from_le_bytes(edited.body[amount_at..][..16].try_into().unwrap());
    edited.body[amount_at..][..16].copy_from_slice(&(amount - 1).to_le_bytes());
    let edited_op = edited.op;
    let tail = &mut tail[edited_index..];
    rechain(tail, checksum_before(dir, edited_op));
    for snapshot in fs::read_dir(dir.join("snapshots")).expect("snapshots").map(|entry| entry.unwrap().path()) {
        if snapshot.is_file() {
            fs::remove_file(snapshot).expect("remove a snapshot");
        }
    }
    // Each later checkpoint gets the state the edited journal replays to (state hash, counts).
    for index in 1..tail.len() {
        if tail[index].kind != RecordKind::Checkpoint {
            continue;
        }
        let until = (tail[index].op - 1).to_string();
        let (ran, state) = replay_with(dir, &["--from-genesis", "--until-op", &until]);
        let state = state.unwrap_or_else(|| panic!("the edited journal replays up to op {until}:\n{}", ran.stderr));
        let hash = u128::from_str_radix(state["state_hash"].as_str().unwrap(), 16).unwrap();
        let body = &mut tail[index].body;
        body[0..16].copy_from_slice(&hash.to_le_bytes());
        body[32..40].copy_from_slice(&state["accounts"].as_u64().unwrap().to_le_bytes());
        body[40..48].copy_from_slice(&state["transfers"].as_u64().unwrap().to_le_bytes());
        let checksum_prev = tail[index - 1].checksum;
        rechain(&mut tail[index..], checksum_prev);
    }
    edited_op
}

fn debits_posted(report: &serde_json::Value) -> String {
    report["ledgers"][0]["debits_posted"].as_str().expect("ledger totals").to_string()
}

#[test]
fn a_rewritten_journal_with_its_chain_recomputed_is_refused_by_its_signatures() {
    let (dir, keys) = (tempdir(), tempdir());
    let (key, public_key) = keygen(keys.path(), "node.key");
    let generated = generate_signed(dir.path(), 40_000, 21, &key);
    let (_, honest) = replay_with(dir.path(), &["--from-genesis", "--verify-key", &public_key]);
    let honest = honest.expect("the honest journal verifies");
    assert_eq!(honest["state_hash"].as_str(), Some(generated.state_hash.as_str()));
    assert_eq!(honest["trust"]["op_signed_last"].as_u64(), Some(generated.ops), "the final checkpoint is signed");
    assert!(honest["trust"]["checkpoints_signed_verified"].as_u64().unwrap() >= generated.ops / 64);
    serve_starts(dir.path(), &["--signing-key", path_str(&key), "--verify-key", &public_key])
        .unwrap_or_else(|ran| panic!("serve refused the honest journal:\n{}", ran.stderr));
    let ops = audit_ops(dir.path());

    let edited_op = rewrite_an_amount_and_everything_after(dir.path());

    // Without the key every check passes and the ledger shows another amount: the attack.
    let (ran, forged) = replay_with(dir.path(), &["--from-genesis"]);
    let forged = forged.unwrap_or_else(|| panic!("the rewritten journal passes every unkeyed check:\n{}", ran.stderr));
    assert_ne!(debits_posted(&forged), debits_posted(&honest), "an acknowledged transfer shows another amount");
    assert_eq!(audit_ops(dir.path()), ops, "the chain is intact");
    serve_starts(dir.path(), &[]).unwrap_or_else(|ran| panic!("serve without a key starts:\n{}", ran.stderr));

    // With the key, the first signed checkpoint after the edit refuses it, naming its op.
    let signed_after = records_from(dir.path(), edited_op, false)
        .into_iter()
        .find(|record| record.kind == RecordKind::Checkpoint)
        .expect("a signed checkpoint after the edit")
        .op;
    let refused = |what: &str, ran: &Ran| {
        assert!(!ran.success, "{what} must refuse the rewritten journal:\n{}", ran.stdout);
        let expected = format!("checkpoint signature refused at op {signed_after}: its signature does not verify");
        assert!(ran.stderr.contains(&expected), "{what}: {}", ran.stderr);
    };
    refused("replay --verify-key", &replay_with(dir.path(), &["--from-genesis", "--verify-key", &public_key]).0);
    refused("replay --audit --verify-key", &replay_with(dir.path(), &["--audit", "--verify-key", &public_key]).0);
    let serve = serve_starts(dir.path(), &["--signing-key", path_str(&key), "--verify-key", &public_key]);
    refused("serve --verify-key", &serve.expect_err("serve must refuse the rewritten journal"));
    let serve = serve_starts(dir.path(), &["--signing-key", path_str(&key)]);
    refused("serve --signing-key", &serve.expect_err("a signing node verifies with its own key"));
}

#[test]
fn a_flipped_signature_byte_is_refused_even_with_the_chain_recomputed() {
    let (dir, keys) = (tempdir(), tempdir());
    let (key, public_key) = keygen(keys.path(), "node.key");
    let generated = generate_signed(dir.path(), 40_000, 22, &key);
    let mut tail = records_from(dir.path(), generated.ops / 2, true);
    let at = tail.iter().position(|record| record.kind == RecordKind::Checkpoint).expect("a checkpoint");
    assert_eq!(tail[at].body.len(), 176, "a signed checkpoint");
    tail[at].body[150] ^= 0x01; // inside the signature (bytes 112..176)
    let op = tail[at].op;
    let checksum_prev = checksum_before(dir.path(), op);
    rechain(&mut tail[at..], checksum_prev);

    assert!(audit(dir.path()).success, "the chain is intact: only the signature can tell");
    assert!(replay_with(dir.path(), &["--from-genesis"]).0.success, "and the state hashes: nothing else changed");
    let (ran, _) = replay_with(dir.path(), &["--from-genesis", "--verify-key", &public_key]);
    assert!(!ran.success);
    assert!(ran.stderr.contains(&format!("checkpoint signature refused at op {op}")), "{}", ran.stderr);
    // From the snapshot (at the final checkpoint), the recomputed chain reaches its signature.
    let (ran, _) = replay_with(dir.path(), &["--verify-key", &public_key]);
    let at_snapshot = format!("checkpoint signature refused at op {}", generated.ops);
    assert!(ran.stderr.contains(&at_snapshot), "{}", ran.stderr);
    let (ran, _) = replay_with(dir.path(), &["--audit", "--verify-key", &public_key]);
    assert!(ran.stderr.contains(&format!("checkpoint signature refused at op {op}")), "{}", ran.stderr);
}

#[test]
fn signatures_by_another_key_are_refused() {
    let (dir, keys) = (tempdir(), tempdir());
    let (key, public_key) = keygen(keys.path(), "node.key");
    let (other_key, other_public) = keygen(keys.path(), "other.key");
    assert_ne!(public_key, other_public);
    generate_signed(dir.path(), 10_000, 23, &key);
    let first_signed =
        records_from(dir.path(), 1, false).into_iter().find(|r| r.kind == RecordKind::Checkpoint).expect("one").op;

    let (ran, _) = replay_with(dir.path(), &["--audit", "--verify-key", &other_public]);
    assert!(!ran.success);
    let expected = format!("refused at op {first_signed}: it is signed by key {public_key}, not by the verify key");
    assert!(ran.stderr.contains(&expected), "{}", ran.stderr);
    let public_file = keys.path().join("other.key.pub");
    let (ran, _) = replay_with(dir.path(), &["--from-genesis", "--verify-key", path_str(&public_file)]);
    assert!(ran.stderr.contains(&expected), "the key from a file: {}", ran.stderr);
    // A node with the other signing key verifies with it, so it refuses too; a signing key and
    // a verify key that do not match are refused before anything is read.
    // (Start-up reads from the snapshot at the final checkpoint, so that is where it refuses.)
    let serve = serve_starts(dir.path(), &["--signing-key", path_str(&other_key)]).expect_err("refused");
    let expected_from_snapshot = format!("it is signed by key {public_key}, not by the verify key {other_public}");
    assert!(serve.stderr.contains(&expected_from_snapshot), "{}", serve.stderr);
    let serve = serve_starts(dir.path(), &["--signing-key", path_str(&key), "--verify-key", &other_public]);
    assert!(serve.expect_err("mismatched keys").stderr.contains("not the verify key"));
    // The right key passes.
    replay_with(dir.path(), &["--audit", "--verify-key", &public_key]).1.expect("verifies");
}

#[test]
fn an_external_chain_head_is_matched_or_refused() {
    let dir = tempdir();
    let generated = generate_ok(dir.path(), 40_000, 24, SNAPSHOT_OPS_OFTEN);
    let (_, audited) = replay_with(dir.path(), &["--audit"]);
    let head = audited.expect("audit")["trust"]["journal_head"].as_str().expect("the journal's head").to_string();
    assert!(head.starts_with(&format!("{}:", generated.ops)), "{head}");
    let older = records_from(dir.path(), generated.ops / 2, false)[0].checksum;
    let older_head = format!("{}:{older:032x}", generated.ops / 2);
    let snapshot_op = snapshot_ops(dir.path())[0];
    assert!(generated.ops / 2 < snapshot_op, "the older head lies behind the newest snapshot");

    for expected in [&head, &older_head] {
        for mode in [&["--audit"][..], &[][..], &["--from-genesis"][..]] {
            let mut extra = mode.to_vec();
            extra.extend(["--expect-head", expected.as_str()]);
            let (ran, report) = replay_with(dir.path(), &extra);
            let report = report.unwrap_or_else(|| panic!("{extra:?} matches:\n{}", ran.stderr));
            assert_eq!(report["trust"]["head_matched"].as_str(), Some(expected.as_str()), "{extra:?}");
        }
    }
    // Another checksum at that op: the journal was rewritten there (or before).
    let last_digit = if head.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last_digit}", &head[..head.len() - 1]);
    for mode in [&["--audit"][..], &[][..]] {
        let mut extra = mode.to_vec();
        extra.extend(["--expect-head", wrong.as_str()]);
        let ran = replay_with(dir.path(), &extra).0.expect_failure();
        assert!(ran.stderr.contains(&format!("chain head mismatch at op {}", generated.ops)), "{}", ran.stderr);
    }
    // A head past the journal's end: acknowledged ops were removed.
    let beyond = format!("{}:{older:032x}", generated.ops + 5);
    for mode in [&["--audit"][..], &[][..]] {
        let mut extra = mode.to_vec();
        extra.extend(["--expect-head", beyond.as_str()]);
        let ran = replay_with(dir.path(), &extra).0.expect_failure();
        let expected =
            format!("the journal no longer reaches op {}: it ends at op {}", generated.ops + 5, generated.ops);
        assert!(ran.stderr.contains(&expected), "{}", ran.stderr);
    }
    replay_with(dir.path(), &["--expect-head", "12"]).0.expect_failure();
    // Start-up checks it too, before anything is appended.
    let refused = serve_starts(dir.path(), &["--expect-head", &wrong]).expect_err("a rewritten head");
    assert!(refused.stderr.contains(&format!("chain head mismatch at op {}", generated.ops)), "{}", refused.stderr);
    serve_starts(dir.path(), &["--expect-head", &older_head]).unwrap_or_else(|ran| panic!("{}", ran.stderr));
}

#[test]
fn unsigned_journals_replay_without_a_key_and_start_being_signed_when_a_node_signs() {
    let (dir, keys) = (tempdir(), tempdir());
    let (key, public_key) = keygen(keys.path(), "node.key");
    let unsigned = generate_ok(dir.path(), 20_000, 25, SNAPSHOT_OPS_OFTEN);
    let genesis = replays_agree(dir.path());
    assert_eq!(genesis.state_hash, unsigned.state_hash, "an unsigned journal replays as before");
    let ran = replay_with(dir.path(), &["--verify-key", &public_key]).0.expect_failure();
    assert!(ran.stderr.contains("no signed checkpoint"), "a key requires signatures:\n{}", ran.stderr);
    let refused = serve_starts(dir.path(), &["--signing-key", path_str(&key), "--verify-key", &public_key]);
    assert!(refused.expect_err("not yet signed").stderr.contains("no signed checkpoint"));

    // A node with the signing key (and no verify key, once) signs from its first op on; the
    // first signature covers the unsigned history before it.
    let signed = generate_signed(dir.path(), 20_000, 26, &key);
    let (ran, report) = replay_with(dir.path(), &["--from-genesis", "--verify-key", &public_key]);
    let report = report.unwrap_or_else(|| panic!("signed from here on:\n{}", ran.stderr));
    assert_eq!(report["state_hash"].as_str(), Some(signed.state_hash.as_str()));
    assert_eq!(report["trust"]["op_signed_last"].as_u64(), Some(signed.ops));
    let first_signed = records_from(dir.path(), unsigned.ops + 1, true)[0].body.len();
    assert_eq!(first_signed, 176, "the first record after the unsigned run is a signed checkpoint");
    // Without a key, the signed checkpoints are counted, not verified.
    let (_, report) = replay_with(dir.path(), &["--from-genesis"]);
    assert!(report.expect("replays")["trust"]["checkpoints_signed_unverified"].as_u64().unwrap() > 0);

    // A later run without the signing key appends unsigned checkpoints: the key refuses them.
    let mut args = generate_args(dir.path(), 40_000, 27, SNAPSHOT_OPS_NEVER);
    args.extend(["--verify-key".to_string(), public_key.clone()]);
    let ran = walletd(&args.iter().map(String::as_str).collect::<Vec<_>>()).expect_failure();
    assert!(ran.stderr.contains("without a signing key"), "{}", ran.stderr);
    generate_ok(dir.path(), 40_000, 27, SNAPSHOT_OPS_NEVER);
    let ran = replay_with(dir.path(), &["--audit", "--verify-key", &public_key]).0.expect_failure();
    let unsigned_after = format!("the checkpoint at op {} is unsigned, after the signed checkpoint", signed.ops + 65);
    assert!(ran.stderr.contains(&unsigned_after), "{}", ran.stderr);
}

#[test]
fn keys_are_refused_inside_a_data_directory_or_readable_by_others() {
    let (dir, keys) = (tempdir(), tempdir());
    generate_ok(dir.path(), 1_000, 28, SNAPSHOT_OPS_NEVER);
    let inside = dir.path().join("node.key");
    let ran = walletd(&["keygen", "--out", path_str(&inside)]).expect_failure();
    assert!(ran.stderr.contains("is a walletd data directory"), "{}", ran.stderr);
    assert!(!inside.exists());
    let (key, _) = keygen(keys.path(), "node.key");
    let ran = walletd(&["keygen", "--out", path_str(&key)]).expect_failure();
    assert!(ran.stderr.contains("must not exist yet"), "a key is never overwritten: {}", ran.stderr);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = serve_starts(dir.path(), &["--signing-key", path_str(&key)]).expect_err("readable by others");
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);
}
