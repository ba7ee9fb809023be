//! Writes the seed corpora, `fuzz/corpus/<target>/seed-*`: valid frames, commands, journals,
//! snapshots and images made by the code that writes them for real (the protocol's encoders,
//! the ledger, `Journal` on a `SimStorage`, `snapshot_save`), plus a few of each kind of damage.
//! Deterministic: rerunning it rewrites the same files.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use walletd_core::command::{batch_encode, batch_traced_encode, query_encode};
use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, Amount, Batch, Config, Ledger, LimitFlags, Operation, Output,
    Query, Transfer, TransferFlags, TransferId, TransferStatus,
};
use walletd_fuzz::{frames, journal, snapshot};
use walletd_gateway::protocol::{
    accounts_encode, balances_encode, batch_request_append, batch_request_traced_append, frame_append,
    query_request_append, request_append, results_encode, transfer_records_encode,
};
use walletd_gateway::{FrameHeader, FrameOperation, Status, HEADER_SIZE_BYTES};
use walletd_journal::{record_decode, Journal, JournalConfig, RecordKind, SimStorage, SEGMENT_HEADER_SIZE_BYTES};

/// 2026-11-22T00:00:00Z, as the core's tests use.
const EPOCH_NS: u64 = 1_795_305_600 * 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut book = Book::new();
    book.populate();
    let targets: [(&str, Seeds); 7] = [
        ("frame_request", frame_request_seeds(&book)),
        ("frame_reply", frame_reply_seeds(&mut book)),
        ("command", command_seeds(&book)),
        ("journal_recovery", journal_seeds(&book, Target::Recovery)),
        ("journal_reader", journal_seeds(&book, Target::Reader)),
        ("snapshot_load", snapshot_seeds()),
        ("ledger_image", image_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = corpus.join(target);
        seeds_write(&dir, &seeds);
        let size_bytes: usize = seeds.iter().map(|(_, bytes)| bytes.len()).sum();
        println!("{target}: {} seeds, {size_bytes} bytes", seeds.len());
    }
}

/// A target's seeds: (name, input).
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn seeds_write(dir: &Path, seeds: &[(&str, Vec<u8>)]) {
    fs::create_dir_all(dir).expect("create corpus directory");
    for entry in fs::read_dir(dir).expect("list corpus directory") {
        let path = entry.expect("corpus entry").path();
        if path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("seed-")) {
            fs::remove_file(&path).expect("remove an old seed");
        }
    }
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

// ---------------------------------------------------------------------------------------------
// A small ledger, driven as the pipeline drives it, whose batches and state the seeds carry.

fn config_tiny() -> Config {
    Config {
        accounts_max: 64,
        transfers_max: 64,
        pending_max: 16,
        limits_max: 8,
        ledgers_max: 4,
        batch_events_max: 64,
        id_future_ms_max: 10_000,
        hash_seed: 0x5eed,
    }
}

struct Book {
    ledger: Ledger,
    output: Output,
    now_ns: u64,
    /// Every mutating batch applied, encoded as a command, with its timestamp.
    commands: Vec<(u64, Vec<u8>)>,
    accounts: Vec<Account>,
    transfers: Vec<Transfer>,
    limits: Vec<AccountLimits>,
}

impl Book {
    fn new() -> Book {
        let ledger = Ledger::new(config_tiny()).expect("config");
        let output = Output::new(ledger.config());
        Book {
            ledger,
            output,
            now_ns: EPOCH_NS,
            commands: Vec::new(),
            accounts: vec![],
            transfers: vec![],
            limits: vec![],
        }
    }

    fn apply(&mut self, batch: Batch<'_>) {
        self.now_ns = self.now_ns.max(self.ledger.timestamp_next_min());
        self.ledger.apply(self.now_ns, batch, &mut self.output);
        let mut command = Vec::new();
        batch_encode(&batch, &mut command);
        self.commands.push((self.now_ns, command));
        self.now_ns = self.ledger.timestamp_next_min() + 1_000 * NS_PER_MS;
    }

    fn transfer_id(&self, low: u128) -> TransferId {
        TransferId::from_parts(self.now_ns / NS_PER_MS, low)
    }

