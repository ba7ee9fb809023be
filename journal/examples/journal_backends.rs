//! Chooses the default `FileStorage`: runs the four backends round-robin (so machine noise hits
//! them alike), each committing one record per commit, and prints per-commit latency quantiles,
//! the worst commit (which includes segment rotation: `WriteZeros` writes the whole new segment
//! then), and throughput. Criterion's sequential groups were too noisy on a shared 2-core
//! machine to separate them. Run:
//!
//!     cargo run --release -p walletd-journal --example journal_backends -- [body_size_bytes] [rounds]
//!
//! Files go under $WALLETD_BENCH_DIR or /work/tmp (not /tmp, which may be a tmpfs).

use std::path::PathBuf;
use std::time::Instant;

use walletd_journal::{FileStorage, Journal, JournalConfig, Preallocate, RecordKind, WriteMode};

const SEGMENT_SIZE_BYTES: u64 = 64 << 20;
const COMMITS_PER_ROUND: usize = 64;

struct Backend {
    name: &'static str,
    journal: Journal,
    commit_ns: Vec<u64>,
    _dir: tempfile::TempDir,
}

fn backend_open(name: &'static str, write_mode: WriteMode, preallocate: Preallocate) -> Backend {
    let base = std::env::var_os("WALLETD_BENCH_DIR").map_or("/work/tmp".into(), PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let config = JournalConfig { dir: dir.path().to_path_buf(), segment_size_bytes: SEGMENT_SIZE_BYTES };
    let storage = FileStorage { write_mode, preallocate };
    let (journal, _) = Journal::open(storage, config).expect("open");
    Backend { name, journal, commit_ns: Vec::new(), _dir: dir }
}

fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    assert!(!sorted_ns.is_empty());
    let index = ((sorted_ns.len() - 1) as f64 * q).round() as usize;
    sorted_ns[index] as f64 / 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let body_size_bytes: usize = args.next().map_or(8189 * 128, |a| a.parse().expect("size"));
    let rounds: usize = args.next().map_or(8, |a| a.parse().expect("rounds"));
    let body = vec![0xa5u8; body_size_bytes];
    let mut backends = [
        backend_open("mmap_fallocate", WriteMode::Mmap, Preallocate::Fallocate),
        backend_open("pwrite_fallocate", WriteMode::Pwrite, Preallocate::Fallocate),
        backend_open("mmap_zeros", WriteMode::Mmap, Preallocate::WriteZeros),
        backend_open("pwrite_zeros", WriteMode::Pwrite, Preallocate::WriteZeros),
    ];
    for _ in 0..rounds {
        for backend in backends.iter_mut() {
            for _ in 0..COMMITS_PER_ROUND {
                let start = Instant::now();
                let op = backend.journal.op_appended() + 1;
                backend.journal.append(op, op, RecordKind::CommandBatch, &body).expect("append");
                backend.journal.commit().expect("commit");
                backend.commit_ns.push(start.elapsed().as_nanos() as u64);
            }
        }
    }
    println!("body {body_size_bytes} B, one record per commit, {rounds} rounds x {COMMITS_PER_ROUND} commits, 64 MiB segments");
    println!("{:18} {:>9} {:>9} {:>10} {:>10} {:>9}", "backend", "p50 us", "p90 us", "max us", "commits/s", "MB/s");
    for backend in backends.iter_mut() {
        backend.commit_ns.sort_unstable();
        let total_s = backend.commit_ns.iter().sum::<u64>() as f64 / 1e9;
        let commits = backend.commit_ns.len() as f64;
        println!(
            "{:18} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>9.1}",
            backend.name,
            quantile_us(&backend.commit_ns, 0.5),
            quantile_us(&backend.commit_ns, 0.9),
            quantile_us(&backend.commit_ns, 1.0),
            commits / total_s,
            commits * body_size_bytes as f64 / total_s / 1e6
        );
    }
}
