//! Ids: how the gateway names wallets, settlement accounts and transfers in the engine's u128
//! id space, and how ids are written in JSON.
//!
//! Wallet ids are derived, not stored: `wallet_id(user, currency)` is a keyed BLAKE3 hash, so
//! listing a caller's wallets is one `lookup_balances` of the ids of every configured currency
//! (no scan, no index to keep), and the rule "a user debits only their own wallet" is checked
//! without a round trip. The owner is also recorded in the account (`user_data_128 =
//! owner_hash(user)`), so it is part of the journaled state, survives restarts, and is the same
//! for every gateway replica. Ids are written as UUID-shaped hex, most significant digit first,
//! so a UUIDv7's text is its u128 and its first 48 bits are its millisecond timestamp — the
//! layout of the engine's transfer ids.

use core::fmt;
use walletd_core::{AccountId, TransferId};

/// Account codes: what kind of account the gateway created.
pub const ACCOUNT_CODE_WALLET: u16 = 1;
pub const ACCOUNT_CODE_SETTLEMENT: u16 = 2;
/// An idempotency-key anchor (see `anchor_id` and docs/HTTP.md, "Idempotency").
pub const ACCOUNT_CODE_ANCHOR: u16 = 3;
/// The ledger of anchor accounts: no currency uses it, so no transfer can touch them.
pub const ANCHOR_LEDGER: u32 = 0x7fff_0001;

/// Transfer codes: which endpoint made the transfer. Part of a transfer's identity, so one key
/// reused on another endpoint is a conflict, never a second effect.
pub const TRANSFER_CODE_P2P: u16 = 1;
pub const TRANSFER_CODE_HOLD: u16 = 2;
pub const TRANSFER_CODE_CAPTURE: u16 = 3;
pub const TRANSFER_CODE_VOID: u16 = 4;
pub const TRANSFER_CODE_DEPOSIT: u16 = 5;
pub const TRANSFER_CODE_WITHDRAWAL: u16 = 6;

/// A 128-bit keyed BLAKE3 hash of length-prefixed parts. Each purpose has its own key (the
/// BLAKE3 hash of its context string, computed once), so ids of different kinds never collide
/// by construction and a hash costs one short keyed compression, not a key derivation.
fn hash128(context: &Context, parts: &[&[u8]]) -> u128 {
    let key = context.key.get_or_init(|| *blake3::hash(context.name.as_bytes()).as_bytes());
    let mut hasher = blake3::Hasher::new_keyed(key);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut bytes = [0u8; 16];
    hasher.finalize_xof().fill(&mut bytes);
    u128::from_le_bytes(bytes)
}

struct Context {
    name: &'static str,
    key: std::sync::OnceLock<[u8; 32]>,
}

impl Context {
    const fn new(name: &'static str) -> Context {
        Context { name, key: std::sync::OnceLock::new() }
    }
}

static WALLET: Context = Context::new("walletd-http 2024 wallet id");
static SETTLEMENT: Context = Context::new("walletd-http 2024 settlement id");
static OWNER: Context = Context::new("walletd-http 2024 owner");
static ANCHOR: Context = Context::new("walletd-http 2024 anchor id");
static KEY_TRANSFER: Context = Context::new("walletd-http 2024 key transfer id");

/// Zero and u128::MAX are reserved ids; a hash landing on one (2⁻¹²⁷) is moved off it.
fn id_usable(value: u128) -> u128 {
    match value {
        0 => 1,
        u128::MAX => u128::MAX - 1,
        other => other,
    }
}

/// The id of `user`'s wallet in `currency`.
pub fn wallet_id(user: &str, currency: &str) -> AccountId {
    AccountId(id_usable(hash128(&WALLET, &[user.as_bytes(), currency.as_bytes()])))
}

/// The settlement account of a currency: the other side of deposits and withdrawals.
pub fn settlement_id(currency: &str) -> AccountId {
    AccountId(id_usable(hash128(&SETTLEMENT, &[currency.as_bytes()])))
}

/// The owner recorded in a wallet's `user_data_128` and a transfer's (its initiator).
pub fn owner_hash(user: &str) -> u128 {
    id_usable(hash128(&OWNER, &[user.as_bytes()]))
}

/// The anchor account of an arbitrary idempotency key: it records, in the engine, the time
/// the key was first used.
pub fn anchor_id(user: &str, key: &str) -> AccountId {
    AccountId(id_usable(hash128(&ANCHOR, &[user.as_bytes(), key.as_bytes()])))
}

