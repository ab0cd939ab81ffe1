//! Reading a call's input off an HTTP request: the body within its limit,
//! then translation into arguments.

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use super::problem::ApiError;
use crate::registry::Function;
use crate::translate::{self, Arguments, InputRules};

/// The arguments of a call: query string, and the body for methods other
/// than `GET`. Refuses bad input before anything runs or is stored.
pub async fn arguments(
    state: &AppState,
    function: &Function,
    request: Request,
) -> Result<Arguments, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let query = request.uri().query().map(str::to_owned);
    let body = if request.method() == Method::GET {
        Bytes::new()
    } else {
        let (parts, body) = request.into_parts();
        read_body(
            parts.headers.get(header::CONTENT_LENGTH),
            body,
            state.max_body,
        )
        .await?
    };
    let rules = InputRules {
        max_depth: state.max_json_depth,
        schema: function
            .schema
            .as_ref()
            .zip(function.spec.input_schema.as_ref()),
    };
    Ok(translate::arguments(
        content_type.as_deref(),
        &body,
        query.as_deref(),
        &rules,
    )?)
}

/// The error a request body yields when the client stalls it (no bytes
/// for `body_read_timeout`, or below `body_min_rate`): the listener's
/// body wrapper raises it, handlers answer `408 request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
pub struct BodyStalled;

/// True when `error` (a body's error, however boxed) is a stalled body.
pub fn is_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<BodyStalled>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads a body, refusing it as soon as it passes `limit` bytes (at once
/// when its `Content-Length` says it will).
pub async fn read_body(
    content_length: Option<&HeaderValue>,
    body: Body,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge { limit };
    let declared = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) if is_stalled(e.as_ref()) => Err(ApiError::RequestTimeout),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "could not read the request body: {e}"
        ))),
    }
}
