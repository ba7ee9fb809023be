//! Record and segment-header codecs: round trips under proptest, and every malformed case
//! rejected with its own `RecordInvalid`, so recovery and operators can tell them apart.

use proptest::prelude::*;
use walletd_journal::{
    record_decode, record_header_encode, record_size_bytes, segment_header_decode, segment_header_encode, Chain,
    RecordHeader, RecordInvalid, RecordKind, SegmentHeader, OP_MAX, RECORD_HEADER_SIZE_BYTES,
};

/// Header + body + padding, followed by `trailing` bytes of whatever comes next in the segment.
fn record_bytes(
    op: u64,
    timestamp_ns: u64,
    kind: RecordKind,
    body: &[u8],
    checksum_prev: u128,
    trailing: &[u8],
) -> Vec<u8> {
    let header = record_header_encode(op, timestamp_ns, kind, body, checksum_prev);
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(body);
    bytes.resize(record_size_bytes(body.len() as u64) as usize, 0);
    bytes.extend_from_slice(trailing);
    bytes
}

fn kind_strategy() -> impl Strategy<Value = RecordKind> {
    prop_oneof![Just(RecordKind::CommandBatch), Just(RecordKind::Checkpoint)]
}

fn sample() -> Vec<u8> {
    record_bytes(7, 1_000, RecordKind::CommandBatch, b"hello journal", 0xabc, &[])
}

proptest! {
    #[test]
    fn record_round_trips(
        op in 1u64..OP_MAX,
        timestamp_ns in any::<u64>(),
        kind in kind_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        checksum_prev in any::<u128>(),
        trailing in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = record_bytes(op, timestamp_ns, kind, &body, checksum_prev, &trailing);
        let (header, decoded_body) = record_decode(&bytes).expect("a fresh record decodes");
        prop_assert_eq!(header.op, op);
        prop_assert_eq!(header.timestamp_ns, timestamp_ns);
        prop_assert_eq!(header.kind, kind);
        prop_assert_eq!(header.checksum_prev, checksum_prev);
        prop_assert_eq!(header.body_size_bytes as usize, body.len());
        prop_assert_eq!(decoded_body, &body[..]);
        prop_assert_eq!(header.record_size_bytes() % 8, 0);
        let chain = Chain { op_next: op, checksum_prev, timestamp_ns_min: timestamp_ns };
        prop_assert_eq!(chain.verify(&header), Ok(()));
        let next = chain.advance(&header);
        prop_assert_eq!(next.op_next, op + 1);
        prop_assert_eq!(next.checksum_prev, header.checksum);
    }

    /// Any single flipped bit in a record (header or body) is detected.
    #[test]
    fn record_flipped_bit_is_detected(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut bytes = record_bytes(3, 5, RecordKind::Checkpoint, &body, 9, &[]);
        let bits = (RECORD_HEADER_SIZE_BYTES as usize + body.len()) * 8;
        let bit = bit.index(bits);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(record_decode(&bytes).is_err());
    }

    #[test]
    fn segment_header_round_trips(
        first_op in 1u64..=OP_MAX,
        size_pages in 1u64..1_000_000,
        timestamp_ns_prev in any::<u64>(),
        checksum_prev in any::<u128>(),
    ) {
        let header = SegmentHeader {
            first_op,
            segment_size_bytes: size_pages * 4096,
            timestamp_ns_prev,
            checksum_prev,
        };
        prop_assert_eq!(segment_header_decode(&segment_header_encode(&header)), Ok(header));
    }
}

/// A segment header claiming ops past `OP_MAX` is refused: its op sequence would overflow.
#[test]
fn a_segment_header_past_op_max_is_refused() {
    for first_op in [OP_MAX + 1, u64::MAX] {
        let header = SegmentHeader { first_op, segment_size_bytes: 4096, timestamp_ns_prev: 0, checksum_prev: 0 };
        let refused = segment_header_decode(&segment_header_encode(&header));
        assert_eq!(refused, Err(RecordInvalid::Op { expected: OP_MAX, found: first_op }));
    }
}

fn decode_error(bytes: &[u8]) -> RecordInvalid {
    record_decode(bytes).expect_err("malformed record must be rejected")
}

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = sample();
    bytes[0] ^= 0xff;
    assert!(matches!(decode_error(&bytes), RecordInvalid::Magic { .. }));
    let zeroes = vec![0u8; 128];
    assert_eq!(decode_error(&zeroes), RecordInvalid::Magic { found: 0 });
}