    /// Accounts on two ledgers, wallets among them; single-phase transfers, holds posted,
    /// voided and left open, limits, a closed account.
    fn populate(&mut self) {
        let accounts: Vec<Account> = (1..=6u128)
            .map(|id| Account {
                id: AccountId(id),
                ledger: 1 + (id > 4) as u32,
                code: 10,
                flags: AccountFlags(if id % 2 == 0 { AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS } else { 0 }),
                user_data_64: id as u64 * 7,
                ..Account::default()
            })
            .collect();
        self.apply(Batch::CreateAccounts(&accounts));
        self.accounts = accounts;
        let transfer = |id: TransferId, debit: u128, credit: u128, amount: u128, flags: u16| Transfer {
            id,
            debit_account_id: AccountId(debit),
            credit_account_id: AccountId(credit),
            amount: Amount(amount),
            ledger: 1,
            code: 1,
            flags: TransferFlags(flags),
            ..Transfer::default()
        };
        let pending = TransferFlags::PENDING;
        let transfers = vec![
            transfer(self.transfer_id(1), 1, 2, 1_500, 0),
            transfer(self.transfer_id(2), 2, 4, 200, TransferFlags::LINKED),
            transfer(self.transfer_id(3), 2, 3, 5, 0),
            transfer(self.transfer_id(4), 1, 4, 300, pending),
            Transfer { timeout_s: 60, ..transfer(self.transfer_id(5), 1, 3, 70, pending) },
            transfer(self.transfer_id(6), 3, 1, 40, pending),
        ];
        self.apply(Batch::CreateTransfers(&transfers));
        let resolve = |id: TransferId, pending_id: TransferId, amount: u128, flag: u16| Transfer {
            id,
            pending_id,
            amount: Amount(amount),
            flags: TransferFlags(flag),
            ..Transfer::default()
        };
        let resolutions = vec![
            resolve(self.transfer_id(7), transfers[3].id, 100, TransferFlags::POST_PENDING),
            resolve(self.transfer_id(8), transfers[5].id, 0, TransferFlags::VOID_PENDING),
        ];
        self.apply(Batch::CreateTransfers(&resolutions));
        self.transfers = transfers.into_iter().chain(resolutions).collect();
        let limits = vec![
            AccountLimits {
                account_id: AccountId(1),
                overdraft_max: Amount(10_000),
                daily_debit_amount_max: Amount(5_000),
                daily_debit_count_max: 20,
                flags: LimitFlags(
                    LimitFlags::OVERDRAFT | LimitFlags::DAILY_DEBIT_AMOUNT | LimitFlags::DAILY_DEBIT_COUNT,
                ),
                ..AccountLimits::default()
            },
            AccountLimits {
                account_id: AccountId(3),
                balance_max: Amount(1_000_000),
                monthly_debit_amount_max: Amount(90_000),
                monthly_debit_count_max: 100,
                flags: LimitFlags(LimitFlags::BALANCE_MAX | LimitFlags::MONTHLY_DEBIT_AMOUNT),
                ..AccountLimits::default()
            },
        ];
        self.apply(Batch::SetAccountLimits(&limits));
        self.limits = limits;
        self.apply(Batch::Pulse);
        self.apply(Batch::CloseAccounts(&[AccountId(6)]));
        self.apply(Batch::CreateTransfers(&[transfer(self.transfer_id(9), 1, 2, 25, 0)]));
        self.ledger.verify();
    }
}

fn image_of(ledger: &Ledger) -> Vec<u8> {
    let mut image = Vec::new();
    ledger.image_write(&mut |bytes| image.extend_from_slice(bytes));
    image
}

/// Ledgers in the states the image seeds cover: empty, accounts only, the book, and one whose
/// transfer ring has wrapped (the idempotency horizon moved).
fn ledgers() -> Vec<(&'static str, Ledger)> {
    let empty = Ledger::new(config_tiny()).expect("config");
    let mut accounts_only = Book::new();
    let accounts: Vec<Account> =
        (1..=3u128).map(|id| Account { id: AccountId(id), ledger: 1, code: 1, ..Account::default() }).collect();
    accounts_only.apply(Batch::CreateAccounts(&accounts));
    let mut book = Book::new();
    book.populate();
    let mut wrapped = Book::new();
    wrapped.populate();
    for round in 0..3u128 {
        let transfers: Vec<Transfer> = (0..60u128)
            .map(|index| Transfer {
                id: wrapped.transfer_id(1_000 + round * 100 + index),
                debit_account_id: AccountId(1 + index % 2),
                credit_account_id: AccountId(3),
                amount: Amount(1 + index),
                ledger: 1,
                code: 2,
                ..Transfer::default()
            })
            .collect();
        wrapped.apply(Batch::CreateTransfers(&transfers));
    }
    assert!(wrapped.ledger.horizon_ms() > 0, "the ring wrapped");
    vec![("empty", empty), ("accounts", accounts_only.ledger), ("book", book.ledger), ("wrapped", wrapped.ledger)]
}

