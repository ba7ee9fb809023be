//! The `transaction.completed` event: what the outbox publishes for each transfer the ledger
//! completed, made from a follower's op (the command and its change-data feed), never from the
//! live pipeline.
//!
//! One event per transfer change of an op, in the order the ledger made them: a single-phase
//! transfer (`posted`), a hold placed (`pending`), and a hold posted, voided or expired
//! (`pending_posted`, `pending_voided`, `pending_expired`). Each event names its position as
//! `(op, index)`: the op of the journal record and the event's place among that op's events
//! (from 0). The pair is unique, increases in the order events happen, and is a pure function of
//! the journal, which is what makes the exporter's resume rule exact (see `exporter.rs`) and
//! what a consumer dedupes on.
//!
//! The JSON form is fixed by `schema/transaction.completed.v1.json` (a test validates every
//! event against it) and documented in docs/EVENTS.md. Ids and 64/128-bit numbers are strings,
//! so a consumer in any language reads them without losing precision.

use serde::{Deserialize, Serialize};
use walletd_core::{Account, Change, ChangeKind, CHANGE_INDEX_EXPIRY};
use walletd_replay::{Op, Outcome};

/// The event type, also the default topic name.
pub const EVENT_TYPE: &str = "transaction.completed";
/// Bumped when a field changes meaning or goes away; adding an optional field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;
/// The JSON Schema every event conforms to.
pub const SCHEMA_JSON: &str = include_str!("../schema/transaction.completed.v1.json");

/// What happened to the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A single-phase transfer, posted at once.
    Posted,
    /// A hold placed: the amount is reserved (debits_pending / credits_pending).
    Pending,
    /// A hold posted, fully or partly, by the transfer `id` (`pending_id` names the hold).
    PendingPosted,
    /// A hold voided by the transfer `id` (`pending_id` names the hold).
    PendingVoided,
    /// A hold that timed out (`id` is the hold itself).
    PendingExpired,
}

impl Status {
    /// The status of a transfer change; None for an account change (not exported).
    pub fn of(kind: ChangeKind) -> Option<Status> {
        match kind {
            ChangeKind::TransferPosted => Some(Status::Posted),
            ChangeKind::HoldPlaced => Some(Status::Pending),
            ChangeKind::HoldPosted => Some(Status::PendingPosted),
            ChangeKind::HoldVoided => Some(Status::PendingVoided),
            ChangeKind::HoldExpired => Some(Status::PendingExpired),
            ChangeKind::AccountCreated
            | ChangeKind::AccountClosed
            | ChangeKind::AccountReopened
            | ChangeKind::AccountLimitsSet => None,
        }
    }
}

/// An account's four balances after the event, in minor units (decimal strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub account_id: String,
    pub debits_pending: String,
    pub debits_posted: String,
    pub credits_pending: String,
    pub credits_posted: String,
}

impl Balances {
    fn of(account: &Account) -> Balances {
        Balances {
            account_id: id_hex(account.id.0),
            debits_pending: account.debits_pending.0.to_string(),
            debits_posted: account.debits_posted.0.to_string(),
            credits_pending: account.credits_pending.0.to_string(),
            credits_posted: account.credits_posted.0.to_string(),
        }
    }
}

/// Both sides' balances after the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancesAfter {
    pub debit: Balances,
    pub credit: Balances,
}

/// One `transaction.completed` event. Field order is the JSON's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    /// The journal op whose record holds the command (for an expiry: the batch at whose start
    /// the hold expired).
    pub op: u64,
    /// The event's place among its op's events, from 0.
    pub index: u32,
    /// The event's index in its batch; None for an expiry, which belongs to no event.
    pub event_index: Option<u32>,
    pub status: Status,
    /// The transfer id (32 lowercase hex digits): the Kafka key and the idempotency key.
    pub id: String,
    /// For `pending_posted` and `pending_voided`: the hold's id; None otherwise.
    pub pending_id: Option<String>,
    pub debit_account_id: String,
    pub credit_account_id: String,
    /// Minor units, decimal. For a post: the amount posted; for a void or an expiry: the hold's.
    pub amount: String,
    pub ledger: u32,
    pub code: u16,
    pub user_data_128: String,
    pub user_data_64: String,
    pub user_data_32: u32,
    /// The engine's timestamp of the change (ns since the Unix epoch, decimal).
    pub timestamp_ns: String,
    /// The W3C trace id of the request that caused it (32 hex digits), as the journal carries
    /// it; None for an untraced request and for an expiry.
    pub trace_id: Option<String>,
    pub balances_after: BalancesAfter,
    /// The journal's chain checksum at `op` (32 hex digits): an anchor outside the data
    /// directory that a rewritten journal disagrees with (`walletd replay --expect-head`).
    pub journal_checksum: String,
}

