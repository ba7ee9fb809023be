//! Ledger images: a round trip preserves the state hash and behaviour; damaged images are
//! refused with the error that names the damage, never loaded. An image whose bytes are
//! well-formed but whose contents contradict each other (as a checksummed snapshot written by
//! a buggy or hostile writer could be) is refused with `Inconsistent`, never a panic.

mod support;

use support::*;
use walletd_core::{
    AccountFlags, AccountId, AccountLimits, Amount, Config, ImageError, ImageHeader, Ledger, LimitFlags, TransferFlags,
};

/// 20 accounts on two ledgers, two with limits (one in force, one removed), 200 transfers of
/// which every third is a hold (every sixth without a timeout), one hold posted, one voided.
fn populated() -> Harness {
    let mut h = Harness::new(Config::small());
    h.create_accounts(&(1..=20).map(|id| account(id, 1 + (id % 2) as u32)).collect::<Vec<_>>());
    let limits = |id: u128, flags: u32| AccountLimits {
        account_id: AccountId(id),
        daily_debit_amount_max: Amount(1_000_000),
        flags: LimitFlags(flags),
        ..AccountLimits::default()
    };
    assert_eq!(h.set_limits(&[limits(2, LimitFlags::DAILY_DEBIT_AMOUNT), limits(4, 0)]), [0, 0]);
    let ms = h.now_ms();
    let mut transfers: Vec<_> =
        (0..200u128).map(|i| transfer(ms, i + 1, 2 + 2 * (i % 5), 12 + 2 * (i % 4), 5)).collect();
    for (i, t) in transfers.iter_mut().enumerate().step_by(3) {
        t.flags.0 = TransferFlags::PENDING;
        t.timeout_s = if i % 6 == 0 { 30 } else { 0 };
    }
    assert!(h.create_transfers(&transfers).iter().all(|code| *code == walletd_core::CreateTransferResult::Ok));
    let resolves = [resolve(ms, 1001, transfers[0].id, 0, false), resolve(ms, 1002, transfers[3].id, 0, true)];
    assert!(h.create_transfers(&resolves).iter().all(|code| *code == walletd_core::CreateTransferResult::Ok));
    assert!(h.ledger.pending_count() > 0);
    h
}

fn image_of(ledger: &Ledger) -> Vec<u8> {
    let mut image = Vec::new();
    ledger.image_write(&mut |bytes| image.extend_from_slice(bytes));
    image
}

#[test]
fn a_round_trip_keeps_the_state_and_the_behaviour() {
    let mut original = populated();
    let image = image_of(&original.ledger);
    assert_eq!(image.len(), original.ledger.image_header().image_size_bytes());
    let mut restored = Harness {
        ledger: Ledger::image_read(&image).unwrap(),
        output: walletd_core::Output::new(&Config::small().validated().unwrap()),
        now_ns: original.now_ns,
    };
    assert_eq!(restored.ledger.state_hash(), original.ledger.state_hash());
    restored.ledger.verify();
    // The same next batch (including expiries 40 s later) gives the same results and state.
    let ms = original.now_ms() + 40_000;
    let next: Vec<_> = (0..50u128).map(|i| transfer(ms, 1000 + i, 12 + 2 * (i % 4), 2 + 2 * (i % 5), 7)).collect();
    original.advance_ns(40 * NS_PER_S);
    restored.advance_ns(40 * NS_PER_S);
    assert_eq!(original.create_transfers(&next), restored.create_transfers(&next));
    assert_eq!(original.output.expired_count, restored.output.expired_count);
    assert_eq!(original.ledger.state_hash(), restored.ledger.state_hash());
    assert_eq!(image_of(&original.ledger), image_of(&restored.ledger), "images are byte-identical");
}

