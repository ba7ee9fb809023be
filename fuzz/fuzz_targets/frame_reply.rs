//! The client's read path on a stream of fuzzed reply frames: `FrameHeader::decode`,
//! `check_reply`, then the body decoder of the reply's operation (`results_decode`, or
//! `results_timestamped_decode` when the timestamp flag is set, `accounts_decode`,
//! `transfer_records_decode`, `balances_decode`). No input may panic; a
//! refused body leaves the caller's vectors as they were; an accepted one encodes back to the
//! same bytes; an error reply has no body but `not_leader`'s address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walletd_core::Operation;
use walletd_fuzz::frames::frame_next;
use walletd_gateway::protocol::{
    accounts_decode, accounts_encode, balances_decode, balances_encode, results_decode, results_encode,
    results_timestamped_decode, timestamp_encode, transfer_records_decode, transfer_records_encode,
    NOT_LEADER_ADDRESS_SIZE_MAX_BYTES,
};
use walletd_gateway::FLAG_TIMESTAMP;
use walletd_gateway::{check_reply, FrameHeader, FrameOperation, Status};

const FRAMES_MAX: usize = 16;

fuzz_target!(|input: &[u8]| {
    let Some((&control, mut stream)) = input.split_first() else { return };
    for _ in 0..FRAMES_MAX {
        let Some((header_bytes, rest)) = frame_next(control, stream) else { return };
        let Ok(header) = FrameHeader::decode(&header_bytes) else { return };
        assert_eq!(header.encode(), header_bytes, "a decoded header encodes back to its bytes");
        let Some(body) = rest.get(..header.body_size_bytes as usize) else { return };
        stream = &rest[body.len()..];
        match check_reply(&header, body) {
            Ok(Status::Ok) => body_check(&header, body),
            // A not_leader reply names the leader's address (UTF-8, bounded); others are empty.
            Ok(Status::NotLeader) => {
                assert!(header.event_count == 0 && body.len() <= NOT_LEADER_ADDRESS_SIZE_MAX_BYTES);
                assert!(std::str::from_utf8(body).is_ok(), "a not_leader address is UTF-8");
            }
            Ok(status) => assert!(body.is_empty() && header.event_count == 0, "{status} reply with records"),
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
});

fn body_check(header: &FrameHeader, body: &[u8]) {
    let operation = FrameOperation::from_u16(header.operation).expect("check_reply knows the operation");
    let count = header.event_count;
    let mut encoded = Vec::new();
    let accepted = match operation {
        FrameOperation::Ledger(Operation::LookupAccounts) => {
            let mut accounts = Vec::new();
            let accepted = accounts_decode(operation, count, body, &mut accounts).is_ok();
            accounts_encode(&accounts, &mut encoded);
            accepted
        }
        FrameOperation::Ledger(Operation::LookupTransfers) => {
            let mut records = Vec::new();
            let accepted = transfer_records_decode(operation, count, body, &mut records).is_ok();
            transfer_records_encode(&records, &mut encoded);
            accepted
        }
        FrameOperation::Ledger(Operation::LookupBalances) => {
            let (mut reads, mut holds) = (Vec::new(), Vec::new());
            let accepted = balances_decode(operation, count, body, &mut reads, &mut holds).is_ok();
            assert!(accepted || holds.is_empty(), "a refused body leaves no holds behind");
            balances_encode(&reads, &holds, &mut encoded);
            accepted
        }
        FrameOperation::Ledger(Operation::Pulse) | FrameOperation::Ping | FrameOperation::Snapshot => return,
        FrameOperation::Ledger(_) if header.flags & FLAG_TIMESTAMP != 0 => {
            let mut results = Vec::new();
            let decoded = results_timestamped_decode(operation, count, body, &mut results);
            assert!(decoded.is_ok() || results.is_empty(), "a refused body leaves no results behind");
            if let Ok(timestamp_ns) = decoded {
                assert!(timestamp_ns != 0, "an accepted timestamp is not zero");
                results_encode(&results, &mut encoded);
                timestamp_encode(timestamp_ns, &mut encoded);
            }
            decoded.is_ok()
        }
        FrameOperation::Ledger(_) => {
            let mut results = Vec::new();
            let accepted = results_decode(operation, count, body, &mut results).is_ok();
            results_encode(&results, &mut encoded);
            accepted
        }
    };
    if accepted {
        assert_eq!(encoded, body, "an accepted {} body encodes back to its bytes", operation.name());
    } else {
        assert!(encoded.is_empty(), "a refused {} body leaves nothing behind", operation.name());
    }
}
