//! The JWK set: parsed from a file once (`--jwks-file`), or fetched from the identity
//! provider's URL (`--jwks-url`) at start and kept fresh while the gateway runs.
//!
//! Requests never wait on the network for a key they know: the key set in use sits behind an
//! `ArcSwap`, which a request reads without a lock and a refresh replaces whole, so a key the
//! provider removed stops verifying at the refresh that no longer lists it, and one it added
//! verifies from the refresh that lists it. Refreshes happen on a period (`--jwks-refresh-s`,
//! shortened by the response's `Cache-Control: max-age`) and when a token names a `kid` the
//! set does not hold; that second kind is the only fetch a request waits on, bounded by
//! `--jwks-timeout-ms`, and at most one per `--jwks-refetch-min-s` happens, so a flood of
//! tokens with made-up kids costs the provider one request per interval. A fetch that fails
//! keeps the keys in use (a warning, a metric) and is retried; only the first one, at start,
//! is a reason not to start.
//!
//! A provider's set may hold keys this gateway cannot use (encryption keys, other curves,
//! other algorithms, kinds of key a newer standard adds): those are skipped by name, so that a
//! provider adding one never stops rotation. A set with no usable key at all is refused.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CACHE_CONTROL, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JWK set body accepted from a URL: real sets are a few kilobytes.
pub const JWKS_SIZE_MAX_BYTES: usize = 1 << 20;
/// Most keys kept from one set.
pub const JWKS_KEYS_MAX: usize = 64;
/// Longest `--jwks-refresh-s` and `--jwks-refetch-min-s`: a week.
pub const JWKS_INTERVAL_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Longest `--jwks-timeout-ms`: what a request meeting an unknown kid may wait.
pub const JWKS_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// One usable verification key.
pub struct Key {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The RS256 and ES256 keys of one JWK set.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

/// A parsed set: its usable keys, and a line for each key skipped (kid and why).
pub struct Parsed {
    pub set: KeySet,
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses a JWK set document. Refused: not JSON, no `keys` array, or no usable key.
    pub fn parse(json: &[u8]) -> Result<Parsed, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(json).map_err(|error| format!("not a JWK set ({{\"keys\": [...]}}): {error}"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            let kid = value.get("kid").and_then(|kid| kid.as_str()).map(String::from);
            let name = kid.as_deref().map_or_else(|| format!("key {index} (no kid)"), |kid| format!("kid {kid:?}"));
            match key_parse(value) {
                Ok(key) if set.keys.len() < JWKS_KEYS_MAX => set.keys.push(key),
                Ok(_) => skipped.push(format!("{name}: more than {JWKS_KEYS_MAX} keys")),
                Err(reason) => skipped.push(format!("{name}: {reason}")),
            }
        }
        if set.keys.is_empty() {
            let reasons = if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join("; ")) };
            return Err(format!("the JWK set has no usable RS256 or ES256 key{reasons}"));
        }
        assert!(set.keys.len() <= JWKS_KEYS_MAX);
        Ok(Parsed { set, skipped })
    }
}

