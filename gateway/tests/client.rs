//! The client against a tiny in-test responder on 127.0.0.1 (`responder`) that speaks the protocol correctly
//! but applies nothing: it proves pipelining (replies out of order reach the right callers),
//! batching (concurrent creates share frames; each caller gets its own results at its own
//! indexes), and that malformed replies, refusals, timeouts and a closed connection end calls
//! with the right error instead of a panic or a hang. No test asserts on timing: where batching
//! must be deterministic, a batch is sent because it is full, never because time passed.

mod responder;

use responder::*;
use std::sync::Arc;
use std::time::Duration;
use walletd_core::command::records_as_bytes;
use walletd_core::{
    Account, AccountId, AccountLimits, Amount, EventResult, Operation, Transfer, TransferId, TransferStatus,
};
use walletd_gateway::protocol::*;
use walletd_gateway::{Client, ClientError, ClientOptions};

#[test]
fn typed_calls_decode_their_replies() {
    let responder = Responder::spawn(Box::new(|header, body| Action::Reply(vec![answer(header, body)])));
    let client = Client::connect(responder.address, options()).unwrap();
    client.ping().unwrap();
    assert!(client.pulse().unwrap() > 0);
    assert!(client.snapshot().unwrap() > 0);
    let ids = [AccountId(3), AccountId(4)];
    let accounts = client.lookup_accounts(&ids).unwrap();
    assert_eq!(
        accounts.iter().map(|account| (account.id, account.ledger)).collect::<Vec<_>>(),
        [(ids[0], 7), (ids[1], 7)]
    );
    let records = client.lookup_transfers(&[TransferId(5)]).unwrap();
    assert_eq!((records[0].transfer.amount, records[0].status), (Amount(50), TransferStatus::PendingPosted));
    let balances = client.lookup_balances(&[AccountId(2), AccountId(0), AccountId(3)]).unwrap();
    assert_eq!(balances.reads.len(), 3);
    assert_eq!(balances.holds.len(), 5);
    let holds: Vec<u128> = balances.holds_of(&balances.reads[2]).iter().map(|hold| hold.id.0).collect();
    assert_eq!(holds, [300, 301, 302]);
    assert_eq!(balances.reads[2].account.credits_posted, Amount(3));
    let odd_and_even = [AccountId(1), AccountId(2), AccountId(5)];
    let failed = [EventResult { index: 0, code: FAILED_CODE }, EventResult { index: 2, code: FAILED_CODE }];
    assert_eq!(client.close_accounts(&odd_and_even).unwrap(), failed);
    assert_eq!(client.reopen_accounts(&odd_and_even).unwrap(), failed);
    let limits = [AccountLimits { account_id: AccountId(9), ..AccountLimits::default() }];
    assert_eq!(client.set_account_limits(&limits).unwrap(), [EventResult { index: 0, code: FAILED_CODE }]);
    let accounts =
        [Account { id: AccountId(2), ..Account::default() }, Account { id: AccountId(3), ..Account::default() }];
    assert_eq!(client.create_accounts(&accounts).unwrap(), [EventResult { index: 1, code: FAILED_CODE }]);
    assert_eq!(client.create_transfers(&[]).unwrap(), []);
    let reply = client.request(FrameOperation::Ping, &[]).unwrap();
    assert!(reply.header.is_reply() && reply.body.is_empty());
    drop(client);
    responder.join();
}

