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
    // `{"call_id","status","status_url"}` written straight, each string
    // escaped by serde_json: a `json!` map and its serialiser cost more
    // than the rest of the 202 (bench/profile.sh spawn).
    let mut body = Vec::with_capacity(64 + 2 * location.len() + base.len());
    let string = |body: &mut Vec<u8>, text: &str| {
        serde_json::to_writer(body, text).expect("a string always serialises")
    };
    body.extend_from_slice(b"{\"call_id\":");
    string(&mut body, &accepted.id);
    body.extend_from_slice(b",\"status\":");
    string(&mut body, accepted.state.as_str());
    body.extend_from_slice(b",\"status_url\":");
    string(&mut body, &format!("{base}{location}"));
    body.push(b'}');
    let mut response = json_response(StatusCode::ACCEPTED, body);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CallState;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_202_names_the_call_its_status_and_where_to_read_it() {
        let accepted = Accepted {
            id: "fc-0123".to_owned(),
            state: CallState::Running,
        };
        // A base that needs escaping in JSON comes out whole.
        let response = accepted_response(&accepted, "https://a\"b\\c");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::LOCATION], "/calls/fc-0123");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "call_id": "fc-0123",
                "status": "running",
                "status_url": "https://a\"b\\c/calls/fc-0123",
            })
        );
    }
}
