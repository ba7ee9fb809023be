//! The exporter's CPU per event without a broker: a follower over a journal made by `walletd
//! generate`'s code (100,000 transfers, 5% holds, 10,000 accounts), its ops turned into what the
//! exporter hands the Kafka producer (key, partition, JSON payload, position header). Three
//! passes over the same journal in the same run: the follower alone (the replica ledger that
//! recomputes the outcomes), the follower with the `Event` model and serde_json (how the
//! exporter encoded before `encode.rs`), and the follower with the encoder the exporter uses.
//! The encoding's own cost is the difference from the first.
//!
//! `cargo bench -p walletd-benches --bench export`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::{Path, PathBuf};
use std::time::Duration;
use walletd::generate::{generate, GenerateOptions};
use walletd_export::encode::{op_records_encode, OpRecords};
use walletd_export::op_records_reference;
use walletd_replay::{DataDir, FollowOptions, Follower, Outcome};

#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

const TRANSFERS: u64 = 100_000;
const PARTITIONS: i32 = 32;

/// A generated data directory, removed on drop.
struct Journal {
    dir: PathBuf,
    events: u64,
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn journal_generate() -> Journal {
    let dir = std::env::temp_dir().join(format!("walletd-bench-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = GenerateOptions { transfers: TRANSFERS, accounts: 10_000, seed: 11, ..GenerateOptions::default() };
    generate(&DataDir::new(&dir), &options).expect("generate a journal");
    let mut journal = Journal { dir, events: 0 };
    journal.events = follow_only(&journal.dir);
    assert!(journal.events >= TRANSFERS, "every transfer is an event: {}", journal.events);
    journal
}

fn follower(dir: &Path) -> Follower {
    Follower::open(dir, None, FollowOptions::default()).expect("open a follower")
}

/// The follower alone: the transfer changes it recomputed.
fn follow_only(dir: &Path) -> u64 {
    let mut follower = follower(dir);
    let mut changes = 0u64;
    while let Some(op) = follower.next_op().expect("next op") {
        if let Outcome::Command { output, .. } = op.outcome {
            changes += output.changes.iter().filter(|change| change.kind.is_transfer()).count() as u64;
        }
    }
    changes
}

/// The exporter's encoding before `encode.rs`: an `Event` per change, serde_json into a new
/// `Vec`, the key cloned, the position header formatted. Returns the payload bytes.
fn follow_serde(dir: &Path) -> u64 {
    let mut follower = follower(dir);
    let mut size_bytes = 0u64;
    while let Some(op) = follower.next_op().expect("next op") {
        let records = op_records_reference(&op, PARTITIONS);
        size_bytes += records.iter().map(|record| record.payload.len() as u64).sum::<u64>();
        std::hint::black_box(&records);
    }
    size_bytes
}

/// The exporter's encoding now: one reused buffer of record parts per op.
fn follow_encode(dir: &Path, records: &mut OpRecords) -> u64 {
    let mut follower = follower(dir);
    let mut size_bytes = 0u64;
    let mut admit_all = |_, _| Ok::<bool, ()>(true);
    while let Some(op) = follower.next_op().expect("next op") {
        op_records_encode(&op, PARTITIONS, &mut admit_all, records).expect("admits all");
        size_bytes += records.records().iter().map(|record| records.payload(record).len() as u64).sum::<u64>();
        std::hint::black_box(&*records);
    }
    size_bytes
}

fn export(c: &mut Criterion) {
    let journal = journal_generate();
    let (serde_bytes, encode_bytes) =
        (follow_serde(&journal.dir), follow_encode(&journal.dir, &mut OpRecords::default()));
    assert_eq!(serde_bytes, encode_bytes, "both encodings write the same bytes");
    eprintln!(
        "{} events, {} payload bytes ({} per event)",
        journal.events,
        encode_bytes,
        encode_bytes / journal.events
    );
    let mut group = c.benchmark_group("export");
    group.throughput(Throughput::Elements(journal.events));
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("follow", |b| b.iter(|| follow_only(&journal.dir)));
    group.bench_function("follow_serde", |b| b.iter(|| follow_serde(&journal.dir)));
    let mut records = OpRecords::default();
    group.bench_function("follow_encode", |b| b.iter(|| follow_encode(&journal.dir, &mut records)));
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
