//! The load generator and the command-line client against a real server in this process (real
//! socket, real files, real fsync): the bench verifies what it sent, its verifier catches a
//! discrepancy, its files are in the promised formats, and the CLI commands do what they print;
//! the real binary exits quietly into a closed pipe and names the full id of a create whose
//! reply was lost.

use clap::{CommandFactory, Parser};
use std::path::Path;
use walletd::cli::{
    account_run, transfer_run, AccountArgs, AccountCommand, AccountCreateArgs, AccountShowArgs, CliError, Outcome,
    TransferArgs, TransferCommand, TransferCreateArgs, TransferPostArgs, TransferShowArgs, TransferVoidArgs,
};
use walletd::generate::config_for;
use walletd::node::NodeOptions;
use walletd::pipeline::PipelineOptions;
use walletd::serve::{bench_server_start, serve_start, RunningServer, ServeOptions};
use walletd_benches::load::{
    accounts_create, accounts_lookup, bench_command, bench_run, verify_balances, BenchArgs, BenchError, Expected,
};
use walletd_benches::workload::Distribution;
use walletd_core::{
    AccountId, Amount, CreateAccountResult, CreateTransferResult, SetLimitsResult, Transfer, TransferFlags, TransferId,
    TransferStatus,
};
use walletd_gateway::{Client, ClientOptions};
use walletd_replay::data_dir::DataDir;

/// The commands as `walletd` would wire them, to check the clap definitions.
#[derive(Parser)]
struct TestCli {
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)]
enum TestCommand {
    Bench(BenchArgs),
    Account(AccountArgs),
    Transfer(TransferArgs),
}

fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
    TestCli::try_parse_from(std::iter::once("walletd").chain(args.iter().copied())).map(|cli| cli.command)
}

fn server_start(dir: &Path) -> RunningServer {
    let options = ServeOptions {
        data_dir: DataDir::new(dir),
        addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        node: NodeOptions {
            config: config_for(1000),
            segment_size_bytes: 1 << 20,
            pipeline: PipelineOptions::default(),
        },
        server: walletd_gateway::server::ServerOptions::default(),
    };
    serve_start(options).unwrap()
}

#[test]
fn clap_definitions_parse_as_documented() {
    TestCli::command().debug_assert();
    let TestCommand::Bench(bench) = parse(&["bench"]).unwrap() else { panic!("bench") };
    assert_eq!(bench, BenchArgs::default(), "BenchArgs::default() is the clap defaults");
    assert!(parse(&["bench", "--batch", "8190"]).is_err(), "batch at most 8189");
    assert!(parse(&["bench", "--two-phase-ratio", "1.5"]).is_err(), "ratio within 0..=1");
    let TestCommand::Bench(bench) = parse(&["bench", "--distribution", "hot", "--rate", "5000"]).unwrap() else {
        panic!("bench")
    };
    assert_eq!((bench.distribution, bench.rate), (Distribution::HotMerchant, Some(5000)));

    let TestCommand::Transfer(transfer) =
        parse(&["transfer", "--id", "7", "--from", "1", "--to", "2", "--amount", "5"]).unwrap()
    else {
        panic!("transfer")
    };
    assert_eq!(transfer.addr, "127.0.0.1:4100");
    let TransferCommand::Create(create) = transfer.command() else { panic!("create is the default") };
    assert_eq!((create.id, create.from, create.to, create.amount), (Some(7), Some(1), Some(2), Some(5)));
    let TestCommand::Transfer(transfer) =
        parse(&["transfer", "post", "--id", "8", "--pending-id", "0x10", "--addr", "10.0.0.1:1"]).unwrap()
    else {
        panic!("transfer")
    };
    assert_eq!(transfer.addr, "10.0.0.1:1", "--addr is accepted after the subcommand");
    assert_eq!(
        transfer.command(),
        TransferCommand::Post(TransferPostArgs { id: 8, pending_id: 16, ..Default::default() })
    );
    assert!(parse(&["transfer", "--id", "7", "--from", "1", "--to", "2"]).is_err(), "--amount is required");
    assert!(parse(&["transfer", "--id", "7", "--from", "1", "--to", "2", "--amount", "12.50"]).is_err(), "integers");
    assert!(
        parse(&["transfer", "--id", "7", "--from", "1", "--to", "2", "--amount", "5", "--timeout-s", "3"]).is_err(),
        "--timeout-s needs --pending"
    );
    let TestCommand::Account(account) =
        parse(&["account", "create", "--id", "3", "--no-overdraft", "--overdraft-max", "50"]).unwrap()
    else {
        panic!("account")
    };
    let AccountCommand::Create(create) = account.command else { panic!("create") };
    assert!(create.no_overdraft);
    assert_eq!(create.overdraft_max, Some(50));
}

