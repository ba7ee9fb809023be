//! Segment files: naming, the 64-byte segment header, listing and creation.
//!
//! A segment is a preallocated, zero-filled file named after its first op, so that listing a
//! directory gives the segments in order without opening them, and a reader can jump to the
//! segment holding op N. Its header repeats the first op and carries the chain state at the
//! segment's start (the previous record's checksum and timestamp), so an archived segment can be
//! verified on its own, years later, without its predecessors. Segments are created under a
//! temporary name, header written and synced, then renamed and the directory synced: a segment
//! with its final name always has a durable, valid header, so an invalid header is corruption,
//! never a torn creation.

use std::path::{Path, PathBuf};

use crate::error::{JournalError, RecordInvalid};
use crate::record::Chain;
use crate::storage::{Storage, StorageFile};

// Segment header layout, byte by byte (little-endian). docs/FORMATS.md repeats it.
//
//   0..4    magic              u32   "WDJS" (0x534a4457)
//   4..6    version            u16   1
//   6..8    reserved           u16   zero
//   8..16   first_op           u64   op of the segment's first record (also in the file name)
//   16..24  segment_size_bytes u64   the file's preallocated size
//   24..32  timestamp_ns_prev  u64   timestamp of the previous segment's last record; 0 at op 1
//   32..48  checksum_prev      u128  checksum of the previous segment's last record; 0 at op 1
//   48..64  checksum           u128  first 16 bytes of BLAKE3(header[0..48])
//   64..    records, the first at offset 64, each 8-aligned; zeroes after the last record
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"WDJS");
pub const SEGMENT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_SIZE_BYTES: u64 = 64;
/// Segments are a whole number of pages, so that mmap and preallocation work in whole pages.
pub const SEGMENT_SIZE_ALIGNMENT_BYTES: u64 = 4096;
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 40;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 4;
const RESERVED_OFFSET: usize = 6;
const FIRST_OP_OFFSET: usize = 8;
const SIZE_OFFSET: usize = 16;
const TIMESTAMP_PREV_OFFSET: usize = 24;
const CHECKSUM_PREV_OFFSET: usize = 32;
const CHECKSUM_OFFSET: usize = 48;
const HEADER_SIZE: usize = SEGMENT_HEADER_SIZE_BYTES as usize;

const _: () = assert!(MAGIC_OFFSET + 4 == VERSION_OFFSET);
const _: () = assert!(VERSION_OFFSET + 2 == RESERVED_OFFSET);
const _: () = assert!(RESERVED_OFFSET + 2 == FIRST_OP_OFFSET);
const _: () = assert!(FIRST_OP_OFFSET + 8 == SIZE_OFFSET);
const _: () = assert!(SIZE_OFFSET + 8 == TIMESTAMP_PREV_OFFSET);
const _: () = assert!(TIMESTAMP_PREV_OFFSET + 8 == CHECKSUM_PREV_OFFSET);
const _: () = assert!(CHECKSUM_PREV_OFFSET + 16 == CHECKSUM_OFFSET);
const _: () = assert!(CHECKSUM_OFFSET + 16 == HEADER_SIZE);
const _: () = assert!(HEADER_SIZE == 64);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN % SEGMENT_SIZE_ALIGNMENT_BYTES == 0);

const NAME_PREFIX: &str = "segment-";
const NAME_SUFFIX: &str = ".wal";
const TEMPORARY_SUFFIX: &str = ".tmp";
const NAME_DIGITS: usize = 20;

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_op: u64,
    pub segment_size_bytes: u64,
    pub timestamp_ns_prev: u64,
    pub checksum_prev: u128,
}

impl SegmentHeader {
    /// The chain state a segment's first record must continue.
    pub fn chain(&self) -> Chain {
        Chain { op_next: self.first_op, checksum_prev: self.checksum_prev, timestamp_ns_min: self.timestamp_ns_prev }
    }
}

