//! The ledger's state as bytes, for snapshots: `image_write` emits it as a deterministic
//! stream of sections; `image_read` rebuilds a ledger from it, rebuilding the indexes, checks
//! that the sections agree with each other and with the rules the ledger enforces, and proves
//! the result by recomputing the state hash and comparing it with the one recorded. The bytes
//! may pass their file's checksum and still be wrong (a buggy or hostile writer), so every
//! check is an `ImageError`, never a panic: a caller falls back to an older snapshot. The state
//! hash is not a MAC and does not cover what can be derived (a hold's expiry and ring position,
//! a limits entry's account slot), so the checks come first and stand on their own.
//! No I/O: the caller owns the sink and the bytes (a snapshot file, read into memory).
//!
//! ```text
//! header (128 bytes)
//! offset size field
//!      0    8 magic "WDLEDGER"
//!      8    4 version (1)
//!     12    4 reserved (zero)
//!     16    4 accounts_max          20 4 transfers_max      24 4 pending_max
//!     28    4 limits_max            32 4 ledgers_max        36 4 batch_events_max
//!     40    8 id_future_ms_max      48 8 hash_seed
//!     56    8 ring_head (oldest remembered transfer's position)
//!     64    8 ring_tail (transfers ever created)
//!     72    8 horizon_ms            80 8 timestamp_last
//!     88    4 accounts_count        92 4 pending_count     96 4 limits_count
//!    100    4 ledgers_count
//!    104   16 state_hash
//!    120    8 reserved (zero)
//! sections, in this order
//!   accounts  accounts_count × 128 (Account)
//!   ring      (ring_tail − ring_head) × 128 (Transfer), oldest first
//!   statuses  (ring_tail − ring_head) × 1 (TransferStatus), zero-padded to a multiple of 8
//!   pending   pending_count × 144: Transfer (128), expires_at_ns (8), ring_position (8),
//!             in the order the holds were created
//!   limits    limits_count × 192: AccountLimits (128), DebitUsage (48: day u32, day_count u32,
//!             month u32, month_count u32, day_amount u128, month_amount u128),
//!             account_slot u32, 12 zero bytes
//!   ledgers   ledgers_count × 80: ledger u32, 12 zero bytes, debits_pending, debits_posted,
//!             credits_pending, credits_posted (u128 each)
//! ```

use crate::config::{Config, CONFIG_SIZE_BYTES};
use crate::ledger::{Ledger, LedgerTotals, LimitsEntry, Line};
use crate::output::DebitUsage;
use crate::pending::NONE;
use crate::types::{
    record_from_bytes, Account, AccountFlags, AccountLimits, Amount, LimitFlags, Transfer, TransferFlags,
    TransferStatus, Words,
};

pub const IMAGE_MAGIC: [u8; 8] = *b"WDLEDGER";
pub const IMAGE_VERSION: u32 = 1;
pub const IMAGE_HEADER_SIZE_BYTES: usize = 128;
const PENDING_SIZE_BYTES: usize = 144;
const LIMITS_SIZE_BYTES: usize = 192;
const LEDGER_SIZE_BYTES: usize = 80;

