//! The journal on real files: every backend round-trips across segment rotation; a flipped
//! byte is refused with a message naming segment, offset and op; a file cut short mid-record
//! recovers and reports; `archive_before` moves sealed segments and reads still span archive/
//! and live; and a child process SIGKILLed while committing loses no op it reported durable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walletd_journal::{
    truncate_at, FileStorage, Journal, JournalConfig, JournalError, Preallocate, Reader, RecordKind, WriteMode,
};

const SEGMENT_SIZE_BYTES: u64 = 16 * 1024;

/// The body of op `op`: deterministic, so a parent can check what a killed child wrote.
fn body_of(op: u64) -> Vec<u8> {
    let size = (op * 37 % 700) as usize;
    let seed = blake3::hash(&op.to_le_bytes());
    seed.as_bytes().iter().copied().cycle().take(size).collect()
}

fn timestamp_of(op: u64) -> u64 {
    1_000_000 + op / 3
}

fn config(dir: &Path) -> JournalConfig {
    JournalConfig { dir: dir.to_path_buf(), segment_size_bytes: SEGMENT_SIZE_BYTES }
}

fn storages() -> Vec<FileStorage> {
    let mut all = Vec::new();
    for write_mode in [WriteMode::Mmap, WriteMode::Pwrite] {
        for preallocate in [Preallocate::Fallocate, Preallocate::WriteZeros] {
            all.push(FileStorage { write_mode, preallocate });
        }
    }
    all
}

/// Appends ops `from..=to`, committing every `batch` records.
fn append_ops(journal: &mut Journal, from: u64, to: u64, batch: u64) {
    for op in from..=to {
        let kind = if op % 50 == 0 { RecordKind::Checkpoint } else { RecordKind::CommandBatch };
        journal.append(op, timestamp_of(op), kind, &body_of(op)).expect("append");
        if op % batch == 0 {
            assert_eq!(journal.commit().expect("commit"), op);
        }
    }
    assert_eq!(journal.commit().expect("commit"), to);
}

/// Reads every op from `from` and checks it against `body_of`; returns the last op read.
fn check_ops(storage: FileStorage, dir: &Path, from: u64) -> u64 {
    let mut reader = Reader::open(storage, dir, from).expect("reader");
    let mut op_expected = from;
    while let Some(record) = reader.next_record().expect("read") {
        assert_eq!(record.op, op_expected);
        assert_eq!(record.timestamp_ns, timestamp_of(record.op));
        assert_eq!(record.body, &body_of(record.op)[..], "op {}", record.op);
        op_expected += 1;
    }
    op_expected - 1
}

#[test]
fn every_backend_round_trips_across_segments() {
    for storage in storages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut journal, recovered) = Journal::open(storage, config(dir.path())).expect("open");
        assert_eq!(recovered.op_last, 0);
        append_ops(&mut journal, 1, 300, 7);
        assert!(journal.segments().len() > 5, "{storage:?} rotated");
        drop(journal);
        let (journal, recovered) = Journal::open(storage, config(dir.path())).expect("reopen");
        assert_eq!(recovered.op_last, 300, "{storage:?}");
        assert_eq!(recovered.torn_tail, None);
        assert_eq!(journal.op_durable(), 300);
        assert_eq!(check_ops(storage, dir.path(), 1), 300, "{storage:?}");
        assert_eq!(check_ops(storage, dir.path(), 123), 300, "{storage:?}");
    }
}

/// Segment path and offset of `op`.
fn position_of(dir: &Path, op: u64) -> (PathBuf, u64) {
    let mut reader = Reader::open(FileStorage::default(), dir, op).expect("reader");
    assert_eq!(reader.next_record().expect("read").expect("record").op, op);
    let (path, offset) = reader.position().expect("position");
    (path.to_path_buf(), offset)
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).expect("write segment");
}

