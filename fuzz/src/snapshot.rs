//! Snapshot files and ledger images from fuzz inputs: a control byte, then the bytes.
//!
//! A snapshot file is a 128-byte header, the ledger image and a 16-byte BLAKE3 trailer
//! (walletd-snapshot); the image carries its config, its counts and a state hash that loading
//! recomputes from the records (walletd_core::image). The repairs a control byte may ask for
//! make those agree with what the fuzzer wrote, so that loading gets past each check in turn.

use walletd_core::{Config, ImageError, ImageHeader, Ledger, BATCH_EVENTS_MAX};
use walletd_snapshot::{SNAPSHOT_CHECKSUM_SIZE_BYTES, SNAPSHOT_HEADER_SIZE_BYTES};

/// The snapshot header's `image_size_bytes` becomes what the file holds between header and trailer.
pub const FIT_SIZE: u8 = 1 << 0;
/// The image's recorded state hash becomes the one its records hash to (found by loading it once).
pub const ADOPT_STATE_HASH: u8 = 1 << 1;
/// The snapshot header's state hash becomes the image header's.
pub const COPY_STATE_HASH: u8 = 1 << 2;
/// The BLAKE3 trailer is computed over the rest of the file.
pub const SEAL: u8 = 1 << 3;
/// The file's name carries another op than its header (`snapshot_load_newest` must refuse it).
pub const NAME_OFF_BY_ONE: u8 = 1 << 4;
/// The repairs a valid seed asks for.
pub const SEAL_ALL: u8 = FIT_SIZE | ADOPT_STATE_HASH | COPY_STATE_HASH | SEAL;

const IMAGE_STATE_HASH_OFFSET: usize = 104;
const SNAPSHOT_STATE_HASH_OFFSET: usize = 32;
const SNAPSHOT_IMAGE_SIZE_OFFSET: usize = 64;

/// Whether `Ledger::new(config)` stays within the few megabytes a target may allocate. A valid
/// config may ask for far more (2^30 accounts): that is the ledger the image says it is, not a
/// decoder's over-allocation, so such images are skipped rather than reported.
pub fn config_within_budget(config: &Config) -> bool {
    config.accounts_max <= 1 << 12
        && config.transfers_max + config.batch_events_max <= 1 << 14
        && config.pending_max <= 1 << 12
        && config.limits_max <= 1 << 12
        && config.ledgers_max <= 1 << 12
        && config.batch_events_max <= BATCH_EVENTS_MAX
}

/// False for an image whose header decodes to a config over the budget.
pub fn image_within_budget(image: &[u8]) -> bool {
    ImageHeader::decode(image).map_or(true, |header| config_within_budget(&header.config))
}

/// Writes the state hash the image's records hash to into its header (if it loads that far).
/// The image must be within the budget.
pub fn image_adopt_state_hash(image: &mut [u8]) {
    assert!(image_within_budget(image));
    if let Err(ImageError::StateHashMismatch { computed, .. }) = Ledger::image_read(image) {
        image[IMAGE_STATE_HASH_OFFSET..IMAGE_STATE_HASH_OFFSET + 16].copy_from_slice(&computed.to_le_bytes());
    }
}

/// The image inside a snapshot file, if the file is long enough to hold header and trailer.
pub fn snapshot_image(file: &[u8]) -> Option<&[u8]> {
    let end = file.len().checked_sub(SNAPSHOT_CHECKSUM_SIZE_BYTES)?;
    file.get(SNAPSHOT_HEADER_SIZE_BYTES..end)
}

/// Applies the repairs `control` asks for to a snapshot file, whose image is within the budget.
pub fn snapshot_repair(control: u8, file: &mut [u8]) {
    let Some(end) = file.len().checked_sub(SNAPSHOT_CHECKSUM_SIZE_BYTES) else { return };
    if end < SNAPSHOT_HEADER_SIZE_BYTES {
        return;
    }
    if control & FIT_SIZE != 0 {
        let image_size_bytes = (end - SNAPSHOT_HEADER_SIZE_BYTES) as u64;
        file[SNAPSHOT_IMAGE_SIZE_OFFSET..SNAPSHOT_IMAGE_SIZE_OFFSET + 8]
            .copy_from_slice(&image_size_bytes.to_le_bytes());
    }
    let image = &mut file[SNAPSHOT_HEADER_SIZE_BYTES..end];
    if control & ADOPT_STATE_HASH != 0 {
        image_adopt_state_hash(image);
    }
    if control & COPY_STATE_HASH != 0 && image.len() >= IMAGE_STATE_HASH_OFFSET + 16 {
        let state_hash: [u8; 16] = image[IMAGE_STATE_HASH_OFFSET..][..16].try_into().expect("16 bytes");
        file[SNAPSHOT_STATE_HASH_OFFSET..SNAPSHOT_STATE_HASH_OFFSET + 16].copy_from_slice(&state_hash);
    }
    if control & SEAL != 0 {
        let checksum: [u8; 16] = blake3::hash(&file[..end]).as_bytes()[..16].try_into().expect("16 bytes");
        file[end..].copy_from_slice(&checksum);
    }
}

/// The sections of an image whose header decodes and whose size is what the header announces.
pub struct ImageSections<'a> {
    pub header: ImageHeader,
    pub accounts: &'a [u8],
    pub ring: &'a [u8],
    pub statuses: &'a [u8],
    pub pending: &'a [u8],
    pub limits: &'a [u8],
    pub ledgers: &'a [u8],
}

impl<'a> ImageSections<'a> {
    pub fn split(image: &'a [u8]) -> Option<ImageSections<'a>> {
        let header = ImageHeader::decode(image).ok()?;
        if header.image_size_bytes() != image.len() {
            return None;
        }
        let ring_count = (header.ring_tail - header.ring_head) as usize;
        let mut rest = &image[128..];
        let mut take = |size: usize| {
            let (section, after) = rest.split_at(size);
            rest = after;
            section
        };
        Some(ImageSections {
            header,
            accounts: take(header.accounts_count as usize * 128),
            ring: take(ring_count * 128),
            statuses: take(ring_count.next_multiple_of(8)),
            pending: take(header.pending_count as usize * 144),
            limits: take(header.limits_count as usize * 192),
            ledgers: take(header.ledgers_count as usize * 80),
        })
    }
}
