//! What one group of ops becomes in PostgreSQL, built on the follower's thread as binary `COPY`
//! streams (one per table), so that the async writer only moves bytes. Rows that are only ever
//! added (ops, accounts, account events, transfers, holds, ledger entries) are copied straight
//! into their tables, whose unique keys refuse a duplicate; only the two kinds of row that
//! *update* existing rows (account flags, hold resolutions) go through a staging table and an
//! `UPDATE … FROM`. A group is owned data: it outlives the follower's borrowed `Op`.
//!
//! From the change-data feed (`Change`, one per successful event and per expiry, with the
//! after-images of the accounts it touched as of that change):
//!
//! | change            | rows                                                                |
//! |-------------------|---------------------------------------------------------------------|
//! | account created   | `accounts`                                                          |
//! | closed, reopened, limits set | `account_events`; the account's flags updated            |
//! | transfer posted   | `transfers` ('posted'); a debit and a credit `ledger_entries` row   |
//!
//! (a `transfers` row carries the trace id the event was journaled with, NULL for none)
//! | hold placed       | `transfers` ('pending'); `holds`                                    |
//! | hold posted       | `transfers` ('posted'); the hold resolved; a debit and a credit entry |
//! | hold voided       | `transfers` ('voided'); the hold resolved                           |
//! | hold expired      | the hold resolved ('pending_expired')                               |
//!
//! and every op (checkpoints too) a `journal_ops` row with its chain checksum.

use crate::pgtypes::{i64_of, CopyBuffer};
use std::collections::{BTreeMap, BTreeSet};
use walletd_core::{Account, AccountLimits, Batch, Change, ChangeKind, TraceIds, Transfer, CHANGE_INDEX_EXPIRY};
use walletd_replay::{Op, Outcome, Position};

/// The `COPY` targets (a table and, where it has more columns than are copied, the column
/// list), and how many fields a row has. The real tables' columns are in their `CREATE TABLE`
/// order (migrations 0001 and 0002); the two `stage_*` tables are `history/sql/staging.sql`.
pub const COPY_OPS: (&str, i16) = ("journal_ops", 7);
pub const COPY_ACCOUNTS: (&str, i16) = ("accounts", 10);
pub const STAGE_ACCOUNT_UPDATES: (&str, i16) = ("stage_account_updates", 3);
pub const COPY_ACCOUNT_EVENTS: (&str, i16) = ("account_events", 13);
pub const COPY_TRANSFERS: (&str, i16) = ("transfers", 16);
pub const COPY_HOLDS: (&str, i16) =
    ("holds (id, debit_account_id, credit_account_id, amount, ledger, timestamp_ns, timeout_s, op, status)", 9);
pub const STAGE_RESOLUTIONS: (&str, i16) = ("stage_resolutions", 6);
/// Entries go to the month's partition when a group has one month (the usual case: no
/// routing per row), else to `ledger_entries`, which routes them.
pub const COPY_ENTRIES: (&str, i16) = ("ledger_entries", 13);

/// One group of consecutive ops, ready to write in one transaction.
#[derive(Debug)]
pub struct Group {
    /// The position the database must be at for this group to apply (the op before the first).
    pub after: Position,
    /// The position the group leaves the database at.
    pub position: Position,
    pub timestamp_ns: u64,
    pub ops_count: u64,
    pub transfers_count: u64,
    pub entries_count: u64,
    /// UTC months (months since 1970-01) that entries fall in: their partitions must exist.
    pub months: BTreeSet<i64>,
    /// Each table's rows but the entries, in the order they are loaded (a table before the
    /// rows that refer to it).
    pub stages: Vec<Stage>,
    /// The entries in key order, cut into `entry_parts` contiguous key ranges (one per writer
    /// session that copies entries; some may be empty).
    pub entry_stages: Vec<Stage>,
}

/// One table's rows as a binary `COPY` stream (cheap to clone for a retry).
#[derive(Clone, Debug)]
pub struct Stage {
    /// The `COPY` target: a table, a column list where not every column is copied.
    pub table: &'static str,
    pub rows_count: u64,
    pub bytes: bytes::Bytes,
}

/// The rows of a group being built, one buffer per staging table.
struct Buffers {
    ops: CopyBuffer,
    accounts: CopyBuffer,
    account_updates: CopyBuffer,
    account_events: CopyBuffer,
    transfers: CopyBuffer,
    holds: CopyBuffer,
    resolutions: CopyBuffer,
    /// Encoded at `finish`, sorted by the key `(account_id, timestamp_ns)`.
    entries: Vec<EntryRow>,
}

