//! The routes: each parses and authorises, calls one domain function, and maps its result.
//! Errors go out through `ApiError` and are rendered by `request_context`, the middleware that
//! also gives each request its id and trace context and records its metrics.

use crate::amount::amount_parse;
use crate::api::*;
use crate::auth::{Caller, SCOPE_ACCOUNTS, SCOPE_DEPOSITS, SCOPE_LIMITS, SCOPE_WITHDRAWALS};
use crate::currency::Currency;
use crate::domain::{self, IdSource, Intent};
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::ids::{self, id_parse, is_uuid_v7};
use crate::ratelimit::Decision;
use crate::trace::TraceContext;
use crate::Gateway;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use walletd_core::{AccountId, AccountLimits, Amount, LimitFlags, TransferFlags, TransferId};

pub type AppState = Arc<Gateway>;

/// The API's routes, registered with their OpenAPI operations in one place.
pub fn router(api: utoipa::openapi::OpenApi) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(api)
        .routes(routes!(wallet_create, wallets_list))
        .routes(routes!(wallet_get))
        .routes(routes!(wallet_transactions))
        .routes(routes!(wallet_limits_set))
        .routes(routes!(wallet_close))
        .routes(routes!(wallet_reopen))
        .routes(routes!(transfer_create))
        .routes(routes!(transfer_get))
        .routes(routes!(balance_transfer))
        .routes(routes!(transfers_batch))
        .routes(routes!(hold_create))
        .routes(routes!(hold_capture))
        .routes(routes!(hold_void))
        .routes(routes!(deposit))
        .routes(routes!(withdrawal))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

// ---------------------------------------------------------------------------------------------
// Extractors.

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// The verified caller, once the rate limiter has let the request through.
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        let mut caller = state.verifier.authenticate(header).await?;
        caller.trace_id = parts.extensions.get::<TraceContext>().map_or(0, |trace| trace.trace_id);
        match state.limiter.check(&caller.user).await {
            Decision::Allow => {}
            Decision::Deny { retry_after } => {
                state.metrics.rate_limited_count();
                let seconds = retry_after.as_secs_f64().ceil() as u64;
                return Err(ApiError::new(429, "rate_limited", "too many requests for this user; see Retry-After")
                    .retry_after(seconds));
            }
            Decision::Unavailable => {
                return Err(
                    ApiError::new(503, "rate_limiter_unavailable", "the rate limiter's Redis is down").retry_after(1)
                );
            }
        }
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// JSON bodies with rejections in the API's error shape.
///
/// Parsed by serde_json straight from the body's bytes. axum's `Json` tracks the path of every
/// field as it goes (`serde_path_to_error`, a `String` per key), which only its error message
/// needs and which cost a batch of a thousand transfers thousands of allocations; so only a
/// body that serde_json refuses is parsed again by `Json`, for that message.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body<T>, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(415, "unsupported_media_type", "send Content-Type: application/json"));
        }
        let bytes = match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(413, "body_too_large", "the body is larger than the gateway accepts"));
            }
            Err(rejection) => return Err(ApiError::bad_request("invalid_json", rejection.body_text())),
        };
        if let Ok(value) = serde_json::from_slice::<T>(&bytes) {
            return Ok(Body(value));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Body(value)), // cannot happen: the same parser refused it
            Err(rejection) => Err(ApiError::bad_request("invalid_json", rejection.body_text())),
        }
    }
}

/// What axum's `Json` accepts: `application/json`, or `application/*+json`, with any parameters.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn wallet_id_parse(text: &str, field: &str) -> Result<AccountId, ApiError> {
    id_parse(text).filter(|&value| value != 0 && value != u128::MAX).map(AccountId).ok_or_else(|| {
        ApiError::bad_request("invalid_id", format!("{field} is not an id (a UUID: 8-4-4-4-12 hex digits)"))
    })
}

fn amount_get(text: &str, currency: &Currency) -> Result<u128, ApiError> {
    amount_parse(text, currency.scale).map_err(|error| ApiError::bad_request(error.code(), format!("amount: {error}")))
}

fn key_check(key: &str) -> Result<(), ApiError> {
    if ids::key_valid(key) {
        return Ok(());
    }
    Err(ApiError::bad_request("idempotency_key_invalid", "an idempotency key is 1 to 255 printable ASCII characters"))
}

