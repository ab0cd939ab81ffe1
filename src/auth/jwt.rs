//! JWT checks. The algorithms a token may use follow from the configured key
//! (a secret is HS256 only, an RSA key RSA only, ...), never from the token,
//! so `alg: none` and HS256 signed with a public key are refused.

use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Credentials};
use crate::config::{AuthConfig, JwtKeys};
use crate::invocation::Principal;

/// Every RSA algorithm: the same public key checks all of them.
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Lengths of an uncompressed EC point (`04 || x || y`) and an Ed25519 key.
const P256_POINT: usize = 65;
const P384_POINT: usize = 97;
const ED25519_KEY: usize = 32;

/// The configured JWT keys, each with the validation rules it is used with.
pub(super) struct JwtVerifier {
    keys: Keys,
}

enum Keys {
    /// A secret or a PEM public key: every token is checked with it.
    Single(Box<AcceptedKey>),
    /// A JWK set: the token's `kid` picks the key.
    Set(Vec<(Option<String>, AcceptedKey)>),
}

struct AcceptedKey {
    key: DecodingKey,
    /// Holds the algorithms this key accepts, plus the claim rules.
    validation: Validation,
}

/// The claims fngate reads; jsonwebtoken checks `exp`, `nbf`, `iss` and
/// `aud` before these are looked at.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iss: Option<String>,
    scope: Option<ScopeClaim>,
    scp: Option<ScopeClaim>,
}

/// `scope` is a space-separated string; `scp` is an array of strings, or a
/// string as some issuers send it.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn push_into(self, scopes: &mut Vec<String>) {
        match self {
            ScopeClaim::Text(text) => scopes.extend(text.split_whitespace().map(str::to_owned)),
            ScopeClaim::List(list) => scopes.extend(list),
        }
    }
}

impl JwtVerifier {
    pub(super) fn new(keys: &JwtKeys, config: &AuthConfig) -> Result<JwtVerifier, String> {
        let accepted = |key: DecodingKey, algorithms: &[Algorithm]| AcceptedKey {
            key,
            validation: validation(algorithms, config),
        };
        let keys = match keys {
            JwtKeys::Secret(secret) => Keys::Single(Box::new(accepted(
                DecodingKey::from_secret(secret),
                &[Algorithm::HS256],
            ))),
            JwtKeys::PublicKeyPem(pem) => {
                let (key, algorithms) = pem_key(pem)?;
                Keys::Single(Box::new(accepted(key, algorithms)))
            }
            JwtKeys::Jwks(json) => Keys::Set(
                jwk_set(json)?
                    .into_iter()
                    .map(|(kid, key, algorithm)| (kid, accepted(key, &[algorithm])))
                    .collect(),
            ),
        };
        Ok(JwtVerifier { keys })
    }

    pub(super) fn verify(&self, token: &str) -> Result<Credentials, AuthError> {
        let accepted = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &accepted.key, &accepted.validation)
            .map_err(|e| AuthError::invalid(reason(e.kind())))?;
        let claims = data.claims;
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::invalid("the token has no sub claim"))?;
        let mut scopes = Vec::new();
        for claim in [claims.scope, claims.scp].into_iter().flatten() {
            claim.push_into(&mut scopes);
        }
        Ok(Credentials {
            principal: Principal {
                subject,
                issuer: Some(claims.iss.unwrap_or_default()),
            },
            scopes,
        })
    }

    fn key_for(&self, token: &str) -> Result<&AcceptedKey, AuthError> {
        let keys = match &self.keys {
            Keys::Single(key) => return Ok(key),
            Keys::Set(keys) => keys,
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::invalid(reason(e.kind())))?;
        let found = match (header.kid.as_deref(), keys.as_slice()) {
            (Some(kid), keys) => keys.iter().find(|(k, _)| k.as_deref() == Some(kid)),
            // A set of one key serves tokens that name no key.
            (None, [only]) => Some(only),
            (None, _) => None,
        };
        found
            .map(|(_, key)| key)
            .ok_or_else(|| AuthError::invalid("unknown key id"))
    }
}

/// The claim rules from `[auth]`, for a key accepting `algorithms`.
fn validation(algorithms: &[Algorithm], config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.to_vec();
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience, a token's `aud` is not ours to judge.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A reason safe to show the client: fixed text, never token contents.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the token has no exp claim",
            "sub" => "the token has no sub claim",
            "iss" => "wrong issuer",
            "aud" => "wrong audience",
            _ => "the token lacks a required claim",
        },
        ErrorKind::InvalidToken
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token",
        // Key and provider failures while checking: the signature did not
        // verify. ErrorKind is non-exhaustive, so new kinds land here too.
        _ => "invalid signature",
    }
}

