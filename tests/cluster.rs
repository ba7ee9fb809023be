//! The replicated cluster end to end: three real `walletd serve --cluster` processes on
//! 127.0.0.1, initialised with `walletd cluster init`, driven through the Rust cluster client.
//!
//! - Three members elect a leader and take transfers through it; a write sent to a follower
//!   gets `not_leader` naming the leader, and the cluster client follows it; every member's
//!   journal is byte-for-byte equal up to the common op and `walletd replay` on each data
//!   directory gives the same state hash; money sums to zero.
//! - kill -9 of the leader under load, for `WALLETD_CLUSTER_ROUNDS` rounds (default 5): each
//!   time a new leader is elected and serves writes, the killed member restarts and catches up,
//!   and at the end every acknowledged transfer is on the leader and every journal is equal.
//!   It prints the failover gaps it saw (a measurement, never asserted); `WALLETD_CLUSTER_ARGS`
//!   adds flags to every member (other Raft timeouts).
//! - Losing the majority: the lone member left refuses writes (`unavailable`, never an
//!   acknowledgement) and serves again once a majority is back.
//! - A Raft log ending in a torn append is cut at restart and the member catches up; one with a
//!   flipped byte, or a size field that runs past the end, in the middle refuses to start and
//!   names the corruption.
//! - A leader paused with SIGSTOP while the others elect a new one answers the writes sent to
//!   it meanwhile, once resumed, with failures, never an acknowledgement that is not in the new
//!   leader's ledger.
//! - A dead member whose disk is lost is removed (`walletd cluster remove`) and replaced by a
//!   new one (`walletd cluster add`), whose vote then elects the next leader.
//! - The HTTP gateway given a follower follows `not_leader` to the leader, and to the next
//!   leader after a kill; one given several members passes over a dead one.
//! - Every member serves its Raft view and write outcomes on `/metrics`.
//! - Snapshots: with a small snapshot interval the leader purges its Raft log (and frees the
//!   bytes); a member that was down past the purge, and a new member on an empty directory,
//!   are caught up by a snapshot install that fetches the journal they lack; the leader
//!   restarts from its purged log. A member that died during an install finishes it at start.
//! - Ledger snapshots: every member writes its own and archives the journal behind them; a
//!   follower restarts from its newest (replaying only the journal after it), from the older one
//!   when the newest is damaged, and from the whole journal when every one is.
//! - Signed checkpoints: every member signs with the one key they hold; every journal verifies
//!   under it (and under no other), at a member's start-up and with `walletd replay`; a member
//!   that signs otherwise is refused by `cluster add`.
//!
//! The tests wait on events (lines the members print, a durable mark in a data directory),
//! with deadlines generous for a loaded two-core machine; nothing sleeps a fixed time.

mod cluster_harness;
mod common;
mod http_harness;

use cluster_harness::{acknowledged_kept_and_members_agree, members_agree, money_sums_to_zero, transfers, ACCOUNTS};
use common::{accounts, serve_binary_lines, ServerChild, LINE_TIMEOUT};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walletd_core::{AccountId, TransferId};
use walletd_gateway::client::{Client, ClientError, ClientOptions};
use walletd_gateway::ClusterClient;

const MEMBERS: u64 = 3;
/// Elections, restarts and catch-up on a busy machine: generous, and only ever waited on.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One line a member printed, with its node id.
struct Line {
    node: u64,
    text: String,
}

struct Member {
    id: u64,
    dir: PathBuf,
    addr: SocketAddr,
    raft_addr: SocketAddr,
    child: Option<ServerChild>,
}

struct Cluster {
    _tmp: tempfile::TempDir,
    members: Vec<Member>,
    lines: Receiver<Line>,
    lines_sender: Sender<Line>,
    /// Each member's newest view, from its lines: (term, leader).
    views: BTreeMap<u64, (u64, Option<u64>)>,
    /// Each member's metrics address, from its `metrics on` line (with `--metrics-addr`).
    metrics_addrs: BTreeMap<u64, SocketAddr>,
    extra_args: Vec<String>,
}

fn member_args(id: u64, raft_addr: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["--cluster", "--node-id", &id.to_string(), "--raft-addr", raft_addr]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    if !extra.iter().any(|arg| arg == "--accounts-max") {
        args.extend(["--accounts-max".to_string(), "4096".to_string()]);
    }
    args.extend(extra.iter().cloned());
    args
}

/// Starts a member; returns its child, client address and Raft address (from its lines).
fn member_start(
    id: u64,
    dir: &Path,
    addr: &str,
    raft_addr: &str,
    extra: &[String],
    sender: &Sender<Line>,
) -> (ServerChild, SocketAddr, SocketAddr) {
    let args = member_args(id, raft_addr, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, addr, lines) = serve_binary_lines(dir, addr, &args);
    let raft_line = lines.recv_timeout(LINE_TIMEOUT).expect("the raft line");
    let raft_addr = raft_line.split_whitespace().nth(2).expect("raft on ADDR").parse().expect("an address");
    let sender = sender.clone();
    std::thread::spawn(move || {
        for text in lines {
            if sender.send(Line { node: id, text }).is_err() {
                return;
            }
        }
    });
    (child, addr, raft_addr)
}

impl Cluster {
    /// Three members on fresh directories, initialised; returns once a leader is elected.
    fn start(extra_args: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (lines_sender, lines) = channel();
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let mut members = Vec::new();
        for id in 1..=MEMBERS {
            let dir = tmp.path().join(format!("node{id}"));
            let (child, addr, raft_addr) =
                member_start(id, &dir, "127.0.0.1:0", "127.0.0.1:0", &extra_args, &lines_sender);
            members.push(Member { id, dir, addr, raft_addr, child: Some(child) });
        }
        let cluster = Cluster {
            _tmp: tmp,
            members,
            lines,
            lines_sender,
            views: BTreeMap::new(),
            metrics_addrs: BTreeMap::new(),
            extra_args,
        };
        cluster.init();
        cluster
    }

    /// Starts a new member `id` on a fresh data directory (not yet in the membership), with
    /// `extra` flags beside the cluster's.
    fn member_new(&mut self, id: u64, extra: &[&str]) {
        let dir = self._tmp.path().join(format!("node{id}"));
        let mut args = self.extra_args.clone();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let (child, addr, raft_addr) = member_start(id, &dir, "127.0.0.1:0", "127.0.0.1:0", &args, &self.lines_sender);
        self.members.push(Member { id, dir, addr, raft_addr, child: Some(child) });
    }

