//! Snapshots in the cluster: an anchor in the journal, and a catch-up that fetches the journal
//! records a member lacks from another member.
//!
//! A member's state is its journal (the ledger is a function of it), and every member's journal
//! holds the same committed sequence byte for byte. So a snapshot does not copy the state: it
//! names the journal op it reaches, the chain checksum there and the member that built it, with
//! openraft's meta (the Raft log id and the membership at that op). Building one costs nothing
//! and lets openraft purge the Raft log before it; the journal keeps the same records.
//!
//! A member that is behind the leader's purged log, or starts from an empty data directory, is
//! sent a snapshot. Installing it fetches the records `op_durable + 1 ..= anchor.op` from a
//! member that holds them (the snapshot's source first, then every other member of its
//! membership), over the peer port (`PeerRequest::JournalRead`). Before a record is journaled
//! it must continue this member's own chain (its `checksum_prev` is this journal's last
//! checksum) and its bytes must give its checksum; the last must be the anchor's checksum. A
//! source can therefore only send the exact committed records; a record that continues another
//! chain means the journals diverge, which stops the member (fail-stop). Records are applied as
//! replay applies them (each checkpoint's state hash verified) and each chunk is committed with
//! one fdatasync. While it installs, the member does not stand for election.
//!
//! Crash safety: the snapshot is written to `raft/installing` before the first record is
//! fetched; a member that restarts with that file present finishes the fetch before it starts
//! Raft, resuming at its journal's end. `raft/snapshot` holds the newest snapshot built or
//! installed: it names the log id of the applied op once the Raft log before it is purged, and
//! is what the member sends to others. A purge of the Raft log past what the journal holds
//! (openraft purges a follower's log when it accepts a snapshot, possibly before the install
//! has run) is deferred until the journal has caught up (`LogStore::purge`), so a restart never
//! finds a journal whose last op the Raft log and the snapshot files cannot name.

use crate::elections::Elections;
use crate::log_store::{fail_stop, small_file_read, small_file_remove, small_file_write, LogStore, LogStoreError};
use crate::network::{frame_encode, frame_read, frame_write, PeerReply, PeerRequest};
use crate::state_machine::Machine;
use crate::types::{Member, NodeId, TypeConfig};
use openraft::{Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use walletd_journal::{FileStorage, Reader};
use walletd_replay::replay::Replayer;

const SNAPSHOT_FILE: &str = "snapshot";
const INSTALLING_FILE: &str = "installing";

/// How much record body one `JournalRecords` reply carries (one record more may go over it):
/// well within the peer frame limit (a record is at most 4 MiB), one fdatasync per chunk on
/// the receiver, and short writes on the sender's runtime.
pub const JOURNAL_CHUNK_BYTES: usize = 8 << 20;

/// How long a source may take to send the next chunk before the fetch tries another member.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a round in which no member could serve the records, doubling up to the max.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Where a snapshot is in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalAnchor {
    /// The journal op the snapshot reaches: its Raft index + 1.
    pub op: u64,
    /// The journal's chain checksum at `op`.
    pub checksum: u128,
    /// The member that holds the journal to `op` (it built or installed the snapshot).
    pub source: NodeId,
}

/// A snapshot as a member keeps it: openraft's meta and the anchor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, Member>,
    pub anchor: JournalAnchor,
}

impl StoredSnapshot {
    /// The Raft index the snapshot reaches.
    pub fn index(&self) -> u64 {
        self.meta.last_log_id.expect("a snapshot reaches an applied entry").index
    }

    /// The snapshot openraft sends: the meta, and the anchor as the data.
    pub fn snapshot(&self) -> Snapshot<TypeConfig> {
        let data = bincode::serialize(&self.anchor).expect("an anchor encodes");
        Snapshot { meta: self.meta.clone(), snapshot: Box::new(Cursor::new(data)) }
    }

    /// A snapshot another member sent: its data must be an anchor at the meta's index.
    pub fn decode(meta: SnapshotMeta<NodeId, Member>, data: &[u8]) -> Result<StoredSnapshot, String> {
        let anchor: JournalAnchor =
            bincode::deserialize(data).map_err(|error| format!("the snapshot's data is not an anchor: {error}"))?;
        let Some(last_log_id) = meta.last_log_id else {
            return Err("a snapshot without a last log id".to_string());
        };
        if anchor.op != last_log_id.index + 1 {
            return Err(format!(
                "the snapshot of {last_log_id} anchors journal op {}, not {}",
                anchor.op,
                last_log_id.index + 1
            ));
        }
        Ok(StoredSnapshot { meta, anchor })
    }
}

/// One journal record, as a member sends it to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub op: u64,
    pub timestamp_ns: u64,
    /// `RecordKind` as its code.
    pub kind: u16,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub checksum_prev: u128,
    pub checksum: u128,
}

