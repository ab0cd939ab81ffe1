//! The spawned calls' own routes: `GET /calls/{id}` (with `?wait=` long
//! polls, and the wait of a client sent here by a sync call's 303), and
//! `DELETE /calls/{id}`; a stored call rendered as the client sees it.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio::time::Instant;

use crate::config::DEFAULT_TIMEOUT;
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::respond::{insert_call_id, json_response, result_response, see_other};
use crate::http::state::AppState;
use crate::invocation::Trace;
use crate::registry::Lookup;
use crate::store::{CallRecord, CallState, Cancelled, FailureKind, Outcome};

/// How long a client polling a pending call is asked to wait, in seconds.
const POLL_AFTER_SECONDS: u32 = 1;

/// True for what could be a call id; anything else is not looked up.
fn plausible_call_id(id: &str) -> bool {
    id.starts_with("fc-")
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET` or `DELETE /calls/{id}` by an admitted `caller`; `query` is the
/// request's. The body, if any, is not read.
pub async fn call(
    state: &AppState,
    id: &str,
    caller: &Caller,
    trace: &Trace,
    method: &Method,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let view = View {
        state,
        id,
        owner: caller.owner(),
        trace,
    };
    match *method {
        Method::GET | Method::HEAD => get(&view, query).await,
        Method::DELETE => cancel(&view).await,
        _ => Err(ApiError::MethodNotAllowed {
            allow: "GET, HEAD, DELETE".to_owned(),
        }),
    }
}

/// One call as one caller sees it: someone else's call is answered
/// exactly as one that does not exist.
struct View<'a> {
    state: &'a AppState,
    id: &'a str,
    owner: Option<String>,
    trace: &'a Trace,
}

impl View<'_> {
    fn not_found(&self) -> ApiError {
        ApiError::CallNotFound {
            id: self.id.to_owned(),
        }
    }

    /// The call's record, once it ends or `wait` has passed.
    async fn read(&self, wait: Duration) -> Result<CallRecord, ApiError> {
        let record = self.state.calls.status(self.id, wait).await.map_err(|e| {
            tracing::error!(request_id = %self.trace.request_id, error = %e, "cannot read a call");
            ApiError::StoreUnavailable
        })?;
        match record {
            Some(record) if record.owner.is_none() || record.owner == self.owner => Ok(record),
            _ => Err(self.not_found()),
        }
    }
}

/// `GET /calls/{id}`, with `?wait=` when given.
async fn get(view: &View<'_>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let wait = wait_param(query)?;
    if !plausible_call_id(view.id) {
        return Err(view.not_found());
    }
    let mut record = view.read(Duration::ZERO).await?;
    if let Some(wait) = wait.filter(|w| !w.is_zero() && !record.state.is_finished()) {
        record = view.read(wait).await?;
    }
    if record.map_inputs.is_some() {
        return crate::http::routes::map::spawn::answer(view.state, record).await;
    }
    if wait.is_none() && record.from_sync && !record.state.is_finished() {
        hold_for_sync(view, &mut record).await?;
        if !record.state.is_finished() {
            return Ok(see_other(view.id));
        }
    }
    let parent = record
        .origin
        .as_ref()
        .and_then(|o| o.parent_call_id.clone());
    let attempt = record.attempt;
    let mut response = render(view.state, view.trace, record)?;
    if let Some(Ok(value)) = parent.as_deref().map(HeaderValue::from_str) {
        response.headers_mut().insert(X_PARENT_CALL_ID, value);
    }
    // A finished call's body is its result: the attempt it ended on (runs
    // under `retries`) is said beside it, as a running call's body says it.
    if attempt > 0 {
        response
            .headers_mut()
            .insert(X_ATTEMPT, HeaderValue::from(attempt));
    }
    Ok(response)
}

/// On the answers about a call: the run it is on, or ended on (1 first).
const X_ATTEMPT: http::HeaderName = http::HeaderName::from_static("x-attempt");

/// On the answers about a call that a function's call made with its call
/// token: that call's id.
const X_PARENT_CALL_ID: http::HeaderName = http::HeaderName::from_static("x-parent-call-id");

/// A client sent here by a sync call's 303 (curl -L, fetch) waits for the
/// result as long as the sync call did (or `max_wait`, when longer), and
/// is sent round again while the call still runs, so it ends up with the
/// result.
async fn hold_for_sync(view: &View<'_>, record: &mut CallRecord) -> Result<(), ApiError> {
    let state = view.state;
    let held_until = Instant::now() + state.sync_wait.max(state.calls.max_wait());
    while !record.state.is_finished() {
        let now = Instant::now();
        let left = held_until.saturating_duration_since(now);
        if left.is_zero() {
            break;
        }
        *record = view.read(left).await?;
        // Each read waits up to `max_wait`; one that ends early with the
        // call still running means the gateway stops.
        let read_until = now + left.min(state.calls.max_wait());
        if !record.state.is_finished() && Instant::now() < read_until {
            break;
        }
    }
    Ok(())
}

/// `DELETE /calls/{id}`: cancelling a cancelled call is no error.
async fn cancel(view: &View<'_>) -> Result<Response<Body>, ApiError> {
    if !plausible_call_id(view.id) {
        return Err(view.not_found());
    }
    view.read(Duration::ZERO).await?;
    let answer = view.state.calls.cancel(view.id).await.map_err(|e| {
        tracing::error!(request_id = %view.trace.request_id, error = %e, "cannot cancel a call");
        ApiError::StoreUnavailable
    })?;
    match answer {
        Cancelled::Now(_) | Cancelled::AlreadyFinished(CallState::Cancelled) => Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"call_id": view.id, "status": "cancelled"}).to_string(),
        )),
        Cancelled::AlreadyFinished(state) => Err(ApiError::CallFinished {
            state: state.as_str(),
        }),
        Cancelled::NotFound => Err(view.not_found()),
    }
}

/// `?wait=SECONDS` (a number; capped by the store's `max_wait`), when given.
fn wait_param(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "wait")
    else {
        return Ok(None);
    };
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Some(Duration::from_secs_f64(s.min(86_400.0))))
        .ok_or_else(|| {
            ApiError::InvalidArguments(format!("wait must be a number of seconds, not '{value}'"))
        })
}

/// A stored call as the client sees it: the result, the error a sync call
/// would have given, or its progress.
fn render(state: &AppState, trace: &Trace, record: CallRecord) -> Result<Response<Body>, ApiError> {
    let registry = state.registry.current();
    let (timeout, expose_errors) = match registry.lookup_key(&record.app, &record.function) {
        Lookup::Found(function) => (function.spec.timeout, function.spec.expose_errors),
        // A function no longer deployed: nothing says its errors may be shown.
        Lookup::NoApp | Lookup::NoFunction => (DEFAULT_TIMEOUT, false),
    };
    match (record.state, record.outcome) {
        (
            CallState::Succeeded,
            Some(Outcome::Answered {
                status,
                content_type,
                body,
            }),
        ) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(Ok(value)) = content_type.as_deref().map(HeaderValue::from_str) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            insert_call_id(&mut response, &record.id);
            Ok(response)
        }
        (CallState::Succeeded, Some(Outcome::Succeeded(body))) => {
            Ok(result_response(&record.id, body))
        }
        (
            CallState::Failed,
            Some(Outcome::Failed {
                kind,
                error_type,
                message,
            }),
        ) => Err(match kind {
            FailureKind::Function => {
                if !expose_errors {
                    tracing::warn!(
                        request_id = %trace.request_id,
                        call_id = %record.id,
                        app = %record.app,
                        function = %record.function,
                        error_type = %error_type,
                        message = ?message,
                        "spawned call failed; its message is withheld from the client"
                    );
                }
                ApiError::FunctionError {
                    kind: error_type,
                    message,
                }
                .exposing(expose_errors)
            }
            FailureKind::Backend if error_type == "backend_error" => ApiError::BackendError,
            FailureKind::Backend if error_type == crate::calls::FUNCTION_REMOVED => {
                ApiError::FunctionRemoved
            }
            FailureKind::Backend => ApiError::InstanceInitFailed { kind: error_type },
        }),
        (CallState::TimedOut, _) => Err(ApiError::FunctionTimeout { timeout }),
        (CallState::Cancelled, _) => Err(ApiError::CallCancelled { id: record.id }),
        (state, _) => {
            let mut body = serde_json::json!({
                "call_id": record.id,
                "status": state.as_str(),
                "created_at": rfc3339(record.created_ms),
                "attempt": record.attempt,
            });
            if let Some(parent) = record
                .origin
                .as_ref()
                .and_then(|o| o.parent_call_id.as_ref())
            {
                body["parent_call_id"] = parent.as_str().into();
            }
            let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECONDS));
            insert_call_id(&mut response, &record.id);
            Ok(response)
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}
