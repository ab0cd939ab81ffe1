//! A request's way through the gateway, phase by phase, in the order they
//! run: admit its head, resolve its path to a route, admit its caller and
//! pick the route family that answers, translate and dispatch it there,
//! respond (errors become problem+json; the route's label goes to the
//! access log, which `context` writes around all of this). Route families
//! live in `routes`, each in its own file; they share the helpers beside
//! this file and never call each other.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{Method, Response};

use super::admission::{self, Caller};
use super::context::RouteLabel;
use super::problem::ApiError;
use super::resolve::{self, Action, Resolved, Route};
use super::routes::{calls, docs, health, invoke, map, metrics, passthrough, spawn, work};
use super::state::AppState;
use crate::backend::Backend;
use crate::backend::forward::Forwarder;
use crate::invocation::Trace;
use crate::registry::Function;

/// Every request, through every phase. The phases before the route family
/// are plain functions; only the family awaits. The rarer families are
/// boxed, so the sync call's future (moved into each HTTP/2 stream's task)
/// stays small.
pub async fn handle(state: &Arc<AppState>, request: Request) -> Response<Body> {
    let trace = request
        .extensions()
        .get::<Trace>()
        .cloned()
        .expect("the request context middleware runs first");
    // Admit the head: an oversized one is refused before anything is
    // looked up.
    if let Err(error) = admission::admit_headers(state, &request) {
        return error.into_problem(&trace.request_id);
    }
    // Resolve. A clone of the URI shares its bytes: the path outlives the
    // request, which the route family takes.
    let uri = request.uri().clone();
    let head = request.method() == Method::HEAD;
    let registry = state.registry.current();
    let Resolved { label, route } = resolve::resolve(&registry, uri.path());
    // Admit the caller; translate and dispatch in the route family.
    let result = match route.and_then(|route| admit(state, route, &request)) {
        Err(error) => Err(error),
        Ok(Admitted::Health) => health::health(&request),
        Ok(Admitted::Ready) => health::ready(state, &request),
        Ok(Admitted::Metrics) => Box::pin(metrics::metrics(state, request.method().clone())).await,
        Ok(Admitted::OpenApi) => docs::openapi(state, &request),
        Ok(Admitted::Docs) => docs::docs(&request),
        Ok(Admitted::Call { id, caller }) => {
            let (method, query) = (request.method(), uri.query());
            Box::pin(calls::call(state, id, &caller, &trace, method, query)).await
        }
        Ok(Admitted::Invoke {
            function,
            backend,
            caller,
        }) => invoke::invoke(state, function, backend, &caller, &trace, request).await,
        Ok(Admitted::Spawn {
            function,
            caller,
            asked,
        }) => Box::pin(spawn::spawn(state, function, &caller, asked, request)).await,
        Ok(Admitted::Map {
            function,
            backend,
            caller,
        }) => Box::pin(map::map(state, function, backend, &caller, &trace, request)).await,
        Ok(Admitted::MapSpawn { function, caller }) => {
            Box::pin(map::spawn::spawn(state, function, &caller, &trace, request)).await
        }
        Ok(Admitted::Forward {
            function,
            backend,
            caller,
            suffix,
        }) => {
            passthrough::forward(state, function, backend, &caller, suffix, &trace, request).await
        }
        Ok(Admitted::Work {
            function,
            route,
            caller,
        }) => Box::pin(work::work(state, function, route, &caller, request)).await,
    };
    let response = respond(result, label, &trace);
    if head { headless(response) } else { response }
}

/// A `HEAD` answer: the head of the answer without its body. HTTP/2
/// forbids DATA frames on it (hyper drops the body itself on HTTP/1.1
/// only), so the body goes here, and its length, when known, stays in
/// `Content-Length`.
fn headless(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = http_body::Body::size_hint(&body).exact() {
        parts
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert(http::HeaderValue::from(length));
    }
    Response::from_parts(parts, Body::empty())
}

/// A route whose caller is admitted, as the route family that answers it.
enum Admitted<'a> {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Docs,
    Call {
        id: &'a str,
        caller: Caller,
    },
    Invoke {
        function: &'a Arc<Function>,
        backend: &'a Arc<dyn Backend>,
        caller: Caller,
    },
    /// Through `/spawn`, or a call sent with `Prefer: respond-async`.
    Spawn {
        function: &'a Arc<Function>,
        caller: Caller,
        asked: spawn::Asked<'a>,
    },
    /// `/map`: one call per input.
    Map {
        function: &'a Arc<Function>,
        backend: &'a Arc<dyn Backend>,
        caller: Caller,
    },
    /// `/map/spawn`: one spawned call over every input.
    MapSpawn {
        function: &'a Arc<Function>,
        caller: Caller,
    },
    Forward {
        function: &'a Arc<Function>,
        backend: &'a Forwarder,
        caller: Caller,
        suffix: &'a str,
    },
    /// A worker's request (`fngate worker`).
    Work {
        function: &'a Arc<Function>,
        route: resolve::WorkRoute<'a>,
        caller: Caller,
    },
}

