//! The async client against the in-test responder (`responder`): typed calls decode their
//! replies, replies out of order reach their callers, concurrent creates and lookups share
//! frames and each call gets its own share (results at its own indexes, its own timestamp, the
//! records of its own ids, its trace id beside each of its events), and refusals, a closed
//! connection and an unanswered call end calls with the right error. No test asserts on
//! timing: where coalescing must be deterministic, the one frame allowed in flight is held by
//! the responder until every call has joined the next frame (`calls_queued`).

mod responder;

use responder::*;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use walletd_core::command::TRACE_ID_SIZE_BYTES;
use walletd_core::{Account, AccountId, AccountLimits, Amount, EventResult, Transfer, TransferId, TransferStatus};
use walletd_gateway::protocol::*;
use walletd_gateway::{AsyncClient, AsyncClientOptions, ClientError};

fn async_options() -> AsyncClientOptions {
    AsyncClientOptions { request_timeout: Duration::from_secs(20), ..AsyncClientOptions::default() }
}

/// How long a test waits for an event before it fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits (bounded) until `count` calls have joined the client's open frames.
async fn calls_queued_wait(client: &AsyncClient, count: u32) {
    let queued = tokio::time::timeout(EVENT_TIMEOUT, client.calls_queued_wait(count)).await;
    let queued = queued.unwrap_or_else(|_| panic!("{count} calls never queued (now {})", client.calls_queued()));
    assert_eq!(queued, count, "more calls queued than were made");
}

/// Every request a responder read: its header and its body.
type Frames = Arc<Mutex<Vec<(FrameHeader, Vec<u8>)>>>;

/// A responder that holds its first request (the client's one frame in flight) until `release`
/// is sent, then answers everything; keeps every request's header and body. `holding` is told
/// when it starts holding.
fn holding_responder() -> (Responder, mpsc::Sender<()>, mpsc::Receiver<()>, Frames) {
    let (release, released) = mpsc::channel::<()>();
    let (holds, holding) = mpsc::channel::<()>();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let frames_kept = Arc::clone(&frames);
    let mut first = true;
    let responder = Responder::spawn(Box::new(move |header, body| {
        frames_kept.lock().unwrap().push((*header, body.to_vec()));
        if std::mem::take(&mut first) {
            holds.send(()).unwrap();
            released.recv().unwrap();
        }
        Action::Reply(vec![answer(header, body)])
    }));
    (responder, release, holding, frames)
}

/// A client allowed one frame in flight, on a holding responder, whose ping is that frame and
/// is held: calls made now queue for the next frame. Returns once the responder holds the ping;
/// send on `release` to let it go (`held` then ends with the ping's answer).
struct Holding {
    responder: Responder,
    release: mpsc::Sender<()>,
    frames: Frames,
    client: AsyncClient,
    held: tokio::task::JoinHandle<Result<Option<walletd_gateway::ServerInfo>, ClientError>>,
}

