//! The replay reader: records from op N onward, across archive/ and the live segments, each
//! verified (checksum, op sequence, hash chain, timestamps) before it is handed out.
//!
//! Replay, disaster-recovery drills and the exporter all read through this one path, so what
//! they see has passed the same checks as recovery. It is a lending reader (`next_record`
//! returns a `Record` borrowing the reader) rather than an `Iterator`, so that with the mmap
//! backend a body is a slice of the mapping and nothing is copied. Archived segments are merged
//! with the live ones by first op; a segment header must continue the chain left by the
//! previous segment, so a segment missing from the middle is reported, not skipped.

use std::path::{Path, PathBuf};

use crate::error::{JournalError, RecordInvalid};
use crate::record::{Chain, Record};
use crate::recovery::segment_continues;
use crate::scan::{nonzero_end, record_at, record_body, record_find_valid};
use crate::segment::{segment_open, segments_list, Layout, SegmentEntry, SEGMENT_HEADER_SIZE_BYTES};
use crate::storage::{OpenMode, Storage, StorageFile};

/// Reads verified records in op order. Obtain one with `Reader::open`, `Reader::open_until`
/// or `Journal::reader`.
pub struct Reader<S: Storage> {
    storage: S,
    /// The journal's layout, to find segments created after the reader opened.
    layout: Layout,
    /// archive/ and live segments, merged, in op order.
    segments: Vec<SegmentEntry>,
    index: usize,
    file: S::File,
    /// Offset of the next record in `file`.
    offset: u64,
    chain: Chain,
    op_first: u64,
    /// Ops up to here are known durable: missing one is corruption, not the end.
    op_last: Option<u64>,
    /// Segment index and offset of the record last returned.
    position: Option<(usize, u64)>,
    /// Set when the reader reached the end of the journal.
    end: Option<JournalEnd>,
}

/// Where a reader found the journal to end, when it reads to the end (no `op_last`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEnd {
    /// The last valid op (`op_first - 1` of the first segment read if none).
    pub op_last: u64,
    /// A torn tail after it: a record a crash cut short, with nothing valid after it. Recovery
    /// zeroes it at the next start; a reader only reports it.
    pub torn_tail: Option<(PathBuf, u64)>,
}

impl<S: Storage> Reader<S> {
    /// Reads from `op_first` to the end of the journal in `dir/journal` (and its archive/).
    pub fn open(storage: S, dir: &Path, op_first: u64) -> Result<Reader<S>, JournalError> {
        Reader::open_inner(storage, dir, op_first, None)
    }

    /// Reads `op_first..=op_last`, where `op_last` is known durable (e.g. `op_durable`): if the
    /// journal ends before `op_last`, that is reported as corruption.
    pub fn open_until(storage: S, dir: &Path, op_first: u64, op_last: u64) -> Result<Reader<S>, JournalError> {
        Reader::open_inner(storage, dir, op_first, Some(op_last))
    }

    fn open_inner(storage: S, dir: &Path, op_first: u64, op_last: Option<u64>) -> Result<Reader<S>, JournalError> {
        assert!(op_first >= 1, "journal ops start at 1");
        let layout = Layout::new(dir);
        // Live first, then archive/: a segment the node moves between the two listings is seen
        // in the first (and followed to archive/ when it is opened), never missed by both.
        let (live, _) = segments_list(&storage, &layout.live)?;
        let (mut segments, _) = segments_list(&storage, &layout.archive)?;
        // A segment present in both places (an archive restored by hand): read the live copy.
        segments.retain(|a| live.iter().all(|l| l.first_op != a.first_op));
        segments.extend(live);
        segments.sort_by_key(|s| s.first_op);
        let index = segments.iter().rposition(|s| s.first_op <= op_first).ok_or(JournalError::OpNotFound {
            op: op_first,
            op_first_available: segments.first().map_or(1, |s| s.first_op),
        })?;
        let (file, header) = segment_open(&storage, &segments[index], OpenMode::ReadOnly)?;
        let header = header.map_err(|reason| JournalError::Corrupt {
            segment: segments[index].path.clone(),
            offset: 0,
            op: segments[index].first_op,
            reason,
        })?;
        assert!(header.first_op <= op_first);
        Ok(Reader {
            storage,
            layout,
            segments,
            index,
            file,
            offset: SEGMENT_HEADER_SIZE_BYTES,
            chain: header.chain(),
            op_first,
            op_last,
            position: None,
            end: None,
        })
    }

