//! What may come in, before any work is done: a request head within its
//! size limit, then the caller: credentials checked against a function's
//! `public` flag and scopes (or a function's call token against its
//! `may_call` and the nesting limit), and the caller's rate limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use tokio::time::Instant;

use super::problem::ApiError;
use super::state::AppState;
use crate::auth::call_token::{self, Claims};
use crate::auth::{AuthError, CallGrant, Credentials};
use crate::invocation::{Invocation, ParentCall, Principal, Trace, deadline_ms_after, random_hex};
use crate::registry::Function;
use crate::store::{Origin, now_ms};

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
/// certificate's principal when the connection has one; or a function's
/// call, through its call token, acting as its original caller.
#[derive(Clone)]
pub struct Caller {
    pub credentials: Option<Credentials>,
    pub client: Option<Principal>,
    /// The calling call, when a function calls through its call token.
    pub nested: Option<Arc<CallGrant>>,
}

impl Caller {
    /// Who owns what this caller spawns; `None` for an anonymous caller.
    pub fn owner(&self) -> Option<String> {
        if let Some(grant) = &self.nested {
            return grant.owner.clone();
        }
        match (&self.credentials, &self.client) {
            (Some(credentials), _) => Some(credentials.owner()),
            (None, Some(client)) => Some(format!("cert:{}", client.subject)),
            (None, None) => None,
        }
    }

    pub fn principal(&self) -> Option<Principal> {
        if let Some(grant) = &self.nested {
            return grant.principal.clone();
        }
        match (&self.credentials, &self.client) {
            (Some(credentials), _) => Some(credentials.principal.clone()),
            (None, client) => client.clone(),
        }
    }

    /// The `invoke:` scopes the calls this caller makes may pass on.
    fn scopes(&self) -> &[String] {
        match (&self.nested, &self.credentials) {
            (Some(grant), _) => &grant.scopes,
            (None, Some(credentials)) => &credentials.scopes,
            (None, None) => &[],
        }
    }

    /// The call that made this one, when a function called through its
    /// token: its id and how deep the new call nests.
    pub fn parent(&self) -> Option<Arc<ParentCall>> {
        let grant = self.nested.as_ref()?;
        Some(Arc::new(ParentCall {
            call_id: grant.call_id.clone(),
            depth: grant.depth + 1,
        }))
    }

    /// What a call this caller spawns keeps of where it came from: its
    /// parent when a function spawned it through its token, and the
    /// scopes its runs' call tokens pass on. `None`: nothing to keep.
    pub fn origin(&self) -> Option<Origin> {
        match (&self.nested, &self.credentials) {
            (Some(grant), _) => Some(Origin {
                parent_call_id: Some(grant.call_id.clone()),
                depth: grant.depth + 1,
                trace_id: Some(grant.trace_id.clone()),
                scopes: grant.scopes.clone(),
            }),
            (None, Some(credentials)) if !credentials.scopes.is_empty() => Some(Origin {
                scopes: credentials.scopes.clone(),
                ..Origin::default()
            }),
            (None, _) => None,
        }
    }

    /// A call of `timeout`'s deadline, wall clock (ms) and monotonic: a
    /// nested call's is never later than its parent's.
    pub fn deadline(&self, timeout: Duration) -> (u64, Instant) {
        let own_ms = deadline_ms_after(timeout);
        let now = Instant::now();
        match &self.nested {
            Some(grant) if grant.expires_ms < own_ms => {
                let left = own_ms - grant.expires_ms;
                let left = timeout.saturating_sub(Duration::from_millis(left));
                (grant.expires_ms, now + left)
            }
            _ => (own_ms, now + timeout),
        }
    }

    /// The trace a call goes on with: a nested call continues its
    /// parent's trace, whatever the request's `traceparent` says.
    pub fn trace(&self, trace: &Trace) -> Trace {
        match &self.nested {
            Some(grant) if call_token::trace_id(&trace.traceparent) != grant.trace_id => Trace {
                request_id: trace.request_id.clone(),
                traceparent: format!("00-{}-{}-01", grant.trace_id, random_hex::<8>()),
            },
            _ => trace.clone(),
        }
    }

