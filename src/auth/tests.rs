use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use rcgen::KeyPair;
use serde_json::{Value, json};

use super::*;
use crate::config::{ApiKeyConfig, JwtKeys};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "fngate";

fn config(jwt: Option<JwtKeys>) -> AuthConfig {
    AuthConfig {
        jwt,
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        leeway: Duration::from_secs(60),
        api_keys: Vec::new(),
    }
}

fn hs256_auth() -> Authenticator {
    Authenticator::new(&config(Some(JwtKeys::Secret(SECRET.to_vec()))))
        .expect("a secret is a valid key")
}

fn now() -> i64 {
    get_current_timestamp() as i64
}

/// Claims that pass every check of `config`.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
        "scope": "invoke:demo/*",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims
        .as_object_mut()
        .expect("claims are an object")
        .remove(key);
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("test tokens sign")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET),
    )
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("tokens are header-safe"),
    );
    headers
}

/// The reason an authenticator refuses `token`.
fn refusal(auth: &Authenticator, token: &str) -> String {
    match auth.authenticate(&bearer(token)) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(AuthError::Missing) => panic!("refused as missing"),
        Err(AuthError::Invalid(reason)) => {
            assert!(
                !reason.contains('"') && !reason.contains('\\'),
                "unsafe reason {reason}"
            );
            reason
        }
    }
}

fn accepted(auth: &Authenticator, token: &str) -> Credentials {
    auth.authenticate(&bearer(token))
        .expect("the token is accepted")
}

struct TestKey {
    private: EncodingKey,
    public_pem: String,
    pair: KeyPair,
}

fn test_key(
    pair: KeyPair,
    private: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
) -> TestKey {
    TestKey {
        private: private(pair.serialize_pem().as_bytes()).expect("rcgen keys load"),
        public_pem: pair.public_key_pem(),
        pair,
    }
}

fn rsa() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("RSA key generation");
        test_key(pair, EncodingKey::from_rsa_pem)
    })
}

fn p256() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        test_key(
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation"),
            EncodingKey::from_ec_pem,
        )
    })
}

fn ed25519() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        test_key(
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key generation"),
            EncodingKey::from_ed_pem,
        )
    })
}

fn pem_auth(key: &TestKey) -> Result<Authenticator, String> {
    Authenticator::new(&config(Some(JwtKeys::PublicKeyPem(
        key.public_pem.clone().into_bytes(),
    ))))
}

fn jwk(key: &TestKey, alg: Algorithm, kid: &str) -> Value {
    let jwk = Jwk::from_encoding_key(&key.private, alg).expect("a JWK from the key");
    with(
        serde_json::to_value(jwk).expect("JWKs serialize"),
        "kid",
        json!(kid),
    )
}

fn jwks_auth(keys: &[Value]) -> Result<Authenticator, String> {
    let json = json!({ "keys": keys }).to_string();
    Authenticator::new(&config(Some(JwtKeys::Jwks(json.into_bytes()))))
}

fn credentials(scopes: &[&str]) -> Credentials {
    Credentials {
        principal: Principal {
            subject: "alice".to_owned(),
            issuer: Some(ISSUER.to_owned()),
        },
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

fn parse_hex(text: &str) -> [u8; 32] {
    assert_eq!(text.len(), 64);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).expect("hex digits");
    }
    out
}

#[test]
fn valid_hs256_token_gives_subject_issuer_and_scopes() {
    let credentials = accepted(&hs256_auth(), &hs256(&claims()));
    assert_eq!(credentials.principal.subject, "alice");
    assert_eq!(credentials.principal.issuer.as_deref(), Some(ISSUER));
    assert_eq!(credentials.scopes, ["invoke:demo/*"]);
    assert!(credentials.may_invoke("demo", "square"));
}

#[test]
fn expired_token_is_refused() {
    let token = hs256(&with(claims(), "exp", json!(now() - 600)));
    assert_eq!(refusal(&hs256_auth(), &token), "the token has expired");
}

#[test]
fn token_expired_within_leeway_is_accepted() {
    accepted(
        &hs256_auth(),
        &hs256(&with(claims(), "exp", json!(now() - 30))),
    );
}

#[test]
fn token_not_valid_yet_is_refused() {
    let token = hs256(&with(claims(), "nbf", json!(now() + 600)));
    assert_eq!(refusal(&hs256_auth(), &token), "the token is not valid yet");
}

