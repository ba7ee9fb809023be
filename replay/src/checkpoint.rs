//! Checkpoint records: every so many ops the journal carries the ledger's state hash, so a
//! replay proves, op range by op range, that it rebuilt the same state. A checkpoint at op N
//! holds the state after every command before N; it changes nothing itself. A checkpoint may
//! ask the snapshot replica for a snapshot at its op.
//!
//! A checkpoint may also be **signed** (flags bit 1) with an Ed25519 key kept outside the data
//! directory. The journal's BLAKE3 chain is unkeyed: whoever can write the files can rewrite a
//! record and recompute every checksum after it. The signature is what they cannot recompute.
//! It covers the record's op and timestamp, the checksum of the record before it — which the
//! chain ties to every record back to op 1 — and the body before the signature (the state
//! hash and counts, the signer's checkpoint interval, the ledger config's digest and the
//! signer's public key). So one valid signature at op N proves the whole journal up to N, and
//! the state the replay rebuilt there. Unsigned checkpoints (48 bytes, flags bit 1 clear) are
//! the original format and still replay.
//!
//! ```text
//! offset size field
//!      0   16 state_hash
//!     16    8 timestamp_last (the ledger's)
//!     24    4 flags (bit 0: take a snapshot here; bit 1: signed, the fields below follow)
//!     28    4 reserved (zero)
//!     32    8 accounts_count
//!     40    8 transfers_created
//!   -- signed only (flags bit 1): --
//!     48    8 checkpoint_ops: the signer's interval; its next checkpoint is at most this many
//!             ops after this one
//!     56    8 reserved (zero)
//!     64   16 config_digest: first 16 bytes of BLAKE3 over the 40-byte config (ledger.conf
//!             bytes 16..56)
//!     80   32 public_key: the signer's Ed25519 public key
//!    112   64 signature: Ed25519 (RFC 8032) over the 160-byte message below
//!    176      end (signed); an unsigned checkpoint ends at 48
//!
//! signed message (not stored)
//!      0   16 domain "WDCHECKPOINTSIG1"
//!     16    8 op of the checkpoint record
//!     24    8 timestamp_ns of the checkpoint record
//!     32   16 checksum_prev: the journal checksum of the record at op − 1 (0 for op 1)
//!     48  112 the body's bytes 0..112 (everything before the signature)
//! ```

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use walletd_core::bytes::{u128_at, u32_at, u64_at};
use walletd_core::{Config, Ledger};

pub const CHECKPOINT_SIZE_BYTES: usize = 48;
pub const CHECKPOINT_SIGNED_SIZE_BYTES: usize = 176;
/// Flags bit 0: the snapshot replica takes a snapshot at this op.
pub const CHECKPOINT_SNAPSHOT: u32 = 1;
/// Flags bit 1: the body is signed (176 bytes).
pub const CHECKPOINT_SIGNED: u32 = 2;
const CHECKPOINT_FLAGS_KNOWN: u32 = CHECKPOINT_SNAPSHOT | CHECKPOINT_SIGNED;

const STATE_HASH_OFFSET: usize = 0;
const TIMESTAMP_LAST_OFFSET: usize = 16;
const FLAGS_OFFSET: usize = 24;
const RESERVED_OFFSET: usize = 28;
const ACCOUNTS_COUNT_OFFSET: usize = 32;
const TRANSFERS_CREATED_OFFSET: usize = 40;
const CHECKPOINT_OPS_OFFSET: usize = 48;
const SEAL_RESERVED_OFFSET: usize = 56;
const CONFIG_DIGEST_OFFSET: usize = 64;
const PUBLIC_KEY_OFFSET: usize = 80;
const SIGNATURE_OFFSET: usize = 112;

const SIGNED_MESSAGE_DOMAIN: [u8; 16] = *b"WDCHECKPOINTSIG1";
const SIGNED_MESSAGE_SIZE_BYTES: usize = 48 + SIGNATURE_OFFSET;

const _: () = assert!(CHECKPOINT_SIZE_BYTES == CHECKPOINT_OPS_OFFSET);
const _: () = assert!(SIGNATURE_OFFSET + ed25519_dalek::SIGNATURE_LENGTH == CHECKPOINT_SIGNED_SIZE_BYTES);
const _: () = assert!(PUBLIC_KEY_OFFSET + ed25519_dalek::PUBLIC_KEY_LENGTH == SIGNATURE_OFFSET);
const _: () = assert!(SIGNED_MESSAGE_SIZE_BYTES == 160);

/// The state a checkpoint records (both formats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub state_hash: u128,
    pub timestamp_last: u64,
    pub flags: u32,
    pub accounts_count: u64,
    pub transfers_created: u64,
}

