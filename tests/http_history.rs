//! The HTTP gateway reading the history projection, end to end: a real `walletd serve` with a
//! small idempotency window, a real `walletd project postgres` following its data directory, a
//! throwaway PostgreSQL (walletd_history::harness), and `walletd http --history-url`.
//!
//! A wallet's history is paged newest first with an opaque cursor and read only by its owner
//! or an operator; a transfer pushed out of the engine's window is still found; and a retry the
//! engine refuses as too old answers the original outcome, `original_not_applied` when the
//! original failed, and a retry-safe `history_behind` while the projection has not reached the
//! op at which the engine refused it (and `history_unavailable` while PostgreSQL is down) —
//! never a second application.

mod http_harness;

use http_harness::{http, op_durable, token, wait_until, window_push, Engine, Gateway, Projection, Response};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use walletd_history::harness::TestPostgres;

fn wallet_create(gateway: SocketAddr, user: &str) -> String {
    let response = http(gateway, "POST", "/v1/wallets", Some(&token(user, &[])), Some(&json!({ "currency": "USD" })));
    assert_eq!(response.status, 201, "{response:?}");
    response.json["id"].as_str().unwrap().to_string()
}

fn deposit(gateway: SocketAddr, wallet: &str, amount: &str, key: &str) -> Response {
    let body = json!({ "wallet_id": wallet, "amount": amount, "currency": "USD", "idempotency_key": key });
    http(gateway, "POST", "/v1/deposits", Some(&token("ops", &["operator"])), Some(&body))
}

fn transfer(gateway: SocketAddr, from: &str, to: &str, amount: &str, key: &str) -> Response {
    let body = json!({ "sender_id": from, "receiver_id": to, "amount": amount, "idempotency_key": key });
    http(gateway, "POST", "/v1/transfers", Some(&token("alice", &[])), Some(&body))
}

fn balance(gateway: SocketAddr, wallet: &str) -> String {
    let response = http(gateway, "GET", &format!("/v1/wallets/{wallet}"), Some(&token("alice", &[])), None);
    assert_eq!(response.status, 200, "{response:?}");
    response.json["balance"].as_str().unwrap().to_string()
}

fn history_page(gateway: SocketAddr, user: &str, scopes: &[&str], wallet: &str, query: &str) -> Response {
    let path = format!("/v1/wallets/{wallet}/transactions{query}");
    http(gateway, "GET", &path, Some(&token(user, scopes)), None)
}

