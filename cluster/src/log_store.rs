//! The Raft log and vote on disk (`DATA/raft/`), as openraft's `RaftLogStorage`.
//!
//! The log is one append-only file of records, each checksummed; the vote is one small file
//! replaced atomically. Entries stay on disk: memory holds only where each one is (its log id,
//! offset and size) and the membership entries, so a log of a million 1 MiB batches costs
//! megabytes, not terabytes. The newest entries are also kept in memory (`cache`, up to
//! `CACHE_SIZE_MAX_BYTES` of commands): a command's bytes are shared (`bytes::Bytes`), so apply
//! and each follower's replication stream read an entry by cloning a pointer, and an append
//! writes the command from where it already is (`entry_encode_split`: the record's header and
//! the entry's envelope, then the command, two writes and no copy). Older entries are read back
//! from the file (the page cache serves them), checksum checked.
//!
//! Durability, as openraft requires of a log: an append is acknowledged (`LogFlushed`) only
//! after an fdatasync covers it, done by one sync thread that groups every append queued
//! meanwhile into one sync; a vote is durable before `save_vote` returns. The state machine
//! waits for the same syncs (`flushed_wait`) before it journals an entry, because openraft 0.9
//! lets a follower apply an entry it has appended but not yet synced. A failed write or
//! sync stops the process (fail-stop, as the journal does): a node that acknowledged an entry
//! or a vote it does not hold would break Raft's safety, and restarting recovers from disk.
//!
//! Record layout (little-endian), `RECORD_HEADER_SIZE_BYTES` then the body:
//!
//! ```text
//! offset size field
//!      0    4 body_size_bytes
//!      4    4 checksum: crc32c of bytes 8.. (the index and the body)
//!      8    8 index (the entry's log index)
//!     16    n body: the entry (openraft's Entry, bincode)
//! ```
//!
//! Recovery reads records in order, from the first one after the purge mark. A record cut
//! short at the end of the file, or the last record with a bad checksum, is a torn append that
//! was never acknowledged: it is cut off and reported. A bad record with more bytes after it, a
//! record whose size runs past the end with a good record (the next index) after it, or an
//! index out of sequence, is corruption: start-up stops and says where.
//!
//! Purging (after a snapshot, see `snapshot`) writes the purge mark — the last purged log id
//! and the offset of the first record kept — and then frees the purged bytes by punching a hole
//! in the file (`fallocate`), so offsets never move and the file's disk use stays about the
//! size of the kept log. A purge past what the state machine has applied (openraft purges a
//! follower's log as soon as it accepts a snapshot, possibly before the install ran) is held in
//! memory until the journal reaches it: the mark on disk never runs ahead of the journal.

use crate::types::{entry_encode_split, Entry, LogId, Membership, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, RaftLogReader, StorageIOError};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::ops::{Bound, RangeBounds};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

pub const RECORD_HEADER_SIZE_BYTES: usize = 16;
/// One entry's encoded size at most: a batch of 8189 events of 128 bytes and its envelope.
pub const RECORD_BODY_SIZE_MAX_BYTES: u32 = 4 << 20;

/// The commands' bytes the cache of recent entries holds at most (besides the newest entry,
/// always kept): 32 full batches, more than the requests in flight by default (`in_flight_max`
/// of 8 and 16 entries per AppendEntries), so apply and replication to a follower that keeps
/// up never read the file.
pub const CACHE_SIZE_MAX_BYTES: usize = 32 << 20;

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the Raft log {path} is corrupt at byte {offset}: {reason}; a record with good records after it is not a torn append. Rebuild this node's data directory from the other members")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

/// The purge mark: the last purged entry, and where the first entry after it starts (the end
/// of the file when none does yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Purged {
    log_id: LogId,
    offset: u64,
}

/// Where one entry is in the file.
#[derive(Clone, Copy, Debug)]
struct Slot {
    log_id: LogId,
    offset: u64,
    body_size_bytes: u32,
}

