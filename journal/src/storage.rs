//! The storage seam: the few file-system calls the journal makes, and the real implementation.
//!
//! The journal is generic over `Storage` so that tests and the ledger simulation can swap in
//! `SimStorage`, which loses unsynced writes, tears the last one, flips bits and fails calls on
//! a seed. The seam is cut at the level the journal reasons about durability: whole segment
//! files written at offsets, a ranged sync, directory renames and a directory sync. `read_at`
//! returns a borrowed slice rather than filling a buffer so that the mmap backend reads bodies
//! without copying them (read-only opens always map). `FileStorage` writes either through a
//! shared mapping (`msync` to commit) or with `pwrite` from a staging buffer (`fdatasync` to
//! commit); docs/FORMATS.md has the measurements behind the default.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    ReadWrite,
    ReadOnly,
}

/// The directory-level calls the journal makes. Paths are absolute or relative to the process's
/// working directory, as the caller gave them.
pub trait Storage: Clone {
    type File: StorageFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names in `path` (not paths); a missing directory lists as empty.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file (failing if it exists) of `size_bytes`, zero-filled and preallocated,
    /// so that later writes inside it cannot fail for lack of space.
    fn create_file(&self, path: &Path, size_bytes: u64) -> io::Result<Self::File>;
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile {
    fn size_bytes(&self) -> u64;
    /// Grows the file to `size_bytes`, the new bytes reading as zero.
    fn grow(&mut self, size_bytes: u64) -> io::Result<()>;
    /// Bytes `offset..offset + size_bytes`, as this handle last wrote them.
    fn read_at(&mut self, offset: u64, size_bytes: usize) -> io::Result<&[u8]>;
    /// Writes inside the file (never past its end). Not durable until `sync` covers it.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes at least `offset..offset + size_bytes` durable. An error is fatal to the caller.
    fn sync(&mut self, offset: u64, size_bytes: u64) -> io::Result<()>;
}

/// How `FileStorage` writes segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// memcpy into a shared mapping; commit is `msync(MS_SYNC)` of the dirty range.
    Mmap,
    /// Appends are staged in a buffer and written with `pwrite`; commit is `fdatasync`.
    Pwrite,
}

/// How `FileStorage` preallocates a new segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocate {
    /// `fallocate(2)`: blocks reserved at once, but as unwritten extents, which the file system
    /// converts (a metadata change) on the first write to each.
    Fallocate,
    /// Write zeroes over the whole file and sync: slower to create, but later appends overwrite
    /// written blocks and a commit syncs data only.
    WriteZeros,
}

/// Segments on the real file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStorage {
    pub write_mode: WriteMode,
    pub preallocate: Preallocate,
}

impl Default for FileStorage {
    /// pwrite + fallocate: the best throughput and the smallest worst-case commit measured
    /// on this project's machine; zero-filling stalls rotation (figures in docs/FORMATS.md).
    fn default() -> Self {
        FileStorage { write_mode: WriteMode::Pwrite, preallocate: Preallocate::Fallocate }
    }
}

const STAGING_SIZE_MAX_BYTES: usize = 4 << 20;
const READ_WINDOW_SIZE_BYTES: usize = 1 << 20;
const ZERO_CHUNK_SIZE_BYTES: usize = 1 << 20;

impl Storage for FileStorage {
    type File = FileSegment;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            result => result?,
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_file(&self, path: &Path, size_bytes: u64) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        match self.preallocate {
            Preallocate::Fallocate => file_fallocate(&file, size_bytes)?,
            Preallocate::WriteZeros => file_write_zeros(&file, size_bytes)?,
        }
        FileSegment::new(file, self.write_mode, OpenMode::ReadWrite)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(mode == OpenMode::ReadWrite).open(path)?;
        FileSegment::new(file, self.write_mode, mode)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

fn file_fallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    let length = libc::off_t::try_from(size_bytes).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for writing
    // and outlives the call.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result == 0 {
        assert_eq!(file.metadata()?.len(), size_bytes);
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // File systems without fallocate (tmpfs on old kernels, some FUSE): zeroes instead.
        return file_write_zeros(file, size_bytes);
    }
    Err(error)
}

fn file_write_zeros(file: &File, size_bytes: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_SIZE_BYTES];
    let mut offset = 0u64;
    while offset < size_bytes {
        let chunk_bytes = (size_bytes - offset).min(ZERO_CHUNK_SIZE_BYTES as u64) as usize;
        file.write_all_at(&zeros[..chunk_bytes], offset)?;
        offset += chunk_bytes as u64;
    }
    assert_eq!(offset, size_bytes);
    file.sync_data()?;
    assert_eq!(file.metadata()?.len(), size_bytes);
    Ok(())
}

/// A segment file on disk, written through a mapping or with pwrite.
pub struct FileSegment {
    file: File,
    size_bytes: u64,
    backend: Backend,
}

enum Backend {
    MapWrite(MmapMut),
    MapRead(Mmap),
    Pwrite(Staging),
}

/// pwrite's staging buffer for contiguous appends, and a read window so that recovery and
/// replay make one pread per MiB rather than two per record.
struct Staging {
    pending: Vec<u8>,
    pending_offset: u64,
    window: Vec<u8>,
    window_offset: u64,
}

