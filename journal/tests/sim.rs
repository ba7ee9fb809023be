//! Deterministic fault simulation on `SimStorage`: one seed drives appends, commits, archiving,
//! injected faults (ENOSPC on write or create, EIO on sync), crashes with each crash mode, and
//! bit flips in durable data. After every restart the journal must hold every op a commit
//! reported durable, byte for byte, and nothing past a gap; a flipped bit with valid data after
//! it must be refused as `Corrupt` naming the right segment, offset and op.
//!
//! A failure prints its seed. Rerun one seed with WALLETD_JOURNAL_SIM_SEED=n, or more seeds
//! with WALLETD_JOURNAL_SIM_SEEDS=n (default 5000, under ten seconds in a debug build).

use std::path::{Path, PathBuf};

use walletd_journal::{
    truncate_at_with, Journal, JournalConfig, JournalError, Reader, RecordKind, SimCrash, SimFault, SimRng, SimStorage,
};

const DIR: &str = "/sim/data";
const ROUNDS: u32 = 4;
const STEPS_MAX: u64 = 60;

/// What was appended: index `op - 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    timestamp_ns: u64,
    kind: RecordKind,
    body: Vec<u8>,
}

/// What the seeds exercised, so a quiet pass can be told from a vacuous one.
#[derive(Default, Debug)]
struct Stats {
    torn_tails: u64,
    errors_injected: u64,
    archived_segments: u64,
    rotations_seen: u64,
    flips_live: u64,
    flips_archived: u64,
    ops_total: u64,
}

static STATS: std::sync::Mutex<Option<Stats>> = std::sync::Mutex::new(None);

fn stats(f: impl FnOnce(&mut Stats)) {
    f(STATS.lock().unwrap().get_or_insert_with(Stats::default));
}

struct Run {
    rng: SimRng,
    sim: SimStorage,
    config: JournalConfig,
    model: Vec<Entry>,
    /// The highest op any commit (or recovery) reported durable.
    op_durable: u64,
}

/// Prints the seed if the test panics while it is alive.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("journal sim failed: rerun with WALLETD_JOURNAL_SIM_SEED={}", self.0);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().expect("a number"))
}

#[test]
fn sim_seeds() {
    let seeds: Vec<u64> = match env_u64("WALLETD_JOURNAL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("WALLETD_JOURNAL_SIM_SEEDS").unwrap_or(5000)).collect(),
    };
    let mut corrupt_checked = 0u64;
    for &seed in &seeds {
        let _guard = SeedGuard(seed);
        corrupt_checked += u64::from(sim_seed(seed));
    }
    let stats = STATS.lock().unwrap().take().unwrap_or_default();
    eprintln!("journal sim: {} seeds, {stats:?}", seeds.len());
    // Make sure each path was really exercised.
    if seeds.len() >= 100 {
        assert!(corrupt_checked > seeds.len() as u64 / 4);
        assert!(stats.torn_tails > 0 && stats.errors_injected > 0 && stats.archived_segments > 0);
        assert!(stats.flips_live > 0 && stats.flips_archived > 0);
    }
}

/// One seed: several rounds of work-crash-recover, then a bit flip. Returns whether the flip
/// was checked.
fn sim_seed(seed: u64) -> bool {
    let mut rng = SimRng::new(seed);
    let segment_size_bytes = [4096, 8192, 16384][rng.below(3) as usize];
    let mut run = Run {
        rng,
        sim: SimStorage::new(seed ^ 0x5eed),
        config: JournalConfig { dir: PathBuf::from(DIR), segment_size_bytes },
        model: Vec::new(),
        op_durable: 0,
    };
    for _ in 0..ROUNDS {
        let mut journal = run_reopen(&mut run);
        run_fault_maybe(&mut run);
        run_work(&mut run, &mut journal);
        drop(journal);
        let mode = [SimCrash::LoseUnsynced, SimCrash::TornLastWrite, SimCrash::TornPrefix];
        run.sim.crash(mode[run.rng.below(3) as usize]);
    }
    let journal = run_reopen(&mut run);
    drop(journal);
    stats(|s| s.ops_total += run.model.len() as u64);
    run_flip_and_check(&mut run)
}

