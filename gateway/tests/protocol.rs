//! The codec's tier of tests: every frame and body round-trips (proptest), every malformed
//! header and request is refused with its own status, decoders refuse rather than panic on any
//! bytes, random request frames (mostly well-formed, one fault of each kind sometimes) reach
//! the request decoder — counted, so a generator that stops reaching it fails — and the worked
//! example in docs/PROTOCOL.md is what the code really sends.

use proptest::prelude::*;
use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, Amount, BalanceRead, Batch, Command, DebitUsage, EventResult,
    LimitFlags, Operation, Query, Transfer, TransferFlags, TransferId, TransferRecord, TransferStatus,
};
use walletd_gateway::protocol::*;

fn account_strategy() -> impl Strategy<Value = Account> {
    (any::<[u128; 6]>(), any::<u64>(), any::<[u32; 3]>(), any::<[u16; 2]>(), any::<u64>()).prop_map(
        |(wide, user_data_64, narrow, short, timestamp)| Account {
            id: AccountId(wide[0]),
            debits_pending: Amount(wide[1]),
            debits_posted: Amount(wide[2]),
            credits_pending: Amount(wide[3]),
            credits_posted: Amount(wide[4]),
            user_data_128: wide[5],
            user_data_64,
            user_data_32: narrow[0],
            reserved: narrow[1],
            ledger: narrow[2],
            code: short[0],
            flags: AccountFlags(short[1]),
            timestamp,
        },
    )
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    (any::<[u128; 6]>(), any::<u64>(), any::<[u32; 3]>(), any::<[u16; 2]>(), any::<u64>()).prop_map(
        |(wide, user_data_64, narrow, short, timestamp)| Transfer {
            id: TransferId(wide[0]),
            debit_account_id: AccountId(wide[1]),
            credit_account_id: AccountId(wide[2]),
            amount: Amount(wide[3]),
            pending_id: TransferId(wide[4]),
            user_data_128: wide[5],
            user_data_64,
            user_data_32: narrow[0],
            timeout_s: narrow[1],
            ledger: narrow[2],
            code: short[0],
            flags: TransferFlags(short[1]),
            timestamp,
        },
    )
}

fn limits_strategy() -> impl Strategy<Value = AccountLimits> {
    (any::<[u128; 5]>(), any::<[u32; 3]>(), any::<[u8; 28]>(), any::<u64>()).prop_map(
        |(wide, narrow, reserved, timestamp)| AccountLimits {
            account_id: AccountId(wide[0]),
            overdraft_max: Amount(wide[1]),
            balance_max: Amount(wide[2]),
            daily_debit_amount_max: Amount(wide[3]),
            monthly_debit_amount_max: Amount(wide[4]),
            daily_debit_count_max: narrow[0],
            monthly_debit_count_max: narrow[1],
            flags: LimitFlags(narrow[2]),
            reserved,
            timestamp,
        },
    )
}

fn status_strategy() -> impl Strategy<Value = TransferStatus> {
    prop::sample::select(vec![
        TransferStatus::Posted,
        TransferStatus::Voided,
        TransferStatus::Pending,
        TransferStatus::PendingPosted,
        TransferStatus::PendingVoided,
        TransferStatus::PendingExpired,
    ])
}

fn header_strategy() -> impl Strategy<Value = FrameHeader> {
    (
        any::<[u16; 3]>(),
        any::<u64>(),
        any::<u128>(),
        any::<u32>(),
        0..=BODY_SIZE_MAX_BYTES,
        any::<[u32; 2]>(),
        any::<u64>(),
    )
        .prop_map(|(short, request_id, client_id, event_count, body_size_bytes, narrow, op)| FrameHeader {
            operation: short[0],
            request_id,
            client_id,
            event_count,
            body_size_bytes,
            flags: short[1],
            status: short[2],
            reserved: narrow[0],
            op,
            body_checksum: narrow[1],
        })
}

/// Results as the ledger produces them: strictly increasing indexes, non-zero codes.
fn results_strategy() -> impl Strategy<Value = Vec<EventResult>> {
    prop::collection::btree_map(0u32..EVENT_COUNT_MAX, 1u32.., 0..64)
        .prop_map(|map| map.into_iter().map(|(index, code)| EventResult { index, code }).collect())
}

/// Balance reads and the ledger's hold list, with `holds_start` pointing into it in order.
fn balances_strategy() -> impl Strategy<Value = (Vec<BalanceRead>, Vec<Transfer>)> {
    let read = (account_strategy(), limits_strategy(), any::<[u32; 4]>(), any::<[u128; 2]>(), 0u32..4, 0u32..3);
    (prop::collection::vec(read, 0..8), prop::collection::vec(transfer_strategy(), 24)).prop_map(|(reads, pool)| {
        let mut holds_next = 0u32;
        let reads = reads
            .into_iter()
            .map(|(account, limits, usage, amounts, holds_count, unlisted_count)| {
                let read = BalanceRead {
                    account,
                    limits,
                    usage: DebitUsage {
                        day: usage[0],
                        day_count: usage[1],
                        month: usage[2],
                        month_count: usage[3],
                        day_amount: Amount(amounts[0]),
                        month_amount: Amount(amounts[1]),
                    },
                    holds_count_total: holds_count + unlisted_count,
                    holds_start: holds_next,
                    holds_count,
                };
                holds_next += holds_count;
                read
            })
            .collect();
        (reads, pool[..holds_next as usize].to_vec())
    })
}

/// Decodes a frame the way a server does: header, then body checks.
fn frame_split(frame: &[u8]) -> (FrameHeader, &[u8]) {
    let header_bytes: &[u8; HEADER_SIZE_BYTES] = frame[..HEADER_SIZE_BYTES].try_into().unwrap();
    let header = FrameHeader::decode(header_bytes).expect("a fresh frame decodes");
    let body = &frame[HEADER_SIZE_BYTES..];
    assert_eq!(body.len(), header.body_size_bytes as usize);
    (header, body)
}

