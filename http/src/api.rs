//! The JSON bodies of the API, with their OpenAPI schemas (utoipa derives them from these
//! types, so the document served at `/openapi.json` cannot drift from what is parsed and
//! rendered), and the conversions from engine records to them.

use crate::amount::{amount_format, balance_format};
use crate::currency::Currencies;
use crate::error::ErrorBody;
use crate::ids::{self, id_format};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};
use walletd_core::{BalanceRead, LimitFlags, Transfer, TransferFlags, TransferRecord, TransferStatus};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletCreateRequest {
    /// ISO 4217 code of a configured currency.
    #[schema(example = "USD")]
    pub currency: String,
}

#[derive(Serialize, ToSchema)]
pub struct Hold {
    pub hold_id: String,
    pub amount: String,
    /// `debit`: this wallet's money is held; `credit`: money held for this wallet.
    pub side: String,
    /// When it expires (RFC 3339), if it has an expiry.
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Limits {
    pub overdraft_max: Option<String>,
    pub balance_max: Option<String>,
    pub daily_debit_amount_max: Option<String>,
    pub monthly_debit_amount_max: Option<String>,
    pub daily_debit_count_max: Option<u32>,
    pub monthly_debit_count_max: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Wallet {
    #[schema(example = "5f0c1b2e-8a41-4e53-9b1c-2d3e4f5a6b7c")]
    pub id: String,
    pub currency: String,
    /// credits posted − debits posted − debits pending: what can be spent now.
    #[schema(example = "12.34")]
    pub available: String,
    /// credits posted − debits posted.
    pub balance: String,
    /// Money held away from this wallet (open holds it pays).
    pub pending_debits: String,
    /// Money held for this wallet (open holds paying it).
    pub pending_credits: String,
    /// Open holds on the wallet; `holds` lists at most 100 of them.
    pub holds_total: u32,
    pub holds: Vec<Hold>,
    pub limits: Option<Limits>,
    pub closed: bool,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WalletList {
    pub wallets: Vec<Wallet>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub overdraft_max: Option<String>,
    pub balance_max: Option<String>,
    pub daily_debit_amount_max: Option<String>,
    pub monthly_debit_amount_max: Option<String>,
    pub daily_debit_count_max: Option<u32>,
    pub monthly_debit_count_max: Option<u32>,
}

/// The first seed's transfer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The paying wallet (the caller's).
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub sender_id: String,
    /// The paid wallet (anyone's).
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub receiver_id: String,
    /// A decimal string with at most the currency's scale of decimals.
    #[schema(example = "12.50")]
    pub amount: String,
    /// The caller's key for this payment: a retry with the same key is never applied twice.
    #[schema(example = "order-1234")]
    pub idempotency_key: String,
    /// Optional: checked against the sender's currency (required for operators).
    pub currency: Option<String>,
}

/// A transfer as the engine recorded it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    pub transaction_id: String,
    /// `completed`, `pending`, `captured`, `voided`, `expired`.
    #[schema(example = "completed")]
    pub status: String,
    /// When the engine applied it (RFC 3339, nanoseconds).
    pub timestamp: String,
    /// `transfer`, `hold`, `capture`, `void`, `deposit`, `withdrawal`.
    pub kind: String,
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub sender_id: String,
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub receiver_id: String,
    pub amount: String,
    pub currency: String,
    /// For a capture or void: the hold it resolved.
    pub hold_id: Option<String>,
    /// For a hold with an expiry.
    pub expires_at: Option<String>,
}

/// The second seed's transfer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceTransferRequest {
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub from_account: String,
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub to_account: String,
    pub amount: String,
    pub currency: String,
    /// A UUIDv7 is the engine's id as it is; any other UUID is used as an idempotency key.
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub transaction_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceTransferResponse {
    #[schema(example = "completed")]
    pub status: String,
    pub transaction_id: String,
    pub timestamp: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub sender_id: String,
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub receiver_id: String,
    pub amount: String,
    pub idempotency_key: String,
    /// Seconds until the hold expires and releases its funds; absent: never.
    pub expires_in_s: Option<u32>,
    pub currency: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Absent: the whole hold. Less: the rest is released.
    pub amount: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyRequest {
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub wallet_id: String,
    pub amount: String,
    pub currency: String,
    pub idempotency_key: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub sender_id: String,
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub receiver_id: String,
    pub amount: String,
    pub idempotency_key: String,
    pub currency: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// All or nothing: the transfers form one linked chain.
    #[serde(default)]
    pub atomic: bool,
    /// 1 to 8189 transfers.
    pub transfers: Vec<BatchItem>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    pub index: u32,
    /// The HTTP status this item alone would have had.
    pub status: u16,
    pub transfer: Option<TransferView>,
    pub error: Option<BatchError>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchError {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// The query of a history page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque).
    pub cursor: Option<String>,
}

/// One movement of a wallet's money: one side of a double entry.
#[derive(Serialize, ToSchema)]
pub struct WalletTransaction {
    pub transaction_id: String,
    /// When the engine applied it (RFC 3339, nanoseconds).
    pub timestamp: String,
    /// `debit`: money left this wallet; `credit`: money came in.
    #[schema(example = "debit")]
    pub direction: String,
    pub amount: String,
    /// The wallet on the other side.
    pub counterparty_id: String,
    /// credits posted − debits posted, right after this movement.
    pub balance_after: String,
    /// credits posted − debits posted − debits pending, right after this movement.
    pub available_after: String,
    /// The journal op that applied it.
    pub op: u64,
}

/// How far the history is: it holds every journal op up to `op` and none after.
#[derive(Serialize, ToSchema)]
pub struct HistoryPosition {
    pub op: u64,
    /// The engine's time of that op (RFC 3339); null before the first op.
    pub timestamp: Option<String>,
    /// Ops the engine had reached, in its replies to this gateway, beyond `op`: a lower bound of
    /// the history's lag. Null until this gateway has written.
    pub lag_ops: Option<u64>,
}

/// A page of a wallet's history, newest first.
#[derive(Serialize, ToSchema)]
pub struct TransactionPage {
    pub wallet_id: String,
    pub currency: String,
    pub transactions: Vec<WalletTransaction>,
    /// Pass as `cursor` for the next (older) page; null when this page was the last.
    pub next_cursor: Option<String>,
    pub history: HistoryPosition,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// The error answers every route may give (besides its own success).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    #[response(status = 400, description = "A malformed request: see the code")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "A missing, expired, forged or wrong-audience token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The token lacks a scope, or the account is a settlement account")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such wallet or transfer visible to the caller")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "An idempotency conflict, or a hold already resolved")]
    Conflict(ErrorBody),
    #[response(status = 413, description = "The body is too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "The body is not JSON")]
    Unsupported(ErrorBody),
    #[response(status = 422, description = "A business rule refused it (insufficient funds, currency, limits)")]
    Unprocessable(ErrorBody),
    #[response(status = 429, description = "Rate limited: see Retry-After")]
    TooMany(ErrorBody),
    #[response(status = 500, description = "A gateway bug")]
    Internal(ErrorBody),
    #[response(
        status = 503,
        description = "The engine, the limiter or the history is unavailable (or not configured): retry (with the same key)"
    )]
    Unavailable(ErrorBody),
}

/// RFC 3339 in UTC with nanoseconds, from ns since the Unix epoch.
pub fn rfc3339(ns: u64) -> String {
    let seconds = ns / 1_000_000_000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = walletd_core::calendar::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        ns % 1_000_000_000
    )
}