/// Opens after a crash and checks the journal against the model.
fn run_reopen(run: &mut Run) -> Journal<SimStorage> {
    let (journal, recovered) = Journal::open(run.sim.clone(), run.config.clone()).expect("recovery after a crash");
    assert!(
        recovered.op_last >= run.op_durable,
        "lost durable ops: recovered to {} but {} was reported durable",
        recovered.op_last,
        run.op_durable
    );
    assert!(recovered.op_last <= run.model.len() as u64, "recovered ops never appended");
    stats(|s| s.rotations_seen += recovered.segments.len() as u64 - 1);
    if let Some(torn) = &recovered.torn_tail {
        stats(|s| s.torn_tails += 1);
        assert_eq!(torn.op, recovered.op_last + 1);
        assert!(torn.op > run.op_durable, "a durable op was truncated as torn");
    }
    run.model.truncate(recovered.op_last as usize);
    run.op_durable = recovered.op_last;
    assert_eq!(journal.op_durable(), recovered.op_last);
    assert_eq!(journal.op_appended(), recovered.op_last);
    model_check(run, Path::new(DIR));
    journal
}

/// Reads the whole journal (archive and live) and compares it to the model.
fn model_check(run: &Run, dir: &Path) {
    let mut reader = Reader::open(run.sim.clone(), dir, 1).expect("reader opens");
    let mut op = 0u64;
    while let Some(record) = reader.next_record().expect("journal reads back") {
        op += 1;
        assert_eq!(record.op, op);
        let entry = &run.model[(op - 1) as usize];
        assert_eq!(record.timestamp_ns, entry.timestamp_ns, "op {op}");
        assert_eq!(record.kind, entry.kind, "op {op}");
        assert_eq!(record.body, &entry.body[..], "op {op}");
    }
    assert_eq!(op, run.model.len() as u64, "journal is shorter than the model");
}

fn run_fault_maybe(run: &mut Run) {
    if run.rng.chance(40) {
        let faults = [SimFault::WriteNoSpace, SimFault::CreateNoSpace, SimFault::SyncIo];
        let fault = faults[run.rng.below(3) as usize];
        let calls_ok = run.rng.below(40) as u32;
        run.sim.fail_after(fault, calls_ok);
    }
}

fn body_random(rng: &mut SimRng) -> Vec<u8> {
    let size = match rng.below(10) {
        0 => 0,
        1 => rng.below(3000),
        _ => rng.below(300),
    };
    (0..size).map(|_| rng.next_u64() as u8).collect()
}

/// Random appends, commits and archiving, until the step budget or the first error.
fn run_work(run: &mut Run, journal: &mut Journal<SimStorage>) {
    let steps = run.rng.below(STEPS_MAX);
    for _ in 0..steps {
        let result = match run.rng.below(100) {
            0..=69 => run_append(run, journal),
            70..=94 => journal.commit().map(|op| {
                assert_eq!(op, run.model.len() as u64, "commit covers every append");
                run.op_durable = op;
            }),
            _ => {
                let op = run.rng.below(run.model.len() as u64 + 2);
                journal.archive_before(op).map(|moved| {
                    stats(|s| s.archived_segments += moved.len() as u64);
                })
            }
        };
        if let Err(error) = result {
            stats(|s| s.errors_injected += 1);
            error_check(journal, &error);
            return;
        }
        assert!(journal.op_durable() >= run.op_durable);
    }
}

fn run_append(run: &mut Run, journal: &mut Journal<SimStorage>) -> Result<(), JournalError> {
    let op = run.model.len() as u64 + 1;
    let timestamp_ns = journal.timestamp_ns_last() + run.rng.below(3);
    let kind = if run.rng.chance(10) { RecordKind::Checkpoint } else { RecordKind::CommandBatch };
    let body = body_random(&mut run.rng);
    let body_size_max = journal.body_size_max_bytes() as usize;
    match journal.append(op, timestamp_ns, kind, &body) {
        Err(JournalError::RecordTooLarge { .. }) => {
            assert!(body.len() > body_size_max);
            assert!(!journal.is_poisoned(), "a too-large record is refused, not fatal");
            Ok(())
        }
        Err(error) => {
            // Not acknowledged, but some of it may have reached the disk (it may even be
            // complete): after the crash it may or may not be there, and if it is, it is this.
            run.model.push(Entry { timestamp_ns, kind, body });
            Err(error)
        }
        Ok(()) => {
            run.model.push(Entry { timestamp_ns, kind, body });
            assert_eq!(journal.op_appended(), op);
            Ok(())
        }
    }
}

