//! Network partitions of a walletd cluster, made with Linux network namespaces: each member is
//! a real `walletd serve --cluster` process in a namespace of its own; a member is cut off by
//! taking its cable out (bringing its veth down) and healed by putting it back, and a group is
//! split from the rest by moving its cables to a bridge of its own.
//!
//! The network has two sides, so that a member cut off from the others can still be reached by
//! clients, as a leader isolated behind a broken switch would be:
//!
//! ```text
//!   root namespace (this test)          hub namespace                      member namespaces
//!   wdp<pid>x<k> 10.198.N.1 ──veth── uplink ─┐
//!                                            ├─ bridge `client` ─ c<id> ──veth── client0 10.198.N.<10+id>
//!                                            │
//!                                   bridge `raft` ─── r<id> ──veth── raft0   10.199.N.<10+id>
//!                                   bridge `raft-minority` (empty until a split moves ports there)
//! ```
//!
//! Clients (the load, direct writes, lookups) use the client side; the members' Raft traffic
//! uses the raft side only, so cutting `r<id>` isolates member `id` from the other members while
//! its clients still reach it. N is claimed per run (an `unreachable` route of our own metric in
//! the root namespace, refused if another run holds it), and every name carries the test
//! process's pid and a counter, so parallel runs and parallel tests do not collide. The
//! [`Network`] guard deletes what it made when dropped, also when a test panics, after the
//! [`Cluster`] has killed its members; namespaces left by a run that was killed are swept at
//! the next start.
//!
//! - The leader cut off under load: the other two elect a new leader and serve; writes sent to
//!   the isolated old leader are never acknowledged (and never applied); healed, it steps down
//!   and catches up.
//! - A follower cut off under load: the other two serve on; healed, it catches up.
//! - Every member cut off from every other (no side has a majority): nobody acknowledges and
//!   nobody is elected; healed, the cluster elects a leader and serves again.
//! - Five members split two against three, the leader among the two: it commits nothing, while
//!   the three elect a leader and serve; joined again, all five journals are equal.
//!
//! Each ends with the same proof: every acknowledged transfer is on the leader, a checkpoint
//! taken after the last acknowledgement is durable on every member, their journals are equal
//! byte for byte up to the common op (so every acknowledged transfer is in every journal),
//! `walletd replay` gives one state hash, and money sums to zero. (Two members may each lead
//! the same term, one after the other: openraft 0.9 orders leaders by term and node id, and a
//! vote for a higher node id in the same term is a newer leader, not a split brain. What the
//! tests check instead is that a member cut off from the majority never acknowledges a write.)
//!
//! The tests need root and `ip` (iproute2): without them they print why and pass, unless
//! `WALLETD_REQUIRE_NETNS=1` (set by `.ci/run`), which makes that a failure. They wait on events
//! (lines the members print, a durable mark in a data directory, replies), never a fixed time.
//!
//! The checks at the end (journal equality, replay, Σ = 0) and the durable-mark wait are
//! tests/cluster_harness, shared with tests/cluster.rs; the members, their views and the load
//! are this file's own, with members started through `ip netns exec`.

mod cluster_harness;
mod common;

use cluster_harness::{acknowledged_kept_and_members_agree, transfers, ACCOUNTS};
use common::{accounts, ServerChild, LINE_TIMEOUT};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walletd_core::{Transfer, TransferId};
use walletd_gateway::client::{Client, ClientError, ClientOptions};
use walletd_gateway::ClusterClient;

/// Members of the three-member tests; the minority test has five.
const MEMBERS: u64 = 3;
/// Elections, healing (TCP retransmissions back off while a cable is out) and catch-up on a
/// busy machine: generous, and only ever waited on.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// A member without a majority answers a write `unavailable` after this long.
const WRITE_TIMEOUT_MS: &str = "2000";
/// Each member has addresses of its own, so the ports can be fixed.
const CLIENT_PORT: u16 = 7400;
const RAFT_PORT: u16 = 7401;
/// The metric of the `unreachable` route that claims a run's client subnet in the root
/// namespace; the veth's own route (metric 0) wins while it exists.
const CLAIM_METRIC: &str = "4242";
/// The first two bytes of the client side's /24 (10.198.N.0/24) and of the raft side's.
const CLIENT_NET: &str = "10.198";
const RAFT_NET: &str = "10.199";
/// Names start with this, then the pid, `x`, and a counter of the process's networks.
const NAME_PREFIX: &str = "wdp";