/// The engine transfer id of `user`'s idempotency key, given the key's time: the time in the
/// top 48 bits, 80 bits of a hash of (user, key) below, so two users' equal keys differ.
pub fn key_transfer_id(user: &str, key: &str, time_ms: u64) -> TransferId {
    let low = hash128(&KEY_TRANSFER, &[user.as_bytes(), key.as_bytes()]);
    let id = TransferId::from_parts(time_ms, low);
    assert_eq!(id.time_ms(), time_ms);
    TransferId(id_usable(id.0))
}

/// A fresh id for a request without a key (captures and voids: a hold resolves once, so the
/// engine makes them safe without one): the time and 80 random bits.
pub fn fresh_transfer_id(time_ms: u64) -> TransferId {
    TransferId::from_parts(time_ms, random_u128())
}

/// 128 bits from the operating system's generator (secrets).
pub fn os_random_u128() -> u128 {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    u128::from_le_bytes(bytes)
}

/// 128 unpredictable-enough bits for ids, request ids and span ids (not for secrets): a
/// per-thread SplitMix64 stream seeded once from the operating system, so the hot path makes
/// no system call.
pub fn random_u128() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(os_random_u128() as u64);
    }
    STATE.with(|state| {
        let next = || {
            let z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(z);
            let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (u128::from(next()) << 64) | u128::from(next())
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// An id in its JSON form: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex.
pub struct IdText(pub u128);

impl fmt::Display for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&id_format(self.0))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, without intermediate strings (it is on the hot path
/// of every response).
pub fn id_format(value: u128) -> String {
    String::from_utf8(id_bytes(value).to_vec()).expect("ASCII")
}

/// `id_format`'s 36 characters, on the stack.
pub fn id_bytes(value: u128) -> [u8; 36] {
    // Two hex digits per byte, from a table: every transfer of a batch's answer writes three
    // ids, and a digit at a time with 128-bit shifts showed in its profile.
    let mut bytes = [b'-'; 36];
    let value_bytes = value.to_be_bytes();
    let mut at = 0;
    for (index, byte) in value_bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            at += 1; // the dash before this group
        }
        let pair = HEX_PAIRS[*byte as usize];
        bytes[at] = pair[0];
        bytes[at + 1] = pair[1];
        at += 2;
    }
    assert_eq!(at, 36);
    bytes
}

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// A hex digit's value (any case), or `HEX_NONE`.
const HEX_VALUES: [u8; 256] = {
    let mut values = [HEX_NONE; 256];
    let mut digit = 0;
    while digit < 16 {
        values[HEX[digit] as usize] = digit as u8;
        values[HEX[digit].to_ascii_uppercase() as usize] = digit as u8;
        digit += 1;
    }
    values
};
const HEX_NONE: u8 = 0xff;

/// Parses a UUID-shaped id (36 characters with dashes, or 32 hex digits), any case. By runs
/// of digits into u64s, with no branch per digit: three of these a transfer showed in a batch's
/// profile.
pub fn id_parse(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    let (high, low) = match bytes.len() {
        36 => {
            if [8, 13, 18, 23].iter().any(|&index| bytes[index] != b'-') {
                return None;
            }
            let high = (hex_run(&bytes[0..8])? << 32) | (hex_run(&bytes[9..13])? << 16) | hex_run(&bytes[14..18])?;
            let low = (hex_run(&bytes[19..23])? << 48) | hex_run(&bytes[24..36])?;
            (high, low)
        }
        32 => (hex_run(&bytes[0..16])?, hex_run(&bytes[16..32])?),
        _ => return None,
    };
    Some((u128::from(high) << 64) | u128::from(low))
}

/// The value of at most 16 hex digits, or `None` if one is not a digit.
fn hex_run(digits: &[u8]) -> Option<u64> {
    assert!(digits.len() <= 16);
    let mut value = 0u64;
    let mut seen = 0u8;
    for &byte in digits {
        let digit = HEX_VALUES[byte as usize];
        seen |= digit;
        value = (value << 4) | u64::from(digit & 0xf);
    }
    (seen & 0xf0 == 0).then_some(value) // HEX_NONE has the high bits set
}

/// A UUID of version 7 (RFC 9562): its first 48 bits are a Unix time in milliseconds.
pub fn is_uuid_v7(value: u128) -> bool {
    let version = (value >> 76) & 0xf;
    let variant = (value >> 62) & 0b11;
    version == 7 && variant == 0b10
}

/// A ULID (26 Crockford base32 characters): 48 bits of milliseconds, then 80 random bits.
pub fn ulid_parse(text: &str) -> Option<u128> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if text.len() != 26 {
        return None;
    }
    let mut value: u128 = 0;
    for (index, byte) in text.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&c| c == byte.to_ascii_uppercase())? as u128;
        if index == 0 && digit > 7 {
            return None; // 26 × 5 = 130 bits: the first character carries only 3.
        }
        value = (value << 5) | digit;
    }
    Some(value)
}

