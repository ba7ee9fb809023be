//! The exporter's hot path: one op's events written straight into the parts of their Kafka
//! records (key, payload, position header), back to back in one buffer that is reused from op
//! to op, with no `Event` value, no `String` and no `serde_json` in between.
//!
//! The bytes are exactly what `serde_json::to_vec(&Event)` makes of `events_of`'s events (the
//! compact form, fields in the struct's order): `Event` stays the model that readers parse and
//! the reference this writer is tested against, event by event on generated journals and on
//! edge values (export/tests/events.rs, and the property test below). Every value is a number,
//! a hex or decimal digit string, `null` or one of a few fixed names, so nothing needs escaping.
//!
//! Why it is shaped so: building an `Event` cost 15 `String`s an event (each a `format!`), then
//! serde walked them into a fresh `Vec`, the key was cloned and the position header formatted
//! again; docs/BENCHMARKS.md ("The exporter's own CPU") has the figures before and after.

use crate::event::{partition_of, EventPosition, Status, EVENT_TYPE, SCHEMA_VERSION};
use std::ops::Range;
use walletd_core::{Account, Change, CHANGE_INDEX_EXPIRY};
use walletd_replay::{Op, Outcome, Position};

/// One record of an op: where it goes and where its parts are in `OpRecords::bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub position: EventPosition,
    key: Range<usize>,
    payload: Range<usize>,
    position_header: Range<usize>,
}

/// The records of one op, in position order (an event a previous session already wrote is
/// left out by the caller's `admit`).
#[derive(Debug, Default)]
pub struct OpRecords {
    pub position: Position,
    pub timestamp_ns: u64,
    /// Every record's key, payload and position header, back to back.
    bytes: Vec<u8>,
    records: Vec<Record>,
    /// Events of the op the caller did not admit.
    pub skipped: u64,
}

impl OpRecords {
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The Kafka key: the transfer id, 32 lowercase hex digits.
    pub fn key(&self, record: &Record) -> &[u8] {
        &self.bytes[record.key.clone()]
    }

    /// The event's JSON.
    pub fn payload(&self, record: &Record) -> &[u8] {
        &self.bytes[record.payload.clone()]
    }

    /// The `walletd-position` header's value, `OP:INDEX`.
    pub fn position_header(&self, record: &Record) -> &[u8] {
        &self.bytes[record.position_header.clone()]
    }

    /// Bytes held for the records' parts.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self, op: &Op<'_>) {
        self.position = op.position();
        self.timestamp_ns = op.timestamp_ns;
        self.bytes.clear();
        self.records.clear();
        self.skipped = 0;
    }
}

/// Writes `op`'s records into `out` (cleared first; its buffers keep their capacity). `admit`
/// is asked for each event, by partition and position, whether to send it (`Ok(false)`: it is
/// already in the topic), and may refuse the op with an error.
pub fn op_records_encode<E>(
    op: &Op<'_>,
    partitions: i32,
    admit: &mut impl FnMut(i32, EventPosition) -> Result<bool, E>,
    out: &mut OpRecords,
) -> Result<(), E> {
    assert!(partitions > 0, "a topic has at least one partition");
    out.clear(op);
    let Outcome::Command { output, trace_ids, .. } = op.outcome else {
        return Ok(());
    };
    let checksum_hex = hex128(op.checksum);
    let mut index = 0u32;
    for change in &output.changes {
        let Some(status) = Status::of(change.kind) else {
            continue;
        };
        let position = EventPosition { op: op.op, index };
        index = index.checked_add(1).expect("a batch's changes fit in u32");
        let key_hex = hex128(change.transfer.id.0);
        let partition = partition_of(&key_hex, partitions);
        if !admit(partition, position)? {
            out.skipped += 1;
            continue;
        }
        // An expiry has no request behind it; any other change is its event's request's.
        let trace_id = match change.index {
            CHANGE_INDEX_EXPIRY => 0,
            event_index => trace_ids.get(event_index as usize),
        };
        let bytes = &mut out.bytes;
        let key = part_put(bytes, |bytes| bytes.extend_from_slice(&key_hex));
        let fields = EventFields { position, status, change, trace_id, checksum_hex: &checksum_hex };
        let payload = part_put(bytes, |bytes| event_json_write(bytes, &fields));
        let position_header = part_put(bytes, |bytes| {
            decimal_put(bytes, position.op);
            bytes.push(b':');
            decimal_put(bytes, u64::from(position.index));
        });
        out.records.push(Record { partition, position, key, payload, position_header });
    }
    Ok(())
}

