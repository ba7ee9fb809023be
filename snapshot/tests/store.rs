//! The snapshot store on real files: a save loads back to the same state and header; only the
//! newest `kept` survive; leftovers and foreign names are ignored; and every kind of damage (a
//! flipped byte anywhere, a cut or grown file, a name that disagrees with the header, an
//! inconsistent image under a valid checksum) is refused as `Corrupt`, so that
//! `snapshot_load_newest` falls back to the next older snapshot and names the damaged one.

use std::fs;
use std::path::{Path, PathBuf};

use walletd_core::{Account, AccountId, Amount, Batch, Config, Ledger, Output, Transfer, TransferId};
use walletd_snapshot::{
    snapshot_file_name, snapshot_file_op, snapshot_load, snapshot_load_newest, snapshot_save, snapshots_list,
    SnapshotError, SnapshotHeader, SNAPSHOT_CHECKSUM_SIZE_BYTES, SNAPSHOT_HEADER_SIZE_BYTES,
};

/// 2026-11-22T00:00:00Z in nanoseconds, as in the core's tests.
const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;
const ACCOUNTS_COUNT: u128 = 16;

/// A ledger driven like the writer drives it: timestamps strictly increase, every event is
/// checked to be created (code 0), so that each batch really changes the state.
struct Driven {
    ledger: Ledger,
    output: Output,
    now_ns: u64,
    transfers_sent: u128,
}

impl Driven {
    fn new() -> Driven {
        let ledger = Ledger::new(Config::small()).expect("small config is valid");
        let output = Output::new(ledger.config());
        let mut driven = Driven { ledger, output, now_ns: EPOCH_NS, transfers_sent: 0 };
        let accounts: Vec<Account> = (1..=ACCOUNTS_COUNT)
            .map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() })
            .collect();
        driven.apply(Batch::CreateAccounts(&accounts));
        assert_eq!(driven.ledger.accounts_count(), ACCOUNTS_COUNT as u32);
        driven
    }

    fn apply(&mut self, batch: Batch<'_>) {
        self.now_ns = (self.now_ns + NS_PER_MS).max(self.ledger.timestamp_next_min());
        self.ledger.apply(self.now_ns, batch, &mut self.output);
        for index in 0..batch.len() as u32 {
            assert_eq!(self.output.code_of(index), 0, "event {index} of the batch was not created");
        }
        assert!(self.ledger.timestamp_last() >= self.now_ns);
    }

    /// `count` transfers between the accounts, all different from earlier ones.
    fn transfers(&mut self, count: u128) {
        let time_ms = self.now_ns / NS_PER_MS;
        let transfers: Vec<Transfer> = (0..count)
            .map(|index| {
                let serial = self.transfers_sent + index;
                Transfer {
                    id: TransferId::from_parts(time_ms, serial + 1),
                    debit_account_id: AccountId(1 + serial % ACCOUNTS_COUNT),
                    credit_account_id: AccountId(1 + (serial * 7 + 3) % ACCOUNTS_COUNT),
                    amount: Amount(1 + serial % 97),
                    ledger: 1,
                    code: 1,
                    ..Transfer::default()
                }
            })
            .filter(|transfer| transfer.debit_account_id != transfer.credit_account_id)
            .collect();
        self.transfers_sent += count;
        let created_before = self.ledger.transfers_created();
        self.apply(Batch::CreateTransfers(&transfers));
        assert_eq!(self.ledger.transfers_created(), created_before + transfers.len() as u64);
    }
}

fn tempdir() -> tempfile::TempDir {
    let base = Path::new("/work/tmp");
    let builder = tempfile::Builder::new().prefix("walletd-snapshot-").to_owned();
    if base.is_dir() { builder.tempdir_in(base) } else { builder.tempdir() }.expect("create a temporary directory")
}

/// A journal checksum that differs per op, as the journal's would.
fn journal_checksum_of(op: u64) -> u128 {
    0x5eed_0000_0000_0000_0000_0000_0000_0000 | (u128::from(op) * 0x1_0001)
}

