//! The answers the route families share: JSON bodies, a function's
//! result, the 303 to a call that went on past the sync wait, the
//! `Preference-Applied` of an asynchronous answer, and a backend's failure
//! as the client's error.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use super::problem::ApiError;
use crate::backend::BackendError;
use crate::invocation::{Trace, names};
use crate::registry::Function;

/// A response with `body` as `application/json`.
pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The function's result, as a sync call and a finished spawned call answer it.
pub fn result_response(call_id: &str, result: impl Into<Body>) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, result);
    insert_call_id(&mut response, call_id);
    response
}

/// `X-Call-Id`, on every answer about one call: a client can find it again.
///
/// Marked sensitive, as the request id is: HTTP/2's HPACK then sends the
/// value as a literal never added to the connection's header table. Each
/// answer's id is new, so indexing it only evicted the entries that do
/// repeat (`content-type`, `date`) and made every later header search
/// longer.
pub fn insert_call_id(response: &mut Response<Body>, call_id: &str) {
    if let Ok(mut value) = HeaderValue::from_str(call_id) {
        value.set_sensitive(true);
        response.headers_mut().insert(names::X_CALL_ID, value);
    }
}

/// The 303 to `/calls/{id}` for a sync call that runs past the sync wait:
/// answered when it is adopted, and again to a client sent there that
/// waited as long as the sync call did.
pub fn see_other(call_id: &str) -> Response<Body> {
    let mut response = json_response(
        StatusCode::SEE_OTHER,
        serde_json::json!({"call_id": call_id, "status": "running"}).to_string(),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("/calls/{call_id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    insert_call_id(&mut response, call_id);
    response
}

/// A spawn answered to `Prefer: respond-async` says it honoured it (RFC 7240).
pub fn preference_applied(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    response
}

/// Logs a backend failure with its details and turns it into the client's
/// error, which shows the function's own message only where it may.
pub fn backend_failure(function: &Function, trace: &Trace, error: BackendError) -> ApiError {
    function.metrics.record_backend_error(&error);
    tracing::warn!(
        request_id = %trace.request_id,
        app = %function.app,
        function = %function.name,
        // Quoted and escaped: a traceback stays on one log line.
        error = ?error.to_string(),
        "call failed"
    );
    ApiError::from_backend(error, function.spec.timeout).exposing(function.spec.expose_errors)
}
