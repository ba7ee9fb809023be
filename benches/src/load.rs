//! `walletd bench`: the end-to-end load generator, modelled on `tigerbeetle benchmark`. It
//! drives a server over the real protocol (a temporary one unless `--addr` names one, started
//! by the `ServerStart` the binary passes in, so this crate needs nothing of the node), measures what a client sees — throughput of the transfer phase and the latency of
//! every request — and then proves that the money went where it was sent.
//!
//! Why it is shaped so:
//! - **Lanes.** The transfer phase runs `connections × in_flight` threads ("lanes"); the lanes of
//!   a connection share one pipelining `Client`, so a connection has `in_flight` requests out at
//!   once. Each lane owns a slice of the transfers, its own seeded generator and its own ids, and
//!   waits for each reply before its next request (closed loop per lane), so a hold's post can go
//!   in the lane's next request, after the hold is acknowledged. Each request is one
//!   `Client::request` frame of exactly the events the lane built: `--batch` means events per
//!   request, never coalesced with another lane's.
//! - **Open loop.** With `--rate`, each lane's requests are due at fixed times, and latency is
//!   measured from the due time, not from the send: a stalled server makes the lanes late, and
//!   the lateness is counted (Gil Tene's coordinated-omission correction).
//! - **Verification is exact.** Every event's result is read back (results are sparse: only the
//!   failures are listed), and each acknowledged event moves the generator's expected balances.
//!   At the end every account is looked up and compared with what it held before the run plus
//!   what the run moved, and the balances must sum to zero. An operating error (a lost
//!   connection) aborts the run instead: the outcome of the requests in flight is then unknown,
//!   and an exact check is impossible.
//! - Floats appear only in rates, ratios and seconds; money is integers.

use crate::workload::{accounts, single_phase, two_phase, Distribution, IdMaker, Picker, Rng};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use walletd_core::command::records_as_bytes;
use walletd_core::{Account, AccountId, CreateAccountResult, CreateTransferResult, EventResult, Operation, Transfer};
use walletd_gateway::protocol::results_decode;
use walletd_gateway::{Client, ClientError, ClientOptions, FrameOperation, EVENT_COUNT_MAX};

/// The most events one request may carry.
pub const BATCH_MAX: u32 = EVENT_COUNT_MAX;
/// Latencies above this are recorded as this (an hour: nothing real waits so long).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the latency histogram keeps.
pub const LATENCY_SIGFIG: u8 = 3;
/// Threads sending requests (`--connections × --in-flight`): the lane index has 12 bits in the
/// transfer ids.
pub const LANES_MAX: u32 = 1 << 12;
/// Verification lists at most this many failures (and counts all of them).
pub const FAILURES_LISTED_MAX: usize = 10;

/// `walletd bench`: create accounts, drive transfers, report throughput and latency, verify.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct BenchArgs {
    /// A running server to benchmark (host:port). Without it a temporary server is started in
    /// this process on 127.0.0.1 (real fsync), and shut down and deleted at the end.
    #[arg(long)]
    pub addr: Option<String>,
    /// Without --addr: the directory under which the temporary server's data directory is
    /// created (and deleted after), to benchmark a particular disk. Default: the system temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Accounts to create (ids 1..=N, ledger 1, no balance constraints).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Transfer events to send, holds and their posts included.
    #[arg(long, default_value_t = 1_000_000)]
    pub transfers: u64,
    /// Events per request, 1..=8189.
    #[arg(long, default_value_t = BATCH_MAX, value_parser = clap::value_parser!(u32).range(1..=i64::from(BATCH_MAX)))]
    pub batch: u32,
    /// TCP connections, one client each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Requests in flight per connection (one thread each, sharing the connection's client).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// How accounts are drawn: uniform, zipf or hot (every transfer credits account 1).
    #[arg(long, default_value = "uniform")]
    pub distribution: Distribution,
    /// Share of new payments that are two-phase: a hold, posted in full by the lane's next
    /// request (0.0..=1.0). The hold and its post each count as one transfer.
    #[arg(long, default_value_t = 0.0, value_parser = ratio_parse)]
    pub two_phase_ratio: f64,
    /// Open loop: send at this many transfers per second in total, each request at its due time,
    /// and measure latency from the due time (no coordinated omission). Default: closed loop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Write the request-latency histogram here in the HdrHistogram .hgrm text format.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write a JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seeds the account draws and amounts, so a run's traffic can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for BenchArgs {
    /// The clap defaults (a test checks that the two agree).
    fn default() -> BenchArgs {
        BenchArgs {
            addr: None,
            data_dir: None,
            accounts: 10_000,
            transfers: 1_000_000,
            batch: BATCH_MAX,
            connections: 1,
            in_flight: 2,
            distribution: Distribution::Uniform,
            two_phase_ratio: 0.0,
            rate: None,
            hgrm: None,
            json: None,
            seed: 1,
        }
    }
}

