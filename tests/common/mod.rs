//! Shared harness for the black-box tests: starts the real `fngate` binary on
//! `127.0.0.1:0` in its own temp dir (real TLS with the generated dev CA),
//! starts the Python test HTTP backend, and builds clients that trust only
//! the dev CA.
//!
//! Every test crate includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The gateway binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fngate");

/// How long a gateway or backend may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root (for `examples/`, `tests/backends/`, `gateway.toml`).
pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An exec function that answers with the invocation request it received,
/// parsed and re-serialised (so plain numbers only).
pub const INSPECT_PY: &str = r#"
import json, os, sys
req = json.loads(sys.stdin.read())
req["_cwd"] = os.getcwd()
req["_env"] = {k: v for k, v in os.environ.items() if k.startswith("FN_")}
sys.stdout.write(json.dumps(req))
"#;

/// An exec function whose result is exactly the bytes of its stdin.
pub const RAW_ECHO_PY: &str = r#"
import sys
sys.stdout.write(sys.stdin.read())
"#;

/// An exec function that sleeps `kwargs.seconds` (default 1) and, when
/// `kwargs.marker` is given, first creates that file in its cwd.
pub const SLEEP_PY: &str = r#"
import json, sys, time
req = json.loads(sys.stdin.read())
kw = req.get("kwargs") or {}
if kw.get("marker"):
    open(kw["marker"], "w").close()
s = float(kw.get("seconds", 1))
time.sleep(s)
sys.stdout.write(json.dumps({"slept": s}))
"#;

/// An exec function driven by its kwargs:
/// `count` appends its PID to that file (one line per run), `child` starts
/// a `sleep 60` in its process group first, `marker` then writes
/// "PID [CHILD_PID]" to that file (atomically, by rename), `seconds` sleeps,
/// `fail` exits 1 with `ValueError: <fail>` on stderr; otherwise the result
/// is `{"x", "square", "attempt"}` plus `end` (its clock at the end) when
/// `stamp` is set.
pub const WORK_PY: &str = r#"
import json, os, subprocess, sys, time
req = json.loads(sys.stdin.read())
kw = req.get("kwargs") or {}
if kw.get("count"):
    with open(kw["count"], "a") as f:
        f.write("%d\n" % os.getpid())
pids = [os.getpid()]
if kw.get("child"):
    pids.append(subprocess.Popen(["sleep", "60"]).pid)
if kw.get("marker"):
    with open(kw["marker"] + ".tmp", "w") as f:
        f.write(" ".join(str(p) for p in pids))
    os.rename(kw["marker"] + ".tmp", kw["marker"])
time.sleep(float(kw.get("seconds", 0)))
if kw.get("fail"):
    sys.stderr.write("ValueError: %s\n" % kw["fail"])
    sys.exit(1)
x = kw.get("x") or 0
out = {"x": x, "square": x * x, "attempt": req.get("attempt")}
if kw.get("stamp"):
    out["end"] = time.time()
sys.stdout.write(json.dumps(out))
"#;

/// An exec function that appends one line per run to `runs` next to it.
pub const COUNT_PY: &str = r#"
import os, sys
sys.stdin.read()
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs"), "a") as f:
    f.write("run\n")
sys.stdout.write("1")
"#;

/// How many times COUNT_PY ran in `gw`'s folder.
pub fn runs(gw: &Gateway) -> usize {
    std::fs::read_to_string(gw.dir.join("runs")).map_or(0, |text| text.lines().count())
}

/// A TOML table for an exec function `[apps.APP.functions.NAME]` running
/// `python3 SCRIPT` (a file the test writes into the config dir), plus
/// `extra` lines.
pub fn exec_fn(app: &str, name: &str, script: &str, extra: &str) -> String {
    format!(
        "\n[apps.{app}.functions.{name}]\nbackend = \"exec\"\ncommand = [\"python3\", \"{script}\"]\n{extra}\n"
    )
}

/// A TOML table for an http function calling `url`, plus `extra` lines.
pub fn http_fn(app: &str, name: &str, urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "\n[apps.{app}.functions.{name}]\nbackend = \"http\"\nurls = [{}]\n{extra}\n",
        urls.join(", ")
    )
}