#[test]
fn damaged_images_are_refused() {
    let h = populated();
    let image = image_of(&h.ledger);
    let mut bad_magic = image.clone();
    bad_magic[0] ^= 1;
    assert_eq!(Ledger::image_read(&bad_magic).err(), Some(ImageError::BadMagic));
    let truncated = &image[..image.len() - 1];
    assert!(matches!(Ledger::image_read(truncated).err(), Some(ImageError::Truncated { .. })));
    let mut flipped = image.clone();
    // A user_data byte of the third account: nothing else contradicts it, but the rebuilt
    // state no longer hashes as recorded.
    flipped[128 + 2 * 128 + 80] ^= 0x10;
    assert!(matches!(Ledger::image_read(&flipped).err(), Some(ImageError::StateHashMismatch { .. })));
    let mut version = image.clone();
    version[8] = 9;
    assert_eq!(Ledger::image_read(&version).err(), Some(ImageError::UnsupportedVersion { version: 9 }));
    let mut count = image.clone();
    count[88..92].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Ledger::image_read(&count).err(), Some(ImageError::OverCapacity { what: "accounts", .. })));
}

/// Byte offsets of an image's header fields and sections (as in docs/FORMATS.md).
const LEDGERS_COUNT_OFFSET: usize = 100;
const LEDGER_SIZE_BYTES: usize = 80;

fn u32_at(image: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap())
}

#[test]
fn an_image_that_differs_only_in_its_ledger_registry_does_not_pass_as_the_recorded_state() {
    let h = populated();
    let mut image = image_of(&h.ledger);
    let header = ImageHeader::decode(&image).unwrap();
    assert_eq!(header.ledgers_count, 2);
    // One more registered ledger (code 9, no accounts, zero totals) under the same state hash.
    let mut extra = [0u8; LEDGER_SIZE_BYTES];
    extra[0..4].copy_from_slice(&9u32.to_le_bytes());
    image.extend_from_slice(&extra);
    let count = u32_at(&image, LEDGERS_COUNT_OFFSET) + 1;
    image[LEDGERS_COUNT_OFFSET..LEDGERS_COUNT_OFFSET + 4].copy_from_slice(&count.to_le_bytes());
    assert!(
        matches!(Ledger::image_read(&image).err(), Some(ImageError::StateHashMismatch { .. })),
        "the registry is part of the state hash"
    );
}

/// Where an image's sections start, from its header (layout in docs/FORMATS.md).
struct Layout {
    header: ImageHeader,
    accounts: usize,
    ring: usize,
    statuses: usize,
    pending: usize,
    limits: usize,
    ledgers: usize,
}

const ACCOUNT_SIZE_BYTES: usize = 128;
const TRANSFER_SIZE_BYTES: usize = 128;
const PENDING_SIZE_BYTES: usize = 144;
const LIMITS_SIZE_BYTES: usize = 192;

fn layout(image: &[u8]) -> Layout {
    let header = ImageHeader::decode(image).unwrap();
    let ring_count = (header.ring_tail - header.ring_head) as usize;
    let accounts = 128;
    let ring = accounts + header.accounts_count as usize * ACCOUNT_SIZE_BYTES;
    let statuses = ring + ring_count * TRANSFER_SIZE_BYTES;
    let pending = statuses + ring_count.next_multiple_of(8);
    let limits = pending + header.pending_count as usize * PENDING_SIZE_BYTES;
    let ledgers = limits + header.limits_count as usize * LIMITS_SIZE_BYTES;
    assert_eq!(ledgers + header.ledgers_count as usize * LEDGER_SIZE_BYTES, image.len());
    Layout { header, accounts, ring, statuses, pending, limits, ledgers }
}

impl Layout {
    fn account(&self, index: usize) -> usize {
        self.accounts + index * ACCOUNT_SIZE_BYTES
    }

    fn transfer(&self, index: usize) -> usize {
        self.ring + index * TRANSFER_SIZE_BYTES
    }

    fn hold(&self, index: usize) -> usize {
        self.pending + index * PENDING_SIZE_BYTES
    }

    fn limit(&self, index: usize) -> usize {
        self.limits + index * LIMITS_SIZE_BYTES
    }

    fn ledger(&self, index: usize) -> usize {
        self.ledgers + index * LEDGER_SIZE_BYTES
    }
}

fn get(image: &[u8], offset: usize, size: usize) -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..size].copy_from_slice(&image[offset..offset + size]);
    u128::from_le_bytes(bytes)
}