// ---------------------------------------------------------------------------------------------
// The response cache. The engine itself answers every retry within its window (it finds the
// id derived from the key: `exists`, or `exists_with_different_*`), so the cache is read only
// when the engine can no longer tell (`idempotency_window_passed`): then Redis, which keeps
// each keyed success for the retention, still has the original. Writes are not waited for. It
// is only a cache: without it, or after a flush, the answer past the window is a refusal,
// never a second application.

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    fingerprint: String,
    status: u16,
    body: Box<RawValue>,
}

fn cache_key(user: &str, key: &str, endpoint: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [user, key, endpoint] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("walletd:idem:{}", hasher.finalize().to_hex())
}

/// Runs `work`; caches its success; past the engine's window, answers from the cache.
async fn idempotent<F, Fut>(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    endpoint: &str,
    fingerprint: String,
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, bool, Box<RawValue>), ApiError>>,
{
    let cache =
        state.cache.as_ref().zip(key).map(|(redis, key)| (Arc::clone(redis), cache_key(&caller.user, key, endpoint)));
    match work().await {
        Ok((status, replayed, body)) => {
            if let Some((redis, cache_key)) = cache {
                let cached = Cached { fingerprint, status: status.as_u16(), body: body.clone() };
                let value = serde_json::to_string(&cached).expect("serialises");
                let retention_s = state.options.idempotency_retention_s;
                tokio::spawn(async move { redis.set_ex(cache_key, value, retention_s).await });
            }
            Ok(replayed_response(status, replayed, body))
        }
        Err(error) if CACHE_ANSWERS.contains(&error.code) => {
            let Some((redis, cache_key)) = cache else { return Err(error) };
            let Some(Some(text)) = redis.get(cache_key).await else { return Err(error) };
            let Ok(cached) = serde_json::from_str::<Cached>(&text) else { return Err(error) };
            if cached.fingerprint != fingerprint {
                return Err(ApiError::new(
                    409,
                    "idempotency_key_reused",
                    "the idempotency key was first used with a different request",
                ));
            }
            state.metrics.idempotency_cache_hit_count();
            let status = StatusCode::from_u16(cached.status).unwrap_or(StatusCode::OK);
            Ok(replayed_response(status, true, cached.body))
        }
        Err(error) => Err(error),
    }
}

/// The refusals past the engine's window that the cache may still answer: the engine's own,
/// and the history's "not yet" and "cannot read now" (never its "not applied", which is final).
const CACHE_ANSWERS: &[&str] = &["idempotency_window_passed", "history_behind", "history_unavailable"];

fn replayed_response(status: StatusCode, replayed: bool, body: Box<RawValue>) -> Response {
    let body: Box<str> = body.into();
    let content_type = HeaderValue::from_static("application/json");
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], body.into_string()).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// A response body serialised once: sent as it is, and cached as it is (no `Value` tree).
fn json_of<T: serde::Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("API bodies serialise")
}

// ---------------------------------------------------------------------------------------------
// Wallets.

/// Create the caller's wallet in a currency (one per currency; creating it again returns it).
#[utoipa::path(post, path = "/v1/wallets", tag = "wallets", request_body = WalletCreateRequest,
    responses((status = 201, body = Wallet, description = "Created"), (status = 200, body = Wallet, description = "It existed"), Errors),
    security(("bearer" = [])))]
async fn wallet_create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<WalletCreateRequest>,
) -> Result<Response, ApiError> {
    let currency = domain::currency_get(&state.currencies, &request.currency)?;
    let account = domain::wallet_account(&caller.user, currency);
    let results = state.engine.create_accounts(vec![account], caller.trace_id).await?;
    let status = match results.first() {
        None => StatusCode::CREATED,
        Some(result) => {
            let code = walletd_core::CreateAccountResult::from_u32(result.code).expect("known code");
            let mapped = crate::codes::account_result(code);
            if mapped.status >= 300 {
                return Err(ApiError::from_mapped(mapped));
            }
            StatusCode::OK
        }
    };
    let wallet = wallet_read(&state, account.id).await?;
    Ok((status, Json(wallet)).into_response())
}

