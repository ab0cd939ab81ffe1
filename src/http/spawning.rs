//! What every spawn request shares, a call's (`/spawn`, `Prefer:
//! respond-async`) and a map's (`/map/spawn`): its `Idempotency-Key` and
//! `Callback-Url`, the digest that tells one request from another under
//! the same key, the options the call is stored with, and the 202.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::calls::{Accepted, SpawnError, SpawnOptions};
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::respond::{self, json_response};
use crate::http::state::AppState;
use crate::registry::Function;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What a spawn request asks for beside its input, checked.
pub struct SpawnAsks {
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

impl SpawnAsks {
    pub fn read(state: &AppState, headers: &HeaderMap) -> Result<SpawnAsks, ApiError> {
        Ok(SpawnAsks {
            idempotency_key: (headers.get("idempotency-key"))
                .map(idempotency_key)
                .transpose()?,
            callback_url: (headers.get("callback-url"))
                .map(|value| callback_url(state, value))
                .transpose()?,
        })
    }

    /// How `caller`'s spawn of `function` is stored: owned by the caller
    /// unless the function is public, under its idempotency key with
    /// `digest` of its input.
    pub fn options(
        self,
        function: &Function,
        caller: &Caller,
        digest: Vec<u8>,
        parameters: Option<String>,
    ) -> SpawnOptions {
        SpawnOptions {
            owner: if function.spec.public {
                None
            } else {
                caller.owner()
            },
            principal: caller.principal(),
            idempotency: self.idempotency_key.map(|key| (key, digest)),
            callback_url: self.callback_url,
            parameters,
            origin: caller.origin(),
        }
    }
}

/// Why a spawn (of a `what`: a call or a map) was not stored.
pub fn refused(error: SpawnError, what: &str) -> ApiError {
    match error {
        SpawnError::BacklogFull => ApiError::Overloaded,
        SpawnError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
        SpawnError::Store(e) => {
            tracing::error!(error = %e, "cannot store a spawned {what}");
            ApiError::StoreUnavailable
        }
    }
}

/// The 202 of a stored call: its id, state and status URL.
pub fn accepted_response(accepted: &Accepted, base: &str) -> Response<Body> {
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

fn idempotency_key(value: &HeaderValue) -> Result<String, ApiError> {
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

fn callback_url(state: &AppState, value: &HeaderValue) -> Result<String, ApiError> {
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
pub fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context.finish().as_ref().to_vec()
}