pub fn status_text(status: TransferStatus) -> &'static str {
    match status {
        TransferStatus::Posted => "completed",
        TransferStatus::Voided => "voided",
        TransferStatus::Pending => "pending",
        TransferStatus::PendingPosted => "captured",
        TransferStatus::PendingVoided => "voided",
        TransferStatus::PendingExpired => "expired",
    }
}

pub fn kind_text(transfer: &Transfer) -> &'static str {
    let flags = transfer.flags;
    if flags.contains(TransferFlags::POST_PENDING) {
        "capture"
    } else if flags.contains(TransferFlags::VOID_PENDING) {
        "void"
    } else if flags.contains(TransferFlags::PENDING) {
        "hold"
    } else {
        match transfer.code {
            ids::TRANSFER_CODE_DEPOSIT => "deposit",
            ids::TRANSFER_CODE_WITHDRAWAL => "withdrawal",
            _ => "transfer",
        }
    }
}

pub fn transfer_view(currencies: &Currencies, record: &TransferRecord) -> TransferView {
    let transfer = &record.transfer;
    let (currency, scale) = match currencies.by_ledger(transfer.ledger) {
        Some(currency) => (currency.code.clone(), currency.scale),
        None => (format!("ledger:{}", transfer.ledger), 0),
    };
    let expires_at = (transfer.flags.contains(TransferFlags::PENDING) && transfer.timeout_s > 0)
        .then(|| rfc3339(transfer.timestamp + u64::from(transfer.timeout_s) * 1_000_000_000));
    TransferView {
        transaction_id: id_format(transfer.id.0),
        status: status_text(record.status).into(),
        timestamp: rfc3339(transfer.timestamp),
        kind: kind_text(transfer).into(),
        sender_id: id_format(transfer.debit_account_id.0),
        receiver_id: id_format(transfer.credit_account_id.0),
        amount: amount_format(transfer.amount.0, scale),
        currency,
        hold_id: (transfer.pending_id.0 != 0).then(|| id_format(transfer.pending_id.0)),
        expires_at,
    }
}

