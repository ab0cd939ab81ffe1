//! Client certificates (mTLS): with `server.client_ca`, a client without a
//! certificate signed by that CA cannot connect, and a verified
//! certificate's subject is the principal the backend sees.

mod common;

use common::{Gateway, HttpBackend, http_fn};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, and a client certificate for `name` signed by it (PEM chain + key).
fn client_ca_and_identity(name: &str) -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test clients CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.pem(),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )
}

#[tokio::test]
async fn only_clients_with_a_verified_certificate_get_in_and_their_subject_is_the_principal() {
    let backend = HttpBackend::start().await;
    let (ca_pem, identity_pem) = client_ca_and_identity("reports");
    let gw = Gateway::builder()
        .server("client_ca = \"clients-ca.pem\"")
        .file("clients-ca.pem", ca_pem)
        .toml(&http_fn("demo", "echo", &[backend.url("/invoke/echo")], ""))
        .start()
        .await;

    // No certificate: the handshake is refused, nothing reaches a function.
    let anonymous = gw.client();
    let refused = anonymous
        .post(gw.url("/demo/echo"))
        .json(&serde_json::json!({}))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer: {refused:?}"
    );

    // Another CA's certificate: refused too.
    let (_, stranger_pem) = client_ca_and_identity("stranger");
    let stranger = gw
        .client_builder()
        .identity(reqwest::Identity::from_pem(stranger_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        stranger
            .post(gw.url("/demo/echo"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .is_err()
    );

    // A verified certificate: its subject reaches the backend, forged headers do not.
    let client = gw
        .client_builder()
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(gw.url("/demo/echo"))
        .header("x-fngate-subject", "mallory")
        .json(&serde_json::json!({"x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-fngate-subject"], "CN=reports");
    assert_eq!(echoed["headers"]["x-fngate-issuer"], "CN=test clients CA");
}
