//! TLS for the listener: the configured PEM chain and key, or a dev CA and
//! leaf certificate generated on first run and reused afterwards. TLS 1.2
//! and 1.3 only, ALPN `h2` and `http/1.1`, session resumption on unless
//! turned off.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;
use crate::invocation::Principal;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("generating the dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Names the dev certificate is valid for.
const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

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

/// Paths of the dev certificate files.
pub struct DevCertificate {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes sure `dir` holds a dev CA and a leaf certificate signed by it,
/// generating what is missing. Existing files are reused unchanged.
pub fn ensure_dev_certificate(dir: &Path) -> Result<DevCertificate, TlsError> {
    let dev = DevCertificate {
        ca: dir.join("dev-ca.pem"),
        cert: dir.join("gateway.crt"),
        key: dir.join("gateway.key"),
    };
    let ca_key_path = dir.join("dev-ca.key");
    if dev.cert.exists() && dev.key.exists() && dev.ca.exists() {
        return Ok(dev);
    }
    fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let ca_key = if dev.ca.exists() && ca_key_path.exists() {
        let pem = fs::read_to_string(&ca_key_path).map_err(|e| file_error(&ca_key_path, e))?;
        KeyPair::from_pem(&pem)?
    } else {
        let key = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&key)?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dev.ca, ca.pem().as_bytes(), 0o644)?;
        key
    };
    let issuer = Issuer::new(ca_params()?, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(DEV_NAMES.map(String::from).to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // Browsers and macOS refuse server certificates valid for over 825 days.
    leaf.not_before = yesterday().unwrap_or_else(|| rcgen::date_time_ymd(2026, 1, 1));
    leaf.not_after = leaf.not_before + std::time::Duration::from_secs(800 * 86_400);
    let cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_file(&dev.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dev.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(dev)
}

/// The dev CA's parameters; regenerating them with the CA's key yields the
/// same issuer name and key identifier, so a kept CA can sign a new leaf.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "fngate dev CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fngate");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn yesterday() -> Option<time::OffsetDateTime> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let yesterday = now.as_secs().saturating_sub(86_400);
    time::OffsetDateTime::from_unix_timestamp(yesterday as i64).ok()
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
