//! The exporter's pipeline without a broker, for a profiler or a quick figure: a follower over
//! the data directory `DIR` (made by `walletd generate`), every op turned into the exporter's
//! Kafka record parts. Argument 2 picks what runs: `encode` (the exporter's encoder, default),
//! `serde` (the `Event` model and serde_json, as before `encode.rs`) or `follow` (the follower
//! and its replica ledger alone); argument 3, how many passes (default 3). Prints events/s and
//! ns per event of each pass.
//!
//! `cargo build --release -p walletd-benches --example export_profile &&
//!  valgrind --tool=callgrind target/release/examples/export_profile DIR encode 1`

use std::path::Path;
use std::time::Instant;
use walletd_export::encode::{op_records_encode, OpRecords};
use walletd_export::op_records_reference;
use walletd_replay::{FollowOptions, Follower, Outcome};

#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

const PARTITIONS: i32 = 32;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: export_profile DIR [encode|serde|follow] [passes]");
    let mode = std::env::args().nth(2).unwrap_or_else(|| "encode".into());
    let passes: u32 = std::env::args().nth(3).map_or(3, |arg| arg.parse().expect("passes: a number"));
    assert!(["encode", "serde", "follow"].contains(&mode.as_str()), "mode {mode:?}: encode, serde or follow");
    let mut records = OpRecords::default();
    for pass in 1..=passes {
        let start = Instant::now();
        let (events, size_bytes) = pass_run(Path::new(&dir), &mode, &mut records);
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{mode} pass {pass}: {events} events, {size_bytes} payload bytes in {seconds:.3} s: {:.0} events/s, {:.0} ns each",
            events as f64 / seconds,
            seconds * 1e9 / events.max(1) as f64
        );
    }
}

/// One pass over the journal: the events made and their payload bytes (0 for `follow`).
fn pass_run(dir: &Path, mode: &str, records: &mut OpRecords) -> (u64, u64) {
    let mut follower = Follower::open(dir, None, FollowOptions::default()).expect("open a follower");
    let (mut events, mut size_bytes) = (0u64, 0u64);
    let mut admit_all = |_, _| Ok::<bool, ()>(true);
    while let Some(op) = follower.next_op().expect("next op") {
        match mode {
            "encode" => {
                op_records_encode(&op, PARTITIONS, &mut admit_all, records).expect("admits all");
                events += records.records().len() as u64;
                size_bytes += records.records().iter().map(|record| records.payload(record).len() as u64).sum::<u64>();
            }
            "serde" => {
                let records = op_records_reference(&op, PARTITIONS);
                events += records.len() as u64;
                size_bytes += records.iter().map(|record| record.payload.len() as u64).sum::<u64>();
                std::hint::black_box(&records);
            }
            _ => {
                if let Outcome::Command { output, .. } = op.outcome {
                    events += output.changes.iter().filter(|change| change.kind.is_transfer()).count() as u64;
                }
            }
        }
    }
    (events, size_bytes)
}
