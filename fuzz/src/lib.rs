//! What the fuzz targets share: how a fuzz input becomes the bytes a decoder is fed, and the
//! inverse, used by the `seed` example to write the seed corpora.
//!
//! Every format here is sealed by a checksum (crc32c for frames, BLAKE3 for journal records,
//! segment headers and snapshots), and a mutation almost never keeps one valid, so a target
//! fed raw bytes would spend its time on the first check. Each input therefore starts with a
//! control byte (or four) whose bits ask the harness to repair chosen checksums and lengths
//! after mutation: with the bits clear the decoder sees the raw bytes, with them set it sees
//! well-framed bytes whose fields are the fuzzer's, and both are explored. The repairs only
//! ever compute what an honest writer would have written; they never skip a check.
//!
//! The decoders' memory is bounded by the formats' own limits (a frame body by
//! `BODY_SIZE_MAX_BYTES`, a command by the events it carries), except a ledger image, whose
//! config decides how much `Ledger::new` allocates: up to 2^30 accounts is a valid config. The
//! image targets skip images whose config is over `config_within_budget`, so that libFuzzer's
//! `-malloc_limit_mb` flags real over-allocation rather than a large ledger built as asked.

pub mod frames;
pub mod journal;
pub mod snapshot;
