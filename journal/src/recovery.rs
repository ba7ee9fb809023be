//! Recovery at open, and the operator's `truncate_at`.
//!
//! Recovery walks the live segments in op order, verifying every segment header and every
//! record against the hash chain, to the first place the chain stops. A segment that simply
//! ends (zeroes to its end) hands over to the next one, whose header must continue the chain.
//! Where the chain stops on non-zero bytes, or a segment header does not continue it, the
//! question is torn tail or corruption, and the answer is whether any self-consistent record
//! exists at or after that point: if one does, an acknowledged record may have been damaged and
//! only a person may decide to drop data, so open refuses with `Corrupt` naming the segment,
//! offset and op; if none does, what follows is a write the crash cut short, and it is zeroed
//! and reported. Segments are sealed (synced) before the next is created, so a genuine torn tail
//! is only ever in the last segment, and a stop in any earlier segment is corruption outright.

use std::path::{Path, PathBuf};

use crate::error::{JournalError, RecordInvalid};
use crate::record::Chain;
use crate::scan::{nonzero_end, record_at, record_find_valid, zero_range};
use crate::segment::{
    segment_create, segment_file_name, segment_open, segments_list, Layout, SegmentEntry, SegmentHeader,
    SEGMENT_HEADER_SIZE_BYTES,
};
use crate::storage::{OpenMode, Storage, StorageFile};

/// What open found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The first op in the live segments (earlier ops are in archive/).
    pub op_first: u64,
    /// The last valid op; `op_first - 1` if the live segments hold no record.
    pub op_last: u64,
    /// Timestamp of the last valid record (0 for an empty journal).
    pub timestamp_ns_last: u64,
    /// Checksum of the last valid record, which the next record chains from (0 when empty).
    pub checksum_last: u128,
    /// Live segments after recovery, in op order; the last one is written next.
    pub segments: Vec<PathBuf>,
    /// The torn tail that was zeroed, if any.
    pub torn_tail: Option<TornTail>,
    /// Segments whose creation a crash interrupted (`*.wal.tmp`), removed.
    pub temporaries_removed: Vec<PathBuf>,
    /// Segment files found shorter than their header says, grown back with zeroes.
    pub segments_regrown: Vec<PathBuf>,
}

/// A torn tail truncated by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Byte offset in `segment` where the first invalid record started.
    pub offset: u64,
    /// The op that was expected there (it, and anything after, was never durable).
    pub op: u64,
    /// Bytes zeroed from `offset`.
    pub size_bytes: u64,
    /// Why the record at `offset` was invalid.
    pub reason: RecordInvalid,
}

/// The journal state recovery hands to the writer.
pub(crate) struct Opened<F> {
    pub segments: Vec<SegmentEntry>,
    pub active: F,
    pub write_offset: u64,
    pub chain: Chain,
    pub recovered: Recovered,
}

/// Where the chain stopped on something other than clean zeroes.
struct Stop {
    index: usize,
    offset: u64,
    op: u64,
    reason: RecordInvalid,
}

struct Walk {
    op_first: u64,
    chain: Chain,
    /// Per walked segment: offset just past its last valid record.
    data_ends: Vec<u64>,
    stop: Option<Stop>,
    segments_regrown: Vec<PathBuf>,
}

