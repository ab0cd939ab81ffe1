//! The security sections of the configuration: `[auth]` (JWT keys and API
//! keys), `[cors]` (with per-app overrides), `[rate_limit]` and the
//! signing of `[webhooks]`.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Uri;

use super::raw::{RawAuth, RawCors, RawRateLimit, RawWebhooks};
use super::{ConfigError, Context};

/// Completion webhooks: the signing secret (decoded) and where they may go.
#[derive(Clone)]
pub struct WebhooksConfig {
    pub secret: Vec<u8>,
    pub allow_hosts: Vec<String>,
    pub max_attempts: u32,
}

impl std::fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("secret", &"(hidden)")
            .field("allow_hosts", &self.allow_hosts)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// Who may call, and how their credentials are checked.
#[derive(Clone)]
pub struct AuthConfig {
    pub jwt: Option<JwtKeys>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub api_keys: Vec<ApiKeyConfig>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt", &self.jwt.as_ref().map(JwtKeys::kind))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

/// The key material JWTs are checked with. The accepted algorithms follow
/// from it, never from the token.
#[derive(Clone)]
pub enum JwtKeys {
    /// HS256 shared secret: the raw bytes of the variable's value.
    Secret(Vec<u8>),
    /// An RSA, EC (P-256/P-384) or Ed25519 public key, PEM.
    PublicKeyPem(Vec<u8>),
    /// A JWK set (JSON text); keys are chosen by `kid`.
    Jwks(Vec<u8>),
}

impl JwtKeys {
    fn kind(&self) -> &'static str {
        match self {
            JwtKeys::Secret(_) => "hs256 secret",
            JwtKeys::PublicKeyPem(_) => "public key",
            JwtKeys::Jwks(_) => "jwks",
        }
    }
}

/// An API key: its name (the principal), the SHA-256 of the key, its scopes.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<String>,
}

