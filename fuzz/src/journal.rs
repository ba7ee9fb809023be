//! Journal directories from fuzz inputs, in memory (`SimStorage`), for the recovery and reader
//! targets.
//!
//! ```text
//! offset size field
//!      0    1 flags      SEAL_HEADERS, SEAL_RECORDS, CHAIN, NUMBER, archived count (bits 4-5),
//!                        OPEN_UNTIL, APPEND
//!      1    1 unsealed   the index of one record candidate left as it is (≥ 16: none)
//!      2    1 param_a    reader: op_first − 1 (mod 16); recovery: segment size in 4 KiB − 1 (mod 4)
//!      3    1 param_b    bit 0: the last segment's name is one op off its header;
//!                        bit 1: a leftover `.wal.tmp` is added; bits 2-7: the reader's op_last span
//!      4    …            segment files, back to back, each starting "WDJS" 01 00 00 00
//! ```
//!
//! The files are split where the 8 bytes every valid segment header starts with occur (bytes
//! before the first occurrence form a segment of their own); at most `SEGMENTS_MAX`. The first
//! `archived count` go to `journal/archive/`, the rest to `journal/`, each named after the
//! first op its header carries.
//!
//! Repairs, in file order, as the flags ask: a segment header gets its BLAKE3 checksum (and,
//! with CHAIN, the chain state where the previous segment's records left it; with NUMBER, the
//! next op as its first op); a record candidate (record magic at an 8-aligned offset, and room
//! for the body its header claims) gets its checksum (with CHAIN, the previous record's
//! checksum as `checksum_prev`; with NUMBER, the next op). Nothing else is touched, so kind,
//! version, reserved fields, sizes, padding and timestamps stay the fuzzer's.

use std::path::{Path, PathBuf};

use walletd_core::bytes::{u128_at, u32_at, u64_at};

use walletd_journal::{
    record_checksum, record_size_bytes, segment_file_name, SimStorage, Storage, StorageFile, RECORD_HEADER_SIZE_BYTES,
    RECORD_MAGIC, SEGMENT_HEADER_SIZE_BYTES, SEGMENT_MAGIC, SEGMENT_VERSION,
};

pub const SEAL_HEADERS: u8 = 1 << 0;
pub const SEAL_RECORDS: u8 = 1 << 1;
pub const CHAIN: u8 = 1 << 2;
pub const NUMBER: u8 = 1 << 3;
const ARCHIVED_SHIFT: u8 = 4;
const ARCHIVED_MASK: u8 = 0b11 << ARCHIVED_SHIFT;
/// Reader: `Reader::open_until` (then `follow`) instead of `Reader::open`.
pub const OPEN_UNTIL: u8 = 1 << 6;
/// Recovery: after a successful open, append a record, commit, and open again.
pub const APPEND: u8 = 1 << 7;
/// The repairs a valid seed asks for.
pub const SEAL_ALL: u8 = SEAL_HEADERS | SEAL_RECORDS | CHAIN | NUMBER;

pub const NAME_OFF_BY_ONE: u8 = 1 << 0;
pub const TEMPORARY: u8 = 1 << 1;

pub const CONTROL_SIZE_BYTES: usize = 4;
pub const SEGMENTS_MAX: usize = 4;
/// What a repaired segment header may claim as its size: a larger claim is replaced by the
/// file's size, because recovery grows a short file to its header's size (a finding: that
/// size has no upper bound at open, see docs/TESTING.md) and the simulated disk holds it all
/// in memory.
pub const SEGMENT_SIZE_REPAIR_MAX_BYTES: u64 = 1 << 14;
/// The data directory the journal is built in (`DIR/journal/`).
pub const DIR: &str = "/fuzz";

const SENTINEL: [u8; 8] = {
    let magic = SEGMENT_MAGIC.to_le_bytes();
    let version = SEGMENT_VERSION.to_le_bytes();
    [magic[0], magic[1], magic[2], magic[3], version[0], version[1], 0, 0]
};

