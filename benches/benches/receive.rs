//! What a traced frame costs, beside an untraced one in the same run: a full frame of 8189
//! transfers built by the client, received by the server (header decode, `check_request`, the
//! journal's command built, and proven with the ledger's decoder, as a connection thread does),
//! and its trace ids read back per event (as a follower does). The ledger's apply is the same
//! for both (it never reads a trace id), so it is not measured here: see `apply`.
//!
//! `cargo bench -p walletd-benches --bench receive`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
#[global_allocator]
static ALLOCATOR: walletd::memory::HugePages = walletd::memory::HugePages;

use walletd_core::command::COMMAND_HEADER_SIZE_BYTES;
use walletd_core::{
    AccountId, Amount, Batch, CommandScratch, Operation, TraceIds, Transfer, TransferId, BATCH_EVENTS_MAX,
};
use walletd_gateway::protocol::{
    batch_request_append, batch_request_traced_append, check_request, command_check, request_command_encode,
    FrameHeader, FrameOperation, TRACED_BODY_SIZE_MAX_BYTES,
};
use walletd_gateway::HEADER_SIZE_BYTES;

const BATCH: usize = BATCH_EVENTS_MAX as usize;

fn transfers() -> Vec<Transfer> {
    (0..BATCH as u128)
        .map(|index| Transfer {
            id: TransferId::from_parts(1_800_000_000_000, index + 1),
            debit_account_id: AccountId(1 + index % 1000),
            credit_account_id: AccountId(1001 + index % 1000),
            amount: Amount(1 + index % 7),
            ledger: 1,
            code: 1,
            ..Transfer::default()
        })
        .collect()
}

/// The server's receive of one frame: what `Reader::request_build` does.
fn receive(frame: &[u8], command: &mut Vec<u8>, scratch: &mut CommandScratch) -> usize {
    let header = FrameHeader::decode(frame[..HEADER_SIZE_BYTES].try_into().expect("a header")).expect("a valid header");
    let body = &frame[HEADER_SIZE_BYTES..];
    let FrameOperation::Ledger(operation) = check_request(&header, body).expect("a valid request") else {
        unreachable!("a ledger operation")
    };
    command.clear();
    request_command_encode(&header, operation, body, command);
    command_check(operation, header.event_count, command, scratch).expect("the ledger decodes it");
    command.len()
}

fn bench(c: &mut Criterion) {
    let transfers = transfers();
    let batch = Batch::CreateTransfers(&transfers);
    let trace_ids: Vec<u128> =
        (0..BATCH as u128).map(|index| 0x4bf9_2f35_77b3_4da6_a3ce_929d_0000_0000 | index).collect();
    let mut untraced = Vec::new();
    batch_request_append(&batch, 1, 2, &mut untraced);
    let mut traced = Vec::new();
    batch_request_traced_append(&batch, &trace_ids, 1, 2, &mut traced);
    eprintln!("frame bytes: untraced {}, traced {}", untraced.len(), traced.len());

    let mut group = c.benchmark_group("client_frame");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut frame = Vec::with_capacity(HEADER_SIZE_BYTES + TRACED_BODY_SIZE_MAX_BYTES as usize);
    group.bench_function("untraced", |b| {
        b.iter(|| {
            frame.clear();
            batch_request_append(&batch, 1, 2, &mut frame);
            frame.len()
        })
    });
    group.bench_function("traced", |b| {
        b.iter(|| {
            frame.clear();
            batch_request_traced_append(&batch, &trace_ids, 1, 2, &mut frame);
            frame.len()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("receive");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut command = Vec::with_capacity(COMMAND_HEADER_SIZE_BYTES + TRACED_BODY_SIZE_MAX_BYTES as usize);
    let mut scratch = CommandScratch::new(BATCH_EVENTS_MAX);
    group.bench_function("untraced", |b| b.iter(|| receive(&untraced, &mut command, &mut scratch)));
    group.bench_function("traced", |b| b.iter(|| receive(&traced, &mut command, &mut scratch)));
    group.finish();

    // A follower reading every event's trace id from the journaled command.
    receive(&traced, &mut command, &mut scratch);
    assert_eq!(TraceIds::of_command(&command).expect("traced").get(7), trace_ids[7]);
    let mut group = c.benchmark_group("trace_ids");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("read_all", |b| {
        b.iter(|| {
            let ids = TraceIds::of_command(&command).expect("a command");
            (0..BATCH).fold(0u128, |sum, index| sum ^ ids.get(index))
        })
    });
    group.finish();
    assert_eq!(Operation::CreateTransfers.event_size_bytes(), 128);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
