//! The spawned-call routes: `POST /{app}/{function}/spawn` (and
//! `Prefer: respond-async`), `GET /calls/{id}` with `?wait=`, and
//! `DELETE /calls/{id}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tokio::time::Instant;

use super::AppState;
use super::admission::{self, Caller, PlainListener};
use super::handlers::{json_response, result_response};
use super::input;
use super::problem::ApiError;
use crate::backend::http::StoredRequest;
use crate::calls::{SpawnError, SpawnInput, SpawnOptions};
use crate::config::DEFAULT_TIMEOUT;
use crate::invocation::Trace;
use crate::registry::{Function, Lookup, Target};
use crate::store::{CallRecord, CallState, Cancelled, FailureKind, Outcome};

/// How long a client polling a pending call is asked to wait, in seconds.
const POLL_AFTER_SECONDS: u32 = 1;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Spawns a call. For a passthrough function, `suffix` is the path after
/// `/{app}/{function}` to forward to when the call runs.
pub async fn spawn(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    caller: &Caller,
    suffix: &str,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(idempotency_key(value)?),
    };
    let callback_url = match headers.get("callback-url") {
        None => None,
        Some(value) => Some(callback_url(state, value)?),
    };
    let base = external_base(&request);
    let (spawned, digest) = match &function.target {
        Target::Invoke(_) => {
            let arguments = input::arguments(state, function, request).await?;
            let digest = digest(&[arguments.args.as_bytes(), arguments.kwargs.as_bytes()]);
            (SpawnInput::Arguments(arguments), digest)
        }
        Target::Passthrough(_) => {
            let (parts, body) = request.into_parts();
            let body = input::read_body(
                parts.headers.get(header::CONTENT_LENGTH),
                body,
                input::body_limit(state, function),
            )
            .await?;
            let query = parts.uri.query().unwrap_or("");
            let digest = digest(&[
                parts.method.as_str().as_bytes(),
                suffix.as_bytes(),
                query.as_bytes(),
                &body,
            ]);
            (
                SpawnInput::Forward(StoredRequest::new(&parts, suffix, &body)),
                digest,
            )
        }
    };
    let idempotency = idempotency_key.map(|key| (key, digest));
    let options = SpawnOptions {
        owner: if function.spec.public {
            None
        } else {
            caller.owner()
        },
        principal: caller.principal(),
        idempotency,
        callback_url,
    };
    let accepted = state
        .calls
        .spawn(function, spawned, options)
        .await
        .map_err(|e| match e {
            SpawnError::BacklogFull => ApiError::Overloaded,
            SpawnError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            SpawnError::Store(e) => {
                tracing::error!(error = %e, "cannot store a spawned call");
                ApiError::StoreUnavailable
            }
        })?;
    let location = format!("/calls/{}", accepted.id);
    let body = serde_json::json!({
        "call_id": accepted.id,
        "status": accepted.state.as_str(),
        "status_url": format!("{base}{location}"),
    });
    let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&accepted.id) {
        headers.insert("x-call-id", value);
    }
    Ok(response)
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
fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context.finish().as_ref().to_vec()
}

/// `scheme://host[:port]` for the URLs a spawn answers with. On the TLS
/// listener it is `https` and the authority the client addressed
/// (`:authority` or `Host`) when that is a well-formed `host[:port]`;
/// `X-Forwarded-*` are ignored there, since any client can send them. Only
/// on `http_listen` (behind a TLS-terminating load balancer) do
/// `X-Forwarded-Proto` (`http` or `https`) and `X-Forwarded-Host` (a
/// well-formed `host[:port]`) count, each as one value. Anything else
/// falls back to `https` and `localhost`.
fn external_base(request: &Request) -> String {
    let headers = request.headers();
    let behind_proxy = request.extensions().get::<PlainListener>().is_some();
    let forwarded = |name| behind_proxy.then(|| single_value(headers, name)).flatten();
    let scheme = match forwarded("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
        _ => "https",
    };
    let host = forwarded("x-forwarded-host")
        .filter(|host| is_authority(host))
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .filter(|host| is_authority(host))
        .or_else(|| single_value(headers, header::HOST.as_str()))
        .filter(|host| is_authority(host))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// A header's value when it is sent once, as text (no lists).
fn single_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values
        .next()
        .is_none()
        .then(|| value.to_str().ok())
        .flatten()
}