/// What a signed checkpoint adds: who signed, under which promises, and the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub checkpoint_ops: u64,
    pub config_digest: u128,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Where a checkpoint record sits in the journal: the part of the signed message that is not
/// in its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    pub op: u64,
    pub timestamp_ns: u64,
    /// The journal checksum of the record at `op - 1` (0 for op 1).
    pub checksum_prev: u128,
}

impl Checkpoint {
    pub fn of(ledger: &Ledger, flags: u32) -> Checkpoint {
        Checkpoint {
            state_hash: ledger.state_hash(),
            timestamp_last: ledger.timestamp_last(),
            flags,
            accounts_count: u64::from(ledger.accounts_count()),
            transfers_created: ledger.transfers_created(),
        }
    }

    /// The unsigned body (48 bytes; the signed bit is cleared).
    pub fn encode(&self) -> [u8; CHECKPOINT_SIZE_BYTES] {
        let mut bytes = [0u8; CHECKPOINT_SIZE_BYTES];
        self.encode_state(self.flags & !CHECKPOINT_SIGNED, &mut bytes);
        bytes
    }

    fn encode_state(&self, flags: u32, bytes: &mut [u8]) {
        assert!(bytes.len() >= CHECKPOINT_SIZE_BYTES);
        bytes[STATE_HASH_OFFSET..][..16].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes[TIMESTAMP_LAST_OFFSET..][..8].copy_from_slice(&self.timestamp_last.to_le_bytes());
        bytes[FLAGS_OFFSET..][..4].copy_from_slice(&flags.to_le_bytes());
        bytes[RESERVED_OFFSET..][..4].fill(0);
        bytes[ACCOUNTS_COUNT_OFFSET..][..8].copy_from_slice(&self.accounts_count.to_le_bytes());
        bytes[TRANSFERS_CREATED_OFFSET..][..8].copy_from_slice(&self.transfers_created.to_le_bytes());
    }

    /// Decodes either format's state part; `CheckpointBody::decode` also returns the seal.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        CheckpointBody::decode(bytes).map(|body| body.checkpoint)
    }

    /// Whether `ledger` is in the state this checkpoint recorded.
    pub fn matches(&self, ledger: &Ledger) -> bool {
        let now = Checkpoint::of(ledger, self.flags);
        now == *self
    }
}

/// A decoded checkpoint body: the state, and the seal when it is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointBody {
    pub checkpoint: Checkpoint,
    pub seal: Option<Seal>,
}

impl CheckpointBody {
    pub fn decode(bytes: &[u8]) -> Result<CheckpointBody, String> {
        if bytes.len() < CHECKPOINT_SIZE_BYTES {
            return Err(format!("checkpoint body of {} bytes, expected {CHECKPOINT_SIZE_BYTES}", bytes.len()));
        }
        let flags = u32_at(bytes, FLAGS_OFFSET);
        if flags & !CHECKPOINT_FLAGS_KNOWN != 0 {
            return Err(format!("checkpoint flags {flags:#x} set reserved bits"));
        }
        let size_expected =
            if flags & CHECKPOINT_SIGNED != 0 { CHECKPOINT_SIGNED_SIZE_BYTES } else { CHECKPOINT_SIZE_BYTES };
        if bytes.len() != size_expected {
            return Err(format!(
                "checkpoint body of {} bytes, expected {size_expected} (flags {flags:#x})",
                bytes.len()
            ));
        }
        if bytes[RESERVED_OFFSET..][..4] != [0; 4] {
            return Err("checkpoint reserved bytes are not zero".to_string());
        }
        let checkpoint = Checkpoint {
            state_hash: u128_at(bytes, STATE_HASH_OFFSET),
            timestamp_last: u64_at(bytes, TIMESTAMP_LAST_OFFSET),
            flags,
            accounts_count: u64_at(bytes, ACCOUNTS_COUNT_OFFSET),
            transfers_created: u64_at(bytes, TRANSFERS_CREATED_OFFSET),
        };
        if flags & CHECKPOINT_SIGNED == 0 {
            return Ok(CheckpointBody { checkpoint, seal: None });
        }
        if bytes[SEAL_RESERVED_OFFSET..][..8] != [0; 8] {
            return Err("signed checkpoint reserved bytes are not zero".to_string());
        }
        let seal = Seal {
            checkpoint_ops: u64_at(bytes, CHECKPOINT_OPS_OFFSET),
            config_digest: u128_at(bytes, CONFIG_DIGEST_OFFSET),
            public_key: bytes[PUBLIC_KEY_OFFSET..SIGNATURE_OFFSET].try_into().expect("32 bytes"),
            signature: bytes[SIGNATURE_OFFSET..CHECKPOINT_SIGNED_SIZE_BYTES].try_into().expect("64 bytes"),
        };
        Ok(CheckpointBody { checkpoint, seal: Some(seal) })
    }