pub(crate) fn recover<S: Storage>(
    storage: &S,
    layout: &Layout,
    segment_size_bytes: u64,
) -> Result<Opened<S::File>, JournalError> {
    storage.create_dir_all(&layout.live).map_err(|e| JournalError::io(&layout.live, "create directory", e))?;
    let (mut segments, temporaries) = segments_list(storage, &layout.live)?;
    for path in &temporaries {
        storage.remove_file(path).map_err(|e| JournalError::io(path, "remove unfinished segment", e))?;
    }
    if segments.is_empty() {
        return recover_empty(storage, layout, segment_size_bytes, temporaries);
    }
    let walk = walk(storage, &segments)?;
    let torn_tail = match &walk.stop {
        None => None,
        Some(stop) => Some(stop_resolve(storage, &segments, stop)?),
    };
    let (index_last, write_offset) = match &walk.stop {
        None => (segments.len() - 1, walk.data_ends[segments.len() - 1]),
        Some(stop) => (stop.index, stop.offset),
    };
    segments.truncate(index_last + 1);
    if !temporaries.is_empty() {
        sync_dir(storage, &layout.live)?;
    }
    let active = storage
        .open_file(&segments[index_last].path, OpenMode::ReadWrite)
        .map_err(|e| JournalError::io(&segments[index_last].path, "open segment", e))?;
    assert!(write_offset >= SEGMENT_HEADER_SIZE_BYTES);
    assert!(write_offset <= active.size_bytes());
    let recovered = Recovered {
        op_first: walk.op_first,
        op_last: walk.chain.op_next - 1,
        timestamp_ns_last: walk.chain.timestamp_ns_min,
        checksum_last: walk.chain.checksum_prev,
        segments: segments.iter().map(|s| s.path.clone()).collect(),
        torn_tail,
        temporaries_removed: temporaries,
        segments_regrown: walk.segments_regrown,
    };
    Ok(Opened { segments, active, write_offset, chain: walk.chain, recovered })
}

fn sync_dir<S: Storage>(storage: &S, dir: &Path) -> Result<(), JournalError> {
    storage.sync_dir(dir).map_err(|source| JournalError::SyncFailed { path: dir.to_path_buf(), source })
}

/// No live segment: a new journal (create segment 1), unless archive/ says it is not new.
fn recover_empty<S: Storage>(
    storage: &S,
    layout: &Layout,
    segment_size_bytes: u64,
    temporaries: Vec<PathBuf>,
) -> Result<Opened<S::File>, JournalError> {
    let (archived, _) = segments_list(storage, &layout.archive)?;
    if !archived.is_empty() {
        return Err(JournalError::LiveSegmentsMissing {
            dir: layout.live.clone(),
            archived_count: archived.len() as u64,
        });
    }
    let chain = Chain::GENESIS;
    let header = SegmentHeader {
        first_op: chain.op_next,
        segment_size_bytes,
        timestamp_ns_prev: chain.timestamp_ns_min,
        checksum_prev: chain.checksum_prev,
    };
    let (active, path) = segment_create(storage, &layout.live, &header)?;
    assert_eq!(active.size_bytes(), segment_size_bytes);
    assert_eq!(path, layout.live.join(segment_file_name(1)));
    let entry = SegmentEntry { path: path.clone(), first_op: chain.op_next };
    let recovered = Recovered {
        op_first: 1,
        op_last: 0,
        timestamp_ns_last: 0,
        checksum_last: 0,
        segments: vec![path],
        torn_tail: None,
        temporaries_removed: temporaries,
        segments_regrown: Vec::new(),
    };
    Ok(Opened { segments: vec![entry], active, write_offset: SEGMENT_HEADER_SIZE_BYTES, chain, recovered })
}

/// Does a segment header continue the chain where the previous segment left it?
pub(crate) fn segment_continues(chain: &Chain, header: &SegmentHeader) -> Result<(), RecordInvalid> {
    if header.first_op != chain.op_next {
        return Err(RecordInvalid::Op { expected: chain.op_next, found: header.first_op });
    }
    if header.checksum_prev != chain.checksum_prev {
        return Err(RecordInvalid::Chain { expected: chain.checksum_prev, found: header.checksum_prev });
    }
    if header.timestamp_ns_prev != chain.timestamp_ns_min {
        return Err(RecordInvalid::Timestamp {
            previous_ns: chain.timestamp_ns_min,
            found_ns: header.timestamp_ns_prev,
        });
    }
    Ok(())
}