fn ratio_parse(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|_| format!("{text:?} is not a number: give a ratio like 0.2"))?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!("{ratio} is outside 0.0..=1.0: give the share of payments that are holds"));
    }
    Ok(ratio)
}

/// What stopped a benchmark. Business rejections are not here: they are counted in the report.
#[derive(Debug)]
pub enum BenchError {
    /// The flags do not make a runnable benchmark.
    Args(String),
    /// The temporary server did not start.
    Server(String),
    Connect {
        addr: String,
        error: ClientError,
    },
    /// A request failed: its outcome is unknown, so the run cannot be verified.
    Client {
        addr: String,
        stage: &'static str,
        error: ClientError,
    },
    /// Setting up the accounts was refused (other than `exists`).
    AccountsRefused {
        result: String,
        count: u64,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The run completed, but the balances are not what was sent.
    Verification {
        failures_count: u64,
        first: String,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Args(message) => write!(f, "bench: {message}"),
            BenchError::Server(error) => write!(f, "bench: the temporary server did not start: {error}"),
            BenchError::Connect { addr, error } => {
                write!(
                    f,
                    "bench: cannot connect to walletd at {addr}: {}",
                    walletd_gateway::client::connect_reason(error)
                )
            }
            BenchError::Client { addr, stage, error } => write!(
                f,
                "bench: {stage} against {addr} failed: {error}; the outcome of requests in flight is unknown, \
                 so the run stopped unverified"
            ),
            BenchError::AccountsRefused { result, count } => write!(
                f,
                "bench: the server refused {count} of the accounts with {result}; benchmark on a fresh server, or \
                 one whose accounts 1..=N are plain ledger-1 accounts"
            ),
            BenchError::Io { path, source } => write!(f, "bench: cannot write {}: {source}", path.display()),
            BenchError::Verification { failures_count, first } => write!(
                f,
                "bench: VERIFICATION FAILED with {failures_count} discrepancies, the first: {first} (see the report \
                 above; if this server has other traffic on accounts 1..=N, benchmark a fresh one)"
            ),
        }
    }
}

impl std::error::Error for BenchError {}

/// `walletd bench`: runs, prints the report, writes --hgrm and --json, and fails if the
/// verification did (after writing the files, so a failed run can be looked at).
pub fn bench_command(args: BenchArgs, server_start: ServerStart<'_>) -> Result<(), BenchError> {
    let report = bench_run(&args, server_start)?;
    println!("{report}");
    if let Some(path) = &args.hgrm {
        file_write(path, hgrm_format(&report.histogram).as_bytes())?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("a bench report serialises") + "\n";
        file_write(path, json.as_bytes())?;
    }
    if !report.verification.passed {
        let first = report.verification.failures.first().cloned().unwrap_or_default();
        return Err(BenchError::Verification { failures_count: report.verification.failures_count, first });
    }
    Ok(())
}

fn file_write(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    let io = |source| BenchError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.flush().map_err(io)
}

/// Runs the benchmark and returns its report, verification included. A failed verification is
/// in the report, not an error: `bench_command` turns it into one.
pub fn bench_run(args: &BenchArgs, server_start: ServerStart<'_>) -> Result<BenchReport, BenchError> {
    args_check(args)?;
    match &args.addr {
        Some(addr) => bench_against(addr, args, format!("walletd at {addr}")),
        None => {
            let server = TempServer::start(args, server_start)?;
            let addr = server.addr().to_string();
            let label = format!("in-process server on {addr}, data dir {}", server.dir.display());
            bench_against(&addr, args, label)
            // `server` drops here: shut down, then its directory deleted.
        }
    }
}

fn args_check(args: &BenchArgs) -> Result<(), BenchError> {
    let problems = [
        (args.accounts < 2, "--accounts must be at least 2 (a transfer needs two accounts)".to_string()),
        (args.accounts > 1 << 29, "--accounts must be at most 536870912".to_string()),
        (args.transfers == 0, "--transfers must be at least 1".to_string()),
        (args.batch == 0 || args.batch > BATCH_MAX, format!("--batch must be in 1..={BATCH_MAX}")),
        (args.connections == 0 || args.in_flight == 0, "--connections and --in-flight must be at least 1".into()),
        (
            u64::from(args.connections) * u64::from(args.in_flight) > u64::from(LANES_MAX),
            format!("--connections × --in-flight must be at most {LANES_MAX}"),
        ),
        (!(0.0..=1.0).contains(&args.two_phase_ratio), "--two-phase-ratio must be in 0.0..=1.0".into()),
        (args.rate == Some(0), "--rate must be at least 1 transfer per second".to_string()),
        (
            args.addr.is_some() && args.data_dir.is_some(),
            "--data-dir is for the in-process server only: drop it, or drop --addr".to_string(),
        ),
    ];
    match problems.into_iter().find(|(bad, _)| *bad) {
        Some((_, message)) => Err(BenchError::Args(message)),
        None => Ok(()),
    }
}

