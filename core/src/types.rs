//! The ledger's records: accounts, transfers and account limits, each a fixed 128-byte
//! `#[repr(C)]` layout so that the wire, the journal and the in-memory tables hold the same bytes
//! and a snapshot is a copy of flat arrays. Layouts are asserted at compile time; the byte offsets
//! are written next to each field and in ARCHITECTURE.md.
//!
//! Money is `Amount` (an unsigned integer of minor units, never a float); ids are `u128` newtypes.

use core::mem::{align_of, size_of};

/// An account id, chosen by the client. Zero and `u128::MAX` are reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct AccountId(pub u128);

/// A transfer id, chosen by the client: it is the idempotency key. Its top 48 bits are the
/// client's creation time in milliseconds since the Unix epoch (the ULID layout), which is what
/// lets the engine refuse an id it can no longer check instead of applying it twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct TransferId(pub u128);

impl TransferId {
    /// Bits below the embedded millisecond timestamp.
    pub const TIME_SHIFT: u32 = 80;

    /// An id carrying `time_ms` in its top 48 bits and `low` (only its low 80 bits) below.
    pub fn from_parts(time_ms: u64, low: u128) -> TransferId {
        assert!(time_ms < (1 << 48), "time_ms does not fit in 48 bits");
        TransferId((u128::from(time_ms) << Self::TIME_SHIFT) | (low & ((1u128 << Self::TIME_SHIFT) - 1)))
    }

    /// The creation time the client embedded, in milliseconds since the Unix epoch.
    pub fn time_ms(self) -> u64 {
        (self.0 >> Self::TIME_SHIFT) as u64
    }
}

/// Money in minor units of the ledger's currency (cents, satoshis, …).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Amount(pub u128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }
}

/// Account flags (a `u16` on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    /// This event and the next one succeed or fail together.
    pub const LINKED: u16 = 1 << 0;
    /// debits_pending + debits_posted must not exceed credits_posted (a wallet: no overdraft).
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 1;
    /// credits_pending + credits_posted must not exceed debits_posted.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 2;
    /// Set by the engine (close_accounts): new transfers touching the account are refused.
    pub const CLOSED: u16 = 1 << 3;
    /// Set by the engine (set_account_limits): the account has run-time limits to check.
    pub const LIMITS: u16 = 1 << 4;
    /// Flags a client may set when creating an account.
    pub const CLIENT_MASK: u16 =
        Self::LINKED | Self::DEBITS_MUST_NOT_EXCEED_CREDITS | Self::CREDITS_MUST_NOT_EXCEED_DEBITS;
    /// Flags that are part of the account's identity (compared on resubmission).
    pub const STORED_MASK: u16 = Self::DEBITS_MUST_NOT_EXCEED_CREDITS | Self::CREDITS_MUST_NOT_EXCEED_DEBITS;

    pub fn contains(self, flag: u16) -> bool {
        self.0 & flag == flag
    }
}

/// Transfer flags (a `u16` on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct TransferFlags(pub u16);

impl TransferFlags {
    /// This event and the next one succeed or fail together.
    pub const LINKED: u16 = 1 << 0;
    /// Reserve the amount (debits_pending/credits_pending) until post, void or timeout.
    pub const PENDING: u16 = 1 << 1;
    /// Post (fully or partly) the pending transfer named by `pending_id`.
    pub const POST_PENDING: u16 = 1 << 2;
    /// Void the pending transfer named by `pending_id`.
    pub const VOID_PENDING: u16 = 1 << 3;
    pub const MASK: u16 = Self::LINKED | Self::PENDING | Self::POST_PENDING | Self::VOID_PENDING;

    pub fn contains(self, flag: u16) -> bool {
        self.0 & flag == flag
    }
}

/// An account. Balances are owned by the engine: a client creates an account with them zero.
///
/// ```text
/// offset size field
///      0   16 id
///     16   16 debits_pending
///     32   16 debits_posted
///     48   16 credits_pending
///     64   16 credits_posted
///     80   16 user_data_128
///     96    8 user_data_64
///    104    4 user_data_32
///    108    4 reserved (zero)
///    112    4 ledger
///    116    2 code
///    118    2 flags
///    120    8 timestamp (ns, assigned by the engine at creation)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Account {
    pub id: AccountId,
    pub debits_pending: Amount,
    pub debits_posted: Amount,
    pub credits_pending: Amount,
    pub credits_posted: Amount,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub reserved: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: AccountFlags,
    pub timestamp: u64,
}