struct LogFile {
    dir: PathBuf,
    file: File,
    size_bytes: u64,
    /// Contiguous entries: `slots[i]` has index `slots[0].log_id.index + i`.
    slots: Vec<Slot>,
    /// The purge openraft asked for (what `get_log_state` reports).
    last_purged: Option<LogId>,
    /// The purge mark on disk, at or behind `last_purged`.
    purged: Option<Purged>,
    /// The highest index the state machine has journaled: the mark never passes it.
    applied_index: Option<u64>,
    vote: Option<Vote>,
    /// The membership entries read or written since start-up, in index order (the state
    /// machine answers the membership as of its applied index from here, or from a snapshot).
    memberships: Vec<(LogId, Membership)>,
    /// The newest entries, contiguous and ending at the last slot (see the module doc).
    cache: VecDeque<Entry>,
    /// The commands' bytes in `cache`.
    cache_size_bytes: usize,
    /// The record being written: its header and the entry's envelope (a command's bytes are
    /// written from the entry).
    record: Vec<u8>,
    /// Set once punching a hole failed (a file system without it): purged bytes stay on disk.
    hole_punch_unsupported: bool,
}

/// The Raft log store; cheap to clone (the clones share one file), so it is its own reader.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogFile>>,
    sync: Sender<SyncJob>,
    flushed: Arc<Flushed>,
}

/// An append for the sync thread: its callback, the last index it wrote, and the truncation
/// generation it was written in.
struct SyncJob {
    callback: LogFlushed<TypeConfig>,
    index_last: u64,
    generation: u64,
}