fn image_of(ledger: &Ledger) -> Vec<u8> {
    let mut image = Vec::new();
    ledger.image_write(&mut |bytes| image.extend_from_slice(bytes));
    image
}

fn ops_listed(dir: &Path) -> Vec<u64> {
    snapshots_list(dir).expect("list snapshots").into_iter().map(|(op, _)| op).collect()
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).expect("read snapshot");
    assert!(offset < bytes.len(), "offset {offset} is inside the {}-byte file", bytes.len());
    bytes[offset] ^= 0x40;
    fs::write(path, bytes).expect("write snapshot");
}

fn corrupt_reason(result: Result<walletd_snapshot::Loaded, SnapshotError>) -> (PathBuf, String) {
    match result {
        Err(SnapshotError::Corrupt { path, reason }) => (path, reason),
        Err(error @ SnapshotError::Io { .. }) => panic!("expected Corrupt, got an I/O error: {error}"),
        Ok(loaded) => panic!("expected Corrupt, but the snapshot at op {} loaded", loaded.header.op),
    }
}

#[test]
fn a_saved_snapshot_loads_back_with_the_same_state_and_header() {
    let dir = tempdir();
    let mut driven = Driven::new();
    driven.transfers(300);
    let saved = snapshot_save(dir.path(), 7, journal_checksum_of(7), &driven.ledger, 2).expect("save");
    assert_eq!(saved.path, dir.path().join(snapshot_file_name(7)));
    assert!(saved.removed.is_empty());
    assert_eq!(saved.size_bytes, fs::metadata(&saved.path).expect("snapshot file").len());
    let expected = SnapshotHeader {
        op: 7,
        timestamp_ns: driven.ledger.timestamp_last(),
        state_hash: driven.ledger.state_hash(),
        journal_checksum: journal_checksum_of(7),
        image_size_bytes: driven.ledger.image_header().image_size_bytes() as u64,
    };
    assert_eq!(saved.header, expected);
    assert_eq!(
        saved.size_bytes,
        (SNAPSHOT_HEADER_SIZE_BYTES + SNAPSHOT_CHECKSUM_SIZE_BYTES) as u64 + expected.image_size_bytes
    );

    let loaded = snapshot_load(&saved.path).expect("load");
    assert_eq!(loaded.header, expected);
    assert_eq!(loaded.path, saved.path);
    assert_eq!(loaded.ledger.state_hash(), driven.ledger.state_hash());
    assert_eq!(loaded.ledger.state_hash_recompute(), driven.ledger.state_hash());
    assert_eq!(loaded.ledger.transfers_created(), driven.ledger.transfers_created());
    assert_eq!(image_of(&loaded.ledger), image_of(&driven.ledger), "the images are byte-identical");
    loaded.ledger.verify();

    // The loaded ledger carries on exactly as the original does.
    let output = Output::new(loaded.ledger.config());
    let mut restored =
        Driven { ledger: loaded.ledger, output, now_ns: driven.now_ns, transfers_sent: driven.transfers_sent };
    driven.transfers(50);
    restored.transfers(50);
    assert_eq!(restored.ledger.state_hash(), driven.ledger.state_hash());
    assert_ne!(restored.ledger.state_hash(), expected.state_hash, "the batch changed the state");
}

