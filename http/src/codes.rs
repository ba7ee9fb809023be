//! The one table from engine result codes to HTTP statuses and the API's stable error codes.
//!
//! Every engine code of `walletd_core::results` has a row here, in a `match` without a
//! wildcard, so a code added to the core does not compile until it is mapped; the tests walk
//! each enum's `ALL` and check the statuses and that docs/HTTP.md lists every row. Codes the
//! gateway itself rules out (it builds every record, so a zero id or a reserved flag is its own
//! bug) map to `internal_error`; the rest say what the caller can do about them.

use walletd_core::{AccountStateResult, CreateAccountResult, CreateTransferResult, SetLimitsResult};

/// How one engine result is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub status: u16,
    /// The stable error code (`"ok"`/`"exists"` for the two successes).
    pub code: &'static str,
    /// A sentence a person can act on.
    pub message: &'static str,
}

const fn row(status: u16, code: &'static str, message: &'static str) -> Mapped {
    Mapped { status, code, message }
}

const INTERNAL: &str = "internal_error";
const INTERNAL_MESSAGE: &str = "the gateway built a request the engine refused; this is a bug, please report it";
const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";

pub fn transfer_result(result: CreateTransferResult) -> Mapped {
    use CreateTransferResult as R;
    match result {
        R::Ok => row(201, "ok", "created"),
        R::Exists => row(200, "exists", "the original outcome of this idempotency key"),
        R::LinkedEventFailed => row(422, "linked_transfer_failed", "another transfer of the atomic batch failed; none was applied"),
        R::LinkedEventChainOpen
        | R::TimestampMustBeZero
        | R::ReservedFlag
        | R::IdMustNotBeZero
        | R::IdMustNotBeIntMax
        | R::FlagsAreMutuallyExclusive
        | R::DebitAccountIdMustNotBeZero
        | R::DebitAccountIdMustNotBeIntMax
        | R::CreditAccountIdMustNotBeZero
        | R::CreditAccountIdMustNotBeIntMax
        | R::PendingIdMustBeZero
        | R::PendingIdMustNotBeZero
        | R::PendingIdMustNotBeIntMax
        | R::PendingIdMustBeDifferent
        | R::TimeoutReservedForPendingTransfer
        | R::LedgerMustNotBeZero
        | R::CodeMustNotBeZero => row(500, INTERNAL, INTERNAL_MESSAGE),
        R::IdTooOld => row(
            409,
            "idempotency_window_passed",
            "this request is older than the engine's idempotency window: it may have been applied, and it will never be applied again; look it up instead of retrying with a new key",
        ),
        R::IdTimestampInFuture => {
            row(400, "transaction_id_in_future", "the transaction id's time is ahead of the engine's clock; check the client's clock")
        }
        R::AccountsMustBeDifferent => row(422, "same_wallet", "sender and receiver are the same wallet"),
        R::AmountMustNotBeZero => row(400, "amount_zero", "the amount must be greater than zero"),
        R::DebitAccountNotFound => row(404, "sender_not_found", "the sending wallet does not exist"),
        R::CreditAccountNotFound => row(404, "receiver_not_found", "the receiving wallet does not exist"),
        R::AccountsMustHaveTheSameLedger | R::TransferMustHaveTheSameLedgerAsAccounts => {
            row(422, "currency_mismatch", "both wallets must hold the transfer's currency")
        }
        R::PendingTransferNotFound => row(404, "hold_not_found", "no hold has this id"),
        R::PendingTransferNotPending => row(422, "not_a_hold", "this id names a transfer that is not a hold"),
        R::PendingTransferHasDifferentDebitAccountId
        | R::PendingTransferHasDifferentCreditAccountId
        | R::PendingTransferHasDifferentLedger
        | R::PendingTransferHasDifferentCode
        | R::PendingTransferHasDifferentAmount => {
            row(422, "hold_mismatch", "the capture or void does not match the hold's wallets, currency or amount")
        }
        R::ExceedsPendingTransferAmount => row(422, "capture_exceeds_hold", "the capture is larger than the hold"),
        R::PendingTransferAlreadyPosted => row(409, "hold_already_captured", "the hold was captured already"),
        R::PendingTransferAlreadyVoided => row(409, "hold_already_voided", "the hold was voided already"),
        R::PendingTransferExpired => row(409, "hold_expired", "the hold expired; its funds were released"),
        R::PendingTransferTooOld => {
            row(409, "hold_too_old", "the hold is older than the engine's idempotency window and no longer open")
        }
        R::ExistsWithDifferentFlags => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used for another kind of request")
        }
        R::ExistsWithDifferentDebitAccountId => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different sender")
        }
        R::ExistsWithDifferentCreditAccountId => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different receiver")
        }
        R::ExistsWithDifferentAmount => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different amount")
        }
        R::ExistsWithDifferentPendingId => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used for a different hold")
        }
        R::ExistsWithDifferentUserData128 => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the transaction id was first used by another caller")
        }
        R::ExistsWithDifferentUserData64 | R::ExistsWithDifferentUserData32 => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different request")
        }
        R::ExistsWithDifferentTimeout => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different expiry")
        }
        R::ExistsWithDifferentLedger => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used with a different currency")
        }
        R::ExistsWithDifferentCode => {
            row(409, IDEMPOTENCY_KEY_REUSED, "the idempotency key was first used on another endpoint")
        }
        R::OverflowsDebitsPending
        | R::OverflowsCreditsPending
        | R::OverflowsDebitsPosted
        | R::OverflowsCreditsPosted
        | R::OverflowsDebits
        | R::OverflowsCredits => row(422, "balance_overflow", "the transfer would overflow a balance"),
        R::OverflowsTimeout => row(400, "expiry_too_far", "the hold's expiry is too far in the future"),
        R::ExceedsCredits => row(422, "insufficient_funds", "the sending wallet's available balance is too low"),
        R::ExceedsDebits => row(422, "credit_limit_exceeded", "the receiving account may not be credited beyond its debits"),
        R::DebitAccountClosed => row(422, "sender_closed", "the sending wallet is closed"),
        R::CreditAccountClosed => row(422, "receiver_closed", "the receiving wallet is closed"),
        R::OverdraftLimitExceeded => row(422, "overdraft_limit_exceeded", "the transfer exceeds the wallet's overdraft limit"),
        R::BalanceLimitExceeded => row(422, "balance_limit_exceeded", "the receiving wallet would exceed its balance limit"),
        R::DailyDebitAmountExceeded => row(422, "daily_amount_limit_exceeded", "the wallet's daily spending limit is reached"),
        R::DailyDebitCountExceeded => row(422, "daily_count_limit_exceeded", "the wallet's daily payment count is reached"),
        R::MonthlyDebitAmountExceeded => {
            row(422, "monthly_amount_limit_exceeded", "the wallet's monthly spending limit is reached")
        }
        R::MonthlyDebitCountExceeded => {
            row(422, "monthly_count_limit_exceeded", "the wallet's monthly payment count is reached")
        }
        R::PendingTransfersFull => row(503, "holds_capacity_exhausted", "the engine holds as many open holds as it can"),
    }
}