/// A fuzz input, split into its control bytes and segment files.
pub struct JournalInput<'a> {
    pub flags: u8,
    pub unsealed: u8,
    pub param_a: u8,
    pub param_b: u8,
    pub files: Vec<&'a [u8]>,
}

impl<'a> JournalInput<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<JournalInput<'a>> {
        let (control, data) = bytes.split_first_chunk::<CONTROL_SIZE_BYTES>()?;
        let [flags, unsealed, param_a, param_b] = *control;
        Some(JournalInput { flags, unsealed, param_a, param_b, files: files_split(data) })
    }

    pub fn archived_count(&self) -> usize {
        usize::from((self.flags & ARCHIVED_MASK) >> ARCHIVED_SHIFT).min(self.files.len())
    }
}

/// The inverse of `JournalInput::parse`, for seeds. `archived` of the files go to archive/.
pub fn journal_input(flags: u8, unsealed: u8, param_a: u8, param_b: u8, archived: usize, files: &[Vec<u8>]) -> Vec<u8> {
    assert!(archived <= 3 && files.len() <= SEGMENTS_MAX);
    let flags = (flags & !ARCHIVED_MASK) | ((archived as u8) << ARCHIVED_SHIFT);
    let mut input = vec![flags, unsealed, param_a, param_b];
    for file in files {
        assert!(file.starts_with(&SENTINEL), "a seed segment starts with a segment header");
        input.extend_from_slice(file);
    }
    input
}

fn files_split(data: &[u8]) -> Vec<&[u8]> {
    let mut starts: Vec<usize> = Vec::new();
    if !data.starts_with(&SENTINEL) && !data.is_empty() {
        starts.push(0);
    }
    let mut from = 0;
    while starts.len() < SEGMENTS_MAX {
        match data[from..].windows(SENTINEL.len()).position(|window| window == SENTINEL) {
            Some(position) => {
                starts.push(from + position);
                from += position + 1;
            }
            None => break,
        }
    }
    let mut files = Vec::with_capacity(starts.len());
    for (index, start) in starts.iter().enumerate() {
        let end = starts.get(index + 1).copied().unwrap_or(data.len());
        files.push(&data[*start..end]);
    }
    files
}

/// Where the chain stands while repairing: what the next record continues.
#[derive(Clone, Copy)]
struct Chain {
    op_next: u64,
    checksum_prev: u128,
    timestamp_ns: u64,
}

/// A journal built in memory from an input.
pub struct Built {
    pub storage: SimStorage,
    /// Paths of the segment files written, archived ones first.
    pub paths: Vec<PathBuf>,
    pub archived_count: usize,
}

/// Repairs the input's files as its flags ask and writes them into a fresh `SimStorage`.
pub fn journal_build(input: &JournalInput<'_>) -> Built {
    let storage = SimStorage::new(u64::from(input.param_a));
    let live = Path::new(DIR).join("journal");
    let archive = live.join("archive");
    storage.create_dir_all(&live).expect("sim mkdir");
    let archived_count = input.archived_count();
    if archived_count > 0 {
        storage.create_dir_all(&archive).expect("sim mkdir");
    }
    let mut chain: Option<Chain> = None;
    let mut record_index = 0u32;
    let mut paths = Vec::new();
    for (index, file) in input.files.iter().enumerate() {
        let mut bytes = file.to_vec();
        header_repair(input.flags, &mut bytes, chain);
        let header_chain = header_chain(&bytes);
        chain = records_repair(input, &mut bytes, header_chain.or(chain), &mut record_index).or(chain);
        let first_op = header_chain.map_or(index as u64 + 1, |c| c.op_next);
        let last = index + 1 == input.files.len();
        let name_op = if last && input.param_b & NAME_OFF_BY_ONE != 0 { first_op.wrapping_add(1) } else { first_op };
        let dir = if index < archived_count { &archive } else { &live };
        let path = dir.join(segment_file_name(name_op.max(1)));
        if file_write(&storage, &path, &bytes) {
            paths.push(path);
        }
    }
    if input.param_b & TEMPORARY != 0 {
        let path = live.join(format!("{}.tmp", segment_file_name(u64::MAX)));
        file_write(&storage, &path, &[1; 64]);
    }
    Built { storage, paths, archived_count }
}

