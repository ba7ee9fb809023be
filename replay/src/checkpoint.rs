//! Checkpoint records: every so many ops the journal carries the ledger's state hash, so a
//! replay proves, op range by op range, that it rebuilt the same state. A checkpoint at op N
//! holds the state after every command before N; it changes nothing itself. A checkpoint may
//! ask the snapshot replica for a snapshot at its op.
//!
//! ```text
//! offset size field
//!      0   16 state_hash
//!     16    8 timestamp_last (the ledger's)
//!     24    4 flags (bit 0: take a snapshot here)
//!     28    4 reserved (zero)
//!     32    8 accounts_count
//!     40    8 transfers_created
//! ```

use walletd_core::Ledger;

pub const CHECKPOINT_SIZE_BYTES: usize = 48;
pub const CHECKPOINT_SNAPSHOT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub state_hash: u128,
    pub timestamp_last: u64,
    pub flags: u32,
    pub accounts_count: u64,
    pub transfers_created: u64,
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

    pub fn encode(&self) -> [u8; CHECKPOINT_SIZE_BYTES] {
        let mut bytes = [0u8; CHECKPOINT_SIZE_BYTES];
        bytes[0..16].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.timestamp_last.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.flags.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.accounts_count.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.transfers_created.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() != CHECKPOINT_SIZE_BYTES {
            return Err(format!("checkpoint body of {} bytes, expected {CHECKPOINT_SIZE_BYTES}", bytes.len()));
        }
        if bytes[28..32] != [0; 4] {
            return Err("checkpoint reserved bytes are not zero".to_string());
        }
        let u64_at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        Ok(Checkpoint {
            state_hash: u128::from_le_bytes(bytes[0..16].try_into().expect("16 bytes")),
            timestamp_last: u64_at(16),
            flags: u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")),
            accounts_count: u64_at(32),
            transfers_created: u64_at(40),
        })
    }

    /// Whether `ledger` is in the state this checkpoint recorded.
    pub fn matches(&self, ledger: &Ledger) -> bool {
        let now = Checkpoint::of(ledger, self.flags);
        now == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let checkpoint =
            Checkpoint { state_hash: 7 << 100, timestamp_last: 9, flags: 1, accounts_count: 3, transfers_created: 4 };
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        assert!(Checkpoint::decode(&[0; 47]).is_err());
        let mut reserved = checkpoint.encode();
        reserved[30] = 1;
        assert!(Checkpoint::decode(&reserved).is_err());
    }
}
