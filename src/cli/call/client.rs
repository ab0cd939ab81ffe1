//! `fngate call`'s HTTPS client: HTTP/1.1 or h2 by ALPN over rustls,
//! trusting the dev CA next to the config and the system's roots (or only
//! `--cacert`), with the caller's Bearer token on every request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::CallError;

/// How long a connection to the gateway may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read whole (a result, a problem); NDJSON answers
/// are printed line by line instead. Well above any gateway's `max_body`.
const MAX_ANSWER: usize = 256 << 20;

/// The dev CA a gateway generates next to its config.
const DEV_CA: &str = "certs/dev-ca.pem";

type Https = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One gateway, as `fngate call` talks to it.
pub struct GatewayClient {
    http: Https,
    authorization: Option<HeaderValue>,
}

/// What the client trusts, for messages when a handshake fails.
#[derive(Debug, Clone)]
pub struct Trust {
    pub cacert: Option<std::path::PathBuf>,
    /// The dev CA found next to the config, when `--cacert` is not given.
    pub dev_ca: Option<std::path::PathBuf>,
}

impl GatewayClient {
    /// A client trusting `trust`, sending `token` (when given) as a Bearer
    /// credential.
    pub fn new(trust: &Trust, token: Option<&str>) -> Result<GatewayClient, CallError> {
        let authorization = match token {
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        CallError::Usage(
                            "FNGATE_TOKEN holds characters a header cannot carry".to_owned(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default protocol versions")
            .with_root_certificates(roots(trust)?)
            .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(GatewayClient {
            http,
            authorization,
        })
    }

    /// Sends one request and returns the answer's head, its body still to
    /// be read. `within` bounds the wait for the head.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        body: Option<(&'static str, Bytes)>,
        accept: Option<&'static str>,
        within: Option<Duration>,
    ) -> Result<Response<Incoming>, CallError> {
        let mut request = Request::builder().method(method).uri(uri.clone()).header(
            header::USER_AGENT,
            concat!("fngate-call/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let body = match body {
            Some((content_type, bytes)) if !bytes.is_empty() => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            _ => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Usage(format!("cannot build the request to {uri}: {e}")))?;
        let exchange = self.http.request(request);
        let answer = match within {
            Some(within) => tokio::time::timeout(within, exchange).await.map_err(|_| {
                CallError::Unreachable(format!(
                    "{uri}: no answer within {}",
                    humantime::format_duration(within)
                ))
            })?,
            None => exchange.await,
        };
        answer.map_err(|e| unreachable(uri, &e))
    }
}

/// Reads a whole answer body.
pub async fn read_body(body: Incoming) -> Result<Bytes, CallError> {
    Ok(Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| CallError::Unreachable(format!("reading the answer: {e}")))?
        .to_bytes())
}

/// Why a request got no answer: the gateway cannot be reached, or its
/// certificate is not trusted (with what to do about it).
fn unreachable(uri: &Uri, error: &(dyn std::error::Error + 'static)) -> CallError {
    let why = error_chain(error);
    if is_untrusted(error) {
        return CallError::Untrusted(format!("{uri}: {why}"));
    }
    CallError::Unreachable(format!("{uri}: {why}"))
}

/// The CA certificates of `--cacert` only; otherwise the system's roots and
/// the dev CA next to the config when it is there.
fn roots(trust: &Trust) -> Result<rustls::RootCertStore, CallError> {
    if let Some(path) = &trust.cacert {
        return roots_from_pem(path, "--cacert");
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(dev_ca) = &trust.dev_ca {
        for cert in roots_from_pem(dev_ca, "the dev CA")?.roots {
            roots.roots.push(cert);
        }
    }
    Ok(roots)
}

/// The dev CA next to `config` (`certs/dev-ca.pem` in its folder), when
/// the file is there.
pub fn dev_ca_next_to(config: &Path) -> Option<std::path::PathBuf> {
    let folder = match config.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let path = folder.join(DEV_CA);
    path.is_file().then_some(path)
}

fn roots_from_pem(path: &Path, what: &str) -> Result<rustls::RootCertStore, CallError> {
    let bad = |why: String| CallError::Usage(format!("{what} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate cannot be trusted: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(roots)
}

/// Whether `error` or one of its causes is a certificate the client does
/// not trust.
fn is_untrusted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(tls_error(error), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        next = error.source();
    }
    false
}

/// The TLS error `error` is, or wraps in I/O errors (whose `source()`
/// skips the error they wrap).
fn tls_error<'a>(mut error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        error = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_ca_is_looked_for_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        assert_eq!(dev_ca_next_to(&config), None);
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join(DEV_CA), "x").unwrap();
        assert_eq!(dev_ca_next_to(&config), Some(dir.path().join(DEV_CA)));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for path in [empty, dir.path().join("missing.pem")] {
            match roots_from_pem(&path, "--cacert") {
                Err(CallError::Usage(why)) => assert!(why.starts_with("--cacert "), "{why}"),
                other => panic!("{}: {:?}", path.display(), other.map(|r| r.len())),
            }
        }
    }
}