/// A transfer. For post and void, zero-valued account ids, ledger and code inherit the pending
/// transfer's, and amount zero means "the full pending amount"; the stored record has them
/// resolved.
///
/// ```text
/// offset size field
///      0   16 id (top 48 bits: client creation time in ms)
///     16   16 debit_account_id
///     32   16 credit_account_id
///     48   16 amount
///     64   16 pending_id (post/void: the pending transfer's id)
///     80   16 user_data_128
///     96    8 user_data_64
///    104    4 user_data_32
///    108    4 timeout_s (pending only: seconds until it expires, 0 = never)
///    112    4 ledger
///    116    2 code
///    118    2 flags
///    120    8 timestamp (ns, assigned by the engine)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Transfer {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub pending_id: TransferId,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub timeout_s: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    pub timestamp: u64,
}

/// Which limits of an `AccountLimits` record are in force (a `u32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct LimitFlags(pub u32);

impl LimitFlags {
    /// debits_pending + debits_posted may exceed credits_posted by at most `overdraft_max`.
    pub const OVERDRAFT: u32 = 1 << 0;
    /// credits_pending + credits_posted − debits_posted must not exceed `balance_max`.
    pub const BALANCE_MAX: u32 = 1 << 1;
    pub const DAILY_DEBIT_AMOUNT: u32 = 1 << 2;
    pub const DAILY_DEBIT_COUNT: u32 = 1 << 3;
    pub const MONTHLY_DEBIT_AMOUNT: u32 = 1 << 4;
    pub const MONTHLY_DEBIT_COUNT: u32 = 1 << 5;
    pub const MASK: u32 = (1 << 6) - 1;

    pub fn contains(self, flag: u32) -> bool {
        self.0 & flag == flag
    }
}

/// Run-time limits of one account, set with `set_account_limits` and read back with
/// `lookup_balances`. Days and months are UTC calendar periods of the engine's timestamps.
///
/// ```text
/// offset size field
///      0   16 account_id
///     16   16 overdraft_max
///     32   16 balance_max
///     48   16 daily_debit_amount_max
///     64   16 monthly_debit_amount_max
///     80    4 daily_debit_count_max
///     84    4 monthly_debit_count_max
///     88    4 flags (LimitFlags; 0 removes every limit)
///     92   28 reserved (zero)
///    120    8 timestamp (ns, assigned by the engine when the limits were set)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AccountLimits {
    pub account_id: AccountId,
    pub overdraft_max: Amount,
    pub balance_max: Amount,
    pub daily_debit_amount_max: Amount,
    pub monthly_debit_amount_max: Amount,
    pub daily_debit_count_max: u32,
    pub monthly_debit_count_max: u32,
    pub flags: LimitFlags,
    pub reserved: [u8; 28],
    pub timestamp: u64,
}

/// What became of a remembered transfer (reported by `lookup_transfers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TransferStatus {
    /// A single-phase transfer, or a post of a pending one: money moved.
    #[default]
    Posted = 1,
    /// A void of a pending transfer.
    Voided = 2,
    /// A pending transfer still holding its reservation.
    Pending = 3,
    /// A pending transfer that a later transfer posted (fully or partly).
    PendingPosted = 4,
    /// A pending transfer that a later transfer voided.
    PendingVoided = 5,
    /// A pending transfer whose timeout passed; its reservation was released.
    PendingExpired = 6,
}

const _: () = assert!(size_of::<Account>() == 128);
const _: () = assert!(size_of::<Transfer>() == 128);
const _: () = assert!(size_of::<AccountLimits>() == 128);
const _: () = assert!(align_of::<Account>() == 16);
const _: () = assert!(core::mem::offset_of!(Account, ledger) == 112);
const _: () = assert!(core::mem::offset_of!(Account, timestamp) == 120);
const _: () = assert!(core::mem::offset_of!(Transfer, timeout_s) == 108);
const _: () = assert!(core::mem::offset_of!(Transfer, timestamp) == 120);
const _: () = assert!(core::mem::offset_of!(AccountLimits, flags) == 88);
const _: () = assert!(core::mem::offset_of!(AccountLimits, timestamp) == 120);

