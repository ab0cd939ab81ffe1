//! Request handlers: routing by path, health and readiness, sync calls
//! (with their overflow into spawned calls past the sync wait) and
//! passthrough forwarding.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::admission;
use super::call_routes;
use super::context::RouteLabel;
use super::input;
use super::problem::ApiError;
use crate::backend::Backend;
use crate::backend::http::ForwardError;
use crate::invocation::{CallId, Invocation, Trace, deadline_ms_after, names};
use crate::registry::{Function, Lookup, Target};

/// Every request lands here; the path decides what it is.
pub async fn route(state: &Arc<AppState>, request: Request) -> Response<Body> {
    let trace = request
        .extensions()
        .get::<Trace>()
        .cloned()
        .expect("the request context middleware runs first");
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > state.max_header_bytes {
        let error = ApiError::HeadersTooLarge {
            limit: state.max_header_bytes,
        };
        return error.into_problem(&trace.request_id);
    }
    // A clone of the URI shares its bytes: the path outlives the request.
    let uri = request.uri().clone();
    let path = uri.path();
    let (label, result) = match path {
        "/_/health" => (RouteLabel::Fixed("/_/health"), health(&request)),
        "/_/ready" => (RouteLabel::Fixed("/_/ready"), ready(state, &request)),
        _ => match path.strip_prefix("/calls/") {
            Some(id) => (
                RouteLabel::Fixed("/calls/{id}"),
                Box::pin(call_routes::call(state, id, &trace, request)).await,
            ),
            None => function_route(state, path, &trace, request).await,
        },
    };
    let mut response = result.unwrap_or_else(|error| error.into_problem(&trace.request_id));
    response.extensions_mut().insert(label);
    response
}

async fn function_route(
    state: &Arc<AppState>,
    path: &str,
    trace: &Trace,
    request: Request,
) -> (RouteLabel, Result<Response<Body>, ApiError>) {
    let Some((app, function, suffix)) = split_path(path) else {
        let app = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let error = if state.registry.has_app(app) {
            ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: String::new(),
            }
        } else {
            ApiError::AppNotFound {
                app: app.to_owned(),
            }
        };
        return (RouteLabel::unmatched(path), Err(error));
    };
    match state.registry.lookup(app, function) {
        Lookup::Found(found) => {
            let found = found.clone();
            let label = RouteLabel::Function(found.app.clone(), found.name.clone());
            (label, call(state, &found, suffix, trace, request).await)
        }
        Lookup::NoApp => (
            RouteLabel::unmatched(path),
            Err(ApiError::AppNotFound {
                app: app.to_owned(),
            }),
        ),
        Lookup::NoFunction => (
            RouteLabel::unmatched(path),
            Err(ApiError::FunctionNotFound {
                app: app.to_owned(),
                function: function.to_owned(),
            }),
        ),
    }
}

/// Splits `/{app}/{function}{suffix}`; `suffix` is empty or starts with `/`.
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (app, rest) = rest.split_once('/')?;
    let (function, suffix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!app.is_empty() && !function.is_empty()).then_some((app, function, suffix))
}

pub(super) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The function's result, as a sync call and a finished spawned call answer it.
pub(super) fn result_response(call_id: &str, result: impl Into<Body>) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, result);
    if let Ok(value) = HeaderValue::from_str(call_id) {
        response.headers_mut().insert(names::X_CALL_ID, value);
    }
    response
}

fn only_get(request: &Request) -> Result<(), ApiError> {
    match *request.method() {
        Method::GET | Method::HEAD => Ok(()),
        _ => Err(ApiError::MethodNotAllowed {
            allow: "GET, HEAD".to_owned(),
        }),
    }
}

fn health(request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request)?;
    Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#))
}

fn ready(state: &AppState, request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request)?;
    // A failed store comes first: the gateway drains because of it.
    Ok(if let Some(fault) = state.calls.store().health().fault() {
        let body = serde_json::json!({"status": "store_failed", "detail": fault.why});
        json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
    } else if state.is_draining() {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    })
}

/// True when the client asked for an asynchronous answer (RFC 7240).
fn prefers_async(request: &Request) -> bool {
    request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|token| token.trim().eq_ignore_ascii_case("respond-async"))
}

