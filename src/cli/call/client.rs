//! `fngate call`'s HTTPS client: HTTP/1.1 or h2 by ALPN over rustls,
//! trusting the dev CA next to the config and the system's roots (or only
//! `--cacert`), with the caller's Bearer token on every request.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::CallError;
use crate::tls::client::{self as tls, HttpsClient};

/// The largest answer read whole (a result, a problem); NDJSON answers
/// are printed line by line instead. Well above any gateway's `max_body`.
const MAX_ANSWER: usize = 256 << 20;

/// The dev CA a gateway generates next to its config.
const DEV_CA: &str = "certs/dev-ca.pem";

/// One gateway, as `fngate call` talks to it.
pub struct GatewayClient {
    http: HttpsClient,
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
        Ok(GatewayClient {
            http: tls::https_client(roots(trust)?),
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
    let why = tls::error_chain(error);
    if tls::is_untrusted(error) {
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
    let mut roots = tls::system_roots();
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

/// The CA certificates of the PEM file at `path`, which `what` names in
/// the message when it cannot serve.
fn roots_from_pem(path: &Path, what: &str) -> Result<rustls::RootCertStore, CallError> {
    tls::roots_from_pem(path)
        .map_err(|why| CallError::Usage(format!("{what} {}: {why}", path.display())))
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
