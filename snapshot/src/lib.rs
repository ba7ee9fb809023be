//! Snapshots: the whole ledger at one op, so that a restart or a disaster-recovery drill
//! replays only the journal's tail. A snapshot is the core's ledger image framed by a header
//! (op, timestamp, state hash, and the journal's chain checksum at that op, so the tail can be
//! verified to continue it) and a BLAKE3 checksum over everything before it.
//!
//! Saving writes `snapshot-{op:020}.tmp`, fsyncs it, renames it to `.snap` and fsyncs the
//! directory, so a crash leaves either the old set or the new one, never a half file under
//! the final name. Loading checks the checksum where it reads (the pair of the one computed
//! where it wrote), then rebuilds the ledger, which checks the image's consistency and the
//! state hash again. The newest snapshot that passes every check wins; damaged ones are
//! reported and skipped.
//!
//! Loading reads the file into memory rather than mapping it. A mapped file that shrinks
//! while it is read (another process truncating it, a failing disk) raises SIGBUS on the first
//! page past its end, which no checksum can turn into an error; a read that meets the end early
//! is an ordinary `Corrupt` snapshot, and the loader falls back to the older one. The cost is
//! one copy of the file at start-up, freed once the ledger is rebuilt (which reads every byte
//! anyway).
//!
//! ```text
//! offset size field
//!      0    8 magic "WDSNAPSH"
//!      8    4 version (1)
//!     12    4 reserved (zero)
//!     16    8 op (the last journal op the state includes)
//!     24    8 timestamp_ns (the ledger's last timestamp)
//!     32   16 state_hash (the ledger's, as in the image header)
//!     48   16 journal_checksum (checksum of the journal record at `op`; 0 at op 0)
//!     64    8 image_size_bytes
//!     72   56 reserved (zero)
//!    128    … the ledger image (see walletd_core::image)
//!    end   16 checksum: first 16 bytes of BLAKE3 over everything before it
//! ```

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use walletd_core::Ledger;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"WDSNAPSH";
pub const SNAPSHOT_VERSION: u32 = 1;
pub const SNAPSHOT_HEADER_SIZE_BYTES: usize = 128;
pub const SNAPSHOT_CHECKSUM_SIZE_BYTES: usize = 16;
/// Snapshots kept by default: the newest, and one to fall back on.
pub const SNAPSHOTS_KEPT_DEFAULT: usize = 2;

/// What a snapshot says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub op: u64,
    pub timestamp_ns: u64,
    pub state_hash: u128,
    pub journal_checksum: u128,
    pub image_size_bytes: u64,
}

impl SnapshotHeader {
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_SIZE_BYTES] {
        let mut bytes = [0u8; SNAPSHOT_HEADER_SIZE_BYTES];
        bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.op.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        bytes[32..48].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes[48..64].copy_from_slice(&self.journal_checksum.to_le_bytes());
        bytes[64..72].copy_from_slice(&self.image_size_bytes.to_le_bytes());
        bytes
    }

    /// Decodes the header from the first `SNAPSHOT_HEADER_SIZE_BYTES` of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotHeader, String> {
        if bytes.len() < SNAPSHOT_HEADER_SIZE_BYTES {
            return Err(format!("{} bytes is too short for a snapshot header", bytes.len()));
        }
        if bytes[0..8] != SNAPSHOT_MAGIC {
            return Err("bad magic: not a walletd snapshot".to_string());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SNAPSHOT_VERSION {
            return Err(format!("snapshot version {version} is not supported (this build reads {SNAPSHOT_VERSION})"));
        }
        if bytes[12..16] != [0; 4] || bytes[72..128].iter().any(|byte| *byte != 0) {
            return Err("reserved header bytes are not zero".to_string());
        }
        let u64_at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        let u128_at = |offset: usize| u128::from_le_bytes(bytes[offset..offset + 16].try_into().expect("16 bytes"));
        Ok(SnapshotHeader {
            op: u64_at(16),
            timestamp_ns: u64_at(24),
            state_hash: u128_at(32),
            journal_checksum: u128_at(48),
            image_size_bytes: u64_at(64),
        })
    }
}

/// An operating error of the snapshot store.
#[derive(Debug)]
pub enum SnapshotError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A snapshot file that fails its checks; `reason` says which.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Io { path, source } => write!(f, "snapshot I/O on {}: {source}", path.display()),
            SnapshotError::Corrupt { path, reason } => write!(f, "snapshot {} is unusable: {reason}", path.display()),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { source, .. } => Some(source),
            SnapshotError::Corrupt { .. } => None,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// The file name of the snapshot at `op`.