/// An injected fault surfaced: it must be fail-stop and the journal must refuse further use.
fn error_check(journal: &mut Journal<SimStorage>, error: &JournalError) {
    assert!(error.is_fail_stop(), "unexpected error: {error}");
    assert!(journal.is_poisoned(), "journal must poison after: {error}");
    assert!(matches!(journal.commit(), Err(JournalError::Poisoned)));
    let op = journal.op_appended() + 1;
    let appended = journal.append(op, journal.timestamp_ns_last(), RecordKind::CommandBatch, b"x");
    assert!(matches!(appended, Err(JournalError::Poisoned)));
}

/// Flips one bit in a durable record that has a durable successor; open (or, for an archived
/// segment, reading) must refuse with that record's segment, offset and op. Then the operator's
/// `truncate_at` must bring the journal back, ending just before that op.
fn run_flip_and_check(run: &mut Run) -> bool {
    if run.op_durable < 2 || run.rng.chance(10) {
        return false;
    }
    let op = 1 + run.rng.below(run.op_durable - 1);
    let mut reader = Reader::open(run.sim.clone(), Path::new(DIR), op).expect("reader");
    let record = reader.next_record().expect("read").expect("durable record");
    assert_eq!(record.op, op);
    let size_bytes = 64 + record.body.len() as u64;
    let (segment, offset) = reader.position().map(|(p, o)| (p.to_path_buf(), o)).expect("position");
    drop(reader);
    run.sim.flip_bit(&segment, offset * 8 + run.rng.below(size_bytes * 8));
    let error = match Journal::open(run.sim.clone(), run.config.clone()) {
        Err(error) => error,
        Ok(_) => {
            assert!(segment.starts_with(Path::new(DIR).join("journal/archive")), "flip unnoticed");
            let mut reader = Reader::open(run.sim.clone(), Path::new(DIR), 1).expect("reader");
            loop {
                match reader.next_record() {
                    Err(error) => break error,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("archived flip at op {op} read back without error"),
                }
            }
        }
    };
    corrupt_check(&error, &segment, offset, op);
    let archived = segment.starts_with(Path::new(DIR).join("journal/archive"));
    stats(|s| if archived { s.flips_archived += 1 } else { s.flips_live += 1 });
    if !segment.starts_with(Path::new(DIR).join("journal/archive")) {
        truncate_and_reopen(run, &segment, offset, op);
    }
    true
}

