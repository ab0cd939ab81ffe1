//! Call tokens (`FNGATE_CALL_TOKEN`): the credential a function's call
//! calls other functions with. The gateway mints one for every invocation
//! and accepts it back as `Authorization: Bearer`; it acts as the original
//! caller, limited to the calling function's `may_call` list, and expires
//! with the call's deadline.
//!
//! A token is `fgc_` + base64url(JSON claims) + `.` + base64url(HMAC-SHA256
//! of everything before the dot), under a key drawn at random when the
//! gateway starts and kept only in memory: no other gateway (and no
//! restarted one) accepts it. Its text never reaches a log: `Invocation`'s
//! `Debug` hides it, and nothing here prints it.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{AuthError, Credentials};
use crate::config::CallTarget;
use crate::invocation::Principal;

/// What every call token starts with, so it is told apart from a JWT or an
/// API key (`fgk_`) without checking either.
pub const PREFIX: &str = "fgc_";

/// Mints and checks call tokens with this gateway's key.
pub struct CallTokens {
    key: hmac::Key,
}

impl fmt::Debug for CallTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallTokens(<key redacted>)")
    }
}

/// What a token says about the call that holds it, borrowed from that
/// call when minting.
#[derive(Debug)]
pub struct Claims<'a> {
    /// Who made the original call (`None`: an anonymous caller).
    pub principal: Option<&'a Principal>,
    /// Who owns what the original caller spawns.
    pub owner: Option<&'a str>,
    /// The original caller's `invoke:` scopes (checked for non-public
    /// functions while `[auth]` is on).
    pub scopes: &'a [String],
    pub app: &'a str,
    /// The calling function's stored name: `name`, or `class.method`.
    pub function: &'a str,
    pub may_call: &'a [CallTarget],
    /// The calling call's id: the `parent_call_id` of what it calls.
    pub call_id: &'a str,
    /// How deep the calling call nests (0 for a client's call).
    pub depth: u32,
    /// The calling call's W3C trace id (32 hex digits), continued by what
    /// it calls.
    pub trace_id: &'a str,
    /// The calling call's deadline, milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// A verified token: the call that holds it, as the gateway minted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallGrant {
    pub principal: Option<Principal>,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub app: String,
    pub function: String,
    pub may_call: Vec<CallTarget>,
    pub call_id: String,
    pub depth: u32,
    pub trace_id: String,
    pub expires_ms: u64,
}

impl CallGrant {
    /// True when the calling function's `may_call` lists `app`'s function
    /// `name` (a class's name for a method, with `method`).
    pub fn may_call(&self, app: &str, name: &str, method: Option<&str>) -> bool {
        self.may_call
            .iter()
            .any(|target| target.allows(app, name, method))
    }

    /// True when the original caller's scopes grant `invoke:{app}/{name}`.
    pub fn may_invoke(&self, app: &str, name: &str) -> bool {
        let credentials = Credentials {
            principal: self.principal.clone().unwrap_or(Principal {
                subject: String::new(),
                issuer: None,
            }),
            scopes: self.scopes.clone(),
        };
        credentials.may_invoke(app, name)
    }

    /// The calling function as `may_call` names it: `app/function`, or
    /// `app/class/method`.
    pub fn caller_name(&self) -> String {
        format!("{}/{}", self.app, self.function.replace('.', "/"))
    }
}

/// The claims as they are written into a token.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    own: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    scp: &'a [String],
    app: &'a str,
    #[serde(rename = "fn")]
    function: &'a str,
    may: Targets<'a>,
    cid: &'a str,
    dep: u32,
    tr: &'a str,
    exp: u64,
}

/// The claims as they are read back.
#[derive(Deserialize)]
struct Read {
    sub: Option<String>,
    iss: Option<String>,
    own: Option<String>,
    #[serde(default)]
    scp: Vec<String>,
    app: String,
    #[serde(rename = "fn")]
    function: String,
    may: Vec<String>,
    cid: String,
    dep: u32,
    tr: String,
    exp: u64,
}

/// The `may_call` list, each entry written as the config spells it.
struct Targets<'a>(&'a [CallTarget]);

impl Serialize for Targets<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(TargetText))
    }
}

struct TargetText<'a>(&'a CallTarget);

impl Serialize for TargetText<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let target = self.0;
        match (&target.name, &target.method) {
            (None, _) => serializer.collect_str(&format_args!("{}/*", target.app)),
            (Some(name), None) => serializer.collect_str(&format_args!("{}/{name}", target.app)),
            (Some(name), Some(method)) => {
                serializer.collect_str(&format_args!("{}/{name}/{method}", target.app))
            }
        }
    }
}