/// How far the log is durable, for the state machine: openraft 0.9 may apply an entry a
/// follower has appended but not yet synced, and the journal must never hold an entry the Raft
/// log could lose (a restart would find the journal ahead of the log). `generation` counts
/// truncations, so a sync that began before one cannot vouch for entries written after it.
#[derive(Default)]
struct Flushed {
    state: Mutex<FlushedState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct FlushedState {
    generation: u64,
    /// Every entry up to this index is synced (None: none).
    index: Option<u64>,
}

/// What opening found, for the start-up log.
#[derive(Clone, Debug)]
pub struct LogOpened {
    pub entries: usize,
    pub last: Option<LogId>,
    /// Bytes of a torn append cut off the end.
    pub torn_bytes: u64,
}

impl LogStore {
    /// Opens (or creates) the Raft log in `dir`, recovering as the module doc says.
    pub fn open(dir: &Path) -> Result<(LogStore, LogOpened), LogStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogStoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOG_FILE);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        let purged = small_file_read::<Purged>(&dir.join(PURGED_FILE))?;
        let vote = small_file_read::<Vote>(&dir.join(VOTE_FILE))?;
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            file,
            size_bytes: 0,
            slots: Vec::new(),
            last_purged: purged.map(|purged| purged.log_id),
            purged,
            applied_index: None,
            vote,
            memberships: Vec::new(),
            cache: VecDeque::new(),
            cache_size_bytes: 0,
            record: Vec::new(),
            hole_punch_unsupported: false,
        };
        let torn_bytes = log.recover(&path)?;
        dir_sync(dir).map_err(io(dir))?;
        let last = log.slots.last().map(|slot| slot.log_id).or(log.last_purged);
        let opened = LogOpened { entries: log.slots.len(), last, torn_bytes };
        let sync_file = log.file.try_clone().map_err(io(&path))?;
        let (sync, jobs) = channel();
        // What recovery read back and synced is durable.
        let flushed = Arc::new(Flushed::default());
        flushed.state.lock().expect("fresh").index = opened.last.map(|log_id| log_id.index);
        let sync_flushed = Arc::clone(&flushed);
        std::thread::Builder::new()
            .name("raft-log-sync".to_string())
            .spawn(move || sync_run(&sync_file, &jobs, &sync_flushed))
            .map_err(io(&path))?;
        Ok((LogStore { inner: Arc::new(Mutex::new(log)), sync, flushed }, opened))
    }

    /// Blocks until every entry up to `index` is synced to the Raft log.
    pub fn flushed_wait(&self, index: u64) {
        let mut state = self.flushed.state.lock().expect("the flushed lock");
        while state.index.is_none_or(|flushed| flushed < index) {
            state = self.flushed.changed.wait(state).expect("the flushed lock");
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogFile> {
        self.inner.lock().expect("the Raft log lock (a panic under it stops the node)")
    }

    /// The log id of the entry at `index`, if the log holds it (or it is the purged one).
    pub fn log_id_at(&self, index: u64) -> Option<LogId> {
        let log = self.lock();
        if let Some(slot) = log.slot(index) {
            return Some(slot.log_id);
        }
        log.last_purged.filter(|purged| purged.index == index)
    }

    /// The state machine has journaled every entry up to `index`: a purge held back until the
    /// journal reached it is written now.
    pub fn applied_advance(&self, index: u64) {
        let mut log = self.lock();
        log.applied_index = Some(log.applied_index.map_or(index, |applied| applied.max(index)));
        log.purge_mark_advance();
    }

    /// The newest membership entry at or below `index`.
    pub fn membership_at(&self, index: u64) -> Option<(LogId, Membership)> {
        let log = self.lock();
        log.memberships.iter().rev().find(|(log_id, _)| log_id.index <= index).cloned()
    }
}

impl LogFile {
    fn slot(&self, index: u64) -> Option<&Slot> {
        let first = self.slots.first()?.log_id.index;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        self.slots.get(position)
    }

    /// Reads every record; cuts a torn tail. Returns the bytes cut.
    fn recover(&mut self, path: &Path) -> Result<u64, LogStoreError> {
        let io = |source| LogStoreError::Io { path: path.to_path_buf(), source };
        let file_size_bytes = self.file.metadata().map_err(io)?.len();
        let mut reader = BufReader::with_capacity(1 << 20, self.file.try_clone().map_err(io)?);
        let mut offset = self.purged.map_or(0, |purged| purged.offset);
        if offset > file_size_bytes {
            return Err(LogStoreError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: format!(
                    "the purge mark says the log resumes at byte {offset}, past its end ({file_size_bytes})"
                ),
            });
        }
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut body = Vec::new();
        while offset < file_size_bytes {
            match record_read(&mut reader, offset, file_size_bytes, &mut body).map_err(io)? {
                RecordRead::Good { index } => {
                    let entry: Entry = bincode::deserialize(&body).map_err(|error| LogStoreError::Corrupt {
                        path: path.to_path_buf(),
                        offset,
                        reason: format!("a record with a good checksum does not decode: {error}"),
                    })?;
                    self.recovered_push(path, offset, index, &entry, body.len() as u32)?;
                    offset += (RECORD_HEADER_SIZE_BYTES + body.len()) as u64;
                }
                RecordRead::Torn => {
                    // A size that runs past the end is a torn append only if nothing good
                    // follows: a flipped bit in a size field mid-file reads the same way.
                    let last =
                        self.slots.last().map(|slot| slot.log_id).or(self.last_purged).map(|log_id| log_id.index);
                    let next_index = last.map_or(1, |index| index + 2);
                    if let Some(found) =
                        good_record_after(&self.file, offset, file_size_bytes, next_index).map_err(io)?
                    {
                        return Err(LogStoreError::Corrupt {
                            path: path.to_path_buf(),
                            offset,
                            reason: format!(
                                "the record here does not fit before the end of the file, yet a good record \
                                 (index {next_index}) starts at byte {found}"
                            ),
                        });
                    }
                    break;
                }
                RecordRead::Corrupt(reason) => {
                    return Err(LogStoreError::Corrupt { path: path.to_path_buf(), offset, reason });
                }
            }
        }
        let torn_bytes = file_size_bytes - offset;
        if torn_bytes > 0 {
            tracing::warn!(
                torn_bytes,
                offset,
                "the Raft log ends in a torn append (never acknowledged); cutting it off"
            );
            self.file.set_len(offset).map_err(io)?;
            self.file.sync_all().map_err(io)?;
        }
        self.size_bytes = offset;
        Ok(torn_bytes)
    }

    fn recovered_push(
        &mut self,
        path: &Path,
        offset: u64,
        index: u64,
        entry: &Entry,
        body_size_bytes: u32,
    ) -> Result<(), LogStoreError> {
        let corrupt = |reason: String| LogStoreError::Corrupt { path: path.to_path_buf(), offset, reason };
        if entry.log_id.index != index {
            return Err(corrupt(format!("the record says index {index}, its entry {}", entry.log_id.index)));
        }
        if let Some(last) = self.slots.last().map(|slot| slot.log_id).or(self.last_purged) {
            if index != last.index + 1 {
                return Err(corrupt(format!("index {index} follows index {}", last.index)));
            }
        }
        let slot = Slot { log_id: entry.log_id, offset, body_size_bytes };
        self.slot_push(slot, entry);
        Ok(())
    }

    fn slot_push(&mut self, slot: Slot, entry: &Entry) {
        if let Some(last) = self.slots.last() {
            assert_eq!(slot.log_id.index, last.log_id.index + 1, "the Raft log appends in index order");
        }
        if let EntryPayload::Membership(membership) = &entry.payload {
            self.memberships.push((entry.log_id, membership.clone()));
        }
        self.slots.push(slot);
    }

    fn entry_read(&self, slot: &Slot) -> Result<Entry, StorageError> {
        let mut bytes = vec![0u8; RECORD_HEADER_SIZE_BYTES + slot.body_size_bytes as usize];
        let read_error = |error: &dyn std::error::Error| -> StorageError {
            StorageIOError::read_log_entry(slot.log_id, openraft::AnyError::error(error.to_string())).into()
        };
        self.file.read_exact_at(&mut bytes, slot.offset).map_err(|error| read_error(&error))?;
        let (header, body) = bytes.split_at(RECORD_HEADER_SIZE_BYTES);
        let checksum_stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let checksum_computed = crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), body);
        if checksum_stored != checksum_computed {
            // It was good when read at start-up or written: the disk changed under us.
            fail_stop("Raft log read", &format!("the record of {} no longer matches its checksum", slot.log_id));
        }
        bincode::deserialize(body).map_err(|error| read_error(&*error))
    }

    /// Writes the purge mark up to `last_purged`, but no further than the applied index, and
    /// frees the bytes before the first record kept.
    fn purge_mark_advance(&mut self) {
        let (Some(wanted), Some(applied)) = (self.last_purged, self.applied_index) else { return };
        if self.purged.is_some_and(|purged| purged.log_id.index >= wanted.index) || applied < wanted.index {
            return;
        }
        // The first record kept: the slots after `wanted` are the log; none yet is the end.
        let offset = self.slots.first().map_or(self.size_bytes, |slot| slot.offset);
        let purged = Purged { log_id: wanted, offset };
        small_file_write(&self.dir, PURGED_FILE, &purged)
            .unwrap_or_else(|error| fail_stop("Raft log purge mark write", &error.to_string()));
        self.purged = Some(purged);
        self.memberships.retain(|(log_id, _)| log_id.index > wanted.index);
        self.hole_punch(offset);
    }

    /// Frees the file's blocks before `offset` (the size and every offset stay). Only an
    /// optimisation: a file system that cannot punch holes keeps the bytes, and says so once.
    fn hole_punch(&mut self, offset: u64) {
        const BLOCK_BYTES: u64 = 4096;
        let length = offset / BLOCK_BYTES * BLOCK_BYTES;
        if length == 0 || self.hole_punch_unsupported {
            return;
        }
        let length = libc::off_t::try_from(length).expect("a Raft log under 2^63 bytes");
        // SAFETY: fallocate on a file descriptor this struct owns; no memory is passed.
        let result = unsafe {
            libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, length)
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "cannot free the purged part of the Raft log; it stays on disk");
            self.hole_punch_unsupported = true;
        }
    }

    /// Appends one entry's record (not yet synced), and keeps the entry in the cache.
    fn entry_append(&mut self, entry: Entry) {
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        record.extend_from_slice(&[0u8; 8]);
        record.extend_from_slice(&entry.log_id.index.to_le_bytes());
        let command = entry_encode_split(&entry, &mut record);
        let command: &[u8] = command.map_or(&[][..], |command| &command[..]);
        let body_size_bytes = record.len() - RECORD_HEADER_SIZE_BYTES + command.len();
        let body_size_bytes = u32::try_from(body_size_bytes).expect("an entry under 4 GiB");
        assert!(body_size_bytes <= RECORD_BODY_SIZE_MAX_BYTES, "an entry of {body_size_bytes} bytes: over the limit");
        let checksum = crc32c::crc32c_append(crc32c::crc32c(&record[8..]), command);
        record[0..4].copy_from_slice(&body_size_bytes.to_le_bytes());
        record[4..8].copy_from_slice(&checksum.to_le_bytes());
        let written = self.file.write_all_at(&record, self.size_bytes);
        let written = written.and_then(|()| self.file.write_all_at(command, self.size_bytes + record.len() as u64));
        if let Err(error) = written {
            fail_stop("Raft log append", &error.to_string());
        }
        let slot = Slot { log_id: entry.log_id, offset: self.size_bytes, body_size_bytes };
        self.size_bytes += RECORD_HEADER_SIZE_BYTES as u64 + u64::from(body_size_bytes);
        self.slot_push(slot, &entry);
        self.cache_push(entry);
        self.record = record;
    }

    /// Keeps `entry` (the newest) in the cache, dropping the oldest past the size limit.
    fn cache_push(&mut self, entry: Entry) {
        if let Some(newest) = self.cache.back() {
            assert_eq!(entry.log_id.index, newest.log_id.index + 1, "the cache holds contiguous entries");
        }
        self.cache_size_bytes += command_size_bytes(&entry);
        self.cache.push_back(entry);
        while self.cache_size_bytes > CACHE_SIZE_MAX_BYTES && self.cache.len() > 1 {
            let oldest = self.cache.pop_front().expect("more than one");
            self.cache_size_bytes -= command_size_bytes(&oldest);
        }
    }

    /// Drops the cached entries from `index` on (a truncation).
    fn cache_truncate(&mut self, index: u64) {
        while self.cache.back().is_some_and(|newest| newest.log_id.index >= index) {
            let newest = self.cache.pop_back().expect("checked");
            self.cache_size_bytes -= command_size_bytes(&newest);
        }
    }

    /// Drops the cached entries up to `index` (a purge).
    fn cache_purge(&mut self, index: u64) {
        while self.cache.front().is_some_and(|oldest| oldest.log_id.index <= index) {
            let oldest = self.cache.pop_front().expect("checked");
            self.cache_size_bytes -= command_size_bytes(&oldest);
        }
    }

    /// The entry at `index`: shared from the cache, or read from the file.
    fn entry_get(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        if let Some(oldest) = self.cache.front().map(|entry| entry.log_id.index) {
            if let Some(entry) = index.checked_sub(oldest).and_then(|at| self.cache.get(at as usize)) {
                assert_eq!(entry.log_id.index, index, "the cache holds contiguous entries");
                return Ok(Some(entry.clone()));
            }
        }
        let Some(slot) = self.slot(index) else { return Ok(None) };
        self.entry_read(slot).map(Some)
    }
}

