//! Who may call, end to end over real TLS: JWTs (HS256 secret, RSA / EC /
//! Ed25519 public keys, a JWK set) and API keys checked against `[auth]`,
//! scopes, the principal a backend sees, call ownership of spawned calls,
//! and the `token` / `keygen` commands. Every token is minted here.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{
    Gateway, HttpBackend, WORK_PY, assert_problem, exec_fn, header_str, http_fn, json_ok,
    run_bin_env,
};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The variable holding the HS256 secret, and the secret (40 bytes).
const SECRET_ENV: &str = "FNGATE_TEST_JWT_SECRET";
const SECRET: &str = "fngate-test-secret-0123456789-abcdefghij";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "fngate";
/// An API key named `reports` with scope `invoke:demo/*`.
const API_KEY: &str = "fgk_test_reports_key_0123456789abcdef";

/// An exec function answering with the principal it was run for.
const WHOAMI_PY: &str = r#"
import json, os, sys
sys.stdin.read()
sys.stdout.write(json.dumps({
    "subject": os.environ.get("FNGATE_SUBJECT"),
    "issuer": os.environ.get("FNGATE_ISSUER"),
}))
"#;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims the HS256 gateway accepts: `sub`, its `iss` and `aud`, `exp` in
/// ten minutes, and `scope`.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": scope})
}

/// `claims` with `changes` merged in (a `null` removes the claim).
fn with(mut claims: Value, changes: Value) -> Value {
    let map = claims.as_object_mut().expect("claims are an object");
    for (k, v) in changes.as_object().expect("changes are an object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign token")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

/// An unsigned token: `{"alg": "none"}`, the claims, an empty signature.
fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

/// The auth tables of the HS256 gateway, plus `extra` lines for `[auth]`.
fn hs256_auth(extra: &str) -> String {
    format!(
        "[auth]\njwt_secret_env = \"{SECRET_ENV}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{extra}\n\
         [[auth.api_keys]]\nname = \"reports\"\nsha256 = \"{}\"\nscopes = [\"invoke:demo/*\"]\n",
        sha256_hex(API_KEY.as_bytes())
    )
}

/// The functions every gateway here serves: `demo/square`, `demo/other`,
/// `shop/buy` (WORK_PY, not public), `demo/open` (WORK_PY, public),
/// `demo/whoami` and `demo/whoami-open` (WHOAMI_PY).
fn with_functions(builder: common::GatewayBuilder) -> common::GatewayBuilder {
    builder
        .file("work.py", WORK_PY)
        .file("whoami.py", WHOAMI_PY)
        .toml(&exec_fn("demo", "square", "work.py", "timeout = \"10s\""))
        .toml(&exec_fn("demo", "other", "work.py", ""))
        .toml(&exec_fn("shop", "buy", "work.py", ""))
        .toml(&exec_fn("demo", "open", "work.py", "public = true"))
        .toml(&exec_fn("demo", "whoami", "whoami.py", ""))
        .toml(&exec_fn(
            "demo",
            "whoami-open",
            "whoami.py",
            "public = true",
        ))
}

/// The HS256 gateway (with API key `reports`), `extra` lines for `[auth]`.
async fn hs256_gateway(extra: &str) -> Gateway {
    with_functions(Gateway::builder())
        .env(SECRET_ENV, SECRET)
        .toml(&hs256_auth(extra))
        .start()
        .await
}

/// POSTs `body` to `path` with `Authorization: Bearer <token>` when given.
async fn post(gw: &Gateway, path: &str, token: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = gw
        .client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
}

/// POSTs `{"x": 3}` to `path`.
async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    post(gw, path, token, r#"{"x": 3}"#).await
}

async fn assert_square(resp: reqwest::Response, case: &str) {
    let status = resp.status();
    let text = resp.text().await.expect("read body");
    assert_eq!(status, 200, "{case}: want 200; body: {text}");
    let body: Value = serde_json::from_str(&text).expect("JSON result");
    assert_eq!(body["square"], 9, "{case}: {text}");
}

/// Asserts a 401 `unauthorized` whose challenge says `invalid_token` with a
/// description (and does not echo `token`).
async fn assert_invalid_token(resp: reqwest::Response, token: &str, case: &str) {
    let challenge = header_str(&resp, "www-authenticate").unwrap_or_default();
    let status = resp.status();
    assert_eq!(status, 401, "{case}: status (challenge {challenge:?})");
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("realm=\"fngate\"")
            && challenge.contains("error=\"invalid_token\"")
            && challenge.contains("error_description=\""),
        "{case}: WWW-Authenticate {challenge:?}"
    );
    if token.len() > 8 {
        assert!(
            !challenge.contains(token),
            "{case}: the challenge echoes the token"
        );
    }
    let body = assert_problem(resp, 401, "unauthorized").await;
    if token.len() > 8 {
        assert!(
            !body.to_string().contains(token),
            "{case}: the problem echoes the token: {body}"
        );
    }
}