#[test]
fn only_the_newest_kept_snapshots_remain() {
    let dir = tempdir();
    let mut driven = Driven::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    for op in [3u64, 9, 10, 40, 41] {
        driven.transfers(20);
        let saved = snapshot_save(dir.path(), op, journal_checksum_of(op), &driven.ledger, 2).expect("save");
        paths.push(saved.path.clone());
        let expected_removed: Vec<PathBuf> =
            if paths.len() > 2 { vec![paths[paths.len() - 3].clone()] } else { vec![] };
        assert_eq!(saved.removed, expected_removed, "after saving op {op}");
        assert!(expected_removed.iter().all(|path| !path.exists()), "after saving op {op}");
    }
    assert_eq!(ops_listed(dir.path()), vec![41, 40]);
    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    assert!(skipped.is_empty());
    let loaded = loaded.expect("a snapshot");
    assert_eq!(loaded.header.op, 41);
    assert_eq!(loaded.ledger.state_hash(), driven.ledger.state_hash());

    // Keeping one removes the other; an older op saved late is itself the one pruned.
    driven.transfers(5);
    let saved = snapshot_save(dir.path(), 42, journal_checksum_of(42), &driven.ledger, 1).expect("save");
    assert_eq!(saved.removed.len(), 2);
    assert_eq!(ops_listed(dir.path()), vec![42]);
    let saved = snapshot_save(dir.path(), 5, journal_checksum_of(5), &driven.ledger, 1).expect("save");
    assert_eq!(saved.removed, vec![dir.path().join(snapshot_file_name(5))]);
    assert_eq!(ops_listed(dir.path()), vec![42]);
}

#[test]
#[should_panic(expected = "keep at least one snapshot")]
fn keeping_no_snapshot_is_refused() {
    let dir = tempdir();
    let driven = Driven::new();
    let _ = snapshot_save(dir.path(), 1, journal_checksum_of(1), &driven.ledger, 0);
}

#[test]
fn leftovers_and_foreign_names_are_ignored() {
    let dir = tempdir();
    assert!(ops_listed(&dir.path().join("missing")).is_empty(), "a missing directory holds no snapshot");
    let (loaded, skipped) = snapshot_load_newest(&dir.path().join("missing")).expect("missing directory");
    assert!(loaded.is_none());
    assert!(skipped.is_empty());

    let mut driven = Driven::new();
    driven.transfers(30);
    let saved = snapshot_save(dir.path(), 10, journal_checksum_of(10), &driven.ledger, 2).expect("save");
    // A save that a crash interrupted, at a newer op: half a file under the temporary name.
    let bytes = fs::read(&saved.path).expect("read snapshot");
    let leftover = dir.path().join(snapshot_file_name(20)).with_extension("tmp");
    fs::write(&leftover, &bytes[..bytes.len() / 2]).expect("write leftover");
    // Names that are not snapshots, or not in the 20-digit form.
    for name in [
        "snapshot-20.snap",
        "snapshot-00000000000000000030.snap.bak",
        "notes.txt",
        "snapshot-0000000000000000003x.snap",
    ] {
        fs::write(dir.path().join(name), b"not a snapshot").expect("write foreign file");
    }
    assert_eq!(ops_listed(dir.path()), vec![10]);
    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    assert!(skipped.is_empty(), "ignored, not skipped: {skipped:?}");
    assert_eq!(loaded.expect("the saved snapshot").header.op, 10);

    // Saving at the interrupted op again replaces the leftover.
    driven.transfers(30);
    let saved = snapshot_save(dir.path(), 20, journal_checksum_of(20), &driven.ledger, 2).expect("save");
    assert!(!leftover.exists(), "the temporary was renamed into place");
    assert_eq!(snapshot_load(&saved.path).expect("load").ledger.state_hash(), driven.ledger.state_hash());
    assert_eq!(ops_listed(dir.path()), vec![20, 10]);
    assert!(dir.path().join("notes.txt").exists(), "pruning leaves foreign files alone");
}

#[test]
fn file_names_carry_the_op_in_twenty_digits() {
    assert_eq!(snapshot_file_name(42), "snapshot-00000000000000000042.snap");
    for op in [0, 1, 42, u64::MAX] {
        assert_eq!(snapshot_file_op(&snapshot_file_name(op)), Some(op));
    }
    for name in [
        "snapshot-42.snap",
        "snapshot-00000000000000000042.tmp",
        "snapshot-000000000000000000042.snap",
        "snapshot-0000000000000000004x.snap",
        "snapshot-99999999999999999999.snap",
        "xsnapshot-00000000000000000042.snap",
    ] {
        assert_eq!(snapshot_file_op(name), None, "{name}");
    }
}