static NETWORK_COUNT: AtomicU32 = AtomicU32::new(0);

/// `ip ARGS…`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip").args(args).output().map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Why this machine cannot make namespaces for the test, if it cannot.
fn namespaces_unavailable() -> Option<String> {
    // SAFETY: geteuid(2) reads a number and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".to_string());
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => None,
        _ => Some("`ip` (iproute2) is missing".to_string()),
    }
}

/// The namespaces, bridges and veth pairs of one test, deleted on drop.
struct Network {
    prefix: String,
    /// N in 10.198.N.0/24 and 10.199.N.0/24, once claimed.
    subnet: Option<u8>,
    hub: String,
    /// Every namespace made so far (the hub first), for the cleanup.
    namespaces: Vec<String>,
    root_link: String,
}

impl Network {
    /// The network of `member_count` members; on failure, what was made is already deleted.
    fn create(member_count: u64) -> Result<Network, String> {
        namespaces_stale_delete();
        let prefix = format!("{NAME_PREFIX}{}x{}", std::process::id(), NETWORK_COUNT.fetch_add(1, Ordering::Relaxed));
        assert!(prefix.len() <= 15, "{prefix} is too long for a link name");
        let mut network =
            Network { hub: String::new(), root_link: prefix.clone(), prefix, subnet: None, namespaces: Vec::new() };
        let subnet = subnet_claim()?;
        network.subnet = Some(subnet);
        // The hub's name carries the subnet, so that a later run can drop the claim of a run
        // that was killed.
        network.hub = format!("{}-hub-n{subnet}", network.prefix);
        network.hub_create()?;
        for id in 1..=member_count {
            network.member_create(id)?;
        }
        Ok(network)
    }