#[test]
fn nbf_within_leeway_is_accepted() {
    accepted(
        &hs256_auth(),
        &hs256(&with(claims(), "nbf", json!(now() + 30))),
    );
}

#[test]
fn wrong_issuer_is_refused() {
    let token = hs256(&with(claims(), "iss", json!("https://other.test")));
    assert_eq!(refusal(&hs256_auth(), &token), "wrong issuer");
    let token = hs256(&without(claims(), "iss"));
    assert_eq!(refusal(&hs256_auth(), &token), "wrong issuer");
}

#[test]
fn wrong_audience_is_refused() {
    let token = hs256(&with(claims(), "aud", json!("someone-else")));
    assert_eq!(refusal(&hs256_auth(), &token), "wrong audience");
    let token = hs256(&without(claims(), "aud"));
    assert_eq!(refusal(&hs256_auth(), &token), "wrong audience");
}

#[test]
fn audience_array_containing_ours_is_accepted() {
    let token = hs256(&with(claims(), "aud", json!(["other", AUDIENCE])));
    accepted(&hs256_auth(), &token);
    let token = hs256(&with(claims(), "aud", json!(["other", "another"])));
    assert_eq!(refusal(&hs256_auth(), &token), "wrong audience");
}

#[test]
fn issuer_and_audience_are_optional_when_not_configured() {
    let mut config = config(Some(JwtKeys::Secret(SECRET.to_vec())));
    config.issuer = None;
    config.audience = None;
    let auth = Authenticator::new(&config).expect("valid config");
    let credentials = accepted(&auth, &hs256(&without(without(claims(), "iss"), "aud")));
    // Still marked as a JWT principal, distinct from an API key.
    assert_eq!(credentials.principal.issuer.as_deref(), Some(""));
    assert_eq!(credentials.owner(), "jwt::alice");
    // An aud we were not told to check is not a reason to refuse.
    accepted(&auth, &hs256(&claims()));
}

#[test]
fn token_signed_with_another_secret_is_refused() {
    let other = EncodingKey::from_secret(b"another secret of at least thirty-two bytes");
    let token = sign(Algorithm::HS256, None, &claims(), &other);
    assert_eq!(refusal(&hs256_auth(), &token), "invalid signature");
}

#[test]
fn tampered_claims_are_refused() {
    let token = hs256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("mallory")).to_string());
    let token = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(refusal(&hs256_auth(), &token), "invalid signature");
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    let token = format!("{header}.{body}.");
    refusal(&hs256_auth(), &token);
    refusal(&pem_auth(rsa()).expect("RSA public key"), &token);
    let jwks = jwks_auth(&[jwk(p256(), Algorithm::ES256, "ec-1")]).expect("valid JWKS");
    refusal(&jwks, &token);
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let auth = pem_auth(rsa()).expect("RSA public key");
    let confused = EncodingKey::from_secret(rsa().public_pem.as_bytes());
    let token = sign(Algorithm::HS256, None, &claims(), &confused);
    assert_eq!(refusal(&auth, &token), "algorithm not accepted");
}

#[test]
fn rs256_token_is_accepted_with_the_rsa_public_key() {
    let auth = pem_auth(rsa()).expect("RSA public key");
    let credentials = accepted(
        &auth,
        &sign(Algorithm::RS256, None, &claims(), &rsa().private),
    );
    assert_eq!(credentials.principal.subject, "alice");
    // Other RSA algorithms with the same key are fine; a wrong key is not.
    accepted(
        &auth,
        &sign(Algorithm::PS256, None, &claims(), &rsa().private),
    );
    let other = pem_auth(p256()).expect("EC public key");
    assert_eq!(
        refusal(
            &other,
            &sign(Algorithm::RS256, None, &claims(), &rsa().private)
        ),
        "algorithm not accepted"
    );
}

#[test]
fn es256_token_is_accepted_with_the_ec_public_key() {
    let auth = pem_auth(p256()).expect("EC public key");
    accepted(
        &auth,
        &sign(Algorithm::ES256, None, &claims(), &p256().private),
    );
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(p256().public_pem.as_bytes()),
    );
    assert_eq!(refusal(&auth, &token), "algorithm not accepted");
}

