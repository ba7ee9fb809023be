//! `walletd http bench`: the HTTP load generator, the sibling of `walletd bench`. It signs real
//! tokens (HS256, the gateway's secret file), creates a wallet per user, funds them through an
//! operator deposit, then sends transfers from `--connections` keep-alive connections, each in
//! a closed loop (one request out at a time per connection), with a fresh UUIDv7 idempotency
//! key per transfer (time-bearing, so the gateway needs no anchor account). `--batch N` uses
//! the batch endpoint with N transfers per request instead. Latency is from send to the whole
//! response, into an HDR histogram. At the end every wallet is read back and must hold exactly
//! its funding plus what it received minus what it sent, and the money must sum to the funding.
//! The gateway's rate limit must not bind: run it with `--rate-limit-per-s 0`.

use crate::auth::{secret_read, token_mint};
use crate::error::HttpError;
use crate::ids::{id_format, now_ms, random_u128, uuid_v7};
use clap::Args;
use hdrhistogram::Histogram;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The gateway, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The gateway's HS256 secret file.
    #[arg(long, default_value = "walletd-http-dev-secret")]
    pub secret_file: PathBuf,
    #[arg(long, default_value = "walletd-dev")]
    pub issuer: String,
    #[arg(long, default_value = "walletd")]
    pub audience: String,
    /// Users (one USD wallet each).
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Transfers to send.
    #[arg(long, default_value_t = 100_000)]
    pub transfers: u64,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Transfers per request through /v1/transfers/batch (0: one per request, /v1/transfers).
    #[arg(long, default_value_t = 0)]
    pub batch: u32,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A keep-alive HTTP/1.1 connection: just enough client for the benchmark. It reuses its
/// request buffer, so the load it generates costs the shared cores little.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
    host: String,
    request: Vec<u8>,
    line: String,
}

impl HttpConn {
    pub async fn connect(host: &str) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { reader: BufReader::new(stream), host: host.into(), request: Vec::new(), line: String::new() })
    }

    /// Sends one request and reads its response: (status, body).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let body = body.unwrap_or("");
        self.request.clear();
        let _ = write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.request.extend_from_slice(body.as_bytes());
        self.reader.get_mut().write_all(&self.request).await?;
        let line = &mut self.line;
        line.clear();
        self.reader.read_line(line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io_error("a bad status line"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(line).await? == 0 {
                return Err(io_error("the connection closed mid-response"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| io_error("a bad content-length"))?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn io_error(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn bench_error(message: String) -> HttpError {
    HttpError::Config(format!("bench: {message}"))
}

struct User {
    token: String,
    wallet: String,
}

/// Funding per wallet, in cents: enough that no transfer of 1 cent ever fails.
const FUNDING_MINOR: u64 = 100_000_000;

pub fn bench_command(args: BenchArgs) -> Result<(), HttpError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| HttpError::Io { path: "tokio runtime".into(), source })?;
    runtime.block_on(bench_run(args))
}

async fn bench_run(args: BenchArgs) -> Result<(), HttpError> {
    assert!(args.users >= 2, "at least two users");
    let host = args.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let secret = secret_read(&args.secret_file)?;
    let operator = token_mint(&secret, &args.issuer, &args.audience, "bench-operator", &["operator"], 86_400);
    let run_tag = format!("{:08x}", random_u128() as u32);
    let setup_start = Instant::now();
    let users = users_setup(&args, &host, &secret, &operator, &run_tag).await?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{} funded wallets in {:.2} s; sending the transfers",
            users.len(),
            setup_start.elapsed().as_secs_f64()
        );
        let _ = out.flush();
    }
    let users = Arc::new(users);
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..users.len()).map(|_| AtomicU64::new(0)).collect());
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..users.len()).map(|_| AtomicU64::new(0)).collect());
    let histogram =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")));
    let next = Arc::new(AtomicU64::new(0));
    let per_request = u64::from(args.batch.max(1));
    let requests = args.transfers.div_ceil(per_request);
    let start = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..args.connections {
        let lane_state =
            (Arc::clone(&users), Arc::clone(&sent), Arc::clone(&received), Arc::clone(&histogram), Arc::clone(&next));
        let host = host.clone();
        let batch = args.batch;
        lanes.push(tokio::spawn(async move { lane_run(lane, &host, batch, requests, lane_state).await }));
    }
    let mut failures = 0u64;
    for lane in lanes {
        failures += lane.await.map_err(|error| bench_error(error.to_string()))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let transferred: u64 = sent.iter().map(|count| count.load(Ordering::Relaxed)).sum();
    verify(&host, &users, &sent, &received).await?;
    let histogram = histogram.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
    report(&args, requests, transferred, failures, seconds, &histogram)
}

