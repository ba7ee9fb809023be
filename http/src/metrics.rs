//! Prometheus metrics of the HTTP gateway: RED per route (requests by status, errors, a
//! duration histogram), the engine's round-trip time and frame sizes, Redis time, rate-limit
//! and idempotency-cache outcomes. Plain atomics rendered in the text format, like the
//! engine's own `src/metrics.rs`: no registry crate, nothing allocated per request once a
//! route has been seen. With `--jwks-url`, the key set's refreshes, failed refreshes, size and
//! age.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Histogram bucket bounds in seconds.
const BUCKETS_S: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { buckets: Default::default(), count: AtomicU64::new(0), sum_ns: AtomicU64::new(0) }
    }

    fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}");
        let sum_s = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum_s}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// One route and method: requests by status code, and their durations.
struct RouteStats {
    by_status: [AtomicU64; 500],
    duration: Histogram,
}

pub struct Metrics {
    routes: RwLock<HashMap<(String, String), Arc<RouteStats>>>,
    engine_rtt: Histogram,
    engine_transfers_frames: AtomicU64,
    engine_transfers_events: AtomicU64,
    redis: Histogram,
    redis_errors: AtomicU64,
    rate_limited: AtomicU64,
    rate_limit_fallbacks: AtomicU64,
    idempotency_cache_hits: AtomicU64,
    jwks_refreshes: AtomicU64,
    jwks_refresh_failures: AtomicU64,
    jwks_keys: AtomicU64,
    /// Wall-clock milliseconds when the key set in use was fetched; 0 without `--jwks-url`.
    jwks_fetched_at_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            routes: RwLock::new(HashMap::new()),
            engine_rtt: Histogram::new(),
            engine_transfers_frames: AtomicU64::new(0),
            engine_transfers_events: AtomicU64::new(0),
            redis: Histogram::new(),
            redis_errors: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_limit_fallbacks: AtomicU64::new(0),
            idempotency_cache_hits: AtomicU64::new(0),
            jwks_refreshes: AtomicU64::new(0),
            jwks_refresh_failures: AtomicU64::new(0),
            jwks_keys: AtomicU64::new(0),
            jwks_fetched_at_ms: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request_record(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let key = (route.to_string(), method.to_string());
        let stats = self.routes.read().unwrap_or_else(|poison| poison.into_inner()).get(&key).cloned();
        let stats = match stats {
            Some(stats) => stats,
            None => {
                let mut routes = self.routes.write().unwrap_or_else(|poison| poison.into_inner());
                let stats = routes.entry(key).or_insert_with(|| {
                    Arc::new(RouteStats { by_status: [const { AtomicU64::new(0) }; 500], duration: Histogram::new() })
                });
                Arc::clone(stats)
            }
        };
        let index = usize::from(status.clamp(100, 599) - 100);
        stats.by_status[index].fetch_add(1, Ordering::Relaxed);
        stats.duration.record(elapsed);
    }

    pub fn engine_rtt_record(&self, elapsed: Duration) {
        self.engine_rtt.record(elapsed);
    }