async fn wallet_read(state: &AppState, id: AccountId) -> Result<Wallet, ApiError> {
    let balances = state.engine.lookup_balances(vec![id]).await?;
    let read = balances
        .reads
        .first()
        .ok_or_else(|| ApiError::not_found("wallet_not_found", "you have no wallet with this id"))?;
    Ok(wallet_view(&state.currencies, read, balances.holds_of(read)))
}

/// The one rule of wallet reads: its owner (as recorded in the account) or an operator with
/// `operator:accounts` or `operator:limits` may read a wallet; nobody reads settlement or
/// anchor accounts through the API.
fn wallet_readable(caller: &Caller, account: &walletd_core::Account) -> bool {
    let wallet = account.code == ids::ACCOUNT_CODE_WALLET;
    let owner = wallet && account.user_data_128 == ids::owner_hash(&caller.user);
    let operator = caller.has_scope(SCOPE_ACCOUNTS) || caller.has_scope(SCOPE_LIMITS);
    owner || (operator && wallet)
}

fn wallet_not_found() -> ApiError {
    ApiError::not_found("wallet_not_found", "you have no wallet with this id")
}

/// The wallet, if the caller may read it (`wallet_readable`); a foreign one is 404, as a missing one.
async fn wallet_read_owned(state: &AppState, caller: &Caller, id: AccountId) -> Result<Wallet, ApiError> {
    let balances = state.engine.lookup_balances(vec![id]).await?;
    let read = balances.reads.first().ok_or_else(wallet_not_found)?;
    if !wallet_readable(caller, &read.account) {
        return Err(wallet_not_found());
    }
    Ok(wallet_view(&state.currencies, read, balances.holds_of(read)))
}

/// List the caller's wallets: one read of the ids derived from (caller, currency).
#[utoipa::path(get, path = "/v1/wallets", tag = "wallets", responses((status = 200, body = WalletList), Errors), security(("bearer" = [])))]
async fn wallets_list(State(state): State<AppState>, caller: Caller) -> Result<Json<WalletList>, ApiError> {
    let ids: Vec<AccountId> =
        state.currencies.all().iter().map(|currency| ids::wallet_id(&caller.user, &currency.code)).collect();
    let balances = state.engine.lookup_balances(ids).await?;
    let owner = ids::owner_hash(&caller.user);
    let wallets = balances
        .reads
        .iter()
        .filter(|read| read.account.user_data_128 == owner)
        .map(|read| wallet_view(&state.currencies, read, balances.holds_of(read)))
        .collect();
    Ok(Json(WalletList { wallets }))
}

/// A wallet's balances, holds and limits: one consistent read. Another user's wallet is 404,
/// like a missing one.
#[utoipa::path(get, path = "/v1/wallets/{id}", tag = "wallets", params(("id" = String, Path, description = "Wallet id")),
    responses((status = 200, body = Wallet), Errors), security(("bearer" = [])))]
async fn wallet_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Wallet>, ApiError> {
    let id = wallet_id_parse(&id, "the wallet id")?;
    Ok(Json(wallet_read_owned(&state, &caller, id).await?))
}

/// A wallet's history, newest first, from the PostgreSQL projection (eventually consistent:
/// `history.op` says how far it is). Read like the wallet itself: its owner or an operator.
#[utoipa::path(get, path = "/v1/wallets/{id}/transactions", tag = "wallets",
    params(("id" = String, Path, description = "Wallet id"), TransactionsQuery),
    responses((status = 200, body = TransactionPage), Errors), security(("bearer" = [])))]
async fn wallet_transactions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<TransactionsQuery>, QueryRejection>,
) -> Result<Json<TransactionPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))?;
    let id = wallet_id_parse(&id, "the wallet id")?;
    let limit = crate::history::limit_parse(query.limit.as_deref())?;
    let cursor = match query.cursor.as_deref() {
        Some(text) => Some(crate::history::cursor_decode(id, text).ok_or_else(|| {
            ApiError::bad_request("cursor_invalid", "cursor is not one a previous page of this wallet handed out")
        })?),
        None => None,
    };
    let history = state.history.as_ref().ok_or_else(crate::history::not_configured)?;
    let accounts = state.engine.lookup_accounts(vec![id]).await?;
    let account = accounts.first().filter(|account| wallet_readable(&caller, account)).ok_or_else(wallet_not_found)?;
    let page = history.transactions(id.0, cursor, limit).await.map_err(|error| crate::history::unavailable(&error))?;
    Ok(Json(transaction_page(&state.currencies, account, &page, state.engine.op_seen())))
}