async fn users_setup(
    args: &BenchArgs,
    host: &str,
    secret: &[u8],
    operator: &str,
    run_tag: &str,
) -> Result<Vec<User>, HttpError> {
    let mut conn = HttpConn::connect(host).await.map_err(|error| bench_error(format!("connect {host}: {error}")))?;
    let mut users = Vec::with_capacity(args.users as usize);
    for index in 0..args.users {
        let token = token_mint(secret, &args.issuer, &args.audience, &format!("bench-{run_tag}-{index}"), &[], 86_400);
        let (status, body) = conn
            .send("POST", "/v1/wallets", &token, Some(r#"{"currency":"USD"}"#))
            .await
            .map_err(|e| bench_error(e.to_string()))?;
        if status != 201 {
            return Err(bench_error(format!("creating a wallet: {status} {body}")));
        }
        let wallet: serde_json::Value = serde_json::from_str(&body).map_err(|e| bench_error(e.to_string()))?;
        let wallet = wallet["id"].as_str().unwrap_or_default().to_string();
        let deposit = format!(
            r#"{{"wallet_id":"{wallet}","amount":"{}","currency":"USD","idempotency_key":"fund-{run_tag}-{index}"}}"#,
            crate::amount::amount_format(u128::from(FUNDING_MINOR), 2)
        );
        let (status, body) = conn
            .send("POST", "/v1/deposits", operator, Some(&deposit))
            .await
            .map_err(|e| bench_error(e.to_string()))?;
        if status != 201 {
            return Err(bench_error(format!("funding a wallet: {status} {body}")));
        }
        users.push(User { token, wallet });
    }
    Ok(users)
}

type LaneState = (Arc<Vec<User>>, Arc<Vec<AtomicU64>>, Arc<Vec<AtomicU64>>, Arc<Mutex<Histogram<u64>>>, Arc<AtomicU64>);

/// One connection's closed loop; returns the transfers refused (there should be none).
async fn lane_run(lane: u32, host: &str, batch: u32, requests: u64, state: LaneState) -> Result<u64, HttpError> {
    let (users, sent, received, histogram, next) = state;
    let mut conn = HttpConn::connect(host).await.map_err(|error| bench_error(format!("connect {host}: {error}")))?;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut seed = random_u128() as u64 | 1;
    let mut failures = 0;
    let mut body = String::new();
    let count = users.len() as u64;
    while next.fetch_add(1, Ordering::Relaxed) < requests {
        // Every item of a request comes from one sender (one caller's token).
        let sender = (xorshift(&mut seed) % count) as usize;
        let receivers: Vec<usize> = (0..batch.max(1))
            .map(|_| {
                let receiver = (xorshift(&mut seed) % (count - 1)) as usize;
                if receiver >= sender {
                    receiver + 1
                } else {
                    receiver
                }
            })
            .collect();
        request_body(&users, sender, &receivers, batch, &mut body);
        let path = if batch == 0 { "/v1/transfers" } else { "/v1/transfers/batch" };
        let started = Instant::now();
        let (status, response) = conn
            .send("POST", path, &users[sender].token, Some(&body))
            .await
            .map_err(|e| bench_error(format!("lane {lane}: {e}")))?;
        let _ = local.record(started.elapsed().as_micros().max(1) as u64);
        let applied = applied_count(status, &response, batch);
        failures += receivers.len() as u64 - applied.len() as u64;
        for index in applied {
            sent[sender].fetch_add(1, Ordering::Relaxed);
            received[receivers[index]].fetch_add(1, Ordering::Relaxed);
        }
    }
    histogram.lock().unwrap_or_else(|poison| poison.into_inner()).add(&local).expect("same bounds");
    Ok(failures)
}

/// Writes the request's body into `body` (cleared first).
fn request_body(users: &[User], sender: usize, receivers: &[usize], batch: u32, body: &mut String) {
    use std::fmt::Write as _;
    body.clear();
    if batch != 0 {
        body.push_str(r#"{"transfers":["#);
    }
    for (position, &receiver) in receivers.iter().enumerate() {
        if position > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"sender_id":"{}","receiver_id":"{}","amount":"0.01","idempotency_key":"{}"}}"#,
            users[sender].wallet,
            users[receiver].wallet,
            id_format(uuid_v7(now_ms()))
        );
    }
    if batch != 0 {
        body.push_str("]}");
    }
}