#[test]
fn pipelined_replies_out_of_order_reach_their_callers() {
    const CALLER_COUNT: usize = 8;
    // Holds every request until all callers' are in (only a pipelining client gets there),
    // then answers them last first.
    let mut held = Vec::new();
    let responder = Responder::spawn(Box::new(move |header, body| {
        held.push(answer(header, body));
        if held.len() < CALLER_COUNT {
            return Action::Reply(Vec::new());
        }
        Action::Reply(held.drain(..).rev().collect())
    }));
    let client = Arc::new(Client::connect(responder.address, options()).unwrap());
    let callers: Vec<_> = (0..CALLER_COUNT as u128)
        .map(|caller| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let ids = [AccountId(caller * 10 + 1), AccountId(caller * 10 + 2)];
                let accounts = client.lookup_accounts(&ids).unwrap();
                assert_eq!(accounts.iter().map(|account| account.id).collect::<Vec<_>>(), ids);
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    let request_ids: std::collections::BTreeSet<u64> =
        responder.received().iter().map(|header| header.request_id).collect();
    assert_eq!(request_ids.len(), CALLER_COUNT, "request ids are distinct");
    drop(client);
    responder.join();
}

/// N threads × M calls of K transfers, with frames of exactly N × K events and a linger too
/// long to matter: a frame leaves only when full, so each frame holds one call of every thread.
#[test]
fn concurrent_creates_share_frames_and_get_their_own_results() {
    const THREAD_COUNT: u128 = 4;
    const CALL_COUNT: u128 = 25;
    const TRANSFER_COUNT: u128 = 3;
    let responder = Responder::spawn(Box::new(|header, body| Action::Reply(vec![answer(header, body)])));
    let options = ClientOptions {
        batch_linger: Duration::from_secs(600),
        batch_events_max: (THREAD_COUNT * TRANSFER_COUNT) as u32,
        ..options()
    };
    let client = Arc::new(Client::connect(responder.address, options).unwrap());
    let threads: Vec<_> = (0..THREAD_COUNT)
        .map(|thread| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let mut placed = Vec::new();
                for call in 0..CALL_COUNT {
                    // Ids differ per thread and call; which ones are odd shifts with `call`.
                    let transfers: Vec<Transfer> = (0..TRANSFER_COUNT)
                        .map(|index| transfer(thread * 1_000_000 + call * 1_000 + index * (call % 3 + 1) + 2))
                        .collect();
                    let created = client.create_transfers_created(&transfers, None).unwrap();
                    assert_eq!(created.results, results_expected(&transfers));
                    // The frame's timestamp plus where this call's events start in it.
                    placed.push((created.op, created.timestamp_ns - timestamp_of(created.op)));
                }
                placed
            })
        })
        .collect();
    let mut placed = std::collections::BTreeSet::new();
    for thread in threads {
        for call in thread.join().unwrap() {
            assert!(placed.insert(call), "two calls placed at one event of one frame: {call:?}");
        }
    }
    let starts = |op: u64| placed.iter().filter(|(of, _)| *of == op).map(|(_, start)| *start).collect::<Vec<u64>>();
    for op in placed.iter().map(|(op, _)| *op) {
        assert_eq!(starts(op), [0, 3, 6, 9], "each call's timestamp is its own first event's");
    }
    let frames = responder.received();
    assert_eq!(frames.len() as u128, CALL_COUNT, "one frame per round of calls");
    assert!(frames.iter().all(|frame| frame.event_count as u128 == THREAD_COUNT * TRANSFER_COUNT));
    drop(client);
    responder.join();
}

/// The default options (no linger): however calls happen to coalesce, every caller gets exactly
/// its own results and every event is sent once.
#[test]
fn concurrent_creates_with_default_options() {
    const THREAD_COUNT: u128 = 8;
    const CALL_COUNT: u128 = 40;
    let responder = Responder::spawn(Box::new(|header, body| Action::Reply(vec![answer(header, body)])));
    let client = Arc::new(Client::connect(responder.address, options()).unwrap());
    let threads: Vec<_> = (0..THREAD_COUNT)
        .map(|thread| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let mut event_count = 0;
                for call in 0..CALL_COUNT {
                    let length = (thread + call) % 7 + 1;
                    let transfers: Vec<Transfer> =
                        (0..length).map(|index| transfer(thread << 32 | call << 8 | (index * 3 + call))).collect();
                    assert_eq!(client.create_transfers(&transfers).unwrap(), results_expected(&transfers));
                    event_count += length;
                }
                event_count
            })
        })
        .collect();
    let event_count: u128 = threads.into_iter().map(|thread| thread.join().unwrap()).sum();
    let frames = responder.received();
    assert_eq!(frames.iter().map(|frame| u128::from(frame.event_count)).sum::<u128>(), event_count);
    assert!(frames.len() as u128 <= THREAD_COUNT * CALL_COUNT);
    drop(client);
    responder.join();
}

