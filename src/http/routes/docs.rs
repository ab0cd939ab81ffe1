//! `GET /_/openapi.json` (the OpenAPI 3.1 document of what is deployed
//! now, built per request from the registry serving it) and `GET /_/docs`
//! (a self-contained page that renders it). Both are public, as
//! `/_/health` is: the document lists routes, never credentials.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderValue, Response, StatusCode, header};

use crate::http::base_url;
use crate::http::input::only_get;
use crate::http::page::Page;
use crate::http::problem::ApiError;
use crate::http::respond::json_response;
use crate::http::state::AppState;
use crate::openapi::{self, AuthSchemes, Settings};

/// The page's markup; `{style}` and `{script}` mark where its CSS and
/// JavaScript go, inline.
const PAGE: &str = include_str!("docs.html");
const STYLE: &str = include_str!("docs.css");
const SCRIPT: &str = include_str!("docs.js");

/// `GET /_/openapi.json`.
pub fn openapi(state: &AppState, request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request.method())?;
    let settings = Settings {
        server_url: base_url::external_base(request),
        auth: state.auth.as_ref().map(|auth| AuthSchemes {
            jwt: auth.accepts_jwts(),
            api_keys: auth.accepts_api_keys(),
        }),
        rate_limited: state.rate_limiter.is_some(),
        webhooks: state.webhooks.is_some(),
    };
    let registry = state.registry.current();
    let document = openapi::document(&registry, &settings);
    let mut response = json_response(StatusCode::OK, document.to_string());
    // It changes with every deploy and reload.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `GET /_/docs`: the page, under a policy that runs its own inline
/// script and style (by hash) and nothing else, and lets it fetch from
/// this origin only.
pub fn docs(request: &Request) -> Result<Response<Body>, ApiError> {
    only_get(request.method())?;
    Ok(page().response())
}

/// The page, put together once.
fn page() -> &'static Page {
    static PAGE_ONCE: OnceLock<Page> = OnceLock::new();
    PAGE_ONCE.get_or_init(|| Page::new(PAGE, STYLE, SCRIPT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::page::sha256_source;
    use crate::http::state;
    use http::Method;
    use http_body_util::BodyExt;

    fn request(method: Method, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "gw.example:8443")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn the_document_lists_what_is_deployed_and_where_it_is_served() {
        let state = state::for_tests();
        let response = openapi(&state, &request(Method::GET, "/_/openapi.json")).unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(document["servers"][0]["url"], "https://gw.example:8443");
        assert!(document["paths"]["/demo/square"]["get"].is_object());
        let refused = openapi(&state, &request(Method::POST, "/_/openapi.json"));
        assert!(matches!(refused, Err(ApiError::MethodNotAllowed { .. })));
    }

    #[test]
    fn the_page_runs_only_its_own_inline_script_and_style() {
        let response = docs(&request(Method::GET, "/_/docs")).unwrap();
        let headers = response.headers();
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains(&format!("script-src '{}'", sha256_source(SCRIPT))));
        assert!(policy.contains("default-src 'none'"));
        assert!(!policy.contains("unsafe-inline"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let html = &page().html;
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(!html.contains("{script}") && !html.contains("{style}"));
    }
}