fn corrupt_check(error: &JournalError, segment: &Path, offset: u64, op: u64) {
    match error {
        JournalError::Corrupt { segment: s, offset: o, op: p, .. } => {
            assert_eq!((s.as_path(), *o, *p), (segment, offset, op), "{error}");
        }
        other => panic!("expected Corrupt at op {op}, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&segment.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(message.contains(&format!("op {op}")), "{message}");
    assert!(message.contains("truncate"), "{message}");
}

fn truncate_and_reopen(run: &mut Run, segment: &Path, offset: u64, op: u64) {
    let truncated = truncate_at_with(&run.sim, Path::new(DIR), segment, offset).expect("truncate");
    assert!(run.sim.file_bytes(&truncated.segment_copy).is_some());
    let (_journal, recovered) = Journal::open(run.sim.clone(), run.config.clone()).expect("open after truncate");
    assert_eq!(recovered.op_last, op - 1);
    assert!(recovered.torn_tail.is_none());
    run.model.truncate((op - 1) as usize);
    run.op_durable = op - 1;
    model_check(run, Path::new(DIR));
}

#[test]
fn sync_failure_poisons_and_loses_nothing_durable() {
    let sim = SimStorage::new(1);
    let config = JournalConfig { dir: PathBuf::from(DIR), segment_size_bytes: 8192 };
    let (mut journal, _) = Journal::open(sim.clone(), config.clone()).expect("open");
    journal.append(1, 10, RecordKind::CommandBatch, b"one").expect("append");
    assert_eq!(journal.commit().expect("commit"), 1);
    journal.append(2, 11, RecordKind::CommandBatch, b"two").expect("append");
    sim.fail_after(SimFault::SyncIo, 0);
    let error = journal.commit().expect_err("sync fails");
    assert!(matches!(error, JournalError::SyncFailed { .. }), "{error}");
    assert!(error.to_string().contains("fail-stop"));
    assert!(matches!(journal.commit(), Err(JournalError::Poisoned)));
    assert_eq!(journal.op_durable(), 1);
    sim.crash(SimCrash::LoseUnsynced);
    let (_, recovered) = Journal::open(sim, config).expect("reopen");
    assert_eq!(recovered.op_last, 1);
}

#[test]
fn torn_write_is_truncated_and_reported() {
    let config = JournalConfig { dir: PathBuf::from(DIR), segment_size_bytes: 8192 };
    let mut torn_seen = 0;
    for seed in 0..20 {
        let sim = SimStorage::new(seed);
        let (mut journal, _) = Journal::open(sim.clone(), config.clone()).expect("open");
        journal.append(1, 10, RecordKind::CommandBatch, &[7u8; 100]).expect("append");
        journal.commit().expect("commit");
        journal.append(2, 10, RecordKind::CommandBatch, &[8u8; 1000]).expect("append");
        drop(journal);
        // The header of op 2 survives; a random prefix of its body does.
        let kept_bytes = sim.crash(SimCrash::TornLastWrite);
        let (journal, recovered) = Journal::open(sim, config.clone()).expect("reopen");
        if kept_bytes == 64 + 1000 {
            assert_eq!(recovered.op_last, 2);
            assert!(recovered.torn_tail.is_none());
            continue;
        }
        torn_seen += 1;
        assert_eq!(recovered.op_last, 1);
        assert_eq!(journal.op_durable(), 1);
        let torn = recovered.torn_tail.expect("torn tail reported");
        assert_eq!(torn.op, 2);
        assert_eq!(torn.offset, 64 + 168, "right after op 1 (64-byte header + 168 bytes)");
        assert!(torn.size_bytes >= 64);
    }
    assert!(torn_seen > 10);
}

#[test]
fn record_too_large_names_the_fix() {
    let sim = SimStorage::new(3);
    let config = JournalConfig { dir: PathBuf::from(DIR), segment_size_bytes: 4096 };
    let (mut journal, _) = Journal::open(sim, config).expect("open");
    let body = vec![0u8; 4096];
    let error = journal.append(1, 0, RecordKind::CommandBatch, &body).expect_err("too large");
    assert!(error.to_string().contains("segment_size_bytes"), "{error}");
    assert!(!error.is_fail_stop());
    journal.append(1, 0, RecordKind::CommandBatch, &body[..1000]).expect("fits");
    assert_eq!(journal.commit().expect("commit"), 1);
}

/// A journal of `count` ops with 4 KiB segments, all committed; returns its storage.
fn journal_of(seed: u64, count: u64) -> (SimStorage, JournalConfig) {
    let sim = SimStorage::new(seed);
    let config = JournalConfig { dir: PathBuf::from(DIR), segment_size_bytes: 4096 };
    let (mut journal, _) = Journal::open(sim.clone(), config.clone()).expect("open");
    for op in 1..=count {
        journal.append(op, op, RecordKind::CommandBatch, &[op as u8; 200]).expect("append");
    }
    assert_eq!(journal.commit().expect("commit"), count);
    assert!(journal.segments().len() >= 3);
    (sim, config)
}

#[test]
fn flipped_segment_header_is_corruption() {
    let (sim, config) = journal_of(4, 60);
    let segments = Journal::open(sim.clone(), config.clone()).expect("open").0.segments();
    sim.flip_bit(&segments[1], 8 * 8 + 3);
    let error = Journal::open(sim, config).err().expect("refused");
    assert!(matches!(&error, JournalError::Corrupt { offset: 0, segment, .. } if *segment == segments[1]));
    assert!(error.to_string().contains("in the segment header"), "{error}");
}

#[test]
fn missing_middle_segment_is_corruption() {
    use walletd_journal::Storage;
    let (sim, config) = journal_of(5, 60);
    let segments = Journal::open(sim.clone(), config.clone()).expect("open").0.segments();
    sim.remove_file(&segments[1]).expect("remove");
    let error = Journal::open(sim, config).err().expect("refused");
    match error {
        JournalError::Corrupt { segment, reason, .. } => {
            assert_eq!(segment, segments[0], "reported where the missing ops should be");
            assert!(matches!(reason, walletd_journal::RecordInvalid::Op { .. }));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn junk_in_a_sealed_segments_unused_tail_is_harmless() {
    let (sim, config) = journal_of(6, 60);
    let segments = Journal::open(sim.clone(), config.clone()).expect("open").0.segments();
    // The last 8 bytes of a sealed 4 KiB segment are never written (records do not fill it).
    sim.flip_bit(&segments[0], (4096 - 1) * 8);
    let (_, recovered) = Journal::open(sim.clone(), config).expect("opens");
    assert_eq!(recovered.op_last, 60);
    assert_eq!(recovered.torn_tail, None);
    let mut reader = Reader::open(sim, Path::new(DIR), 1).expect("reader");
    let mut count = 0;
    while reader.next_record().expect("reads").is_some() {
        count += 1;
    }
    assert_eq!(count, 60);
}
