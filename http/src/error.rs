//! Errors: `ApiError`, the one shape every failed request is answered with, and `HttpError`,
//! the gateway's operating errors (start-up, configuration).
//!
//! Every error body is `{ "error": { "code", "message", "request_id" } }`. A handler returns an
//! `ApiError`; it travels in the response's extensions to the request middleware
//! (`routes::request_context`), which knows the request id and renders the body, so no
//! handler formats an error body itself — and responses axum makes on its own (an unknown
//! route, a wrong method, a body too large) are rewritten to the same shape there.

use crate::codes::Mapped;
use crate::engine::EngineError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A failed request: its status, its stable code and a message a person can act on.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429 and retryable 503s: the `Retry-After` header, in seconds.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(status).expect("a valid status");
        assert!(status.is_client_error() || status.is_server_error(), "an error has an error status");
        ApiError { status, code, message: message.into(), retry_after_s: None }
    }

    pub fn from_mapped(mapped: Mapped) -> ApiError {
        ApiError::new(mapped.status, mapped.code, mapped.message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(404, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(403, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(401, code, message)
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds.max(1));
        self
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        match error {
            EngineError::Unavailable(_) => {
                ApiError::new(503, "engine_unavailable", format!("{error}; nothing was applied, retry later"))
                    .retry_after(1)
            }
            EngineError::OutcomeUnknown(_) => {
                ApiError::new(503, "engine_outcome_unknown", error.to_string()).retry_after(1)
            }
            EngineError::Refused(_) => {
                ApiError::new(503, "engine_refused", format!("{error}; nothing was applied")).retry_after(1)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// The error body, as served.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (docs/HTTP.md lists every one).
    #[schema(example = "insufficient_funds")]
    pub code: String,
    /// What happened and what to do, for a person.
    pub message: String,
    /// The request's id, also in the `x-request-id` response header.
    pub request_id: String,
}

/// The codes the gateway answers with besides the engine's table (`codes.rs`) and the amount
/// parser's (`AmountError::CODES`); the docs test checks that docs/HTTP.md lists each.
pub const GATEWAY_CODES: &[&str] = &[
    "token_missing",
    "token_malformed",
    "token_invalid_signature",
    "token_expired",
    "token_not_yet_valid",
    "token_wrong_issuer",
    "token_wrong_audience",
    "token_unknown_key",
    "token_invalid",
    "scope_required",
    "settlement_account_forbidden",
    "wallet_not_found",
    "transfer_not_found",
    "currency_unknown",
    "currency_mismatch",
    "currency_required",
    "invalid_json",
    "invalid_id",
    "invalid_field",
    "idempotency_key_invalid",
    "idempotency_key_reused",
    "batch_empty",
    "batch_too_large",
    "batch_keys_partially_used",
    "rate_limited",
    "rate_limiter_unavailable",
    "engine_unavailable",
    "engine_outcome_unknown",
    "engine_refused",
    "history_not_configured",
    "history_unavailable",
    "history_behind",
    "original_not_applied",
    "cursor_invalid",
    "limit_invalid",
    "invalid_query",
    "route_not_found",
    "method_not_allowed",
    "body_too_large",
    "unsupported_media_type",
    "internal_error",
];

/// An operating error of the gateway: it did not start, or its configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("configuration: {0}")]
    Config(String),
    #[error("JWT keys: {0}")]
    Keys(String),
    #[error("Redis at {url}: {message}")]
    Redis { url: String, message: String },
}
