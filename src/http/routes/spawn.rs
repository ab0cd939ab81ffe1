//! Spawned calls: `POST /{app}/{function}/spawn`, and any call sent with
//! `Prefer: respond-async` (RFC 7240; the only way to spawn a passthrough
//! function). The call is stored before the 202 answers; `Idempotency-Key`
//! and `Callback-Url` are checked here.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::backend::http::StoredRequest;
use crate::calls::{Accepted, SpawnError, SpawnInput, SpawnOptions};
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::respond::{self, json_response};
use crate::http::state::AppState;
use crate::http::{base_url, input};
use crate::registry::{Function, Target};

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

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
    let headers = request.headers();
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(idempotency_key(value)?),
    };
    let callback_url = match headers.get("callback-url") {
        None => None,
        Some(value) => Some(callback_url(state, value)?),
    };
    let base = base_url::external_base(&request);
    let class = input::class_call(function, request.uri().query())?;
    let parameters = class.map(|class| class.parameters.clone());
    let (input, digest) =
        read_input(state, function, suffix, parameters.as_deref(), request).await?;
    let options = SpawnOptions {
        owner: if function.spec.public {
            None
        } else {
            caller.owner()
        },
        principal: caller.principal(),
        idempotency: idempotency_key.map(|key| (key, digest)),
        callback_url,
        parameters,
        origin: caller.origin(),
    };
    let accepted = state
        .calls
        .spawn(function, input, options)
        .await
        .map_err(|e| match e {
            SpawnError::BacklogFull => ApiError::Overloaded,
            SpawnError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            SpawnError::Store(e) => {
                tracing::error!(error = %e, "cannot store a spawned call");
                ApiError::StoreUnavailable
            }
        })?;
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

/// What the call runs with, and its digest for `Idempotency-Key`: the
/// arguments of a function, the whole request for a passthrough one.
async fn read_input(
    state: &AppState,
    function: &Function,
    suffix: &str,
    parameters: Option<&str>,
    request: Request,
) -> Result<(SpawnInput, Vec<u8>), ApiError> {
    match &function.target {
        Target::Invoke(_) => {
            let arguments = input::arguments(state, function, request).await?;
            let (args, kwargs) = (arguments.args.as_bytes(), arguments.kwargs.as_bytes());
            // A class method's parameters pick its instances: part of the request.
            let digest = match parameters {
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
            let digest = digest(&[
                parts.method.as_str().as_bytes(),
                suffix.as_bytes(),
                query.as_bytes(),
                &body,
            ]);
            let stored = StoredRequest::new(&parts, suffix, &body);
            Ok((SpawnInput::Forward(stored), digest))
        }
    }
}

/// The 202 of a stored call: its id, state and status URL.
pub(in crate::http) fn accepted_response(accepted: &Accepted, base: &str) -> Response<Body> {
    let location = format!("/calls/{}", accepted.id);
    let body = serde_json::json!({
        "call_id": accepted.id,
        "status": accepted.state.as_str(),
        "status_url": format!("{base}{location}"),
    });
    let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    respond::insert_call_id(&mut response, &accepted.id);
    response
}

pub(in crate::http) fn idempotency_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::InvalidArguments(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let visible = text.bytes().all(|b| b.is_ascii_graphic());
    if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY || !visible {
        return Err(bad());
    }
    Ok(text.to_owned())
}

pub(in crate::http) fn callback_url(
    state: &AppState,
    value: &HeaderValue,
) -> Result<String, ApiError> {
    let Some(webhooks) = &state.webhooks else {
        return Err(ApiError::InvalidArguments(
            "Callback-Url needs completion webhooks, which this gateway has not configured ([webhooks])".to_owned(),
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::InvalidArguments("Callback-Url is not text".to_owned()))?;
    webhooks
        .check_callback_url(text)
        .map_err(|why| ApiError::InvalidArguments(format!("Callback-Url refused: {why}")))
}

/// SHA-256 of what a call runs with: the same key with other input is a
/// different request.
pub(in crate::http) fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context.finish().as_ref().to_vec()
}