async fn call(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    suffix: &str,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let spec = &function.spec;
    let caller = admission::admit_call(state, function, &request)?;
    match &function.target {
        Target::Passthrough(backend) => {
            if !spec.allows(request.method()) {
                return Err(ApiError::MethodNotAllowed {
                    allow: spec.allow_header(),
                });
            }
            input::check_suffix(suffix)?;
            let body_limit = input::body_limit(state, function);
            input::check_declared_length(
                request.headers().get(header::CONTENT_LENGTH),
                body_limit,
            )?;
            if prefers_async(&request) {
                return spawned(
                    Box::pin(call_routes::spawn(
                        state, function, &caller, suffix, request,
                    ))
                    .await,
                );
            }
            let _slot = function
                .limiter
                .acquire()
                .await
                .map_err(|_| ApiError::Overloaded)?;
            let deadline = tokio::time::Instant::now() + spec.timeout;
            let principal = caller.principal();
            let forward = backend.forward(
                request,
                suffix,
                trace,
                principal.as_ref(),
                deadline,
                body_limit,
            );
            // Boxed, like the other rarer routes: the sync-call path's
            // future (moved into each HTTP/2 stream's task) stays small.
            Box::pin(forward).await.map_err(|e| match e {
                ForwardError::Backend(e) => backend_failure(function, trace, e),
                ForwardError::BodyTooLarge => ApiError::PayloadTooLarge { limit: body_limit },
                ForwardError::Body(e) => input::body_read_failure(&e),
            })
        }
        Target::Invoke(_) if suffix == "/spawn" => {
            if request.method() != Method::POST {
                return Err(ApiError::MethodNotAllowed {
                    allow: "POST".to_owned(),
                });
            }
            Box::pin(call_routes::spawn(state, function, &caller, "", request)).await
        }
        Target::Invoke(_) if !suffix.is_empty() => Err(ApiError::FunctionNotFound {
            app: spec.app.clone(),
            function: format!("{}{suffix}", spec.name),
        }),
        Target::Invoke(_) if !spec.allows(request.method()) => Err(ApiError::MethodNotAllowed {
            allow: spec.allow_header(),
        }),
        Target::Invoke(_) if request.method() == Method::POST && prefers_async(&request) => {
            spawned(Box::pin(call_routes::spawn(state, function, &caller, "", request)).await)
        }
        Target::Invoke(backend) => {
            let arguments = input::arguments(state, function, request).await?;
            let slot = function
                .limiter
                .acquire()
                .await
                .map_err(|_| ApiError::Overloaded)?;
            let invocation = Arc::new(Invocation {
                call_id: CallId::generate(),
                app: function.app.clone(),
                function: function.name.clone(),
                args: arguments.args,
                kwargs: arguments.kwargs,
                deadline_ms: deadline_ms_after(spec.timeout),
                deadline: tokio::time::Instant::now() + spec.timeout,
                attempt: 1,
                trace: trace.clone(),
                principal: caller.principal(),
            });
            let owner = if spec.public { None } else { caller.owner() };
            sync_call(state, function, backend.clone(), invocation, owner, slot).await
        }
    }
}

/// A spawn answered to `Prefer: respond-async` says it honoured it.
fn spawned(response: Result<Response<Body>, ApiError>) -> Result<Response<Body>, ApiError> {
    let mut response = response?;
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    Ok(response)
}

/// Runs a sync call in the request's own task. It answers with the
/// result when it comes within the sync wait; past that the call is
/// adopted as a spawned call, its work moves to a task of its own, and the
/// client is sent to `/calls/{id}` with a 303. A client that leaves before
/// then stops the work (the request's future, and the work in it, is
/// dropped).
async fn sync_call(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    backend: Arc<dyn Backend>,
    invocation: Arc<Invocation>,
    owner: Option<String>,
    slot: crate::dispatch::Slot,
) -> Result<Response<Body>, ApiError> {
    let mut work: SyncWork = {
        let invocation = invocation.clone();
        Box::pin(async move {
            let outcome = backend.invoke(&invocation).await;
            drop(slot);
            outcome
        })
    };
    let call_id = invocation.call_id.as_str();
    let outcome = tokio::select! {
        outcome = &mut work => outcome,
        () = tokio::time::sleep(state.sync_wait) => {
            // Boxed: the rare path's futures stay out of every request's.
            let adopted = Box::pin(adopt(state, &invocation, owner, work)).await?;
            match adopted {
                Some(outcome) => outcome,
                None => return Ok(call_routes::see_other(call_id)),
            }
        }
    };
    match outcome {
        Ok(body) => Ok(result_response(call_id, body)),
        Err(e) => Err(backend_failure(function, &invocation.trace, e)),
    }
}

/// A sync call's work, running inline in its request's task.
type SyncWork = std::pin::Pin<
    Box<dyn Future<Output = Result<bytes::Bytes, crate::backend::BackendError>> + Send>,
>;

