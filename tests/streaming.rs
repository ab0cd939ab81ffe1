//! Streaming results (`stream = true`) from outside: items reach a real
//! curl client (`-N`) one by one while the function still runs, over
//! HTTP/1.1 and HTTP/2, as NDJSON lines or Server-Sent Events; an error
//! after the first item ends the stream with an error item; a client that
//! leaves stops the function; a spawned stream keeps its items; and every
//! backend streams (exec, http urls, lambda instances with the
//! standard-library client and Node's aws-lambda-ric, http instances).
//!
//! "While the function still runs" is shown without timing: the fixture
//! (`tests/streaming/gated.py`) waits after its first item until the test
//! creates a gate file, so the first item can only have come before the
//! function went on.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Gateway, GatewayBuilder, assert_problem, eventually, process_alive, repo_file};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long one line of a stream may take to come.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A gateway with the fixture next to its config, and `tables`.
fn builder(tables: &str) -> GatewayBuilder {
    Gateway::builder()
        .file("gated.py", repo_file("tests/streaming/gated.py"))
        .toml(tables)
}

/// `[apps.s.functions.NAME]`: the fixture as a streaming exec function.
fn exec_stream(name: &str, extra: &str) -> String {
    format!(
        "\n[apps.s.functions.{name}]\nbackend = \"exec\"\ncommand = [\"python3\", \"gated.py\"]\n\
         stream = true\nmethods = [\"POST\", \"GET\"]\n{extra}\n"
    )
}

/// A running `curl -N -i`: its answer's head, then its body line by line.
struct Curl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    status: u16,
    content_type: String,
}

impl Curl {
    /// POSTs `body` to `path` with curl over `protocol` (`--http1.1` or
    /// `--http2`), with `extra` arguments, and reads the answer's head.
    async fn post(gw: &Gateway, protocol: &str, path: &str, body: &Value, extra: &[&str]) -> Curl {
        let port = gw.addr.port();
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-i", protocol, "--cacert"])
            .arg(gw.ca_path())
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(body.to_string())
            .args(extra)
            .arg(gw.url(path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn curl");
        let stdout = child.stdout.take().expect("curl stdout is piped");
        let mut curl = Curl {
            child,
            lines: BufReader::new(stdout).lines(),
            status: 0,
            content_type: String::new(),
        };
        let status_line = curl.line().await.expect("an HTTP status line");
        curl.status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        while let Some(line) = curl.line().await {
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-type") {
                    curl.content_type = value.trim().to_owned();
                }
            }
        }
        curl
    }

    /// The next line of the answer (without its line end), None at its end.
    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("curl printed its next line in time")
            .expect("read curl's output")
            .map(|line| line.trim_end_matches('\r').to_owned())
    }

    /// The next line, as JSON.
    async fn item(&mut self) -> Value {
        let line = self.line().await.expect("one more line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    /// The next Server-Sent Event: its name (`message` when none) and data.
    async fn event(&mut self) -> (String, String) {
        let (mut name, mut data) = ("message".to_owned(), Vec::new());
        loop {
            let line = self.line().await.expect("the event goes on");
            if line.is_empty() {
                return (name, data.join("\n"));
            }
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            }
        }
    }

    /// Waits for curl to exit after its answer ended; its success.
    async fn ended(mut self) -> bool {
        assert_eq!(self.line().await, None, "the answer has no more lines");
        tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .expect("curl exits once the answer ended")
            .expect("wait for curl")
            .success()
    }
}

/// The pid the fixture wrote to `file` in `dir`, once it has.
async fn pid_in(dir: &Path, file: &str) -> i32 {
    let path = dir.join(file);
    assert!(
        eventually(LINE_TIMEOUT, || path.exists()).await,
        "the function wrote its pid to {file}"
    );
    std::fs::read_to_string(&path)
        .expect("read the pid file")
        .trim()
        .parse()
        .expect("a pid")
}

fn open_gate(dir: &Path, gate: &str) {
    std::fs::write(dir.join(gate), b"").expect("create the gate file");
}

