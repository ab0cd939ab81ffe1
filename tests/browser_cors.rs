//! CORS from a real browser: a headless Chromium (Debian's `chromium`,
//! driven by playwright-core from `tests/browser/`) opens a page served from
//! another loopback origin and runs `fetch` against a real fngate: a sync
//! call, a spawn + poll that reads `Location`, `X-Call-Id` and `Retry-After`,
//! a sync call past the sync wait whose 303 fetch follows to the result, and
//! the same sync call from an origin that is not allowed, which the browser
//! refuses.
//!
//! Chromium trusts exactly the gateway's dev certificate (by the SHA-256 of
//! its public key), never certificate errors in general.
//!
//! Needs `node`, `npm` (for `npm ci` when `tests/browser/node_modules` is
//! missing) and `/usr/bin/chromium` (or `CHROMIUM=path`); without them the
//! test fails and says what to install.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Gateway, SLEEP_PY, exec_fn, repo_dir};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

const SQUARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/square.py");

/// The page both origins serve; the driver runs its `fetch` calls in it.
const PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
<title>fngate cors page</title></head>\n<body><p>A page on another origin.</p></body></html>\n";

/// How long the driver may take in all (it normally needs about 5 s).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(75);

fn browser_dir() -> PathBuf {
    repo_dir().join("tests/browser")
}

