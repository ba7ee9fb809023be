//! Ledger images: a round trip preserves the state hash and behaviour; damaged images are
//! refused with the error that names the damage, never loaded.

mod support;

use support::*;
use walletd_core::{Config, ImageError, ImageHeader, Ledger, TransferFlags};

fn populated() -> Harness {
    let mut h = Harness::new(Config::small());
    h.create_accounts(&(1..=20).map(|id| account(id, 1 + (id % 2) as u32)).collect::<Vec<_>>());
    let ms = h.now_ms();
    let mut transfers: Vec<_> =
        (0..200u128).map(|i| transfer(ms, i + 1, 2 + 2 * (i % 5), 12 + 2 * (i % 4), 5)).collect();
    for t in transfers.iter_mut().step_by(3) {
        t.flags.0 = TransferFlags::PENDING;
        t.timeout_s = 30;
    }
    h.create_transfers(&transfers);
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
    // A balance byte of the third account: the rebuilt state no longer hashes as recorded.
    flipped[128 + 2 * 128 + 40] ^= 0x10;
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
