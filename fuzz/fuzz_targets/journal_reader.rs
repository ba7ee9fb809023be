//! The replay and follower reader (`Reader::open` or `Reader::open_until`, then `next_record`
//! until the end) on a directory of fuzzed segments, live and archived, in memory
//! (`SimStorage`); input layout in walletd_fuzz::journal. No input may panic or hang; the
//! records handed out are verified, so they must come in op order from the op asked for.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use walletd_fuzz::journal::{journal_build, JournalInput, DIR, OPEN_UNTIL};
use walletd_journal::{JournalError, Reader, SimStorage};

/// Records ≥ 64 bytes in inputs of at most a few hundred KiB: more reads than records is a hang.
const READS_MAX: u32 = 1 << 14;

fuzz_target!(|input: &[u8]| {
    let Some(input) = JournalInput::parse(input) else { return };
    let built = journal_build(&input);
    let op_first = 1 + u64::from(input.param_a % 16);
    let op_last = (input.flags & OPEN_UNTIL != 0).then_some(op_first + u64::from(input.param_b >> 2));
    let opened = match op_last {
        None => Reader::open(built.storage.clone(), Path::new(DIR), op_first),
        Some(op_last) => Reader::open_until(built.storage.clone(), Path::new(DIR), op_first, op_last),
    };
    let mut reader = match opened {
        Ok(reader) => reader,
        Err(error) => return error_check(&error),
    };
    let mut op_next = op_first;
    if let Err(error) = records_read(&mut reader, &mut op_next, op_last) {
        return error_check(&error);
    }
    if let Some(op_last) = op_last {
        // A follower told of more durable ops reads on (here: finds them missing).
        reader.follow(op_last + 4);
        if let Err(error) = records_read(&mut reader, &mut op_next, Some(op_last + 4)) {
            error_check(&error);
        }
    }
});

fn records_read(reader: &mut Reader<SimStorage>, op_next: &mut u64, op_last: Option<u64>) -> Result<(), JournalError> {
    for _ in 0..READS_MAX {
        let Some(record) = reader.next_record()? else { return Ok(()) };
        assert_eq!(record.op, *op_next, "records come in op order from op_first");
        assert!(op_last.is_none_or(|op_last| record.op <= op_last));
        *op_next += 1;
        let (_, offset) = reader.position().expect("a record was returned");
        assert!(offset % 8 == 0 && offset >= 64);
    }
    panic!("{READS_MAX} records from one input: the reader does not advance");
}

fn error_check(error: &JournalError) {
    assert!(!error.to_string().is_empty());
}