/// The key in a `jwt_public_key` PEM and the algorithms it accepts.
fn pem_key(pem: &[u8]) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    let text =
        std::str::from_utf8(pem).map_err(|_| "jwt_public_key is not a PEM text file".to_owned())?;
    let label = text
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")?
                .strip_suffix("-----")
        })
        .ok_or_else(|| "jwt_public_key holds no PEM block".to_owned())?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        label if label.contains("PRIVATE KEY") => {
            return Err("jwt_public_key holds a private key: give the public key".to_owned());
        }
        label => {
            return Err(format!(
                "jwt_public_key holds a '{label}' PEM block, not a public key"
            ));
        }
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, RSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return match key.as_bytes().len() {
            P256_POINT => Ok((key, &[Algorithm::ES256])),
            P384_POINT => Ok((key, &[Algorithm::ES384])),
            _ => Err(
                "jwt_public_key is an EC key on a curve other than P-256 and P-384, or compressed"
                    .to_owned(),
            ),
        };
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        if key.as_bytes().len() == ED25519_KEY {
            return Ok((key, &[Algorithm::EdDSA]));
        }
    }
    Err("jwt_public_key is not an RSA, EC (P-256 or P-384) or Ed25519 public key".to_owned())
}

/// The signing keys of a JWK set: kid, key, and the one algorithm it accepts.
fn jwk_set(json: &[u8]) -> Result<Vec<(Option<String>, DecodingKey, Algorithm)>, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(json)
        .map_err(|e| format!("jwks_file is not a JWK set ({{\"keys\": [...]}}): {e}"))?;
    let mut keys: Vec<(Option<String>, DecodingKey, Algorithm)> = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let name = match &kid {
            Some(kid) => format!("jwks_file key {i} (kid {kid})"),
            None => format!("jwks_file key {i}"),
        };
        let jwk: Jwk = serde_json::from_value(value)
            .map_err(|_| format!("{name} is not an RSA, EC or OKP public key JWK"))?;
        if is_for_encryption(&jwk) {
            continue;
        }
        let (key, algorithm) = jwk_key(&jwk).map_err(|m| format!("{name}: {m}"))?;
        if kid.is_some() && keys.iter().any(|(k, _, _)| *k == kid) {
            return Err(format!("{name}: two keys share this kid"));
        }
        keys.push((kid, key, algorithm));
    }
    if keys.is_empty() {
        return Err("jwks_file holds no signing keys".to_owned());
    }
    Ok(keys)
}

/// Keys published for encryption are not for checking signatures.
fn is_for_encryption(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::KeyAlgorithm::{RSA_OAEP, RSA_OAEP_256, RSA1_5};
    jwk.common.public_key_use == Some(PublicKeyUse::Encryption)
        || matches!(
            jwk.common.key_algorithm,
            Some(RSA1_5 | RSA_OAEP | RSA_OAEP_256)
        )
}

/// A JWK's key and its algorithm: its `alg` when given (and consistent with
/// the key type), else the one its `kty`/`crv` imply.
fn jwk_key(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    let declared = match jwk.common.key_algorithm {
        Some(alg) => Some(
            Algorithm::from_str(&alg.to_string())
                .map_err(|_| format!("alg {alg} is not supported"))?,
        ),
        None => None,
    };
    let bad = |e: jsonwebtoken::errors::Error| format!("the key does not decode: {e}");
    let (key, allowed, implied): (DecodingKey, &[Algorithm], Algorithm) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => (
            DecodingKey::from_rsa_components(&p.n, &p.e).map_err(bad)?,
            RSA,
            Algorithm::RS256,
        ),
        AlgorithmParameters::EllipticCurve(p) => {
            let (allowed, len): (&[Algorithm], usize) = match p.curve {
                EllipticCurve::P256 => (&[Algorithm::ES256], P256_POINT),
                EllipticCurve::P384 => (&[Algorithm::ES384], P384_POINT),
                _ => return Err("EC keys must be on P-256 or P-384".to_owned()),
            };
            let key = DecodingKey::from_ec_components(&p.x, &p.y).map_err(bad)?;
            if key.as_bytes().len() != len {
                return Err("x and y do not fit the curve".to_owned());
            }
            (key, allowed, allowed[0])
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("OKP keys must be on Ed25519".to_owned());
            }
            let key = DecodingKey::from_ed_components(&p.x).map_err(bad)?;
            if key.as_bytes().len() != ED25519_KEY {
                return Err("x is not an Ed25519 public key".to_owned());
            }
            (key, &[Algorithm::EdDSA], Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are not accepted: give an HS256 secret with jwt_secret_env"
                    .to_owned(),
            );
        }
    };
    match declared {
        None => Ok((key, implied)),
        Some(algorithm) if allowed.contains(&algorithm) => Ok((key, algorithm)),
        Some(algorithm) => Err(format!("alg {algorithm:?} does not fit the key type")),
    }
}

/// Mints an HS256 JWT for `fngate token`: claims sub, scope (space-separated
/// string), iat, exp (now + ttl), and iss/aud when given.
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    scope: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    #[derive(Serialize)]
    struct MintedClaims<'a> {
        sub: &'a str,
        scope: &'a str,
        iat: u64,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    if secret.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    let iat = jsonwebtoken::get_current_timestamp();
    let exp = iat
        .checked_add(ttl.as_secs())
        .ok_or_else(|| "the ttl is too long".to_owned())?;
    let claims = MintedClaims {
        sub: subject,
        scope,
        iat,
        exp,
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}