pub fn account_result(result: CreateAccountResult) -> Mapped {
    use CreateAccountResult as R;
    match result {
        R::Ok => row(201, "ok", "created"),
        R::Exists => row(200, "exists", "the wallet exists already"),
        R::LinkedEventFailed
        | R::LinkedEventChainOpen
        | R::TimestampMustBeZero
        | R::ReservedField
        | R::ReservedFlag
        | R::IdMustNotBeZero
        | R::IdMustNotBeIntMax
        | R::FlagsAreMutuallyExclusive
        | R::DebitsPendingMustBeZero
        | R::DebitsPostedMustBeZero
        | R::CreditsPendingMustBeZero
        | R::CreditsPostedMustBeZero
        | R::LedgerMustNotBeZero
        | R::CodeMustNotBeZero => row(500, INTERNAL, INTERNAL_MESSAGE),
        R::ExistsWithDifferentFlags
        | R::ExistsWithDifferentUserData128
        | R::ExistsWithDifferentUserData64
        | R::ExistsWithDifferentUserData32
        | R::ExistsWithDifferentLedger
        | R::ExistsWithDifferentCode => {
            row(409, "account_conflict", "an account with this id exists with other fields")
        }
        R::AccountsFull => row(503, "accounts_capacity_exhausted", "the engine holds as many accounts as it can"),
        R::LedgersFull => row(503, "currencies_capacity_exhausted", "the engine holds as many currencies as it can"),
    }
}

