//! Commands as bytes: the body of a journal record and of a request frame. A command is an
//! operation and its events, each a fixed-size little-endian record, so encoding is a copy and
//! decoding is a length check plus a copy into aligned buffers the caller owns.
//!
//! ```text
//! offset size field
//!      0    2 operation (Operation as u16)
//!      2    2 flags: bit 0 traced; bits 1-15 reserved (zero)
//!      4    4 event_count
//!      8    8 reserved (zero)
//!     16    … event_count events of Operation::event_size_bytes() each
//!      …    … traced only: event_count trace ids, u128 each (0 = none), event i's at index i
//! ```
//!
//! A traced command carries the W3C trace id of each event's request as a trailer after the
//! events, so that one command coalesced from many requests keeps every request's trace. The
//! ledger never reads the trailer: state, results and the state hash are the same with it and
//! without it. A command without the flag is byte for byte the format journals had before.

use crate::ledger::{Batch, Query};
pub use crate::types::records_as_bytes;
use crate::types::{Account, AccountId, AccountLimits, Plain, Transfer, TransferId};
use core::mem::size_of;

pub const COMMAND_HEADER_SIZE_BYTES: usize = 16;
/// Header `flags` bit 0: a trace id per event follows the events.
pub const COMMAND_FLAG_TRACED: u16 = 1 << 0;
/// One trace id in a traced command's trailer (and a traced frame's).
pub const TRACE_ID_SIZE_BYTES: usize = 16;

/// Every operation the engine knows. The numbers are part of the wire and disk formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Operation {
    Pulse = 1,
    CreateAccounts = 2,
    CreateTransfers = 3,
    CloseAccounts = 4,
    ReopenAccounts = 5,
    SetAccountLimits = 6,
    LookupAccounts = 10,
    LookupTransfers = 11,
    LookupBalances = 12,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Operation::Pulse,
        Operation::CreateAccounts,
        Operation::CreateTransfers,
        Operation::CloseAccounts,
        Operation::ReopenAccounts,
        Operation::SetAccountLimits,
        Operation::LookupAccounts,
        Operation::LookupTransfers,
        Operation::LookupBalances,
    ];

    pub fn from_u16(value: u16) -> Option<Operation> {
        Operation::ALL.into_iter().find(|operation| *operation as u16 == value)
    }

    /// Bytes of one event of this operation.
    pub fn event_size_bytes(self) -> usize {
        match self {
            Operation::Pulse => 0,
            Operation::CreateAccounts | Operation::CreateTransfers | Operation::SetAccountLimits => 128,
            Operation::CloseAccounts
            | Operation::ReopenAccounts
            | Operation::LookupAccounts
            | Operation::LookupTransfers
            | Operation::LookupBalances => 16,
        }
    }

    /// Whether the operation changes state (and so is journaled and gets timestamps).
    pub fn is_mutating(self) -> bool {
        (self as u16) < 10
    }

    /// Whether a command of this operation may carry trace ids: the journaled ones with events
    /// (all mutating operations but pulse). A read is not journaled, a pulse has no events.
    pub fn takes_traces(self) -> bool {
        self.is_mutating() && self.event_size_bytes() > 0
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Pulse => "pulse",
            Operation::CreateAccounts => "create_accounts",
            Operation::CreateTransfers => "create_transfers",
            Operation::CloseAccounts => "close_accounts",
            Operation::ReopenAccounts => "reopen_accounts",
            Operation::SetAccountLimits => "set_account_limits",
            Operation::LookupAccounts => "lookup_accounts",
            Operation::LookupTransfers => "lookup_transfers",
            Operation::LookupBalances => "lookup_balances",
        }
    }
}

