//! The wire protocol: frames, their checks, and the bodies of every request and reply, shared by
//! the server and the client so that the two can never disagree on a byte.
//!
//! A frame is a fixed 64-byte little-endian header and a body of fixed-size records, so that
//! framing is two reads, a check is two crc32c sums, and a body is a copy of the core's own
//! 128-byte records (the wire, the journal and the ledger's tables hold the same bytes). The
//! checks are split by what a failure does to the connection: `FrameHeader::decode` finds the
//! errors after which the stream cannot be trusted (the connection closes), `check_request` the
//! ones that spoil a single request (the connection is kept), except a request id of 0, which
//! is reserved for replies about the connection itself and so closes it too. `command_check`
//! proves, with the ledger's own decoder, that the command built from a request is what apply
//! will decode. Decoders never panic on bytes from the network; they return a `FrameError`
//! that names the status a server would reply with. Writers append to a `Vec<u8>` the caller
//! owns and reuses, so a steady stream of frames does not allocate. docs/PROTOCOL.md describes
//! every layout byte by byte.
//!
//! A mutating request may be **traced** (`FLAG_TRACED`): its body is the events, then one
//! 16-byte trace id per event (the W3C trace id of the request each event came from, 0 for
//! none), because an upstream gateway coalesces many requests, of many traces, into one frame.
//! The server journals the trailer with the command (the core's traced command), the ledger
//! ignores it, and followers read it back per event. A frame without the flag is the format
//! every older client sends, byte for byte.

use core::fmt;
use core::mem::size_of;
use walletd_core::bytes::{u128_at, u16_at, u32_at, u64_at};
use walletd_core::command::{command_encode, command_traced_encode, records_as_bytes, TRACE_ID_SIZE_BYTES};
use walletd_core::{
    Account, AccountLimits, Amount, BalanceRead, Batch, Command, CommandError, CommandScratch, DebitUsage, EventResult,
    Operation, Query, Transfer, TransferRecord, TransferStatus, BATCH_EVENTS_MAX,
};

/// The bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"WLTD";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
pub const HEADER_SIZE_BYTES: usize = 64;
/// The most events (requests) or records (replies) in one frame.
pub const EVENT_COUNT_MAX: u32 = BATCH_EVENTS_MAX;
/// The largest body: a full batch of 128-byte records.
pub const BODY_SIZE_MAX_BYTES: u32 = BATCH_EVENTS_MAX * 128;
/// `flags` bit 0: the frame is a reply (set by the server only).
pub const FLAG_REPLY: u16 = 1 << 0;
/// `flags` bit 1, requests of mutating operations with events only: the body is the events,
/// then `event_count` trace ids (u128, 0 = none), event `i`'s at index `i`.
pub const FLAG_TRACED: u16 = 1 << 1;
/// `flags` bit 2, on requests of mutating operations with events only: the reply (which sets
/// the bit too) carries, after its results, the request's engine timestamp — a u64, ns since
/// the Unix epoch; event `i` of the request was applied at it + `i` — so a client learns when
/// each event it created was applied without reading it back.
pub const FLAG_TIMESTAMP: u16 = 1 << 2;
/// The size of the timestamp trailer of a reply to a `FLAG_TIMESTAMP` request.
pub const TIMESTAMP_SIZE_BYTES: usize = 8;
/// The largest body of a traced frame: a full batch of 128-byte records and their trace ids.
/// A traced frame carries as many events as an untraced one.
pub const TRACED_BODY_SIZE_MAX_BYTES: u32 = BATCH_EVENTS_MAX * (128 + TRACE_ID_SIZE_BYTES as u32);

// The header, byte by byte (all integers little-endian):
//
// offset size field
//      0    4 magic            "WLTD"
//      4    2 version          1
//      6    2 operation        FrameOperation code
//      8    8 request_id       chosen by the client, echoed in the reply
//     16   16 client_id        chosen by the client, echoed in the reply
//     32    4 event_count      request: events in the body; reply: records in the body
//     36    4 body_size_bytes  ≤ BODY_SIZE_MAX_BYTES (traced: ≤ TRACED_BODY_SIZE_MAX_BYTES)
//     40    2 flags            bit 0 = reply; bit 1 = traced (requests); bit 2 = timestamp
//                             (requests, and their replies); other bits zero
//     42    2 status           Status (replies); zero in requests
//     44    4 reserved         zero
//     48    8 op               reply: the journal op of the request; zero otherwise
//     56    4 body_checksum    crc32c of the body
//     60    4 header_checksum  crc32c of bytes 0..60
pub const MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = 4;
pub const OPERATION_OFFSET: usize = 6;
pub const REQUEST_ID_OFFSET: usize = 8;
pub const CLIENT_ID_OFFSET: usize = 16;
pub const EVENT_COUNT_OFFSET: usize = 32;
pub const BODY_SIZE_OFFSET: usize = 36;
pub const FLAGS_OFFSET: usize = 40;
pub const STATUS_OFFSET: usize = 42;
pub const RESERVED_OFFSET: usize = 44;
pub const OP_OFFSET: usize = 48;
pub const BODY_CHECKSUM_OFFSET: usize = 56;
pub const HEADER_CHECKSUM_OFFSET: usize = 60;

const _: () = assert!(HEADER_CHECKSUM_OFFSET + 4 == HEADER_SIZE_BYTES);
const _: () = assert!(BODY_SIZE_MAX_BYTES == 1_048_192);
const _: () = assert!(EVENT_COUNT_MAX == 8189);
const _: () = assert!(TRACED_BODY_SIZE_MAX_BYTES == 1_179_216);

/// The body size limit of a frame with these `flags`: a traced frame's is larger by its trailer.
pub fn body_size_max_bytes(flags: u16) -> u32 {
    if flags & FLAG_TRACED != 0 {
        TRACED_BODY_SIZE_MAX_BYTES
    } else {
        BODY_SIZE_MAX_BYTES
    }
}

/// A sparse result: index u32, code u32.
pub const RESULT_SIZE_BYTES: usize = 8;
/// A lookup_transfers record: Transfer (128), status u8, 15 zero bytes.
pub const TRANSFER_RECORD_SIZE_BYTES: usize = 144;
const TRANSFER_RECORD_STATUS_OFFSET: usize = 128;

// A lookup_balances read, byte by byte:
//
// offset size field
//      0  128 account              Account
//    128  128 limits               AccountLimits (all zero when the account has none)
//    256    4 usage.day            days since 1970-01-01 of the last counted debit
//    260    4 usage.day_count
//    264    4 usage.month          months since 1970-01
//    268    4 usage.month_count
//    272   16 usage.day_amount
//    288   16 usage.month_amount
//    304    4 holds_count_total    open holds on the account
//    308    4 holds_count          holds listed after the reads (≤ holds_count_total)
//    312    8 reserved             zero
pub const BALANCE_READ_SIZE_BYTES: usize = 320;
const BALANCE_LIMITS_OFFSET: usize = 128;
const BALANCE_USAGE_OFFSET: usize = 256;
const BALANCE_HOLDS_COUNT_TOTAL_OFFSET: usize = 304;
const BALANCE_HOLDS_COUNT_OFFSET: usize = 308;
const BALANCE_RESERVED_OFFSET: usize = 312;
const RECORD_SIZE_BYTES: usize = 128;

