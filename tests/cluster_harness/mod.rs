//! What the cluster test files share: waiting on a data directory's durable mark (inotify, not
//! a timer), reading every journal record's bytes, `walletd replay`, the proof that members
//! agree (journals byte for byte, one state hash), Σ = 0, and the transfers the tests send.
//! Each file keeps its own `Cluster` (plain processes in tests/cluster.rs, network namespaces in
//! tests/cluster_partition.rs) and passes its members here as `(id, data directory)`.

use super::common::transfer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use walletd_core::{AccountId, Transfer, TransferId};
use walletd_gateway::ClusterClient;
use walletd_journal::{FileStorage, Reader};

/// Accounts every cluster test creates (ids 1..=ACCOUNTS) and moves money between.
pub const ACCOUNTS: u128 = 64;

/// Writes to the files of one directory, through inotify: `wait` returns when one happened.
pub struct DirChanges {
    fd: i32,
}

impl DirChanges {
    pub fn watch(dir: &Path) -> DirChanges {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: plain syscalls on a descriptor this struct owns and a NUL-terminated path.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        // SAFETY: as above.
        let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
        assert!(watch >= 0, "inotify_add_watch {}: {}", dir.display(), std::io::Error::last_os_error());
        DirChanges { fd }
    }

    /// Blocks until a file in the directory changed (true) or `timeout` passed (false); drains
    /// the events that arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut poll = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one pollfd that lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(error.kind(), std::io::ErrorKind::Interrupted, "poll on inotify: {error}");
            return true; // a signal: look again
        }
        if ready == 0 {
            return false;
        }
        let mut events = [0u8; 4096];
        // SAFETY: reads into a buffer of the length given; the descriptor is non-blocking.
        while unsafe { libc::read(self.fd, events.as_mut_ptr().cast(), events.len()) } > 0 {}
        true
    }
}

impl Drop for DirChanges {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this struct's and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// A data directory's durable op (0 before the member's first commit).
pub fn durable_op(dir: &Path) -> u64 {
    let durable = walletd_replay::durable_read(dir).expect("read the durable mark");
    durable.map_or(0, |position| position.op)
}

/// Waits until every member's journal is durable to `op`, woken by each write to its data
/// directory (inotify) rather than by a timer; fails after `timeout`.
pub fn durable_wait(members: &[(u64, PathBuf)], op: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for (id, dir) in members {
        let changes = DirChanges::watch(dir);
        while durable_op(dir) < op {
            let left = deadline.checked_duration_since(Instant::now());
            let changed = left.is_some_and(|left| changes.wait(left));
            assert!(changed, "member {id} did not reach op {op}: at {}", durable_op(dir));
        }
    }
}

/// Every record's bytes, in op order, as the files hold them.
pub fn journal_records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let mut reader = Reader::open(FileStorage::default(), dir, 1).expect("open a journal reader");
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("a verified record") {
        let (op, size) = (record.op, walletd_journal::record_size_bytes(record.body.len() as u64));
        let (segment, offset) = reader.position().expect("the position of the record just read");
        let file = std::fs::File::open(segment).expect("open the segment");
        let mut bytes = vec![0u8; size as usize];
        file.read_exact_at(&mut bytes, offset).expect("read the record's bytes");
        records.push((op, bytes));
    }
    records
}

/// `walletd replay --json` on a data directory: (ops, state hash).
pub fn replay(dir: &Path) -> (u64, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["replay", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .expect("walletd replay runs");
    assert!(output.status.success(), "replay of {} failed: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("replay --json prints one object");
    (report["ops"].as_u64().expect("ops"), report["state_hash"].as_str().expect("state_hash").to_string())
}

/// A checkpoint through the leader, then every member durable to it; then the journals are
/// equal byte for byte up to the common op, and every replay gives the same state hash.
/// Returns the checkpoint's op.
pub fn members_agree(members: &[(u64, PathBuf)], client: &ClusterClient, timeout: Duration) -> u64 {
    let op = client.snapshot().expect("a checkpoint through the leader");
    durable_wait(members, op, timeout);
    let journals: Vec<Vec<(u64, Vec<u8>)>> = members.iter().map(|(_, dir)| journal_records(dir)).collect();
    let common = journals.iter().map(|records| records.len()).min().expect("members");
    assert!(common as u64 >= op, "every journal reaches the checkpoint at op {op}");
    let first = members[0].0;
    for ((id, _), records) in members.iter().zip(&journals).skip(1) {
        for index in 0..common {
            assert_eq!(records[index].0, journals[0][index].0);
            assert!(
                records[index].1 == journals[0][index].1,
                "member {id} differs from member {first} at op {}",
                records[index].0
            );
        }
    }
    let replays: Vec<(u64, String)> = members.iter().map(|(_, dir)| replay(dir)).collect();
    for ((id, _), replayed) in members.iter().zip(&replays) {
        assert_eq!(replayed, &replays[0], "member {id}'s replay differs from member {first}'s");
    }
    op
}

/// The end of every fault test: each acknowledged transfer is on the leader, the members'
/// journals (which reach a checkpoint taken after the last acknowledgement) and state hashes
/// agree, and money sums to zero.
pub fn acknowledged_kept_and_members_agree(
    members: &[(u64, PathBuf)],
    client: &ClusterClient,
    acknowledged: &[TransferId],
    timeout: Duration,
) {
    for chunk in acknowledged.chunks(5000) {
        let found = client.lookup_transfers(chunk).expect("lookup acknowledged transfers");
        assert_eq!(found.len(), chunk.len(), "an acknowledged transfer is missing on the leader");
    }
    members_agree(members, client, timeout);
    money_sums_to_zero(client);
}

/// Σ over all accounts of credits − debits (posted and pending) is zero.
pub fn money_sums_to_zero(client: &ClusterClient) {
    let ids: Vec<AccountId> = (1..=ACCOUNTS).map(AccountId).collect();
    let found = client.lookup_accounts(&ids).expect("lookup accounts");
    assert_eq!(found.len(), ACCOUNTS as usize);
    let mut sum: i128 = 0;
    for account in &found {
        sum += account.credits_posted.0 as i128 - account.debits_posted.0 as i128;
        sum += account.credits_pending.0 as i128 - account.debits_pending.0 as i128;
    }
    assert_eq!(sum, 0, "money is neither created nor lost");
}

/// `count` transfers with ids from `first`, between the test accounts, amounts 1..=100.
pub fn transfers(first: u128, count: u128) -> Vec<Transfer> {
    (first..first + count)
        .map(|low| {
            let debit = 1 + low % ACCOUNTS;
            let credit = 1 + (low * 7 + 3) % ACCOUNTS;
            let credit = if credit == debit { 1 + credit % ACCOUNTS } else { credit };
            transfer(low, debit, credit, 1 + low % 100)
        })
        .collect()
}