impl FileSegment {
    fn new(file: File, write_mode: WriteMode, mode: OpenMode) -> io::Result<FileSegment> {
        let size_bytes = file.metadata()?.len();
        let backend = match (write_mode, mode) {
            // Readers always map: replay hands out bodies as slices of the mapping, no copy.
            (_, OpenMode::ReadOnly) if size_bytes > 0 => {
                // SAFETY: the journal only appends into zeroed space, so bytes a reader has
                // verified are never rewritten while mapped (`truncate_at` runs offline), and
                // nothing else truncates the file (docs/FORMATS.md), so every page stays backed.
                Backend::MapRead(unsafe { Mmap::map(&file)? })
            }
            (WriteMode::Mmap, OpenMode::ReadWrite) => {
                // SAFETY: the journal directory belongs to this process while it runs (see
                // docs/FORMATS.md); nothing else truncates or writes the file under the map,
                // and we never shrink it, so every mapped page stays backed by the file.
                Backend::MapWrite(unsafe { MmapMut::map_mut(&file)? })
            }
            (WriteMode::Mmap, OpenMode::ReadOnly) | (WriteMode::Pwrite, _) => Backend::Pwrite(Staging {
                pending: Vec::new(),
                pending_offset: 0,
                window: Vec::new(),
                window_offset: 0,
            }),
        };
        assert!(mode == OpenMode::ReadWrite || !matches!(backend, Backend::MapWrite(_)));
        Ok(FileSegment { file, size_bytes, backend })
    }

    fn check_range(&self, offset: u64, size_bytes: u64) -> io::Result<()> {
        match offset.checked_add(size_bytes) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{size_bytes} is past the end of the {}-byte file", self.size_bytes),
            )),
        }
    }
}

impl Staging {
    fn flush(&mut self, file: &File) -> io::Result<()> {
        if !self.pending.is_empty() {
            file.write_all_at(&self.pending, self.pending_offset)?;
            self.pending.clear();
        }
        assert!(self.pending.is_empty());
        Ok(())
    }

    fn write(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        self.window.clear();
        let pending_end = self.pending_offset + self.pending.len() as u64;
        if !self.pending.is_empty() && pending_end != offset {
            self.flush(file)?;
        }
        if data.len() >= STAGING_SIZE_MAX_BYTES {
            self.flush(file)?;
            return file.write_all_at(data, offset);
        }
        if self.pending.is_empty() {
            self.pending_offset = offset;
        }
        self.pending.extend_from_slice(data);
        assert!(self.pending_offset + self.pending.len() as u64 == offset + data.len() as u64);
        if self.pending.len() >= STAGING_SIZE_MAX_BYTES {
            self.flush(file)?;
        }
        Ok(())
    }

    fn read(&mut self, file: &File, file_size_bytes: u64, offset: u64, size: usize) -> io::Result<&[u8]> {
        self.flush(file)?;
        let window_end = self.window_offset + self.window.len() as u64;
        let hit = offset >= self.window_offset && offset + size as u64 <= window_end;
        if !hit {
            let load_bytes = (file_size_bytes - offset).min(size.max(READ_WINDOW_SIZE_BYTES) as u64);
            self.window.resize(load_bytes as usize, 0);
            file.read_exact_at(&mut self.window, offset)?;
            self.window_offset = offset;
        }
        let start = (offset - self.window_offset) as usize;
        assert!(start + size <= self.window.len());
        Ok(&self.window[start..start + size])
    }
}

impl StorageFile for FileSegment {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn grow(&mut self, size_bytes: u64) -> io::Result<()> {
        assert!(size_bytes >= self.size_bytes, "segments are never shrunk while open");
        if let Backend::Pwrite(staging) = &mut self.backend {
            staging.flush(&self.file)?;
            staging.window.clear();
        }
        self.file.set_len(size_bytes)?;
        self.size_bytes = size_bytes;
        // SAFETY: as in `FileSegment::new`; the file only grew, so the new map is fully backed.
        match &mut self.backend {
            Backend::MapWrite(map) => *map = unsafe { MmapMut::map_mut(&self.file)? },
            Backend::MapRead(map) => *map = unsafe { Mmap::map(&self.file)? },
            Backend::Pwrite(_) => {}
        }
        Ok(())
    }

    fn read_at(&mut self, offset: u64, size_bytes: usize) -> io::Result<&[u8]> {
        self.check_range(offset, size_bytes as u64)?;
        let start = offset as usize;
        match &mut self.backend {
            Backend::MapWrite(map) => Ok(&map[start..start + size_bytes]),
            Backend::MapRead(map) => Ok(&map[start..start + size_bytes]),
            Backend::Pwrite(staging) => staging.read(&self.file, self.size_bytes, offset, size_bytes),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let start = offset as usize;
        match &mut self.backend {
            Backend::MapWrite(map) => {
                map[start..start + data.len()].copy_from_slice(data);
                Ok(())
            }
            Backend::MapRead(_) => Err(io::Error::new(io::ErrorKind::PermissionDenied, "segment opened read-only")),
            Backend::Pwrite(staging) => staging.write(&self.file, offset, data),
        }
    }

    fn sync(&mut self, offset: u64, size_bytes: u64) -> io::Result<()> {
        self.check_range(offset, size_bytes)?;
        match &mut self.backend {
            Backend::MapWrite(map) => map.flush_range(offset as usize, size_bytes as usize),
            Backend::MapRead(_) => Ok(()),
            Backend::Pwrite(staging) => {
                staging.flush(&self.file)?;
                self.file.sync_data()
            }
        }
    }
}