/// The Chromium binary: `CHROMIUM` when set, else Debian's.
fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails (never skips) when a tool the test needs is not installed.
async fn require_tools() {
    let chromium = chromium_path();
    assert!(
        chromium.is_file(),
        "browser CORS test needs Chromium at {} (install it with \
         `apt-get install -y chromium`, or set CHROMIUM=/path/to/chromium)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output().await;
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "browser CORS test needs Node.js 20+ as `node` on PATH \
         (install it with `apt-get install -y nodejs npm`): {node:?}"
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    if playwright.is_file() {
        return;
    }
    eprintln!("tests/browser/node_modules is missing: running `npm ci` there");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() && playwright.is_file() => {}
        other => panic!(
            "browser CORS test needs playwright-core in tests/browser/node_modules; \
             `npm ci` there failed (install npm with `apt-get install -y npm`, then run \
             `npm ci --prefix tests/browser`): {}",
            match other {
                Ok(o) => format!(
                    "{}\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("cannot run npm: {e}"),
            }
        ),
    }
}

/// A static server answering every GET with [`PAGE`] (404 for the favicon),
/// on `127.0.0.1:0`; returns its origin. Stops with the test's runtime.
async fn page_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let port = listener.local_addr().expect("page server addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let favicon = head.starts_with(b"GET /favicon.ico ");
                let (status, body) = if favicon {
                    ("404 Not Found", "")
                } else {
                    ("200 OK", PAGE)
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256_base64(cert_pem: &Path) -> String {
    let pem =
        std::fs::read(cert_pem).unwrap_or_else(|e| panic!("read {}: {e}", cert_pem.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("gateway.crt is PEM");
    let cert = pem
        .parse_x509()
        .expect("gateway.crt is an X.509 certificate");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Runs the driver; returns its JSON line.
async fn drive(page: &str, denied_page: &str, gateway: &str, spki: &str, gw: &Gateway) -> Value {
    let script = browser_dir().join("cors.mjs");
    let child = Command::new("node")
        .arg(&script)
        .args([page, denied_page, gateway, spki])
        .env("CHROMIUM", chromium_path())
        .current_dir(repo_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node tests/browser/cors.mjs");
    let out = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cors.mjs did not finish within {DRIVER_TIMEOUT:?}"))
        .expect("wait for cors.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cors.mjs failed ({}): stdout:\n{stdout}\nstderr:\n{stderr}\ngateway logs:\n{}",
        out.status,
        gw.logs.joined()
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("cors.mjs printed no JSON line ({e}): {stdout}\n{stderr}"))
}

fn json_body(text: &Value, what: &str) -> Value {
    let text = text.as_str().unwrap_or_else(|| panic!("{what}: no body"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_calls_the_gateway_from_chromium() {
    let started = Instant::now();
    require_tools().await;

    // The page's origins first, so the gateway's config can name one.
    let page_origin = page_server().await;
    let denied_origin = page_server().await;
    let gw = Gateway::builder()
        .server("sync_wait = \"1s\"")
        .file("slow.py", SLEEP_PY)
        .toml(&format!("[cors]\nallow_origins = [\"{page_origin}\"]\n"))
        .toml(&format!(
            "\n[apps.demo.functions.square]\nbackend = \"exec\"\n\
             command = [\"python3\", \"{SQUARE}\"]\npublic = true\n"
        ))
        .toml(&exec_fn("demo", "slow", "slow.py", "public = true"))
        .start()
        .await;
    let gateway = gw.url("");
    let spki = spki_sha256_base64(&gw.dir.join("certs/gateway.crt"));

    let r = drive(
        &format!("{page_origin}/"),
        &format!("{denied_origin}/"),
        &gateway,
        &spki,
        &gw,
    )
    .await;
    eprintln!("chromium saw: {r}");
    assert_eq!(r["pageOrigin"], page_origin.as_str(), "{r}");
    assert_eq!(r["deniedOrigin"], denied_origin.as_str(), "{r}");
    assert_eq!(r["pageTitle"], "fngate cors page", "{r}");

    // (1) A sync call: preflighted JSON POST, body and exposed ids readable.
    let sync = &r["sync"];
    assert_eq!(
        sync["ok"], true,
        "sync fetch from an allowed origin failed (an ERR_CERT here means the \
         SPKI pin did not match): {sync}"
    );
    assert_eq!(sync["status"], 200, "{sync}");
    assert_eq!(sync["body"].as_str().map(str::trim), Some("49"), "{sync}");
    assert_eq!(sync["redirected"], false, "{sync}");
    assert!(
        sync["requestId"].as_str().is_some_and(|s| !s.is_empty()),
        "X-Request-Id exposed to the page: {sync}"
    );

    // (2) Spawn + poll: Location, X-Call-Id and Retry-After readable.
    let spawn = &r["spawn"];
    assert_eq!(spawn["ok"], true, "{spawn}");
    assert_eq!(spawn["spawnStatus"], 202, "{spawn}");
    let call_id = spawn["callId"].as_str().unwrap_or_default();
    assert!(
        call_id.starts_with("fc-"),
        "X-Call-Id exposed to the page: {spawn}"
    );
    assert_eq!(
        spawn["location"].as_str(),
        Some(format!("/calls/{call_id}").as_str()),
        "Location exposed to the page: {spawn}"
    );
    assert_eq!(json_body(&spawn["spawnBody"], "spawn")["call_id"], call_id);
    let retry_after: u64 = spawn["retryAfter"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After on a 202 poll exposed to the page: {spawn}"));
    assert!((1..=60).contains(&retry_after), "sane Retry-After: {spawn}");
    assert_eq!(
        spawn["finalStatus"], 200,
        "poll ends with the result: {spawn}"
    );
    assert_eq!(
        json_body(&spawn["finalBody"], "poll")["slept"].as_f64(),
        Some(1.0),
        "{spawn}"
    );

    // (3) Past the sync wait: 303 to /calls/{id}, followed to the result.
    let overflow = &r["overflow"];
    assert_eq!(overflow["ok"], true, "{overflow}");
    assert_eq!(
        overflow["redirected"], true,
        "fetch followed the 303: {overflow}"
    );
    assert_eq!(overflow["status"], 200, "{overflow}");
    let url = overflow["url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with(&format!("{gateway}/calls/fc-")),
        "ended on the call's URL: {overflow}"
    );
    assert_eq!(
        json_body(&overflow["body"], "overflow")["slept"].as_f64(),
        Some(2.0),
        "{overflow}"
    );

    // (4) The same sync call from an origin that is not allowed: refused by
    // the browser (the preflight has no Access-Control-Allow-Origin).
    let denied = &r["denied"];
    assert_eq!(
        denied["ok"], false,
        "a disallowed origin got an answer: {denied}"
    );
    assert_eq!(denied["errorName"], "TypeError", "{denied}");
    let console = denied["consoleErrors"].to_string();
    assert!(
        console.contains("blocked by CORS policy"),
        "refused for CORS, not for something else: {denied}"
    );
    assert!(!console.contains("ERR_CERT"), "{denied}");

    let took = started.elapsed();
    eprintln!("browser CORS test took {took:?}");
}