    /// The hub namespace with its two bridges, and the veth from the root namespace to the
    /// client bridge.
    fn hub_create(&mut self) -> Result<(), String> {
        let hub = self.hub.clone();
        ip(&["netns", "add", &hub])?;
        self.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for bridge in ["raft", "raft-minority", "client"] {
            ip(&["-n", &hub, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", bridge, "up"])?;
        }
        ip(&["link", "add", &self.root_link, "type", "veth", "peer", "name", "uplink", "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", "uplink", "master", "client", "up"])?;
        ip(&["addr", "add", &format!("{}.1/24", self.client_net()), "dev", &self.root_link])?;
        ip(&["link", "set", &self.root_link, "up"])?;
        Ok(())
    }

    /// Member `id`'s namespace, with one veth to each bridge.
    fn member_create(&mut self, id: u64) -> Result<(), String> {
        let (hub, namespace) = (self.hub.clone(), self.namespace(id));
        ip(&["netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        let sides = [("r", "raft0", "raft", self.raft_net()), ("c", "client0", "client", self.client_net())];
        for (port_prefix, inside, bridge, net) in sides {
            let port = format!("{port_prefix}{id}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", inside, "netns", &namespace])?;
            ip(&["-n", &hub, "link", "set", &port, "master", bridge, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{net}.{}/24", 10 + id), "dev", inside])?;
            ip(&["-n", &namespace, "link", "set", inside, "up"])?;
        }
        Ok(())
    }

    fn client_net(&self) -> String {
        format!("{CLIENT_NET}.{}", self.subnet.expect("a claimed subnet"))
    }

    fn raft_net(&self) -> String {
        format!("{RAFT_NET}.{}", self.subnet.expect("a claimed subnet"))
    }

    fn namespace(&self, id: u64) -> String {
        format!("{}-m{id}", self.prefix)
    }

    fn client_addr(&self, id: u64) -> SocketAddr {
        format!("{}.{}:{CLIENT_PORT}", self.client_net(), 10 + id).parse().expect("an address")
    }

    fn raft_addr(&self, id: u64) -> SocketAddr {
        format!("{}.{}:{RAFT_PORT}", self.raft_net(), 10 + id).parse().expect("an address")
    }

    /// Takes member `id`'s cable out of the raft bridge: its packets to and from the other
    /// members are lost from now on (its side of the link only loses its carrier, as with a
    /// pulled cable, so it learns of nothing but silence).
    fn cut(&self, id: u64) {
        ip(&["-n", &self.hub, "link", "set", &format!("r{id}"), "down"]).expect("cut a member off");
    }

    fn heal(&self, id: u64) {
        ip(&["-n", &self.hub, "link", "set", &format!("r{id}"), "up"]).expect("heal a member");
    }

    /// Moves the cables of `ids` to a bridge of their own: they still reach each other, and
    /// no longer the rest (two switches whose link broke).
    fn split(&self, ids: &[u64]) {
        for id in ids {
            ip(&["-n", &self.hub, "link", "set", &format!("r{id}"), "master", "raft-minority"]).expect("split");
        }
    }

    /// Moves the cables of `ids` back to the raft bridge.
    fn join(&self, ids: &[u64]) {
        for id in ids {
            ip(&["-n", &self.hub, "link", "set", &format!("r{id}"), "master", "raft"]).expect("join");
        }
    }
}

impl Drop for Network {
    /// Deletes the root namespace's veth (its peer goes with it), every namespace (their links
    /// go with them), then the subnet's claim. The members were killed before this runs.
    fn drop(&mut self) {
        let mut failures = Vec::new();
        if self.namespaces.contains(&self.hub) {
            failures.extend(ip(&["link", "del", &self.root_link]).err());
        }
        for namespace in self.namespaces.iter().rev() {
            failures.extend(ip(&["netns", "del", namespace]).err());
        }
        if let Some(subnet) = self.subnet {
            let route = format!("{CLIENT_NET}.{subnet}.0/24");
            failures.extend(ip(&["route", "del", "unreachable", &route, "metric", CLAIM_METRIC]).err());
        }
        for failure in failures {
            eprintln!("partition network cleanup of {}: {failure}", self.prefix);
        }
    }
}

/// Claims a client subnet no route of the root namespace covers yet: the claim is an
/// `unreachable` route, which `ip` refuses to add twice, so two runs never get the same one;
/// and while it exists, traffic to the subnet never leaves by the default route, even in the
/// moment between the veth's deletion and the claim's.
fn subnet_claim() -> Result<u8, String> {
    let start = std::process::id() as usize + NETWORK_COUNT.load(Ordering::Relaxed) as usize * 37;
    for attempt in 0..250usize {
        let subnet = 1 + ((start + attempt) % 250) as u8;
        let route = format!("{CLIENT_NET}.{subnet}.0/24");
        let covering = ip(&["-4", "-o", "route", "show", "match", &route])?;
        let inside = ip(&["-4", "-o", "route", "show", "root", &route])?;
        if covering.lines().chain(inside.lines()).any(|line| !line.starts_with("default")) {
            continue;
        }
        if ip(&["route", "add", "unreachable", &route, "metric", CLAIM_METRIC]).is_ok() {
            return Ok(subnet);
        }
    }
    Err(format!("no free {CLIENT_NET}.N.0/24 subnet in 250 tries"))
}

/// Deletes the namespaces of earlier runs whose process is gone (killed before its guard ran),
/// and the subnet claim their hub names. Their links go with the namespaces; members such a run
/// left running keep only a namespace no one can name.
fn namespaces_stale_delete() {
    let Ok(listed) = ip(&["netns", "list"]) else { return };
    for name in listed.lines().filter_map(|line| line.split_whitespace().next()) {
        let pid = name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split_once('x')).map(|(pid, _)| pid);
        let Some(pid) = pid.filter(|pid| !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit())) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let mut failures: Vec<String> = ip(&["netns", "del", name]).err().into_iter().collect();
        let subnet = name.rsplit_once("-hub-n").and_then(|(_, subnet)| subnet.parse::<u8>().ok());
        if let Some(subnet) = subnet {
            let route = format!("{CLIENT_NET}.{subnet}.0/24");
            failures.extend(ip(&["route", "del", "unreachable", &route, "metric", CLAIM_METRIC]).err());
        }
        for failure in failures {
            eprintln!("stale namespace {name}: {failure}");
        }
    }
}

/// One line a member printed, with its node id.
struct Line {
    node: u64,
    text: String,
}

struct Member {
    id: u64,
    dir: PathBuf,
    addr: SocketAddr,
    /// Held for its drop, which kills the member.
    _child: ServerChild,
}

/// Three members in their namespaces. Field order is drop order: the members are killed before
/// the network they live in is deleted.
struct Cluster {
    members: Vec<Member>,
    lines: Receiver<Line>,
    /// Each member's newest view, from its lines: (term, leader).
    views: BTreeMap<u64, (u64, Option<u64>)>,
    /// Every term some member claimed to lead, with the members that did.
    leaders_by_term: BTreeMap<u64, std::collections::BTreeSet<u64>>,
    network: Network,
    _tmp: tempfile::TempDir,
}

/// Starts member `id` in its namespace: `ip netns exec NS walletd serve --cluster …`, which
/// execs the binary (no fork), so the child is the member itself; returns once it listens.
fn member_start(network: &Network, id: u64, dir: &Path, sender: &Sender<Line>) -> ServerChild {
    use std::io::BufRead;
    let (addr, raft_addr) = (network.client_addr(id).to_string(), network.raft_addr(id).to_string());
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &network.namespace(id), env!("CARGO_BIN_EXE_walletd")]);
    command.args(["serve", "--addr", &addr, "--data-dir"]).arg(dir);
    command.args(["--cluster", "--node-id", &id.to_string(), "--raft-addr", &raft_addr]);
    command.args(["--accounts-max", "4096", "--write-timeout-ms", WRITE_TIMEOUT_MS]);
    let stderr = if std::env::var_os("WALLETD_TEST_STDERR").is_some() { Stdio::inherit() } else { Stdio::null() };
    let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn().expect("ip netns exec walletd serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = ServerChild(child);
    let (line_sender, lines) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_sender.send(line).is_err() {
                return;
            }
        }
    });
    let listening = lines.recv_timeout(LINE_TIMEOUT).expect("the listening line");
    assert!(listening.starts_with(&format!("walletd listening on {addr} ")), "{listening}");
    let raft_line = lines.recv_timeout(LINE_TIMEOUT).expect("the raft line");
    assert!(raft_line.starts_with(&format!("raft on {raft_addr} ")), "{raft_line}");
    let sender = sender.clone();
    std::thread::spawn(move || {
        for text in lines {
            if sender.send(Line { node: id, text }).is_err() {
                return;
            }
        }
    });
    child
}