/// One side of a posted movement, kept until the group is finished so that the entries can be
/// copied in key order: each index page is then visited once per group, in order, instead of
/// at random (docs/BENCHMARKS.md).
#[derive(Debug)]
struct EntryRow {
    account_id: u128,
    timestamp_ns: u64,
    op: u64,
    change_index: u32,
    side: u8,
    transfer_id: u128,
    counterparty_id: u128,
    ledger: u32,
    amount: u128,
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

/// Builds a group op by op.
pub struct GroupBuilder {
    group: Group,
    buffers: Buffers,
    /// The latest flags of each account changed in this group (after its creation), and the op.
    account_flags: BTreeMap<u128, (u16, u64)>,
}

impl GroupBuilder {
    pub fn new(after: Position) -> GroupBuilder {
        let group = Group {
            after,
            position: after,
            timestamp_ns: 0,
            ops_count: 0,
            transfers_count: 0,
            entries_count: 0,
            months: BTreeSet::new(),
            stages: Vec::new(),
            entry_stages: Vec::new(),
        };
        let buffers = Buffers {
            ops: CopyBuffer::new(COPY_OPS.1),
            accounts: CopyBuffer::new(COPY_ACCOUNTS.1),
            account_updates: CopyBuffer::new(STAGE_ACCOUNT_UPDATES.1),
            account_events: CopyBuffer::new(COPY_ACCOUNT_EVENTS.1),
            transfers: CopyBuffer::new(COPY_TRANSFERS.1),
            holds: CopyBuffer::new(COPY_HOLDS.1),
            resolutions: CopyBuffer::new(STAGE_RESOLUTIONS.1),
            entries: Vec::new(),
        };
        GroupBuilder { group, buffers, account_flags: BTreeMap::new() }
    }

    pub fn ops_count(&self) -> u64 {
        self.group.ops_count
    }

    /// Rows staged so far (a measure of the transaction's size).
    pub fn rows_count(&self) -> u64 {
        self.group.entries_count + self.group.transfers_count + self.group.ops_count
    }

    /// Adds the next op, which must follow the group's last.
    pub fn op_add(&mut self, op: &Op<'_>) {
        assert_eq!(op.op, self.group.position.op + 1, "a group holds consecutive ops");
        assert!(op.timestamp_ns >= self.group.timestamp_ns, "ops in time order");
        let (kind, events_count, failed_count, changes_count) = match op.outcome {
            Outcome::Command { batch, output, trace_ids } => {
                for change in &output.changes {
                    self.change_add(op.op, batch, trace_ids, change);
                }
                (batch_kind(&batch), batch.len(), output.results.len(), output.changes.len())
            }
            Outcome::Checkpoint(_) => ("checkpoint", 0, 0, 0),
        };
        let ops = &mut self.buffers.ops;
        ops.row_begin();
        ops.i64(i64_of(op.op));
        ops.i64(i64_of(op.timestamp_ns));
        ops.uuid(op.checksum);
        ops.text(kind);
        ops.i32(events_count as i32);
        ops.i32(failed_count as i32);
        ops.i32(changes_count as i32);
        self.group.position = op.position();
        self.group.timestamp_ns = op.timestamp_ns;
        self.group.ops_count += 1;
    }

    fn change_add(&mut self, op: u64, batch: Batch<'_>, trace_ids: TraceIds<'_>, change: &Change) {
        // An expiry is no event of the batch: it has no trace.
        let trace_id = if change.index == CHANGE_INDEX_EXPIRY { 0 } else { trace_ids.get(change.index as usize) };
        match change.kind {
            ChangeKind::AccountCreated => account_row(&mut self.buffers.accounts, &change.debit_account, op),
            ChangeKind::AccountClosed | ChangeKind::AccountReopened | ChangeKind::AccountLimitsSet => {
                let limits = match batch {
                    Batch::SetAccountLimits(events) => Some(&events[change.index as usize]),
                    _ => None,
                };
                account_event_row(&mut self.buffers.account_events, op, change, limits);
                self.account_flags.insert(change.debit_account.id.0, (change.debit_account.flags.0, op));
            }
            ChangeKind::TransferPosted => {
                self.transfer_row(op, &change.transfer, "posted", trace_id);
                self.entries_add(op, change);
            }
            ChangeKind::HoldPlaced => {
                self.transfer_row(op, &change.transfer, "pending", trace_id);
                hold_row(&mut self.buffers.holds, op, &change.transfer);
            }
            ChangeKind::HoldPosted => {
                self.transfer_row(op, &change.transfer, "posted", trace_id);
                self.resolution_row(op, change, "pending_posted");
                self.entries_add(op, change);
            }
            ChangeKind::HoldVoided => {
                self.transfer_row(op, &change.transfer, "voided", trace_id);
                self.resolution_row(op, change, "pending_voided");
            }
            ChangeKind::HoldExpired => self.resolution_row(op, change, "pending_expired"),
        }
    }

