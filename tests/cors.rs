//! CORS over real TLS: preflights answered by the gateway without
//! credentials or backend work, the headers a page on an allowed origin
//! needs on real answers, per-app origin lists, and the `"*"` rule.
//! (The headless-browser test of the same flows lives elsewhere.)

mod common;

use common::{Gateway, WORK_PY, assert_problem, exec_fn, header_str, run_bin_env};
use reqwest::Method;

const APP_ORIGIN: &str = "https://app.example";
const SHOP_ORIGIN: &str = "https://shop.example";
/// The API key `k` (scope `invoke:*`) and the SHA-256 of its bytes.
const KEY: &str = "fgk_cors_test_key_0123456789abcdef";

/// An exec function that leaves a line in `ran` (next to itself) for every
/// run, then answers like WORK_PY's square.
const MARK_PY: &str = r#"
import json, os, sys
req = json.loads(sys.stdin.read())
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran"), "a") as f:
    f.write("run\n")
x = (req.get("kwargs") or {}).get("x") or 0
sys.stdout.write(json.dumps({"square": x * x}))
"#;

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn auth_toml() -> String {
    format!(
        "[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{}\"\nscopes = [\"invoke:*\"]\n",
        sha256_hex(KEY.as_bytes())
    )
}

/// `[auth]` (API key `k`), `[cors]` for APP_ORIGIN, app `shop` overriding
/// it with SHOP_ORIGIN; `demo/square` and `shop/buy` (MARK_PY, need
/// credentials), `demo/open` (WORK_PY, public).
async fn gateway() -> Gateway {
    Gateway::builder()
        .file("mark.py", MARK_PY)
        .file("work.py", WORK_PY)
        .toml(&auth_toml())
        .toml(&format!("[cors]\nallow_origins = [\"{APP_ORIGIN}\"]\n"))
        .toml(&format!(
            "[apps.shop.cors]\nallow_origins = [\"{SHOP_ORIGIN}\"]\n"
        ))
        .toml(&exec_fn("demo", "square", "mark.py", ""))
        .toml(&exec_fn("shop", "buy", "mark.py", ""))
        .toml(&exec_fn("demo", "open", "work.py", "public = true"))
        .start()
        .await
}

fn ran(gw: &Gateway) -> bool {
    gw.dir.join("ran").exists()
}

/// A preflight as a browser sends it before a JSON POST with a bearer
/// token, an idempotency key and `Prefer`.
async fn preflight(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    origin: &str,
) -> reqwest::Response {
    client
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key, prefer",
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("OPTIONS {path}: {e:?}"))
}

/// The comma-separated items of header `name`, lowercased.
fn list(resp: &reqwest::Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn assert_lists(resp: &reqwest::Response, name: &str, want: &[&str], case: &str) {
    let got = list(resp, name);
    for item in want {
        assert!(
            got.iter().any(|g| g == item),
            "{case}: {name} has {item}: {got:?}"
        );
    }
}

/// Asserts an allowing preflight answer for `origin`.
fn assert_preflight_allows(resp: &reqwest::Response, origin: &str, case: &str) {
    assert_eq!(resp.status(), 200, "{case}: preflight status");
    assert_eq!(
        header_str(resp, "access-control-allow-origin").as_deref(),
        Some(origin),
        "{case}: allow-origin"
    );
    assert_lists(resp, "access-control-allow-methods", &["post"], case);
    assert_lists(
        resp,
        "access-control-allow-headers",
        &["authorization", "content-type", "idempotency-key", "prefer"],
        case,
    );
    assert_eq!(
        header_str(resp, "access-control-max-age").as_deref(),
        Some("600"),
        "{case}: max-age"
    );
    assert_lists(resp, "vary", &["origin"], case);
}

fn assert_no_allow_origin(resp: &reqwest::Response, case: &str) {
    assert_eq!(
        header_str(resp, "access-control-allow-origin"),
        None,
        "{case}: no allow-origin"
    );
}

#[tokio::test]
async fn preflight_is_answered_without_credentials_or_backend() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        for path in ["/demo/square", "/demo/square/spawn", "/demo/open"] {
            let resp = preflight(&gw, &client, path, APP_ORIGIN).await;
            assert_preflight_allows(&resp, APP_ORIGIN, &format!("{proto} {path}"));
            assert!(
                header_str(&resp, "www-authenticate").is_none(),
                "{proto} {path}: the preflight reached auth"
            );
        }
    }
    assert!(!ran(&gw), "a preflight ran the function");
}