const _: () = assert!(BALANCE_RESERVED_OFFSET + 8 == BALANCE_READ_SIZE_BYTES);
const _: () = assert!(BALANCE_USAGE_OFFSET + 48 == BALANCE_HOLDS_COUNT_TOTAL_OFFSET);
const _: () = assert!(size_of::<Account>() == RECORD_SIZE_BYTES);
const _: () = assert!(size_of::<Transfer>() == RECORD_SIZE_BYTES);
const _: () = assert!(size_of::<AccountLimits>() == RECORD_SIZE_BYTES);

/// What a frame asks for: a ledger operation (the core's `Operation` numbers) or one of the
/// gateway's own (ping, snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameOperation {
    Ledger(Operation),
    /// Answered by the gateway without touching the ledger: liveness and round-trip time.
    Ping,
    /// Admin: take a snapshot now; the reply carries the snapshot's op.
    Snapshot,
}

impl FrameOperation {
    pub const PING_CODE: u16 = 256;
    pub const SNAPSHOT_CODE: u16 = 257;
    pub const ALL: [FrameOperation; 11] = [
        FrameOperation::Ledger(Operation::Pulse),
        FrameOperation::Ledger(Operation::CreateAccounts),
        FrameOperation::Ledger(Operation::CreateTransfers),
        FrameOperation::Ledger(Operation::CloseAccounts),
        FrameOperation::Ledger(Operation::ReopenAccounts),
        FrameOperation::Ledger(Operation::SetAccountLimits),
        FrameOperation::Ledger(Operation::LookupAccounts),
        FrameOperation::Ledger(Operation::LookupTransfers),
        FrameOperation::Ledger(Operation::LookupBalances),
        FrameOperation::Ping,
        FrameOperation::Snapshot,
    ];

    pub fn from_u16(code: u16) -> Option<FrameOperation> {
        match code {
            FrameOperation::PING_CODE => Some(FrameOperation::Ping),
            FrameOperation::SNAPSHOT_CODE => Some(FrameOperation::Snapshot),
            code => Operation::from_u16(code).map(FrameOperation::Ledger),
        }
    }

    pub fn code(self) -> u16 {
        match self {
            FrameOperation::Ledger(operation) => operation as u16,
            FrameOperation::Ping => FrameOperation::PING_CODE,
            FrameOperation::Snapshot => FrameOperation::SNAPSHOT_CODE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameOperation::Ledger(operation) => operation.name(),
            FrameOperation::Ping => "ping",
            FrameOperation::Snapshot => "snapshot",
        }
    }

    /// Bytes of one request event.
    pub fn event_size_bytes(self) -> usize {
        match self {
            FrameOperation::Ledger(operation) => operation.event_size_bytes(),
            FrameOperation::Ping | FrameOperation::Snapshot => 0,
        }
    }

    /// Bytes of one record of a successful reply (lookup_balances: one read, holds excluded).
    pub fn reply_record_size_bytes(self) -> usize {
        match self {
            FrameOperation::Ledger(Operation::LookupAccounts) => RECORD_SIZE_BYTES,
            FrameOperation::Ledger(Operation::LookupTransfers) => TRANSFER_RECORD_SIZE_BYTES,
            FrameOperation::Ledger(Operation::LookupBalances) => BALANCE_READ_SIZE_BYTES,
            FrameOperation::Ledger(Operation::Pulse) | FrameOperation::Ping | FrameOperation::Snapshot => 0,
            FrameOperation::Ledger(_) => RESULT_SIZE_BYTES,
        }
    }

    /// A journaled operation whose request carries events: all mutating ones but pulse. An
    /// empty request of one would be journaled and change nothing, so it is refused. These
    /// are also the operations a request may trace (`FLAG_TRACED`).
    pub fn is_mutating_with_events(self) -> bool {
        match self {
            FrameOperation::Ledger(operation) => operation.takes_traces(),
            FrameOperation::Ping | FrameOperation::Snapshot => false,
        }
    }

    /// The most events one request may carry: no more than `EVENT_COUNT_MAX`, and few enough
    /// that both the request and the fullest reply fit in `BODY_SIZE_MAX_BYTES` (so
    /// lookup_transfers takes at most 7279 ids and lookup_balances 3275). Operations without
    /// events take none.
    pub fn event_count_max(self) -> u32 {
        let record_size_bytes = self.event_size_bytes().max(self.reply_record_size_bytes());
        if self.event_size_bytes() == 0 {
            return 0;
        }
        let fitting = BODY_SIZE_MAX_BYTES as usize / record_size_bytes;
        (fitting as u32).min(EVENT_COUNT_MAX)
    }
}

/// A reply's `status`: 0, or why the request was not executed. The numbers are part of the
/// protocol and never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    BadMagic = 1,
    BadVersion = 2,
    BadHeaderChecksum = 3,
    BodyTooLarge = 4,
    BadBodyChecksum = 5,
    UnknownOperation = 6,
    BadBodySize = 7,
    TooManyEvents = 8,
    ShuttingDown = 9,
    Busy = 10,
    RequestIdZero = 11,
    NoEvents = 12,
    /// A cluster member that is not the leader; the body names the leader's client address.
    NotLeader = 13,
    /// A cluster leader that could not commit the request within its write timeout (it has no
    /// majority), or a member that knows no leader: the outcome of a write is unknown.
    Unavailable = 14,
}

/// A `not_leader` reply's body: the leader's client address as UTF-8 text (`host:port`), or
/// empty when the member knows no leader. At most this long.
pub const NOT_LEADER_ADDRESS_SIZE_MAX_BYTES: usize = 255;

impl Status {
    pub const ALL: [Status; 15] = [
        Status::Ok,
        Status::BadMagic,
        Status::BadVersion,
        Status::BadHeaderChecksum,
        Status::BodyTooLarge,
        Status::BadBodyChecksum,
        Status::UnknownOperation,
        Status::BadBodySize,
        Status::TooManyEvents,
        Status::ShuttingDown,
        Status::Busy,
        Status::RequestIdZero,
        Status::NoEvents,
        Status::NotLeader,
        Status::Unavailable,
    ];

    pub fn from_u16(value: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|status| *status as u16 == value)
    }

    /// Whether the server closes the connection after this reply: the stream's framing can no
    /// longer be trusted (or, for a bad version, never could be); the connection is over the
    /// limit (`busy`, the only frame such a connection gets); or the request used id 0, which
    /// replies about the connection itself carry (so every reply with request id 0 is
    /// followed by the close, and a client can tell it from the refusal of one request).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::BadMagic
                | Status::BadVersion
                | Status::BadHeaderChecksum
                | Status::BodyTooLarge
                | Status::Busy
                | Status::RequestIdZero
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadMagic => "bad_magic",
            Status::BadVersion => "bad_version",
            Status::BadHeaderChecksum => "bad_header_checksum",
            Status::BodyTooLarge => "body_too_large",
            Status::BadBodyChecksum => "bad_body_checksum",
            Status::UnknownOperation => "unknown_operation",
            Status::BadBodySize => "bad_body_size",
            Status::TooManyEvents => "too_many_events",
            Status::ShuttingDown => "shutting_down",
            Status::Busy => "busy",
            Status::RequestIdZero => "request_id_zero",
            Status::NoEvents => "no_events",
            Status::NotLeader => "not_leader",
            Status::Unavailable => "unavailable",
        }
    }

    /// What the sender should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Status::Ok => "nothing",
            Status::BadMagic | Status::BadHeaderChecksum => {
                "the server lost the stream's framing and closed the connection: reconnect, resend"
            }
            Status::BadVersion => "the server speaks another protocol version: upgrade the client or the server",
            Status::BodyTooLarge => "the body exceeds 1048192 bytes (1179216 traced): split the batch",
            Status::BadBodyChecksum => "the body was corrupted in transit: resend",
            Status::UnknownOperation => "the server does not know this operation: check the client's version",
            Status::BadBodySize => {
                "the body is not event_count events of the operation's size (and, traced, as many trace ids), or a reserved field or flag is not zero"
            }
            Status::TooManyEvents => "split the batch into smaller frames",
            Status::ShuttingDown => "the server is draining: retry on another node or later",
            Status::Busy => "the server is at its connection limit and closed this connection: back off and reconnect",
            Status::RequestIdZero => {
                "request id 0 is reserved for replies about the connection: reconnect, number requests from 1"
            }
            Status::NoEvents => "a mutating request needs at least one event (pulse advances the clock without any)",
            Status::NotLeader => {
                "this cluster member is not the leader: resend the same request to the leader the body names \
                 (same ids: a write it may already have committed answers exists)"
            }
            Status::Unavailable => {
                "the cluster could not commit the request in time (no majority, or no leader yet): its outcome is \
                 unknown; resend the same request later or to another member"
            }
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), *self as u16, self.advice())
    }
}