fn part_put(bytes: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = bytes.len();
    write(bytes);
    start..bytes.len()
}

/// What one event's JSON is made of.
pub struct EventFields<'a> {
    pub position: EventPosition,
    pub status: Status,
    pub change: &'a Change,
    /// 0: none (the JSON's null).
    pub trace_id: u128,
    /// The op's chain checksum, already in hex (the same for all of the op's events).
    pub checksum_hex: &'a [u8; 32],
}

/// Appends one event's JSON to `out`: the bytes `serde_json::to_vec` makes of the `Event` that
/// `events_of` builds from the same change.
pub fn event_json_write(out: &mut Vec<u8>, fields: &EventFields<'_>) {
    let (change, transfer) = (fields.change, &fields.change.transfer);
    assert_eq!(transfer.debit_account_id, change.debit_account.id, "the after-image is the debit account's");
    assert_eq!(transfer.credit_account_id, change.credit_account.id, "the after-image is the credit account's");
    const _: () = assert!(SCHEMA_VERSION == 1, "the prefix below spells the schema version");
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(EVENT_TYPE.as_bytes());
    out.extend_from_slice(b"\",\"schema_version\":1,\"op\":");
    decimal_put(out, fields.position.op);
    out.extend_from_slice(b",\"index\":");
    decimal_put(out, u64::from(fields.position.index));
    out.extend_from_slice(b",\"event_index\":");
    match change.index {
        CHANGE_INDEX_EXPIRY => out.extend_from_slice(b"null"),
        event_index => decimal_put(out, u64::from(event_index)),
    }
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_name(fields.status));
    out.extend_from_slice(b"\",\"id\":");
    hex_string_put(out, transfer.id.0);
    out.extend_from_slice(b",\"pending_id\":");
    match fields.status {
        Status::PendingPosted | Status::PendingVoided => hex_string_put(out, transfer.pending_id.0),
        Status::Posted | Status::Pending | Status::PendingExpired => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"debit_account_id\":");
    hex_string_put(out, transfer.debit_account_id.0);
    out.extend_from_slice(b",\"credit_account_id\":");
    hex_string_put(out, transfer.credit_account_id.0);
    out.extend_from_slice(b",\"amount\":");
    decimal_string_put(out, transfer.amount.0);
    out.extend_from_slice(b",\"ledger\":");
    decimal_put(out, u64::from(transfer.ledger));
    out.extend_from_slice(b",\"code\":");
    decimal_put(out, u64::from(transfer.code));
    out.extend_from_slice(b",\"user_data_128\":");
    hex_string_put(out, transfer.user_data_128);
    out.extend_from_slice(b",\"user_data_64\":");
    decimal_string_put(out, u128::from(transfer.user_data_64));
    out.extend_from_slice(b",\"user_data_32\":");
    decimal_put(out, u64::from(transfer.user_data_32));
    out.extend_from_slice(b",\"timestamp_ns\":");
    decimal_string_put(out, u128::from(change.timestamp_ns));
    out.extend_from_slice(b",\"trace_id\":");
    match fields.trace_id {
        0 => out.extend_from_slice(b"null"),
        trace_id => hex_string_put(out, trace_id),
    }
    out.extend_from_slice(b",\"balances_after\":{\"debit\":");
    balances_write(out, &change.debit_account);
    out.extend_from_slice(b",\"credit\":");
    balances_write(out, &change.credit_account);
    out.extend_from_slice(b"},\"journal_checksum\":\"");
    out.extend_from_slice(fields.checksum_hex);
    out.extend_from_slice(b"\"}");
}

fn balances_write(out: &mut Vec<u8>, account: &Account) {
    out.extend_from_slice(b"{\"account_id\":");
    hex_string_put(out, account.id.0);
    out.extend_from_slice(b",\"debits_pending\":");
    decimal_string_put(out, account.debits_pending.0);
    out.extend_from_slice(b",\"debits_posted\":");
    decimal_string_put(out, account.debits_posted.0);
    out.extend_from_slice(b",\"credits_pending\":");
    decimal_string_put(out, account.credits_pending.0);
    out.extend_from_slice(b",\"credits_posted\":");
    decimal_string_put(out, account.credits_posted.0);
    out.push(b'}');
}

