//! Strict JSON reading: syntax errors with positions, invalid UTF-8,
//! duplicate keys, nesting limits, exact numbers and input schemas.

mod common;

use common::{Gateway, INSPECT_PY, RAW_ECHO_PY, assert_problem, exec_fn, json_ok};
use serde_json::json;

/// Ignores its input and answers `"ok"`; creates `called` in its cwd so a
/// test can tell whether the backend ran.
const OK_PY: &str = r#"
import sys
sys.stdin.read()
open("called", "w").close()
sys.stdout.write('"ok"')
"#;

const PERSON_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["name"],
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer", "minimum": 0},
    "address": {
      "type": "object",
      "properties": {"zip": {"type": "string"}}
    }
  }
}"#;

async fn gateway() -> Gateway {
    Gateway::builder()
        .file("ok.py", OK_PY)
        .file("raw.py", RAW_ECHO_PY)
        .file("inspect.py", INSPECT_PY)
        .file("schemas/person.json", PERSON_SCHEMA)
        .toml(&exec_fn("j", "ok", "ok.py", ""))
        .toml(&exec_fn("j", "raw", "raw.py", ""))
        .toml(&exec_fn(
            "j",
            "person",
            "ok.py",
            "input_schema = \"schemas/person.json\"",
        ))
        .toml(&exec_fn(
            "j",
            "inline",
            "inspect.py",
            r#"input_schema = { type = "object", required = ["name"], properties = { name = { type = "string" } } }"#,
        ))
        .start()
        .await
}

#[tokio::test]
async fn invalid_json_reports_line_and_column() {
    let gw = gateway().await;
    for (_, client) in gw.clients() {
        let resp = gw
            .post_json(&client, "/j/ok", "{\n  \"x\": 1,\n  oops\n}")
            .await;
        let p = assert_problem(resp, 400, "invalid_json").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("line 3, column "), "detail: {detail}");
    }
    assert!(!gw.dir.join("called").exists(), "backend must not run");
}

#[tokio::test]
async fn truncated_and_trailing_garbage_json_is_rejected() {
    let gw = gateway().await;
    let client = gw.client();
    for body in [
        r#"{"x": 1"#,
        r#"{"x": 1} x"#,
        r#"{"x": 1}{}"#,
        "[1,]",
        "{'x': 1}",
        "NaN",
    ] {
        let resp = gw.post_json(&client, "/j/ok", body).await;
        let p = assert_problem(resp, 400, "invalid_json").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("line 1, column "), "body {body}: {detail}");
    }
}

#[tokio::test]
async fn invalid_utf8_is_invalid_json() {
    let gw = gateway().await;
    let resp = gw
        .client()
        .post(gw.url("/j/ok"))
        .header("content-type", "application/json")
        .body(b"{\"x\": \"\xff\xfe\"}".to_vec())
        .send()
        .await
        .unwrap();
    let p = assert_problem(resp, 400, "invalid_json").await;
    assert!(
        p["detail"].as_str().unwrap().contains("line 1, column "),
        "{p}"
    );
}

#[tokio::test]
async fn duplicate_json_keys_are_rejected() {
    let gw = gateway().await;
    let client = gw.client();
    for body in [
        r#"{"a": 1, "a": 2}"#,
        r#"{"a": 1, "a": 1}"#,
        r#"{"o": {"k": 1, "k": 2}}"#,
        r#"[{"x": [], "x": []}]"#,
        r#"{"a": 1, "\u0061": 2}"#,
    ] {
        let resp = gw.post_json(&client, "/j/ok", body).await;
        assert_problem(resp, 400, "invalid_json").await;
    }
    assert!(!gw.dir.join("called").exists(), "backend must not run");
    // The same key in different objects is fine.
    let resp = gw
        .post_json(
            &client,
            "/j/ok",
            r#"{"a": 1, "b": {"a": 1}, "c": [{"a": 2}]}"#,
        )
        .await;
    assert_eq!(json_ok(resp).await, json!("ok"));
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn nesting_within_the_limit_is_accepted() {
    let gw = gateway().await;
    let client = gw.client();
    for body in [nested_arrays(100), nested_objects(100)] {
        let resp = gw.post_json(&client, "/j/ok", &body).await;
        assert_eq!(json_ok(resp).await, json!("ok"));
    }
}

#[tokio::test]
async fn nesting_deeper_than_128_is_invalid_json() {
    let gw = gateway().await;
    let client = gw.client();
    for body in [
        nested_arrays(200),
        nested_objects(200),
        nested_arrays(129 + 1),
    ] {
        let resp = gw.post_json(&client, "/j/ok", &body).await;
        assert_problem(resp, 400, "invalid_json").await;
    }
    assert!(!gw.dir.join("called").exists(), "backend must not run");
}

#[tokio::test]
async fn hundred_thousand_open_brackets_are_rejected_and_server_stays_up() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let resp = gw.post_json(&client, "/j/ok", &"[".repeat(100_000)).await;
        assert_problem(resp, 400, "invalid_json").await;
        let resp = gw
            .post_json(&client, "/j/ok", &nested_arrays(100_000))
            .await;
        assert_problem(resp, 400, "invalid_json").await;
        let resp = gw
            .post_json(&client, "/j/ok", &"{\"a\":".repeat(100_000))
            .await;
        assert_problem(resp, 400, "invalid_json").await;
        // Still serving, on the same and on a new connection.
        let resp = client.get(gw.url("/_/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{proto}");
    }
    let resp = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(json_ok(resp).await, json!({"status": "ok"}));
}