/// Why bytes are not a valid frame or body. Each maps to the `Status` a server replies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    BadMagic {
        magic: [u8; 4],
    },
    BadVersion {
        version: u16,
    },
    BadHeaderChecksum {
        checksum_stored: u32,
        checksum_computed: u32,
    },
    BodyTooLarge {
        body_size_bytes: u32,
        body_size_max_bytes: u32,
    },
    BadBodyChecksum {
        checksum_stored: u32,
        checksum_computed: u32,
    },
    UnknownOperation {
        operation: u16,
    },
    /// The body is not `event_count` events of the operation's size.
    BadBodySize {
        operation: FrameOperation,
        event_count: u32,
        body_size_bytes: u32,
    },
    /// A traced body is not `event_count` events of the operation's size followed by
    /// `event_count` 16-byte trace ids.
    BadTracedBodySize {
        operation: FrameOperation,
        event_count: u32,
        body_size_bytes: u32,
    },
    /// A request sets a field only replies may set, or a reserved field.
    ReservedNotZero {
        field: &'static str,
    },
    TooManyEvents {
        operation: FrameOperation,
        event_count: u32,
        event_count_max: u32,
    },
    /// A request with request id 0, which only replies about the connection carry.
    RequestIdZero,
    /// The command built from a request does not decode, with the ledger's decoder, into the
    /// request's operation and event count (the frame checks should have refused it first).
    CommandNotDecoded {
        operation: FrameOperation,
        reason: &'static str,
    },
    /// A mutating operation that takes events (all but pulse) with none.
    NoEvents {
        operation: FrameOperation,
    },
    /// A reply that does not hold what its header and operation say (`operation` is the raw
    /// code: a reply about the connection itself has operation 0).
    MalformedReply {
        operation: u16,
        reason: &'static str,
    },
}

impl FrameError {
    pub fn status(self) -> Status {
        match self {
            FrameError::BadMagic { .. } => Status::BadMagic,
            FrameError::BadVersion { .. } => Status::BadVersion,
            FrameError::BadHeaderChecksum { .. } => Status::BadHeaderChecksum,
            FrameError::BodyTooLarge { .. } => Status::BodyTooLarge,
            FrameError::BadBodyChecksum { .. } => Status::BadBodyChecksum,
            FrameError::UnknownOperation { .. } => Status::UnknownOperation,
            FrameError::BadBodySize { .. } | FrameError::ReservedNotZero { .. } => Status::BadBodySize,
            FrameError::BadTracedBodySize { .. } => Status::BadBodySize,
            FrameError::TooManyEvents { .. } => Status::TooManyEvents,
            FrameError::RequestIdZero => Status::RequestIdZero,
            FrameError::CommandNotDecoded { .. } => Status::BadBodySize,
            FrameError::NoEvents { .. } => Status::NoEvents,
            FrameError::MalformedReply { .. } => Status::BadBodySize,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadMagic { magic } => write!(
                f,
                "frame starts with {magic:02x?}, not the magic \"WLTD\": the peer is not walletd or the stream lost its framing"
            ),
            FrameError::BadVersion { version } => {
                write!(f, "frame has protocol version {version}, this side speaks {VERSION}: upgrade the older side")
            }
            FrameError::BadHeaderChecksum { checksum_stored, checksum_computed } => write!(
                f,
                "frame header checksum is {checksum_stored:#010x} but its bytes sum to {checksum_computed:#010x}: corrupted in transit or a broken encoder"
            ),
            FrameError::BodyTooLarge { body_size_bytes, body_size_max_bytes } => write!(
                f,
                "frame body of {body_size_bytes} bytes exceeds the {body_size_max_bytes}-byte limit: split the batch"
            ),
            FrameError::BadBodyChecksum { checksum_stored, checksum_computed } => write!(
                f,
                "frame body checksum is {checksum_stored:#010x} but the body sums to {checksum_computed:#010x}: corrupted in transit, resend"
            ),
            FrameError::UnknownOperation { operation } => write!(
                f,
                "operation {operation} is unknown (known: 1-6, 10-12, 256, 257): check the peer's protocol version"
            ),
            FrameError::BadBodySize { operation, event_count, body_size_bytes } => write!(
                f,
                "{} frame claims {event_count} events of {} bytes but its body is {body_size_bytes} bytes",
                operation.name(),
                operation.event_size_bytes()
            ),
            FrameError::BadTracedBodySize { operation, event_count, body_size_bytes } => write!(
                f,
                "traced {} frame claims {event_count} events of {} bytes, each followed in the trailer by a {TRACE_ID_SIZE_BYTES}-byte trace id ({} bytes in all), but its body is {body_size_bytes} bytes",
                operation.name(),
                operation.event_size_bytes(),
                u64::from(event_count) * (operation.event_size_bytes() + TRACE_ID_SIZE_BYTES) as u64
            ),
            FrameError::ReservedNotZero { field } => write!(f, "the {field} field of a request must be zero"),
            FrameError::TooManyEvents { operation, event_count, event_count_max } => write!(
                f,
                "{} frame has {event_count} events, at most {event_count_max} are allowed: split the batch",
                operation.name()
            ),
            FrameError::RequestIdZero => f.write_str(
                "request id 0 is reserved for replies about the connection itself: number requests from 1",
            ),
            FrameError::CommandNotDecoded { operation, reason } => write!(
                f,
                "the {} request does not decode as the ledger's command ({reason}): it was not journaled",
                operation.name()
            ),
            FrameError::NoEvents { operation } => write!(
                f,
                "{} frame has no events: it would be journaled and change nothing (use pulse to advance the clock)",
                operation.name()
            ),
            FrameError::MalformedReply { operation, reason } => match FrameOperation::from_u16(operation) {
                Some(known) => write!(f, "malformed {} reply: {reason}", known.name()),
                None => write!(f, "malformed reply (operation {operation}): {reason}"),
            },
        }
    }
}

impl std::error::Error for FrameError {}

/// A frame header with its fields decoded. `magic`, `version` and `header_checksum` are not
/// fields: `encode` writes them and `decode` checks them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHeader {
    /// The raw operation code: `decode` keeps unknown codes for `check_request` to refuse
    /// without closing the connection.
    pub operation: u16,
    pub request_id: u64,
    pub client_id: u128,
    pub event_count: u32,
    pub body_size_bytes: u32,
    pub flags: u16,
    pub status: u16,
    pub reserved: u32,
    pub op: u64,
    pub body_checksum: u32,
}