proptest! {
    #[test]
    fn header_round_trips(header in header_strategy()) {
        let bytes = header.encode();
        prop_assert_eq!(&bytes[..4], b"WLTD");
        prop_assert_eq!(FrameHeader::decode(&bytes), Ok(header));
    }

    #[test]
    fn header_bit_flips_are_refused(header in header_strategy(), bit in 0usize..HEADER_SIZE_BYTES * 8) {
        let mut bytes = header.encode();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let status = FrameHeader::decode(&bytes).expect_err("a flipped bit is caught").status();
        prop_assert!(status == Status::BadMagic || status == Status::BadHeaderChecksum);
        prop_assert!(status.closes_connection());
    }

    #[test]
    fn server_info_round_trips(values in any::<([u32; 7], [u64; 3])>(), extra in prop::collection::vec(any::<u8>(), 0..64)) {
        let (counts, times) = values;
        let info = ServerInfo {
            transfers_max: counts[0],
            batch_events_max: counts[1],
            id_future_ms_max: times[0],
            idle_timeout_ms: times[1],
            frame_timeout_ms: times[2],
            connections_max: counts[2],
            accounts_max: counts[3],
            pending_max: counts[4],
            limits_max: counts[5],
            ledgers_max: counts[6],
        };
        let mut body = info.encode().to_vec();
        prop_assert_eq!(body.len(), SERVER_INFO_SIZE_BYTES);
        prop_assert_eq!(ServerInfo::decode(&body), Ok(Some(info)));
        // A later server may append fields: a client reads the ones it knows.
        body.extend_from_slice(&extra);
        prop_assert_eq!(ServerInfo::decode(&body), Ok(Some(info)));
    }

    #[test]
    fn results_round_trip(results in results_strategy()) {
        let mut body = vec![0xaa];
        let count = results_encode(&results, &mut body);
        prop_assert_eq!(count as usize, results.len());
        let operation = FrameOperation::Ledger(Operation::CreateTransfers);
        let mut decoded = vec![EventResult { index: 99, code: 1 }];
        results_decode(operation, count, &body[1..], &mut decoded).unwrap();
        prop_assert_eq!(&decoded[1..], &results[..]);
    }

    #[test]
    fn accounts_round_trip(accounts in prop::collection::vec(account_strategy(), 0..16)) {
        let mut body = Vec::new();
        let count = accounts_encode(&accounts, &mut body);
        let mut decoded = Vec::new();
        accounts_decode(FrameOperation::Ledger(Operation::LookupAccounts), count, &body, &mut decoded).unwrap();
        prop_assert_eq!(decoded, accounts);
    }

    #[test]
    fn transfer_records_round_trip(
        records in prop::collection::vec((transfer_strategy(), status_strategy()), 0..16),
    ) {
        let records: Vec<TransferRecord> =
            records.into_iter().map(|(transfer, status)| TransferRecord { transfer, status }).collect();
        let mut body = Vec::new();
        let count = transfer_records_encode(&records, &mut body);
        prop_assert_eq!(body.len(), records.len() * 144);
        let mut decoded = Vec::new();
        transfer_records_decode(FrameOperation::Ledger(Operation::LookupTransfers), count, &body, &mut decoded)
            .unwrap();
        prop_assert_eq!(decoded, records);
    }

    #[test]
    fn balances_round_trip((reads, holds) in balances_strategy()) {
        let mut body = Vec::new();
        let count = balances_encode(&reads, &holds, &mut body);
        prop_assert_eq!(body.len(), reads.len() * 320 + holds.len() * 128);
        let (mut reads_decoded, mut holds_decoded) = (Vec::new(), Vec::new());
        let operation = FrameOperation::Ledger(Operation::LookupBalances);
        balances_decode(operation, count, &body, &mut reads_decoded, &mut holds_decoded).unwrap();
        prop_assert_eq!(reads_decoded, reads);
        prop_assert_eq!(holds_decoded, holds);
    }

    #[test]
    fn batch_requests_round_trip(
        request_id in 1..=u64::MAX,
        client_id in any::<u128>(),
        accounts in prop::collection::vec(account_strategy(), 1..8),
        transfers in prop::collection::vec(transfer_strategy(), 1..8),
        limits in prop::collection::vec(limits_strategy(), 1..8),
        account_ids in prop::collection::vec(any::<u128>().prop_map(AccountId), 1..8),
    ) {
        let batches = [
            Batch::Pulse,
            Batch::CreateAccounts(&accounts),
            Batch::CreateTransfers(&transfers),
            Batch::CloseAccounts(&account_ids),
            Batch::ReopenAccounts(&account_ids),
            Batch::SetAccountLimits(&limits),
        ];
        let mut scratch = RequestScratch::new();
        for batch in batches {
            let mut frame = Vec::new();
            batch_request_append(&batch, request_id, client_id, &mut frame);
            let (header, body) = frame_split(&frame);
            prop_assert_eq!((header.request_id, header.client_id), (request_id, client_id));
            prop_assert_eq!(header.event_count as usize, batch.len());
            let decoded = match scratch.decode(&header, body).unwrap() {
                Request::Ledger { command: Command::Batch(decoded), command_bytes } => {
                    prop_assert_eq!(command_bytes.len(), 16 + body.len());
                    format!("{decoded:?}")
                }
                other => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
            };
            prop_assert_eq!(decoded, format!("{batch:?}"));
        }
    }

    /// A traced batch decodes to the same events as the untraced one, and its command is the
    /// traced command: the events, then the trace ids as sent.
    #[test]
    fn traced_batch_requests_round_trip(
        request_id in 1..=u64::MAX,
        client_id in any::<u128>(),
        transfers in prop::collection::vec(transfer_strategy(), 1..8),
        accounts in prop::collection::vec(account_strategy(), 1..8),
        trace_seed in any::<u128>(),
    ) {
        let transfer_traces: Vec<u128> =
            (0..transfers.len() as u128).map(|index| if index % 3 == 1 { 0 } else { trace_seed ^ index }).collect();
        let account_traces: Vec<u128> = (0..accounts.len() as u128).map(|index| trace_seed.rotate_left(index as u32)).collect();
        let mut scratch = RequestScratch::new();
        for (batch, trace_ids) in
            [(Batch::CreateTransfers(&transfers), &transfer_traces), (Batch::CreateAccounts(&accounts), &account_traces)]
        {
            let mut plain = Vec::new();
            batch_request_append(&batch, request_id, client_id, &mut plain);
            let mut frame = Vec::new();
            batch_request_traced_append(&batch, trace_ids, request_id, client_id, &mut frame);
            let (header, body) = frame_split(&frame);
            prop_assert_eq!(header.flags, FLAG_TRACED);
            prop_assert_eq!(header.event_count as usize, batch.len());
            prop_assert_eq!(body.len(), batch.len() * (128 + 16));
            prop_assert_eq!(&body[..batch.len() * 128], &plain[HEADER_SIZE_BYTES..], "the events are the untraced body");
            let (decoded, command) = match scratch.decode(&header, body).unwrap() {
                Request::Ledger { command: Command::Batch(decoded), command_bytes } => {
                    (format!("{decoded:?}"), command_bytes.to_vec())
                }
                other => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
            };
            prop_assert_eq!(decoded, format!("{batch:?}"));
            prop_assert_eq!(&command[2..4], &[1u8, 0][..], "the command is traced");
            prop_assert_eq!(&command[16..], body, "the command carries events and trace ids as sent");
            let journaled = walletd_core::TraceIds::of_command(&command).unwrap();
            let read: Vec<u128> = (0..batch.len()).map(|index| journaled.get(index)).collect();
            prop_assert_eq!(&read, trace_ids);
        }
    }

    #[test]
    fn query_requests_round_trip(
        request_id in 1..=u64::MAX,
        client_id in any::<u128>(),
        account_ids in prop::collection::vec(any::<u128>().prop_map(AccountId), 0..8),
        transfer_ids in prop::collection::vec(any::<u128>().prop_map(TransferId), 0..8),
    ) {
        let queries =
            [Query::LookupAccounts(&account_ids), Query::LookupTransfers(&transfer_ids), Query::LookupBalances(&account_ids)];
        let mut scratch = RequestScratch::new();
        for query in queries {
            let mut frame = Vec::new();
            query_request_append(&query, request_id, client_id, &mut frame);
            let (header, body) = frame_split(&frame);
            let decoded = match scratch.decode(&header, body).unwrap() {
                Request::Ledger { command: Command::Query(decoded), .. } => format!("{decoded:?}"),
                other => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
            };
            prop_assert_eq!(decoded, format!("{query:?}"));
        }
    }

    /// Any bytes given to a reply decoder: refused or accepted, never a panic.
    #[test]
    fn reply_decoders_never_panic(body in prop::collection::vec(any::<u8>(), 0..1024), event_count in 0u32..16) {
        let operation = FrameOperation::Ledger(Operation::LookupBalances);
        let _ = results_decode(operation, event_count, &body, &mut Vec::new());
        let _ = accounts_decode(operation, event_count, &body, &mut Vec::new());
        let _ = transfer_records_decode(operation, event_count, &body, &mut Vec::new());
        let _ = balances_decode(operation, event_count, &body, &mut Vec::new(), &mut Vec::new());
        let _ = ServerInfo::decode(&body);
    }
}