// ---------------------------------------------------------------------------------------------
// Frames.

fn frame_request_seeds(book: &Book) -> Seeds {
    let ids = [AccountId(1), AccountId(2), AccountId(7)];
    let transfer_ids = [book.transfers[0].id, book.transfers[4].id];
    let request = |build: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = Vec::new();
        build(&mut frame);
        frame
    };
    let pulse = request(&|out| batch_request_append(&Batch::Pulse, 1, 9, out));
    let accounts = request(&|out| batch_request_append(&Batch::CreateAccounts(&book.accounts[..2]), 2, 9, out));
    let transfers = request(&|out| batch_request_append(&Batch::CreateTransfers(&book.transfers[..3]), 3, 9, out));
    let close = request(&|out| batch_request_append(&Batch::CloseAccounts(&ids[..2]), 4, 9, out));
    let reopen = request(&|out| batch_request_append(&Batch::ReopenAccounts(&ids[..1]), 5, 9, out));
    let limits = request(&|out| batch_request_append(&Batch::SetAccountLimits(&book.limits), 6, 9, out));
    let lookup_accounts = request(&|out| query_request_append(&Query::LookupAccounts(&ids), 7, 9, out));
    let lookup_transfers = request(&|out| query_request_append(&Query::LookupTransfers(&transfer_ids), 8, 9, out));
    let lookup_balances = request(&|out| query_request_append(&Query::LookupBalances(&ids[..2]), 9, 9, out));
    let traced_transfers = request(&|out| {
        let batch = Batch::CreateTransfers(&book.transfers[..3]);
        batch_request_traced_append(&batch, &[0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0, 7], 12, 9, out)
    });
    let traced_close = request(&|out| batch_request_traced_append(&Batch::CloseAccounts(&ids[..1]), &[5], 13, 9, out));
    let ping = request(&|out| request_append(FrameOperation::Ping, 10, 9, &[], 0, out));
    let snapshot = request(&|out| request_append(FrameOperation::Snapshot, 11, 9, &[], 0, out));
    let sealed = frames::SEAL_ALL;
    let mut seeds = vec![
        ("pulse", frames::frames_input(sealed, &[&pulse])),
        ("create_accounts", frames::frames_input(sealed, &[&accounts])),
        ("create_transfers", frames::frames_input(sealed, &[&transfers])),
        ("close_reopen", frames::frames_input(sealed, &[&close, &reopen])),
        ("set_account_limits", frames::frames_input(sealed, &[&limits])),
        ("lookups", frames::frames_input(sealed, &[&lookup_accounts, &lookup_transfers, &lookup_balances])),
        ("ping_snapshot", frames::frames_input(sealed, &[&ping, &snapshot])),
        ("pipelined", frames::frames_input(sealed, &[&ping, &transfers, &lookup_balances, &pulse])),
        ("raw_create_transfers", frames::frames_input(0, &[&transfers])),
        ("traced", frames::frames_input(sealed, &[&traced_transfers, &transfers, &traced_close])),
    ];
    // Damage, each behind a valid frame: what the server must refuse.
    let patched = |frame: &[u8], offset: usize, bytes: &[u8]| {
        let mut frame = frame.to_vec();
        frame[offset..offset + bytes.len()].copy_from_slice(bytes);
        frame
    };
    let bad_magic = patched(&ping, 0, b"WLTX");
    let bad_version = patched(&ping, 4, &2u16.to_le_bytes());
    let unknown_operation = patched(&ping, 6, &99u16.to_le_bytes());
    let reply_flag = patched(&ping, 40, &1u16.to_le_bytes());
    let too_many = patched(&lookup_accounts, 32, &8190u32.to_le_bytes());
    let short_body = patched(&accounts, 32, &3u32.to_le_bytes());
    let flipped_body = patched(&transfers, HEADER_SIZE_BYTES + 20, &[0xff]);
    let too_large = patched(&ping, 36, &(1_048_193u32).to_le_bytes());
    // The traced flag on a frame without the trailer, and on a read.
    let traced_short = patched(&transfers, 40, &2u16.to_le_bytes());
    let traced_read = patched(&lookup_accounts, 40, &2u16.to_le_bytes());
    seeds.extend([
        ("bad_magic", frames::frames_input(frames::SEAL_HEADER, &[&ping, &bad_magic])),
        ("bad_version", frames::frames_input(frames::SEAL_HEADER, &[&bad_version])),
        ("unknown_operation", frames::frames_input(sealed, &[&unknown_operation, &ping])),
        ("reply_flag", frames::frames_input(sealed, &[&reply_flag])),
        ("too_many_events", frames::frames_input(sealed, &[&too_many])),
        ("bad_body_size", frames::frames_input(sealed, &[&short_body])),
        ("bad_body_checksum", frames::frames_input(frames::SEAL_HEADER, &[&flipped_body, &ping])),
        ("body_too_large", frames::frames_input(frames::SEAL_HEADER, &[&too_large])),
        ("traced_bad_body_size", frames::frames_input(sealed, &[&traced_short, &traced_read])),
    ]);
    seeds
}

