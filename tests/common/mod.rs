//! Builders shared by the root package's end-to-end tests.
#![allow(dead_code)]

use walletd_core::{Account, AccountId, Amount, Transfer, TransferId};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Plain accounts 1..=count on ledger 1.
pub fn accounts(count: u128) -> Vec<Account> {
    (1..=count).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect()
}

/// A transfer on ledger 1 whose id carries the current time (as a live client's would).
pub fn transfer(low: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id: TransferId::from_parts(now_ms(), low),
        debit_account_id: AccountId(debit),
        credit_account_id: AccountId(credit),
        amount: Amount(amount),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// A `walletd serve` child process, killed (SIGKILL) when dropped so a failing test never
/// leaves one running.
pub struct ServerChild(pub std::process::Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary on `dir` with `args` added; returns it, the protocol address it
/// printed (the readiness signal: it prints once it listens) and, when `args` ask for one, the
/// metrics address.
pub fn serve_binary(
    dir: &std::path::Path,
    args: &[&str],
) -> (ServerChild, std::net::SocketAddr, Option<std::net::SocketAddr>) {
    let (child, addr, lines) = serve_binary_lines(dir, "127.0.0.1:0", args);
    let metrics = args.contains(&"--metrics-addr").then(|| {
        let line = lines.recv_timeout(LINE_TIMEOUT).expect("a metrics line");
        line.trim_start_matches("metrics on http://").trim_end_matches("/metrics").parse().expect("an address")
    });
    (child, addr, metrics)
}

/// How long a child may take to print a line the test waits for.
pub const LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `serve_binary` listening on `addr`, with every line the child prints after its listening
/// line delivered on the channel (a thread reads its stdout to the end, so the child never
/// blocks on a full pipe).
pub fn serve_binary_lines(
    dir: &std::path::Path,
    addr: &str,
    args: &[&str],
) -> (ServerChild, std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(if std::env::var_os("WALLETD_TEST_STDERR").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .expect("walletd serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = ServerChild(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let listening = lines.next().expect("a line").expect("readable");
    let addr = listening.split_whitespace().nth(3).expect("walletd listening on ADDR").parse().expect("an address");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    (child, addr, receiver)
}