pub fn snapshot_file_name(op: u64) -> String {
    format!("snapshot-{op:020}.snap")
}

/// The op of a snapshot file name, if it is one.
pub fn snapshot_file_op(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// A saved snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    pub size_bytes: u64,
    /// Older snapshots removed to keep the configured number.
    pub removed: Vec<PathBuf>,
}

/// Writes the ledger's state at `op` into `dir` atomically, then keeps only the newest `kept`.
/// Allocates and takes as long as the image is large: run it on a snapshot replica, never on
/// the apply thread.
pub fn snapshot_save(
    dir: &Path,
    op: u64,
    journal_checksum: u128,
    ledger: &Ledger,
    kept: usize,
) -> Result<Saved, SnapshotError> {
    assert!(kept >= 1, "keep at least one snapshot");
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let image_header = ledger.image_header();
    let header = SnapshotHeader {
        op,
        timestamp_ns: image_header.timestamp_last,
        state_hash: image_header.state_hash,
        journal_checksum,
        image_size_bytes: image_header.image_size_bytes() as u64,
    };
    let final_path = dir.join(snapshot_file_name(op));
    let temporary_path = final_path.with_extension("tmp");
    let file = File::create(&temporary_path).map_err(io_error(&temporary_path))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut failure: Option<std::io::Error> = None;
    let mut sink = |bytes: &[u8]| {
        if failure.is_none() {
            hasher.update(bytes);
            written += bytes.len() as u64;
            if let Err(error) = writer.write_all(bytes) {
                failure = Some(error);
            }
        }
    };
    sink(&header.encode());
    ledger.image_write(&mut sink);
    if let Some(error) = failure {
        return Err(SnapshotError::Io { path: temporary_path, source: error });
    }
    assert_eq!(written, SNAPSHOT_HEADER_SIZE_BYTES as u64 + header.image_size_bytes, "image size as announced");
    let checksum: [u8; 16] = hasher.finalize().as_bytes()[..16].try_into().expect("16 bytes");
    writer.write_all(&checksum).map_err(io_error(&temporary_path))?;
    let file = writer
        .into_inner()
        .map_err(|error| SnapshotError::Io { path: temporary_path.clone(), source: error.into_error() })?;
    file.sync_all().map_err(io_error(&temporary_path))?;
    drop(file);
    fs::rename(&temporary_path, &final_path).map_err(io_error(&final_path))?;
    directory_sync(dir)?;
    let removed = snapshots_prune(dir, kept)?;
    Ok(Saved { path: final_path, header, size_bytes: written + 16, removed })
}

fn directory_sync(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|directory| directory.sync_all()).map_err(io_error(dir))
}

/// Snapshot files in `dir`, newest first, as (op, path). Leftover `.tmp` files are ignored.
pub fn snapshots_list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(SnapshotError::Io { path: dir.to_path_buf(), source: error }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(op) = entry.file_name().to_str().and_then(snapshot_file_op) {
            found.push((op, entry.path()));
        }
    }
    found.sort_by_key(|(op, _)| std::cmp::Reverse(*op));
    Ok(found)
}

fn snapshots_prune(dir: &Path, kept: usize) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut removed = Vec::new();
    for (_, path) in snapshots_list(dir)?.into_iter().skip(kept) {
        fs::remove_file(&path).map_err(io_error(&path))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        directory_sync(dir)?;
    }
    Ok(removed)
}

/// Moves a snapshot that must not be used (damaged, or newer than a truncated journal) into
/// `dir/quarantine/`: kept for inspection, out of the set that is loaded and pruned.
pub fn snapshot_quarantine(dir: &Path, path: &Path) -> Result<PathBuf, SnapshotError> {
    let quarantine = dir.join("quarantine");
    fs::create_dir_all(&quarantine).map_err(io_error(&quarantine))?;
    let name = path
        .file_name()
        .ok_or_else(|| SnapshotError::Corrupt { path: path.to_path_buf(), reason: "not a file".into() })?;
    let target = quarantine.join(name);
    fs::rename(path, &target).map_err(io_error(path))?;
    directory_sync(&quarantine)?;
    directory_sync(dir)?;
    Ok(target)
}

/// Removes `*.tmp` files a crash left while writing a snapshot; returns them.
pub fn snapshot_temporaries_remove(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(SnapshotError::Io { path: dir.to_path_buf(), source: error }),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(io_error(&path))?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        directory_sync(dir)?;
    }
    Ok(removed)
}

