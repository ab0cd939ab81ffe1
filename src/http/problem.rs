//! Errors as clients see them: every `ApiError` variant maps to one status
//! and one stable `code`, rendered as RFC 9457 problem details.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use crate::backend::BackendError;
use crate::translate::TranslateError;

/// Every way a request can fail, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no app '{app}'")]
    AppNotFound { app: String },
    #[error("no function '{function}' in app '{app}'")]
    FunctionNotFound { app: String, function: String },
    #[error("no call '{id}'")]
    CallNotFound { id: String },
    #[error("the call '{id}' was cancelled")]
    CallCancelled { id: String },
    #[error("the call already ended: {state}")]
    CallFinished { state: &'static str },
    #[error("this Idempotency-Key was already used with another request")]
    IdempotencyMismatch,
    #[error("{}", .description.as_deref().unwrap_or("credentials are required: Authorization: Bearer <token or API key>"))]
    Unauthorized { description: Option<String> },
    #[error("the credentials do not grant {scope}")]
    Forbidden { scope: String },
    /// A call token used for a function its calling function's `may_call`
    /// does not list.
    #[error("{caller} may not call {target}: its may_call does not list it")]
    NotInMayCall { caller: String, target: String },
    #[error("function-to-function calls nest at most {max_depth} deep (max_call_depth)")]
    LoopDetected { max_depth: u32 },
    #[error("too many requests; retry in {} s", retry_after_seconds(*.retry_after))]
    RateLimited { retry_after: Duration },
    #[error("this route allows only {allow}")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidArguments(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("a map takes at most {limit} inputs (max_map_inputs)")]
    TooManyInputs { limit: usize },
    #[error("this input is larger than the limit of {limit} bytes")]
    InputTooLarge { limit: u64 },
    #[error("the function failed with {kind}")]
    FunctionError { kind: String, message: String },
    #[error(
        "the function's backend is unreachable, crashed or answered something that is not a result"
    )]
    BackendError,
    #[error("{0}")]
    NotWorkable(String),
    #[error("the function's instance failed to start: its init reported {kind}")]
    InstanceInitFailed { kind: String },
    /// A reload or a deploy removed the function before the call ran.
    #[error("the function was removed from the gateway before this call ran")]
    FunctionRemoved,
    #[error("the function is at its concurrency and queue limits; retry later")]
    Overloaded,
    #[error("the function ran past its timeout of {}", humantime::format_duration(*timeout))]
    FunctionTimeout { timeout: Duration },
    #[error("the request body stalled: no bytes for too long, or too few per second")]
    RequestTimeout,
    #[error("the call store cannot take this request now; retry later")]
    StoreUnavailable,
    #[error("the gateway failed while handling this request")]
    Internal,
}

/// RFC 9457 problem details, members in the order DESIGN.md shows them:
/// what the gateway answers an [`ApiError`] with, and what the admin API
/// builds its own codes into.
#[derive(serde::Serialize)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    #[serde(serialize_with = "status_number")]
    status: StatusCode,
    code: &'static str,
    detail: String,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ReportedError<'a>>,
    /// The configuration key a refused configuration names (the admin
    /// API's `invalid_config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

