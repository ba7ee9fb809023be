//! The gateway's long memory: the PostgreSQL projection of the journal (walletd-history), read
//! through its query API when the gateway is given `--history-url`.
//!
//! It answers what the engine's bounded memory cannot: a wallet's whole history
//! (`GET /v1/wallets/{id}/transactions`), a transfer older than the engine's window
//! (`GET /v1/transfers/{id}`), and — the exact part — whether a retry that the engine refused as
//! too old was applied (docs/HTTP.md, "Retries older than the engine's window"). The history is
//! eventually consistent: every answer is read at the projection's position, an op, and is
//! never taken as "not applied" unless that position covers the op at which the engine refused.
//!
//! The cursor of a history page is opaque to clients; its format is here and in docs/HTTP.md.

use crate::error::ApiError;
use crate::ids::id_format;
use walletd_core::{AccountId, Amount, Transfer, TransferFlags, TransferId, TransferRecord, TransferStatus};
use walletd_history::query::{Cursor, History, TransferView};
use walletd_history::HistoryError;

/// Items per history page: the default and the most a client may ask for.
pub const PAGE_LIMIT_DEFAULT: u32 = 50;
pub const PAGE_LIMIT_MAX: u32 = 200;

/// Sessions the gateway keeps to PostgreSQL at most, by default.
pub const HISTORY_CONNECTIONS_DEFAULT: usize = 4;

/// Opens the pool (lazily: no connection is made until the first read).
pub fn history_open(url: &str, connections_max: usize) -> Result<History, crate::error::HttpError> {
    History::from_url(url, connections_max)
        .map_err(|error| crate::error::HttpError::Config(format!("--history-url: {error}")))
}

/// The answer of a route that needs the history on a gateway started without it.
pub fn not_configured() -> ApiError {
    ApiError::new(
        503,
        "history_not_configured",
        "this gateway reads no history: it was started without --history-url (the PostgreSQL database that \
         `walletd project postgres` writes)",
    )
}

/// A failed read of the history: PostgreSQL is down, or its schema is not (yet) one this gateway
/// reads. The details go to the log, not to the client.
pub fn unavailable(error: &HistoryError) -> ApiError {
    tracing::warn!(%error, "the history could not be read");
    ApiError::new(503, "history_unavailable", "the history database cannot be read now; retry later").retry_after(1)
}

/// The retry-safe answer while the history has not reached the op that decides.
pub fn behind(position: u64, as_of_op: u64) -> ApiError {
    ApiError::new(
        503,
        "history_behind",
        format!(
            "this request is older than the engine's idempotency window, and the history that tells whether it was \
             applied is at op {position}, not yet at op {as_of_op} where the engine refused it: retry with the same \
             key shortly; it will never be applied twice"
        ),
    )
    .retry_after(1)
}