/// A running server the bench started: its protocol address, and how to stop it.
pub struct StartedServer {
    pub addr: std::net::SocketAddr,
    pub stop: Box<dyn FnOnce() + Send>,
}

/// How a run that names no `--addr` gets a server: given a fresh, empty data directory and the
/// accounts the run will create. The `walletd` binary passes one that runs the node in its
/// own process (real fsync), as `walletd serve` would.
pub type ServerStart<'a> = &'a dyn Fn(&Path, u64) -> Result<StartedServer, String>;

/// A server on a fresh directory; stopped and deleted when dropped.
struct TempServer {
    server: Option<StartedServer>,
    dir: PathBuf,
}

impl TempServer {
    fn start(args: &BenchArgs, server_start: ServerStart<'_>) -> Result<TempServer, BenchError> {
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
        let dir = parent.join(format!("walletd-bench-{}-{nanos}", std::process::id()));
        let io = |error: std::io::Error| BenchError::Server(format!("{}: {error}", dir.display()));
        std::fs::create_dir_all(&parent).map_err(io)?;
        std::fs::create_dir(&dir).map_err(io)?;
        // Built now, so that a failed start still deletes the directory.
        let mut temp = TempServer { server: None, dir };
        temp.server = Some(server_start(&temp.dir, args.accounts).map_err(BenchError::Server)?);
        Ok(temp)
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().expect("a started server").addr
    }
}

impl Drop for TempServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            (server.stop)();
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not delete the bench server's data directory");
        }
    }
}

/// The outcome of one run; `--json` writes it (less the histogram).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub server: String,
    pub accounts: u64,
    /// Transfer events sent (holds and posts included).
    pub transfers: u64,
    pub batch: u32,
    pub connections: u32,
    pub in_flight: u32,
    pub distribution: &'static str,
    pub two_phase_ratio: f64,
    /// Open-loop target rate, transfers per second; null for closed loop.
    pub rate_per_second: Option<u64>,
    pub seed: u64,
    pub accounts_seconds: f64,
    pub requests: u64,
    pub holds: u64,
    pub posts: u64,
    /// The transfer phase: first request sent to last reply received.
    pub seconds: f64,
    pub throughput_per_second: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub latency_us_mean: f64,
    /// Transfer events whose result was not ok (this workload should have none).
    pub results_not_ok: u64,
    pub results_not_ok_by_code: BTreeMap<String, u64>,
    pub verification: Verification,
    /// Request latencies in microseconds.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.rate_per_second.map_or("closed loop".to_string(), |rate| format!("open loop at {rate}/s"));
        writeln!(f, "server        {}", self.server)?;
        writeln!(f, "accounts      {} in {:.3} s", self.accounts, self.accounts_seconds)?;
        writeln!(
            f,
            "transfers     {} ({} holds, {} posts) in {} requests of <= {} events, {} connection(s) x {} in flight, {}, {}",
            self.transfers,
            self.holds,
            self.posts,
            self.requests,
            self.batch,
            self.connections,
            self.in_flight,
            self.distribution,
            mode
        )?;
        writeln!(f, "throughput    {:.0} transfers/s over {:.3} s", self.throughput_per_second, self.seconds)?;
        writeln!(
            f,
            "latency       p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us (per request)",
            self.latency_us_p50, self.latency_us_p90, self.latency_us_p99, self.latency_us_p999, self.latency_us_max
        )?;
        if self.results_not_ok == 0 {
            writeln!(f, "results       all ok")?;
        } else {
            let codes: Vec<String> = self.results_not_ok_by_code.iter().map(|(n, c)| format!("{n} {c}")).collect();
            writeln!(f, "results       {} not ok: {}", self.results_not_ok, codes.join(", "))?;
        }
        write!(f, "{}", self.verification)
    }
}

fn distribution_name(distribution: Distribution) -> &'static str {
    match distribution {
        Distribution::Uniform => "uniform",
        Distribution::Zipf => "zipf",
        Distribution::HotMerchant => "hot",
    }
}