/// Why bytes are not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    TooShort {
        size_bytes: usize,
    },
    UnknownOperation {
        operation: u16,
    },
    ReservedNotZero,
    /// The traced flag on an operation that takes no trace ids (pulse, reads).
    TracesNotTaken {
        operation: Operation,
    },
    /// The body is not `event_count` events of the operation's size (and, when `traced`,
    /// `event_count` trace ids after them).
    SizeMismatch {
        operation: Operation,
        event_count: u32,
        size_bytes: usize,
        traced: bool,
    },
    TooManyEvents {
        event_count: u32,
        event_count_max: u32,
    },
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommandError::TooShort { size_bytes } => {
                write!(f, "command of {size_bytes} bytes is shorter than its {COMMAND_HEADER_SIZE_BYTES}-byte header")
            }
            CommandError::UnknownOperation { operation } => write!(f, "unknown operation {operation}"),
            CommandError::ReservedNotZero => write!(f, "reserved command header bytes or flag bits are not zero"),
            CommandError::TracesNotTaken { operation } => {
                write!(f, "{} command has the traced flag, but only mutating operations with events carry trace ids", operation.name())
            }
            CommandError::SizeMismatch { operation, event_count, size_bytes, traced: false } => write!(
                f,
                "{} command claims {event_count} events but carries {size_bytes} bytes of events ({} each)",
                operation.name(),
                operation.event_size_bytes()
            ),
            CommandError::SizeMismatch { operation, event_count, size_bytes, traced: true } => write!(
                f,
                "traced {} command claims {event_count} events but carries {size_bytes} bytes of events and trace ids ({} + {TRACE_ID_SIZE_BYTES} each)",
                operation.name(),
                operation.event_size_bytes()
            ),
            CommandError::TooManyEvents { event_count, event_count_max } => {
                write!(f, "command has {event_count} events; at most {event_count_max} are allowed")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// Appends the encoded command to `out` (untraced: today's format, and every old journal's).
pub fn command_encode(operation: Operation, events: &[u8], event_count: u32, out: &mut Vec<u8>) {
    assert_eq!(events.len(), event_count as usize * operation.event_size_bytes(), "events do not match the operation");
    command_header_append(operation, 0, event_count, out);
    out.extend_from_slice(events);
}

/// Appends a traced command: the events, then `trace_ids` (one little-endian u128 per event,
/// 0 for an event without a trace).
pub fn command_traced_encode(
    operation: Operation,
    events: &[u8],
    trace_ids: &[u8],
    event_count: u32,
    out: &mut Vec<u8>,
) {
    assert!(operation.takes_traces(), "only mutating operations with events carry trace ids");
    assert_eq!(events.len(), event_count as usize * operation.event_size_bytes(), "events do not match the operation");
    assert_eq!(trace_ids.len(), event_count as usize * TRACE_ID_SIZE_BYTES, "one trace id per event");
    command_header_append(operation, COMMAND_FLAG_TRACED, event_count, out);
    out.extend_from_slice(events);
    out.extend_from_slice(trace_ids);
}

fn command_header_append(operation: Operation, flags: u16, event_count: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(operation as u16).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&event_count.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// A batch's operation and its events as bytes.
fn batch_bytes<'b>(batch: &Batch<'b>) -> (Operation, &'b [u8]) {
    match *batch {
        Batch::Pulse => (Operation::Pulse, &[][..]),
        Batch::CreateAccounts(events) => (Operation::CreateAccounts, records_as_bytes(events)),
        Batch::CreateTransfers(events) => (Operation::CreateTransfers, records_as_bytes(events)),
        Batch::CloseAccounts(events) => (Operation::CloseAccounts, records_as_bytes(events)),
        Batch::ReopenAccounts(events) => (Operation::ReopenAccounts, records_as_bytes(events)),
        Batch::SetAccountLimits(events) => (Operation::SetAccountLimits, records_as_bytes(events)),
    }
}

/// Appends a mutating batch, encoded, to `out`.
pub fn batch_encode(batch: &Batch<'_>, out: &mut Vec<u8>) {
    let (operation, events) = batch_bytes(batch);
    command_encode(operation, events, batch.len() as u32, out);
}

/// Appends a mutating batch with one trace id per event (0: none), encoded, to `out`.
pub fn batch_traced_encode(batch: &Batch<'_>, trace_ids: &[u128], out: &mut Vec<u8>) {
    assert_eq!(trace_ids.len(), batch.len(), "one trace id per event");
    let (operation, events) = batch_bytes(batch);
    command_traced_encode(operation, events, records_as_bytes(trace_ids), batch.len() as u32, out);
}

/// Appends a query, encoded, to `out`.
pub fn query_encode(query: &Query<'_>, out: &mut Vec<u8>) {
    let (operation, events, count) = match query {
        Query::LookupAccounts(ids) => (Operation::LookupAccounts, records_as_bytes(ids), ids.len()),
        Query::LookupTransfers(ids) => (Operation::LookupTransfers, records_as_bytes(ids), ids.len()),
        Query::LookupBalances(ids) => (Operation::LookupBalances, records_as_bytes(ids), ids.len()),
    };
    command_encode(operation, events, count as u32, out);
}

/// A command's header, as `command_header_decode` found it consistent with the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandHeader {
    pub operation: Operation,
    pub event_count: u32,
    /// A trace id per event follows the events.
    pub traced: bool,
}