/// Asserts a 403 `forbidden` naming the missing scope `invoke:{target}`.
async fn assert_forbidden(resp: reqwest::Response, target: &str, case: &str) {
    let challenge = header_str(&resp, "www-authenticate").unwrap_or_default();
    assert_eq!(
        resp.status(),
        403,
        "{case}: status (challenge {challenge:?})"
    );
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains(&format!("scope=\"invoke:{target}\"")),
        "{case}: WWW-Authenticate {challenge:?}"
    );
    assert_problem(resp, 403, "forbidden").await;
}

#[tokio::test]
async fn missing_or_non_bearer_credentials_get_a_bearer_challenge() {
    let gw = hs256_gateway("").await;
    let client = gw.client();
    let basic = format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:secret"));
    for (case, authorization) in [("none", None), ("basic", Some(basic.as_str()))] {
        let mut req = client
            .post(gw.url("/demo/square"))
            .header("content-type", "application/json")
            .body(r#"{"x": 3}"#);
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        let resp = req.send().await.expect("POST");
        let challenge = header_str(&resp, "www-authenticate");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"fngate\""),
            "{case}: challenge"
        );
        assert_problem(resp, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn valid_jwt_and_api_key_are_accepted() {
    let gw = hs256_gateway("").await;
    let token = hs256(&claims("alice", "invoke:demo/square"));
    assert_square(call(&gw, "/demo/square", Some(&token)).await, "jwt").await;
    assert_square(call(&gw, "/demo/square", Some(API_KEY)).await, "api key").await;
    // The scheme is case-insensitive.
    let resp = gw
        .client()
        .post(gw.url("/demo/square"))
        .header("content-type", "application/json")
        .header("authorization", format!("bearer {token}"))
        .body(r#"{"x": 3}"#)
        .send()
        .await
        .expect("POST");
    assert_square(resp, "lowercase scheme").await;
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token() {
    let gw = hs256_gateway("").await;
    let good = claims("alice", "invoke:*");
    let hour = 3600;
    let other_secret = EncodingKey::from_secret(b"another-secret-of-enough-length-0123456789");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            hs256(&with(good.clone(), json!({"exp": now() - hour}))),
        ),
        (
            "not yet valid",
            hs256(&with(good.clone(), json!({"nbf": now() + hour}))),
        ),
        (
            "wrong issuer",
            hs256(&with(good.clone(), json!({"iss": "https://evil.test"}))),
        ),
        (
            "no issuer",
            hs256(&with(good.clone(), json!({"iss": null}))),
        ),
        (
            "wrong audience",
            hs256(&with(good.clone(), json!({"aud": "someone-else"}))),
        ),
        (
            "no audience",
            hs256(&with(good.clone(), json!({"aud": null}))),
        ),
        ("no exp", hs256(&with(good.clone(), json!({"exp": null})))),
        (
            "wrong signature",
            sign(Algorithm::HS256, &other_secret, None, &good),
        ),
        ("alg none", alg_none(&good)),
        (
            "HS384 with the right secret",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                None,
                &good,
            ),
        ),
        ("tampered claims", {
            let token = hs256(&good);
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            parts[1] =
                URL_SAFE_NO_PAD.encode(with(good.clone(), json!({"sub": "root"})).to_string());
            parts.join(".")
        }),
        ("garbage JWT", "aaa.bbb.ccc".to_owned()),
        (
            "unknown API key",
            "fgk_not_a_key_anyone_holds_0000".to_owned(),
        ),
    ];
    for (case, token) in cases {
        let resp = call(&gw, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, case).await;
    }
}

#[tokio::test]
async fn clock_leeway_defaults_to_60s_and_is_configurable() {
    let expired_30s = with(claims("alice", "invoke:*"), json!({"exp": now() - 30}));
    let nbf_in_30s = with(claims("alice", "invoke:*"), json!({"nbf": now() + 30}));

    let default = hs256_gateway("").await;
    for (case, c) in [("exp 30 s ago", &expired_30s), ("nbf in 30 s", &nbf_in_30s)] {
        let resp = call(&default, "/demo/square", Some(&hs256(c))).await;
        assert_square(resp, &format!("{case}, default leeway")).await;
    }

    let strict = hs256_gateway("leeway = \"5s\"").await;
    for (case, c) in [("exp 30 s ago", &expired_30s), ("nbf in 30 s", &nbf_in_30s)] {
        let token = hs256(c);
        let resp = call(&strict, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, &format!("{case}, leeway 5s")).await;
    }
}

#[tokio::test]
async fn scopes_decide_which_functions_a_token_may_call() {
    let gw = hs256_gateway("").await;
    // (scope claims, path, allowed?)
    let cases: Vec<(Value, &str, bool)> = vec![
        (json!({"scope": "invoke:demo/square"}), "/demo/square", true),
        (json!({"scope": "invoke:demo/square"}), "/demo/other", false),
        (json!({"scope": "invoke:demo/*"}), "/demo/other", true),
        (json!({"scope": "invoke:demo/*"}), "/shop/buy", false),
        (json!({"scope": "invoke:*"}), "/shop/buy", true),
        (json!({"scope": "invoke:shop/*"}), "/demo/square", false),
        (
            json!({"scope": "invoke:shop/square"}),
            "/demo/square",
            false,
        ),
        (
            json!({"scope": "read:x invoke:demo/square"}),
            "/demo/square",
            true,
        ),
        (json!({"scope": "invoke:demo"}), "/demo/square", false),
        (json!({"scope": "invoke:demo/sq*"}), "/demo/square", false),
        (json!({"scope": "invoke:*/square"}), "/demo/square", false),
        (json!({"scope": "invoke:demo/squar"}), "/demo/square", false),
        (json!({"scope": ""}), "/demo/square", false),
        (json!({"scope": null}), "/demo/square", false),
        (
            json!({"scope": null, "scp": ["invoke:demo/square"]}),
            "/demo/square",
            true,
        ),
        (
            json!({"scope": null, "scp": ["x", "invoke:shop/*"]}),
            "/shop/buy",
            true,
        ),
        (
            json!({"scope": null, "scp": ["invoke:shop/*"]}),
            "/demo/square",
            false,
        ),
    ];
    for (scopes, path, allowed) in cases {
        let token = hs256(&with(claims("alice", ""), scopes.clone()));
        let resp = call(&gw, path, Some(&token)).await;
        let case = format!("{scopes} on {path}");
        if allowed {
            assert_square(resp, &case).await;
        } else {
            assert_forbidden(resp, path.trim_start_matches('/'), &case).await;
        }
    }
    // An API key's scopes work the same way (`reports` holds invoke:demo/*).
    assert_square(call(&gw, "/demo/other", Some(API_KEY)).await, "key").await;
    assert_forbidden(
        call(&gw, "/shop/buy", Some(API_KEY)).await,
        "shop/buy",
        "key",
    )
    .await;
}

#[tokio::test]
async fn public_functions_need_no_credentials() {
    let gw = hs256_gateway("").await;
    assert_square(call(&gw, "/demo/open", None).await, "no credentials").await;
    let token = hs256(&claims("alice", "invoke:shop/*"));
    assert_square(call(&gw, "/demo/open", Some(&token)).await, "other scope").await;
}

/// Generates an RSA 2048 key pair: (private PKCS#8 PEM, public SPKI PEM).
fn rsa_pair() -> (String, String) {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("generate RSA key");
    (pair.serialize_pem(), pair.public_key_pem())
}

fn ec_pair() -> (String, String) {
    let pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate EC key");
    (pair.serialize_pem(), pair.public_key_pem())
}

fn ed25519_pair() -> (String, String) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("generate Ed25519 key");
    (pair.serialize_pem(), pair.public_key_pem())
}

