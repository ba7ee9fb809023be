//! Applies batches to a ledger for a profiler to look at, without the benchmark harness:
//! argument 1, how many batches (default 200); argument 2, accounts (default 1M); argument 3,
//! `two-phase` to make every batch 8189 holds followed by a batch of their posts.
//! `cargo build --release -p walletd-benches --example apply_profile &&
//!  perf record -g target/release/examples/apply_profile 300`

use std::time::Instant;
use walletd_benches::{two_phase, ApplyDriver, Distribution};

#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

fn main() {
    let batches: usize = std::env::args().nth(1).map_or(200, |arg| arg.parse().expect("batches: a number"));
    let accounts: u64 = std::env::args().nth(2).map_or(1_000_000, |arg| arg.parse().expect("accounts: a number"));
    let two_phase_mode = std::env::args().nth(3).is_some_and(|arg| arg == "two-phase");
    let mut driver = ApplyDriver::new(accounts, Distribution::Uniform);
    // apply() advances the clock 1 ms per batch: give each batch's ids that millisecond.
    let time_ms = driver.time_ms();
    let mut prepared: Vec<Vec<_>> = Vec::new();
    for index in 0..batches as u64 {
        let mut batch = Vec::with_capacity(ApplyDriver::BATCH);
        if two_phase_mode {
            let mut posts = Vec::with_capacity(ApplyDriver::BATCH);
            let time_ms = time_ms + 2 * index;
            two_phase(
                &mut batch,
                &mut posts,
                ApplyDriver::BATCH,
                &driver.picker,
                &mut driver.rng,
                &mut driver.ids,
                time_ms,
            );
            prepared.push(batch);
            prepared.push(posts);
        } else {
            driver.single_phase_batch_at(&mut batch, time_ms + index);
            prepared.push(batch);
        }
    }
    let start = Instant::now();
    for batch in &prepared {
        driver.apply(batch);
    }
    let seconds = start.elapsed().as_secs_f64();
    let transfers = (prepared.len() * ApplyDriver::BATCH) as f64;
    println!(
        "{transfers} transfers in {seconds:.3} s: {:.0} transfers/s, {:.1} ns each",
        transfers / seconds,
        seconds * 1e9 / transfers
    );
}
