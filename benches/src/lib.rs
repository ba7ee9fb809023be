//! walletd's benchmarks: the seeded workloads (`workload`), the end-to-end load generator
//! behind `walletd bench` (`load`), and a driver that keeps one ledger busy with fresh batches
//! for the criterion benchmarks and the profiler. It depends on the core and the client
//! library only: the binary hands the load generator a way to start a server.

pub mod load;
pub mod workload;

use walletd_core::{Batch, Config, Ledger, Output, Transfer, BATCH_EVENTS_MAX};
pub use workload::*;

/// A ledger with `accounts_count` accounts and a full 1M-transfer window, driven with fresh
/// batches of 8189; the clock advances 1 ms per batch. Used by the criterion benchmarks and
/// the profiling example.
pub struct ApplyDriver {
    pub ledger: Ledger,
    pub output: Output,
    pub picker: Picker,
    pub rng: Rng,
    pub ids: IdMaker,
    pub timestamp_ns: u64,
}

impl ApplyDriver {
    pub const BATCH: usize = BATCH_EVENTS_MAX as usize;

    pub fn config(accounts_count: u64) -> Config {
        Config {
            accounts_max: u32::try_from(accounts_count).expect("accounts fit in u32"),
            transfers_max: (1 << 20) - BATCH_EVENTS_MAX,
            pending_max: 1 << 16,
            limits_max: 1024,
            ledgers_max: 16,
            batch_events_max: BATCH_EVENTS_MAX,
            id_future_ms_max: 10_000,
            hash_seed: 1,
        }
    }

    pub fn new(accounts_count: u64, distribution: Distribution) -> ApplyDriver {
        let mut ledger = Ledger::new(Self::config(accounts_count)).expect("config");
        let mut output = Output::new(ledger.config());
        let mut timestamp_ns = EPOCH_NS;
        for chunk in accounts(accounts_count).chunks(Self::BATCH) {
            ledger.apply(timestamp_ns, Batch::CreateAccounts(chunk), &mut output);
            assert!(output.results.is_empty(), "account creation failed");
            timestamp_ns = ledger.timestamp_next_min();
        }
        let mut rng = Rng(42);
        let picker = Picker::new(accounts_count, distribution, &mut rng);
        let mut driver = ApplyDriver { ledger, output, picker, rng, ids: IdMaker::default(), timestamp_ns };
        // Fill the window once so that every measured batch also evicts.
        let mut batch = Vec::with_capacity(Self::BATCH);
        for _ in 0..(1 << 20) / Self::BATCH + 1 {
            driver.single_phase_batch(&mut batch);
            driver.apply(&batch);
        }
        driver
    }

    pub fn time_ms(&self) -> u64 {
        self.timestamp_ns / 1_000_000
    }

    pub fn single_phase_batch(&mut self, batch: &mut Vec<Transfer>) {
        self.single_phase_batch_at(batch, self.time_ms());
    }

    /// A batch whose ids carry `time_ms`, for batches made ahead of the time they are applied.
    pub fn single_phase_batch_at(&mut self, batch: &mut Vec<Transfer>, time_ms: u64) {
        single_phase(batch, Self::BATCH, &self.picker, &mut self.rng, &mut self.ids, time_ms);
    }

    /// Applies one batch; every transfer must succeed.
    pub fn apply(&mut self, batch: &[Transfer]) {
        self.ledger.apply(self.timestamp_ns, Batch::CreateTransfers(batch), &mut self.output);
        assert!(self.output.results.is_empty(), "a benchmark transfer failed: {:?}", self.output.results.first());
        self.timestamp_ns = self.ledger.timestamp_next_min().max(self.timestamp_ns + 1_000_000);
    }
}
