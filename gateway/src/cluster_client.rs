//! A client for a walletd cluster: a `Client` connected to one member at a time, which follows
//! `not_leader` replies to the leader they name and, when a member is down or has no leader
//! yet, tries the next member it knows, until the call's retry deadline.
//!
//! A leader cut off from its majority still answers, `unavailable`, and a follower cut off
//! with it still names it as the leader: a client that followed every redirect would go back
//! and forth between the two for as long as the partition lasts. So a redirect to a member that
//! has just answered `unavailable` (or timed out) in the same call is not followed, once: the
//! client tries the next member instead, which reaches the majority's side; a second redirect
//! to it is followed, so a member elected meanwhile is not passed over for long.
//!
//! Every retry resends the same request. That is safe because the engine is idempotent by id:
//! a transfer or account the first try already committed answers `exists` (with the same
//! fields) instead of being applied twice, so a caller that retried may see `exists` for its own
//! events. Reads are answered by the leader only (linearizable), so a redirect never returns a
//! stale balance.

use crate::client::{Balances, Client, ClientError, ClientOptions};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use walletd_core::{Account, AccountId, EventResult, Transfer, TransferId, TransferRecord};

/// The pauses between two tries while no member names a leader: short, because an election
/// takes a few hundred milliseconds and every pause past its end adds to the failover gap; a
/// member with no leader answers at once, so a try costs one round trip.
const RETRY_WAIT_MAX: Duration = Duration::from_millis(50);
const RETRY_WAIT_FIRST: Duration = Duration::from_millis(10);

pub struct ClusterClient {
    /// The members' client addresses; a leader named by a `not_leader` reply is added.
    addresses: Mutex<Vec<String>>,
    current: Mutex<Option<Connected>>,
    options: ClientOptions,
    /// How long one call keeps following redirects and trying members before it gives up with
    /// its last error.
    retry_for: Duration,
}

#[derive(Clone)]
struct Connected {
    address: String,
    client: Arc<Client>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl ClusterClient {
    /// A client for the members at `addresses` (at least one). Connects on the first call.
    pub fn new(addresses: Vec<String>, options: ClientOptions, retry_for: Duration) -> ClusterClient {
        assert!(!addresses.is_empty(), "a cluster client needs at least one member's address");
        ClusterClient { addresses: Mutex::new(addresses), current: Mutex::new(None), options, retry_for }
    }

    /// The member the client talks to now (the leader, once a call has succeeded).
    pub fn address_current(&self) -> Option<String> {
        lock(&self.current).as_ref().map(|connected| connected.address.clone())
    }

    pub fn create_accounts(&self, accounts: &[Account]) -> Result<Vec<EventResult>, ClientError> {
        self.call(|client| client.create_accounts(accounts))
    }

    pub fn create_transfers(&self, transfers: &[Transfer]) -> Result<Vec<EventResult>, ClientError> {
        self.call(|client| client.create_transfers(transfers))
    }

    pub fn lookup_accounts(&self, ids: &[AccountId]) -> Result<Vec<Account>, ClientError> {
        self.call(|client| client.lookup_accounts(ids))
    }

    pub fn lookup_transfers(&self, ids: &[TransferId]) -> Result<Vec<TransferRecord>, ClientError> {
        self.call(|client| client.lookup_transfers(ids))
    }

    pub fn lookup_balances(&self, ids: &[AccountId]) -> Result<Balances, ClientError> {
        self.call(|client| client.lookup_balances(ids))
    }

    /// Asks the leader for a checkpoint now; returns its journal op.
    pub fn snapshot(&self) -> Result<u64, ClientError> {
        self.call(|client| client.snapshot())
    }

    /// Calls `call` on the current member, following redirects and trying other members on
    /// failures whose outcome is unknown, until `retry_for` has passed.
    fn call<T>(&self, call: impl Fn(&Client) -> Result<T, ClientError>) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.retry_for;
        let mut wait = RETRY_WAIT_FIRST;
        let mut member_next = 0usize;
        let mut unknown_from = Vec::new();
        loop {
            let error = match self.connected(&mut member_next) {
                Ok(connected) => match call(&connected.client) {
                    Ok(value) => return Ok(value),
                    Err(error) => {
                        self.failed(&connected, &error, &mut member_next, &mut unknown_from);
                        error
                    }
                },
                Err(error) => error,
            };
            if !retryable(&error) || Instant::now() + wait > deadline {
                return Err(error);
            }
            // A redirect to a named leader is followed at once; anything else waits a little
            // (an election takes a moment), longer each time.
            if !matches!(error, ClientError::NotLeader { leader: Some(_) }) {
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_WAIT_MAX);
            }
        }
    }

    /// The current connection, or a new one to the next member.
    fn connected(&self, member_next: &mut usize) -> Result<Connected, ClientError> {
        let mut current = lock(&self.current);
        if let Some(connected) = current.as_ref() {
            return Ok(connected.clone());
        }
        let address = {
            let addresses = lock(&self.addresses);
            addresses[*member_next % addresses.len()].clone()
        };
        match Client::connect(address.as_str(), self.options.clone()) {
            Ok(client) => {
                let connected = Connected { address, client: Arc::new(client) };
                *current = Some(connected.clone());
                Ok(connected)
            }
            Err(error) => {
                *member_next += 1;
                Err(error)
            }
        }
    }

    /// After a failed call on `connected`: follow a named leader, or move to the next member.
    /// `unknown_from` holds the members that answered this call `unavailable` or timed out, and
    /// were not yet named by a redirect since: a redirect to one of them is not followed (once).
    fn failed(
        &self,
        connected: &Connected,
        error: &ClientError,
        member_next: &mut usize,
        unknown_from: &mut Vec<String>,
    ) {
        if !retryable(error) {
            return;
        }
        if matches!(error, ClientError::Unavailable | ClientError::Timeout)
            && !unknown_from.contains(&connected.address)
        {
            unknown_from.push(connected.address.clone());
        }
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|now| Arc::ptr_eq(&now.client, &connected.client)) {
            *current = None; // dropped here unless another caller still uses it
        }
        let mut addresses = lock(&self.addresses);
        let passed_over = match error {
            ClientError::NotLeader { leader: Some(leader) } => {
                let known = unknown_from.iter().position(|address| address == leader);
                known.map(|index| unknown_from.remove(index)).is_some()
            }
            _ => false,
        };
        match error {
            ClientError::NotLeader { leader: Some(leader) } if !passed_over => {
                let index = match addresses.iter().position(|address| address == leader) {
                    Some(index) => index,
                    None => {
                        addresses.push(leader.clone());
                        addresses.len() - 1
                    }
                };
                *member_next = index;
            }
            _ => *member_next += 1,
        }
    }
}

/// Failures after which the same request may go to another member: a redirect, a member with
/// no leader or no majority, and a connection that failed (the outcome unknown, so resending
/// with the same ids is the only way to learn it).
fn retryable(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::NotLeader { .. }
            | ClientError::Unavailable
            | ClientError::Closed
            | ClientError::Io(_)
            | ClientError::Timeout
            | ClientError::Frame(crate::protocol::Status::ShuttingDown)
    )
}