/// Writes a whole file, durably; false if the name is taken (two segments with one first op).
fn file_write(storage: &SimStorage, path: &Path, bytes: &[u8]) -> bool {
    let Ok(mut file) = storage.create_file(path, bytes.len() as u64) else {
        return false;
    };
    file.write_at(0, bytes).expect("sim write inside the file");
    file.sync(0, bytes.len() as u64).expect("sim sync");
    true
}

fn header_repair(flags: u8, bytes: &mut [u8], chain: Option<Chain>) {
    let header_size = SEGMENT_HEADER_SIZE_BYTES as usize;
    if flags & SEAL_HEADERS == 0 || bytes.len() < header_size {
        return;
    }
    if let (true, Some(chain)) = (flags & CHAIN != 0, chain) {
        if flags & NUMBER != 0 {
            bytes[8..16].copy_from_slice(&chain.op_next.to_le_bytes());
        }
        bytes[24..32].copy_from_slice(&chain.timestamp_ns.to_le_bytes());
        bytes[32..48].copy_from_slice(&chain.checksum_prev.to_le_bytes());
    }
    if u64_at(bytes, 16) > SEGMENT_SIZE_REPAIR_MAX_BYTES {
        let size_bytes = (bytes.len() as u64).max(4096);
        bytes[16..24].copy_from_slice(&size_bytes.to_le_bytes());
    }
    let checksum: [u8; 16] = blake3::hash(&bytes[..48]).as_bytes()[..16].try_into().expect("16 bytes");
    bytes[48..64].copy_from_slice(&checksum);
}

/// The chain state a segment header announces (if the file has a header's worth of bytes).
fn header_chain(bytes: &[u8]) -> Option<Chain> {
    if bytes.len() < SEGMENT_HEADER_SIZE_BYTES as usize {
        return None;
    }
    Some(Chain { op_next: u64_at(bytes, 8), checksum_prev: u128_at(bytes, 32), timestamp_ns: u64_at(bytes, 24) })
}

/// Seals the record candidates of one segment; returns the chain after the last one sealed.
fn records_repair(
    input: &JournalInput<'_>,
    bytes: &mut [u8],
    mut chain: Option<Chain>,
    record_index: &mut u32,
) -> Option<Chain> {
    if input.flags & SEAL_RECORDS == 0 {
        return chain;
    }
    let header_size = RECORD_HEADER_SIZE_BYTES as usize;
    let mut offset = SEGMENT_HEADER_SIZE_BYTES as usize;
    while offset + header_size <= bytes.len() {
        let record = &mut bytes[offset..];
        let size = record_size_bytes(u64::from(u32_at(record, 8)));
        if u32_at(record, 0) != RECORD_MAGIC || size > record.len() as u64 {
            offset += 8;
            continue;
        }
        let index = *record_index;
        *record_index += 1;
        if input.unsealed < 16 && index == u32::from(input.unsealed) {
            offset += 8;
            continue;
        }
        if let (true, Some(chain)) = (input.flags & CHAIN != 0, chain) {
            if input.flags & NUMBER != 0 {
                record[16..24].copy_from_slice(&chain.op_next.to_le_bytes());
            }
            record[32..48].copy_from_slice(&chain.checksum_prev.to_le_bytes());
        }
        let body_end = header_size + u32_at(record, 8) as usize;
        let checksum = record_checksum(&record[..48], &record[header_size..body_end]);
        record[48..64].copy_from_slice(&checksum.to_le_bytes());
        chain = Some(Chain {
            op_next: u64_at(record, 16).wrapping_add(1),
            checksum_prev: checksum,
            timestamp_ns: u64_at(record, 24),
        });
        offset += size as usize;
    }
    chain
}