/// One thing wrong with a generated request frame, or nothing.
#[derive(Clone, Debug)]
enum Fault {
    None,
    Magic(u8),
    Version(u16),
    HeaderBit(usize),
    BodyTooLarge(u32),
    RequestIdZero,
    BodyChecksum(u32),
    /// A header field only replies may set, or a reserved one: (which, value).
    ReservedField(u8, u64),
    /// `event_count` other than the body holds (the body and its size stay as they are).
    EventCount(u32),
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        1 => any::<u8>().prop_filter("not W", |byte| *byte != b'W').prop_map(Fault::Magic),
        1 => any::<u16>().prop_filter("not 1", |version| *version != VERSION).prop_map(Fault::Version),
        1 => (0usize..HEADER_SIZE_BYTES * 8).prop_map(Fault::HeaderBit),
        1 => (BODY_SIZE_MAX_BYTES + 1..).prop_map(Fault::BodyTooLarge),
        1 => Just(Fault::RequestIdZero),
        1 => (1u32..).prop_map(Fault::BodyChecksum),
        1 => (0u8..5, 1u64..).prop_map(|(which, value)| Fault::ReservedField(which, value)),
        2 => any::<u32>().prop_map(Fault::EventCount),
    ]
}

/// A request frame as a client might send it, well-formed more often than not so that most
/// cases get past the frame checks to the decoding, with one fault of every kind sometimes.
fn request_frame_strategy() -> impl Strategy<Value = (Fault, Vec<u8>)> {
    let operation = prop_oneof![
        8 => prop::sample::select(FrameOperation::ALL.to_vec()).prop_map(FrameOperation::code),
        1 => any::<u16>(),
    ];
    let events = prop::collection::vec(any::<u8>(), 6 * 128);
    (operation, 0u32..=6, 1..=u64::MAX, any::<u128>(), events, fault_strategy()).prop_map(
        |(operation, event_count, request_id, client_id, events, fault)| {
            let event_size_bytes = FrameOperation::from_u16(operation).map_or(16, FrameOperation::event_size_bytes);
            // Operations without events take none (a count is Fault::EventCount's business).
            let event_count = if event_size_bytes == 0 { 0 } else { event_count };
            let body = &events[..event_count as usize * event_size_bytes];
            let mut header = FrameHeader { operation, request_id, client_id, event_count, ..FrameHeader::default() };
            header.body_size_bytes = body.len() as u32;
            header.body_checksum = body_checksum(body);
            match fault {
                Fault::RequestIdZero => header.request_id = 0,
                Fault::BodyChecksum(flip) => header.body_checksum ^= flip,
                Fault::ReservedField(0, _) => header.flags = FLAG_REPLY,
                Fault::ReservedField(1, value) => header.flags = (value as u16 | 2) & !FLAG_REPLY,
                Fault::ReservedField(2, value) => header.status = (value as u16).max(1),
                Fault::ReservedField(3, value) => header.reserved = (value as u32).max(1),
                Fault::ReservedField(_, value) => header.op = value,
                Fault::EventCount(count) => header.event_count = count,
                _ => {}
            }
            let mut bytes = header.encode();
            match fault {
                Fault::Magic(byte) => bytes[MAGIC_OFFSET] = byte,
                Fault::Version(version) => {
                    bytes[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
                    header_seal(&mut bytes);
                }
                Fault::HeaderBit(bit) => bytes[bit / 8] ^= 1 << (bit % 8),
                Fault::BodyTooLarge(size) => {
                    bytes[BODY_SIZE_OFFSET..BODY_SIZE_OFFSET + 4].copy_from_slice(&size.to_le_bytes());
                    header_seal(&mut bytes);
                }
                _ => {}
            }
            let mut frame = bytes.to_vec();
            frame.extend_from_slice(body);
            (fault, frame)
        },
    )
}

/// The statuses a frame with `fault` may be refused with (the first fault in check order
/// wins; an unknown operation is found before the reserved fields and the event count).
fn fault_statuses(fault: &Fault, operation_known: bool) -> &'static [Status] {
    use Status as S;
    match fault {
        Fault::Magic(_) => &[S::BadMagic],
        Fault::HeaderBit(_) => &[S::BadMagic, S::BadHeaderChecksum],
        Fault::Version(_) => &[S::BadVersion],
        Fault::BodyTooLarge(_) => &[S::BodyTooLarge],
        Fault::RequestIdZero => &[S::RequestIdZero],
        Fault::BodyChecksum(_) => &[S::BadBodyChecksum],
        _ if !operation_known => &[S::UnknownOperation],
        Fault::ReservedField(..) => &[S::BadBodySize],
        // A count the body does not hold (or, for the operations without events, any count).
        Fault::EventCount(_) => &[S::TooManyEvents, S::BadBodySize, S::NoEvents],
        // A well-formed frame: refused only when it is an empty mutating request.
        Fault::None => &[S::NoEvents],
    }
}

/// Where a generated request frame ended.
#[derive(Default, Debug)]
struct Reached {
    cases: u32,
    header_refused: u32,
    request_refused: u32,
    /// Through every frame check and the ledger's own decoder, into a command.
    decoded: u32,
    gateway_operations: u32,
}

