//! Frame streams: a control byte, then frames back to back, as a connection delivers them.
//!
//! `frame_next` takes the next 64-byte header off the stream and, as the control byte asks,
//! makes its body size fit the bytes left, fills in the body's crc32c and seals the header's
//! crc32c, so that mutated frames still get past the checksums to the checks behind them.

use walletd_gateway::protocol::{header_seal, BODY_CHECKSUM_OFFSET, BODY_SIZE_OFFSET};
use walletd_gateway::HEADER_SIZE_BYTES;

/// Seal the header: its crc32c over bytes 0..60.
pub const SEAL_HEADER: u8 = 1 << 0;
/// Fill in the body's crc32c (when the body is all there).
pub const SEAL_BODY: u8 = 1 << 1;
/// Shrink a body size that claims more bytes than the stream has left.
pub const FIT_BODY_SIZE: u8 = 1 << 2;
/// The repairs a valid seed asks for.
pub const SEAL_ALL: u8 = SEAL_HEADER | SEAL_BODY | FIT_BODY_SIZE;

/// The next header on the stream, repaired as `control` asks, and the bytes after it (its
/// body, then later frames). `None` when fewer than 64 bytes are left.
pub fn frame_next(control: u8, bytes: &[u8]) -> Option<([u8; HEADER_SIZE_BYTES], &[u8])> {
    let (header, rest) = bytes.split_first_chunk::<HEADER_SIZE_BYTES>()?;
    let mut header = *header;
    let mut body_size_bytes = u32_at(&header, BODY_SIZE_OFFSET) as usize;
    if control & FIT_BODY_SIZE != 0 && body_size_bytes > rest.len() {
        body_size_bytes = rest.len();
        header[BODY_SIZE_OFFSET..BODY_SIZE_OFFSET + 4].copy_from_slice(&(body_size_bytes as u32).to_le_bytes());
    }
    if control & SEAL_BODY != 0 && body_size_bytes <= rest.len() {
        let checksum = crc32c::crc32c(&rest[..body_size_bytes]);
        header[BODY_CHECKSUM_OFFSET..BODY_CHECKSUM_OFFSET + 4].copy_from_slice(&checksum.to_le_bytes());
    }
    if control & SEAL_HEADER != 0 {
        header_seal(&mut header);
    }
    Some((header, rest))
}

/// A fuzz input carrying `frames` (whole frames, as a writer appends them).
pub fn frames_input(control: u8, frames: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![control];
    for frame in frames {
        input.extend_from_slice(frame);
    }
    input
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}
