//! The writer: append records to the active segment, group-commit them with one sync, rotate
//! to a new segment when the next record does not fit, archive sealed segments.
//!
//! The journaler thread owns a `Journal` outright (no locks): append only copies bytes into the
//! preallocated segment, and `commit` makes everything appended since the last commit durable
//! with one sync of the dirty range, which is what lets a whole ring batch cost one fdatasync.
//! Two numbers tell the pipeline where it stands: `op_appended` and `op_durable`. Any failed
//! write or sync poisons the journal, because after a failed fsync the kernel may have dropped
//! the dirty pages and a retry that "succeeds" would lie; the node stops and recovers by replay.
//! Before a new segment is created the active one is synced (sealed), so a later segment never
//! exists while an earlier one has unsynced data: a torn tail can only be in the last segment.

use std::path::PathBuf;

use crate::error::JournalError;
use crate::reader::Reader;
use crate::record::{record_header_encode, record_size_bytes, Chain, RecordKind};
use crate::recovery::{recover, Recovered};
use crate::segment::{
    segment_create, segments_list, Layout, SegmentEntry, SegmentHeader, SEGMENT_HEADER_SIZE_BYTES,
    SEGMENT_SIZE_ALIGNMENT_BYTES, SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN,
};
use crate::storage::{FileStorage, Storage, StorageFile};

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// The data directory; the journal lives in `dir/journal/`.
    pub dir: PathBuf,
    /// Size of each new segment file, preallocated. A record must fit in one segment.
    pub segment_size_bytes: u64,
}

impl JournalConfig {
    pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 256 << 20;

    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig { dir: dir.into(), segment_size_bytes: JournalConfig::SEGMENT_SIZE_BYTES_DEFAULT }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let invalid = |reason| JournalError::ConfigInvalid {
            field: "segment_size_bytes",
            value: self.segment_size_bytes,
            reason,
        };
        if self.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN {
            return Err(invalid("must be at least 4096"));
        }
        if self.segment_size_bytes > SEGMENT_SIZE_BYTES_MAX {
            return Err(invalid("must be at most 1 TiB"));
        }
        if self.segment_size_bytes % SEGMENT_SIZE_ALIGNMENT_BYTES != 0 {
            return Err(invalid("must be a multiple of 4096"));
        }
        Ok(())
    }
}

// The journaler thread owns the journal: it must be movable there, with either storage.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Journal<FileStorage>>();
    assert_send::<Journal<crate::sim::SimStorage>>();
};

/// The append-only journal. See the module docs for the durability contract.
pub struct Journal<S: Storage = FileStorage> {
    storage: S,
    dir: PathBuf,
    layout: Layout,
    segment_size_bytes: u64,
    /// Live segments in op order; the last is `active`.
    segments: Vec<SegmentEntry>,
    active: S::File,
    /// Where the next record goes in `active`.
    write_offset: u64,
    /// Start of the bytes appended to `active` since the last sync.
    dirty_offset: u64,
    /// What the next record must carry.
    chain: Chain,
    op_durable: u64,
    poisoned: bool,
}

impl Journal<FileStorage> {
    /// Opens (or creates) the journal on the real file system with the default backend.
    pub fn open_files(config: JournalConfig) -> Result<(Journal, Recovered), JournalError> {
        Journal::open(FileStorage::default(), config)
    }
}

impl<S: Storage> Journal<S> {
    /// Opens the journal in `config.dir/journal`, creating it if new, and recovers: truncates a
    /// torn tail, refuses corruption. Everything found is durable, so `op_durable` starts at the
    /// last valid op.
    pub fn open(storage: S, config: JournalConfig) -> Result<(Journal<S>, Recovered), JournalError> {
        config.validate()?;
        let layout = Layout::new(&config.dir);
        let mut opened = recover(&storage, &layout, config.segment_size_bytes)?;
        // What recovery found may still be only in the page cache (the process that wrote it
        // was killed between write and sync): sync it, so that "everything found is durable"
        // holds before anyone is told so. Earlier segments were sealed before rotation.
        let found_bytes = opened.write_offset - SEGMENT_HEADER_SIZE_BYTES;
        if found_bytes > 0 {
            let path = opened.segments.last().expect("an active segment").path.clone();
            opened
                .active
                .sync(SEGMENT_HEADER_SIZE_BYTES, found_bytes)
                .map_err(|source| JournalError::SyncFailed { path, source })?;
        }
        let journal = Journal {
            storage,
            dir: config.dir.clone(),
            layout,
            segment_size_bytes: config.segment_size_bytes,
            segments: opened.segments,
            active: opened.active,
            write_offset: opened.write_offset,
            dirty_offset: opened.write_offset,
            chain: opened.chain,
            op_durable: opened.chain.op_next - 1,
            poisoned: false,
        };
        assert_eq!(journal.op_durable, opened.recovered.op_last);
        assert!(journal.write_offset <= journal.active.size_bytes());
        Ok((journal, opened.recovered))
    }

