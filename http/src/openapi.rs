//! The OpenAPI document and the app: routes are registered together with their operations
//! (`utoipa_axum`), so `/openapi.json` is generated from the code that serves it. `/docs` is a
//! browsable page on RapiDoc, vendored in `http/assets/` (MIT, see its license there) and
//! compiled into the binary: nothing is downloaded at build or run time.

use crate::routes::{self, AppState};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "walletd wallet API",
        description = "Wallets, balances, P2P transfers, holds, deposits and withdrawals over walletd's ledger. Amounts are decimal strings; errors are { \"error\": { \"code\", \"message\", \"request_id\" } }. See docs/HTTP.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "wallets", description = "The caller's wallets"),
        (name = "transfers", description = "Moving money between wallets"),
        (name = "holds", description = "Two-phase transfers: hold, then capture or void"),
        (name = "operators", description = "Operator scopes only: money in and out, limits, closing"),
        (name = "health", description = "Liveness and readiness")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The OpenAPI document of the routes as registered.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, api) = routes::router(ApiDoc::openapi()).split_for_parts();
    api
}

const RAPIDOC_JS: &[u8] = include_bytes!("../assets/rapidoc-min.js");

const DOCS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>walletd wallet API</title>
<script type="module" src="/docs/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/openapi.json" render-style="read" show-header="false" allow-authentication="true"></rapi-doc></body></html>
"#;

/// The whole app: the API, its document, the docs page, metrics, the fallback and the request
/// middleware.
pub fn app(state: AppState) -> Router {
    let body_size_max_bytes = state.options.body_size_max_bytes;
    let (api_router, api) = routes::router(ApiDoc::openapi()).split_for_parts();
    let document = std::sync::Arc::new(api);
    let router = api_router
        .route("/openapi.json", get(move || async move { Json(document.as_ref().clone()) }))
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
        .route("/docs/rapidoc-min.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], RAPIDOC_JS) }))
        .route("/metrics", get(metrics))
        .fallback(routes::fallback)
        .layer(DefaultBodyLimit::max(body_size_max_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::request_context));
    router.with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_route_and_is_checked_in() {
        let document = super::document();
        let paths: Vec<&String> = document.paths.paths.keys().collect();
        for path in [
            "/v1/wallets",
            "/v1/wallets/{id}",
            "/v1/transfers",
            "/v1/transfers/batch",
            "/v1/holds/{id}/capture",
            "/v1/deposits",
            "/readyz",
        ] {
            assert!(paths.iter().any(|p| p.as_str() == path), "{path} is missing from {paths:?}");
        }
        // The checked-in copy (docs/openapi.json) is what the code generates: regenerate it with
        // `walletd http openapi > docs/openapi.json`.
        let generated = document.to_pretty_json().expect("serialises") + "\n";
        let checked_in =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap_or_default();
        assert!(checked_in == generated, "docs/openapi.json is stale: run `walletd http openapi > docs/openapi.json`");
    }
}
