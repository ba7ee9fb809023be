//! The wallet operations behind the routes: each one authorises, builds engine records, makes
//! the engine calls and returns plain values; the routes only parse and render.
//!
//! The one subtle part is turning a client's idempotency key into an engine transfer id
//! (`ids_resolve`); docs/HTTP.md, "Idempotency", gives the design and the proof that a retry
//! is never applied twice, with or without Redis.

use crate::auth::{Caller, SCOPE_TRANSFERS};
use crate::codes::{account_result, transfer_result};
use crate::currency::{Currencies, Currency};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::ids::{self, KeyTime};
use std::collections::{HashMap, HashSet};
use walletd_core::{
    Account, AccountFlags, AccountId, CreateAccountResult, CreateTransferResult, EventResult, Transfer, TransferFlags,
    TransferId, TransferRecord,
};
use walletd_history::query::{Applied, History};

/// Where a transfer's engine id comes from.
#[derive(Clone, Debug)]
pub enum IdSource {
    /// A client's UUIDv7 `transaction_id`, used as the engine id as it is.
    AsIs(TransferId),
    /// An idempotency key, scoped to the caller.
    Key(String),
    /// No key: a fresh id (captures and voids, which the engine makes safe by themselves).
    Fresh,
}

/// One transfer a caller asks for, before it has an id.
#[derive(Clone, Debug)]
pub struct Intent {
    pub source: IdSource,
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount: u128,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    pub timeout_s: u32,
    pub pending_id: TransferId,
}

impl Intent {
    fn transfer(&self, id: TransferId, initiator: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: self.debit,
            credit_account_id: self.credit,
            amount: walletd_core::Amount(self.amount),
            pending_id: self.pending_id,
            user_data_128: initiator,
            timeout_s: self.timeout_s,
            ledger: self.ledger,
            code: self.code,
            flags: TransferFlags(self.flags),
            ..Transfer::default()
        }
    }

    /// A digest of everything the request asked for: the response cache compares it.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "{}:{}:{}:{}:{}:{}:{}:{}",
            self.debit.0,
            self.credit.0,
            self.amount,
            self.ledger,
            self.code,
            self.flags,
            self.timeout_s,
            self.pending_id.0
        );
        blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
    }
}

/// What became of one intent.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Applied now (`replayed` false) or earlier (a retry: the original, as the engine has it).
    Done {
        record: TransferRecord,
        replayed: bool,
    },
    Failed {
        id: Option<TransferId>,
        error: ApiError,
    },
}

/// The currency of the caller's wallet with this id, if the caller owns it (by derivation).
pub fn owned_currency<'a>(currencies: &'a Currencies, caller: &Caller, wallet: AccountId) -> Option<&'a Currency> {
    let wallets = caller
        .wallets
        .get_or_init(|| currencies.all().iter().map(|currency| ids::wallet_id(&caller.user, &currency.code)).collect());
    let index = wallets.iter().position(|&owned| owned == wallet)?;
    currencies.all().get(index)
}

pub fn is_settlement(currencies: &Currencies, account: AccountId) -> bool {
    currencies.all().iter().any(|currency| currency.settlement == account)
}

/// The currency of a peer-to-peer transfer from `sender`, checking that the caller may debit
/// it. A user debits only their own wallets (a foreign wallet answers 404, as a missing one:
/// the caller learns nothing about other users' wallets); an operator with
/// `operator:transfers` may debit any wallet but must name the currency.
pub fn p2p_currency<'a>(
    currencies: &'a Currencies,
    caller: &Caller,
    sender: AccountId,
    receiver: AccountId,
    currency: Option<&str>,
) -> Result<&'a Currency, ApiError> {
    if is_settlement(currencies, sender) || is_settlement(currencies, receiver) {
        return Err(ApiError::forbidden(
            "settlement_account_forbidden",
            "settlement accounts move money only through deposits and withdrawals",
        ));
    }
    let named = match currency {
        Some(code) => Some(currency_get(currencies, code)?),
        None => None,
    };
    match owned_currency(currencies, caller, sender) {
        Some(owned) => match named {
            Some(named) if named.code != owned.code => Err(ApiError::new(
                422,
                "currency_mismatch",
                format!("the sending wallet holds {}, not {}", owned.code, named.code),
            )),
            _ => Ok(owned),
        },
        None if caller.has_scope(SCOPE_TRANSFERS) => named.ok_or_else(|| {
            ApiError::bad_request("currency_required", "an operator moving another user's money names the currency")
        }),
        None => Err(ApiError::not_found("wallet_not_found", "you have no wallet with this id")),
    }
}

