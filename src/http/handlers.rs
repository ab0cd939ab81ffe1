//! Request handlers: health and readiness, sync invocation and passthrough
//! forwarding.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use super::context::RouteLabel;
use super::problem::ApiError;
use crate::invocation::{CallId, Invocation, Trace, deadline_ms_after};
use crate::registry::{Function, Lookup, Target};
use crate::translate::{self, InputRules};

/// Every request lands here; the path decides what it is.
pub async fn route(State(state): State<Arc<AppState>>, request: Request) -> Response<Body> {
    let trace = request
        .extensions()
        .get::<Trace>()
        .cloned()
        .expect("the request context middleware runs first");
    let path = request.uri().path().to_owned();
    let (label, result) = match path.as_str() {
        "/_/health" => ("/_/health", health(&request)),
        "/_/ready" => ("/_/ready", ready(&state, &request)),
        _ => match split_path(&path) {
            Some((app, function, suffix)) => match state.registry.lookup(app, function) {
                Lookup::Found(found) => {
                    let found = found.clone();
                    let label = format!("/{app}/{function}");
                    let result = call(&state, &found, suffix, trace.clone(), request).await;
                    return labelled(result, &trace, label);
                }
                Lookup::NoApp => (
                    "-",
                    Err(ApiError::AppNotFound {
                        app: app.to_owned(),
                    }),
                ),
                Lookup::NoFunction => (
                    "-",
                    Err(ApiError::FunctionNotFound {
                        app: app.to_owned(),
                        function: function.to_owned(),
                    }),
                ),
            },
            None => {
                let app = path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or_default();
                if state.registry.has_app(app) {
                    (
                        "-",
                        Err(ApiError::FunctionNotFound {
                            app: app.to_owned(),
                            function: String::new(),
                        }),
                    )
                } else {
                    (
                        "-",
                        Err(ApiError::AppNotFound {
                            app: app.to_owned(),
                        }),
                    )
                }
            }
        },
    };
    labelled(result, &trace, label.to_owned())
}

fn labelled(
    result: Result<Response<Body>, ApiError>,
    trace: &Trace,
    label: String,
) -> Response<Body> {
    let mut response = result.unwrap_or_else(|error| error.into_problem(&trace.request_id));
    response.extensions_mut().insert(RouteLabel(label));
    response
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

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
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
    Ok(if state.is_draining() {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    })
}

async fn call(
    state: &AppState,
    function: &Arc<Function>,
    suffix: &str,
    trace: Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let spec = &function.spec;
    let not_found = || ApiError::FunctionNotFound {
        app: spec.app.clone(),
        function: format!("{}{suffix}", spec.name),
    };
    match &function.target {
        Target::Passthrough(backend) => {
            if !spec.allows(request.method()) {
                return Err(ApiError::MethodNotAllowed {
                    allow: spec.allow_header(),
                });
            }
            let _slot = function
                .limiter
                .acquire()
                .await
                .map_err(|_| ApiError::Overloaded)?;
            let deadline = tokio::time::Instant::now() + spec.timeout;
            backend
                .forward(request, suffix, &trace, deadline)
                .await
                .map_err(|e| backend_failure(function, &trace, e))
        }
        Target::Invoke(_) if !suffix.is_empty() => Err(not_found()),
        Target::Invoke(backend) => {
            if !spec.allows(request.method()) {
                return Err(ApiError::MethodNotAllowed {
                    allow: spec.allow_header(),
                });
            }
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
            let query = request.uri().query().map(str::to_owned);
            let body = if request.method() == Method::GET {
                Bytes::new()
            } else {
                read_body(request, state.max_body).await?
            };
            let rules = InputRules {
                max_depth: state.max_json_depth,
                schema: function.schema.as_ref().zip(spec.input_schema.as_ref()),
            };
            let arguments =
                translate::arguments(content_type.as_deref(), &body, query.as_deref(), &rules)?;
            drop(body);
            let _slot = function
                .limiter
                .acquire()
                .await
                .map_err(|_| ApiError::Overloaded)?;
            let invocation = Invocation {
                call_id: CallId::generate(),
                app: function.app.clone(),
                function: function.name.clone(),
                args: arguments.args,
                kwargs: arguments.kwargs,
                deadline_ms: deadline_ms_after(spec.timeout),
                deadline: tokio::time::Instant::now() + spec.timeout,
                attempt: 1,
                trace: trace.clone(),
                principal: None,
            };
            let result = backend
                .invoke(&invocation)
                .await
                .map_err(|e| backend_failure(function, &trace, e))?;
            let mut response = json_response(StatusCode::OK, result);
            if let Ok(value) = HeaderValue::from_str(invocation.call_id.as_str()) {
                response.headers_mut().insert("x-call-id", value);
            }
            Ok(response)
        }
    }
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
        error = %error,
        "call failed"
    );
    ApiError::from_backend(error, function.spec.timeout)
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_body(request: Request, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "could not read the request body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::http::HttpClients;
    use crate::config::Config;
    use crate::registry::Registry;
    use tower::ServiceExt;

    fn app() -> axum::Router {
        let text = r#"
            [apps.demo.functions.square]
            backend = "exec"
            command = ["true"]
            methods = ["POST", "GET"]
        "#;
        let config = Config::from_toml(std::path::Path::new("/tmp/gateway.toml"), text).unwrap();
        let registry = Registry::from_config(&config, &HttpClients::new());
        super::super::router(Arc::new(AppState::new(registry, &config.server)))
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
        let response = app()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
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
