//! The command line (serve, check, --version, config errors), the TLS front
//! end (dev CA generated once, configured certificates, versions) and
//! graceful shutdown.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Gateway, SLEEP_PY, client_builder_with_ca, eventually, exec_fn, json_ok, run_bin};
use serde_json::json;

const OK_PY: &str = "import sys\nsys.stdin.read()\nprint('\"ok\"')\n";

#[tokio::test]
async fn version_flag_prints_the_package_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run_bin(&["--version"], dir.path()).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("fngate {}", env!("CARGO_PKG_VERSION"))
    );
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn check_prints_every_route_with_its_backend() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.py"), OK_PY).unwrap();
    let config = write_config(
        dir.path(),
        r#"
[server]
listen = "127.0.0.1:0"

[apps.demo.functions.square]
backend = "exec"
command = ["python3", "ok.py"]
methods = ["POST", "GET"]

[apps.demo.functions.remote]
backend = "http"
urls = ["http://127.0.0.1:9/invoke"]

[apps.other.functions.f-1]
backend = "exec"
command = ["python3", "ok.py"]
"#,
    );
    let (code, stdout, stderr) = run_bin(&["check", "--config", &config], dir.path()).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let route = |path: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" {path} ")))
            .unwrap_or_else(|| panic!("no line for {path} in:\n{stdout}"))
            .to_owned()
    };
    let square = route("/demo/square");
    assert!(
        square.contains("POST") && square.contains("GET"),
        "{square}"
    );
    assert!(
        square.contains("exec") && square.contains("python3 ok.py"),
        "{square}"
    );
    let remote = route("/demo/remote");
    assert!(
        remote.contains("POST") && !remote.contains("GET"),
        "{remote}"
    );
    assert!(
        remote.contains("http") && remote.contains("http://127.0.0.1:9/invoke"),
        "{remote}"
    );
    let other = route("/other/f-1");
    assert!(other.contains("exec"), "{other}");
    // check must not start serving or write certificates.
    assert!(!dir.path().join("certs").exists(), "check generated certs");
}

#[tokio::test]
async fn repo_quick_start_config_passes_check() {
    let root = common::repo_dir();
    let config = root.join("gateway.toml");
    let (code, stdout, stderr) =
        run_bin(&["check", "--config", config.to_str().unwrap()], root).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.contains("/demo/square"), "{stdout}");
}