pub fn currency_get<'a>(currencies: &'a Currencies, code: &str) -> Result<&'a Currency, ApiError> {
    currencies.get(code).ok_or_else(|| {
        let known: Vec<&str> = currencies.all().iter().map(|currency| currency.code.as_str()).collect();
        ApiError::bad_request(
            "currency_unknown",
            format!("unknown currency {code:?}; this gateway has {}", known.join(", ")),
        )
    })
}

/// The wallet account of `user` in `currency`.
pub fn wallet_account(user: &str, currency: &Currency) -> Account {
    Account {
        id: ids::wallet_id(user, &currency.code),
        user_data_128: ids::owner_hash(user),
        ledger: currency.ledger,
        code: ids::ACCOUNT_CODE_WALLET,
        flags: AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
        ..Account::default()
    }
}

pub fn settlement_account(currency: &Currency) -> Account {
    Account {
        id: currency.settlement,
        ledger: currency.ledger,
        code: ids::ACCOUNT_CODE_SETTLEMENT,
        ..Account::default()
    }
}

/// Creates accounts that may exist already; an error unless each exists now (made or not).
pub async fn accounts_ensure(engine: &Engine, accounts: Vec<Account>) -> Result<(), ApiError> {
    let results = engine.create_accounts(accounts, 0).await?;
    for result in results {
        let code = CreateAccountResult::from_u32(result.code).expect("the engine sends known codes");
        if code != CreateAccountResult::Exists {
            return Err(ApiError::from_mapped(account_result(code)));
        }
    }
    Ok(())
}

/// The engine id of each intent (docs/HTTP.md, "Idempotency"). Keys that carry their time
/// (UUIDv7, ULID) map by a pure function; other keys are anchored: the first use of a key
/// creates an account holding the time of that first use, and every later use reads it back,
/// so every use of a key maps to the same id however much later it comes and whatever a cache
/// forgot.
pub async fn ids_resolve(
    engine: &Engine,
    user: &str,
    intents: &[Intent],
) -> Result<Vec<Result<TransferId, ApiError>>, ApiError> {
    let now_ms = ids::now_ms();
    let mut resolved: Vec<Result<TransferId, ApiError>> = Vec::with_capacity(intents.len());
    let mut anchors: Vec<(usize, Account)> = Vec::new();
    for (index, intent) in intents.iter().enumerate() {
        resolved.push(match &intent.source {
            IdSource::AsIs(id) => Ok(*id),
            IdSource::Fresh => Ok(ids::fresh_transfer_id(now_ms)),
            IdSource::Key(key) => match ids::key_time(key) {
                KeyTime::Embedded(time_ms) => Ok(ids::key_transfer_id(user, key, time_ms)),
                KeyTime::Anchored => {
                    anchors.push((index, anchor_account(user, key, now_ms)));
                    Ok(TransferId(0)) // Filled below.
                }
            },
        });
    }
    if anchors.is_empty() {
        return Ok(resolved);
    }
    let times = anchors_resolve(engine, &anchors, now_ms).await?;
    for ((index, _), time) in anchors.iter().zip(times) {
        let IdSource::Key(key) = &intents[*index].source else { unreachable!("anchors are keys") };
        resolved[*index] = time.map(|time_ms| ids::key_transfer_id(user, key, time_ms));
    }
    Ok(resolved)
}