/// The bytes of an entry's command (what the cache's limit counts).
fn command_size_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(crate::types::Proposal::Command { command, .. }) => command.len(),
        _ => 0,
    }
}

enum RecordRead {
    Good { index: u64 },
    Torn,
    Corrupt(String),
}

/// The offset of a record with index `index` and a good checksum after the record starting at
/// `offset`, found by its index field: a few reads of the rest of the file, only when recovery
/// meets a record that does not fit.
fn good_record_after(file: &File, offset: u64, file_size_bytes: u64, index: u64) -> std::io::Result<Option<u64>> {
    const CHUNK_BYTES: usize = 4 << 20;
    let pattern = index.to_le_bytes();
    let mut chunk = vec![0u8; CHUNK_BYTES];
    // Index fields of records after this one: at offset + header + 8 at the earliest.
    let mut start = offset + RECORD_HEADER_SIZE_BYTES as u64 + 8;
    while start + 8 <= file_size_bytes {
        let size = (file_size_bytes - start).min(CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut chunk[..size], start)?;
        for position in chunk[..size].windows(8).enumerate().filter(|(_, bytes)| *bytes == pattern).map(|(at, _)| at) {
            let record = start + position as u64 - 8;
            let mut header = [0u8; RECORD_HEADER_SIZE_BYTES];
            if record + RECORD_HEADER_SIZE_BYTES as u64 > file_size_bytes {
                continue;
            }
            file.read_exact_at(&mut header, record)?;
            let body_size_bytes = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
            let end = record + RECORD_HEADER_SIZE_BYTES as u64 + u64::from(body_size_bytes);
            if body_size_bytes > RECORD_BODY_SIZE_MAX_BYTES || end > file_size_bytes {
                continue;
            }
            let mut body = vec![0u8; body_size_bytes as usize];
            file.read_exact_at(&mut body, record + RECORD_HEADER_SIZE_BYTES as u64)?;
            let checksum_stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            if crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), &body) == checksum_stored {
                return Ok(Some(record));
            }
        }
        if size < CHUNK_BYTES {
            break;
        }
        start += (CHUNK_BYTES - 7) as u64; // overlap: a pattern across the boundary is found next time
    }
    Ok(None)
}

