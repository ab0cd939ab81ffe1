//! The access log end to end: one line per request with its request id
//! (text on stderr by default, JSON with `[log] format = "json"`, or a
//! file), nothing of a request's body, query string or credentials in any
//! of the gateway's output, and a bad `[log]` refused at start-up.

mod common;

use std::time::Duration;

use common::{Gateway, GatewayBuilder, WORK_PY, eventually, exec_fn, run_bin};
use serde_json::{Value, json};

fn builder() -> GatewayBuilder {
    Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("m", "sq", "work.py", ""))
}

/// The access-log lines among `lines`.
fn access_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(" access ") || l.starts_with("{\"time\""))
        .cloned()
        .collect()
}

/// Waits (bounded) until a line holds each of `ids`.
async fn wait_for_ids(gw: &Gateway, ids: &[String]) {
    let all = eventually(Duration::from_secs(10), || {
        let logs = gw.logs.joined();
        ids.iter().all(|id| logs.contains(id.as_str()))
    })
    .await;
    assert!(
        all,
        "not every request id was logged:\n{}",
        gw.logs.joined()
    );
}

/// Sends `n` requests with ids `{prefix}-{i}`: sync calls, unknown names
/// and health checks, over h1 and h2.
async fn send(gw: &Gateway, prefix: &str, n: usize) -> Vec<String> {
    let clients = [gw.client_h1(), gw.client_h2()];
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let client = &clients[i % 2];
        let request = match i % 3 {
            0 => client
                .post(gw.url("/m/sq"))
                .header("content-type", "application/json")
                .body(json!({"x": i}).to_string()),
            1 => client.post(gw.url(&format!("/nope/n{i}"))),
            _ => client.get(gw.url("/_/health")),
        };
        let response = request.header("x-request-id", &id).send().await.unwrap();
        assert_eq!(response.headers()["x-request-id"], id.as_str());
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn each_request_gets_exactly_one_line_with_its_request_id() {
    let gw = builder().start().await;
    let ids = send(&gw, "req-one", 30).await;
    wait_for_ids(&gw, &ids).await;
    let lines = access_lines(&gw.logs.snapshot());
    assert_eq!(lines.len(), 30, "{lines:#?}");
    for id in &ids {
        let with_id: Vec<&String> = lines
            .iter()
            .filter(|l| {
                l.contains(&format!("request_id={id} ")) || l.ends_with(&format!("request_id={id}"))
            })
            .collect();
        assert_eq!(with_id.len(), 1, "{id}: {with_id:#?}");
    }
    // Route labels only, never a path: the unknown names are `-`.
    let sq = lines
        .iter()
        .find(|l| l.contains("request_id=req-one-0"))
        .unwrap();
    assert!(
        sq.contains(" method=POST route=/m/sq status=200 latency_ms="),
        "{sq}"
    );
    let unknown = lines
        .iter()
        .find(|l| l.contains("request_id=req-one-1"))
        .unwrap();
    assert!(unknown.contains(" route=- status=404 "), "{unknown}");
    assert!(!unknown.contains("n1"), "{unknown}");
    let health = lines
        .iter()
        .find(|l| l.contains("request_id=req-one-2"))
        .unwrap();
    assert!(
        health.contains(" method=GET route=/_/health status=200 "),
        "{health}"
    );
}

#[tokio::test]
async fn a_planted_secret_appears_nowhere_in_the_gateways_output() {
    // Debug level: even the detailed logs keep the secret out.
    let gw = builder().env("RUST_LOG", "debug").start().await;
    let client = gw.client();
    let body_secret = "bodysecret7c1e";
    let query_secret = "querysecret9a4f";
    let bearer_secret = "bearersecret2d8b";
    let mut ids = Vec::new();
    for (i, path) in [
        format!("/m/sq?token={query_secret}"),
        format!("/m/sq/spawn?token={query_secret}"),
        format!("/nope/x?token={query_secret}"),
    ]
    .iter()
    .enumerate()
    {
        let id = format!("secret-{i}");
        let response = client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {bearer_secret}"))
            .header("x-request-id", &id)
            .body(json!({"x": 2, "password": body_secret}).to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().as_u16() < 500,
            "{path}: {}",
            response.status()
        );
        ids.push(id);
    }
    wait_for_ids(&gw, &ids).await;
    let spawned = gw
        .logs
        .snapshot()
        .into_iter()
        .find(|l| l.contains("request_id=secret-1"))
        .unwrap();
    assert!(spawned.contains(" call_id=fc-"), "{spawned}");
    let output = gw.logs.joined();
    for secret in [body_secret, query_secret, bearer_secret] {
        assert!(
            !output.contains(secret),
            "{secret} is in the output:\n{output}"
        );
    }
}

#[tokio::test]
async fn json_lines_parse_with_every_key() {
    let gw = builder().toml("[log]\nformat = \"json\"").start().await;
    let client = gw.client();
    let mut ids = send(&gw, "req-json", 6).await;
    let spawned = client
        .post(gw.url("/m/sq/spawn"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-json-spawn")
        .body(r#"{"x": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(spawned.status(), 202);
    let call_id = spawned.headers()["x-call-id"].to_str().unwrap().to_owned();
    ids.push("req-json-spawn".to_owned());
    wait_for_ids(&gw, &ids).await;
    let lines = access_lines(&gw.logs.snapshot());
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for line in &parsed {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "time",
            "request_id",
            "method",
            "route",
            "app",
            "function",
            "status",
            "latency_ms",
            "call_id",
        ] {
            assert!(keys.contains(&key), "no {key} in {line}");
        }
        assert_eq!(keys.len(), 9, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    let by_id = |id: &str| parsed.iter().find(|l| l["request_id"] == id).unwrap();
    let sq = by_id("req-json-0");
    assert_eq!(
        (
            &sq["method"],
            &sq["route"],
            &sq["app"],
            &sq["function"],
            &sq["status"]
        ),
        (
            &json!("POST"),
            &json!("/m/sq"),
            &json!("m"),
            &json!("sq"),
            &json!(200)
        )
    );
    assert!(sq["call_id"].as_str().unwrap().starts_with("fc-"));
    let unknown = by_id("req-json-1");
    assert_eq!(
        (&unknown["route"], &unknown["app"]),
        (&json!("-"), &Value::Null)
    );
    let spawn = by_id("req-json-spawn");
    assert_eq!(
        (&spawn["status"], &spawn["call_id"]),
        (&json!(202), &json!(call_id))
    );
}

#[tokio::test]
async fn the_access_log_can_go_to_a_file() {
    let gw = builder()
        .toml("[log]\naccess = \"logs/access.log\"")
        .start()
        .await;
    let ids = send(&gw, "req-file", 4).await;
    let path = gw.dir.join("logs/access.log");
    let written = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 4)
    })
    .await;
    assert!(written, "{:?}", std::fs::read_to_string(&path));
    let text = std::fs::read_to_string(&path).unwrap();
    for id in &ids {
        assert!(text.contains(id.as_str()), "{id} not in {text}");
    }
    assert!(
        access_lines(&gw.logs.snapshot()).is_empty(),
        "also on stderr"
    );
}

#[tokio::test]
async fn a_bad_log_format_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for command in ["serve", "check"] {
        let (code, _, stderr) = run_bin(&[command, "--config", config], dir.path()).await;
        assert_eq!(code, Some(2), "{command}: {stderr}");
        assert!(stderr.contains("log.format"), "{command}: {stderr}");
        assert!(stderr.contains("'xml'"), "{command}: {stderr}");
    }
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run_bin(&["check", "--config", config], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("level"), "{stderr}");
}