/// Where an event stands in the stream: `(op, index)`, ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub op: u64,
    pub index: u32,
}

impl Event {
    pub fn position(&self) -> EventPosition {
        EventPosition { op: self.op, index: self.index }
    }

    /// The Kafka key: the transfer id as it appears in the event.
    pub fn key(&self) -> &str {
        &self.id
    }
}

/// An id or a 128-bit field as 32 lowercase hex digits.
pub fn id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// The events of one op, in order (none for a checkpoint or a batch that moved no money).
pub fn events_of(op: &Op<'_>) -> Vec<Event> {
    let Outcome::Command { output, trace_ids, .. } = op.outcome else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for change in &output.changes {
        if let Some(status) = Status::of(change.kind) {
            let index = u32::try_from(events.len()).expect("a batch's changes fit in u32");
            // An expiry has no request behind it; any other change is its event's request's.
            let trace_id = (change.index != CHANGE_INDEX_EXPIRY).then(|| trace_ids.get(change.index as usize));
            let trace_id = trace_id.filter(|&trace_id| trace_id != 0);
            events.push(event_of(op.op, op.checksum, index, status, change, trace_id));
        }
    }
    events
}

pub(crate) fn event_of(
    op: u64,
    checksum: u128,
    index: u32,
    status: Status,
    change: &Change,
    trace_id: Option<u128>,
) -> Event {
    let transfer = &change.transfer;
    assert_eq!(transfer.debit_account_id, change.debit_account.id, "the after-image is the debit account's");
    assert_eq!(transfer.credit_account_id, change.credit_account.id, "the after-image is the credit account's");
    let resolves_hold = matches!(status, Status::PendingPosted | Status::PendingVoided);
    Event {
        event_type: EVENT_TYPE.to_string(),
        schema_version: SCHEMA_VERSION,
        op,
        index,
        event_index: (change.index != CHANGE_INDEX_EXPIRY).then_some(change.index),
        status,
        id: id_hex(transfer.id.0),
        pending_id: resolves_hold.then(|| id_hex(transfer.pending_id.0)),
        debit_account_id: id_hex(transfer.debit_account_id.0),
        credit_account_id: id_hex(transfer.credit_account_id.0),
        amount: transfer.amount.0.to_string(),
        ledger: transfer.ledger,
        code: transfer.code,
        user_data_128: id_hex(transfer.user_data_128),
        user_data_64: transfer.user_data_64.to_string(),
        user_data_32: transfer.user_data_32,
        timestamp_ns: change.timestamp_ns.to_string(),
        trace_id: trace_id.map(id_hex),
        balances_after: BalancesAfter {
            debit: Balances::of(&change.debit_account),
            credit: Balances::of(&change.credit_account),
        },
        journal_checksum: id_hex(checksum),
    }
}

/// One record as the `Event` model and serde_json make it: the reference `encode.rs` must
/// match byte for byte, which its tests compare and its benchmark measures against. Not the
/// exporter's path (that is `encode::op_records_encode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceRecord {
    pub partition: i32,
    pub key: String,
    pub payload: Vec<u8>,
    /// The `walletd-position` header's value, `OP:INDEX`.
    pub position_header: String,
}

/// The records of `op` by the reference encoding (see `ReferenceRecord`).
pub fn op_records_reference(op: &Op<'_>, partitions: i32) -> Vec<ReferenceRecord> {
    events_of(op)
        .into_iter()
        .map(|event| ReferenceRecord {
            partition: partition_of(event.key().as_bytes(), partitions),
            payload: serde_json::to_vec(&event).expect("an event serialises"),
            position_header: format!("{}:{}", event.op, event.index),
            key: event.id,
        })
        .collect()
}

/// The partition of a key among `partitions`: Kafka's default partitioner (murmur2 of the key
/// bytes, sign bit cleared, modulo the count), so a Java or librdkafka producer with the
/// `murmur2` partitioner puts the same key in the same partition.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let hash = murmur2(key) & 0x7fff_ffff;
    i32::try_from(hash % partitions as u32).expect("below the partition count")
}

/// Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h = SEED ^ length as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data) as i32, expected, "murmur2({:?})", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn positions_order_by_op_then_index() {
        let a = EventPosition { op: 3, index: 9 };
        let b = EventPosition { op: 4, index: 0 };
        assert!(a < b);
        assert!(EventPosition { op: 4, index: 1 } > b);
    }
}