/// Log lines a child wrote, kept for assertions and for diagnosis when a
/// test fails.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().expect("log lock poisoned").clone()
    }

    pub fn joined(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Waits (bounded) until some line contains `needle`.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> bool {
        eventually(within, || {
            self.snapshot().iter().any(|l| l.contains(needle))
        })
        .await
    }

    fn push(&self, line: String) {
        self.0.lock().expect("log lock poisoned").push(line);
    }
}

/// Reads `reader` line by line into `lines` until `until` matches a line
/// (returns that line) or `timeout` passes or the stream ends (returns
/// None), then keeps draining it in a background task so the pipe never
/// fills.
async fn read_until<R>(
    reader: R,
    lines: Lines,
    timeout: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Option<String>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut reader = BufReader::new(reader).lines();
    let deadline = tokio::time::Instant::now() + timeout;
    let found = loop {
        match tokio::time::timeout_at(deadline, reader.next_line()).await {
            Ok(Ok(Some(line))) => {
                let hit = until(&line);
                lines.push(line.clone());
                if hit {
                    break Some(line);
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break None,
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(line);
        }
    });
    found
}

/// Parses the address after `marker` (e.g. `listening on https://`) in a
/// log line.
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Builds a gateway config and starts the binary on it.
pub struct GatewayBuilder {
    dir: Option<PathBuf>,
    server: String,
    body: String,
    files: Vec<(String, Vec<u8>)>,
    raw_config: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl GatewayBuilder {
    /// Extra lines for the `[server]` table (`listen` is always port 0).
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    /// More TOML after `[server]` (app and function tables).
    pub fn toml(mut self, text: &str) -> Self {
        self.body.push_str(text);
        self.body.push('\n');
        self
    }

    /// Replaces the generated config text entirely.
    pub fn raw_config(mut self, text: &str) -> Self {
        self.raw_config = Some(text.to_owned());
        self
    }

    /// A file written into the config dir before start (path relative).
    pub fn file(mut self, rel: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((rel.to_owned(), contents.into()));
        self
    }

    /// Use an existing directory instead of a fresh temp dir (not removed).
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// Command-line arguments instead of `serve --config <dir>/gateway.toml`.
    /// `{config}` is replaced by the config path.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn config_text(&self) -> String {
        match &self.raw_config {
            Some(text) => text.clone(),
            None => format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{}\n{}",
                self.server, self.body
            ),
        }
    }

    /// Writes the config and files, starts the binary and waits for its
    /// `listening on https://` line (and `http://` when `http_listen` is
    /// set). Panics with the collected stderr when it does not come.
    pub async fn start(self) -> Gateway {
        let text = self.config_text();
        let (tmp, dir) = match &self.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::tempdir().expect("create temp dir");
                let dir = tmp.path().to_owned();
                (Some(tmp), dir)
            }
        };
        for (rel, contents) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create file's folder");
            }
            std::fs::write(&path, contents).expect("write test file");
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, &text).expect("write gateway.toml");
        let want_http = text.contains("http_listen");

        let config_str = config.to_str().expect("utf-8 temp path").to_owned();
        let args: Vec<String> = if self.args.is_empty() {
            vec!["serve".into(), "--config".into(), config_str]
        } else {
            self.args
                .iter()
                .map(|a| a.replace("{config}", &config_str))
                .collect()
        };
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            // Run from elsewhere: relative paths must resolve against the
            // config file's folder, not the working directory.
            .current_dir(std::env::temp_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn fngate");
        let pid = child.id().expect("child pid");
        let logs = Lines::default();
        let stdout_lines = Lines::default();
        let stdout = child.stdout.take().expect("stdout piped");
        tokio::spawn(read_until(
            stdout,
            stdout_lines.clone(),
            START_TIMEOUT,
            |_| false,
        ));

        let stderr = child.stderr.take().expect("stderr piped");
        let mut https = None;
        let mut http = None;
        read_until(stderr, logs.clone(), START_TIMEOUT, |line| {
            if let Some(a) = addr_after(line, "listening on https://") {
                https = Some(a);
            } else if let Some(a) = addr_after(line, "listening on http://") {
                http = Some(a);
            }
            https.is_some() && (!want_http || http.is_some())
        })
        .await;
        let Some(addr) = https.filter(|_| !want_http || http.is_some()) else {
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            panic!(
                "fngate did not log `listening on https://ADDR` within {START_TIMEOUT:?} \
                 (exit status: {status:?})\nconfig:\n{text}\nstderr:\n{}",
                logs.joined()
            );
        };
        Gateway {
            _tmp: tmp,
            dir,
            addr,
            http_addr: http,
            pid,
            child: Some(child),
            logs,
        }
    }
}