/// Operator: set a wallet's limits (absent fields: no such limit).
#[utoipa::path(put, path = "/v1/wallets/{id}/limits", tag = "operators", params(("id" = String, Path, description = "Wallet id")),
    request_body = LimitsRequest, responses((status = 200, body = Wallet), Errors), security(("bearer" = [])))]
async fn wallet_limits_set(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<LimitsRequest>,
) -> Result<Json<Wallet>, ApiError> {
    caller.scope_require(SCOPE_LIMITS)?;
    let id = wallet_id_parse(&id, "the wallet id")?;
    let current = wallet_read_owned(&state, &caller, id).await?;
    let currency = domain::currency_get(&state.currencies, &current.currency)?;
    let mut limits = AccountLimits { account_id: id, ..AccountLimits::default() };
    let mut amount = |text: &Option<String>, flag: u32, slot: &mut Amount| -> Result<(), ApiError> {
        if let Some(text) = text {
            *slot = Amount(amount_get(text, currency)?);
            limits.flags.0 |= flag;
        }
        Ok(())
    };
    let mut values = [Amount::ZERO; 4];
    amount(&request.overdraft_max, LimitFlags::OVERDRAFT, &mut values[0])?;
    amount(&request.balance_max, LimitFlags::BALANCE_MAX, &mut values[1])?;
    amount(&request.daily_debit_amount_max, LimitFlags::DAILY_DEBIT_AMOUNT, &mut values[2])?;
    amount(&request.monthly_debit_amount_max, LimitFlags::MONTHLY_DEBIT_AMOUNT, &mut values[3])?;
    [limits.overdraft_max, limits.balance_max, limits.daily_debit_amount_max, limits.monthly_debit_amount_max] = values;
    if let Some(count) = request.daily_debit_count_max {
        limits.daily_debit_count_max = count;
        limits.flags.0 |= LimitFlags::DAILY_DEBIT_COUNT;
    }
    if let Some(count) = request.monthly_debit_count_max {
        limits.monthly_debit_count_max = count;
        limits.flags.0 |= LimitFlags::MONTHLY_DEBIT_COUNT;
    }
    let results = state.engine.set_account_limits(vec![limits]).await?;
    if let Some(result) = results.first() {
        let code = walletd_core::SetLimitsResult::from_u32(result.code).expect("known code");
        return Err(ApiError::from_mapped(crate::codes::set_limits_result(code)));
    }
    Ok(Json(wallet_read(&state, id).await?))
}

async fn wallet_state_set(state: &AppState, caller: &Caller, id: &str, close: bool) -> Result<Json<Wallet>, ApiError> {
    caller.scope_require(SCOPE_ACCOUNTS)?;
    let id = wallet_id_parse(id, "the wallet id")?;
    wallet_read_owned(state, caller, id).await?;
    let results = state.engine.close_accounts(vec![id], close).await?;
    if let Some(result) = results.first() {
        let code = walletd_core::AccountStateResult::from_u32(result.code).expect("known code");
        return Err(ApiError::from_mapped(crate::codes::account_state_result(code)));
    }
    Ok(Json(wallet_read(state, id).await?))
}

/// Operator: close a wallet (new transfers touching it are refused).
#[utoipa::path(post, path = "/v1/wallets/{id}/close", tag = "operators", params(("id" = String, Path, description = "Wallet id")),
    responses((status = 200, body = Wallet), Errors), security(("bearer" = [])))]
async fn wallet_close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Wallet>, ApiError> {
    wallet_state_set(&state, &caller, &id, true).await
}

/// Operator: reopen a closed wallet.
#[utoipa::path(post, path = "/v1/wallets/{id}/reopen", tag = "operators", params(("id" = String, Path, description = "Wallet id")),
    responses((status = 200, body = Wallet), Errors), security(("bearer" = [])))]