/// A `host[:port]` as a client or load balancer writes it: a DNS name or
/// IPv4 address (letters, digits, `-`, `.`) or a bracketed IPv6 address,
/// and an optional port. No userinfo, no percent-encoding, no spaces.
fn is_authority(text: &str) -> bool {
    let (host_ok, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (host, port) = text.split_at(text.find(':').unwrap_or(text.len()));
            let name = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
            let ok = !host.is_empty() && host.len() <= 253 && host.bytes().all(name);
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        });
    host_ok && port_ok
}

/// The 303 a sync call past the sync wait answers with.
pub fn see_other(call_id: &str) -> Response<Body> {
    let mut response = json_response(
        StatusCode::SEE_OTHER,
        serde_json::json!({"call_id": call_id, "status": "running"}).to_string(),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("/calls/{call_id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(call_id) {
        response.headers_mut().insert("x-call-id", value);
    }
    response
}

/// True for what could be a call id; anything else is not looked up.
fn plausible_call_id(id: &str) -> bool {
    id.starts_with("fc-")
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET` or `DELETE /calls/{id}`.
pub async fn call(
    state: &AppState,
    id: &str,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::CallNotFound { id: id.to_owned() };
    let caller = admission::admit_reader(state, &request)?;
    let caller_owner = &caller.owner();
    // Someone else's call is answered exactly as one that does not exist.
    let read = |wait| async move {
        let record = state.calls.status(id, wait).await.map_err(|e| {
            tracing::error!(request_id = %trace.request_id, error = %e, "cannot read a call");
            ApiError::StoreUnavailable
        })?;
        match record {
            Some(record) if record.owner.is_none() || record.owner == *caller_owner => Ok(record),
            _ => Err(not_found()),
        }
    };
    match *request.method() {
        Method::GET | Method::HEAD => {
            let wait = wait_param(request.uri().query())?;
            if !plausible_call_id(id) {
                return Err(not_found());
            }
            let mut record = read(Duration::ZERO).await?;
            if let Some(wait) = wait.filter(|w| !w.is_zero() && !record.state.is_finished()) {
                record = read(wait).await?;
            }
            if wait.is_none() && record.from_sync && !record.state.is_finished() {
                // A client sent here by a sync call's 303 (curl -L, fetch)
                // waits for the result as long as the sync call did (or
                // max_wait, when longer), and is sent round again while
                // the call still runs, so it ends up with the result.
                let held_until = Instant::now() + state.sync_wait.max(state.calls.max_wait());
                while !record.state.is_finished() {
                    let now = Instant::now();
                    let left = held_until.saturating_duration_since(now);
                    if left.is_zero() {
                        break;
                    }
                    record = read(left).await?;
                    // Each read waits up to `max_wait`; one that ends early
                    // with the call still running means the gateway stops.
                    let read_until = now + left.min(state.calls.max_wait());
                    if !record.state.is_finished() && Instant::now() < read_until {
                        break;
                    }
                }
                if !record.state.is_finished() {
                    return Ok(see_other(id));
                }
            }
            render(state, trace, record)
        }
        Method::DELETE => {
            if !plausible_call_id(id) {
                return Err(not_found());
            }
            read(Duration::ZERO).await?;
            let answer = state.calls.cancel(id).await.map_err(|e| {
                tracing::error!(request_id = %trace.request_id, error = %e, "cannot cancel a call");
                ApiError::StoreUnavailable
            })?;
            match answer {
                Cancelled::Now(_) | Cancelled::AlreadyFinished(CallState::Cancelled) => {
                    Ok(json_response(
                        StatusCode::OK,
                        serde_json::json!({"call_id": id, "status": "cancelled"}).to_string(),
                    ))
                }
                Cancelled::AlreadyFinished(state) => Err(ApiError::CallFinished {
                    state: state.as_str(),
                }),
                Cancelled::NotFound => Err(not_found()),
            }
        }
        _ => Err(ApiError::MethodNotAllowed {
            allow: "GET, HEAD, DELETE".to_owned(),
        }),
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
    let (timeout, expose_errors) = match state.registry.lookup(&record.app, &record.function) {
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
            if let Ok(value) = HeaderValue::from_str(&record.id) {
                response.headers_mut().insert("x-call-id", value);
            }
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
            FailureKind::Backend => ApiError::BackendError,
        }),
        (CallState::TimedOut, _) => Err(ApiError::FunctionTimeout { timeout }),
        (CallState::Cancelled, _) => Err(ApiError::CallCancelled { id: record.id }),
        (state, _) => {
            let body = serde_json::json!({
                "call_id": record.id,
                "status": state.as_str(),
                "created_at": rfc3339(record.created_ms),
                "attempt": record.attempt,
            });
            let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECONDS));
            if let Ok(value) = HeaderValue::from_str(&record.id) {
                response.headers_mut().insert("x-call-id", value);
            }
            Ok(response)
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)], plain: bool) -> Request {
        let mut builder = http::Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(Body::empty()).unwrap();
        if plain {
            request.extensions_mut().insert(PlainListener);
        }
        request
    }

    #[test]
    fn the_tls_listener_ignores_forwarded_headers() {
        let forged = [
            ("host", "gw.example:8443"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
        ];
        assert_eq!(
            external_base(&request("/x/y/spawn", &forged, false)),
            "https://gw.example:8443"
        );
        // HTTP/2: the :authority.
        assert_eq!(
            external_base(&request("https://[::1]:8443/x/y", &[], false)),
            "https://[::1]:8443"
        );
        for bad in [
            "evil.example/x?",
            "a@b",
            "a b",
            "x:99999",
            "x:",
            "[zz]",
            "a_b.example",
        ] {
            let got = external_base(&request("/x", &[("host", bad)], false));
            assert_eq!(got, "https://localhost", "Host {bad:?}");
        }
    }

    #[test]
    fn the_plain_listener_takes_a_load_balancers_headers() {
        let lb = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "api.example.com"),
        ];
        assert_eq!(
            external_base(&request("/x", &lb, true)),
            "http://api.example.com"
        );
        let https = [("host", "10.0.0.5:8080"), ("x-forwarded-proto", "HTTPS")];
        assert_eq!(
            external_base(&request("/x", &https, true)),
            "https://10.0.0.5:8080"
        );
        // Malformed or listed values count as absent.
        let odd = [
            ("host", "api.example.com"),
            ("x-forwarded-proto", "javascript"),
            ("x-forwarded-host", "a.example, b.example"),
        ];
        assert_eq!(
            external_base(&request("/x", &odd, true)),
            "https://api.example.com"
        );
        let twice = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-proto", "https"),
            ("host", "api.example.com"),
        ];
        assert_eq!(
            external_base(&request("/x", &twice, true)),
            "https://api.example.com"
        );
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in [
            "localhost",
            "a.example:443",
            "127.0.0.1:8443",
            "[::1]",
            "[2001:db8::1]:80",
        ] {
            assert!(is_authority(good), "{good}");
        }
        for bad in [
            "", ":80", "a:b", "[::1", "[::1]x", "u@h", "h/p", "h%2e", "h:123456", "h:",
        ] {
            assert!(!is_authority(bad), "{bad}");
        }
    }
}
