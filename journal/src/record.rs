//! The record: a fixed 64-byte little-endian header, then the opaque body, padded to 8 bytes.
//!
//! The header is fixed-size and self-describing so that recovery can tell a record from zeroes
//! or garbage at any 8-aligned offset without context: magic, version, kind and reserved fields
//! are checked first (cheap, and each failure has its own `RecordInvalid`), then the checksum.
//! The checksum covers the header's first 48 bytes and the body, and each record carries the
//! previous record's checksum, so the records form a hash chain: a record that is missing,
//! reordered or replaced breaks the chain even when every record is valid on its own. The codec
//! is pure (no I/O) so it is property-tested in isolation; sequence rules across records live in
//! `record_verify_chain`.

use crate::error::RecordInvalid;

// Record header layout, byte by byte (all integers little-endian). docs/FORMATS.md repeats it.
//
//   0..4    magic            u32   "WDJR" (0x524a4457)
//   4..6    version          u16   1
//   6..8    kind             u16   1 = command batch, 2 = checkpoint; others reserved (invalid)
//   8..12   body_size_bytes  u32   body length, excluding padding
//   12..16  reserved         u32   zero
//   16..24  op               u64   sequence number; contiguous, the first op of a journal is 1
//   24..32  timestamp_ns     u64   the ledger's timestamp for this record; non-decreasing
//   32..48  checksum_prev    u128  `checksum` of the previous record; 0 for op 1
//   48..64  checksum         u128  first 16 bytes of BLAKE3(header[0..48] ++ body)
//   64..    body, then zero padding up to the next multiple of 8
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WDJR");
pub const RECORD_VERSION: u16 = 1;
pub const RECORD_HEADER_SIZE_BYTES: u64 = 64;
/// Every record starts at a multiple of this, relative to the segment start.
pub const RECORD_ALIGNMENT_BYTES: u64 = 8;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 4;
const KIND_OFFSET: usize = 6;
const BODY_SIZE_OFFSET: usize = 8;
const RESERVED_OFFSET: usize = 12;
const OP_OFFSET: usize = 16;
const TIMESTAMP_OFFSET: usize = 24;
const CHECKSUM_PREV_OFFSET: usize = 32;
const CHECKSUM_OFFSET: usize = 48;
const HEADER_SIZE: usize = RECORD_HEADER_SIZE_BYTES as usize;

// The fields tile the header exactly, with no gap or overlap.
const _: () = assert!(MAGIC_OFFSET + 4 == VERSION_OFFSET);
const _: () = assert!(VERSION_OFFSET + 2 == KIND_OFFSET);
const _: () = assert!(KIND_OFFSET + 2 == BODY_SIZE_OFFSET);
const _: () = assert!(BODY_SIZE_OFFSET + 4 == RESERVED_OFFSET);
const _: () = assert!(RESERVED_OFFSET + 4 == OP_OFFSET);
const _: () = assert!(OP_OFFSET + 8 == TIMESTAMP_OFFSET);
const _: () = assert!(TIMESTAMP_OFFSET + 8 == CHECKSUM_PREV_OFFSET);
const _: () = assert!(CHECKSUM_PREV_OFFSET + 16 == CHECKSUM_OFFSET);
const _: () = assert!(CHECKSUM_OFFSET + 16 == HEADER_SIZE);
const _: () = assert!(HEADER_SIZE == 64);
const _: () = assert!(HEADER_SIZE as u64 % RECORD_ALIGNMENT_BYTES == 0);

/// What a record is; the body stays opaque to the journal either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordKind {
    /// A batch of commands as the ledger consumed them.
    CommandBatch = 1,
    /// A checkpoint (the caller puts a state hash and counts in the body).
    Checkpoint = 2,
}