/// A snapshot loaded and checked.
pub struct Loaded {
    pub ledger: Ledger,
    pub header: SnapshotHeader,
    pub path: PathBuf,
}

/// Loads one snapshot file, checking its checksum, its header and the rebuilt ledger (its
/// consistency and state hash). A file cut short, even while it is being read, is `Corrupt`.
pub fn snapshot_load(path: &Path) -> Result<Loaded, SnapshotError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let size_bytes = file.metadata().map_err(io_error(path))?.len();
    snapshot_read(path, &mut file, size_bytes)
}

/// Reads and checks a snapshot that was `size_bytes` long when it was opened. The header is
/// read first and its announced size compared with the file's before the rest is allocated
/// and read, so a damaged size field costs no large allocation.
fn snapshot_read(path: &Path, source: &mut impl Read, size_bytes: u64) -> Result<Loaded, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt { path: path.to_path_buf(), reason };
    let size_min = (SNAPSHOT_HEADER_SIZE_BYTES + SNAPSHOT_CHECKSUM_SIZE_BYTES) as u64;
    if size_bytes < size_min {
        return Err(corrupt(format!("{size_bytes} bytes is too short for a snapshot")));
    }
    let mut header_bytes = [0u8; SNAPSHOT_HEADER_SIZE_BYTES];
    snapshot_read_exact(path, source, &mut header_bytes, size_bytes)?;
    let header = SnapshotHeader::decode(&header_bytes).map_err(corrupt)?;
    let expected = header.image_size_bytes.checked_add(size_min);
    if expected != Some(size_bytes) {
        let announced = expected.map_or("more than 2^64".to_string(), |expected| expected.to_string());
        return Err(corrupt(format!("{size_bytes} bytes, but its header announces {announced}")));
    }
    let size = usize::try_from(size_bytes).map_err(|_| corrupt(format!("{size_bytes} bytes do not fit in memory")))?;
    let mut bytes = vec![0u8; size];
    bytes[..SNAPSHOT_HEADER_SIZE_BYTES].copy_from_slice(&header_bytes);
    snapshot_read_exact(path, source, &mut bytes[SNAPSHOT_HEADER_SIZE_BYTES..], size_bytes)?;
    assert_eq!(bytes.len() as u64, size_bytes);
    let (covered, stored) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_SIZE_BYTES);
    let computed = blake3::hash(covered);
    if &computed.as_bytes()[..16] != stored {
        return Err(corrupt("checksum mismatch: the file was damaged after it was written".to_string()));
    }
    let ledger =
        Ledger::image_read(&covered[SNAPSHOT_HEADER_SIZE_BYTES..]).map_err(|error| corrupt(error.to_string()))?;
    if ledger.state_hash() != header.state_hash {
        return Err(corrupt("the header's state hash differs from the image's".to_string()));
    }
    Ok(Loaded { ledger, header, path: path.to_path_buf() })
}

/// Fills `buffer` from `source`; an end of file before it is full means the file was cut
/// after it was opened: `Corrupt`, like any other damage, so that loading falls back.
fn snapshot_read_exact(
    path: &Path,
    source: &mut impl Read,
    buffer: &mut [u8],
    size_bytes: u64,
) -> Result<(), SnapshotError> {
    match source.read_exact(buffer) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("the file ended before its {size_bytes} bytes were read: it was cut while being read"),
        }),
        Err(error) => Err(SnapshotError::Io { path: path.to_path_buf(), source: error }),
    }
}

/// The newest snapshot that loads, and every newer one that did not (with why).
pub fn snapshot_load_newest(dir: &Path) -> Result<(Option<Loaded>, Vec<SnapshotError>), SnapshotError> {
    snapshot_load_newest_with(dir, snapshot_load)
}