/// Reads the record at `offset` into `body`.
fn record_read(
    reader: &mut impl Read,
    offset: u64,
    file_size_bytes: u64,
    body: &mut Vec<u8>,
) -> std::io::Result<RecordRead> {
    let remaining = file_size_bytes - offset;
    if remaining < RECORD_HEADER_SIZE_BYTES as u64 {
        return Ok(RecordRead::Torn);
    }
    let mut header = [0u8; RECORD_HEADER_SIZE_BYTES];
    reader.read_exact(&mut header)?;
    let body_size_bytes = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let checksum_stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let record_size_bytes = RECORD_HEADER_SIZE_BYTES as u64 + u64::from(body_size_bytes);
    if body_size_bytes > RECORD_BODY_SIZE_MAX_BYTES || record_size_bytes > remaining {
        // A size past the end: the header was written, the body not (or the size is garbage
        // of a torn write). Either way nothing after it can be a record.
        return Ok(RecordRead::Torn);
    }
    body.resize(body_size_bytes as usize, 0);
    reader.read_exact(body)?;
    let checksum_computed = crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), body);
    if checksum_stored == checksum_computed {
        return Ok(RecordRead::Good { index });
    }
    if record_size_bytes == remaining {
        return Ok(RecordRead::Torn);
    }
    Ok(RecordRead::Corrupt(format!(
        "checksum {checksum_stored:#010x} stored, {checksum_computed:#010x} computed, with {} bytes after the record",
        remaining - record_size_bytes
    )))
}

