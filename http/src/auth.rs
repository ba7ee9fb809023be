//! Who is calling: JWT bearer tokens, verified with HS256 (a secret file) or RS256/ES256 (a
//! JWK set from a file, or from a URL kept fresh by `jwks::JwksRemote`), with `iss`, `aud`,
//! `exp` and `nbf` checked. `sub` is the user; the `scope`
//! claim (space-separated, or an array in `scp`) carries operator scopes.
//!
//! Without any key configured, the gateway makes a development secret on first run (32 random
//! bytes, hex, mode 0600) and prints a token, so a newcomer can `curl` at once; `walletd http
//! token` mints more. The secret file is the whole of a dev deployment's trust: anyone who can
//! read it can be anyone.

use crate::error::{ApiError, HttpError};
use crate::jwks::{JwksRemote, JwksUrlOptions, KeySet};
use crate::metrics::Metrics;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Every operator scope at once.
pub const SCOPE_OPERATOR: &str = "operator";
pub const SCOPE_DEPOSITS: &str = "operator:deposits";
pub const SCOPE_WITHDRAWALS: &str = "operator:withdrawals";
pub const SCOPE_LIMITS: &str = "operator:limits";
pub const SCOPE_ACCOUNTS: &str = "operator:accounts";
pub const SCOPE_TRANSFERS: &str = "operator:transfers";

/// Longest accepted `sub`: it is hashed into ids, and a bound keeps logs and keys small.
pub const SUB_LENGTH_MAX: usize = 255;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub scopes: Vec<String>,
    /// The W3C trace id of the request the caller made (0 until the request's trace context
    /// is attached): what the engine journals with the transfers the request makes.
    pub trace_id: u128,
    /// The ids of the caller's wallets, one per configured currency in order: derived on first
    /// use and kept for the request (a batch checks the sender of every item).
    pub wallets: std::sync::OnceLock<Vec<walletd_core::AccountId>>,
}

impl Caller {
    /// `operator` grants every `operator:…` scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|held| held == scope || (held == SCOPE_OPERATOR && scope.starts_with("operator:")))
    }

    pub fn scope_require(&self, scope: &str) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(ApiError::forbidden("scope_required", format!("this needs an operator token with the scope {scope:?}")))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<Vec<String>>,
}

/// The keys and the claims a token must carry.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    /// The keys of the JWK set file.
    jwks: KeySet,
    /// The JWK set URL, until `jwks_url_start` fetches it.
    jwks_url: Option<JwksUrlOptions>,
    /// The JWK set URL's keys, kept fresh.
    remote: Option<Arc<JwksRemote>>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

impl Verifier {
    pub fn new(issuer: &str, audience: &str) -> Verifier {
        Verifier {
            hs256: None,
            jwks: KeySet::default(),
            jwks_url: None,
            remote: None,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_s: 30,
        }
    }

    pub fn with_secret(mut self, secret: &[u8]) -> Verifier {
        assert!(secret.len() >= 16, "an HS256 secret of at least 16 bytes");
        self.hs256 = Some(DecodingKey::from_secret(secret));
        self
    }

    /// Adds the RS256 and ES256 keys of a JWK set file's text (other keys are skipped, with a
    /// warning that names them; a set with no usable key is refused).
    pub fn with_jwks(mut self, jwks_json: &str) -> Result<Verifier, HttpError> {
        let parsed = KeySet::parse(jwks_json.as_bytes()).map_err(HttpError::Keys)?;
        for skipped in &parsed.skipped {
            tracing::warn!(key = %skipped, "a key of the JWK set file is skipped");
        }
        self.jwks.keys.extend(parsed.set.keys);
        Ok(self)
    }

    /// Takes RS256 and ES256 keys from a JWK set URL too, fetched by `jwks_url_start`.
    pub fn with_jwks_url(mut self, options: JwksUrlOptions) -> Verifier {
        self.jwks_url = Some(options);
        self
    }