impl FrameHeader {
    /// A request header, its body fields left for `frame_append`/`frame_end` to fill.
    pub fn request(operation: FrameOperation, request_id: u64, client_id: u128, event_count: u32) -> FrameHeader {
        FrameHeader { operation: operation.code(), request_id, client_id, event_count, ..FrameHeader::default() }
    }

    /// The reply to `request`, echoing its operation and ids. `op` is 0 for reads and errors.
    pub fn reply_to(request: &FrameHeader, status: Status, op: u64, event_count: u32) -> FrameHeader {
        assert!(status == Status::Ok || event_count == 0, "an error reply has no records");
        assert!(status == Status::Ok || op == 0, "an error reply has no op");
        FrameHeader {
            operation: request.operation,
            request_id: request.request_id,
            client_id: request.client_id,
            event_count,
            flags: FLAG_REPLY,
            status: status as u16,
            op,
            ..FrameHeader::default()
        }
    }

    /// The reply to a request whose header `decode` refused. Its ids are echoed only when the
    /// header checksum held: after a bad magic or header checksum they are zero.
    pub fn error_reply_to(request_bytes: &[u8; HEADER_SIZE_BYTES], error: FrameError) -> FrameHeader {
        let status = error.status();
        assert!(status != Status::Ok);
        let trusted = !matches!(status, Status::BadMagic | Status::BadHeaderChecksum);
        if !trusted {
            return FrameHeader { flags: FLAG_REPLY, status: status as u16, ..FrameHeader::default() };
        }
        FrameHeader {
            operation: u16_at(request_bytes, OPERATION_OFFSET),
            request_id: u64_at(request_bytes, REQUEST_ID_OFFSET),
            client_id: u128_at(request_bytes, CLIENT_ID_OFFSET),
            flags: FLAG_REPLY,
            status: status as u16,
            ..FrameHeader::default()
        }
    }

    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE_BYTES] {
        let mut bytes = [0u8; HEADER_SIZE_BYTES];
        bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
        bytes[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&VERSION.to_le_bytes());
        bytes[OPERATION_OFFSET..OPERATION_OFFSET + 2].copy_from_slice(&self.operation.to_le_bytes());
        bytes[REQUEST_ID_OFFSET..REQUEST_ID_OFFSET + 8].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[CLIENT_ID_OFFSET..CLIENT_ID_OFFSET + 16].copy_from_slice(&self.client_id.to_le_bytes());
        bytes[EVENT_COUNT_OFFSET..EVENT_COUNT_OFFSET + 4].copy_from_slice(&self.event_count.to_le_bytes());
        bytes[BODY_SIZE_OFFSET..BODY_SIZE_OFFSET + 4].copy_from_slice(&self.body_size_bytes.to_le_bytes());
        bytes[FLAGS_OFFSET..FLAGS_OFFSET + 2].copy_from_slice(&self.flags.to_le_bytes());
        bytes[STATUS_OFFSET..STATUS_OFFSET + 2].copy_from_slice(&self.status.to_le_bytes());
        bytes[RESERVED_OFFSET..RESERVED_OFFSET + 4].copy_from_slice(&self.reserved.to_le_bytes());
        bytes[OP_OFFSET..OP_OFFSET + 8].copy_from_slice(&self.op.to_le_bytes());
        bytes[BODY_CHECKSUM_OFFSET..BODY_CHECKSUM_OFFSET + 4].copy_from_slice(&self.body_checksum.to_le_bytes());
        header_seal(&mut bytes);
        bytes
    }

    /// Checks what, when wrong, leaves the stream untrustworthy (the connection closes): magic,
    /// header checksum, version, body size limit — in that order, so that the ids echoed in a
    /// bad_version or body_too_large reply are the ones the checksum vouched for.
    pub fn decode(bytes: &[u8; HEADER_SIZE_BYTES]) -> Result<FrameHeader, FrameError> {
        let magic: [u8; 4] = bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(FrameError::BadMagic { magic });
        }
        let checksum_stored = u32_at(bytes, HEADER_CHECKSUM_OFFSET);
        let checksum_computed = header_checksum(bytes);
        if checksum_stored != checksum_computed {
            return Err(FrameError::BadHeaderChecksum { checksum_stored, checksum_computed });
        }
        let version = u16_at(bytes, VERSION_OFFSET);
        if version != VERSION {
            return Err(FrameError::BadVersion { version });
        }
        let header = FrameHeader {
            operation: u16_at(bytes, OPERATION_OFFSET),
            request_id: u64_at(bytes, REQUEST_ID_OFFSET),
            client_id: u128_at(bytes, CLIENT_ID_OFFSET),
            event_count: u32_at(bytes, EVENT_COUNT_OFFSET),
            body_size_bytes: u32_at(bytes, BODY_SIZE_OFFSET),
            flags: u16_at(bytes, FLAGS_OFFSET),
            status: u16_at(bytes, STATUS_OFFSET),
            reserved: u32_at(bytes, RESERVED_OFFSET),
            op: u64_at(bytes, OP_OFFSET),
            body_checksum: u32_at(bytes, BODY_CHECKSUM_OFFSET),
        };
        let body_size_max_bytes = body_size_max_bytes(header.flags);
        if header.body_size_bytes > body_size_max_bytes {
            return Err(FrameError::BodyTooLarge { body_size_bytes: header.body_size_bytes, body_size_max_bytes });
        }
        Ok(header)
    }
}

/// crc32c of the header's first 60 bytes.
pub fn header_checksum(bytes: &[u8; HEADER_SIZE_BYTES]) -> u32 {
    crc32c::crc32c(&bytes[..HEADER_CHECKSUM_OFFSET])
}