/// One JWK, if it is a signature key of RSA (RS256) or EC P-256 (ES256).
fn key_parse(value: serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|error| format!("not a JWK this gateway reads: {error}"))?;
    if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".into());
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(ec) => return Err(format!("curve {:?}: only P-256 (ES256)", ec.curve)),
        _ => return Err("only RSA (RS256) and EC P-256 (ES256) keys are accepted".into()),
    };
    let named = match jwk.common.key_algorithm {
        None => algorithm,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(other) => return Err(format!("alg {other:?}: only RS256 and ES256")),
    };
    if named != algorithm {
        return Err(format!("alg {named:?} does not match the key's kind"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|error| format!("unusable JWK: {error}"))?;
    Ok(Key { kid: jwk.common.key_id.clone(), algorithm, key })
}

/// How `--jwks-url` is fetched and refreshed.
#[derive(Clone, Debug)]
pub struct JwksUrlOptions {
    pub url: String,
    /// The longest a key set is kept before it is fetched again.
    pub refresh: Duration,
    /// The shortest time between two fetches when tokens name unknown kids (and the floor of a
    /// provider's `max-age`).
    pub refetch_interval_min: Duration,
    /// The longest one fetch may take, connection to last byte.
    pub fetch_timeout: Duration,
    /// For https: trust only these CA certificates (PEM), not the system's.
    pub ca_file: Option<PathBuf>,
}

impl JwksUrlOptions {
    /// Checks the URL (http or https, with a host) and the durations.
    pub fn check(&self) -> Result<Uri, String> {
        let uri: Uri = self.url.parse().map_err(|error| format!("--jwks-url {}: not a URL: {error}", self.url))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("--jwks-url {}: the URL must start with http:// or https://", self.url)),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("--jwks-url {}: the URL has no host", self.url));
        }
        if self.ca_file.is_some() && uri.scheme_str() != Some("https") {
            return Err(format!("--jwks-ca-file is for an https --jwks-url, not {}", self.url));
        }
        let week_s = JWKS_INTERVAL_MAX.as_secs();
        if self.refresh.is_zero() || self.refresh > JWKS_INTERVAL_MAX {
            return Err(format!("--jwks-refresh-s must be from 1 to {week_s} (a week)"));
        }
        if self.refetch_interval_min > JWKS_INTERVAL_MAX {
            return Err(format!("--jwks-refetch-min-s must be at most {week_s} (a week)"));
        }
        if self.fetch_timeout.is_zero() || self.fetch_timeout > JWKS_TIMEOUT_MAX {
            return Err(format!("--jwks-timeout-ms must be from 1 to {}", JWKS_TIMEOUT_MAX.as_millis()));
        }
        Ok(uri)
    }

    /// When to fetch again after a fetch that succeeded: the provider's `max-age` if it is
    /// shorter than `refresh`, but never sooner than `refetch_interval_min` (nor 1 s).
    pub fn refresh_after(&self, max_age: Option<Duration>) -> Duration {
        let floor = self.refetch_interval_min.max(Duration::from_secs(1));
        let after = match max_age {
            Some(max_age) => self.refresh.min(max_age.max(floor)),
            None => self.refresh,
        };
        assert!(after <= self.refresh, "a refresh is never later than --jwks-refresh-s");
        after
    }

    /// When to try again after a fetch that failed.
    pub fn retry_after(&self) -> Duration {
        self.refresh.min(self.refetch_interval_min.max(Duration::from_secs(1)))
    }
}

/// `max-age` of a `Cache-Control` header (`no-cache` and `no-store` count as 0).
pub fn cache_max_age(headers: &HeaderMap<HeaderValue>) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',').map(str::trim) {
            let directive = directive.to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                return Some(Duration::ZERO);
            }
            if let Some(seconds) = directive.strip_prefix("max-age=").and_then(|s| s.trim_matches('"').parse().ok()) {
                max_age = Some(Duration::from_secs(seconds));
            }
        }
    }
    max_age
}