/// Accounts, baseline, transfers, verification: everything against one address.
fn bench_against(addr: &str, args: &BenchArgs, server: String) -> Result<BenchReport, BenchError> {
    let client = client_connect(addr)?;
    let failed = |stage| move |error| BenchError::Client { addr: addr.to_string(), stage, error };
    let accounts_start = Instant::now();
    accounts_create(&client, args.accounts).map_err(|error| match error {
        AccountsCreateError::Client(error) => failed("creating the accounts")(error),
        AccountsCreateError::Refused { result, count } => BenchError::AccountsRefused { result, count },
    })?;
    let accounts_seconds = accounts_start.elapsed().as_secs_f64();
    let baseline = accounts_lookup(&client, args.accounts).map_err(failed("looking up the accounts"))?;
    if let Some(index) = baseline.iter().position(|account| account.id.0 == 0) {
        let error = ClientError::Protocol(format!("account {} was created but a lookup does not find it", index + 1));
        return Err(failed("looking up the accounts")(error));
    }
    let mut rng = Rng(args.seed);
    let picker = Picker::new(args.accounts, args.distribution, &mut rng);
    let expected = Mutex::new(Expected::new(args.accounts));
    let drive = transfers_drive(addr, args, &picker, &expected)?;
    let after = accounts_lookup(&client, args.accounts).map_err(failed("looking up the balances"))?;
    let expected = expected.into_inner().expect("a lane panicked holding the expectations");
    let verification = verify_balances(&baseline, &after, &expected);
    Ok(report_build(args, server, accounts_seconds, drive, verification))
}

fn report_build(
    args: &BenchArgs,
    server: String,
    accounts_seconds: f64,
    drive: DriveOutcome,
    verification: Verification,
) -> BenchReport {
    let histogram = drive.histogram;
    assert_eq!(histogram.len(), drive.requests, "one latency per request");
    let results_not_ok = drive.codes.values().sum();
    let results_not_ok_by_code =
        drive.codes.iter().map(|(code, count)| (transfer_result_name(*code), *count)).collect();
    BenchReport {
        server,
        accounts: args.accounts,
        transfers: drive.events_sent,
        batch: args.batch,
        connections: args.connections,
        in_flight: args.in_flight,
        distribution: distribution_name(args.distribution),
        two_phase_ratio: args.two_phase_ratio,
        rate_per_second: args.rate,
        seed: args.seed,
        accounts_seconds,
        requests: drive.requests,
        holds: drive.holds,
        posts: drive.posts,
        seconds: drive.seconds,
        throughput_per_second: drive.events_sent as f64 / drive.seconds.max(1e-9),
        latency_us_p50: histogram.value_at_quantile(0.50),
        latency_us_p90: histogram.value_at_quantile(0.90),
        latency_us_p99: histogram.value_at_quantile(0.99),
        latency_us_p999: histogram.value_at_quantile(0.999),
        latency_us_max: histogram.max(),
        latency_us_mean: histogram.mean(),
        results_not_ok,
        results_not_ok_by_code,
        verification,
        histogram,
    }
}

fn transfer_result_name(code: u32) -> String {
    CreateTransferResult::from_u32(code).map_or_else(|| format!("unknown_code_{code}"), |result| result.name().into())
}

fn client_connect(addr: &str) -> Result<Client, BenchError> {
    Client::connect(addr, ClientOptions::default())
        .map_err(|error| BenchError::Connect { addr: addr.to_string(), error })
}

// ---------------------------------------------------------------------------------------------
// Accounts.

/// Why `accounts_create` stopped.
#[derive(Debug)]
pub enum AccountsCreateError {
    Client(ClientError),
    /// Some accounts were refused with a code other than `exists`; the first such code.
    Refused {
        result: String,
        count: u64,
    },
}

/// Creates accounts 1..=`count` (plain, ledger 1) in full frames. `exists` counts as created,
/// so a bench can run again against the same server.
pub fn accounts_create(client: &Client, count: u64) -> Result<(), AccountsCreateError> {
    assert!(count >= 1);
    let chunk_count = u64::from(FrameOperation::Ledger(Operation::CreateAccounts).event_count_max());
    assert!(chunk_count >= 1);
    let (mut refused_count, mut refused_first) = (0u64, None);
    for chunk in accounts(count).chunks(chunk_count as usize) {
        let results = client.create_accounts(chunk).map_err(AccountsCreateError::Client)?;
        for result in results.iter().filter(|result| result.code != CreateAccountResult::Exists as u32) {
            refused_count += 1;
            refused_first.get_or_insert(result.code);
        }
    }
    match refused_first {
        None => Ok(()),
        Some(code) => Err(AccountsCreateError::Refused {
            result: CreateAccountResult::from_u32(code).map_or_else(|| format!("code {code}"), |r| r.name().into()),
            count: refused_count,
        }),
    }
}