    /// Checks the seal against `key`, the record's place and the replaying config. `Err` says
    /// what failed, in words for the operator; the caller names the op.
    pub fn seal_verify(&self, key: &VerifyingKey, at: &RecordAt, config_digest: u128) -> Result<(), String> {
        let seal = self.seal.as_ref().expect("seal_verify on a signed checkpoint");
        assert!(self.checkpoint.flags & CHECKPOINT_SIGNED != 0);
        if seal.public_key != key.to_bytes() {
            return Err(format!(
                "it is signed by key {}, not by the verify key {}",
                hex(&seal.public_key),
                hex(&key.to_bytes())
            ));
        }
        if seal.config_digest != config_digest {
            return Err(format!(
                "it was signed for a ledger config with digest {:032x}, but ledger.conf has digest {config_digest:032x}",
                seal.config_digest
            ));
        }
        let body = self.encode_unsigned_part(seal);
        let message = signed_message(at, &body);
        let signature = ed25519_dalek::Signature::from_bytes(&seal.signature);
        key.verify_strict(&message, &signature).map_err(|_| {
            "its signature does not verify: the journal up to here, or the checkpoint itself, is not what the key \
             holder signed"
                .to_string()
        })
    }

    /// Bytes 0..112 of the signed body, rebuilt from the decoded fields.
    fn encode_unsigned_part(&self, seal: &Seal) -> [u8; SIGNATURE_OFFSET] {
        let mut bytes = [0u8; SIGNATURE_OFFSET];
        self.checkpoint.encode_state(self.checkpoint.flags, &mut bytes);
        bytes[CHECKPOINT_OPS_OFFSET..][..8].copy_from_slice(&seal.checkpoint_ops.to_le_bytes());
        bytes[CONFIG_DIGEST_OFFSET..][..16].copy_from_slice(&seal.config_digest.to_le_bytes());
        bytes[PUBLIC_KEY_OFFSET..SIGNATURE_OFFSET].copy_from_slice(&seal.public_key);
        bytes
    }
}

/// Signs checkpoints: the key (kept outside the data directory), the interval the node
/// promises, and the digest of the config it runs.
pub struct CheckpointSigner {
    key: SigningKey,
    checkpoint_ops: u64,
    config_digest: u128,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("CheckpointSigner")
            .field("public_key", &hex(&self.key.verifying_key().to_bytes()))
            .field("checkpoint_ops", &self.checkpoint_ops)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    pub fn new(key: SigningKey, checkpoint_ops: u64, config: &Config) -> CheckpointSigner {
        assert!(checkpoint_ops > 0, "a signer promises a checkpoint interval");
        CheckpointSigner { key, checkpoint_ops, config_digest: config_digest(config) }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signed body of `checkpoint` at `at` (the signed bit is set).
    pub fn sign(&self, checkpoint: &Checkpoint, at: &RecordAt) -> [u8; CHECKPOINT_SIGNED_SIZE_BYTES] {
        assert!(at.op >= 1, "journal ops start at 1");
        assert!(at.op > 1 || at.checksum_prev == 0, "op 1 has no record before it");
        let seal = Seal {
            checkpoint_ops: self.checkpoint_ops,
            config_digest: self.config_digest,
            public_key: self.key.verifying_key().to_bytes(),
            signature: [0; 64],
        };
        let body = CheckpointBody {
            checkpoint: Checkpoint { flags: checkpoint.flags | CHECKPOINT_SIGNED, ..*checkpoint },
            seal: None,
        };
        let unsigned = body.encode_unsigned_part(&seal);
        let signature = self.key.sign(&signed_message(at, &unsigned));
        let mut bytes = [0u8; CHECKPOINT_SIGNED_SIZE_BYTES];
        bytes[..SIGNATURE_OFFSET].copy_from_slice(&unsigned);
        bytes[SIGNATURE_OFFSET..].copy_from_slice(&signature.to_bytes());
        debug_assert!(CheckpointBody::decode(&bytes)
            .is_ok_and(|decoded| decoded.seal_verify(&self.key.verifying_key(), at, self.config_digest).is_ok()));
        bytes
    }
}

/// A checkpoint body as the journal records it: signed when there is a signer. The pipeline
/// and the writer both encode through this, so the two cannot disagree.
pub fn checkpoint_encode(
    checkpoint: &Checkpoint,
    signer: Option<&CheckpointSigner>,
    at: &RecordAt,
) -> ([u8; CHECKPOINT_SIGNED_SIZE_BYTES], usize) {
    match signer {
        Some(signer) => (signer.sign(checkpoint, at), CHECKPOINT_SIGNED_SIZE_BYTES),
        None => {
            let mut bytes = [0u8; CHECKPOINT_SIGNED_SIZE_BYTES];
            bytes[..CHECKPOINT_SIZE_BYTES].copy_from_slice(&checkpoint.encode());
            (bytes, CHECKPOINT_SIZE_BYTES)
        }
    }
}

/// First 16 bytes of BLAKE3 over the config's 40 bytes: binds a signature to ledger.conf.
pub fn config_digest(config: &Config) -> u128 {
    let digest = blake3::hash(&config.encode());
    u128::from_le_bytes(digest.as_bytes()[..16].try_into().expect("16 bytes"))
}

fn signed_message(at: &RecordAt, body: &[u8; SIGNATURE_OFFSET]) -> [u8; SIGNED_MESSAGE_SIZE_BYTES] {
    let mut message = [0u8; SIGNED_MESSAGE_SIZE_BYTES];
    message[0..16].copy_from_slice(&SIGNED_MESSAGE_DOMAIN);
    message[16..24].copy_from_slice(&at.op.to_le_bytes());
    message[24..32].copy_from_slice(&at.timestamp_ns.to_le_bytes());
    message[32..48].copy_from_slice(&at.checksum_prev.to_le_bytes());
    message[48..].copy_from_slice(body);
    message
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint { state_hash: 7 << 100, timestamp_last: 9, flags: 1, accounts_count: 3, transfers_created: 4 }
    }