    /// The next record, verified; `None` at the end (or past `op_last`).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, JournalError> {
        loop {
            if self.op_last.is_some_and(|op_last| self.chain.op_next > op_last) {
                return Ok(None);
            }
            let path = &self.segments[self.index].path;
            match record_at(&mut self.file, path, self.offset, &self.chain)? {
                Ok(header) => {
                    let offset = self.offset;
                    self.chain = self.chain.advance(&header);
                    self.offset += header.record_size_bytes();
                    if header.op < self.op_first {
                        continue;
                    }
                    assert!(self.offset <= self.file.size_bytes());
                    assert!(header.op >= self.op_first);
                    self.position = Some((self.index, offset));
                    let path = &self.segments[self.index].path;
                    let body = record_body(&mut self.file, path, offset, &header)?;
                    return Ok(Some(Record {
                        op: header.op,
                        timestamp_ns: header.timestamp_ns,
                        kind: header.kind,
                        body,
                        checksum_prev: header.checksum_prev,
                        checksum: header.checksum,
                    }));
                }
                Err(reason) => {
                    if !self.segment_next(reason)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Moves to the next segment after the record at `self.offset` was `reason`-invalid.
    /// Returns false at the end of the journal.
    fn segment_next(&mut self, reason: RecordInvalid) -> Result<bool, JournalError> {
        assert!(self.offset >= SEGMENT_HEADER_SIZE_BYTES);
        assert!(self.index < self.segments.len());
        let corrupt = |reader: &Reader<S>, reason| JournalError::Corrupt {
            segment: reader.segments[reader.index].path.clone(),
            offset: reader.offset,
            op: reader.chain.op_next,
            reason,
        };
        if self.index + 1 == self.segments.len() {
            let durable_missing = self.op_last.is_some_and(|op| self.chain.op_next <= op);
            if !durable_missing {
                return self.end_check(reason).map(|()| false);
            }
            // A follower may have been told of ops in a segment created since it opened.
            if !self.segments_refresh()? {
                return Err(corrupt(self, reason));
            }
        }
        self.segment_archived_follow(self.index + 1);
        let entry = &self.segments[self.index + 1];
        let (file, header) = segment_open(&self.storage, entry, OpenMode::ReadOnly)?;
        let header = header.map_err(|reason| JournalError::Corrupt {
            segment: entry.path.clone(),
            offset: 0,
            op: self.chain.op_next,
            reason,
        })?;
        if let Err(continuity) = segment_continues(&self.chain, &header) {
            let zeroes = reason == RecordInvalid::Magic { found: 0 };
            return Err(corrupt(self, if zeroes { continuity } else { reason }));
        }
        self.index += 1;
        self.file = file;
        self.offset = SEGMENT_HEADER_SIZE_BYTES;
        assert_eq!(self.chain.op_next, self.segments[self.index].first_op);
        Ok(true)
    }

    /// The chain stopped in the last segment and no op past here is known durable: the end of
    /// the journal, by the rule recovery uses. Zeroes are the clean end; other bytes are a torn
    /// tail only if no self-consistent record lies after them, else a record that was written
    /// whole was damaged, which is corruption (`Corrupt`, naming segment, offset and op).
    /// With `op_last` given (a follower of a live journal) the end is `op_last` itself and this
    /// is not reached, so a record being written is never mistaken for damage.
    fn end_check(&mut self, reason: RecordInvalid) -> Result<(), JournalError> {
        assert!(self.index + 1 == self.segments.len());
        let path = self.segments[self.index].path.clone();
        let clean = nonzero_end(&mut self.file, &path, self.offset)? == self.offset;
        let torn_tail = if clean {
            None
        } else if record_find_valid(&mut self.file, &path, self.offset)?.is_some() {
            return Err(JournalError::Corrupt { segment: path, offset: self.offset, op: self.chain.op_next, reason });
        } else {
            Some((path, self.offset))
        };
        self.end = Some(JournalEnd { op_last: self.chain.op_next - 1, torn_tail });
        Ok(())
    }

    /// Where the journal ended, once `next_record` returned `None` at the end of the journal
    /// (not at `op_last`).
    pub fn end(&self) -> Option<&JournalEnd> {
        self.end.as_ref()
    }

    /// A live segment the reader listed may since have moved to archive/ (a drill reading a
    /// journal that a running node archives): read it from there.
    fn segment_archived_follow(&mut self, index: usize) {
        let entry = &self.segments[index];
        if entry.path.starts_with(&self.layout.live) && !entry.path.starts_with(&self.layout.archive) {
            let name = entry.path.file_name().expect("a segment path names a file");
            let archived = self.layout.archive.join(name);
            let live_exists =
                self.storage.list_dir(&self.layout.live).is_ok_and(|names| names.iter().any(|n| n.as_str() == name));
            if !live_exists {
                self.segments[index].path = archived;
            }
        }
    }

    /// Extends the range to `op_last`, which must be durable: a follower (the snapshot
    /// replica) calls this each time the journal reports more durable ops, and reads on.
    pub fn follow(&mut self, op_last: u64) {
        assert!(self.op_last.is_none_or(|current| op_last >= current), "a follower's range only grows");
        self.op_last = Some(op_last);
    }

    /// Adds segments created after the reader opened; true if any was added. Both directories
    /// are listed: with small segments and frequent snapshots the node may create a segment
    /// *and archive it* between two refreshes, and listing only the live ones would skip it
    /// (the next live segment would then not continue the chain: a false corruption).
    fn segments_refresh(&mut self) -> Result<bool, JournalError> {
        let last_first_op = self.segments.last().map_or(0, |segment| segment.first_op);
        // Live first, then archive/, as in `open_inner`.
        let (live, _) = segments_list(&self.storage, &self.layout.live)?;
        let (archived, _) = segments_list(&self.storage, &self.layout.archive)?;
        let mut new: Vec<SegmentEntry> = live.into_iter().filter(|segment| segment.first_op > last_first_op).collect();
        // A segment present in both places (being moved, or restored by hand): the live copy.
        let archived_new = archived.into_iter().filter(|a| a.first_op > last_first_op);
        let archived_new: Vec<SegmentEntry> =
            archived_new.filter(|a| new.iter().all(|l| l.first_op != a.first_op)).collect();
        new.extend(archived_new);
        new.sort_by_key(|segment| segment.first_op);
        let before = self.segments.len();
        self.segments.extend(new);
        assert!(self.segments.windows(2).all(|pair| pair[0].first_op < pair[1].first_op));
        Ok(self.segments.len() > before)
    }

    /// Segment path and byte offset of the record last returned by `next_record`.
    pub fn position(&self) -> Option<(&Path, u64)> {
        self.position.map(|(index, offset)| (self.segments[index].path.as_path(), offset))
    }

    /// The op the next record will have.
    pub fn op_next(&self) -> u64 {
        self.chain.op_next
    }
}