    /// The call token of `invocation`, a call of `function` this caller
    /// made: it acts as this caller, limited to the function's `may_call`.
    pub fn call_token(
        &self,
        state: &AppState,
        function: &Function,
        invocation: &Invocation,
    ) -> Arc<str> {
        if let Some(token) = function.grantless_token(state.calls.tokens()) {
            return token;
        }
        let owner = self.owner();
        let principal = self.principal();
        state.calls.tokens().mint(&Claims {
            principal: principal.as_ref(),
            owner: owner.as_deref(),
            scopes: self.scopes(),
            app: &function.app,
            function: &function.key,
            may_call: &function.spec.may_call,
            call_id: invocation.call_id.as_str(),
            depth: invocation.parent.as_ref().map_or(0, |parent| parent.depth),
            trace_id: call_token::trace_id(&invocation.trace.traceparent),
            expires_ms: invocation.deadline_ms,
        })
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
            nested: None,
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
    if let Some(token) = call_token::presented(request.headers()) {
        return admit_nested(state, function, request, token);
    }
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

/// Admits a call a function makes with its call token: the token must be
/// this gateway's and unexpired (else 401), the calling function's
/// `may_call` must list `function` and, for a non-public one while
/// `[auth]` is on, the original caller's scopes grant it (else 403), and
/// the call may nest no deeper than `max_call_depth` (else 508).
fn admit_nested(
    state: &AppState,
    function: &Function,
    request: &Request,
    token: &str,
) -> Result<Caller, ApiError> {
    let grant = verified(state, request, token)?;
    let (name, method) = match &function.class {
        Some(of) => (&*of.class, Some(&*function.name)),
        None => (&*function.name, None),
    };
    if !grant.may_call(&function.app, name, method) {
        return Err(ApiError::NotInMayCall {
            caller: grant.caller_name(),
            target: format!("{}/{}", function.app, function.spec.route_name()),
        });
    }
    if state.auth.is_some() && !function.spec.public && !grant.may_invoke(&function.app, name) {
        return Err(ApiError::Forbidden {
            scope: format!("invoke:{}/{name}", function.app),
        });
    }
    if grant.depth >= state.max_call_depth {
        return Err(ApiError::LoopDetected {
            max_depth: state.max_call_depth,
        });
    }
    limit(
        state,
        request,
        Caller {
            credentials: None,
            client: None,
            nested: Some(grant),
        },
    )
}

/// The claims of a call token this gateway minted and whose call's
/// deadline has not passed; else 401 (costing the rate limit).
fn verified(state: &AppState, request: &Request, token: &str) -> Result<Arc<CallGrant>, ApiError> {
    match state.calls.tokens().verify(token, now_ms().max(0) as u64) {
        Ok(grant) => Ok(Arc::new(grant)),
        Err(error) => Err(refuse(state, request, error)),
    }
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
    if let Some(token) = call_token::presented(request.headers()) {
        // A function reading the calls it spawned, as their owner.
        let caller = Caller {
            credentials: None,
            client: None,
            nested: Some(verified(state, request, token)?),
        };
        return limit(state, request, caller);
    }
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
        nested: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(expires_ms: u64, depth: u32) -> Caller {
        Caller {
            credentials: None,
            client: None,
            nested: Some(Arc::new(CallGrant {
                principal: None,
                owner: Some("key:reports".to_owned()),
                scopes: vec!["invoke:demo/*".to_owned()],
                app: "demo".to_owned(),
                function: "cube".to_owned(),
                may_call: Vec::new(),
                call_id: "fc-parent".to_owned(),
                depth,
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                expires_ms,
            })),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nested_call_never_outlives_its_parent() {
        let timeout = Duration::from_secs(30);
        let soon = deadline_ms_after(Duration::from_secs(2));
        let (deadline_ms, deadline) = nested(soon, 0).deadline(timeout);
        assert_eq!(deadline_ms, soon);
        let left = deadline - Instant::now();
        assert!(
            left <= Duration::from_secs(2) && left > Duration::from_secs(1),
            "{left:?}"
        );
        // A parent with longer to go leaves the child its own timeout.
        let later = deadline_ms_after(Duration::from_secs(3600));
        let (deadline_ms, deadline) = nested(later, 0).deadline(timeout);
        assert!(deadline_ms < later);
        assert_eq!(deadline - Instant::now(), timeout);
    }

    #[test]
    fn a_nested_call_continues_its_parent_and_acts_as_its_caller() {
        let caller = nested(u64::MAX, 3);
        let parent = caller.parent().unwrap();
        assert_eq!((parent.call_id.as_str(), parent.depth), ("fc-parent", 4));
        assert_eq!(caller.owner().as_deref(), Some("key:reports"));
        let origin = caller.origin().unwrap();
        assert_eq!(origin.parent_call_id.as_deref(), Some("fc-parent"));
        assert_eq!((origin.depth, origin.scopes.len()), (4, 1));
        let other = Trace {
            request_id: "r".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        };
        let continued = caller.trace(&other);
        assert!(
            continued
                .traceparent
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{}",
            continued.traceparent
        );
        assert_eq!(continued.traceparent.len(), 55);
        let client = Caller {
            credentials: None,
            client: None,
            nested: None,
        };
        assert!(client.parent().is_none() && client.origin().is_none());
        assert_eq!(client.trace(&other).traceparent, other.traceparent);
    }
}