    fn transfer_row(&mut self, op: u64, transfer: &Transfer, status: &str, trace_id: u128) {
        let rows = &mut self.buffers.transfers;
        rows.row_begin();
        rows.uuid(transfer.id.0);
        rows.uuid(transfer.debit_account_id.0);
        rows.uuid(transfer.credit_account_id.0);
        rows.numeric(transfer.amount.0);
        rows.uuid_or_null(transfer.pending_id.0);
        rows.uuid(transfer.user_data_128);
        rows.numeric(u128::from(transfer.user_data_64));
        rows.i64(i64::from(transfer.user_data_32));
        rows.i64(i64::from(transfer.timeout_s));
        rows.i64(i64::from(transfer.ledger));
        rows.i32(i32::from(transfer.code));
        rows.i32(i32::from(transfer.flags.0));
        rows.i64(i64_of(transfer.timestamp));
        rows.i64(i64_of(op));
        rows.text(status);
        rows.uuid_or_null(trace_id);
        self.group.transfers_count += 1;
    }

    /// A hold resolved: by a post or void (`change.transfer` is the resolving transfer) or by
    /// expiry (`change.transfer` is the hold itself).
    fn resolution_row(&mut self, op: u64, change: &Change, status: &str) {
        let rows = &mut self.buffers.resolutions;
        rows.row_begin();
        if change.kind == ChangeKind::HoldExpired {
            assert_eq!(change.index, CHANGE_INDEX_EXPIRY);
            rows.uuid(change.transfer.id.0);
            rows.text(status);
            rows.null();
            rows.null();
        } else {
            assert!(change.transfer.pending_id.0 != 0, "a post or void names its hold");
            rows.uuid(change.transfer.pending_id.0);
            rows.text(status);
            rows.uuid(change.transfer.id.0);
            rows.numeric(change.transfer.amount.0);
        }
        rows.i64(i64_of(change.timestamp_ns));
        rows.i64(i64_of(op));
    }

    /// The double entry of a posted movement: a debit row and a credit row, same amount.
    fn entries_add(&mut self, op: u64, change: &Change) {
        let transfer = &change.transfer;
        assert_eq!(change.debit_account.id, transfer.debit_account_id);
        assert_eq!(change.credit_account.id, transfer.credit_account_id);
        let sides = [
            (b'D', &change.debit_account, transfer.credit_account_id.0),
            (b'C', &change.credit_account, transfer.debit_account_id.0),
        ];
        for (side, account, counterparty_id) in sides {
            self.buffers.entries.push(EntryRow {
                account_id: account.id.0,
                timestamp_ns: change.timestamp_ns,
                op,
                change_index: change.index,
                side,
                transfer_id: transfer.id.0,
                counterparty_id,
                ledger: transfer.ledger,
                amount: transfer.amount.0,
                debits_pending: account.debits_pending.0,
                debits_posted: account.debits_posted.0,
                credits_pending: account.credits_pending.0,
                credits_posted: account.credits_posted.0,
            });
        }
        self.group.entries_count += 2;
        self.group.months.insert(month_index(change.timestamp_ns));
    }