/// Why bytes are not a ledger image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    BadMagic,
    UnsupportedVersion {
        version: u32,
    },
    BadConfig(&'static str),
    /// A count exceeds the capacity the config gives.
    OverCapacity {
        what: &'static str,
        count: u64,
        capacity: u64,
    },
    /// The bytes end before the sections the header announces.
    Truncated {
        size_bytes: usize,
        expected_bytes: usize,
    },
    BadStatus {
        value: u8,
    },
    /// A hold or limit names an account that is not in the image.
    MissingAccount {
        id: u128,
    },
    /// Well-formed bytes whose contents contradict each other or the ledger's rules: entry
    /// `index` (from 0) of `section` (or the header) is wrong for `reason`. A correct writer
    /// never produces this; loading such an image would break an invariant later.
    Inconsistent {
        section: &'static str,
        index: u64,
        reason: &'static str,
    },
    /// The rebuilt state does not hash to the recorded state hash.
    StateHashMismatch {
        recorded: u128,
        computed: u128,
    },
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::BadMagic => write!(f, "not a ledger image (bad magic)"),
            ImageError::UnsupportedVersion { version } => write!(f, "ledger image version {version} is not supported"),
            ImageError::BadConfig(reason) => write!(f, "ledger image carries an invalid config: {reason}"),
            ImageError::OverCapacity { what, count, capacity } => {
                write!(f, "ledger image has {count} {what}, over the config's capacity of {capacity}")
            }
            ImageError::Truncated { size_bytes, expected_bytes } => {
                write!(f, "ledger image is {size_bytes} bytes; its header announces {expected_bytes}")
            }
            ImageError::BadStatus { value } => write!(f, "ledger image has an unknown transfer status {value}"),
            ImageError::MissingAccount { id } => write!(f, "ledger image names account {id:#x} that it does not hold"),
            ImageError::Inconsistent { section: "header", reason, .. } => {
                write!(f, "ledger image is inconsistent: header: {reason}")
            }
            ImageError::Inconsistent { section, index, reason } => {
                write!(f, "ledger image is inconsistent: {section} entry {index} (from 0): {reason}")
            }
            ImageError::StateHashMismatch { recorded, computed } => {
                write!(f, "ledger image state hash mismatch: recorded {recorded:032x}, rebuilt state hashes to {computed:032x}")
            }
        }
    }
}

impl std::error::Error for ImageError {}

/// The numbers in an image's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub config: Config,
    pub ring_head: u64,
    pub ring_tail: u64,
    pub horizon_ms: u64,
    pub timestamp_last: u64,
    pub accounts_count: u32,
    pub pending_count: u32,
    pub limits_count: u32,
    pub ledgers_count: u32,
    pub state_hash: u128,
}

impl ImageHeader {
    fn ring_count(&self) -> usize {
        (self.ring_tail - self.ring_head) as usize
    }

    /// Total bytes of the image this header announces.
    pub fn image_size_bytes(&self) -> usize {
        IMAGE_HEADER_SIZE_BYTES
            + self.accounts_count as usize * 128
            + self.ring_count() * 128
            + self.ring_count().next_multiple_of(8)
            + self.pending_count as usize * PENDING_SIZE_BYTES
            + self.limits_count as usize * LIMITS_SIZE_BYTES
            + self.ledgers_count as usize * LEDGER_SIZE_BYTES
    }