#[test]
fn bad_version_is_rejected() {
    let mut bytes = sample();
    bytes[4..6].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(decode_error(&bytes), RecordInvalid::Version { found: 2 });
}

#[test]
fn reserved_kinds_are_rejected() {
    for kind in [0u16, 3, 0xffff] {
        let mut bytes = sample();
        bytes[6..8].copy_from_slice(&kind.to_le_bytes());
        assert_eq!(decode_error(&bytes), RecordInvalid::Kind { found: kind });
    }
}

#[test]
fn nonzero_reserved_is_rejected() {
    let mut bytes = sample();
    bytes[12] = 1;
    assert_eq!(decode_error(&bytes), RecordInvalid::Reserved { found: 1 });
}

#[test]
fn size_past_the_segment_is_rejected() {
    let mut bytes = sample();
    bytes[8..12].copy_from_slice(&1_000_000u32.to_le_bytes());
    let room_bytes = bytes.len() as u64;
    let expected = RecordInvalid::Size { body_size_bytes: 1_000_000, room_bytes };
    assert_eq!(decode_error(&bytes), expected);
    let short = &sample()[..40];
    assert!(matches!(decode_error(short), RecordInvalid::Size { room_bytes: 40, .. }));
    let cut = sample();
    let cut = &cut[..cut.len() - 8];
    assert!(matches!(decode_error(cut), RecordInvalid::Size { .. }));
}

#[test]
fn bad_checksum_is_rejected() {
    for index in [16, 24, 32, 48, 63, 64, 70] {
        let mut bytes = sample();
        bytes[index] ^= 0x10;
        assert!(matches!(decode_error(&bytes), RecordInvalid::Checksum { .. }), "byte {index}");
    }
}

#[test]
fn nonzero_padding_is_rejected() {
    let mut bytes = sample();
    // "hello journal" is 13 bytes: the padding is bytes 77..80.
    assert_eq!(bytes.len(), 80);
    bytes[79] = 1;
    assert_eq!(decode_error(&bytes), RecordInvalid::Padding);
}

fn sample_header() -> RecordHeader {
    record_decode(&sample()).expect("sample decodes").0
}

#[test]
fn chain_break_is_rejected() {
    let header = sample_header();
    let chain = Chain { op_next: 7, checksum_prev: 0xabc, timestamp_ns_min: 1_000 };
    assert_eq!(chain.verify(&header), Ok(()));
    let wrong_prev = Chain { checksum_prev: 0xabd, ..chain };
    let expected = RecordInvalid::Chain { expected: 0xabd, found: 0xabc };
    assert_eq!(wrong_prev.verify(&header), Err(expected));
}

#[test]
fn op_gap_is_rejected() {
    let header = sample_header();
    let chain = Chain { op_next: 6, checksum_prev: 0xabc, timestamp_ns_min: 0 };
    assert_eq!(chain.verify(&header), Err(RecordInvalid::Op { expected: 6, found: 7 }));
}

#[test]
fn timestamp_going_back_is_rejected() {
    let header = sample_header();
    let chain = Chain { op_next: 7, checksum_prev: 0xabc, timestamp_ns_min: 1_001 };
    let expected = RecordInvalid::Timestamp { previous_ns: 1_001, found_ns: 1_000 };
    assert_eq!(chain.verify(&header), Err(expected));
}

#[test]
fn segment_header_malformed_cases_are_rejected() {
    let header = SegmentHeader { first_op: 1, segment_size_bytes: 4096, timestamp_ns_prev: 0, checksum_prev: 0 };
    let good = segment_header_encode(&header);
    let mut magic = good;
    magic[1] ^= 1;
    assert!(matches!(segment_header_decode(&magic), Err(RecordInvalid::Magic { .. })));
    let mut version = good;
    version[4] = 9;
    assert_eq!(segment_header_decode(&version), Err(RecordInvalid::Version { found: 9 }));
    let mut reserved = good;
    reserved[6] = 1;
    assert_eq!(segment_header_decode(&reserved), Err(RecordInvalid::Reserved { found: 1 }));
    let mut checksum = good;
    checksum[20] ^= 1;
    assert!(matches!(segment_header_decode(&checksum), Err(RecordInvalid::Checksum { .. })));
}