/// Past the sync wait: the call becomes a spawned call and its work goes
/// on in a task of its own (None), unless it ended meanwhile (its outcome).
async fn adopt(
    state: &Arc<AppState>,
    invocation: &Arc<Invocation>,
    owner: Option<String>,
    mut work: SyncWork,
) -> Result<Option<Result<bytes::Bytes, crate::backend::BackendError>>, ApiError> {
    let call_id = invocation.call_id.as_str();
    let stop = CancellationToken::new();
    if let Err(e) = state.calls.adopt(invocation, owner, stop.clone()).await {
        tracing::error!(call_id, error = %e, "cannot adopt a long sync call; stopping it");
        return Err(ApiError::StoreUnavailable);
    }
    if let Some(outcome) = (&mut work).now_or_never() {
        // It ended while being adopted: record it, answer directly.
        state.calls.finish(call_id, outcome.clone()).await;
        return Ok(Some(outcome));
    }
    let calls = state.calls.clone();
    let adopted = invocation.clone();
    state.calls.spawn_task(async move {
        tokio::select! {
            outcome = work => calls.finish(adopted.call_id.as_str(), outcome).await,
            // Cancelled through DELETE /calls/{id}.
            () = stop.cancelled() => {}
        }
    });
    Ok(None)
}

/// Logs a backend failure with its details and turns it into the client's error.
fn backend_failure(
    function: &Function,
    trace: &Trace,
    error: crate::backend::BackendError,
) -> ApiError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::http::HttpClients;
    use crate::calls::{Calls, CallsConfig};
    use crate::config::Config;
    use crate::registry::Registry;
    use crate::store::embedded::EmbeddedStore;
    use http_body_util::BodyExt;

    fn app() -> super::super::App {
        let text = r#"
            [apps.demo.functions.square]
            backend = "exec"
            command = ["true"]
            methods = ["POST", "GET"]
        "#;
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&dir.path().join("gateway.toml"), text).unwrap();
        let registry = Arc::new(Registry::from_config(&config, &HttpClients::new()));
        let store = Arc::new(EmbeddedStore::open(&config.store.path).unwrap());
        let settings = CallsConfig {
            result_ttl: config.store.result_ttl,
            max_pending: config.store.max_pending,
            max_wait: config.store.max_wait,
        };
        let calls = Arc::new(Calls::new(store, registry.clone(), settings));
        // The store's file may go with the folder: these tests read no calls back.
        drop(dir);
        super::super::router(Arc::new(AppState::new(
            registry, calls, None, None, &config,
        )))
    }

    async fn problem(
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let response = app().serve(request.body(Body::from(body)).unwrap()).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn unknown_names_get_their_own_404_codes() {
        let (status, body) = problem(Method::POST, "/nope/square", None, "").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (404, Some("app_not_found"))
        );
        let (status, body) = problem(Method::POST, "/demo/sq", None, "").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (404, Some("function_not_found"))
        );
        let (status, body) = problem(Method::POST, "/demo/square/extra", None, "").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (404, Some("function_not_found"))
        );
        let (status, body) = problem(Method::POST, "/demo%2Fsquare/x", None, "").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (404, Some("app_not_found"))
        );
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_any_backend_runs() {
        let (status, body) = problem(Method::PUT, "/demo/square", None, "").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (405, Some("method_not_allowed"))
        );
        let (status, body) = problem(Method::POST, "/demo/square", Some("text/plain"), "x").await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (415, Some("unsupported_media_type"))
        );
        let (status, body) = problem(
            Method::POST,
            "/demo/square",
            Some("application/json"),
            "{\"x\":",
        )
        .await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (400, Some("invalid_json"))
        );
        let (status, body) = problem(
            Method::POST,
            "/demo/square?x=1",
            Some("application/json"),
            "{\"x\":2}",
        )
        .await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (400, Some("invalid_arguments"))
        );
    }

    #[tokio::test]
    async fn health_and_readiness_answer() {
        let (status, body) = problem(Method::GET, "/_/health", None, "").await;
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (200, Some("ok"))
        );
        let (status, body) = problem(Method::GET, "/_/ready", None, "").await;
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (200, Some("ready"))
        );
        let (status, _) = problem(Method::POST, "/_/health", None, "").await;
        assert_eq!(status.as_u16(), 405);
    }

    #[test]
    fn paths_split_into_app_function_and_suffix() {
        assert_eq!(split_path("/demo/square"), Some(("demo", "square", "")));
        assert_eq!(split_path("/demo/square/"), Some(("demo", "square", "/")));
        assert_eq!(split_path("/web/site/a/b"), Some(("web", "site", "/a/b")));
        assert_eq!(split_path("/demo"), None);
        assert_eq!(split_path("/demo/"), None);
        assert_eq!(split_path("//x"), None);
        assert_eq!(split_path("/"), None);
    }
}