/// Random request frames through the server's checks and decoder: never a panic, each
/// refusal with the status its fault calls for, and most cases reach the decoder (counted, so
/// that a generator that stops reaching it fails the test rather than passing vacuously).
#[test]
fn random_request_frames_reach_the_decoder_and_never_panic() {
    use std::cell::RefCell;
    use walletd_core::CommandScratch;
    let config = ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let reached = RefCell::new(Reached::default());
    let scratch = RefCell::new(RequestScratch::new());
    let command_scratch = RefCell::new(CommandScratch::new(EVENT_COUNT_MAX));
    runner
        .run(&request_frame_strategy(), |(fault, frame)| {
            let mut reached = reached.borrow_mut();
            reached.cases += 1;
            let operation_known = FrameOperation::from_u16(u16::from_le_bytes([frame[6], frame[7]])).is_some();
            let allowed = fault_statuses(&fault, operation_known);
            let header_bytes: &[u8; HEADER_SIZE_BYTES] = frame[..HEADER_SIZE_BYTES].try_into().unwrap();
            let header = match FrameHeader::decode(header_bytes) {
                Ok(header) => header,
                Err(error) => {
                    prop_assert!(allowed.contains(&error.status()), "{:?}: {}", fault, error);
                    prop_assert!(error.status().closes_connection(), "{}", error);
                    reached.header_refused += 1;
                    return Ok(());
                }
            };
            let body = &frame[HEADER_SIZE_BYTES..];
            prop_assert_eq!(body.len(), header.body_size_bytes as usize);
            let _ = check_reply(&header, body);
            match scratch.borrow_mut().decode(&header, body) {
                Err(error) => {
                    prop_assert!(allowed.contains(&error.status()), "{:?}: {}", fault, error);
                    let closes = error.status().closes_connection();
                    prop_assert_eq!(closes, error == FrameError::RequestIdZero, "{}", error);
                    reached.request_refused += 1;
                }
                Ok(Request::Ledger { command_bytes, .. }) => {
                    prop_assert!(matches!(fault, Fault::None | Fault::EventCount(_)), "{:?} was accepted", fault);
                    let FrameOperation::Ledger(operation) = FrameOperation::from_u16(header.operation).unwrap() else {
                        unreachable!("a ledger request has a ledger operation");
                    };
                    prop_assert_eq!(&command_bytes[16..], body, "the command carries the events as sent");
                    let checked =
                        command_check(operation, header.event_count, command_bytes, &mut command_scratch.borrow_mut());
                    prop_assert_eq!(checked, Ok(()));
                    reached.decoded += 1;
                }
                Ok(Request::Ping | Request::Snapshot) => {
                    prop_assert!(matches!(fault, Fault::None | Fault::EventCount(_)), "{:?} was accepted", fault);
                    reached.gateway_operations += 1;
                }
            }
            Ok(())
        })
        .unwrap();
    let reached = reached.into_inner();
    // Expected shares: about 45% decoded, 18% refused at the header, 30% refused as requests.
    assert!(reached.decoded * 4 >= reached.cases, "too few cases reached the decoder: {reached:?}");
    assert!(reached.header_refused * 20 >= reached.cases, "too few bad headers: {reached:?}");
    assert!(reached.request_refused * 10 >= reached.cases, "too few bad requests: {reached:?}");
    assert!(reached.gateway_operations > 0, "ping and snapshot: {reached:?}");
}

#[test]
fn ping_and_snapshot_requests_decode() {
    let mut scratch = RequestScratch::new();
    for (operation, expected) in [(FrameOperation::Ping, "Ping"), (FrameOperation::Snapshot, "Snapshot")] {
        let mut frame = Vec::new();
        request_append(operation, 5, 6, &[], 0, &mut frame);
        let (header, body) = frame_split(&frame);
        assert_eq!(format!("{:?}", scratch.decode(&header, body).unwrap()), expected);
    }
}

#[test]
fn operations_have_their_numbers_and_limits() {
    let codes: Vec<u16> = FrameOperation::ALL.iter().map(|operation| operation.code()).collect();
    assert_eq!(codes, [1, 2, 3, 4, 5, 6, 10, 11, 12, 256, 257]);
    for operation in FrameOperation::ALL {
        assert_eq!(FrameOperation::from_u16(operation.code()), Some(operation));
        let max = operation.event_count_max() as usize;
        assert!(max * operation.event_size_bytes() <= BODY_SIZE_MAX_BYTES as usize);
        assert!(max * operation.reply_record_size_bytes() <= BODY_SIZE_MAX_BYTES as usize);
    }
    assert_eq!(FrameOperation::from_u16(7), None);
    assert_eq!(FrameOperation::Ledger(Operation::CreateTransfers).event_count_max(), 8189);
    assert_eq!(FrameOperation::Ledger(Operation::LookupAccounts).event_count_max(), 8189);
    assert_eq!(FrameOperation::Ledger(Operation::LookupTransfers).event_count_max(), 7279);
    assert_eq!(FrameOperation::Ledger(Operation::LookupBalances).event_count_max(), 3275);
    assert_eq!(FrameOperation::Ping.event_count_max(), 0);
    let closing: Vec<u16> =
        Status::ALL.iter().filter(|status| status.closes_connection()).map(|status| *status as u16).collect();
    assert_eq!(closing, [1, 2, 3, 4, 10, 11]);
    let numbers: Vec<u16> = Status::ALL.iter().map(|status| *status as u16).collect();
    assert_eq!(numbers, (0..=14).collect::<Vec<u16>>(), "statuses are numbered densely, new ones appended");
    for status in Status::ALL {
        assert_eq!(Status::from_u16(status as u16), Some(status));
    }
}

