//! The command line: `walletd http` (the gateway alone, against an engine at `--engine`),
//! `walletd http token` (mint a development token), `walletd http openapi` (print the
//! document), `walletd http bench` (the HTTP load generator), and the flags `walletd serve`
//! embeds the gateway with. Output for people goes to stderr, so a process whose stdout a
//! test reads and then closes never fails on a write.

use crate::auth::{dev_secret_ensure, secret_read, token_mint, Verifier};
use crate::currency::{Currencies, CURRENCIES_DEFAULT};
use crate::engine::EngineOptions;
use crate::error::HttpError;
use crate::jwks::JwksUrlOptions;
use crate::ratelimit::{RateLimit, RedisDown};
use crate::GatewayOptions;
use clap::{Args, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The gateway's flags that `walletd serve` shares.
#[derive(Args, Clone, Debug)]
pub struct GatewayFlags {
    /// Currencies as CODE:LEDGER:SCALE, comma-separated.
    #[arg(long, default_value = CURRENCIES_DEFAULT)]
    pub currencies: String,
    /// HS256 secret file. With none of this, --jwks-file and --jwks-url, a development secret
    /// is made.
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWK set file with RS256/ES256 public keys.
    #[arg(long)]
    pub jwks_file: Option<PathBuf>,
    /// JWK set URL (http:// or https://) of the identity provider: fetched at start (the
    /// gateway does not start without it) and kept fresh.
    #[arg(long)]
    pub jwks_url: Option<String>,
    /// Seconds between fetches of --jwks-url (sooner if the answer's Cache-Control max-age
    /// says so).
    #[arg(long, default_value_t = 300)]
    pub jwks_refresh_s: u64,
    /// Least seconds between two fetches of --jwks-url made because a token names an unknown
    /// kid: a flood of made-up kids costs the provider one request per interval.
    #[arg(long, default_value_t = 10)]
    pub jwks_refetch_min_s: u64,
    /// Longest one fetch of --jwks-url may take; a request meeting an unknown kid waits at most
    /// this long.
    #[arg(long, default_value_t = 2000)]
    pub jwks_timeout_ms: u64,
    /// For an https --jwks-url: trust only the CA certificates of this PEM file (a private
    /// identity provider's CA), not the system's.
    #[arg(long)]
    pub jwks_ca_file: Option<PathBuf>,
    /// The issuer tokens must name (iss).
    #[arg(long, default_value = "walletd-dev")]
    pub jwt_issuer: String,
    /// The audience tokens must name (aud).
    #[arg(long, default_value = "walletd")]
    pub jwt_audience: String,
    /// Where the development secret is kept (default: beside the data, or ./walletd-http-dev-secret).
    #[arg(long)]
    pub dev_secret_file: Option<PathBuf>,
    /// Redis for shared rate limits and the response cache, e.g. redis://127.0.0.1:6379/.
    /// Without it, limits are per process and nothing is cached; idempotency is exact either way.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// A Redis call slower than this counts as failed.
    #[arg(long, default_value_t = 100)]
    pub redis_timeout_ms: u64,
    /// Requests per second per user (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    pub rate_limit_per_s: f64,
    /// Requests a user may make at once after being idle.
    #[arg(long, default_value_t = 20)]
    pub rate_limit_burst: u32,
    /// When Redis fails: limit in process (local), allow (open) or refuse (closed).
    #[arg(long, value_enum, default_value = "local")]
    pub rate_limit_redis_down: RedisDown,
    /// Seconds Redis keeps a keyed response for retries.
    #[arg(long, default_value_t = 86_400)]
    pub idempotency_retention_s: u64,
    /// Engine frames sent and not yet answered, at most; while that many are out, requests
    /// fill the next frames.
    #[arg(long, default_value_t = 4, alias = "http-dispatchers")]
    pub http_frames_in_flight: u32,
    /// Tokio worker threads of the gateway.
    #[arg(long, default_value_t = 2)]
    pub http_worker_threads: usize,
    /// The history projection's PostgreSQL (what `walletd project postgres --database-url`
    /// writes), as a URL or libpq string: serves wallet histories, transfers older than the
    /// engine's window, and the original outcome of retries too old for it. Without it those
    /// answer `history_not_configured` (and too-old retries `idempotency_window_passed`).
    #[arg(long)]
    pub history_url: Option<String>,
    /// PostgreSQL sessions the gateway keeps at most for history reads.
    #[arg(long, default_value_t = crate::history::HISTORY_CONNECTIONS_DEFAULT)]
    pub history_connections: usize,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HttpArgs {
    #[command(subcommand)]
    pub command: Option<HttpCommand>,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The engine's binary protocol address; for a cluster, members' client addresses,
    /// comma-separated or repeated: the gateway follows `not_leader` to the leader and, when
    /// one cannot be reached, tries the next.
    #[arg(long, default_value = "127.0.0.1:4100", value_delimiter = ',', required = true)]
    pub engine: Vec<SocketAddr>,
    #[command(flatten)]
    pub gateway: GatewayFlags,
}

#[derive(Subcommand, Debug)]
pub enum HttpCommand {
    /// Print an HS256 token signed with a secret file (the development secret by default).
    Token(TokenArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Load generator over HTTP.
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long)]
    pub sub: String,
    /// Scopes, e.g. operator or operator:deposits (repeatable).
    #[arg(long)]
    pub scope: Vec<String>,
    #[arg(long, default_value_t = 3600)]
    pub ttl_s: u64,
    #[arg(long, default_value = "walletd-http-dev-secret")]
    pub secret_file: PathBuf,
    #[arg(long, default_value = "walletd-dev")]
    pub issuer: String,
    #[arg(long, default_value = "walletd")]
    pub audience: String,
}

/// A development secret in use: printed at start so a newcomer can call the API at once.
pub struct DevSecret {
    pub path: PathBuf,
    pub secret: Vec<u8>,
    pub made: bool,
}

/// Options and verifier from the flags; `dev_secret_default` is where a development secret goes.
pub fn gateway_build(
    flags: &GatewayFlags,
    listen: SocketAddr,
    engine: SocketAddr,
    dev_secret_default: &Path,
) -> Result<(GatewayOptions, Verifier, Option<DevSecret>), HttpError> {
    let mut verifier = Verifier::new(&flags.jwt_issuer, &flags.jwt_audience);
    let mut dev = None;
    if let Some(path) = &flags.jwt_secret_file {
        verifier = verifier.with_secret(&secret_read(path)?);
    }
    if let Some(path) = &flags.jwks_file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| HttpError::Io { path: path.display().to_string(), source })?;
        verifier = verifier.with_jwks(&text)?;
    }
    if flags.jwks_ca_file.is_some() && flags.jwks_url.is_none() {
        return Err(HttpError::Config("--jwks-ca-file needs an https --jwks-url".into()));
    }
    if let Some(url) = &flags.jwks_url {
        let options = JwksUrlOptions {
            url: url.clone(),
            refresh: Duration::from_secs(flags.jwks_refresh_s),
            refetch_interval_min: Duration::from_secs(flags.jwks_refetch_min_s),
            fetch_timeout: Duration::from_millis(flags.jwks_timeout_ms),
            ca_file: flags.jwks_ca_file.clone(),
        };
        options.check().map_err(HttpError::Config)?;
        verifier = verifier.with_jwks_url(options);
    }
    if flags.jwt_secret_file.is_none() && flags.jwks_file.is_none() && flags.jwks_url.is_none() {
        let path = flags.dev_secret_file.clone().unwrap_or_else(|| dev_secret_default.to_path_buf());
        let (secret, made) = dev_secret_ensure(&path)?;
        verifier = verifier.with_secret(&secret);
        dev = Some(DevSecret { path, secret, made });
    }
    let rate_limit = (flags.rate_limit_per_s > 0.0)
        .then_some(RateLimit { rate_per_s: flags.rate_limit_per_s, burst: flags.rate_limit_burst });
    let mut engine_options = EngineOptions::new(engine);
    engine_options.frames_in_flight_max = flags.http_frames_in_flight.max(1);
    let options = GatewayOptions {
        listen,
        engine: engine_options,
        currencies: Currencies::parse(&flags.currencies)?,
        redis_url: flags.redis_url.clone(),
        redis_timeout: Duration::from_millis(flags.redis_timeout_ms.max(1)),
        rate_limit,
        redis_down: flags.rate_limit_redis_down,
        idempotency_retention_s: flags.idempotency_retention_s.max(1),
        body_size_max_bytes: 4 << 20,
        history_url: flags.history_url.clone(),
        history_connections_max: flags.history_connections.max(1),
    };
    Ok((options, verifier, dev))
}