    /// Fetches the JWK set URL, if one is configured, and spawns the task that keeps it fresh
    /// (call from the gateway's runtime). An error if the first fetch fails or the set has no
    /// usable key: a gateway that cannot verify anyone's tokens does not start.
    pub async fn jwks_url_start(
        &mut self,
        metrics: Arc<Metrics>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, HttpError> {
        let Some(options) = self.jwks_url.take() else { return Ok(None) };
        let (remote, after) = JwksRemote::start(options, metrics).await.map_err(HttpError::Keys)?;
        let remote = Arc::new(remote);
        self.remote = Some(Arc::clone(&remote));
        Ok(Some(tokio::spawn(remote.refresh_loop(after))))
    }

    /// The JWK set URL in use, once started.
    pub fn jwks_url(&self) -> Option<&str> {
        self.remote.as_ref().map(|remote| remote.url())
    }

    pub fn leeway(mut self, leeway_s: u64) -> Verifier {
        self.leeway_s = leeway_s;
        self
    }

    /// The caller of a request, from its `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(header) = header else {
            return Err(ApiError::unauthorized("token_missing", "send Authorization: Bearer <JWT>"));
        };
        let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or_else(|| {
            ApiError::unauthorized("token_malformed", "the Authorization header is not \"Bearer <JWT>\"")
        })?;
        self.verify(token.trim())
    }

    /// `verify_header`, and once more after a refetch of the JWK set URL when an RS256 or
    /// ES256 token names a key the set does not hold (the provider may have rotated): the one
    /// network wait a request can meet, bounded by the fetch timeout and at most one fetch per
    /// refetch interval for all requests together.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let error = match self.verify_header(header) {
            Ok(caller) => return Ok(caller),
            Err(error) => error,
        };
        let Some(remote) = &self.remote else { return Err(error) };
        if error.code != "token_unknown_key" || !header.is_some_and(names_a_jwks_algorithm) {
            return Err(error);
        }
        remote.refetch_for_unknown_kid().await;
        self.verify_header(header)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("token_malformed", "the bearer token is not a JWT"))?;
        let remote = self.remote.as_ref().map(|remote| remote.keys());
        let key = self.key_for(&header, remote.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_s;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(token_error)?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > SUB_LENGTH_MAX {
            return Err(ApiError::unauthorized("token_invalid", "the token's sub must be 1 to 255 bytes"));
        }
        let mut scopes: Vec<String> =
            claims.scope.as_deref().unwrap_or("").split_whitespace().map(String::from).collect();
        scopes.extend(claims.scp.unwrap_or_default());
        Ok(Caller { user: claims.sub, scopes, trace_id: 0, wallets: Default::default() })
    }

    /// The key for a token: HS256's secret, or the JWK (of the file, then of the URL's set in
    /// use) that the `kid` names, or without a `kid` the only one of the algorithm.
    fn key_for<'a>(&'a self, header: &Header, remote: Option<&'a KeySet>) -> Result<&'a DecodingKey, ApiError> {
        let unknown =
            || ApiError::unauthorized("token_unknown_key", "no configured key verifies this token's algorithm or kid");
        match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or_else(unknown),
            Algorithm::RS256 | Algorithm::ES256 => {
                let keys = self.jwks.keys.iter().chain(remote.into_iter().flat_map(|set| set.keys.iter()));
                let mut candidates = keys.filter(|key| key.algorithm == header.alg);
                let found = match &header.kid {
                    Some(kid) => candidates.find(|key| key.kid.as_deref() == Some(kid)),
                    None => match (candidates.next(), candidates.next()) {
                        (Some(only), None) => Some(only),
                        _ => None,
                    },
                };
                found.map(|key| &key.key).ok_or_else(unknown)
            }
            _ => Err(ApiError::unauthorized("token_unknown_key", "only HS256, RS256 and ES256 tokens are accepted")),
        }
    }
}

/// Whether a `Bearer` header's token is RS256 or ES256 (what a JWK set verifies).
fn names_a_jwks_algorithm(header: &str) -> bool {
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or("").trim();
    jsonwebtoken::decode_header(token).is_ok_and(|header| matches!(header.alg, Algorithm::RS256 | Algorithm::ES256))
}

fn token_error(error: jsonwebtoken::errors::Error) -> ApiError {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::ExpiredSignature => ApiError::unauthorized("token_expired", "the token has expired (exp)"),
        K::ImmatureSignature => ApiError::unauthorized("token_not_yet_valid", "the token is not valid yet (nbf)"),
        K::InvalidIssuer => ApiError::unauthorized("token_wrong_issuer", "the token's issuer (iss) is not accepted"),
        K::InvalidAudience => {
            ApiError::unauthorized("token_wrong_audience", "the token's audience (aud) is not this API")
        }
        K::InvalidSignature => {
            ApiError::unauthorized("token_invalid_signature", "the token's signature does not verify")
        }
        K::MissingRequiredClaim(claim) => {
            ApiError::unauthorized("token_invalid", format!("the token lacks the claim {claim:?}"))
        }
        other => ApiError::unauthorized("token_invalid", format!("the token is not acceptable: {other:?}")),
    }
}

