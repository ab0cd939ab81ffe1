//! Sync invoke end to end over real TLS (h1 and h2): translation of bodies
//! and query strings into invocations, routing errors, request ids, curl.

mod common;

use std::time::Duration;

use common::{Gateway, INSPECT_PY, RAW_ECHO_PY, assert_problem, exec_fn, json_ok};
use serde_json::{Value, json};

/// A gateway with app `t`: `inspect` (POST, returns the invocation request),
/// `getter` (GET and POST, with an input schema for query coercion) and
/// `raw` (returns its stdin verbatim).
async fn gateway() -> Gateway {
    Gateway::builder()
        .file("inspect.py", INSPECT_PY)
        .file("raw.py", RAW_ECHO_PY)
        .toml(&exec_fn("t", "inspect", "inspect.py", "timeout = \"10s\""))
        .toml(&exec_fn(
            "t",
            "getter",
            "inspect.py",
            r#"methods = ["GET", "POST"]
input_schema = { type = "object", properties = { n = { type = "integer" }, f = { type = "number" }, b = { type = "boolean" }, s = { type = "string" }, tag = { type = "array" } } }"#,
        ))
        .toml(&exec_fn("t", "raw", "raw.py", ""))
        .start()
        .await
}

#[tokio::test]
async fn health_and_ready_answer_over_h1_and_h2() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let resp = client.get(gw.url("/_/health")).send().await.unwrap();
        let version = resp.version();
        assert_eq!(json_ok(resp).await, json!({"status": "ok"}), "{proto}");
        let want = if proto == "h2" {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(version, want, "negotiated protocol for {proto}");
        let resp = client.get(gw.url("/_/ready")).send().await.unwrap();
        assert_eq!(json_ok(resp).await, json!({"status": "ready"}), "{proto}");
    }
}

#[tokio::test]
async fn alpn_prefers_h2_when_client_offers_both() {
    let gw = gateway().await;
    let resp = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn object_body_becomes_kwargs_and_invocation_is_complete() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let resp = gw
            .post_json(&client, "/t/inspect", r#"{"x": 7, "name": "ann"}"#)
            .await;
        let inv = json_ok(resp).await;
        assert_eq!(inv["kwargs"], json!({"x": 7, "name": "ann"}), "{proto}");
        assert_eq!(inv["args"], json!([]), "{proto}");
        assert_eq!(inv["app"], "t", "{proto}");
        assert_eq!(inv["function"], "inspect", "{proto}");
        assert_eq!(inv["attempt"], 1, "{proto}");
        let call_id = inv["call_id"].as_str().expect("call_id string");
        let hex = call_id
            .strip_prefix("fc-")
            .expect("call_id starts with fc-");
        assert!(
            hex.len() >= 32
                && hex
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "call id carries at least 128 url-safe random bits: {call_id}"
        );
        // timeout is 10 s: the deadline lies about 10 s ahead.
        let deadline = inv["deadline_ms"].as_u64().expect("deadline_ms integer");
        assert!(
            deadline >= before + 8_000 && deadline <= before + 60_000,
            "deadline_ms {deadline} vs now {before} with a 10 s timeout"
        );
    }
}

#[tokio::test]
async fn call_ids_differ_between_calls() {
    let gw = gateway().await;
    let client = gw.client();
    let a = json_ok(gw.post_json(&client, "/t/inspect", "{}").await).await;
    let b = json_ok(gw.post_json(&client, "/t/inspect", "{}").await).await;
    assert_ne!(a["call_id"], b["call_id"]);
}