    pub fn engine_batch_record(&self, events: usize) {
        self.engine_transfers_frames.fetch_add(1, Ordering::Relaxed);
        self.engine_transfers_events.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub fn redis_record(&self, elapsed: Duration, ok: bool) {
        self.redis.record(elapsed);
        if !ok {
            self.redis_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rate_limited_count(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limit_fallback_count(&self) {
        self.rate_limit_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn idempotency_cache_hit_count(&self) {
        self.idempotency_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// A JWK set fetched from the URL and put in use, with `keys` usable keys.
    pub fn jwks_refresh_record(&self, keys: usize) {
        assert!(keys > 0, "a key set in use has a key");
        self.jwks_refreshes.fetch_add(1, Ordering::Relaxed);
        self.jwks_keys.store(keys as u64, Ordering::Relaxed);
        self.jwks_fetched_at_ms.store(crate::ids::now_ms().max(1), Ordering::Relaxed);
    }

    pub fn jwks_refresh_failure_count(&self) {
        self.jwks_refresh_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP walletd_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE walletd_http_requests_total counter\n");
        let routes = self.routes.read().unwrap_or_else(|poison| poison.into_inner());
        let mut keys: Vec<&(String, String)> = routes.keys().collect();
        keys.sort();
        for key in &keys {
            for (index, count) in routes[*key].by_status.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let status = index + 100;
                    let _ = writeln!(
                        out,
                        "walletd_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {count}",
                        key.0, key.1
                    );
                }
            }
        }
        out.push_str("# HELP walletd_http_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE walletd_http_request_duration_seconds histogram\n");
        for key in &keys {
            let labels = format!("route=\"{}\",method=\"{}\"", key.0, key.1);
            routes[*key].duration.render(&mut out, "walletd_http_request_duration_seconds", &labels);
        }
        drop(routes);
        out.push_str("# HELP walletd_http_engine_rtt_seconds Round trip of one engine frame (send to reply).\n");
        out.push_str("# TYPE walletd_http_engine_rtt_seconds histogram\n");
        self.engine_rtt.render(&mut out, "walletd_http_engine_rtt_seconds", "");
        self.counter(
            &mut out,
            "walletd_http_engine_transfer_frames_total",
            "create_transfers frames sent",
            &self.engine_transfers_frames,
        );
        self.counter(
            &mut out,
            "walletd_http_engine_transfer_events_total",
            "transfers sent in those frames",
            &self.engine_transfers_events,
        );
        out.push_str("# HELP walletd_http_redis_seconds Time of one Redis command or script.\n");
        out.push_str("# TYPE walletd_http_redis_seconds histogram\n");
        self.redis.render(&mut out, "walletd_http_redis_seconds", "");
        self.counter(
            &mut out,
            "walletd_http_redis_errors_total",
            "Redis calls that failed or timed out",
            &self.redis_errors,
        );
        self.counter(&mut out, "walletd_http_rate_limited_total", "requests answered 429", &self.rate_limited);
        self.counter(
            &mut out,
            "walletd_http_rate_limit_fallbacks_total",
            "rate-limit decisions made without Redis because it failed",
            &self.rate_limit_fallbacks,
        );
        self.counter(
            &mut out,
            "walletd_http_idempotency_cache_hits_total",
            "retries answered from the Redis response cache",
            &self.idempotency_cache_hits,
        );
        self.jwks_render(&mut out);
        out
    }

    /// Only with `--jwks-url` (a key set has been fetched).
    fn jwks_render(&self, out: &mut String) {
        let fetched_at_ms = self.jwks_fetched_at_ms.load(Ordering::Relaxed);
        if fetched_at_ms == 0 {
            return;
        }
        self.counter(out, "walletd_http_jwks_refreshes_total", "JWK set fetches put in use", &self.jwks_refreshes);
        self.counter(
            out,
            "walletd_http_jwks_refresh_failures_total",
            "JWK set fetches that failed (the keys in use were kept)",
            &self.jwks_refresh_failures,
        );
        let age_s = crate::ids::now_ms().saturating_sub(fetched_at_ms) as f64 / 1000.0;
        let keys = self.jwks_keys.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP walletd_http_jwks_age_seconds Time since the JWK set in use was fetched.\n\
             # TYPE walletd_http_jwks_age_seconds gauge\nwalletd_http_jwks_age_seconds {age_s}"
        );
        let _ = writeln!(
            out,
            "# HELP walletd_http_jwks_keys Usable keys in the JWK set in use.\n\
             # TYPE walletd_http_jwks_keys gauge\nwalletd_http_jwks_keys {keys}"
        );
    }

    fn counter(&self, out: &mut String, name: &str, help: &str, value: &AtomicU64) {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_red_per_route() {
        let metrics = Metrics::default();
        metrics.request_record("/v1/transfers", "POST", 201, Duration::from_micros(700));
        metrics.request_record("/v1/transfers", "POST", 422, Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("walletd_http_requests_total{route=\"/v1/transfers\",method=\"POST\",status=\"201\"} 1"));
        assert!(text.contains("walletd_http_requests_total{route=\"/v1/transfers\",method=\"POST\",status=\"422\"} 1"));
        assert!(text.contains(
            "walletd_http_request_duration_seconds_bucket{route=\"/v1/transfers\",method=\"POST\",le=\"0.001\"} 1"
        ));
        assert!(text.contains("walletd_http_request_duration_seconds_count{route=\"/v1/transfers\",method=\"POST\"} 2"));
    }

    #[test]
    fn jwks_metrics_appear_once_a_set_is_fetched() {
        let metrics = Metrics::default();
        assert!(!metrics.render().contains("walletd_http_jwks"));
        metrics.jwks_refresh_record(2);
        metrics.jwks_refresh_failure_count();
        let text = metrics.render();
        assert!(text.contains("walletd_http_jwks_refreshes_total 1\n"), "{text}");
        assert!(text.contains("walletd_http_jwks_refresh_failures_total 1\n"));
        assert!(text.contains("walletd_http_jwks_keys 2\n"));
        assert!(text.contains("# TYPE walletd_http_jwks_age_seconds gauge\nwalletd_http_jwks_age_seconds "));
    }
}
