//! Scanning helpers shared by recovery, the reader and `truncate_at`: read one record against
//! the chain, search for any self-consistent record, find where non-zero bytes end, zero a range.
//!
//! They work in bounded chunks through `StorageFile::read_at`, so that a 256 MiB segment is
//! scanned with the mmap backend without copying and with the pwrite backend in 1 MiB reads, and
//! they never allocate per record.

use std::path::Path;

use crate::error::{JournalError, RecordInvalid};
use crate::record::{
    record_body_size_claimed, record_decode, record_size_bytes, Chain, RecordHeader, RECORD_ALIGNMENT_BYTES,
    RECORD_HEADER_SIZE_BYTES, RECORD_MAGIC,
};
use crate::storage::StorageFile;

const CHUNK_SIZE_BYTES: u64 = 1 << 20;
const _: () = assert!(CHUNK_SIZE_BYTES % RECORD_ALIGNMENT_BYTES == 0);

fn read_error(path: &Path, error: std::io::Error) -> JournalError {
    JournalError::io(path, "read segment", error)
}

/// Reads the record at `offset`, verifies it on its own and against `chain`.
pub(crate) fn record_at<F: StorageFile>(
    file: &mut F,
    path: &Path,
    offset: u64,
    chain: &Chain,
) -> Result<Result<RecordHeader, RecordInvalid>, JournalError> {
    let decoded = record_at_unchained(file, path, offset)?;
    Ok(decoded.and_then(|header| chain.verify(&header).map(|()| header)))
}

/// Reads and verifies the record at `offset` on its own (magic, fields, size, checksum).
pub(crate) fn record_at_unchained<F: StorageFile>(
    file: &mut F,
    path: &Path,
    offset: u64,
) -> Result<Result<RecordHeader, RecordInvalid>, JournalError> {
    assert!(offset % RECORD_ALIGNMENT_BYTES == 0);
    assert!(offset <= file.size_bytes());
    let room_bytes = file.size_bytes() - offset;
    let header_bytes = room_bytes.min(RECORD_HEADER_SIZE_BYTES) as usize;
    let header = file.read_at(offset, header_bytes).map_err(|e| read_error(path, e))?;
    let read_bytes = match record_body_size_claimed(header) {
        None => header_bytes as u64,
        Some(body_size_bytes) => record_size_bytes(u64::from(body_size_bytes)).min(room_bytes),
    };
    let bytes = file.read_at(offset, read_bytes as usize).map_err(|e| read_error(path, e))?;
    Ok(record_decode(bytes).map(|(header, _body)| header))
}

/// The body of a record already verified at `offset`.
pub(crate) fn record_body<'f, F: StorageFile>(
    file: &'f mut F,
    path: &Path,
    offset: u64,
    header: &RecordHeader,
) -> Result<&'f [u8], JournalError> {
    let body_offset = offset + RECORD_HEADER_SIZE_BYTES;
    let body_size = header.body_size_bytes as usize;
    assert!(body_offset + body_size as u64 <= file.size_bytes());
    file.read_at(body_offset, body_size).map_err(|e| read_error(path, e))
}

/// The first 8-aligned offset at or after `from` holding a self-consistent record (correct
/// magic, fields and checksum), if any. Used to tell a torn tail (nothing valid follows) from
/// corruption (something valid follows).
pub(crate) fn record_find_valid<F: StorageFile>(
    file: &mut F,
    path: &Path,
    from: u64,
) -> Result<Option<u64>, JournalError> {
    assert!(from % RECORD_ALIGNMENT_BYTES == 0);
    let size_bytes = file.size_bytes();
    let mut chunk_offset = from;
    let mut candidates: Vec<u64> = Vec::new();
    while chunk_offset + RECORD_HEADER_SIZE_BYTES <= size_bytes {
        let chunk_bytes = (size_bytes - chunk_offset).min(CHUNK_SIZE_BYTES);
        let chunk = file.read_at(chunk_offset, chunk_bytes as usize).map_err(|e| read_error(path, e))?;
        candidates.clear();
        let magic = RECORD_MAGIC.to_le_bytes();
        for (index, word) in chunk.chunks_exact(RECORD_ALIGNMENT_BYTES as usize).enumerate() {
            if word[..4] == magic {
                candidates.push(chunk_offset + index as u64 * RECORD_ALIGNMENT_BYTES);
            }
        }
        for &candidate in &candidates {
            if candidate + RECORD_HEADER_SIZE_BYTES > size_bytes {
                continue;
            }
            if record_at_unchained(file, path, candidate)?.is_ok() {
                assert!(candidate >= from);
                return Ok(Some(candidate));
            }
        }
        chunk_offset += chunk_bytes;
    }
    Ok(None)
}

/// The end of the last non-zero byte in `from..size`, or `from` if all of it is zero.
pub(crate) fn nonzero_end<F: StorageFile>(file: &mut F, path: &Path, from: u64) -> Result<u64, JournalError> {
    let size_bytes = file.size_bytes();
    assert!(from <= size_bytes);
    let mut end = from;
    let mut chunk_offset = from;
    while chunk_offset < size_bytes {
        let chunk_bytes = (size_bytes - chunk_offset).min(CHUNK_SIZE_BYTES);
        let chunk = file.read_at(chunk_offset, chunk_bytes as usize).map_err(|e| read_error(path, e))?;
        if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
            end = chunk_offset + last as u64 + 1;
        }
        chunk_offset += chunk_bytes;
    }
    assert!(end >= from);
    assert!(end <= size_bytes);
    Ok(end)
}

/// Writes zeroes over `from..to` and syncs them.
pub(crate) fn zero_range<F: StorageFile>(file: &mut F, path: &Path, from: u64, to: u64) -> Result<(), JournalError> {
    assert!(from <= to);
    assert!(to <= file.size_bytes());
    if from == to {
        return Ok(());
    }
    let zeros = vec![0u8; (to - from).min(CHUNK_SIZE_BYTES) as usize];
    let mut offset = from;
    while offset < to {
        let chunk_bytes = (to - offset).min(CHUNK_SIZE_BYTES) as usize;
        file.write_at(offset, &zeros[..chunk_bytes]).map_err(|e| JournalError::io(path, "zero torn tail of", e))?;
        offset += chunk_bytes as u64;
    }
    file.sync(from, to - from).map_err(|source| JournalError::SyncFailed { path: path.to_path_buf(), source })
}