fn frame_reply_seeds(book: &mut Book) -> Seeds {
    let reply = |operation: Operation, op: u64, count: u32, body: &[u8]| {
        let request = FrameHeader::request(FrameOperation::Ledger(operation), 5, 9, count);
        let mut frame = Vec::new();
        frame_append(&FrameHeader::reply_to(&request, Status::Ok, op, count), body, &mut frame);
        frame
    };
    let mut body = Vec::new();
    let results = [walletd_core::EventResult { index: 1, code: 46 }, walletd_core::EventResult { index: 3, code: 5 }];
    let count = results_encode(&results, &mut body);
    let create_transfers = reply(Operation::CreateTransfers, 12, count, &body);
    let create_accounts = reply(Operation::CreateAccounts, 13, 0, &[]);
    let pulse = reply(Operation::Pulse, 14, 0, &[]);
    let ids = [AccountId(1), AccountId(4), AccountId(99)];
    book.ledger.query(Query::LookupAccounts(&ids), &mut book.output);
    body.clear();
    let count = accounts_encode(&book.output.accounts, &mut body);
    let lookup_accounts = reply(Operation::LookupAccounts, 0, count, &body);
    let transfer_ids = [book.transfers[0].id, book.transfers[3].id, book.transfers[4].id];
    book.ledger.query(Query::LookupTransfers(&transfer_ids), &mut book.output);
    assert!(book.output.transfers.iter().any(|record| record.status == TransferStatus::PendingPosted));
    body.clear();
    let count = transfer_records_encode(&book.output.transfers, &mut body);
    let lookup_transfers = reply(Operation::LookupTransfers, 0, count, &body);
    book.ledger.query(Query::LookupBalances(&ids[..2]), &mut book.output);
    assert!(!book.output.holds.is_empty());
    body.clear();
    let count = balances_encode(&book.output.balances, &book.output.holds, &mut body);
    let lookup_balances = reply(Operation::LookupBalances, 0, count, &body);
    let request = FrameHeader::request(FrameOperation::Ping, 6, 9, 0);
    let mut busy = Vec::new();
    frame_append(&FrameHeader::reply_to(&request, Status::Busy, 0, 0), &[], &mut busy);
    let mut lost = [0u8; HEADER_SIZE_BYTES];
    lost.copy_from_slice(&busy[..HEADER_SIZE_BYTES]);
    let bad_magic = FrameHeader::error_reply_to(&lost, walletd_gateway::FrameError::BadMagic { magic: *b"XXXX" });
    let connection_error = bad_magic.encode();
    // A follower's answer to a write: `not_leader` with the leader's client address, and with
    // none (no leader known).
    let mut not_leader = Vec::new();
    let request = FrameHeader::request(FrameOperation::Ledger(Operation::CreateTransfers), 7, 9, 2);
    frame_append(&FrameHeader::reply_to(&request, Status::NotLeader, 0, 0), b"127.0.0.1:4101", &mut not_leader);
    frame_append(&FrameHeader::reply_to(&request, Status::NotLeader, 0, 0), &[], &mut not_leader);
    let sealed = frames::SEAL_ALL;
    vec![
        ("create_transfers", frames::frames_input(sealed, &[&create_transfers])),
        ("create_accounts_pulse", frames::frames_input(sealed, &[&create_accounts, &pulse])),
        ("lookup_accounts", frames::frames_input(sealed, &[&lookup_accounts])),
        ("lookup_transfers", frames::frames_input(sealed, &[&lookup_transfers])),
        ("lookup_balances", frames::frames_input(sealed, &[&lookup_balances])),
        ("errors", frames::frames_input(sealed, &[&busy, &connection_error])),
        ("not_leader", frames::frames_input(sealed, &[&not_leader])),
        ("pipelined", frames::frames_input(sealed, &[&pulse, &lookup_balances, &create_transfers])),
        ("raw_lookup_balances", frames::frames_input(0, &[&lookup_balances])),
    ]
}

