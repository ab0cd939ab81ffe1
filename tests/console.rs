//! The admin console: `GET /admin/` on the admin listener is a page that
//! holds no data, `GET /admin/overview` is the JSON it reads with the
//! admin token. A gateway with `[admin]` gets a function deployed through
//! `PUT /admin/apps/{app}/functions/{fn}`, known calls, then the overview
//! is read over HTTPS and the page is driven in headless Chromium
//! (Debian's `chromium`, through playwright-core in `tests/browser/`),
//! which writes `target/console-screenshot.png`.
//!
//! Needs `node`, `npm` (for `npm ci` when `tests/browser/node_modules` is
//! missing) and `/usr/bin/chromium` (or `CHROMIUM=path`) for the browser
//! test; without them it fails and says what to install.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{Gateway, addr_after, instances_builder, json_ok, repo_dir, repo_file};
use serde_json::{Value, json};
use tokio::process::Command;

const TOKEN: &str = "console-test-token-5b1f0c";
const SQUARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/square.py");
const FAIL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fail.py");

/// How long the driver may take in all (it normally needs about 5 s).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(75);

/// A gateway with `[admin]` on a loopback port of its own, a failing exec
/// function and a warm one (one instance kept) from the file, and a class;
/// returns it with the admin listener's address.
async fn start() -> (Gateway, SocketAddr) {
    let gw = instances_builder()
        .file("counter.py", repo_file("examples/counter.py"))
        .env("FNGATE_CONSOLE_TEST_TOKEN", TOKEN)
        .toml(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"FNGATE_CONSOLE_TEST_TOKEN\"\n",
        )
        .toml(&format!(
            "\n[apps.demo.functions.fail]\nbackend = \"exec\"\ncommand = [\"python3\", \"{FAIL}\"]\npublic = true\n"
        ))
        .toml(
            "\n[apps.demo.functions.warm]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"setup_counter.handler\"]\n\
             min_instances = 1\npublic = true\n",
        )
        .toml(
            "\n[apps.demo.classes.counter]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"counter.handler\"]\n\
             parameters = [\"name\"]\nmax_instances = 1\n\
             [apps.demo.classes.counter.functions.incr]\npublic = true\n\
             [apps.demo.classes.counter.functions.get]\nmethods = [\"GET\"]\npublic = true\n",
        )
        .start()
        .await;
    let admin = admin_addr(&gw).await;
    (gw, admin)
}

/// The admin listener's address, from its start-up line.
async fn admin_addr(gw: &Gateway) -> SocketAddr {
    let said = gw
        .logs
        .wait_for("admin API on https://", Duration::from_secs(10))
        .await;
    assert!(said, "no admin listening line:\n{}", gw.logs.joined());
    gw.logs
        .snapshot()
        .iter()
        .find_map(|line| addr_after(line, "admin API on https://"))
        .expect("an address after `admin API on https://`")
}

/// A client of the admin listener trusting only the dev CA.
fn admin_client(gw: &Gateway, admin: SocketAddr) -> reqwest::Client {
    common::client_builder_with_ca(&gw.ca_pem())
        .resolve("localhost", admin)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build admin client")
}

fn admin_url(admin: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", admin.port())
}

async fn overview(client: &reqwest::Client, admin: SocketAddr) -> Value {
    let response = client
        .get(admin_url(admin, "/admin/overview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /admin/overview");
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "the overview is not kept by caches"
    );
    json_ok(response).await
}

/// Deploys `demo/square` (exec, public) through the admin API.
async fn deploy_square(client: &reqwest::Client, admin: SocketAddr) {
    let table = json!({"backend": "exec", "command": ["python3", SQUARE], "public": true});
    let response = client
        .put(admin_url(admin, "/admin/apps/demo/functions/square"))
        .bearer_auth(TOKEN)
        .json(&table)
        .send()
        .await
        .expect("PUT /admin/apps/demo/functions/square");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert!(
        matches!(status, 200 | 201),
        "deploy answered {status}: {body}"
    );
}

