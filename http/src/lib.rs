//! walletd-http: the HTTP/JSON wallet API, a client of the engine's binary protocol like any
//! other upstream gateway.
//!
//! Async at the edge, threads in the engine: axum handlers on tokio parse, authorise and call
//! one domain function; `engine` bridges them to the engine through
//! `walletd_gateway::AsyncClient`, which coalesces concurrent requests into large frames on
//! the gateway's own runtime (no threads of its own). The engine is the only state that matters: wallet ownership lives in the accounts,
//! idempotency is the engine's own (ids derived from the caller's keys), and Redis only shares
//! rate limits and caches responses, so losing it never loses or duplicates money.
//!
//! `walletd http` runs the gateway alone; `walletd serve` embeds the same `start` on its own
//! runtime (`embedded_start`). docs/HTTP.md documents every endpoint and error code.

pub mod amount;
pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod codes;
pub mod currency;
pub mod domain;
pub mod engine;
pub mod error;
pub mod history;
pub mod ids;
pub mod jwks;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod redis_conn;
pub mod render;
pub mod routes;
pub mod trace;

use crate::auth::Verifier;
use crate::currency::Currencies;
use crate::engine::{Engine, EngineOptions};
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, RateLimit, RedisDown};
use crate::redis_conn::Redis;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use error::ApiError;

/// Everything a gateway is configured with.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub listen: SocketAddr,
    pub engine: EngineOptions,
    pub currencies: Currencies,
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    pub rate_limit: Option<RateLimit>,
    pub redis_down: RedisDown,
    /// How long Redis keeps a keyed response (the retention of the response cache).
    pub idempotency_retention_s: u64,
    /// Largest request body.
    pub body_size_max_bytes: usize,
    /// The PostgreSQL database of the history projection (`--history-url`); without it the
    /// history routes answer `history_not_configured` and too-old retries are refused.
    pub history_url: Option<String>,
    pub history_connections_max: usize,
}

/// The gateway's shared state: what every handler reads.
pub struct Gateway {
    pub engine: Engine,
    pub currencies: Currencies,
    pub verifier: Verifier,
    pub limiter: Limiter,
    pub cache: Option<Arc<Redis>>,
    /// The history projection's readers, with `--history-url`.
    pub history: Option<walletd_history::query::History>,
    pub metrics: Arc<Metrics>,
    pub options: GatewayOptions,
}

/// A running gateway.
pub struct Running {
    pub local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    engine: Option<Engine>,
    /// The task that keeps the `--jwks-url` key set fresh.
    jwks_refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and closes the engine connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(refresher) = self.jwks_refresher.take() {
            refresher.abort();
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(engine) = self.engine.take() {
            engine.close();
        }
    }
}

/// Fetches the JWK set URL (if any), binds, connects the bridge (lazily) and serves. Call from
/// a tokio runtime.
pub async fn start(options: GatewayOptions, mut verifier: Verifier) -> Result<Running, HttpError> {
    let metrics = Arc::new(Metrics::default());
    let mut jwks_refresher = TaskAbortOnDrop(verifier.jwks_url_start(Arc::clone(&metrics)).await?);
    let redis = match &options.redis_url {
        Some(url) => Some(Arc::new(Redis::new(url, options.redis_timeout, Arc::clone(&metrics))?)),
        None => None,
    };
    let limiter = Limiter::new(options.rate_limit, redis.clone(), options.redis_down, Arc::clone(&metrics));
    let history = match &options.history_url {
        Some(url) => Some(history::history_open(url, options.history_connections_max)?),
        None => None,
    };
    if let Some(history) = history.clone() {
        // Not a condition to start: the projection may create the schema later. Said once.
        tokio::spawn(async move {
            match history.schema_check().await {
                Ok(()) => tracing::info!("the history database is readable"),
                Err(error) => tracing::warn!(%error, "the history database cannot be read yet"),
            }
        });
    }
    let engine = Engine::start(options.engine.clone(), Arc::clone(&metrics));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| HttpError::Bind { addr: options.listen.to_string(), source })?;
    let local_addr =
        listener.local_addr().map_err(|source| HttpError::Bind { addr: options.listen.to_string(), source })?;
    let gateway = Arc::new(Gateway {
        engine: engine.clone(),
        currencies: options.currencies.clone(),
        verifier,
        limiter,
        cache: redis,
        history,
        metrics,
        options,
    });
    let app = openapi::app(Arc::clone(&gateway));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(error) = served.await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    });
    Ok(Running {
        local_addr,
        stop: Some(stop),
        server: Some(server),
        engine: Some(engine),
        jwks_refresher: jwks_refresher.0.take(),
    })
}

/// A task aborted when dropped: a start that fails part-way leaves no refresher behind.
struct TaskAbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for TaskAbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A gateway on its own runtime threads, for embedding in a process that is not async
/// (`walletd serve`).
pub struct Embedded {
    pub local_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<Running>,
}

impl Embedded {
    pub fn stop(mut self) {
        if let (Some(runtime), Some(running)) = (self.runtime.take(), self.running.take()) {
            runtime.block_on(running.stop());
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

pub fn embedded_start(
    options: GatewayOptions,
    verifier: Verifier,
    worker_threads: usize,
) -> Result<Embedded, HttpError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|source| HttpError::Io { path: "tokio runtime".into(), source })?;
    let running = runtime.block_on(start(options, verifier))?;
    Ok(Embedded { local_addr: running.local_addr, runtime: Some(runtime), running: Some(running) })
}