#[test]
fn a_reply_with_a_bad_body_checksum_fails_only_its_call() {
    let mut replies_sent = 0;
    let responder = Responder::spawn(Box::new(move |header, body| {
        replies_sent += 1;
        let mut frame = answer(header, body);
        if replies_sent == 1 {
            let mut header_bytes: [u8; HEADER_SIZE_BYTES] = frame[..HEADER_SIZE_BYTES].try_into().unwrap();
            header_bytes[BODY_CHECKSUM_OFFSET] ^= 0xff;
            header_seal(&mut header_bytes);
            frame[..HEADER_SIZE_BYTES].copy_from_slice(&header_bytes);
        }
        Action::Reply(vec![frame])
    }));
    let client = Client::connect(responder.address, options()).unwrap();
    let error = client.create_transfers(&[transfer(3)]).unwrap_err();
    assert!(matches!(&error, ClientError::Protocol(message) if message.contains("checksum")), "{error}");
    // The header checksum held, so the stream is intact and the connection is kept.
    assert_eq!(client.create_transfers(&[transfer(3)]).unwrap(), results_expected(&[transfer(3)]));
    drop(client);
    responder.join();
}

#[test]
fn a_reply_with_a_bad_header_checksum_ends_the_connection() {
    let responder = Responder::spawn(Box::new(|header, body| {
        let mut frame = answer(header, body);
        frame[REQUEST_ID_OFFSET + 7] ^= 1;
        Action::Reply(vec![frame])
    }));
    let client = Client::connect(responder.address, options()).unwrap();
    let error = client.ping().unwrap_err();
    assert!(matches!(&error, ClientError::Protocol(message) if message.contains("header checksum")), "{error}");
    assert!(matches!(client.ping(), Err(ClientError::Closed)));
    assert!(matches!(client.create_transfers(&[transfer(2)]), Err(ClientError::Closed)));
    drop(client);
    responder.join();
}

#[test]
fn malformed_reply_bodies_are_protocol_errors() {
    let responder = Responder::spawn(Box::new(|header, _| {
        let frame = match FrameOperation::from_u16(header.operation).unwrap() {
            // A result for event 5 of a 1-event request.
            FrameOperation::Ledger(Operation::CreateTransfers) => {
                let mut body = Vec::new();
                results_encode(&[EventResult { index: 5, code: 1 }], &mut body);
                reply_timestamped(header, 1, 1, &body, 7)
            }
            // A create's reply without the timestamp it asked for.
            FrameOperation::Ledger(Operation::CreateAccounts) => reply_frame(header, Status::Ok, 1, 0, &[]),
            // Two accounts for one id.
            FrameOperation::Ledger(Operation::LookupAccounts) => {
                let mut body = Vec::new();
                let count = accounts_encode(&[Account::default(); 2], &mut body);
                reply_frame(header, Status::Ok, 0, count, &body)
            }
            // A body that is not whole records.
            _ => reply_frame(header, Status::Ok, 0, 1, &[0u8; 100]),
        };
        Action::Reply(vec![frame])
    }));
    let client = Client::connect(responder.address, options()).unwrap();
    assert!(matches!(client.create_transfers(&[transfer(2)]), Err(ClientError::Protocol(_))));
    let error = client.create_accounts(&[Account { id: AccountId(2), ..Account::default() }]).unwrap_err();
    assert!(matches!(&error, ClientError::Protocol(message) if message.contains("no timestamp")), "{error}");
    assert!(matches!(client.lookup_accounts(&[AccountId(1)]), Err(ClientError::Protocol(_))));
    assert!(matches!(client.lookup_transfers(&[TransferId(1)]), Err(ClientError::Protocol(_))));
    assert!(matches!(client.lookup_balances(&[AccountId(1)]), Err(ClientError::Protocol(_))));
    client.ping().expect_err("a ping reply with a record");
    drop(client);
    responder.join();
}

#[test]
fn refusals_map_to_frame_errors() {
    let responder =
        Responder::spawn(Box::new(|header, _| Action::Reply(vec![reply_frame(header, Status::Busy, 0, 0, &[])])));
    let client = Client::connect(responder.address, options()).unwrap();
    assert!(matches!(client.create_transfers(&[transfer(2), transfer(4)]), Err(ClientError::Frame(Status::Busy))));
    assert!(matches!(client.lookup_balances(&[AccountId(1)]), Err(ClientError::Frame(Status::Busy))));
    // Refused before sending: the reply could not fit in one frame.
    let error = client.lookup_balances(&vec![AccountId(1); 3276]).unwrap_err();
    assert!(matches!(error, ClientError::TooManyEvents { event_count: 3276, event_count_max: 3275, .. }), "{error}");
    assert_eq!(responder.received().len(), 2);
    drop(client);
    responder.join();
}