/// The status as serde spells it (`rename_all = "snake_case"`).
fn status_name(status: Status) -> &'static [u8] {
    match status {
        Status::Posted => b"posted",
        Status::Pending => b"pending",
        Status::PendingPosted => b"pending_posted",
        Status::PendingVoided => b"pending_voided",
        Status::PendingExpired => b"pending_expired",
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// 32 lowercase hex digits, as `event::id_hex` writes them.
pub fn hex128(value: u128) -> [u8; 32] {
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[byte as usize]);
    }
    hex
}

fn hex_string_put(out: &mut Vec<u8>, value: u128) {
    let mut quoted = [b'"'; 34];
    quoted[1..33].copy_from_slice(&hex128(value));
    out.extend_from_slice(&quoted);
}

fn decimal_string_put(out: &mut Vec<u8>, value: u128) {
    out.push(b'"');
    decimal128_put(out, value);
    out.push(b'"');
}

/// `value` in decimal, without leading zeros.
pub fn decimal_put(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn decimal128_put(out: &mut Vec<u8>, value: u128) {
    match u64::try_from(value) {
        Ok(small) => decimal_put(out, small),
        Err(_) => out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::event_of;
    use proptest::prelude::*;
    use walletd_core::{AccountId, Amount, ChangeKind, Transfer, TransferId};

    fn account(id: u128, balances: [u128; 4]) -> Account {
        let [debits_pending, debits_posted, credits_pending, credits_posted] = balances.map(Amount);
        Account {
            id: AccountId(id),
            debits_pending,
            debits_posted,
            credits_pending,
            credits_posted,
            ..Account::default()
        }
    }

    fn any_number() -> impl Strategy<Value = u128> {
        prop_oneof![
            Just(0u128),
            Just(u128::MAX),
            Just(u64::MAX as u128 + 1),
            0..1000u128,
            any::<u64>().prop_map(u128::from),
            any::<u128>()
        ]
    }

    proptest! {
        #[test]
        fn the_writer_makes_serde_json_s_bytes(
            kind in prop_oneof![
                Just(ChangeKind::TransferPosted),
                Just(ChangeKind::HoldPlaced),
                Just(ChangeKind::HoldPosted),
                Just(ChangeKind::HoldVoided),
                Just(ChangeKind::HoldExpired),
            ],
            expiry in any::<bool>(),
            event_index in 0..8189u32,
            op in 1..u64::MAX,
            index in any::<u32>(),
            ids in any::<[u128; 4]>(),
            numbers in proptest::array::uniform9(any_number()),
            small in any::<(u32, u16, u32, u64, u64)>(),
            trace_id in prop_oneof![Just(0u128), any::<u128>()],
            checksum in any::<u128>(),
        ) {
            let (ledger, code, user_data_32, user_data_64, timestamp_ns) = small;
            let transfer = Transfer {
                id: TransferId(ids[0]),
                debit_account_id: AccountId(ids[1]),
                credit_account_id: AccountId(ids[2]),
                pending_id: TransferId(ids[3]),
                amount: Amount(numbers[0]),
                user_data_128: numbers[8],
                user_data_64,
                user_data_32,
                ledger,
                code,
                ..Transfer::default()
            };
            let change = Change {
                kind,
                index: if expiry { CHANGE_INDEX_EXPIRY } else { event_index },
                timestamp_ns,
                transfer,
                debit_account: account(ids[1], [numbers[1], numbers[2], numbers[3], numbers[4]]),
                credit_account: account(ids[2], [numbers[5], numbers[6], numbers[7], numbers[0]]),
            };
            let status = Status::of(kind).expect("a transfer change");
            let event = event_of(op, checksum, index, status, &change, (trace_id != 0).then_some(trace_id));
            let mut written = Vec::new();
            let position = EventPosition { op, index };
            let fields = EventFields { position, status, change: &change, trace_id, checksum_hex: &hex128(checksum) };
            event_json_write(&mut written, &fields);
            let expected = serde_json::to_vec(&event).expect("an event serialises");
            prop_assert_eq!(String::from_utf8(written).expect("UTF-8"), String::from_utf8(expected).expect("UTF-8"));
        }
    }

    #[test]
    fn decimals_and_hex_read_as_the_standard_library_writes_them() {
        let values =
            [0u128, 1, 9, 10, 99, u64::MAX as u128, u64::MAX as u128 + 1, 10u128.pow(19), 10u128.pow(38), u128::MAX];
        for value in values {
            let mut out = Vec::new();
            decimal128_put(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
            assert_eq!(String::from_utf8(hex128(value).to_vec()).unwrap(), format!("{value:032x}"));
        }
        let mut out = Vec::new();
        decimal_put(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }
}