/// What a person needs at start: where it listens, how limits are shared, and a token.
pub fn banner_print(local_addr: SocketAddr, options: &GatewayOptions, flags: &GatewayFlags, dev: Option<&DevSecret>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "walletd http: the wallet API on http://{local_addr} (engine {}), docs on http://{local_addr}/docs",
        options.engine.members.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
    );
    if let Some(url) = &flags.jwks_url {
        let _ = writeln!(
            err,
            "walletd http: JWT keys from {url}, fetched again every {} s (or the answer's max-age) and on an unknown kid (at most every {} s)",
            flags.jwks_refresh_s, flags.jwks_refetch_min_s
        );
    }
    match (&options.redis_url, options.rate_limit) {
        (_, None) => {
            let _ = writeln!(err, "walletd http: no rate limit");
        }
        (Some(url), Some(limit)) => {
            let _ = writeln!(
                err,
                "walletd http: rate limit {}/s per user (burst {}) shared through Redis at {url}; if Redis fails: {:?}",
                limit.rate_per_s, limit.burst, options.redis_down
            );
        }
        (None, Some(limit)) => {
            let _ = writeln!(
                err,
                "walletd http: no Redis URL: rate limit {}/s per user (burst {}) kept in this process only, no response cache",
                limit.rate_per_s, limit.burst
            );
        }
    }
    if options.history_url.is_some() {
        let _ = writeln!(
            err,
            "walletd http: history read from PostgreSQL (--history-url), as far as the projection has come"
        );
    } else {
        let _ = writeln!(
            err,
            "walletd http: no --history-url: wallet histories answer history_not_configured, and retries older than the engine's window are refused"
        );
    }
    if let Some(dev) = dev {
        let made = if dev.made { "made" } else { "kept" };
        let token = token_mint(&dev.secret, &flags.jwt_issuer, &flags.jwt_audience, "alice", &[], 86_400);
        let operator = token_mint(&dev.secret, &flags.jwt_issuer, &flags.jwt_audience, "ops", &["operator"], 86_400);
        let _ = writeln!(err, "walletd http: development signing key {made} at {} (HS256; pass --jwt-secret-file, --jwks-file or --jwks-url in production)", dev.path.display());
        let _ = writeln!(err, "walletd http: a token for user alice (24 h):\n  export TOKEN={token}");
        let _ = writeln!(err, "walletd http: an operator token (24 h):\n  export OPS={operator}");
        let _ = writeln!(
            err,
            "walletd http: try: curl -s -H \"Authorization: Bearer $TOKEN\" -d '{{\"currency\":\"USD\"}}' -H 'Content-Type: application/json' http://{local_addr}/v1/wallets"
        );
    }
}