/// Signs an HS256 token (dev tokens, tests, the load generator).
pub fn token_mint(secret: &[u8], issuer: &str, audience: &str, sub: &str, scopes: &[&str], ttl_s: u64) -> String {
    let now = crate::ids::now_ms() / 1000;
    let claims = Claims {
        sub: sub.into(),
        iss: issuer.into(),
        aud: audience.into(),
        exp: now + ttl_s,
        nbf: Some(now.saturating_sub(1)),
        iat: Some(now),
        scope: if scopes.is_empty() { None } else { Some(scopes.join(" ")) },
        scp: None,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

/// Signs any claims with HS256 (tests make expired or incomplete tokens with it).
pub fn token_sign(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

/// Reads an HS256 secret file (surrounding whitespace ignored).
pub fn secret_read(path: &Path) -> Result<Vec<u8>, HttpError> {
    let text = std::fs::read(path).map_err(|source| HttpError::Io { path: path.display().to_string(), source })?;
    let secret = text.trim_ascii().to_vec();
    if secret.len() < 16 {
        return Err(HttpError::Keys(format!("{}: an HS256 secret needs at least 16 bytes", path.display())));
    }
    Ok(secret)
}

/// The development secret at `path`, made (64 hex characters, mode 0600) if missing. Returns
/// it and whether it was just made.
pub fn dev_secret_ensure(path: &Path) -> Result<(Vec<u8>, bool), HttpError> {
    if path.exists() {
        return Ok((secret_read(path)?, false));
    }
    let io = |source| HttpError::Io { path: path.display().to_string(), source };
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let secret = format!("{:032x}{:032x}", crate::ids::os_random_u128(), crate::ids::os_random_u128());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(secret.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
    Ok((secret.into_bytes(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new("walletd-dev", "walletd").with_secret(SECRET).leeway(0)
    }

    fn signed(claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        crate::ids::now_ms() / 1000
    }

    #[test]
    fn a_good_token_names_the_user_and_scopes() {
        let token = token_mint(SECRET, "walletd-dev", "walletd", "alice", &["operator:deposits"], 60);
        let caller = verifier().verify(&token).unwrap();
        assert_eq!(caller.user, "alice");
        assert!(caller.has_scope(SCOPE_DEPOSITS));
        assert!(!caller.has_scope(SCOPE_WITHDRAWALS));
        let operator =
            Caller { user: "ops".into(), scopes: vec!["operator".into()], trace_id: 0, wallets: Default::default() };
        assert!(operator.has_scope(SCOPE_WITHDRAWALS));
    }

    #[test]
    fn bad_tokens_get_their_own_codes() {
        let base = serde_json::json!({"sub": "alice", "iss": "walletd-dev", "aud": "walletd", "exp": now() + 60});
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = base.clone();
            claims[key] = value;
            claims
        };
        let cases = [
            (signed(&with("exp", (now() - 10).into()), SECRET), "token_expired"),
            (signed(&with("nbf", (now() + 600).into()), SECRET), "token_not_yet_valid"),
            (signed(&with("iss", "someone-else".into()), SECRET), "token_wrong_issuer"),
            (signed(&with("aud", "another-api".into()), SECRET), "token_wrong_audience"),
            (signed(&base, b"another secret of thirty-two b.."), "token_invalid_signature"),
            ("not.a.jwt".to_string(), "token_malformed"),
        ];
        for (token, code) in cases {
            assert_eq!(verifier().verify(&token).unwrap_err().code, code);
        }
        let mut claims = base.clone();
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(verifier().verify(&signed(&claims, SECRET)).unwrap_err().code, "token_invalid");
        assert_eq!(verifier().verify_header(None).unwrap_err().code, "token_missing");
        assert_eq!(verifier().verify_header(Some("Basic abc")).unwrap_err().code, "token_malformed");
    }

    #[test]
    fn the_dev_secret_is_made_once() {
        let dir = std::env::temp_dir().join(format!("walletd-http-auth-{}", crate::ids::random_u128()));
        let path = dir.join("dev-secret");
        let (first, made) = dev_secret_ensure(&path).unwrap();
        assert!(made);
        let (second, made) = dev_secret_ensure(&path).unwrap();
        assert!(!made);
        assert_eq!(first, second);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
