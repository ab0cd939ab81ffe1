//! TLS for the listener: the configured PEM chain and key, or the dev CA
//! and leaf certificate of `dev_ca`. TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, session resumption on unless turned off. `client` is the
//! other side, for fngate's own clients of a gateway.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;
use crate::invocation::Principal;

pub mod client;
mod dev_ca;

pub use dev_ca::{DevCertificate, ensure_dev_certificate};

/// The TLS configuration serving now, swapped whole by a reload: each
/// handshake takes the one of its moment, so the next handshake after a
/// reload sees the new certificate and no open connection is touched.
pub struct LiveTls(arc_swap::ArcSwap<ServerConfig>);

impl LiveTls {
    pub fn new(config: Arc<ServerConfig>) -> Arc<LiveTls> {
        Arc::new(LiveTls(arc_swap::ArcSwap::new(config)))
    }

    /// What the next handshake uses.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }

    /// Serves `next` from the next handshake on. It takes over the
    /// session ticket key and cache, so clients resume across reloads.
    pub fn replace(&self, next: Arc<ServerConfig>) {
        let mut next = Arc::unwrap_or_clone(next);
        let current = self.0.load();
        if next.send_tls13_tickets > 0 && current.send_tls13_tickets > 0 {
            next.ticketer = current.ticketer.clone();
            next.session_storage = current.session_storage.clone();
        }
        self.0.store(Arc::new(next));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("generating the dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the server's TLS configuration, generating the dev certificate
/// when none is configured, and requiring client certificates signed by
/// `client_ca` when given. With `session_resumption` off every handshake
/// is a full one (no tickets, no session cache). Returns the dev CA's path
/// when one is in use.
pub fn server_config(
    source: &TlsSource,
    client_ca: Option<&Path>,
    session_resumption: bool,
) -> Result<(Arc<ServerConfig>, Option<PathBuf>), TlsError> {
    let (cert, key, dev_ca) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), None),
        TlsSource::Dev { dir } => {
            let dev = ensure_dev_certificate(dir)?;
            (dev.cert, dev.key, Some(dev.ca))
        }
    };
    let chain = load_chain(&cert)?;
    let key = load_key(&key)?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_error(path, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if session_resumption {
        // TLS 1.3 resumes with tickets; TLS 1.2 clients without ticket
        // support use the session cache.
        config.ticketer = aws_lc_rs::Ticketer::new()?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok((Arc::new(config), dev_ca))
}

/// The principal a verified client certificate stands for: its subject
/// (e.g. `CN=reports, O=Acme`) and its issuer.
pub fn client_principal(certificates: &[CertificateDer<'_>]) -> Option<Principal> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificates.first()?).ok()?;
    Some(Principal {
        subject: certificate.subject().to_string(),
        issuer: Some(certificate.issuer().to_string()),
    })
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if chain.is_empty() {
        return Err(file_error(path, "no PEM certificate in this file"));
    }
    Ok(chain)
}

/// Reads a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(contents).map_err(|e| file_error(path, e))
}