/// Writes the header checksum over the other 60 bytes (for encoders, and for tests that patch
/// a field and need the header to stay otherwise valid).
pub fn header_seal(bytes: &mut [u8; HEADER_SIZE_BYTES]) {
    let checksum = header_checksum(bytes);
    bytes[HEADER_CHECKSUM_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
}

pub fn body_checksum(body: &[u8]) -> u32 {
    crc32c::crc32c(body)
}

/// Checks a request whose header `decode` accepted and whose body (exactly `body_size_bytes`)
/// was read: the errors here spoil one request, and the connection is kept — except request id
/// 0 (checked first), which closes it. Returns the operation, known, with a body of exactly
/// `event_count` events (traced: and as many trace ids after them), and with at least one
/// event if it is a mutating one that takes them.
pub fn check_request(header: &FrameHeader, body: &[u8]) -> Result<FrameOperation, FrameError> {
    assert_eq!(body.len(), header.body_size_bytes as usize, "the body read is not the header's body");
    assert!(header.body_size_bytes <= body_size_max_bytes(header.flags), "decode checks the body size limit");
    if header.request_id == 0 {
        return Err(FrameError::RequestIdZero);
    }
    let checksum_computed = body_checksum(body);
    if checksum_computed != header.body_checksum {
        return Err(FrameError::BadBodyChecksum { checksum_stored: header.body_checksum, checksum_computed });
    }
    let operation = FrameOperation::from_u16(header.operation)
        .ok_or(FrameError::UnknownOperation { operation: header.operation })?;
    request_reserved_check(header, operation)?;
    let event_count_max = operation.event_count_max();
    if header.event_count > event_count_max {
        return Err(FrameError::TooManyEvents { operation, event_count: header.event_count, event_count_max });
    }
    let (event_count, body_size_bytes) = (header.event_count, header.body_size_bytes);
    let traced = header.flags & FLAG_TRACED != 0;
    if traced && body.len() != event_count as usize * (operation.event_size_bytes() + TRACE_ID_SIZE_BYTES) {
        return Err(FrameError::BadTracedBodySize { operation, event_count, body_size_bytes });
    }
    if !traced && body.len() != event_count as usize * operation.event_size_bytes() {
        return Err(FrameError::BadBodySize { operation, event_count, body_size_bytes });
    }
    if header.event_count == 0 && operation.is_mutating_with_events() {
        return Err(FrameError::NoEvents { operation });
    }
    Ok(operation)
}

/// The fields only a reply may set, and the reserved ones, must be zero in a request; the
/// traced bit only on an operation whose events are journaled.
fn request_reserved_check(header: &FrameHeader, operation: FrameOperation) -> Result<(), FrameError> {
    if header.flags & FLAG_REPLY != 0 {
        return Err(FrameError::ReservedNotZero { field: "flags (the reply bit)" });
    }
    if header.flags & !(FLAG_TRACED | FLAG_TIMESTAMP) != 0 {
        return Err(FrameError::ReservedNotZero { field: "flags (reserved bits)" });
    }
    if header.flags & FLAG_TRACED != 0 && !operation.is_mutating_with_events() {
        return Err(FrameError::ReservedNotZero {
            field: "flags (the traced bit, on an operation without journaled events)",
        });
    }
    if header.flags & FLAG_TIMESTAMP != 0 && !operation.is_mutating_with_events() {
        return Err(FrameError::ReservedNotZero {
            field: "flags (the timestamp bit, on an operation without journaled events)",
        });
    }
    if header.status != 0 {
        return Err(FrameError::ReservedNotZero { field: "status" });
    }
    if header.reserved != 0 {
        return Err(FrameError::ReservedNotZero { field: "reserved" });
    }
    if header.op != 0 {
        return Err(FrameError::ReservedNotZero { field: "op" });
    }
    Ok(())
}

/// Checks a reply whose header `decode` accepted and whose body was read: it is a reply, its
/// body is intact, an error reply is empty, and a successful one answers a known operation.
/// Returns the status (records follow only when it is `Ok`). An error reply may carry
/// operation 0: the server could not read the request's header.
pub fn check_reply(header: &FrameHeader, body: &[u8]) -> Result<Status, FrameError> {
    assert_eq!(body.len(), header.body_size_bytes as usize, "the body read is not the header's body");
    let malformed = |reason| FrameError::MalformedReply { operation: header.operation, reason };
    if !header.is_reply() {
        return Err(malformed("the reply flag is not set"));
    }
    let checksum_computed = body_checksum(body);
    if checksum_computed != header.body_checksum {
        return Err(FrameError::BadBodyChecksum { checksum_stored: header.body_checksum, checksum_computed });
    }
    let status = Status::from_u16(header.status).ok_or(malformed("unknown status"))?;
    if status != Status::Ok {
        if header.event_count != 0 || header.op != 0 {
            return Err(malformed("an error reply carries records or an op"));
        }
        if status == Status::NotLeader {
            if body.len() > NOT_LEADER_ADDRESS_SIZE_MAX_BYTES || std::str::from_utf8(body).is_err() {
                return Err(malformed("a not_leader reply's address is not short UTF-8 text"));
            }
        } else if !body.is_empty() {
            return Err(malformed("an error reply carries a body"));
        }
        return Ok(status);
    }
    if FrameOperation::from_u16(header.operation).is_none() {
        return Err(FrameError::UnknownOperation { operation: header.operation });
    }
    Ok(status)
}

/// Appends a whole frame (`header` with its body size and checksum filled in, then `body`).
pub fn frame_append(header: &FrameHeader, body: &[u8], out: &mut Vec<u8>) {
    let start = frame_begin(out);
    out.extend_from_slice(body);
    frame_end(out, start, header);
}

/// Reserves a header at the end of `out` for a body that the caller appends next; returns the
/// frame's start, for `frame_end`.
pub fn frame_begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_SIZE_BYTES]);
    start
}

/// Completes the frame that `frame_begin` started at `start`: everything after its header is
/// the body. Writes `header` with the body's size and checksum.
pub fn frame_end(out: &mut [u8], start: usize, header: &FrameHeader) {
    assert!(out.len() >= start + HEADER_SIZE_BYTES, "frame_end without frame_begin");
    let body = &out[start + HEADER_SIZE_BYTES..];
    assert!(body.len() <= body_size_max_bytes(header.flags) as usize, "frame body over the limit");
    let sealed = FrameHeader { body_size_bytes: body.len() as u32, body_checksum: body_checksum(body), ..*header };
    out[start..start + HEADER_SIZE_BYTES].copy_from_slice(&sealed.encode());
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Appends a request frame carrying `events` (`event_count` events of the operation's size).
pub fn request_append(
    operation: FrameOperation,
    request_id: u64,
    client_id: u128,
    events: &[u8],
    event_count: u32,
    out: &mut Vec<u8>,
) {
    assert_eq!(events.len(), event_count as usize * operation.event_size_bytes(), "events do not match the operation");
    assert!(event_count <= operation.event_count_max(), "too many events for one frame");
    frame_append(&FrameHeader::request(operation, request_id, client_id, event_count), events, out);
}

/// Appends a traced request frame: `events`, then `trace_ids` (16 bytes, a little-endian u128,
/// per event; 0 for an event without a trace).
pub fn request_traced_append(
    operation: FrameOperation,
    request_id: u64,
    client_id: u128,
    events: &[u8],
    trace_ids: &[u8],
    event_count: u32,
    out: &mut Vec<u8>,
) {
    assert!(operation.is_mutating_with_events(), "only mutating operations with events are traced");
    assert_eq!(events.len(), event_count as usize * operation.event_size_bytes(), "events do not match the operation");
    assert_eq!(trace_ids.len(), event_count as usize * TRACE_ID_SIZE_BYTES, "one trace id per event");
    assert!(event_count <= operation.event_count_max(), "too many events for one frame");
    let header =
        FrameHeader { flags: FLAG_TRACED, ..FrameHeader::request(operation, request_id, client_id, event_count) };
    let start = frame_begin(out);
    out.extend_from_slice(events);
    out.extend_from_slice(trace_ids);
    frame_end(out, start, &header);
}

fn batch_operation_events<'b>(batch: &Batch<'b>) -> (Operation, &'b [u8]) {
    match *batch {
        Batch::Pulse => (Operation::Pulse, &[][..]),
        Batch::CreateAccounts(events) => (Operation::CreateAccounts, records_as_bytes(events)),
        Batch::CreateTransfers(events) => (Operation::CreateTransfers, records_as_bytes(events)),
        Batch::CloseAccounts(events) => (Operation::CloseAccounts, records_as_bytes(events)),
        Batch::ReopenAccounts(events) => (Operation::ReopenAccounts, records_as_bytes(events)),
        Batch::SetAccountLimits(events) => (Operation::SetAccountLimits, records_as_bytes(events)),
    }
}

/// Appends the request frame of a mutating batch.
pub fn batch_request_append(batch: &Batch<'_>, request_id: u64, client_id: u128, out: &mut Vec<u8>) {
    let (operation, events) = batch_operation_events(batch);
    request_append(FrameOperation::Ledger(operation), request_id, client_id, events, batch.len() as u32, out);
}

/// Appends the traced request frame of a mutating batch with events: `trace_ids[i]` is event
/// `i`'s (0: none).
pub fn batch_request_traced_append(
    batch: &Batch<'_>,
    trace_ids: &[u128],
    request_id: u64,
    client_id: u128,
    out: &mut Vec<u8>,
) {
    assert_eq!(trace_ids.len(), batch.len(), "one trace id per event");
    let (operation, events) = batch_operation_events(batch);
    let operation = FrameOperation::Ledger(operation);
    let trace_bytes = records_as_bytes(trace_ids);
    request_traced_append(operation, request_id, client_id, events, trace_bytes, batch.len() as u32, out);
}

/// Appends the request frame of a query.
pub fn query_request_append(query: &Query<'_>, request_id: u64, client_id: u128, out: &mut Vec<u8>) {
    let (operation, events, event_count) = match query {
        Query::LookupAccounts(ids) => (Operation::LookupAccounts, records_as_bytes(ids), ids.len()),
        Query::LookupTransfers(ids) => (Operation::LookupTransfers, records_as_bytes(ids), ids.len()),
        Query::LookupBalances(ids) => (Operation::LookupBalances, records_as_bytes(ids), ids.len()),
    };
    request_append(FrameOperation::Ledger(operation), request_id, client_id, events, event_count as u32, out);
}

/// A checked, decoded request.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// A ledger command: its events as the core's types, and the same command as the bytes the
    /// journal records (the core's 16-byte command header, then the events, then for a traced
    /// request its trace ids: `walletd_core::TraceIds::of_command` reads them).
    Ledger {
        command: Command<'a>,
        command_bytes: &'a [u8],
    },
    Ping,
    Snapshot,
}

