//! The TLS front end as testssl.sh (Debian package) sees it: only TLS 1.2
//! and 1.3, and none of the vulnerabilities it probes for.

mod common;

use common::Gateway;

#[tokio::test]
async fn testssl_finds_only_tls_1_2_and_1_3_and_no_vulnerability() {
    let gw = Gateway::builder().start().await;
    let target = format!("localhost:{}", gw.addr.port());
    // Loopback only: --ip one pins 127.0.0.1, --nodns min asks no resolver.
    let output = tokio::process::Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "one",
            "--nodns",
            "min",
        ])
        .args(["--sneaky", "-p", "-U", &target])
        .output()
        .await
        .expect("testssl.sh is needed for this test: apt-get install -y testssl.sh");
    let report = String::from_utf8_lossy(&output.stdout);
    for line in [
        "SSLv2      not offered",
        "SSLv3      not offered",
        "TLS 1      not offered",
        "TLS 1.1    not offered",
        "TLS 1.2    offered",
        "TLS 1.3    offered",
    ] {
        assert!(report.contains(line), "missing '{line}' in:\n{report}");
    }
    assert!(
        report.contains("Heartbleed"),
        "no vulnerability section in:\n{report}"
    );
    assert!(
        !report.contains("VULNERABLE"),
        "testssl.sh flagged a vulnerability:\n{report}"
    );
}
