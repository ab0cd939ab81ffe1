//! `GET /_/health` (the process answers) and `GET /_/ready` (it should
//! get traffic: its store works and it is not draining). Neither needs
//! credentials: load balancers and orchestrators call them.

use axum::body::Body;
use axum::extract::Request;
use http::{Response, StatusCode};

use crate::http::input::only_get;
use crate::http::problem::ApiError;
use crate::http::respond::json_response;
use crate::http::state::AppState;

/// `GET /_/health`: answers whenever the gateway answers at all.
pub fn health(request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request.method())?;
    Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#))
}

/// `GET /_/ready`: 503 once the store failed or a drain began.
pub fn ready(state: &AppState, request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request.method())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::state;
    use http::Method;

    fn request(method: Method, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    async fn status_of(response: Response<Body>) -> (u16, serde_json::Value) {
        use http_body_util::BodyExt;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_and_readiness_answer() {
        let (status, body) = status_of(health(&request(Method::GET, "/_/health")).unwrap()).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        let state = state::for_tests();
        let ready_now = ready(&state, &request(Method::GET, "/_/ready")).unwrap();
        let (status, body) = status_of(ready_now).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
        state.start_draining();
        let draining = ready(&state, &request(Method::HEAD, "/_/ready")).unwrap();
        let (status, body) = status_of(draining).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
        let refused = health(&request(Method::POST, "/_/health"));
        assert!(matches!(refused, Err(ApiError::MethodNotAllowed { .. })));
    }
}