impl RecordKind {
    pub fn from_u16(value: u16) -> Option<RecordKind> {
        match value {
            1 => Some(RecordKind::CommandBatch),
            2 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub body_size_bytes: u32,
    pub op: u64,
    pub timestamp_ns: u64,
    pub checksum_prev: u128,
    pub checksum: u128,
}

impl RecordHeader {
    /// Bytes the whole record occupies on disk, padding included.
    pub fn record_size_bytes(&self) -> u64 {
        record_size_bytes(u64::from(self.body_size_bytes))
    }
}

/// A record as read back: the body borrows the reader's mapping or buffer (no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub op: u64,
    pub timestamp_ns: u64,
    pub kind: RecordKind,
    pub body: &'a [u8],
    /// The checksum of the record before (op − 1; 0 for op 1), which the reader verified this
    /// record continues: a signature over it covers the whole history before this record.
    pub checksum_prev: u128,
    pub checksum: u128,
}

/// Bytes a record with this body occupies on disk: header + body + padding to 8.
pub fn record_size_bytes(body_size_bytes: u64) -> u64 {
    let unpadded = RECORD_HEADER_SIZE_BYTES + body_size_bytes;
    let size = unpadded.div_ceil(RECORD_ALIGNMENT_BYTES) * RECORD_ALIGNMENT_BYTES;
    assert!(size >= unpadded);
    assert!(size - unpadded < RECORD_ALIGNMENT_BYTES);
    size
}

/// The first 16 bytes of BLAKE3 over the header's first 48 bytes followed by the body.
pub fn record_checksum(header_prefix: &[u8], body: &[u8]) -> u128 {
    assert_eq!(header_prefix.len(), CHECKSUM_OFFSET);
    let mut hasher = blake3::Hasher::new();
    hasher.update(header_prefix);
    hasher.update(body);
    let hash = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Builds the header for `body`, checksum included.
pub fn record_header_encode(
    op: u64,
    timestamp_ns: u64,
    kind: RecordKind,
    body: &[u8],
    checksum_prev: u128,
) -> [u8; 64] {
    assert!(op >= 1, "journal ops start at 1");
    let body_size_bytes = u32::try_from(body.len()).expect("record body larger than u32::MAX");
    let mut header = [0u8; HEADER_SIZE];
    header[MAGIC_OFFSET..][..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    header[VERSION_OFFSET..][..2].copy_from_slice(&RECORD_VERSION.to_le_bytes());
    header[KIND_OFFSET..][..2].copy_from_slice(&(kind as u16).to_le_bytes());
    header[BODY_SIZE_OFFSET..][..4].copy_from_slice(&body_size_bytes.to_le_bytes());
    header[OP_OFFSET..][..8].copy_from_slice(&op.to_le_bytes());
    header[TIMESTAMP_OFFSET..][..8].copy_from_slice(&timestamp_ns.to_le_bytes());
    header[CHECKSUM_PREV_OFFSET..][..16].copy_from_slice(&checksum_prev.to_le_bytes());
    let checksum = record_checksum(&header[..CHECKSUM_OFFSET], body);
    header[CHECKSUM_OFFSET..][..16].copy_from_slice(&checksum.to_le_bytes());
    header
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

fn read_u128(bytes: &[u8], offset: usize) -> u128 {
    u128::from_le_bytes(bytes[offset..offset + 16].try_into().expect("16 bytes"))
}

/// The body size a header claims, read before anything is verified (to know how much to read).
/// `None` when fewer than 64 bytes are given.
pub fn record_body_size_claimed(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < HEADER_SIZE {
        return None;
    }
    Some(read_u32(bytes, BODY_SIZE_OFFSET))
}

/// Decodes and verifies the record at the start of `bytes` (which may run on to the end of the
/// segment). Checks the fields in layout order, then padding, then the checksum; the chain is
/// `record_verify_chain`'s job.
pub fn record_decode(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), RecordInvalid> {
    let room_bytes = bytes.len() as u64;
    if room_bytes < RECORD_HEADER_SIZE_BYTES {
        // Too little room for even a header: this is the end of the segment's space.
        return Err(RecordInvalid::Size { body_size_bytes: 0, room_bytes });
    }
    let header = record_decode_fields(bytes)?;
    let size = record_size_bytes(u64::from(header.body_size_bytes));
    if size > room_bytes {
        return Err(RecordInvalid::Size { body_size_bytes: header.body_size_bytes, room_bytes });
    }
    let body_end = HEADER_SIZE + header.body_size_bytes as usize;
    let body = &bytes[HEADER_SIZE..body_end];
    let computed = record_checksum(&bytes[..CHECKSUM_OFFSET], body);
    if computed != header.checksum {
        return Err(RecordInvalid::Checksum { stored: header.checksum, computed });
    }
    if bytes[body_end..size as usize].iter().any(|&b| b != 0) {
        return Err(RecordInvalid::Padding);
    }
    Ok((header, body))
}

fn record_decode_fields(bytes: &[u8]) -> Result<RecordHeader, RecordInvalid> {
    assert!(bytes.len() >= HEADER_SIZE);
    let magic = read_u32(bytes, MAGIC_OFFSET);
    if magic != RECORD_MAGIC {
        return Err(RecordInvalid::Magic { found: magic });
    }
    let version = read_u16(bytes, VERSION_OFFSET);
    if version != RECORD_VERSION {
        return Err(RecordInvalid::Version { found: version });
    }
    let kind_raw = read_u16(bytes, KIND_OFFSET);
    let kind = RecordKind::from_u16(kind_raw).ok_or(RecordInvalid::Kind { found: kind_raw })?;
    let reserved = read_u32(bytes, RESERVED_OFFSET);
    if reserved != 0 {
        return Err(RecordInvalid::Reserved { found: reserved });
    }
    Ok(RecordHeader {
        kind,
        body_size_bytes: read_u32(bytes, BODY_SIZE_OFFSET),
        op: read_u64(bytes, OP_OFFSET),
        timestamp_ns: read_u64(bytes, TIMESTAMP_OFFSET),
        checksum_prev: read_u128(bytes, CHECKSUM_PREV_OFFSET),
        checksum: read_u128(bytes, CHECKSUM_OFFSET),
    })
}

/// Where the chain stands: what the next record must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The op the next record must have.
    pub op_next: u64,
    /// The checksum the next record's `checksum_prev` must equal.
    pub checksum_prev: u128,
    /// The next record's timestamp must be at least this.
    pub timestamp_ns_min: u64,
}

impl Chain {
    /// The start of a journal: op 1 chains from checksum 0.
    pub const GENESIS: Chain = Chain { op_next: 1, checksum_prev: 0, timestamp_ns_min: 0 };

    /// Checks that `header` is the record that must come next.
    pub fn verify(&self, header: &RecordHeader) -> Result<(), RecordInvalid> {
        if header.op != self.op_next {
            return Err(RecordInvalid::Op { expected: self.op_next, found: header.op });
        }
        if header.checksum_prev != self.checksum_prev {
            return Err(RecordInvalid::Chain { expected: self.checksum_prev, found: header.checksum_prev });
        }
        if header.timestamp_ns < self.timestamp_ns_min {
            return Err(RecordInvalid::Timestamp { previous_ns: self.timestamp_ns_min, found_ns: header.timestamp_ns });
        }
        Ok(())
    }

    /// The chain after `header` (which must have passed `verify`).
    pub fn advance(&self, header: &RecordHeader) -> Chain {
        assert_eq!(header.op, self.op_next);
        assert!(header.timestamp_ns >= self.timestamp_ns_min);
        assert!(header.op < crate::segment::OP_MAX, "segment headers bound the op sequence");
        Chain { op_next: header.op + 1, checksum_prev: header.checksum, timestamp_ns_min: header.timestamp_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_size_pads_to_eight() {
        assert_eq!(record_size_bytes(0), 64);
        assert_eq!(record_size_bytes(1), 72);
        assert_eq!(record_size_bytes(8), 72);
        assert_eq!(record_size_bytes(9), 80);
        assert_eq!(record_size_bytes(8189 * 128), 64 + 8189 * 128);
    }

    #[test]
    fn magic_spells_wdjr() {
        assert_eq!(&RECORD_MAGIC.to_le_bytes(), b"WDJR");
        assert_eq!(RECORD_MAGIC, 0x524a_4457);
    }
}