#[test]
fn flipped_byte_in_the_middle_is_refused_then_truncated_by_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open_files(config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 120, 10);
    drop(journal);
    let (segment, offset) = position_of(dir.path(), 60);
    flip_byte(&segment, offset + 70);
    let error = Journal::open_files(config(dir.path())).err().expect("open refuses");
    let message = error.to_string();
    assert!(matches!(error, JournalError::Corrupt { op: 60, .. }), "{message}");
    assert!(message.contains(&segment.display().to_string()), "{message}");
    assert!(message.contains(&format!("byte offset {offset}")), "{message}");
    assert!(message.contains("op 60"), "{message}");
    assert!(message.contains("walletd journal truncate"), "{message}");

    let truncated = truncate_at(dir.path(), &segment, offset).expect("truncate");
    assert!(truncated.segment_copy.exists());
    assert!(truncated.segments_quarantined.iter().all(|p| p.exists()));
    let (journal, recovered) = Journal::open_files(config(dir.path())).expect("open after truncate");
    assert_eq!(recovered.op_last, 59);
    assert_eq!(journal.op_durable(), 59);
    assert_eq!(check_ops(FileStorage::default(), dir.path(), 1), 59);
}

#[test]
fn file_cut_mid_record_recovers_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open_files(config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 100, 10);
    drop(journal);
    let (segment, offset) = position_of(dir.path(), 100);
    let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("segment");
    file.set_len(offset + 64 + 3).expect("cut the file mid-record");
    drop(file);

    let (mut journal, recovered) = Journal::open_files(config(dir.path())).expect("recovers");
    assert_eq!(recovered.op_last, 99);
    assert_eq!(recovered.segments_regrown, vec![segment.clone()]);
    let torn = recovered.torn_tail.expect("torn tail reported");
    assert_eq!((torn.segment.as_path(), torn.offset, torn.op), (segment.as_path(), offset, 100));
    assert_eq!(torn.size_bytes, 64 + 3);
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), SEGMENT_SIZE_BYTES);
    // The journal carries on from op 100.
    append_ops(&mut journal, 100, 130, 5);
    drop(journal);
    assert_eq!(check_ops(FileStorage::default(), dir.path(), 1), 130);
}

#[test]
fn archive_moves_sealed_segments_and_reads_span_archive_and_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open_files(config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 200, 9);
    let segments_before = journal.segments();
    let moved = journal.archive_before(150).expect("archive");
    assert!(!moved.is_empty());
    let archive = dir.path().join("journal").join("archive");
    for path in &moved {
        assert!(path.starts_with(&archive) && path.exists());
        assert!(!segments_before[0].parent().unwrap().join(path.file_name().unwrap()).exists());
    }
    // Every archived segment holds only ops < 150; the first live one starts at or before 150.
    let (first_live, _) = position_of(dir.path(), 150);
    assert!(!first_live.starts_with(&archive));
    assert_eq!(journal.segments().len() + moved.len(), segments_before.len());
    assert!(journal.archive_before(150).expect("again").is_empty(), "idempotent");
    append_ops(&mut journal, 201, 220, 4);
    let mut reader = journal.reader(1).expect("reader");
    let mut count = 0;
    while let Some(record) = reader.next_record().expect("read") {
        count += 1;
        assert_eq!(record.body, &body_of(record.op)[..]);
    }
    assert_eq!(count, 220);
    drop(journal);
    let (_, recovered) = Journal::open_files(config(dir.path())).expect("reopen");
    assert_eq!(recovered.op_last, 220);
    assert!(recovered.op_first > 1 && recovered.op_first <= 150);
    assert_eq!(check_ops(FileStorage::default(), dir.path(), 1), 220);
    assert_eq!(check_ops(FileStorage::default(), dir.path(), 20), 220);
}

const CHILD_ENV: &str = "WALLETD_JOURNAL_CRASH_CHILD_DIR";
const CHILD_OPS_MAX: u64 = 200_000;

/// Not a test on its own: the body of the child process `kill_9_loses_no_durable_op` spawns.
/// Without the environment variable it returns at once.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let (mut journal, recovered) = Journal::open_files(config(Path::new(&dir))).expect("open");
    println!("recovered {}", recovered.op_last);
    let mut op = recovered.op_last + 1;
    let op_end = op + CHILD_OPS_MAX;
    while op < op_end {
        let batch = 1 + op % 13;
        for _ in 0..batch {
            journal.append(op, timestamp_of(op), RecordKind::CommandBatch, &body_of(op)).expect("append");
            op += 1;
        }
        println!("durable {}", journal.commit().expect("commit"));
    }
}

