//! The HTTP/JSON wallet API end to end: the real binary (`walletd serve` as the engine,
//! `walletd http` as the gateway), a real `redis-server`, real sockets. Sign in with tokens,
//! create wallets, move money, every error path; idempotency after FLUSHALL, a gateway
//! restart, an engine restart and after more transfers than the engine's window; rate limits
//! shared by two gateways and a stopped Redis; an engine killed under load.

mod http_harness;

use http_harness::{http, http_raw, token, wait_until, window_push, Engine, Gateway, RedisServer, Response};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// No rate limit, so tests that are not about it never meet one.
const UNLIMITED: &[&str] = &["--rate-limit-per-s", "0"];

fn wallet_create(gateway: SocketAddr, user: &str, currency: &str) -> String {
    let response =
        http(gateway, "POST", "/v1/wallets", Some(&token(user, &[])), Some(&json!({ "currency": currency })));
    assert_eq!(response.status, 201, "{response:?}");
    response.json["id"].as_str().unwrap().to_string()
}

fn deposit(gateway: SocketAddr, wallet: &str, amount: &str, key: &str) -> Response {
    let body = json!({ "wallet_id": wallet, "amount": amount, "currency": "USD", "idempotency_key": key });
    http(gateway, "POST", "/v1/deposits", Some(&token("ops", &["operator"])), Some(&body))
}

fn transfer(gateway: SocketAddr, user: &str, from: &str, to: &str, amount: &str, key: &str) -> Response {
    let body = json!({ "sender_id": from, "receiver_id": to, "amount": amount, "idempotency_key": key });
    http(gateway, "POST", "/v1/transfers", Some(&token(user, &[])), Some(&body))
}

fn balance(gateway: SocketAddr, user: &str, wallet: &str) -> String {
    let response = http(gateway, "GET", &format!("/v1/wallets/{wallet}"), Some(&token(user, &[])), None);
    assert_eq!(response.status, 200, "{response:?}");
    response.json["balance"].as_str().unwrap().to_string()
}

