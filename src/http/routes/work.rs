//! The worker routes, `/_/work/{app}/{function}[/...]`: `fngate worker`
//! agents on other machines take a function's calls and post their ends
//! (the wire protocol is in the README, "Workers on other machines"). A
//! worker needs credentials whose scope holds `work:{app}/{function}`; it is
//! one more instance of the function while it polls.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::backend::{BackendError, result_json};
use crate::config::BackendSpec;
use crate::http::admission::Caller;
use crate::http::problem::ApiError;
use crate::http::resolve::WorkRoute;
use crate::http::respond::json_response;
use crate::http::state::AppState;
use crate::instances::remote::{Polled, Remote};
use crate::instances::runtime_api;
use crate::registry::Function;

/// How long a worker's `next` waits for a call before answering 204.
const POLL_WAIT: Duration = Duration::from_secs(20);

/// Largest error report a worker may post.
const MAX_REPORT: usize = 1 << 20;

/// Answers a worker's request for `function` (its caller already admitted
/// with a `work:` scope).
pub async fn work(
    state: &AppState,
    function: &Function,
    route: WorkRoute<'_>,
    _caller: &Caller,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    if *request.method() != route.method() {
        return Err(ApiError::MethodNotAllowed {
            allow: route.method().to_string(),
        });
    }
    let pool = worker_pool(function)?;
    if let WorkRoute::Describe = route {
        return Ok(describe(function));
    }
    let worker = worker_id(&request)?;
    let attached = |id: &str| {
        pool.attached_worker(&worker)
            .ok_or_else(|| ApiError::CallNotFound { id: id.to_owned() })
    };
    match route {
        WorkRoute::Describe => Ok(describe(function)),
        WorkRoute::Next => {
            let remote = pool.worker(&worker).map_err(|e| {
                tracing::warn!(error = %e, "a worker cannot be attached");
                ApiError::BackendError
            })?;
            Ok(next(&remote).await)
        }
        WorkRoute::Heartbeat(id) => {
            if attached(id)?.heartbeat(id) {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::CallNotFound { id: id.to_owned() })
            }
        }
        WorkRoute::Response(id) => {
            let remote = attached(id)?;
            let limit = usize::try_from(state.max_result).unwrap_or(usize::MAX);
            let body = read(request, limit).await?;
            ended(&remote, id, result_json(body))
        }
        WorkRoute::Error(id) => {
            let remote = attached(id)?;
            let body = read(request, MAX_REPORT).await?;
            let (kind, message) = runtime_api::error_report(&body, None);
            ended(&remote, id, Err(BackendError::Function { kind, message }))
        }
    }
}

/// The function's one instance set, when workers may serve it: a warm
/// function (a class's parameter sets and passthrough are served by the
/// gateway's own instances only).
fn worker_pool(function: &Function) -> Result<std::sync::Arc<crate::instances::Pool>, ApiError> {
    let refuse = |why: &str| ApiError::NotWorkable(why.to_owned());
    let Some(sets) = &function.instances else {
        return Err(refuse(
            "this function has no instances (its backend is exec or http with urls): workers cannot serve it",
        ));
    };
    if function.class.is_some() {
        return Err(refuse("workers serve functions, not class methods"));
    }
    if function.spec.is_passthrough() {
        return Err(refuse("workers do not serve passthrough functions"));
    }
    Ok(sets.pool(Vec::new()))
}

fn describe(function: &Function) -> Response<Body> {
    let spec = &function.spec;
    let (protocol, path, ready_path, concurrency) = match &spec.backend {
        BackendSpec::Lambda { .. } => ("lambda", None, None, 1),
        BackendSpec::HttpInstances {
            path,
            ready_path,
            pool,
            ..
        } => (
            "http",
            Some(path),
            ready_path.as_ref(),
            pool.instance_concurrency,
        ),
        BackendSpec::Exec { .. } | BackendSpec::Http { .. } => ("none", None, None, 0),
    };
    let body = serde_json::json!({
        "protocol": protocol,
        "path": path,
        "ready_path": ready_path,
        "instance_concurrency": concurrency,
        "timeout_ms": spec.timeout.as_millis() as u64,
    });
    json_response(StatusCode::OK, body.to_string())
}

/// The worker's id (`Fngate-Worker`): `wk-` and up to 64 URL-safe characters.
fn worker_id(request: &Request) -> Result<String, ApiError> {
    let id = request
        .headers()
        .get("fngate-worker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let well_formed = id.starts_with("wk-")
        && id.len() <= 67
        && id.len() > 3
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed {
        Ok(id.to_owned())
    } else {
        Err(ApiError::BadRequest(
            "a worker names itself in Fngate-Worker: wk- and up to 64 letters, digits, - or _"
                .to_owned(),
        ))
    }
}

async fn next(remote: &Remote) -> Response<Body> {
    match remote.next(POLL_WAIT).await {
        Polled::Call(delivery) => runtime_api::event(&delivery).map(Body::new),
        Polled::Nothing | Polled::Detached => empty(StatusCode::NO_CONTENT),
    }
}

fn ended(
    remote: &Remote,
    id: &str,
    reply: Result<bytes::Bytes, BackendError>,
) -> Result<Response<Body>, ApiError> {
    if remote.end(id, reply) {
        Ok(json_response(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
    } else {
        Err(ApiError::CallNotFound { id: id.to_owned() })
    }
}

async fn read(request: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge {
                limit: limit as u64,
            })
        }
        Err(e) => Err(ApiError::BadRequest(format!("reading the body: {e}"))),
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