#[test]
fn history_pages_and_retries_past_the_window_over_http() {
    let mut pg = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    // A window of 3 transfers (8192 ring slots): two frames of 8189 push anything out of it.
    let engine = Engine::start_with(dir.path(), &["--transfers-max", "1"]);
    let mut projection = Projection::start(dir.path(), &pg.url());
    let url = pg.url();
    let gateway = Gateway::start(engine.addr, &["--rate-limit-per-s", "0", "--history-url", url.as_str()]);
    let addr = gateway.addr;
    let alice = wallet_create(addr, "alice");
    let bob = wallet_create(addr, "bob");
    assert_eq!(deposit(addr, &alice, "100.00", "fund").status, 201);
    wait_until("the history to hold the deposit", Duration::from_secs(120), || {
        let page = history_page(addr, "alice", &[], &alice, "");
        page.status == 200 && page.json["transactions"].as_array().is_some_and(|items| items.len() == 1)
    });

    // The projection stops; transfers are made and pushed out of the engine's window. The
    // engine refuses their retries as too old, and the history, which has not reached the op of
    // that refusal, cannot say yet: a retry-safe 503, and nothing is applied twice.
    projection.kill();
    let uuid_key = walletd_http::ids::id_format(walletd_http::ids::uuid_v7(walletd_http::ids::now_ms()));
    let keys = ["order-1".to_string(), uuid_key];
    let originals: Vec<Response> = keys.iter().map(|key| transfer(addr, &alice, &bob, "10.00", key)).collect();
    for original in &originals {
        assert_eq!(original.status, 201, "{original:?}");
    }
    let poor = transfer(addr, &alice, &bob, "1000.00", "order-poor");
    assert_eq!((poor.status, poor.code()), (422, "insufficient_funds"));
    window_push(engine.addr, 2);
    for key in keys.iter().chain(["order-poor".to_string()].iter()) {
        let amount = if key == "order-poor" { "1000.00" } else { "10.00" };
        let retry = transfer(addr, &alice, &bob, amount, key);
        assert_eq!((retry.status, retry.code()), (503, "history_behind"), "{key}: {retry:?}");
        assert_eq!(retry.header("retry-after"), Some("1"));
    }
    assert_eq!(balance(addr, &alice), "80.00", "nothing applied twice");

    // The projection catches up: the original outcome, exactly. Until then each retry is
    // refused again (never applied), which is what makes waiting on it safe.
    let projection = Projection::start(dir.path(), &pg.url());
    projection.wait_for(op_durable(dir.path()));
    wait_until("the history to pass the refusal", Duration::from_secs(120), || {
        transfer(addr, &alice, &bob, "10.00", &keys[0]).code() != "history_behind"
    });
    for (key, original) in keys.iter().zip(&originals) {
        let retry = transfer(addr, &alice, &bob, "10.00", key);
        assert_eq!((retry.status, &retry.json), (201, &original.json), "the original, from the history: {retry:?}");
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        let other = transfer(addr, &alice, &bob, "9.00", key);
        assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"), "another body: {other:?}");
    }
    let poor = transfer(addr, &alice, &bob, "1000.00", "order-poor");
    assert_eq!((poor.status, poor.code()), (409, "original_not_applied"), "{poor:?}");
    assert_eq!(balance(addr, &alice), "80.00", "each applied once");

    // The history, newest first, two entries a page, each page's cursor leading to the next.
    let first = history_page(addr, "alice", &[], &alice, "?limit=2");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json["currency"], "USD");
    assert!(first.json["history"]["op"].as_u64().unwrap() >= 1, "{first:?}");
    assert!(first.json["history"]["timestamp"].is_string());
    assert!(first.json["history"]["lag_ops"].is_u64(), "this gateway has written: {first:?}");
    let items = first.json["transactions"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["transaction_id"], originals[1].json["transaction_id"], "newest first");
    assert_eq!(items[0]["timestamp"], originals[1].json["timestamp"]);
    assert_eq!((items[0]["direction"].as_str(), items[0]["amount"].as_str()), (Some("debit"), Some("10.00")));
    assert_eq!(items[0]["counterparty_id"].as_str(), Some(bob.as_str()));
    assert_eq!(items[0]["balance_after"], "80.00");
    assert_eq!(items[1]["balance_after"], "90.00");
    let cursor = first.json["next_cursor"].as_str().expect("a next page").to_string();
    let second = history_page(addr, "alice", &[], &alice, &format!("?limit=2&cursor={cursor}"));
    assert_eq!(second.status, 200, "{second:?}");
    let items = second.json["transactions"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the deposit, and no more: {second:?}");
    assert_eq!((items[0]["direction"].as_str(), items[0]["balance_after"].as_str()), (Some("credit"), Some("100.00")));
    assert!(second.json["next_cursor"].is_null());
    // An operator reads any wallet; another user reads none but their own.
    assert_eq!(history_page(addr, "ops", &["operator:accounts"], &alice, "").status, 200);
    let foreign = history_page(addr, "bob", &[], &alice, "");
    assert_eq!((foreign.status, foreign.code()), (404, "wallet_not_found"));
    // Bad input is a 400 with its code; another wallet's cursor is a bad cursor.
    let bobs = history_page(addr, "bob", &[], &bob, "?limit=1");
    let bobs_cursor = bobs.json["next_cursor"].as_str().expect("bob has two entries").to_string();
    for (query, code) in [
        ("?limit=0".to_string(), "limit_invalid"),
        ("?limit=201".to_string(), "limit_invalid"),
        ("?limit=ten".to_string(), "limit_invalid"),
        ("?cursor=nonsense".to_string(), "cursor_invalid"),
        (format!("?cursor={bobs_cursor}"), "cursor_invalid"),
    ] {
        let response = history_page(addr, "alice", &[], &alice, &query);
        assert_eq!((response.status, response.code()), (400, code), "{query}: {response:?}");
    }

    // A transfer out of the engine's window is read from the history, by those who may see it.
    let id = originals[0].json["transaction_id"].as_str().unwrap();
    for user in ["alice", "bob"] {
        let found = http(addr, "GET", &format!("/v1/transfers/{id}"), Some(&token(user, &[])), None);
        assert_eq!((found.status, &found.json), (200, &originals[0].json), "{user}: {found:?}");
    }
    let hidden = http(addr, "GET", &format!("/v1/transfers/{id}"), Some(&token("carol", &[])), None);
    assert_eq!((hidden.status, hidden.code()), (404, "transfer_not_found"));

    // PostgreSQL stopped: history reads and too-old retries are retry-safe 503s, and both
    // recover when it is back.
    pg.stop();
    let down = transfer(addr, &alice, &bob, "10.00", &keys[0]);
    assert_eq!((down.status, down.code()), (503, "history_unavailable"), "{down:?}");
    let down = history_page(addr, "alice", &[], &alice, "");
    assert_eq!((down.status, down.code()), (503, "history_unavailable"), "{down:?}");
    pg.start_again();
    assert_eq!(pg.url(), url, "PostgreSQL came back on its port");
    wait_until("the gateway to read the history again", Duration::from_secs(60), || {
        history_page(addr, "alice", &[], &alice, "").status == 200
    });
    let retry = transfer(addr, &alice, &bob, "10.00", &keys[0]);
    assert_eq!((retry.status, &retry.json), (201, &originals[0].json));
    assert_eq!(balance(addr, &alice), "80.00");
    drop(projection);
}

