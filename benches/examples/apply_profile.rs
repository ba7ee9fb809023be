//! Applies uniform batches (argument 1: how many) to a ledger of 1M accounts (argument 2) for a profiler to look at, without the
//! benchmark harness around it:
//! `cargo build --release -p walletd-benches --example apply_profile &&
//!  perf record -g target/release/examples/apply_profile 300`

use std::time::Instant;
#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

use walletd_benches::{ApplyDriver, Distribution};

fn main() {
    let batches: usize = std::env::args().nth(1).map_or(200, |arg| arg.parse().expect("batches: a number"));
    let accounts: u64 = std::env::args().nth(2).map_or(1_000_000, |arg| arg.parse().expect("accounts: a number"));
    let mut driver = ApplyDriver::new(accounts, Distribution::Uniform);
    // apply() advances the clock 1 ms per batch: give each batch's ids that millisecond.
    let time_ms = driver.time_ms();
    let prepared: Vec<Vec<_>> = (0..batches as u64)
        .map(|index| {
            let mut batch = Vec::with_capacity(ApplyDriver::BATCH);
            driver.single_phase_batch_at(&mut batch, time_ms + index);
            batch
        })
        .collect();
    let start = Instant::now();
    for batch in &prepared {
        driver.apply(batch);
    }
    let seconds = start.elapsed().as_secs_f64();
    let transfers = (batches * ApplyDriver::BATCH) as f64;
    println!(
        "{transfers} transfers in {seconds:.3} s: {:.0} transfers/s, {:.1} ns each",
        transfers / seconds,
        seconds * 1e9 / transfers
    );
}