/// Saves two snapshots of different states, at ops 10 and 20; returns the two ledgers' hashes.
fn two_snapshots(dir: &Path) -> (u128, u128) {
    let mut driven = Driven::new();
    driven.transfers(100);
    let older = snapshot_save(dir, 10, journal_checksum_of(10), &driven.ledger, 2).expect("save older");
    driven.transfers(100);
    let newer = snapshot_save(dir, 20, journal_checksum_of(20), &driven.ledger, 2).expect("save newer");
    assert_ne!(older.header.state_hash, newer.header.state_hash);
    (older.header.state_hash, newer.header.state_hash)
}

#[test]
fn a_flipped_byte_in_the_newest_falls_back_to_the_older_and_names_the_damaged_one() {
    let dir = tempdir();
    let (older_hash, _) = two_snapshots(dir.path());
    let newest = dir.path().join(snapshot_file_name(20));
    let size = fs::metadata(&newest).expect("newest").len() as usize;
    flip_byte(&newest, size / 2);

    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    let loaded = loaded.expect("the older snapshot");
    assert_eq!(loaded.header.op, 10);
    assert_eq!(loaded.header.journal_checksum, journal_checksum_of(10));
    assert_eq!(loaded.ledger.state_hash(), older_hash);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let SnapshotError::Corrupt { path, reason } = &skipped[0] else { panic!("expected Corrupt: {}", skipped[0]) };
    assert_eq!(path, &newest);
    assert!(reason.contains("checksum mismatch"), "{reason}");
    assert!(skipped[0].to_string().contains(&newest.display().to_string()), "the message names the file");

    // Damage to both leaves nothing to load, and both are named.
    flip_byte(&dir.path().join(snapshot_file_name(10)), 200);
    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    assert!(loaded.is_none());
    let skipped_paths: Vec<&Path> = skipped
        .iter()
        .map(|error| match error {
            SnapshotError::Corrupt { path, .. } => path.as_path(),
            SnapshotError::Io { .. } => panic!("expected Corrupt: {error}"),
        })
        .collect();
    assert_eq!(skipped_paths, vec![newest.as_path(), dir.path().join(snapshot_file_name(10)).as_path()]);
}

#[test]
fn a_flipped_byte_anywhere_is_corrupt() {
    let dir = tempdir();
    two_snapshots(dir.path());
    let path = dir.path().join(snapshot_file_name(20));
    let pristine = fs::read(&path).expect("read snapshot");
    let size = pristine.len();
    // Magic, version, reserved, op, timestamp, state hash, journal checksum, image size, header
    // reserved, image header, image body, the last image byte, the stored checksum.
    let offsets = [0, 9, 13, 16, 24, 40, 50, 64, 100, 128, 128 + 90, size / 2, size - 17, size - 16, size - 1];
    for offset in offsets {
        flip_byte(&path, offset);
        let (reported, reason) = corrupt_reason(snapshot_load(&path));
        assert_eq!(reported, path, "offset {offset}");
        assert!(!reason.is_empty(), "offset {offset}");
        fs::write(&path, &pristine).expect("restore snapshot");
    }
    assert_eq!(snapshot_load(&path).expect("the restored file loads").header.op, 20);
}

#[test]
fn a_cut_or_grown_file_is_corrupt() {
    let dir = tempdir();
    two_snapshots(dir.path());
    let path = dir.path().join(snapshot_file_name(20));
    let pristine = fs::read(&path).expect("read snapshot");
    let size = pristine.len();
    let header_and_checksum = SNAPSHOT_HEADER_SIZE_BYTES + SNAPSHOT_CHECKSUM_SIZE_BYTES;
    for length in [1, 64, header_and_checksum - 1, header_and_checksum, size / 2, size - 16, size - 1] {
        fs::write(&path, &pristine[..length]).expect("cut snapshot");
        let (reported, reason) = corrupt_reason(snapshot_load(&path));
        assert_eq!(reported, path, "cut to {length} bytes");
        assert!(!reason.is_empty(), "cut to {length} bytes");
        let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
        assert_eq!(loaded.expect("the older snapshot").header.op, 10, "cut to {length} bytes");
        assert_eq!(skipped.len(), 1, "cut to {length} bytes");
    }
    let mut grown = pristine.clone();
    grown.extend_from_slice(&[0; 8]);
    fs::write(&path, &grown).expect("grow snapshot");
    let (_, reason) = corrupt_reason(snapshot_load(&path));
    assert!(reason.contains("header announces"), "{reason}");
}