    fn encode(&self) -> [u8; IMAGE_HEADER_SIZE_BYTES] {
        let mut bytes = [0u8; IMAGE_HEADER_SIZE_BYTES];
        bytes[0..8].copy_from_slice(&IMAGE_MAGIC);
        bytes[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
        bytes[16..56].copy_from_slice(&self.config.encode());
        let words64 = [self.ring_head, self.ring_tail, self.horizon_ms, self.timestamp_last];
        for (index, value) in words64.iter().enumerate() {
            bytes[56 + index * 8..64 + index * 8].copy_from_slice(&value.to_le_bytes());
        }
        let counts = [self.accounts_count, self.pending_count, self.limits_count, self.ledgers_count];
        for (index, value) in counts.iter().enumerate() {
            bytes[88 + index * 4..92 + index * 4].copy_from_slice(&value.to_le_bytes());
        }
        bytes[104..120].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes
    }

    /// Decodes and checks a header (not the sections).
    pub fn decode(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
        if bytes.len() < IMAGE_HEADER_SIZE_BYTES {
            return Err(ImageError::Truncated { size_bytes: bytes.len(), expected_bytes: IMAGE_HEADER_SIZE_BYTES });
        }
        if bytes[0..8] != IMAGE_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let u32_at = |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        let u64_at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        if u32_at(8) != IMAGE_VERSION {
            return Err(ImageError::UnsupportedVersion { version: u32_at(8) });
        }
        let config_bytes: &[u8; CONFIG_SIZE_BYTES] = bytes[16..56].try_into().expect("40 bytes");
        let config = Config::decode(config_bytes).map_err(|error| ImageError::BadConfig(error.0))?;
        let header = ImageHeader {
            config,
            ring_head: u64_at(56),
            ring_tail: u64_at(64),
            horizon_ms: u64_at(72),
            timestamp_last: u64_at(80),
            accounts_count: u32_at(88),
            pending_count: u32_at(92),
            limits_count: u32_at(96),
            ledgers_count: u32_at(100),
            state_hash: u128::from_le_bytes(bytes[104..120].try_into().expect("16 bytes")),
        };
        if bytes[12..16] != [0; 4] || bytes[120..128] != [0; 8] {
            return Err(inconsistent("header", 0, "reserved bytes are not zero"));
        }
        header.check_capacity()?;
        header.check_scalars()?;
        Ok(header)
    }

    fn check_capacity(&self) -> Result<(), ImageError> {
        let c = &self.config;
        let checks = [
            ("accounts", u64::from(self.accounts_count), u64::from(c.accounts_max)),
            // Between batches the ring may hold a batch beyond the window: eviction runs first
            // thing in the next batch.
            ("remembered transfers", self.ring_tail.saturating_sub(self.ring_head), u64::from(c.transfer_ring_size())),
            ("pending transfers", u64::from(self.pending_count), u64::from(c.pending_max)),
            ("limits", u64::from(self.limits_count), u64::from(c.limits_max)),
            ("ledgers", u64::from(self.ledgers_count), u64::from(c.ledgers_max)),
        ];
        if self.ring_tail < self.ring_head {
            return Err(inconsistent("header", 0, "ring_tail is before ring_head"));
        }
        match checks.iter().find(|(_, count, capacity)| count > capacity) {
            Some((what, count, capacity)) => Err(ImageError::OverCapacity { what, count: *count, capacity: *capacity }),
            None => Ok(()),
        }
    }

    /// The clock and the ring's positions leave room to go on: the next batch's timestamps
    /// and positions must not overflow (`apply` would panic on them).
    fn check_scalars(&self) -> Result<(), ImageError> {
        if self.timestamp_last >= u64::MAX - u64::from(self.config.batch_events_max) {
            return Err(inconsistent("header", 0, "timestamp_last leaves no room for another batch"));
        }
        if self.ring_tail > RING_POSITION_MAX {
            return Err(inconsistent("header", 0, "ring_tail is beyond 2^63 transfers"));
        }
        Ok(())
    }
}

/// Transfers ever created stay below this, so ring positions cannot overflow (2^63 is
/// ~29,000 years at 10 M transfers/s).
const RING_POSITION_MAX: u64 = 1 << 63;
const NS_PER_S: u64 = 1_000_000_000;

fn inconsistent(section: &'static str, index: usize, reason: &'static str) -> ImageError {
    ImageError::Inconsistent { section, index: index as u64, reason }
}

fn words_bytes(words: &[u64; 16]) -> [u8; 128] {
    let mut bytes = [0u8; 128];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

fn usage_bytes(usage: &DebitUsage) -> [u8; 48] {
    let mut bytes = [0u8; 48];
    bytes[0..4].copy_from_slice(&usage.day.to_le_bytes());
    bytes[4..8].copy_from_slice(&usage.day_count.to_le_bytes());
    bytes[8..12].copy_from_slice(&usage.month.to_le_bytes());
    bytes[12..16].copy_from_slice(&usage.month_count.to_le_bytes());
    bytes[16..32].copy_from_slice(&usage.day_amount.0.to_le_bytes());
    bytes[32..48].copy_from_slice(&usage.month_amount.0.to_le_bytes());
    bytes
}

fn usage_read(bytes: &[u8]) -> DebitUsage {
    let u32_at = |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
    let u128_at = |offset: usize| u128::from_le_bytes(bytes[offset..offset + 16].try_into().expect("16 bytes"));
    DebitUsage {
        day: u32_at(0),
        day_count: u32_at(4),
        month: u32_at(8),
        month_count: u32_at(12),
        day_amount: Amount(u128_at(16)),
        month_amount: Amount(u128_at(32)),
    }
}

impl Ledger {
    /// The header this ledger's image would carry.
    pub fn image_header(&self) -> ImageHeader {
        ImageHeader {
            config: self.config,
            ring_head: self.ring_head,
            ring_tail: self.ring_tail,
            horizon_ms: self.horizon_ms,
            timestamp_last: self.timestamp_last,
            accounts_count: self.accounts_count(),
            pending_count: self.pending_count(),
            limits_count: self.limits.len() as u32,
            ledgers_count: self.ledgers.len() as u32,
            state_hash: self.state_hash(),
        }
    }

    /// Writes the whole state to `sink`, section by section. Allocates (it sorts the holds):
    /// call it off the apply path, on a snapshot replica.
    pub fn image_write(&self, sink: &mut dyn FnMut(&[u8])) {
        assert!(self.chain.is_none(), "an image is taken between batches");
        let header = self.image_header();
        sink(&header.encode());
        for line in &self.accounts {
            sink(&words_bytes(&line.0.words()));
        }
        for position in self.ring_head..self.ring_tail {
            sink(&words_bytes(&self.ring[self.ring_slot(position)].0.words()));
        }
        let statuses: Vec<u8> =
            (self.ring_head..self.ring_tail).map(|p| self.ring_status[self.ring_slot(p)] as u8).collect();
        sink(&statuses);
        sink(&vec![0u8; statuses.len().next_multiple_of(8) - statuses.len()]);
        let mut holds: Vec<u32> = self.pending.slots().collect();
        holds.sort_by_key(|slot| self.pending.entries[*slot as usize].transfer.timestamp);
        for slot in holds {
            let entry = &self.pending.entries[slot as usize];
            sink(&words_bytes(&entry.transfer.words()));
            sink(&entry.expires_at_ns.to_le_bytes());
            sink(&entry.ring_position.to_le_bytes());
        }
        for entry in &self.limits {
            sink(&words_bytes(&entry.limits.words()));
            sink(&usage_bytes(&entry.usage));
            sink(&entry.account_slot.to_le_bytes());
            sink(&[0u8; 12]);
        }
        for totals in &self.ledgers {
            sink(&totals.ledger.to_le_bytes());
            sink(&[0u8; 12]);
            for value in [totals.debits_pending, totals.debits_posted, totals.credits_pending, totals.credits_posted] {
                sink(&value.to_le_bytes());
            }
        }
    }

    /// Rebuilds a ledger from an image and checks it: every count within capacity, every
    /// record within the rules the ledger enforces when it stores one, the sections consistent
    /// with each other (ids unique, holds on their remembered transfers and accounts, pending
    /// balances the sums of the holds, totals the sums of the balances, limits where the flags
    /// say), and the recomputed state hash equal to the recorded one. Any failure is an error,
    /// never a panic: the bytes may come from a damaged or hostile file whose checksum holds.
    pub fn image_read(bytes: &[u8]) -> Result<Ledger, ImageError> {
        let header = ImageHeader::decode(bytes)?;
        let expected_bytes = header.image_size_bytes();
        if bytes.len() != expected_bytes {
            return Err(ImageError::Truncated { size_bytes: bytes.len(), expected_bytes });
        }
        let mut ledger = Ledger::new(header.config).map_err(|error| ImageError::BadConfig(error.0))?;
        let mut offset = IMAGE_HEADER_SIZE_BYTES;
        let mut take = |size: usize| {
            let section = &bytes[offset..offset + size];
            offset += size;
            section
        };
        let accounts = take(header.accounts_count as usize * 128);
        let ring = take(header.ring_count() * 128);
        let statuses = take(header.ring_count().next_multiple_of(8));
        let pending = take(header.pending_count as usize * PENDING_SIZE_BYTES);
        let limits = take(header.limits_count as usize * LIMITS_SIZE_BYTES);
        let ledgers = take(header.ledgers_count as usize * LEDGER_SIZE_BYTES);
        ledger.horizon_ms = header.horizon_ms;
        ledger.timestamp_last = header.timestamp_last;
        ledger.image_accounts(accounts)?;
        ledger.image_ledgers(ledgers)?;
        ledger.image_ring(&header, ring, statuses)?;
        ledger.image_pending(pending)?;
        ledger.image_limits(limits)?;
        ledger.image_check_accounts()?;
        ledger.image_check_totals()?;
        ledger.image_check_ring_holds()?;
        let sums = ledger.hash_sums_compute();
        (ledger.hash_sum, ledger.balance_sums) = (sums.records, sums.balances);
        let computed = ledger.state_hash();
        if computed != header.state_hash {
            return Err(ImageError::StateHashMismatch { recorded: header.state_hash, computed });
        }
        Ok(ledger)
    }

    fn image_accounts(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let mut timestamp_previous = 0;
        for (index, chunk) in bytes.chunks_exact(128).enumerate() {
            let account: Account = record_from_bytes(chunk);
            let fail = |reason| Err(inconsistent("accounts", index, reason));
            if let Some(reason) = account_rules_broken(&account) {
                return fail(reason);
            }
            if account.timestamp <= timestamp_previous || account.timestamp > self.timestamp_last {
                return fail("its timestamp is not after the previous account's and at or before timestamp_last");
            }
            timestamp_previous = account.timestamp;
            let tag = self.account_index.tag(account.id.0);
            if self.account_find(tag, account.id).is_some() {
                return fail("its id is an earlier account's");
            }
            let slot = self.accounts_count();
            self.accounts.push(Line(account));
            self.account_index.insert(tag, slot);
        }
        Ok(())
    }

    fn image_ledgers(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        for (index, chunk) in bytes.chunks_exact(LEDGER_SIZE_BYTES).enumerate() {
            let fail = |reason| Err(inconsistent("ledgers", index, reason));
            let u128_at = |offset: usize| u128::from_le_bytes(chunk[offset..offset + 16].try_into().expect("16 bytes"));
            let ledger = u32::from_le_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let totals = LedgerTotals {
                ledger,
                debits_pending: u128_at(16),
                debits_posted: u128_at(32),
                credits_pending: u128_at(48),
                credits_posted: u128_at(64),
            };
            if chunk[4..16] != [0; 12] {
                return fail("its padding is not zero");
            }
            if ledger == 0 {
                return fail("its code is zero");
            }
            if self.ledger_slot(ledger).is_some() {
                return fail("its code is an earlier entry's");
            }
            if totals.debits_pending != totals.credits_pending || totals.debits_posted != totals.credits_posted {
                return fail("its debits and credits differ");
            }
            let slot = self.ledger_slot_or_register(ledger).expect("a new code, and the count is within ledgers_max");
            self.ledgers[slot as usize] = totals;
        }
        Ok(())
    }

    fn image_ring(&mut self, header: &ImageHeader, ring: &[u8], statuses: &[u8]) -> Result<(), ImageError> {
        let count = header.ring_count();
        if let Some(padding) = statuses[count..].iter().position(|byte| *byte != 0) {
            return Err(inconsistent("statuses", count + padding, "a padding byte is not zero"));
        }
        self.ring_head = header.ring_head;
        self.ring_tail = header.ring_head;
        let mut timestamp_previous = 0;
        for (index, (chunk, status)) in ring.chunks_exact(128).zip(statuses).enumerate() {
            let fail = |reason| Err(inconsistent("ring", index, reason));
            let transfer: Transfer = record_from_bytes(chunk);
            let status = status_from_u8(*status)?;
            if let Some(reason) = transfer_rules_broken(&transfer, status) {
                return fail(reason);
            }
            if transfer.timestamp <= timestamp_previous || transfer.timestamp > self.timestamp_last {
                return fail("its timestamp is not after the previous transfer's and at or before timestamp_last");
            }
            timestamp_previous = transfer.timestamp;
            let tag = self.transfer_index.tag(transfer.id.0);
            if self.ring_find(tag, transfer.id).is_some() {
                return fail("its id is an earlier transfer's");
            }
            self.ring_push(tag, &transfer, transfer.timestamp, status);
        }
        assert_eq!(self.ring_tail, header.ring_tail);
        Ok(())
    }

    fn image_pending(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let mut timestamp_previous = 0;
        for (index, chunk) in bytes.chunks_exact(PENDING_SIZE_BYTES).enumerate() {
            let fail = |reason| Err(inconsistent("pending", index, reason));
            let transfer: Transfer = record_from_bytes(&chunk[..128]);
            let expires_at_ns = u64::from_le_bytes(chunk[128..136].try_into().expect("8 bytes"));
            let ring_position = u64::from_le_bytes(chunk[136..144].try_into().expect("8 bytes"));
            if !transfer.flags.contains(TransferFlags::PENDING) {
                return fail("it is not a pending transfer");
            }
            if let Some(reason) = transfer_rules_broken(&transfer, TransferStatus::Pending) {
                return fail(reason);
            }
            if transfer.timestamp <= timestamp_previous || transfer.timestamp > self.timestamp_last {
                return fail("its timestamp is not after the previous hold's and at or before timestamp_last");
            }
            timestamp_previous = transfer.timestamp;
            if self.pending.find(transfer.id.0).is_some() {
                return fail("its id is an earlier hold's");
            }
            let debit = self.image_account_slot(transfer.debit_account_id.0)?;
            let credit = self.image_account_slot(transfer.credit_account_id.0)?;
            if self.account(debit).ledger != transfer.ledger || self.account(credit).ledger != transfer.ledger {
                return fail("its accounts are not on its ledger");
            }
            if let Some(reason) = self.image_hold_broken(&transfer, expires_at_ns, ring_position) {
                return fail(reason);
            }
            self.pending.insert(&transfer, debit, credit, expires_at_ns, ring_position);
        }
        Ok(())
    }

    /// What is wrong with a hold's expiry or its place in the ring, if anything.
    fn image_hold_broken(&self, transfer: &Transfer, expires_at_ns: u64, ring_position: u64) -> Option<&'static str> {
        let expires_at_expected = match transfer.timeout_s {
            0 => Some(u64::MAX),
            timeout_s => transfer.timestamp.checked_add(u64::from(timeout_s) * NS_PER_S),
        };
        if expires_at_expected != Some(expires_at_ns) {
            return Some("its expiry is not its timestamp plus its timeout");
        }
        if expires_at_ns <= self.timestamp_last {
            return Some("it is still open at timestamp_last, after its expiry");
        }
        if ring_position >= self.ring_tail {
            return Some("its ring position is past the ring's tail");
        }
        if ring_position < self.ring_head {
            let remembered = self.ring_find(self.transfer_index.tag(transfer.id.0), transfer.id);
            return remembered.map(|_| "its transfer is remembered at another ring position");
        }
        let slot = self.ring_slot(ring_position);
        if self.ring[slot].0.id != transfer.id {
            return Some("its ring position holds another transfer");
        }
        if self.ring_status[slot] != TransferStatus::Pending {
            return Some("its remembered transfer is not pending");
        }
        if self.ring[slot].0 != *transfer {
            return Some("it differs from its remembered transfer");
        }
        None
    }

    fn image_limits(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        for (index, chunk) in bytes.chunks_exact(LIMITS_SIZE_BYTES).enumerate() {
            let fail = |reason| Err(inconsistent("limits", index, reason));
            let limits: AccountLimits = record_from_bytes(&chunk[..128]);
            let usage = usage_read(&chunk[128..176]);
            let account_slot_recorded = u32::from_le_bytes(chunk[176..180].try_into().expect("4 bytes"));
            if chunk[180..192] != [0; 12] {
                return fail("its padding is not zero");
            }
            if let Some(reason) = limits_rules_broken(&limits) {
                return fail(reason);
            }
            if limits.timestamp == 0 || limits.timestamp > self.timestamp_last {
                return fail("its timestamp is zero or after timestamp_last");
            }
            let account_slot = self.image_account_slot(limits.account_id.0)?;
            if account_slot != account_slot_recorded {
                return fail("its account slot is not its account's");
            }
            if self.account_limits[account_slot as usize] != NONE {
                return fail("its account has an earlier limits entry");
            }
            let slot = self.limits.len() as u32;
            self.limits.push(LimitsEntry { limits, usage, account_slot });
            self.account_limits[account_slot as usize] = slot;
        }
        Ok(())
    }

    /// Each account against the other sections: its ledger registered, its LIMITS flag set
    /// exactly when limits are in force, its pending balances the sums of its open holds.
    fn image_check_accounts(&self) -> Result<(), ImageError> {
        let accounts_count = self.accounts.len();
        let (mut holds_debit, mut holds_credit) =
            (vec![Some(0u128); accounts_count], vec![Some(0u128); accounts_count]);
        for slot in self.pending.slots() {
            let entry = &self.pending.entries[slot as usize];
            let amount = entry.transfer.amount.0;
            let debit = &mut holds_debit[entry.debit_slot as usize];
            *debit = debit.and_then(|sum| sum.checked_add(amount));
            let credit = &mut holds_credit[entry.credit_slot as usize];
            *credit = credit.and_then(|sum| sum.checked_add(amount));
        }
        for (index, line) in self.accounts.iter().enumerate() {
            let account = &line.0;
            let fail = |reason| Err(inconsistent("accounts", index, reason));
            if self.ledger_slot(account.ledger).is_none() {
                return fail("its ledger is not registered");
            }
            let limits_slot = self.account_limits[index];
            let limited = limits_slot != NONE && self.limits[limits_slot as usize].limits.flags.0 != 0;
            if account.flags.contains(AccountFlags::LIMITS) != limited {
                return fail("its LIMITS flag disagrees with its limits entry");
            }
            if holds_debit[index] != Some(account.debits_pending.0)
                || holds_credit[index] != Some(account.credits_pending.0)
            {
                return fail("its pending balances are not the sums of its open holds");
            }
        }
        Ok(())
    }

    /// Each ledger's running totals against the sums over its accounts (wrapping, as kept).
    fn image_check_totals(&self) -> Result<(), ImageError> {
        let mut sums: Vec<LedgerTotals> = self
            .ledgers
            .iter()
            .map(|totals| LedgerTotals { ledger: totals.ledger, ..LedgerTotals::default() })
            .collect();
        for line in &self.accounts {
            let account = &line.0;
            let slot = self.ledger_slot(account.ledger).expect("checked: every account's ledger is registered");
            let totals = &mut sums[slot as usize];
            totals.debits_pending = totals.debits_pending.wrapping_add(account.debits_pending.0);
            totals.debits_posted = totals.debits_posted.wrapping_add(account.debits_posted.0);
            totals.credits_pending = totals.credits_pending.wrapping_add(account.credits_pending.0);
            totals.credits_posted = totals.credits_posted.wrapping_add(account.credits_posted.0);
        }
        match self.ledgers.iter().zip(&sums).position(|(totals, sum)| totals != sum) {
            Some(index) => Err(inconsistent("ledgers", index, "its totals are not the sums over its accounts")),
            None => Ok(()),
        }
    }

    /// Every remembered transfer that is still pending has its hold open (the holds were
    /// checked to sit on their remembered transfers, so this makes the two agree both ways).
    fn image_check_ring_holds(&self) -> Result<(), ImageError> {
        for position in self.ring_head..self.ring_tail {
            let slot = self.ring_slot(position);
            if self.ring_status[slot] == TransferStatus::Pending && self.pending.find(self.ring[slot].0.id.0).is_none()
            {
                let index = (position - self.ring_head) as usize;
                return Err(inconsistent("ring", index, "it is pending but no hold is open for it"));
            }
        }
        Ok(())
    }

    fn image_account_slot(&self, id: u128) -> Result<u32, ImageError> {
        let found = self.account_find(self.account_index.tag(id), crate::types::AccountId(id));
        found.filter(|slot| *slot != NONE).ok_or(ImageError::MissingAccount { id })
    }
}

/// The rule (of `create_accounts`, or of the engine's own flags) that a stored account breaks.
fn account_rules_broken(account: &Account) -> Option<&'static str> {
    let flags_known = AccountFlags::CLIENT_MASK | AccountFlags::CLOSED | AccountFlags::LIMITS;
    let flags_exclusive = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
    let debits = account.debits_pending.checked_add(account.debits_posted);
    let credits = account.credits_pending.checked_add(account.credits_posted);
    // Both flags are set only at creation (with zero balances) and every debit, credit, post
    // and void keeps them, so an account that breaks its flag was never stored by a ledger.
    let debits_exceed = debits.is_none_or(|debits| debits > account.credits_posted);
    let credits_exceed = credits.is_none_or(|credits| credits > account.debits_posted);
    let rules = [
        (account.id.0 == 0 || account.id.0 == u128::MAX, "its id is zero or u128::MAX"),
        (account.reserved != 0, "its reserved field is not zero"),
        (account.flags.0 & !flags_known != 0, "it has a flag that is not defined"),
        (account.flags.contains(flags_exclusive), "it has both balance flags"),
        (account.ledger == 0, "its ledger is zero"),
        (account.code == 0, "its code is zero"),
        (
            account.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits_exceed,
            "its debits exceed its credits, which its flags forbid",
        ),
        (
            account.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits_exceed,
            "its credits exceed its debits, which its flags forbid",
        ),
    ];
    rules.iter().find(|(broken, _)| *broken).map(|(_, reason)| *reason)
}

