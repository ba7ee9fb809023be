//! Per-user rate limits: GCRA (the generic cell rate algorithm), in one Redis Lua script when a
//! Redis URL is given, so every gateway replica shares one limit per user, or in process.
//!
//! GCRA keeps one number per user, the theoretical arrival time (TAT): each allowed request
//! pushes it `interval` (1 / rate) later; a request is refused while `TAT − now` would exceed
//! `interval × burst`, and the wait until it would not is the `Retry-After`. The Redis script
//! reads the server's clock (`TIME`), so replicas' clocks do not matter, and runs atomically.
//! When Redis fails (down, slow past `redis_timeout`), `RedisDown` decides: `local` (the
//! default) falls back to this process's own limiter — still a limit, per replica; `open`
//! allows; `closed` refuses with 503. Money never depends on this: idempotency is exact
//! without Redis.

use crate::metrics::Metrics;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do when Redis cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisDown {
    /// Limit in this process instead (per replica).
    Local,
    /// Allow every request.
    Open,
    /// Refuse every request with 503 `rate_limiter_unavailable`.
    Closed,
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Requests per second per user, sustained.
    pub rate_per_s: f64,
    /// Requests a user may make at once after being idle.
    pub burst: u32,
}

impl RateLimit {
    fn interval_us(self) -> u64 {
        assert!(self.rate_per_s > 0.0, "a positive rate");
        ((1e6 / self.rate_per_s).round() as u64).max(1)
    }

    fn tolerance_us(self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1))
    }
}

/// The decision on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; retry after this long.
    Deny {
        retry_after: Duration,
    },
    /// Redis failed and the mode is `closed`.
    Unavailable,
}

/// One GCRA step on a stored TAT; returns the decision and the TAT to store.
pub fn gcra(limit: RateLimit, tat_us: Option<u64>, now_us: u64) -> (Decision, Option<u64>) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let tat_new = tat + limit.interval_us();
    let allow_at = tat_new.saturating_sub(limit.tolerance_us());
    if now_us < allow_at {
        return (Decision::Deny { retry_after: Duration::from_micros(allow_at - now_us) }, None);
    }
    assert!(tat_new > now_us);
    (Decision::Allow, Some(tat_new))
}

/// The in-process limiter: a TAT per user, pruned of idle users as it grows.
struct Local {
    tats: Mutex<HashMap<String, u64>>,
    started: Instant,
}

/// Users tracked in process before idle ones are pruned.
const LOCAL_USERS_MAX: usize = 100_000;

impl Local {
    fn check(&self, limit: RateLimit, user: &str) -> Decision {
        let now_us = self.started.elapsed().as_micros() as u64 + 1;
        let mut tats = self.tats.lock().unwrap_or_else(|poison| poison.into_inner());
        let (decision, store) = gcra(limit, tats.get(user).copied(), now_us);
        if let Some(tat) = store {
            if tats.len() >= LOCAL_USERS_MAX && !tats.contains_key(user) {
                tats.retain(|_, tat| *tat > now_us);
            }
            tats.insert(user.to_string(), tat);
        }
        decision
    }
}

/// GCRA in Redis. KEYS[1] = the user's key; ARGV = interval µs, tolerance µs. Returns
/// {1, 0} to allow or {0, wait µs}. Lua numbers are doubles: µs since 1970 fit in 2⁵³.
const GCRA_SCRIPT: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local tat_new = tat + interval
local allow_at = tat_new - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', tat_new), 'PX', math.ceil((tat_new - now) / 1000) + 1)
return {1, 0}
"#;

pub struct Limiter {
    limit: Option<RateLimit>,
    local: Local,
    redis: Option<RedisLimiter>,
    down: RedisDown,
    metrics: Arc<Metrics>,
}

struct RedisLimiter {
    redis: Arc<crate::redis_conn::Redis>,
    script: redis::Script,
    prefix: String,
}

impl Limiter {
    /// `limit` None: no limit at all.
    pub fn new(
        limit: Option<RateLimit>,
        redis: Option<Arc<crate::redis_conn::Redis>>,
        down: RedisDown,
        metrics: Arc<Metrics>,
    ) -> Limiter {
        Limiter {
            limit,
            local: Local { tats: Mutex::new(HashMap::new()), started: Instant::now() },
            redis: redis.map(|redis| RedisLimiter {
                redis,
                script: redis::Script::new(GCRA_SCRIPT),
                prefix: "walletd:rl:".into(),
            }),
            down,
            metrics,
        }
    }

    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    pub async fn check(&self, user: &str) -> Decision {
        let Some(limit) = self.limit else { return Decision::Allow };
        let Some(redis) = &self.redis else { return self.local.check(limit, user) };
        match redis_check(redis, limit, user).await {
            Some(decision) => decision,
            None => {
                self.metrics.rate_limit_fallback_count();
                match self.down {
                    RedisDown::Local => self.local.check(limit, user),
                    RedisDown::Open => Decision::Allow,
                    RedisDown::Closed => Decision::Unavailable,
                }
            }
        }
    }
}

/// The Redis decision, or None when Redis failed.
async fn redis_check(redis: &RedisLimiter, limit: RateLimit, user: &str) -> Option<Decision> {
    let key = format!("{}{}", redis.prefix, blake3::hash(user.as_bytes()).to_hex());
    let (interval, tolerance) = (limit.interval_us(), limit.tolerance_us());
    let script = &redis.script;
    let reply: (i64, i64) = redis
        .redis
        .run(|mut connection: ConnectionManager| async move {
            script.key(key).arg(interval).arg(tolerance).invoke_async(&mut connection).await
        })
        .await?;
    Some(match reply {
        (1, _) => Decision::Allow,
        (_, wait_us) => Decision::Deny { retry_after: Duration::from_micros(wait_us.max(1) as u64) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let limit = RateLimit { rate_per_s: 10.0, burst: 3 };
        let mut tat = None;
        let now = 1_000_000;
        for _ in 0..3 {
            let (decision, stored) = gcra(limit, tat, now);
            assert_eq!(decision, Decision::Allow);
            tat = stored;
        }
        let (decision, _) = gcra(limit, tat, now);
        assert_eq!(decision, Decision::Deny { retry_after: Duration::from_millis(100) });
        let (decision, _) = gcra(limit, tat, now + 100_000);
        assert_eq!(decision, Decision::Allow);
    }

    #[test]
    fn the_local_limiter_keeps_users_apart() {
        let local = Local { tats: Mutex::new(HashMap::new()), started: Instant::now() };
        let limit = RateLimit { rate_per_s: 0.001, burst: 1 };
        assert_eq!(local.check(limit, "alice"), Decision::Allow);
        assert!(matches!(local.check(limit, "alice"), Decision::Deny { .. }));
        assert_eq!(local.check(limit, "bob"), Decision::Allow);
    }
}