/// The key set of a URL and what keeps it fresh.
pub struct JwksRemote {
    options: JwksUrlOptions,
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: ArcSwap<KeySet>,
    /// When the last fetch began, of any kind; held across a fetch, so that fetches never
    /// overlap and requests with unknown kids wait for the one in flight.
    attempted_at: tokio::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl JwksRemote {
    /// Fetches the set once; an error (naming the URL and the reason) if that fails or the set
    /// has no usable key. Returns the remote and when to refresh it.
    pub async fn start(options: JwksUrlOptions, metrics: Arc<Metrics>) -> Result<(JwksRemote, Duration), String> {
        let uri = options.check()?;
        let https = uri.scheme_str() == Some("https");
        let connector = connector(https, options.ca_file.as_deref()).map_err(|reason| jwks_said(&options, &reason))?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let remote = JwksRemote {
            options,
            uri,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            attempted_at: tokio::sync::Mutex::new(Some(Instant::now())),
            metrics,
        };
        let (parsed, max_age) = remote.fetch().await.map_err(|reason| jwks_said(&remote.options, &reason))?;
        remote.keys_replace(parsed);
        let after = remote.options.refresh_after(max_age);
        Ok((remote, after))
    }

    pub fn url(&self) -> &str {
        &self.options.url
    }

    /// The key set in use (a reference count, no lock).
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Refreshes on the period until the task is aborted.
    pub async fn refresh_loop(self: Arc<JwksRemote>, mut after: Duration) {
        loop {
            tokio::time::sleep(after).await;
            let mut attempted_at = self.attempted_at.lock().await;
            *attempted_at = Some(Instant::now());
            after = match self.refresh().await {
                Some(max_age) => self.options.refresh_after(max_age),
                None => self.options.retry_after(),
            };
            drop(attempted_at);
        }
    }

    /// A token named a kid the set does not hold: fetch again now, unless a fetch began less
    /// than `refetch_interval_min` ago (then the caller keeps the answer it has). Waits for a
    /// fetch already in flight rather than starting a second.
    pub async fn refetch_for_unknown_kid(&self) {
        let mut attempted_at = self.attempted_at.lock().await;
        if attempted_at.is_some_and(|at| at.elapsed() < self.options.refetch_interval_min) {
            return;
        }
        *attempted_at = Some(Instant::now());
        let _ = self.refresh().await;
    }

    /// One fetch that replaces the keys, or keeps them and says why. `Some(max-age)` when it
    /// succeeded. Called with `attempted_at` held.
    async fn refresh(&self) -> Option<Option<Duration>> {
        match self.fetch().await {
            Ok((parsed, max_age)) => {
                self.keys_replace(parsed);
                Some(max_age)
            }
            Err(reason) => {
                self.metrics.jwks_refresh_failure_count();
                tracing::warn!(url = %self.options.url, %reason, "the JWK set could not be refreshed; keeping the keys in use");
                None
            }
        }
    }

    fn keys_replace(&self, parsed: Parsed) {
        for skipped in &parsed.skipped {
            tracing::warn!(url = %self.options.url, key = %skipped, "a key of the JWK set is skipped");
        }
        let count = parsed.set.keys.len();
        assert!(count > 0, "a parsed set has a usable key");
        self.keys.store(Arc::new(parsed.set));
        self.metrics.jwks_refresh_record(count);
        tracing::info!(url = %self.options.url, keys = count, "JWK set fetched");
    }

    /// GET the URL within the timeout; the parsed set and the response's `max-age`.
    async fn fetch(&self) -> Result<(Parsed, Option<Duration>), String> {
        let timeout = self.options.fetch_timeout;
        let fetched = tokio::time::timeout(timeout, self.fetch_body()).await;
        let (body, max_age) =
            fetched.map_err(|_| format!("no complete answer within {} ms", timeout.as_millis()))??;
        let parsed = KeySet::parse(&body)?;
        Ok((parsed, max_age))
    }

    async fn fetch_body(&self) -> Result<(Bytes, Option<Duration>), String> {
        let request = Request::get(self.uri.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(USER_AGENT, concat!("walletd/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|error| error.to_string())?;
        let response = self.client.request(request).await.map_err(|error| error_chain(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        let max_age = cache_max_age(response.headers());
        let body = Limited::new(response.into_body(), JWKS_SIZE_MAX_BYTES).collect().await.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                format!("the body is larger than {JWKS_SIZE_MAX_BYTES} bytes")
            } else {
                format!("reading the body: {}", error_chain(&*error))
            }
        })?;
        Ok((body.to_bytes(), max_age))
    }
}

/// TLS by rustls on ring: for https, the system's trusted roots, or only the CA certificates of
/// `--jwks-ca-file`; http needs no roots.
fn connector(https: bool, ca_file: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match (https, ca_file) {
        (true, None) => builder
            .with_provider_and_native_roots(provider)
            .map_err(|error| format!("no trusted CA certificates for https: {error}"))?,
        (https, ca_file) => {
            let roots = match ca_file.filter(|_| https) {
                Some(path) => ca_file_read(path)?,
                None => rustls::RootCertStore::empty(),
            };
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| error.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    Ok(builder.https_or_http().enable_http1().build())
}

/// The CA certificates of a PEM file; at least one.
fn ca_file_read(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let said = |error: &dyn std::fmt::Display| format!("--jwks-ca-file {}: {error}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|error| said(&error))? {
        roots.add(certificate.map_err(|error| said(&error))?).map_err(|error| said(&error))?;
    }
    if roots.is_empty() {
        return Err(said(&"no PEM certificate in the file"));
    }
    Ok(roots)
}

fn jwks_said(options: &JwksUrlOptions, reason: &str) -> String {
    format!("the JWK set at {}: {reason}", options.url)
}

/// An error and its sources, "a: b: c" (hyper's own message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../tests/fixtures/jwks.json");

    fn options(refresh_s: u64, refetch_min_s: u64) -> JwksUrlOptions {
        JwksUrlOptions {
            url: "http://127.0.0.1:1/jwks".into(),
            refresh: Duration::from_secs(refresh_s),
            refetch_interval_min: Duration::from_secs(refetch_min_s),
            fetch_timeout: Duration::from_secs(2),
            ca_file: None,
        }
    }

    #[test]
    fn unusable_keys_are_skipped_by_name_and_an_empty_set_is_refused() {
        let fixture: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        let mut keys = fixture["keys"].as_array().unwrap().clone();
        let mut with = |key: serde_json::Value| keys.push(key);
        with(serde_json::json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}));
        with(
            serde_json::json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        );
        let mut enc = fixture["keys"][0].clone();
        enc["kid"] = "enc-1".into();
        enc["use"] = "enc".into();
        with(enc);
        let mut rs512 = fixture["keys"][0].clone();
        rs512["kid"] = "rsa-512".into();
        rs512["alg"] = "RS512".into();
        with(rs512);
        with(serde_json::json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}));
        with(serde_json::json!({"kty": "a kind from the future", "kid": "new"}));
        let document = serde_json::json!({ "keys": keys }).to_string();
        let parsed = KeySet::parse(document.as_bytes()).unwrap();
        let kids: Vec<_> = parsed.set.keys.iter().map(|key| key.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["rsa-1", "ec-1"]);
        let skipped = parsed.skipped.join("\n");
        for kid in ["shared", "ed", "enc-1", "rsa-512", "p384", "new"] {
            assert!(skipped.contains(&format!("kid {kid:?}")), "{kid} is named among the skipped: {skipped}");
        }
        assert!(skipped.contains("not a signature key"));
        let cases = [
            ("not json", "not a JWK set"),
            (r#"{"no": "keys"}"#, "not a JWK set"),
            (r#"{"keys": []}"#, "no usable RS256 or ES256 key"),
            (r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#, "kid \"s\": only RSA"),
        ];
        for (document, reason) in cases {
            let error = KeySet::parse(document.as_bytes()).err().unwrap();
            assert!(error.contains(reason), "{document}: {error}");
        }
    }

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let usual = options(300, 10);
        assert_eq!(usual.refresh_after(None), Duration::from_secs(300));
        assert_eq!(usual.refresh_after(Some(Duration::from_secs(60))), Duration::from_secs(60));
        assert_eq!(usual.refresh_after(Some(Duration::from_secs(86_400))), Duration::from_secs(300));
        assert_eq!(usual.refresh_after(Some(Duration::ZERO)), Duration::from_secs(10));
        assert_eq!(usual.retry_after(), Duration::from_secs(10));
        // A period shorter than the refetch interval is kept as asked.
        let short = options(1, 3600);
        assert_eq!(short.refresh_after(Some(Duration::ZERO)), Duration::from_secs(1));
        assert_eq!(short.retry_after(), Duration::from_secs(1));
    }

    #[test]
    fn cache_control_is_read() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
            map
        };
        assert_eq!(cache_max_age(&headers("public, max-age=120")), Some(Duration::from_secs(120)));
        assert_eq!(cache_max_age(&headers("Max-Age=7, must-revalidate")), Some(Duration::from_secs(7)));
        assert_eq!(cache_max_age(&headers("no-store")), Some(Duration::ZERO));
        assert_eq!(cache_max_age(&headers("public")), None);
        assert_eq!(cache_max_age(&headers("max-age=soon")), None);
        assert_eq!(cache_max_age(&HeaderMap::new()), None);
    }