/// Waits (bounded) for a spawned call to end; returns its status code.
async fn wait_for_call(gw: &Gateway, client: &reqwest::Client, location: &str) -> u16 {
    for _ in 0..20 {
        let response = client
            .get(gw.url(&format!("{location}?wait=10")))
            .send()
            .await
            .expect("GET /calls/{id}");
        if response.status() != 202 {
            return response.status().as_u16();
        }
    }
    panic!("the call at {location} did not end");
}

/// Three sync calls and two spawns of `demo/square`, one spawn of
/// `demo/fail`, each waited for to its end.
async fn known_calls(gw: &Gateway) {
    let client = gw.client();
    for x in 1..=3 {
        let response = gw
            .post_json(&client, "/demo/square", &format!("{{\"x\":{x}}}"))
            .await;
        assert_eq!(response.text().await.unwrap().trim(), (x * x).to_string());
    }
    for (path, want) in [
        ("/demo/square/spawn", 200),
        ("/demo/square/spawn", 200),
        ("/demo/fail/spawn", 500),
    ] {
        let response = gw.post_json(&client, path, "{\"x\":4}").await;
        assert_eq!(response.status(), 202, "{path}");
        let location = common::header_str(&response, "location").expect("Location");
        assert_eq!(wait_for_call(gw, &client, &location).await, want, "{path}");
    }
}

/// Asserts `response` is a problem+json with `status` and `code` and a
/// request id; returns its body.
async fn admin_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("a JSON problem");
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert!(
        problem["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{problem}"
    );
    problem
}

fn row<'a>(overview: &'a Value, app: &str, name: &str) -> &'a Value {
    overview["functions"]
        .as_array()
        .expect("functions is a list")
        .iter()
        .find(|f| f["app"] == app && f["name"] == name)
        .unwrap_or_else(|| panic!("no row for {app}/{name}: {overview}"))
}

#[tokio::test]
async fn the_overview_shows_a_deployed_function_and_counts_known_calls() {
    let (gw, admin) = start().await;
    let client = admin_client(&gw, admin);
    deploy_square(&client, admin).await;
    known_calls(&gw).await;

    let overview = overview(&client, admin).await;
    let keys: Vec<&str> = overview
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["calls", "classes", "functions", "window_seconds"],
        "{overview}"
    );
    assert!(
        overview["window_seconds"]
            .as_u64()
            .is_some_and(|s| s <= 300)
    );

    let square = row(&overview, "demo", "square");
    let mut keys: Vec<&str> = square
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "app",
            "backend",
            "class",
            "concurrency",
            "instances",
            "latency",
            "name",
            "route",
            "running",
            "target",
            "waiting"
        ],
        "{square}"
    );
    assert_eq!(square["backend"], "exec");
    assert_eq!(square["route"], "/demo/square");
    assert_eq!(square["class"], Value::Null);
    assert_eq!(
        square["instances"],
        Value::Null,
        "an exec function has no instances"
    );
    assert!(
        square["target"]
            .as_str()
            .is_some_and(|t| t.contains("square.py")),
        "{square}"
    );
    assert_eq!(square["running"], 0);
    assert_eq!(square["waiting"], 0);
    // Three sync calls and two spawns answered on its routes.
    assert_eq!(square["latency"]["requests"], 5, "{square}");
    let p50 = square["latency"]["p50_ms"]
        .as_f64()
        .expect("a p50 after requests");
    let p99 = square["latency"]["p99_ms"]
        .as_f64()
        .expect("a p99 after requests");
    assert!(0.0 < p50 && p50 <= p99, "{square}");

    // The warm function keeps one instance; nobody called it.
    let warm = row(&overview, "demo", "warm");
    assert_eq!(warm["backend"], "lambda");
    assert_eq!(
        warm["latency"],
        json!({"p50_ms": null, "p99_ms": null, "requests": 0})
    );
    let instances = &warm["instances"];
    assert_eq!(
        instances["starting"].as_u64().unwrap() + instances["idle"].as_u64().unwrap(),
        1,
        "one instance, kept warm: {warm}"
    );
    assert_eq!(instances["busy"], 0, "{warm}");

    // The class with its methods, which are functions of their own too.
    let classes = overview["classes"].as_array().expect("classes is a list");
    assert_eq!(classes.len(), 1, "{overview}");
    let counter = &classes[0];
    assert_eq!(counter["app"], "demo");
    assert_eq!(counter["name"], "counter");
    assert_eq!(counter["backend"], "lambda");
    assert_eq!(counter["parameters"], json!(["name"]));
    assert_eq!(counter["methods"], json!(["get", "incr"]));
    assert_eq!(
        counter["instances"],
        json!({"starting": 0, "idle": 0, "busy": 0})
    );
    let incr = row(&overview, "demo", "incr");
    assert_eq!(incr["class"], "counter");
    assert_eq!(incr["route"], "/demo/counter/incr");

    // Two spawns of square succeeded, the one of fail failed; sync calls
    // are not stored.
    assert_eq!(
        overview["calls"],
        json!({"pending": 0, "running": 0, "succeeded": 2, "failed": 1,
               "timed_out": 0, "cancelled": 0}),
        "{overview}"
    );
}