/// The header of an encoded command, checked against the body's length.
pub fn command_header_decode(bytes: &[u8], event_count_max: u32) -> Result<CommandHeader, CommandError> {
    if bytes.len() < COMMAND_HEADER_SIZE_BYTES {
        return Err(CommandError::TooShort { size_bytes: bytes.len() });
    }
    let operation_code = u16::from_le_bytes([bytes[0], bytes[1]]);
    let operation =
        Operation::from_u16(operation_code).ok_or(CommandError::UnknownOperation { operation: operation_code })?;
    let flags = u16::from_le_bytes([bytes[2], bytes[3]]);
    if flags & !COMMAND_FLAG_TRACED != 0 || bytes[8..16] != [0; 8] {
        return Err(CommandError::ReservedNotZero);
    }
    let traced = flags & COMMAND_FLAG_TRACED != 0;
    if traced && !operation.takes_traces() {
        return Err(CommandError::TracesNotTaken { operation });
    }
    let event_count = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if event_count > event_count_max {
        return Err(CommandError::TooManyEvents { event_count, event_count_max });
    }
    let size_bytes = bytes.len() - COMMAND_HEADER_SIZE_BYTES;
    let record_size_bytes = operation.event_size_bytes() + if traced { TRACE_ID_SIZE_BYTES } else { 0 };
    // A pulse has no events: a count would pass the size check (0 × anything) and lie.
    let count_impossible = operation.event_size_bytes() == 0 && event_count != 0;
    if count_impossible || size_bytes != event_count as usize * record_size_bytes {
        return Err(CommandError::SizeMismatch { operation, event_count, size_bytes, traced });
    }
    Ok(CommandHeader { operation, event_count, traced })
}

/// The trace ids of a command's events: a view of its trailer, or of nothing when the command
/// is untraced (every event then has trace id 0). Reading one is a 16-byte load; nothing is
/// copied or allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceIds<'a> {
    /// The trailer: `event_count` little-endian u128s, or empty when untraced.
    bytes: &'a [u8],
    event_count: u32,
}

impl<'a> TraceIds<'a> {
    /// The trace ids of a whole encoded command (checked as `command_header_decode` does).
    pub fn of_command(bytes: &'a [u8]) -> Result<TraceIds<'a>, CommandError> {
        let header = command_header_decode(bytes, u32::MAX)?;
        let events_end = COMMAND_HEADER_SIZE_BYTES + header.event_count as usize * header.operation.event_size_bytes();
        let trailer = if header.traced { &bytes[events_end..] } else { &[][..] };
        assert!(!header.traced || trailer.len() == header.event_count as usize * TRACE_ID_SIZE_BYTES);
        Ok(TraceIds { bytes: trailer, event_count: header.event_count })
    }

    /// Whether the command carries a trailer (it may still hold only zeros).
    pub fn is_traced(&self) -> bool {
        !self.bytes.is_empty()
    }

    /// The trace id of event `index` (0: none).
    pub fn get(&self, index: usize) -> u128 {
        assert!(index < self.event_count as usize, "trace id of event {index} of {}", self.event_count);
        if self.bytes.is_empty() {
            return 0;
        }
        let start = index * TRACE_ID_SIZE_BYTES;
        u128::from_le_bytes(self.bytes[start..start + TRACE_ID_SIZE_BYTES].try_into().expect("16 bytes"))
    }

    pub fn event_count(&self) -> u32 {
        self.event_count
    }
}

/// A decoded command, borrowing from the scratch buffers.
#[derive(Clone, Copy, Debug)]
pub enum Command<'a> {
    Batch(Batch<'a>),
    Query(Query<'a>),
}

/// Aligned buffers that decoded events are copied into, sized once for the largest batch.
pub struct CommandScratch {
    accounts: Vec<Account>,
    transfers: Vec<Transfer>,
    limits: Vec<AccountLimits>,
    account_ids: Vec<AccountId>,
    transfer_ids: Vec<TransferId>,
    event_count_max: u32,
}

impl CommandScratch {
    pub fn new(event_count_max: u32) -> CommandScratch {
        let capacity = event_count_max as usize;
        CommandScratch {
            accounts: Vec::with_capacity(capacity),
            transfers: Vec::with_capacity(capacity),
            limits: Vec::with_capacity(capacity),
            account_ids: Vec::with_capacity(capacity),
            transfer_ids: Vec::with_capacity(capacity),
            event_count_max,
        }
    }

    /// Decodes `bytes` (a whole command) into these buffers.
    pub fn decode<'a>(&'a mut self, bytes: &[u8]) -> Result<Command<'a>, CommandError> {
        let CommandHeader { operation, event_count, .. } = command_header_decode(bytes, self.event_count_max)?;
        let count = event_count as usize;
        // The trace trailer, if any, follows the events: the ledger never sees it.
        let events =
            &bytes[COMMAND_HEADER_SIZE_BYTES..COMMAND_HEADER_SIZE_BYTES + count * operation.event_size_bytes()];
        Ok(match operation {
            Operation::Pulse => Command::Batch(Batch::Pulse),
            Operation::CreateAccounts => {
                Command::Batch(Batch::CreateAccounts(copy_into(&mut self.accounts, events, count)))
            }
            Operation::CreateTransfers => {
                Command::Batch(Batch::CreateTransfers(copy_into(&mut self.transfers, events, count)))
            }
            Operation::CloseAccounts => {
                Command::Batch(Batch::CloseAccounts(copy_into(&mut self.account_ids, events, count)))
            }
            Operation::ReopenAccounts => {
                Command::Batch(Batch::ReopenAccounts(copy_into(&mut self.account_ids, events, count)))
            }
            Operation::SetAccountLimits => {
                Command::Batch(Batch::SetAccountLimits(copy_into(&mut self.limits, events, count)))
            }
            Operation::LookupAccounts => {
                Command::Query(Query::LookupAccounts(copy_into(&mut self.account_ids, events, count)))
            }
            Operation::LookupTransfers => {
                Command::Query(Query::LookupTransfers(copy_into(&mut self.transfer_ids, events, count)))
            }
            Operation::LookupBalances => {
                Command::Query(Query::LookupBalances(copy_into(&mut self.account_ids, events, count)))
            }
        })
    }
}