fn anchor_account(user: &str, key: &str, now_ms: u64) -> Account {
    Account {
        id: ids::anchor_id(user, key),
        user_data_128: ids::owner_hash(user),
        user_data_64: now_ms,
        ledger: ids::ANCHOR_LEDGER,
        code: ids::ACCOUNT_CODE_ANCHOR,
        ..Account::default()
    }
}

/// The time of each anchor: ours if we created it (or one identical to it, in the same
/// millisecond), the stored one if an earlier use did.
async fn anchors_resolve(
    engine: &Engine,
    anchors: &[(usize, Account)],
    now_ms: u64,
) -> Result<Vec<Result<u64, ApiError>>, ApiError> {
    let accounts: Vec<Account> = anchors.iter().map(|(_, account)| *account).collect();
    let results = engine.create_accounts(accounts.clone(), 0).await?;
    let mut times: Vec<Result<u64, ApiError>> = vec![Ok(now_ms); anchors.len()];
    let mut earlier: Vec<usize> = Vec::new();
    for EventResult { index, code } in results {
        let code = CreateAccountResult::from_u32(code).expect("the engine sends known codes");
        match code {
            CreateAccountResult::Exists => {}
            CreateAccountResult::ExistsWithDifferentUserData64 => earlier.push(index as usize),
            other => times[index as usize] = Err(ApiError::from_mapped(account_result(other))),
        }
    }
    if earlier.is_empty() {
        return Ok(times);
    }
    let ids: Vec<AccountId> = earlier.iter().map(|&index| accounts[index].id).collect();
    let found = engine.lookup_accounts(ids).await?;
    for index in earlier {
        let wanted = &accounts[index];
        times[index] = match found.iter().find(|account| account.id == wanted.id) {
            Some(stored) if stored.user_data_128 == wanted.user_data_128 && stored.code == ids::ACCOUNT_CODE_ANCHOR => {
                assert!(stored.user_data_64 != 0, "an anchor holds a time");
                Ok(stored.user_data_64)
            }
            _ => Err(ApiError::new(500, "internal_error", "an idempotency anchor could not be read back")),
        };
    }
    Ok(times)
}

