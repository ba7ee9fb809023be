//! A tiny responder on 127.0.0.1 that speaks the protocol correctly but applies nothing, shared
//! by the tests of the blocking and the async client.

#![allow(dead_code)] // each test file uses its own part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use walletd_core::results::CreateTransferResult;
use walletd_core::{
    Account, AccountId, AccountLimits, Amount, BalanceRead, Batch, Command, DebitUsage, EventResult, Query, Transfer,
    TransferId, TransferRecord, TransferStatus,
};
use walletd_gateway::protocol::*;
use walletd_gateway::ClientOptions;

/// What the responder does with one request.
pub enum Action {
    /// Write these frames now (replies to this or to held requests, in any order).
    Reply(Vec<Vec<u8>>),
    Close,
}

pub type Handler = Box<dyn FnMut(&FrameHeader, &[u8]) -> Action + Send>;

/// Accepts one connection and answers it with `handler`; records every request header.
pub struct Responder {
    pub address: SocketAddr,
    received: Arc<Mutex<Vec<FrameHeader>>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn spawn(mut handler: Handler) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let received_thread = Arc::clone(&received);
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            loop {
                let mut header_bytes = [0u8; HEADER_SIZE_BYTES];
                if stream.read_exact(&mut header_bytes).is_err() {
                    return; // The client closed the connection.
                }
                let header = FrameHeader::decode(&header_bytes).expect("the client sends valid headers");
                let mut body = vec![0u8; header.body_size_bytes as usize];
                stream.read_exact(&mut body).unwrap();
                check_request(&header, &body).expect("the client sends valid requests");
                received_thread.lock().unwrap().push(header);
                match handler(&header, &body) {
                    Action::Reply(frames) => {
                        for frame in frames {
                            if stream.write_all(&frame).is_err() {
                                return;
                            }
                        }
                    }
                    Action::Close => return,
                }
            }
        });
        Responder { address, received, thread: Some(thread) }
    }

    pub fn received(&self) -> Vec<FrameHeader> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for the responder to finish (after the client closed or it closed).
    pub fn join(mut self) {
        self.thread.take().unwrap().join().unwrap();
    }
}

pub fn reply_frame(request: &FrameHeader, status: Status, op: u64, event_count: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame_append(&FrameHeader::reply_to(request, status, op, event_count), body, &mut frame);
    frame
}

/// The reply to a create that asked for its timestamp: the results, then the trailer.
pub fn reply_timestamped(
    request: &FrameHeader,
    op: u64,
    event_count: u32,
    results: &[u8],
    timestamp_ns: u64,
) -> Vec<u8> {
    assert!(request.flags & FLAG_TIMESTAMP != 0, "the client asks for the timestamp of every batched create");
    let mut body = results.to_vec();
    timestamp_encode(timestamp_ns, &mut body);
    let header = FrameHeader {
        flags: FLAG_REPLY | FLAG_TIMESTAMP,
        ..FrameHeader::reply_to(request, Status::Ok, op, event_count)
    };
    let mut frame = Vec::new();
    frame_append(&header, &body, &mut frame);
    frame
}

/// The timestamp the responder says a request was applied at.
pub fn timestamp_of(request_id: u64) -> u64 {
    1_000_000 * request_id
}

pub const FAILED_CODE: u32 = CreateTransferResult::ExceedsCredits as u32;

/// Answers correctly, applying nothing: creates fail exactly the events with an odd id; reads
/// find every id (an account or transfer with that id); the op is the request id.
pub fn answer(request: &FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut scratch = RequestScratch::new();
    let mut reply_body = Vec::new();
    let (op, count) = match scratch.decode(request, body).unwrap() {
        Request::Ledger { command: Command::Batch(batch), .. } => {
            let ids: Vec<u128> = match batch {
                Batch::CreateTransfers(transfers) => transfers.iter().map(|transfer| transfer.id.0).collect(),
                Batch::CreateAccounts(accounts) => accounts.iter().map(|account| account.id.0).collect(),
                Batch::CloseAccounts(ids) | Batch::ReopenAccounts(ids) => ids.iter().map(|id| id.0).collect(),
                Batch::SetAccountLimits(limits) => limits.iter().map(|limits| limits.account_id.0).collect(),
                Batch::Pulse => Vec::new(),
            };
            let results: Vec<EventResult> = (0..ids.len() as u32)
                .filter(|index| ids[*index as usize] % 2 == 1)
                .map(|index| EventResult { index, code: FAILED_CODE })
                .collect();
            let count = results_encode(&results, &mut reply_body);
            if request.flags & FLAG_TIMESTAMP != 0 {
                return reply_timestamped(
                    request,
                    request.request_id,
                    count,
                    &reply_body,
                    timestamp_of(request.request_id),
                );
            }
            (request.request_id, count)
        }
        Request::Ledger { command: Command::Query(query), .. } => (0, query_answer(&query, &mut reply_body)),
        Request::Ping => (0, 0),
        Request::Snapshot => (request.request_id, 0),
    };
    reply_frame(request, Status::Ok, op, count, &reply_body)
}

pub fn query_answer(query: &Query<'_>, body: &mut Vec<u8>) -> u32 {
    match query {
        Query::LookupAccounts(ids) => {
            let accounts: Vec<Account> =
                ids.iter().map(|id| Account { id: *id, ledger: 7, ..Account::default() }).collect();
            accounts_encode(&accounts, body)
        }
        Query::LookupTransfers(ids) => {
            let records: Vec<TransferRecord> = ids
                .iter()
                .map(|id| TransferRecord {
                    transfer: Transfer { id: *id, amount: Amount(id.0 * 10), ..Transfer::default() },
                    status: TransferStatus::PendingPosted,
                })
                .collect();
            transfer_records_encode(&records, body)
        }
        Query::LookupBalances(ids) => {
            // Account n has n open holds, all listed.
            let mut holds = Vec::new();
            let reads: Vec<BalanceRead> = ids
                .iter()
                .map(|id| {
                    let holds_start = holds.len() as u32;
                    for hold_index in 0..id.0 {
                        holds.push(Transfer { id: TransferId(id.0 * 100 + hold_index), ..Transfer::default() });
                    }
                    BalanceRead {
                        account: Account { id: *id, credits_posted: Amount(id.0), ..Account::default() },
                        limits: AccountLimits { account_id: *id, ..AccountLimits::default() },
                        usage: DebitUsage { day_count: 3, ..DebitUsage::default() },
                        holds_count_total: id.0 as u32,
                        holds_start,
                        holds_count: id.0 as u32,
                    }
                })
                .collect();
            balances_encode(&reads, &holds, body)
        }
    }
}

pub fn options() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(20), ..ClientOptions::default() }
}

pub fn transfer(id: u128) -> Transfer {
    Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(1),
        credit_account_id: AccountId(2),
        amount: Amount(1),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// The results the responder gives `transfers`: their odd ids, at their own indexes.
pub fn results_expected(transfers: &[Transfer]) -> Vec<EventResult> {
    (0..transfers.len() as u32)
        .filter(|index| transfers[*index as usize].id.0 % 2 == 1)
        .map(|index| EventResult { index, code: FAILED_CODE })
        .collect()
}
