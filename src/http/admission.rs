//! What may come in, before any work is done: a request head within its
//! size limit, then the caller: credentials checked against a function's
//! `public` flag and scopes, and the caller's rate limit.

use std::net::SocketAddr;

use axum::extract::Request;

use super::problem::ApiError;
use super::state::AppState;
use crate::auth::{AuthError, Credentials};
use crate::invocation::Principal;
use crate::registry::Function;

/// The client's address, set by the listener on every request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Set by the listener on requests that came over `http_listen` (plain
/// HTTP, behind a TLS load balancer): only they may have their scheme and
/// host taken from `X-Forwarded-Proto` / `Host`.
#[derive(Debug, Clone, Copy)]
pub struct PlainListener;

/// The principal of the connection's verified client certificate (mTLS).
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Principal);

/// An admitted caller: Bearer credentials when given, else the client
/// certificate's principal when the connection has one.
pub struct Caller {
    pub credentials: Option<Credentials>,
    pub client: Option<Principal>,
}

impl Caller {
    /// Who owns what this caller spawns; `None` for an anonymous caller.
    pub fn owner(&self) -> Option<String> {
        match (&self.credentials, &self.client) {
            (Some(credentials), _) => Some(credentials.owner()),
            (None, Some(client)) => Some(format!("cert:{}", client.subject)),
            (None, None) => None,
        }
    }

    pub fn principal(&self) -> Option<Principal> {
        match (&self.credentials, &self.client) {
            (Some(credentials), _) => Some(credentials.principal.clone()),
            (None, client) => client.clone(),
        }
    }
}

/// Refuses a request whose headers (names, values and their framing)
/// pass `max_header_bytes`: nothing is looked up or checked for it.
pub fn admit_headers(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > state.max_header_bytes {
        return Err(ApiError::HeadersTooLarge {
            limit: state.max_header_bytes,
        });
    }
    Ok(())
}

/// The caller, with the connection's client certificate, past the rate limit.
fn admitted(
    state: &AppState,
    request: &Request,
    credentials: Option<Credentials>,
) -> Result<Caller, ApiError> {
    let client = request
        .extensions()
        .get::<ClientCertificate>()
        .map(|c| c.0.clone());
    limit(
        state,
        request,
        Caller {
            credentials,
            client,
        },
    )
}

fn unauthorized(error: AuthError) -> ApiError {
    match error {
        AuthError::Missing => ApiError::Unauthorized { description: None },
        AuthError::Invalid(why) => ApiError::Unauthorized {
            description: Some(why),
        },
    }
}

/// Admits a call of `function`: a function that is not public needs valid
/// credentials with its scope; a public one takes any caller (credentials
/// that check out still name the principal).
pub fn admit_call(
    state: &AppState,
    function: &Function,
    request: &Request,
) -> Result<Caller, ApiError> {
    let credentials = match &state.auth {
        None => None,
        Some(auth) if function.spec.public => auth.authenticate(request.headers()).ok(),
        Some(auth) => {
            let credentials = auth
                .authenticate(request.headers())
                .map_err(|error| refuse(state, request, error))?;
            // A class's methods share its scope: `invoke:{app}/{class}`.
            let name = match &function.class {
                Some(of) => &of.class,
                None => &function.name,
            };
            if !credentials.may_invoke(&function.app, name) {
                return Err(ApiError::Forbidden {
                    scope: format!("invoke:{}/{name}", function.app),
                });
            }
            Some(credentials)
        }
    };
    admitted(state, request, credentials)
}

/// Admits a worker (`fngate worker`) of `function`: credentials are
/// required, with a scope that holds `work:{app}/{function}`. A gateway
/// without `[auth]` checks no credentials, so it admits no workers.
pub fn admit_worker(
    state: &AppState,
    function: &Function,
    request: &Request,
) -> Result<Caller, ApiError> {
    let Some(auth) = &state.auth else {
        return Err(ApiError::Unauthorized {
            description: Some(
                "this gateway checks no credentials ([auth] is not set), so it admits no workers"
                    .to_owned(),
            ),
        });
    };
    let credentials = auth
        .authenticate(request.headers())
        .map_err(|error| refuse(state, request, error))?;
    if !credentials.may_work(&function.app, &function.name) {
        return Err(ApiError::Forbidden {
            scope: format!("work:{}/{}", function.app, function.name),
        });
    }
    admitted(state, request, Some(credentials))
}

/// Admits a reader or canceller of a call: credentials are optional, but
/// bad ones are refused; the call's owner is checked by the caller.
pub fn admit_reader(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let credentials = match &state.auth {
        None => None,
        Some(auth) => match auth.authenticate(request.headers()) {
            Ok(credentials) => Some(credentials),
            Err(AuthError::Missing) => None,
            Err(error) => return Err(refuse(state, request, error)),
        },
    };
    admitted(state, request, credentials)
}

/// A refused credential costs its client IP's rate limit, so guessing keys
/// (and making the gateway check signatures) is limited like any call.
fn refuse(state: &AppState, request: &Request, error: AuthError) -> ApiError {
    let anonymous = Caller {
        credentials: None,
        client: None,
    };
    match limit(state, request, anonymous) {
        Ok(_) => unauthorized(error),
        Err(limited) => limited,
    }
}

/// Applies the rate limit: per principal, or per client IP without one.
fn limit(state: &AppState, request: &Request, caller: Caller) -> Result<Caller, ApiError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(caller);
    };
    let key = match caller.owner() {
        Some(owner) => owner,
        None => match request.extensions().get::<PeerAddr>() {
            Some(PeerAddr(addr)) => format!("ip:{}", addr.ip()),
            None => "ip:unknown".to_owned(),
        },
    };
    limiter
        .check(&key)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    Ok(caller)
}