    /// Forgets a killed member (its data directory is gone, or it left the membership).
    fn member_forget(&mut self, id: u64) {
        assert!(self.member(id).child.is_none(), "kill a member before forgetting it");
        self.members.retain(|member| member.id != id);
        self.views.remove(&id);
    }

    /// `walletd cluster ARGS…`: (success, stdout, stderr).
    fn tool(&self, args: &[&str]) -> (bool, String, String) {
        let output =
            Command::new(env!("CARGO_BIN_EXE_walletd")).arg("cluster").args(args).output().expect("walletd runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    }

    fn init(&self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_walletd"));
        command.args(["cluster", "init", "--raft-addr", &self.members[0].raft_addr.to_string()]);
        for member in &self.members {
            command.arg("--member").arg(format!("{}={}/{}", member.id, member.raft_addr, member.addr));
        }
        let output = command.output().expect("walletd cluster init runs");
        assert!(output.status.success(), "cluster init failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn member(&self, id: u64) -> &Member {
        self.members.iter().find(|member| member.id == id).expect("a member with that id")
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        self.members.iter_mut().find(|member| member.id == id).expect("a member with that id")
    }

    fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|member| member.addr.to_string()).collect()
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::new(self.addresses(), ClientOptions::default(), EVENT_TIMEOUT)
    }

    /// Reads lines until a live member other than `excluded` reports itself leader in a term
    /// above `term_above`; returns (leader, term).
    fn leader_wait(&mut self, term_above: u64, excluded: Option<u64>) -> (u64, u64) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let alive_leader = self.views.iter().find_map(|(node, (term, leader))| {
                let alive = self.members.iter().any(|member| member.id == *node && member.child.is_some());
                (alive && *leader == Some(*node) && *term > term_above && Some(*node) != excluded)
                    .then_some((*node, *term))
            });
            if let Some(found) = alive_leader {
                return found;
            }
            let left = deadline.checked_duration_since(Instant::now()).expect("no leader elected in time");
            let line = self.lines.recv_timeout(left).expect("no leader elected in time");
            self.view_update(&line);
        }
    }

    /// Reads lines (keeping the views up to date) until member `node` prints one starting with
    /// `prefix`; returns it.
    fn line_wait(&mut self, node: u64, prefix: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.checked_duration_since(Instant::now());
            let line = left.and_then(|left| self.lines.recv_timeout(left).ok());
            let line = line.unwrap_or_else(|| panic!("member {node} did not print \"{prefix}…\" in time"));
            self.view_update(&line);
            if line.node == node && line.text.starts_with(prefix) {
                return line.text;
            }
        }
    }

    /// Reads lines until member `id` has printed its metrics address.
    fn metrics_addr_wait(&mut self, id: u64) -> SocketAddr {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(addr) = self.metrics_addrs.get(&id) {
                return *addr;
            }
            let left = deadline.checked_duration_since(Instant::now()).expect("no metrics line in time");
            let line = self.lines.recv_timeout(left).expect("no metrics line in time");
            self.view_update(&line);
        }
    }

    fn view_update(&mut self, line: &Line) {
        if let Some(addr) = line.text.strip_prefix("metrics on http://").and_then(|rest| rest.strip_suffix("/metrics"))
        {
            self.metrics_addrs.insert(line.node, addr.parse().expect("a metrics address"));
            return;
        }
        let words: Vec<&str> = line.text.split_whitespace().collect();
        let term = words.last().and_then(|word| word.parse::<u64>().ok());
        let Some(term) = term else { return };
        let leader = match words.as_slice() {
            ["cluster:", "node", _, "is", "the", "leader", ..] => Some(line.node),
            ["cluster:", "node", _, "follows", "node", leader, ..] => leader.parse().ok(),
            _ => None,
        };
        self.views.insert(line.node, (term, leader));
    }

    fn kill(&mut self, id: u64) {
        drop(self.member_mut(id).child.take().expect("a running member"));
        self.views.remove(&id);
        self.metrics_addrs.remove(&id); // a restart prints its new one
    }

    /// Sends `signal` to a running member (SIGSTOP pauses it, SIGCONT resumes it).
    fn signal(&self, id: u64, signal: i32) {
        let child = self.member(id).child.as_ref().expect("a running member");
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `child` is held;
        // no memory is involved.
        let sent = unsafe { libc::kill(child.0.id() as i32, signal) };
        assert_eq!(sent, 0, "kill({signal}) of member {id}: {}", std::io::Error::last_os_error());
    }

    /// Restarts a killed member on its data directory and addresses.
    fn restart(&mut self, id: u64) {
        self.restart_with(id, &[]);
    }

    /// Restarts a killed member with `extra` flags beside the cluster's.
    fn restart_with(&mut self, id: u64, extra: &[&str]) {
        let mut extra_all = self.extra_args.clone();
        extra_all.extend(extra.iter().map(|arg| arg.to_string()));
        let extra = extra_all;
        let member = self.member(id);
        let (addr, raft_addr) = (member.addr.to_string(), member.raft_addr.to_string());
        let dir = member.dir.clone();
        let (child, _, _) = member_start(id, &dir, &addr, &raft_addr, &extra, &self.lines_sender);
        self.member_mut(id).child = Some(child);
    }

    /// Every member's `(id, data directory)`, for the shared checks.
    fn dirs(&self) -> Vec<(u64, PathBuf)> {
        self.members.iter().map(|member| (member.id, member.dir.clone())).collect()
    }

    /// Waits until every member's journal is durable to `op` (see `cluster_harness`).
    fn durable_wait(&self, op: u64) {
        cluster_harness::durable_wait(&self.dirs(), op, EVENT_TIMEOUT);
    }
}

#[test]
fn three_members_replicate_agree_and_followers_redirect() {
    let mut cluster = Cluster::start(&[]);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    for round in 0..50u128 {
        let results = client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers");
        assert_eq!(results, vec![], "every transfer is created");
    }
    assert_eq!(client.address_current(), Some(cluster.member(leader).addr.to_string()));

    // A write sent to a follower: not_leader, naming the leader; nothing is applied there.
    let follower = cluster.members.iter().find(|member| member.id != leader).expect("a follower");
    let direct = Client::connect(follower.addr, ClientOptions::default()).expect("connect to a follower");
    let batch = transfers(10_000, 10);
    match direct.create_transfers(&batch) {
        Err(ClientError::NotLeader { leader: Some(address) }) => {
            assert_eq!(address, cluster.member(leader).addr.to_string());
        }
        other => panic!("a follower answered a write with {other:?}"),
    }
    match direct.lookup_accounts(&[AccountId(1)]) {
        Err(ClientError::NotLeader { leader: Some(_) }) => {}
        other => panic!("a follower answered a read with {other:?}: reads are the leader's (linearizable)"),
    }
    // The cluster client told only of the follower follows the redirect.
    let redirected = ClusterClient::new(vec![follower.addr.to_string()], ClientOptions::default(), EVENT_TIMEOUT);
    assert_eq!(redirected.create_transfers(&batch).expect("through the redirect"), vec![]);
    assert_eq!(redirected.address_current(), Some(cluster.member(leader).addr.to_string()));
    let found = client.lookup_transfers(&batch.iter().map(|transfer| transfer.id).collect::<Vec<_>>()).expect("lookup");
    assert_eq!(found.len(), batch.len(), "the redirected write was applied once, on the leader");

    members_agree(&cluster.dirs(), &client, EVENT_TIMEOUT);
    money_sums_to_zero(&client);
    cluster.kill(leader);
}