fn header_checksum(prefix: &[u8]) -> u128 {
    assert_eq!(prefix.len(), CHECKSUM_OFFSET);
    let hash = blake3::hash(prefix);
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

pub fn segment_header_encode(header: &SegmentHeader) -> [u8; 64] {
    assert!(header.first_op >= 1);
    assert!(header.segment_size_bytes >= SEGMENT_SIZE_BYTES_MIN);
    let mut bytes = [0u8; HEADER_SIZE];
    bytes[MAGIC_OFFSET..][..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    bytes[VERSION_OFFSET..][..2].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    bytes[FIRST_OP_OFFSET..][..8].copy_from_slice(&header.first_op.to_le_bytes());
    bytes[SIZE_OFFSET..][..8].copy_from_slice(&header.segment_size_bytes.to_le_bytes());
    bytes[TIMESTAMP_PREV_OFFSET..][..8].copy_from_slice(&header.timestamp_ns_prev.to_le_bytes());
    bytes[CHECKSUM_PREV_OFFSET..][..16].copy_from_slice(&header.checksum_prev.to_le_bytes());
    let checksum = header_checksum(&bytes[..CHECKSUM_OFFSET]);
    bytes[CHECKSUM_OFFSET..][..16].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

pub fn segment_header_decode(bytes: &[u8]) -> Result<SegmentHeader, RecordInvalid> {
    assert_eq!(bytes.len(), HEADER_SIZE);
    let field = |offset: usize, size: usize| &bytes[offset..offset + size];
    let magic = u32::from_le_bytes(field(MAGIC_OFFSET, 4).try_into().expect("4"));
    if magic != SEGMENT_MAGIC {
        return Err(RecordInvalid::Magic { found: magic });
    }
    let version = u16::from_le_bytes(field(VERSION_OFFSET, 2).try_into().expect("2"));
    if version != SEGMENT_VERSION {
        return Err(RecordInvalid::Version { found: version });
    }
    let reserved = u16::from_le_bytes(field(RESERVED_OFFSET, 2).try_into().expect("2"));
    if reserved != 0 {
        return Err(RecordInvalid::Reserved { found: u32::from(reserved) });
    }
    let stored = u128::from_le_bytes(field(CHECKSUM_OFFSET, 16).try_into().expect("16"));
    let computed = header_checksum(&bytes[..CHECKSUM_OFFSET]);
    if stored != computed {
        return Err(RecordInvalid::Checksum { stored, computed });
    }
    let first_op = u64::from_le_bytes(field(FIRST_OP_OFFSET, 8).try_into().expect("8"));
    if first_op == 0 {
        return Err(RecordInvalid::Op { expected: 1, found: 0 });
    }
    if first_op > OP_MAX {
        // No journal gets there honestly; one that claims to would overflow the op sequence.
        return Err(RecordInvalid::Op { expected: OP_MAX, found: first_op });
    }
    assert!(first_op >= 1);
    Ok(SegmentHeader {
        first_op,
        segment_size_bytes: u64::from_le_bytes(field(SIZE_OFFSET, 8).try_into().expect("8")),
        timestamp_ns_prev: u64::from_le_bytes(field(TIMESTAMP_PREV_OFFSET, 8).try_into().expect("8")),
        checksum_prev: u128::from_le_bytes(field(CHECKSUM_PREV_OFFSET, 16).try_into().expect("16")),
    })
}

/// The largest op a journal may hold: 2^62 (at ten million ops a second, 14,000 years), so that
/// the op sequence never overflows, however a segment header was forged.
pub const OP_MAX: u64 = 1 << 62;

/// `segment-{first_op:020}.wal`: zero-padded so that names sort in op order.
pub fn segment_file_name(first_op: u64) -> String {
    let name = format!("{NAME_PREFIX}{first_op:0NAME_DIGITS$}{NAME_SUFFIX}");
    assert_eq!(name.len(), NAME_PREFIX.len() + NAME_DIGITS + NAME_SUFFIX.len());
    name
}

/// What a directory entry is, judged by its name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentName {
    Segment {
        first_op: u64,
    },
    /// A segment whose creation did not finish (crash before the rename).
    Temporary,
}

pub fn segment_name_parse(name: &str) -> Option<SegmentName> {
    if let Some(stem) = name.strip_suffix(TEMPORARY_SUFFIX) {
        return segment_name_parse(stem).map(|_| SegmentName::Temporary);
    }
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let first_op: u64 = digits.parse().ok()?;
    (first_op >= 1).then_some(SegmentName::Segment { first_op })
}

/// The journal's directories under the data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `DIR/journal`: the live segments, the last one being written.
    pub live: PathBuf,
    /// `DIR/journal/archive`: sealed segments moved by `archive_before`; never deleted.
    pub archive: PathBuf,
    /// `DIR/journal/quarantine`: what `truncate_at` set aside.
    pub quarantine: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        let live = dir.join("journal");
        Layout { archive: live.join("archive"), quarantine: live.join("quarantine"), live }
    }
}

/// A segment file found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentEntry {
    pub path: PathBuf,
    pub first_op: u64,
}