#[tokio::test]
async fn ndjson_items_reach_curl_while_the_function_still_runs_on_h1_and_h2() {
    let gw = builder(&exec_stream("gated", "")).start().await;
    for protocol in ["--http1.1", "--http2"] {
        let gate = format!("gate{protocol}");
        let pidfile = format!("pid{protocol}");
        let started = Instant::now();
        let mut curl = Curl::post(
            &gw,
            protocol,
            "/s/gated",
            &json!({"gate": gate, "pidfile": pidfile, "count": 3}),
            &[],
        )
        .await;
        assert_eq!(curl.status, 200, "{protocol}");
        assert_eq!(curl.content_type, "application/x-ndjson", "{protocol}");
        assert_eq!(curl.item().await, json!({"item": 1}), "{protocol}");
        let first = started.elapsed();
        // The function waits for the gate: the item came before it went on.
        let pid = pid_in(&gw.dir, &pidfile).await;
        assert!(process_alive(pid), "{protocol}: the function still runs");
        assert!(!gw.dir.join(&gate).exists());
        open_gate(&gw.dir, &gate);
        assert_eq!(curl.item().await, json!({"item": 2}), "{protocol}");
        assert_eq!(curl.item().await, json!({"item": 3}), "{protocol}");
        let last = started.elapsed();
        assert!(curl.ended().await, "{protocol}: curl succeeded");
        eprintln!("{protocol}: first item after {first:?}, the last after {last:?}");
    }
}