#[test]
fn server_info_is_laid_out_as_documented() {
    let info = ServerInfo {
        transfers_max: 0x0101_0101,
        batch_events_max: 0x0202_0202,
        id_future_ms_max: 0x0303_0303_0303_0303,
        idle_timeout_ms: 0x0404_0404_0404_0404,
        frame_timeout_ms: 0x0505_0505_0505_0505,
        connections_max: 0x0606_0606,
        accounts_max: 0x0707_0707,
        pending_max: 0x0808_0808,
        limits_max: 0x0909_0909,
        ledgers_max: 0x0a0a_0a0a,
    };
    let bytes = info.encode();
    // (offset, size, the byte every position holds): the table in docs/PROTOCOL.md.
    let layout = [(0, 4, 1u8), (4, 4, 2), (8, 8, 3), (16, 8, 4), (24, 8, 5), (32, 4, 6), (36, 4, 7)];
    let layout = layout.iter().chain(&[(40, 4, 8u8), (44, 4, 9), (48, 4, 10), (52, 12, 0)]);
    let mut covered = 0;
    for &(offset, size, byte) in layout {
        assert!(bytes[offset..offset + size].iter().all(|value| *value == byte), "bytes {offset}..{}", offset + size);
        covered += size;
    }
    assert_eq!(covered, SERVER_INFO_SIZE_BYTES);
    assert_eq!(ServerInfo::decode(&[]), Ok(None), "an older server's empty ping body");
    assert!(ServerInfo::decode(&bytes[..63]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Malformed headers (connection-closing) and requests (connection-keeping): each its status.

fn transfer_request() -> Vec<u8> {
    let transfers = [Transfer { id: TransferId(1), amount: Amount(5), ..Transfer::default() }; 2];
    let mut frame = Vec::new();
    batch_request_append(&Batch::CreateTransfers(&transfers), 77, 88, &mut frame);
    frame
}

fn header_bytes_of(frame: &[u8]) -> [u8; HEADER_SIZE_BYTES] {
    frame[..HEADER_SIZE_BYTES].try_into().unwrap()
}

#[test]
fn malformed_headers_close_the_connection() {
    let frame = transfer_request();
    let mut magic = header_bytes_of(&frame);
    magic[1] = b'X';
    header_seal(&mut magic);
    assert_eq!(FrameHeader::decode(&magic), Err(FrameError::BadMagic { magic: *b"WXTD" }));

    let mut version = header_bytes_of(&frame);
    version[VERSION_OFFSET] = 2;
    header_seal(&mut version);
    assert_eq!(FrameHeader::decode(&version), Err(FrameError::BadVersion { version: 2 }));

    let mut checksum = header_bytes_of(&frame);
    checksum[REQUEST_ID_OFFSET] ^= 1;
    assert_eq!(FrameHeader::decode(&checksum).unwrap_err().status(), Status::BadHeaderChecksum);

    let mut large = header_bytes_of(&frame);
    large[BODY_SIZE_OFFSET..BODY_SIZE_OFFSET + 4].copy_from_slice(&(BODY_SIZE_MAX_BYTES + 1).to_le_bytes());
    header_seal(&mut large);
    let error = FrameHeader::decode(&large).unwrap_err();
    let body_size_max_bytes = BODY_SIZE_MAX_BYTES;
    assert_eq!(error, FrameError::BodyTooLarge { body_size_bytes: BODY_SIZE_MAX_BYTES + 1, body_size_max_bytes });
    assert!(error.status().closes_connection());

    // The reply to each: ids echoed only where the header checksum vouched for them.
    for (bytes, echoed) in [(magic, false), (checksum, false), (version, true), (large, true)] {
        let error = FrameHeader::decode(&bytes).unwrap_err();
        let reply = FrameHeader::error_reply_to(&bytes, error);
        assert_eq!(reply.request_id, if echoed { 77 } else { 0 });
        assert_eq!(reply.status, error.status() as u16);
        assert!(reply.is_reply());
    }
}

/// Sets one field of a request header.
type HeaderPatch = fn(&mut FrameHeader);

/// Patches a request header field, keeps the header checksum valid, and checks the request.
fn request_patched(patch: impl FnOnce(&mut FrameHeader, &mut Vec<u8>)) -> Result<FrameOperation, FrameError> {
    let frame = transfer_request();
    let (mut header, body) = frame_split(&frame);
    let mut body = body.to_vec();
    patch(&mut header, &mut body);
    let header = FrameHeader::decode(&header.encode()).expect("the header itself stays valid");
    check_request(&header, &body)
}

#[test]
fn request_id_zero_is_refused_before_anything_else_and_closes_the_connection() {
    let error = request_patched(|header, _| header.request_id = 0).unwrap_err();
    assert_eq!(error, FrameError::RequestIdZero);
    assert!(error.status().closes_connection());
    // Even with another fault, the status is request_id_zero: a reply with request id 0 is
    // always followed by the close.
    let error = request_patched(|header, body| {
        header.request_id = 0;
        body[3] ^= 1;
    })
    .unwrap_err();
    assert_eq!(error, FrameError::RequestIdZero);
}

#[test]
fn empty_mutating_requests_are_refused_and_empty_reads_are_not() {
    for operation in FrameOperation::ALL {
        let mut frame = Vec::new();
        request_append(operation, 1, 2, &[], 0, &mut frame);
        let (header, body) = frame_split(&frame);
        let checked = check_request(&header, body);
        let takes_events = operation.event_size_bytes() > 0;
        match operation {
            FrameOperation::Ledger(ledger) if ledger.is_mutating() && takes_events => {
                assert_eq!(checked, Err(FrameError::NoEvents { operation }), "{}", operation.name());
                assert!(!Status::NoEvents.closes_connection());
            }
            _ => assert_eq!(checked, Ok(operation), "{}", operation.name()),
        }
    }
}

#[test]
fn malformed_requests_keep_the_connection() {
    let transfers = FrameOperation::Ledger(Operation::CreateTransfers);
    assert_eq!(request_patched(|_, _| {}), Ok(transfers));
    let error = request_patched(|_, body| body[3] ^= 1).unwrap_err();
    assert_eq!(error.status(), Status::BadBodyChecksum);
    let error = request_patched(|header, _| header.operation = 9).unwrap_err();
    assert_eq!(error, FrameError::UnknownOperation { operation: 9 });
    let error = request_patched(|header, _| header.event_count = 3).unwrap_err();
    assert_eq!(error, FrameError::BadBodySize { operation: transfers, event_count: 3, body_size_bytes: 256 });
    let error = request_patched(|header, _| header.event_count = 8190).unwrap_err();
    assert_eq!(error, FrameError::TooManyEvents { operation: transfers, event_count: 8190, event_count_max: 8189 });
    let error = request_patched(|header, body| {
        body.truncate(200);
        header.body_size_bytes = 200;
        header.body_checksum = body_checksum(body);
    })
    .unwrap_err();
    assert_eq!(error.status(), Status::BadBodySize);
    let reserved_cases: [(HeaderPatch, &str); 5] = [
        (|header| header.flags = FLAG_REPLY, "flags (the reply bit)"),
        (|header| header.flags = 1 << 5, "flags (reserved bits)"),
        (|header| header.status = 1, "status"),
        (|header| header.reserved = 1, "reserved"),
        (|header| header.op = 1, "op"),
    ];
    for (patch, field) in reserved_cases {
        let error = request_patched(|header, _| patch(header)).unwrap_err();
        assert_eq!(error, FrameError::ReservedNotZero { field });
        assert_eq!(error.status(), Status::BadBodySize);
        assert!(!error.status().closes_connection());
    }
}

#[test]
fn command_check_refuses_what_apply_would_panic_on() {
    use walletd_core::command::command_encode;
    use walletd_core::CommandScratch;
    let transfers = [Transfer { id: TransferId(1), amount: Amount(5), ..Transfer::default() }; 2];
    let mut command = Vec::new();
    command_encode(Operation::CreateTransfers, walletd_core::command::records_as_bytes(&transfers), 2, &mut command);
    let mut scratch = CommandScratch::new(2);
    assert_eq!(command_check(Operation::CreateTransfers, 2, &command, &mut scratch), Ok(()));
    let transfers_operation = FrameOperation::Ledger(Operation::CreateTransfers);
    let refused = |error: FrameError| {
        assert_ne!(error.status(), Status::Ok);
        assert!(!error.status().closes_connection(), "one request is spoilt, not the connection: {error}");
        error
    };
    // More events than the decoder (sized as apply's) takes.
    let error = command_check(Operation::CreateTransfers, 2, &command, &mut CommandScratch::new(1)).unwrap_err();
    let expected = FrameError::TooManyEvents { operation: transfers_operation, event_count: 2, event_count_max: 1 };
    assert_eq!(refused(error), expected);
    // Bytes of another operation, or another count, than the request claims.
    let mut ids = Vec::new();
    command_encode(Operation::LookupAccounts, &[0u8; 32], 2, &mut ids);
    let error = command_check(Operation::CloseAccounts, 2, &ids, &mut scratch).unwrap_err();
    assert!(matches!(refused(error), FrameError::CommandNotDecoded { reason: "another operation", .. }));
    let error = command_check(Operation::CreateTransfers, 1, &command, &mut scratch).unwrap_err();
    assert!(matches!(refused(error), FrameError::CommandNotDecoded { reason: "another event count", .. }));
    // Bytes the decoder refuses outright.
    let mut reserved = command.clone();
    reserved[9] = 1;
    let error = command_check(Operation::CreateTransfers, 2, &reserved, &mut scratch).unwrap_err();
    assert!(matches!(refused(error), FrameError::CommandNotDecoded { .. }));
    let error = command_check(Operation::CreateTransfers, 2, &command[..10], &mut scratch).unwrap_err();
    assert!(matches!(refused(error), FrameError::CommandNotDecoded { .. }));
    let error = command_check(Operation::CreateTransfers, 2, &command[..command.len() - 1], &mut scratch).unwrap_err();
    assert_eq!(refused(error).status(), Status::BadBodySize);
    let mut unknown = command.clone();
    unknown[0] = 99;
    let error = command_check(Operation::CreateTransfers, 2, &unknown, &mut scratch).unwrap_err();
    assert_eq!(refused(error), FrameError::UnknownOperation { operation: 99 });
}

#[test]
fn too_many_lookups_for_one_reply_are_refused() {
    let ids = vec![AccountId(1); 3276];
    let mut frame = Vec::new();
    let operation = FrameOperation::Ledger(Operation::LookupBalances);
    frame_append(
        &FrameHeader::request(operation, 1, 2, 3276),
        walletd_core::command::records_as_bytes(&ids),
        &mut frame,
    );
    let (header, body) = frame_split(&frame);
    let error = check_request(&header, body).unwrap_err();
    assert_eq!(error, FrameError::TooManyEvents { operation, event_count: 3276, event_count_max: 3275 });
    let mut ping = Vec::new();
    frame_append(&FrameHeader::request(FrameOperation::Ping, 1, 2, 1), &[], &mut ping);
    let (header, body) = frame_split(&ping);
    assert_eq!(check_request(&header, body).unwrap_err().status(), Status::TooManyEvents);
}

#[test]
fn malformed_replies_are_refused() {
    let request = FrameHeader::request(FrameOperation::Ledger(Operation::CreateTransfers), 3, 4, 1);
    let mut frame = Vec::new();
    let body = [0u8, 0, 0, 0, 7, 0, 0, 0];
    frame_append(&FrameHeader::reply_to(&request, Status::Ok, 12, 1), &body, &mut frame);
    let (header, body) = frame_split(&frame);
    assert_eq!(check_reply(&header, body), Ok(Status::Ok));
    assert_eq!(check_reply(&FrameHeader { flags: 0, ..header }, body).unwrap_err().status(), Status::BadBodySize);
    let error = check_reply(&FrameHeader { body_checksum: header.body_checksum ^ 1, ..header }, body).unwrap_err();
    assert_eq!(error.status(), Status::BadBodyChecksum);
    assert!(check_reply(&FrameHeader { status: 99, ..header }, body).is_err());
    assert!(check_reply(&FrameHeader { status: Status::Busy as u16, ..header }, body).is_err());
    // An error reply about the connection itself has no operation; a successful one must have one.
    let mut connection_error = Vec::new();
    let header_bytes = [0u8; HEADER_SIZE_BYTES];
    let refused = FrameHeader::error_reply_to(&header_bytes, FrameError::BadMagic { magic: [0; 4] });
    frame_append(&refused, &[], &mut connection_error);
    let (refused, empty) = frame_split(&connection_error);
    assert_eq!((refused.operation, refused.request_id), (0, 0));
    assert_eq!(check_reply(&refused, empty), Ok(Status::BadMagic));
    let unknown = FrameHeader { status: 0, ..refused };
    assert_eq!(check_reply(&unknown, empty), Err(FrameError::UnknownOperation { operation: 0 }));

    let operation = FrameOperation::Ledger(Operation::CreateTransfers);
    let unordered = [1u32, 5, 1, 5].iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>();
    assert!(results_decode(operation, 2, &unordered, &mut Vec::new()).is_err());
    let zero_code = [1u32, 0].iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>();
    assert!(results_decode(operation, 1, &zero_code, &mut Vec::new()).is_err());
    assert!(results_decode(operation, 2, &zero_code, &mut Vec::new()).is_err());
    let mut record = vec![0u8; 144];
    record[128] = 7;
    assert!(transfer_records_decode(operation, 1, &record, &mut Vec::new()).is_err());
    record[128] = 1;
    record[140] = 1;
    assert!(transfer_records_decode(operation, 1, &record, &mut Vec::new()).is_err());
    let mut read = vec![0u8; 320];
    read[308] = 1; // holds_count 1 > holds_count_total 0
    assert!(balances_decode(operation, 1, &read, &mut Vec::new(), &mut Vec::new()).is_err());
    read[304] = 1; // now consistent, but the hold is missing
    assert!(balances_decode(operation, 1, &read, &mut Vec::new(), &mut Vec::new()).is_err());
    read.extend_from_slice(&[0u8; 128]);
    assert!(balances_decode(operation, 1, &read, &mut Vec::new(), &mut Vec::new()).is_ok());
}

#[test]
fn balance_reads_list_holds_while_they_fit() {
    let reads: Vec<BalanceRead> = (0..3000u32)
        .map(|index| BalanceRead {
            account: Account { id: AccountId(u128::from(index) + 1), ..Account::default() },
            limits: AccountLimits::default(),
            usage: DebitUsage::default(),
            holds_count_total: 1,
            holds_start: index,
            holds_count: 1,
        })
        .collect();
    let holds: Vec<Transfer> =
        (0..3000u128).map(|index| Transfer { id: TransferId(index + 1), ..Transfer::default() }).collect();
    let mut body = Vec::new();
    let count = balances_encode(&reads, &holds, &mut body);
    assert!(body.len() <= BODY_SIZE_MAX_BYTES as usize);
    let (mut reads_decoded, mut holds_decoded) = (Vec::new(), Vec::new());
    let operation = FrameOperation::Ledger(Operation::LookupBalances);
    balances_decode(operation, count, &body, &mut reads_decoded, &mut holds_decoded).unwrap();
    let room_count = (BODY_SIZE_MAX_BYTES as usize - 3000 * 320) / 128;
    assert_eq!(holds_decoded.len(), room_count);
    assert_eq!(holds_decoded[..], holds[..room_count]);
    assert!(reads_decoded[..room_count].iter().all(|read| read.holds_count == 1));
    assert!(reads_decoded[room_count..].iter().all(|read| read.holds_count == 0 && read.holds_count_total == 1));
}

// ---------------------------------------------------------------------------------------------
// The worked example of docs/PROTOCOL.md.

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line_index, line) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x}:", line_index * 16));
        for byte in line {
            out.push_str(&format!(" {byte:02x}"));
        }
        out.push('\n');
    }
    out
}