/// This member's snapshots: the newest one, the files, and what installing did.
pub struct Snapshots {
    dir: PathBuf,
    node_id: NodeId,
    current: Mutex<Option<StoredSnapshot>>,
    /// This member does not stand for election while an install runs (`elections`).
    elections: Arc<Elections>,
    pub installed: AtomicU64,
    pub records_fetched: AtomicU64,
}

impl Snapshots {
    /// Reads `dir/snapshot`, and `dir/installing` (an install a crash interrupted, returned
    /// for `install_resume`).
    pub fn open(
        dir: &Path,
        node_id: NodeId,
        elections: Arc<Elections>,
    ) -> Result<(Snapshots, Option<StoredSnapshot>), LogStoreError> {
        let current = small_file_read::<StoredSnapshot>(&dir.join(SNAPSHOT_FILE))?;
        let installing = small_file_read::<StoredSnapshot>(&dir.join(INSTALLING_FILE))?;
        let snapshots = Snapshots {
            dir: dir.to_path_buf(),
            node_id,
            current: Mutex::new(current),
            elections,
            installed: AtomicU64::new(0),
            records_fetched: AtomicU64::new(0),
        };
        Ok((snapshots, installing))
    }

    pub fn current(&self) -> Option<StoredSnapshot> {
        self.current.lock().expect("the snapshot lock").clone()
    }

    /// Keeps `snapshot` as the newest (durably first: it names the applied log id after a purge).
    pub fn keep(&self, snapshot: StoredSnapshot) {
        small_file_write(&self.dir, SNAPSHOT_FILE, &snapshot)
            .unwrap_or_else(|error| fail_stop("Raft snapshot write", &error.to_string()));
        *self.current.lock().expect("the snapshot lock") = Some(snapshot);
    }

    /// Installs a snapshot another member sent: catches the journal up to its anchor, then
    /// keeps it (as held by this member from now on). Prints a line when done.
    ///
    /// The member does not stand for election meanwhile, nor for a quiet period after it (see
    /// `elections`): its log is behind the leader's commit, so it could not win, and standing
    /// would only depose the leader.
    pub async fn install(&self, machine: &Arc<Mutex<Machine>>, log: &LogStore, snapshot: StoredSnapshot) {
        self.elections.installing_set(true);
        tokio::task::block_in_place(|| small_file_write(&self.dir, INSTALLING_FILE, &snapshot))
            .unwrap_or_else(|error| fail_stop("Raft snapshot install mark write", &error.to_string()));
        let op = snapshot.anchor.op;
        let fetched = self.install_resume(machine, log, snapshot).await;
        self.elections.installing_set(false);
        println!(
            "cluster: node {} installed the snapshot at op {op} ({fetched} journal records fetched)",
            self.node_id
        );
    }

    /// Finishes an install: fetches what the journal lacks, keeps the snapshot, removes the
    /// install mark; returns the records fetched. At start-up, for an install a crash
    /// interrupted.
    pub async fn install_resume(&self, machine: &Arc<Mutex<Machine>>, log: &LogStore, snapshot: StoredSnapshot) -> u64 {
        let anchor = snapshot.anchor;
        tracing::info!(op = anchor.op, source = anchor.source, "installing a snapshot: fetching the journal to its op");
        let fetched = catch_up(machine, self.node_id, &snapshot).await;
        let held = StoredSnapshot { anchor: JournalAnchor { source: self.node_id, ..anchor }, ..snapshot };
        tokio::task::block_in_place(|| {
            self.keep(held.clone());
            machine.lock().expect("the state machine lock").snapshot_installed(&held.meta);
            log.applied_advance(held.index());
            small_file_remove(&self.dir, INSTALLING_FILE)
                .unwrap_or_else(|error| fail_stop("Raft snapshot install mark removal", &error.to_string()));
        });
        self.installed.fetch_add(1, Ordering::Relaxed);
        self.records_fetched.fetch_add(fetched, Ordering::Relaxed);
        tracing::info!(op = anchor.op, fetched, "snapshot installed");
        fetched
    }
}

/// The members to fetch from, the snapshot's source first; not this member.
fn sources(snapshot: &StoredSnapshot, node_id: NodeId) -> Vec<(NodeId, String)> {
    let members = snapshot.meta.last_membership.membership().nodes();
    let mut sources: Vec<(NodeId, String)> =
        members.filter(|(id, _)| **id != node_id).map(|(id, member)| (*id, member.raft_addr.clone())).collect();
    sources.sort_by_key(|(id, _)| *id != snapshot.anchor.source);
    sources
}