/// A gateway checking JWTs with `[auth] key_line` (no issuer or audience
/// configured), where `files` holds the key files.
async fn key_gateway(key_line: &str, files: &[(&str, &str)]) -> Gateway {
    let mut builder = with_functions(Gateway::builder()).toml(&format!("[auth]\n{key_line}\n"));
    for (name, text) in files {
        builder = builder.file(name, text.as_bytes());
    }
    builder.start().await
}

#[tokio::test]
async fn rsa_public_key_accepts_rs256_and_refuses_algorithm_confusion() {
    let (private, public) = rsa_pair();
    let (other_private, _) = rsa_pair();
    let (ec_private, _) = ec_pair();
    let gw = key_gateway(
        "jwt_public_key = \"keys/jwt.pem\"",
        &[("keys/jwt.pem", &public)],
    )
    .await;
    let good = json!({"sub": "alice", "exp": now() + 600, "scope": "invoke:demo/*"});

    let rsa = EncodingKey::from_rsa_pem(private.as_bytes()).expect("RSA private PEM");
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let resp = call(&gw, "/demo/square", Some(&sign(alg, &rsa, None, &good))).await;
        assert_square(resp, &format!("{alg:?}")).await;
    }

    let other = EncodingKey::from_rsa_pem(other_private.as_bytes()).expect("RSA private PEM");
    let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).expect("EC private PEM");
    let public_as_secret = EncodingKey::from_secret(public.as_bytes());
    let cases = [
        (
            "another RSA key",
            sign(Algorithm::RS256, &other, None, &good),
        ),
        (
            "HS256 signed with the public key PEM",
            sign(Algorithm::HS256, &public_as_secret, None, &good),
        ),
        ("ES256", sign(Algorithm::ES256, &ec, None, &good)),
        ("alg none", alg_none(&good)),
        (
            "expired",
            sign(
                Algorithm::RS256,
                &rsa,
                None,
                &with(good.clone(), json!({"exp": now() - 3600})),
            ),
        ),
    ];
    for (case, token) in cases {
        let resp = call(&gw, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, case).await;
    }
}