async fn wallet_reopen(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Wallet>, ApiError> {
    wallet_state_set(&state, &caller, &id, false).await
}

// ---------------------------------------------------------------------------------------------
// Transfers.

/// The status of a keyed request: 201, also on a retry (with `Idempotent-Replayed: true`).
async fn transfer_answer(
    state: &AppState,
    caller: &Caller,
    intent: Intent,
) -> Result<(StatusCode, bool, Box<RawValue>), ApiError> {
    let (record, replayed) = domain::transfer_one(&state.engine, state.history.as_ref(), caller, intent).await?;
    let mut body = Vec::with_capacity(400);
    crate::render::transfer_json(&state.currencies, &record, &mut body);
    let body = String::from_utf8(body).expect("the renderer writes UTF-8");
    Ok((StatusCode::CREATED, replayed, RawValue::from_string(body).expect("the renderer writes JSON")))
}

fn p2p_intent(
    state: &AppState,
    caller: &Caller,
    sender: &str,
    receiver: &str,
    amount: &str,
    currency: Option<&str>,
    source: IdSource,
) -> Result<Intent, ApiError> {
    let sender = wallet_id_parse(sender, "sender_id")?;
    let receiver = wallet_id_parse(receiver, "receiver_id")?;
    let currency = domain::p2p_currency(&state.currencies, caller, sender, receiver, currency)?;
    Ok(Intent {
        source,
        debit: sender,
        credit: receiver,
        amount: amount_get(amount, currency)?,
        ledger: currency.ledger,
        code: ids::TRANSFER_CODE_P2P,
        flags: 0,
        timeout_s: 0,
        pending_id: TransferId(0),
    })
}

/// Send money from one of the caller's wallets to any wallet (the first seed's body).
#[utoipa::path(post, path = "/v1/transfers", tag = "transfers", request_body = TransferRequest,
    responses((status = 201, body = TransferView, description = "Applied (or, with Idempotent-Replayed: true, applied before)"), Errors),
    security(("bearer" = [])))]
async fn transfer_create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<TransferRequest>,
) -> Result<Response, ApiError> {
    key_check(&request.idempotency_key)?;
    let source = IdSource::Key(request.idempotency_key.clone());
    let intent = p2p_intent(
        &state,
        &caller,
        &request.sender_id,
        &request.receiver_id,
        &request.amount,
        request.currency.as_deref(),
        source,
    )?;
    let fingerprint = intent.fingerprint();
    idempotent(&state, &caller, Some(&request.idempotency_key), "transfers", fingerprint, || {
        transfer_answer(&state, &caller, intent)
    })
    .await
}

/// The second seed's transfer: a UUIDv7 `transaction_id` is the engine's id as it is.
#[utoipa::path(post, path = "/v1/wallet/balance_transfer", tag = "transfers", request_body = BalanceTransferRequest,
    responses((status = 201, body = BalanceTransferResponse), Errors), security(("bearer" = [])))]
async fn balance_transfer(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<BalanceTransferRequest>,
) -> Result<Response, ApiError> {
    let source = match id_parse(&request.transaction_id) {
        Some(value) if is_uuid_v7(value) => IdSource::AsIs(TransferId(value)),
        Some(_) => IdSource::Key(request.transaction_id.to_ascii_lowercase()),
        None => return Err(ApiError::bad_request("invalid_id", "transaction_id is not a UUID")),
    };
    let intent = p2p_intent(
        &state,
        &caller,
        &request.from_account,
        &request.to_account,
        &request.amount,
        Some(&request.currency),
        source,
    )?;
    let fingerprint = intent.fingerprint();
    let key = request.transaction_id.to_ascii_lowercase();
    idempotent(&state, &caller, Some(&key), "balance_transfer", fingerprint, || async {
        let (record, replayed) = domain::transfer_one(&state.engine, state.history.as_ref(), &caller, intent).await?;
        let view = transfer_view(&state.currencies, &record);
        let body = BalanceTransferResponse {
            status: view.status,
            transaction_id: view.transaction_id,
            timestamp: view.timestamp,
        };
        Ok((StatusCode::CREATED, replayed, json_of(&body)))
    })
    .await
}

/// A transfer the caller initiated, sent or received.
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers", params(("id" = String, Path, description = "transaction_id")),
    responses((status = 200, body = TransferView), Errors), security(("bearer" = [])))]