#[test]
fn tokens_are_checked_and_every_failure_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let gateway = Gateway::start(engine.addr, UNLIMITED);
    let addr = gateway.addr;
    let secret = http_harness::SECRET.as_bytes();
    let mint = |iss: &str, aud: &str, ttl: u64| walletd_http::auth::token_mint(secret, iss, aud, "alice", &[], ttl);
    let claims = json!({"sub": "alice", "iss": "walletd-dev", "aud": "walletd", "exp": 1_000_000_000u64});
    let expired = walletd_http::auth::token_sign(secret, &claims);
    let forged =
        walletd_http::auth::token_mint(b"not the gateway's secret at all!", "walletd-dev", "walletd", "alice", &[], 60);
    let cases: [(Option<String>, &str); 6] = [
        (None, "token_missing"),
        (Some("garbage".into()), "token_malformed"),
        (Some(expired), "token_expired"),
        (Some(forged), "token_invalid_signature"),
        (Some(mint("walletd-dev", "another-api", 60)), "token_wrong_audience"),
        (Some(mint("someone-else", "walletd", 60)), "token_wrong_issuer"),
    ];
    for (token, code) in cases {
        let response = http(addr, "GET", "/v1/wallets", token.as_deref(), None);
        assert_eq!((response.status, response.code()), (401, code));
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert!(response.json["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // Operator routes need their scope.
    let alice_wallet = wallet_create(addr, "alice", "USD");
    let body = json!({ "wallet_id": alice_wallet, "amount": "1.00", "currency": "USD", "idempotency_key": "d" });
    let response = http(addr, "POST", "/v1/deposits", Some(&token("alice", &[])), Some(&body));
    assert_eq!((response.status, response.code()), (403, "scope_required"));
    let response = http(addr, "POST", "/v1/deposits", Some(&token("ops", &["operator:withdrawals"])), Some(&body));
    assert_eq!((response.status, response.code()), (403, "scope_required"));
    let response = http(addr, "POST", "/v1/deposits", Some(&token("ops", &["operator:deposits"])), Some(&body));
    assert_eq!(response.status, 201, "{response:?}");
}

#[test]
fn wallets_transfers_holds_and_batches_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let gateway = Gateway::start(engine.addr, UNLIMITED);
    let addr = gateway.addr;
    let alice = wallet_create(addr, "alice", "USD");
    let bob = wallet_create(addr, "bob", "USD");
    let carol = wallet_create(addr, "carol", "USD");
    let alice_jpy = wallet_create(addr, "alice", "JPY");
    // Creating again returns the same wallet.
    let again = http(addr, "POST", "/v1/wallets", Some(&token("alice", &[])), Some(&json!({"currency": "USD"})));
    assert_eq!((again.status, again.json["id"].as_str().unwrap()), (200, alice.as_str()));
    assert_eq!(deposit(addr, &alice, "100.00", "fund-alice").status, 201);

    // The first seed's transfer.
    let sent = transfer(addr, "alice", &alice, &bob, "12.50", "order-1");
    assert_eq!(sent.status, 201, "{sent:?}");
    assert_eq!(sent.json["status"], "completed");
    assert_eq!(sent.json["amount"], "12.50");
    assert!(sent.json["timestamp"].as_str().unwrap().ends_with('Z'));
    let transaction_id = sent.json["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(balance(addr, "alice", &alice), "87.50");
    assert_eq!(balance(addr, "bob", &bob), "12.50");

    // Errors, each with its code.
    let cases = [
        (transfer(addr, "alice", &alice, &bob, "1000.00", "k1"), 422, "insufficient_funds"),
        (transfer(addr, "alice", &alice, &bob, "1.234", "k2"), 400, "amount_too_many_decimals"),
        (transfer(addr, "alice", &alice, &bob, "-1", "k3"), 400, "amount_signed"),
        (transfer(addr, "alice", &alice, &bob, "1e2", "k4"), 400, "amount_exponent"),
        (transfer(addr, "alice", &alice, &bob, " 1", "k5"), 400, "amount_whitespace"),
        (transfer(addr, "alice", &alice, &bob, "0", "k6"), 400, "amount_zero"),
        (transfer(addr, "alice", &alice, &alice, "1", "k7"), 422, "same_wallet"),
        (transfer(addr, "alice", &alice, &alice_jpy, "1", "k8"), 422, "currency_mismatch"),
        (transfer(addr, "bob", &alice, &bob, "1", "k9"), 404, "wallet_not_found"),
        (transfer(addr, "alice", &alice, "not-an-id", "1", "k10"), 400, "invalid_id"),
        (transfer(addr, "alice", &alice, &bob, "1", ""), 400, "idempotency_key_invalid"),
        (
            transfer(
                addr,
                "alice",
                &alice,
                &walletd_http::ids::id_format(walletd_http::ids::settlement_id("USD").0),
                "1",
                "k11",
            ),
            403,
            "settlement_account_forbidden",
        ),
        (transfer(addr, "alice", &alice, &walletd_http::ids::id_format(12345), "1", "k12"), 404, "receiver_not_found"),
        (http(addr, "GET", &format!("/v1/wallets/{alice}"), Some(&token("bob", &[])), None), 404, "wallet_not_found"),
        (http(addr, "GET", "/v1/nowhere", Some(&token("bob", &[])), None), 404, "route_not_found"),
        (http(addr, "DELETE", "/v1/wallets", Some(&token("bob", &[])), None), 405, "method_not_allowed"),
        (
            http_raw(addr, "POST", "/v1/transfers", Some(&token("alice", &[])), Some("{not json"), &[]),
            400,
            "invalid_json",
        ),
        (
            http(
                addr,
                "POST",
                "/v1/transfers",
                Some(&token("alice", &[])),
                Some(&json!({"sender_id": alice, "receiver_id": bob, "amount": 5, "idempotency_key": "n"})),
            ),
            400,
            "invalid_json",
        ),
        (
            http(addr, "GET", &format!("/v1/wallets/{alice}/transactions"), Some(&token("alice", &[])), None),
            503,
            "history_not_configured",
        ),
        (
            http(addr, "POST", "/v1/wallets", Some(&token("alice", &[])), Some(&json!({"currency": "XXX"}))),
            400,
            "currency_unknown",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!((response.status, response.code()), (status, code), "{response:?}");
    }
    assert_eq!(balance(addr, "alice", &alice), "87.50", "no failure moved money");

    // Who sees a transfer: its parties, not a third user.
    let path = format!("/v1/transfers/{transaction_id}");
    assert_eq!(http(addr, "GET", &path, Some(&token("alice", &[])), None).status, 200);
    assert_eq!(http(addr, "GET", &path, Some(&token("bob", &[])), None).status, 200);
    assert_eq!(http(addr, "GET", &path, Some(&token("carol", &[])), None).code(), "transfer_not_found");

    // The second seed's transfer, with a UUIDv7 used as the engine's id.
    let uuid = walletd_http::ids::id_format(walletd_http::ids::uuid_v7(walletd_http::ids::now_ms()));
    let body = json!({ "from_account": alice, "to_account": carol, "amount": "2.00", "currency": "USD", "transaction_id": uuid });
    let response = http(addr, "POST", "/v1/wallet/balance_transfer", Some(&token("alice", &[])), Some(&body));
    assert_eq!((response.status, response.json["transaction_id"].as_str()), (201, Some(uuid.as_str())), "{response:?}");
    assert_eq!(response.json["status"], "completed");
    // Another user presenting the same UUID is refused and moves nothing.
    let body = json!({ "from_account": bob, "to_account": carol, "amount": "2.00", "currency": "USD", "transaction_id": uuid });
    let response = http(addr, "POST", "/v1/wallet/balance_transfer", Some(&token("bob", &[])), Some(&body));
    assert_eq!((response.status, response.code()), (409, "idempotency_key_reused"), "{response:?}");

    // Holds: place, capture part, the rest comes back; a second capture is refused.
    let hold = http(
        addr,
        "POST",
        "/v1/holds",
        Some(&token("alice", &[])),
        Some(
            &json!({"sender_id": alice, "receiver_id": carol, "amount": "10.00", "idempotency_key": "hold-1", "expires_in_s": 3600}),
        ),
    );
    assert_eq!((hold.status, hold.json["status"].as_str()), (201, Some("pending")), "{hold:?}");
    let hold_id = hold.json["transaction_id"].as_str().unwrap().to_string();
    let wallet = http(addr, "GET", &format!("/v1/wallets/{alice}"), Some(&token("alice", &[])), None);
    assert_eq!(
        (wallet.json["available"].as_str(), wallet.json["pending_debits"].as_str()),
        (Some("75.50"), Some("10.00"))
    );
    assert_eq!(wallet.json["holds"][0]["hold_id"].as_str(), Some(hold_id.as_str()));
    let capture = http(
        addr,
        "POST",
        &format!("/v1/holds/{hold_id}/capture"),
        Some(&token("carol", &[])),
        Some(&json!({"amount": "4.00"})),
    );
    assert_eq!((capture.status, capture.json["kind"].as_str()), (201, Some("capture")), "{capture:?}");
    let again =
        http(addr, "POST", &format!("/v1/holds/{hold_id}/capture"), Some(&token("carol", &[])), Some(&json!({})));
    assert_eq!((again.status, again.code()), (409, "hold_already_captured"));
    let void = http(addr, "POST", &format!("/v1/holds/{hold_id}/void"), Some(&token("alice", &[])), Some(&json!({})));
    assert_eq!(void.code(), "hold_already_captured");
    assert_eq!(balance(addr, "alice", &alice), "81.50");
    assert_eq!(balance(addr, "carol", &carol), "6.00");
    let stranger = http(addr, "POST", &format!("/v1/holds/{hold_id}/void"), Some(&token("bob", &[])), Some(&json!({})));
    assert_eq!(stranger.code(), "hold_not_found");

    // A batch, not atomic: each item on its own.
    let items = json!([
        {"sender_id": alice, "receiver_id": bob, "amount": "1.00", "idempotency_key": "b1"},
        {"sender_id": alice, "receiver_id": bob, "amount": "5000.00", "idempotency_key": "b2"},
        {"sender_id": alice, "receiver_id": carol, "amount": "1.00", "idempotency_key": "b3"},
    ]);
    let batch =
        http(addr, "POST", "/v1/transfers/batch", Some(&token("alice", &[])), Some(&json!({"transfers": items})));
    assert_eq!(batch.status, 200, "{batch:?}");
    let statuses: Vec<u64> =
        batch.json["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 422, 201]);
    assert_eq!(batch.json["results"][1]["error"]["code"], "insufficient_funds");
    assert_eq!(balance(addr, "alice", &alice), "79.50");
    // Atomic: one failure, nothing applied.
    let items = json!([
        {"sender_id": alice, "receiver_id": bob, "amount": "1.00", "idempotency_key": "a1"},
        {"sender_id": alice, "receiver_id": bob, "amount": "5000.00", "idempotency_key": "a2"},
    ]);
    let batch = http(
        addr,
        "POST",
        "/v1/transfers/batch",
        Some(&token("alice", &[])),
        Some(&json!({"atomic": true, "transfers": items})),
    );
    let codes: Vec<&str> =
        batch.json["results"].as_array().unwrap().iter().map(|r| r["error"]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["linked_transfer_failed", "insufficient_funds"]);
    assert_eq!(balance(addr, "alice", &alice), "79.50");
    // Atomic and good, then resent: the original outcome, applied once.
    let items = json!([
        {"sender_id": alice, "receiver_id": bob, "amount": "1.00", "idempotency_key": "c1"},
        {"sender_id": alice, "receiver_id": carol, "amount": "2.00", "idempotency_key": "c2"},
    ]);
    let body = json!({"atomic": true, "transfers": items});
    let first = http(addr, "POST", "/v1/transfers/batch", Some(&token("alice", &[])), Some(&body));
    let second = http(addr, "POST", "/v1/transfers/batch", Some(&token("alice", &[])), Some(&body));
    for response in [&first, &second] {
        let statuses: Vec<u64> =
            response.json["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [201, 201], "{response:?}");
    }
    assert_eq!(first.json["results"][1]["transfer"], second.json["results"][1]["transfer"]);
    assert_eq!(balance(addr, "alice", &alice), "76.50");

    // Withdrawals, and the wallet list.
    let body = json!({ "wallet_id": bob, "amount": "3.00", "currency": "USD", "idempotency_key": "w1" });
    let response = http(addr, "POST", "/v1/withdrawals", Some(&token("ops", &["operator:withdrawals"])), Some(&body));
    assert_eq!((response.status, response.json["kind"].as_str()), (201, Some("withdrawal")), "{response:?}");
    let list = http(addr, "GET", "/v1/wallets", Some(&token("alice", &[])), None);
    let currencies: Vec<&str> =
        list.json["wallets"].as_array().unwrap().iter().map(|w| w["currency"].as_str().unwrap()).collect();
    assert_eq!(currencies, ["USD", "JPY"]);

    // Operators: limits and closing.
    let ops_limits = token("ops", &["operator:limits"]);
    let limited = http(
        addr,
        "PUT",
        &format!("/v1/wallets/{bob}/limits"),
        Some(&ops_limits),
        Some(&json!({"daily_debit_count_max": 1})),
    );
    assert_eq!(
        (limited.status, limited.json["limits"]["daily_debit_count_max"].as_u64()),
        (200, Some(1)),
        "{limited:?}"
    );
    assert_eq!(transfer(addr, "bob", &bob, &carol, "0.10", "bob-1").status, 201);
    let over = transfer(addr, "bob", &bob, &carol, "0.10", "bob-2");
    assert_eq!((over.status, over.code()), (422, "daily_count_limit_exceeded"));
    let user_limits =
        http(addr, "PUT", &format!("/v1/wallets/{bob}/limits"), Some(&token("bob", &[])), Some(&json!({})));
    assert_eq!(user_limits.code(), "scope_required");
    let ops_accounts = token("ops", &["operator:accounts"]);
    let closed = http(addr, "POST", &format!("/v1/wallets/{carol}/close"), Some(&ops_accounts), Some(&json!({})));
    assert_eq!((closed.status, closed.json["closed"].as_bool()), (200, Some(true)), "{closed:?}");
    let to_closed = transfer(addr, "alice", &alice, &carol, "0.10", "to-closed");
    assert_eq!((to_closed.status, to_closed.code()), (422, "receiver_closed"));
    let again = http(addr, "POST", &format!("/v1/wallets/{carol}/close"), Some(&ops_accounts), Some(&json!({})));
    assert_eq!((again.status, again.code()), (409, "wallet_already_closed"));
    assert_eq!(
        http(addr, "POST", &format!("/v1/wallets/{carol}/reopen"), Some(&ops_accounts), Some(&json!({}))).status,
        200
    );

    // The request id and trace context come back.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = http_raw(
        addr,
        "GET",
        "/healthz",
        None,
        None,
        &[("traceparent", traceparent), ("x-request-id", "my-request-1")],
    );
    assert_eq!(response.header("x-request-id"), Some("my-request-1"));
    assert!(response.header("traceparent").unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    let metrics = http(addr, "GET", "/metrics", None, None);
    assert_eq!(metrics.status, 200);
}

/// The same request, resent after everything that could make a gateway forget it, is applied
/// once: after FLUSHALL, a gateway restart, an engine restart, and after more transfers than
/// the engine's window (then it is refused, never applied again).
#[test]
fn idempotency_survives_flushall_restarts_and_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut engine = Engine::start(dir.path());
    let url = redis.url();
    let flags = ["--rate-limit-per-s", "0", "--redis-url", url.as_str()];
    let mut gateway = Gateway::start(engine.addr, &flags);
    let alice = wallet_create(gateway.addr, "alice", "USD");
    let bob = wallet_create(gateway.addr, "bob", "USD");
    assert_eq!(deposit(gateway.addr, &alice, "100.00", "fund").status, 201);
    let uuid_key = walletd_http::ids::id_format(walletd_http::ids::uuid_v7(walletd_http::ids::now_ms()));
    let keys = ["order-42".to_string(), uuid_key];

    let originals: Vec<Response> =
        keys.iter().map(|key| transfer(gateway.addr, "alice", &alice, &bob, "10.00", key)).collect();
    for original in &originals {
        assert_eq!(original.status, 201, "{original:?}");
        assert_eq!(original.header("idempotent-replayed"), None);
    }
    let check = |addr: SocketAddr, moment: &str| {
        for (key, original) in keys.iter().zip(&originals) {
            let retry = transfer(addr, "alice", &alice, &bob, "10.00", key);
            assert_eq!(retry.status, 201, "{moment}: {retry:?}");
            assert_eq!(retry.header("idempotent-replayed"), Some("true"), "{moment}");
            assert_eq!(retry.json, original.json, "{moment}: the original response");
        }
        assert_eq!(balance(addr, "alice", &alice), "80.00", "{moment}: applied once");
    };
    check(gateway.addr, "a plain retry");
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    check(gateway.addr, "after FLUSHALL (from the engine)");
    // The same key with another body is a conflict, from the cache and from the engine.
    let other = transfer(gateway.addr, "alice", &alice, &bob, "11.00", "order-42");
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"));
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    let other = transfer(gateway.addr, "alice", &alice, &bob, "11.00", "order-42");
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"));
    // Another user's equal key is another transfer.
    assert_eq!(deposit(gateway.addr, &bob, "50.00", "fund-bob").status, 201);
    let bobs = transfer(gateway.addr, "bob", &bob, &alice, "1.00", "order-42");
    assert_eq!((bobs.status, bobs.header("idempotent-replayed")), (201, None));
    assert_ne!(bobs.json["transaction_id"], originals[0].json["transaction_id"]);
    assert_eq!(transfer(gateway.addr, "bob", &alice, &bob, "1.00", "bob-move").status, 404);
    let alice_balance = "81.00";

    gateway.kill();
    let gateway = Gateway::start(engine.addr, &flags);
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    let check_all = |addr: SocketAddr, moment: &str| {
        for (key, original) in keys.iter().zip(&originals) {
            let retry = transfer(addr, "alice", &alice, &bob, "10.00", key);
            assert_eq!((retry.status, &retry.json), (201, &original.json), "{moment}");
        }
        assert_eq!(balance(addr, "alice", &alice), alice_balance, "{moment}: applied once");
    };
    check_all(gateway.addr, "after a gateway restart");

    engine.restart();
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    wait_until("the gateway to reconnect", Duration::from_secs(30), || {
        http(gateway.addr, "GET", "/readyz", None, None).status == 200
    });
    check_all(gateway.addr, "after an engine restart");

    // Every success is cached (the writes are not waited for: wait for both keys).
    wait_until("the response cache to hold both keys", Duration::from_secs(10), || redis.command("DBSIZE") == ":2");
    // More transfers than the engine's window, straight through the binary protocol.
    // More than the engine's window (1 Mi − 8189 transfers by default): every transfer made
    // before is forgotten.
    window_push(engine.addr, ((1u64 << 20) - 8189).div_ceil(8189) + 2);
    // The cache answers the original past the engine's window (the retention outlives it)…
    for (key, original) in keys.iter().zip(&originals) {
        let retry = transfer(gateway.addr, "alice", &alice, &bob, "10.00", key);
        assert_eq!((retry.status, &retry.json), (201, &original.json), "past the window, from the cache");
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        let other = transfer(gateway.addr, "alice", &alice, &bob, "9.00", key);
        assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"), "past the window, another body");
    }
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    // …but without it the engine can no longer tell, so it refuses: never a second application.
    for key in &keys {
        let retry = transfer(gateway.addr, "alice", &alice, &bob, "10.00", key);
        assert_eq!((retry.status, retry.code()), (409, "idempotency_window_passed"), "{retry:?}");
    }
    assert_eq!(balance(gateway.addr, "alice", &alice), alice_balance, "still applied once");
}

/// One user's budget is shared by two gateways through Redis; with Redis stopped, `local`
/// falls back to the process's own limit and `closed` refuses, and both recover with it.
#[test]
fn rate_limits_are_shared_and_a_stopped_redis_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let engine = Engine::start(dir.path());
    let url = redis.url();
    // One request per 1000 s after a burst of 5: nothing refills during the test.
    let limits = ["--redis-url", url.as_str(), "--rate-limit-per-s", "0.001", "--rate-limit-burst", "5"];
    let local = Gateway::start(engine.addr, &[&limits[..], &["--rate-limit-redis-down", "local"]].concat());
    let closed = Gateway::start(engine.addr, &[&limits[..], &["--rate-limit-redis-down", "closed"]].concat());
    let alice = token("alice", &[]);
    let statuses: Vec<u16> = (0..10)
        .map(|index| {
            let addr = if index % 2 == 0 { local.addr } else { closed.addr };
            http(addr, "GET", "/v1/wallets", Some(&alice), None).status
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&status| status == 200).count(),
        5,
        "one budget across two gateways: {statuses:?}"
    );
    let refused = http(local.addr, "GET", "/v1/wallets", Some(&alice), None);
    assert_eq!((refused.status, refused.code()), (429, "rate_limited"));
    assert!(refused.header("retry-after").and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    // Another user has their own budget.
    assert_eq!(http(closed.addr, "GET", "/v1/wallets", Some(&token("bob", &[])), None).status, 200);

    redis.stop();
    let carol = token("carol", &[]);
    let statuses: Vec<u16> =
        (0..7).map(|_| http(local.addr, "GET", "/v1/wallets", Some(&carol), None).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "local: the process's own limit");
    let response = http(closed.addr, "GET", "/v1/wallets", Some(&carol), None);
    assert_eq!((response.status, response.code()), (503, "rate_limiter_unavailable"));
    // Money still moves through the local gateway while Redis is down.
    let dave = wallet_create(local.addr, "dave", "USD");
    assert_eq!(deposit(local.addr, &dave, "1.00", "dave-1").status, 201);

    redis.restart();
    wait_until("the closed gateway to use Redis again", Duration::from_secs(30), || {
        http(closed.addr, "GET", "/v1/wallets", Some(&token("erin", &[])), None).status == 200
    });
}

/// The engine killed while transfers are in flight: every answer is a success or a
/// retry-safe 503, and resending the failed ones with their keys leaves each applied once.
#[test]
fn an_engine_killed_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::start(dir.path());
    let gateway = Gateway::start(engine.addr, UNLIMITED);
    let addr = gateway.addr;
    let alice = wallet_create(addr, "alice", "USD");
    let bob = wallet_create(addr, "bob", "USD");
    assert_eq!(deposit(addr, &alice, "1000.00", "fund").status, 201);
    let keys: Vec<String> = (0..200).map(|index| format!("load-{index}")).collect();
    let started = std::sync::Barrier::new(5);
    let pending: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(50)
            .map(|chunk| {
                let (alice, bob, started) = (&alice, &bob, &started);
                scope.spawn(move || {
                    started.wait();
                    let mut unsure = Vec::new();
                    for key in chunk {
                        let response = transfer(addr, "alice", alice, bob, "0.01", key);
                        match response.status {
                            201 => {}
                            503 => {
                                assert!(
                                    ["engine_unavailable", "engine_outcome_unknown"].contains(&response.code()),
                                    "{response:?}"
                                );
                                assert!(response.header("retry-after").is_some());
                                unsure.push(key.clone());
                            }
                            other => panic!("an answer that is neither success nor retry-safe: {other} {response:?}"),
                        }
                    }
                    unsure
                })
            })
            .collect();
        started.wait();
        engine.restart();
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
    });
    wait_until("the gateway to reconnect", Duration::from_secs(30), || {
        http(addr, "GET", "/readyz", None, None).status == 200
    });
    for key in &pending {
        let response = transfer(addr, "alice", &alice, &bob, "0.01", key);
        assert_eq!(response.status, 201, "{response:?}");
    }
    // Every key once more: all are replays now.
    for key in &keys {
        assert_eq!(transfer(addr, "alice", &alice, &bob, "0.01", key).header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(balance(addr, "bob", &bob), "2.00", "200 transfers of 0.01, each applied exactly once");
    assert_eq!(balance(addr, "alice", &alice), "998.00");
}
