//! `/_/openapi.json` and `/_/docs` from a real gateway: the document is
//! checked by an independent validator (PyPI `openapi-spec-validator`, run
//! on the fetched document), lists what is deployed (input schemas, class
//! methods with their parameters, spawn/map/status routes, security only
//! with `[auth]` and only on non-public functions), and `schemathesis`
//! runs against the quick start and finds no answer the document does not
//! allow. The page is self-contained, under a policy that runs only its
//! own inline script.
//!
//! Needs `python3` with `openapi-spec-validator` and `schemathesis`
//! (`.ci/run` installs both); without them the tests fail and say so.

mod common;
#[path = "admin/support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::{Gateway, exec_fn, repo_dir};
use serde_json::{Value, json};
use tokio::process::Command;

const SECRET_ENV: &str = "FNGATE_TEST_OPENAPI_JWT_SECRET";
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

/// How long one schemathesis run may take (it needs about a minute).
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(240);

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The quick start (gateway.toml and examples/, copied into the folder
/// returned with it) on a free port.
async fn quick_start() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().expect("temp dir");
    common::copy_quick_start(dir.path());
    let text = std::fs::read_to_string(dir.path().join("gateway.toml")).expect("read gateway.toml");
    let listen = "listen = \"127.0.0.1:8443\"";
    assert!(text.contains(listen), "gateway.toml listens on 8443");
    // (The harness waits for a plain HTTP listener too when the text
    // names `http_listen`, as a comment of the quick start does.)
    let text: String = text
        .replacen(listen, "listen = \"127.0.0.1:0\"", 1)
        .lines()
        .filter(|line| !line.trim_start().starts_with("# http_listen"))
        .map(|line| format!("{line}\n"))
        .collect();
    let gw = Gateway::builder()
        .in_dir(dir.path())
        .raw_config(&text)
        .start()
        .await;
    (dir, gw)
}

