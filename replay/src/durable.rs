//! The durable mark: how a follower in another process knows which ops are durable.
//!
//! The journal's files hold records that were written but not yet synced; a follower that read
//! one of those could publish an op that a power loss then erases and a restart replaces with
//! another. So the node that writes the journal also publishes, after every group commit, the
//! last durable op and the chain checksum of its record in `DIR/op_durable`, and followers read
//! no further. The file is written in place and never synced: it is a hint that only ever
//! understates (written after the fsync it reports), and a node rewrites it when it starts,
//! after recovery has made everything it found durable.
//!
//! ```text
//! op_durable (40 bytes)
//! offset size field
//!      0    8 magic "WDDURABL"
//!      8    8 op_durable
//!     16   16 checksum of the journal record at op_durable (0 when op_durable is 0)
//!     32    8 first 8 bytes of BLAKE3 over bytes 0..32: a torn read is retried, not believed
//! ```

use crate::error::ReplayError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const DURABLE_FILE_NAME: &str = "op_durable";
pub const DURABLE_SIZE_BYTES: usize = 40;
const DURABLE_MAGIC: [u8; 8] = *b"WDDURABL";
/// Reads that find a torn mark (a write in progress) before giving up.
const DURABLE_READ_ATTEMPTS: u32 = 100;

/// A journal position: an op and the chain checksum of its record. A position names one
/// history: the same op with another checksum is another journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub op: u64,
    pub checksum: u128,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:032x}", self.op, self.checksum)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// `OP:CHECKSUM`, the checksum as 32 hex digits (how positions are printed and published).
    fn from_str(text: &str) -> Result<Position, String> {
        let (op, checksum) = text.split_once(':').ok_or("expected OP:CHECKSUM")?;
        let op = op.parse().map_err(|_| format!("op {op:?} is not a number"))?;
        if checksum.len() != 32 {
            return Err(format!("checksum {checksum:?} is not 32 hex digits"));
        }
        let checksum = u128::from_str_radix(checksum, 16).map_err(|_| format!("checksum {checksum:?} is not hex"))?;
        Ok(Position { op, checksum })
    }
}

pub fn durable_encode(position: Position) -> [u8; DURABLE_SIZE_BYTES] {
    let mut bytes = [0u8; DURABLE_SIZE_BYTES];
    bytes[0..8].copy_from_slice(&DURABLE_MAGIC);
    bytes[8..16].copy_from_slice(&position.op.to_le_bytes());
    bytes[16..32].copy_from_slice(&position.checksum.to_le_bytes());
    let check = blake3::hash(&bytes[..32]);
    bytes[32..40].copy_from_slice(&check.as_bytes()[..8]);
    bytes
}

/// The position in a mark, or None if the bytes are not a whole mark (torn or damaged).
pub fn durable_decode(bytes: &[u8]) -> Option<Position> {
    if bytes.len() != DURABLE_SIZE_BYTES || bytes[0..8] != DURABLE_MAGIC {
        return None;
    }
    if blake3::hash(&bytes[..32]).as_bytes()[..8] != bytes[32..40] {
        return None;
    }
    let op = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let checksum = u128::from_le_bytes(bytes[16..32].try_into().expect("16 bytes"));
    Some(Position { op, checksum })
}

pub fn durable_path(dir: &Path) -> PathBuf {
    dir.join(DURABLE_FILE_NAME)
}

/// The writer's end, held by the one process that writes the journal.
pub struct DurableMark {
    file: File,
    path: PathBuf,
    published: Position,
}

impl DurableMark {
    /// Opens (creating) the mark of the data directory `dir` and publishes `position`, which
    /// must be durable.
    pub fn open(dir: &Path, position: Position) -> Result<DurableMark, ReplayError> {
        let path = durable_path(dir);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| ReplayError::Io { path: path.clone(), source })?;
        let mut mark = DurableMark { file, path, published: position };
        mark.write(position)?;
        Ok(mark)
    }

    /// Publishes that every op up to `position.op` is durable. Positions only grow.
    pub fn publish(&mut self, position: Position) -> Result<(), ReplayError> {
        assert!(position.op >= self.published.op, "the durable op only grows");
        if position == self.published {
            return Ok(());
        }
        self.write(position)
    }

    pub fn published(&self) -> Position {
        self.published
    }

    fn write(&mut self, position: Position) -> Result<(), ReplayError> {
        let bytes = durable_encode(position);
        self.file.write_all_at(&bytes, 0).map_err(|source| ReplayError::Io { path: self.path.clone(), source })?;
        self.published = position;
        Ok(())
    }
}

/// The published durable position of `dir`, or None if no node ever published one there (a
/// directory written before marks existed, or copied without it).
pub fn durable_read(dir: &Path) -> Result<Option<Position>, ReplayError> {
    let path = durable_path(dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReplayError::Io { path, source }),
    };
    let mut bytes = [0u8; DURABLE_SIZE_BYTES];
    for _ in 0..DURABLE_READ_ATTEMPTS {
        let read = file.read_at(&mut bytes, 0).map_err(|source| ReplayError::Io { path: path.clone(), source })?;
        if let Some(position) = durable_decode(&bytes[..read]) {
            return Ok(Some(position));
        }
        std::thread::yield_now();
    }
    Err(ReplayError::DataDir {
        path,
        reason: "the durable mark is damaged (not a whole mark after repeated reads); the node rewrites it at start"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_a_torn_or_damaged_one_is_not_believed() {
        let position = Position { op: 77, checksum: 5 << 90 };
        let bytes = durable_encode(position);
        assert_eq!(durable_decode(&bytes), Some(position));
        for index in 0..DURABLE_SIZE_BYTES {
            let mut damaged = bytes;
            damaged[index] ^= 1;
            assert_eq!(durable_decode(&damaged), None, "byte {index}");
        }
        assert_eq!(durable_decode(&bytes[..39]), None);
    }

    #[test]
    fn the_writer_publishes_and_a_reader_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(durable_read(dir.path()).expect("read"), None);
        let mut mark = DurableMark::open(dir.path(), Position { op: 3, checksum: 9 }).expect("open");
        assert_eq!(durable_read(dir.path()).expect("read"), Some(Position { op: 3, checksum: 9 }));
        mark.publish(Position { op: 10, checksum: 11 }).expect("publish");
        assert_eq!(durable_read(dir.path()).expect("read"), Some(Position { op: 10, checksum: 11 }));
    }

    #[test]
    fn positions_print_and_parse() {
        let position = Position { op: 12, checksum: 0xabc };
        let text = position.to_string();
        assert_eq!(text, "12:00000000000000000000000000000abc");
        assert_eq!(text.parse::<Position>(), Ok(position));
        assert!("12".parse::<Position>().is_err());
        assert!("x:00000000000000000000000000000abc".parse::<Position>().is_err());
        assert!("12:abc".parse::<Position>().is_err());
    }
}