/// The rule of `create_transfers` that a stored transfer with `status` breaks.
fn transfer_rules_broken(transfer: &Transfer, status: TransferStatus) -> Option<&'static str> {
    use TransferStatus as S;
    let flags = transfer.flags;
    let phases = [TransferFlags::PENDING, TransferFlags::POST_PENDING, TransferFlags::VOID_PENDING];
    let status_allowed = if flags.contains(TransferFlags::PENDING) {
        matches!(status, S::Pending | S::PendingPosted | S::PendingVoided | S::PendingExpired)
    } else if flags.contains(TransferFlags::VOID_PENDING) {
        status == S::Voided
    } else {
        status == S::Posted
    };
    let rules = [
        (transfer.id.0 == 0 || transfer.id.0 == u128::MAX, "its id is zero or u128::MAX"),
        (flags.0 & !TransferFlags::MASK != 0, "it has a flag that is not defined"),
        (phases.iter().filter(|flag| flags.contains(**flag)).count() > 1, "it is more than one of pending, post, void"),
        (transfer.debit_account_id == transfer.credit_account_id, "its debit and credit accounts are the same"),
        (!status_allowed, "its status is not one its flags allow"),
    ];
    rules.iter().find(|(broken, _)| *broken).map(|(_, reason)| *reason)
}

/// The rule of `set_account_limits` that a stored limits record breaks.
fn limits_rules_broken(limits: &AccountLimits) -> Option<&'static str> {
    let rules = [
        (limits.account_id.0 == 0 || limits.account_id.0 == u128::MAX, "its account id is zero or u128::MAX"),
        (limits.flags.0 & !LimitFlags::MASK != 0, "it has a flag that is not defined"),
        (limits.reserved != [0; 28], "its reserved field is not zero"),
    ];
    rules.iter().find(|(broken, _)| *broken).map(|(_, reason)| *reason)
}

fn status_from_u8(value: u8) -> Result<TransferStatus, ImageError> {
    use TransferStatus as S;
    [S::Posted, S::Voided, S::Pending, S::PendingPosted, S::PendingVoided, S::PendingExpired]
        .into_iter()
        .find(|status| *status as u8 == value)
        .ok_or(ImageError::BadStatus { value })
}