/// The load: threads that send batches through the cluster client and record what was
/// acknowledged. A batch whose outcome is unknown (an error after the client's retries) is
/// resent with the same ids until it is acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<TransferId>>>,
    /// When each batch was acknowledged (for the failover gap, printed, never asserted).
    acknowledged_at: Arc<Mutex<Vec<Instant>>>,
    progress: Receiver<usize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addresses: Vec<String>, thread_count: u128, options: ClientOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let acknowledged_at = Arc::new(Mutex::new(Vec::new()));
        let (progress_sender, progress) = channel();
        let threads = (0..thread_count)
            .map(|thread| {
                let (stop, acknowledged, progress) =
                    (Arc::clone(&stop), Arc::clone(&acknowledged), progress_sender.clone());
                let acknowledged_at = Arc::clone(&acknowledged_at);
                let client = ClusterClient::new(addresses.clone(), options.clone(), EVENT_TIMEOUT);
                std::thread::spawn(move || {
                    let mut next = 1_000_000 * (thread + 1);
                    while !stop.load(Ordering::Acquire) {
                        let batch = transfers(next, 25);
                        loop {
                            match client.create_transfers(&batch) {
                                Ok(results) => {
                                    let exists = walletd_core::CreateTransferResult::Exists as u32;
                                    assert!(results.iter().all(|result| result.code == exists), "{results:?}");
                                    break;
                                }
                                Err(_) => continue, // outcome unknown: resend the same ids
                            }
                        }
                        next += 25;
                        let mut all = acknowledged.lock().expect("lock");
                        all.extend(batch.iter().map(|transfer| transfer.id));
                        acknowledged_at.lock().expect("lock").push(Instant::now());
                        let _ = progress.send(all.len());
                    }
                })
            })
            .collect();
        Load { stop, acknowledged, acknowledged_at, progress, threads }
    }

    /// Waits until at least `count` more transfers are acknowledged than now.
    fn progress_wait(&self, count: usize) {
        let start = self.acknowledged.lock().expect("lock").len();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.checked_duration_since(Instant::now()).expect("the load made no progress in time");
            let now = self.progress.recv_timeout(left).expect("the load made no progress in time");
            if now >= start + count {
                return;
            }
        }
    }

    /// Stops the load; returns every acknowledged transfer id and the acknowledgement times.
    fn stop(self) -> (Vec<TransferId>, Vec<Instant>) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            thread.join().expect("a load thread panicked");
        }
        let all = self.acknowledged.lock().expect("lock").clone();
        let mut at = self.acknowledged_at.lock().expect("lock").clone();
        at.sort();
        (all, at)
    }
}

/// The failover gap of each kill: the longest time without an acknowledgement from the last
/// one before the kill to `resumed` (when the load had made progress through the new leader).
/// A reply already on its way when the leader died may land just after the kill; the gap that
/// follows it still counts.
fn failover_gaps_ms(kills: &[(Instant, Instant)], acknowledged_at: &[Instant]) -> Vec<u128> {
    kills
        .iter()
        .filter_map(|(kill, resumed)| {
            let first = acknowledged_at.partition_point(|at| at <= kill).checked_sub(1)?;
            let last = acknowledged_at.partition_point(|at| at <= resumed);
            let window = acknowledged_at.get(first..last)?;
            window.windows(2).map(|pair| pair[1].duration_since(pair[0]).as_millis()).max()
        })
        .collect()
}