fn command_seeds(book: &Book) -> Seeds {
    let full = 0x80;
    let query = |query: Query<'_>| {
        let mut bytes = vec![full];
        query_encode(&query, &mut bytes);
        bytes
    };
    let ids = [AccountId(1), AccountId(2), AccountId(3)];
    let mut seeds: Seeds = Vec::new();
    let names = ["create_accounts", "create_transfers", "resolve_transfers", "set_account_limits", "pulse", "close"];
    for (name, (_, command)) in names.iter().zip(&book.commands) {
        seeds.push((name, [&[full][..], command].concat()));
    }
    seeds.push(("lookup_accounts", query(Query::LookupAccounts(&ids))));
    seeds.push(("lookup_transfers", query(Query::LookupTransfers(&[book.transfers[1].id]))));
    seeds.push(("lookup_balances", query(Query::LookupBalances(&ids[..1]))));
    // The same create_transfers under a limit of 2 events: too many.
    seeds.push(("over_limit", [&[2u8][..], &book.commands[1].1].concat()));
    let mut traced = vec![full];
    let transfers = &book.transfers[..2];
    batch_traced_encode(
        &Batch::CreateTransfers(transfers),
        &[0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0],
        &mut traced,
    );
    seeds.push(("traced_create_transfers", traced));
    seeds
}

// ---------------------------------------------------------------------------------------------
// Journals: written by `Journal` on a simulated disk, read back as files.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Recovery,
    Reader,
}

const JOURNAL_DIR: &str = "/seed";

/// A journal of the book's commands with a checkpoint after every third, in `segment_size_bytes`
/// segments; returns its live segment files, each cut after its last record.
fn journal_files(book: &Book, segment_size_bytes: u64, repeat: usize) -> Vec<Vec<u8>> {
    let storage = SimStorage::new(1);
    let config = JournalConfig { dir: PathBuf::from(JOURNAL_DIR), segment_size_bytes };
    let (mut journal, _) = Journal::open(storage.clone(), config).expect("open");
    let mut op = 0;
    for (index, (timestamp_ns, command)) in book.commands.iter().cycle().take(book.commands.len() * repeat).enumerate()
    {
        let timestamp_ns = timestamp_ns + index as u64 * 10_000_000_000;
        op += 1;
        journal.append(op, timestamp_ns, RecordKind::CommandBatch, command).expect("append");
        if index % 3 == 2 {
            op += 1;
            journal.append(op, timestamp_ns, RecordKind::Checkpoint, &[index as u8; 48]).expect("append");
        }
        journal.commit().expect("commit");
    }
    let segments = journal.segments();
    drop(journal);
    segments.iter().map(|path| segment_cut(&storage.file_bytes(path).expect("segment file"))).collect()
}

/// A segment file cut just after its last valid record (the rest is zeroes the reader and
/// recovery supply themselves), so that seeds stay small.
fn segment_cut(file: &[u8]) -> Vec<u8> {
    let mut offset = SEGMENT_HEADER_SIZE_BYTES as usize;
    while let Ok((header, _)) = record_decode(&file[offset..]) {
        offset += header.record_size_bytes() as usize;
    }
    file[..offset].to_vec()
}

