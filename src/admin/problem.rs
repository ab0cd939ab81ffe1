//! What the admin API answers when a request fails: problem details as
//! on the public listener (DESIGN.md's members and codes), plus `key` on a
//! refused deploy, naming the key exactly as the file's validation would.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{ConfigError, OverlayKind};
use crate::http::problem::ApiError;
use crate::reload::ReloadError;
use crate::store::deploys::kind_name;

tokio::task_local! {
    /// The id of the admin request being answered (`X-Request-Id`).
    pub static REQUEST_ID: std::sync::Arc<str>;
}

/// The request id of the moment (a new one outside a request).
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_string())
        .unwrap_or_else(|_| crate::invocation::random_hex::<16>())
}

/// Every way an admin request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no app '{app}'")]
    AppNotFound { app: String },
    #[error("no {} '{name}' in app '{app}'", kind_name(*.kind))]
    NotFound {
        app: String,
        kind: OverlayKind,
        name: String,
    },
    #[error("{app}/{name} has no version {version}")]
    VersionNotFound {
        app: String,
        name: String,
        version: u64,
    },
    #[error("{app}/{name} has no deployed version before the current one to roll back to")]
    NothingToRollBack { app: String, name: String },
    /// The deployed table makes a configuration the file's validation refuses.
    #[error("{key}: {message}")]
    InvalidConfig { key: String, message: String },
    #[error("{0}")]
    InvalidJson(String),
    #[error("no admin route {0}")]
    NoRoute(String),
    #[error("this route allows only {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the call store cannot record this deploy now; nothing was changed, retry later")]
    StoreUnavailable,
    #[error("the gateway failed while handling this request")]
    Internal,
}

/// Problem details, members in the order DESIGN.md shows them.
#[derive(serde::Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: String,
    request_id: String,
    /// The configuration key a refused deploy names.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::AppNotFound { .. } => (StatusCode::NOT_FOUND, "app_not_found"),
            AdminError::NotFound { .. } => (StatusCode::NOT_FOUND, "function_not_found"),
            AdminError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
            AdminError::NothingToRollBack { .. } => (StatusCode::CONFLICT, "no_earlier_version"),
            AdminError::InvalidConfig { .. } => (StatusCode::BAD_REQUEST, "invalid_config"),
            AdminError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            AdminError::NoRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            AdminError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AdminError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            AdminError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The problem+json answer.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let key = match &self {
            AdminError::InvalidConfig { key, .. } => Some(key.as_str()),
            _ => None,
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: self.to_string(),
            request_id: request_id(),
            key,
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serialises");
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        if let AdminError::MethodNotAllowed { allow } = &self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<ReloadError> for AdminError {
    fn from(error: ReloadError) -> AdminError {
        match error {
            ReloadError::Config(ConfigError::Invalid { key, message, .. }) => {
                AdminError::InvalidConfig { key, message }
            }
            other => {
                tracing::error!(error = %other, "admin: a deploy failed");
                AdminError::Internal
            }
        }
    }
}

/// 401 with `WWW-Authenticate: Bearer`, as the public listener answers.
pub fn unauthorized(description: Option<&str>) -> Response<Body> {
    ApiError::Unauthorized {
        description: description.map(str::to_owned),
    }
    .into_problem(&request_id())
}