fn put(image: &mut [u8], offset: usize, size: usize, value: u128) {
    assert!(size == 16 || value >> (8 * size) == 0, "{value} fits in {size} bytes");
    image[offset..offset + size].copy_from_slice(&value.to_le_bytes()[..size]);
}

fn add(image: &mut [u8], offset: usize, size: usize, delta: u128) {
    let value = get(image, offset, size) + delta;
    put(image, offset, size, value);
}

/// Field offsets inside the records.
const ID: usize = 0;
const DEBITS_PENDING: usize = 16;
const CREDITS_POSTED: usize = 64;
const DEBIT_ACCOUNT: usize = 16;
const CREDIT_ACCOUNT: usize = 32;
const USER_DATA_64: usize = 96;
const RESERVED_OR_TIMEOUT: usize = 108;
const LEDGER: usize = 112;
const FLAGS: usize = 118;
const TIMESTAMP: usize = 120;
const HOLD_EXPIRES_AT: usize = 128;
const HOLD_RING_POSITION: usize = 136;
const LIMITS_FLAGS: usize = 88;
const LIMITS_ACCOUNT_SLOT: usize = 176;
const LEDGER_DEBITS_POSTED: usize = 32;
const LEDGER_CREDITS_POSTED: usize = 64;

type Mutation = fn(&mut Vec<u8>, &Layout);

/// The first remembered transfer with a status, as (ring index).
fn ring_index_with_status(image: &[u8], at: &Layout, status: u8) -> usize {
    let count = (at.header.ring_tail - at.header.ring_head) as usize;
    (0..count).find(|index| image[at.statuses + index] == status).expect("a transfer with that status")
}