#[test]
fn es384_token_is_accepted_with_a_p384_public_key() {
    let key = test_key(
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("P-384 key generation"),
        EncodingKey::from_ec_pem,
    );
    let auth = pem_auth(&key).expect("P-384 public key");
    accepted(
        &auth,
        &sign(Algorithm::ES384, None, &claims(), &key.private),
    );
}

#[test]
fn eddsa_token_is_accepted_with_the_ed25519_public_key() {
    let auth = pem_auth(ed25519()).expect("Ed25519 public key");
    accepted(
        &auth,
        &sign(Algorithm::EdDSA, None, &claims(), &ed25519().private),
    );
    let wrong = pem_auth(p256()).expect("EC public key");
    refusal(
        &wrong,
        &sign(Algorithm::EdDSA, None, &claims(), &ed25519().private),
    );
}

#[test]
fn bad_key_material_is_an_error_naming_it() {
    let bad = |pem: &str| {
        Authenticator::new(&config(Some(JwtKeys::PublicKeyPem(
            pem.as_bytes().to_vec(),
        ))))
        .expect_err("bad key material")
    };
    assert!(bad("not a pem").contains("jwt_public_key"));
    assert!(bad(&rsa().pair.serialize_pem()).contains("private key"));
    let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    assert!(bad(garbage).contains("jwt_public_key"));
    let jwks = |text: &str| {
        Authenticator::new(&config(Some(JwtKeys::Jwks(text.as_bytes().to_vec()))))
            .expect_err("bad JWKS")
    };
    assert!(jwks("[]").contains("jwks_file"));
    assert!(jwks(r#"{"keys": []}"#).contains("no signing keys"));
    assert!(jwks(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).contains("oct"));
    let mismatched = with(jwk(p256(), Algorithm::ES256, "ec-1"), "alg", json!("RS256"));
    assert!(
        jwks_auth(&[mismatched])
            .expect_err("alg not fitting kty")
            .contains("kid ec-1")
    );
    let twice = [
        jwk(p256(), Algorithm::ES256, "k"),
        jwk(rsa(), Algorithm::RS256, "k"),
    ];
    assert!(
        jwks_auth(&twice)
            .expect_err("duplicate kid")
            .contains("share")
    );
}

#[test]
fn jwks_key_is_chosen_by_kid() {
    let auth = jwks_auth(&[
        jwk(rsa(), Algorithm::RS256, "rsa-1"),
        jwk(p256(), Algorithm::ES256, "ec-1"),
    ])
    .expect("valid JWKS");
    accepted(
        &auth,
        &sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa().private),
    );
    accepted(
        &auth,
        &sign(Algorithm::ES256, Some("ec-1"), &claims(), &p256().private),
    );
    // The kid picks the key and so the algorithm: an EC token naming the RSA key fails.
    assert_eq!(
        refusal(
            &auth,
            &sign(Algorithm::ES256, Some("rsa-1"), &claims(), &p256().private)
        ),
        "algorithm not accepted"
    );
    // An HS256 token keyed with the public key's text fails the same way.
    let confused = EncodingKey::from_secret(rsa().public_pem.as_bytes());
    assert_eq!(
        refusal(
            &auth,
            &sign(Algorithm::HS256, Some("rsa-1"), &claims(), &confused)
        ),
        "algorithm not accepted"
    );
}

#[test]
fn unknown_kid_is_refused() {
    let auth = jwks_auth(&[
        jwk(rsa(), Algorithm::RS256, "rsa-1"),
        jwk(p256(), Algorithm::ES256, "ec-1"),
    ])
    .expect("valid JWKS");
    let token = sign(Algorithm::ES256, Some("ec-2"), &claims(), &p256().private);
    assert_eq!(refusal(&auth, &token), "unknown key id");
    let token = sign(Algorithm::ES256, None, &claims(), &p256().private);
    assert_eq!(refusal(&auth, &token), "unknown key id");
}

#[test]
fn jwks_of_one_key_serves_tokens_without_kid() {
    let auth = jwks_auth(&[jwk(p256(), Algorithm::ES256, "ec-1")]).expect("valid JWKS");
    accepted(
        &auth,
        &sign(Algorithm::ES256, None, &claims(), &p256().private),
    );
    let token = sign(Algorithm::ES256, Some("other"), &claims(), &p256().private);
    assert_eq!(refusal(&auth, &token), "unknown key id");
}

#[test]
fn jwks_key_without_alg_takes_it_from_the_curve() {
    let raw = ed25519().pair.public_key_raw();
    let ed =
        json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(raw), "kid": "ed-1" });
    let ec = without(jwk(p256(), Algorithm::ES256, "ec-1"), "alg");
    let auth = jwks_auth(&[ed, ec]).expect("valid JWKS");
    accepted(
        &auth,
        &sign(
            Algorithm::EdDSA,
            Some("ed-1"),
            &claims(),
            &ed25519().private,
        ),
    );
    accepted(
        &auth,
        &sign(Algorithm::ES256, Some("ec-1"), &claims(), &p256().private),
    );
}