async fn transfer_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TransferView>, ApiError> {
    let not_found = || match state.history {
        Some(_) => ApiError::not_found("transfer_not_found", "no transfer with this id is visible to you"),
        None => ApiError::not_found(
            "transfer_not_found",
            "no transfer with this id is visible to you (or it is older than the engine's window, and this gateway \
             has no --history-url)",
        ),
    };
    let id = id_parse(&id).ok_or_else(|| ApiError::bad_request("invalid_id", "the transfer id is not a UUID"))?;
    let record = transfer_find(&state, id).await?.ok_or_else(not_found)?;
    if !domain::transfer_visible(&state.currencies, &caller, &record.transfer) {
        return Err(not_found());
    }
    Ok(Json(transfer_view(&state.currencies, &record)))
}

/// Up to 8189 transfers in one request, each with its own result; `atomic` makes them one
/// all-or-nothing chain.
#[utoipa::path(post, path = "/v1/transfers/batch", tag = "transfers", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse, description = "One result per item"), Errors), security(("bearer" = [])))]
async fn transfers_batch(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<BatchRequest>,
) -> Result<Response, ApiError> {
    let count = request.transfers.len();
    if count == 0 {
        return Err(ApiError::bad_request("batch_empty", "a batch has at least one transfer"));
    }
    if count > walletd_core::BATCH_EVENTS_MAX as usize {
        return Err(ApiError::bad_request("batch_too_large", "a batch has at most 8189 transfers"));
    }
    let mut intents = Vec::with_capacity(count);
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(count);
    for item in &request.transfers {
        let intent = key_check(&item.idempotency_key).and_then(|()| {
            let source = IdSource::Key(item.idempotency_key.clone());
            p2p_intent(
                &state,
                &caller,
                &item.sender_id,
                &item.receiver_id,
                &item.amount,
                item.currency.as_deref(),
                source,
            )
        });
        match intent {
            Ok(intent) => {
                intents.push(intent);
                refused.push(None);
            }
            Err(error) if request.atomic => return Err(error),
            Err(error) => refused.push(Some(error)),
        }
    }
    let mut outcomes = if intents.is_empty() {
        Vec::new()
    } else {
        domain::transfers_submit(&state.engine, state.history.as_ref(), &caller, &intents, request.atomic).await?
    }
    .into_iter();
    let results: Vec<domain::Outcome> = refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(error) => domain::Outcome::Failed { id: None, error },
            None => outcomes.next().expect("an outcome per intent"),
        })
        .collect();
    // A `BatchResponse`, written straight into its bytes (crate::render).
    let mut body = Vec::with_capacity(results.len() * 400 + 16);
    crate::render::batch_json(&state.currencies, &results, &mut body);
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

// ---------------------------------------------------------------------------------------------
// Holds.

/// Reserve money from the caller's wallet for a receiver, until captured, voided or expired.
#[utoipa::path(post, path = "/v1/holds", tag = "holds", request_body = HoldRequest,
    responses((status = 201, body = TransferView), Errors), security(("bearer" = [])))]
async fn hold_create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<HoldRequest>,
) -> Result<Response, ApiError> {
    key_check(&request.idempotency_key)?;
    let source = IdSource::Key(request.idempotency_key.clone());
    let mut intent = p2p_intent(
        &state,
        &caller,
        &request.sender_id,
        &request.receiver_id,
        &request.amount,
        request.currency.as_deref(),
        source,
    )?;
    intent.code = ids::TRANSFER_CODE_HOLD;
    intent.flags = TransferFlags::PENDING;
    intent.timeout_s = request.expires_in_s.unwrap_or(0);
    let fingerprint = intent.fingerprint();
    idempotent(&state, &caller, Some(&request.idempotency_key), "holds", fingerprint, || {
        transfer_answer(&state, &caller, intent)
    })
    .await
}

/// A transfer from the engine, or, older than the engine's window, from the history (with
/// `--history-url`; it has every transfer as far as the projection has come).
async fn transfer_find(state: &AppState, id: u128) -> Result<Option<walletd_core::TransferRecord>, ApiError> {
    let records = state.engine.lookup_transfers(vec![TransferId(id)]).await?;
    if let Some(record) = records.first() {
        return Ok(Some(*record));
    }
    let Some(history) = &state.history else { return Ok(None) };
    let found = history.transfer(id).await.map_err(|error| crate::history::unavailable(&error))?;
    found.map(|view| crate::history::record_of(&view)).transpose()
}

