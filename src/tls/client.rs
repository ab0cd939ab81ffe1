//! The client side of TLS, for fngate's own clients of a gateway (`fngate
//! call`, `deploy`, `check` and `fngate worker`): the CA certificates they
//! trust, their HTTPS client (HTTP/1.1 or h2 by ALPN over rustls), and
//! whether a failed request means the gateway's certificate was refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How long a connection to the gateway may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS client of the gateway, sending whole bodies.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client trusting `roots`: TLS 1.2 and 1.3 (aws-lc-rs), ALPN `h2` and
/// `http/1.1`, idle connections kept for hyper's default 90 s.
pub fn https_client(roots: RootCertStore) -> HttpsClient {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .with_root_certificates(roots)
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
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// The system's CA certificates; those rustls cannot use are skipped, and
/// the store is empty when none are found (the caller decides whether to
/// say so).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// The CA certificates of the PEM file at `path`. The error says why the
/// file cannot serve; the caller names the file with the flag it came from.
pub fn roots_from_pem(path: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate cannot be trusted: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(roots)
}

/// Whether `error` or one of its causes is a certificate the client does
/// not trust (which trying again does not mend).
pub fn is_untrusted(error: &(dyn std::error::Error + 'static)) -> bool {
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

/// An error and its causes on one line, each cause once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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
    fn a_ca_file_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["fngate test CA".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&good, ca.pem()).unwrap();
        assert_eq!(roots_from_pem(&good).unwrap().len(), 1);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        assert_eq!(
            roots_from_pem(&empty).map(|r| r.len()),
            Err("holds no PEM certificate".to_owned())
        );
        let missing = roots_from_pem(&dir.path().join("missing.pem")).map(|r| r.len());
        assert!(
            matches!(&missing, Err(why) if why.contains("No such file")),
            "{missing:?}"
        );
    }

    #[test]
    fn an_untrusted_certificate_is_found_under_io_errors() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(std::io::Error::other(refused));
        assert!(is_untrusted(&wrapped));
        let other = std::io::Error::other(rustls::Error::DecryptError);
        assert!(!is_untrusted(&other));
        assert!(!is_untrusted(&std::io::Error::other("connection refused")));
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&error), "request failed: connection refused");

        #[derive(Debug, thiserror::Error)]
        #[error("request failed: connection refused")]
        struct Repeating(#[source] std::io::Error);
        let error = Repeating(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&error), "request failed: connection refused");
    }
}