/// Buffers a request is decoded into, sized once for the largest frame: the command bytes
/// (for the journal) and the core's aligned scratch (for the ledger).
pub struct RequestScratch {
    command_bytes: Vec<u8>,
    scratch: CommandScratch,
}

impl Default for RequestScratch {
    fn default() -> RequestScratch {
        RequestScratch::new()
    }
}

impl RequestScratch {
    pub fn new() -> RequestScratch {
        let capacity = walletd_core::command::COMMAND_HEADER_SIZE_BYTES + TRACED_BODY_SIZE_MAX_BYTES as usize;
        RequestScratch { command_bytes: Vec::with_capacity(capacity), scratch: CommandScratch::new(EVENT_COUNT_MAX) }
    }

    /// Checks the request (`check_request`) and decodes its body.
    pub fn decode<'a>(&'a mut self, header: &FrameHeader, body: &[u8]) -> Result<Request<'a>, FrameError> {
        let operation = match check_request(header, body)? {
            FrameOperation::Ledger(operation) => operation,
            FrameOperation::Ping => return Ok(Request::Ping),
            FrameOperation::Snapshot => return Ok(Request::Snapshot),
        };
        let capacity = self.command_bytes.capacity();
        self.command_bytes.clear();
        request_command_encode(header, operation, body, &mut self.command_bytes);
        assert_eq!(self.command_bytes.capacity(), capacity, "the command buffer grew");
        let command = self.scratch.decode(&self.command_bytes).map_err(|error| command_error(operation, error))?;
        Ok(Request::Ledger { command, command_bytes: &self.command_bytes })
    }
}

/// Appends the command the journal records for a request that `check_request` accepted: the
/// core's command header (traced when the frame is), then the body as it came — the events and,
/// traced, the trace ids after them.
pub fn request_command_encode(header: &FrameHeader, operation: Operation, body: &[u8], out: &mut Vec<u8>) {
    let events_size_bytes = header.event_count as usize * operation.event_size_bytes();
    if header.flags & FLAG_TRACED == 0 {
        command_encode(operation, body, header.event_count, out);
    } else {
        assert!(body.len() >= events_size_bytes, "check_request checks the traced body's size");
        let (events, trace_ids) = body.split_at(events_size_bytes);
        command_traced_encode(operation, events, trace_ids, header.event_count, out);
    }
}

/// Proves that `command`, the bytes the journal will record for a request of `operation` with
/// `event_count` events, decodes with the ledger's own decoder (`CommandScratch::decode`, the
/// one apply and replay use) into exactly that: a batch for a mutating operation, a query for a
/// read, with that many events. Apply `expect`s every journaled command to decode, so a command
/// refused here must never reach the sequencer: it would panic apply, and every replay after.
pub fn command_check(
    operation: Operation,
    event_count: u32,
    command: &[u8],
    scratch: &mut CommandScratch,
) -> Result<(), FrameError> {
    let decoded = scratch.decode(command).map_err(|error| command_error(operation, error))?;
    let (decoded_operation, decoded_count) = command_shape(&decoded);
    let frame_operation = FrameOperation::Ledger(operation);
    if decoded_operation != operation {
        return Err(FrameError::CommandNotDecoded { operation: frame_operation, reason: "another operation" });
    }
    if decoded_count != event_count as usize {
        return Err(FrameError::CommandNotDecoded { operation: frame_operation, reason: "another event count" });
    }
    Ok(())
}

/// A decoded command's operation and event count.
fn command_shape(command: &Command<'_>) -> (Operation, usize) {
    match command {
        Command::Batch(batch) => {
            let operation = match batch {
                Batch::Pulse => Operation::Pulse,
                Batch::CreateAccounts(_) => Operation::CreateAccounts,
                Batch::CreateTransfers(_) => Operation::CreateTransfers,
                Batch::CloseAccounts(_) => Operation::CloseAccounts,
                Batch::ReopenAccounts(_) => Operation::ReopenAccounts,
                Batch::SetAccountLimits(_) => Operation::SetAccountLimits,
            };
            assert!(operation.is_mutating(), "a batch is a mutating operation");
            (operation, batch.len())
        }
        Command::Query(query) => {
            let (operation, count) = match query {
                Query::LookupAccounts(ids) => (Operation::LookupAccounts, ids.len()),
                Query::LookupTransfers(ids) => (Operation::LookupTransfers, ids.len()),
                Query::LookupBalances(ids) => (Operation::LookupBalances, ids.len()),
            };
            assert!(!operation.is_mutating(), "a query is a read");
            (operation, count)
        }
    }
}