/// Accounts 1..=`count` as the server holds them, position `index` for id `index + 1`; an
/// account not found is left as `Account::default()` (id 0).
pub fn accounts_lookup(client: &Client, count: u64) -> Result<Vec<Account>, ClientError> {
    let chunk_count = u64::from(FrameOperation::Ledger(Operation::LookupAccounts).event_count_max());
    assert!(chunk_count >= 1);
    let mut found = vec![Account::default(); count as usize];
    let mut start = 0u64;
    while start < count {
        let end = (start + chunk_count).min(count);
        let ids: Vec<AccountId> = (start..end).map(|index| AccountId(u128::from(index) + 1)).collect();
        for account in client.lookup_accounts(&ids)? {
            let index = account.id.0.checked_sub(1).filter(|index| *index < u128::from(count));
            let index =
                index.ok_or_else(|| ClientError::Protocol(format!("lookup returned account {}", account.id.0)))?;
            found[index as usize] = account;
        }
        start = end;
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Expectations and verification.

/// What the run moved on one account: the change its balances should show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

/// The generator's book: per account index (id − 1), what the acknowledged transfers moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub moved: Vec<Moved>,
}

impl Expected {
    pub fn new(accounts_count: u64) -> Expected {
        Expected { moved: vec![Moved::default(); accounts_count as usize] }
    }

    fn index(&self, id: AccountId) -> usize {
        assert!(id.0 >= 1, "account ids start at 1");
        assert!(id.0 <= self.moved.len() as u128, "account {} is not one of the bench's", id.0);
        (id.0 - 1) as usize
    }

    /// A single-phase transfer was acknowledged ok.
    pub fn single_apply(&mut self, transfer: &Transfer) {
        let (debit, credit) = (self.index(transfer.debit_account_id), self.index(transfer.credit_account_id));
        self.moved[debit].debits_posted += transfer.amount.0;
        self.moved[credit].credits_posted += transfer.amount.0;
    }

    /// A hold was acknowledged ok: its amount is reserved on both sides.
    pub fn hold_apply(&mut self, hold: &Transfer) {
        let (debit, credit) = (self.index(hold.debit_account_id), self.index(hold.credit_account_id));
        self.moved[debit].debits_pending += hold.amount.0;
        self.moved[credit].credits_pending += hold.amount.0;
    }

    /// A post of the whole of `hold` was acknowledged ok: the reservation becomes posted.
    pub fn post_apply(&mut self, hold: &Transfer) {
        let (debit, credit) = (self.index(hold.debit_account_id), self.index(hold.credit_account_id));
        assert_ne!(debit, credit, "a hold moves money between two accounts");
        let amount = hold.amount.0;
        let debit = &mut self.moved[debit];
        debit.debits_pending = debit.debits_pending.checked_sub(amount).expect("a post follows its hold");
        debit.debits_posted += amount;
        let credit = &mut self.moved[credit];
        credit.credits_pending = credit.credits_pending.checked_sub(amount).expect("a post follows its hold");
        credit.credits_posted += amount;
    }
}

/// Whether the server's balances are what was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub passed: bool,
    pub accounts_checked: u64,
    pub accounts_missing: u64,
    pub accounts_mismatched: u64,
    /// Sums over accounts 1..=N after the run (decimal strings: they are u128).
    pub debits_posted_total: String,
    pub credits_posted_total: String,
    pub debits_pending_total: String,
    pub credits_pending_total: String,
    /// Every discrepancy counted; the first `FAILURES_LISTED_MAX` described.
    pub failures_count: u64,
    pub failures: Vec<String>,
}

impl Verification {
    fn failure(&mut self, message: String) {
        self.failures_count += 1;
        if self.failures.len() < FAILURES_LISTED_MAX {
            self.failures.push(message);
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "passed" } else { "FAILED" };
        writeln!(
            f,
            "verification  {verdict}: {} accounts equal their balance before the run plus what it moved; \
             debits_posted {} = credits_posted {}, debits_pending {} = credits_pending {}",
            self.accounts_checked,
            self.debits_posted_total,
            self.credits_posted_total,
            self.debits_pending_total,
            self.credits_pending_total
        )?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        if self.failures_count > self.failures.len() as u64 {
            writeln!(f, "  … and {} more", self.failures_count - self.failures.len() as u64)?;
        }
        Ok(())
    }
}