fn json_load(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the --json file is JSON")
}

#[test]
fn bench_closed_loop_two_phase_hot_verifies_and_writes_its_files() {
    let root = tempfile::tempdir().unwrap();
    let (json, hgrm) = (root.path().join("bench.json"), root.path().join("bench.hgrm"));
    let args = BenchArgs {
        data_dir: Some(root.path().join("servers")),
        accounts: 1000,
        transfers: 20_000,
        batch: 500,
        connections: 2,
        distribution: Distribution::HotMerchant,
        two_phase_ratio: 0.2,
        json: Some(json.clone()),
        hgrm: Some(hgrm.clone()),
        ..BenchArgs::default()
    };
    bench_command(args, &bench_server_start).expect("the bench runs and verifies");

    let summary = json_load(&json);
    for key in [
        "throughput_per_second",
        "latency_us_p50",
        "latency_us_p90",
        "latency_us_p99",
        "latency_us_p999",
        "latency_us_max",
        "accounts",
        "transfers",
        "batch",
        "connections",
        "distribution",
        "seconds",
        "verification",
    ] {
        assert!(summary.get(key).is_some(), "the JSON summary has {key}");
    }
    assert!(summary["throughput_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["verification"]["passed"], true);
    assert_eq!(summary["verification"]["accounts_checked"], 1000);
    assert_eq!(summary["transfers"], 20_000, "exactly the transfers asked for, holds and posts included");
    assert_eq!(summary["results_not_ok"], 0, "a valid workload has no refusals");
    assert_eq!(summary["distribution"], "hot");
    let (holds, posts) = (summary["holds"].as_u64().unwrap(), summary["posts"].as_u64().unwrap());
    assert!(holds > 2000, "about a fifth of the payments are holds: {holds}");
    assert_eq!(holds, posts, "every hold is posted");
    assert!(summary["latency_us_p50"].as_u64().unwrap() <= summary["latency_us_max"].as_u64().unwrap());

    let text = std::fs::read_to_string(&hgrm).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "       Value     Percentile TotalCount 1/(1-Percentile)");
    assert_eq!(lines.next().unwrap(), "");
    let rows: Vec<Vec<&str>> =
        lines.clone().take_while(|line| !line.starts_with('#')).map(|line| line.split_whitespace().collect()).collect();
    assert!(rows.len() > 5, "percentile rows");
    assert_eq!(rows[0][1], "0.000000000000");
    assert_eq!(rows.last().unwrap()[1], "1.000000000000", "the last row is the 100th percentile");
    assert_eq!(rows.last().unwrap().len(), 3, "the last row has no 1/(1-Percentile)");
    assert!(rows.iter().any(|row| row[1].starts_with("0.5")) && rows.iter().any(|row| row[1] == "0.900000000000"));
    let requests = summary["requests"].as_u64().unwrap();
    assert_eq!(rows.last().unwrap()[2].parse::<u64>().unwrap(), requests, "TotalCount ends at every request");
    assert!(text.contains("#[Mean    = ") && text.contains("#[Max     = ") && text.contains("#[Buckets = "));
    let servers: Vec<_> = std::fs::read_dir(root.path().join("servers")).unwrap().collect();
    assert!(servers.is_empty(), "the temporary server's directory is deleted");
}

#[test]
fn bench_open_loop_at_a_modest_rate_verifies() {
    let root = tempfile::tempdir().unwrap();
    let args = BenchArgs {
        data_dir: Some(root.path().to_path_buf()),
        accounts: 1000,
        transfers: 20_000,
        batch: 500,
        connections: 2,
        distribution: Distribution::Zipf,
        two_phase_ratio: 0.2,
        rate: Some(40_000),
        ..BenchArgs::default()
    };
    let report = bench_run(&args, &bench_server_start).expect("the bench runs");
    assert!(report.verification.passed, "{}", report.verification);
    assert_eq!(report.transfers, 20_000);
    assert_eq!(report.results_not_ok, 0);
    assert!(report.throughput_per_second > 0.0);
    assert_eq!(report.histogram.len(), report.requests, "one latency per request");
    assert_eq!(report.rate_per_second, Some(40_000));
    let text = report.to_string();
    assert!(text.contains("open loop at 40000/s") && text.contains("verification  passed"), "{text}");
}

#[test]
fn verification_catches_a_wrong_expectation_and_unbalanced_money() {
    let root = tempfile::tempdir().unwrap();
    let server = server_start(root.path());
    let client = Client::connect(server.local_addr, ClientOptions::default()).unwrap();
    accounts_create(&client, 3).unwrap();
    let baseline = accounts_lookup(&client, 3).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let transfer = |low: u128, debit: u128, credit: u128, amount: u128, flags: u16, pending: u128| Transfer {
        id: TransferId::from_parts(now_ms, low),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        pending_id: if pending == 0 { TransferId(0) } else { TransferId::from_parts(now_ms, pending) },
        ledger: if pending == 0 { 1 } else { 0 },
        code: if pending == 0 { 1 } else { 0 },
        flags: TransferFlags(flags),
        ..Transfer::default()
    };
    let single = transfer(1, 1, 2, 10, 0, 0);
    let hold = transfer(2, 2, 3, 5, TransferFlags::PENDING, 0);
    let mut post = transfer(3, 0, 0, 0, TransferFlags::POST_PENDING, 2);
    post.amount = Amount(0);
    assert_eq!(client.create_transfers(&[single, hold]).unwrap(), vec![]);
    assert_eq!(client.create_transfers(&[post]).unwrap(), vec![]);
    let after = accounts_lookup(&client, 3).unwrap();

    let mut expected = Expected::new(3);
    expected.single_apply(&single);
    expected.hold_apply(&hold);
    expected.post_apply(&hold);
    let verification = verify_balances(&baseline, &after, &expected);
    assert!(verification.passed, "{verification}");
    assert_eq!((verification.accounts_checked, verification.debits_posted_total.as_str()), (3, "15"));

    let mut wrong = expected.clone();
    wrong.moved[1].credits_posted += 1;
    let verification = verify_balances(&baseline, &after, &wrong);
    assert!(!verification.passed, "a wrong expectation fails");
    assert_eq!((verification.accounts_mismatched, verification.failures_count), (1, 1));
    assert!(verification.failures[0].contains("account 2: credits_posted is 10, expected 0 before + 11 moved"));

    // The server's money not summing to zero fails even where each account matches its book.
    let mut unbalanced = after.clone();
    unbalanced[2].credits_posted.0 += 7;
    let mut book = expected.clone();
    book.moved[2].credits_posted += 7;
    let verification = verify_balances(&baseline, &unbalanced, &book);
    assert!(!verification.passed);
    assert_eq!(verification.accounts_mismatched, 0);
    assert!(verification.failures[0].contains("debits_posted 15 ≠ credits_posted 22"), "{:?}", verification.failures);
    let mut missing = after.clone();
    missing[0] = walletd_core::Account::default();
    assert_eq!(verify_balances(&baseline, &missing, &expected).accounts_missing, 1);

    let error = BenchError::Verification { failures_count: 1, first: verification.failures[0].clone() };
    assert!(error.to_string().contains("VERIFICATION FAILED"));
    drop(client);
    server.shutdown();
}

fn created(outcome: &Outcome) -> (TransferId, CreateTransferResult) {
    match outcome {
        Outcome::TransferCreated { id, result, .. } => (*id, *result),
        other => panic!("not a transfer creation: {other:?}"),
    }
}

fn create_args(id: u128, from: u128, to: u128, amount: u128) -> TransferCreateArgs {
    TransferCreateArgs {
        id: Some(id),
        from: Some(from),
        to: Some(to),
        amount: Some(amount),
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

/// A server in this process and a CLI connection to it.
struct CliFixture {
    server: Option<RunningServer>,
    client: Client,
    addr: String,
    _root: tempfile::TempDir,
}

impl CliFixture {
    fn start() -> CliFixture {
        let root = tempfile::tempdir().unwrap();
        let server = server_start(root.path());
        let addr = server.local_addr.to_string();
        let client = walletd::cli::connect(&addr).unwrap();
        CliFixture { server: Some(server), client, addr, _root: root }
    }

    fn account(&self, command: AccountCommand) -> Result<Outcome, CliError> {
        account_run(&self.client, &self.addr, &command)
    }

    fn transfer(&self, command: TransferCommand) -> Outcome {
        transfer_run(&self.client, &self.addr, &command).unwrap()
    }

    fn account_shown(&self, id: u128) -> (Outcome, walletd_core::BalanceRead, Vec<Transfer>) {
        let outcome = self.account(AccountCommand::Show(AccountShowArgs { id })).unwrap();
        let Outcome::AccountShown(shown) = &outcome else { panic!("account shown: {outcome:?}") };
        let (read, holds) = (shown.read, shown.holds.clone());
        (outcome, read, holds)
    }

    fn transfer_shown(&self, id: TransferId) -> (Outcome, TransferStatus) {
        let outcome = self.transfer(TransferCommand::Show(TransferShowArgs { id: id.0 }));
        let Outcome::TransferShown(record) = &outcome else { panic!("transfer shown: {outcome:?}") };
        let status = record.status;
        (outcome, status)
    }

    /// Account 1 (plain), account 2 (a wallet: no overdraft, balance at most 1000, 5 debits
    /// a day), and 300 moved from 1 to 2.
    fn wallet_funded(&self) {
        let plain =
            self.account(AccountCommand::Create(AccountCreateArgs { id: 1, ledger: 1, code: 1, ..Default::default() }));
        assert_eq!(plain.unwrap(), Outcome::AccountCreated { id: 1, result: CreateAccountResult::Ok, limits: None });
        let wallet = self.account(AccountCommand::Create(wallet_args())).unwrap();
        let limits = Some(SetLimitsResult::Ok);
        assert_eq!(wallet, Outcome::AccountCreated { id: 2, result: CreateAccountResult::Ok, limits });
        assert_eq!(wallet.to_string(), "account 2: Ok\nlimits: Ok");
        let funded = self.transfer(TransferCommand::Create(create_args(1, 1, 2, 300)));
        let (funded_id, result) = created(&funded);
        assert_eq!(result, CreateTransferResult::Ok);
        assert_eq!(funded_id.0 & ((1 << 80) - 1), 1, "--id is the low bits");
        assert!(funded_id.time_ms() > 1_700_000_000_000, "the current time is on top");
        assert!(funded.to_string().contains(&funded_id.0.to_string()), "the full id is printed");
    }
}

impl Drop for CliFixture {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

fn wallet_args() -> AccountCreateArgs {
    AccountCreateArgs {
        id: 2,
        ledger: 1,
        code: 1,
        no_overdraft: true,
        balance_max: Some(1000),
        daily_debit_count_max: Some(5),
        ..Default::default()
    }
}

#[test]
fn cli_creates_accounts_and_transfers_and_names_refusals() {
    let cli = CliFixture::start();
    cli.wallet_funded();
    let again = cli.account(AccountCommand::Create(wallet_args())).unwrap();
    assert!(again.is_ok() && again.to_string().contains("Exists"), "a resubmission is its original outcome");
    let overdrawn = cli.transfer(TransferCommand::Create(create_args(2, 2, 1, 500)));
    assert_eq!(created(&overdrawn).1, CreateTransferResult::ExceedsCredits);
    assert!(!overdrawn.is_ok() && overdrawn.to_string().contains("ExceedsCredits"), "refusals by name");
    let over_limit = cli.transfer(TransferCommand::Create(create_args(3, 1, 2, 800)));
    assert_eq!(created(&over_limit).1, CreateTransferResult::BalanceLimitExceeded);

    let (shown, read, _) = cli.account_shown(2);
    assert_eq!((read.account.credits_posted, read.account.debits_posted), (Amount(300), Amount(0)));
    let text = shown.to_string();
    for line in [
        "balance         300",
        "debits_must_not_exceed_credits | limits",
        "balance_max 1000, daily_debit_count_max 5",
        "open holds      0",
    ] {
        assert!(text.contains(line), "account show has {line:?}:\n{text}");
    }
    match cli.account(AccountCommand::Show(AccountShowArgs { id: 99 })) {
        Err(error @ CliError::NotFound { .. }) => assert!(error.to_string().contains("account 99 not found")),
        other => panic!("account 99 does not exist: {other:?}"),
    }
    assert!(matches!(walletd::cli::transfer_id(1 << 80, false, 1), Err(CliError::Args(_))), "low bits only");
}

#[test]
fn cli_holds_are_posted_voided_and_shown() {
    let cli = CliFixture::start();
    cli.wallet_funded();
    let hold = cli.transfer(TransferCommand::Create(TransferCreateArgs {
        pending: true,
        timeout_s: 60,
        ..create_args(4, 2, 1, 100)
    }));
    let (hold_id, result) = created(&hold);
    assert_eq!(result, CreateTransferResult::Ok);
    assert!(hold.to_string().starts_with("hold "));
    let (shown, read, holds) = cli.account_shown(2);
    assert_eq!((read.account.debits_pending, holds.len()), (Amount(100), 1));
    assert_eq!(holds[0].id, hold_id, "the open hold is listed");
    let text = shown.to_string();
    assert!(text.contains("open holds      1") && text.contains(&format!("hold {}", hold_id.0)), "{text}");

    let post = TransferPostArgs { id: 5, pending_id: hold_id.0, amount: Some(40), raw_id: false };
    let (post_id, result) = created(&cli.transfer(TransferCommand::Post(post)));
    assert_eq!(result, CreateTransferResult::Ok);
    let hold_two = created(
        &cli.transfer(TransferCommand::Create(TransferCreateArgs { pending: true, ..create_args(6, 2, 1, 50) })),
    );
    let void = TransferVoidArgs { id: 7, pending_id: hold_two.0 .0, raw_id: false };
    let (void_id, result) = created(&cli.transfer(TransferCommand::Void(void)));
    assert_eq!(result, CreateTransferResult::Ok);
    let resent = TransferVoidArgs { id: void_id.0, pending_id: hold_two.0 .0, raw_id: true };
    let resent = created(&cli.transfer(TransferCommand::Void(resent)));
    assert_eq!(resent, (void_id, CreateTransferResult::Exists), "--raw-id resends the same id");

    assert_eq!(cli.transfer_shown(hold_id).1, TransferStatus::PendingPosted);
    assert_eq!(cli.transfer_shown(hold_two.0).1, TransferStatus::PendingVoided);
    let (shown, status) = cli.transfer_shown(post_id);
    assert_eq!(status, TransferStatus::Posted);
    let text = shown.to_string();
    assert!(text.contains("status          posted") && text.contains("amount          40"), "{text}");
    assert!(text.contains("debit → credit  2 → 1"), "the post's accounts are the hold's: {text}");
    let (shown, read, _) = cli.account_shown(2);
    let balances = (read.account.credits_posted, read.account.debits_posted, read.account.debits_pending);
    assert_eq!(balances, (Amount(300), Amount(40), Amount(0)), "40 of the hold posted, the rest and the void released");
    let text = shown.to_string();
    assert!(text.contains("balance         260") && text.contains("open holds      0"), "{text}");
}

#[test]
fn a_refused_connection_names_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let command = TransferCommand::Show(TransferShowArgs { id: 1 });
    match walletd::cli::transfer_command(&addr, command) {
        Err(error @ CliError::Connect { .. }) => {
            let text = error.to_string();
            assert!(text.contains(&addr) && text.contains("connection refused"), "{text}");
        }
        other => panic!("nothing listens there: {other:?}"),
    }
    let args = BenchArgs { addr: Some(addr.clone()), accounts: 10, transfers: 10, ..BenchArgs::default() };
    let error = bench_run(&args, &bench_server_start).expect_err("nothing listens there");
    assert!(error.to_string().contains(&addr) && error.to_string().contains("connection refused"), "{error}");
}

/// The bench at full size, with flags as `walletd bench` takes them (e.g. for a figure before
/// the binary wires the command):
/// `WALLETD_BENCH_ARGS="--transfers 1000000" cargo test --release --test bench -- --ignored --nocapture`.
#[test]
#[ignore = "full size: minutes in a debug build; run it with --release"]
fn bench_full_size_from_flags() {
    let flags = std::env::var("WALLETD_BENCH_ARGS").unwrap_or_default();
    let args: Vec<&str> = std::iter::once("bench").chain(flags.split_whitespace()).collect();
    let TestCommand::Bench(bench) = parse(&args).unwrap_or_else(|error| panic!("{error}")) else { panic!("bench") };
    println!("walletd {}", args.join(" "));
    bench_command(bench, &bench_server_start).unwrap_or_else(|error| panic!("{error}"));
}

/// Runs the real `walletd` binary with `args`, its stdout a pipe whose reader is already gone.
fn binary_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes before the binary writes (as `| head -1` does)
    child.wait_with_output().unwrap()
}

#[test]
fn the_cli_exits_quietly_when_its_output_pipe_closes() {
    let cli = CliFixture::start();
    cli.account(AccountCommand::Create(AccountCreateArgs { id: 1, ledger: 1, code: 1, ..Default::default() })).unwrap();
    let addr = cli.addr.clone();
    let commands: [&[&str]; 3] = [
        &["account", "show", "--addr", &addr, "--id", "1"],
        &["account", "create", "--addr", &addr, "--id", "2"],
        &["transfer", "--addr", &addr, "--id", "7", "--from", "2", "--to", "1", "--amount", "5"],
    ];
    for args in commands {
        let output = binary_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "`walletd {}` exits 0: {:?}\n{stderr}", args.join(" "), output.status);
        assert!(stderr.is_empty(), "`walletd {}` is quiet: {stderr}", args.join(" "));
    }
    // The commands ran: only their output was dropped.
    let (_, read, _) = cli.account_shown(1);
    assert_eq!(read.account.credits_posted, Amount(5));
}

/// A listener that takes one request on each of `count` connections and closes without
/// answering, as if the reply were lost; hands back each request's body.
fn lost_reply_listener(count: usize) -> (String, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let thread = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..count {
            let (mut stream, _) = listener.accept().unwrap();
            let mut header = [0u8; walletd_gateway::HEADER_SIZE_BYTES];
            stream.read_exact(&mut header).unwrap();
            let header = walletd_gateway::FrameHeader::decode(&header).unwrap();
            let mut body = vec![0u8; header.body_size_bytes as usize];
            stream.read_exact(&mut body).unwrap();
            bodies.push(body);
        }
        bodies
    });
    (addr, thread)
}