/// Origins allowed to call from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub default: Option<AllowedOrigins>,
    /// Per-app overrides.
    pub apps: BTreeMap<String, AllowedOrigins>,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl Context {
    pub(super) fn auth(&self, raw: &RawAuth) -> Result<AuthConfig, ConfigError> {
        let jwt = match (&raw.jwt_secret_env, &raw.jwt_public_key, &raw.jwks_file) {
            (None, None, None) => None,
            (Some(name), None, None) => {
                let secret = std::env::var(name).map_err(|_| {
                    self.invalid(
                        "auth.jwt_secret_env",
                        format!("the environment variable {name} is not set"),
                    )
                })?;
                if secret.len() < 32 {
                    return Err(self.invalid(
                        "auth.jwt_secret_env",
                        format!("the secret in {name} is too short: use at least 32 bytes"),
                    ));
                }
                Some(JwtKeys::Secret(secret.into_bytes()))
            }
            (None, Some(path), None) => Some(JwtKeys::PublicKeyPem(
                self.read_file("auth.jwt_public_key", path)?,
            )),
            (None, None, Some(path)) => {
                Some(JwtKeys::Jwks(self.read_file("auth.jwks_file", path)?))
            }
            _ => {
                return Err(self.invalid(
                    "auth",
                    "give one of jwt_secret_env, jwt_public_key and jwks_file, not several",
                ));
            }
        };
        let mut api_keys = Vec::new();
        for (i, key) in raw.api_keys.iter().enumerate() {
            let at = |field: &str| format!("auth.api_keys[{i}].{field}");
            if key.name.trim().is_empty() || key.name.len() > 128 {
                return Err(self.invalid(at("name"), "give the key a name of 1 to 128 characters"));
            }
            if api_keys.iter().any(|k: &ApiKeyConfig| k.name == key.name) {
                return Err(self.invalid(at("name"), format!("'{}' names two keys", key.name)));
            }
            let sha256 = parse_sha256(&key.sha256).ok_or_else(|| {
                self.invalid(
                    at("sha256"),
                    "must be the 64 hex digits of the key's SHA-256",
                )
            })?;
            for (j, scope) in key.scopes.iter().enumerate() {
                check_scope(scope)
                    .map_err(|m| self.invalid(format!("auth.api_keys[{i}].scopes[{j}]"), m))?;
            }
            api_keys.push(ApiKeyConfig {
                name: key.name.clone(),
                sha256,
                scopes: key.scopes.clone(),
            });
        }
        if jwt.is_none() && api_keys.is_empty() {
            return Err(self.invalid(
                "auth",
                "[auth] needs a way to check credentials: jwt_secret_env, jwt_public_key, jwks_file or [[auth.api_keys]]",
            ));
        }
        Ok(AuthConfig {
            jwt,
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            leeway: self.duration(
                "auth.leeway",
                raw.leeway.as_deref(),
                Duration::from_secs(60),
            )?,
            api_keys,
        })
    }

    pub(super) fn webhooks(&self, raw: &RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
        let text = match (&raw.secret_env, &raw.secret_file) {
            (Some(name), None) => std::env::var(name).map_err(|_| {
                self.invalid(
                    "webhooks.secret_env",
                    format!("the environment variable {name} is not set"),
                )
            })?,
            (None, Some(path)) => {
                let path = self.resolve(path);
                std::fs::read_to_string(&path).map_err(|e| {
                    self.invalid(
                        "webhooks.secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "webhooks.secret_file",
                    "give secret_env or secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    "webhooks.secret_env",
                    "webhooks are signed: name the environment variable holding the secret",
                ));
            }
        };
        let key = if raw.secret_env.is_some() {
            "webhooks.secret_env"
        } else {
            "webhooks.secret_file"
        };
        let secret = crate::webhooks::decode_secret(text.trim())
            .map_err(|why| self.invalid(key, format!("the secret is not usable: {why}")))?;
        if raw.allow_hosts.is_empty() {
            return Err(self.invalid(
                "webhooks.allow_hosts",
                "list the hosts that Callback-Url may name, like [\"hooks.example.com\"]",
            ));
        }
        let mut allow_hosts = Vec::new();
        for (i, host) in raw.allow_hosts.iter().enumerate() {
            let host = host
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(self.invalid(
                    format!("webhooks.allow_hosts[{i}]"),
                    "write a host name or IP address, without scheme or port",
                ));
            }
            allow_hosts.push(host);
        }
        let max_attempts = raw.max_attempts.unwrap_or(8);
        if max_attempts == 0 {
            return Err(self.invalid("webhooks.max_attempts", "must be at least 1"));
        }
        Ok(WebhooksConfig {
            secret,
            allow_hosts,
            max_attempts,
        })
    }

    fn read_file(&self, key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
        let path = self.resolve(path);
        std::fs::read(&path)
            .map_err(|e| self.invalid(key, format!("cannot read {}: {e}", path.display())))
    }

    pub(super) fn origins(&self, key: &str, raw: &RawCors) -> Result<AllowedOrigins, ConfigError> {
        if raw.allow_origins.iter().any(|o| o == "*") {
            if raw.allow_origins.len() > 1 {
                return Err(self.invalid(key, "\"*\" allows every origin: list it alone"));
            }
            return Ok(AllowedOrigins::Any);
        }
        let mut origins = Vec::new();
        for (i, origin) in raw.allow_origins.iter().enumerate() {
            let valid = origin.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path_and_query()
                        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
            });
            if !valid || origin.ends_with('/') {
                return Err(self.invalid(
                    format!("{key}[{i}]"),
                    format!("'{origin}' is not an origin like \"https://app.example.com\" (scheme, host, optional port)"),
                ));
            }
            origins.push(origin.to_ascii_lowercase());
        }
        Ok(AllowedOrigins::List(origins))
    }

    pub(super) fn rate_limit(&self, raw: &RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
        if !(raw.requests_per_second > 0.0 && raw.requests_per_second.is_finite()) {
            return Err(self.invalid("rate_limit.requests_per_second", "must be a number above 0"));
        }
        let burst = raw
            .burst
            .unwrap_or_else(|| (raw.requests_per_second * 2.0).ceil().max(1.0) as u32);
        if burst == 0 {
            return Err(self.invalid("rate_limit.burst", "must be at least 1"));
        }
        Ok(RateLimitConfig {
            requests_per_second: raw.requests_per_second,
            burst,
        })
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Scopes are `invoke:*`, `invoke:{app}/*` or `invoke:{app}/{function}`.
pub fn check_scope(scope: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "'{scope}' is not a scope: use invoke:*, invoke:APP/* or invoke:APP/FUNCTION \
             (work:... alike, for workers)"
        )
    };
    let Some(target) = scope
        .strip_prefix("invoke:")
        .or_else(|| scope.strip_prefix("work:"))
    else {
        return Err(bad());
    };
    if target == "*" {
        return Ok(());
    }
    let (app, function) = target.split_once('/').ok_or_else(bad)?;
    if super::is_valid_name(app) && (function == "*" || super::is_valid_name(function)) {
        Ok(())
    } else {
        Err(bad())
    }
}
