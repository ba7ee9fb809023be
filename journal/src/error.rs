//! The journal's one error enum, and the reasons bytes on disk are not the record expected there.
//!
//! Every operating error of the crate is a `JournalError`, and each message names what to look
//! at (a path, a byte offset, an op) and what to do next, because the person reading it is an
//! operator at 3 a.m., not the author. `RecordInvalid` is not an error of its own: it is the
//! detail carried by `Corrupt` and `TornTail` (and returned by the codec) saying which check a
//! record or segment header failed, so that every malformed case is told apart. Broken caller
//! invariants (an op out of sequence, a timestamp going backwards) are panics, not errors.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why the bytes at some offset are not the record (or segment header) expected there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordInvalid {
    /// The magic number is wrong (zero means no record was ever written there).
    Magic { found: u32 },
    /// The format version is not one this build reads.
    Version { found: u16 },
    /// The record kind is reserved or unknown.
    Kind { found: u16 },
    /// A reserved field is not zero.
    Reserved { found: u32 },
    /// The record (header + padded body) does not fit in the bytes left in the segment.
    Size { body_size_bytes: u32, room_bytes: u64 },
    /// The padding after the body is not zero.
    Padding,
    /// The stored checksum does not match the bytes.
    Checksum { stored: u128, computed: u128 },
    /// The record is valid on its own but is not the op that must come next.
    Op { expected: u64, found: u64 },
    /// The record does not chain from the previous record's checksum.
    Chain { expected: u128, found: u128 },
    /// The timestamp goes backwards.
    Timestamp { previous_ns: u64, found_ns: u64 },
    /// A segment file is shorter than a segment header, or longer than its header says.
    SegmentSize { header_size_bytes: u64, file_size_bytes: u64 },
    /// A segment's file name and header disagree on its first op.
    SegmentName { name_first_op: u64, header_first_op: u64 },
}

impl fmt::Display for RecordInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordInvalid::Magic { found: 0 } => write!(f, "no record there (magic is zero)"),
            RecordInvalid::Magic { found } => write!(f, "bad magic {found:#010x}"),
            RecordInvalid::Version { found } => write!(f, "unknown format version {found}"),
            RecordInvalid::Kind { found } => write!(f, "unknown record kind {found}"),
            RecordInvalid::Reserved { found } => {
                write!(f, "reserved field is {found:#x}, must be zero")
            }
            RecordInvalid::Size { body_size_bytes, room_bytes } => {
                write!(f, "body of {body_size_bytes} bytes does not fit in the {room_bytes} bytes left")
            }
            RecordInvalid::Padding => write!(f, "padding after the body is not zero"),
            RecordInvalid::Checksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#034x}, computed {computed:#034x})")
            }
            RecordInvalid::Op { expected, found } => {
                write!(f, "found op {found} where op {expected} must come next")
            }
            RecordInvalid::Chain { expected, found } => {
                write!(f, "hash chain broken (checksum_prev {found:#034x}, previous record has {expected:#034x})")
            }
            RecordInvalid::Timestamp { previous_ns, found_ns } => {
                write!(f, "timestamp {found_ns} ns is before the previous record's {previous_ns} ns")
            }
            RecordInvalid::SegmentSize { header_size_bytes, file_size_bytes } => {
                write!(f, "segment file is {file_size_bytes} bytes but its header says {header_size_bytes}")
            }
            RecordInvalid::SegmentName { name_first_op, header_first_op } => {
                write!(f, "file name says first op {name_first_op} but the header says {header_first_op}")
            }
        }
    }
}

