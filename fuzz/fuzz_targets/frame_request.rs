//! The server's receive path on a stream of fuzzed frames: `FrameHeader::decode`, then
//! `check_request` and `RequestScratch::decode` on the body, as a connection thread runs them.
//! No input may panic; a header that decodes must encode back to the same bytes; an error
//! must map to a status the server can reply with, and the reply must be one the client
//! accepts; a decoded request's command bytes must decode again to the same command, traced
//! exactly when the frame is, with the frame's trace ids.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use walletd_core::command::{command_header_decode, CommandHeader, COMMAND_HEADER_SIZE_BYTES};
use walletd_core::{Command, TraceIds};
use walletd_fuzz::frames::frame_next;
use walletd_gateway::{
    check_reply, check_request, FrameError, FrameHeader, FrameOperation, Request, RequestScratch, Status,
    EVENT_COUNT_MAX, FLAG_TRACED,
};

/// The frames one input may carry: enough for pipelining, few enough to stay fast.
const FRAMES_MAX: usize = 16;

thread_local! {
    // Sized once for the largest frame, as each connection's is.
    static SCRATCH: RefCell<RequestScratch> = RefCell::new(RequestScratch::new());
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, mut stream)) = input.split_first() else { return };
    for _ in 0..FRAMES_MAX {
        let Some((header_bytes, rest)) = frame_next(control, stream) else { return };
        let header = match FrameHeader::decode(&header_bytes) {
            Ok(header) => header,
            Err(error) => {
                // The server replies and closes: the stream's framing is lost.
                reply_check(&FrameHeader::error_reply_to(&header_bytes, error), error);
                return;
            }
        };
        assert_eq!(header.encode(), header_bytes, "a decoded header encodes back to its bytes");
        let Some(body) = rest.get(..header.body_size_bytes as usize) else { return };
        stream = &rest[body.len()..];
        request_check(&header, body);
    }
});

fn request_check(header: &FrameHeader, body: &[u8]) {
    let checked = check_request(header, body);
    SCRATCH.with_borrow_mut(|scratch| match scratch.decode(header, body) {
        Ok(request) => {
            let operation = checked.expect("check_request agrees with RequestScratch::decode");
            request_agrees(header, body, operation, &request);
        }
        Err(error) => {
            assert_eq!(checked.err(), Some(error), "check_request agrees with RequestScratch::decode");
            // A bad request keeps the connection, except request id 0: a reply to it could not be
            // told from one about the connection itself, so the connection closes (PROTOCOL.md).
            let closes = error.status() == Status::RequestIdZero;
            assert_eq!(error.status().closes_connection(), closes, "which bad requests close: {error}");
            reply_check(&FrameHeader::reply_to(header, error.status(), 0, 0), error);
        }
    });
}

fn request_agrees(header: &FrameHeader, body: &[u8], operation: FrameOperation, request: &Request<'_>) {
    let (command, command_bytes) = match (operation, request) {
        (FrameOperation::Ping, Request::Ping) | (FrameOperation::Snapshot, Request::Snapshot) => {
            assert!(body.is_empty());
            return;
        }
        (FrameOperation::Ledger(_), Request::Ledger { command, command_bytes }) => (command, command_bytes),
        (operation, request) => panic!("{operation:?} decoded as {request:?}"),
    };
    let FrameOperation::Ledger(ledger_operation) = operation else { unreachable!() };
    assert_eq!(command_bytes.len(), COMMAND_HEADER_SIZE_BYTES + body.len());
    assert_eq!(&command_bytes[COMMAND_HEADER_SIZE_BYTES..], body, "the command carries the body as it came");
    let decoded = command_header_decode(command_bytes, EVENT_COUNT_MAX).expect("the command bytes decode");
    let traced = header.flags & FLAG_TRACED != 0;
    assert_eq!(decoded, CommandHeader { operation: ledger_operation, event_count: header.event_count, traced });
    let trace_ids = TraceIds::of_command(command_bytes).expect("the command bytes decode");
    let events_size_bytes = header.event_count as usize * ledger_operation.event_size_bytes();
    for index in 0..header.event_count as usize {
        let expected = if traced {
            let start = events_size_bytes + index * 16;
            u128::from_le_bytes(body[start..start + 16].try_into().expect("16 bytes"))
        } else {
            0
        };
        assert_eq!(trace_ids.get(index), expected, "event {index} keeps the frame's trace id");
    }
    let event_count = match command {
        Command::Batch(batch) => batch.len(),
        Command::Query(query) => query_len(query),
    };
    assert_eq!(event_count, header.event_count as usize);
    assert_eq!(ledger_operation.is_mutating(), matches!(command, Command::Batch(_)));
}

fn query_len(query: &walletd_core::Query<'_>) -> usize {
    match query {
        walletd_core::Query::LookupAccounts(ids) | walletd_core::Query::LookupBalances(ids) => ids.len(),
        walletd_core::Query::LookupTransfers(ids) => ids.len(),
    }
}

/// The error reply the server would send must be a frame the client reads as that status.
fn reply_check(reply: &FrameHeader, error: FrameError) {
    let status = error.status();
    assert_ne!(status, Status::Ok);
    assert!(!error.to_string().is_empty());
    let bytes = reply.encode();
    let decoded = FrameHeader::decode(&bytes).expect("an error reply decodes");
    assert_eq!(check_reply(&decoded, &[]), Ok(status), "the client reads the status the server meant");
}