#[tokio::test]
async fn allowed_origin_gets_allow_origin_and_exposed_headers_on_answers() {
    let gw = gateway().await;
    let client = gw.client();
    let post = |path: &str, key: Option<&str>| {
        let mut req = client
            .post(gw.url(path))
            .header("origin", APP_ORIGIN)
            .header("content-type", "application/json")
            .body(r#"{"x": 3}"#);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    let exposed = ["location", "retry-after", "x-request-id", "x-call-id"];

    let resp = post("/demo/square", Some(KEY)).await.expect("POST");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header_str(&resp, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN)
    );
    assert_lists(&resp, "access-control-expose-headers", &exposed, "sync 200");
    assert_lists(&resp, "vary", &["origin"], "sync 200");

    let resp = post("/demo/square/spawn", Some(KEY)).await.expect("spawn");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        header_str(&resp, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN),
        "spawn 202"
    );
    assert_lists(
        &resp,
        "access-control-expose-headers",
        &exposed,
        "spawn 202",
    );
    let location = header_str(&resp, "location").expect("Location");

    // The poll from the page: /calls answers with CORS headers too.
    let resp = client
        .get(gw.url(&format!("{location}?wait=10")))
        .header("origin", APP_ORIGIN)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET call");
    assert_eq!(resp.status(), 200, "poll");
    assert_eq!(
        header_str(&resp, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN),
        "poll"
    );

    // Errors are readable by the page as well.
    let resp = post("/demo/square", None).await.expect("POST");
    assert_eq!(
        header_str(&resp, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN),
        "401"
    );
    assert_lists(&resp, "access-control-expose-headers", &exposed, "401");
    assert_problem(resp, 401, "unauthorized").await;
}