/// The sync thread: one fdatasync for every append queued meanwhile, then the durable index
/// for the state machine, then the callbacks.
fn sync_run(file: &File, jobs: &Receiver<SyncJob>, flushed: &Flushed) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        if let Err(error) = file.sync_data() {
            fail_stop("Raft log sync", &error.to_string());
        }
        {
            let mut state = flushed.state.lock().expect("the flushed lock");
            let generation = state.generation;
            for job in batch.iter().filter(|job| job.generation == generation) {
                state.index = Some(state.index.map_or(job.index_last, |index| index.max(job.index_last)));
            }
        }
        flushed.changed.notify_all();
        for job in batch {
            job.callback.log_io_completed(Ok(()));
        }
    }
}

/// A Raft log or vote that cannot be written stops the node; restart recovers from disk.
pub fn fail_stop(what: &str, error: &str) -> ! {
    tracing::error!(what, error, "stopping (fail-stop): the Raft state on disk could not be written or read back");
    eprintln!("walletd: {what} failed: {error}; stopping (fail-stop). Restart to recover from disk.");
    std::process::exit(70)
}

/// A small file (the vote, the purge mark): `[crc32c u32][size u32][bincode]`, replaced by
/// write-to-temporary, fsync, rename, fsync of the directory.
pub(crate) fn small_file_write<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let body = bincode::serialize(value).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(8 + body.len());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let temporary = dir.join(format!("{name}.tmp"));
    {
        let file = File::create(&temporary)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(name))?;
    dir_sync(dir)
}

pub(crate) fn small_file_read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, LogStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogStoreError::Io { path: path.to_path_buf(), source }),
    };
    let corrupt = |reason: &str| LogStoreError::Corrupt { path: path.to_path_buf(), offset: 0, reason: reason.into() };
    if bytes.len() < 8 {
        return Err(corrupt("shorter than its 8-byte header"));
    }
    let checksum = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let body = &bytes[8..];
    if body.len() != size || crc32c::crc32c(body) != checksum {
        return Err(corrupt("its size or checksum does not match (it is replaced atomically, so this is damage)"));
    }
    bincode::deserialize(body).map(Some).map_err(|error| corrupt(&error.to_string()))
}

