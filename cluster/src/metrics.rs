//! A member's Prometheus metrics (`walletd serve --cluster --metrics-addr`): its Raft view
//! (term, leader, log and applied index, the leader's replication progress per follower and
//! time since a quorum last acknowledged it), its snapshots and log purges, its journal's
//! durable op, its ledger snapshots (the replica's progress, and what start-up loaded), and the
//! outcomes of the writes it answered. Rendered on each scrape from openraft's metrics and a few counters.

use crate::node::Recovery;
use crate::snapshot::Snapshots;
use crate::state_machine::{Machine, StateMachine};
use crate::types::Raft;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a scrape reads: cheap to clone, for the thread serving `/metrics`.
#[derive(Clone)]
pub struct ClusterMetrics {
    raft: Raft,
    writes: Arc<WriteCounters>,
    machine: StateMachine,
    recovery: Recovery,
}

impl ClusterMetrics {
    pub fn new(raft: Raft, writes: Arc<WriteCounters>, machine: StateMachine, recovery: Recovery) -> ClusterMetrics {
        ClusterMetrics { raft, writes, machine, recovery }
    }

    /// The text exposition format. Reading the journal's durable op waits for an apply in
    /// progress (at most one fdatasync).
    pub fn render(&self) -> String {
        let ledger = LedgerSnapshots::of(&self.machine.machine(), &self.recovery);
        render(&self.raft, &self.writes, &ledger, self.machine.snapshots())
    }
}

/// The journal and the ledger snapshots as one scrape reads them.
struct LedgerSnapshots {
    op_durable: u64,
    op_snapshot: u64,
    op_replica: u64,
    replica_failed: bool,
    archive_failures: u64,
    recovery_snapshot_op: u64,
    recovery_records_replayed: u64,
}

impl LedgerSnapshots {
    fn of(machine: &Machine, recovery: &Recovery) -> LedgerSnapshots {
        let snapshotter = machine.snapshotter();
        LedgerSnapshots {
            op_durable: machine.op_durable(),
            op_snapshot: snapshotter.op_snapshot(),
            op_replica: snapshotter.op_replayed(),
            replica_failed: snapshotter.failed(),
            archive_failures: machine.archive_failures,
            recovery_snapshot_op: recovery.snapshot_op.unwrap_or(0),
            recovery_records_replayed: recovery.records_replayed,
        }
    }
}

/// The outcomes of the writes a member answered.
#[derive(Default)]
pub struct WriteCounters {
    pub ok: AtomicU64,
    pub not_leader: AtomicU64,
    pub unavailable: AtomicU64,
}

impl WriteCounters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The text exposition of one member's metrics.
fn render(raft: &Raft, writes: &WriteCounters, ledger: &LedgerSnapshots, snapshots: &Snapshots) -> String {
    let metrics = raft.metrics().borrow().clone();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("walletd_cluster_node_id", "This member's node id.", metrics.id);
    gauge("walletd_cluster_term", "The Raft term this member is in.", metrics.current_term);
    gauge(
        "walletd_cluster_is_leader",
        "1 while this member is the leader.",
        u64::from(metrics.current_leader == Some(metrics.id)),
    );
    gauge("walletd_cluster_leader_id", "The leader this member knows (0: none).", metrics.current_leader.unwrap_or(0));
    gauge(
        "walletd_cluster_last_log_index",
        "The last index in this member's Raft log.",
        metrics.last_log_index.unwrap_or(0),
    );
    gauge(
        "walletd_cluster_last_applied_index",
        "The last Raft index applied to this member's journal and ledger.",
        metrics.last_applied.map_or(0, |log_id| log_id.index),
    );
    gauge("walletd_journal_op_durable", "The journal's last durable op on this member.", ledger.op_durable);
    gauge("walletd_op_snapshot", "Op of this member's newest ledger snapshot (0: none).", ledger.op_snapshot);
    gauge("walletd_op_replica", "Last op the snapshot replica has applied.", ledger.op_replica);
    gauge("walletd_replica_failed", "1 if the snapshot replica stopped on an error.", u64::from(ledger.replica_failed));
    gauge(
        "walletd_recovery_snapshot_op",
        "Op of the ledger snapshot this member's start-up loaded (0: none, the whole journal was replayed).",
        ledger.recovery_snapshot_op,
    );
    gauge(
        "walletd_recovery_records_replayed",
        "Journal records this member's start-up replayed onto the loaded snapshot (or from genesis).",
        ledger.recovery_records_replayed,
    );
    gauge(
        "walletd_cluster_snapshot_index",
        "The Raft index of this member's newest snapshot (an anchor in its journal; 0: none).",
        metrics.snapshot.map_or(0, |log_id| log_id.index),
    );
    gauge(
        "walletd_cluster_purged_index",
        "The last Raft index purged from this member's Raft log (0: none).",
        metrics.purged.map_or(0, |log_id| log_id.index),
    );
    gauge(
        "walletd_cluster_voters",
        "Voters in the membership this member holds.",
        metrics.membership_config.membership().voter_ids().count() as u64,
    );
    if let Some(since) = metrics.millis_since_quorum_ack {
        gauge(
            "walletd_cluster_millis_since_quorum_ack",
            "On the leader: milliseconds since a quorum last acknowledged it.",
            since,
        );
    }
    if let Some(replication) = &metrics.replication {
        let last = metrics.last_log_index.unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP walletd_cluster_replication_lag_entries On the leader: entries each member is behind its log.\n\
             # TYPE walletd_cluster_replication_lag_entries gauge"
        );
        for (member, matched) in replication.iter().filter(|(member, _)| **member != metrics.id) {
            let matched = matched.map_or(0, |log_id| log_id.index + 1);
            let _ = writeln!(
                out,
                "walletd_cluster_replication_lag_entries{{member=\"{member}\"}} {}",
                (last + 1).saturating_sub(matched)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP walletd_cluster_writes_total Writes this member answered, by outcome.\n\
         # TYPE walletd_cluster_writes_total counter"
    );
    for (result, counter) in
        [("ok", &writes.ok), ("not_leader", &writes.not_leader), ("unavailable", &writes.unavailable)]
    {
        let _ =
            writeln!(out, "walletd_cluster_writes_total{{result=\"{result}\"}} {}", counter.load(Ordering::Relaxed));
    }
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter(
        "walletd_cluster_snapshots_installed_total",
        "Snapshots this member installed since it started (each a catch-up from another member's journal).",
        snapshots.installed.load(Ordering::Relaxed),
    );
    counter(
        "walletd_cluster_snapshot_records_fetched_total",
        "Journal records this member fetched from others to install snapshots since it started.",
        snapshots.records_fetched.load(Ordering::Relaxed),
    );
    counter("walletd_archive_failures_total", "Journal archive moves that failed.", ledger.archive_failures);
    out
}