#[tokio::test]
async fn ec_and_ed25519_public_keys_accept_their_own_tokens_only() {
    let good = json!({"sub": "alice", "exp": now() + 600, "scope": "invoke:demo/*"});
    let (ec_private, ec_public) = ec_pair();
    let (ec_other, _) = ec_pair();
    let (ed_private, ed_public) = ed25519_pair();
    let (ed_other, _) = ed25519_pair();
    let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).expect("EC private PEM");
    let ec_other = EncodingKey::from_ec_pem(ec_other.as_bytes()).expect("EC private PEM");
    let ed = EncodingKey::from_ed_pem(ed_private.as_bytes()).expect("Ed25519 private PEM");
    let ed_other = EncodingKey::from_ed_pem(ed_other.as_bytes()).expect("Ed25519 private PEM");

    let gw = key_gateway("jwt_public_key = \"ec.pem\"", &[("ec.pem", &ec_public)]).await;
    let resp = call(
        &gw,
        "/demo/square",
        Some(&sign(Algorithm::ES256, &ec, None, &good)),
    )
    .await;
    assert_square(resp, "ES256").await;
    for (case, token) in [
        (
            "another EC key",
            sign(Algorithm::ES256, &ec_other, None, &good),
        ),
        ("EdDSA", sign(Algorithm::EdDSA, &ed, None, &good)),
        (
            "HS256 signed with the public key PEM",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(ec_public.as_bytes()),
                None,
                &good,
            ),
        ),
    ] {
        let resp = call(&gw, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, &format!("EC gateway: {case}")).await;
    }

    let gw = key_gateway("jwt_public_key = \"ed.pem\"", &[("ed.pem", &ed_public)]).await;
    let resp = call(
        &gw,
        "/demo/square",
        Some(&sign(Algorithm::EdDSA, &ed, None, &good)),
    )
    .await;
    assert_square(resp, "EdDSA").await;
    for (case, token) in [
        (
            "another Ed25519 key",
            sign(Algorithm::EdDSA, &ed_other, None, &good),
        ),
        ("ES256", sign(Algorithm::ES256, &ec, None, &good)),
    ] {
        let resp = call(&gw, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, &format!("Ed25519 gateway: {case}")).await;
    }
}