/// The example: one transfer of 100 minor units from account 1 to account 2 on ledger 1, code 1,
/// id = TransferId::from_parts(1_700_000_000_000, 1); request id 1, client id 0xc0ffee. The
/// reply: op 42, the one event failed with exceeds_credits (58).
fn doc_example() -> (Vec<u8>, Vec<u8>) {
    let transfer = Transfer {
        id: TransferId::from_parts(1_700_000_000_000, 1),
        debit_account_id: AccountId(1),
        credit_account_id: AccountId(2),
        amount: Amount(100),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    };
    let mut request = Vec::new();
    batch_request_append(&Batch::CreateTransfers(&[transfer]), 1, 0xc0ffee, &mut request);
    let (header, _) = frame_split(&request);
    let mut reply = Vec::new();
    let start = frame_begin(&mut reply);
    let count = results_encode(&[EventResult { index: 0, code: 58 }], &mut reply);
    frame_end(&mut reply, start, &FrameHeader::reply_to(&header, Status::Ok, 42, count));
    (request, reply)
}

#[test]
fn protocol_doc_example_is_what_the_code_sends() {
    let (request, reply) = doc_example();
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/PROTOCOL.md exists");
    let (request_dump, reply_dump) = (hex_dump(&request), hex_dump(&reply));
    assert!(doc.contains(&request_dump), "docs/PROTOCOL.md lacks the request dump:\n{request_dump}");
    assert!(doc.contains(&reply_dump), "docs/PROTOCOL.md lacks the reply dump:\n{reply_dump}");
    let (header, body) = frame_split(&reply);
    let mut results = Vec::new();
    results_decode(FrameOperation::Ledger(Operation::CreateTransfers), header.event_count, body, &mut results).unwrap();
    assert_eq!(results, [EventResult { index: 0, code: 58 }]);
    assert_eq!(header.op, 42);
}