async fn holding_client(options: AsyncClientOptions) -> Holding {
    let (responder, release, holding, frames) = holding_responder();
    let client = AsyncClient::connect(responder.address, options).await.unwrap();
    let held = {
        let client = client.clone();
        tokio::spawn(async move { client.ping().await })
    };
    let holds = tokio::task::spawn_blocking(move || holding.recv_timeout(EVENT_TIMEOUT)).await.unwrap();
    holds.expect("the responder never received the ping");
    Holding { responder, release, frames, client, held }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_decode_their_replies() {
    let responder = Responder::spawn(Box::new(|header, body| Action::Reply(vec![answer(header, body)])));
    let client = AsyncClient::connect(responder.address, async_options()).await.unwrap();
    assert!(client.ping().await.unwrap().is_none(), "the responder's ping reply is empty");
    let ids = [AccountId(3), AccountId(4)];
    let accounts = client.lookup_accounts(&ids).await.unwrap();
    assert_eq!(
        accounts.iter().map(|account| (account.id, account.ledger)).collect::<Vec<_>>(),
        [(ids[0], 7), (ids[1], 7)]
    );
    let records = client.lookup_transfers(&[TransferId(5)]).await.unwrap();
    assert_eq!((records[0].transfer.amount, records[0].status), (Amount(50), TransferStatus::PendingPosted));
    let balances = client.lookup_balances(&[AccountId(2), AccountId(0), AccountId(3)]).await.unwrap();
    assert_eq!(balances.reads.len(), 3);
    let holds: Vec<u128> = balances.holds_of(&balances.reads[2]).iter().map(|hold| hold.id.0).collect();
    assert_eq!(holds, [300, 301, 302]);
    let odd_and_even = [AccountId(1), AccountId(2), AccountId(5)];
    let failed = [EventResult { index: 0, code: FAILED_CODE }, EventResult { index: 2, code: FAILED_CODE }];
    assert_eq!(client.close_accounts(&odd_and_even).await.unwrap(), failed);
    assert_eq!(client.reopen_accounts(&odd_and_even).await.unwrap(), failed);
    let limits = [AccountLimits { account_id: AccountId(9), ..AccountLimits::default() }];
    assert_eq!(client.set_account_limits(&limits).await.unwrap(), [EventResult { index: 0, code: FAILED_CODE }]);
    let accounts =
        [Account { id: AccountId(2), ..Account::default() }, Account { id: AccountId(3), ..Account::default() }];
    let created = client.create_accounts(&accounts, 0).await.unwrap();
    assert_eq!(created.results, [EventResult { index: 1, code: FAILED_CODE }]);
    assert_eq!(created.timestamp_ns, timestamp_of(created.op));
    let transfers = [transfer(4), transfer(7)];
    let created = client.create_transfers(&transfers, 0).await.unwrap();
    assert_eq!(created.results, results_expected(&transfers));
    assert!(created.op > 0);
    assert_eq!(client.create_transfers(&[], 0).await.unwrap().results, []);
    // Refused before sending: the reply could not fit in one frame.
    let error = client.lookup_balances(&vec![AccountId(1); 3276]).await.unwrap_err();
    assert!(matches!(error, ClientError::TooManyEvents { event_count: 3276, event_count_max: 3275, .. }), "{error}");
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_out_of_order_reach_their_callers() {
    const CALLER_COUNT: usize = 8;
    // Holds every request until all callers' are in (only a pipelining client gets there),
    // then answers them last first. Closes go in frames of their own.
    let mut held = Vec::new();
    let responder = Responder::spawn(Box::new(move |header, body| {
        held.push(answer(header, body));
        if held.len() < CALLER_COUNT {
            return Action::Reply(Vec::new());
        }
        Action::Reply(held.drain(..).rev().collect())
    }));
    let options = AsyncClientOptions { frames_in_flight_max: CALLER_COUNT as u32, ..async_options() };
    let client = AsyncClient::connect(responder.address, options).await.unwrap();
    let callers: Vec<_> = (0..CALLER_COUNT as u128)
        .map(|caller| {
            let client = client.clone();
            tokio::spawn(async move {
                // Caller c closes accounts 2c and 2c + 1: only the second (odd) fails.
                let ids = [AccountId(caller * 2), AccountId(caller * 2 + 1)];
                assert_eq!(client.close_accounts(&ids).await.unwrap(), [EventResult { index: 1, code: FAILED_CODE }]);
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let request_ids: std::collections::BTreeSet<u64> =
        responder.received().iter().map(|header| header.request_id).collect();
    assert_eq!(request_ids.len(), CALLER_COUNT, "request ids are distinct");
    drop(client);
    responder.join();
}

/// While the one frame allowed in flight is held, N calls of K transfers join the next frame;
/// it carries all of them, and each call gets its own results and its own first timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_a_frame_and_get_their_own_results() {
    const CALL_COUNT: u128 = 16;
    const TRANSFER_COUNT: u128 = 3;
    let Holding { responder, release, frames, client, held } =
        holding_client(AsyncClientOptions { frames_in_flight_max: 1, ..async_options() }).await;
    let calls: Vec<_> = (0..CALL_COUNT)
        .map(|call| {
            let client = client.clone();
            tokio::spawn(async move {
                // Which ids are odd shifts with `call`.
                let transfers: Vec<Transfer> =
                    (0..TRANSFER_COUNT).map(|index| transfer(call * 1_000 + index * (call % 3 + 1) + 2)).collect();
                let created = client.create_transfers(&transfers, 0).await.unwrap();
                assert_eq!(created.results, results_expected(&transfers));
                created.timestamp_ns - timestamp_of(created.op)
            })
        })
        .collect();
    calls_queued_wait(&client, CALL_COUNT as u32).await;
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    let mut starts = Vec::new();
    for call in calls {
        starts.push(call.await.unwrap());
    }
    starts.sort_unstable();
    let expected: Vec<u64> = (0..CALL_COUNT as u64).map(|call| call * TRANSFER_COUNT as u64).collect();
    assert_eq!(starts, expected, "each call's timestamp is its own first event's");
    let frames = frames.lock().unwrap();
    assert_eq!(frames.len(), 2, "the ping, then one frame of every call");
    assert_eq!(frames[1].0.event_count as u128, CALL_COUNT * TRANSFER_COUNT);
    assert_eq!(frames[1].0.flags, FLAG_TIMESTAMP, "untraced calls make an untraced frame");
    drop(client);
    responder.join();
}

/// Traced and untraced calls in one frame: the frame is traced, and each event carries its own
/// call's trace id (0 for an untraced call's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_a_traced_call_carries_a_trace_id_per_event() {
    let Holding { responder, release, frames, client, held } =
        holding_client(AsyncClientOptions { frames_in_flight_max: 1, ..async_options() }).await;
    // Joined in this order: untraced (2 events), traced 7 (1), untraced (1), traced 9 (2).
    let plan: [(u128, u128); 4] = [(0, 2), (7, 1), (0, 1), (9, 2)];
    let mut calls = Vec::new();
    for (index, (trace_id, count)) in plan.into_iter().enumerate() {
        let caller = client.clone();
        calls.push(tokio::spawn(async move {
            let transfers: Vec<Transfer> = (0..count).map(|event| transfer(100 * index as u128 + 2 * event)).collect();
            caller.create_transfers(&transfers, trace_id).await.unwrap()
        }));
        calls_queued_wait(&client, index as u32 + 1).await;
    }
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    for call in calls {
        assert_eq!(call.await.unwrap().results, []);
    }
    let frames = frames.lock().unwrap();
    let (header, body) = &frames[1];
    assert_eq!(header.flags, FLAG_TRACED | FLAG_TIMESTAMP);
    assert_eq!(header.event_count, 6);
    let trailer = &body[6 * 128..];
    assert_eq!(trailer.len(), 6 * TRACE_ID_SIZE_BYTES);
    let trace_ids: Vec<u128> = trailer.chunks_exact(16).map(|id| u128::from_le_bytes(id.try_into().unwrap())).collect();
    assert_eq!(trace_ids, [0, 0, 7, 0, 9, 9]);
    drop(frames);
    drop(client);
    responder.join();
}

/// Lookups joined in one frame: each call gets the records of its own ids, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_lookups_get_their_own_records() {
    const CALL_COUNT: u128 = 6;
    let Holding { responder, release, frames, client, held } =
        holding_client(AsyncClientOptions { frames_in_flight_max: 1, ..async_options() }).await;
    let calls: Vec<_> = (0..CALL_COUNT)
        .map(|call| {
            let client = client.clone();
            tokio::spawn(async move {
                let ids: Vec<AccountId> = (0..=call).map(|index| AccountId(call * 10 + index)).collect();
                let accounts = client.lookup_accounts(&ids).await.unwrap();
                assert_eq!(accounts.iter().map(|account| account.id).collect::<Vec<_>>(), ids);
                let balances = client.lookup_balances(&ids[..1]).await.unwrap();
                assert_eq!(balances.reads.len(), 1);
                assert_eq!(balances.reads[0].account.id, ids[0]);
                assert_eq!(balances.holds_of(&balances.reads[0]).len() as u128, ids[0].0, "its own holds");
            })
        })
        .collect();
    calls_queued_wait(&client, CALL_COUNT as u32).await;
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    for call in calls {
        call.await.unwrap();
    }
    let frames = frames.lock().unwrap();
    let lookup_ids: u128 = (1..=CALL_COUNT).sum();
    assert_eq!(frames[1].0.event_count as u128, lookup_ids, "every call's ids in one frame");
    drop(frames);
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_ends_every_call_in_flight() {
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
    let options = AsyncClientOptions { frames_in_flight_max: CALLER_COUNT as u32, ..async_options() };
    let client = AsyncClient::connect(responder.address, options).await.unwrap();
    let callers: Vec<_> = (0..CALLER_COUNT as u128)
        .map(|caller| {
            let client = client.clone();
            tokio::spawn(async move {
                match caller % 3 {
                    0 => client.ping().await.map(drop),
                    1 => client.set_account_limits(&[AccountLimits::default()]).await.map(drop),
                    _ => client.close_accounts(&[AccountId(caller)]).await.map(drop),
                }
            })
        })
        .collect();
    for caller in callers {
        assert!(matches!(caller.await.unwrap(), Err(ClientError::Closed)));
    }
    assert!(client.is_closed());
    assert!(matches!(client.create_transfers(&[transfer(2)], 0).await, Err(ClientError::NotSent)));
    assert!(matches!(client.ping().await, Err(ClientError::NotSent)));
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_calls_time_out() {
    let responder = Responder::spawn(Box::new(|_, _| Action::Reply(Vec::new())));
    let options = AsyncClientOptions { request_timeout: Duration::from_millis(200), ..AsyncClientOptions::default() };
    let client = AsyncClient::connect(responder.address, options).await.unwrap();
    assert!(matches!(client.ping().await, Err(ClientError::Timeout)));
    assert!(matches!(client.create_transfers(&[transfer(2)], 0).await, Err(ClientError::Timeout)));
    assert!(!client.is_closed(), "a late reply does not end the connection");
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_redirects_map_to_their_errors() {
    let responder = Responder::spawn(Box::new(|header, _| {
        let reply = if header.operation == FrameOperation::PING_CODE {
            reply_frame(header, Status::ShuttingDown, 0, 0, &[])
        } else {
            reply_frame(header, Status::NotLeader, 0, 0, b"127.0.0.1:4102")
        };
        Action::Reply(vec![reply])
    }));
    let client = AsyncClient::connect(responder.address, async_options()).await.unwrap();
    assert!(matches!(client.ping().await, Err(ClientError::Frame(Status::ShuttingDown))));
    let error = client.create_transfers(&[transfer(2)], 0).await.unwrap_err();
    assert!(matches!(&error, ClientError::NotLeader { leader: Some(leader) } if leader == "127.0.0.1:4102"), "{error}");
    assert!(!client.is_closed());
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_the_connection_ends_every_call_with_its_status() {
    // What a server at its connection limit does: one busy reply with request id 0, then close.
    let responder = Responder::spawn(Box::new(|_, _| {
        let refusal = FrameHeader { flags: FLAG_REPLY, status: Status::Busy as u16, ..FrameHeader::default() };
        let mut frame = Vec::new();
        frame_append(&refusal, &[], &mut frame);
        Action::Reply(vec![frame])
    }));
    let client = AsyncClient::connect(responder.address, async_options()).await.unwrap();
    assert!(matches!(client.ping().await, Err(ClientError::Frame(Status::Busy))));
    assert!(matches!(client.ping().await, Err(ClientError::NotSent)));
    drop(client);
    responder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_calls_without_sending_them() {
    let Holding { responder, release, frames, client, held } =
        holding_client(AsyncClientOptions { frames_in_flight_max: 1, calls_queued_max: 2, ..async_options() }).await;
    let queued: Vec<_> = (0..2u128)
        .map(|call| {
            let client = client.clone();
            tokio::spawn(async move { client.create_transfers(&[transfer(2 * call + 2)], 0).await })
        })
        .collect();
    calls_queued_wait(&client, 2).await;
    let error = client.create_transfers(&[transfer(8)], 0).await.unwrap_err();
    assert!(matches!(error, ClientError::QueueFull { calls_queued_max: 2 }), "{error}");
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    for call in queued {
        assert_eq!(call.await.unwrap().unwrap().results, []);
    }
    assert_eq!(frames.lock().unwrap()[1].0.event_count, 2, "the refused call was not sent");
    drop(client);
    responder.join();
}