/// Reads back what [`TargetText`] wrote (the token is signed: it holds
/// only what the config validated).
fn parse_target(text: &str) -> Option<CallTarget> {
    let mut parts = text.split('/');
    let app = parts.next()?.to_owned();
    let name = parts.next()?;
    let method = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return None;
    }
    Some(CallTarget {
        app,
        name: (name != "*").then(|| name.to_owned()),
        method,
    })
}

impl CallTokens {
    /// Tokens signed with a key drawn now, at random, and never written
    /// anywhere.
    pub fn generate() -> CallTokens {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        CallTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// Tokens signed with `secret`, a key every gateway replica sharing a
    /// store holds, so a token minted on one is good on all.
    pub fn from_secret(secret: &[u8]) -> CallTokens {
        CallTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token for the call `claims` describe.
    pub fn mint(&self, claims: &Claims<'_>) -> Arc<str> {
        let written = Written {
            sub: claims.principal.map(|p| p.subject.as_str()),
            iss: claims.principal.and_then(|p| p.issuer.as_deref()),
            own: claims.owner,
            scp: claims.scopes,
            app: claims.app,
            function: claims.function,
            may: Targets(claims.may_call),
            cid: claims.call_id,
            dep: claims.depth,
            tr: claims.trace_id,
            exp: claims.expires_ms,
        };
        // Sized for the usual claims: one allocation for the JSON, one for
        // the token, one for its shared copy.
        let mut json = Vec::with_capacity(256 + 32 * claims.scopes.len());
        serde_json::to_writer(&mut json, &written).expect("claims always serialise");
        let mut token = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
        token.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        Arc::from(token)
    }

    /// The token of a function that may call nothing: no caller, no call,
    /// no deadline (it never expires, since every call made with it is
    /// refused with 403 whatever its age).
    pub fn grantless(&self, app: &str, function: &str) -> Arc<str> {
        self.mint(&Claims {
            principal: None,
            owner: None,
            scopes: &[],
            app,
            function,
            may_call: &[],
            call_id: "",
            depth: 0,
            trace_id: "",
            expires_ms: u64::MAX,
        })
    }

    /// Checks a presented token: minted by this gateway, unchanged, and
    /// not past its call's deadline at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<CallGrant, AuthError> {
        let forged = || AuthError::invalid("the call token is not one this gateway issued");
        let (signed, tag) = token.rsplit_once('.').ok_or_else(forged)?;
        let payload = signed.strip_prefix(PREFIX).ok_or_else(forged)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| forged())?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| forged())?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| forged())?;
        let read: Read = serde_json::from_slice(&json).map_err(|_| forged())?;
        if read.exp <= now_ms {
            return Err(AuthError::invalid(
                "the call token has expired with its call's deadline",
            ));
        }
        let may_call = read
            .may
            .iter()
            .map(|text| parse_target(text))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(forged)?;
        Ok(CallGrant {
            principal: read.sub.map(|subject| Principal {
                subject,
                issuer: read.iss,
            }),
            owner: read.own,
            scopes: read.scp,
            app: read.app,
            function: read.function,
            may_call,
            call_id: read.cid,
            depth: read.dep,
            trace_id: read.tr,
            expires_ms: read.exp,
        })
    }
}

/// The call token of a request's `Authorization: Bearer` header, when it
/// holds one (anything else is left to the other credential checks).
pub fn presented(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(PREFIX)).then_some(token)
}