/// `snapshot_load_newest` with the loading of one file given (tests cut a file while it loads).
fn snapshot_load_newest_with(
    dir: &Path,
    mut load: impl FnMut(&Path) -> Result<Loaded, SnapshotError>,
) -> Result<(Option<Loaded>, Vec<SnapshotError>), SnapshotError> {
    let mut skipped = Vec::new();
    for (op, path) in snapshots_list(dir)? {
        match load(&path) {
            Ok(loaded) if loaded.header.op == op => return Ok((Some(loaded), skipped)),
            Ok(loaded) => skipped.push(SnapshotError::Corrupt {
                path,
                reason: format!("its name says op {op} but its header says op {}", loaded.header.op),
            }),
            Err(error @ SnapshotError::Corrupt { .. }) => skipped.push(error),
            Err(error) => return Err(error),
        }
    }
    Ok((None, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::{Account, AccountId, Batch, Config, Output};

    fn tempdir() -> tempfile::TempDir {
        let base = Path::new("/work/tmp");
        let builder = tempfile::Builder::new().prefix("walletd-snapshot-").to_owned();
        if base.is_dir() { builder.tempdir_in(base) } else { builder.tempdir() }.expect("create a temporary directory")
    }

    /// Saves a snapshot at `op` of a ledger with `accounts_count` accounts.
    fn saved_at(dir: &Path, op: u64, accounts_count: u128) -> PathBuf {
        let mut ledger = Ledger::new(Config::small()).expect("small config is valid");
        let mut output = Output::new(ledger.config());
        let accounts: Vec<Account> = (1..=accounts_count)
            .map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() })
            .collect();
        ledger.apply(1_795_305_600 * 1_000_000_000, Batch::CreateAccounts(&accounts), &mut output);
        assert!(output.results.is_empty());
        snapshot_save(dir, op, 0x5eed, &ledger, 2).expect("save").path
    }

    fn saved(dir: &Path) -> PathBuf {
        saved_at(dir, 5, 64)
    }

    /// Opens the file, takes its size, cuts it to `cut_bytes`, and only then reads it.
    fn load_cut_after_open(path: &Path, cut_bytes: u64) -> Result<Loaded, SnapshotError> {
        let mut file = File::open(path).expect("open snapshot");
        let size_bytes = file.metadata().expect("metadata").len();
        assert!(cut_bytes < size_bytes);
        fs::OpenOptions::new().write(true).open(path).expect("open to cut").set_len(cut_bytes).expect("cut");
        snapshot_read(path, &mut file, size_bytes)
    }

    /// The moment that raised SIGBUS when the file was mapped: its size was taken, then it was
    /// cut (here through a second handle) before its bytes were read.
    #[test]
    fn a_file_cut_after_it_was_opened_is_corrupt_not_a_signal() {
        let dir = tempdir();
        let path = saved(dir.path());
        let pristine = fs::read(&path).expect("read snapshot");
        let size_bytes = pristine.len() as u64;
        for cut_bytes in [0, 64, SNAPSHOT_HEADER_SIZE_BYTES as u64 + 1, size_bytes / 2, size_bytes - 1] {
            fs::write(&path, &pristine).expect("restore snapshot");
            match load_cut_after_open(&path, cut_bytes) {
                Err(SnapshotError::Corrupt { path: reported, reason }) => {
                    assert_eq!(reported, path, "cut to {cut_bytes}");
                    assert!(reason.contains("cut while being read"), "cut to {cut_bytes}: {reason}");
                }
                Err(error) => panic!("cut to {cut_bytes}: expected Corrupt, got {error}"),
                Ok(_) => panic!("cut to {cut_bytes}: loaded"),
            }
        }
        fs::write(&path, &pristine).expect("restore snapshot");
        assert_eq!(snapshot_load(&path).expect("the restored file loads").header.op, 5);
    }

    #[test]
    fn a_newest_file_cut_while_it_loads_falls_back_to_the_older() {
        let dir = tempdir();
        let older = saved_at(dir.path(), 5, 10);
        let newest = saved_at(dir.path(), 6, 20);
        let size_bytes = fs::metadata(&newest).expect("newest").len();
        let load =
            |path: &Path| if path == newest { load_cut_after_open(path, size_bytes / 2) } else { snapshot_load(path) };
        let (loaded, skipped) = snapshot_load_newest_with(dir.path(), load).expect("a cut file is not an I/O failure");
        let loaded = loaded.expect("the older snapshot");
        assert_eq!((loaded.header.op, loaded.path.as_path(), loaded.ledger.accounts_count()), (5, older.as_path(), 10));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(matches!(&skipped[0], SnapshotError::Corrupt { path, .. } if *path == newest), "{}", skipped[0]);
        assert!(skipped[0].to_string().contains("cut while being read"), "{}", skipped[0]);
    }

    #[test]
    fn an_image_size_that_overflows_is_corrupt() {
        let dir = tempdir();
        let path = saved(dir.path());
        let mut bytes = fs::read(&path).expect("read snapshot");
        bytes[64..72].copy_from_slice(&(u64::MAX - 100).to_le_bytes());
        fs::write(&path, &bytes).expect("write snapshot");
        match snapshot_load(&path) {
            Err(SnapshotError::Corrupt { reason, .. }) => assert!(reason.contains("more than 2^64"), "{reason}"),
            Err(error) => panic!("expected Corrupt, got {error}"),
            Ok(_) => panic!("loaded"),
        }
    }
}