/// A running gateway; killed (SIGKILL) on drop. Its stderr is printed when
/// the test is failing.
pub struct Gateway {
    _tmp: Option<TempDir>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub pid: u32,
    child: Option<Child>,
    pub logs: Lines,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            dir: None,
            server: String::new(),
            body: String::new(),
            files: Vec::new(),
            raw_config: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `https://localhost:PORT{path}` (clients resolve localhost to the
    /// bound address).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("certs/dev-ca.pem")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).expect("read certs/dev-ca.pem")
    }

    /// A client builder trusting only the dev CA, with localhost pinned to
    /// the gateway's address.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        client_builder_with_ca(&self.ca_pem())
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(30))
    }

    /// ALPN offers h2 and http/1.1.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("build client")
    }

    pub fn client_h1(&self) -> reqwest::Client {
        self.client_builder()
            .http1_only()
            .build()
            .expect("build h1 client")
    }

    pub fn client_h2(&self) -> reqwest::Client {
        self.client_builder()
            .http2_prior_knowledge()
            .build()
            .expect("build h2 client")
    }

    /// Both protocol flavours, with a name for assertion messages.
    pub fn clients(&self) -> Vec<(&'static str, reqwest::Client)> {
        vec![("http/1.1", self.client_h1()), ("h2", self.client_h2())]
    }

    /// POSTs `body` as `application/json` over `client`.
    pub async fn post_json(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &str,
    ) -> reqwest::Response {
        client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}\nlogs:\n{}", self.logs.joined()))
    }

    /// Resident set size of the gateway process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// Sends SIGTERM and waits (bounded) for exit.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).expect("send SIGTERM");
        self.wait_exit(within).await
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("gateway still owned");
        tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "gateway did not exit within {within:?}\nlogs:\n{}",
                    self.logs.joined()
                )
            })
            .expect("wait for gateway")
    }

    /// Kills the process and waits for it, keeping the directory.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- fngate stderr (dir {}) ----\n{}\n----",
                self.dir.display(),
                self.logs.joined()
            );
        }
    }
}

/// A reqwest client builder trusting only the given PEM CA.
pub fn client_builder_with_ca(pem: &[u8]) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(pem).expect("parse dev CA PEM");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// True while `/proc/PID` exists and the process is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts `resp` is a problem+json with `status` and `code` (and the
/// common fields of DESIGN.md), returns the body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let header_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("read problem body");
    assert_eq!(got, status, "status (want {status} {code}); body: {text}");
    assert!(
        ctype.starts_with("application/problem+json"),
        "content-type {ctype:?} for {status} {code}; body: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {text}"));
    assert_eq!(body["code"], code, "code; body: {text}");
    assert_eq!(body["status"], status, "status field; body: {text}");
    assert_eq!(body["type"], "about:blank", "type; body: {text}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title; body: {text}"
    );
    assert!(body["detail"].is_string(), "detail; body: {text}");
    let id = body["request_id"].as_str().unwrap_or("");
    assert!(!id.is_empty(), "request_id; body: {text}");
    assert_eq!(
        header_id.as_deref(),
        Some(id),
        "X-Request-Id header equals problem request_id"
    );
    body
}