fn journal_seeds(book: &Book, target: Target) -> Seeds {
    let one = journal_files(book, 1 << 16, 1);
    assert_eq!(one.len(), 1);
    let three = journal_files(book, 4096, 3);
    assert!(three.len() >= 3, "the journal rotated: {} segments", three.len());
    let three = three[..3].to_vec();
    let sealed = journal::SEAL_ALL;
    let none = 0xff;
    let (extra, param_a) = match target {
        Target::Recovery => (journal::APPEND, 0),
        Target::Reader => (0, 2),
    };
    let empty = vec![one[0][..SEGMENT_HEADER_SIZE_BYTES as usize].to_vec()];
    let mut torn = one.clone();
    let cut = torn[0].len() - 100;
    torn[0].truncate(cut);
    let mut junk = one.clone();
    junk[0].extend_from_slice(&[0xa5; 40]);
    let mut flipped = one.clone();
    let offset = SEGMENT_HEADER_SIZE_BYTES as usize + 100;
    flipped[0][offset] ^= 0x40;
    let input = journal::journal_input;
    let mut seeds = vec![
        ("one_segment", input(sealed | extra, none, param_a, 0, 0, &one)),
        ("three_segments", input(sealed | extra, none, param_a, 0, 0, &three)),
        ("empty", input(sealed | extra, none, 0, 0, 0, &empty)),
        ("torn_tail", input(sealed | extra, none, param_a, 0, 0, &torn)),
        ("junk_after_last", input(sealed | extra, none, param_a, 0, 0, &junk)),
        // The flipped record is left unrepaired: a bad record followed by good ones.
        ("corrupt_middle", input(sealed, 0, param_a, 0, 0, &flipped)),
        ("unsealed_second", input(sealed, 1, param_a, 0, 0, &three)),
        ("raw", input(0, none, param_a, 0, 0, &one)),
        ("temporary_and_name", input(sealed, none, 1, journal::TEMPORARY | journal::NAME_OFF_BY_ONE, 0, &three)),
    ];
    match target {
        Target::Recovery => {
            seeds.push(("archive_without_live", input(sealed, none, 0, 0, 1, &one)));
            seeds.push(("archived_two", input(sealed | journal::APPEND, none, 3, 0, 2, &three)));
        }
        Target::Reader => {
            seeds.push(("archived_one", input(sealed, none, 1, 0, 1, &three)));
            seeds.push(("archived_two_from_op_9", input(sealed, none, 8, 0, 2, &three)));
            seeds.push(("until", input(sealed | journal::OPEN_UNTIL, none, 0, 5 << 2, 0, &one)));
            seeds.push(("until_past_end", input(sealed | journal::OPEN_UNTIL, none, 3, 60 << 2, 1, &three)));
        }
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// Snapshots and images.

fn snapshot_seeds() -> Seeds {
    let dir = std::env::temp_dir().join(format!("walletd-fuzz-seed-{}", std::process::id()));
    let mut seeds = Vec::new();
    for (op, (name, ledger)) in ledgers().into_iter().enumerate() {
        let saved = walletd_snapshot::snapshot_save(&dir, op as u64 + 1, 0xc0ffee, &ledger, 8).expect("save");
        let file = fs::read(&saved.path).expect("read snapshot");
        seeds.push((name, [&[snapshot::SEAL_ALL][..], &file].concat()));
        if name == "book" {
            seeds.push(("book_raw", [&[0][..], &file].concat()));
            seeds.push(("book_misnamed", [&[snapshot::SEAL_ALL | snapshot::NAME_OFF_BY_ONE][..], &file].concat()));
        }
    }
    fs::remove_dir_all(&dir).expect("remove the seed directory");
    seeds
}

fn image_seeds() -> Seeds {
    let mut seeds = Vec::new();
    for (name, ledger) in ledgers() {
        seeds.push((name, [&[1][..], &image_of(&ledger)].concat()));
    }
    let book = ledgers().remove(2).1;
    seeds.push(("book_raw", [&[0][..], &image_of(&book)].concat()));
    seeds
}