#[test]
fn checksums_are_crc32c() {
    // The CRC-32C check value, as docs/PROTOCOL.md states it for other implementations.
    assert_eq!(body_checksum(b"123456789"), 0xe306_9283);
    assert_eq!(body_checksum(&[]), 0);
}

// ---------------------------------------------------------------------------------------------
// Traced requests: strict sizes, the flag only where it belongs.

fn traced_transfer_request(trace_ids: &[u128]) -> Vec<u8> {
    let transfers = vec![Transfer { id: TransferId(1), amount: Amount(5), ..Transfer::default() }; trace_ids.len()];
    let mut frame = Vec::new();
    batch_request_traced_append(&Batch::CreateTransfers(&transfers), trace_ids, 77, 88, &mut frame);
    frame
}

/// A frame of `operation` with `flags`, `event_count` and any body, sealed.
fn frame_with(operation: FrameOperation, flags: u16, event_count: u32, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader { flags, ..FrameHeader::request(operation, 5, 6, event_count) };
    let mut frame = Vec::new();
    frame_append(&header, body, &mut frame);
    frame
}

fn request_check(frame: &[u8]) -> Result<FrameOperation, FrameError> {
    let header = FrameHeader::decode(&header_bytes_of(frame))?;
    let body = &frame[HEADER_SIZE_BYTES..];
    let checked = check_request(&header, body);
    let decoded = RequestScratch::new().decode(&header, body).map(|_| ());
    assert_eq!(checked.map(|_| ()), decoded, "check_request and the decoder agree");
    checked
}

#[test]
fn traced_bodies_of_the_wrong_size_are_refused() {
    let transfers = FrameOperation::Ledger(Operation::CreateTransfers);
    assert_eq!(request_check(&traced_transfer_request(&[9, 0])), Ok(transfers));
    // The traced flag on an untraced body (the trailer missing), a trailer one byte short,
    // one trace id too many, and a trailer on an untraced frame.
    for (flags, event_count, body_size_bytes) in
        [(FLAG_TRACED, 2, 256), (FLAG_TRACED, 2, 2 * 144 - 1), (FLAG_TRACED, 2, 2 * 144 + 16), (0, 2, 2 * 144)]
    {
        let body = vec![0u8; body_size_bytes];
        let error = request_check(&frame_with(transfers, flags, event_count, &body)).unwrap_err();
        assert_eq!(error.status(), Status::BadBodySize, "{flags} {event_count} {body_size_bytes}: {error}");
        assert!(!error.status().closes_connection());
        if flags == FLAG_TRACED {
            let expected = FrameError::BadTracedBodySize {
                operation: transfers,
                event_count,
                body_size_bytes: body_size_bytes as u32,
            };
            assert_eq!(error, expected);
            assert!(error.to_string().contains("trace id"), "the message says why: {error}");
        }
    }
    // No events, traced: refused as no_events, as untraced.
    let error = request_check(&frame_with(transfers, FLAG_TRACED, 0, &[])).unwrap_err();
    assert_eq!(error.status(), Status::NoEvents);
}

#[test]
fn the_traced_flag_is_refused_where_nothing_is_journaled_and_reserved_bits_still_are() {
    let reads = [
        (FrameOperation::Ledger(Operation::LookupAccounts), 1, 32),
        (FrameOperation::Ledger(Operation::Pulse), 0, 0),
        (FrameOperation::Ping, 0, 0),
        (FrameOperation::Snapshot, 0, 0),
    ];
    for (operation, event_count, body_size_bytes) in reads {
        let error = request_check(&frame_with(operation, FLAG_TRACED, event_count, &vec![0; body_size_bytes]));
        let error = error.unwrap_err();
        assert_eq!(error.status(), Status::BadBodySize, "{operation:?}");
        assert!(matches!(error, FrameError::ReservedNotZero { .. }), "{operation:?}: {error}");
    }
    let transfers = FrameOperation::Ledger(Operation::CreateTransfers);
    for bit in 3..16 {
        let flags = FLAG_TRACED | (1 << bit);
        let error = request_check(&frame_with(transfers, flags, 1, &[0; 144])).unwrap_err();
        assert_eq!(error, FrameError::ReservedNotZero { field: "flags (reserved bits)" }, "bit {bit}");
    }
    // Every mutating operation with events takes traces.
    for operation in
        [Operation::CreateAccounts, Operation::CloseAccounts, Operation::ReopenAccounts, Operation::SetAccountLimits]
    {
        let body = vec![0u8; operation.event_size_bytes() + 16];
        let checked = request_check(&frame_with(FrameOperation::Ledger(operation), FLAG_TRACED, 1, &body));
        assert_eq!(checked, Ok(FrameOperation::Ledger(operation)));
    }
}

