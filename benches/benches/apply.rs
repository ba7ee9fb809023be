//! Apply throughput on one thread, batches of 8189 transfers, 1M accounts: uniform, Zipf, one
//! hot merchant credited by every transfer, two-phase (hold then post), linked pairs (payment +
//! fee). The ledger's window holds 1M transfers, so evictions run as in steady state.
//!
//! `cargo bench -p walletd-benches --bench apply`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

use walletd_benches::*;
use walletd_core::{Transfer, BATCH_EVENTS_MAX};

const BATCH: usize = BATCH_EVENTS_MAX as usize;
const ACCOUNTS: u64 = 1_000_000;

/// Times only `apply`: each iteration first builds its batches (fresh ids) untimed.
fn measure(
    c: &mut Criterion,
    name: &str,
    driver: &mut ApplyDriver,
    events: u64,
    make: fn(&mut ApplyDriver) -> Vec<Vec<Transfer>>,
) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(events));
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let batches = make(driver);
                let start = Instant::now();
                for batch in &batches {
                    driver.apply(batch);
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    group.finish();
}

fn single(c: &mut Criterion, name: &str, distribution: Distribution) {
    let mut driver = ApplyDriver::new(ACCOUNTS, distribution);
    let memory = driver.ledger.memory_bytes();
    eprintln!(
        "{name}: {} bytes per account, {} bytes per remembered transfer",
        memory.accounts / u64::from(driver.ledger.config().accounts_max),
        memory.transfers / u64::from(driver.ledger.config().transfer_ring_size()),
    );
    measure(c, name, &mut driver, BATCH as u64, |driver| {
        let mut batch = Vec::with_capacity(BATCH);
        driver.single_phase_batch(&mut batch);
        vec![batch]
    });
}

fn uniform(c: &mut Criterion) {
    single(c, "uniform_1m", Distribution::Uniform);
}

fn zipf(c: &mut Criterion) {
    single(c, "zipf_1m", Distribution::Zipf);
}

fn hot_merchant(c: &mut Criterion) {
    single(c, "hot_merchant_1m", Distribution::HotMerchant);
}

fn two_phase_bench(c: &mut Criterion) {
    let mut driver = ApplyDriver::new(ACCOUNTS, Distribution::Uniform);
    measure(c, "two_phase_1m", &mut driver, 2 * BATCH as u64, |driver| {
        let (mut holds, mut posts) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        let time_ms = driver.time_ms();
        two_phase(&mut holds, &mut posts, BATCH, &driver.picker, &mut driver.rng, &mut driver.ids, time_ms);
        vec![holds, posts]
    });
}

fn linked_bench(c: &mut Criterion) {
    let mut driver = ApplyDriver::new(ACCOUNTS, Distribution::Uniform);
    measure(c, "linked_pairs_1m", &mut driver, 2 * (BATCH as u64 / 2), |driver| {
        let mut batch = Vec::with_capacity(BATCH);
        let time_ms = driver.time_ms();
        linked_pairs(&mut batch, BATCH / 2, &driver.picker, &mut driver.rng, &mut driver.ids, time_ms);
        vec![batch]
    });
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = uniform, zipf, hot_merchant, two_phase_bench, linked_bench
}
criterion_main!(benches);
