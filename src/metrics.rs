//! Prometheus metrics: plain atomics that the pipeline's stages bump, rendered as the text
//! exposition format by `render`. Histograms have fixed buckets so an observation is two
//! atomic adds; nothing allocates on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use walletd_gateway::protocol::FrameOperation;

/// Operations are counted by their index in the protocol's `FrameOperation::ALL`.
pub const OPERATION_SLOTS: usize = FrameOperation::ALL.len();
/// Result codes counted per operation (codes above this are counted at the last slot).
pub const RESULT_CODES: usize = 80;

fn operation_index(operation: FrameOperation) -> usize {
    FrameOperation::ALL.iter().position(|known| *known == operation).expect("every operation is listed")
}

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records `value` (in the histogram's unit; seconds for latencies).
    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

const SECONDS_BOUNDS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
const EVENTS_BOUNDS: &[f64] = &[1.0, 8.0, 64.0, 512.0, 2048.0, 4096.0, 8189.0];

/// Every metric the node exports.
pub struct Metrics {
    pub requests: Vec<AtomicU64>,
    /// [operation][result code]
    pub events: Vec<AtomicU64>,
    pub frame_errors: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub batch_events: Histogram,
    pub fsync_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    /// Apply-thread time per checkpoint (computing the O(1) state hash): the snapshot stall.
    pub snapshot_stall_seconds: Histogram,
    pub ring_full_waits: AtomicU64,
    pub op_published: AtomicU64,
    pub op_durable: AtomicU64,
    pub op_applied: AtomicU64,
    pub op_snapshot: AtomicU64,
    /// The last op the snapshot replica has applied, and whether it has failed (1).
    pub op_replica: AtomicU64,
    pub replica_failed: AtomicU64,
    pub archive_failures: AtomicU64,
    /// Durable-mark writes that failed (followers wait meanwhile).
    pub durable_mark_errors: AtomicU64,
    /// How far the wall clock is behind the ledger's next timestamp (0 when it is not).
    pub clock_behind_ns: AtomicU64,
    /// The ledger's state hash after `op_applied` (low and high halves; read them when quiet).
    pub state_hash_low: AtomicU64,
    pub state_hash_high: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: (0..OPERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            events: (0..OPERATION_SLOTS * RESULT_CODES).map(|_| AtomicU64::new(0)).collect(),
            frame_errors: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            batch_events: Histogram::new(EVENTS_BOUNDS),
            fsync_seconds: Histogram::new(SECONDS_BOUNDS),
            apply_seconds: Histogram::new(SECONDS_BOUNDS),
            checkpoint_seconds: Histogram::new(SECONDS_BOUNDS),
            snapshot_stall_seconds: Histogram::new(SECONDS_BOUNDS),
            ring_full_waits: AtomicU64::new(0),
            op_published: AtomicU64::new(0),
            op_durable: AtomicU64::new(0),
            op_applied: AtomicU64::new(0),
            op_snapshot: AtomicU64::new(0),
            op_replica: AtomicU64::new(0),
            replica_failed: AtomicU64::new(0),
            archive_failures: AtomicU64::new(0),
            durable_mark_errors: AtomicU64::new(0),
            clock_behind_ns: AtomicU64::new(0),
            state_hash_low: AtomicU64::new(0),
            state_hash_high: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, operation: FrameOperation) {
        self.requests[operation_index(operation)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `count` events of `operation` that ended with `code`.
    pub fn events_add(&self, operation: FrameOperation, code: u32, count: u64) {
        let code = (code as usize).min(RESULT_CODES - 1);
        self.events[operation_index(operation) * RESULT_CODES + code].fetch_add(count, Ordering::Relaxed);
    }

    pub fn state_hash_set(&self, state_hash: u128) {
        self.state_hash_low.store(state_hash as u64, Ordering::Relaxed);
        self.state_hash_high.store((state_hash >> 64) as u64, Ordering::Relaxed);
    }

    pub fn state_hash(&self) -> u128 {
        let high = u128::from(self.state_hash_high.load(Ordering::Relaxed));
        (high << 64) | u128::from(self.state_hash_low.load(Ordering::Relaxed))
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = writeln!(
            out,
            "# HELP walletd_requests_total Requests by operation.\n# TYPE walletd_requests_total counter"
        );
        for (index, count) in self.requests.iter().enumerate() {
            let value = count.load(Ordering::Relaxed);
            let _ =
                writeln!(out, "walletd_requests_total{{operation=\"{}\"}} {value}", FrameOperation::ALL[index].name());
        }
        let _ = writeln!(
            out,
            "# HELP walletd_events_total Events by operation and result code.\n# TYPE walletd_events_total counter"
        );
        for (slot, count) in self.events.iter().enumerate() {
            let value = count.load(Ordering::Relaxed);
            if value > 0 {
                let (operation, code) = (slot / RESULT_CODES, slot % RESULT_CODES);
                let _ = writeln!(
                    out,
                    "walletd_events_total{{operation=\"{}\",code=\"{code}\"}} {value}",
                    FrameOperation::ALL[operation].name()
                );
            }
        }
        let gauges = [
            ("walletd_frame_errors_total", "Malformed frames received.", &self.frame_errors),
            ("walletd_connections_open", "Client connections open.", &self.connections_open),
            ("walletd_connections_refused_total", "Connections refused at the limit.", &self.connections_refused),
            (
                "walletd_ring_full_waits_total",
                "Times the sequencer waited for a free ring slot.",
                &self.ring_full_waits,
            ),
            ("walletd_op_published", "Last op sequenced into the ring.", &self.op_published),
            ("walletd_op_durable", "Last op made durable by the journal.", &self.op_durable),
            ("walletd_op_applied", "Last op applied by the ledger.", &self.op_applied),
            ("walletd_op_snapshot", "Op of the newest snapshot.", &self.op_snapshot),
            ("walletd_op_replica", "Last op the snapshot replica has applied.", &self.op_replica),
            ("walletd_replica_failed", "1 if the snapshot replica stopped on an error.", &self.replica_failed),
            ("walletd_archive_failures_total", "Journal archive moves that failed.", &self.archive_failures),
            (
                "walletd_durable_mark_errors_total",
                "Writes of the durable mark (DIR/op_durable) for followers that failed.",
                &self.durable_mark_errors,
            ),
            ("walletd_clock_behind_ledger_ns", "How far the wall clock is behind ledger time.", &self.clock_behind_ns),
        ];
        for (name, help, value) in gauges {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP walletd_state_info The ledger's state hash at op_applied (compare with `walletd replay`).\n\
             # TYPE walletd_state_info gauge\nwalletd_state_info{{state_hash=\"{:032x}\",op=\"{}\"}} 1",
            self.state_hash(),
            self.op_applied.load(Ordering::Relaxed)
        );
        let depth = self.op_published.load(Ordering::Relaxed).saturating_sub(self.op_applied.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP walletd_ring_depth Ops sequenced but not yet applied.\n# TYPE walletd_ring_depth gauge\nwalletd_ring_depth {depth}");
        self.batch_events.render(&mut out, "walletd_batch_events", "Events per request.");
        self.fsync_seconds.render(
            &mut out,
            "walletd_journal_fsync_seconds",
            "Journal group commit (fdatasync) latency.",
        );
        self.apply_seconds.render(&mut out, "walletd_apply_seconds", "Ledger apply time per request.");
        self.snapshot_stall_seconds.render(
            &mut out,
            "walletd_snapshot_stall_seconds",
            "Apply-thread time per checkpoint (a snapshot's only cost to the apply thread).",
        );
        self.checkpoint_seconds.render(
            &mut out,
            "walletd_checkpoint_seconds",
            "Journal thread time per checkpoint: waiting for apply's state hash, then appending it.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::Operation;

    #[test]
    fn render_shows_what_was_counted() {
        let metrics = Metrics::default();
        let create_transfers = FrameOperation::Ledger(Operation::CreateTransfers);
        metrics.request(create_transfers);
        metrics.events_add(create_transfers, 0, 10);
        metrics.events_add(create_transfers, 58, 2);
        metrics.fsync_seconds.observe(0.0003);
        metrics.op_durable.store(7, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("walletd_requests_total{operation=\"create_transfers\"} 1"));
        assert!(text.contains("walletd_events_total{operation=\"create_transfers\",code=\"58\"} 2"));
        assert!(text.contains("walletd_journal_fsync_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("walletd_journal_fsync_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("walletd_op_durable 7"));
    }
}