#[test]
fn missing_exp_is_refused() {
    let token = hs256(&without(claims(), "exp"));
    assert_eq!(refusal(&hs256_auth(), &token), "the token has no exp claim");
}

#[test]
fn missing_or_empty_sub_is_refused() {
    assert_eq!(
        refusal(&hs256_auth(), &hs256(&without(claims(), "sub"))),
        "the token has no sub claim"
    );
    assert_eq!(
        refusal(&hs256_auth(), &hs256(&with(claims(), "sub", json!("")))),
        "the token has no sub claim"
    );
}

#[test]
fn scopes_come_from_scope_string() {
    let token = hs256(&with(
        claims(),
        "scope",
        json!("invoke:demo/square  invoke:other/*"),
    ));
    assert_eq!(
        accepted(&hs256_auth(), &token).scopes,
        ["invoke:demo/square", "invoke:other/*"]
    );
}

#[test]
fn scopes_come_from_scp_array_or_string() {
    let token = hs256(&with(
        without(claims(), "scope"),
        "scp",
        json!(["invoke:demo/square", "invoke:*"]),
    ));
    assert_eq!(
        accepted(&hs256_auth(), &token).scopes,
        ["invoke:demo/square", "invoke:*"]
    );
    let token = hs256(&with(
        without(claims(), "scope"),
        "scp",
        json!("invoke:a/b invoke:c/d"),
    ));
    assert_eq!(
        accepted(&hs256_auth(), &token).scopes,
        ["invoke:a/b", "invoke:c/d"]
    );
    let token = hs256(&without(claims(), "scope"));
    assert!(accepted(&hs256_auth(), &token).scopes.is_empty());
}

#[test]
fn may_invoke_matches_exact_app_wildcard_and_global_wildcard() {
    assert!(credentials(&["invoke:demo/square"]).may_invoke("demo", "square"));
    assert!(credentials(&["invoke:demo/*"]).may_invoke("demo", "square"));
    assert!(credentials(&["invoke:*"]).may_invoke("demo", "square"));
    assert!(credentials(&["invoke:other/x", "invoke:demo/square"]).may_invoke("demo", "square"));
}

#[test]
fn may_invoke_refuses_other_apps_functions_and_partial_scopes() {
    assert!(!credentials(&["invoke:other/*"]).may_invoke("demo", "square"));
    assert!(!credentials(&["invoke:other/square"]).may_invoke("demo", "square"));
    assert!(!credentials(&["invoke:demo/echo"]).may_invoke("demo", "square"));
    assert!(!credentials(&["invoke:demo"]).may_invoke("demo", "square"));
    assert!(
        !credentials(&["invoke:*/square", "invoke:demo/sq*", "demo/square"])
            .may_invoke("demo", "square")
    );
    assert!(!credentials(&[]).may_invoke("demo", "square"));
}

#[test]
fn work_scopes_are_their_own() {
    assert!(credentials(&["work:demo/square"]).may_work("demo", "square"));
    assert!(credentials(&["work:*"]).may_work("demo", "square"));
    assert!(credentials(&["work:demo/*"]).may_work("demo", "square"));
    // Invoking is not working, nor the other way round.
    assert!(!credentials(&["invoke:*"]).may_work("demo", "square"));
    assert!(!credentials(&["work:*"]).may_invoke("demo", "square"));
    assert!(!credentials(&["work:demo/echo"]).may_work("demo", "square"));
}