/// Checks (1) that money sums to zero over the accounts — Σ debits = Σ credits, posted and
/// pending — and (2) that each account holds its `baseline` plus what `expected` says the run
/// moved. `baseline`, `after` and `expected.moved` are indexed by account index (id − 1).
pub fn verify_balances(baseline: &[Account], after: &[Account], expected: &Expected) -> Verification {
    assert_eq!(baseline.len(), after.len(), "one baseline per account");
    assert_eq!(expected.moved.len(), after.len(), "one expectation per account");
    let mut verification = Verification::default();
    let mut totals = [0u128; 4];
    for (index, (before, now)) in baseline.iter().zip(after).enumerate() {
        let id = index as u128 + 1;
        if now.id.0 != id {
            verification.accounts_missing += 1;
            verification.failure(format!("account {id} is missing from the lookup"));
            continue;
        }
        verification.accounts_checked += 1;
        let fields = [now.debits_posted, now.credits_posted, now.debits_pending, now.credits_pending];
        for (total, field) in totals.iter_mut().zip(fields) {
            *total = total.saturating_add(field.0);
        }
        if let Some(message) = account_check(before, now, &expected.moved[index]) {
            verification.accounts_mismatched += 1;
            verification.failure(message);
        }
    }
    let [debits_posted, credits_posted, debits_pending, credits_pending] = totals;
    if debits_posted != credits_posted {
        verification.failure(format!(
            "money does not sum to zero: debits_posted {debits_posted} ≠ credits_posted {credits_posted}"
        ));
    }
    if debits_pending != credits_pending {
        verification.failure(format!(
            "money does not sum to zero: debits_pending {debits_pending} ≠ credits_pending {credits_pending}"
        ));
    }
    verification.debits_posted_total = debits_posted.to_string();
    verification.credits_posted_total = credits_posted.to_string();
    verification.debits_pending_total = debits_pending.to_string();
    verification.credits_pending_total = credits_pending.to_string();
    verification.passed = verification.failures_count == 0;
    assert!(verification.passed == verification.failures.is_empty());
    verification
}

/// One account: `now` must be `before` plus `moved`, field by field. Names the first field
/// that differs.
fn account_check(before: &Account, now: &Account, moved: &Moved) -> Option<String> {
    let fields = [
        ("debits_pending", before.debits_pending.0, moved.debits_pending, now.debits_pending.0),
        ("debits_posted", before.debits_posted.0, moved.debits_posted, now.debits_posted.0),
        ("credits_pending", before.credits_pending.0, moved.credits_pending, now.credits_pending.0),
        ("credits_posted", before.credits_posted.0, moved.credits_posted, now.credits_posted.0),
    ];
    fields.into_iter().find_map(|(name, before_amount, moved_amount, now_amount)| {
        let want = before_amount.checked_add(moved_amount);
        (want != Some(now_amount)).then(|| {
            format!(
                "account {}: {name} is {now_amount}, expected {before_amount} before + {moved_amount} moved",
                now.id.0
            )
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The transfer phase.

/// What the lanes did, merged.
struct DriveOutcome {
    events_sent: u64,
    requests: u64,
    holds: u64,
    posts: u64,
    seconds: f64,
    histogram: Histogram<u64>,
    /// Result code → events with it (ok excluded).
    codes: BTreeMap<u32, u64>,
}

/// What every lane reads.
struct DriveShared<'a> {
    args: &'a BenchArgs,
    picker: &'a Picker,
    expected: &'a Mutex<Expected>,
    /// Set by a lane that failed, so the others stop early.
    abort: AtomicBool,
    start: Instant,
    lanes_count: u32,
}

/// Runs the lanes over `connections` clients and merges what they report.
fn transfers_drive(
    addr: &str,
    args: &BenchArgs,
    picker: &Picker,
    expected: &Mutex<Expected>,
) -> Result<DriveOutcome, BenchError> {
    let clients = (0..args.connections).map(|_| client_connect(addr)).collect::<Result<Vec<Client>, _>>()?;
    let lanes_count = args.connections * args.in_flight;
    let shared =
        DriveShared { args, picker, expected, abort: AtomicBool::new(false), start: Instant::now(), lanes_count };
    let outcomes: Vec<Result<LaneOutcome, ClientError>> = std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..lanes_count)
            .map(|lane_index| {
                let client = &clients[(lane_index % args.connections) as usize];
                let shared = &shared;
                scope.spawn(move || lane_run(client, shared, lane_index))
            })
            .collect();
        lanes.into_iter().map(|lane| lane.join().expect("a bench lane panicked")).collect()
    });
    let seconds = shared.start.elapsed().as_secs_f64();
    let mut drive = DriveOutcome {
        events_sent: 0,
        requests: 0,
        holds: 0,
        posts: 0,
        seconds,
        histogram: histogram_new(),
        codes: BTreeMap::new(),
    };
    for outcome in outcomes {
        let lane = outcome.map_err(|error| BenchError::Client {
            addr: addr.to_string(),
            stage: "sending transfers",
            error,
        })?;
        drive.events_sent += lane.events_sent;
        drive.requests += lane.requests;
        drive.holds += lane.holds;
        drive.posts += lane.posts;
        drive.histogram.add(&lane.histogram).expect("lane histograms share their bounds");
        for (code, count) in lane.codes {
            *drive.codes.entry(code).or_default() += count;
        }
    }
    assert_eq!(drive.events_sent, args.transfers, "every transfer was sent");
    Ok(drive)
}

fn histogram_new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("valid histogram bounds")
}

/// What one lane did.
struct LaneOutcome {
    events_sent: u64,
    requests: u64,
    holds: u64,
    posts: u64,
    histogram: Histogram<u64>,
    codes: BTreeMap<u32, u64>,
}