/// Where an idempotency key's time comes from (docs/HTTP.md, "Idempotency").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTime {
    /// The key is a UUIDv7 or a ULID: it carries its own creation time.
    Embedded(u64),
    /// Any other string: its first use is recorded in an anchor account.
    Anchored,
}

pub fn key_time(key: &str) -> KeyTime {
    if let Some(value) = id_parse(key).filter(|&value| is_uuid_v7(value)) {
        return KeyTime::Embedded((value >> 80) as u64);
    }
    if let Some(value) = ulid_parse(key) {
        return KeyTime::Embedded((value >> 80) as u64);
    }
    KeyTime::Anchored
}

/// An idempotency key a client may send: 1 to 255 printable ASCII characters.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

pub fn key_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_LENGTH_MAX && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A new UUIDv7 (RFC 9562) for `time_ms`: what a client would send as a transaction id or key.
pub fn uuid_v7(time_ms: u64) -> u128 {
    let random = random_u128();
    let value = (u128::from(time_ms) << 80) | (0x7u128 << 76) | (random & ((1u128 << 76) - 1));
    let value = (value & !(0b11u128 << 62)) | (0b10u128 << 62);
    assert!(is_uuid_v7(value));
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_uuid_v7_is_its_own_u128_with_its_time_on_top() {
        let text = "018f3c2a-7b1e-7c3d-9a4b-0123456789ab";
        let value = id_parse(text).unwrap();
        assert!(is_uuid_v7(value));
        assert_eq!(TransferId(value).time_ms(), 0x018f_3c2a_7b1e);
        assert_eq!(id_format(value), text);
        assert_eq!(key_time(text), KeyTime::Embedded(0x018f_3c2a_7b1e));
        assert!(!is_uuid_v7(id_parse("018f3c2a-7b1e-4c3d-9a4b-0123456789ab").unwrap()));
    }

    #[test]
    fn a_ulid_carries_its_time() {
        // 01ARZ3NDEK is 1469922850259 ms (2016-07-30T23:54:10.259Z).
        assert_eq!(key_time("01ARZ3NDEKTSV4RRFFQ69G5FAV"), KeyTime::Embedded(1_469_922_850_259));
        assert_eq!(key_time("order-1234"), KeyTime::Anchored);
        assert_eq!(ulid_parse("81ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
    }

    #[test]
    fn keys_are_scoped_per_user() {
        assert_ne!(key_transfer_id("alice", "k", 1), key_transfer_id("bob", "k", 1));
        assert_ne!(wallet_id("alice", "USD"), wallet_id("bob", "USD"));
        assert_ne!(wallet_id("alice", "USD"), wallet_id("alice", "EUR"));
        // Length prefixes: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(wallet_id("ab", "c"), wallet_id("a", "bc"));
        assert_eq!(key_transfer_id("alice", "k", 77).time_ms(), 77);
    }

    proptest! {
        #[test]
        fn ids_round_trip_through_text(value in any::<u128>()) {
            prop_assert_eq!(id_parse(&id_format(value)), Some(value));
            prop_assert_eq!(id_parse(&format!("{value:032X}")), Some(value));
            let dashed = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                value >> 96,
                (value >> 80) & 0xffff,
                (value >> 64) & 0xffff,
                (value >> 48) & 0xffff,
                value & 0xffff_ffff_ffff
            );
            prop_assert_eq!(id_format(value), dashed);
        }

        #[test]
        fn id_parse_never_panics(text in "\\PC{0,40}") {
            let _ = id_parse(&text);
            let _ = ulid_parse(&text);
            let _ = key_time(&text);
        }
    }
}