#[tokio::test]
async fn a_busy_instance_shows_as_busy() {
    let (gw, admin) = start().await;
    let client = admin_client(&gw, admin);
    // One call holds the warm instance for a while.
    let public = gw.client();
    let spawned = gw
        .post_json(&public, "/demo/warm/spawn", "{\"sleep\":3}")
        .await;
    assert_eq!(spawned.status(), 202);
    let mut seen = Value::Null;
    for _ in 0..300 {
        let overview = overview(&client, admin).await;
        seen = row(&overview, "demo", "warm")["instances"].clone();
        if seen["busy"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["busy"], 1, "the instance running the call: {seen}");
    assert_eq!(seen["idle"], 0, "{seen}");
}

#[tokio::test]
async fn the_data_needs_the_admin_token_and_the_page_holds_none() {
    let (gw, admin) = start().await;
    let client = admin_client(&gw, admin);
    for token in [None, Some("wrong-token")] {
        let mut request = client.get(admin_url(admin, "/admin/overview"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET /admin/overview");
        let problem = admin_problem(response, 401, "unauthorized").await;
        assert!(problem["detail"].is_string(), "{problem}");
    }

    // The page opens without a token, and holds no function's name.
    let response = client
        .get(admin_url(admin, "/admin/"))
        .send()
        .await
        .expect("GET /admin/");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'sha256-"));
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let page = response.text().await.unwrap();
    assert!(page.contains("fngate console"), "{page}");
    assert!(
        !page.contains("warm") && !page.contains("lambda"),
        "no data in the page"
    );
    assert!(
        !page.contains("src=") && !page.contains("href="),
        "no outside assets"
    );

    // `/admin` leads there; other methods are refused.
    let response = client.get(admin_url(admin, "/admin")).send().await.unwrap();
    assert_eq!(response.status(), 200, "redirect followed to the page");
    assert_eq!(response.url().path(), "/admin/");
    let response = client
        .post(admin_url(admin, "/admin/overview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    common::assert_problem(response, 405, "method_not_allowed").await;

    // None of it is on the public listener.
    for path in ["/admin/", "/admin/overview"] {
        let response = gw
            .client()
            .get(gw.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the public listener");
    }
}

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
        "the console test needs Chromium at {} (install it with \
         `apt-get install -y chromium`, or set CHROMIUM=/path/to/chromium)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output().await;
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the console test needs Node.js 20+ as `node` on PATH \
         (install it with `apt-get install -y nodejs npm`): {node:?}"
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    if playwright.is_file() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()) && playwright.is_file(),
        "the console test needs playwright-core in tests/browser/node_modules; \
         `npm ci --prefix tests/browser` failed: {out:?}"
    );
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256_base64(cert_pem: &Path) -> String {
    let pem = std::fs::read(cert_pem).expect("read gateway.crt");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("gateway.crt is PEM");
    let cert = pem.parse_x509().expect("gateway.crt is X.509");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Runs the driver; returns its JSON line.
async fn drive(gw: &Gateway, admin: SocketAddr, screenshot: &Path) -> Value {
    let spki = spki_sha256_base64(&gw.dir.join("certs/gateway.crt"));
    let child = Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .arg(admin_url(admin, ""))
        .args([spki.as_str(), TOKEN, "/demo/square", "/demo/warm"])
        .arg(screenshot)
        .env("CHROMIUM", chromium_path())
        .current_dir(repo_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node tests/browser/console.mjs");
    let out = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("console.mjs did not finish within {DRIVER_TIMEOUT:?}"))
        .expect("wait for console.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.mjs failed ({}): stdout:\n{stdout}\nstderr:\n{stderr}\ngateway logs:\n{}",
        out.status,
        gw.logs.joined()
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("console.mjs printed no JSON line ({e}): {stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_shows_a_function_just_deployed() {
    require_tools().await;
    let (gw, admin) = start().await;
    let client = admin_client(&gw, admin);
    deploy_square(&client, admin).await;
    known_calls(&gw).await;

    let screenshot = repo_dir().join("target/console-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    let r = drive(&gw, admin, &screenshot).await;
    eprintln!("chromium saw: {r}");

    assert_eq!(r["pageStatus"], 200, "{r}");
    assert_eq!(r["title"], "fngate console", "{r}");
    assert!(
        r["policy"]
            .as_str()
            .is_some_and(|p| p.contains("script-src 'sha256-")),
        "{r}"
    );
    // Before a token: the sign-in form and nothing else.
    assert_eq!(r["signInVisibleFirst"], true, "{r}");
    assert_eq!(r["dataVisibleFirst"], false, "{r}");
    assert!(
        !r["textBeforeToken"]
            .as_str()
            .unwrap_or_default()
            .contains("square"),
        "{r}"
    );
    // A wrong token is refused and not kept.
    assert!(
        r["wrongTokenMessage"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{r}"
    );
    assert_eq!(r["storedAfterWrong"], Value::Null, "{r}");
    assert_eq!(r["storedToken"], TOKEN, "kept in sessionStorage: {r}");
    assert_eq!(r["signInVisibleAfter"], false, "{r}");
    assert_eq!(r["dataVisibleAfter"], true, "{r}");

    // The deployed function's row, with its latency over the window.
    let row = &r["row"];
    assert_eq!(row["route"], "/demo/square", "{r}");
    assert_eq!(row["backend"], "exec", "{r}");
    assert_eq!(row["requests"], "5", "{r}");
    for quantile in ["p50", "p99"] {
        let ms: f64 = row[quantile]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{quantile} in ms: {r}"));
        assert!(ms > 0.0, "{r}");
    }
    assert_eq!(row["idle"], "-", "an exec function has no instances: {r}");
    // The warm function's instance.
    let warm = &r["warmRow"];
    assert_eq!(warm["backend"], "lambda", "{r}");
    assert_eq!(warm["idle"], "1", "{r}");
    assert_eq!(warm["busy"], "0", "{r}");
    assert_eq!(r["calls"]["succeeded"], "2", "{r}");
    assert_eq!(r["calls"]["failed"], "1", "{r}");
    assert_eq!(r["classes"], json!(["demo/counter"]), "{r}");

    // It refreshed itself, under its policy, without errors.
    assert_ne!(r["statusFirst"], r["statusLater"], "{r}");
    assert!(r["overviewReads"].as_u64().unwrap_or(0) >= 3, "{r}");
    assert_eq!(r["violations"], json!([]), "{r}");
    // The one error Chromium logs is the wrong token's 401.
    let errors = r["consoleErrors"].as_array().expect("a list");
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.contains("401"))),
        "{r}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}
