//! The ledger's state as bytes, for snapshots: `image_write` emits it as a deterministic
//! stream of sections; `image_read` rebuilds a ledger from it, rebuilding the indexes, and
//! proves the result by recomputing the state hash and comparing it with the one recorded.
//! No I/O: the caller owns the sink and the bytes (a snapshot file, mmapped).
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
use crate::types::{record_from_bytes, Account, AccountLimits, Amount, Transfer, TransferStatus, Words};

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
        header.check_capacity()?;
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
            return Err(ImageError::BadConfig("ring_tail is before ring_head"));
        }
        match checks.iter().find(|(_, count, capacity)| count > capacity) {
            Some((what, count, capacity)) => Err(ImageError::OverCapacity { what, count: *count, capacity: *capacity }),
            None => Ok(()),
        }
    }
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

    /// Rebuilds a ledger from an image and checks it: every count within capacity, every hold
    /// and limit on a known account, and the recomputed state hash equal to the recorded one.
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
        ledger.image_accounts(accounts);
        ledger.image_ledgers(ledgers);
        ledger.image_ring(&header, ring, statuses)?;
        ledger.image_pending(pending)?;
        ledger.image_limits(limits)?;
        ledger.horizon_ms = header.horizon_ms;
        ledger.timestamp_last = header.timestamp_last;
        let sums = ledger.hash_sums_compute();
        (ledger.hash_sum, ledger.balance_sums, ledger.totals_sums) = (sums.records, sums.balances, sums.totals);
        let computed = ledger.state_hash();
        if computed != header.state_hash {
            return Err(ImageError::StateHashMismatch { recorded: header.state_hash, computed });
        }
        Ok(ledger)
    }

    fn image_accounts(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks_exact(128) {
            let account: Account = record_from_bytes(chunk);
            let slot = self.accounts_count();
            let tag = self.account_index.tag(account.id.0);
            self.accounts.push(Line(account));
            self.account_index.insert(tag, slot);
        }
    }

    fn image_ledgers(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks_exact(LEDGER_SIZE_BYTES) {
            let u128_at = |offset: usize| u128::from_le_bytes(chunk[offset..offset + 16].try_into().expect("16 bytes"));
            let ledger = u32::from_le_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let slot = self.ledger_slot_or_register(ledger).expect("ledger count checked against capacity");
            self.ledgers[slot as usize] = LedgerTotals {
                ledger,
                debits_pending: u128_at(16),
                debits_posted: u128_at(32),
                credits_pending: u128_at(48),
                credits_posted: u128_at(64),
            };
        }
    }

    fn image_ring(&mut self, header: &ImageHeader, ring: &[u8], statuses: &[u8]) -> Result<(), ImageError> {
        self.ring_head = header.ring_head;
        self.ring_tail = header.ring_head;
        for (chunk, status) in ring.chunks_exact(128).zip(statuses) {
            let transfer: Transfer = record_from_bytes(chunk);
            let status = status_from_u8(*status)?;
            let tag = self.transfer_index.tag(transfer.id.0);
            self.ring_push(tag, &transfer, transfer.timestamp, status);
        }
        assert_eq!(self.ring_tail, header.ring_tail);
        Ok(())
    }

    fn image_pending(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        for chunk in bytes.chunks_exact(PENDING_SIZE_BYTES) {
            let transfer: Transfer = record_from_bytes(&chunk[..128]);
            let expires_at_ns = u64::from_le_bytes(chunk[128..136].try_into().expect("8 bytes"));
            let ring_position = u64::from_le_bytes(chunk[136..144].try_into().expect("8 bytes"));
            let debit = self.image_account_slot(transfer.debit_account_id.0)?;
            let credit = self.image_account_slot(transfer.credit_account_id.0)?;
            self.pending.insert(&transfer, debit, credit, expires_at_ns, ring_position);
        }
        Ok(())
    }

    fn image_limits(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        for chunk in bytes.chunks_exact(LIMITS_SIZE_BYTES) {
            let limits: AccountLimits = record_from_bytes(&chunk[..128]);
            let usage = usage_read(&chunk[128..176]);
            let account_slot = self.image_account_slot(limits.account_id.0)?;
            let slot = self.limits.len() as u32;
            self.limits.push(LimitsEntry { limits, usage, account_slot });
            self.account_limits[account_slot as usize] = slot;
        }
        Ok(())
    }

    fn image_account_slot(&self, id: u128) -> Result<u32, ImageError> {
        let found = self.account_find(self.account_index.tag(id), crate::types::AccountId(id));
        found.filter(|slot| *slot != NONE).ok_or(ImageError::MissingAccount { id })
    }
}

fn status_from_u8(value: u8) -> Result<TransferStatus, ImageError> {
    use TransferStatus as S;
    [S::Posted, S::Voided, S::Pending, S::PendingPosted, S::PendingVoided, S::PendingExpired]
        .into_iter()
        .find(|status| *status as u8 == value)
        .ok_or(ImageError::BadStatus { value })
}
