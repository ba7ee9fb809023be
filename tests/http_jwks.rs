//! The gateway's JWK set by URL, end to end: a real identity provider's key set server (axum on
//! a free port of 127.0.0.1, serving a set the test changes), the real engine and the real
//! `walletd http --jwks-url`. Keys are made by each test (P-256, ES256) beside the RSA test key
//! of http/tests/fixtures. Rotation without a restart (on an unknown kid and on the period), a
//! removed key refused after the refresh, a flood of made-up kids fetching nothing more, a
//! provider that fails later keeping the keys in use, and every reason not to start.

mod http_harness;

use base64::Engine as _;
use http_harness::{http, http_text, metric, run_to_exit, wait_until, Engine, Gateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RSA_PEM: &[u8] = include_bytes!("../http/tests/fixtures/rsa-private.pem");
const FIXTURE_JWKS: &str = include_str!("../http/tests/fixtures/jwks.json");

// ---------------------------------------------------------------------------------------------
// Keys and tokens.

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    /// A new P-256 key (ES256).
    fn ec(kid: &str) -> SigningKey {
        let random = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random).unwrap();
        let point = pair.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        SigningKey {
            kid: kid.into(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// The RSA test key of http/tests/fixtures (RS256, kid `rsa-1`).
    fn rsa_fixture() -> SigningKey {
        let set: serde_json::Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
        let jwk = set["keys"].as_array().unwrap().iter().find(|key| key["kid"] == "rsa-1").unwrap().clone();
        SigningKey {
            kid: "rsa-1".into(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
            jwk,
        }
    }

    /// A token for `sub`, naming this key's kid.
    fn token(&self, sub: &str) -> String {
        self.token_as(sub, &self.kid)
    }

    /// A token signed by this key but naming `kid`.
    fn token_as(&self, sub: &str, kid: &str) -> String {
        let now = walletd_http::ids::now_ms() / 1000;
        let claims =
            serde_json::json!({ "sub": sub, "iss": "idp", "aud": "walletd", "exp": now + 600, "nbf": now - 1 });
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn key_set(keys: &[&SigningKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

// ---------------------------------------------------------------------------------------------
// The identity provider's key set server.

#[derive(Clone)]
struct Served {
    status: u16,
    body: String,
    cache_control: Option<String>,
}

/// Serves `GET /jwks.json` with what the test last set; counts the requests.
struct JwksServer {
    addr: SocketAddr,
    served: Arc<Mutex<Served>>,
    requests: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl JwksServer {
    fn start(body: &str) -> JwksServer {
        let (server, listener, app) = JwksServer::parts(body);
        let runtime = server.runtime.as_ref().expect("a running server");
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    /// The server before it serves: its runtime, listener and routes.
    fn parts(body: &str) -> (JwksServer, tokio::net::TcpListener, axum::Router) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let served = Arc::new(Mutex::new(Served { status: 200, body: body.into(), cache_control: None }));
        let requests = Arc::new(AtomicU64::new(0));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = (Arc::clone(&served), Arc::clone(&requests));
        let app = axum::Router::new().route("/jwks.json", axum::routing::get(jwks_serve)).with_state(state);
        (JwksServer { addr, served, requests, runtime: Some(runtime) }, listener, app)
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn serve(&self, status: u16, body: &str) {
        let mut served = self.served.lock().unwrap();
        served.status = status;
        served.body = body.into();
    }

    fn cache_control(&self, value: &str) {
        self.served.lock().unwrap().cache_control = Some(value.into());
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops serving: the listener and every connection are closed.
    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let addr = self.addr;
        wait_until("the JWK set server to stop", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_err()
        });
    }
}

impl JwksServer {
    /// The same server over TLS, with the certificate chain and key of these PEM files.
    fn start_tls(body: &str, chain_pem: &std::path::Path, key_pem: &std::path::Path) -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer> =
            CertificateDer::pem_file_iter(chain_pem).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (server, listener, app) = JwksServer::parts(body);
        server.runtime.as_ref().expect("a running server").spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        server
    }

    fn url_https(&self) -> String {
        format!("https://{}/jwks.json", self.addr)
    }
}

/// A CA and a certificate it signs for 127.0.0.1, made with the openssl command in `dir`:
/// (the CA's PEM, the server's chain PEM, the server's key PEM).
fn certificates(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl").args(args).current_dir(dir).output();
        let output = output.expect("the openssl command is installed (apt-get install openssl)");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let (ca_key, ca, key, csr, chain, ext) =
        (path("ca.key"), path("ca.pem"), path("key.pem"), path("csr.pem"), path("chain.pem"), path("ext.cnf"));
    let text = |path: &std::path::Path| path.to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca_subject = ["-subj", "/CN=walletd test CA", "-days", "2"];
    openssl(&[&["req", "-x509"][..], &ec, &["-keyout", &text(&ca_key), "-out", &text(&ca)], &ca_subject].concat());
    openssl(&[&["req"][..], &ec, &["-keyout", &text(&key), "-out", &text(&csr), "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &text(&csr),
        "-CA",
        &text(&ca),
        "-CAkey",
        &text(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &text(&chain),
        "-extfile",
        &text(&ext),
    ]);
    (ca, chain, key)
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn jwks_serve(
    axum::extract::State((served, requests)): axum::extract::State<(Arc<Mutex<Served>>, Arc<AtomicU64>)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    requests.fetch_add(1, Ordering::SeqCst);
    let served = served.lock().unwrap().clone();
    let status = axum::http::StatusCode::from_u16(served.status).unwrap();
    let mut response = (status, [("content-type", "application/json")], served.body).into_response();
    if let Some(value) = served.cache_control {
        response.headers_mut().insert("cache-control", value.parse().unwrap());
    }
    response
}

// ---------------------------------------------------------------------------------------------
// The gateway.

fn gateway_start(engine: &Engine, jwks: &JwksServer, extra: &[&str]) -> Gateway {
    gateway_start_url(engine, &jwks.url(), extra)
}

fn gateway_start_url(engine: &Engine, url: &str, extra: &[&str]) -> Gateway {
    let mut flags = vec!["--rate-limit-per-s", "0", "--jwt-issuer", "idp", "--jwks-url", url];
    flags.extend_from_slice(extra);
    Gateway::start(engine.addr, &flags)
}

/// The status and error code of an authenticated request.
fn call(gateway: &Gateway, token: &str) -> (u16, String) {
    let response = http(gateway.addr, "GET", "/v1/wallets", Some(token), None);
    (response.status, response.code().to_string())
}

fn accepted() -> (u16, String) {
    (200, String::new())
}

fn refused(code: &str) -> (u16, String) {
    (401, code.to_string())
}

fn jwks_metric(gateway: &Gateway, name: &str) -> f64 {
    let page = http_text(gateway.addr, "/metrics");
    metric(&page, name).unwrap_or_else(|| panic!("{name} is in /metrics:\n{page}"))
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn served_keys_verify_and_a_rotated_key_is_fetched_on_its_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let (ec1, ec2, rsa) = (SigningKey::ec("ec-1"), SigningKey::ec("ec-2"), SigningKey::rsa_fixture());
    let jwks = JwksServer::start(&key_set(&[&ec1, &rsa]));
    let gateway = gateway_start(&engine, &jwks, &["--jwks-refresh-s", "3600", "--jwks-refetch-min-s", "0"]);
    assert_eq!(jwks.requests(), 1, "one fetch at start");
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
    assert_eq!(call(&gateway, &rsa.token("alice")), accepted());
    // A known kid with a signature of another key is forged, and costs the provider nothing.
    let stranger = SigningKey::ec("stranger");
    assert_eq!(call(&gateway, &stranger.token_as("alice", "ec-1")), refused("token_invalid_signature"));
    assert_eq!(jwks.requests(), 1);

    // The provider adds a key: its first token makes the gateway fetch the set again.
    jwks.serve(200, &key_set(&[&ec1, &ec2, &rsa]));
    assert_eq!(call(&gateway, &ec2.token("bob")), accepted());
    assert_eq!(jwks.requests(), 2, "one refetch for the unknown kid");
    assert_eq!(call(&gateway, &ec2.token("bob")), accepted());
    assert_eq!(jwks.requests(), 2, "a known kid fetches nothing");

    // The provider removes ec-1: still accepted until a refresh, refused from it on.
    jwks.serve(200, &key_set(&[&ec2]));
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
    assert_eq!(call(&gateway, &SigningKey::ec("ec-3").token("carol")), refused("token_unknown_key"));
    assert_eq!(jwks.requests(), 3);
    assert_eq!(call(&gateway, &ec1.token("alice")), refused("token_unknown_key"));
    assert_eq!(call(&gateway, &rsa.token("alice")), refused("token_unknown_key"));
    assert_eq!(call(&gateway, &ec2.token("bob")), accepted());
    assert_eq!(jwks_metric(&gateway, "walletd_http_jwks_keys"), 1.0);
    assert!(jwks_metric(&gateway, "walletd_http_jwks_refreshes_total") >= 3.0);
    assert_eq!(jwks_metric(&gateway, "walletd_http_jwks_refresh_failures_total"), 0.0);
}

#[test]
fn a_flood_of_unknown_kids_costs_the_provider_no_more_than_one_fetch_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let (ec1, ec2) = (SigningKey::ec("ec-1"), SigningKey::ec("ec-2"));
    let jwks = JwksServer::start(&key_set(&[&ec1]));
    let gateway = gateway_start(&engine, &jwks, &["--jwks-refetch-min-s", "3600"]);
    assert_eq!(jwks.requests(), 1);
    jwks.serve(200, &key_set(&[&ec1, &ec2]));
    // The start-up fetch began less than an interval ago: no token can make another.
    for index in 0..50 {
        let token = ec2.token_as("mallory", &format!("made-up-{index}"));
        assert_eq!(call(&gateway, &token), refused("token_unknown_key"));
    }
    assert_eq!(call(&gateway, &ec2.token("bob")), refused("token_unknown_key"));
    assert_eq!(jwks.requests(), 1, "no fetch inside the interval");
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
}

#[test]
fn the_periodic_refresh_adds_and_removes_keys_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let (ec1, ec2, ec3) = (SigningKey::ec("ec-1"), SigningKey::ec("ec-2"), SigningKey::ec("ec-3"));
    let jwks = JwksServer::start(&key_set(&[&ec1, &ec2]));
    // Unknown kids never refetch here (the interval is an hour): only the period refreshes.
    let gateway = gateway_start(&engine, &jwks, &["--jwks-refresh-s", "1", "--jwks-refetch-min-s", "3600"]);
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
    jwks.serve(200, &key_set(&[&ec2, &ec3]));
    wait_until("ec-1 to be refused after a refresh", Duration::from_secs(60), || {
        call(&gateway, &ec1.token("alice")) == refused("token_unknown_key")
    });
    assert_eq!(call(&gateway, &ec3.token("carol")), accepted());
    assert_eq!(call(&gateway, &ec2.token("bob")), accepted());
    assert!(jwks.requests() >= 2);
}

#[test]
fn a_provider_that_fails_later_leaves_the_keys_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let ec1 = SigningKey::ec("ec-1");
    let mut jwks = JwksServer::start(&key_set(&[&ec1]));
    let gateway = gateway_start(&engine, &jwks, &["--jwks-refresh-s", "1", "--jwks-refetch-min-s", "1"]);
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
    let failures = |gateway: &Gateway| jwks_metric(gateway, "walletd_http_jwks_refresh_failures_total");
    assert_eq!(failures(&gateway), 0.0);

    // An error status, then a body that is not a key set, then a set with no usable key.
    let answers = [(503, "busy".to_string()), (200, "<html>".to_string()), (200, r#"{"keys": []}"#.to_string())];
    for (status, body) in answers {
        let before = failures(&gateway);
        jwks.serve(status, &body);
        wait_until("a failed refresh", Duration::from_secs(60), || failures(&gateway) > before);
        assert_eq!(call(&gateway, &ec1.token("alice")), accepted(), "after {status} {body}");
        assert_eq!(jwks_metric(&gateway, "walletd_http_jwks_keys"), 1.0);
    }
    // The key set in use was fetched before the failures, at least one period ago.
    assert!(jwks_metric(&gateway, "walletd_http_jwks_age_seconds") >= 1.0);

    // The provider is gone: known keys still verify, an unknown kid is refused in good time.
    jwks.stop();
    let before = failures(&gateway);
    wait_until("a failed refresh with the provider down", Duration::from_secs(60), || failures(&gateway) > before);
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
    assert_eq!(call(&gateway, &SigningKey::ec("ec-2").token("bob")), refused("token_unknown_key"));
}

#[test]
fn a_max_age_shorter_than_the_period_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path());
    let (ec1, ec2) = (SigningKey::ec("ec-1"), SigningKey::ec("ec-2"));
    let jwks = JwksServer::start(&key_set(&[&ec1]));
    jwks.cache_control("public, max-age=1");
    // The period is an hour and no token reaches the gateway until the second fetch: only
    // max-age can make it.
    let gateway = gateway_start(&engine, &jwks, &["--jwks-refresh-s", "3600", "--jwks-refetch-min-s", "1"]);
    jwks.serve(200, &key_set(&[&ec2]));
    wait_until("the set to be fetched again after max-age", Duration::from_secs(60), || jwks.requests() >= 2);
    wait_until("ec-1 to be refused", Duration::from_secs(60), || {
        call(&gateway, &ec1.token("alice")) == refused("token_unknown_key")
    });
    assert_eq!(call(&gateway, &ec2.token("bob")), accepted());
}

/// Why `walletd http --jwks-url URL` does not start, for each URL.
fn start_refused(url: &str, extra: &[&str]) -> String {
    let unused_engine: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut flags = vec!["--jwks-url", url];
    flags.extend_from_slice(extra);
    let (status, stderr) = Gateway::start_refused(unused_engine, &flags);
    assert!(!status.success(), "{url}: the gateway must not start: {stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

#[test]
fn the_gateway_does_not_start_without_a_usable_key_set() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/jwks.json");
    let stderr = start_refused(&url, &[]);
    assert!(stderr.contains(&format!("the JWK set at {url}: ")), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");

    let jwks = JwksServer::start("{}");
    let cases = [
        (404, "nothing here", "answered HTTP 404"),
        (200, "<html>not keys</html>", "not a JWK set"),
        (200, r#"{"keys": []}"#, "no usable RS256 or ES256 key"),
        (200, r#"{"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]}"#, "kid \"shared\": only RSA"),
    ];
    for (status, body, reason) in cases {
        jwks.serve(status, body);
        let stderr = start_refused(&jwks.url(), &[]);
        assert!(stderr.contains(&format!("the JWK set at {}: ", jwks.url())), "{stderr}");
        assert!(stderr.contains(reason), "{body}: {stderr}");
    }

    // https to a server that speaks plain HTTP: the TLS handshake fails.
    jwks.serve(200, &key_set(&[&SigningKey::ec("ec-1")]));
    let https = format!("https://{}/jwks.json", jwks.addr);
    let stderr = start_refused(&https, &[]);
    assert!(stderr.contains(&format!("the JWK set at {https}: ")), "{stderr}");

    // A server that accepts and never answers: the fetch timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", silent.local_addr().unwrap());
    let stderr = start_refused(&url, &["--jwks-timeout-ms", "300"]);
    assert!(stderr.contains("no complete answer within 300 ms"), "{stderr}");

    // Bad flags.
    assert!(start_refused("ftp://idp/jwks.json", &[]).contains("must start with http:// or https://"));
    assert!(start_refused(&jwks.url(), &["--jwks-refresh-s", "0"]).contains("--jwks-refresh-s must be from 1 to"));
}

#[test]
fn serve_does_not_start_its_gateway_without_a_usable_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/jwks.json");
    let mut command = std::process::Command::new(http_harness::WALLETD);
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--http", "127.0.0.1:0", "--accounts-max", "1024"])
        .args(["--segment-size", "67108864", "--jwks-url", &url])
        .arg("--data-dir")
        .arg(dir.path());
    let (status, stderr) = run_to_exit(&mut command);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("HTTP gateway: JWT keys: the JWK set at {url}: ")), "{stderr}");
}

#[test]
fn https_verifies_the_provider_against_its_ca_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, chain, key) = certificates(dir.path(), "idp");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let ec1 = SigningKey::ec("ec-1");
    let jwks = JwksServer::start_tls(&key_set(&[&ec1]), &chain, &key);
    let url = jwks.url_https();
    let ca_text = ca.to_str().unwrap().to_string();

    // Signed by another CA: the handshake fails, and the gateway does not start.
    let other = other_ca.to_str().unwrap().to_string();
    let stderr = start_refused(&url, &["--jwks-ca-file", &other]);
    assert!(stderr.contains(&format!("the JWK set at {url}: ")), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert_eq!(jwks.requests(), 0);
    // A CA file that is not one, and a CA file for plain http, are refused.
    let key_text = key.to_str().unwrap().to_string();
    assert!(start_refused(&url, &["--jwks-ca-file", &key_text]).contains("no PEM certificate"));
    assert!(start_refused(&jwks.url(), &["--jwks-ca-file", &ca_text]).contains("is for an https --jwks-url"));

    let dir_engine = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir_engine.path());
    let gateway = gateway_start_url(&engine, &url, &["--jwks-ca-file", &ca_text]);
    assert_eq!(jwks.requests(), 1);
    assert_eq!(call(&gateway, &ec1.token("alice")), accepted());
}