/// The records that are plain bytes: no padding, no invalid bit patterns, no pointers. Only
/// these may be viewed as bytes (wire and disk) or copied from arbitrary bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]`/`#[repr(transparent)]` integer records whose layout is
/// asserted packed (`assert_packed!` below or a transparent `u128`).
pub unsafe trait Plain: Copy + 'static {}
// SAFETY: packed integer record, asserted below.
unsafe impl Plain for Account {}
// SAFETY: packed integer record, asserted below.
unsafe impl Plain for Transfer {}
// SAFETY: packed integer record, asserted below.
unsafe impl Plain for AccountLimits {}
// SAFETY: a transparent u128.
unsafe impl Plain for AccountId {}
// SAFETY: a transparent u128.
unsafe impl Plain for TransferId {}
// SAFETY: an integer: 16 bytes, no padding, every bit pattern valid (trace ids).
unsafe impl Plain for u128 {}

/// A slice of records as their bytes (little-endian, as on the wire and on disk).
pub fn records_as_bytes<T: Plain>(records: &[T]) -> &[u8] {
    // SAFETY: T is Plain (no padding), so every byte of the slice is initialized; the length
    // covers exactly the slice.
    unsafe { core::slice::from_raw_parts(records.as_ptr().cast::<u8>(), core::mem::size_of_val(records)) }
}

/// One record copied from exactly `size_of::<T>()` bytes.
pub fn record_from_bytes<T: Plain + Default>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), core::mem::size_of::<T>(), "record bytes of the wrong size");
    let mut record = T::default();
    // SAFETY: T is Plain, so any bytes form a valid T; the source holds exactly its size.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut record as *mut T).cast::<u8>(), bytes.len()) };
    record
}

// Records are little-endian on the wire and on disk, and the state hash reads their bytes as
// little-endian words: walletd builds only for little-endian targets.
const _: () = assert!(cfg!(target_endian = "little"));

/// A record as sixteen `u64` words: the input of the state hash. The records have no padding
/// (every byte is a field), so their bytes are exactly these words on a little-endian target.
pub(crate) trait Words {
    fn words(&self) -> [u64; 16];
}

macro_rules! words_by_transmute {
    ($($record:ty),+) => {$(
        impl Words for $record {
            #[inline(always)]
            fn words(&self) -> [u64; 16] {
                // SAFETY: the record is 128 bytes of plain integer fields with no padding
                // (its layout is asserted above), and every bit pattern is a valid u64.
                unsafe { core::mem::transmute::<$record, [u64; 16]>(*self) }
            }
        }
    )+};
}

words_by_transmute!(Account, Transfer, AccountLimits);

/// Asserts at compile time that each field starts where the previous one ends and the last
/// ends at the record's size: no padding, so the bytes are exactly the fields.
macro_rules! assert_packed {
    ($record:ty { $first:ident $(, $field:ident)* }) => {
        const _: () = {
            let mut end = 0;
            assert!(core::mem::offset_of!($record, $first) == end);
            end += core::mem::size_of_val(&layout_probe::<$record>().$first);
            $(
                assert!(core::mem::offset_of!($record, $field) == end, concat!(stringify!($field), " is padded"));
                end += core::mem::size_of_val(&layout_probe::<$record>().$field);
            )*
            assert!(end == core::mem::size_of::<$record>());
        };
    };
}

/// A value to take field sizes from in const context (never read).
const fn layout_probe<T: Copy>() -> T {
    // SAFETY: only used inside `size_of_val` in constant evaluation of the records above, all
    // of whose fields are integers for which zero is valid.
    unsafe { core::mem::zeroed() }
}

assert_packed!(Account {
    id,
    debits_pending,
    debits_posted,
    credits_pending,
    credits_posted,
    user_data_128,
    user_data_64,
    user_data_32,
    reserved,
    ledger,
    code,
    flags,
    timestamp
});
assert_packed!(Transfer {
    id,
    debit_account_id,
    credit_account_id,
    amount,
    pending_id,
    user_data_128,
    user_data_64,
    user_data_32,
    timeout_s,
    ledger,
    code,
    flags,
    timestamp
});
assert_packed!(AccountLimits {
    account_id,
    overdraft_max,
    balance_max,
    daily_debit_amount_max,
    monthly_debit_amount_max,
    daily_debit_count_max,
    monthly_debit_count_max,
    flags,
    reserved,
    timestamp
});