/// What the benchmark reads of a batch response: each item's status (the other fields are
/// skipped by the parser without being stored).
#[derive(serde::Deserialize)]
struct BatchStatuses {
    results: Vec<ItemStatus>,
}

#[derive(serde::Deserialize)]
struct ItemStatus {
    status: u16,
}

/// The indexes of the items that were applied.
fn applied_count(status: u16, response: &str, batch: u32) -> Vec<usize> {
    if batch == 0 {
        return if status == 201 { vec![0] } else { Vec::new() };
    }
    let Ok(statuses) = serde_json::from_str::<BatchStatuses>(response) else { return Vec::new() };
    statuses.results.iter().enumerate().filter(|(_, item)| item.status == 201).map(|(index, _)| index).collect()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Every wallet holds its funding plus what it received minus what it sent.
async fn verify(host: &str, users: &[User], sent: &[AtomicU64], received: &[AtomicU64]) -> Result<(), HttpError> {
    let mut conn = HttpConn::connect(host).await.map_err(|error| bench_error(error.to_string()))?;
    let mut total: u128 = 0;
    for (index, user) in users.iter().enumerate() {
        let (status, body) = conn
            .send("GET", &format!("/v1/wallets/{}", user.wallet), &user.token, None)
            .await
            .map_err(|e| bench_error(e.to_string()))?;
        if status != 200 {
            return Err(bench_error(format!("reading a wallet back: {status} {body}")));
        }
        let wallet: serde_json::Value = serde_json::from_str(&body).map_err(|e| bench_error(e.to_string()))?;
        let balance = crate::amount::amount_parse(wallet["balance"].as_str().unwrap_or(""), 2)
            .map_err(|e| bench_error(e.to_string()))?;
        let expected = u128::from(FUNDING_MINOR) + u128::from(received[index].load(Ordering::Relaxed))
            - u128::from(sent[index].load(Ordering::Relaxed));
        if balance != expected {
            return Err(bench_error(format!("wallet {} holds {balance}, expected {expected}", user.wallet)));
        }
        total += balance;
    }
    if total != u128::from(FUNDING_MINOR) * users.len() as u128 {
        return Err(bench_error(format!("the wallets hold {total} in all, not what was deposited")));
    }
    Ok(())
}

fn report(
    args: &BenchArgs,
    requests: u64,
    transferred: u64,
    failures: u64,
    seconds: f64,
    histogram: &Histogram<u64>,
) -> Result<(), HttpError> {
    let quantile_ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let figures = serde_json::json!({
        "endpoint": if args.batch == 0 { "/v1/transfers" } else { "/v1/transfers/batch" },
        "batch": args.batch,
        "connections": args.connections,
        "users": args.users,
        "requests": requests,
        "transfers": transferred,
        "refused": failures,
        "seconds": seconds,
        "requests_per_second": requests as f64 / seconds,
        "transfers_per_second": transferred as f64 / seconds,
        "latency_ms_p50": quantile_ms(0.5),
        "latency_ms_p99": quantile_ms(0.99),
        "latency_ms_p999": quantile_ms(0.999),
        "latency_ms_max": histogram.max() as f64 / 1000.0,
        "verified": true,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} requests ({} transfers, {failures} refused) in {seconds:.2} s: {:.0} requests/s, {:.0} transfers/s",
        requests,
        transferred,
        requests as f64 / seconds,
        transferred as f64 / seconds
    );
    let _ = writeln!(
        out,
        "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}; balances verified",
        quantile_ms(0.5),
        quantile_ms(0.99),
        quantile_ms(0.999),
        histogram.max() as f64 / 1000.0
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures).expect("serialises"))
            .map_err(|source| HttpError::Io { path: path.display().to_string(), source })?;
    }
    if failures > 0 {
        return Err(bench_error(format!("{failures} transfers were refused")));
    }
    Ok(())
}