impl Cluster {
    /// `member_count` members in a new network, initialised; `None` (printed) when this machine cannot
    /// make namespaces and `WALLETD_REQUIRE_NETNS=1` is not set.
    fn start(test: &str, member_count: u64) -> Option<Cluster> {
        let network = match namespaces_unavailable().map_or_else(|| Network::create(member_count), Err) {
            Ok(network) => network,
            Err(reason) if std::env::var("WALLETD_REQUIRE_NETNS").as_deref() == Ok("1") => {
                panic!("{test}: WALLETD_REQUIRE_NETNS=1, but {reason}")
            }
            Err(reason) => {
                // Straight to the process's stderr, past the test harness's capture, so that a
                // skip is seen in a passing run.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{test}: skipped: {reason}");
                return None;
            }
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let (sender, lines) = channel();
        let members = (1..=member_count)
            .map(|id| {
                let dir = tmp.path().join(format!("node{id}"));
                let child = member_start(&network, id, &dir, &sender);
                Member { id, dir, addr: network.client_addr(id), _child: child }
            })
            .collect();
        let cluster =
            Cluster { members, lines, views: BTreeMap::new(), leaders_by_term: BTreeMap::new(), network, _tmp: tmp };
        cluster.init();
        Some(cluster)
    }

    /// `walletd cluster init`, run in member 1's namespace (the raft side is not reachable
    /// from the root namespace).
    fn init(&self) {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.network.namespace(1), env!("CARGO_BIN_EXE_walletd")]);
        command.args(["cluster", "init", "--raft-addr", &self.network.raft_addr(1).to_string()]);
        for member in &self.members {
            command.arg("--member").arg(format!("{}={}/{}", member.id, self.network.raft_addr(member.id), member.addr));
        }
        let output = command.output().expect("walletd cluster init runs");
        assert!(output.status.success(), "cluster init failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn member(&self, id: u64) -> &Member {
        self.members.iter().find(|member| member.id == id).expect("a member with that id")
    }

    fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|member| member.addr.to_string()).collect()
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::new(self.addresses(), ClientOptions::default(), EVENT_TIMEOUT)
    }

    /// Reads lines until a member other than `excluded` reports itself leader in a term above
    /// `term_above`; returns (leader, term).
    fn leader_wait(&mut self, term_above: u64, excluded: Option<u64>) -> (u64, u64) {
        let found = self.view_wait("a leader to be elected", |views| {
            views.iter().find_map(|(node, (term, leader))| {
                (*leader == Some(*node) && *term > term_above && Some(*node) != excluded).then_some((*node, *term))
            })
        });
        found
    }

    /// Reads lines until `found` finds what it looks for in the members' views.
    fn view_wait<T>(&mut self, what: &str, found: impl Fn(&BTreeMap<u64, (u64, Option<u64>)>) -> Option<T>) -> T {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(value) = found(&self.views) {
                return value;
            }
            let left = deadline.checked_duration_since(Instant::now());
            let line = left.and_then(|left| self.lines.recv_timeout(left).ok());
            let line = line.unwrap_or_else(|| panic!("waited {EVENT_TIMEOUT:?} for {what}; views {:?}", self.views));
            self.view_update(&line);
        }
    }

    /// Takes in every line printed so far without waiting.
    fn views_drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.view_update(&line);
        }
    }

    fn view_update(&mut self, line: &Line) {
        let words: Vec<&str> = line.text.split_whitespace().collect();
        let Some(term) = words.last().and_then(|word| word.parse::<u64>().ok()) else { return };
        let leader = match words.as_slice() {
            ["cluster:", "node", _, "is", "the", "leader", ..] => Some(line.node),
            ["cluster:", "node", _, "follows", "node", leader, ..] => leader.parse().ok(),
            ["cluster:", "node", _, "knows", "no", "leader", ..] => None,
            _ => return,
        };
        if leader == Some(line.node) {
            self.leaders_by_term.entry(term).or_default().insert(line.node);
        }
        self.views.insert(line.node, (term, leader));
    }

    /// Member `id`'s journal durable mark (0 before its first).
    fn durable_op(&self, id: u64) -> u64 {
        cluster_harness::durable_op(&self.member(id).dir)
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

/// How long the load resends one batch whose outcome is unknown before it fails the test: a
/// partition heals well within it.
const LOAD_BATCH_TIMEOUT: Duration = Duration::from_secs(180);

/// The load: threads that send batches through the cluster client and record what was
/// acknowledged. A batch whose outcome is unknown is resent with the same ids until it is
/// acknowledged (or the load is stopped: then it was never acknowledged). Dropped, it stops and
/// joins its threads, so none outlives the network it talks to.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<TransferId>>>,
    progress: Receiver<usize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addresses: Vec<String>, thread_count: u128) -> Load {
        // A request to a member cut off from the others times out (outcome unknown) and the
        // client moves on to the next member; each call gives up after a while so that a stop
        // is seen soon.
        let options = ClientOptions { request_timeout: Duration::from_secs(3), ..ClientOptions::default() };
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let (progress_sender, progress) = channel();
        let threads = (0..thread_count)
            .map(|thread| {
                let (stop, acknowledged, progress) =
                    (Arc::clone(&stop), Arc::clone(&acknowledged), progress_sender.clone());
                let client = ClusterClient::new(addresses.clone(), options.clone(), Duration::from_secs(10));
                std::thread::spawn(move || {
                    let mut next = 1_000_000 * (thread + 1);
                    while !stop.load(Ordering::Acquire) {
                        let batch = transfers(next, 25);
                        if !load_batch_send(&client, &batch, &stop) {
                            return;
                        }
                        next += 25;
                        let mut all = acknowledged.lock().expect("lock");
                        all.extend(batch.iter().map(|transfer| transfer.id));
                        let _ = progress.send(all.len());
                    }
                })
            })
            .collect();
        Load { stop, acknowledged, progress, threads }
    }

    fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().expect("lock").len()
    }

    /// Waits until at least `count` more transfers are acknowledged than now.
    fn progress_wait(&self, count: usize) {
        let start = self.acknowledged_count();
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.checked_duration_since(Instant::now()).expect("the load made no progress in time");
            let now = self.progress.recv_timeout(left).expect("the load made no progress in time");
            if now >= start + count {
                return;
            }
        }
    }

    /// Stops the load; returns every acknowledged transfer id.
    fn stop(mut self) -> Vec<TransferId> {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.join().expect("a load thread panicked");
        }
        self.acknowledged.lock().expect("lock").clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sends `batch` until it is acknowledged (true) or the load is stopped (false); fails the test
/// after `LOAD_BATCH_TIMEOUT`.
fn load_batch_send(client: &ClusterClient, batch: &[Transfer], stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + LOAD_BATCH_TIMEOUT;
    loop {
        match client.create_transfers(batch) {
            Ok(results) => {
                let exists = walletd_core::CreateTransferResult::Exists as u32;
                assert!(results.iter().all(|result| result.code == exists), "{results:?}");
                return true;
            }
            Err(error) => {
                // Outcome unknown: resend the same ids.
                assert!(Instant::now() < deadline, "a batch unacknowledged for {LOAD_BATCH_TIMEOUT:?}: {error:?}");
                if stop.load(Ordering::Acquire) {
                    return false;
                }
            }
        }
    }
}

