//! The command decoder, as the apply thread and replay run it on journal bodies and the
//! gateway on request bodies: `command_header_decode` and `CommandScratch::decode`. The first
//! byte picks the event limit (a small one, or the protocol's 8189); the rest is the command.
//! No input may panic; the two decoders agree; an accepted command encodes back to its bytes,
//! a traced one (header flag bit 0) with its trace ids, which `TraceIds` reads back.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use walletd_core::command::{batch_encode, batch_traced_encode, command_header_decode, query_encode, CommandHeader};
use walletd_core::{Batch, Command, CommandScratch, Operation, Query, TraceIds, BATCH_EVENTS_MAX};

thread_local! {
    static SCRATCH: RefCell<CommandScratch> = RefCell::new(CommandScratch::new(BATCH_EVENTS_MAX));
}

fuzz_target!(|input: &[u8]| {
    let Some((&limit, bytes)) = input.split_first() else { return };
    // Bit 7 set: the full limit; clear: a limit of 0..=127 events, so that the limit is hit.
    let event_count_max = if limit & 0x80 != 0 { BATCH_EVENTS_MAX } else { u32::from(limit) };
    let header = command_header_decode(bytes, event_count_max);
    SCRATCH.with_borrow_mut(|full| {
        let mut small;
        let scratch = if event_count_max == BATCH_EVENTS_MAX {
            full
        } else {
            small = CommandScratch::new(event_count_max);
            &mut small
        };
        match scratch.decode(bytes) {
            Ok(command) => {
                let CommandHeader { operation, event_count, traced } = header.expect("the header decoder agrees");
                assert!(event_count <= event_count_max);
                let trace_ids = TraceIds::of_command(bytes).expect("an accepted command has readable trace ids");
                assert_eq!(trace_ids.is_traced(), traced && event_count > 0);
                let trace_list: Vec<u128> = (0..event_count as usize).map(|index| trace_ids.get(index)).collect();
                let mut encoded = Vec::new();
                let expected = bytes.to_vec();
                match command {
                    // A pulse has no events: only a count of 0 decodes.
                    Command::Batch(Batch::Pulse) => {
                        assert_eq!(operation, Operation::Pulse);
                        assert_eq!(event_count, 0, "a pulse carries no events");
                        batch_encode(&Batch::Pulse, &mut encoded);
                    }
                    Command::Batch(batch) => {
                        assert!(operation.is_mutating());
                        assert_eq!(batch.len(), event_count as usize);
                        if traced {
                            batch_traced_encode(&batch, &trace_list, &mut encoded);
                        } else {
                            assert!(trace_list.iter().all(|&trace_id| trace_id == 0));
                            batch_encode(&batch, &mut encoded);
                        }
                    }
                    Command::Query(query) => {
                        assert!(!operation.is_mutating());
                        assert!(!traced, "a query is never traced");
                        let len = match query {
                            Query::LookupAccounts(ids) | Query::LookupBalances(ids) => ids.len(),
                            Query::LookupTransfers(ids) => ids.len(),
                        };
                        assert_eq!(len, event_count as usize);
                        query_encode(&query, &mut encoded);
                    }
                }
                assert_eq!(encoded, expected, "an accepted command encodes back to its bytes");
            }
            Err(error) => {
                assert_eq!(header.err(), Some(error), "the header decoder agrees");
                assert!(!error.to_string().is_empty());
            }
        }
    });
});