/// Runs the child until it has reported `durable_min` commits (or a deadline), SIGKILLs it, and
/// returns the highest op it reported durable.
fn child_run_and_kill(dir: &Path, durable_min: u32) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut op_durable = 0u64;
    let mut durable_count = 0u32;
    let mut lines = stdout.lines();
    for line in lines.by_ref() {
        let line = line.expect("child stdout");
        if let Some(op) = line.strip_prefix("durable ") {
            op_durable = op.parse().expect("op");
            durable_count += 1;
        }
        if durable_count >= durable_min || Instant::now() > deadline {
            break;
        }
    }
    child.kill().expect("SIGKILL the child");
    // Lines the child printed before it died were durable too; read them to EOF.
    for line in lines.map_while(Result::ok) {
        if let Some(op) = line.strip_prefix("durable ") {
            op_durable = op.parse().expect("op");
        }
    }
    child.wait().expect("reap child");
    op_durable
}

#[test]
fn kill_9_loses_no_durable_op() {
    let base = std::env::var_os("WALLETD_TEST_TMPDIR").map(PathBuf::from);
    let dir = match base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let mut op_durable_max = 0;
    for (round, durable_min) in [40u32, 150, 400].into_iter().enumerate() {
        let op_durable = child_run_and_kill(dir.path(), durable_min);
        assert!(op_durable >= op_durable_max, "round {round}: durable went backwards");
        op_durable_max = op_durable;
        let (journal, recovered) = Journal::open_files(config(dir.path())).expect("recover");
        assert!(
            recovered.op_last >= op_durable,
            "round {round}: reported durable {op_durable}, recovered only {}",
            recovered.op_last
        );
        assert_eq!(journal.op_durable(), recovered.op_last);
        eprintln!(
            "kill -9 round {round}: child reported {op_durable} durable, recovered {} (torn tail: {:?})",
            recovered.op_last,
            recovered.torn_tail.as_ref().map(|t| (t.offset, t.size_bytes))
        );
        drop(journal);
        assert_eq!(check_ops(FileStorage::default(), dir.path(), 1), recovered.op_last);
    }
    assert!(op_durable_max > 0, "the child made progress");
}

#[test]
fn a_follower_reads_new_durable_ops_across_new_segments() {
    for storage in storages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut journal, _) = Journal::open(storage, config(dir.path())).expect("open");
        append_ops(&mut journal, 1, 20, 5);
        let mut follower = Reader::open_until(storage, dir.path(), 1, journal.op_durable()).expect("follower");
        let mut op_read = 0;
        for round in 0..4u64 {
            while let Some(record) = follower.next_record().expect("follow") {
                assert_eq!(record.op, op_read + 1);
                assert_eq!(record.body, &body_of(record.op)[..]);
                op_read = record.op;
            }
            assert_eq!(op_read, journal.op_durable(), "round {round}: read up to what is durable");
            let segments_before = journal.segments().len();
            // Enough to rotate into new segments the follower has not seen.
            append_ops(&mut journal, op_read + 1, op_read + 60, 7);
            assert!(journal.segments().len() > segments_before, "the journal rotated");
            follower.follow(journal.op_durable());
        }
        while let Some(record) = follower.next_record().expect("follow") {
            op_read = record.op;
        }
        assert_eq!(op_read, 260);
    }
}