/// `walletd http …`.
pub fn http_command(args: HttpArgs) -> Result<(), HttpError> {
    match args.command {
        Some(HttpCommand::Token(token)) => {
            let secret = secret_read(&token.secret_file)?;
            let scopes: Vec<&str> = token.scope.iter().map(String::as_str).collect();
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                token_mint(&secret, &token.issuer, &token.audience, &token.sub, &scopes, token.ttl_s)
            );
            Ok(())
        }
        Some(HttpCommand::Openapi) => {
            let text =
                crate::openapi::document().to_pretty_json().map_err(|error| HttpError::Config(error.to_string()))?;
            let _ = writeln!(std::io::stdout(), "{text}");
            Ok(())
        }
        Some(HttpCommand::Bench(bench)) => crate::bench::bench_command(bench),
        None => serve(args),
    }
}

fn serve(args: HttpArgs) -> Result<(), HttpError> {
    let (mut options, verifier, dev) =
        gateway_build(&args.gateway, args.listen, args.engine[0], Path::new("walletd-http-dev-secret"))?;
    options.engine.members = args.engine.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gateway.http_worker_threads.max(1))
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|source| HttpError::Io { path: "tokio runtime".into(), source })?;
    runtime.block_on(async {
        let running = crate::start(options.clone(), verifier).await?;
        // The one line a supervisor or a test reads: where it listens.
        let _ = writeln!(std::io::stdout(), "walletd http listening on {}", running.local_addr);
        let _ = std::io::stdout().flush();
        banner_print(running.local_addr, &options, &args.gateway, dev.as_ref());
        shutdown_signal().await;
        tracing::info!("stopping the HTTP gateway: finishing requests in flight");
        running.stop().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `walletd serve --http ADDR`: the gateway embedded in the node's process, through the same
/// client path as `walletd http`. `explicit` says whether the address was asked for: the
/// default address being taken only skips the gateway, with a warning.
pub fn serve_embedded(
    listen: SocketAddr,
    explicit: bool,
    engine: SocketAddr,
    data_dir: &Path,
    flags: &GatewayFlags,
) -> Result<Option<crate::Embedded>, HttpError> {
    let (options, verifier, dev) = gateway_build(flags, listen, engine, &data_dir.join("http-dev-secret"))?;
    match crate::embedded_start(options.clone(), verifier, flags.http_worker_threads) {
        Ok(embedded) => {
            banner_print(embedded.local_addr, &options, flags, dev.as_ref());
            Ok(Some(embedded))
        }
        Err(HttpError::Bind { addr, source }) if !explicit => {
            tracing::warn!(%addr, %source, "the HTTP gateway's default address is taken; serving without it (pass --http ADDR)");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}