    fn signer() -> CheckpointSigner {
        CheckpointSigner::new(SigningKey::from_bytes(&[7; 32]), 256, &Config::small())
    }

    const AT: RecordAt = RecordAt { op: 513, timestamp_ns: 1_000, checksum_prev: 0xfeed << 64 };

    #[test]
    fn round_trip_and_malformed() {
        let checkpoint = checkpoint();
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        assert!(Checkpoint::decode(&[0; 47]).is_err());
        let mut reserved = checkpoint.encode();
        reserved[30] = 1;
        assert!(Checkpoint::decode(&reserved).is_err());
        let mut flags = checkpoint.encode();
        flags[FLAGS_OFFSET] |= 4;
        assert!(Checkpoint::decode(&flags).is_err(), "unknown flag bits are refused");
        let mut claims_signed = checkpoint.encode();
        claims_signed[FLAGS_OFFSET] |= CHECKPOINT_SIGNED as u8;
        assert!(Checkpoint::decode(&claims_signed).is_err(), "a 48-byte body cannot be signed");
    }

    #[test]
    fn a_signed_checkpoint_verifies_where_it_was_signed_and_nowhere_else() {
        let signer = signer();
        let key = signer.verifying_key();
        let digest = config_digest(&Config::small());
        let bytes = signer.sign(&checkpoint(), &AT);
        let body = CheckpointBody::decode(&bytes).expect("decodes");
        assert_eq!(body.checkpoint, Checkpoint { flags: 1 | CHECKPOINT_SIGNED, ..checkpoint() });
        assert_eq!(body.seal.expect("signed").checkpoint_ops, 256);
        assert_eq!(body.seal_verify(&key, &AT, digest), Ok(()));
        // Another place in the journal, another history, another config, another key.
        for at in [
            RecordAt { op: AT.op + 1, ..AT },
            RecordAt { timestamp_ns: AT.timestamp_ns + 1, ..AT },
            RecordAt { checksum_prev: AT.checksum_prev ^ 1, ..AT },
        ] {
            assert!(body.seal_verify(&key, &at, digest).unwrap_err().contains("does not verify"), "{at:?}");
        }
        assert!(body.seal_verify(&key, &AT, digest ^ 1).unwrap_err().contains("config"));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(body.seal_verify(&other, &AT, digest).unwrap_err().contains("not by the verify key"));
    }

    #[test]
    fn every_signed_byte_is_covered() {
        let signer = signer();
        let key = signer.verifying_key();
        let digest = config_digest(&Config::small());
        let bytes = signer.sign(&checkpoint(), &AT);
        for index in 0..CHECKPOINT_SIGNED_SIZE_BYTES {
            let mut damaged = bytes;
            damaged[index] ^= 0x01;
            let verified = CheckpointBody::decode(&damaged).and_then(|body| body.seal_verify(&key, &AT, digest));
            assert!(verified.is_err(), "flipping byte {index} went unnoticed");
        }
    }

    #[test]
    fn checkpoint_encode_signs_only_with_a_signer() {
        let (bytes, size) = checkpoint_encode(&checkpoint(), None, &AT);
        assert_eq!(CheckpointBody::decode(&bytes[..size]).expect("unsigned").seal, None);
        let signer = signer();
        let (bytes, size) = checkpoint_encode(&checkpoint(), Some(&signer), &AT);
        assert_eq!(size, CHECKPOINT_SIGNED_SIZE_BYTES);
        assert!(CheckpointBody::decode(&bytes[..size]).expect("signed").seal.is_some());
    }
}