#[test]
fn a_reader_follows_segments_archived_while_it_reads() {
    let storage = FileStorage::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open(storage, config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 200, 10);
    assert!(journal.segments().len() >= 4, "several segments");
    let mut reader = Reader::open(storage, dir.path(), 1).expect("reader");
    let first = reader.next_record().expect("read").expect("a record");
    assert_eq!(first.op, 1);
    // A drill is reading while the node archives: the segments it will need next move away.
    let archived = journal.archive_before(190).expect("archive");
    assert!(archived.len() >= 2, "segments were archived under the reader");
    let mut op_last = 1;
    while let Some(record) = reader.next_record().expect("the reader follows them into archive/") {
        assert_eq!(record.op, op_last + 1);
        assert_eq!(record.body, &body_of(record.op)[..]);
        op_last = record.op;
    }
    assert_eq!(op_last, 200);
}

/// A follower that has not yet listed a segment which the node creates *and archives* before
/// the follower gets there (small segments, fast snapshots) finds it in archive/, instead of
/// jumping to the next live segment and a gap in the ops.
#[test]
fn a_follower_finds_a_segment_created_and_archived_before_it_listed_it() {
    let storage = FileStorage::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open(storage, config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 20, 5);
    let mut follower = Reader::open_until(storage, dir.path(), 1, journal.op_durable()).expect("follower");
    let mut op_read = 0;
    while let Some(record) = follower.next_record().expect("follow") {
        op_read = record.op;
    }
    assert_eq!(op_read, 20);
    let segments_before = journal.segments().len();
    append_ops(&mut journal, 21, 260, 7);
    assert!(journal.segments().len() >= segments_before + 3, "the journal rotated several times");
    // Everything but the active segment moves to archive/, the ones the follower never saw too.
    let archived = journal.archive_before(journal.op_durable()).expect("archive");
    assert!(archived.len() >= 3, "segments the follower has not listed were archived: {archived:?}");
    follower.follow(journal.op_durable());
    while let Some(record) = follower.next_record().expect("the follower reads on through archive/") {
        assert_eq!(record.op, op_read + 1, "no op skipped");
        assert_eq!(record.body, &body_of(record.op)[..]);
        op_read = record.op;
    }
    assert_eq!(op_read, 260);
}

/// The drill's rule is recovery's rule: a damaged record in the middle of the last segment,
/// followed by valid ones, is corruption for a reader too, not the end of the journal.
#[test]
fn a_reader_refuses_a_damaged_record_in_the_last_segment_like_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open_files(config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 120, 10);
    let last_segment = journal.segments().last().expect("a segment").clone();
    drop(journal);
    let (_, offset_last) = position_of(dir.path(), 120);
    // The op two before the end sits in the last segment, with valid records after it.
    let (segment, offset) = position_of(dir.path(), 118);
    assert_eq!(segment, last_segment, "the damaged record is in the last live segment");
    assert!(offset < offset_last);
    flip_byte(&segment, offset + 70);

    let mut reader = Reader::open(FileStorage::default(), dir.path(), 1).expect("reader");
    let error = loop {
        match reader.next_record() {
            Ok(Some(record)) => assert!(record.op < 118),
            Ok(None) => panic!("the reader took a damaged record for the end of the journal"),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, JournalError::Corrupt { op: 118, .. }), "{error}");
    assert!(error.to_string().contains(&format!("byte offset {offset}")), "{error}");
}

/// A record a crash cut short, with nothing after it, is the end of the journal; the reader
/// says where it ended and that a torn tail follows.
#[test]
fn a_reader_reports_where_the_journal_ends_and_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = Journal::open_files(config(dir.path())).expect("open");
    append_ops(&mut journal, 1, 100, 10);
    drop(journal);
    let mut reader = Reader::open(FileStorage::default(), dir.path(), 1).expect("reader");
    while reader.next_record().expect("read").is_some() {}
    assert_eq!(reader.end().expect("at the end").op_last, 100);
    assert_eq!(reader.end().expect("at the end").torn_tail, None);

    let (segment, offset) = position_of(dir.path(), 100);
    flip_byte(&segment, offset + 70);
    let mut reader = Reader::open(FileStorage::default(), dir.path(), 1).expect("reader");
    while reader.next_record().expect("a torn tail is not an error").is_some() {}
    let end = reader.end().expect("at the end");
    assert_eq!(end.op_last, 99);
    assert_eq!(end.torn_tail, Some((segment, offset)));
}