pub fn account_state_result(result: AccountStateResult) -> Mapped {
    use AccountStateResult as R;
    match result {
        R::Ok => row(200, "ok", "done"),
        R::AccountIdMustNotBeZero | R::AccountIdMustNotBeIntMax => row(500, INTERNAL, INTERNAL_MESSAGE),
        R::AccountNotFound => row(404, "wallet_not_found", "no wallet has this id"),
        R::AlreadyClosed => row(409, "wallet_already_closed", "the wallet is closed already"),
        R::NotClosed => row(409, "wallet_not_closed", "the wallet is not closed"),
    }
}

pub fn set_limits_result(result: SetLimitsResult) -> Mapped {
    use SetLimitsResult as R;
    match result {
        R::Ok => row(200, "ok", "done"),
        R::TimestampMustBeZero
        | R::ReservedField
        | R::ReservedFlag
        | R::AccountIdMustNotBeZero
        | R::AccountIdMustNotBeIntMax => row(500, INTERNAL, INTERNAL_MESSAGE),
        R::AccountNotFound => row(404, "wallet_not_found", "no wallet has this id"),
        R::LimitsFull => row(503, "limits_capacity_exhausted", "the engine holds as many limits as it can"),
    }
}

/// The engine's snake_case name of a CamelCase result name (`ExceedsCredits` →
/// `exceeds_credits`), as docs/PROTOCOL.md writes them.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let bytes = name.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        let boundary =
            index > 0 && (byte.is_ascii_uppercase() || (byte.is_ascii_digit() && !bytes[index - 1].is_ascii_digit()));
        if boundary {
            out.push('_');
        }
        out.push(byte.to_ascii_lowercase() as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine code, its name and its row, for the checks below.
    pub(crate) fn every_row() -> Vec<(&'static str, String, Mapped)> {
        let mut rows = Vec::new();
        for &code in CreateTransferResult::ALL {
            rows.push(("create_transfers", snake_case(code.name()), transfer_result(code)));
        }
        for &code in CreateAccountResult::ALL {
            rows.push(("create_accounts", snake_case(code.name()), account_result(code)));
        }
        for &code in AccountStateResult::ALL {
            rows.push(("close_accounts", snake_case(code.name()), account_state_result(code)));
        }
        for &code in SetLimitsResult::ALL {
            rows.push(("set_account_limits", snake_case(code.name()), set_limits_result(code)));
        }
        rows
    }

    #[test]
    fn snake_case_matches_the_protocol_document() {
        assert_eq!(snake_case("ExceedsCredits"), "exceeds_credits");
        assert_eq!(snake_case("ExistsWithDifferentUserData128"), "exists_with_different_user_data_128");
        assert_eq!(snake_case("Ok"), "ok");
    }

    #[test]
    fn every_engine_code_has_a_sane_row() {
        let rows = every_row();
        assert_eq!(rows.len(), CreateTransferResult::ALL.len() + CreateAccountResult::ALL.len() + 6 + 8);
        for (operation, name, mapped) in &rows {
            let success = name == "ok" || name == "exists";
            assert_eq!((200..300).contains(&mapped.status), success, "{operation} {name}: {mapped:?}");
            assert!([200, 201, 400, 404, 409, 422, 500, 503].contains(&mapped.status), "{operation} {name}");
            assert!(mapped.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}: {}", mapped.code);
            assert!(!mapped.message.is_empty());
        }
    }

    /// Prints the table for docs/HTTP.md: `cargo test -p walletd-http error_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn error_table_print() {
        println!("| engine operation | engine result | HTTP status | API code |\n|---|---|---|---|");
        for (operation, name, mapped) in every_row() {
            println!("| `{operation}` | `{name}` | {} | `{}` |", mapped.status, mapped.code);
        }
    }

    #[test]
    fn the_document_lists_every_row() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/HTTP.md")).expect("docs/HTTP.md");
        for (operation, name, mapped) in every_row() {
            let line = format!("| `{operation}` | `{name}` | {} | `{}` |", mapped.status, mapped.code);
            assert!(doc.contains(&line), "docs/HTTP.md lacks the row: {line}");
        }
        for code in crate::error::GATEWAY_CODES.iter().chain(crate::amount::AmountError::CODES) {
            assert!(doc.contains(&format!("`{code}`")), "docs/HTTP.md does not list the code {code}");
        }
    }
}