/// Every operating error of the journal.
///
/// Anything returned by `append` (except `RecordTooLarge`), `commit` or `archive_before` after a
/// failed sync is fail-stop: the journal is poisoned, and the process must stop and recover by
/// reopening (see `is_fail_stop`).
#[derive(Debug)]
pub enum JournalError {
    /// A file-system call other than a sync failed.
    Io { path: PathBuf, operation: &'static str, source: io::Error },
    /// fdatasync/msync failed. Fatal: what reached the disk is unknown, so the journal is
    /// poisoned; never retry, restart and recover.
    SyncFailed { path: PathBuf, source: io::Error },
    /// A previous write or sync failed; the journal refuses further use.
    Poisoned,
    /// A record is invalid and a valid record follows it, so it is not a torn write.
    Corrupt { segment: PathBuf, offset: u64, op: u64, reason: RecordInvalid },
    /// One record would not fit in an empty segment.
    RecordTooLarge { body_size_bytes: u64, body_size_max_bytes: u64, segment_size_bytes: u64 },
    /// A `JournalConfig` field is out of range.
    ConfigInvalid { field: &'static str, value: u64, reason: &'static str },
    /// The live directory has no segment but archive/ has some: the live segments were lost.
    LiveSegmentsMissing { dir: PathBuf, archived_count: u64 },
    /// A reader asked for an op that is not in the journal (archived elsewhere or never written).
    OpNotFound { op: u64, op_first_available: u64 },
    /// `truncate_at` was given a segment or offset it cannot act on.
    TruncateInvalid { segment: PathBuf, offset: u64, reason: &'static str },
}

impl JournalError {
    /// Whether the caller must stop the node (and recover by replay) rather than carry on.
    pub fn is_fail_stop(&self) -> bool {
        !matches!(self, JournalError::RecordTooLarge { .. } | JournalError::ConfigInvalid { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, operation: &'static str, source: io::Error) -> Self {
        JournalError::Io { path: path.into(), operation, source }
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { path, operation, source } => write!(
                f,
                "journal: {operation} {} failed: {source}; check the disk and permissions, \
                 then restart (recovery replays the journal)",
                path.display()
            ),
            JournalError::SyncFailed { path, source } => write!(
                f,
                "journal: sync of {} failed: {source}; the journal is stopped (fail-stop): \
                 fix the disk and restart, recovery keeps every op that was reported durable",
                path.display()
            ),
            JournalError::Poisoned => {
                write!(f, "journal: refused, an earlier write or sync failed; restart the process to recover")
            }
            JournalError::Corrupt { segment, offset, op, reason } => fmt_corrupt(f, segment, *offset, *op, reason),
            JournalError::RecordTooLarge { body_size_bytes, body_size_max_bytes, segment_size_bytes } => write!(
                f,
                "journal: record body of {body_size_bytes} bytes exceeds {body_size_max_bytes} \
                 bytes, the most a {segment_size_bytes}-byte segment holds; configure bigger \
                 segments (segment_size_bytes) or smaller batches"
            ),
            JournalError::ConfigInvalid { field, value, reason } => {
                write!(f, "journal: config {field} = {value} is invalid: {reason}")
            }
            JournalError::LiveSegmentsMissing { dir, archived_count } => write!(
                f,
                "journal: {} has no segment but archive/ holds {archived_count}: the live \
                 segments are missing; restore them from backup before starting",
                dir.display()
            ),
            JournalError::OpNotFound { op, op_first_available } => write!(
                f,
                "journal: op {op} is not in the journal (first op available is \
                 {op_first_available}); restore archived segments into journal/archive/"
            ),
            JournalError::TruncateInvalid { segment, offset, reason } => {
                write!(f, "journal: cannot truncate {} at byte offset {offset}: {reason}", segment.display())
            }
        }
    }
}

fn fmt_corrupt(
    f: &mut fmt::Formatter<'_>,
    segment: &std::path::Path,
    offset: u64,
    op: u64,
    reason: &RecordInvalid,
) -> fmt::Result {
    let place = if offset == 0 { "in the segment header".to_string() } else { format!("at byte offset {offset}") };
    write!(
        f,
        "journal corrupt: {} {place}, where op {op} was expected: {reason}. Valid data \
         follows, so this is not a torn write and the journal refuses to start. Restore the \
         segment from a replica or backup; or, accepting the loss of op {op} and every later \
         op, run `walletd journal truncate {} {offset}` (walletd_journal::truncate_at), which \
         copies the evidence to journal/quarantine/ first",
        segment.display(),
        segment.display()
    )
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } | JournalError::SyncFailed { source, .. } => Some(source),
            _ => None,
        }
    }
}