    /// The last op appended (durable or not).
    pub fn op_appended(&self) -> u64 {
        self.chain.op_next - 1
    }

    /// The last op a `commit` made durable (or that recovery found).
    pub fn op_durable(&self) -> u64 {
        self.op_durable
    }

    /// Timestamp of the last appended record.
    pub fn timestamp_ns_last(&self) -> u64 {
        self.chain.timestamp_ns_min
    }

    /// Checksum of the last appended record.
    pub fn checksum_last(&self) -> u128 {
        self.chain.checksum_prev
    }

    /// Live segment paths in op order; the last is being written.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Whether a failed write or sync has stopped this journal.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The largest body one record can carry with the configured segment size.
    pub fn body_size_max_bytes(&self) -> u64 {
        let room = self.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES;
        let body_max = room - crate::record::RECORD_HEADER_SIZE_BYTES;
        body_max.min(u64::from(u32::MAX))
    }

    fn check_usable(&self) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        Ok(())
    }

    /// Runs `f`, poisoning the journal if it fails: after a failed write or sync the state of
    /// the disk is unknown, so the only safe continuation is a restart.
    fn poison_on_error<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, JournalError>) -> Result<T, JournalError> {
        let result = f(self);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Appends one record. Not durable until `commit`. Panics if `op` is not the next op or the
    /// timestamp goes backwards: the sequencer guarantees both, so either is a bug.
    pub fn append(&mut self, op: u64, timestamp_ns: u64, kind: RecordKind, body: &[u8]) -> Result<(), JournalError> {
        self.check_usable()?;
        assert_eq!(op, self.chain.op_next, "journal append: op out of sequence");
        assert!(
            timestamp_ns >= self.chain.timestamp_ns_min,
            "journal append: timestamp {timestamp_ns} ns before the previous {} ns",
            self.chain.timestamp_ns_min
        );
        let body_size_bytes = body.len() as u64;
        if body_size_bytes > self.body_size_max_bytes() {
            return Err(JournalError::RecordTooLarge {
                body_size_bytes,
                body_size_max_bytes: self.body_size_max_bytes(),
                segment_size_bytes: self.segment_size_bytes,
            });
        }
        let size_bytes = record_size_bytes(body_size_bytes);
        if self.write_offset + size_bytes > self.active.size_bytes() {
            self.poison_on_error(|journal| journal.rotate())?;
        }
        let header = record_header_encode(op, timestamp_ns, kind, body, self.chain.checksum_prev);
        self.poison_on_error(|journal| journal.append_bytes(&header, body))?;
        let checksum = u128::from_le_bytes(header[48..64].try_into().expect("16 bytes"));
        self.chain = Chain { op_next: op + 1, checksum_prev: checksum, timestamp_ns_min: timestamp_ns };
        self.write_offset += size_bytes;
        assert!(self.write_offset <= self.active.size_bytes());
        assert!(self.write_offset % crate::record::RECORD_ALIGNMENT_BYTES == 0);
        Ok(())
    }

    /// Header and body go in as two writes; the padding is already zero (segments are
    /// zero-filled and only ever appended to).
    fn append_bytes(&mut self, header: &[u8; 64], body: &[u8]) -> Result<(), JournalError> {
        let path = &self.segments.last().expect("an active segment").path;
        let write = |file: &mut S::File, offset: u64, data: &[u8]| {
            file.write_at(offset, data).map_err(|e| JournalError::io(path, "append to", e))
        };
        write(&mut self.active, self.write_offset, header)?;
        if body.is_empty() {
            return Ok(());
        }
        let body_offset = self.write_offset + crate::record::RECORD_HEADER_SIZE_BYTES;
        write(&mut self.active, body_offset, body)
    }

    /// Group commit: makes every record appended since the last commit durable with one sync,
    /// and returns `op_durable`. A failed sync poisons the journal: stop and recover.
    pub fn commit(&mut self) -> Result<u64, JournalError> {
        self.check_usable()?;
        if self.op_durable == self.op_appended() {
            assert_eq!(self.dirty_offset, self.write_offset);
            return Ok(self.op_durable);
        }
        assert!(self.dirty_offset < self.write_offset);
        let size_bytes = self.write_offset - self.dirty_offset;
        if let Err(source) = self.active.sync(self.dirty_offset, size_bytes) {
            self.poisoned = true;
            let path = self.segments.last().expect("an active segment").path.clone();
            return Err(JournalError::SyncFailed { path, source });
        }
        self.dirty_offset = self.write_offset;
        self.op_durable = self.op_appended();
        Ok(self.op_durable)
    }

    /// Seals the active segment (commit) and starts a new one whose header carries the chain.
    fn rotate(&mut self) -> Result<(), JournalError> {
        self.commit()?;
        assert_eq!(self.op_durable, self.op_appended());
        let header = SegmentHeader {
            first_op: self.chain.op_next,
            segment_size_bytes: self.segment_size_bytes,
            timestamp_ns_prev: self.chain.timestamp_ns_min,
            checksum_prev: self.chain.checksum_prev,
        };
        let (file, path) = segment_create(&self.storage, &self.layout.live, &header)?;
        self.segments.push(SegmentEntry { path, first_op: header.first_op });
        self.active = file;
        self.write_offset = SEGMENT_HEADER_SIZE_BYTES;
        self.dirty_offset = SEGMENT_HEADER_SIZE_BYTES;
        assert_eq!(self.active.size_bytes(), self.segment_size_bytes);
        Ok(())
    }

    /// Moves to `dir/journal/archive/` every sealed segment whose records are all before `op`
    /// (never the active one), syncs both directories, and returns the new paths. Archived
    /// segments are kept forever and still readable by `Reader`.
    pub fn archive_before(&mut self, op: u64) -> Result<Vec<PathBuf>, JournalError> {
        self.check_usable()?;
        // Segment i holds ops first_op(i)..first_op(i + 1); all are < op iff first_op(i + 1) <= op.
        let count = self.segments.windows(2).take_while(|w| w[1].first_op <= op).count();
        assert!(count < self.segments.len(), "the active segment is never archived");
        if count == 0 {
            return Ok(Vec::new());
        }
        let archive = self.layout.archive.clone();
        self.storage.create_dir_all(&archive).map_err(|e| JournalError::io(&archive, "create directory", e))?;
        let (archived, _) = segments_list(&self.storage, &archive)?;
        let mut moved = Vec::with_capacity(count);
        let renamed = self.archive_rename(&archived, count, &mut moved);
        // Forget exactly the segments that moved, even if a later rename failed.
        self.segments.drain(..moved.len());
        renamed?;
        let live = self.layout.live.clone();
        self.poison_on_error(|journal| {
            for dir in [&archive, &live] {
                journal
                    .storage
                    .sync_dir(dir)
                    .map_err(|source| JournalError::SyncFailed { path: dir.clone(), source })?;
            }
            Ok(())
        })?;
        assert_eq!(moved.len(), count);
        Ok(moved)
    }

    /// Renames the first `count` live segments into archive/, pushing each new path to `moved`.
    /// Never overwrites an archived segment: history is kept.
    fn archive_rename(
        &self,
        archived: &[SegmentEntry],
        count: usize,
        moved: &mut Vec<PathBuf>,
    ) -> Result<(), JournalError> {
        assert!(count < self.segments.len());
        for entry in &self.segments[..count] {
            let to = self.layout.archive.join(entry.path.file_name().expect("segment file name"));
            if archived.iter().any(|a| a.path == to) {
                let exists = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
                return Err(JournalError::io(&to, "archive (name already archived)", exists));
            }
            self.storage.rename(&entry.path, &to).map_err(|e| JournalError::io(&entry.path, "move to archive", e))?;
            moved.push(to);
        }
        assert_eq!(moved.len(), count);
        Ok(())
    }

    /// A reader over archive/ and the live segments from `op_first` up to `op_durable`.
    pub fn reader(&self, op_first: u64) -> Result<Reader<S>, JournalError> {
        Reader::open_until(self.storage.clone(), &self.dir, op_first, self.op_durable)
    }
}