    /// The group, its entries cut into `entry_parts` (at least 1) key ranges.
    pub fn finish(mut self, entry_parts: usize) -> Group {
        assert!(entry_parts >= 1, "entries go to at least one session");
        for (id, (flags, op)) in &self.account_flags {
            let rows = &mut self.buffers.account_updates;
            rows.row_begin();
            rows.uuid(*id);
            rows.i32(i32::from(*flags));
            rows.i64(i64_of(*op));
        }
        let Buffers { ops, accounts, account_updates, account_events, transfers, holds, resolutions, entries } =
            self.buffers;
        let entry_stages = entries_encode(entries, entry_parts);
        assert_eq!(entry_stages.len(), entry_parts);
        let encoded: u64 = entry_stages.iter().map(|stage| stage.rows_count).sum();
        assert_eq!(encoded, self.group.entries_count, "every entry encoded");
        self.group.entry_stages = entry_stages;
        let tables = [
            (COPY_OPS.0, ops),
            (COPY_ACCOUNTS.0, accounts),
            (COPY_ACCOUNT_EVENTS.0, account_events),
            (STAGE_ACCOUNT_UPDATES.0, account_updates),
            (COPY_TRANSFERS.0, transfers),
            (COPY_HOLDS.0, holds),
            (STAGE_RESOLUTIONS.0, resolutions),
        ];
        for (table, buffer) in tables {
            let rows_count = buffer.rows_count() as u64;
            self.group.stages.push(Stage { table, rows_count, bytes: buffer.finish() });
        }
        self.group
    }
}

/// The group's entries as `parts` `COPY` streams in key order, each a contiguous key range of
/// about the same number of rows (so that sessions copying them side by side descend disjoint
/// parts of the key's B-tree). The key is unique (an account has at most one entry per engine
/// timestamp), so the order is total and the sort deterministic.
fn entries_encode(mut entries: Vec<EntryRow>, parts: usize) -> Vec<Stage> {
    assert!(parts >= 1);
    entries.sort_unstable_by_key(|entry| (entry.account_id, entry.timestamp_ns));
    let part_rows = entries.len().div_ceil(parts).max(1);
    let mut stages: Vec<Stage> = entries.chunks(part_rows).map(entries_encode_part).collect();
    stages.resize_with(parts, || entries_encode_part(&[]));
    stages
}

fn entries_encode_part(entries: &[EntryRow]) -> Stage {
    let mut rows = CopyBuffer::new(COPY_ENTRIES.1);
    for entry in entries {
        rows.row_begin();
        rows.uuid(entry.account_id);
        rows.i64(i64_of(entry.timestamp_ns));
        rows.i64(i64_of(entry.op));
        rows.i32(entry.change_index as i32);
        rows.char(entry.side);
        rows.uuid(entry.transfer_id);
        rows.uuid(entry.counterparty_id);
        rows.i64(i64::from(entry.ledger));
        rows.numeric(entry.amount);
        rows.numeric(entry.debits_pending);
        rows.numeric(entry.debits_posted);
        rows.numeric(entry.credits_pending);
        rows.numeric(entry.credits_posted);
    }
    let rows_count = rows.rows_count() as u64;
    assert_eq!(rows_count, entries.len() as u64);
    Stage { table: COPY_ENTRIES.0, rows_count, bytes: rows.finish() }
}

fn batch_kind(batch: &Batch<'_>) -> &'static str {
    match batch {
        Batch::Pulse => "pulse",
        Batch::CreateAccounts(_) => "create_accounts",
        Batch::CreateTransfers(_) => "create_transfers",
        Batch::CloseAccounts(_) => "close_accounts",
        Batch::ReopenAccounts(_) => "reopen_accounts",
        Batch::SetAccountLimits(_) => "set_account_limits",
    }
}

fn account_row(rows: &mut CopyBuffer, account: &Account, op: u64) {
    rows.row_begin();
    rows.uuid(account.id.0);
    rows.i64(i64::from(account.ledger));
    rows.i32(i32::from(account.code));
    rows.i32(i32::from(account.flags.0));
    rows.uuid(account.user_data_128);
    rows.numeric(u128::from(account.user_data_64));
    rows.i64(i64::from(account.user_data_32));
    rows.i64(i64_of(account.timestamp));
    rows.i64(i64_of(op));
    rows.i64(i64_of(op));
}

fn account_event_row(rows: &mut CopyBuffer, op: u64, change: &Change, limits: Option<&AccountLimits>) {
    rows.row_begin();
    rows.i64(i64_of(op));
    rows.i32(change.index as i32);
    rows.uuid(change.debit_account.id.0);
    rows.text(change.kind.name());
    rows.i64(i64_of(change.timestamp_ns));
    rows.i32(i32::from(change.debit_account.flags.0));
    match limits {
        Some(limits) => {
            rows.i64(i64::from(limits.flags.0));
            rows.numeric(limits.overdraft_max.0);
            rows.numeric(limits.balance_max.0);
            rows.numeric(limits.daily_debit_amount_max.0);
            rows.numeric(limits.monthly_debit_amount_max.0);
            rows.i64(i64::from(limits.daily_debit_count_max));
            rows.i64(i64::from(limits.monthly_debit_count_max));
        }
        None => (0..7).for_each(|_| rows.null()),
    }
}

fn hold_row(rows: &mut CopyBuffer, op: u64, hold: &Transfer) {
    rows.row_begin();
    rows.uuid(hold.id.0);
    rows.uuid(hold.debit_account_id.0);
    rows.uuid(hold.credit_account_id.0);
    rows.numeric(hold.amount.0);
    rows.i64(i64::from(hold.ledger));
    rows.i64(i64_of(hold.timestamp));
    rows.i64(i64::from(hold.timeout_s));
    rows.i64(i64_of(op));
    rows.text("pending");
}

// ----- months, for the partitions of ledger_entries -----

pub const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Months since 1970-01 of a UTC timestamp.
pub fn month_index(timestamp_ns: u64) -> i64 {
    let (year, month, _) = civil_from_days(i64_of(timestamp_ns).div_euclid(NS_PER_DAY));
    (year - 1970) * 12 + (month as i64 - 1)
}

/// The month's partition: its table name and its bounds `[from, to)` in nanoseconds.
pub fn month_partition(month_index: i64) -> (String, i64, i64) {
    let (year, month) = (1970 + month_index.div_euclid(12), month_index.rem_euclid(12) as u32 + 1);
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let from = days_from_civil(year, month, 1) * NS_PER_DAY;
    let to = days_from_civil(next_year, next_month, 1) * NS_PER_DAY;
    (format!("ledger_entries_y{year:04}m{month:02}"), from, to)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month as i64 + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(account_id: u128, timestamp_ns: u64) -> EntryRow {
        EntryRow {
            account_id,
            timestamp_ns,
            op: 1,
            change_index: 0,
            side: b'D',
            transfer_id: 7,
            counterparty_id: 9,
            ledger: 1,
            amount: 15,
            debits_pending: 0,
            debits_posted: 15,
            credits_pending: 0,
            credits_posted: 0,
        }
    }

    /// The `(account_id, timestamp_ns)` of each row of a binary `COPY` stream of entries.
    fn keys_of(stream: &[u8]) -> Vec<(u128, u64)> {
        let mut keys = Vec::new();
        let mut at = 19; // signature (11), flags (4), header extension length (4)
        loop {
            let fields = i16::from_be_bytes([stream[at], stream[at + 1]]);
            at += 2;
            if fields == -1 {
                assert_eq!(at, stream.len(), "the trailer ends the stream");
                return keys;
            }
            assert_eq!(fields, COPY_ENTRIES.1);
            let mut values = Vec::new();
            for _ in 0..fields {
                let size = i32::from_be_bytes(stream[at..at + 4].try_into().unwrap());
                at += 4;
                values.push(&stream[at..at + size.max(0) as usize]);
                at += size.max(0) as usize;
            }
            let account_id = u128::from_be_bytes(values[0].try_into().unwrap());
            let timestamp_ns = i64::from_be_bytes(values[1].try_into().unwrap());
            keys.push((account_id, timestamp_ns as u64));
        }
    }

    #[test]
    fn entries_are_copied_in_key_order() {
        let arrival = || vec![entry(3, 10), entry(1, 30), entry(3, 5), entry(2, 20), entry(1, 10)];
        let encoded = entries_encode(arrival(), 1);
        assert_eq!(encoded.len(), 1);
        assert_eq!(encoded[0].rows_count, 5);
        let keys = keys_of(&encoded[0].bytes);
        assert_eq!(keys, [(1, 10), (1, 30), (2, 20), (3, 5), (3, 10)]);
        // Cut into key ranges for sessions side by side: contiguous, in order, none lost.
        let parts = entries_encode(arrival(), 2);
        assert_eq!(parts.iter().map(|part| part.rows_count).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(keys_of(&parts[0].bytes), [(1, 10), (1, 30), (2, 20)]);
        assert_eq!(keys_of(&parts[1].bytes), [(3, 5), (3, 10)]);
        let parts = entries_encode(arrival(), 7);
        assert_eq!(parts.len(), 7);
        assert_eq!(parts.iter().map(|part| part.rows_count).sum::<u64>(), 5);
        assert!(keys_of(&parts[6].bytes).is_empty(), "an empty part is a valid stream");
    }

    #[test]
    fn months_and_their_partitions() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        for days in (-1000..40_000).step_by(7) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        // 2026-12-01T00:00:00Z and one nanosecond before it.
        let december = days_from_civil(2026, 12, 1) * NS_PER_DAY;
        assert_eq!(month_index(december as u64), (2026 - 1970) * 12 + 11);
        assert_eq!(month_index(december as u64 - 1), (2026 - 1970) * 12 + 10);
        let (name, from, to) = month_partition(month_index(december as u64));
        assert_eq!(name, "ledger_entries_y2026m12");
        assert_eq!(from, december);
        assert_eq!(to, days_from_civil(2027, 1, 1) * NS_PER_DAY);
        assert_eq!(month_partition(month_index(december as u64 - 1)).2, december);
    }
}