#[test]
fn an_unknown_outcome_names_the_full_id_to_check_it_with() {
    let (addr, listener) = lost_reply_listener(2);
    let transfer = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["transfer", "--addr", &addr, "--id", "5", "--from", "1", "--to", "2", "--amount", "10"])
        .output()
        .unwrap();
    let account = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["account", "create", "--addr", &addr, "--id", "9"])
        .output()
        .unwrap();
    let bodies = listener.join().unwrap();
    // The transfer's full id is what the binary sent: bytes 0..16 of its one event.
    let full_id = u128::from_le_bytes(bodies[0][..16].try_into().unwrap());
    assert_eq!(TransferId(full_id), TransferId::from_parts(TransferId(full_id).time_ms(), 5), "--id 5 is the low bits");
    let stderr = String::from_utf8_lossy(&transfer.stderr);
    assert!(!transfer.status.success(), "an unknown outcome is not a success");
    assert!(stderr.contains(&format!("walletd transfer show --id {full_id}")), "names the full id to check: {stderr}");
    assert!(stderr.contains(&format!("--raw-id --id {full_id}")), "and to resend with: {stderr}");
    let stderr = String::from_utf8_lossy(&account.stderr);
    assert!(!account.status.success());
    assert!(stderr.contains("walletd account show --id 9"), "names the account to check: {stderr}");
}