#[test]
fn an_empty_newest_file_falls_back_to_the_older() {
    let dir = tempdir();
    two_snapshots(dir.path());
    fs::write(dir.path().join(snapshot_file_name(20)), b"").expect("empty the newest");
    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("an empty file is damage, not an I/O failure");
    assert_eq!(loaded.expect("the older snapshot").header.op, 10);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(matches!(skipped[0], SnapshotError::Corrupt { .. }), "{}", skipped[0]);
}

#[test]
fn a_file_named_for_one_op_whose_header_says_another_is_skipped() {
    let dir = tempdir();
    let (_, newer_hash) = two_snapshots(dir.path());
    let misnamed = dir.path().join(snapshot_file_name(30));
    fs::copy(dir.path().join(snapshot_file_name(10)), &misnamed).expect("copy under another name");
    assert_eq!(snapshot_load(&misnamed).expect("the file itself is intact").header.op, 10);

    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    let loaded = loaded.expect("the snapshot at op 20");
    assert_eq!(loaded.header.op, 20);
    assert_eq!(loaded.ledger.state_hash(), newer_hash);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let SnapshotError::Corrupt { path, reason } = &skipped[0] else { panic!("expected Corrupt: {}", skipped[0]) };
    assert_eq!(path, &misnamed);
    assert!(reason.contains("op 30") && reason.contains("op 10"), "{reason}");
}

/// Rewrites a snapshot's stored checksum so that it matches its (altered) contents.
fn checksum_reseal(path: &Path) {
    let mut bytes = fs::read(path).expect("read snapshot");
    let covered = bytes.len() - SNAPSHOT_CHECKSUM_SIZE_BYTES;
    let checksum = blake3::hash(&bytes[..covered]);
    bytes[covered..].copy_from_slice(&checksum.as_bytes()[..SNAPSHOT_CHECKSUM_SIZE_BYTES]);
    fs::write(path, bytes).expect("write snapshot");
}

#[test]
fn an_inconsistent_image_under_a_valid_checksum_falls_back_to_the_older() {
    let dir = tempdir();
    let (older_hash, _) = two_snapshots(dir.path());
    let newest = dir.path().join(snapshot_file_name(20));
    // The second remembered transfer's timestamp (ledger image: 128-byte header, then the
    // accounts, then the ring) set to zero, a value no ledger stores.
    let image = SNAPSHOT_HEADER_SIZE_BYTES;
    let ring = image + 128 + ACCOUNTS_COUNT as usize * 128;
    let timestamp = ring + 128 + 120;
    let mut bytes = fs::read(&newest).expect("read snapshot");
    assert_ne!(bytes[timestamp..timestamp + 8], [0; 8]);
    bytes[timestamp..timestamp + 8].fill(0);
    fs::write(&newest, bytes).expect("write snapshot");
    checksum_reseal(&newest);

    let (reported, reason) = corrupt_reason(snapshot_load(&newest));
    assert_eq!(reported, newest);
    assert!(reason.contains("inconsistent") && reason.contains("ring entry 1"), "{reason}");
    let (loaded, skipped) = snapshot_load_newest(dir.path()).expect("load newest");
    let loaded = loaded.expect("the older snapshot");
    assert_eq!(loaded.header.op, 10);
    assert_eq!(loaded.ledger.state_hash(), older_hash);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
}