/// Replaces `buffer`'s contents with `count` records copied from `bytes`, within its capacity.
fn copy_into<'a, T: Plain>(buffer: &'a mut Vec<T>, bytes: &[u8], count: usize) -> &'a [T] {
    assert_eq!(bytes.len(), count * size_of::<T>());
    assert!(count <= buffer.capacity(), "decode over the scratch capacity");
    buffer.clear();
    // SAFETY: the buffer has capacity for `count` records (asserted); the source holds exactly
    // `count * size_of::<T>()` bytes (asserted); T is Plain, so any bytes form valid records;
    // the regions cannot overlap (one is borrowed shared, the other exclusively).
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.as_mut_ptr().cast::<u8>(), bytes.len());
        buffer.set_len(count);
    }
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Amount;

    #[test]
    fn batches_round_trip() {
        let transfers = [
            Transfer { id: TransferId(7), amount: Amount(9), ledger: 1, ..Transfer::default() },
            Transfer { id: TransferId(u128::MAX), timestamp: 3, ..Transfer::default() },
        ];
        let mut bytes = Vec::new();
        batch_encode(&Batch::CreateTransfers(&transfers), &mut bytes);
        assert_eq!(bytes.len(), 16 + 256);
        let mut scratch = CommandScratch::new(8);
        match scratch.decode(&bytes).unwrap() {
            Command::Batch(Batch::CreateTransfers(decoded)) => assert_eq!(decoded, transfers),
            other => panic!("decoded {other:?}"),
        }
        let ids = [AccountId(1), AccountId(2)];
        bytes.clear();
        query_encode(&Query::LookupBalances(&ids), &mut bytes);
        match scratch.decode(&bytes).unwrap() {
            Command::Query(Query::LookupBalances(decoded)) => assert_eq!(decoded, ids),
            other => panic!("decoded {other:?}"),
        }
    }

    /// A pulse has no events: a header claiming some is refused, not taken for a pulse.
    #[test]
    fn a_pulse_claiming_events_is_refused() {
        let mut bytes = Vec::new();
        batch_encode(&Batch::Pulse, &mut bytes);
        assert!(command_header_decode(&bytes, 8).is_ok());
        bytes[4..8].copy_from_slice(&17u32.to_le_bytes());
        let refused = command_header_decode(&bytes, 8189).unwrap_err();
        assert_eq!(
            refused,
            CommandError::SizeMismatch { operation: Operation::Pulse, event_count: 17, size_bytes: 0, traced: false }
        );
    }

    #[test]
    fn malformed_commands_are_refused() {
        let mut scratch = CommandScratch::new(2);
        assert_eq!(scratch.decode(&[0; 3]).unwrap_err(), CommandError::TooShort { size_bytes: 3 });
        let mut bytes = Vec::new();
        command_encode(Operation::CreateTransfers, &[0; 128], 1, &mut bytes);
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(scratch.decode(&unknown).unwrap_err(), CommandError::UnknownOperation { operation: 99 });
        let mut reserved = bytes.clone();
        reserved[9] = 1;
        assert_eq!(scratch.decode(&reserved).unwrap_err(), CommandError::ReservedNotZero);
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(scratch.decode(short).unwrap_err(), CommandError::SizeMismatch { .. }));
        let mut many = Vec::new();
        command_encode(Operation::CloseAccounts, &[0; 48], 3, &mut many);
        assert_eq!(
            scratch.decode(&many).unwrap_err(),
            CommandError::TooManyEvents { event_count: 3, event_count_max: 2 }
        );
    }

    /// A traced command decodes to the same batch as the untraced one; its trailer is there
    /// for whoever reads trace ids, and the untraced form is byte for byte the old format.
    #[test]
    fn traced_commands_round_trip_and_carry_their_trace_ids() {
        let transfers = [
            Transfer { id: TransferId(7), amount: Amount(9), ledger: 1, ..Transfer::default() },
            Transfer { id: TransferId(8), amount: Amount(10), ledger: 1, ..Transfer::default() },
        ];
        let batch = Batch::CreateTransfers(&transfers);
        let mut plain = Vec::new();
        batch_encode(&batch, &mut plain);
        assert_eq!(&plain[2..4], &[0, 0], "an untraced command's flags are zero, as before");
        let mut traced = Vec::new();
        batch_traced_encode(&batch, &[0xabc, 0], &mut traced);
        assert_eq!(traced.len(), plain.len() + 2 * TRACE_ID_SIZE_BYTES);
        assert_eq!(&traced[2..4], &[1, 0]);
        assert_eq!(&traced[4..16 + 256], &plain[4..], "the events are the same bytes");
        let header = command_header_decode(&traced, 8).unwrap();
        assert_eq!(header, CommandHeader { operation: Operation::CreateTransfers, event_count: 2, traced: true });
        let mut scratch = CommandScratch::new(8);
        match scratch.decode(&traced).unwrap() {
            Command::Batch(Batch::CreateTransfers(decoded)) => assert_eq!(decoded, transfers),
            other => panic!("decoded {other:?}"),
        }
        let trace_ids = TraceIds::of_command(&traced).unwrap();
        assert!(trace_ids.is_traced());
        assert_eq!((trace_ids.get(0), trace_ids.get(1)), (0xabc, 0));
        let none = TraceIds::of_command(&plain).unwrap();
        assert!(!none.is_traced());
        assert_eq!((none.get(0), none.get(1), none.event_count()), (0, 0, 2));
    }

    #[test]
    fn malformed_traced_commands_are_refused() {
        let mut traced = Vec::new();
        command_traced_encode(Operation::CreateTransfers, &[0; 128], &[0; 16], 1, &mut traced);
        let short = &traced[..traced.len() - 1];
        let refused = command_header_decode(short, 8).unwrap_err();
        let expected = CommandError::SizeMismatch {
            operation: Operation::CreateTransfers,
            event_count: 1,
            size_bytes: 143,
            traced: true,
        };
        assert_eq!(refused, expected);
        // The untraced length with the traced flag: the trailer is missing.
        let mut plain = Vec::new();
        command_encode(Operation::CreateTransfers, &[0; 128], 1, &mut plain);
        let mut flagged = plain.clone();
        flagged[2] = 1;
        assert!(matches!(command_header_decode(&flagged, 8), Err(CommandError::SizeMismatch { traced: true, .. })));
        // A reserved flag bit.
        let mut reserved = traced.clone();
        reserved[2] = 2;
        assert_eq!(command_header_decode(&reserved, 8).unwrap_err(), CommandError::ReservedNotZero);
        reserved[2] = 0;
        reserved[3] = 0x80;
        assert_eq!(command_header_decode(&reserved, 8).unwrap_err(), CommandError::ReservedNotZero);
        // Traces on an operation that takes none.
        let mut pulse = Vec::new();
        batch_encode(&Batch::Pulse, &mut pulse);
        pulse[2] = 1;
        let refused = command_header_decode(&pulse, 8).unwrap_err();
        assert_eq!(refused, CommandError::TracesNotTaken { operation: Operation::Pulse });
        let mut lookup = Vec::new();
        command_encode(Operation::LookupAccounts, &[0; 16], 1, &mut lookup);
        lookup[2] = 1;
        lookup.extend_from_slice(&[0; 16]);
        let refused = command_header_decode(&lookup, 8).unwrap_err();
        assert_eq!(refused, CommandError::TracesNotTaken { operation: Operation::LookupAccounts });
    }
}
