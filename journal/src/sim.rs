//! `SimStorage`: an in-memory, deterministic, fault-injecting `Storage` for tests and simulation.
//!
//! Each file keeps two images: `durable` (what a crash leaves) and `volatile` (what reads see).
//! Writes land in `volatile` and in an ordered log of unsynced writes; a ranged sync moves the
//! covered part of the log into `durable`, exactly as far as the range reaches, so a journal
//! that syncs too little is caught. `crash` throws away what was not synced, optionally keeping
//! a prefix of the unsynced log (the torn last write), and kills every open handle. One `u64`
//! seed drives every random choice, so a failing run replays exactly from its seed. Directory
//! operations (create, rename, remove) are durable at once: the sim does not model lost renames.
//! It is always compiled (no dependencies) because the ledger simulation reuses it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{OpenMode, Storage, StorageFile};

/// A small deterministic generator (SplitMix64), shared with tests that drive the sim.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        assert!(percent <= 100);
        self.below(100) < percent
    }
}

/// A call that fails once, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// `write_at` fails with ENOSPC and writes nothing.
    WriteNoSpace,
    /// `create_file` / `grow` fails with ENOSPC and creates nothing.
    CreateNoSpace,
    /// `sync` fails with EIO; what it covered stays unsynced.
    SyncIo,
}

/// What survives a crash of the unsynced writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimCrash {
    /// Only synced bytes survive.
    LoseUnsynced,
    /// Every unsynced write but the last survives, and a random prefix of the last.
    TornLastWrite,
    /// A random prefix of the unsynced writes, in write order, survives (the last kept one torn).
    TornPrefix,
}

type FileId = u64;

struct SimFileData {
    durable: Vec<u8>,
    volatile: Vec<u8>,
}

struct SimWrite {
    file: FileId,
    offset: u64,
    data: Vec<u8>,
}

struct SimState {
    rng: SimRng,
    generation: u64,
    file_id_next: FileId,
    names: BTreeMap<PathBuf, FileId>,
    files: BTreeMap<FileId, SimFileData>,
    dirs: Vec<PathBuf>,
    unsynced: Vec<SimWrite>,
    faults: Vec<(SimFault, u32)>,
}

/// The in-memory storage. Clones share the same files (a handle to one simulated disk).
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

/// An open simulated file. Dead (every call fails) after `SimStorage::crash`.
pub struct SimFile {
    state: Arc<Mutex<SimState>>,
    id: FileId,
    generation: u64,
    writable: bool,
    size_bytes: u64,
    read_buffer: Vec<u8>,
}

fn error_no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn error_io() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        let state = SimState {
            rng: SimRng::new(seed),
            generation: 0,
            file_id_next: 1,
            names: BTreeMap::new(),
            files: BTreeMap::new(),
            dirs: Vec::new(),
            unsynced: Vec::new(),
            faults: Vec::new(),
        };
        SimStorage { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().expect("sim storage lock poisoned")
    }

    /// Makes the `(calls_ok + 1)`-th call of the fault's kind from now fail, once.
    pub fn fail_after(&self, fault: SimFault, calls_ok: u32) {
        self.lock().faults.push((fault, calls_ok));
    }

    /// Simulates power loss: unsynced writes are lost except what `mode` keeps, and every open
    /// handle dies. Returns how many unsynced bytes survived.
    pub fn crash(&self, mode: SimCrash) -> u64 {
        let mut state = self.lock();
        let state = &mut *state;
        for data in state.files.values_mut() {
            data.volatile.clone_from(&data.durable);
        }
        let unsynced_size_bytes: u64 = state.unsynced.iter().map(|w| w.data.len() as u64).sum();
        let kept_size_bytes = match mode {
            SimCrash::LoseUnsynced => 0,
            SimCrash::TornPrefix => state.rng.below(unsynced_size_bytes + 1),
            SimCrash::TornLastWrite => match state.unsynced.last() {
                None => 0,
                Some(last) => {
                    let last_size_bytes = last.data.len() as u64;
                    unsynced_size_bytes - last_size_bytes + state.rng.below(last_size_bytes + 1)
                }
            },
        };
        let unsynced = std::mem::take(&mut state.unsynced);
        let mut budget_size_bytes = kept_size_bytes;
        for write in unsynced {
            let kept_bytes = budget_size_bytes.min(write.data.len() as u64) as usize;
            budget_size_bytes -= kept_bytes as u64;
            if let Some(data) = state.files.get_mut(&write.file) {
                let start = write.offset as usize;
                data.durable[start..start + kept_bytes].copy_from_slice(&write.data[..kept_bytes]);
                data.volatile[start..start + kept_bytes].copy_from_slice(&write.data[..kept_bytes]);
            }
        }
        assert_eq!(budget_size_bytes, 0);
        assert!(state.unsynced.is_empty());
        state.generation += 1;
        state.faults.clear();
        kept_size_bytes
    }

    /// Flips one bit of a file, durably (as a disk or cosmic ray would).
    pub fn flip_bit(&self, path: &Path, bit_index: u64) {
        let mut state = self.lock();
        let id = *state.names.get(path).expect("flip_bit: no such file");
        let data = state.files.get_mut(&id).expect("file data");
        let byte_index = (bit_index / 8) as usize;
        let mask = 1u8 << (bit_index % 8);
        assert!(byte_index < data.durable.len(), "flip_bit past the end of the file");
        data.durable[byte_index] ^= mask;
        data.volatile[byte_index] ^= mask;
    }

    /// The file's bytes as a read would see them, or `None` if there is no such file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.names.get(path)?;
        Some(state.files[id].volatile.clone())
    }

    /// Every file path, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// Bytes written but not yet synced, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock().unsynced.iter().map(|w| w.data.len() as u64).sum()
    }
}