/// Walks the segments to where the chain stops. A segment header that does not verify is
/// corruption outright (headers are durable before a segment gets its name).
fn walk<S: Storage>(storage: &S, segments: &[SegmentEntry]) -> Result<Walk, JournalError> {
    assert!(!segments.is_empty());
    let mut walk = Walk {
        op_first: segments[0].first_op,
        chain: Chain::GENESIS,
        data_ends: Vec::with_capacity(segments.len()),
        stop: None,
        segments_regrown: Vec::new(),
    };
    // Junk after the last record of a sealed segment is harmless if the next segment's header
    // continues the chain (no record is missing); it only stops the walk if it does not.
    let mut stop_pending: Option<Stop> = None;
    for (index, entry) in segments.iter().enumerate() {
        let (mut file, header) = segment_open(storage, entry, OpenMode::ReadWrite)?;
        let op_expected = if index == 0 { entry.first_op } else { walk.chain.op_next };
        let header = header.map_err(|reason| JournalError::Corrupt {
            segment: entry.path.clone(),
            offset: 0,
            op: op_expected,
            reason,
        })?;
        if index == 0 {
            walk.chain = header.chain();
        } else if let Err(reason) = segment_continues(&walk.chain, &header) {
            let offset = walk.data_ends[index - 1];
            let stop = Stop { index: index - 1, offset, op: op_expected, reason };
            walk.stop = Some(stop_pending.take().unwrap_or(stop));
            return Ok(walk);
        }
        stop_pending = None;
        if file.size_bytes() < header.segment_size_bytes {
            file.grow(header.segment_size_bytes)
                .map_err(|e| JournalError::io(&entry.path, "grow truncated segment", e))?;
            walk.segments_regrown.push(entry.path.clone());
        }
        let (data_end, invalid) = segment_scan(&mut file, &entry.path, &mut walk.chain)?;
        walk.data_ends.push(data_end);
        if let Some(reason) = invalid {
            let stop = Stop { index, offset: data_end, op: walk.chain.op_next, reason };
            if index + 1 == segments.len() {
                walk.stop = Some(stop);
                return Ok(walk);
            }
            stop_pending = Some(stop);
        }
    }
    assert_eq!(walk.data_ends.len(), segments.len());
    Ok(walk)
}

/// Verifies records from the segment header on, advancing `chain`. Returns the offset past the
/// last valid record and, if the bytes there are not all zero, why they are not a record.
fn segment_scan<F: StorageFile>(
    file: &mut F,
    path: &Path,
    chain: &mut Chain,
) -> Result<(u64, Option<RecordInvalid>), JournalError> {
    let mut offset = SEGMENT_HEADER_SIZE_BYTES;
    loop {
        match record_at(file, path, offset, chain)? {
            Ok(header) => {
                *chain = chain.advance(&header);
                offset += header.record_size_bytes();
                assert!(offset <= file.size_bytes());
            }
            Err(reason) => {
                let clean = nonzero_end(file, path, offset)? == offset;
                return Ok((offset, (!clean).then_some(reason)));
            }
        }
    }
}

/// Torn tail or corruption? A later segment exists only once this one was synced (sealed
/// before rotation), so its presence proves the data here was durable: corruption. Otherwise,
/// corruption if any self-consistent record lies at or after the stop; else a torn tail, zeroed.
fn stop_resolve<S: Storage>(storage: &S, segments: &[SegmentEntry], stop: &Stop) -> Result<TornTail, JournalError> {
    let entry = &segments[stop.index];
    let corrupt =
        || JournalError::Corrupt { segment: entry.path.clone(), offset: stop.offset, op: stop.op, reason: stop.reason };
    if stop.index + 1 < segments.len() {
        return Err(corrupt());
    }
    let mut file = storage
        .open_file(&entry.path, OpenMode::ReadWrite)
        .map_err(|e| JournalError::io(&entry.path, "open segment", e))?;
    if record_find_valid(&mut file, &entry.path, stop.offset)?.is_some() {
        return Err(corrupt());
    }
    let end = nonzero_end(&mut file, &entry.path, stop.offset)?;
    assert!(end > stop.offset, "a stop is on non-zero bytes");
    zero_range(&mut file, &entry.path, stop.offset, end)?;
    Ok(TornTail {
        segment: entry.path.clone(),
        offset: stop.offset,
        op: stop.op,
        size_bytes: end - stop.offset,
        reason: stop.reason,
    })
}

/// What `truncate_at` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// A copy of the segment as it was before truncation.
    pub segment_copy: PathBuf,
    /// Later live segments, moved (not deleted) into journal/quarantine/.
    pub segments_quarantined: Vec<PathBuf>,
    /// Bytes zeroed from the offset.
    pub size_bytes: u64,
}

