//! RS256 and ES256 tokens verified against a JWK set file, with the `kid` choosing the key;
//! a token signed by a key not in the set, or naming an unknown `kid`, is refused. The keys are
//! test fixtures made for this test only (tests/fixtures/).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use walletd_http::auth::Verifier;

const JWKS: &str = include_str!("fixtures/jwks.json");
const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa-private.pem");
const EC_PEM: &[u8] = include_bytes!("fixtures/ec-private.pem");

fn claims() -> serde_json::Value {
    let now = walletd_http::ids::now_ms() / 1000;
    serde_json::json!({ "sub": "alice", "iss": "idp", "aud": "walletd", "exp": now + 60, "nbf": now - 1, "scope": "operator:deposits" })
}

fn signed(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, &claims(), key).unwrap()
}

#[test]
fn rs256_and_es256_verify_by_kid() {
    let verifier = Verifier::new("idp", "walletd").with_jwks(JWKS).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PEM).unwrap();
    let caller = verifier.verify(&signed(Algorithm::RS256, Some("rsa-1"), &rsa)).unwrap();
    assert_eq!(caller.user, "alice");
    assert!(caller.has_scope("operator:deposits"));
    assert_eq!(verifier.verify(&signed(Algorithm::ES256, Some("ec-1"), &ec)).unwrap().user, "alice");
    // Without a kid, the only key of the algorithm.
    assert_eq!(verifier.verify(&signed(Algorithm::ES256, None, &ec)).unwrap().user, "alice");
    // An unknown kid, a key of the wrong kind, and HS256 without a secret are refused.
    assert_eq!(verifier.verify(&signed(Algorithm::RS256, Some("nope"), &rsa)).unwrap_err().code, "token_unknown_key");
    assert_eq!(verifier.verify(&signed(Algorithm::RS256, Some("ec-1"), &rsa)).unwrap_err().code, "token_unknown_key");
    let hs = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
    assert_eq!(verifier.verify(&signed(Algorithm::HS256, None, &hs)).unwrap_err().code, "token_unknown_key");
}

#[test]
fn a_token_signed_by_another_key_is_forged() {
    let verifier = Verifier::new("idp", "walletd").with_jwks(JWKS).unwrap();
    // A signature that is not the key's: the header and claims are intact, the signature not.
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
    let token = signed(Algorithm::RS256, Some("rsa-1"), &rsa);
    let (head, _) = token.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", "A".repeat(342));
    assert_eq!(verifier.verify(&tampered).unwrap_err().code, "token_invalid_signature");
    assert!(Verifier::new("idp", "walletd").with_jwks(r#"{"keys": []}"#).is_err());
}