/// Submits intents as one engine call (optionally as one atomic linked chain) and returns
/// each one's outcome with the engine's record of it (id, status, timestamp). With a history,
/// retries too old for the engine's window are answered from it (`too_old_resolve`).
pub async fn transfers_submit(
    engine: &Engine,
    history: Option<&History>,
    caller: &Caller,
    intents: &[Intent],
    atomic: bool,
) -> Result<Vec<Outcome>, ApiError> {
    assert!(!intents.is_empty() && intents.len() <= walletd_core::BATCH_EVENTS_MAX as usize);
    keys_unique(intents)?;
    let resolved = ids_resolve(engine, &caller.user, intents).await?;
    let initiator = ids::owner_hash(&caller.user);
    if atomic {
        if let Some(error) = resolved.iter().find_map(|id| id.as_ref().err()) {
            return Ok(intents.iter().map(|_| Outcome::Failed { id: None, error: error.clone() }).collect());
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; intents.len()];
    let mut sent: Vec<(usize, Transfer)> = Vec::with_capacity(intents.len());
    for (index, id) in resolved.into_iter().enumerate() {
        match id {
            Ok(id) => sent.push((index, intents[index].transfer(id, initiator))),
            Err(error) => outcomes[index] = Some(Outcome::Failed { id: None, error }),
        }
    }
    if atomic {
        let last = sent.len() - 1;
        for (position, (_, transfer)) in sent.iter_mut().enumerate() {
            if position < last {
                transfer.flags.0 |= TransferFlags::LINKED;
            }
        }
    }
    if !sent.is_empty() {
        let transfers: Vec<Transfer> = sent.iter().map(|(_, transfer)| *transfer).collect();
        let submitted = engine.create_transfers(transfers.clone(), caller.trace_id).await?;
        let codes = codes_dense(&submitted.results, transfers.len());
        let atomic_replay = atomic && codes.contains(&(CreateTransferResult::Exists as u32));
        let mut done = if atomic_replay {
            atomic_replay_resolve(engine, &transfers).await?
        } else {
            outcomes_from_codes(engine, &transfers, &codes, submitted.timestamp_ns).await?
        };
        if let Some(history) = history {
            too_old_resolve(history, &transfers, &codes, atomic, submitted.op, &mut done).await;
        }
        for ((index, _), outcome) in sent.iter().zip(done) {
            outcomes[*index] = Some(outcome);
        }
    }
    Ok(outcomes.into_iter().map(|outcome| outcome.expect("every intent has an outcome")).collect())
}

/// The code of a refusal as too old for the engine's window, when nothing better is known.
const WINDOW_PASSED: &str = "idempotency_window_passed";

/// Answers from the history the transfers the engine refused as too old for its window (and
/// any it applied and forgot before they were read back), all refused in the frame of journal
/// op `op`. The engine never applies an id after refusing it as too old (its horizon only
/// rises), so if the id was ever applied it was at or before `op`: a history that has reached
/// `op` knows. Its answer per transfer: the original outcome (if the request is the same),
/// `original_not_applied` (it has reached `op` and holds no such transfer), or
/// `history_behind` (not there yet: retry). docs/HTTP.md, "Retries older than the window".
async fn too_old_resolve(
    history: &History,
    transfers: &[Transfer],
    codes: &[u32],
    atomic: bool,
    op: u64,
    outcomes: &mut [Outcome],
) {
    assert_eq!(transfers.len(), outcomes.len());
    let too_old = |outcome: &Outcome| matches!(outcome, Outcome::Failed { error, .. } if error.code == WINDOW_PASSED);
    let indexes: Vec<usize> = (0..outcomes.len()).filter(|&index| too_old(&outcomes[index])).collect();
    // A reply without an op (a server that predates it) cannot date the refusal: it stands.
    if indexes.is_empty() || op == 0 {
        return;
    }
    // An atomic batch is all one request: ask for every item, to recognise an exact retry.
    let asked: Vec<usize> = if atomic { (0..transfers.len()).collect() } else { indexes.clone() };
    let ids: Vec<u128> = asked.iter().map(|&index| transfers[index].id.0).collect();
    let answers = match transfers_applied_waiting(history, &ids, op).await {
        Ok(answers) => answers,
        Err(error) => {
            let error = crate::history::unavailable(&error);
            for &index in &indexes {
                outcomes[index] = Outcome::Failed { id: Some(transfers[index].id), error: error.clone() };
            }
            return;
        }
    };
    let outcome_of = |index: usize, answer: &Applied| applied_outcome(&transfers[index], codes[index], answer);
    if atomic {
        let replay: Vec<Outcome> =
            asked.iter().zip(&answers).map(|(&index, answer)| outcome_of(index, answer)).collect();
        if replay.iter().all(|outcome| matches!(outcome, Outcome::Done { .. })) {
            outcomes.clone_from_slice(&replay);
            return;
        }
    }
    for (&index, answer) in asked.iter().zip(&answers) {
        if !indexes.contains(&index) {
            continue;
        }
        outcomes[index] = match outcome_of(index, answer) {
            // Part of an atomic batch applied before, but not all of it: a batch mixing keys.
            Outcome::Done { .. } if atomic => Outcome::Failed {
                id: Some(transfers[index].id),
                error: ApiError::new(
                    409,
                    "batch_keys_partially_used",
                    "this key was used by an earlier request: an atomic batch must be all new keys or an exact retry",
                ),
            },
            outcome => outcome,
        };
    }
}

/// How long a too-old retry waits at most for the history to reach the op of its refusal
/// before it is answered `history_behind`: a live projection is normally a moment behind the
/// engine, and the refusal's op is the newest there is, so without a short wait a retry whose
/// original was never applied would mostly be told "not yet" under load.
const HISTORY_BEHIND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const HISTORY_BEHIND_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// `History::transfers_applied`, asked again (bounded by `HISTORY_BEHIND_WAIT`) while an
/// answer is `Behind`.
async fn transfers_applied_waiting(
    history: &History,
    ids: &[u128],
    op: u64,
) -> Result<Vec<Applied>, walletd_history::HistoryError> {
    let deadline = tokio::time::Instant::now() + HISTORY_BEHIND_WAIT;
    loop {
        let answers = history.transfers_applied(ids, op).await?;
        let behind = answers.iter().any(|answer| matches!(answer, Applied::Behind { .. }));
        if !behind || tokio::time::Instant::now() >= deadline {
            return Ok(answers);
        }
        tokio::time::sleep(HISTORY_BEHIND_POLL).await;
    }
}

/// The outcome of `asked` from the history's answer about its id.
fn applied_outcome(asked: &Transfer, code: u32, answer: &Applied) -> Outcome {
    let id = Some(asked.id);
    match answer {
        Applied::Yes(view) => match crate::history::record_of(view) {
            Ok(record) if same_request(&record.transfer, asked) => {
                // Applied in this very frame and forgotten before the read-back: not a replay.
                Outcome::Done { record, replayed: code != CreateTransferResult::Ok as u32 }
            }
            Ok(_) => Outcome::Failed {
                id,
                error: ApiError::new(
                    409,
                    "idempotency_key_reused",
                    "the idempotency key was first used with a different request",
                ),
            },
            Err(error) => Outcome::Failed { id, error },
        },
        Applied::No { position } => Outcome::Failed { id, error: crate::history::original_not_applied(*position) },
        Applied::Behind { position, as_of_op } => {
            Outcome::Failed { id, error: crate::history::behind(*position, *as_of_op) }
        }
    }
}

/// Two intents of one request with one key would be one transfer: refuse the request.
fn keys_unique(intents: &[Intent]) -> Result<(), ApiError> {
    #[derive(PartialEq, Eq, Hash)]
    enum Key<'a> {
        Text(&'a str),
        Id(u128),
    }
    let mut seen = HashSet::with_capacity(intents.len());
    for intent in intents {
        let key = match &intent.source {
            IdSource::Key(key) => Key::Text(key),
            IdSource::AsIs(id) => Key::Id(id.0),
            IdSource::Fresh => continue,
        };
        if !seen.insert(key) {
            return Err(ApiError::bad_request("idempotency_key_invalid", "two items of the request have the same key"));
        }
    }
    Ok(())
}

fn codes_dense(results: &[EventResult], count: usize) -> Vec<u32> {
    let mut codes = vec![0u32; count];
    for result in results {
        codes[result.index as usize] = result.code;
    }
    codes
}

/// The record a transfer created now has, without reading it back: a plain transfer or a hold
/// is stored as sent, stamped with the timestamp it was applied at (`first_timestamp_ns`, the
/// request's first event's, + its index). A capture or void stores what it resolved (the
/// hold's accounts and amount), so it is read back.
fn record_created(transfer: &Transfer, index: usize, first_timestamp_ns: u64) -> Option<TransferRecord> {
    let resolving =
        transfer.flags.contains(TransferFlags::POST_PENDING) || transfer.flags.contains(TransferFlags::VOID_PENDING);
    if resolving {
        return None;
    }
    assert!(first_timestamp_ns != 0, "a create's answer carries its timestamp");
    let status = if transfer.flags.contains(TransferFlags::PENDING) {
        walletd_core::TransferStatus::Pending
    } else {
        walletd_core::TransferStatus::Posted
    };
    let timestamp = first_timestamp_ns + index as u64;
    Some(TransferRecord { transfer: Transfer { timestamp, ..*transfer }, status })
}

/// The outcome of each transfer from its result code. A plain transfer or hold applied now is
/// answered from the create's own timestamp; the others applied (captures and voids, and
/// `exists`: a retry, whose original may differ in time and status) are read back.
async fn outcomes_from_codes(
    engine: &Engine,
    transfers: &[Transfer],
    codes: &[u32],
    first_timestamp_ns: u64,
) -> Result<Vec<Outcome>, ApiError> {
    let exists = CreateTransferResult::Exists as u32;
    let created: Vec<Option<TransferRecord>> = transfers
        .iter()
        .zip(codes)
        .enumerate()
        .map(
            |(index, (transfer, &code))| {
                if code == 0 {
                    record_created(transfer, index, first_timestamp_ns)
                } else {
                    None
                }
            },
        )
        .collect();
    let applied: Vec<TransferId> = transfers
        .iter()
        .zip(codes)
        .zip(&created)
        .filter(|((_, &code), created)| (code == 0 || code == exists) && created.is_none())
        .map(|((transfer, _), _)| transfer.id)
        .collect();
    let records = if applied.is_empty() { Vec::new() } else { records_lookup(engine, applied).await? };
    let records: HashMap<TransferId, TransferRecord> =
        records.into_iter().map(|record| (record.transfer.id, record)).collect();
    let mut outcomes = Vec::with_capacity(transfers.len());
    for ((transfer, &code), created) in transfers.iter().zip(codes).zip(created) {
        if let Some(record) = created {
            outcomes.push(Outcome::Done { record, replayed: false });
        } else if code == 0 || code == exists {
            let outcome = match records.get(&transfer.id) {
                Some(record) => Outcome::Done { record: *record, replayed: code == exists },
                // Applied, then forgotten before the read: the window moved in between.
                None => Outcome::Failed {
                    id: Some(transfer.id),
                    error: ApiError::from_mapped(transfer_result(CreateTransferResult::IdTooOld)),
                },
            };
            outcomes.push(outcome);
        } else {
            let result = CreateTransferResult::from_u32(code).expect("the engine sends known codes");
            outcomes
                .push(Outcome::Failed { id: Some(transfer.id), error: ApiError::from_mapped(transfer_result(result)) });
        }
    }
    Ok(outcomes)
}

/// Reads transfers back, in frames of at most 7279 ids.
pub async fn records_lookup(engine: &Engine, ids: Vec<TransferId>) -> Result<Vec<TransferRecord>, ApiError> {
    let mut records = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(7279) {
        records.extend(engine.lookup_transfers(chunk.to_vec()).await?);
    }
    Ok(records)
}

/// An atomic batch in which some transfer exists already: the engine rolled the chain back at
/// the first `exists`, so nothing was applied now. If every transfer exists with the fields
/// asked for, the batch is an exact retry and its original outcome is returned; otherwise the
/// batch mixes used and new keys, which an all-or-nothing request cannot honour.
async fn atomic_replay_resolve(engine: &Engine, transfers: &[Transfer]) -> Result<Vec<Outcome>, ApiError> {
    let records = records_lookup(engine, transfers.iter().map(|transfer| transfer.id).collect()).await?;
    let records: HashMap<TransferId, TransferRecord> =
        records.into_iter().map(|record| (record.transfer.id, record)).collect();
    let found: Vec<Option<&TransferRecord>> = transfers.iter().map(|transfer| records.get(&transfer.id)).collect();
    let exact = transfers
        .iter()
        .zip(&found)
        .all(|(transfer, record)| record.is_some_and(|r| same_request(&r.transfer, transfer)));
    let outcomes = transfers
        .iter()
        .zip(&found)
        .map(|(transfer, record)| match record {
            Some(record) if exact => Outcome::Done { record: **record, replayed: true },
            Some(record) if !same_request(&record.transfer, transfer) => Outcome::Failed {
                id: Some(transfer.id),
                error: ApiError::new(409, "idempotency_key_reused", "the key was first used with a different request"),
            },
            Some(_) => Outcome::Failed {
                id: Some(transfer.id),
                error: ApiError::new(
                    409,
                    "batch_keys_partially_used",
                    "this key was used by an earlier request: an atomic batch must be all new keys or an exact retry",
                ),
            },
            None => Outcome::Failed {
                id: Some(transfer.id),
                error: ApiError::from_mapped(transfer_result(CreateTransferResult::LinkedEventFailed)),
            },
        })
        .collect();
    Ok(outcomes)
}

/// The fields a client chose, linked flag aside.
fn same_request(stored: &Transfer, asked: &Transfer) -> bool {
    let flags = |transfer: &Transfer| transfer.flags.0 & !TransferFlags::LINKED;
    // A capture or void leaves accounts, ledger, code (and a full capture or a void the
    // amount) zero: the engine stores what they resolved to, and a zero matches it, as the
    // engine's own `exists` check has it.
    let resolving =
        asked.flags.contains(TransferFlags::POST_PENDING) || asked.flags.contains(TransferFlags::VOID_PENDING);
    let same = |stored: u128, asked: u128| stored == asked || (resolving && asked == 0);
    same(stored.debit_account_id.0, asked.debit_account_id.0)
        && same(stored.credit_account_id.0, asked.credit_account_id.0)
        && same(stored.amount.0, asked.amount.0)
        && stored.pending_id == asked.pending_id
        && same(stored.ledger.into(), asked.ledger.into())
        && same(stored.code.into(), asked.code.into())
        && stored.user_data_128 == asked.user_data_128
        && stored.timeout_s == asked.timeout_s
        && flags(stored) == flags(asked)
}

/// One intent, one outcome, as an `ApiError` when it failed.
pub async fn transfer_one(
    engine: &Engine,
    history: Option<&History>,
    caller: &Caller,
    intent: Intent,
) -> Result<(TransferRecord, bool), ApiError> {
    let outcome = transfers_submit(engine, history, caller, std::slice::from_ref(&intent), false).await?;
    match outcome.into_iter().next().expect("one outcome") {
        Outcome::Done { record, replayed } => Ok((record, replayed)),
        Outcome::Failed { error, .. } => Err(error),
    }
}

/// May the caller see this transfer? Its initiator, the owner of either wallet, or an operator.
pub fn transfer_visible(currencies: &Currencies, caller: &Caller, transfer: &Transfer) -> bool {
    if caller.has_scope(crate::auth::SCOPE_OPERATOR) || caller.has_scope(SCOPE_TRANSFERS) {
        return true;
    }
    if transfer.user_data_128 == ids::owner_hash(&caller.user) {
        return true;
    }
    let own = |account: AccountId| owned_currency(currencies, caller, account).is_some();
    own(transfer.debit_account_id) || own(transfer.credit_account_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(debit: u128, credit: u128, amount: u128, flags: u16) -> Transfer {
        Transfer {
            id: TransferId(7),
            debit_account_id: AccountId(debit),
            credit_account_id: AccountId(credit),
            amount: walletd_core::Amount(amount),
            pending_id: TransferId(if flags == 0 { 0 } else { 5 }),
            ledger: if debit == 0 { 0 } else { 840 },
            code: if debit == 0 { 0 } else { 1 },
            flags: TransferFlags(flags),
            ..Transfer::default()
        }
    }

    #[test]
    fn a_capture_or_void_matches_what_it_resolved_to() {
        let (post, void) = (TransferFlags::POST_PENDING, TransferFlags::VOID_PENDING);
        // (stored, asked, same)
        let cases = [
            (transfer(1, 2, 30, post), transfer(0, 0, 0, post), true),
            (transfer(1, 2, 10, post), transfer(0, 0, 10, post), true),
            (transfer(1, 2, 10, post), transfer(0, 0, 5, post), false),
            (transfer(1, 2, 20, void), transfer(0, 0, 0, void), true),
            (transfer(1, 2, 20, void), transfer(0, 0, 0, post), false),
            (transfer(1, 2, 20, post), transfer(1, 3, 0, post), false),
            // A plain transfer's zero is a zero.
            (transfer(1, 2, 20, 0), transfer(1, 2, 20, 0), true),
            (transfer(1, 2, 20, 0), transfer(1, 2, 0, 0), false),
        ];
        for (stored, asked, same) in cases {
            assert_eq!(same_request(&stored, &asked), same, "{stored:?} asked as {asked:?}");
        }
    }
}