impl<'a> Problem<'a> {
    /// The problem of `status`, with `code` and `detail`, answering the
    /// request `request_id`; its title is the status's reason.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: String,
        request_id: &'a str,
    ) -> Problem<'a> {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status,
            code,
            detail,
            request_id,
            error: None,
            key: None,
        }
    }

    /// The problem naming the configuration key `key`, when given.
    pub fn with_key(self, key: Option<&'a str>) -> Problem<'a> {
        Problem { key, ..self }
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a problem always serialises")
    }

    /// The `application/problem+json` answer with the problem's status;
    /// the caller adds the headers its error calls for.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.to_json()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

fn status_number<S: serde::Serializer>(status: &StatusCode, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_u16(status.as_u16())
}

/// The function's own error, as it reported it.
#[derive(serde::Serialize)]
struct ReportedError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// A wait in whole seconds for `Retry-After`, never 0.
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// How long an overloaded caller is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u32 = 1;

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::AppNotFound { .. } => (StatusCode::NOT_FOUND, "app_not_found"),
            ApiError::FunctionNotFound { .. } => (StatusCode::NOT_FOUND, "function_not_found"),
            ApiError::CallNotFound { .. } => (StatusCode::NOT_FOUND, "call_not_found"),
            ApiError::CallCancelled { .. } => (StatusCode::GONE, "call_cancelled"),
            ApiError::CallFinished { .. } => (StatusCode::CONFLICT, "call_finished"),
            ApiError::IdempotencyMismatch => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_mismatch")
            }
            ApiError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { .. } | ApiError::NotInMayCall { .. } => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            ApiError::LoopDetected { .. } => (StatusCode::LOOP_DETECTED, "loop_detected"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidArguments(_) => (StatusCode::BAD_REQUEST, "invalid_arguments"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge { .. }
            | ApiError::TooManyInputs { .. }
            | ApiError::InputTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::FunctionError { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "function_error"),
            ApiError::NotWorkable(_) => (StatusCode::CONFLICT, "not_workable"),
            ApiError::BackendError
            | ApiError::InstanceInitFailed { .. }
            | ApiError::FunctionRemoved => (StatusCode::BAD_GATEWAY, "backend_error"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::FunctionTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "function_timeout"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The problem details of this error as JSON (one line), as a
    /// problem+json body or a map input's `error` member carries them.
    pub fn problem_json(&self, request_id: &str) -> Vec<u8> {
        self.problem(request_id).to_json()
    }

    fn problem<'a>(&'a self, request_id: &'a str) -> Problem<'a> {
        let (status, code) = self.status_and_code();
        let error = match self {
            ApiError::FunctionError { kind, message } => Some(ReportedError { kind, message }),
            _ => None,
        };
        Problem {
            error,
            ..Problem::new(status, code, self.to_string(), request_id)
        }
    }

    /// The problem+json response for this error.
    pub fn into_problem(self, request_id: &str) -> Response<Body> {
        let mut response = self.problem(request_id).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, value);
                }
            }
            ApiError::Unauthorized { description } => {
                let challenge = match description {
                    None => "Bearer realm=\"fngate\"".to_owned(),
                    Some(why) => format!(
                        "Bearer realm=\"fngate\", error=\"invalid_token\", error_description=\"{}\"",
                        why.replace(['"', '\\'], "'")
                    ),
                };
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::Forbidden { scope } => {
                let challenge = format!(
                    "Bearer realm=\"fngate\", error=\"insufficient_scope\", scope=\"{scope}\""
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::RateLimited { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds(*retry_after)),
                );
            }
            ApiError::Overloaded | ApiError::StoreUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            ApiError::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<TranslateError> for ApiError {
    fn from(error: TranslateError) -> ApiError {
        match error {
            TranslateError::InvalidJson(m) => ApiError::InvalidJson(m),
            TranslateError::InvalidArguments(m) => ApiError::InvalidArguments(m),
            TranslateError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
        }
    }
}

/// The message a client gets instead of a function's own when the
/// function has `expose_errors = false`.
pub const WITHHELD_MESSAGE: &str = "the function's error message is withheld (expose_errors = false); the gateway's log has it under this request id";

impl ApiError {
    /// A function error with its message replaced by [`WITHHELD_MESSAGE`]
    /// unless `expose` (the function's `expose_errors`); the error type
    /// stays. Any other error is returned as it is.
    pub fn exposing(self, expose: bool) -> ApiError {
        match self {
            ApiError::FunctionError { kind, .. } if !expose => ApiError::FunctionError {
                kind,
                message: WITHHELD_MESSAGE.to_owned(),
            },
            other => other,
        }
    }

    /// The client's view of a backend failure; the details stay in the log.
    pub fn from_backend(error: BackendError, timeout: Duration) -> ApiError {
        match error {
            BackendError::Function { kind, message } => ApiError::FunctionError { kind, message },
            BackendError::Unreachable(_) | BackendError::Crashed(_) | BackendError::Garbage(_) => {
                ApiError::BackendError
            }
            BackendError::InitFailed { kind, .. } => ApiError::InstanceInitFailed { kind },
            BackendError::Timeout => ApiError::FunctionTimeout { timeout },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_has_the_contract_fields() {
        let response = ApiError::FunctionNotFound {
            app: "demo".into(),
            function: "sq".into(),
        }
        .into_problem("req-1");
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            problem,
            serde_json::json!({"type": "about:blank", "title": "Not Found", "status": 404,
                "code": "function_not_found", "detail": "no function 'sq' in app 'demo'", "request_id": "req-1"})
        );
    }

    #[tokio::test]
    async fn function_errors_carry_type_and_message() {
        let response = ApiError::FunctionError {
            kind: "ValueError".into(),
            message: "bad x".into(),
        }
        .into_problem("r");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            problem["error"],
            serde_json::json!({"type": "ValueError", "message": "bad x"})
        );
        assert_eq!(problem["status"], 500);
    }

    #[test]
    fn withheld_function_errors_keep_only_their_type() {
        let error = || ApiError::FunctionError {
            kind: "ValueError".into(),
            message: "Traceback (most recent call last):\n  File \"/srv/app/f.py\"".into(),
        };
        match error().exposing(false) {
            ApiError::FunctionError { kind, message } => {
                assert_eq!(kind, "ValueError");
                assert_eq!(message, WITHHELD_MESSAGE);
            }
            other => panic!("{other:?}"),
        }
        match error().exposing(true) {
            ApiError::FunctionError { message, .. } => assert!(message.contains("/srv/app")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ApiError::BackendError.exposing(false),
            ApiError::BackendError
        ));
    }

    #[test]
    fn overload_and_method_errors_carry_their_headers() {
        let overloaded = ApiError::Overloaded.into_problem("r");
        assert_eq!(overloaded.status(), 503);
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "1");
        let method = ApiError::MethodNotAllowed {
            allow: "GET, POST".into(),
        }
        .into_problem("r");
        assert_eq!(method.headers()[header::ALLOW], "GET, POST");
    }
}