#[tokio::test]
async fn jwks_picks_the_key_by_kid() {
    let good = json!({"sub": "alice", "exp": now() + 600, "scope": "invoke:demo/*"});
    let (rsa_private, _) = rsa_pair();
    let (ec_private, _) = ec_pair();
    let rsa = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).expect("RSA private PEM");
    let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).expect("EC private PEM");
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("RSA JWK");
    rsa_jwk.common.key_id = Some("r1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).expect("EC JWK");
    ec_jwk.common.key_id = Some("e1".into());
    let set = serde_json::to_string(&JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    })
    .expect("JWK set JSON");
    let gw = key_gateway("jwks_file = \"jwks.json\"", &[("jwks.json", &set)]).await;

    let resp = call(
        &gw,
        "/demo/square",
        Some(&sign(Algorithm::RS256, &rsa, Some("r1"), &good)),
    )
    .await;
    assert_square(resp, "RS256 kid r1").await;
    let resp = call(
        &gw,
        "/demo/square",
        Some(&sign(Algorithm::ES256, &ec, Some("e1"), &good)),
    )
    .await;
    assert_square(resp, "ES256 kid e1").await;

    for (case, token) in [
        (
            "unknown kid",
            sign(Algorithm::RS256, &rsa, Some("r2"), &good),
        ),
        (
            "no kid with two keys",
            sign(Algorithm::RS256, &rsa, None, &good),
        ),
        (
            "RSA signature under the EC key's kid",
            sign(Algorithm::RS256, &rsa, Some("e1"), &good),
        ),
        (
            "EC signature under the RSA key's kid",
            sign(Algorithm::ES256, &ec, Some("r1"), &good),
        ),
        ("alg none", alg_none(&good)),
    ] {
        let resp = call(&gw, "/demo/square", Some(&token)).await;
        assert_invalid_token(resp, &token, case).await;
    }
}

/// The gateway of the principal tests: HS256 plus http functions
/// `demo/echo` (not public) and `demo/echo-open` (public) on `backend`.
async fn echo_gateway(backend: &HttpBackend) -> Gateway {
    let url = [backend.url("/invoke/echo")];
    with_functions(Gateway::builder())
        .env(SECRET_ENV, SECRET)
        .toml(&hs256_auth(""))
        .toml(&http_fn("demo", "echo", &url, ""))
        .toml(&http_fn("demo", "echo-open", &url, "public = true"))
        .toml(&http_fn(
            "demo",
            "pass",
            &[backend.url("")],
            "passthrough = true",
        ))
        .start()
        .await
}

/// POSTs `{}` to `path` with a forged `X-Fngate-Subject: mallory` and
/// `X-Fngate-Issuer`, returns the headers the backend received.
async fn backend_headers(gw: &Gateway, path: &str, token: Option<&str>) -> Value {
    let mut req = gw
        .client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-fngate-subject", "mallory")
        .header("x-fngate-issuer", "https://evil.test")
        .body("{}");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let body = json_ok(req.send().await.expect("POST echo")).await;
    body["headers"].clone()
}

#[tokio::test]
async fn backend_sees_the_principal_and_never_a_forged_one() {
    let backend = HttpBackend::start().await;
    let gw = echo_gateway(&backend).await;
    let token = hs256(&claims("alice", "invoke:demo/*"));

    let headers = backend_headers(&gw, "/demo/echo", Some(&token)).await;
    assert_eq!(headers["x-fngate-subject"], "alice", "{headers}");
    assert_eq!(headers["x-fngate-issuer"], ISSUER, "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "credentials forwarded: {headers}"
    );

    let headers = backend_headers(&gw, "/demo/echo", Some(API_KEY)).await;
    assert_eq!(headers["x-fngate-subject"], "reports", "api key: {headers}");
    assert_ne!(
        headers["x-fngate-issuer"], "https://evil.test",
        "api key: {headers}"
    );

    // A passthrough function forwards the client's headers, minus X-Fngate-*.
    let headers = backend_headers(&gw, "/demo/pass", Some(&token)).await;
    assert!(
        headers["x-fngate-subject"].is_null() || headers["x-fngate-subject"] == "alice",
        "passthrough: {headers}"
    );
    assert_ne!(
        headers["x-fngate-issuer"], "https://evil.test",
        "passthrough: {headers}"
    );

    for (case, token) in [("no credentials", None), ("bad token", Some("aaa.bbb.ccc"))] {
        let headers = backend_headers(&gw, "/demo/echo-open", token).await;
        assert!(
            headers.get("x-fngate-subject").is_none() && headers.get("x-fngate-issuer").is_none(),
            "public, {case}: forged principal reached the backend: {headers}"
        );
    }
}