#[tokio::test]
async fn max_json_depth_is_configurable() {
    let gw = Gateway::builder()
        .server("max_json_depth = 5")
        .file("ok.py", OK_PY)
        .toml(&exec_fn("j", "ok", "ok.py", ""))
        .start()
        .await;
    let client = gw.client();
    let resp = gw.post_json(&client, "/j/ok", &nested_arrays(3)).await;
    assert_eq!(json_ok(resp).await, json!("ok"));
    let resp = gw.post_json(&client, "/j/ok", &nested_arrays(10)).await;
    assert_problem(resp, 400, "invalid_json").await;
}

#[tokio::test]
async fn big_numbers_pass_through_byte_for_byte() {
    let gw = gateway().await;
    let numbers = [
        "1234567890123456789012345678901234567890",
        "-98765432109876543210987654321098765432109876",
        "1e400",
        "-1E-400",
        "0.1000000000000000000000000000001",
        "-0.0",
        "1.0E+2",
        "3.14159265358979323846264338327950288419716939937510",
    ];
    let kwargs: Vec<String> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| format!("\"n{i}\": {n}"))
        .collect();
    // The raw function answers with exactly the invocation request it read,
    // so each literal must have reached it and come back unchanged.
    for (proto, client) in gw.clients() {
        let body = format!("{{{}}}", kwargs.join(", "));
        let resp = gw.post_json(&client, "/j/raw", &body).await;
        assert_eq!(resp.status(), 200, "{proto}");
        let text = resp.text().await.unwrap();
        for (i, n) in numbers.iter().enumerate() {
            let compact = format!("\"n{i}\":{n}");
            let spaced = format!("\"n{i}\": {n}");
            assert!(
                text.contains(&compact) || text.contains(&spaced),
                "{proto}: {n} not passed through exactly in {text}"
            );
        }
        // As positional arguments too.
        let body = format!("[{}]", numbers.join(","));
        let resp = gw.post_json(&client, "/j/raw", &body).await;
        assert_eq!(resp.status(), 200, "{proto}");
        let text = resp.text().await.unwrap();
        for n in numbers {
            assert!(
                text.contains(&format!("{n},")) || text.contains(&format!("{n}]")),
                "{proto}: {n} not passed through exactly in {text}"
            );
        }
    }
}

#[tokio::test]
async fn scalar_big_number_body_is_one_exact_arg() {
    let gw = gateway().await;
    let resp = gw.post_json(&gw.client(), "/j/raw", "1e400").await;
    let text = resp.text().await.unwrap();
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(squeezed.contains("\"args\":[1e400]"), "{text}");
}

#[tokio::test]
async fn schema_failure_names_the_json_pointer() {
    let gw = gateway().await;
    let client = gw.client();
    let resp = gw.post_json(&client, "/j/person", r#"{"name": 5}"#).await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(p["detail"].as_str().unwrap().contains("/name"), "{p}");

    let resp = gw
        .post_json(
            &client,
            "/j/person",
            r#"{"name": "a", "address": {"zip": 12}}"#,
        )
        .await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(
        p["detail"].as_str().unwrap().contains("/address/zip"),
        "{p}"
    );

    let resp = gw
        .post_json(&client, "/j/person", r#"{"name": "a", "age": -1}"#)
        .await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(p["detail"].as_str().unwrap().contains("/age"), "{p}");

    let resp = gw.post_json(&client, "/j/person", r#"{"age": 3}"#).await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(p["detail"].as_str().unwrap().contains("name"), "{p}");

    assert!(
        !gw.dir.join("called").exists(),
        "backend must not run when the schema fails"
    );
    let resp = gw
        .post_json(&client, "/j/person", r#"{"name": "ann", "age": 40}"#)
        .await;
    assert_eq!(json_ok(resp).await, json!("ok"));
    assert!(gw.dir.join("called").exists());
}

#[tokio::test]
async fn inline_schema_validates_query_and_body_kwargs() {
    let gw = gateway().await;
    let client = gw.client();
    let resp = gw.post_json(&client, "/j/inline", r#"{"name": []}"#).await;
    let p = assert_problem(resp, 400, "invalid_arguments").await;
    assert!(p["detail"].as_str().unwrap().contains("/name"), "{p}");
    let resp = client
        .post(gw.url("/j/inline?name=bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(resp).await["kwargs"], json!({"name": "bob"}));
}