#[test]
fn the_timestamp_flag_is_taken_where_events_are_journaled_and_its_trailer_is_checked() {
    let transfers = FrameOperation::Ledger(Operation::CreateTransfers);
    for flags in [FLAG_TIMESTAMP, FLAG_TIMESTAMP | FLAG_TRACED] {
        let size = if flags & FLAG_TRACED != 0 { 144 } else { 128 };
        assert_eq!(request_check(&frame_with(transfers, flags, 1, &vec![0; size])), Ok(transfers));
    }
    for (operation, event_count, body_size_bytes) in
        [(FrameOperation::Ledger(Operation::LookupTransfers), 1, 16), (FrameOperation::Ping, 0, 0)]
    {
        let error = request_check(&frame_with(operation, FLAG_TIMESTAMP, event_count, &vec![0; body_size_bytes]));
        let field = "flags (the timestamp bit, on an operation without journaled events)";
        assert_eq!(error, Err(FrameError::ReservedNotZero { field }), "{operation:?}");
    }
    // Results, then the trailer: decoded back; a body without it, or with a zero one, refused.
    let mut body = Vec::new();
    let results = [EventResult { index: 1, code: 3 }, EventResult { index: 4, code: 7 }];
    results_encode(&results, &mut body);
    timestamp_encode(1_700_000_000_000_000_000, &mut body);
    let mut decoded = Vec::new();
    assert_eq!(results_timestamped_decode(transfers, 2, &body, &mut decoded), Ok(1_700_000_000_000_000_000));
    assert_eq!(decoded, results);
    let refused = |body: &[u8], count: u32| {
        let mut decoded = Vec::new();
        let error = results_timestamped_decode(transfers, count, body, &mut decoded).unwrap_err();
        assert!(decoded.is_empty() && matches!(error, FrameError::MalformedReply { .. }), "{error}");
    };
    refused(&body[..16], 2);
    refused(&body[..4], 0);
    refused(&[0; 8], 0);
    refused(&body, 1);
}

#[test]
fn a_traced_frame_has_the_larger_body_limit_and_no_other_does() {
    assert_eq!(body_size_max_bytes(0), BODY_SIZE_MAX_BYTES);
    assert_eq!(body_size_max_bytes(FLAG_TRACED), TRACED_BODY_SIZE_MAX_BYTES);
    assert_eq!(TRACED_BODY_SIZE_MAX_BYTES as usize, EVENT_COUNT_MAX as usize * (128 + 16));
    // A full traced batch fits; one byte more does not.
    let mut header = FrameHeader {
        flags: FLAG_TRACED,
        ..FrameHeader::request(FrameOperation::Ledger(Operation::CreateTransfers), 1, 2, EVENT_COUNT_MAX)
    };
    header.body_size_bytes = TRACED_BODY_SIZE_MAX_BYTES;
    assert!(FrameHeader::decode(&header.encode()).is_ok());
    header.body_size_bytes = TRACED_BODY_SIZE_MAX_BYTES + 1;
    let error = FrameHeader::decode(&header.encode()).unwrap_err();
    let body_size_max_bytes = TRACED_BODY_SIZE_MAX_BYTES;
    assert_eq!(
        error,
        FrameError::BodyTooLarge { body_size_bytes: TRACED_BODY_SIZE_MAX_BYTES + 1, body_size_max_bytes }
    );
    // Untraced, the old limit holds.
    header.flags = 0;
    header.body_size_bytes = BODY_SIZE_MAX_BYTES + 1;
    assert_eq!(FrameHeader::decode(&header.encode()).unwrap_err().status(), Status::BodyTooLarge);
    // A full traced batch decodes.
    let trace_ids: Vec<u128> = (1..=u128::from(EVENT_COUNT_MAX)).collect();
    let frame = traced_transfer_request(&trace_ids);
    assert_eq!(frame.len(), HEADER_SIZE_BYTES + TRACED_BODY_SIZE_MAX_BYTES as usize);
    assert!(request_check(&frame).is_ok());
}

/// The traced example of docs/PROTOCOL.md: the worked example's transfer, traced with the W3C
/// example trace id 4bf92f3577b34da6a3ce929d0e0e4736.
fn doc_traced_example() -> Vec<u8> {
    let transfer = Transfer {
        id: TransferId::from_parts(1_700_000_000_000, 1),
        debit_account_id: AccountId(1),
        credit_account_id: AccountId(2),
        amount: Amount(100),
        ledger: 1,
        code: 1,
        ..Transfer::default()
    };
    let trace_ids = [0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736];
    let mut request = Vec::new();
    batch_request_traced_append(&Batch::CreateTransfers(&[transfer]), &trace_ids, 1, 0xc0ffee, &mut request);
    request
}

#[test]
fn protocol_doc_traced_example_is_what_the_code_sends() {
    let request = doc_traced_example();
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/PROTOCOL.md exists");
    let dump = hex_dump(&request);
    assert!(doc.contains(&dump), "docs/PROTOCOL.md lacks the traced request dump:\n{dump}");
    let (untraced, _) = doc_example();
    assert_eq!(
        &request[HEADER_SIZE_BYTES..HEADER_SIZE_BYTES + 128],
        &untraced[HEADER_SIZE_BYTES..],
        "the same transfer"
    );
}

#[test]
fn a_not_leader_reply_carries_the_leader_address_and_nothing_else_does() {
    let request = FrameHeader::request(FrameOperation::Ledger(Operation::CreateTransfers), 3, 4, 1);
    let reply_of = |status: Status, body: &[u8]| {
        let mut frame = Vec::new();
        frame_append(&FrameHeader::reply_to(&request, status, 0, 0), body, &mut frame);
        frame
    };
    let frame = reply_of(Status::NotLeader, b"127.0.0.1:4102");
    let (header, body) = frame_split(&frame);
    assert_eq!(check_reply(&header, body), Ok(Status::NotLeader));
    assert_eq!(body, b"127.0.0.1:4102");
    let frame = reply_of(Status::NotLeader, b"");
    let (header, body) = frame_split(&frame);
    assert_eq!(check_reply(&header, body), Ok(Status::NotLeader), "no leader known: an empty body");
    let frame = reply_of(Status::NotLeader, &[0xff, 0xfe]);
    let (header, body) = frame_split(&frame);
    assert!(check_reply(&header, body).is_err(), "the address is UTF-8 text");
    let frame = reply_of(Status::NotLeader, &[b'a'; NOT_LEADER_ADDRESS_SIZE_MAX_BYTES + 1]);
    let (header, body) = frame_split(&frame);
    assert!(check_reply(&header, body).is_err(), "the address is at most 255 bytes");
    let frame = reply_of(Status::Unavailable, b"127.0.0.1:4102");
    let (header, body) = frame_split(&frame);
    assert!(check_reply(&header, body).is_err(), "only not_leader carries a body among the refusals");
    assert!(!Status::NotLeader.closes_connection() && !Status::Unavailable.closes_connection());
}