#[test]
fn kill_9_of_the_leader_under_load_loses_no_acknowledged_transfer() {
    let rounds: usize = std::env::var("WALLETD_CLUSTER_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(5);
    // Extra flags for every member, e.g. other Raft timeouts to compare failover gaps.
    let extra = std::env::var("WALLETD_CLUSTER_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut cluster = Cluster::start(&extra);
    let (mut leader, mut term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let load = Load::start(cluster.addresses(), 2, ClientOptions::default());
    let mut kills = Vec::new();
    for round in 0..rounds {
        load.progress_wait(100);
        let killed_at = Instant::now();
        cluster.kill(leader);
        let (leader_new, term_new) = cluster.leader_wait(term, Some(leader));
        let elected_ms = killed_at.elapsed().as_millis();
        // The new leader serves writes (with the old one still down), then the old one returns.
        load.progress_wait(100);
        kills.push((killed_at, Instant::now()));
        eprintln!(
            "round {round}: killed leader {leader} (term {term}); node {leader_new} leads in term {term_new} \
             {elected_ms} ms after the kill; 100 more transfers acknowledged {} ms after the kill",
            killed_at.elapsed().as_millis()
        );
        // The failover measured is a healthy cluster's: the restarted member catches up
        // before the next kill (a member still behind cannot be elected, and its campaigns
        // delay the election of one that can).
        cluster.restart(leader);
        cluster.durable_wait(client.snapshot().expect("a checkpoint through the leader"));
        (leader, term) = (leader_new, term_new);
    }
    load.progress_wait(100);
    let (acknowledged, acknowledged_at) = load.stop();
    let mut gaps = failover_gaps_ms(&kills, &acknowledged_at);
    gaps.sort();
    eprintln!(
        "{} transfers acknowledged over {rounds} leader kills; failover gaps (ms, sorted): {gaps:?}",
        acknowledged.len()
    );
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

#[test]
fn a_member_without_a_majority_refuses_writes_until_one_is_back() {
    let mut cluster = Cluster::start(&["--write-timeout-ms", "2000"]);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let followers: Vec<u64> = (1..=MEMBERS).filter(|id| *id != leader).collect();
    for follower in &followers {
        cluster.kill(*follower);
    }
    // The leader alone: a write is never acknowledged; it is answered unavailable.
    let direct = Client::connect(cluster.member(leader).addr, ClientOptions::default()).expect("connect to the leader");
    let batch = transfers(50_000, 10);
    match direct.create_transfers(&batch) {
        Err(ClientError::Unavailable | ClientError::NotLeader { .. }) => {}
        other => panic!("a leader without a majority answered {other:?}"),
    }
    // One follower back: a majority again, and the same request is served.
    cluster.restart(followers[0]);
    let results = client.create_transfers(&batch).expect("served again with a majority");
    let exists = walletd_core::CreateTransferResult::Exists as u32;
    assert!(results.iter().all(|result| result.code == exists), "{results:?}");
    let found = client.lookup_transfers(&batch.iter().map(|transfer| transfer.id).collect::<Vec<_>>()).expect("lookup");
    assert_eq!(found.len(), batch.len());
}

/// A member killed and restarted on a Raft log that ends in a torn append (bytes of a record
/// that was never acknowledged) cuts it off and catches up; one whose log has a flipped byte in
/// the middle refuses to start and names the corruption.
#[test]
fn a_torn_raft_log_tail_is_cut_and_a_flipped_byte_refused() {
    use std::io::Write;
    let mut cluster = Cluster::start(&[]);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    for round in 0..10u128 {
        assert_eq!(client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers"), vec![]);
    }
    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    let log_path = cluster.member(follower).dir.join("raft").join("log");

    // A torn append: a record header that promises more bytes than follow.
    cluster.kill(follower);
    let size_before = std::fs::metadata(&log_path).expect("the raft log").len();
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).expect("open the raft log");
    log.write_all(&[0x40, 0, 0, 0, 1, 2, 3, 4, 9]).expect("write a torn record");
    drop(log);
    cluster.restart(follower);
    for round in 10..20u128 {
        assert_eq!(client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers"), vec![]);
    }
    members_agree(&cluster.dirs(), &client, EVENT_TIMEOUT);
    assert!(std::fs::metadata(&log_path).expect("the raft log").len() > size_before, "the member appended again");

    // Damage in the middle of the log, with good records after it, is refused, whether it hits
    // a record's bytes (a checksum mismatch) or its size field (a record that would run past
    // the end, as a torn append would, but with good records after it). Each on a copy of the
    // good log.
    cluster.kill(follower);
    let good = std::fs::read(&log_path).expect("read the raft log");
    let mut record_offsets = Vec::new();
    let mut offset = 0usize;
    while offset + 16 <= good.len() {
        record_offsets.push(offset);
        offset += 16 + u32::from_le_bytes(good[offset..offset + 4].try_into().expect("4 bytes")) as usize;
    }
    assert_eq!(offset, good.len(), "the restarted member's log is whole records");
    let middle = record_offsets[record_offsets.len() / 2];
    let mut flipped = good.clone();
    flipped[middle + 16 + 10] ^= 0x40; // in the middle record's body
    let mut sized = good.clone();
    sized[middle..middle + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    for (damaged, named) in [(flipped, "checksum"), (sized, "does not fit before the end of the file")] {
        std::fs::write(&log_path, &damaged).expect("write the damaged log");
        let stderr = start_refused(cluster.member(follower), &[]);
        assert!(stderr.contains("is corrupt at byte") && stderr.contains(named), "the refusal names it: {stderr}");
    }
    std::fs::write(&log_path, &good).expect("restore the log");
}

/// Starts `member` expecting it to refuse (exit non-zero); returns what it printed on stderr.
/// Starts `member` with `extra` flags, expects it to refuse to start; returns its stderr.
fn start_refused(member: &Member, extra: &[String]) -> String {
    let args = member_args(member.id, &member.raft_addr.to_string(), extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["serve", "--addr", &member.addr.to_string(), "--data-dir"])
        .arg(&member.dir)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("walletd serve starts");
    let pid = child.id();
    // A member that starts despite the damage would never exit: the watchdog kills it after
    // EVENT_TIMEOUT, unless told first (by the channel closing) that the child has exited.
    let (exited, exited_wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if exited_wait.recv_timeout(EVENT_TIMEOUT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped (the test waits for the
            // watchdog before it reaps); no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    // End of stderr: the child has exited (or closed it, and is killed by the watchdog).
    drop(exited);
    watchdog.join().expect("the watchdog");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "member {} started, and should have refused", member.id);
    stderr
}

/// A leader paused (SIGSTOP) while the others elect a new one, then resumed (SIGCONT): it
/// never acknowledges a write after losing leadership. Writes sent straight to it while it is
/// paused wait in its socket; when it wakes, each is answered with a failure (`not_leader`,
/// `unavailable`) or, if acknowledged, must be in the new leader's ledger. The load through the
/// cluster client goes on through the new leader meanwhile, and nothing it was told is lost.
#[test]
fn a_paused_leader_never_acknowledges_a_write_after_losing_leadership() {
    let mut cluster = Cluster::start(&[]);
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    // A load whose requests to the paused member time out (outcome unknown), so that it moves
    // on to the others and resends with the same ids.
    let load_options = ClientOptions { request_timeout: Duration::from_secs(3), ..ClientOptions::default() };
    let load = Load::start(cluster.addresses(), 2, load_options);
    load.progress_wait(100);

    // Connected before the pause; their writes are sent during it.
    const DIRECT: u128 = 4;
    let direct: Vec<Client> = (0..DIRECT)
        .map(|_| Client::connect(cluster.member(leader).addr, ClientOptions::default()).expect("connect to the leader"))
        .collect();
    cluster.signal(leader, libc::SIGSTOP);
    let (sent, answers) = channel();
    let senders: Vec<_> = direct
        .into_iter()
        .enumerate()
        .map(|(index, direct)| {
            let (sent, batch) = (sent.clone(), transfers(90_000_000 + index as u128 * 25, 25));
            std::thread::spawn(move || {
                let ids: Vec<TransferId> = batch.iter().map(|transfer| transfer.id).collect();
                let _ = sent.send((ids, direct.create_transfers(&batch)));
            })
        })
        .collect();
    drop(sent);
    let (leader_new, term_new) = cluster.leader_wait(term, Some(leader));
    assert!(term_new > term);
    load.progress_wait(100);
    cluster.signal(leader, libc::SIGCONT);

    let mut acknowledged_by_paused = Vec::new();
    let mut failures = BTreeMap::new();
    for _ in 0..DIRECT {
        let (ids, answer) = answers.recv_timeout(EVENT_TIMEOUT).expect("the resumed member answers every request");
        match answer {
            Ok(results) => {
                assert_eq!(results, vec![], "a fresh batch is created whole");
                acknowledged_by_paused.extend(ids);
            }
            Err(error) => *failures.entry(format!("{error:?}")).or_insert(0) += 1,
        }
    }
    for sender in senders {
        sender.join().expect("a direct sender");
    }
    eprintln!(
        "paused leader {leader} (term {term}), node {leader_new} elected in term {term_new}; the paused member's \
         answers to {DIRECT} writes sent during the pause: {} acknowledged, failures {failures:?}",
        acknowledged_by_paused.len() / 25
    );
    load.progress_wait(100);
    let (mut acknowledged, _) = load.stop();
    acknowledged.extend(acknowledged_by_paused);
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// Replacing a dead member whose disk is lost: `walletd cluster remove` takes it out of the
/// membership (sent to a follower, which names the leader to the tool), a new member on an
/// empty data directory is added with `walletd cluster add` (it catches up as a learner, then
/// votes), and the cluster then survives the loss of its leader with the new member's vote.
/// Bad requests are refused with the reason.
#[test]
fn a_dead_member_is_replaced_by_a_new_one() {
    let mut cluster = Cluster::start(&[]);
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    for round in 0..20u128 {
        assert_eq!(client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers"), vec![]);
    }
    let followers: Vec<u64> = (1..=MEMBERS).filter(|id| *id != leader).collect();
    let (dead, survivor) = (followers[0], followers[1]);
    cluster.kill(dead);
    std::fs::remove_dir_all(&cluster.member(dead).dir).expect("the dead member's disk is lost");
    cluster.member_forget(dead);

    let survivor_raft = cluster.member(survivor).raft_addr.to_string();
    let (ok, _, stderr) = cluster.tool(&["remove", "--raft-addr", &survivor_raft, "--node-id", "99"]);
    assert!(!ok && stderr.contains("node 99 is not a voter"), "{stderr}");
    let (ok, stdout, stderr) = cluster.tool(&["remove", "--raft-addr", &survivor_raft, "--node-id", &dead.to_string()]);
    assert!(ok, "cluster remove failed: {stderr}");
    assert!(stdout.starts_with(&format!("cluster: node {dead} removed; voters ")), "{stdout}");
    assert!(!stdout.contains(&format!(" {dead}=")), "{stdout}");
    // Two voters now: both are needed, and writes go on.
    for round in 20..30u128 {
        assert_eq!(client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers"), vec![]);
    }

    // A member created with another ledger config would diverge: refused.
    const OTHER_CONFIG: u64 = 5;
    cluster.member_new(OTHER_CONFIG, &["--accounts-max", "8192"]);
    let other =
        format!("{OTHER_CONFIG}={}/{}", cluster.member(OTHER_CONFIG).raft_addr, cluster.member(OTHER_CONFIG).addr);
    let (ok, _, stderr) = cluster.tool(&["add", "--raft-addr", &survivor_raft, "--member", &other]);
    assert!(!ok && stderr.contains("ledger config"), "{stderr}");
    cluster.kill(OTHER_CONFIG);
    cluster.member_forget(OTHER_CONFIG);

    const NEW: u64 = 4;
    cluster.member_new(NEW, &[]);
    let new_member = format!("{NEW}={}/{}", cluster.member(NEW).raft_addr, cluster.member(NEW).addr);
    let leader_raft = cluster.member(leader).raft_addr.to_string();
    let leader_member = format!("{leader}={}/{}", cluster.member(leader).raft_addr, cluster.member(leader).addr);
    let (ok, _, stderr) = cluster.tool(&["add", "--raft-addr", &leader_raft, "--member", &leader_member]);
    assert!(!ok && stderr.contains("is already a voter"), "{stderr}");
    let (ok, stdout, stderr) = cluster.tool(&["add", "--raft-addr", &survivor_raft, "--member", &new_member]);
    assert!(ok, "cluster add failed: {stderr}");
    assert!(stdout.contains(&format!(" {new_member}")), "{stdout}");

    // The old leader dies: the survivor can only be elected with the new member's vote.
    let load_options = ClientOptions { request_timeout: Duration::from_secs(3), ..ClientOptions::default() };
    let load = Load::start(cluster.addresses(), 2, load_options);
    load.progress_wait(100);
    cluster.kill(leader);
    let (leader_new, _) = cluster.leader_wait(term, Some(leader));
    assert!(leader_new == survivor || leader_new == NEW, "node {leader_new} leads");
    load.progress_wait(100);
    cluster.restart(leader);
    let (acknowledged, _) = load.stop();
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// The HTTP gateway pointed at a follower: its writes and reads are refused there with
/// `not_leader`, and it follows to the leader the follower names (money moves, balances read);
/// when that leader dies, requests fail retry-safe during the election, then the gateway finds
/// the new leader through the member it was given.
#[test]
fn the_http_gateway_follows_not_leader_to_the_leader() {
    use http_harness::{http, token, wait_until, Gateway};
    use serde_json::json;
    let mut cluster = Cluster::start(&[]);
    let (leader, term) = cluster.leader_wait(0, None);
    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    let gateway = Gateway::start(cluster.member(follower).addr, &["--rate-limit-per-s", "0"]);
    let wallet_create = |user: &str| {
        let response =
            http(gateway.addr, "POST", "/v1/wallets", Some(&token(user, &[])), Some(&json!({ "currency": "USD" })));
        assert_eq!(response.status, 201, "{response:?}");
        response.json["id"].as_str().expect("a wallet id").to_string()
    };
    let (alice, bob) = (wallet_create("alice"), wallet_create("bob"));
    let deposit = json!({ "wallet_id": alice, "amount": "10.00", "currency": "USD", "idempotency_key": "d1" });
    let response = http(gateway.addr, "POST", "/v1/deposits", Some(&token("ops", &["operator"])), Some(&deposit));
    assert_eq!(response.status, 201, "{response:?}");
    let transfer = |key: &str| {
        let body = json!({ "sender_id": alice, "receiver_id": bob, "amount": "2.50", "idempotency_key": key });
        http(gateway.addr, "POST", "/v1/transfers", Some(&token("alice", &[])), Some(&body))
    };
    let response = transfer("t1");
    assert_eq!(response.status, 201, "{response:?}");
    let balance = |gateway: SocketAddr| {
        let response = http(gateway, "GET", &format!("/v1/wallets/{bob}"), Some(&token("bob", &[])), None);
        assert_eq!(response.status, 200, "{response:?}");
        response.json["balance"].as_str().expect("a balance").to_string()
    };
    assert_eq!(balance(gateway.addr), "2.50");

    cluster.kill(leader);
    cluster.leader_wait(term, Some(leader));
    // During the election a request may fail (503, retry-safe); once a leader serves, so does
    // the gateway.
    wait_until("the gateway to move money through the new leader", EVENT_TIMEOUT, || {
        let response = transfer("t2");
        assert!(matches!(response.status, 201 | 503), "{response:?}");
        response.status == 201
    });
    assert_eq!(balance(gateway.addr), "5.00");

    // A gateway given the leader first and a follower second (`--engine A,B`): when the
    // leader dies, the next address given names the new one.
    let (leader_now, term_now) = cluster.leader_wait(term, Some(leader));
    cluster.restart(leader);
    let other = (1..=MEMBERS).find(|id| *id != leader_now).expect("another member");
    let listed = Gateway::start(
        cluster.member(leader_now).addr,
        &["--rate-limit-per-s", "0", "--engine", &cluster.member(other).addr.to_string()],
    );
    let transfer_listed = |key: &str| {
        let body = json!({ "sender_id": alice, "receiver_id": bob, "amount": "2.50", "idempotency_key": key });
        http(listed.addr, "POST", "/v1/transfers", Some(&token("alice", &[])), Some(&body))
    };
    assert_eq!(transfer_listed("t3").status, 201);
    cluster.kill(leader_now);
    cluster.leader_wait(term_now, Some(leader_now));
    wait_until("the listed gateway to move money through the next leader", EVENT_TIMEOUT, || {
        let response = transfer_listed("t4");
        assert!(matches!(response.status, 201 | 503), "{response:?}");
        response.status == 201
    });
    // (The first gateway was following the leader just killed: its next request fails
    // retry-safe, so the balance is read through the one that moved on.)
    assert_eq!(balance(listed.addr), "10.00");
}

/// `GET /metrics` on `addr`: each sample line's name (with labels) and value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: walletd\r\n\r\n").expect("send the scrape");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the scrape");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(name, value)| (name.to_string(), value.parse().expect("an integer sample")))
        .collect()
}

/// Every member serves its Raft view on `/metrics`: the leader its term, its followers'
/// replication lag and the writes it acknowledged; a follower the leader it knows and the
/// writes it refused as `not_leader`.
#[test]
fn members_serve_their_raft_metrics() {
    let mut cluster = Cluster::start(&["--metrics-addr", "127.0.0.1:0"]);
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    for round in 0..10u128 {
        assert_eq!(client.create_transfers(&transfers(1 + round * 40, 40)).expect("create transfers"), vec![]);
    }
    // The cluster client may have been redirected by a follower already: count from here.
    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    let not_leader = "walletd_cluster_writes_total{result=\"not_leader\"}";
    let refused_before = scrape(cluster.metrics_addr_wait(follower))[not_leader];
    let direct = Client::connect(cluster.member(follower).addr, ClientOptions::default()).expect("connect");
    assert!(matches!(direct.create_transfers(&transfers(80_000, 5)), Err(ClientError::NotLeader { .. })));

    let on_leader = scrape(cluster.metrics_addr_wait(leader));
    assert_eq!(on_leader["walletd_cluster_node_id"], leader);
    assert_eq!(on_leader["walletd_cluster_is_leader"], 1);
    assert_eq!(on_leader["walletd_cluster_leader_id"], leader);
    assert!(on_leader["walletd_cluster_term"] >= term);
    assert_eq!(on_leader["walletd_cluster_voters"], MEMBERS);
    assert!(on_leader["walletd_cluster_writes_total{result=\"ok\"}"] >= 11, "{on_leader:?}");
    assert!(on_leader["walletd_cluster_last_applied_index"] >= 11);
    assert!(on_leader["walletd_journal_op_durable"] >= 12);
    for member in (1..=MEMBERS).filter(|id| *id != leader) {
        assert!(on_leader.contains_key(&format!("walletd_cluster_replication_lag_entries{{member=\"{member}\"}}")));
    }
    let on_follower = scrape(cluster.metrics_addr_wait(follower));
    assert_eq!(on_follower["walletd_cluster_is_leader"], 0);
    assert_eq!(on_follower["walletd_cluster_leader_id"], leader);
    assert_eq!(on_follower[not_leader], refused_before + 1);
    assert_eq!(on_follower["walletd_cluster_writes_total{result=\"ok\"}"], 0);
    assert!(!on_follower.keys().any(|name| name.starts_with("walletd_cluster_replication_lag_entries")));
}

/// Flags that make snapshots (and Raft log purges) frequent: every 8 entries, keeping 4.
const SNAPSHOT_OFTEN: [&str; 4] = ["--raft-snapshot-entries", "8", "--raft-log-keep", "4"];

/// The journal records fetched, from a member's "installed the snapshot" line.
fn records_fetched(line: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "journal").expect("… (N journal records fetched)");
    words[at - 1].trim_start_matches('(').parse().expect("a record count")
}

/// Sends `rounds` requests of 40 transfers from `first_round` on; returns their ids.
fn transfers_through(client: &ClusterClient, first_round: u128, rounds: u128) -> Vec<TransferId> {
    let mut ids = Vec::new();
    for round in first_round..first_round + rounds {
        let batch = transfers(1 + round * 40, 40);
        assert_eq!(client.create_transfers(&batch).expect("create transfers"), vec![]);
        ids.extend(batch.iter().map(|transfer| transfer.id));
    }
    ids
}

/// The leader purges its Raft log behind its snapshots and frees the bytes; a member that was
/// down meanwhile is sent a snapshot and fetches the journal it lacks; the leader restarts from
/// its purged log; a new member on an empty directory is caught up the same way. Every member
/// ends with the same journal and state hash.
#[test]
fn members_behind_the_purged_raft_log_catch_up_by_a_snapshot_install() {
    let mut flags = SNAPSHOT_OFTEN.to_vec();
    flags.extend(["--metrics-addr", "127.0.0.1:0"]);
    let mut cluster = Cluster::start(&flags);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let mut acknowledged = transfers_through(&client, 0, 10);
    let lagging = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    cluster.kill(lagging);
    acknowledged.extend(transfers_through(&client, 10, 60));

    // The leader's log before its snapshot is purged, and those bytes are no longer on disk.
    let raft_dir = cluster.member(leader).dir.join("raft");
    assert!(raft_dir.join("purged").exists(), "the leader purged its Raft log");
    assert!(raft_dir.join("snapshot").exists(), "the leader keeps its newest snapshot");
    let log = std::fs::metadata(raft_dir.join("log")).expect("the Raft log");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&log) * 512;
    assert!(allocated * 2 < log.len(), "the purged bytes are freed: {allocated} of {} bytes allocated", log.len());

    cluster.restart(lagging);
    let line = cluster.line_wait(lagging, &format!("cluster: node {lagging} installed the snapshot at op "));
    let fetched = records_fetched(&line);
    assert!(fetched > 0, "{line}");
    let on_lagging = scrape(cluster.metrics_addr_wait(lagging));
    assert_eq!(on_lagging["walletd_cluster_snapshots_installed_total"], 1, "{on_lagging:?}");
    assert_eq!(on_lagging["walletd_cluster_snapshot_records_fetched_total"], fetched);
    assert!(on_lagging["walletd_cluster_snapshot_index"] > 0);
    let on_leader = scrape(cluster.metrics_addr_wait(leader));
    assert!(on_leader["walletd_cluster_purged_index"] > 0, "{on_leader:?}");
    assert_eq!(on_leader["walletd_cluster_snapshots_installed_total"], 0);
    acknowledged.extend(transfers_through(&client, 70, 10));
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);

    // The leader restarts: its Raft log is read from the purge mark on. (Back at once, it may
    // lead again in its own term: openraft restores a committed vote of its own.)
    cluster.kill(leader);
    cluster.restart(leader);
    cluster.leader_wait(0, None);
    acknowledged.extend(transfers_through(&client, 80, 10));

    // A new member on an empty directory: everything comes by the snapshot.
    const NEW: u64 = 4;
    cluster.member_new(NEW, &[]);
    let new_member = format!("{NEW}={}/{}", cluster.member(NEW).raft_addr, cluster.member(NEW).addr);
    let any_raft = cluster.member(lagging).raft_addr.to_string();
    let (ok, _, stderr) = cluster.tool(&["add", "--raft-addr", &any_raft, "--member", &new_member]);
    assert!(ok, "cluster add failed: {stderr}");
    let line = cluster.line_wait(NEW, &format!("cluster: node {NEW} installed the snapshot at op "));
    let op: u64 = line.split_whitespace().nth(8).and_then(|word| word.parse().ok()).expect("… at op N (…");
    assert_eq!(records_fetched(&line), op, "the new member fetched the whole journal: {line}");
    acknowledged.extend(transfers_through(&client, 90, 10));
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// A member killed during a snapshot install restarts with its install mark (`raft/installing`)
/// and finishes the fetch before it starts Raft. The mark is made here from the leader's own
/// snapshot file (the same format), on a member that is behind it: deterministic, where a
/// kill -9 would have to land inside a fetch of a few milliseconds.
#[test]
fn an_interrupted_snapshot_install_is_finished_at_restart() {
    let mut cluster = Cluster::start(&SNAPSHOT_OFTEN);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let mut acknowledged = transfers_through(&client, 0, 5);
    let behind = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    let op_behind = client.snapshot().expect("a checkpoint");
    cluster.durable_wait(op_behind);
    cluster.kill(behind);
    acknowledged.extend(transfers_through(&client, 5, 40));

    let leader_snapshot = cluster.member(leader).dir.join("raft").join("snapshot");
    let installing = cluster.member(behind).dir.join("raft").join("installing");
    std::fs::copy(&leader_snapshot, &installing).expect("the install mark");
    cluster.restart(behind);
    let line = cluster.line_wait(behind, &format!("cluster: node {behind} finished an interrupted snapshot install"));
    assert!(records_fetched(&line) > 0, "{line}");
    assert!(!installing.exists(), "the install mark is removed once the install is done");
    acknowledged.extend(transfers_through(&client, 45, 10));
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// Flags that make ledger snapshots frequent: a checkpoint every 4 writes, a snapshot at the
/// first checkpoint 16 ops after the newest, and journal segments of 64 KiB (about a dozen
/// requests of 40 transfers), so that segments older than a snapshot are archived.
const LEDGER_SNAPSHOTS_OFTEN: [&str; 6] = ["--checkpoint-ops", "4", "--snapshot-ops", "16", "--segment-size", "65536"];

/// The ledger snapshots in a member's data directory, oldest first: (op, path).
fn ledger_snapshots(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found = walletd_snapshot::snapshots_list(&dir.join("snapshots")).expect("list the snapshots");
    found.sort();
    found
}

/// Waits (on the directory's changes, inotify) until member `id` has a ledger snapshot at or
/// after `op`; returns the newest one's op.
fn ledger_snapshot_wait(id: u64, dir: &Path, op: u64) -> u64 {
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).expect("the snapshots directory");
    let changes = cluster_harness::DirChanges::watch(&snapshots);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let newest = ledger_snapshots(dir).last().map_or(0, |(op, _)| *op);
        if newest >= op {
            return newest;
        }
        let left = deadline.checked_duration_since(Instant::now());
        assert!(
            left.is_some_and(|left| changes.wait(left)),
            "member {id} wrote no ledger snapshot at op {op} or later"
        );
    }
}

/// From a member's start-up line: (the snapshot's op or None, records replayed, op reached).
fn started_from(line: &str) -> (Option<u64>, u64, u64) {
    let number = |word: &str| word.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().expect("a number");
    let words: Vec<&str> = line.split_whitespace().collect();
    let op_reached = number(words.last().expect("… to op X)"));
    match words.iter().position(|word| *word == "snapshot") {
        Some(at) => (Some(number(words[at + 3])), number(words[at + 4]), op_reached),
        None => {
            let at = words.iter().position(|word| *word == "journal").expect("… from the journal (R records …");
            (None, number(words[at + 1]), op_reached)
        }
    }
}

/// Flips one byte in the middle of a file.
fn byte_flip(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read the file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).expect("write the file");
}

/// Every member takes its own ledger snapshots (the single node's files), fed from what it
/// applies, and archives the journal segments before them. A follower restarted after many ops
/// loads its newest snapshot and replays only the journal after it (its start-up line and
/// metrics say at which op); with that snapshot damaged it falls back to the older one, and
/// with every snapshot damaged to the whole journal (archive included). Afterwards every
/// journal is equal, every replay gives the same state hash, and money sums to zero.
#[test]
fn members_restart_from_their_own_ledger_snapshots() {
    let mut flags = LEDGER_SNAPSHOTS_OFTEN.to_vec();
    flags.extend(["--metrics-addr", "127.0.0.1:0"]);
    let mut cluster = Cluster::start(&flags);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let mut acknowledged = transfers_through(&client, 0, 100);
    let op = members_agree(&cluster.dirs(), &client, EVENT_TIMEOUT);
    for (id, dir) in cluster.dirs() {
        ledger_snapshot_wait(id, &dir, op.saturating_sub(24));
        assert!(ledger_snapshots(&dir).len() >= 2, "member {id} keeps its two newest snapshots");
        let archive = dir.join("journal").join("archive");
        let archived = std::fs::read_dir(&archive).map_or(0, |entries| entries.count());
        assert!(archived > 0, "member {id} archived the journal segments before its newest snapshot");
    }

    // A follower restarts from its newest snapshot and replays only the journal after it.
    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    let dir = cluster.member(follower).dir.clone();
    cluster.kill(follower);
    let newest = ledger_snapshots(&dir).last().cloned().expect("a snapshot");
    cluster.restart(follower);
    let line = cluster.line_wait(follower, &format!("cluster: node {follower} started from "));
    let (from, replayed, reached) = started_from(&line);
    assert_eq!(from, Some(newest.0), "{line}");
    assert_eq!(reached - newest.0, replayed, "only the journal after the snapshot is replayed: {line}");
    assert!(replayed < reached / 2, "{line}");
    let on_follower = scrape(cluster.metrics_addr_wait(follower));
    assert_eq!(on_follower["walletd_recovery_snapshot_op"], newest.0, "{on_follower:?}");
    assert_eq!(on_follower["walletd_recovery_records_replayed"], replayed);
    assert!(on_follower["walletd_op_snapshot"] >= newest.0);
    acknowledged.extend(transfers_through(&client, 100, 10));
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);

    // Its newest snapshot damaged: quarantined, and the older one loaded.
    cluster.kill(follower);
    let snapshots = ledger_snapshots(&dir);
    let [.., (older, _), (newest, newest_path)] = snapshots.as_slice() else { panic!("two snapshots: {snapshots:?}") };
    byte_flip(newest_path);
    cluster.restart(follower);
    let line = cluster.line_wait(follower, &format!("cluster: node {follower} started from "));
    assert_eq!(started_from(&line).0, Some(*older), "{line}");
    let quarantined =
        cluster.line_wait(follower, &format!("cluster: node {follower} recovery: skipped and quarantined"));
    assert!(quarantined.contains(&format!("{newest:020}")), "{quarantined}");
    assert!(dir.join("snapshots").join("quarantine").exists());

    // Every snapshot damaged: the whole journal is replayed, the archived segments first.
    cluster.kill(follower);
    for (_, path) in ledger_snapshots(&dir) {
        byte_flip(&path);
    }
    cluster.restart(follower);
    let line = cluster.line_wait(follower, &format!("cluster: node {follower} started from "));
    let (from, replayed, reached) = started_from(&line);
    assert_eq!((from, replayed), (None, reached), "{line}");
    acknowledged.extend(transfers_through(&client, 110, 10));
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// `walletd keygen --out DIR/NAME`: (private key file, public key in hex).
fn key_make(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let output =
        Command::new(env!("CARGO_BIN_EXE_walletd")).arg("keygen").arg("--out").arg(&path).output().expect("keygen");
    assert!(output.status.success(), "keygen: {}", String::from_utf8_lossy(&output.stderr));
    let public = String::from_utf8(output.stdout).expect("utf-8").trim().to_string();
    (path.to_str().expect("a UTF-8 path").to_string(), public)
}

/// `walletd replay --json --data-dir DIR --verify-key KEY`: Ok(signed checkpoints verified), or
/// Err(stderr).
fn replay_verified(dir: &Path, verify_key: &str) -> Result<u64, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["replay", "--json", "--verify-key", verify_key, "--data-dir"])
        .arg(dir)
        .output()
        .expect("walletd replay runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("replay --json prints one object");
    Ok(report["trust"]["checkpoints_signed_verified"].as_u64().expect("trust.checkpoints_signed_verified"))
}

/// Every member signs its checkpoints with the one key they all hold: the journals stay the
/// same bytes, every one verifies under the public key (and under no other), a member
/// restarted with `--verify-key` verifies its journal at start-up, and no more than
/// `--checkpoint-ops` commands follow the last signed checkpoint. A member that signs with
/// another key is refused by `cluster add`; one whose verify key is not its signing key's
/// refuses to start.
#[test]
fn members_sign_their_checkpoints_with_one_key() {
    const CHECKPOINT_OPS: u64 = 4;
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = key_make(keys.path(), "checkpoint.key");
    let (key_other, public_other) = key_make(keys.path(), "other.key");
    let ops = CHECKPOINT_OPS.to_string();
    let mut cluster = Cluster::start(&["--signing-key", &key, "--checkpoint-ops", &ops]);
    let (leader, _) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    transfers_through(&client, 0, 30);
    let op = members_agree(&cluster.dirs(), &client, EVENT_TIMEOUT);
    for (id, dir) in cluster.dirs() {
        let verified = replay_verified(&dir, &public).unwrap_or_else(|error| panic!("member {id}: {error}"));
        // 31 commands: a checkpoint after every 4, the leaders' blank entries, init's
        // membership and the last checkpoint taken above.
        assert!(verified > 31 / CHECKPOINT_OPS, "member {id}: {verified} signed checkpoints to op {op}");
        let refused = replay_verified(&dir, &public_other).expect_err("another key verifies nothing");
        assert!(refused.contains("signature"), "member {id}: {refused}");
    }

    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower);
    let wrong = vec!["--signing-key".to_string(), key.clone(), "--verify-key".to_string(), public_other.clone()];
    let refusal = start_refused(cluster.member(follower), &wrong);
    assert!(refusal.contains(&public_other), "{refusal}");
    cluster.restart_with(follower, &["--verify-key", &public]);
    let line = cluster.line_wait(follower, &format!("cluster: node {follower} verified "));
    assert!(line.contains(&public), "{line}");
    transfers_through(&client, 30, 10);
    let op_after = members_agree(&cluster.dirs(), &client, EVENT_TIMEOUT);
    assert!(op_after > op);
    for (id, dir) in cluster.dirs() {
        replay_verified(&dir, &public).unwrap_or_else(|error| panic!("member {id}: {error}"));
    }

    // A member signing with another key would write other bytes: refused.
    const OTHER_KEY: u64 = 4;
    let tmp_other = tempfile::tempdir().expect("tempdir");
    let other_args = ["--signing-key".to_string(), key_other, "--checkpoint-ops".to_string(), ops.clone()];
    let (child, addr, raft_addr) =
        member_start(OTHER_KEY, tmp_other.path(), "127.0.0.1:0", "127.0.0.1:0", &other_args, &cluster.lines_sender);
    let other = format!("{OTHER_KEY}={raft_addr}/{addr}");
    let leader_raft = cluster.member(leader).raft_addr.to_string();
    let (ok, _, stderr) = cluster.tool(&["add", "--raft-addr", &leader_raft, "--member", &other]);
    assert!(!ok && stderr.contains("signs checkpoints"), "{stderr}");
    drop(child);
}
