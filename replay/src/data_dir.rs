//! A data directory: everything a node keeps, under one root.
//!
//! ```text
//! DIR/lock                 held (flock) by the one process that writes: serve, generate, truncate
//! DIR/ledger.conf          the ledger's config, written once when the directory is created
//! DIR/journal/             segment-{first_op:020}.wal (live), archive/ (kept for years), quarantine/
//! DIR/snapshots/           snapshot-{op:020}.snap, the newest few
//! ```
//!
//! The config is part of the state: capacities decide which events are refused as full and
//! the hash seed lays out the indexes, so a replay must use the one the journal was written
//! with. `ledger.conf` pins it, checksummed; a node reads it and uses it, whatever its flags.
//!
//! ```text
//! ledger.conf (80 bytes)
//! offset size field
//!      0    8 magic "WDCONFIG"
//!      8    4 version (1)
//!     12    4 reserved (zero)
//!     16   40 the config, laid out as in the ledger image header (offsets 16..56 there)
//!     56    8 reserved (zero)
//!     64   16 checksum: first 16 bytes of BLAKE3 over bytes 0..64
//! ```

use crate::error::ReplayError;
use std::fs;
use std::path::PathBuf;
use walletd_core::config::CONFIG_SIZE_BYTES;
use walletd_core::Config;
use walletd_journal::JournalConfig;

const CONFIG_MAGIC: [u8; 8] = *b"WDCONFIG";
const CONFIG_VERSION: u32 = 1;
const CONFIG_FILE_SIZE_BYTES: usize = 80;

#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

/// The exclusive lock on a data directory, held while this value lives. Two writers on one
/// journal would both acknowledge the same op; the second is refused instead.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// Takes the directory's write lock (creating the directory if missing), or refuses with
    /// the pid of the process that holds it. Read-only tools (replay) do not take it.
    pub fn lock(&self) -> Result<DirLock, ReplayError> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::io::AsRawFd;
        fs::create_dir_all(&self.root).map_err(|source| ReplayError::Io { path: self.root.clone(), source })?;
        let path = self.root.join("lock");
        let io = |source| ReplayError::Io { path: path.clone(), source };
        let mut file =
            fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ReplayError::DataDir {
                path: self.root.clone(),
                reason: format!(
                    "locked by another walletd process (pid {}): one process writes a data directory at a time; \
                     stop it first",
                    holder.trim()
                ),
            });
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(DirLock { _file: file })
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("ledger.conf")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn journal_config(&self, segment_size_bytes: u64) -> JournalConfig {
        JournalConfig { dir: self.root.clone(), segment_size_bytes }
    }

    pub fn exists(&self) -> bool {
        self.config_path().exists()
    }

    /// Creates the directory with `config` if it has no ledger.conf yet; otherwise reads the
    /// config it was created with (the one that must be used).
    pub fn open_or_create(&self, config: Config) -> Result<Config, ReplayError> {
        if self.exists() {
            return self.config_read();
        }
        let config = config.validated()?;
        fs::create_dir_all(&self.root).map_err(|source| ReplayError::Io { path: self.root.clone(), source })?;
        let path = self.config_path();
        let temporary = path.with_extension("tmp");
        let io = |source| ReplayError::Io { path: temporary.clone(), source };
        fs::write(&temporary, config_encode(&config)).map_err(io)?;
        fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io)?;
        fs::rename(&temporary, &path).map_err(|source| ReplayError::Io { path: path.clone(), source })?;
        fs::File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| ReplayError::Io { path: self.root.clone(), source })?;
        Ok(config)
    }

    /// The config the directory was created with.
    pub fn config_read(&self) -> Result<Config, ReplayError> {
        let path = self.config_path();
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ReplayError::DataDir {
                path: self.root.clone(),
                reason:
                    "not a walletd data directory (no ledger.conf); `walletd serve` or `walletd generate` creates one"
                        .to_string(),
            },
            _ => ReplayError::Io { path: path.clone(), source },
        })?;
        config_decode(&bytes).map_err(|reason| ReplayError::DataDir { path, reason })
    }
}

pub fn config_encode(config: &Config) -> [u8; CONFIG_FILE_SIZE_BYTES] {
    let mut bytes = [0u8; CONFIG_FILE_SIZE_BYTES];
    bytes[0..8].copy_from_slice(&CONFIG_MAGIC);
    bytes[8..12].copy_from_slice(&CONFIG_VERSION.to_le_bytes());
    bytes[16..56].copy_from_slice(&config.encode());
    let checksum = blake3::hash(&bytes[..64]);
    bytes[64..80].copy_from_slice(&checksum.as_bytes()[..16]);
    bytes
}

pub fn config_decode(bytes: &[u8]) -> Result<Config, String> {
    if bytes.len() != CONFIG_FILE_SIZE_BYTES {
        return Err(format!("ledger.conf is {} bytes, expected {CONFIG_FILE_SIZE_BYTES}", bytes.len()));
    }
    if bytes[0..8] != CONFIG_MAGIC {
        return Err("ledger.conf has a bad magic: not a walletd config".to_string());
    }
    if blake3::hash(&bytes[..64]).as_bytes()[..16] != bytes[64..80] {
        return Err("ledger.conf checksum mismatch: the file was damaged or edited".to_string());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != CONFIG_VERSION {
        return Err(format!("ledger.conf version {version} is not supported"));
    }
    let config_bytes: &[u8; CONFIG_SIZE_BYTES] = bytes[16..56].try_into().expect("40 bytes");
    Config::decode(config_bytes).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_damage_is_refused() {
        let config = Config::small().validated().unwrap();
        let bytes = config_encode(&config);
        assert_eq!(config_decode(&bytes), Ok(config));
        let mut damaged = bytes;
        damaged[20] ^= 1;
        assert!(config_decode(&damaged).unwrap_err().contains("checksum"));
        assert!(config_decode(&bytes[..10]).is_err());
    }
}