/// Removes a small file (and syncs the directory); a file already gone is fine.
pub(crate) fn small_file_remove(dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => dir_sync(dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn dir_sync(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn range_indexes(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => start + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => end.saturating_add(1),
        Bound::Excluded(end) => *end,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_indexes(&range);
        let log = self.lock();
        let Some(first) = log.slots.first().map(|slot| slot.log_id.index) else { return Ok(Vec::new()) };
        let from = start.max(first);
        let mut entries = Vec::new();
        let mut index = from;
        while index < end {
            let Some(entry) = log.entry_get(index)? else { break };
            entries.push(entry);
            index += 1;
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = self.lock();
        let last = log.slots.last().map(|slot| slot.log_id).or(log.last_purged);
        Ok(LogState { last_purged_log_id: log.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut log = self.lock();
        let dir = log.dir.clone();
        // A vote is durable before it is answered: fsync, rename, fsync the directory.
        tokio::task::block_in_place(|| small_file_write(&dir, VOTE_FILE, vote))
            .unwrap_or_else(|error| fail_stop("Raft vote write", &error.to_string()));
        log.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let (index_last, generation) = {
            let mut log = self.lock();
            tokio::task::block_in_place(|| {
                for entry in entries {
                    log.entry_append(entry);
                }
            });
            // Read under the log lock, which a truncation holds while it counts itself.
            let generation = self.flushed.state.lock().expect("the flushed lock").generation;
            (log.slots.last().map(|slot| slot.log_id.index), generation)
        };
        let Some(index_last) = index_last else {
            callback.log_io_completed(Ok(())); // an empty log and nothing appended
            return Ok(());
        };
        if self.sync.send(SyncJob { callback, index_last, generation }).is_err() {
            fail_stop("Raft log sync", "the sync thread has stopped");
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.lock();
        let Some(slot) = log.slot(log_id.index).copied() else { return Ok(()) };
        let keep = usize::try_from(log_id.index - log.slots[0].log_id.index).expect("an index in memory");
        log.slots.truncate(keep);
        log.cache_truncate(log_id.index);
        log.memberships.retain(|(membership_log_id, _)| membership_log_id.index < log_id.index);
        log.size_bytes = slot.offset;
        let file = &log.file;
        let cut = tokio::task::block_in_place(|| file.set_len(slot.offset).and_then(|()| file.sync_data()));
        cut.unwrap_or_else(|error| fail_stop("Raft log truncate", &error.to_string()));
        {
            // The sync above made every entry before the cut durable; syncs already queued
            // cannot vouch for the entries that will replace the ones cut.
            let mut state = self.flushed.state.lock().expect("the flushed lock");
            state.generation += 1;
            state.index = log_id.index.checked_sub(1);
        }
        tracing::info!(from = %log_id, "Raft log truncated (entries a new leader overwrote)");
        Ok(())
    }

    /// Forgets the entries up to `log_id`. The mark on disk follows once the journal has them
    /// (`purge_mark_advance`).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.lock();
        assert!(log.last_purged.is_none_or(|purged| purged.index <= log_id.index), "purges only go forward");
        log.last_purged = Some(log_id);
        let first = log.slots.first().map(|slot| slot.log_id.index);
        if let Some(first) = first {
            let drop_count =
                usize::try_from((log_id.index + 1).saturating_sub(first)).expect("fits").min(log.slots.len());
            log.slots.drain(..drop_count);
        }
        log.cache_purge(log_id.index);
        tokio::task::block_in_place(|| log.purge_mark_advance());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Writes `count` blank entries from index 0 straight through the log file (openraft's
    /// flush callback cannot be made outside openraft) and syncs them.
    fn entries_write(store: &LogStore, count: u64) {
        let mut log = store.lock();
        for index in 0..count {
            log.entry_append(Entry { log_id: log_id(index), payload: EntryPayload::Blank });
        }
        log.file.sync_all().expect("sync");
    }

    #[test]
    fn an_entry_reads_the_same_from_the_cache_the_file_and_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = LogStore::open(dir.path()).expect("open");
        // Commands of 3 MiB: the cache keeps the newest ten or so, the file all of them.
        let command_size_bytes = 3 << 20;
        let entries: Vec<Entry> = (0..16u64)
            .map(|index| {
                let payload = if index % 5 == 4 {
                    EntryPayload::Normal(crate::types::Proposal::Checkpoint)
                } else {
                    let command = vec![index as u8 ^ 0x5a; command_size_bytes + index as usize];
                    let proposal = crate::types::Proposal::Command { timestamp_ns: index, command: command.into() };
                    EntryPayload::Normal(proposal)
                };
                Entry { log_id: log_id(index), payload }
            })
            .collect();
        {
            let mut log = store.lock();
            for entry in &entries {
                log.entry_append(entry.clone());
            }
            log.file.sync_all().expect("sync");
            assert!(log.cache_size_bytes <= CACHE_SIZE_MAX_BYTES, "{} bytes cached", log.cache_size_bytes);
            assert!(log.cache.len() < entries.len(), "the oldest entries left the cache");
            assert_eq!(log.cache.back().map(|entry| entry.log_id), Some(log_id(15)));
            for entry in &entries {
                let got = log.entry_get(entry.log_id.index).expect("read").expect("held");
                assert_eq!(got.payload, entry.payload, "entry {}", entry.log_id.index);
                let slot = *log.slot(entry.log_id.index).expect("a slot");
                assert_eq!(log.entry_read(&slot).expect("read").payload, entry.payload);
            }
            log.cache_truncate(12);
            assert_eq!(log.cache.back().map(|entry| entry.log_id), Some(log_id(11)));
        }
        drop(store);
        let (store, opened) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!((opened.entries, opened.torn_bytes), (16, 0));
        let log = store.lock();
        assert!(log.cache.is_empty(), "a restart reads entries from the file");
        for entry in &entries {
            assert_eq!(log.entry_get(entry.log_id.index).expect("read").expect("held").payload, entry.payload);
        }
    }

    #[test]
    fn a_purge_frees_the_bytes_before_the_first_kept_record_and_start_up_reads_from_the_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = LogStore::open(dir.path()).expect("open");
        // Blank entries are small: enough of them to span several 4 KiB blocks.
        entries_write(&store, 2000);
        let (size_before, kept_offset) = {
            let mut log = store.lock();
            log.applied_index = Some(1499);
            log.last_purged = Some(log_id(1499));
            let drop_count = 1500;
            log.slots.drain(..drop_count);
            log.purge_mark_advance();
            (log.size_bytes, log.slots[0].offset)
        };
        let mark = small_file_read::<Purged>(&dir.path().join(PURGED_FILE)).expect("read").expect("a mark");
        assert_eq!(mark, Purged { log_id: log_id(1499), offset: kept_offset });
        let metadata = std::fs::metadata(dir.path().join(LOG_FILE)).expect("metadata");
        assert_eq!(metadata.len(), size_before, "the file keeps its size and offsets");
        let allocated = std::os::unix::fs::MetadataExt::blocks(&metadata) * 512;
        assert!(allocated < size_before - kept_offset / 2, "{allocated} bytes allocated of {size_before}");
        let mut head = vec![0xffu8; 4096];
        store.lock().file.read_exact_at(&mut head, 0).expect("read the head");
        assert!(head.iter().all(|byte| *byte == 0), "the purged head reads as zeros");
        drop(store);

        let (store, opened) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(opened.entries, 500, "only the entries after the mark are read");
        assert_eq!(opened.torn_bytes, 0);
        assert_eq!(store.log_id_at(1500), Some(log_id(1500)));
        assert_eq!(store.log_id_at(1499), Some(log_id(1499)), "the purged entry's log id is still named");
        assert_eq!(store.log_id_at(1498), None);
    }

    #[test]
    fn a_purge_past_the_applied_index_waits_for_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = LogStore::open(dir.path()).expect("open");
        entries_write(&store, 10);
        store.applied_advance(3);
        {
            let mut log = store.lock();
            log.last_purged = Some(log_id(7));
            log.slots.drain(..8);
            log.purge_mark_advance();
        }
        assert!(!dir.path().join(PURGED_FILE).exists(), "no mark past what the journal holds");
        store.applied_advance(7);
        let mark = small_file_read::<Purged>(&dir.path().join(PURGED_FILE)).expect("read").expect("a mark");
        assert_eq!(mark.log_id, log_id(7));
    }

    #[test]
    fn a_purge_mark_past_the_end_of_the_log_refuses_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(LogStore::open(dir.path()).expect("create"));
        let mark = Purged { log_id: log_id(9), offset: 1 << 20 };
        small_file_write(dir.path(), PURGED_FILE, &mark).expect("write the mark");
        match LogStore::open(dir.path()) {
            Err(LogStoreError::Corrupt { reason, .. }) => assert!(reason.contains("past its end"), "{reason}"),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a log shorter than its purge mark opened"),
        }
    }
}