/// How many operations the document has (a path item's `parameters` is
/// none).
fn operation_ids(document: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for item in document["paths"].as_object().expect("paths").values() {
        for (method, operation) in item.as_object().expect("a path item") {
            if method != "parameters" {
                ids.push(
                    operation["operationId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    ids
}

async fn document(gw: &Gateway) -> Value {
    let response = gw
        .client()
        .get(gw.url("/_/openapi.json"))
        .send()
        .await
        .expect("GET /_/openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        common::header_str(&response, "content-type").as_deref(),
        Some("application/json")
    );
    response.json().await.expect("the document is JSON")
}

/// Runs `openapi-spec-validator` on `document`; panics with its output
/// when it finds the document invalid.
async fn validate(document: &Value, dir: &Path) {
    let file = dir.join("openapi.json");
    std::fs::write(&file, document.to_string()).expect("write the document");
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the test needs openapi-spec-validator: \
         python3 -m pip install --user openapi-spec-validator==0.9.0\n{stderr}"
    );
    assert!(
        output.status.success() && stdout.contains(": OK"),
        "openapi-spec-validator refused the document:\n{stdout}\n{stderr}"
    );
}

fn operation<'a>(document: &'a Value, path: &str, method: &str) -> &'a Value {
    let operation = &document["paths"][path][method];
    assert!(
        operation.is_object(),
        "no {method} {path} in {}",
        document["paths"]
    );
    operation
}

fn parameter_names(operation: &Value) -> Vec<String> {
    operation["parameters"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn quick_start_document_is_valid_and_lists_what_is_deployed() {
    let (_dir, gw) = quick_start().await;
    let document = document(&gw).await;
    validate(&document, &gw.dir).await;
    assert_eq!(document["openapi"], "3.1.0");
    // Served from the origin the client addressed, so it works as served.
    assert_eq!(document["servers"], json!([{"url": gw.url("")}]));

    // demo/greet's input schema is its body, as the file declares it.
    let greet: Value =
        serde_json::from_slice(&common::repo_file("examples/schemas/greet.json")).unwrap();
    let schemas = &document["components"]["schemas"];
    let input = &schemas["demo.greet.input"];
    assert_eq!(input["properties"], greet["properties"]);
    assert_eq!(input["required"], greet["required"]);
    let post = operation(&document, "/demo/greet", "post");
    assert_eq!(post["operationId"], "demo.greet.invoke");
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/demo.greet.input"
    );
    // GET takes the schema's properties from the query.
    let get = operation(&document, "/demo/greet", "get");
    assert_eq!(parameter_names(get), ["name", "times"]);
    assert_eq!(get["parameters"][0]["required"], true);
    // A function without a schema takes any JSON.
    assert_eq!(
        operation(&document, "/demo/echo", "post")["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/AnyJson"
    );
    // demo/echo allows only POST.
    assert!(document["paths"]["/demo/echo"].get("get").is_none());

    // A class method, with the class's parameter in the query.
    let incr = operation(&document, "/demo/counter/incr", "post");
    assert_eq!(incr["operationId"], "demo.counter.incr.invoke");
    assert_eq!(parameter_names(incr), ["name", "Prefer"]);
    let get_count = operation(&document, "/demo/counter/get", "get");
    assert!(parameter_names(get_count).contains(&"name".to_owned()));

    // Spawn, map, spawned map, and the calls' routes.
    let spawn = operation(&document, "/demo/square/spawn", "post");
    let accepted = &spawn["responses"]["202"];
    assert_eq!(
        accepted["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SpawnAccepted"
    );
    assert_eq!(accepted["headers"]["Location"]["required"], true);
    assert_eq!(accepted["links"]["result"]["operationId"], "calls.get");
    let map = operation(&document, "/demo/square/map", "post");
    assert!(map["responses"]["200"]["content"]["application/x-ndjson"].is_object());
    assert!(map["requestBody"]["content"]["application/x-ndjson"].is_object());
    operation(&document, "/demo/square/map/spawn", "post");
    let status = operation(&document, "/calls/{call_id}", "get");
    assert_eq!(parameter_names(status), ["wait"]);
    for code in ["200", "202", "404", "410"] {
        assert!(status["responses"][code].is_object(), "GET /calls: {code}");
    }
    assert!(operation(&document, "/calls/{call_id}", "delete")["responses"]["409"].is_object());
    operation(&document, "/_/health", "get");
    operation(&document, "/_/ready", "get");

    // A streaming function answers NDJSON or events.
    let countdown = &operation(&document, "/demo/countdown", "get")["responses"]["200"];
    assert!(countdown["content"]["application/x-ndjson"].is_object());
    assert!(countdown["content"]["text/event-stream"].is_object());

    // Errors are problem+json, each status with the codes it carries.
    let problem = &schemas["Problem"];
    for member in ["type", "title", "status", "code", "detail", "request_id"] {
        assert!(
            problem["required"]
                .as_array()
                .unwrap()
                .contains(&json!(member)),
            "{member}"
        );
    }
    assert_eq!(
        post["responses"]["400"]["$ref"],
        "#/components/responses/BadRequest"
    );
    let bad_request = &document["components"]["responses"]["BadRequest"]["content"]["application/problem+json"]
        ["schema"];
    assert!(
        bad_request["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("invalid_arguments"))
    );

    // No [auth]: no security anywhere.
    assert!(document["components"].get("securitySchemes").is_none());
    assert!(!document.to_string().contains("\"security\""));

    // Operation ids are unique.
    let mut ids = operation_ids(&document);
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids repeat: {ids:?}");
}

/// A schema with a local reference, which must still resolve where the
/// document puts it.
const POINT_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {"at": {"$ref": "#/$defs/point"}},
  "required": ["at"],
  "$defs": {"point": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}
}"##;

#[tokio::test]
async fn with_auth_the_security_schemes_guard_non_public_functions_only() {
    let key = "openapi-test-api-key";
    let gw = Gateway::builder()
        .env(SECRET_ENV, SECRET)
        .file("echo.py", common::RAW_ECHO_PY)
        .file("point.json", POINT_SCHEMA)
        .toml(&format!(
            "[auth]\njwt_secret_env = \"{SECRET_ENV}\"\n\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{}\"\nscopes = [\"invoke:*\"]\n\n[rate_limit]\nrequests_per_second = 1000\nburst = 1000\n",
            sha256_hex(key.as_bytes())
        ))
        .toml(&exec_fn("shop", "open", "echo.py", "public = true"))
        .toml(&exec_fn(
            "shop",
            "buy",
            "echo.py",
            "input_schema = \"point.json\"",
        ))
        .toml(&exec_fn("shop", "feed", "echo.py", "stream = true\nmethods = [\"GET\"]"))
        .toml(&common::http_fn(
            "web",
            "site",
            &["http://127.0.0.1:9/".to_owned()],
            "passthrough = true\nmethods = [\"GET\", \"POST\"]",
        ))
        .start()
        .await;
    // No credentials needed for the document, nor for the page.
    let document = document(&gw).await;
    validate(&document, &gw.dir).await;

    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["jwt"]["type"], "http");
    assert_eq!(schemes["jwt"]["scheme"], "bearer");
    assert_eq!(schemes["jwt"]["bearerFormat"], "JWT");
    assert_eq!(schemes["apiKey"]["type"], "http");
    assert_eq!(schemes["apiKey"]["scheme"], "bearer");
    let buy = operation(&document, "/shop/buy", "post");
    assert_eq!(
        buy["security"],
        json!([{"jwt": ["invoke:shop/buy"]}, {"apiKey": ["invoke:shop/buy"]}])
    );
    assert!(buy["responses"]["401"].is_object());
    assert!(buy["responses"]["429"].is_object(), "[rate_limit] is set");
    assert!(
        operation(&document, "/shop/buy/map/spawn", "post")["security"].is_array(),
        "every route of a non-public function needs credentials"
    );
    assert!(
        operation(&document, "/shop/open", "post")
            .get("security")
            .is_none()
    );
    assert!(
        operation(&document, "/_/health", "get")
            .get("security")
            .is_none()
    );
    // Anyone may read a call by its id; credentials read their own.
    assert_eq!(
        operation(&document, "/calls/{call_id}", "get")["security"][0],
        json!({})
    );

    // The input schema's local reference resolves in the document.
    let input = &document["components"]["schemas"]["shop.buy.input"];
    let reference = input["properties"]["at"]["$ref"].as_str().unwrap();
    let pointer = reference.strip_prefix('#').expect("a local reference");
    assert_eq!(
        document.pointer(pointer),
        Some(&json!({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}))
    );

    // A streaming GET-only function; a passthrough function's forwards.
    let feed = operation(&document, "/shop/feed", "get");
    assert!(feed["responses"]["200"]["content"]["text/event-stream"].is_object());
    assert!(document["paths"]["/shop/feed"].get("post").is_none());
    let site = operation(&document, "/web/site/{path}", "post");
    assert!(site["responses"]["default"]["content"]["*/*"].is_object());
    assert!(document["paths"]["/web/site/spawn"].is_null());
    assert!(document["paths"]["/web/site"].get("delete").is_none());

    // Both routes are public, and GET/HEAD only.
    let client = gw.client();
    for path in ["/_/openapi.json", "/_/docs"] {
        let head = client.head(gw.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        let post = client.post(gw.url(path)).send().await.unwrap();
        assert_eq!(
            common::header_str(&post, "allow").as_deref(),
            Some("GET, HEAD")
        );
        common::assert_problem(post, 405, "method_not_allowed").await;
    }
    // The document names no credential.
    assert!(!document.to_string().contains(key));
    assert!(!document.to_string().contains(SECRET));
}

#[tokio::test]
async fn the_document_is_built_from_the_host_the_client_named() {
    let gw = Gateway::builder()
        .file("echo.py", common::RAW_ECHO_PY)
        .toml(&exec_fn("demo", "echo", "echo.py", ""))
        .start()
        .await;
    let via_ip = common::client_builder_with_ca(&gw.ca_pem())
        .build()
        .unwrap()
        .get(format!(
            "https://127.0.0.1:{}/_/openapi.json",
            gw.addr.port()
        ))
        .send()
        .await
        .unwrap();
    let document: Value = via_ip.json().await.unwrap();
    assert_eq!(
        document["servers"][0]["url"],
        format!("https://127.0.0.1:{}", gw.addr.port())
    );
}

/// HTTP/2 forbids DATA frames on an answer to HEAD: curl refuses one
/// that has them (a stream error), and gets the length without the body.
#[tokio::test]
async fn head_answers_over_h2_carry_the_length_and_no_body() {
    let (_dir, gw) = quick_start().await;
    for path in ["/_/openapi.json", "/_/docs", "/_/health"] {
        let output = Command::new("curl")
            .args(["-sS", "-I", "--http2", "--cacert"])
            .arg(gw.ca_path())
            .arg(gw.url(path))
            .output()
            .await
            .expect("run curl");
        let head = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
        assert!(
            output.status.success(),
            "HEAD {path}: {}\n{head}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(head.starts_with("http/2 200"), "{head}");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(length.is_some_and(|n| n > 0), "HEAD {path}: {head}");
    }
}

#[tokio::test]
async fn docs_page_is_self_contained_under_a_strict_policy() {
    let (_dir, gw) = quick_start().await;
    let response = gw.client().get(gw.url("/_/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name| common::header_str(&response, name).unwrap_or_default();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let policy = header("content-security-policy");
    let html = response.text().await.unwrap();

    // No asset from anywhere else: every src= and href= is this origin's.
    let lower = html.to_ascii_lowercase();
    for attribute in ["src=", "href="] {
        for (at, _) in lower.match_indices(attribute) {
            let value = lower[at + attribute.len()..].trim_start_matches(['"', '\'']);
            assert!(
                value.starts_with('/') && !value.starts_with("//"),
                "{attribute} to another origin: {}",
                &html[at..(at + 80).min(html.len())]
            );
        }
    }
    assert!(!lower.contains("http://") && !lower.contains("https://"));
    assert!(!lower.contains("<link") && !lower.contains("@import"));

    // The policy allows exactly the page's own inline script and style.
    let inline = |open: &str, close: &str| {
        let start = html.find(open).expect("an inline element") + open.len();
        let end = start + html[start..].find(close).expect("its end");
        html[start..end].to_owned()
    };
    let hash = |text: String| {
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(sha256(text.as_bytes()))
        )
    };
    let directive = |name: &str| {
        policy
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {policy}"))
            .to_owned()
    };
    assert_eq!(directive("default-src"), "'none'");
    assert_eq!(
        directive("script-src"),
        hash(inline("<script>", "</script>"))
    );
    assert_eq!(directive("style-src"), hash(inline("<style>", "</style>")));
    assert_eq!(directive("connect-src"), "'self'");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(html.matches("<script").count(), 1, "one script, inline");
    // The page reads the document of the origin it came from.
    assert!(html.contains("fetch(\"/_/openapi.json\""));
}

/// Runs schemathesis against the quick start: every operation, the
/// coverage, fuzzing and stateful phases (spawns' links feed the calls'
/// routes real ids), with the checks that hold a gateway to its document:
/// status codes, content types, bodies and headers as documented, and no
/// 5xx but a function's own failure (`tests/openapi/hooks.py`).
#[tokio::test]
async fn schemathesis_finds_no_contract_violation_in_the_quick_start() {
    let (_dir, gw) = quick_start().await;
    let operations = operation_ids(&document(&gw).await).len();
    let hooks = repo_dir().join("tests/openapi");
    let run = Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            &gw.url("/_/openapi.json"),
            "--tls-verify",
        ])
        .arg(gw.ca_path())
        .args([
            "--checks",
            "status_code_conformance,content_type_conformance,response_schema_conformance,\
             response_headers_conformance,no_gateway_server_error",
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            "3",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--seed",
            "13",
            "--no-shrink",
        ])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &hooks)
        // Its reports and cache go to the gateway's folder, not the repository.
        .current_dir(&gw.dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCHEMATHESIS_TIMEOUT, run)
        .await
        .expect("schemathesis ends within its time")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the test needs schemathesis: python3 -m pip install --user schemathesis==4.32.5\n{stderr}"
    );
    assert!(
        output.status.success(),
        "schemathesis found contract violations:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.logs.joined()
    );
    // It tested every operation, and found nothing.
    let tested: Option<usize> = stdout.split("Tested: ").nth(1).and_then(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    // (Every one but `GET /_/openapi.json`, which it does not test.)
    assert_eq!(tested, Some(operations - 1), "{stdout}");
    assert!(stdout.contains("passed"), "{stdout}");
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256_base64(cert_pem: &Path) -> String {
    let pem =
        std::fs::read(cert_pem).unwrap_or_else(|e| panic!("read {}: {e}", cert_pem.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("gateway.crt is PEM");
    let cert = pem.parse_x509().expect("gateway.crt is X.509");
    base64::engine::general_purpose::STANDARD.encode(sha256(cert.public_key().raw))
}

/// The page in headless Chromium (Debian's `chromium`, driven by
/// playwright-core from `tests/browser/`): it renders the document under
/// its own policy with nothing blocked, and its "try it" form calls
/// functions and shows their answers. A screenshot goes to
/// `target/openapi-docs.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_renders_the_document_and_tries_calls_in_chromium() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.is_file(),
        "the docs page test needs Chromium at {} (apt-get install -y chromium, or set CHROMIUM)",
        chromium.display()
    );
    assert!(
        repo_dir()
            .join("tests/browser/node_modules/playwright-core/package.json")
            .is_file(),
        "the docs page test needs playwright-core: npm ci --prefix tests/browser"
    );
    let (_dir, gw) = quick_start().await;
    let screenshot = repo_dir().join("target/openapi-docs.png");
    let _ = std::fs::remove_file(&screenshot);
    let spki = spki_sha256_base64(&gw.dir.join("certs/gateway.crt"));
    let driver = Command::new("node")
        .arg(repo_dir().join("tests/openapi/docs.mjs"))
        .arg(gw.url(""))
        .arg(&spki)
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), driver)
        .await
        .expect("docs.mjs ends within 90 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "docs.mjs failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.logs.joined()
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let seen: Value = serde_json::from_str(line).expect("docs.mjs prints one JSON line");

    assert_eq!(seen["pageStatus"], 200);
    assert_eq!(
        seen["violations"],
        json!([]),
        "the policy blocked something"
    );
    assert_eq!(seen["consoleErrors"], json!([]), "{seen}");
    // Every operation of the document is on the page, by app.
    let on_page: Vec<String> = serde_json::from_value(seen["operations"].clone()).unwrap();
    let mut documented = operation_ids(&document(&gw).await);
    let mut shown = on_page.clone();
    documented.sort();
    shown.sort();
    assert_eq!(shown, documented);
    assert_eq!(seen["sections"], json!(["demo", "calls", "gateway"]));
    // Nothing but this origin was asked for.
    for url in seen["requests"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&gw.url("/")), "asked another origin: {url}");
    }
    // The forms call the functions and show their answers.
    let greet = &seen["greet"];
    assert!(
        greet["status"].as_str().unwrap().starts_with("200"),
        "{greet}"
    );
    assert!(
        greet["answer"].as_str().unwrap().contains("hello, Ada"),
        "{greet}"
    );
    let square = &seen["square"];
    assert!(
        square["status"].as_str().unwrap().starts_with("200"),
        "{square}"
    );
    assert_eq!(square["answer"], "144");
    let bad = &seen["badGreet"];
    assert!(bad["status"].as_str().unwrap().starts_with("400"), "{bad}");
    assert!(
        bad["answer"]
            .as_str()
            .unwrap()
            .contains("invalid_arguments"),
        "{bad}"
    );
    assert!(
        screenshot.is_file(),
        "a screenshot at {}",
        screenshot.display()
    );
}

/// The document is built from the registry serving now: a deploy adds a
/// function to it and a delete takes it away; a reload (SIGHUP) adds what
/// the new config adds.
#[tokio::test]
async fn the_document_follows_deploys_and_reloads() {
    let builder = support::builder().toml(&exec_fn("demo", "ver", "version.py", ""));
    let text = builder.config_text();
    let gw = builder.start().await;
    let admin = support::Admin::of(&gw).await;
    let before = document(&gw).await;
    assert!(before["paths"]["/demo/ver"]["post"].is_object());
    assert!(before["paths"]["/shop/new"].is_null());

    let mut table = support::version_table("1");
    table["methods"] = json!(["GET"]);
    table["input_schema"] = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    admin.deploy("shop", "new", &table).await;
    let deployed = document(&gw).await;
    let get = operation(&deployed, "/shop/new", "get");
    assert_eq!(get["operationId"], "shop.new.invoke_get");
    assert_eq!(get["parameters"][0]["schema"], json!({"type": "integer"}));
    assert!(deployed["paths"]["/shop/new"].get("post").is_none());
    assert!(
        deployed["tags"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "shop", "description": "The functions of app `shop`."}))
    );

    let (status, _) = admin
        .send("DELETE", "/admin/apps/shop/functions/new", None)
        .await;
    assert_eq!(status, 200);
    let deleted = document(&gw).await;
    assert!(deleted["paths"]["/shop/new"].is_null());
    assert!(
        deleted["components"]["schemas"]
            .get("shop.new.input")
            .is_none()
    );

    // A reload: the file gains a function.
    let next = format!(
        "{text}{}",
        exec_fn("demo", "added", "version.py", "public = true")
    );
    let tmp = gw.dir.join("gateway.toml.new");
    std::fs::write(&tmp, next).expect("write the new config");
    std::fs::rename(&tmp, gw.dir.join("gateway.toml")).expect("rename it over the config");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
    assert!(
        gw.logs
            .wait_for("configuration reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gw.logs.joined()
    );
    let reloaded = document(&gw).await;
    assert!(
        operation(&reloaded, "/demo/added", "post")
            .get("security")
            .is_none()
    );
    assert!(reloaded["paths"]["/demo/ver"]["post"].is_object());
}