#[test]
fn a_closed_connection_ends_every_call_in_flight() {
    const CALLER_COUNT: usize = 6;
    // Reads every caller's request, answers none, and closes.
    let mut received_count = 0;
    let responder = Responder::spawn(Box::new(move |_, _| {
        received_count += 1;
        if received_count < CALLER_COUNT {
            Action::Reply(Vec::new())
        } else {
            Action::Close
        }
    }));
    let client = Arc::new(Client::connect(responder.address, options()).unwrap());
    let callers: Vec<_> = (0..CALLER_COUNT as u128)
        .map(|caller| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || match caller % 3 {
                0 => client.ping().map(|_| ()),
                1 => client.lookup_accounts(&[AccountId(caller)]).map(|_| ()),
                _ => client.close_accounts(&[AccountId(caller)]).map(|_| ()),
            })
        })
        .collect();
    for caller in callers {
        assert!(matches!(caller.join().unwrap(), Err(ClientError::Closed)));
    }
    assert!(matches!(client.create_transfers(&[transfer(2)]), Err(ClientError::Closed)));
    assert!(matches!(client.ping(), Err(ClientError::Closed)));
    drop(client);
    responder.join();
}

#[test]
fn batched_calls_in_flight_get_closed_too() {
    let mut received_count = 0;
    let responder = Responder::spawn(Box::new(move |_, _| {
        received_count += 1;
        if received_count < 2 {
            Action::Reply(Vec::new())
        } else {
            Action::Close
        }
    }));
    let client = Arc::new(Client::connect(responder.address, options()).unwrap());
    let batched = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || client.create_transfers(&[transfer(2), transfer(3)]))
    };
    // Sent only once the batched frame is in, so the responder closes with both in flight.
    while responder.received().is_empty() {
        std::thread::yield_now();
    }
    assert!(matches!(client.ping(), Err(ClientError::Closed)));
    assert!(matches!(batched.join().unwrap(), Err(ClientError::Closed)));
    drop(client);
    responder.join();
}

#[test]
fn unanswered_calls_time_out() {
    let responder = Responder::spawn(Box::new(|_, _| Action::Reply(Vec::new())));
    let options = ClientOptions { request_timeout: Duration::from_millis(200), ..ClientOptions::default() };
    let client = Client::connect(responder.address, options).unwrap();
    assert!(matches!(client.ping(), Err(ClientError::Timeout)));
    assert!(matches!(client.create_transfers(&[transfer(2)]), Err(ClientError::Timeout)));
    // The connection is still usable (and the late replies, were they to come, ignored).
    assert!(matches!(client.lookup_accounts(&[AccountId(1)]), Err(ClientError::Timeout)));
    drop(client);
    responder.join();
}

#[test]
fn raw_requests_carry_the_body_as_it_is() {
    let responder = Responder::spawn(Box::new(|header, body| Action::Reply(vec![answer(header, body)])));
    let client = Client::connect(responder.address, options()).unwrap();
    let ids = [AccountId(2), AccountId(4)];
    let reply = client.request(FrameOperation::Ledger(Operation::LookupAccounts), records_as_bytes(&ids)).unwrap();
    assert_eq!(reply.header.event_count, 2);
    assert_eq!(reply.body.len(), 256);
    let received = responder.received();
    assert_eq!((received[0].event_count, received[0].client_id), (2, client.client_id()));
    drop(client);
    responder.join();
}

#[test]
fn a_refusal_of_the_connection_ends_every_call_with_its_status() {
    // What a server at its connection limit does: one busy reply with request id 0, then close.
    let responder = Responder::spawn(Box::new(|_, _| {
        let refusal = FrameHeader { flags: FLAG_REPLY, status: Status::Busy as u16, ..FrameHeader::default() };
        let mut frame = Vec::new();
        frame_append(&refusal, &[], &mut frame);
        Action::Reply(vec![frame])
    }));
    let client = Client::connect(responder.address, options()).unwrap();
    assert!(matches!(client.ping(), Err(ClientError::Frame(Status::Busy))));
    assert!(matches!(client.ping(), Err(ClientError::Closed)));
    drop(client);
    responder.join();
}