    #[test]
    fn bad_urls_and_durations_are_refused() {
        let with = |url: &str| JwksUrlOptions { url: url.into(), ..options(300, 10) };
        assert!(with("http://127.0.0.1:8080/.well-known/jwks.json").check().is_ok());
        assert!(with("https://idp.example/jwks").check().is_ok());
        let cases = [
            ("ftp://idp/jwks", "must start with http:// or https://"),
            ("/jwks.json", "must start with http:// or https://"),
            ("http://", "not a URL"),
            ("not a url", "not a URL"),
        ];
        for (url, reason) in cases {
            let error = with(url).check().unwrap_err();
            assert!(error.contains(reason), "{url}: {error}");
        }
        let year = Duration::from_secs(365 * 86_400);
        let flags = [
            (JwksUrlOptions { refresh: Duration::ZERO, ..options(300, 10) }, "--jwks-refresh-s"),
            (JwksUrlOptions { refresh: year, ..options(300, 10) }, "--jwks-refresh-s"),
            (JwksUrlOptions { refetch_interval_min: year, ..options(300, 10) }, "--jwks-refetch-min-s"),
            (JwksUrlOptions { fetch_timeout: Duration::ZERO, ..options(300, 10) }, "--jwks-timeout-ms"),
            (JwksUrlOptions { fetch_timeout: Duration::from_secs(61), ..options(300, 10) }, "--jwks-timeout-ms"),
        ];
        let ca = |url: &str| JwksUrlOptions { url: url.into(), ca_file: Some("ca.pem".into()), ..options(300, 10) };
        assert!(ca("https://idp.example/jwks").check().is_ok());
        assert!(ca("http://idp.example/jwks").check().unwrap_err().contains("--jwks-ca-file is for an https"));
        for (bad, flag) in flags {
            assert!(bad.check().unwrap_err().contains(flag), "{flag}");
        }
    }
}
