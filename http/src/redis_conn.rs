//! One Redis connection shared by the rate limiter and the response cache, made lazily and
//! bounded in time: every call either answers within `timeout` or returns `None`, and while
//! Redis is down a reconnect is tried at most every `RECONNECT_INTERVAL`, so an outage costs a
//! request nothing but a skipped cache and a fallback limit — never a wait.

use crate::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

pub struct Redis {
    url: String,
    client: redis::Client,
    timeout: Duration,
    state: Mutex<State>,
    connecting: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    manager: Option<ConnectionManager>,
    failed_at: Option<Instant>,
}

impl Redis {
    pub fn new(url: &str, timeout: Duration, metrics: Arc<Metrics>) -> Result<Redis, crate::error::HttpError> {
        let client = redis::Client::open(url)
            .map_err(|error| crate::error::HttpError::Redis { url: url.into(), message: error.to_string() })?;
        Ok(Redis {
            url: url.into(),
            client,
            timeout,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one command (or script) on the connection; `None` if Redis failed or was slow.
    pub async fn run<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let manager = self.manager().await?;
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, call(manager)).await;
        let ok = matches!(result, Ok(Ok(_)));
        self.metrics.redis_record(start.elapsed(), ok);
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn manager(&self) -> Option<ConnectionManager> {
        if let Some(manager) = self.state_lock().manager.clone() {
            return Some(manager);
        }
        let _connecting = self.connecting.lock().await;
        {
            let state = self.state_lock();
            if let Some(manager) = state.manager.clone() {
                return Some(manager);
            }
            if state.failed_at.is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL) {
                return None;
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let start = Instant::now();
        let connected =
            tokio::time::timeout(self.timeout * 2, ConnectionManager::new_with_config(self.client.clone(), config))
                .await;
        let mut state = self.state_lock();
        match connected {
            Ok(Ok(manager)) => {
                tracing::info!(url = %self.url, "connected to Redis");
                state.manager = Some(manager.clone());
                state.failed_at = None;
                Some(manager)
            }
            _ => {
                self.metrics.redis_record(start.elapsed(), false);
                if state.failed_at.is_none() {
                    tracing::warn!(url = %self.url, "Redis is unreachable; rate limits fall back and the response cache is skipped");
                }
                state.failed_at = Some(Instant::now());
                None
            }
        }
    }

    fn state_lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub async fn get(&self, key: String) -> Option<Option<String>> {
        self.run(|mut connection| async move { redis::cmd("GET").arg(key).query_async(&mut connection).await }).await
    }

    pub async fn set_ex(&self, key: String, value: String, ttl_s: u64) -> Option<()> {
        self.run(|mut connection| async move {
            redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_s).query_async(&mut connection).await
        })
        .await
    }

    pub async fn ping(&self) -> bool {
        let pong: Option<String> =
            self.run(|mut connection| async move { redis::cmd("PING").query_async(&mut connection).await }).await;
        pong.is_some()
    }
}