/// `check_request` has ruled out every `CommandError`; if the core still refuses, say so as the
/// nearest frame error rather than panic on network input.
fn command_error(operation: Operation, error: CommandError) -> FrameError {
    let operation = FrameOperation::Ledger(operation);
    match error {
        CommandError::UnknownOperation { operation } => FrameError::UnknownOperation { operation },
        CommandError::TooManyEvents { event_count, event_count_max } => {
            FrameError::TooManyEvents { operation, event_count, event_count_max }
        }
        CommandError::SizeMismatch { event_count, size_bytes, traced: false, .. } => {
            FrameError::BadBodySize { operation, event_count, body_size_bytes: size_bytes as u32 }
        }
        CommandError::SizeMismatch { event_count, size_bytes, traced: true, .. } => {
            FrameError::BadTracedBodySize { operation, event_count, body_size_bytes: size_bytes as u32 }
        }
        CommandError::TracesNotTaken { .. } => {
            FrameError::ReservedNotZero { field: "flags (the traced bit, on an operation without journaled events)" }
        }
        CommandError::TooShort { .. } => FrameError::CommandNotDecoded { operation, reason: "shorter than its header" },
        CommandError::ReservedNotZero => {
            FrameError::CommandNotDecoded { operation, reason: "reserved header bytes not zero" }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reply bodies. Encoders append and return the record count for the header's event_count;
// decoders append to the caller's vectors and refuse, never panic on, malformed bytes.

/// Sparse results of a mutating operation: (index u32, code u32) per failed event.
pub fn results_encode(results: &[EventResult], out: &mut Vec<u8>) -> u32 {
    assert!(results.len() <= EVENT_COUNT_MAX as usize, "more results than events");
    for result in results {
        assert!(result.code != 0, "success is not listed");
        out.extend_from_slice(&result.index.to_le_bytes());
        out.extend_from_slice(&result.code.to_le_bytes());
    }
    results.len() as u32
}

/// Appends the timestamp trailer of a reply to a `FLAG_TIMESTAMP` request (after its results).
pub fn timestamp_encode(timestamp_ns: u64, out: &mut Vec<u8>) {
    assert!(timestamp_ns != 0, "an applied request has a timestamp");
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
}

/// The results and the timestamp of a reply to a `FLAG_TIMESTAMP` request: `event_count`
/// results, then the request's timestamp (not zero).
pub fn results_timestamped_decode(
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
    out: &mut Vec<EventResult>,
) -> Result<u64, FrameError> {
    let malformed = |reason| FrameError::MalformedReply { operation: operation.code(), reason };
    let Some(results_size) = body.len().checked_sub(TIMESTAMP_SIZE_BYTES) else {
        return Err(malformed("the body has no timestamp trailer"));
    };
    let timestamp_ns = u64_at(body, results_size);
    if timestamp_ns == 0 {
        return Err(malformed("the timestamp trailer is zero"));
    }
    results_decode(operation, event_count, &body[..results_size], out)?;
    Ok(timestamp_ns)
}

pub fn results_decode(
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
    out: &mut Vec<EventResult>,
) -> Result<(), FrameError> {
    let malformed = |reason| FrameError::MalformedReply { operation: operation.code(), reason };
    if body.len() as u64 != u64::from(event_count) * RESULT_SIZE_BYTES as u64 {
        return Err(malformed("the body is not event_count results of 8 bytes"));
    }
    let start = out.len();
    for chunk in body.chunks_exact(RESULT_SIZE_BYTES) {
        let result = EventResult { index: u32_at(chunk, 0), code: u32_at(chunk, 4) };
        if result.code == 0 {
            out.truncate(start);
            return Err(malformed("a result has code 0 (success is not listed)"));
        }
        if out.len() > start && out[out.len() - 1].index >= result.index {
            out.truncate(start);
            return Err(malformed("result indexes are not strictly increasing"));
        }
        out.push(result);
    }
    Ok(())
}

pub fn accounts_encode(accounts: &[Account], out: &mut Vec<u8>) -> u32 {
    assert!(accounts.len() <= EVENT_COUNT_MAX as usize, "more accounts than a frame holds");
    out.extend_from_slice(records_as_bytes(accounts));
    accounts.len() as u32
}

pub fn accounts_decode(
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
    out: &mut Vec<Account>,
) -> Result<(), FrameError> {
    if body.len() as u64 != u64::from(event_count) * RECORD_SIZE_BYTES as u64 {
        let reason = "the body is not event_count 128-byte accounts";
        return Err(FrameError::MalformedReply { operation: operation.code(), reason });
    }
    out.extend(body.chunks_exact(RECORD_SIZE_BYTES).map(record_read::<Account>));
    Ok(())
}

// The body of a ping reply, byte by byte: the server's limits, which a client would otherwise
// have to guess. A server older than this sends an empty body; a later one may append fields,
// so a client reads the fields it knows and ignores the bytes after them.
//
// offset size field
//      0    4 transfers_max      the idempotency window, in transfers
//      4    4 batch_events_max   events per request this server accepts
//      8    8 id_future_ms_max   how far an id's time may lead the engine's clock
//     16    8 idle_timeout_ms    a silent connection with nothing in flight is closed after this
//     24    8 frame_timeout_ms   a started frame must arrive whole within this
//     32    4 connections_max
//     36    4 accounts_max
//     40    4 pending_max        open holds at once
//     44    4 limits_max         accounts with limits
//     48    4 ledgers_max
//     52   12 reserved           zero
pub const SERVER_INFO_SIZE_BYTES: usize = 64;
const SERVER_INFO_RESERVED_OFFSET: usize = 52;

/// What a ping reply tells a client about the server it talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub transfers_max: u32,
    pub batch_events_max: u32,
    pub id_future_ms_max: u64,
    pub idle_timeout_ms: u64,
    pub frame_timeout_ms: u64,
    pub connections_max: u32,
    pub accounts_max: u32,
    pub pending_max: u32,
    pub limits_max: u32,
    pub ledgers_max: u32,
}

impl ServerInfo {
    pub fn encode(&self) -> [u8; SERVER_INFO_SIZE_BYTES] {
        let mut bytes = [0u8; SERVER_INFO_SIZE_BYTES];
        bytes[0..4].copy_from_slice(&self.transfers_max.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.batch_events_max.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.id_future_ms_max.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.idle_timeout_ms.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.frame_timeout_ms.to_le_bytes());
        let counts = [self.connections_max, self.accounts_max, self.pending_max, self.limits_max, self.ledgers_max];
        for (index, count) in counts.iter().enumerate() {
            bytes[32 + index * 4..36 + index * 4].copy_from_slice(&count.to_le_bytes());
        }
        assert!(bytes[SERVER_INFO_RESERVED_OFFSET..].iter().all(|byte| *byte == 0));
        bytes
    }

    /// The info in a ping reply's body: `None` for an empty body (a server that predates it);
    /// bytes past the fields known here are a later version's and are ignored.
    pub fn decode(body: &[u8]) -> Result<Option<ServerInfo>, FrameError> {
        if body.is_empty() {
            return Ok(None);
        }
        if body.len() < SERVER_INFO_SIZE_BYTES {
            let reason = "the ping reply body is shorter than the 64-byte server info";
            return Err(FrameError::MalformedReply { operation: FrameOperation::PING_CODE, reason });
        }
        Ok(Some(ServerInfo {
            transfers_max: u32_at(body, 0),
            batch_events_max: u32_at(body, 4),
            id_future_ms_max: u64_at(body, 8),
            idle_timeout_ms: u64_at(body, 16),
            frame_timeout_ms: u64_at(body, 24),
            connections_max: u32_at(body, 32),
            accounts_max: u32_at(body, 36),
            pending_max: u32_at(body, 40),
            limits_max: u32_at(body, 44),
            ledgers_max: u32_at(body, 48),
        }))
    }
}

/// lookup_transfers records: the transfer, its status byte, 15 zero bytes.
pub fn transfer_records_encode(records: &[TransferRecord], out: &mut Vec<u8>) -> u32 {
    assert!(records.len() * TRANSFER_RECORD_SIZE_BYTES <= BODY_SIZE_MAX_BYTES as usize, "records over a frame");
    for record in records {
        out.extend_from_slice(records_as_bytes(core::slice::from_ref(&record.transfer)));
        out.push(record.status as u8);
        out.extend_from_slice(&[0u8; TRANSFER_RECORD_SIZE_BYTES - TRANSFER_RECORD_STATUS_OFFSET - 1]);
    }
    records.len() as u32
}

pub fn transfer_records_decode(
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
    out: &mut Vec<TransferRecord>,
) -> Result<(), FrameError> {
    let malformed = |reason| FrameError::MalformedReply { operation: operation.code(), reason };
    if body.len() as u64 != u64::from(event_count) * TRANSFER_RECORD_SIZE_BYTES as u64 {
        return Err(malformed("the body is not event_count 144-byte transfer records"));
    }
    let start = out.len();
    for chunk in body.chunks_exact(TRANSFER_RECORD_SIZE_BYTES) {
        let status = match transfer_status_from_u8(chunk[TRANSFER_RECORD_STATUS_OFFSET]) {
            Some(status) => status,
            None => {
                out.truncate(start);
                return Err(malformed("unknown transfer status"));
            }
        };
        if chunk[TRANSFER_RECORD_STATUS_OFFSET + 1..].iter().any(|byte| *byte != 0) {
            out.truncate(start);
            return Err(malformed("transfer record padding is not zero"));
        }
        out.push(TransferRecord { transfer: record_read(&chunk[..RECORD_SIZE_BYTES]), status });
    }
    Ok(())
}

pub fn transfer_status_from_u8(value: u8) -> Option<TransferStatus> {
    Some(match value {
        1 => TransferStatus::Posted,
        2 => TransferStatus::Voided,
        3 => TransferStatus::Pending,
        4 => TransferStatus::PendingPosted,
        5 => TransferStatus::PendingVoided,
        6 => TransferStatus::PendingExpired,
        _ => return None,
    })
}

/// lookup_balances: the reads, then each read's holds in read order. `holds` is the ledger
/// output's hold list (`holds_start` indexes it). Holds are listed while they fit in one frame:
/// a read whose holds were cut says so with `holds_count < holds_count_total`, as when the
/// ledger's own hold capacity ran out.
pub fn balances_encode(reads: &[BalanceRead], holds: &[Transfer], out: &mut Vec<u8>) -> u32 {
    let reads_size_bytes = reads.len() * BALANCE_READ_SIZE_BYTES;
    assert!(reads_size_bytes <= BODY_SIZE_MAX_BYTES as usize, "more balance reads than a frame holds");
    let mut hold_room_count = (BODY_SIZE_MAX_BYTES as usize - reads_size_bytes) / RECORD_SIZE_BYTES;
    let listed_start = out.len();
    for read in reads {
        let listed_count = (read.holds_count as usize).min(hold_room_count);
        hold_room_count -= listed_count;
        balance_read_encode(read, listed_count as u32, out);
    }
    for (index, read) in reads.iter().enumerate() {
        let offset = listed_start + index * BALANCE_READ_SIZE_BYTES + BALANCE_HOLDS_COUNT_OFFSET;
        let listed_count = u32_at(out, offset) as usize;
        let start = read.holds_start as usize;
        assert!(start + read.holds_count as usize <= holds.len(), "a read's holds are outside the hold list");
        out.extend_from_slice(records_as_bytes(&holds[start..start + listed_count]));
    }
    reads.len() as u32
}

fn balance_read_encode(read: &BalanceRead, holds_count: u32, out: &mut Vec<u8>) {
    assert!(holds_count <= read.holds_count, "listing holds the read does not have");
    assert!(read.holds_count <= read.holds_count_total, "more holds listed than open");
    let start = out.len();
    out.extend_from_slice(records_as_bytes(core::slice::from_ref(&read.account)));
    out.extend_from_slice(records_as_bytes(core::slice::from_ref(&read.limits)));
    let usage = &read.usage;
    for value in [usage.day, usage.day_count, usage.month, usage.month_count] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&usage.day_amount.0.to_le_bytes());
    out.extend_from_slice(&usage.month_amount.0.to_le_bytes());
    out.extend_from_slice(&read.holds_count_total.to_le_bytes());
    out.extend_from_slice(&holds_count.to_le_bytes());
    out.extend_from_slice(&[0u8; BALANCE_READ_SIZE_BYTES - BALANCE_RESERVED_OFFSET]);
    assert_eq!(out.len() - start, BALANCE_READ_SIZE_BYTES);
}

/// Appends the reads to `reads` and their holds to `holds`; each read's `holds_start` indexes
/// `holds` as it stands after the call.
pub fn balances_decode(
    operation: FrameOperation,
    event_count: u32,
    body: &[u8],
    reads: &mut Vec<BalanceRead>,
    holds: &mut Vec<Transfer>,
) -> Result<(), FrameError> {
    let malformed = |reason| FrameError::MalformedReply { operation: operation.code(), reason };
    let reads_size_bytes = u64::from(event_count) * BALANCE_READ_SIZE_BYTES as u64;
    if reads_size_bytes > body.len() as u64 {
        return Err(malformed("the body is shorter than event_count balance reads"));
    }
    let (reads_bytes, holds_bytes) = body.split_at(reads_size_bytes as usize);
    let reads_start = reads.len();
    let mut holds_next = holds.len() as u64;
    for chunk in reads_bytes.chunks_exact(BALANCE_READ_SIZE_BYTES) {
        let read = balance_read_decode(chunk, holds_next as u32);
        let valid = read.holds_count <= read.holds_count_total
            && chunk[BALANCE_RESERVED_OFFSET..].iter().all(|byte| *byte == 0);
        holds_next += u64::from(read.holds_count);
        if !valid || holds_next > u64::from(u32::MAX) {
            reads.truncate(reads_start);
            return Err(malformed("a balance read has holds_count over its total or non-zero reserved bytes"));
        }
        reads.push(read);
    }
    if holds_bytes.len() as u64 != (holds_next - holds.len() as u64) * RECORD_SIZE_BYTES as u64 {
        reads.truncate(reads_start);
        return Err(malformed("the holds after the reads are not Σ holds_count transfers"));
    }
    holds.extend(holds_bytes.chunks_exact(RECORD_SIZE_BYTES).map(record_read::<Transfer>));
    Ok(())
}

fn balance_read_decode(chunk: &[u8], holds_start: u32) -> BalanceRead {
    assert_eq!(chunk.len(), BALANCE_READ_SIZE_BYTES);
    let usage = &chunk[BALANCE_USAGE_OFFSET..BALANCE_HOLDS_COUNT_TOTAL_OFFSET];
    BalanceRead {
        account: record_read(&chunk[..BALANCE_LIMITS_OFFSET]),
        limits: record_read(&chunk[BALANCE_LIMITS_OFFSET..BALANCE_USAGE_OFFSET]),
        usage: DebitUsage {
            day: u32_at(usage, 0),
            day_count: u32_at(usage, 4),
            month: u32_at(usage, 8),
            month_count: u32_at(usage, 12),
            day_amount: Amount(u128_at(usage, 16)),
            month_amount: Amount(u128_at(usage, 32)),
        },
        holds_count_total: u32_at(chunk, BALANCE_HOLDS_COUNT_TOTAL_OFFSET),
        holds_start,
        holds_count: u32_at(chunk, BALANCE_HOLDS_COUNT_OFFSET),
    }
}

/// The 128-byte records that may be read from any bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs of integers (and transparent integer newtypes) of
/// exactly 128 bytes with no padding, so every byte pattern is a valid value.
unsafe trait WireRecord: Copy {}
// SAFETY: Account is #[repr(C)], 128 bytes of integer fields, no padding (asserted in the core).
unsafe impl WireRecord for Account {}
// SAFETY: as above, for Transfer.
unsafe impl WireRecord for Transfer {}
// SAFETY: as above, for AccountLimits (its reserved bytes are a [u8; 28]).
unsafe impl WireRecord for AccountLimits {}

fn record_read<T: WireRecord>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), size_of::<T>(), "a record is 128 bytes");
    assert_eq!(size_of::<T>(), RECORD_SIZE_BYTES);
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes (asserted); T is a WireRecord, so any
    // bytes are a valid T; read_unaligned makes no alignment demand on the network buffer.
    unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}
