//! Self-contained HTML pages (the OpenAPI docs page, the admin console):
//! markup with its CSS and JavaScript inline, served under a
//! `Content-Security-Policy` that runs exactly that script and style (by
//! hash), lets the page fetch from its own origin only, and forbids
//! framing it.

use axum::body::Body;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Response, header};

/// A page and its policy, put together once (keep it in a `OnceLock`).
pub(crate) struct Page {
    pub(crate) html: String,
    pub(crate) policy: String,
}

impl Page {
    /// `markup` with its `{style}` and `{script}` marks replaced by
    /// `style` and `script`, under a policy that allows those two alone.
    pub(crate) fn new(markup: &str, style: &str, script: &str) -> Page {
        Page {
            html: markup.replace("{style}", style).replace("{script}", script),
            policy: format!(
                "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                sha256_source(script),
                sha256_source(style)
            ),
        }
    }

    /// The page as a `200 text/html` answer with its policy and the
    /// headers of [`guard`]; the body borrows the page, never copied.
    pub(crate) fn response(&'static self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.html.as_str()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(policy) = HeaderValue::from_str(&self.policy) {
            headers.insert(header::CONTENT_SECURITY_POLICY, policy);
        }
        guard(headers);
        response
    }
}

/// What a page (and the JSON it reads) is answered with: no MIME
/// sniffing, no `Referer` sent on, never shown in a frame.
pub(crate) fn guard(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A CSP hash source of an inline element's exact text.
pub(crate) fn sha256_source(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!("sha256-{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    #[test]
    fn a_page_runs_only_its_own_inline_script_and_style() {
        let (style, script) = ("p { margin: 0 }", "document.title = 'x';");
        static PAGE: OnceLock<Page> = OnceLock::new();
        let page = PAGE.get_or_init(|| {
            Page::new(
                "<style>{style}</style><p>hi</p><script>{script}</script>",
                style,
                script,
            )
        });
        assert_eq!(
            page.html,
            "<style>p { margin: 0 }</style><p>hi</p><script>document.title = 'x';</script>"
        );
        // The hash of the empty string, as every CSP reference lists it.
        assert_eq!(
            sha256_source(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        let response = page.response();
        let headers = response.headers();
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert_eq!(policy, page.policy);
        assert!(policy.starts_with("default-src 'none'; "));
        assert!(policy.contains(&format!("script-src '{}';", sha256_source(script))));
        assert!(policy.contains(&format!("style-src '{}';", sha256_source(style))));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe-inline"));
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    }
}
