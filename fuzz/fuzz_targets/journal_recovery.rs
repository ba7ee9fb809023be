//! Journal recovery (`Journal::open`) on a directory of fuzzed segments, in memory
//! (`SimStorage`); input layout in walletd_fuzz::journal. No input may panic or hang. When
//! open succeeds, what it recovered must hold up: the reader sees exactly ops `op_first..=
//! op_last` (when nothing is archived), and with the APPEND flag the journal takes the next
//! op, commits, and opens again with that op as its last and no torn tail.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use walletd_fuzz::journal::{journal_build, JournalInput, APPEND, DIR};
use walletd_journal::{Journal, JournalConfig, Reader, RecordKind, Recovered, SimStorage};

fuzz_target!(|input: &[u8]| {
    let Some(input) = JournalInput::parse(input) else { return };
    let built = journal_build(&input);
    let config = JournalConfig { dir: DIR.into(), segment_size_bytes: 4096 * (1 + u64::from(input.param_a % 4)) };
    let (mut journal, recovered) = match Journal::open(built.storage.clone(), config.clone()) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    assert_eq!(journal.op_durable(), recovered.op_last);
    assert_eq!(journal.op_appended(), recovered.op_last);
    assert!(u128::from(recovered.op_last) + 1 >= u128::from(recovered.op_first));
    assert_eq!(journal.segments(), recovered.segments);
    if built.archived_count == 0 {
        reader_agrees(&built.storage, &recovered);
    }
    // The sequencer never reaches the last op numbers (2^64 ops), so neither does the append.
    if input.flags & APPEND == 0 || recovered.op_last >= u64::MAX - 1 {
        return;
    }
    let op = recovered.op_last + 1;
    let body = [input.param_b; 100];
    journal.append(op, recovered.timestamp_ns_last, RecordKind::CommandBatch, &body).expect("append after recovery");
    assert_eq!(journal.commit().expect("commit after recovery"), op);
    drop(journal);
    let (_, reopened) = Journal::open(built.storage.clone(), config).expect("a journal opens again after an append");
    assert_eq!(reopened.op_last, op, "the appended op is recovered");
    assert_eq!(reopened.torn_tail, None, "a committed append leaves no torn tail");
    if built.archived_count == 0 {
        reader_agrees(&built.storage, &reopened);
    }
});

/// The replay reader, over the live segments that recovery left, returns every recovered op.
fn reader_agrees(storage: &SimStorage, recovered: &Recovered) {
    let mut reader = Reader::open(storage.clone(), Path::new(DIR), recovered.op_first).expect("reader opens");
    let mut op_next = u128::from(recovered.op_first);
    while let Some(record) = reader.next_record().expect("a recovered journal reads without error") {
        assert_eq!(u128::from(record.op), op_next);
        op_next += 1;
    }
    assert_eq!(op_next - 1, u128::from(recovered.op_last), "the reader ends where recovery did");
}