#[tokio::test]
async fn array_body_becomes_positional_args() {
    let gw = gateway().await;
    let inv = json_ok(
        gw.post_json(&gw.client(), "/t/inspect", r#"[1, "two", {"three": 3}]"#)
            .await,
    )
    .await;
    assert_eq!(inv["args"], json!([1, "two", {"three": 3}]));
    assert_eq!(inv["kwargs"], json!({}));
}

#[tokio::test]
async fn scalar_body_becomes_one_positional_arg() {
    let gw = gateway().await;
    let client = gw.client();
    for (body, want) in [
        ("42", json!(42)),
        (r#""hi""#, json!("hi")),
        ("null", json!(null)),
        ("true", json!(true)),
    ] {
        let inv = json_ok(gw.post_json(&client, "/t/inspect", body).await).await;
        assert_eq!(inv["args"], json!([want]), "body {body}");
        assert_eq!(inv["kwargs"], json!({}), "body {body}");
    }
}

#[tokio::test]
async fn empty_body_means_no_arguments() {
    let gw = gateway().await;
    let client = gw.client();
    // With and without a content type.
    let resp = client.post(gw.url("/t/inspect")).send().await.unwrap();
    let inv = json_ok(resp).await;
    assert_eq!(inv["args"], json!([]));
    assert_eq!(inv["kwargs"], json!({}));
    let inv = json_ok(gw.post_json(&client, "/t/inspect", "").await).await;
    assert_eq!(inv["args"], json!([]));
    assert_eq!(inv["kwargs"], json!({}));
}

#[tokio::test]
async fn json_suffix_and_charset_content_types_are_accepted() {
    let gw = gateway().await;
    let client = gw.client();
    for ctype in [
        "application/json; charset=utf-8",
        "application/vnd.example+json",
        "application/problem+json; charset=UTF-8",
        "Application/JSON",
    ] {
        let resp = client
            .post(gw.url("/t/inspect"))
            .header("content-type", ctype)
            .body(r#"{"x": 1}"#)
            .send()
            .await
            .unwrap();
        let inv = json_ok(resp).await;
        assert_eq!(inv["kwargs"], json!({"x": 1}), "content-type {ctype}");
    }
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        for ctype in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "text/json+xml",
        ] {
            let resp = client
                .post(gw.url("/t/inspect"))
                .header("content-type", ctype)
                .body(r#"{"x": 1}"#)
                .send()
                .await
                .unwrap();
            let p = assert_problem(resp, 415, "unsupported_media_type").await;
            assert!(p["detail"].is_string(), "{proto} {ctype}");
        }
    }
}

#[tokio::test]
async fn body_without_content_type_is_415() {
    let gw = gateway().await;
    let resp = gw
        .client()
        .post(gw.url("/t/inspect"))
        .body(r#"{"x": 1}"#)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn query_params_become_string_kwargs() {
    let gw = gateway().await;
    let resp = gw
        .client()
        .post(gw.url("/t/inspect?a=1&b=hello%20world&c="))
        .send()
        .await
        .unwrap();
    let inv = json_ok(resp).await;
    assert_eq!(
        inv["kwargs"],
        json!({"a": "1", "b": "hello world", "c": ""})
    );
}

#[tokio::test]
async fn query_params_merge_with_body_kwargs() {
    let gw = gateway().await;
    let inv = json_ok(
        gw.post_json(&gw.client(), "/t/inspect?q=1", r#"{"x": 2}"#)
            .await,
    )
    .await;
    assert_eq!(inv["kwargs"], json!({"q": "1", "x": 2}));
}

#[tokio::test]
async fn get_passes_query_params_coerced_by_input_schema() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let resp = client
            .get(gw.url("/t/getter?n=5&f=2.5&b=true&s=7&other=9"))
            .send()
            .await
            .unwrap();
        let inv = json_ok(resp).await;
        assert_eq!(
            inv["kwargs"],
            json!({"n": 5, "f": 2.5, "b": true, "s": "7", "other": "9"}),
            "{proto}"
        );
    }
}

#[tokio::test]
async fn uncoercible_query_param_is_invalid_arguments() {
    let gw = gateway().await;
    let resp = gw
        .client()
        .get(gw.url("/t/getter?n=abc"))
        .send()
        .await
        .unwrap();
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(
        p["detail"].as_str().unwrap().contains("/n")
            || p["detail"].as_str().unwrap().contains("'n'"),
        "detail names the parameter: {p}"
    );
}

#[tokio::test]
async fn repeated_query_key_becomes_array() {
    let gw = gateway().await;
    let resp = gw
        .client()
        .get(gw.url("/t/getter?tag=a&tag=b&tag=c"))
        .send()
        .await
        .unwrap();
    let inv = json_ok(resp).await;
    assert_eq!(inv["kwargs"], json!({"tag": ["a", "b", "c"]}));
    // Also without a schema.
    let resp = gw
        .client()
        .post(gw.url("/t/inspect?k=1&k=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(resp).await["kwargs"], json!({"k": ["1", "2"]}));
}

#[tokio::test]
async fn key_in_both_query_and_body_is_invalid_arguments() {
    let gw = gateway().await;
    let resp = gw
        .post_json(&gw.client(), "/t/inspect?x=1", r#"{"x": 2}"#)
        .await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(p["detail"].as_str().unwrap().contains('x'), "{p}");
}

#[tokio::test]
async fn unknown_app_is_404_app_not_found() {
    let gw = gateway().await;
    for (_, client) in gw.clients() {
        let resp = gw.post_json(&client, "/nope/inspect", "{}").await;
        assert_problem(resp, 404, "app_not_found").await;
    }
}

#[tokio::test]
async fn unknown_function_is_404_function_not_found() {
    let gw = gateway().await;
    for (_, client) in gw.clients() {
        let resp = gw.post_json(&client, "/t/nope", "{}").await;
        let p = assert_problem(resp, 404, "function_not_found").await;
        assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let gw = gateway().await;
    let client = gw.client();
    let resp = client.get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client.get(gw.url("/_/nothing-here")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_header() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let resp = client.get(gw.url("/t/inspect")).send().await.unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_problem(resp, 405, "method_not_allowed").await;
        assert_eq!(allow.as_deref(), Some("POST"), "{proto}");

        let resp = client.put(gw.url("/t/getter")).send().await.unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_problem(resp, 405, "method_not_allowed").await;
        let mut methods: Vec<String> = allow
            .expect("Allow header")
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        methods.sort();
        assert_eq!(methods, ["GET", "POST"], "{proto}");
    }
}

#[tokio::test]
async fn function_result_bytes_are_returned_exactly() {
    let gw = gateway().await;
    // The raw function answers with exactly its stdin: odd spacing, key
    // order and number spellings must survive.
    for (proto, client) in gw.clients() {
        let resp = gw.post_json(&client, "/t/raw", r#"[1.50, 2]"#).await;
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("application/json"), "{proto}: {ctype}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("1.50"), "{proto}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["args"], json!([1.5, 2]));
    }
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let id = "req-1234.abc:XYZ_9";
        let resp = client
            .post(gw.url("/t/inspect"))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], id, "{proto}");
        // Also on errors, inside the problem.
        let resp = client
            .post(gw.url("/t/missing"))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        let p = assert_problem(resp, 404, "function_not_found").await;
        assert_eq!(p["request_id"], id, "{proto}");
    }
}

#[tokio::test]
async fn insane_request_id_is_replaced_by_a_generated_one() {
    let gw = gateway().await;
    let client = gw.client();
    let too_long = "a".repeat(129);
    for bad in ["has space", "semi;colon", "", too_long.as_str(), "ünï"] {
        let resp = client
            .post(gw.url("/t/inspect"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .send()
            .await
            .unwrap();
        let got = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(got, bad, "request id {bad:?} must not be kept");
        assert!(
            !got.is_empty()
                && got.len() <= 128
                && got
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
            "generated id is sane: {got:?}"
        );
    }
    // Without one, each response gets a fresh id.
    let a = client.get(gw.url("/_/health")).send().await.unwrap();
    let b = client.get(gw.url("/_/health")).send().await.unwrap();
    let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
    assert_ne!(a, b);
}

#[tokio::test]
async fn concurrent_h2_requests_are_multiplexed() {
    let gw = gateway().await;
    let client = gw.client_h2();
    let calls = (0..20).map(|i| {
        let client = client.clone();
        let url = gw.url("/t/inspect");
        async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(format!("{{\"i\": {i}}}"))
                .send()
                .await
                .unwrap();
            json_ok(resp).await["kwargs"]["i"].as_i64().unwrap()
        }
    });
    let mut got = futures_util::future::join_all(calls).await;
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<i64>>());
}

#[tokio::test]
async fn curl_invokes_a_function_over_http2_and_http1() {
    let gw = Gateway::builder()
        .toml(&format!(
            "[apps.demo.functions.square]\nbackend = \"exec\"\ncommand = [\"python3\", {:?}]\n",
            common::repo_dir()
                .join("examples/square.py")
                .to_str()
                .unwrap()
        ))
        .start()
        .await;
    let port = gw.addr.port();
    for (flag, want_version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new("curl")
                .arg("-sS")
                .arg("--cacert")
                .arg(gw.ca_path())
                .arg("--resolve")
                .arg(format!("localhost:{port}:127.0.0.1"))
                .arg(flag)
                .args(["-H", "content-type: application/json", "-d", r#"{"x":7}"#])
                .args(["-w", "\n%{http_version} %{http_code}"])
                .arg(format!("https://localhost:{port}/demo/square"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("curl finishes")
        .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, meta) = stdout.trim().rsplit_once('\n').expect("body and -w line");
        assert_eq!(body.trim(), "49", "curl {flag}");
        assert_eq!(meta, format!("{want_version} 200"), "curl {flag}");
    }
}

#[tokio::test]
async fn plain_http_listener_serves_the_same_routes() {
    let gw = Gateway::builder()
        .server("http_listen = \"127.0.0.1:0\"")
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("t", "inspect", "inspect.py", ""))
        .start()
        .await;
    let http = gw.http_addr.expect("http_listen address logged");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = client
        .post(format!("http://{http}/t/inspect"))
        .header("content-type", "application/json")
        .body(r#"{"x": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(resp).await["kwargs"], json!({"x": 3}));
    // h2c prior knowledge on the plain listener too.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = h2c
        .get(format!("http://{http}/_/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(json_ok(resp).await, json!({"status": "ok"}));
}

#[tokio::test]
async fn logs_have_no_ansi_colours_when_not_a_tty() {
    let gw = gateway().await;
    let client = gw.client();
    let _ = gw.post_json(&client, "/t/inspect", "{}").await;
    let logs = gw.logs.joined();
    assert!(!logs.contains('\u{1b}'), "ANSI escape in logs:\n{logs}");
    assert!(logs.contains("listening on https://"));
}

#[tokio::test]
async fn request_contents_are_not_logged_at_info() {
    let gw = gateway().await;
    let client = gw.client();
    let r = client
        .post(gw.url("/t/inspect?token=QUERYSECRET"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer HEADERSECRET")
        .body(r#"{"password": "BODYSECRET"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    // A failing call too: its error must not leak arguments either.
    let r = gw
        .post_json(
            &client,
            "/t/inspect",
            r#"{"password": "BODYSECRET", "dup": 1, "dup": 2}"#,
        )
        .await;
    let id2 = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 400);
    for id in [&id, &id2] {
        assert!(
            gw.logs.wait_for(id, Duration::from_secs(5)).await,
            "request {id} is logged:\n{}",
            gw.logs.joined()
        );
    }
    let logs = gw.logs.joined();
    for secret in ["QUERYSECRET", "HEADERSECRET", "BODYSECRET"] {
        assert!(!logs.contains(secret), "{secret} in logs:\n{logs}");
    }
}
