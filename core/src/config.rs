//! The ledger's capacities, fixed at construction. Every table is allocated once from these
//! numbers, so the apply loop never grows a map or a vector; a full table is a result code, not
//! an allocation.

/// The largest batch: 8189 records of 128 bytes plus a 256-byte header fit in 1 MiB.
pub const BATCH_EVENTS_MAX: u32 = 8189;

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
    /// How far a transfer id's embedded time may run ahead of the engine's clock.
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

/// A config that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "invalid ledger config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}