/// Writes sent straight to the member at `addr`, `count` batches of 25 from `first`, each on a
/// connection of its own and all at once (a member without a majority answers each only after
/// its write timeout); returns each batch's ids with its answer.
fn writes_direct(addr: SocketAddr, first: u128, count: u128) -> Vec<(Vec<TransferId>, Result<(), ClientError>)> {
    let options = ClientOptions { request_timeout: Duration::from_secs(10), ..ClientOptions::default() };
    let senders: Vec<_> = (0..count)
        .map(|index| {
            let (batch, options) = (transfers(first + index * 25, 25), options.clone());
            std::thread::spawn(move || {
                let ids: Vec<TransferId> = batch.iter().map(|transfer| transfer.id).collect();
                let answer = Client::connect(addr, options).and_then(|client| client.create_transfers(&batch));
                (ids, answer.map(|results| assert_eq!(results, vec![], "a fresh batch is created whole")))
            })
        })
        .collect();
    senders.into_iter().map(|sender| sender.join().expect("a direct sender")).collect()
}

/// Every answer is a failure whose outcome is unknown or a refusal, never an acknowledgement;
/// returns the failures counted by kind (for the printout).
fn never_acknowledged(member: u64, answers: &[(Vec<TransferId>, Result<(), ClientError>)]) -> BTreeMap<String, u32> {
    let mut failures = BTreeMap::new();
    for (_, answer) in answers {
        match answer {
            Err(ClientError::Unavailable) => *failures.entry("unavailable".to_string()).or_insert(0) += 1,
            Err(ClientError::NotLeader { .. }) => *failures.entry("not_leader".to_string()).or_insert(0) += 1,
            Err(ClientError::Timeout) => *failures.entry("timeout".to_string()).or_insert(0) += 1,
            other => panic!("member {member}, cut off from the others, answered a write with {other:?}"),
        }
    }
    failures
}