/// A page of the history as served: amounts in the wallet's currency, the cursor bound to it.
pub fn transaction_page(
    currencies: &Currencies,
    account: &walletd_core::Account,
    page: &walletd_history::query::Page,
    engine_op_seen: Option<u64>,
) -> TransactionPage {
    let (currency, scale) = match currencies.by_ledger(account.ledger) {
        Some(currency) => (currency.code.clone(), currency.scale),
        None => (format!("ledger:{}", account.ledger), 0),
    };
    let transactions = page
        .entries
        .iter()
        .map(|entry| {
            let after = &entry.after;
            let debits_total = after.debits_posted.saturating_add(after.debits_pending);
            WalletTransaction {
                transaction_id: id_format(entry.transfer_id),
                timestamp: rfc3339(entry.timestamp_ns),
                direction: if entry.side == 'D' { "debit" } else { "credit" }.into(),
                amount: amount_format(entry.amount, scale),
                counterparty_id: id_format(entry.counterparty_id),
                balance_after: balance_format(after.credits_posted, after.debits_posted, scale),
                available_after: balance_format(after.credits_posted, debits_total, scale),
                op: entry.op,
            }
        })
        .collect();
    TransactionPage {
        wallet_id: id_format(account.id.0),
        currency,
        transactions,
        next_cursor: page.next.as_ref().map(|cursor| crate::history::cursor_encode(account.id, cursor)),
        history: HistoryPosition {
            op: page.position,
            timestamp: (page.position > 0).then(|| rfc3339(page.position_timestamp_ns)),
            lag_ops: engine_op_seen.map(|seen| seen.saturating_sub(page.position)),
        },
    }
}

/// Holds listed in a wallet view at most.
pub const HOLDS_LISTED_MAX: usize = 100;

pub fn wallet_view(currencies: &Currencies, read: &BalanceRead, holds: &[Transfer]) -> Wallet {
    let account = &read.account;
    let (currency, scale) = match currencies.by_ledger(account.ledger) {
        Some(currency) => (currency.code.clone(), currency.scale),
        None => (format!("ledger:{}", account.ledger), 0),
    };
    let debits_total = account.debits_posted.0.saturating_add(account.debits_pending.0);
    let holds = holds
        .iter()
        .take(HOLDS_LISTED_MAX)
        .map(|hold| Hold {
            hold_id: id_format(hold.id.0),
            amount: amount_format(hold.amount.0, scale),
            side: if hold.debit_account_id == account.id { "debit" } else { "credit" }.into(),
            expires_at: (hold.timeout_s > 0)
                .then(|| rfc3339(hold.timestamp + u64::from(hold.timeout_s) * 1_000_000_000)),
        })
        .collect();
    Wallet {
        id: id_format(account.id.0),
        currency,
        available: balance_format(account.credits_posted.0, debits_total, scale),
        balance: balance_format(account.credits_posted.0, account.debits_posted.0, scale),
        pending_debits: amount_format(account.debits_pending.0, scale),
        pending_credits: amount_format(account.credits_pending.0, scale),
        holds_total: read.holds_count_total,
        holds,
        limits: limits_view(read, scale),
        closed: account.flags.contains(walletd_core::AccountFlags::CLOSED),
        created_at: rfc3339(account.timestamp),
    }
}

fn limits_view(read: &BalanceRead, scale: u8) -> Option<Limits> {
    let limits = &read.limits;
    if limits.flags.0 == 0 {
        return None;
    }
    let amount = |flag: u32, value: u128| limits.flags.contains(flag).then(|| amount_format(value, scale));
    let count = |flag: u32, value: u32| limits.flags.contains(flag).then_some(value);
    Some(Limits {
        overdraft_max: amount(LimitFlags::OVERDRAFT, limits.overdraft_max.0),
        balance_max: amount(LimitFlags::BALANCE_MAX, limits.balance_max.0),
        daily_debit_amount_max: amount(LimitFlags::DAILY_DEBIT_AMOUNT, limits.daily_debit_amount_max.0),
        monthly_debit_amount_max: amount(LimitFlags::MONTHLY_DEBIT_AMOUNT, limits.monthly_debit_amount_max.0),
        daily_debit_count_max: count(LimitFlags::DAILY_DEBIT_COUNT, limits.daily_debit_count_max),
        monthly_debit_count_max: count(LimitFlags::MONTHLY_DEBIT_COUNT, limits.monthly_debit_count_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
    }
}