/// The trace id (32 hex digits) of a `traceparent` the gateway wrote.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(app: &str, name: Option<&str>, method: Option<&str>) -> CallTarget {
        CallTarget {
            app: app.to_owned(),
            name: name.map(str::to_owned),
            method: method.map(str::to_owned),
        }
    }

    fn claims<'a>(
        principal: Option<&'a Principal>,
        may_call: &'a [CallTarget],
        scopes: &'a [String],
    ) -> Claims<'a> {
        Claims {
            principal,
            owner: Some("jwt:https://issuer.example:alice"),
            scopes,
            app: "demo",
            function: "cube",
            may_call,
            call_id: "fc-0123456789abcdef0123456789abcdef",
            depth: 2,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            expires_ms: 2_000_000_000_000,
        }
    }

    #[test]
    fn a_minted_token_reads_back_as_its_claims() {
        let tokens = CallTokens::generate();
        let alice = Principal {
            subject: "alice \"the\" admin".to_owned(),
            issuer: Some("https://issuer.example".to_owned()),
        };
        let may_call = [
            target("demo", Some("square"), None),
            target("demo", Some("model"), Some("predict")),
            target("other", None, None),
        ];
        let scopes = ["invoke:demo/*".to_owned()];
        let token = tokens.mint(&claims(Some(&alice), &may_call, &scopes));
        assert!(token.starts_with(PREFIX));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        );
        let grant = tokens.verify(&token, 1_000).unwrap();
        assert_eq!(grant.principal.as_ref(), Some(&alice));
        assert_eq!(
            grant.owner.as_deref(),
            Some("jwt:https://issuer.example:alice")
        );
        assert_eq!(grant.may_call, may_call);
        assert_eq!((grant.depth, grant.expires_ms), (2, 2_000_000_000_000));
        assert_eq!(grant.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(grant.caller_name(), "demo/cube");
        assert!(grant.may_call("demo", "square", None));
        assert!(grant.may_call("demo", "model", Some("predict")));
        assert!(!grant.may_call("demo", "model", Some("embed")));
        assert!(grant.may_call("other", "anything", None));
        assert!(!grant.may_call("demo", "cube", None));
        assert!(grant.may_invoke("demo", "square"));
        assert!(!grant.may_invoke("other", "anything"));
    }

    #[test]
    fn forged_altered_foreign_and_expired_tokens_are_refused() {
        let tokens = CallTokens::generate();
        let token = tokens.mint(&claims(None, &[], &[]));
        let refused = |text: &str, now: u64| match tokens.verify(text, now) {
            Err(AuthError::Invalid(why)) => why,
            other => panic!("{text} was not refused: {other:?}"),
        };
        // Another gateway's key (or this one's before a restart).
        let foreign = CallTokens::generate().mint(&claims(None, &[], &[]));
        assert!(refused(&foreign, 0).contains("not one this gateway issued"));
        // Claims edited, signature kept: deeper power, same tag.
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let json = URL_SAFE_NO_PAD
            .decode(signed.strip_prefix(PREFIX).unwrap())
            .unwrap();
        let edited = String::from_utf8(json)
            .unwrap()
            .replace("\"may\":[]", "\"may\":[\"demo/*\"]");
        let edited = format!("{PREFIX}{}.{tag}", URL_SAFE_NO_PAD.encode(edited));
        assert!(refused(&edited, 0).contains("not one this gateway issued"));
        for garbage in [
            "fgc_",
            "fgc_abc",
            "fgc_a.b",
            "fgc_.",
            &token[..token.len() - 2],
        ] {
            refused(garbage, 0);
        }
        // Past the call's deadline.
        assert!(refused(&token, 2_000_000_000_000).contains("expired"));
        assert!(tokens.verify(&token, 1_999_999_999_999).is_ok());
    }

    #[test]
    fn the_token_text_never_shows_in_debug_output() {
        let tokens = CallTokens::generate();
        let token = tokens.mint(&claims(None, &[], &[]));
        let invocation = crate::invocation::Invocation {
            call_id: crate::invocation::CallId::generate(),
            app: "demo".into(),
            function: "cube".into(),
            args: "[]".into(),
            kwargs: "{}".into(),
            deadline_ms: 0,
            deadline: tokio::time::Instant::now(),
            attempt: 1,
            trace: crate::invocation::Trace {
                request_id: "r".into(),
                traceparent: String::new(),
            },
            principal: None,
            class: None,
            call_token: Some(token.clone()),
            parent: None,
            batch: None,
        };
        let shown = format!("{invocation:?} {tokens:?}");
        assert!(!shown.contains(PREFIX), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn only_bearer_call_tokens_are_presented() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert("authorization", "Bearer fgk_apikey".parse().unwrap());
        assert_eq!(presented(&headers), None);
        headers.insert("authorization", "bearer fgc_abc.def".parse().unwrap());
        assert_eq!(presented(&headers), Some("fgc_abc.def"));
        headers.insert("authorization", "Basic fgc_abc.def".parse().unwrap());
        assert_eq!(presented(&headers), None);
    }

    /// Minting is on every call's path: this prints what one costs
    /// (`cargo test --lib call_token -- --nocapture`), asserting nothing
    /// about time.
    #[test]
    fn minting_cost_is_printed() {
        let tokens = CallTokens::generate();
        let may_call = [target("demo", Some("square"), None)];
        let claims = claims(None, &may_call, &[]);
        let rounds = 20_000;
        let started = std::time::Instant::now();
        let mut total = 0;
        for _ in 0..rounds {
            total += tokens.mint(&claims).len();
        }
        let each = started.elapsed() / rounds;
        assert!(total > 0);
        println!(
            "one call token mint: {each:?} ({} bytes)",
            total / rounds as usize
        );
    }
}