/// Bad configs: each must stop `check` and `serve` with exit code 2 and a
/// message naming the file and the key.
#[tokio::test]
async fn bad_configs_exit_2_naming_the_key() {
    let exec = "backend = \"exec\"\ncommand = [\"python3\", \"ok.py\"]\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown server key",
            "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 3\n".into(),
            vec!["listen_port"],
        ),
        (
            "unknown top-level table",
            "[server]\nlisten = \"127.0.0.1:0\"\n[serverz]\nx = 1\n".into(),
            vec!["serverz"],
        ),
        (
            "unknown function key",
            format!("[apps.demo.functions.square]\n{exec}tiemout = \"1s\"\n"),
            vec!["tiemout"],
        ),
        (
            "bad duration",
            format!("[apps.demo.functions.square]\n{exec}timeout = \"soon\"\n"),
            vec!["apps.demo.functions.square.timeout"],
        ),
        (
            "bad size",
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body = \"lots\"\n".into(),
            vec!["server.max_body"],
        ),
        (
            "bad listen address",
            "[server]\nlisten = \"not an address\"\n".into(),
            vec!["server.listen"],
        ),
        (
            "no workers",
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 0\n".into(),
            vec!["server.workers"],
        ),
        (
            "reserved app name calls",
            format!("[apps.calls.functions.f]\n{exec}"),
            vec!["calls"],
        ),
        (
            "reserved underscore function name",
            format!("[apps.demo.functions._hidden]\n{exec}"),
            vec!["_hidden"],
        ),
        (
            "underscore app name",
            format!("[apps._x.functions.f]\n{exec}"),
            vec!["_x"],
        ),
        (
            "malformed name",
            format!("[apps.demo.functions.Bad_Name]\n{exec}"),
            vec!["Bad_Name"],
        ),
        (
            "name too long",
            format!("[apps.demo.functions.{}]\n{exec}", "a".repeat(64)),
            vec!["aaaaaaaaaaaaaaaa"],
        ),
        (
            "exec without command",
            "[apps.demo.functions.square]\nbackend = \"exec\"\n".into(),
            vec!["apps.demo.functions.square", "command"],
        ),
        (
            "exec with empty command",
            "[apps.demo.functions.square]\nbackend = \"exec\"\ncommand = []\n".into(),
            vec!["apps.demo.functions.square", "command"],
        ),
        (
            "http without urls",
            "[apps.demo.functions.remote]\nbackend = \"http\"\n".into(),
            vec!["apps.demo.functions.remote", "urls"],
        ),
        (
            "unknown backend",
            "[apps.demo.functions.square]\nbackend = \"ftp\"\ncommand = [\"x\"]\n".into(),
            vec!["apps.demo.functions.square", "backend"],
        ),
        (
            "wrong type",
            format!("[apps.demo.functions.square]\n{exec}concurrency = \"many\"\n"),
            vec!["concurrency"],
        ),
        (
            "missing schema file",
            format!("[apps.demo.functions.square]\n{exec}input_schema = \"nope.json\"\n"),
            vec!["apps.demo.functions.square.input_schema"],
        ),
        ("toml syntax error", "[server\nlisten = 1\n".into(), vec![]),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.py"), OK_PY).unwrap();
    let mut failures = Vec::new();
    for (name, text, keys) in &cases {
        let text = if text.contains("[server") {
            text.clone()
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{text}")
        };
        let config = write_config(dir.path(), &text);
        for sub in ["check", "serve"] {
            let (code, _, stderr) = run_bin(&[sub, "--config", &config], dir.path()).await;
            let mut wrong = Vec::new();
            if code != Some(2) {
                wrong.push(format!("exit code {code:?}"));
            }
            if !stderr.contains("gateway.toml") {
                wrong.push("config file not named".to_owned());
            }
            for key in keys {
                if !stderr.contains(key) {
                    wrong.push(format!("{key:?} not named"));
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{name} ({sub}): {}\n  stderr: {}",
                    wrong.join(", "),
                    stderr.trim().replace('\n', "\n          ")
                ));
            }
        }
    }
    assert!(
        !dir.path().join("certs").exists(),
        "a rejected config must not get as far as generating certificates"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn missing_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, _, stderr) =
        run_bin(&["check", "--config", path.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("absent.toml"), "{stderr}");
}

#[tokio::test]
async fn serve_is_the_default_subcommand() {
    let gw = Gateway::builder()
        .args(&["--config", "{config}"])
        .start()
        .await;
    let r = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(json_ok(r).await, json!({"status": "ok"}));
}

#[tokio::test]
async fn dev_certificate_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let files = ["dev-ca.pem", "dev-ca.key", "gateway.crt", "gateway.key"];
    let read_all = |dir: &Path| -> Vec<Vec<u8>> {
        files
            .iter()
            .map(|f| {
                std::fs::read(dir.join("certs").join(f))
                    .unwrap_or_else(|e| panic!("certs/{f}: {e}"))
            })
            .collect()
    };
    let mut gw = Gateway::builder().in_dir(dir.path()).start().await;
    let first = read_all(dir.path());
    assert!(
        String::from_utf8_lossy(&first[0]).contains("BEGIN CERTIFICATE"),
        "dev-ca.pem is a PEM certificate"
    );
    assert!(
        gw.logs.joined().contains("dev-ca.pem"),
        "the log says where the CA is"
    );
    let r = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.kill().await;
    drop(gw);

    let gw = Gateway::builder().in_dir(dir.path()).start().await;
    let second = read_all(dir.path());
    for (i, f) in files.iter().enumerate() {
        assert_eq!(first[i], second[i], "certs/{f} changed on restart");
    }
    // A client holding the CA from the first run trusts the second.
    let client = client_builder_with_ca(&first[0])
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    let r = client.get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn dev_certificate_is_valid_for_localhost_and_ip_addresses() {
    let gw = Gateway::builder().start().await;
    let ca = gw.ca_pem();
    // By IP address: the certificate needs an IP SAN for 127.0.0.1.
    let client = client_builder_with_ca(&ca).build().unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{}/_/health", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A name the certificate does not cover is refused.
    let client = client_builder_with_ca(&ca)
        .resolve("not-localhost.test", gw.addr)
        .build()
        .unwrap();
    let err = client
        .get(format!(
            "https://not-localhost.test:{}/_/health",
            gw.addr.port()
        ))
        .send()
        .await;
    assert!(err.is_err(), "a certificate for localhost only");
    // And a client that does not trust the dev CA refuses the connection.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(true)
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    assert!(stranger.get(gw.url("/_/health")).send().await.is_err());
}

