//! walletd's journal: the append-only record of every command batch the ledger consumed, with
//! the timestamps it used, from which the whole state replays deterministically.
//!
//! The journal is the truth and balances are derived, so this crate is shaped around three
//! promises. Durability: `commit` returns `op_durable` only after one sync covered every record
//! appended since the last commit (group commit), and any failed write or sync poisons the
//! journal (fail-stop) rather than retrying. Detection: each record carries its op, timestamp,
//! and a BLAKE3 checksum chained to the previous record's, so a torn, flipped, missing or
//! reordered record is found on open or on read. Honest recovery: a torn tail (nothing valid
//! after it) is truncated and reported; anything else is refused as `Corrupt`, naming segment,
//! offset and op, and left to an operator with `truncate_at`. It knows bytes and sequence
//! numbers, never accounts: bodies are opaque and no other walletd crate is a dependency. All
//! I/O goes through `Storage`, so `SimStorage` can inject the faults the tests need.
//!
//! The on-disk format is documented byte by byte in docs/FORMATS.md and next to the offset
//! constants in `record.rs` and `segment.rs`.

mod error;
mod journal;
mod reader;
mod record;
mod recovery;
mod scan;
mod segment;
mod sim;
mod storage;

pub use crate::error::{JournalError, RecordInvalid};
pub use crate::journal::{Journal, JournalConfig};
pub use crate::reader::{JournalEnd, Reader};
pub use crate::record::{
    record_checksum, record_decode, record_header_encode, record_size_bytes, Chain, Record, RecordHeader, RecordKind,
    RECORD_ALIGNMENT_BYTES, RECORD_HEADER_SIZE_BYTES, RECORD_MAGIC, RECORD_VERSION,
};
pub use crate::recovery::{truncate_at, truncate_at_with, Recovered, TornTail, Truncated};
pub use crate::segment::{
    segment_file_name, segment_header_decode, segment_header_encode, SegmentHeader, OP_MAX, SEGMENT_HEADER_SIZE_BYTES,
    SEGMENT_MAGIC, SEGMENT_SIZE_BYTES_MIN, SEGMENT_VERSION,
};
pub use crate::sim::{SimCrash, SimFault, SimFile, SimRng, SimStorage};
pub use crate::storage::{FileSegment, FileStorage, OpenMode, Preallocate, Storage, StorageFile, WriteMode};