/// Reads a 200 response's body as JSON, panicking with the body otherwise.
pub async fn json_ok(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("read body");
    assert_eq!(status, 200, "want 200; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

/// The test HTTP backend `tests/backends/http_backend.py`, killed on drop.
pub struct HttpBackend {
    pub port: u16,
    pid: u32,
    child: Child,
    pub logs: Lines,
}

impl HttpBackend {
    pub async fn start() -> HttpBackend {
        let script = repo_dir().join("tests/backends/http_backend.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3 http_backend.py");
        let pid = child.id().expect("backend pid");
        let logs = Lines::default();
        let stderr = child.stderr.take().expect("stderr piped");
        tokio::spawn(read_until(stderr, logs.clone(), START_TIMEOUT, |_| false));
        let stdout = child.stdout.take().expect("stdout piped");
        let line = read_until(stdout, logs.clone(), START_TIMEOUT, |l| {
            l.starts_with("LISTENING ")
        })
        .await;
        let port = line
            .and_then(|l| l.trim().strip_prefix("LISTENING ")?.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "http_backend.py did not print `LISTENING <port>`; output:\n{}",
                    logs.joined()
                )
            });
        HttpBackend {
            port,
            pid,
            child,
            logs,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Whether the backend process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Runs the binary with `args` to completion (bounded), returning
/// (exit code, stdout, stderr).
pub async fn run_bin(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("fngate {args:?} did not exit within 20 s"))
    .expect("run fngate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw TLS connection to the gateway (ALPN `http/1.1`), trusting only its
/// dev CA, for tests that need byte-level control of the request.
pub async fn raw_tls(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_alpn(gw, b"http/1.1").await
}

/// A raw TLS connection offering only the ALPN protocol `alpn`.
pub async fn raw_tls_alpn(
    gw: &Gateway,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&gw.ca_pem()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// Reads until EOF, error or `within`; returns (bytes read, closed?).
pub async fn read_until_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    within: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Like [`run_bin`], with extra environment variables for the child.
pub async fn run_bin_env(
    args: &[&str],
    cwd: &Path,
    envs: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("fngate {args:?} did not exit within 20 s"))
        .expect("run fngate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of header `name` as text, if present and visible ASCII.
pub fn header_str(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Copies the repository's `gateway.toml` and `examples/` into `dest`, as a
/// fresh clone has them (no generated `certs/`, `data/` or `__pycache__/`),
/// so a test can run the quick start without touching the repository.
pub fn copy_quick_start(dest: &Path) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create folder");
        for entry in std::fs::read_dir(from).expect("read folder") {
            let entry = entry.expect("folder entry");
            let name = entry.file_name();
            let path = entry.path();
            if path.is_dir() {
                if !matches!(name.to_str(), Some("certs" | "data" | "__pycache__")) {
                    copy_dir(&path, &to.join(&name));
                }
            } else {
                std::fs::copy(&path, to.join(&name)).expect("copy file");
            }
        }
    }
    std::fs::copy(repo_dir().join("gateway.toml"), dest.join("gateway.toml"))
        .expect("copy gateway.toml");
    copy_dir(&repo_dir().join("examples"), &dest.join("examples"));
}

/// The quick start's config listening on port 0, without its commented
/// `http_listen` line (the harness would wait for a plain-HTTP listener).
pub fn quick_start_on_port_0(config: &str) -> String {
    let listen = "listen = \"127.0.0.1:8443\"";
    assert!(config.contains(listen), "the quick start listens on 8443");
    let config = config.replacen(listen, "listen = \"127.0.0.1:0\"", 1);
    let kept: Vec<&str> = config
        .lines()
        .filter(|line| {
            let commented = line.trim_start().starts_with('#');
            assert!(commented || !line.contains("http_listen"), "{line}");
            !(commented && line.contains("http_listen"))
        })
        .collect();
    kept.join("\n")
}

/// A file of the repository (a fixture a test copies into its config dir).
pub fn repo_file(rel: &str) -> Vec<u8> {
    let path = repo_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The pids a warm instance's set-up wrote to `file` in `dir`, one a line
/// (the `SETUP_COUNT_FILE` of `tests/instances/setup_counter.py`).
pub fn set_up_pids(dir: &Path, file: &str) -> Vec<i32> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("a pid per set-up line"))
        .collect()
}

/// The processes whose environment holds `NAME=VALUE` exactly (read from
/// `/proc/*/environ`; a zombie's is empty).
pub fn processes_with_env(name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// A gateway whose config dir holds the standard-library Lambda runtime
/// client and the warm-instance handler modules of `tests/instances/`.
pub fn instances_builder() -> GatewayBuilder {
    Gateway::builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file(
            "setup_counter.py",
            repo_file("tests/instances/setup_counter.py"),
        )
        .file("init_error.py", repo_file("tests/instances/init_error.py"))
}

/// `[apps.w.functions.NAME]`: a lambda function running `command` (a TOML
/// array), whose set-ups write to `NAME.setup`, plus `extra` lines (more
/// `env.KEY = ...` lines may follow).
pub fn lambda_fn(name: &str, command: &str, extra: &str) -> String {
    format!(
        "\n[apps.w.functions.{name}]\nbackend = \"lambda\"\ncommand = {command}\n\
         env.SETUP_COUNT_FILE = \"{name}.setup\"\n{extra}\n"
    )
}