#[test]
fn api_key_from_new_api_key_is_accepted_and_others_refused() {
    let (key, hash) = new_api_key();
    assert!(key.starts_with("fgk_") && key.len() >= 4 + 43, "{key}");
    assert!(
        hash.len() == 64 && hash.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{hash}"
    );
    let (other_key, other_hash) = new_api_key();
    assert_ne!(key, other_key);
    let mut config = config(None);
    config.api_keys = vec![
        ApiKeyConfig {
            name: "other".to_owned(),
            sha256: parse_hex(&other_hash),
            scopes: vec!["invoke:*".to_owned()],
        },
        ApiKeyConfig {
            name: "reports".to_owned(),
            sha256: parse_hex(&hash),
            scopes: vec!["invoke:demo/*".to_owned()],
        },
    ];
    let auth = Authenticator::new(&config).expect("valid config");
    let credentials = accepted(&auth, &key);
    assert_eq!(
        credentials.principal,
        Principal {
            subject: "reports".to_owned(),
            issuer: None
        }
    );
    assert_eq!(credentials.scopes, ["invoke:demo/*"]);
    assert_eq!(credentials.owner(), "key:reports");
    assert_eq!(
        refusal(&auth, "fgk_not-a-configured-key"),
        "unknown API key"
    );
    assert_eq!(refusal(&auth, &format!("{key}x")), "unknown API key");
    // No JWT keys configured: a JWT is refused, not mistaken for a key.
    assert_eq!(
        refusal(&auth, &hs256(&claims())),
        "JWTs are not accepted here"
    );
}

#[test]
fn no_bearer_credentials_are_missing() {
    let auth = hs256_auth();
    assert!(matches!(
        auth.authenticate(&HeaderMap::new()),
        Err(AuthError::Missing)
    ));
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
    );
    assert!(matches!(
        auth.authenticate(&headers),
        Err(AuthError::Missing)
    ));
}

#[test]
fn malformed_bearer_headers_are_invalid() {
    let auth = hs256_auth();
    for value in ["Bearer", "Bearer ", "Bearer a b"] {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        assert!(
            matches!(auth.authenticate(&headers), Err(AuthError::Invalid(_))),
            "{value}"
        );
    }
    let mut headers = bearer(&hs256(&claims()));
    headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
    assert!(matches!(
        auth.authenticate(&headers),
        Err(AuthError::Invalid(_))
    ));
    // The scheme is case-insensitive.
    let mut headers = HeaderMap::new();
    let value = format!("bearer {}", hs256(&claims()));
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&value).expect("header-safe"),
    );
    auth.authenticate(&headers)
        .expect("lowercase scheme accepted");
    assert_eq!(refusal(&auth, "a.b.c"), "malformed token");
}

#[test]
fn owner_of_jwt_subject_and_key_name_differ() {
    let jwt = accepted(&hs256_auth(), &hs256(&with(claims(), "sub", json!("x"))));
    let key = Credentials {
        principal: Principal {
            subject: "x".to_owned(),
            issuer: None,
        },
        scopes: Vec::new(),
    };
    assert_eq!(jwt.owner(), format!("jwt:{ISSUER}:x"));
    assert_eq!(key.owner(), "key:x");
    assert_ne!(jwt.owner(), key.owner());
}

#[test]
fn minted_token_is_accepted_with_the_same_secret_issuer_and_audience() {
    let token = mint_hs256(
        SECRET,
        "alice",
        "invoke:demo/* invoke:other/echo",
        Duration::from_secs(3600),
        Some(ISSUER),
        Some(AUDIENCE),
    )
    .expect("minting");
    let credentials = accepted(&hs256_auth(), &token);
    assert_eq!(credentials.principal.subject, "alice");
    assert_eq!(credentials.principal.issuer.as_deref(), Some(ISSUER));
    assert_eq!(credentials.scopes, ["invoke:demo/*", "invoke:other/echo"]);
    // Without iss and aud, a gateway that checks them refuses it.
    let bare = mint_hs256(
        SECRET,
        "alice",
        "invoke:*",
        Duration::from_secs(60),
        None,
        None,
    )
    .expect("minting");
    // Both claims are missing; jsonwebtoken reports whichever it checks first.
    let reason = refusal(&hs256_auth(), &bare);
    assert!(
        reason == "wrong issuer" || reason == "wrong audience",
        "{reason}"
    );
}
