//! Workloads for `walletd generate`, the load generator and the benchmarks: account sets and transfer batches with
//! uniform, Zipf and hot-merchant distributions, two-phase and linked shapes. Seeded, so a
//! figure can be reproduced; floats appear only here, in drawing the Zipf ranks.

use walletd_core::{Account, AccountId, Amount, Transfer, TransferFlags, TransferId};

/// 2026-11-22T00:00:00Z in nanoseconds.
pub const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How debit and credit accounts are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent 1: a few accounts take most of the traffic.
    Zipf,
    /// Every transfer credits one merchant account (index 0); debits are uniform.
    HotMerchant,
}

impl std::str::FromStr for Distribution {
    type Err = String;

    fn from_str(text: &str) -> Result<Distribution, String> {
        match text {
            "uniform" => Ok(Distribution::Uniform),
            "zipf" => Ok(Distribution::Zipf),
            "hot" | "hot-merchant" => Ok(Distribution::HotMerchant),
            other => Err(format!("unknown distribution {other:?}: use uniform, zipf or hot")),
        }
    }
}

/// Account `index` (from 0) has id `index + 1`.
pub fn account_id(index: u64) -> AccountId {
    AccountId(u128::from(index) + 1)
}

/// `count` plain accounts on ledger 1 (debits may exceed credits, so every transfer succeeds).
pub fn accounts(count: u64) -> Vec<Account> {
    (0..count).map(|index| Account { id: account_id(index), ledger: 1, code: 1, ..Account::default() }).collect()
}

/// Draws account indexes.
pub struct Picker {
    accounts_count: u64,
    distribution: Distribution,
    /// Zipf: cumulative weights over the ranks, for inverse-CDF sampling.
    cumulative: Vec<f64>,
    /// Zipf: rank → account index, shuffled so hot accounts are spread over the table.
    ranks: Vec<u64>,
}

impl Picker {
    pub fn new(accounts_count: u64, distribution: Distribution, rng: &mut Rng) -> Picker {
        assert!(accounts_count >= 2);
        let (mut cumulative, mut ranks) = (Vec::new(), Vec::new());
        if distribution == Distribution::Zipf {
            let mut total = 0.0;
            cumulative = (1..=accounts_count)
                .map(|rank| {
                    total += 1.0 / rank as f64;
                    total
                })
                .collect();
            ranks = (0..accounts_count).collect();
            for index in (1..ranks.len()).rev() {
                ranks.swap(index, rng.below(index as u64 + 1) as usize);
            }
        }
        Picker { accounts_count, distribution, cumulative, ranks }
    }

    fn uniform(&self, rng: &mut Rng) -> u64 {
        rng.below(self.accounts_count)
    }

    fn zipf(&self, rng: &mut Rng) -> u64 {
        let target = rng.unit() * self.cumulative[self.cumulative.len() - 1];
        let rank = self.cumulative.partition_point(|weight| *weight < target);
        self.ranks[rank.min(self.ranks.len() - 1)]
    }

    /// (debit index, credit index), never equal.
    pub fn pair(&self, rng: &mut Rng) -> (u64, u64) {
        loop {
            let (debit, credit) = match self.distribution {
                Distribution::Uniform => (self.uniform(rng), self.uniform(rng)),
                Distribution::Zipf => (self.zipf(rng), self.zipf(rng)),
                Distribution::HotMerchant => (self.uniform(rng), 0),
            };
            if debit != credit {
                return (debit, credit);
            }
        }
    }
}

/// Makes transfer ids: the current millisecond in the top bits, a counter below.
#[derive(Clone, Debug, Default)]
pub struct IdMaker {
    counter: u128,
}

impl IdMaker {
    /// Ids whose counter starts high in its 80 bits, so runs with different prefixes (seeds)
    /// never collide.
    pub fn with_prefix(prefix: u64) -> IdMaker {
        IdMaker { counter: u128::from(prefix) << 48 }
    }

    pub fn next(&mut self, time_ms: u64) -> TransferId {
        self.counter += 1;
        TransferId::from_parts(time_ms, self.counter)
    }
}

/// A single-phase transfer of `amount` between two account indexes.
pub fn transfer(id: TransferId, debit: u64, credit: u64, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: account_id(debit),
        credit_account_id: account_id(credit),
        amount: Amount(amount),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// Fills `batch` with `count` single-phase transfers.
pub fn single_phase(
    batch: &mut Vec<Transfer>,
    count: usize,
    picker: &Picker,
    rng: &mut Rng,
    ids: &mut IdMaker,
    time_ms: u64,
) {
    batch.clear();
    for _ in 0..count {
        let (debit, credit) = picker.pair(rng);
        batch.push(transfer(ids.next(time_ms), debit, credit, 1 + u128::from(rng.below(1000))));
    }
}

/// Fills `batch` with `count` holds, and `posts` with a post of each.
pub fn two_phase(
    holds: &mut Vec<Transfer>,
    posts: &mut Vec<Transfer>,
    count: usize,
    picker: &Picker,
    rng: &mut Rng,
    ids: &mut IdMaker,
    time_ms: u64,
) {
    single_phase(holds, count, picker, rng, ids, time_ms);
    posts.clear();
    for hold in holds.iter_mut() {
        hold.flags = TransferFlags(TransferFlags::PENDING);
        hold.timeout_s = 60;
        posts.push(Transfer {
            id: ids.next(time_ms),
            pending_id: hold.id,
            flags: TransferFlags(TransferFlags::POST_PENDING),
            ..Transfer::default()
        });
    }
}

/// Fills `batch` with `pairs` linked pairs: a payment, and its fee to account 0.
pub fn linked_pairs(
    batch: &mut Vec<Transfer>,
    pairs: usize,
    picker: &Picker,
    rng: &mut Rng,
    ids: &mut IdMaker,
    time_ms: u64,
) {
    batch.clear();
    for _ in 0..pairs {
        let (debit, credit) = loop {
            let (debit, credit) = picker.pair(rng);
            if debit != 0 && credit != 0 {
                break (debit, credit);
            }
        };
        let mut payment = transfer(ids.next(time_ms), debit, credit, 100 + u128::from(rng.below(1000)));
        payment.flags = TransferFlags(TransferFlags::LINKED);
        batch.push(payment);
        batch.push(transfer(ids.next(time_ms), debit, 0, 1));
    }
}
