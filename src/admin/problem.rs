//! What the admin API answers when a request fails: problem details as
//! on the public listener (DESIGN.md's members and codes), plus `key` on a
//! refused deploy, naming the key exactly as the file's validation would.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{ConfigError, OverlayKind};
use crate::http::problem::{ApiError, Problem};
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

    /// The problem+json answer, with the admin's codes and, on a refused
    /// deploy, the `key` it names.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let key = match &self {
            AdminError::InvalidConfig { key, .. } => Some(key.as_str()),
            _ => None,
        };
        let request_id = request_id();
        let mut response = Problem::new(status, code, self.to_string(), &request_id)
            .with_key(key)
            .into_response();
        let headers = response.headers_mut();
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    async fn body_of(response: Response<Body>) -> serde_json::Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_refused_deploy_names_its_key_with_the_admin_code() {
        let refused = AdminError::InvalidConfig {
            key: "apps.demo.functions.power.timeout".to_owned(),
            message: "'soon' is not a duration".to_owned(),
        };
        let response = REQUEST_ID
            .scope(Arc::from("req-7"), async { refused.into_response() })
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"about:blank","title":"Bad Request","status":400,"code":"invalid_config","detail":"apps.demo.functions.power.timeout: 'soon' is not a duration","request_id":"req-7","key":"apps.demo.functions.power.timeout"}"#
        );
    }

    #[tokio::test]
    async fn admin_codes_carry_their_headers_and_no_key() {
        let missing = AdminError::VersionNotFound {
            app: "demo".to_owned(),
            name: "power".to_owned(),
            version: 9,
        }
        .into_response();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let problem = body_of(missing).await;
        assert_eq!(problem["code"], "version_not_found");
        assert_eq!(problem["detail"], "demo/power has no version 9");
        assert!(problem.get("key").is_none() && problem.get("error").is_none());

        let busy = AdminError::StoreUnavailable.into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body_of(busy).await["code"], "overloaded");

        let method = AdminError::MethodNotAllowed { allow: "GET, PUT" }.into_response();
        assert_eq!(method.headers()[header::ALLOW], "GET, PUT");
        assert_eq!(body_of(method).await["code"], "method_not_allowed");
    }
}