impl SimState {
    /// True if a pending fault of this kind fires now.
    fn fault_fires(&mut self, kind: SimFault) -> bool {
        let mut fired = false;
        for (fault, calls_ok) in self.faults.iter_mut() {
            if *fault == kind {
                if *calls_ok == 0 {
                    fired = true;
                } else {
                    *calls_ok -= 1;
                }
            }
        }
        if fired {
            let index = self.faults.iter().position(|(f, n)| *f == kind && *n == 0);
            self.faults.remove(index.expect("the fired fault"));
        }
        fired
    }

    fn dir_exists(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }

    /// Moves the part of each unsynced write of `file` inside `start..end` into `durable`.
    fn sync_range(&mut self, file: FileId, start: u64, end: u64) {
        let unsynced = std::mem::take(&mut self.unsynced);
        for write in unsynced {
            let write_end = write.offset + write.data.len() as u64;
            if write.file != file || write_end <= start || write.offset >= end {
                self.unsynced.push(write);
                continue;
            }
            let inside_start = write.offset.max(start);
            let inside_end = write_end.min(end);
            let data = self.files.get_mut(&file).expect("synced file exists");
            let (from, to) = (inside_start as usize, inside_end as usize);
            let relative = (inside_start - write.offset) as usize;
            data.durable[from..to].copy_from_slice(&write.data[relative..relative + (to - from)]);
            if write.offset < inside_start {
                let before = write.data[..relative].to_vec();
                self.unsynced.push(SimWrite { file, offset: write.offset, data: before });
            }
            if inside_end < write_end {
                let after = write.data[relative + (to - from)..].to_vec();
                self.unsynced.push(SimWrite { file, offset: inside_end, data: after });
            }
        }
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() && !state.dir_exists(ancestor) {
                state.dirs.push(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        let files = state.names.keys().map(|p| p.as_path());
        let dirs = state.dirs.iter().map(|p| p.as_path());
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn create_file(&self, path: &Path, size_bytes: u64) -> io::Result<SimFile> {
        let mut state = self.lock();
        let parent = path.parent().expect("file in a directory");
        if !state.dir_exists(parent) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if state.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        if state.fault_fires(SimFault::CreateNoSpace) {
            return Err(error_no_space());
        }
        let id = state.file_id_next;
        state.file_id_next += 1;
        let zeros = vec![0u8; size_bytes as usize];
        let data = SimFileData { durable: zeros.clone(), volatile: zeros };
        state.files.insert(id, data);
        state.names.insert(path.to_path_buf(), id);
        Ok(self.handle(&state, id, true, size_bytes))
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let state = self.lock();
        let id = *state.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let size_bytes = state.files[&id].volatile.len() as u64;
        Ok(self.handle(&state, id, mode == OpenMode::ReadWrite, size_bytes))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.dir_exists(to.parent().expect("file in a directory")) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let id = state.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        if let Some(replaced) = state.names.insert(to.to_path_buf(), id) {
            state.files.remove(&replaced);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        state.files.remove(&id);
        state.unsynced.retain(|w| w.file != id);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let state = self.lock();
        if !state.dir_exists(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(())
    }
}

impl SimStorage {
    fn handle(&self, state: &SimState, id: FileId, writable: bool, size_bytes: u64) -> SimFile {
        SimFile {
            state: Arc::clone(&self.state),
            id,
            generation: state.generation,
            writable,
            size_bytes,
            read_buffer: Vec::new(),
        }
    }
}

impl SimFile {
    fn lock_alive(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let state = self.state.lock().expect("sim storage lock poisoned");
        if state.generation != self.generation {
            return Err(io::Error::other("simulated crash: this handle died with its process"));
        }
        if !state.files.contains_key(&self.id) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(state)
    }

    fn check_range(&self, offset: u64, size_bytes: u64) -> io::Result<()> {
        match offset.checked_add(size_bytes) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl StorageFile for SimFile {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn grow(&mut self, size_bytes: u64) -> io::Result<()> {
        assert!(size_bytes >= self.size_bytes);
        let mut state = self.lock_alive()?;
        if state.fault_fires(SimFault::CreateNoSpace) {
            return Err(error_no_space());
        }
        let data = state.files.get_mut(&self.id).expect("alive file");
        data.durable.resize(size_bytes as usize, 0);
        data.volatile.resize(size_bytes as usize, 0);
        drop(state);
        self.size_bytes = size_bytes;
        Ok(())
    }

    fn read_at(&mut self, offset: u64, size_bytes: usize) -> io::Result<&[u8]> {
        self.check_range(offset, size_bytes as u64)?;
        let mut buffer = std::mem::take(&mut self.read_buffer);
        {
            let state = self.lock_alive()?;
            let start = offset as usize;
            buffer.clear();
            buffer.extend_from_slice(&state.files[&self.id].volatile[start..start + size_bytes]);
        }
        self.read_buffer = buffer;
        Ok(&self.read_buffer)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if !self.writable {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let mut state = self.lock_alive()?;
        if state.fault_fires(SimFault::WriteNoSpace) {
            return Err(error_no_space());
        }
        let start = offset as usize;
        let file = state.files.get_mut(&self.id).expect("alive file");
        file.volatile[start..start + data.len()].copy_from_slice(data);
        state.unsynced.push(SimWrite { file: self.id, offset, data: data.to_vec() });
        Ok(())
    }

    fn sync(&mut self, offset: u64, size_bytes: u64) -> io::Result<()> {
        self.check_range(offset, size_bytes)?;
        let mut state = self.lock_alive()?;
        if state.fault_fires(SimFault::SyncIo) {
            return Err(error_io());
        }
        state.sync_range(self.id, offset, offset + size_bytes);
        Ok(())
    }
}
