//! Per-request context: the request id (the client's when sane, else a
//! new one), the W3C trace context passed to backends, the request's
//! metrics and access-log line, and the guarantee that a panicking
//! handler still answers 500.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Response};

use super::problem::ApiError;
use crate::invocation::{Trace, names, push_random_hex, random_hex};
use crate::metrics::FunctionMetrics;
use crate::metrics::access_log::{self, AccessEntry, AccessRoute, CallIdText};

/// The route a response belongs to, for the metrics and the access log
/// (names only: no path suffix, no query).
#[derive(Clone)]
pub enum RouteLabel {
    Fixed(&'static str),
    /// `/{app}/{function}` of a deployed function, or
    /// `/{app}/{class}/{method}` of a class's method: its series, which
    /// the request is counted in with no lookup.
    Function(Arc<FunctionMetrics>),
    /// No route: shown as `-`; the path (cut to [`UNMATCHED_PATH_MAX`]
    /// bytes, never the query) is logged at debug level.
    Unmatched(Box<str>),
}

/// The most of an unmatched request's path the log keeps.
pub const UNMATCHED_PATH_MAX: usize = 200;

impl RouteLabel {
    /// The label of a request no route matched; `path` has no query.
    pub fn unmatched(path: &str) -> RouteLabel {
        let mut end = path.len().min(UNMATCHED_PATH_MAX);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < path.len() {
            format!("{}...", &path[..end])
        } else {
            path.to_owned()
        };
        RouteLabel::Unmatched(cut.into_boxed_str())
    }
}

impl std::fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteLabel::Fixed(label) => f.write_str(label),
            RouteLabel::Function(metrics) => f.write_str(&metrics.route),
            RouteLabel::Unmatched(_) => f.write_str("-"),
        }
    }
}

/// Accepts a client's request id of 1 to 128 characters from
/// `[A-Za-z0-9._:-]`; anything else is replaced.
fn sane_request_id(headers: &HeaderMap) -> Option<Arc<str>> {
    let value = headers.get(names::X_REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    sane.then(|| Arc::from(value))
}

/// The `traceparent` for the backend: the client's trace continued with a
/// new span id, or a new trace.
fn child_traceparent(headers: &HeaderMap) -> String {
    let incoming = headers
        .get(names::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let mut value = String::with_capacity(55);
    value.push_str("00-");
    match incoming {
        Some((trace_id, _)) => value.push_str(trace_id),
        None => push_random_hex::<16>(&mut value),
    }
    value.push('-');
    push_random_hex::<8>(&mut value);
    value.push('-');
    value.push_str(incoming.map_or("01", |(_, flags)| flags));
    value
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

/// Around every request: sets up the `Trace`, echoes `X-Request-Id`, turns
/// panics of `next` into a 500 problem, and logs one line per request.
pub async fn request_context<F, Fut>(mut request: Request, next: F) -> Response<Body>
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    let started = std::time::Instant::now();
    let trace = Trace {
        request_id: sane_request_id(request.headers())
            .unwrap_or_else(|| Arc::from(random_hex::<16>())),
        traceparent: child_traceparent(request.headers()),
    };
    let request_id = trace.request_id.clone();
    let method = request.method().clone();
    request.extensions_mut().insert(trace);
    let mut response = match AssertUnwindSafe(next(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(request_id = %request_id, panic = %message, "request handler panicked");
            ApiError::Internal.into_problem(&request_id)
        }
    };
    if let Ok(mut value) = HeaderValue::from_str(&request_id) {
        // A value no other answer carries: HTTP/2 sends it as a literal
        // that is never indexed (see `respond::insert_call_id`).
        value.set_sensitive(true);
        response.headers_mut().insert(names::X_REQUEST_ID, value);
    }
    log_request(&response, method, request_id, started);
    response
}

/// Counts the request in its route's series and hands its access-log
/// line to the writer (which formats and writes it off this path).
fn log_request(
    response: &Response<Body>,
    method: http::Method,
    request_id: Arc<str>,
    started: std::time::Instant,
) {
    let at = std::time::Instant::now();
    let latency = at.saturating_duration_since(started);
    let status = response.status().as_u16();
    let route = response.extensions().get::<RouteLabel>();
    let metrics = crate::metrics::global();
    let (series, access_route) = match route {
        Some(RouteLabel::Function(f)) => (f, AccessRoute::Function(f.clone())),
        Some(RouteLabel::Fixed(label)) => (metrics.fixed(label), AccessRoute::Fixed(label)),
        Some(RouteLabel::Unmatched(path)) => {
            tracing::debug!(request_id = %request_id, path = %path, "the request matched no route");
            (metrics.unmatched(), AccessRoute::Unmatched)
        }
        None => (metrics.unmatched(), AccessRoute::Unmatched),
    };
    series.record_request(status, latency);
    if access_log::enabled() {
        access_log::record(AccessEntry {
            at,
            request_id,
            method,
            route: access_route,
            status,
            latency,
            call_id: response
                .headers()
                .get(names::X_CALL_ID)
                .and_then(CallIdText::new),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_request_id() {
        async fn boom(_: Request) -> Response<Body> {
            panic!("handler bug")
        }
        async fn fine(_: Request) -> Response<Body> {
            Response::new(Body::from("fine"))
        }
        let request = http::Request::get("/boom")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        let response = request_context(request, boom).await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "req-42");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "internal_error");
        assert_eq!(problem["request_id"], "req-42");
        let request = http::Request::get("/fine").body(Body::empty()).unwrap();
        let fine = request_context(request, fine).await;
        assert_eq!(fine.status(), 200);
        assert_eq!(fine.headers()["x-request-id"].len(), 32);
    }

    #[test]
    fn unmatched_paths_are_cut_for_the_log() {
        let short = RouteLabel::unmatched("/nope/x");
        assert!(matches!(&short, RouteLabel::Unmatched(p) if &**p == "/nope/x"));
        assert_eq!(short.to_string(), "-");
        let long = format!("/{}", "a".repeat(5000));
        match RouteLabel::unmatched(&long) {
            RouteLabel::Unmatched(p) => {
                assert_eq!(p.len(), UNMATCHED_PATH_MAX + 3);
                assert!(p.ends_with("..."));
            }
            _ => unreachable!(),
        }
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn only_sane_request_ids_are_kept() {
        assert_eq!(
            sane_request_id(&headers("x-request-id", "abc-123.x_y:z")).as_deref(),
            Some("abc-123.x_y:z")
        );
        assert!(sane_request_id(&headers("x-request-id", "has space")).is_none());
        assert!(sane_request_id(&headers("x-request-id", &"a".repeat(129))).is_none());
        assert!(sane_request_id(&HeaderMap::new()).is_none());
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(&headers("traceparent", incoming));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, incoming);
        let fresh = child_traceparent(&headers(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ));
        assert!(!fresh.contains("00000000000000000000000000000000"));
        assert_eq!(fresh.len(), 55);
    }
}