#[tokio::test]
async fn server_sent_events_reach_curl_while_the_function_still_runs_on_h1_and_h2() {
    let gw = builder(&exec_stream("gated", "")).start().await;
    for protocol in ["--http1.1", "--http2"] {
        let gate = format!("gate{protocol}");
        let pidfile = format!("pid{protocol}");
        let mut curl = Curl::post(
            &gw,
            protocol,
            "/s/gated",
            &json!({"gate": gate, "pidfile": pidfile}),
            &["-H", "accept: text/event-stream"],
        )
        .await;
        assert_eq!(curl.status, 200, "{protocol}");
        assert_eq!(curl.content_type, "text/event-stream", "{protocol}");
        assert_eq!(
            curl.event().await,
            ("message".to_owned(), r#"{"item": 1}"#.to_owned())
        );
        let pid = pid_in(&gw.dir, &pidfile).await;
        assert!(process_alive(pid), "{protocol}: the function still runs");
        open_gate(&gw.dir, &gate);
        assert_eq!(
            curl.event().await,
            ("message".to_owned(), r#"{"item": 2}"#.to_owned())
        );
        assert_eq!(curl.event().await, ("end".to_owned(), String::new()));
        assert!(curl.ended().await, "{protocol}: curl succeeded");
    }
}

#[tokio::test]
async fn an_error_after_the_first_item_ends_the_stream_with_an_error_item() {
    let gw = builder(&exec_stream("gated", "")).start().await;
    let body = json!({"fail": "boom"});
    let mut curl = Curl::post(&gw, "--http2", "/s/gated", &body, &[]).await;
    assert_eq!(curl.status, 200);
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert_eq!(curl.item().await, json!({"item": 2}));
    let error = curl.item().await;
    let problem = &error["error"];
    assert_eq!(problem["status"], 500, "{error}");
    assert_eq!(problem["code"], "function_error", "{error}");
    assert_eq!(problem["error"]["type"], "ValueError", "{error}");
    assert_eq!(problem["error"]["message"], "ValueError: boom", "{error}");
    assert!(
        problem["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(curl.ended().await);

    // As events: the problem is an `error` event's data, and no `end` follows.
    let accept = ["-H", "accept: text/event-stream"];
    let mut curl = Curl::post(&gw, "--http1.1", "/s/gated", &body, &accept).await;
    assert_eq!(curl.event().await.0, "message");
    assert_eq!(curl.event().await.0, "message");
    let (name, data) = curl.event().await;
    assert_eq!(name, "error");
    let problem: Value = serde_json::from_str(&data).expect("the error event's data is JSON");
    assert_eq!(problem["code"], "function_error", "{problem}");
    assert!(curl.ended().await);

    // A line that is not JSON is the backend's garbage: 502 as the last item.
    let body = json!({"count": 1, "garbage": true});
    let mut curl = Curl::post(&gw, "--http1.1", "/s/gated", &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    let error = curl.item().await;
    assert_eq!(error["error"]["status"], 502, "{error}");
    assert_eq!(error["error"]["code"], "backend_error", "{error}");
    assert!(curl.ended().await);
}

#[tokio::test]
async fn an_error_before_the_first_item_is_a_problem_answer() {
    let gw = builder(&exec_stream("gated", "")).start().await;
    let client = gw.client();
    let resp = gw
        .post_json(&client, "/s/gated", r#"{"count": 0, "fail": "early"}"#)
        .await;
    let problem = assert_problem(resp, 500, "function_error").await;
    assert_eq!(problem["error"]["type"], "ValueError", "{problem}");
}

#[tokio::test]
async fn a_stream_past_its_timeout_ends_with_a_timeout_item() {
    let gw = builder(&exec_stream("forever", "timeout = \"1s\""))
        .start()
        .await;
    let body = json!({"forever": true, "pidfile": "pid"});
    let mut curl = Curl::post(&gw, "--http1.1", "/s/forever", &body, &[]).await;
    assert_eq!(curl.status, 200);
    let pid = pid_in(&gw.dir, "pid").await;
    loop {
        let item = curl.item().await;
        if let Some(problem) = item.get("error") {
            assert_eq!(problem["status"], 504, "{item}");
            assert_eq!(problem["code"], "function_timeout", "{item}");
            break;
        }
        assert!(item["item"].is_number(), "{item}");
    }
    assert!(curl.ended().await);
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(pid)).await,
        "the function was stopped at its timeout"
    );
}

#[tokio::test]
async fn a_client_that_leaves_stops_the_function() {
    let gw = builder(&exec_stream("forever", "")).start().await;
    for protocol in ["--http1.1", "--http2"] {
        let pidfile = format!("pid{protocol}");
        let body = json!({"forever": true, "pidfile": pidfile});
        let mut curl = Curl::post(&gw, protocol, "/s/forever", &body, &[]).await;
        assert_eq!(curl.item().await, json!({"item": 1}));
        let pid = pid_in(&gw.dir, &pidfile).await;
        assert!(process_alive(pid));
        curl.child.kill().await.expect("kill curl");
        assert!(
            eventually(Duration::from_secs(10), || !process_alive(pid)).await,
            "{protocol}: the function's process is gone once its client left"
        );
    }
    // Its concurrency slots came back: the function still answers.
    let body = json!({"count": 1});
    let mut curl = Curl::post(&gw, "--http2", "/s/forever", &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert!(curl.ended().await);
}

#[tokio::test]
async fn a_spawned_stream_keeps_its_items_for_get_calls() {
    let gw = builder(&exec_stream("gated", "")).start().await;
    let client = gw.client();
    let resp = gw
        .post_json(&client, "/s/gated/spawn", r#"{"count": 3}"#)
        .await;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.expect("spawn answer");
    let id = accepted["call_id"].as_str().expect("a call id").to_owned();
    let resp = client
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .send()
        .await
        .expect("GET /calls/{id}");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::header_str(&resp, "content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let text = resp.text().await.expect("the items");
    let items: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        items,
        vec![json!({"item": 1}), json!({"item": 2}), json!({"item": 3})]
    );

    // An error after items is kept as the last line; one before any item
    // fails the call as any call's error does.
    let lines = spawned_result(&gw, "/s/gated", r#"{"count": 1, "fail": "late"}"#).await;
    let resp = lines.expect("a stream with items is answered with them");
    assert_eq!(resp.lines().count(), 2, "{resp}");
    let last: Value = serde_json::from_str(resp.lines().last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "function_error", "{resp}");
    assert_eq!(
        last["error"]["error"]["message"], "ValueError: late",
        "{resp}"
    );
    let failed = spawned_result(&gw, "/s/gated", r#"{"count": 0, "fail": "early"}"#).await;
    assert_eq!(failed.unwrap_err(), 500);
}

/// Spawns a call of `path` with `body` and waits for its end: the
/// NDJSON lines of a `200`, or the status of its error.
async fn spawned_result(gw: &Gateway, path: &str, body: &str) -> Result<String, u16> {
    let client = gw.client();
    let resp = gw.post_json(&client, &format!("{path}/spawn"), body).await;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.expect("spawn answer");
    let id = accepted["call_id"].as_str().expect("a call id");
    let resp = client
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .send()
        .await
        .expect("GET /calls/{id}");
    match resp.status().as_u16() {
        200 => Ok(resp.text().await.expect("the items")),
        status => Err(status),
    }
}

/// `tests/streaming/stream_server.py` on a port of its own, killed on drop.
struct StreamServer {
    _child: Child,
    port: u16,
}

impl StreamServer {
    async fn start() -> StreamServer {
        let script = common::repo_dir().join("tests/streaming/stream_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn stream_server.py");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
            .await
            .expect("the server says where it listens")
            .expect("read its output")
            .unwrap_or_default();
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("stream_server.py printed {line:?}"));
        StreamServer {
            _child: child,
            port,
        }
    }
}

/// A path in the gateway's folder, absolute (for backends with other
/// working directories).
fn in_dir(gw: &Gateway, name: &str) -> String {
    gw.dir.join(name).to_str().expect("a UTF-8 path").to_owned()
}

/// What every HTTP backend of a streaming function must do: stream NDJSON
/// and event-stream answers item by item (the first before the function
/// goes on), take a plain JSON answer as one item, end with an error item,
/// and drop the request when the client leaves.
async fn streams_from_an_http_function(gw: &Gateway, path: &str) {
    for (protocol, sse) in [("--http1.1", false), ("--http2", true)] {
        let gate = in_dir(gw, &format!("gate-{sse}"));
        let body = json!({"gate": gate, "sse": sse, "count": 3});
        let mut curl = Curl::post(gw, protocol, path, &body, &[]).await;
        assert_eq!(curl.status, 200, "{path} sse={sse}");
        assert_eq!(curl.content_type, "application/x-ndjson");
        assert_eq!(curl.item().await, json!({"item": 1}), "{path} sse={sse}");
        // The function waits for the gate: the first item came before.
        open_gate(&gw.dir, &format!("gate-{sse}"));
        assert_eq!(curl.item().await, json!({"item": 2}), "{path} sse={sse}");
        assert_eq!(curl.item().await, json!({"item": 3}), "{path} sse={sse}");
        assert!(curl.ended().await);
    }

    let mut curl = Curl::post(gw, "--http1.1", path, &json!({"whole": true}), &[]).await;
    assert_eq!(curl.item().await, json!({"whole": true}), "{path}");
    assert!(curl.ended().await);

    // A reported error event: the function's error, after the items.
    let body = json!({"sse": true, "fail": "bad item"});
    let mut curl = Curl::post(gw, "--http2", path, &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert_eq!(curl.item().await, json!({"item": 2}));
    let error = curl.item().await;
    assert_eq!(error["error"]["code"], "function_error", "{path}: {error}");
    assert_eq!(error["error"]["error"]["type"], "ValueError", "{error}");
    assert_eq!(error["error"]["error"]["message"], "bad item", "{error}");
    assert!(curl.ended().await);

    // An answer cut off mid-stream: the backend crashed, 502.
    let mut curl = Curl::post(gw, "--http1.1", path, &json!({"fail": "x"}), &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert_eq!(curl.item().await, json!({"item": 2}));
    let error = curl.item().await;
    assert_eq!(error["error"]["code"], "backend_error", "{path}: {error}");
    assert!(curl.ended().await);

    // A client that leaves: the gateway drops its request to the function.
    let pidfile = in_dir(gw, "leaving");
    let body = json!({"forever": true, "pidfile": pidfile});
    let mut curl = Curl::post(gw, "--http2", path, &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    curl.child.kill().await.expect("kill curl");
    let dropped = gw.dir.join("leaving.dropped");
    assert!(
        eventually(Duration::from_secs(10), || dropped.exists()).await,
        "{path}: the function saw its request dropped"
    );
}

#[tokio::test]
async fn an_http_function_streams_ndjson_and_event_stream_answers() {
    let server = StreamServer::start().await;
    let url = format!("http://127.0.0.1:{}/invoke", server.port);
    let gw = builder(&common::http_fn("s", "remote", &[url], "stream = true"))
        .start()
        .await;
    streams_from_an_http_function(&gw, "/s/remote").await;
}

#[tokio::test]
async fn http_instances_stream_their_chunked_answers() {
    let gw = builder(
        "\n[apps.s.functions.served]\nbackend = \"http\"\n\
         command = [\"python3\", \"stream_server.py\"]\nstream = true\n",
    )
    .file(
        "stream_server.py",
        repo_file("tests/streaming/stream_server.py"),
    )
    .start()
    .await;
    streams_from_an_http_function(&gw, "/s/served").await;
}

/// `[apps.s.functions.NAME]`: a streaming lambda function running `command`.
fn lambda_stream(name: &str, command: &str) -> String {
    format!(
        "\n[apps.s.functions.{name}]\nbackend = \"lambda\"\ncommand = {command}\n\
         stream = true\nmax_instances = 1\n"
    )
}

/// What a streaming Lambda instance must do: items as it posts them (the
/// first before it goes on), then its end or its error.
async fn streams_from_a_lambda_instance(gw: &Gateway, path: &str, error_type: &str) {
    for (protocol, accept) in [("--http1.1", "*/*"), ("--http2", "text/event-stream")] {
        let gate = format!("gate-{protocol}");
        let body = json!({"gate": gate, "count": 3});
        let accept = format!("accept: {accept}");
        let mut curl = Curl::post(gw, protocol, path, &body, &["-H", &accept]).await;
        assert_eq!(curl.status, 200, "{path} {protocol}");
        let events = curl.content_type == "text/event-stream";
        let mut next = async || {
            if events {
                let (name, data) = curl.event().await;
                assert_eq!(name, "message");
                serde_json::from_str::<Value>(&data).expect("an item")
            } else {
                curl.item().await
            }
        };
        assert_eq!(next().await, json!({"item": 1}), "{path} {protocol}");
        // The instance waits for the gate: the first item came before.
        open_gate(&gw.dir, &gate);
        assert_eq!(next().await, json!({"item": 2}), "{path} {protocol}");
        assert_eq!(next().await, json!({"item": 3}), "{path} {protocol}");
        if events {
            assert_eq!(curl.event().await.0, "end");
        }
        assert!(curl.ended().await);
    }

    let body = json!({"fail": "bad item"});
    let mut curl = Curl::post(gw, "--http2", path, &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert_eq!(curl.item().await, json!({"item": 2}));
    let error = curl.item().await;
    assert_eq!(error["error"]["code"], "function_error", "{path}: {error}");
    assert_eq!(error["error"]["error"]["type"], error_type, "{error}");
    assert_eq!(error["error"]["error"]["message"], "bad item", "{error}");
    assert!(curl.ended().await);

    // Before any item: the usual problem answer.
    let client = gw.client();
    let resp = gw
        .post_json(&client, path, r#"{"count": 0, "fail": "early"}"#)
        .await;
    let problem = assert_problem(resp, 500, "function_error").await;
    assert_eq!(problem["error"]["type"], error_type, "{problem}");
    assert_eq!(problem["error"]["message"], "early", "{problem}");
}

#[tokio::test]
async fn lambda_instances_stream_with_the_standard_library_runtime_client() {
    let gw = builder(&lambda_stream(
        "py",
        r#"["python3", "lambda_runtime.py", "gated.handler"]"#,
    ))
    .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
    .start()
    .await;
    streams_from_a_lambda_instance(&gw, "/s/py", "ValueError").await;

    // An error report larger than hyper's default trailer limit (16 KiB).
    let long = "x".repeat(40_000);
    let mut curl = Curl::post(&gw, "--http1.1", "/s/py", &json!({"fail": long}), &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert_eq!(curl.item().await, json!({"item": 2}));
    let error = curl.item().await;
    assert_eq!(error["error"]["code"], "function_error", "{error}");
    assert_eq!(error["error"]["error"]["message"], long.as_str());
    assert!(curl.ended().await);

    // A client that leaves: the instance running its call is stopped.
    let body = json!({"forever": true, "pidfile": "instance"});
    let mut curl = Curl::post(&gw, "--http1.1", "/s/py", &body, &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    let pid = pid_in(&gw.dir, "instance").await;
    curl.child.kill().await.expect("kill curl");
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(pid)).await,
        "the instance was stopped once its client left"
    );
    // A fresh instance serves the next call.
    let mut curl = Curl::post(&gw, "--http2", "/s/py", &json!({"count": 1}), &[]).await;
    assert_eq!(curl.item().await, json!({"item": 1}));
    assert!(curl.ended().await);
    // A spawned call on an instance keeps its items.
    let lines = spawned_result(&gw, "/s/py", r#"{"count": 2}"#).await;
    assert_eq!(lines.as_deref(), Ok("{\"item\": 1}\n{\"item\": 2}\n"));
}

#[tokio::test]
async fn lambda_instances_stream_with_node_aws_lambda_ric_stream_responses() {
    let node = common::repo_dir().join("tests/instances/node");
    let ric = node.join("node_modules/.bin/aws-lambda-ric");
    assert!(
        ric.exists(),
        "this test needs aws-lambda-ric: npm install in {}",
        node.display()
    );
    let command = format!("[{:?}, \"node_stream.handler\"]", ric.to_str().unwrap());
    let gw = builder(&lambda_stream("node", &command))
        .file(
            "node_stream.js",
            repo_file("tests/streaming/node_stream.js"),
        )
        .start()
        .await;
    streams_from_a_lambda_instance(&gw, "/s/node", "TypeError").await;
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256_base64(cert_pem: &Path) -> String {
    use base64::Engine as _;
    let pem = std::fs::read(cert_pem).expect("read the gateway's certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("gateway.crt is PEM");
    let cert = pem.parse_x509().expect("gateway.crt is X.509");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Headless Chromium (driven by playwright-core from `tests/browser/`,
/// as `tests/browser_cors.rs` does) reads a stream with `EventSource` and
/// with a `fetch` body reader; each time the page itself signals its first
/// item before the function may go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reads_a_stream_with_event_source_and_fetch() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "this test needs Chromium at {chromium} (apt-get install -y chromium, or set CHROMIUM)"
    );
    let browser = common::repo_dir().join("tests/browser");
    assert!(
        browser
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "this test needs playwright-core: npm ci --prefix tests/browser"
    );
    let gw = builder(&exec_stream("gated", "")).start().await;
    let spki = spki_sha256_base64(&gw.dir.join("certs/gateway.crt"));
    let gate_dir = gw.dir.to_str().expect("a UTF-8 path").to_owned();
    let child = Command::new("node")
        .arg(browser.join("stream.mjs"))
        .args([gw.url("").as_str(), &spki, "/s/gated", &gate_dir])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node tests/browser/stream.mjs");
    let out = tokio::time::timeout(Duration::from_secs(75), child.wait_with_output())
        .await
        .expect("stream.mjs finished in time")
        .expect("wait for stream.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stream.mjs failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("stream.mjs printed no JSON line ({e}): {stdout}"));
    eprintln!("chromium saw: {seen}");

    let items = json!([{"item": 1}, {"item": 2}, {"item": 3}]);
    let events = &seen["events"];
    assert_eq!(events["items"], items, "{seen}");
    assert_eq!(
        events["events"],
        json!(["message", "message", "message", "end"]),
        "{seen}"
    );
    let fetched = &seen["fetch"];
    assert_eq!(fetched["ok"], true, "{seen}");
    assert_eq!(fetched["status"], 200, "{seen}");
    assert_eq!(fetched["contentType"], "text/event-stream", "{seen}");
    assert_eq!(
        fetched["text"],
        "data: {\"item\": 1}\n\ndata: {\"item\": 2}\n\ndata: {\"item\": 3}\n\nevent: end\ndata:\n\n",
        "{seen}"
    );
    // Both gates were opened by the page, after its first item.
    assert_eq!(seen["opened"].as_array().map(Vec::len), Some(2), "{seen}");
}

#[tokio::test]
async fn a_class_method_streams_from_its_classes_instance() {
    let gw = builder(
        "\n[apps.s.classes.gen]\nbackend = \"lambda\"\n\
         command = [\"python3\", \"lambda_runtime.py\", \"gated.handler\"]\n\
         parameters = [\"size\"]\n\
         \n[apps.s.classes.gen.functions.items]\nstream = true\n",
    )
    .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
    .start()
    .await;
    let body = json!({"gate": "gate", "count": 2});
    let mut curl = Curl::post(&gw, "--http2", "/s/gen/items?size=large", &body, &[]).await;
    assert_eq!(curl.status, 200);
    assert_eq!(curl.item().await, json!({"item": 1}));
    open_gate(&gw.dir, "gate");
    assert_eq!(curl.item().await, json!({"item": 2}));
    assert!(curl.ended().await);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_keep_its_function_past_the_timeout() {
    let gw = builder(&exec_stream("flood", "timeout = \"2s\""))
        .start()
        .await;
    // An HTTP/2 client whose flow-control window stays closed: the gateway
    // can send the answer's head but no item, so it never polls the stream
    // again, nor its deadline.
    let tls = common::raw_tls_alpn(&gw, b"h2").await;
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(gw.url("/s/flood"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    h2 = h2.ready().await.expect("a stream slot");
    let (response, mut send) = h2.send_request(request, false).expect("send the head");
    let body = json!({"flood": true, "pidfile": "pid"}).to_string();
    send.send_data(bytes::Bytes::from(body), true)
        .expect("send the body");
    let response = tokio::time::timeout(LINE_TIMEOUT, response)
        .await
        .expect("the answer's head comes")
        .expect("an answer");
    assert_eq!(response.status(), 200);
    let pid = pid_in(&gw.dir, "pid").await;
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || !process_alive(pid)).await,
        "the function still runs {:?} after its client stopped reading",
        started.elapsed()
    );
    assert!(
        gw.logs
            .wait_for("stopped reading past its timeout", Duration::from_secs(5))
            .await,
        "the watch of its deadline stopped it"
    );
    // The answer is kept open to the end: dropping it would reset the stream.
    drop(response);
}

#[tokio::test]
async fn a_runtime_that_asks_for_its_next_call_before_its_stream_ended_keeps_its_error() {
    let gw = builder(&lambda_stream(
        "eager",
        r#"["python3", "eager_runtime.py"]"#,
    ))
    .file(
        "eager_runtime.py",
        repo_file("tests/streaming/eager_runtime.py"),
    )
    .start()
    .await;
    for call in 1..=2 {
        let gate = format!("gate-{call}");
        let body = json!({"gate": gate});
        let mut curl = Curl::post(&gw, "--http1.1", "/s/eager", &body, &[]).await;
        assert_eq!(curl.item().await, json!({"item": 1}), "call {call}");
        open_gate(&gw.dir, &gate);
        let error = curl.item().await;
        assert_eq!(
            error["error"]["code"], "function_error",
            "call {call}: {error}"
        );
        assert_eq!(error["error"]["error"]["message"], "late", "{error}");
        assert!(curl.ended().await);
    }
}