/// The operator's answer to `Corrupt`: drop the record at `offset` in `segment` and everything
/// after it, so that the next open ends the journal there. Nothing is destroyed: the segment is
/// first copied to `DIR/journal/quarantine/`, and later segments are moved there. Run it only
/// with walletd stopped. `dir` is the data directory (the one holding `journal/`); `segment` is
/// the path or file name printed in the `Corrupt` message.
pub fn truncate_at(dir: &Path, segment: &Path, offset: u64) -> Result<Truncated, JournalError> {
    truncate_at_with(&crate::storage::FileStorage::default(), dir, segment, offset)
}

/// `truncate_at` on any storage (tests use `SimStorage`).
pub fn truncate_at_with<S: Storage>(
    storage: &S,
    dir: &Path,
    segment: &Path,
    offset: u64,
) -> Result<Truncated, JournalError> {
    let layout = Layout::new(dir);
    let invalid = |reason| JournalError::TruncateInvalid { segment: segment.to_path_buf(), offset, reason };
    let (segments, _) = segments_list(storage, &layout.live)?;
    let index = segments
        .iter()
        .position(|s| Some(s.path.file_name()) == Some(segment.file_name()))
        .ok_or_else(|| invalid("not a live segment of this journal (see journal/ under dir)"))?;
    if offset < SEGMENT_HEADER_SIZE_BYTES || offset % crate::record::RECORD_ALIGNMENT_BYTES != 0 {
        return Err(invalid("records start at offset 64 or later, at multiples of 8"));
    }
    let entry = &segments[index];
    let mut file = storage
        .open_file(&entry.path, OpenMode::ReadWrite)
        .map_err(|e| JournalError::io(&entry.path, "open segment", e))?;
    if offset > file.size_bytes() {
        return Err(invalid("offset is past the end of the segment"));
    }
    storage
        .create_dir_all(&layout.quarantine)
        .map_err(|e| JournalError::io(&layout.quarantine, "create directory", e))?;
    let copy_name = format!("{}.truncated-at-{offset}", segment_file_name(entry.first_op));
    let segment_copy = layout.quarantine.join(copy_name);
    file_copy(storage, &mut file, &entry.path, &segment_copy)?;
    let mut segments_quarantined = Vec::new();
    for later in &segments[index + 1..] {
        let to = layout.quarantine.join(later.path.file_name().expect("segment file name"));
        storage.rename(&later.path, &to).map_err(|e| JournalError::io(&later.path, "move to quarantine", e))?;
        segments_quarantined.push(to);
    }
    sync_dir(storage, &layout.quarantine)?;
    sync_dir(storage, &layout.live)?;
    let end = nonzero_end(&mut file, &entry.path, offset)?;
    zero_range(&mut file, &entry.path, offset, end)?;
    assert!(end >= offset);
    assert_eq!(segments_quarantined.len(), segments.len() - index - 1);
    Ok(Truncated { segment_copy, segments_quarantined, size_bytes: end - offset })
}

fn file_copy<S: Storage>(storage: &S, from: &mut S::File, from_path: &Path, to: &Path) -> Result<(), JournalError> {
    const CHUNK_SIZE_BYTES: u64 = 1 << 20;
    let size_bytes = from.size_bytes();
    let mut copy =
        storage.create_file(to, size_bytes).map_err(|e| JournalError::io(to, "create quarantine copy", e))?;
    let mut offset = 0;
    while offset < size_bytes {
        let chunk_bytes = (size_bytes - offset).min(CHUNK_SIZE_BYTES);
        let chunk =
            from.read_at(offset, chunk_bytes as usize).map_err(|e| JournalError::io(from_path, "read segment", e))?;
        copy.write_at(offset, chunk).map_err(|e| JournalError::io(to, "write quarantine copy", e))?;
        offset += chunk_bytes;
    }
    assert_eq!(offset, size_bytes);
    copy.sync(0, size_bytes).map_err(|source| JournalError::SyncFailed { path: to.to_path_buf(), source })
}
