//! Prometheus metrics of the projection and of reconciliation, as plain atomics rendered in the
//! text exposition format, served by a minimal HTTP responder on tokio (`GET` anything → the
//! metrics). The alerting rules that fire on them are in docs/alerts/history.rules.yml.
//!
//! Lag is measured against the durable mark the follower reads: `walletd_projection_lag_ops` is
//! `op_durable − projected op`, and `walletd_projection_lag_seconds` is how old the newest
//! projected op is (now − its engine timestamp) while any durable op is still unprojected, 0 once
//! caught up. Before the first op is projected there is no engine timestamp to age: the lag is
//! then the time since the projection first saw durable ops it had not projected (a lower bound).

use crate::rows::Group;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walletd_replay::Position;

#[derive(Debug, Default)]
pub struct ProjectionMetrics {
    op: AtomicU64,
    op_timestamp_ns: AtomicU64,
    op_durable: AtomicU64,
    /// The data directory whose durable mark each scrape reads as well: while the follower is
    /// blocked (PostgreSQL down or slow) it reads nothing, and the lag must keep rising rather
    /// than freeze at its last read.
    pub durable_dir: OnceLock<PathBuf>,
    /// When durable ops were first seen unprojected before any op was projected (ns, 0: not).
    unprojected_since_ns: AtomicU64,
    ops_total: AtomicU64,
    transfers_total: AtomicU64,
    entries_total: AtomicU64,
    groups_total: AtomicU64,
    reconnects_total: AtomicU64,
    reconnect_failures_total: AtomicU64,
    /// Reconciliation: runs, and whether the last one found a difference (0/1).
    reconcile_runs_total: AtomicU64,
    reconcile_mismatch: AtomicU64,
    reconcile_op: AtomicU64,
}

impl ProjectionMetrics {
    pub fn position_set(&self, position: Position, timestamp_ns: u64) {
        self.op.store(position.op, Ordering::Relaxed);
        self.op_timestamp_ns.store(timestamp_ns, Ordering::Relaxed);
    }

    pub fn durable_set(&self, op_durable: u64) {
        self.op_durable.fetch_max(op_durable, Ordering::Relaxed);
        if self.lag_ops() > 0 && self.op_timestamp_ns.load(Ordering::Relaxed) == 0 {
            let _ = self.unprojected_since_ns.compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub fn group_written(&self, group: &Group) {
        self.position_set(group.position, group.timestamp_ns);
        self.ops_total.fetch_add(group.ops_count, Ordering::Relaxed);
        self.transfers_total.fetch_add(group.transfers_count, Ordering::Relaxed);
        self.entries_total.fetch_add(group.entries_count, Ordering::Relaxed);
        self.groups_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconnected(&self) {
        self.reconnects_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconnect_failed(&self) {
        self.reconnect_failures_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects_total.load(Ordering::Relaxed)
    }

    pub fn reconciled(&self, op: u64, mismatch: bool) {
        self.reconcile_runs_total.fetch_add(1, Ordering::Relaxed);
        self.reconcile_mismatch.store(u64::from(mismatch), Ordering::Relaxed);
        self.reconcile_op.store(op, Ordering::Relaxed);
    }

    pub fn lag_ops(&self) -> u64 {
        self.op_durable_now().saturating_sub(self.op.load(Ordering::Relaxed))
    }

    /// The journal's durable op: the newer of the follower's last read and the mark on disk now.
    fn op_durable_now(&self) -> u64 {
        let on_disk = self.durable_dir.get().and_then(|dir| walletd_replay::durable_read(dir).ok().flatten());
        self.op_durable.load(Ordering::Relaxed).max(on_disk.map_or(0, |position| position.op))
    }

    fn lag_seconds(&self, now_ns: u64) -> f64 {
        if self.lag_ops() == 0 {
            return 0.0;
        }
        let since = match self.op_timestamp_ns.load(Ordering::Relaxed) {
            0 => self.unprojected_since_ns.load(Ordering::Relaxed),
            timestamp_ns => timestamp_ns,
        };
        if since == 0 {
            return 0.0;
        }
        now_ns.saturating_sub(since) as f64 / 1e9
    }

    pub fn render(&self) -> String {
        let now_ns = now_ns();
        let mut out = String::new();
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let gauges: [(&str, &str, f64); 6] = [
            ("walletd_projection_op", "The last op projected into PostgreSQL.", load(&self.op) as f64),
            ("walletd_projection_op_durable", "The journal's durable op.", self.op_durable_now() as f64),
            ("walletd_projection_lag_ops", "Durable ops not yet projected.", self.lag_ops() as f64),
            (
                "walletd_projection_lag_seconds",
                "Age of the newest projected op while durable ops are unprojected (0 when caught up).",
                self.lag_seconds(now_ns),
            ),
            (
                "walletd_reconcile_mismatch",
                "1 if the last reconciliation found PostgreSQL, the engine and the journal disagreeing.",
                load(&self.reconcile_mismatch) as f64,
            ),
            ("walletd_reconcile_op", "The op the last reconciliation compared at.", load(&self.reconcile_op) as f64),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let counters: [(&str, &str, u64); 7] = [
            ("walletd_projection_ops_total", "Ops projected.", load(&self.ops_total)),
            ("walletd_projection_transfers_total", "Transfers projected.", load(&self.transfers_total)),
            ("walletd_projection_entries_total", "Ledger entries written.", load(&self.entries_total)),
            ("walletd_projection_groups_total", "Transactions committed.", load(&self.groups_total)),
            (
                "walletd_projection_reconnects_total",
                "Reconnections after PostgreSQL went away.",
                load(&self.reconnects_total),
            ),
            (
                "walletd_projection_reconnect_failures_total",
                "Connection attempts that failed while PostgreSQL was away.",
                load(&self.reconnect_failures_total),
            ),
            ("walletd_reconcile_runs_total", "Reconciliations run.", load(&self.reconcile_runs_total)),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        out
    }
}

/// Serves `metrics` at `addr` until the runtime ends; returns the bound address.
pub async fn metrics_serve(
    addr: std::net::SocketAddr,
    metrics: Arc<ProjectionMetrics>,
) -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let body = metrics.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_before_the_first_projected_op_counts_from_when_durable_ops_were_seen() {
        let metrics = ProjectionMetrics::default();
        assert_eq!(metrics.lag_seconds(now_ns()), 0.0, "nothing durable, nothing behind");
        metrics.durable_set(5);
        let seen = metrics.unprojected_since_ns.load(Ordering::Relaxed);
        assert!(seen > 0);
        let lag = metrics.lag_seconds(seen + 2_000_000_000);
        assert_eq!(lag, 2.0, "the age of the lag, not the seconds since 1970");
        metrics.position_set(Position { op: 5, checksum: 1 }, seen - 1_000_000_000);
        assert_eq!(metrics.lag_seconds(seen + 2_000_000_000), 0.0, "caught up");
        metrics.durable_set(7);
        assert_eq!(metrics.lag_seconds(seen + 2_000_000_000), 3.0, "now the age of the newest projected op");
    }
}