#[tokio::test]
async fn spawned_call_runs_with_its_callers_principal() {
    let backend = HttpBackend::start().await;
    let gw = echo_gateway(&backend).await;
    let token = hs256(&claims("alice", "invoke:demo/*"));
    let client = gw.client();
    let resp = client
        .post(gw.url("/demo/echo/spawn"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("x-fngate-subject", "mallory")
        .body("{}")
        .send()
        .await
        .expect("spawn");
    let id = spawned_id(resp).await;
    let resp = client
        .get(gw.url(&format!("/calls/{id}?wait=10")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET call");
    let body = json_ok(resp).await;
    assert_eq!(body["headers"]["x-fngate-subject"], "alice", "{body}");
    assert_eq!(body["headers"]["x-fngate-issuer"], ISSUER, "{body}");
}

#[tokio::test]
async fn exec_function_gets_the_subject_in_its_environment() {
    let gw = hs256_gateway("").await;
    let token = hs256(&claims("alice", "invoke:demo/*"));
    let body = json_ok(call(&gw, "/demo/whoami", Some(&token)).await).await;
    assert_eq!(body, json!({"subject": "alice", "issuer": ISSUER}));
    let body = json_ok(call(&gw, "/demo/whoami", Some(API_KEY)).await).await;
    assert_eq!(body["subject"], "reports", "{body}");
    let body = json_ok(call(&gw, "/demo/whoami-open", None).await).await;
    assert_eq!(body, json!({"subject": null, "issuer": null}));
}

async fn spawned_id(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.expect("read spawn body");
    assert_eq!(status, 202, "spawn answers 202; body: {text}");
    let body: Value = serde_json::from_str(&text).expect("spawn body is JSON");
    body["call_id"].as_str().expect("call_id").to_owned()
}

/// Spawns `{"x": 3, "seconds": seconds}` on `path` (a function path).
async fn spawn(gw: &Gateway, path: &str, token: Option<&str>, seconds: f64) -> String {
    let body = json!({"x": 3, "seconds": seconds}).to_string();
    spawned_id(post(gw, &format!("{path}/spawn"), token, &body).await).await
}

async fn calls(
    gw: &Gateway,
    method: reqwest::Method,
    id: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = gw.client().request(method, gw.url(&format!("/calls/{id}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("/calls request")
}

/// Asserts 404 `call_not_found` and returns the detail with `id` replaced
/// by `ID`, to compare with the answer for an unknown id.
async fn not_found(resp: reqwest::Response, id: &str, case: &str) -> String {
    assert_eq!(resp.status(), 404, "{case}");
    let body = assert_problem(resp, 404, "call_not_found").await;
    body["detail"]
        .as_str()
        .unwrap_or_default()
        .replace(id, "ID")
}

#[tokio::test]
async fn another_principal_reading_or_cancelling_a_call_gets_404() {
    use reqwest::Method;
    let gw = hs256_gateway("").await;
    let alice = hs256(&claims("alice", "invoke:demo/*"));
    let bob = hs256(&claims("bob", "invoke:demo/*"));
    let id = spawn(&gw, "/demo/square", Some(&alice), 8.0).await;
    let unknown = "fc-0123456789abcdef0123456789abcdef";
    let expected = not_found(
        calls(&gw, Method::GET, unknown, Some(&bob)).await,
        unknown,
        "unknown id",
    )
    .await;

    for (who, token) in [
        ("bob", Some(bob.as_str())),
        ("no credentials", None),
        ("api key", Some(API_KEY)),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let case = format!("{method} by {who}");
            let detail = not_found(calls(&gw, method.clone(), &id, token).await, &id, &case).await;
            assert_eq!(detail, expected, "{case}: same answer as an unknown id");
        }
    }
    // A bad token on /calls is refused as such.
    let resp = calls(&gw, Method::GET, &id, Some("aaa.bbb.ccc")).await;
    assert_invalid_token(resp, "aaa.bbb.ccc", "bad token on /calls").await;

    // The owner still has the call: bob's DELETE did not cancel it.
    let resp = calls(&gw, Method::GET, &id, Some(&alice)).await;
    assert!(
        matches!(resp.status().as_u16(), 200 | 202),
        "GET by alice: {}",
        resp.status()
    );
    let body: Value = resp.json().await.expect("call status JSON");
    assert_ne!(body["status"], "cancelled", "{body}");
    // A fresh token for alice (another jti / exp) is the same principal.
    let alice_again = hs256(&with(
        claims("alice", "invoke:demo/*"),
        json!({"exp": now() + 900}),
    ));
    let resp = calls(&gw, Method::DELETE, &id, Some(&alice_again)).await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("cancel body JSON");
    assert_eq!(status, 200, "DELETE by alice: {body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let resp = calls(&gw, Method::GET, &id, Some(&alice)).await;
    assert_problem(resp, 410, "call_cancelled").await;
}

#[tokio::test]
async fn api_key_and_jwt_of_the_same_name_are_different_owners() {
    use reqwest::Method;
    let gw = hs256_gateway("").await;
    let id = spawn(&gw, "/demo/square", Some(API_KEY), 0.0).await;
    let reports = hs256(&claims("reports", "invoke:*"));
    not_found(
        calls(&gw, Method::GET, &id, Some(&reports)).await,
        &id,
        "JWT sub=reports",
    )
    .await;
    let resp = calls(&gw, Method::GET, &id, Some(API_KEY)).await;
    assert!(
        matches!(resp.status().as_u16(), 200 | 202),
        "GET by the key: {}",
        resp.status()
    );
}

#[tokio::test]
async fn calls_of_public_functions_are_readable_by_anyone_with_the_id() {
    use reqwest::Method;
    let gw = hs256_gateway("").await;
    let alice = hs256(&claims("alice", "invoke:demo/*"));
    let bob = hs256(&claims("bob", "invoke:shop/*"));
    for (who, token) in [("anonymous", None), ("alice", Some(alice.as_str()))] {
        let id = spawn(&gw, "/demo/open", token, 0.0).await;
        for (reader, token) in [("nobody", None), ("bob", Some(bob.as_str()))] {
            let resp = calls(&gw, Method::GET, &format!("{id}?wait=10"), token).await;
            let body = json_ok(resp).await;
            assert_eq!(
                body["square"], 9,
                "spawned by {who}, read by {reader}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn idempotency_keys_are_per_principal() {
    let gw = hs256_gateway("").await;
    let alice = hs256(&claims("alice", "invoke:demo/*"));
    let bob = hs256(&claims("bob", "invoke:demo/*"));
    let spawn_with_key = |token: String, body: &'static str| {
        let req = gw
            .client()
            .post(gw.url("/demo/square/spawn"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-1")
            .body(body);
        async move { req.send().await.expect("spawn") }
    };
    let first = spawned_id(spawn_with_key(alice.clone(), r#"{"x": 3}"#).await).await;
    let again = spawned_id(spawn_with_key(alice.clone(), r#"{"x": 3}"#).await).await;
    assert_eq!(first, again, "alice's retry returns her call");
    let bobs = spawned_id(spawn_with_key(bob.clone(), r#"{"x": 3}"#).await).await;
    assert_ne!(bobs, first, "bob's key does not return alice's call");
    let resp = spawn_with_key(bob, r#"{"x": 4}"#).await;
    assert_problem(resp, 422, "idempotency_mismatch").await;
}

#[tokio::test]
async fn sync_overflow_call_belongs_to_its_caller() {
    let gw = with_functions(Gateway::builder())
        .env(SECRET_ENV, SECRET)
        .server("sync_wait = \"1s\"")
        .toml(&hs256_auth(""))
        .start()
        .await;
    let alice = hs256(&claims("alice", "invoke:demo/*"));
    let bob = hs256(&claims("bob", "invoke:demo/*"));
    let client = gw
        .client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = client
        .post(gw.url("/demo/square"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(r#"{"x": 3, "seconds": 2}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 303, "slow sync call overflows");
    let location = header_str(&resp, "location").expect("Location");
    let id = location.rsplit('/').next().expect("id").to_owned();
    not_found(
        calls(&gw, reqwest::Method::GET, &id, Some(&bob)).await,
        &id,
        "bob",
    )
    .await;
    not_found(
        calls(&gw, reqwest::Method::GET, &id, None).await,
        &id,
        "nobody",
    )
    .await;
    let resp = gw
        .client()
        .get(gw.url(&format!("{location}?wait=10")))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("GET");
    assert_eq!(json_ok(resp).await["square"], 9);
}

#[tokio::test]
async fn token_command_mints_a_token_the_gateway_accepts() {
    let gw = hs256_gateway("").await;
    let config = gw.dir.join("gateway.toml");
    let config = config.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run_bin_env(
        &[
            "token",
            "--sub",
            "alice",
            "--scope",
            "invoke:demo/*",
            "--ttl",
            "1h",
            "--config",
            config,
        ],
        &gw.dir,
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(0), "fngate token: {stderr}");
    let token = stdout.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT on stdout: {stdout:?}");
    assert_square(call(&gw, "/demo/square", Some(token)).await, "minted token").await;
    assert_forbidden(
        call(&gw, "/shop/buy", Some(token)).await,
        "shop/buy",
        "minted token",
    )
    .await;
    let body = json_ok(call(&gw, "/demo/whoami", Some(token)).await).await;
    assert_eq!(body["subject"], "alice", "{body}");

    // Without --ttl the default applies.
    let (code, stdout, stderr) = run_bin_env(
        &[
            "token", "--sub", "bob", "--scope", "invoke:*", "--config", config,
        ],
        &gw.dir,
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(0), "fngate token: {stderr}");
    assert_square(
        call(&gw, "/shop/buy", Some(stdout.trim())).await,
        "default ttl",
    )
    .await;
}

#[tokio::test]
async fn token_command_without_a_secret_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{}\"\nscopes = [\"invoke:*\"]\n",
            sha256_hex(b"k")
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run_bin_env(
        &[
            "token",
            "--sub",
            "alice",
            "--scope",
            "invoke:demo/*",
            "--config",
            config,
        ],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(code, Some(2), "stdout {stdout:?} stderr {stderr}");
    assert!(stdout.trim().is_empty(), "no token printed: {stdout:?}");
    assert!(
        stderr.contains("jwt_secret_env"),
        "stderr names the key: {stderr}"
    );
}

#[tokio::test]
async fn short_or_missing_jwt_secret_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\njwt_secret_env = \"{SECRET_ENV}\"\n{}",
            exec_fn("demo", "square", "work.py", "")
        ),
    )
    .expect("write config");
    std::fs::write(dir.path().join("work.py"), WORK_PY).expect("write work.py");
    let config = config.to_str().expect("utf-8 path");
    let short = "x".repeat(31);
    for (case, envs) in [
        ("31-byte secret", vec![(SECRET_ENV, short.as_str())]),
        ("unset variable", vec![]),
    ] {
        for sub in ["serve", "check"] {
            let (code, _, stderr) =
                run_bin_env(&[sub, "--config", config], dir.path(), &envs).await;
            assert_eq!(code, Some(2), "{sub}, {case}: {stderr}");
            assert!(
                stderr.contains("auth.jwt_secret_env"),
                "{sub}, {case}: names the key: {stderr}"
            );
            assert!(
                !stderr.contains(&short),
                "{sub}, {case}: the secret is logged: {stderr}"
            );
        }
    }
    // 32 bytes are enough.
    let ok = "y".repeat(32);
    let (code, _, stderr) = run_bin_env(
        &["check", "--config", config],
        dir.path(),
        &[(SECRET_ENV, &ok)],
    )
    .await;
    assert_eq!(code, Some(0), "32-byte secret: {stderr}");
}

#[tokio::test]
async fn keygen_prints_a_key_and_the_entry_that_accepts_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stdout, stderr) = run_bin_env(&["keygen", "--name", "svc"], dir.path(), &[]).await;
    assert_eq!(code, Some(0), "keygen: {stderr}");
    let key_line = stdout
        .lines()
        .find(|l| l.starts_with("API key (") && l.contains(": fgk_"))
        .unwrap_or_else(|| panic!("an `API key (...): fgk_...` line: {stdout}"));
    let key = key_line.rsplit(": ").next().expect("key").trim().to_owned();
    assert!(key.len() >= 30, "a long key: {key:?}");
    let block = &stdout[stdout
        .find("[[auth.api_keys]]")
        .expect("[[auth.api_keys]] block")..];
    assert!(block.contains("name = \"svc\""), "{block}");
    assert!(
        block.contains(&format!("sha256 = \"{}\"", sha256_hex(key.as_bytes()))),
        "the sha256 of the printed key: {block}"
    );
    assert!(!block.contains(&key), "the key itself is not in the entry");

    let gw = with_functions(Gateway::builder()).toml(block).start().await;
    assert_square(call(&gw, "/demo/square", Some(&key)).await, "keygen key").await;
    let body = json_ok(call(&gw, "/demo/whoami", Some(&key)).await).await;
    assert_eq!(body["subject"], "svc", "{body}");
    let wrong = format!("{}x", &key[..key.len() - 1]);
    assert_invalid_token(
        call(&gw, "/demo/square", Some(&wrong)).await,
        &wrong,
        "altered key",
    )
    .await;

    let (_, again, _) = run_bin_env(&["keygen", "--name", "svc"], dir.path(), &[]).await;
    assert_ne!(again, stdout, "each run makes a new key");
}
