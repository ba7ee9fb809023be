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
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("walletd serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = ServerChild(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let listening = lines.next().expect("a line").expect("readable");
    let addr = listening.split_whitespace().nth(3).expect("walletd listening on ADDR").parse().expect("an address");
    let metrics = args.contains(&"--metrics-addr").then(|| {
        let line = lines.next().expect("a metrics line").expect("readable");
        line.trim_start_matches("metrics on http://").trim_end_matches("/metrics").parse().expect("an address")
    });
    // Keep reading stdout on a thread so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr, metrics)
}
