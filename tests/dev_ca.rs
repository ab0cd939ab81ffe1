//! The dev CA, black-box: the one the gateway generates may vouch only for
//! localhost, 127.0.0.1 and ::1 (X.509 name constraints) and lives at most
//! ten years, its leaf at most 825 days; a certificate for another name
//! signed with the dev CA's key is refused by openssl and by rustls; an
//! old CA without the constraints is replaced at start, and curl trusts
//! the new one.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, client_builder_with_ca, raw_tls};
use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use x509_parser::extensions::GeneralName;

const DAY: i64 = 86_400;

/// The DER of the first certificate in a PEM file.
fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

/// Days between not-before and not-after.
fn lifetime_days(cert: &x509_parser::certificate::X509Certificate<'_>) -> i64 {
    let validity = cert.validity();
    (validity.not_after.timestamp() - validity.not_before.timestamp()) / DAY
}

/// The permitted subtrees of the CA's name constraints as text.
fn permitted_names(ca: &x509_parser::certificate::X509Certificate<'_>) -> (bool, Vec<String>) {
    let constraints = ca
        .name_constraints()
        .expect("readable name constraints")
        .expect("the dev CA has name constraints");
    assert!(
        constraints.value.excluded_subtrees.is_none(),
        "nothing excluded"
    );
    let mut names: Vec<String> = constraints
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|subtree| match &subtree.base {
            GeneralName::DNSName(name) => format!("DNS:{name}"),
            GeneralName::IPAddress(bytes) => format!("IP:{bytes:?}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    names.sort();
    (constraints.critical, names)
}

/// A leaf for `names` signed with the key in `certs/dev-ca.key` under the
/// dev CA's name; returns its PEM and key.
fn leaf_signed_by_dev_key(certs: &Path, names: &[&str]) -> (String, KeyPair) {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(certs.join("dev-ca.key")).unwrap()).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "fngate dev CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "fngate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    (leaf.signed_by(&key, &issuer).unwrap().pem(), key)
}

/// `openssl verify -CAfile CA CERT`: (succeeded, its output).
async fn openssl_verify(ca: &Path, cert: &Path) -> (bool, String) {
    let out = tokio::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run openssl verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TLS server on 127.0.0.1 presenting `cert_pem`; returns its port.
async fn tls_server(cert_pem: &str, key: &KeyPair) -> u16 {
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    port
}

/// A rustls handshake with 127.0.0.1:`port` as `name`, trusting only the
/// CA in `ca_pem`.
async fn rustls_handshake(ca_pem: &[u8], port: u16, name: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let handshake = connector.connect(name, tcp);
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Err(_) => Err("no handshake within 10 s".to_owned()),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Ok(Ok(_)) => Ok(()),
    }
}

#[tokio::test]
async fn dev_ca_is_name_constrained_and_lives_at_most_ten_years() {
    let gw = Gateway::builder().start().await;
    let ca_der = der(&gw.ca_path());
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (critical, names) = permitted_names(&ca);
    assert!(critical, "the name constraints are critical");
    assert_eq!(
        names,
        [
            "DNS:localhost",
            "IP:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]",
            "IP:[127, 0, 0, 1, 255, 255, 255, 255]",
        ],
        "permitted: localhost, 127.0.0.1/32 and ::1/128"
    );
    let days = lifetime_days(&ca);
    println!(
        "dev CA: valid {} to {} ({days} days)",
        ca.validity().not_before,
        ca.validity().not_after
    );
    assert!(
        days <= 3653,
        "the CA is valid for {days} days, over 10 years"
    );

    let leaf_der = der(&gw.dir.join("certs/gateway.crt"));
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let days = lifetime_days(&leaf);
    println!(
        "leaf: valid {} to {} ({days} days)",
        leaf.validity().not_before,
        leaf.validity().not_after
    );
    assert!(days <= 825, "the leaf is valid for {days} days, over 825");
    assert!(
        leaf.validity().not_after.timestamp() <= ca.validity().not_after.timestamp(),
        "the leaf ends before its CA"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_signed_by_the_dev_ca_is_refused() {
    let gw = Gateway::builder().start().await;
    let certs = gw.dir.join("certs");
    let ca = gw.ca_path();

    // The gateway's own leaf verifies, with openssl and with rustls.
    let (ok, text) = openssl_verify(&ca, &certs.join("gateway.crt")).await;
    assert!(ok, "openssl verifies the gateway's certificate: {text}");
    raw_tls(&gw).await;

    for names in [&["evil.example"][..], &["192.0.2.1"][..]] {
        let (pem, key) = leaf_signed_by_dev_key(&certs, names);
        let path = gw.dir.join("evil.pem");
        std::fs::write(&path, &pem).unwrap();
        let (ok, text) = openssl_verify(&ca, &path).await;
        println!("openssl verify, a leaf for {names:?}: {}", text.trim());
        assert!(!ok, "openssl refuses a leaf for {names:?}: {text}");
        assert!(
            text.contains("permitted subtree violation"),
            "openssl refuses {names:?} for the name constraints: {text}"
        );

        let port = tls_server(&pem, &key).await;
        let refused = rustls_handshake(&gw.ca_pem(), port, names[0]).await;
        println!("rustls, a leaf for {names:?}: {refused:?}");
        let error = refused.expect_err("rustls refuses the leaf");
        assert!(
            error.contains("NameConstraintViolation"),
            "rustls refuses {names:?} for the name constraints: {error}"
        );
    }
}

/// A dev CA as fngate made them before the constraints (valid 1975 to
/// 4096, no name constraints) and its leaf, in `certs`.
fn write_old_style_ca(certs: &Path) {
    std::fs::create_dir_all(certs).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fngate dev CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "fngate");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .unwrap();
    leaf.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::new(ca, &ca_key))
        .unwrap();
    std::fs::write(certs.join("dev-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(certs.join("dev-ca.key"), ca_key.serialize_pem()).unwrap();
    std::fs::write(certs.join("gateway.crt"), leaf_cert.pem()).unwrap();
    std::fs::write(certs.join("gateway.key"), leaf_key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn an_old_ca_without_name_constraints_is_replaced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    write_old_style_ca(&certs);
    let old_ca = std::fs::read(certs.join("dev-ca.pem")).unwrap();

    let gw = Gateway::builder().in_dir(dir.path()).start().await;
    let logs = gw.logs.joined();
    assert!(
        logs.contains("replaced the dev CA") && logs.contains("no name constraints"),
        "the log says the CA was replaced, and why:\n{logs}"
    );
    assert!(
        logs.contains("must import the new one"),
        "the log tells whoever imported the old CA:\n{logs}"
    );
    let new_ca = gw.ca_pem();
    assert_ne!(new_ca, old_ca, "certs/dev-ca.pem is a new CA");
    let new_der = der(&gw.ca_path());
    let (_, ca) = x509_parser::parse_x509_certificate(&new_der).unwrap();
    assert!(permitted_names(&ca).0, "the new CA is constrained");

    // curl trusts the new CA...
    let port = gw.addr.port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(gw.ca_path())
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(gw.url("/_/health"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl --cacert certs/dev-ca.pem: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    // ...and a client still holding the old one no longer trusts the
    // gateway.
    let old_client = client_builder_with_ca(&old_ca)
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    assert!(old_client.get(gw.url("/_/health")).send().await.is_err());

    // The replacement is kept: a restart reuses it without a warning.
    drop(gw);
    let again = Gateway::builder().in_dir(dir.path()).start().await;
    assert_eq!(again.ca_pem(), new_ca, "the new CA is reused");
    assert!(!again.logs.joined().contains("replaced the dev CA"));
}
