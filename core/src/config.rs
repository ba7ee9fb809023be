//! The ledger's capacities, fixed at construction. Every table is allocated once from these
//! numbers, so the apply loop never grows a map or a vector; a full table is a result code, not
//! an allocation.

/// The largest batch: 8189 records of 128 bytes plus a 256-byte header fit in 1 MiB.
pub const BATCH_EVENTS_MAX: u32 = 8189;

/// The largest `id_future_ms_max` a config may carry: one day. A client clock more than a day
/// ahead is broken rather than skewed (and each such id, once forgotten, raises the horizon
/// that far), and the bound keeps `clock_ms + id_future_ms_max` far below `u64::MAX`, which the
/// future check in `transfers.rs` relies on.
pub const ID_FUTURE_MS_MAX_LIMIT: u64 = 86_400_000;

/// Capacities and the few policy numbers of one ledger. Part of the state: a snapshot records
/// them, and a replay must use the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Accounts that can exist (accounts are never deleted).
    pub accounts_max: u32,
    /// Transfers remembered for idempotency (the window, counted in transfers). Rounded up so
    /// that `transfers_max + batch_events_max` is a power of two.
    pub transfers_max: u32,
    /// Pending transfers open at once.
    pub pending_max: u32,
    /// Accounts with run-time limits.
    pub limits_max: u32,
    /// Distinct ledger (currency) codes.
    pub ledgers_max: u32,
    /// Events in one batch.
    pub batch_events_max: u32,
    /// How far a transfer id's embedded time may run ahead of the engine's clock; at most
    /// `ID_FUTURE_MS_MAX_LIMIT`.
    pub id_future_ms_max: u64,
    /// Seeds the hash of the id indexes, so that ids cannot be crafted to collide. Chosen once
    /// per ledger and kept in its snapshots: the same seed replays the same state.
    pub hash_seed: u64,
}

impl Config {
    /// A small ledger for tests and examples.
    pub fn small() -> Config {
        Config {
            accounts_max: 1024,
            transfers_max: 4096,
            pending_max: 1024,
            limits_max: 256,
            ledgers_max: 16,
            batch_events_max: BATCH_EVENTS_MAX,
            id_future_ms_max: 10_000,
            hash_seed: 0x5eed_0f1e_d6e5,
        }
    }

    /// Checks the numbers and returns the config with `transfers_max` rounded up.
    pub fn validated(self) -> Result<Config, ConfigError> {
        let checks = [
            (self.accounts_max == 0 || self.accounts_max > 1 << 30, "accounts_max must be in 1..=2^30"),
            (self.transfers_max == 0 || self.transfers_max > 1 << 30, "transfers_max must be in 1..=2^30"),
            (self.pending_max == 0 || self.pending_max > 1 << 30, "pending_max must be in 1..=2^30"),
            (self.limits_max == 0 || self.limits_max > 1 << 30, "limits_max must be in 1..=2^30"),
            (self.ledgers_max == 0 || self.ledgers_max > 1 << 16, "ledgers_max must be in 1..=65536"),
            (self.batch_events_max == 0 || self.batch_events_max > 1 << 20, "batch_events_max must be in 1..=2^20"),
            (
                self.id_future_ms_max > ID_FUTURE_MS_MAX_LIMIT,
                "id_future_ms_max must be at most 86400000 (one day) of milliseconds",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(bad, _)| *bad) {
            return Err(ConfigError(message));
        }
        let ring_size = (u64::from(self.transfers_max) + u64::from(self.batch_events_max)).next_power_of_two();
        let transfers_max = ring_size - u64::from(self.batch_events_max);
        assert!(transfers_max >= u64::from(self.transfers_max));
        Ok(Config {
            transfers_max: u32::try_from(transfers_max).map_err(|_| ConfigError("transfers_max too large"))?,
            ..self
        })
    }

    /// Slots of the transfer ring: the window plus room for one batch, a power of two.
    pub fn transfer_ring_size(&self) -> u32 {
        let size = self.transfers_max + self.batch_events_max;
        assert!(size.is_power_of_two(), "config not validated");
        size
    }
}

/// Bytes of a config on disk (in the ledger image header and in `ledger.conf`).
pub const CONFIG_SIZE_BYTES: usize = 40;

impl Config {
    /// ```text
    /// offset size field
    ///      0    4 accounts_max        4 4 transfers_max      8 4 pending_max
    ///     12    4 limits_max         16 4 ledgers_max       20 4 batch_events_max
    ///     24    8 id_future_ms_max   32 8 hash_seed
    /// ```
    pub fn encode(&self) -> [u8; CONFIG_SIZE_BYTES] {
        let mut bytes = [0u8; CONFIG_SIZE_BYTES];
        let words32 = [
            self.accounts_max,
            self.transfers_max,
            self.pending_max,
            self.limits_max,
            self.ledgers_max,
            self.batch_events_max,
        ];
        for (index, value) in words32.iter().enumerate() {
            bytes[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
        }
        bytes[24..32].copy_from_slice(&self.id_future_ms_max.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.hash_seed.to_le_bytes());
        bytes
    }

    /// The config encoded in `bytes`, which must be one a validated config encodes to.
    pub fn decode(bytes: &[u8; CONFIG_SIZE_BYTES]) -> Result<Config, ConfigError> {
        let u32_at = |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        let u64_at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        let config = Config {
            accounts_max: u32_at(0),
            transfers_max: u32_at(4),
            pending_max: u32_at(8),
            limits_max: u32_at(12),
            ledgers_max: u32_at(16),
            batch_events_max: u32_at(20),
            id_future_ms_max: u64_at(24),
            hash_seed: u64_at(32),
        };
        if config.validated()? != config {
            return Err(ConfigError("transfers_max is not rounded as a validated config's"));
        }
        Ok(config)
    }
}

/// A config that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "invalid ledger config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_future_ms_max_is_bounded_in_validated_and_so_in_decode() {
        let at_limit = Config { id_future_ms_max: ID_FUTURE_MS_MAX_LIMIT, ..Config::small() }.validated();
        assert_eq!(at_limit.map(|config| config.id_future_ms_max), Ok(ID_FUTURE_MS_MAX_LIMIT));
        let beyond = Config { id_future_ms_max: ID_FUTURE_MS_MAX_LIMIT + 1, ..Config::small() };
        let error = beyond.validated().expect_err("beyond the limit");
        assert!(error.to_string().contains("id_future_ms_max must be at most"), "{error}");
        // A ledger.conf or an image header carrying it is refused the same way.
        let bytes = Config { id_future_ms_max: u64::MAX, ..Config::small().validated().unwrap() }.encode();
        assert_eq!(Config::decode(&bytes), Err(error));
    }
}