/// One lane; if it fails, the others stop too (the run is lost anyway).
fn lane_run(client: &Client, shared: &DriveShared<'_>, lane_index: u32) -> Result<LaneOutcome, ClientError> {
    let result = lane_loop(client, shared, lane_index);
    if result.is_err() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    result
}

/// Build a request, wait for its due time (open loop), send it, record its latency, read its
/// results into the book; until the lane's share of the transfers is sent.
fn lane_loop(client: &Client, shared: &DriveShared<'_>, lane_index: u32) -> Result<LaneOutcome, ClientError> {
    let args = shared.args;
    let (lanes, index) = (u64::from(shared.lanes_count), u64::from(lane_index));
    let events_count = args.transfers / lanes + u64::from(index < args.transfers % lanes);
    let mut lane = Lane::new(shared, lane_index, events_count);
    let mut outcome = LaneOutcome {
        events_sent: 0,
        requests: 0,
        holds: 0,
        posts: 0,
        histogram: histogram_new(),
        codes: BTreeMap::new(),
    };
    let mut due =
        args.rate.map(|_| shared.start + lane.interval(u64::from(args.batch)).mul_f64(index as f64 / lanes as f64));
    let operation = FrameOperation::Ledger(Operation::CreateTransfers);
    let mut results = Vec::with_capacity(args.batch as usize);
    // Each request sends at least one of the lane's events, so this ends within events_count rounds.
    for _ in 0..events_count {
        if lane.done() || shared.abort.load(Ordering::Relaxed) {
            break;
        }
        lane.request_fill(time_ms_now());
        let sent_at = match due {
            Some(at) => {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                due = Some(at + lane.interval(lane.request.len() as u64));
                at
            }
            None => Instant::now(),
        };
        let reply = client.request(operation, records_as_bytes(&lane.request))?;
        outcome.histogram.saturating_record(sent_at.elapsed().as_micros().max(1) as u64);
        results.clear();
        results_decode(operation, reply.header.event_count, &reply.body, &mut results)?;
        if results.last().is_some_and(|last| last.index as usize >= lane.request.len()) {
            return Err(ClientError::Protocol("a result's index is past the request's events".into()));
        }
        lane.acknowledge(&results, &mut shared.expected.lock().expect("the book is not poisoned"), &mut outcome);
    }
    assert!(lane.done() || shared.abort.load(Ordering::Relaxed), "the lane sent its share");
    Ok(outcome)
}

fn time_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis() as u64
}

/// One lane's generator: its transfers not yet sent, the holds whose posts it owes, and the
/// request being built.
struct Lane<'a> {
    picker: &'a Picker,
    rng: Rng,
    ids: IdMaker,
    ratio: f64,
    batch_max: usize,
    /// Seconds per event of this lane in open loop (lanes ÷ rate).
    seconds_per_event: f64,
    /// Events of the lane's share not yet sent nor reserved for a post.
    free_count: u64,
    /// Holds acknowledged ok, each with the post the next request carries.
    owed: Vec<(Transfer, Transfer)>,
    /// The request: the owed posts, then new holds, then single-phase transfers.
    request: Vec<Transfer>,
    posts_in_request: Vec<(Transfer, Transfer)>,
    holds_in_request: Vec<(Transfer, Transfer)>,
    holds: Vec<Transfer>,
    posts: Vec<Transfer>,
    singles: Vec<Transfer>,
}

