//! The follower on a live server's data directory, from another thread as a platform process
//! would run it: while `walletd serve` takes load, rotates segments, snapshots and archives,
//! and is killed with SIGKILL and restarted, the follower yields every durable op once and in
//! order, and its replica ledger ends with exactly the balances the server reports.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use walletd_core::{AccountId, Output, Query, Transfer};
use walletd_gateway::{Client, ClientOptions};
use walletd_replay::{FollowOptions, Follower, Outcome, Position};

const ACCOUNTS: u128 = 64;

fn client(addr: std::net::SocketAddr) -> Client {
    let options = ClientOptions { request_timeout: Duration::from_secs(30), ..ClientOptions::default() };
    Client::connect(addr, options).expect("client connects")
}

fn serve(dir: &std::path::Path) -> (ServerChild, std::net::SocketAddr) {
    let args = ["--checkpoint-ops", "8", "--snapshot-ops", "32", "--segment-size", "65536", "--accounts-max", "4096"];
    let (child, addr, _) = serve_binary(dir, &args);
    (child, addr)
}

/// `rounds` batches of transfers between the accounts, each acknowledged.
fn load(client: &Client, low: &mut u128, rounds: u32) {
    for _ in 0..rounds {
        let batch: Vec<Transfer> = (0..40)
            .map(|_| {
                *low += 1;
                transfer(*low, 1 + *low % 32, 33 + *low % 32, 1 + *low % 5)
            })
            .collect();
        assert!(client.create_transfers(&batch).expect("acknowledged").is_empty());
    }
}

/// Follows until told to stop and caught up with the durable mark; returns the positions seen.
fn follow(dir: std::path::PathBuf, stop: Arc<AtomicBool>) -> (Vec<Position>, Follower) {
    // Called once the server listens: by then it has recovered and published its durable mark.
    assert!(walletd_replay::durable_read(&dir).expect("read the mark").is_some(), "a listening node published");
    let mut follower = Follower::open(&dir, None, FollowOptions::default()).expect("open a follower");
    let mut positions = Vec::new();
    loop {
        while let Some(op) = follower.next_op().expect("the follower reads every durable op") {
            if let Outcome::Command { output, .. } = op.outcome {
                assert!(output.results.is_empty() || op.op == 1, "the load's transfers all succeed");
            }
            positions.push(op.position());
        }
        if stop.load(Ordering::Acquire) {
            let mark = walletd_replay::durable_read(&dir).expect("mark").expect("a mark");
            if follower.position().op >= mark.op {
                return (positions, follower);
            }
        }
        follower.wait(Duration::from_millis(20)).expect("wait");
    }
}

#[test]
fn a_follower_keeps_up_with_a_live_server_through_archiving_and_a_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let following = std::thread::spawn({
        let (dir, stop) = (dir.path().to_path_buf(), Arc::clone(&stop));
        move || follow(dir, stop)
    });
    let mut low = 0;
    {
        let load_client = client(addr);
        load_client.create_accounts(&accounts(ACCOUNTS)).expect("accounts");
        load(&load_client, &mut low, 150);
    }
    server.0.kill().expect("SIGKILL");
    server.0.wait().expect("reaped");
    let (server, addr) = serve(dir.path());
    let check = client(addr);
    load(&check, &mut low, 150);
    stop.store(true, Ordering::Release);
    let (positions, follower) = following.join().expect("the follower thread");

    let archived = std::fs::read_dir(dir.path().join("journal/archive")).map_or(0, |entries| entries.count());
    assert!(archived > 0, "the server archived segments under the follower");
    let ops: Vec<u64> = positions.iter().map(|position| position.op).collect();
    assert_eq!(ops, (1..=ops.len() as u64).collect::<Vec<_>>(), "every op once, in order");
    let ids: Vec<AccountId> = (1..=ACCOUNTS).map(AccountId).collect();
    let served = check.lookup_accounts(&ids).expect("lookup");
    let mut output = Output::new(follower.ledger().config());
    follower.ledger().query(Query::LookupAccounts(&ids), &mut output);
    assert_eq!(output.accounts, served, "the follower's replica has the server's balances");
    drop(server);
}
