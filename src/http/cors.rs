//! CORS for browsers on other origins: preflights are answered here,
//! before any handler, credential check or backend; responses carry the
//! headers a page needs to read (`Location`, `Retry-After`, ids).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, request};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{AllowedOrigins, CorsConfig};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer, when any origin is allowed anywhere.
pub fn layer(config: &CorsConfig) -> Option<CorsLayer> {
    if config.default.is_none() && config.apps.is_empty() {
        return None;
    }
    let config = Arc::new(config.clone());
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, parts: &request::Parts| {
        allowed(&config, origin, parts.uri.path())
    });
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("prefer"),
                HeaderName::from_static("callback-url"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-call-id"),
                HeaderName::from_static("preference-applied"),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// An app's own list when it has one, else `[cors]`'s; `/calls/...` and
/// `/_/...` serve every app, so any allowed origin may use them.
fn allowed(config: &CorsConfig, origin: &HeaderValue, path: &str) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    let admits = |origins: &AllowedOrigins| match origins {
        AllowedOrigins::Any => true,
        AllowedOrigins::List(list) => list.contains(&origin),
    };
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if first == "calls" || first == "_" {
        return config
            .default
            .iter()
            .chain(config.apps.values())
            .any(admits);
    }
    match config.apps.get(first) {
        Some(origins) => admits(origins),
        None => config.default.as_ref().is_some_and(admits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config() -> CorsConfig {
        let mut apps = BTreeMap::new();
        apps.insert(
            "shop".to_owned(),
            AllowedOrigins::List(vec!["https://shop.example".into()]),
        );
        CorsConfig {
            default: Some(AllowedOrigins::List(vec!["https://app.example".into()])),
            apps,
        }
    }

    #[test]
    fn apps_use_their_own_origins_and_shared_routes_any_listed_one() {
        let config = config();
        let origin = |o: &'static str| HeaderValue::from_static(o);
        assert!(allowed(
            &config,
            &origin("https://app.example"),
            "/demo/square"
        ));
        assert!(allowed(
            &config,
            &origin("https://APP.example"),
            "/demo/square"
        ));
        assert!(!allowed(
            &config,
            &origin("https://shop.example"),
            "/demo/square"
        ));
        assert!(allowed(
            &config,
            &origin("https://shop.example"),
            "/shop/buy"
        ));
        assert!(!allowed(
            &config,
            &origin("https://app.example"),
            "/shop/buy"
        ));
        assert!(allowed(
            &config,
            &origin("https://shop.example"),
            "/calls/fc-1"
        ));
        assert!(allowed(
            &config,
            &origin("https://app.example"),
            "/calls/fc-1"
        ));
        assert!(!allowed(
            &config,
            &origin("https://evil.example"),
            "/calls/fc-1"
        ));
        assert!(!allowed(&config, &origin("null"), "/demo/square"));
    }
}
