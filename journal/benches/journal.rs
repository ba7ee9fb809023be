//! Journal throughput against batch size, per backend, next to the disk's raw fdatasync rate.
//!
//! The journal's cost is dominated by the sync at each commit, so every figure here is read
//! against `raw_sync`: a 4 KiB write + fdatasync loop, once into fresh preallocated space (what
//! an append into a fallocated segment pays: unwritten-extent conversion) and once over the same
//! written block (a pure data sync). `append_commit` appends `batch` records and commits once,
//! for small bodies (128 bytes, one transfer) and ~1 MiB bodies (8189 transfers of 128 bytes),
//! with each write mode and preallocation. Files go under /work/tmp (not /tmp, which may be a
//! tmpfs) or $WALLETD_BENCH_DIR. Run:
//!
//!     CARGO_TARGET_DIR=/work/target-journal cargo bench -p walletd-journal --bench journal

use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walletd_journal::{FileStorage, Journal, JournalConfig, Preallocate, RecordKind, WriteMode};

const SEGMENT_SIZE_BYTES: u64 = 64 << 20;
const TRANSFER_SIZE_BYTES: usize = 128;
const TRANSFERS_PER_MIB: usize = 8189;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("WALLETD_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/tmp"));
    std::fs::create_dir_all(&base).expect("bench base dir");
    tempfile::tempdir_in(base).expect("bench temp dir")
}

fn raw_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_sync");
    group.throughput(Throughput::Elements(1));
    let dir = bench_dir();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("raw"))
        .expect("raw file");
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for writing.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, SEGMENT_SIZE_BYTES as i64) };
    assert_eq!(allocated, 0, "fallocate");
    let block = [0x5au8; 4096];
    let mut offset = 0u64;
    group.bench_function("write_4k_fdatasync_fresh_fallocated", |b| {
        b.iter(|| {
            file.write_all_at(&block, offset).expect("write");
            file.sync_data().expect("fdatasync");
            offset = (offset + 4096) % SEGMENT_SIZE_BYTES;
        })
    });
    group.bench_function("write_4k_fdatasync_same_block", |b| {
        b.iter(|| {
            file.write_all_at(&block, 0).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });
    group.finish();
}

fn storages() -> [(&'static str, FileStorage); 4] {
    let storage = |write_mode, preallocate| FileStorage { write_mode, preallocate };
    [
        ("mmap_fallocate", storage(WriteMode::Mmap, Preallocate::Fallocate)),
        ("pwrite_fallocate", storage(WriteMode::Pwrite, Preallocate::Fallocate)),
        ("mmap_zeros", storage(WriteMode::Mmap, Preallocate::WriteZeros)),
        ("pwrite_zeros", storage(WriteMode::Pwrite, Preallocate::WriteZeros)),
    ]
}

/// Appends `batch` records of `body` and commits, once per iteration, on a journal that lives
/// for the whole benchmark (so rotation cost is included, amortized).
fn append_commit_one(c: &mut Criterion, group_name: &str, body_size_bytes: usize, batches: &[u64]) {
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let body = vec![0xa5u8; body_size_bytes];
    for (name, storage) in storages() {
        for &batch in batches {
            group.throughput(Throughput::Bytes(batch * body_size_bytes as u64));
            let dir = bench_dir();
            let config = JournalConfig { dir: dir.path().to_path_buf(), segment_size_bytes: SEGMENT_SIZE_BYTES };
            let (mut journal, _) = Journal::open(storage, config).expect("open");
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for _ in 0..batch {
                        let op = journal.op_appended() + 1;
                        journal.append(op, op, RecordKind::CommandBatch, &body).expect("append");
                    }
                    black_box(journal.commit().expect("commit"))
                })
            });
        }
    }
    group.finish();
}

fn append_commit(c: &mut Criterion) {
    append_commit_one(c, "append_commit_body_128B", TRANSFER_SIZE_BYTES, &[1, 16, 256, 4096]);
    let body_mib = TRANSFER_SIZE_BYTES * TRANSFERS_PER_MIB;
    append_commit_one(c, "append_commit_body_1MiB", body_mib, &[1, 4]);
}

criterion_group!(benches, raw_sync, append_commit);
criterion_main!(benches);