/// The hold named in the path, if the caller may resolve it: its initiator, either wallet's
/// owner, or an operator. A hold older than the engine's window is read from the history, so
/// that a capture or void retried with its key past the window is answered its original outcome
/// (the engine refuses the retry as too old, and the history has the capture or void).
async fn hold_for(state: &AppState, caller: &Caller, id: &str) -> Result<walletd_core::TransferRecord, ApiError> {
    let not_found = || ApiError::not_found("hold_not_found", "no hold with this id is visible to you");
    let id = id_parse(id).ok_or_else(|| ApiError::bad_request("invalid_id", "the hold id is not a UUID"))?;
    let record = transfer_find(state, id).await?.ok_or_else(not_found)?;
    if !domain::transfer_visible(&state.currencies, caller, &record.transfer) {
        return Err(not_found());
    }
    Ok(record)
}

async fn hold_resolve(
    state: &AppState,
    caller: &Caller,
    id: &str,
    amount: Option<&str>,
    key: Option<&str>,
    flag: u16,
) -> Result<Response, ApiError> {
    if let Some(key) = key {
        key_check(key)?;
    }
    let hold = hold_for(state, caller, id).await?;
    let currency = state
        .currencies
        .by_ledger(hold.transfer.ledger)
        .ok_or_else(|| ApiError::not_found("hold_not_found", "no hold with this id is visible to you"))?;
    let amount = match amount {
        Some(text) => amount_get(text, currency)?,
        None => 0,
    };
    let intent = Intent {
        source: key.map_or(IdSource::Fresh, |key| IdSource::Key(key.into())),
        debit: AccountId(0),
        credit: AccountId(0),
        amount,
        ledger: 0,
        code: 0,
        flags: flag,
        timeout_s: 0,
        pending_id: hold.transfer.id,
    };
    let fingerprint = intent.fingerprint();
    let endpoint = if flag == TransferFlags::POST_PENDING { "capture" } else { "void" };
    idempotent(state, caller, key, endpoint, fingerprint, || transfer_answer(state, caller, intent)).await
}

/// Capture a hold, fully or partly (the rest is released). A hold is captured once: a second
/// capture is 409 `hold_already_captured`, so a retry without a key is safe too.
#[utoipa::path(post, path = "/v1/holds/{id}/capture", tag = "holds", params(("id" = String, Path, description = "The hold's transaction_id")),
    request_body = CaptureRequest, responses((status = 201, body = TransferView), Errors), security(("bearer" = [])))]
async fn hold_capture(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<CaptureRequest>,
) -> Result<Response, ApiError> {
    hold_resolve(
        &state,
        &caller,
        &id,
        request.amount.as_deref(),
        request.idempotency_key.as_deref(),
        TransferFlags::POST_PENDING,
    )
    .await
}

/// Void a hold: its money is released to the sender.
#[utoipa::path(post, path = "/v1/holds/{id}/void", tag = "holds", params(("id" = String, Path, description = "The hold's transaction_id")),
    request_body = VoidRequest, responses((status = 201, body = TransferView), Errors), security(("bearer" = [])))]
async fn hold_void(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<VoidRequest>,
) -> Result<Response, ApiError> {
    hold_resolve(&state, &caller, &id, None, request.idempotency_key.as_deref(), TransferFlags::VOID_PENDING).await
}

// ---------------------------------------------------------------------------------------------
// Money in and out (operators).

async fn money_move(
    state: &AppState,
    caller: &Caller,
    request: MoneyRequest,
    deposit: bool,
) -> Result<Response, ApiError> {
    caller.scope_require(if deposit { SCOPE_DEPOSITS } else { SCOPE_WITHDRAWALS })?;
    key_check(&request.idempotency_key)?;
    let currency = domain::currency_get(&state.currencies, &request.currency)?;
    let wallet = wallet_id_parse(&request.wallet_id, "wallet_id")?;
    if domain::is_settlement(&state.currencies, wallet) {
        return Err(ApiError::forbidden(
            "settlement_account_forbidden",
            "deposits and withdrawals move money between a wallet and its currency's settlement account",
        ));
    }
    let settlement = ids::settlement_id(&currency.code);
    let (debit, credit, code) = if deposit {
        (settlement, wallet, ids::TRANSFER_CODE_DEPOSIT)
    } else {
        (wallet, settlement, ids::TRANSFER_CODE_WITHDRAWAL)
    };
    let intent = Intent {
        source: IdSource::Key(request.idempotency_key.clone()),
        debit,
        credit,
        amount: amount_get(&request.amount, currency)?,
        ledger: currency.ledger,
        code,
        flags: 0,
        timeout_s: 0,
        pending_id: TransferId(0),
    };
    let fingerprint = intent.fingerprint();
    let endpoint = if deposit { "deposits" } else { "withdrawals" };
    idempotent(state, caller, Some(&request.idempotency_key), endpoint, fingerprint, || async {
        // Made on first use, so a gateway that moves no money writes nothing to the engine.
        domain::accounts_ensure(&state.engine, vec![domain::settlement_account(currency)]).await?;
        transfer_answer(state, caller, intent).await
    })
    .await
}

