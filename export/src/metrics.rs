//! Prometheus metrics of the exporter and the notifier: plain atomics bumped where the work is
//! done, rendered as the text exposition format by a small HTTP endpoint (GET /metrics) on the
//! process's tokio runtime.

use crate::error::ExportError;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// A counter or a gauge.
#[derive(Default, Debug)]
pub struct Metric {
    value: AtomicU64,
}

impl Metric {
    pub fn add(&self, delta: u64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The exporter's progress and its lag behind the engine.
#[derive(Default, Debug)]
pub struct ExportMetrics {
    /// The engine's durable op, as the follower last read it.
    pub op_durable: Metric,
    /// The data directory whose durable mark each scrape reads as well: while the follower is
    /// blocked (the broker down, its queue full) it reads nothing, and the lag must keep rising
    /// rather than freeze at its last read.
    pub durable_dir: OnceLock<PathBuf>,
    /// The follower's op (read and turned into events).
    pub op_followed: Metric,
    /// The op through which every event is acknowledged by the broker.
    pub op_exported: Metric,
    /// The engine timestamp of `op_exported`'s batch (ns).
    pub op_exported_timestamp_ns: Metric,
    pub events_exported: Metric,
    /// Events found already in the topic on start (a previous session's), not sent again.
    pub events_skipped: Metric,
    pub sessions: Metric,
}

impl ExportMetrics {
    /// Ops the exporter is behind the engine's durable journal.
    pub fn lag_ops(&self) -> u64 {
        self.op_durable_now().saturating_sub(self.op_exported.get())
    }

    /// The engine's durable op: the newer of the follower's last read and the mark on disk now.
    pub fn op_durable_now(&self) -> u64 {
        let on_disk = self.durable_dir.get().and_then(|dir| walletd_replay::durable_read(dir).ok().flatten());
        self.op_durable.get().max(on_disk.map_or(0, |position| position.op))
    }

    /// Seconds behind: how old the last exported op is when there is more to export, else 0.
    pub fn lag_seconds(&self, now_ns: u64) -> f64 {
        if self.lag_ops() == 0 || self.op_exported_timestamp_ns.get() == 0 {
            return 0.0;
        }
        now_ns.saturating_sub(self.op_exported_timestamp_ns.get()) as f64 / 1e9
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let now_ns = now_ns();
        let lines: [(&str, &str, &str, String); 9] = [
            (
                "walletd_export_op_durable",
                "gauge",
                "The engine's durable op as last read.",
                self.op_durable_now().to_string(),
            ),
            (
                "walletd_export_op_followed",
                "gauge",
                "The op the follower has read.",
                self.op_followed.get().to_string(),
            ),
            (
                "walletd_export_op_exported",
                "gauge",
                "Every event through this op is acknowledged.",
                self.op_exported.get().to_string(),
            ),
            ("walletd_export_lag_ops", "gauge", "Ops behind op_durable.", self.lag_ops().to_string()),
            (
                "walletd_export_lag_seconds",
                "gauge",
                "Age of the last exported op while behind.",
                format!("{:.3}", self.lag_seconds(now_ns)),
            ),
            (
                "walletd_export_events_total",
                "counter",
                "Events acknowledged by the broker.",
                self.events_exported.get().to_string(),
            ),
            (
                "walletd_export_events_skipped_total",
                "counter",
                "Events found already in the topic on start.",
                self.events_skipped.get().to_string(),
            ),
            ("walletd_export_sessions_total", "counter", "Producer sessions started.", self.sessions.get().to_string()),
            ("walletd_export_up", "gauge", "1 while the exporter runs.", "1".to_string()),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// The notifier's counters.
#[derive(Default, Debug)]
pub struct NotifyMetrics {
    pub delivered: Metric,
    pub attempts: Metric,
    pub retries: Metric,
    pub dead_lettered: Metric,
    pub redriven: Metric,
}

impl NotifyMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let lines: [(&str, &str, u64); 5] = [
            ("walletd_notify_delivered_total", "Webhooks delivered (2xx).", self.delivered.get()),
            ("walletd_notify_attempts_total", "Webhook requests made.", self.attempts.get()),
            ("walletd_notify_retries_total", "Webhook attempts that were retries.", self.retries.get()),
            ("walletd_notify_dead_lettered_total", "Events sent to the dead-letter topic.", self.dead_lettered.get()),
            ("walletd_notify_redriven_total", "Dead letters put back on the topic.", self.redriven.get()),
        ];
        for (name, help, value) in lines {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        out
    }
}

/// Nanoseconds since the Unix epoch (for lag in seconds; never used by the ledger).
pub fn now_ns() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// Serves `render()` at `addr` until the runtime stops; returns the bound address.
pub async fn metrics_serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<SocketAddr, ExportError> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(ExportError::io(format!("binding metrics on {addr}")))?;
    let bound = listener.local_addr().map_err(ExportError::io("metrics address"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = render();
                    async move {
                        let response = Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                            .expect("a valid response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(bound)
}