#[test]
fn inconsistent_images_are_refused_with_an_error_never_a_panic() {
    let h = populated();
    let pristine = image_of(&h.ledger);
    let at = layout(&pristine);
    assert_eq!((at.header.accounts_count, at.header.limits_count, at.header.ledgers_count), (20, 2, 2));
    assert!(at.header.pending_count >= 2);
    let ring_count = at.header.ring_tail - at.header.ring_head;
    // Account slot 1 is id 2 (ledger 1, limits in force, debited by holds); slot 2 is id 3
    // (ledger 2, untouched); slot 3 is id 4 (limits entry with no limit in force); slot 11 is
    // id 12 (ledger 1, credited). Ledger slot 0 is ledger 2 (no money), slot 1 is ledger 1.
    let cases: Vec<(&str, Mutation, &str, u64, &str)> = vec![
        ("reserved header bytes", |i, _| i[12] = 1, "header", 0, "reserved bytes"),
        (
            "ring_tail before ring_head",
            |i, a| put(i, 56, 8, u128::from(a.header.ring_tail) + 1),
            "header",
            0,
            "before ring_head",
        ),
        ("no timestamp after timestamp_last", |i, _| put(i, 80, 8, u128::from(u64::MAX)), "header", 0, "no room"),
        ("two accounts with one id", |i, a| put(i, a.account(2) + ID, 16, 1), "accounts", 2, "earlier account's"),
        ("an account with id zero", |i, a| put(i, a.account(2) + ID, 16, 0), "accounts", 2, "id is zero"),
        (
            "an account with an unknown flag",
            |i, a| add(i, a.account(2) + FLAGS, 2, 1 << 9),
            "accounts",
            2,
            "not defined",
        ),
        (
            "an account's reserved field",
            |i, a| put(i, a.account(2) + RESERVED_OR_TIMEOUT, 4, 1),
            "accounts",
            2,
            "reserved field",
        ),
        (
            "an account from after timestamp_last",
            |i, a| put(i, a.account(2) + TIMESTAMP, 8, 1 << 63),
            "accounts",
            2,
            "timestamp",
        ),
        (
            "an account on an unregistered ledger",
            |i, a| put(i, a.account(2) + LEDGER, 4, 7),
            "accounts",
            2,
            "not registered",
        ),
        (
            "an account flagged LIMITS with no limits",
            |i, a| add(i, a.account(5) + FLAGS, 2, u128::from(AccountFlags::LIMITS)),
            "accounts",
            5,
            "LIMITS flag",
        ),
        (
            "a wallet whose debits exceed its credits",
            |i, a| add(i, a.account(1) + FLAGS, 2, u128::from(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)),
            "accounts",
            1,
            "debits exceed its credits",
        ),
        (
            "pending debits that are not its holds'",
            |i, a| add(i, a.account(1) + DEBITS_PENDING, 16, 1),
            "accounts",
            1,
            "open holds",
        ),
        (
            "a balance the totals do not add up to",
            |i, a| add(i, a.account(11) + CREDITS_POSTED, 16, 1),
            "ledgers",
            1,
            "sums over its accounts",
        ),
        ("a transfer with timestamp zero", |i, a| put(i, a.transfer(1) + TIMESTAMP, 8, 0), "ring", 1, "timestamp"),
        (
            "two transfers with one id",
            |i, a| {
                let id = get(i, a.transfer(1) + ID, 16);
                put(i, a.transfer(2) + ID, 16, id);
            },
            "ring",
            2,
            "earlier transfer's",
        ),
        (
            "transfers out of time order",
            |i, a| {
                let timestamp = get(i, a.transfer(1) + TIMESTAMP, 8);
                put(i, a.transfer(2) + TIMESTAMP, 8, timestamp);
            },
            "ring",
            2,
            "timestamp",
        ),
        ("a status its flags cannot have", |i, a| i[a.statuses + 1] = 4, "ring", 1, "flags allow"),
        (
            "a resolved hold marked pending again",
            |i, a| {
                let index = ring_index_with_status(i, a, 4);
                i[a.statuses + index] = 3;
            },
            "ring",
            0,
            "no hold is open",
        ),
        (
            "a non-zero status padding byte",
            |i, a| {
                let count = (a.header.ring_tail - a.header.ring_head) as usize;
                assert!(count % 8 != 0, "the statuses are padded");
                i[a.statuses + count] = 1;
            },
            "statuses",
            ring_count,
            "padding",
        ),
        (
            "a hold past the ring's tail",
            |i, a| add(i, a.hold(0) + HOLD_RING_POSITION, 8, 1000),
            "pending",
            0,
            "past the ring's tail",
        ),
        (
            "a hold at another transfer's place",
            |i, a| put(i, a.hold(0) + HOLD_RING_POSITION, 8, 1),
            "pending",
            0,
            "another transfer",
        ),
        ("a hold that is not pending", |i, a| put(i, a.hold(0) + FLAGS, 2, 0), "pending", 0, "not a pending transfer"),
        (
            "a hold from an account to itself",
            |i, a| {
                let debit = get(i, a.hold(0) + DEBIT_ACCOUNT, 16);
                put(i, a.hold(0) + CREDIT_ACCOUNT, 16, debit);
            },
            "pending",
            0,
            "are the same",
        ),
        (
            "two holds with one id",
            |i, a| {
                let id = get(i, a.hold(0) + ID, 16);
                put(i, a.hold(1) + ID, 16, id);
            },
            "pending",
            1,
            "earlier hold's",
        ),
        (
            "holds out of creation order",
            |i, a| {
                let timestamp = get(i, a.hold(0) + TIMESTAMP, 8);
                put(i, a.hold(1) + TIMESTAMP, 8, timestamp);
            },
            "pending",
            1,
            "timestamp",
        ),
        (
            "an expiry that is not its timeout",
            |i, a| add(i, a.hold(0) + HOLD_EXPIRES_AT, 8, 1),
            "pending",
            0,
            "its timeout",
        ),
        (
            "a hold open past its expiry",
            |i, a| {
                let expires_at = get(i, a.hold(0) + HOLD_EXPIRES_AT, 8);
                assert!(expires_at != u128::from(u64::MAX), "hold 0 has a timeout");
                put(i, 80, 8, expires_at);
            },
            "pending",
            0,
            "after its expiry",
        ),
        ("a hold off its accounts' ledger", |i, a| put(i, a.hold(0) + LEDGER, 4, 2), "pending", 0, "not on its ledger"),
        (
            "a hold unlike its transfer",
            |i, a| add(i, a.hold(0) + USER_DATA_64, 8, 1),
            "pending",
            0,
            "differs from its remembered",
        ),
        (
            "two limits entries for one account",
            |i, a| {
                let (first, second) = (a.limit(0), a.limit(1));
                i.copy_within(first..first + LIMITS_SIZE_BYTES, second);
            },
            "limits",
            1,
            "earlier limits entry",
        ),
        (
            "limits pointing at another slot",
            |i, a| put(i, a.limit(0) + LIMITS_ACCOUNT_SLOT, 4, 0),
            "limits",
            0,
            "account slot",
        ),
        ("a non-zero limits padding byte", |i, a| i[a.limit(0) + 191] = 1, "limits", 0, "padding"),
        (
            "limits with an unknown flag",
            |i, a| add(i, a.limit(0) + LIMITS_FLAGS, 4, 1 << 20),
            "limits",
            0,
            "not defined",
        ),
        (
            "limits in force on an account without the flag",
            |i, a| put(i, a.limit(1) + LIMITS_FLAGS, 4, u128::from(LimitFlags::DAILY_DEBIT_AMOUNT)),
            "accounts",
            3,
            "LIMITS flag",
        ),
        (
            "two ledgers with one code",
            |i, a| {
                let code = get(i, a.ledger(0), 4);
                put(i, a.ledger(1), 4, code);
            },
            "ledgers",
            1,
            "earlier entry's",
        ),
        ("a ledger with code zero", |i, a| put(i, a.ledger(1), 4, 0), "ledgers", 1, "code is zero"),
        ("a non-zero ledger padding byte", |i, a| i[a.ledger(0) + 5] = 1, "ledgers", 0, "padding"),
        (
            "totals that do not balance",
            |i, a| add(i, a.ledger(0) + LEDGER_DEBITS_POSTED, 16, 1),
            "ledgers",
            0,
            "debits and credits differ",
        ),
        (
            "balanced totals that are not the accounts' sums",
            |i, a| {
                add(i, a.ledger(0) + LEDGER_DEBITS_POSTED, 16, 1);
                add(i, a.ledger(0) + LEDGER_CREDITS_POSTED, 16, 1);
            },
            "ledgers",
            0,
            "sums over its accounts",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, mutate, section, index, because) in cases {
        let mut image = pristine.clone();
        mutate(&mut image, &at);
        let outcome = std::panic::catch_unwind(|| Ledger::image_read(&image).map(|_| ()));
        match outcome {
            Ok(Err(ImageError::Inconsistent { section: got_section, index: got_index, reason }))
                if got_section == section && got_index == index && reason.contains(because) =>
            {
                let message = ImageError::Inconsistent { section, index, reason }.to_string();
                assert!(message.contains(section) && message.contains(reason), "{what}: {message}");
            }
            Ok(Err(error)) => wrong.push(format!("{what}: expected {section} {index} ({because}), got {error:?}")),
            Ok(Ok(())) => wrong.push(format!("{what}: loaded")),
            Err(_) => wrong.push(format!("{what}: panicked")),
        }
    }
    assert!(wrong.is_empty(), "{} cases wrong:\n{}", wrong.len(), wrong.join("\n"));
    assert!(Ledger::image_read(&pristine).is_ok(), "the pristine image loads");
}

#[test]
fn counts_beyond_capacity_are_refused() {
    let h = populated();
    let pristine = image_of(&h.ledger);
    let config = Config::small().validated().unwrap();
    let cases = [
        (88, config.accounts_max + 1, "accounts"),
        (92, config.pending_max + 1, "pending transfers"),
        (96, config.limits_max + 1, "limits"),
        (100, config.ledgers_max + 1, "ledgers"),
    ];
    for (offset, count, what) in cases {
        let mut image = pristine.clone();
        put(&mut image, offset, 4, u128::from(count));
        let error = Ledger::image_read(&image).err();
        assert!(matches!(error, Some(ImageError::OverCapacity { what: got, .. }) if got == what), "{what}: {error:?}");
    }
    let mut image = pristine.clone();
    put(&mut image, 56, 8, 0);
    put(&mut image, 64, 8, u128::from(config.transfer_ring_size()) + 1);
    let error = Ledger::image_read(&image).err();
    assert!(matches!(error, Some(ImageError::OverCapacity { what: "remembered transfers", .. })), "{error:?}");
}