/// Operator: money in, from the currency's settlement account to a wallet.
#[utoipa::path(post, path = "/v1/deposits", tag = "operators", request_body = MoneyRequest,
    responses((status = 201, body = TransferView), Errors), security(("bearer" = [])))]
async fn deposit(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<MoneyRequest>,
) -> Result<Response, ApiError> {
    money_move(&state, &caller, request, true).await
}

/// Operator: money out, from a wallet to the currency's settlement account.
#[utoipa::path(post, path = "/v1/withdrawals", tag = "operators", request_body = MoneyRequest,
    responses((status = 201, body = TransferView), Errors), security(("bearer" = [])))]
async fn withdrawal(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<MoneyRequest>,
) -> Result<Response, ApiError> {
    money_move(&state, &caller, request, false).await
}

// ---------------------------------------------------------------------------------------------
// Health.

/// The gateway process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The engine answers a ping (a round trip through its whole pipeline).
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.engine.ping().await?;
    Ok(Json(Health { status: "ready".into() }))
}

// ---------------------------------------------------------------------------------------------
// The request middleware.

/// Gives each request an id and a trace context, renders its error in the one shape, adds
/// `x-request-id`, `traceparent` and `Retry-After`, logs it and records its metrics.
pub async fn request_context(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = request_id_of(request.headers());
    let trace = TraceContext::from_headers(request.headers());
    // For the handlers (through `Caller`): the trace id goes with the request's events into
    // the journal.
    request.extensions_mut().insert(trace);
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_string();
    let method = request.method().as_str().to_string();
    let mut response = next.run(request).await;
    let error = response.extensions_mut().remove::<ApiError>().or_else(|| error_of_status(&response));
    if let Some(error) = error {
        response = error_render(&error, &request_id);
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.header_value()) {
        headers.insert("traceparent", value);
    }
    let status = response.status().as_u16();
    state.metrics.request_record(&route, &method, status, start.elapsed());
    tracing::debug!(%request_id, trace_id = %trace.trace_id_hex(), %route, %method, status, "request");
    response
}

fn request_id_of(headers: &HeaderMap) -> String {
    let given = headers.get("x-request-id").and_then(|value| value.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            id.to_string()
        }
        _ => format!("{:032x}", ids::random_u128()),
    }
}

/// Responses axum makes itself (no route, wrong method, …), in the API's error shape.
fn error_of_status(response: &Response) -> Option<ApiError> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json {
        return None;
    }
    Some(match status.as_u16() {
        404 => ApiError::not_found("route_not_found", "no such route; see /openapi.json"),
        405 => ApiError::new(405, "method_not_allowed", "this route does not take this method; see /openapi.json"),
        413 => ApiError::new(413, "body_too_large", "the body is larger than the gateway accepts"),
        415 => ApiError::new(415, "unsupported_media_type", "send Content-Type: application/json"),
        400 | 422 => ApiError::bad_request("invalid_json", "the request could not be parsed"),
        code => ApiError::new(code.max(400), "internal_error", "an unexpected error"),
    })
}

fn error_render(error: &ApiError, request_id: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail { code: error.code.into(), message: error.message.clone(), request_id: request_id.into() },
    };
    let mut response = (error.status, Json(body)).into_response();
    if let Some(seconds) = error.retry_after_s {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Requests matching no route.
pub async fn fallback() -> ApiError {
    ApiError::not_found("route_not_found", "no such route; see /openapi.json")
}