#[tokio::test]
async fn dev_certificate_covers_ipv6_loopback() {
    // Skip quietly where the machine has no IPv6 loopback.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no ::1 here; skipped");
        return;
    }
    let gw = Gateway::builder()
        .raw_config("[server]\nlisten = \"[::1]:0\"\n")
        .start()
        .await;
    assert!(gw.addr.is_ipv6());
    let client = client_builder_with_ca(&gw.ca_pem()).build().unwrap();
    let r = client
        .get(format!("https://[::1]:{}/_/health", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    let gw = Gateway::builder().start().await;
    for (name, version) in [
        ("1.2", reqwest::tls::Version::TLS_1_2),
        ("1.3", reqwest::tls::Version::TLS_1_3),
    ] {
        for h2 in [false, true] {
            let mut b = gw
                .client_builder()
                .min_tls_version(version)
                .max_tls_version(version);
            b = if h2 {
                b.http2_prior_knowledge()
            } else {
                b.http1_only()
            };
            let r = b
                .build()
                .unwrap()
                .get(gw.url("/_/health"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("TLS {name} h2={h2}: {e:?}"));
            assert_eq!(r.status(), 200, "TLS {name}");
        }
    }
}

/// How the second of two TLS connections from one client (sharing its
/// session cache) was set up, after a request on the first one brought
/// the server's session ticket.
async fn second_handshake(
    gw: &Gateway,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::HandshakeKind {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&gw.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind().unwrap());
        tls.write_all(b"GET /_/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(kinds[0], rustls::HandshakeKind::Full);
    kinds[1]
}

#[tokio::test]
async fn returning_clients_resume_their_tls_session() {
    let gw = Gateway::builder().start().await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            second_handshake(&gw, version).await,
            rustls::HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn without_session_resumption_every_handshake_is_full() {
    let gw = Gateway::builder()
        .server("session_resumption = false")
        .start()
        .await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            second_handshake(&gw, version).await,
            rustls::HandshakeKind::Full,
            "{version:?}"
        );
    }
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn each_worker_serves_connections_on_its_own_thread() {
    let gw = Gateway::builder().server("workers = 3").start().await;
    // A new thread takes its name once it runs: wait for both.
    let named = |names: &[String]| {
        ["fngate-worker-1", "fngate-worker-2"]
            .iter()
            .all(|worker| names.iter().any(|n| n == worker))
    };
    let started = eventually(Duration::from_secs(5), || named(&thread_names(gw.pid))).await;
    let names = thread_names(gw.pid);
    assert!(started, "{names:?}");
    assert!(!names.iter().any(|n| n == "fngate-worker-3"), "{names:?}");
    // Many connections, spread by the kernel over the three listeners, are
    // all served.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let client = gw.client_h1();
        let url = gw.url("/_/health");
        requests.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    let single = Gateway::builder().server("workers = 1").start().await;
    let names = thread_names(single.pid);
    assert!(
        !names.iter().any(|n| n.starts_with("fngate-worker")),
        "{names:?}"
    );
}

/// Runs `openssl s_client` with `flags` against `addr`; None when openssl is
/// not usable here. Some(true) when a handshake completed.
async fn openssl_handshake(addr: std::net::SocketAddr, flags: &[&str]) -> Option<bool> {
    openssl_handshake_as(addr, "localhost", flags).await
}

/// A TLS 1.3 handshake with `server_name` as SNI.
async fn openssl_handshake_named(addr: std::net::SocketAddr, server_name: &str) -> Option<bool> {
    openssl_handshake_as(addr, server_name, &["-tls1_3"]).await
}

async fn openssl_handshake_as(
    addr: std::net::SocketAddr,
    server_name: &str,
    flags: &[&str],
) -> Option<bool> {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(flags)
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", server_name])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .ok()?
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Some(out.status.success() && !stdout.contains("Cipher is (NONE)"))
}

#[tokio::test]
async fn clients_cannot_fill_the_log_with_handshake_warnings() {
    let gw = Gateway::builder().start().await;
    // An IP address as SNI is illegal (RFC 6066); wrk and some clients send
    // one anyway. The handshake goes on, and nothing is logged per client.
    for _ in 0..3 {
        let Some(done) = openssl_handshake_named(gw.addr, "127.0.0.1").await else {
            eprintln!("openssl not usable; skipped");
            return;
        };
        assert!(done, "handshake with an IP address as SNI failed");
    }
    let health = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let logs = gw.logs.joined();
    assert!(!logs.contains("WARN") && !logs.contains("SNI"), "{logs}");
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let gw = Gateway::builder().start().await;
    let Some(tls12) = openssl_handshake(gw.addr, &["-tls1_2"]).await else {
        eprintln!("openssl not usable; skipped");
        return;
    };
    assert!(tls12, "openssl s_client -tls1_2 handshake failed");
    let tls11 = openssl_handshake(gw.addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
    assert_eq!(tls11, Some(false), "a TLS 1.1 handshake succeeded");
}

#[tokio::test]
async fn configured_certificate_and_key_are_used() {
    // Generate a dev CA + leaf with one gateway, then serve with those files
    // configured explicitly (relative paths) from another directory.
    let first = Gateway::builder().start().await;
    let crt = std::fs::read(first.dir.join("certs/gateway.crt")).unwrap();
    let key = std::fs::read(first.dir.join("certs/gateway.key")).unwrap();
    let ca = first.ca_pem();
    drop(first);

    let gw = Gateway::builder()
        .file("tls/my.crt", crt)
        .file("tls/my.key", key)
        .server("tls_cert = \"tls/my.crt\"\ntls_key = \"tls/my.key\"")
        .start()
        .await;
    assert!(
        !gw.dir.join("certs").exists(),
        "no dev certificate generated when one is configured"
    );
    let client = client_builder_with_ca(&ca)
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    let r = client.get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn only_one_of_tls_cert_and_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\n",
    );
    let (code, _, stderr) = run_bin(&["serve", "--config", &config], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("tls_key") || stderr.contains("tls_cert"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits() {
    let mut gw = Gateway::builder()
        .server("shutdown_grace = \"10s\"")
        .file("sleep.py", SLEEP_PY)
        .toml(&exec_fn("s", "slow", "sleep.py", "timeout = \"10s\""))
        .start()
        .await;
    let client = gw.client_h1();
    let call = {
        let client = client.clone();
        let url = gw.url("/s/slow");
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 1, "marker": "started"}"#)
                .send()
                .await
        })
    };
    let marker = gw.dir.join("started");
    assert!(
        common::eventually(Duration::from_secs(10), || marker.exists()).await,
        "call started"
    );
    let addr = gw.addr;
    let status = gw.terminate(Duration::from_secs(15)).await;
    let r = call.await.unwrap().expect("in-flight call answered");
    assert_eq!(json_ok(r).await, json!({"slept": 1.0}));
    assert!(status.success(), "clean exit after drain: {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