impl<'a> Lane<'a> {
    fn new(shared: &DriveShared<'a>, lane_index: u32, events_count: u64) -> Lane<'a> {
        let args = shared.args;
        // Ids: the millisecond on top, then a per-run, per-lane prefix, then a counter, so
        // lanes never collide and neither do runs started in the same millisecond.
        let run_bits = Rng(args.seed ^ (u64::from(std::process::id()) << 32)).next_u64() & 0xf_ffff;
        assert!(lane_index < LANES_MAX, "args_check bounds the lanes");
        Lane {
            picker: shared.picker,
            rng: Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(lane_index)),
            ids: IdMaker::with_prefix((run_bits << 12) | u64::from(lane_index)),
            ratio: args.two_phase_ratio,
            batch_max: args.batch as usize,
            seconds_per_event: args.rate.map_or(0.0, |rate| f64::from(shared.lanes_count) / rate as f64),
            free_count: events_count,
            owed: Vec::new(),
            request: Vec::with_capacity(args.batch as usize),
            posts_in_request: Vec::new(),
            holds_in_request: Vec::new(),
            holds: Vec::new(),
            posts: Vec::new(),
            singles: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.free_count == 0 && self.owed.is_empty()
    }

    /// Open loop: the time `events` of this lane take at the target rate.
    fn interval(&self, events: u64) -> Duration {
        Duration::from_secs_f64(self.seconds_per_event * events as f64)
    }

    /// Builds the next request: the owed posts first, then new payments filling the batch, a
    /// `ratio` of them holds. A hold reserves one event of the share for its post, so the lane
    /// sends exactly its share.
    fn request_fill(&mut self, time_ms: u64) {
        assert!(!self.done(), "a request for a lane with nothing left");
        std::mem::swap(&mut self.posts_in_request, &mut self.owed);
        self.owed.clear();
        let posts_count = self.posts_in_request.len();
        assert!(posts_count <= self.batch_max, "a request's holds fit in the next request");
        let payments_count = ((self.batch_max - posts_count) as u64).min(self.free_count);
        let holds_count = ((self.ratio * payments_count as f64).round() as u64).min(self.free_count - payments_count);
        assert!(holds_count <= payments_count);
        self.free_count -= payments_count + holds_count;
        let (picker, rng, ids) = (self.picker, &mut self.rng, &mut self.ids);
        two_phase(&mut self.holds, &mut self.posts, holds_count as usize, picker, rng, ids, time_ms);
        single_phase(&mut self.singles, (payments_count - holds_count) as usize, picker, rng, ids, time_ms);
        self.holds_in_request.clear();
        self.holds_in_request.extend(self.holds.iter().copied().zip(self.posts.iter().copied()));
        self.request.clear();
        self.request.extend(self.posts_in_request.iter().map(|(_, post)| *post));
        self.request.extend_from_slice(&self.holds);
        self.request.extend_from_slice(&self.singles);
        assert!(!self.request.is_empty() && self.request.len() <= self.batch_max);
    }

    /// Reads the request's sparse results: each event acknowledged ok moves the book; a hold
    /// acknowledged ok owes its post; a refused hold frees the event reserved for its post.
    fn acknowledge(&mut self, results: &[EventResult], expected: &mut Expected, outcome: &mut LaneOutcome) {
        let (posts_count, holds_count) = (self.posts_in_request.len(), self.holds_in_request.len());
        let mut cursor = 0;
        for (index, transfer) in self.request.iter().enumerate() {
            let code = match results.get(cursor) {
                Some(result) if result.index as usize == index => {
                    cursor += 1;
                    result.code
                }
                _ => 0,
            };
            if code != 0 {
                *outcome.codes.entry(code).or_default() += 1;
            }
            let ok = code == 0;
            if index < posts_count {
                if ok {
                    expected.post_apply(&self.posts_in_request[index].0);
                }
            } else if index < posts_count + holds_count {
                let pair = self.holds_in_request[index - posts_count];
                if ok {
                    expected.hold_apply(&pair.0);
                    self.owed.push(pair);
                } else {
                    self.free_count += 1;
                }
            } else if ok {
                expected.single_apply(transfer);
            }
        }
        assert_eq!(cursor, results.len(), "every result names an event of the request");
        outcome.events_sent += self.request.len() as u64;
        outcome.requests += 1;
        outcome.holds += holds_count as u64;
        outcome.posts += posts_count as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// The .hgrm format.

/// The histogram (recorded in µs) in HdrHistogram's percentile-distribution text format, the
/// one `HistogramLogProcessor`, wrk2 and the online HdrHistogram plotter read. Values are
/// written in milliseconds (µs ÷ 1000, three decimals). Columns:
///
/// - `Value`: the latency in ms at or below which the row's share of requests completed;
/// - `Percentile`: that share, as a fraction 0..=1;
/// - `TotalCount`: requests with latency at or below `Value`;
/// - `1/(1-Percentile)`: the plotter's x axis (left out on the last row, where it is infinite).
///
/// Rows step through the percentiles getting finer towards the tail (5 ticks per halving of
/// the distance to 100%); a footer gives mean, standard deviation, max, total count and the
/// histogram's bucket layout.
pub fn hgrm_format(histogram: &Histogram<u64>) -> String {
    use std::fmt::Write as _;
    const MS_PER_US: f64 = 1000.0;
    let mut out = String::new();
    let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut count_total = 0u64;
    for row in histogram.iter_quantiles(5) {
        count_total += row.count_since_last_iteration();
        let value_ms = row.value_iterated_to() as f64 / MS_PER_US;
        let quantile = row.quantile_iterated_to();
        if quantile < 1.0 {
            let _ = writeln!(out, "{value_ms:12.3} {quantile:2.12} {count_total:10} {:14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(out, "{value_ms:12.3} {quantile:2.12} {count_total:10}");
        }
    }
    assert_eq!(count_total, histogram.len(), "the rows account for every request");
    let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / MS_PER_US,
        histogram.stdev() / MS_PER_US
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / MS_PER_US,
        histogram.len()
    );
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", histogram.buckets(), sub_buckets);
    out
}