#[tokio::test]
async fn disallowed_origins_get_no_allow_origin() {
    let gw = gateway().await;
    let client = gw.client();
    for origin in [
        "https://evil.example",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example.evil",
        "https://sub.app.example",
        "null",
    ] {
        let resp = preflight(&gw, &client, "/demo/square", origin).await;
        assert_no_allow_origin(&resp, &format!("preflight from {origin}"));
        let resp = client
            .post(gw.url("/demo/open"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(r#"{"x": 3}"#)
            .send()
            .await
            .expect("POST");
        assert_no_allow_origin(&resp, &format!("POST from {origin}"));
    }
    let resp = preflight(
        &gw,
        &client,
        "/calls/fc-0123456789abcdef0123456789abcdef",
        "https://evil.example",
    )
    .await;
    assert_no_allow_origin(&resp, "/calls preflight from evil");
    assert!(!ran(&gw), "a preflight ran the function");
}

#[tokio::test]
async fn an_apps_own_origins_replace_the_default() {
    let gw = gateway().await;
    let client = gw.client();
    let resp = preflight(&gw, &client, "/shop/buy", SHOP_ORIGIN).await;
    assert_preflight_allows(&resp, SHOP_ORIGIN, "shop origin on /shop/buy");
    let resp = preflight(&gw, &client, "/shop/buy", APP_ORIGIN).await;
    assert_no_allow_origin(&resp, "default origin on /shop/buy");
    let resp = preflight(&gw, &client, "/demo/square", SHOP_ORIGIN).await;
    assert_no_allow_origin(&resp, "shop origin on /demo/square");
    assert!(!ran(&gw), "a preflight ran the function");
}

#[tokio::test]
async fn calls_answer_cors_for_every_origin_of_any_app() {
    let gw = gateway().await;
    let client = gw.client();
    let resp = client
        .post(gw.url("/shop/buy/spawn"))
        .header("origin", SHOP_ORIGIN)
        .header("content-type", "application/json")
        .bearer_auth(KEY)
        .body(r#"{"x": 2}"#)
        .send()
        .await
        .expect("spawn");
    assert_eq!(resp.status(), 202);
    let location = header_str(&resp, "location").expect("Location");
    for origin in [APP_ORIGIN, SHOP_ORIGIN] {
        let resp = client
            .request(Method::OPTIONS, gw.url(&location))
            .header("origin", origin)
            .header("access-control-request-method", "DELETE")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .expect("preflight");
        assert_eq!(resp.status(), 200, "{origin}");
        assert_eq!(
            header_str(&resp, "access-control-allow-origin").as_deref(),
            Some(origin),
            "preflight of /calls from {origin}"
        );
        assert_lists(
            &resp,
            "access-control-allow-methods",
            &["get", "delete"],
            origin,
        );
        let resp = client
            .get(gw.url(&format!("{location}?wait=10")))
            .header("origin", origin)
            .bearer_auth(KEY)
            .send()
            .await
            .expect("GET call");
        assert_eq!(resp.status(), 200, "GET from {origin}");
        assert_eq!(
            header_str(&resp, "access-control-allow-origin").as_deref(),
            Some(origin),
            "GET /calls from {origin}"
        );
    }
}

/// Writes `text` (after a `[server]` table) and runs `check` and `serve`
/// on it; returns (code, stderr) of each.
async fn run_config(text: &str) -> Vec<(&'static str, Option<i32>, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("work.py"), WORK_PY).expect("write work.py");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{text}"),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let mut out = Vec::new();
    for sub in ["check", "serve"] {
        let (code, _, stderr) = run_bin_env(&[sub, "--config", config], dir.path(), &[]).await;
        out.push((sub, code, stderr));
    }
    out
}

#[tokio::test]
async fn wildcard_origin_is_refused_for_apps_needing_credentials() {
    let private = exec_fn("demo", "square", "work.py", "");
    let public = exec_fn("demo", "open", "work.py", "public = true");
    let cases = [
        (
            "default *",
            format!(
                "{}[cors]\nallow_origins = [\"*\"]\n{private}{public}",
                auth_toml()
            ),
        ),
        (
            "app override *",
            format!(
                "{}[cors]\nallow_origins = [\"{APP_ORIGIN}\"]\n[apps.demo.cors]\nallow_origins = [\"*\"]\n{private}",
                auth_toml()
            ),
        ),
    ];
    for (case, text) in cases {
        for (sub, code, stderr) in run_config(&text).await {
            assert_eq!(code, Some(2), "{case}, {sub}: {stderr}");
            assert!(
                stderr.contains("cors.allow_origins"),
                "{case}, {sub}: names the key: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn wildcard_origin_is_allowed_for_public_only_apps() {
    // All public, with [auth] set; and an app needing credentials keeps its
    // own list while the default is "*".
    let gw = Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&auth_toml())
        .toml("[cors]\nallow_origins = [\"*\"]\n")
        .toml(&format!(
            "[apps.shop.cors]\nallow_origins = [\"{SHOP_ORIGIN}\"]\n"
        ))
        .toml(&exec_fn("demo", "open", "work.py", "public = true"))
        .toml(&exec_fn("shop", "buy", "work.py", ""))
        .start()
        .await;
    let client = gw.client();
    let origin = "https://anyone.example";
    let resp = preflight(&gw, &client, "/demo/open", origin).await;
    assert_eq!(resp.status(), 200);
    let allow = header_str(&resp, "access-control-allow-origin");
    assert!(
        allow.as_deref() == Some("*") || allow.as_deref() == Some(origin),
        "any origin on a public app: {allow:?}"
    );
    let resp = preflight(&gw, &client, "/shop/buy", origin).await;
    assert_no_allow_origin(&resp, "any origin on the app with its own list");
    let resp = preflight(&gw, &client, "/shop/buy", SHOP_ORIGIN).await;
    assert_preflight_allows(&resp, SHOP_ORIGIN, "shop origin on /shop/buy");
}
