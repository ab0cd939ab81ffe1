//! Spawned calls: `POST /{app}/{function}/spawn`, and any call sent with
//! `Prefer: respond-async` (RFC 7240; the only way to spawn a passthrough
//! function). The call is stored before the 202 answers; `Idempotency-Key`
//! and `Callback-Url` are checked here.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{Method, Response, header};

use crate::backend::http::StoredRequest;
use crate::calls::SpawnInput;
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::respond;
use crate::http::spawning::{self, SpawnAsks, accepted_response, digest};
use crate::http::state::AppState;
use crate::http::{base_url, input};
use crate::registry::{Function, Target};

/// How a client asked for a spawned call.
pub enum Asked<'a> {
    /// `POST /{app}/{function}/spawn`: any function's arguments, whatever
    /// methods its sync calls allow.
    Path,
    /// `Prefer: respond-async` on a call: refused as the call itself would
    /// be, and the 202 says the preference was applied. `suffix` is a
    /// passthrough function's path after `/{app}/{function}`, forwarded to
    /// when the call runs.
    Prefer { suffix: &'a str },
}

/// Spawns a call of `function`: its input is checked, read and stored
/// before the 202 answers with where to find the call.
pub async fn spawn(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    caller: &Caller,
    asked: Asked<'_>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let suffix = check(state, function, &asked, &request)?;
    let asks = SpawnAsks::read(state, request.headers())?;
    let base = base_url::external_base(&request);
    let class = input::class_call(function, request.uri().query())?;
    let parameters = class.map(|class| class.parameters.clone());
    let keyed = asks.idempotency_key.is_some();
    let (input, digest) = read_input(
        state,
        function,
        suffix,
        parameters.as_deref(),
        keyed,
        request,
    )
    .await?;
    let options = asks.options(function, caller, digest, parameters);
    let accepted = state
        .calls
        .spawn_here(function, input, options)
        .await
        .map_err(|e| spawning::refused(e, "call"))?;
    let response = accepted_response(&accepted, &base);
    Ok(match asked {
        Asked::Path => response,
        Asked::Prefer { .. } => respond::preference_applied(response),
    })
}

/// Refuses what the spawn, or the call it stands for, would not take;
/// the path suffix to store.
fn check<'a>(
    state: &AppState,
    function: &Function,
    asked: &Asked<'a>,
    request: &Request,
) -> Result<&'a str, ApiError> {
    match (asked, &function.target) {
        (Asked::Path, _) if request.method() != Method::POST => Err(ApiError::MethodNotAllowed {
            allow: "POST".to_owned(),
        }),
        (Asked::Path, _) => Ok(""),
        (Asked::Prefer { suffix }, Target::Invoke(_)) => {
            input::check_method(function, request.method())?;
            Ok(suffix)
        }
        (Asked::Prefer { suffix }, Target::Passthrough(_)) => {
            input::check_passthrough(state, function, suffix, request)?;
            Ok(suffix)
        }
    }
}

/// What the call runs with, and its digest for `Idempotency-Key` (when
/// `keyed`, empty otherwise): the arguments of a function, the whole
/// request for a passthrough one.
async fn read_input(
    state: &AppState,
    function: &Function,
    suffix: &str,
    parameters: Option<&str>,
    keyed: bool,
    request: Request,
) -> Result<(SpawnInput, Vec<u8>), ApiError> {
    match &function.target {
        Target::Invoke(_) => {
            let arguments = input::arguments(state, function, request).await?;
            let (args, kwargs) = (arguments.args.as_bytes(), arguments.kwargs.as_bytes());
            // A class method's parameters pick its instances: part of the request.
            let digest = match parameters {
                _ if !keyed => Vec::new(),
                None => digest(&[args, kwargs]),
                Some(parameters) => digest(&[args, kwargs, parameters.as_bytes()]),
            };
            Ok((SpawnInput::Arguments(arguments), digest))
        }
        Target::Passthrough(_) => {
            let (parts, body) = request.into_parts();
            let body = input::read_body(
                parts.headers.get(header::CONTENT_LENGTH),
                body,
                input::body_limit(state, function),
            )
            .await?;
            let query = parts.uri.query().unwrap_or("");
            let digest = if keyed {
                digest(&[
                    parts.method.as_str().as_bytes(),
                    suffix.as_bytes(),
                    query.as_bytes(),
                    &body,
                ])
            } else {
                Vec::new()
            };
            let stored = StoredRequest::new(&parts, suffix, &body);
            Ok((SpawnInput::Forward(stored), digest))
        }
    }
}
