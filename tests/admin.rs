//! The admin listener: its own TLS listener on loopback, a Bearer token on
//! every route, absent from the public listener and absent altogether
//! without `[admin]`; refused deploys name the key as the file's
//! validation does and change nothing; unknown names answer the
//! contract's 404 codes.

mod common;
#[path = "admin/support.rs"]
mod support;

use common::{Gateway, WORK_PY, assert_problem, exec_fn, header_str, run_bin_env};
use serde_json::json;
use support::{ADMIN_TOML, Admin, TOKEN, TOKEN_ENV, builder, version_table};

async fn started() -> (Gateway, Admin) {
    let gw = builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("demo", "square", "work.py", ""))
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    (gw, admin)
}

#[tokio::test]
async fn an_admin_request_without_or_with_a_wrong_token_is_401() {
    let (gw, admin) = started().await;
    let h2 = common::client_builder_with_ca(&gw.ca_pem())
        .resolve("localhost", admin.addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for client in [&admin.client, &h2] {
        for (method, path) in [
            ("GET", "/admin/functions"),
            ("PUT", "/admin/apps/demo/functions/cube"),
            ("DELETE", "/admin/apps/demo/functions/square"),
            ("GET", "/admin/apps/demo/functions/square/versions"),
            ("POST", "/admin/apps/demo/functions/square/rollback"),
            ("GET", "/admin/overview"),
            ("GET", "/admin/no-such-route"),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            for authorization in [
                None,
                Some("Bearer wrong-token".to_owned()),
                Some(format!("Bearer {TOKEN}x")),
                Some(format!("Basic {TOKEN}")),
                Some("Bearer".to_owned()),
            ] {
                let mut request = client.request(method.clone(), admin.url(path));
                if let Some(value) = &authorization {
                    request = request.header("authorization", value);
                }
                let response = request.send().await.unwrap();
                let challenge = header_str(&response, "www-authenticate").unwrap_or_default();
                assert!(
                    challenge.starts_with("Bearer"),
                    "{method} {path} with {authorization:?}: {challenge:?}"
                );
                assert_problem(response, 401, "unauthorized").await;
            }
        }
        // The right token opens it, over both protocols.
        let response = client
            .get(admin.url("/admin/functions"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Nothing was deployed by the refused requests.
    let (_, versions) = admin
        .get("/admin/apps/demo/functions/square/versions")
        .await;
    assert_eq!(versions["versions"], json!([]));
    assert!(admin.listed("demo", "cube").await.is_none());
}

#[tokio::test]
async fn the_admin_routes_are_absent_on_the_public_listener() {
    let (gw, admin) = started().await;
    let client = gw.client();
    for (method, path) in [
        ("GET", "/admin/functions"),
        ("GET", "/admin/"),
        ("GET", "/admin/overview"),
        ("PUT", "/admin/apps/demo/functions/cube"),
        ("POST", "/admin/apps/demo/functions/square/rollback"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), gw.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(version_table("1").to_string())
            .send()
            .await
            .unwrap();
        // What the public router says of an app named `admin`.
        assert_problem(response, 404, "app_not_found").await;
    }
    assert!(admin.listed("demo", "cube").await.is_none());

    // Without [admin], no admin listener at all.
    let plain = Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("demo", "square", "work.py", ""))
        .env(TOKEN_ENV, TOKEN)
        .start()
        .await;
    assert!(!plain.logs.joined().contains("admin API on"));
    let response = plain
        .client()
        .get(plain.url("/admin/functions"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, "app_not_found").await;
}

#[tokio::test]
async fn a_bad_deploy_is_400_naming_the_key_and_changes_nothing() {
    let (gw, admin) = started().await;
    let (_, before) = admin.get("/admin/functions").await;
    let mut bad_timeout = version_table("1");
    bad_timeout["timeout"] = json!("soon");
    let mut unknown_key = version_table("1");
    unknown_key["colour"] = json!("blue");
    let mut reserved = version_table("1");
    reserved["backend"] = json!("ftp");
    for (path, body, key) in [
        (
            "/admin/apps/demo/functions/cube",
            bad_timeout.clone(),
            "apps.demo.functions.cube.timeout",
        ),
        (
            "/admin/apps/demo/functions/square",
            bad_timeout,
            "apps.demo.functions.square.timeout",
        ),
        (
            "/admin/apps/demo/functions/cube",
            unknown_key,
            "apps.demo.functions.cube",
        ),
        (
            "/admin/apps/demo/functions/cube",
            reserved,
            "apps.demo.functions.cube",
        ),
        (
            "/admin/apps/demo/functions/calls",
            version_table("1"),
            "apps.demo.functions",
        ),
    ] {
        let (status, problem) = admin.send("PUT", path, Some(&body)).await;
        assert_eq!(status, 400, "PUT {path} {body}: {problem}");
        assert_eq!(problem["code"], "invalid_config", "{problem}");
        let named = problem["key"].as_str().unwrap_or_default();
        assert!(
            named.starts_with(key),
            "PUT {path}: key {named:?}, want {key}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(named), "{problem}");
    }
    // Not JSON, not an object, and an empty body.
    for body in ["{\"backend\": ", "[1, 2]", ""] {
        let response = admin
            .client
            .put(admin.url("/admin/apps/demo/functions/cube"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, 400, "{body:?}");
    }
    let (_, after) = admin.get("/admin/functions").await;
    assert_eq!(before, after);
    let (status, _) = admin.get("/admin/apps/demo/functions/cube/versions").await;
    assert_eq!(status, 404);
    // The file's function serves as before; the refused one does not.
    let square = gw
        .post_json(&gw.client(), "/demo/square", r#"{"x": 7}"#)
        .await;
    assert_eq!(common::json_ok(square).await["square"], 49);
    let cube = gw.post_json(&gw.client(), "/demo/cube", "{}").await;
    assert_problem(cube, 404, "function_not_found").await;
}

#[tokio::test]
async fn unknown_apps_and_functions_answer_the_contracts_404_codes() {
    let (_gw, admin) = started().await;
    for (method, path, code) in [
        (
            "DELETE",
            "/admin/apps/nope/functions/square",
            "app_not_found",
        ),
        (
            "DELETE",
            "/admin/apps/demo/functions/nope",
            "function_not_found",
        ),
        (
            "DELETE",
            "/admin/apps/demo/classes/square",
            "function_not_found",
        ),
        (
            "GET",
            "/admin/apps/nope/functions/square/versions",
            "app_not_found",
        ),
        (
            "GET",
            "/admin/apps/demo/classes/nope/versions",
            "function_not_found",
        ),
        (
            "POST",
            "/admin/apps/nope/classes/model/rollback",
            "app_not_found",
        ),
        (
            "POST",
            "/admin/apps/demo/functions/nope/rollback",
            "function_not_found",
        ),
        ("GET", "/admin/nothing-here", "not_found"),
    ] {
        let (status, problem) = admin.send(method, path, None).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some(code)),
            "{method} {path}: {problem}"
        );
    }
    // A file function has no deployed version to roll back to.
    let (status, problem) = admin
        .send("POST", "/admin/apps/demo/functions/square/rollback", None)
        .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "no_earlier_version");
}

#[tokio::test]
async fn an_unusable_admin_section_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let path = config.to_str().unwrap();
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{ADMIN_TOML}"),
    )
    .unwrap();
    let (code, _, stderr) = run_bin_env(&["serve", "--config", path], dir.path(), &[]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("admin.token_env"), "{stderr}");
    assert!(stderr.contains(TOKEN_ENV), "{stderr}");
    let (code, _, stderr) =
        run_bin_env(&["serve", "--config", path], dir.path(), &[(TOKEN_ENV, "")]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("admin.token_env") && stderr.contains("empty"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\ntoken_env = \"FNGATE_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run_bin_env(
        &["serve", "--config", path],
        dir.path(),
        &[(TOKEN_ENV, TOKEN)],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("admin.listen") && stderr.contains("loopback"),
        "{stderr}"
    );
    // A taken admin port fails the start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"FNGATE_ADMIN_TOKEN\"\n"),
    )
    .unwrap();
    let (code, _, stderr) = run_bin_env(
        &["serve", "--config", path],
        dir.path(),
        &[(TOKEN_ENV, TOKEN)],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[tokio::test]
async fn wrong_methods_and_oversized_bodies_get_problems() {
    let (_gw, admin) = started().await;
    for (method, path, allow) in [
        ("POST", "/admin/functions", "GET, HEAD"),
        ("GET", "/admin/apps/demo/functions/square", "PUT, DELETE"),
        (
            "DELETE",
            "/admin/apps/demo/classes/model/versions",
            "GET, HEAD",
        ),
        ("GET", "/admin/apps/demo/functions/square/rollback", "POST"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = admin
            .client
            .request(method.clone(), admin.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header_str(&response, "allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
        assert_problem(response, 405, "method_not_allowed").await;
    }
    let huge = format!(
        "{{\"backend\": \"exec\", \"pad\": \"{}\"}}",
        "x".repeat(3 << 20)
    );
    let response = admin
        .client
        .put(admin.url("/admin/apps/demo/functions/cube"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload_too_large").await;
    assert!(admin.listed("demo", "cube").await.is_none());
}

#[tokio::test]
async fn a_gateway_with_an_admin_listener_drains_and_exits_cleanly() {
    let (mut gw, admin) = started().await;
    // An open keep-alive connection to the admin listener does not hold the exit.
    let (status, _) = admin.get("/admin/functions").await;
    assert_eq!(status, 200);
    let exit = gw.terminate(std::time::Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
}