/// The leader cut off from the other two under load. They elect a new leader in a higher term
/// and serve the load; the isolated leader, still reachable by clients, never acknowledges the
/// writes sent to it (it cannot commit without a majority), and its journal stays behind.
/// Healed, it follows the new leader, its uncommitted entries are dropped (none of those writes
/// is ever applied) and it catches up.
#[test]
fn the_leader_cut_off_under_load_steps_down_and_loses_nothing() {
    let Some(mut cluster) = Cluster::start("the_leader_cut_off_under_load_steps_down_and_loses_nothing", MEMBERS)
    else {
        return;
    };
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let load = Load::start(cluster.addresses(), 2);
    load.progress_wait(100);

    cluster.network.cut(leader);
    let cut_at = Instant::now();
    let old_leader_addr = cluster.member(leader).addr;
    let direct = std::thread::spawn(move || writes_direct(old_leader_addr, 90_000_000, 4));
    let (leader_new, term_new) = cluster.leader_wait(term, Some(leader));
    let elected_ms = cut_at.elapsed().as_millis();
    load.progress_wait(200);
    let answers = direct.join().expect("the direct writes");
    let failures = never_acknowledged(leader, &answers);
    // The majority's checkpoint is past everything the isolated member has: it is really cut off.
    let op_majority = client.snapshot().expect("a checkpoint through the new leader");
    let op_isolated = cluster.durable_op(leader);
    assert!(
        op_isolated < op_majority,
        "the isolated leader is durable to {op_isolated}, the majority to {op_majority}"
    );
    cluster.views_drain();
    eprintln!(
        "cut leader {leader} (term {term}); node {leader_new} leads in term {term_new} {elected_ms} ms after the \
         cut; the isolated leader's answers to {} direct writes: {failures:?}; its journal at op {op_isolated}, \
         the majority's checkpoint at {op_majority}",
        answers.len()
    );

    cluster.network.heal(leader);
    let healed_at = Instant::now();
    let followed = cluster.view_wait("the old leader to step down", |views| {
        views
            .get(&leader)
            .and_then(|(seen, known)| (*seen >= term_new && known.is_some_and(|id| id != leader)).then_some(*seen))
    });
    eprintln!("healed: node {leader} follows in term {followed} {} ms later", healed_at.elapsed().as_millis());
    match Client::connect(old_leader_addr, ClientOptions::default())
        .expect("connect")
        .create_transfers(&transfers(95_000_000, 5))
    {
        Err(ClientError::NotLeader { leader: Some(named) }) => assert_ne!(named, old_leader_addr.to_string()),
        other => panic!("the healed old leader answered a write with {other:?}"),
    }
    load.progress_wait(100);
    let acknowledged = load.stop();
    let direct_ids: Vec<TransferId> = answers.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
    let applied = client.lookup_transfers(&direct_ids).expect("lookup the direct writes");
    assert!(applied.is_empty(), "{} writes answered as failed by the isolated leader were applied", applied.len());
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// A follower cut off from the others under load: the leader and the other follower are a
/// majority and serve on while the follower falls behind; it never becomes leader; healed, it
/// catches up (its journal equal to theirs).
#[test]
fn a_follower_cut_off_under_load_catches_up_when_healed() {
    let Some(mut cluster) = Cluster::start("a_follower_cut_off_under_load_catches_up_when_healed", MEMBERS) else {
        return;
    };
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let load = Load::start(cluster.addresses(), 2);
    load.progress_wait(100);

    let follower = (1..=MEMBERS).find(|id| *id != leader).expect("a follower");
    cluster.network.cut(follower);
    // Cut off long enough to stand for election (in vain): healed, it comes back with a
    // higher term than the leader's, the case that can depose a healthy leader.
    let term_campaign = cluster.view_wait("the isolated follower to stand for election", |views| {
        views.get(&follower).and_then(|(seen, _)| (*seen > term).then_some(*seen))
    });
    load.progress_wait(500);
    let op_majority = client.snapshot().expect("a checkpoint through the leader");
    let op_isolated = cluster.durable_op(follower);
    assert!(
        op_isolated < op_majority,
        "the isolated follower is durable to {op_isolated}, the majority to {op_majority}"
    );
    cluster.views_drain();
    let led: Vec<u64> =
        cluster.leaders_by_term.iter().filter(|(_, ids)| ids.contains(&follower)).map(|(term, _)| *term).collect();
    assert!(led.is_empty(), "the isolated follower {follower} led terms {led:?}");
    eprintln!(
        "cut follower {follower} (term {term}); it stood for election in term {term_campaign}; its journal at op \
         {op_isolated}, the majority's checkpoint at {op_majority}; its view now {:?}",
        cluster.views.get(&follower)
    );

    cluster.network.heal(follower);
    let healed_at = Instant::now();
    cluster.durable_wait(op_majority);
    let caught_up_ms = healed_at.elapsed().as_millis();
    load.progress_wait(100);
    cluster.views_drain();
    eprintln!(
        "healed: follower {follower} durable to op {op_majority} {caught_up_ms} ms later; the load served again; \
         views {:?}",
        cluster.views
    );
    let acknowledged = load.stop();
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// Every member cut off from every other, so that no side has a majority: direct writes to
/// each member are refused or time out, the load gets no acknowledgement, and nobody is
/// elected in a newer term. Healed, a leader is elected and the load is served again.
#[test]
fn a_split_without_a_majority_acknowledges_nothing_until_healed() {
    let Some(mut cluster) = Cluster::start("a_split_without_a_majority_acknowledges_nothing_until_healed", MEMBERS)
    else {
        return;
    };
    let (_, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let load = Load::start(cluster.addresses(), 2);
    load.progress_wait(100);

    for id in 1..=MEMBERS {
        cluster.network.cut(id);
    }
    // Two rounds of writes to every member: each is answered (or times out) without an
    // acknowledgement. A reply the load had coming from before the cut lands during the first
    // round; nothing is acknowledged after it.
    let mut failures = BTreeMap::new();
    let mut acknowledged_after_first = 0;
    for round in 0..2u128 {
        let rounds: Vec<_> = cluster
            .members
            .iter()
            .map(|member| {
                let (id, addr) = (member.id, member.addr);
                let first = 90_000_000 + (round * MEMBERS as u128 + id as u128) * 1_000;
                std::thread::spawn(move || (id, writes_direct(addr, first, 2)))
            })
            .collect();
        for sender in rounds {
            let (id, answers) = sender.join().expect("the direct writes");
            for (kind, count) in never_acknowledged(id, &answers) {
                *failures.entry(format!("node {id} {kind}")).or_insert(0) += count;
            }
        }
        if round == 0 {
            acknowledged_after_first = load.acknowledged_count();
        }
    }
    assert_eq!(load.acknowledged_count(), acknowledged_after_first, "the load was acknowledged without a majority");
    cluster.views_drain();
    let elected: Vec<_> = cluster.leaders_by_term.range(term + 1..).collect();
    assert!(elected.is_empty(), "elected without a majority (term, nodes): {elected:?}");
    eprintln!(
        "split all {MEMBERS} members (term {term}); direct writes answered: {failures:?}; views {:?}",
        cluster.views
    );

    for id in 1..=MEMBERS {
        cluster.network.heal(id);
    }
    let healed_at = Instant::now();
    let (leader_new, term_new) = cluster.leader_wait(term, None);
    load.progress_wait(100);
    eprintln!(
        "healed: node {leader_new} leads in term {term_new}; the load served again {} ms after healing",
        healed_at.elapsed().as_millis()
    );
    let acknowledged = load.stop();
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}

/// Five members split two against three, the leader on the side of two: it still replicates
/// to its one follower there, but two of five are no majority, so it commits nothing; the
/// writes sent to it are answered `unavailable` and never applied, though both logs of the
/// minority may hold them. The three elect a leader and serve the load. Joined again, the
/// minority follows the new leader and its uncommitted entries give way to the majority's: the
/// journals of all five are equal.
#[test]
fn a_leader_in_a_minority_of_two_commits_nothing_and_rejoins() {
    const FIVE: u64 = 5;
    let Some(mut cluster) = Cluster::start("a_leader_in_a_minority_of_two_commits_nothing_and_rejoins", FIVE) else {
        return;
    };
    let (leader, term) = cluster.leader_wait(0, None);
    let client = cluster.client();
    assert_eq!(client.create_accounts(&accounts(ACCOUNTS)).expect("create accounts"), vec![]);
    let load = Load::start(cluster.addresses(), 2);
    load.progress_wait(100);

    let follower = (1..=FIVE).find(|id| *id != leader).expect("a follower");
    let minority = [leader, follower];
    cluster.network.split(&minority);
    let split_at = Instant::now();
    let old_leader_addr = cluster.member(leader).addr;
    let direct = std::thread::spawn(move || writes_direct(old_leader_addr, 90_000_000, 4));
    let (leader_new, term_new) = cluster.leader_wait(term, Some(leader));
    let elected_ms = split_at.elapsed().as_millis();
    assert!(!minority.contains(&leader_new), "node {leader_new} of the minority {minority:?} was elected");
    load.progress_wait(200);
    let answers = direct.join().expect("the direct writes");
    let failures = never_acknowledged(leader, &answers);
    let op_majority = client.snapshot().expect("a checkpoint through the new leader");
    for id in minority {
        let op_minority = cluster.durable_op(id);
        assert!(
            op_minority < op_majority,
            "member {id} of the minority is durable to {op_minority}, past {op_majority}"
        );
    }
    cluster.views_drain();
    eprintln!(
        "split leader {leader} (term {term}) and follower {follower} from the other three; node {leader_new} leads \
         in term {term_new} {elected_ms} ms after the split; the old leader's answers to {} direct writes: \
         {failures:?}; the majority's checkpoint at {op_majority}; views {:?}",
        answers.len(),
        cluster.views
    );

    cluster.network.join(&minority);
    let joined_at = Instant::now();
    for id in minority {
        cluster.view_wait("the minority to follow the new leader", |views| {
            views.get(&id).and_then(|(seen, known)| {
                (*seen >= term_new && known.is_some_and(|known| !minority.contains(&known))).then_some(())
            })
        });
    }
    eprintln!("joined: the minority follows the majority's leader {} ms later", joined_at.elapsed().as_millis());
    match Client::connect(old_leader_addr, ClientOptions::default())
        .expect("connect")
        .create_transfers(&transfers(95_000_000, 5))
    {
        Err(ClientError::NotLeader { leader: Some(named) }) => assert_ne!(named, old_leader_addr.to_string()),
        other => panic!("the rejoined old leader answered a write with {other:?}"),
    }
    load.progress_wait(100);
    let acknowledged = load.stop();
    let direct_ids: Vec<TransferId> = answers.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
    let applied = client.lookup_transfers(&direct_ids).expect("lookup the direct writes");
    assert!(applied.is_empty(), "{} writes answered as failed by the minority's leader were applied", applied.len());
    acknowledged_kept_and_members_agree(&cluster.dirs(), &client, &acknowledged, EVENT_TIMEOUT);
}