/// Fetches and applies the records the journal lacks up to the snapshot's anchor, trying each
/// member in turn and pausing between rounds until one serves them. Returns how many it fetched.
async fn catch_up(machine: &Arc<Mutex<Machine>>, node_id: NodeId, snapshot: &StoredSnapshot) -> u64 {
    let anchor = snapshot.anchor;
    let sources = sources(snapshot, node_id);
    let mut fetched = 0u64;
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        let (op_have, checksum) = {
            let machine = machine.lock().expect("the state machine lock");
            (machine.op_durable(), machine.checksum_last())
        };
        if op_have >= anchor.op {
            if op_have > anchor.op || checksum != anchor.checksum {
                fail_stop(
                    "snapshot install",
                    &format!(
                        "the journal holds op {op_have} with checksum {checksum:032x}; the snapshot says op {} with \
                         checksum {:032x}: the journals diverge",
                        anchor.op, anchor.checksum
                    ),
                );
            }
            return fetched;
        }
        let mut progressed = false;
        for (source, addr) in &sources {
            match fetch_from(machine, addr, op_have + 1, anchor.op).await {
                Ok(count) => {
                    fetched += count;
                    progressed |= count > 0;
                    if count > 0 {
                        break;
                    }
                }
                Err(error) => tracing::warn!(source, %addr, %error, "could not fetch the journal from a member"),
            }
        }
        if progressed {
            pause = RETRY_PAUSE_MIN;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }
}

/// Fetches `op_first..=op_last` from the member at `addr` into the journal and ledger. Returns
/// the records applied (also when the source fails part way: they are committed).
async fn fetch_from(machine: &Arc<Mutex<Machine>>, addr: &str, op_first: u64, op_last: u64) -> Result<u64, String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|error| error.to_string())?;
    let _ = stream.set_nodelay(true);
    frame_write(&mut stream, &PeerRequest::JournalRead { op_first, op_last })
        .await
        .map_err(|error| error.to_string())?;
    let mut replayer = Replayer::new(machine.lock().expect("the state machine lock").config());
    let mut applied = 0u64;
    loop {
        let reply = match tokio::time::timeout(CHUNK_TIMEOUT, frame_read::<PeerReply>(&mut stream)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) if applied > 0 => {
                tracing::warn!(%error, applied, "the source stopped part way");
                return Ok(applied);
            }
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) if applied > 0 => return Ok(applied),
            Err(_) => return Err(format!("no records within {} s", CHUNK_TIMEOUT.as_secs())),
        };
        match reply {
            PeerReply::JournalRecords(Ok(records)) if records.is_empty() => return Ok(applied),
            PeerReply::JournalRecords(Ok(records)) => {
                let outcome = tokio::task::block_in_place(|| {
                    machine.lock().expect("the state machine lock").records_append(&records, &mut replayer)
                });
                applied += outcome.appended;
                if let Some(error) = outcome.refused {
                    return if applied > 0 { Ok(applied) } else { Err(error) };
                }
            }
            PeerReply::JournalRecords(Err(reason)) => return if applied > 0 { Ok(applied) } else { Err(reason) },
            other => return Err(format!("answered a journal read with {other:?}")),
        }
    }
}

/// Reads `op_first..=op_last` from the journal in `root` (which holds them durably) and sends
/// them as encoded `JournalRecords` frames of about `JOURNAL_CHUNK_BYTES`, then an empty one;
/// stops when the receiver is gone. On the blocking pool: it reads files and encodes.
pub fn journal_frames_send(root: &Path, op_first: u64, op_last: u64, frames: &tokio::sync::mpsc::Sender<Vec<u8>>) {
    let send = |chunk: Result<Vec<JournalRecord>, String>| {
        let frame = frame_encode(&PeerReply::JournalRecords(chunk)).expect("a chunk within the frame limit");
        frames.blocking_send(frame).is_ok()
    };
    let mut reader = match Reader::open_until(FileStorage::default(), root, op_first, op_last) {
        Ok(reader) => reader,
        Err(error) => {
            send(Err(error.to_string()));
            return;
        }
    };
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                chunk_bytes += record.body.len();
                chunk.push(JournalRecord {
                    op: record.op,
                    timestamp_ns: record.timestamp_ns,
                    kind: record.kind as u16,
                    body: record.body.to_vec(),
                    checksum_prev: record.checksum_prev,
                    checksum: record.checksum,
                });
                if chunk_bytes >= JOURNAL_CHUNK_BYTES {
                    chunk_bytes = 0;
                    if !send(Ok(std::mem::take(&mut chunk))) {
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(error) => {
                send(Err(error.to_string()));
                return;
            }
        }
    }
    if !chunk.is_empty() && !send(Ok(chunk)) {
        return;
    }
    send(Ok(Vec::new()));
}
