//! Passthrough functions answered now: the request (method, path after
//! `/{app}/{function}`, query, headers, body) goes to the function's HTTP
//! service, and its response comes back unchanged, streamed both ways.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::Response;

use crate::backend::forward::Forwarder;
use crate::backend::http::ForwardError;
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::state::AppState;
use crate::http::{input, respond};
use crate::invocation::Trace;
use crate::registry::Function;

/// Forwards the request to `backend` once the function's checks pass and
/// a concurrency slot is free; `suffix` is the path after the function.
pub async fn forward(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    backend: &Forwarder,
    caller: &Caller,
    suffix: &str,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let body_limit = input::check_passthrough(state, function, suffix, &request)?;
    let _slot = function
        .limiter
        .acquire()
        .await
        .map_err(|_| ApiError::Overloaded)?;
    let deadline = tokio::time::Instant::now() + function.spec.timeout;
    let principal = caller.principal();
    let forward = backend.forward(
        request,
        suffix,
        trace,
        principal.as_ref(),
        deadline,
        body_limit,
    );
    // Boxed, like the other rarer routes: the sync-call path's future
    // (moved into each HTTP/2 stream's task) stays small.
    Box::pin(forward).await.map_err(|e| match e {
        ForwardError::Backend(e) => respond::backend_failure(function, trace, e),
        ForwardError::BodyTooLarge => ApiError::PayloadTooLarge { limit: body_limit },
        ForwardError::Body(e) => input::body_read_failure(&e),
    })
}