fn hold_call(gateway: SocketAddr, path: &str, body: serde_json::Value) -> Response {
    http(gateway, "POST", path, Some(&token("alice", &[])), Some(&body))
}

/// A capture and a void retried with their keys after the hold and they have left the
/// engine's window: the hold is read from the history, the engine refuses the retry as too old,
/// and the history answers the original outcome (another amount under the key is refused);
/// nothing is applied twice.
#[test]
fn captures_and_voids_retried_past_the_window_answer_their_original() {
    let pg = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start_with(dir.path(), &["--transfers-max", "1"]);
    let projection = Projection::start(dir.path(), &pg.url());
    let url = pg.url();
    let gateway = Gateway::start(engine.addr, &["--rate-limit-per-s", "0", "--history-url", url.as_str()]);
    let addr = gateway.addr;
    let alice = wallet_create(addr, "alice");
    let bob = wallet_create(addr, "bob");
    assert_eq!(deposit(addr, &alice, "100.00", "fund").status, 201);
    let hold = |amount: &str, key: &str| {
        let body = json!({ "sender_id": alice, "receiver_id": bob, "amount": amount, "idempotency_key": key });
        let response = hold_call(addr, "/v1/holds", body);
        assert_eq!(response.status, 201, "{response:?}");
        response.json["transaction_id"].as_str().unwrap().to_string()
    };
    let (captured, voided) = (hold("30.00", "hold-1"), hold("20.00", "hold-2"));
    let capture_path = format!("/v1/holds/{captured}/capture");
    let void_path = format!("/v1/holds/{voided}/void");
    let capture = hold_call(addr, &capture_path, json!({ "amount": "10.00", "idempotency_key": "capture-1" }));
    assert_eq!(capture.status, 201, "{capture:?}");
    let void = hold_call(addr, &void_path, json!({ "idempotency_key": "void-1" }));
    assert_eq!(void.status, 201, "{void:?}");
    assert_eq!(balance(addr, &alice), "90.00");

    window_push(engine.addr, 2);
    projection.wait_for(op_durable(dir.path()));
    let retry = hold_call(addr, &capture_path, json!({ "amount": "10.00", "idempotency_key": "capture-1" }));
    assert_eq!((retry.status, &retry.json), (201, &capture.json), "the original capture: {retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let retry = hold_call(addr, &void_path, json!({ "idempotency_key": "void-1" }));
    assert_eq!((retry.status, &retry.json), (201, &void.json), "the original void: {retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let other = hold_call(addr, &capture_path, json!({ "amount": "5.00", "idempotency_key": "capture-1" }));
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"), "another amount: {other:?}");
    // A new capture of a hold that long left the window cannot be checked, so is not applied.
    let fresh = hold_call(addr, &capture_path, json!({ "idempotency_key": "capture-2" }));
    assert_eq!((fresh.status, fresh.code()), (409, "hold_too_old"), "{fresh:?}");
    // A hold in neither the engine nor the history is not found.
    let unknown = format!("/v1/holds/{}/capture", walletd_http::ids::id_format(u128::from(u64::MAX) << 64 | 1));
    let missing = hold_call(addr, &unknown, json!({ "idempotency_key": "capture-3" }));
    assert_eq!((missing.status, missing.code()), (404, "hold_not_found"), "{missing:?}");
    assert_eq!(balance(addr, &alice), "90.00", "each applied once");
    drop(projection);
}

#[test]
fn without_a_history_url_the_history_says_it_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start_with(dir.path(), &["--transfers-max", "1"]);
    let gateway = Gateway::start(engine.addr, &["--rate-limit-per-s", "0"]);
    let addr = gateway.addr;
    let alice = wallet_create(addr, "alice");
    let bob = wallet_create(addr, "bob");
    assert_eq!(deposit(addr, &alice, "100.00", "fund").status, 201);
    let original = transfer(addr, &alice, &bob, "10.00", "order-1");
    assert_eq!(original.status, 201);
    let page = history_page(addr, "alice", &[], &alice, "");
    assert_eq!((page.status, page.code()), (503, "history_not_configured"), "{page:?}");
    assert_eq!(page.header("retry-after"), None, "not a passing condition");
    window_push(engine.addr, 2);
    let retry = transfer(addr, &alice, &bob, "10.00", "order-1");
    assert_eq!((retry.status, retry.code()), (409, "idempotency_window_passed"), "{retry:?}");
    let id = original.json["transaction_id"].as_str().unwrap();
    let gone = http(addr, "GET", &format!("/v1/transfers/{id}"), Some(&token("alice", &[])), None);
    assert_eq!((gone.status, gone.code()), (404, "transfer_not_found"));
    assert_eq!(balance(addr, &alice), "90.00");
}
