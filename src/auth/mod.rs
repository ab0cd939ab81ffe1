//! Who is calling: checks `Authorization: Bearer` credentials (a JWT or an
//! API key) against `[auth]`, and says which functions they may invoke.
//!
//! Nothing here logs: tokens, keys and claims never leave this module except
//! as the principal and scopes of [`Credentials`].

mod api_keys;
pub mod call_token;
mod jwt;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::config::AuthConfig;
use crate::invocation::Principal;

pub use api_keys::new_api_key;
pub use call_token::{CallGrant, CallTokens};
pub use jwt::mint_hs256;

/// Checks credentials against the key material of `[auth]`, parsed once at
/// start-up.
pub struct Authenticator {
    jwt: Option<jwt::JwtVerifier>,
    api_keys: api_keys::ApiKeys,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

impl Authenticator {
    /// Parses the key material once (a bad PEM or JWKS is an Err with a
    /// message naming what is wrong).
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        let jwt = match &config.jwt {
            Some(keys) => Some(jwt::JwtVerifier::new(keys, config)?),
            None => None,
        };
        Ok(Authenticator {
            jwt,
            api_keys: api_keys::ApiKeys::new(&config.api_keys),
        })
    }

    /// True when JWTs are checked (a key, key file or JWK set is set).
    pub fn accepts_jwts(&self) -> bool {
        self.jwt.is_some()
    }

    /// True when `[[auth.api_keys]]` lists at least one key.
    pub fn accepts_api_keys(&self) -> bool {
        self.api_keys.len() > 0
    }

    /// Checks `Authorization: Bearer <token>`: a token of three dot-separated
    /// parts is a JWT, anything else an API key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Credentials, AuthError> {
        let token = bearer_token(headers)?;
        if token.split('.').count() == 3 {
            match &self.jwt {
                Some(verifier) => verifier.verify(token),
                None => Err(AuthError::invalid("JWTs are not accepted here")),
            }
        } else {
            self.api_keys.verify(token)
        }
    }
}

/// The token of the request's single `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::invalid("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::invalid("malformed credentials"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // The scheme is case-insensitive (RFC 7235); anything but Bearer is as
    // good as no credentials.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(AuthError::invalid("malformed credentials"));
    }
    Ok(token)
}

/// Who is calling and what they may call.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// For a JWT: `sub`, and `iss` (always `Some`, empty when the token has
    /// no `iss`). For an API key: the key's name, and no issuer.
    pub principal: Principal,
    pub scopes: Vec<String>,
}

impl Credentials {
    /// True when a scope is `invoke:*`, `invoke:{app}/*` or
    /// `invoke:{app}/{function}` (exact match, no other wildcards). A class
    /// method's `function` is its class: one scope covers its methods.
    pub fn may_invoke(&self, app: &str, function: &str) -> bool {
        self.grants("invoke:", app, function)
    }

    /// True when a scope lets a worker (`fngate worker`) take the calls of
    /// `app/function`: `work:*`, `work:{app}/*` or `work:{app}/{function}`.
    pub fn may_work(&self, app: &str, function: &str) -> bool {
        self.grants("work:", app, function)
    }

    fn grants(&self, verb: &str, app: &str, function: &str) -> bool {
        self.scopes.iter().any(|scope| {
            let Some(target) = scope.strip_prefix(verb) else {
                return false;
            };
            if target == "*" {
                return true;
            }
            match target.split_once('/') {
                Some((a, f)) => a == app && (f == "*" || f == function),
                None => false,
            }
        })
    }

    /// Who owns calls made with these credentials: `jwt:{issuer or ""}:{subject}`
    /// for a JWT, `key:{name}` for an API key (so a JWT subject can never
    /// collide with a key name). A principal without an issuer is an API key.
    pub fn owner(&self) -> String {
        match &self.principal.issuer {
            Some(issuer) => format!("jwt:{issuer}:{}", self.principal.subject),
            None => format!("key:{}", self.principal.subject),
        }
    }
}

/// Why credentials were refused. The HTTP layer answers 401 with
/// `WWW-Authenticate: Bearer error="invalid_token"` and, for `Invalid`, the
/// reason as `error_description`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header, or not a Bearer one.
    #[error("credentials are required")]
    Missing,
    /// A short reason safe to show the client (never the token or its
    /// claims, never a quote), e.g. "the token has expired".
    #[error("{0}")]
    Invalid(String),
}

impl AuthError {
    fn invalid(reason: &'static str) -> AuthError {
        AuthError::Invalid(reason.to_owned())
    }
}

#[cfg(test)]
mod tests;