/// Segments and leftover temporaries in `dir`, segments sorted by first op. A missing directory
/// lists as empty; names that are not ours are ignored.
pub fn segments_list<S: Storage>(storage: &S, dir: &Path) -> Result<(Vec<SegmentEntry>, Vec<PathBuf>), JournalError> {
    let names = storage.list_dir(dir).map_err(|e| JournalError::io(dir, "list directory", e))?;
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    for name in names {
        match segment_name_parse(&name) {
            Some(SegmentName::Segment { first_op }) => segments.push(SegmentEntry { path: dir.join(&name), first_op }),
            Some(SegmentName::Temporary) => temporaries.push(dir.join(&name)),
            None => {}
        }
    }
    segments.sort_by_key(|s| s.first_op);
    assert!(segments.windows(2).all(|w| w[0].first_op < w[1].first_op));
    Ok((segments, temporaries))
}

/// Creates a segment durably: temporary name, preallocate, header, sync, rename, sync dir.
pub fn segment_create<S: Storage>(
    storage: &S,
    dir: &Path,
    header: &SegmentHeader,
) -> Result<(S::File, PathBuf), JournalError> {
    assert!(header.segment_size_bytes % SEGMENT_SIZE_ALIGNMENT_BYTES == 0);
    let path = dir.join(segment_file_name(header.first_op));
    let path_temporary = dir.join(format!("{}{TEMPORARY_SUFFIX}", segment_file_name(header.first_op)));
    let mut file = storage
        .create_file(&path_temporary, header.segment_size_bytes)
        .map_err(|e| JournalError::io(&path_temporary, "create segment", e))?;
    assert_eq!(file.size_bytes(), header.segment_size_bytes);
    file.write_at(0, &segment_header_encode(header))
        .map_err(|e| JournalError::io(&path_temporary, "write segment header", e))?;
    file.sync(0, SEGMENT_HEADER_SIZE_BYTES)
        .map_err(|source| JournalError::SyncFailed { path: path_temporary.clone(), source })?;
    storage.rename(&path_temporary, &path).map_err(|e| JournalError::io(&path, "rename new segment", e))?;
    storage.sync_dir(dir).map_err(|source| JournalError::SyncFailed { path: dir.to_path_buf(), source })?;
    Ok((file, path))
}

/// Opens a segment and reads its header, checking that name and header agree and that the file
/// is no longer than its header says. A file shorter than its header says (its tail was cut off)
/// passes: the caller compares `size_bytes()` and decides.
pub fn segment_open<S: Storage>(
    storage: &S,
    entry: &SegmentEntry,
    mode: crate::storage::OpenMode,
) -> Result<(S::File, Result<SegmentHeader, RecordInvalid>), JournalError> {
    let mut file =
        storage.open_file(&entry.path, mode).map_err(|e| JournalError::io(&entry.path, "open segment", e))?;
    let file_size_bytes = file.size_bytes();
    if file_size_bytes < SEGMENT_HEADER_SIZE_BYTES {
        let invalid = RecordInvalid::SegmentSize { header_size_bytes: 0, file_size_bytes };
        return Ok((file, Err(invalid)));
    }
    let bytes = file.read_at(0, HEADER_SIZE).map_err(|e| JournalError::io(&entry.path, "read segment header", e))?;
    let decoded = segment_header_decode(bytes).and_then(|header| {
        if header.first_op != entry.first_op {
            return Err(RecordInvalid::SegmentName { name_first_op: entry.first_op, header_first_op: header.first_op });
        }
        if header.segment_size_bytes < file_size_bytes || header.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN {
            return Err(RecordInvalid::SegmentSize { header_size_bytes: header.segment_size_bytes, file_size_bytes });
        }
        Ok(header)
    });
    Ok((file, decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(segment_file_name(1), "segment-00000000000000000001.wal");
        assert_eq!(segment_name_parse(&segment_file_name(u64::MAX)), Some(SegmentName::Segment { first_op: u64::MAX }));
        assert_eq!(segment_name_parse("segment-00000000000000000007.wal.tmp"), Some(SegmentName::Temporary));
        assert_eq!(segment_name_parse("segment-0000000000000000007.wal"), None);
        assert_eq!(segment_name_parse("segment-00000000000000000000.wal"), None);
        assert_eq!(segment_name_parse("archive"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_round_trips_and_rejects_a_flipped_bit() {
        let header = SegmentHeader {
            first_op: 42,
            segment_size_bytes: 1 << 20,
            timestamp_ns_prev: 7,
            checksum_prev: 0xdead_beef,
        };
        let mut bytes = segment_header_encode(&header);
        assert_eq!(segment_header_decode(&bytes), Ok(header));
        bytes[9] ^= 1;
        assert!(matches!(segment_header_decode(&bytes), Err(RecordInvalid::Checksum { .. })));
    }
}