/// Admits the caller as the route asks (a function's scopes, or a call's
/// reader; the gateway's own routes take anyone) and picks the route
/// family that answers.
fn admit<'a>(
    state: &AppState,
    route: Route<'a>,
    request: &Request,
) -> Result<Admitted<'a>, ApiError> {
    let (function, action) = match route {
        Route::Health => return Ok(Admitted::Health),
        Route::Ready => return Ok(Admitted::Ready),
        Route::Metrics => return Ok(Admitted::Metrics),
        Route::OpenApi => return Ok(Admitted::OpenApi),
        Route::Docs => return Ok(Admitted::Docs),
        Route::Call { id } => {
            let caller = admission::admit_reader(state, request)?;
            return Ok(Admitted::Call { id, caller });
        }
        Route::Function { function, action } => (function, action),
        Route::Work { function, route } => {
            let caller = admission::admit_worker(state, function, request)?;
            return Ok(Admitted::Work {
                function,
                route,
                caller,
            });
        }
    };
    let caller = admission::admit_call(state, function, request)?;
    Ok(match action {
        Action::Invoke { .. } if request.method() == Method::POST && prefers_async(request) => {
            Admitted::Spawn {
                function,
                caller,
                asked: spawn::Asked::Prefer { suffix: "" },
            }
        }
        Action::Invoke { backend } => Admitted::Invoke {
            function,
            backend,
            caller,
        },
        Action::Spawn => Admitted::Spawn {
            function,
            caller,
            asked: spawn::Asked::Path,
        },
        Action::Map { backend } => Admitted::Map {
            function,
            backend,
            caller,
        },
        Action::MapSpawn => Admitted::MapSpawn { function, caller },
        Action::Forward { suffix, .. } if prefers_async(request) => Admitted::Spawn {
            function,
            caller,
            asked: spawn::Asked::Prefer { suffix },
        },
        Action::Forward { backend, suffix } => Admitted::Forward {
            function,
            backend,
            caller,
            suffix,
        },
        Action::NotFound(error) => return Err(error),
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

/// The answer: the route family's response, or the error's problem; either
/// carries the route's label for the access log.
fn respond(
    result: Result<Response<Body>, ApiError>,
    label: RouteLabel,
    trace: &Trace,
) -> Response<Body> {
    let mut response = result.unwrap_or_else(|error| error.into_problem(&trace.request_id));
    response.extensions_mut().insert(label);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{context, state};
    use http::StatusCode;
    use http_body_util::BodyExt;

    /// A request through the request context and every phase.
    async fn answer(
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let state = state::for_tests();
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).unwrap();
        let response =
            context::request_context(request, |r| async { handle(&state, r).await }).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn code(method: Method, uri: &str) -> (u16, Option<String>) {
        let (status, body) = answer(method, uri, &[]).await;
        (status.as_u16(), body["code"].as_str().map(str::to_owned))
    }

    #[tokio::test]
    async fn unknown_names_get_their_own_404_codes() {
        let not_found = |code: &str| (404, Some(code.to_owned()));
        assert_eq!(
            code(Method::POST, "/nope/square").await,
            not_found("app_not_found")
        );
        assert_eq!(
            code(Method::POST, "/demo/sq").await,
            not_found("function_not_found")
        );
        assert_eq!(
            code(Method::POST, "/demo/square/extra").await,
            not_found("function_not_found")
        );
        assert_eq!(
            code(Method::POST, "/demo%2Fsquare/x").await,
            not_found("app_not_found")
        );
    }

    #[tokio::test]
    async fn each_route_family_answers_its_paths() {
        let (status, body) = answer(Method::GET, "/_/health", &[]).await;
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (200, Some("ok"))
        );
        let (status, _) = answer(Method::POST, "/_/health", &[]).await;
        assert_eq!(status.as_u16(), 405);
        assert_eq!(
            code(Method::GET, "/calls/not-a-call-id").await,
            (404, Some("call_not_found".to_owned()))
        );
        // `/spawn` takes only POST; a sync call whatever the function allows.
        assert_eq!(
            code(Method::GET, "/demo/square/spawn").await,
            (405, Some("method_not_allowed".to_owned()))
        );
        assert_eq!(
            code(Method::PUT, "/demo/square").await,
            (405, Some("method_not_allowed".to_owned()))
        );
    }

    #[tokio::test]
    async fn oversized_heads_are_refused_first() {
        let big = "x".repeat(20_000);
        let (status, body) = answer(Method::POST, "/nope/x", &[("x-big", &big)]).await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (431, Some("headers_too_large"))
        );
    }
}