/// The answer when the history covers the refusal and has no such transfer.
pub fn original_not_applied(position: u64) -> ApiError {
    ApiError::new(
        409,
        "original_not_applied",
        format!(
            "the request with this key was never applied (the history, complete up to op {position}, has no transfer \
             with its id) and can no longer be: it is older than the engine's idempotency window. Send it again with \
             a new key if it should still happen"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The cursor.

/// The cursor's format version: the first character of every cursor.
const CURSOR_VERSION: char = '1';
/// `1`, then 16 hex digits of the timestamp, 32 of the transfer id and 16 of the check.
const CURSOR_LENGTH: usize = 1 + 16 + 32 + 16;

/// The check that binds a cursor to its wallet: 64 bits of BLAKE3 over the wallet and the
/// position, so a cursor of another wallet, or an edited one, is refused rather than followed.
fn cursor_check(wallet: AccountId, cursor: &Cursor) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"walletd-http history cursor v1");
    hasher.update(&wallet.0.to_be_bytes());
    hasher.update(&cursor.timestamp_ns.to_be_bytes());
    hasher.update(&cursor.transfer_id.to_be_bytes());
    let bytes: [u8; 8] = hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes");
    u64::from_be_bytes(bytes)
}

pub fn cursor_encode(wallet: AccountId, cursor: &Cursor) -> String {
    let text = format!(
        "{CURSOR_VERSION}{:016x}{:032x}{:016x}",
        cursor.timestamp_ns,
        cursor.transfer_id,
        cursor_check(wallet, cursor)
    );
    assert_eq!(text.len(), CURSOR_LENGTH);
    text
}

/// The cursor a previous page of `wallet` handed out, or `None` if `text` is not one.
pub fn cursor_decode(wallet: AccountId, text: &str) -> Option<Cursor> {
    let hex = text.strip_prefix(CURSOR_VERSION)?;
    if text.len() != CURSOR_LENGTH || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let timestamp_ns = u64::from_str_radix(&hex[..16], 16).ok()?;
    let transfer_id = u128::from_str_radix(&hex[16..48], 16).ok()?;
    let check = u64::from_str_radix(&hex[48..], 16).ok()?;
    let cursor = Cursor { timestamp_ns, transfer_id };
    (cursor_check(wallet, &cursor) == check).then_some(cursor)
}

/// A page size from the query: 1 to `PAGE_LIMIT_MAX` decimal digits' worth, or the default.
pub fn limit_parse(text: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = text else { return Ok(PAGE_LIMIT_DEFAULT) };
    match text.parse::<u32>() {
        Ok(limit) if (1..=PAGE_LIMIT_MAX).contains(&limit) && text.bytes().all(|b| b.is_ascii_digit()) => Ok(limit),
        _ => Err(ApiError::bad_request(
            "limit_invalid",
            format!("limit is a whole number from 1 to {PAGE_LIMIT_MAX} (default {PAGE_LIMIT_DEFAULT})"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Transfers from the history, as the engine's records.

fn status_of(text: &str) -> Option<TransferStatus> {
    Some(match text {
        "posted" => TransferStatus::Posted,
        "voided" => TransferStatus::Voided,
        "pending" => TransferStatus::Pending,
        "pending_posted" => TransferStatus::PendingPosted,
        "pending_voided" => TransferStatus::PendingVoided,
        "pending_expired" => TransferStatus::PendingExpired,
        _ => return None,
    })
}

/// The engine's record of a transfer the history holds, so that one rendering (and one
/// visibility rule) serves both. An unknown status is a schema this gateway does not know.
pub fn record_of(view: &TransferView) -> Result<TransferRecord, ApiError> {
    let status = status_of(&view.status).ok_or_else(|| {
        tracing::error!(status = %view.status, id = %id_format(view.id), "a transfer status the gateway does not know");
        ApiError::new(500, "internal_error", "the history holds a transfer status this gateway does not know")
    })?;
    let transfer = Transfer {
        id: TransferId(view.id),
        debit_account_id: AccountId(view.debit_account_id),
        credit_account_id: AccountId(view.credit_account_id),
        amount: Amount(view.amount),
        pending_id: TransferId(view.pending_id.unwrap_or(0)),
        user_data_128: view.user_data_128,
        user_data_64: view.user_data_64,
        user_data_32: view.user_data_32,
        timeout_s: view.timeout_s,
        ledger: view.ledger,
        code: view.code,
        flags: TransferFlags(view.flags),
        timestamp: view.timestamp_ns,
    };
    assert_eq!(transfer.id.0, view.id);
    Ok(TransferRecord { transfer, status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_belongs_to_its_wallet() {
        let cursor = Cursor { timestamp_ns: 1_700_000_000_123_456_789, transfer_id: 0x0123_4567_89ab_cdef << 64 };
        let text = cursor_encode(AccountId(7), &cursor);
        assert_eq!(text.len(), CURSOR_LENGTH);
        assert_eq!(cursor_decode(AccountId(7), &text), Some(cursor));
        assert_eq!(cursor_decode(AccountId(8), &text), None, "another wallet's cursor");
        let mut edited = text.clone().into_bytes();
        edited[5] = if edited[5] == b'0' { b'1' } else { b'0' };
        assert_eq!(cursor_decode(AccountId(7), std::str::from_utf8(&edited).unwrap()), None, "an edited cursor");
        assert_eq!(cursor_decode(AccountId(7), &text.to_uppercase()), None);
        assert_eq!(cursor_decode(AccountId(7), ""), None);
        assert_eq!(cursor_decode(AccountId(7), &text[..CURSOR_LENGTH - 1]), None);
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit_parse(None).unwrap(), PAGE_LIMIT_DEFAULT);
        assert_eq!(limit_parse(Some("1")).unwrap(), 1);
        assert_eq!(limit_parse(Some("200")).unwrap(), 200);
        for bad in ["0", "201", "-1", "+5", "", "1.5", "ten", "99999999999"] {
            assert_eq!(limit_parse(Some(bad)).unwrap_err().code, "limit_invalid", "{bad:?}");
        }
    }

    #[test]
    fn every_history_status_is_known() {
        for status in ["posted", "voided", "pending", "pending_posted", "pending_voided", "pending_expired"] {
            assert!(status_of(status).is_some(), "{status}");
        }
        assert!(status_of("applied").is_none());
    }

    proptest! {
        #[test]
        fn cursors_round_trip(wallet in any::<u128>(), timestamp_ns in any::<u64>(), transfer_id in any::<u128>()) {
            let cursor = Cursor { timestamp_ns, transfer_id };
            prop_assert_eq!(cursor_decode(AccountId(wallet), &cursor_encode(AccountId(wallet), &cursor)), Some(cursor));
        }

        #[test]
        fn cursor_decode_never_panics(text in "\\PC{0,80}") {
            let _ = cursor_decode(AccountId(1), &text);
        }
    }
}
