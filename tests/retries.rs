//! Retries of spawned calls, black-box: a function with `retries` that
//! fails or times out runs again after its backoff with `attempt` + 1 and a
//! fresh timeout, stays `running` between attempts, stops at a cancel,
//! fires its webhook once at the end, survives a kill during its pause,
//! and works on warm instances (functions and class methods) and
//! passthrough functions alike; sync calls are not retried.
//!
//! The function is `tests/retries/flaky.py`: it counts its runs in a file
//! (one line per run with its attempt, deadline and start time) and fails
//! its first `fail_runs` runs.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Gateway, GatewayBuilder, assert_problem, closed_port, eventually, exec_fn, repo_file,
};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// The log line a call's failed run leaves when it will run again.
const PAUSING: &str = "it runs again after its backoff";

/// App `r` with the exec function `flaky` (`extra` lines in its table).
fn builder(extra: &str) -> GatewayBuilder {
    Gateway::builder()
        .file("flaky.py", repo_file("tests/retries/flaky.py"))
        .toml(&exec_fn("r", "flaky", "flaky.py", extra))
}

/// One run of `flaky.py`, as its count file has it.
#[derive(Debug)]
struct RunLine {
    attempt: u32,
    deadline_ms: i64,
    /// Its start, in seconds since the epoch.
    at: f64,
}

/// The runs `flaky.py` counted in `gw`'s file `count`.
fn runs(gw: &Gateway, count: &str) -> Vec<RunLine> {
    let text = std::fs::read_to_string(gw.dir.join(count)).unwrap_or_default();
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            RunLine {
                attempt: fields[0].parse().expect("attempt"),
                deadline_ms: fields[1].parse().expect("deadline_ms"),
                at: fields[2].parse().expect("time"),
            }
        })
        .collect()
}

fn attempts(runs: &[RunLine]) -> Vec<u32> {
    runs.iter().map(|run| run.attempt).collect()
}

/// Spawns `path` (e.g. `/r/flaky/spawn`) with `body`; the call id.
async fn spawn(gw: &Gateway, path: &str, body: &Value) -> String {
    spawn_with(gw, gw.client().post(gw.url(path)).json(body)).await
}

async fn spawn_with(gw: &Gateway, request: reqwest::RequestBuilder) -> String {
    let resp = request.send().await.expect("spawn");
    let status = resp.status();
    let text = resp.text().await.expect("spawn body");
    assert_eq!(status, 202, "spawn: {text}\nlogs:\n{}", gw.logs.joined());
    let body: Value = serde_json::from_str(&text).expect("spawn body JSON");
    body["call_id"].as_str().expect("call_id").to_owned()
}

/// `GET /calls/{id}?wait=SECONDS`.
async fn get_call(gw: &Gateway, id: &str, wait: u32) -> reqwest::Response {
    gw.client()
        .get(gw.url(&format!("/calls/{id}?wait={wait}")))
        .send()
        .await
        .expect("GET /calls/{id}")
}

/// The call's result once it ends (200), within 30 s.
async fn result_of(gw: &Gateway, id: &str) -> Value {
    let resp = get_call(gw, id, 30).await;
    let status = resp.status();
    let text = resp.text().await.expect("result body");
    assert_eq!(status, 200, "{id}: {text}\nlogs:\n{}", gw.logs.joined());
    serde_json::from_str(&text).expect("result JSON")
}

/// Waits until the gateway logged that `id` failed and pauses before its
/// next run.
async fn wait_for_pause(gw: &Gateway, id: &str) {
    let paused = eventually(Duration::from_secs(20), || {
        let lines = gw.logs.snapshot();
        lines.iter().any(|l| l.contains(id) && l.contains(PAUSING))
    })
    .await;
    assert!(paused, "{id} did not pause\nlogs:\n{}", gw.logs.joined());
}

/// Asserts the call reads `202 running` with `attempt`.
async fn assert_running(gw: &Gateway, id: &str, attempt: u32) {
    let resp = get_call(gw, id, 0).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.expect("202 body JSON");
    assert_eq!(body["status"], "running", "{body}");
    assert_eq!(body["attempt"], attempt, "{body}");
}

#[tokio::test]
async fn a_call_that_fails_twice_then_succeeds_ends_succeeded_on_attempt_3() {
    let policy =
        "retries = { max_retries = 3, initial_delay = \"300ms\", backoff_coefficient = 2.0 }";
    let gw = builder(policy).start().await;
    let body = json!({"count": "c.runs", "fail_runs": 2});
    let id = spawn(&gw, "/r/flaky/spawn", &body).await;
    let result = result_of(&gw, &id).await;
    assert_eq!(result, json!({"runs": 3, "attempt": 3}));
    // The finished call's answer says the attempt it ended on.
    let resp = get_call(&gw, &id, 0).await;
    assert_eq!(resp.headers()["x-attempt"], "3");
    let runs = runs(&gw, "c.runs");
    assert_eq!(attempts(&runs), [1, 2, 3], "{runs:?}");
    // The backoff: 300 ms after run 1, then twice that after run 2.
    let gaps = [runs[1].at - runs[0].at, runs[2].at - runs[1].at];
    assert!(gaps[0] >= 0.3 && gaps[1] >= 0.6, "pauses {gaps:?}");
}

#[tokio::test]
async fn between_attempts_a_call_reads_running_with_the_attempt_that_failed() {
    let gw = builder("retries = { max_retries = 1, initial_delay = \"3s\" }")
        .start()
        .await;
    let body = json!({"count": "p.runs", "fail_runs": 1});
    let id = spawn(&gw, "/r/flaky/spawn", &body).await;
    wait_for_pause(&gw, &id).await;
    assert_running(&gw, &id, 1).await;
    let result = result_of(&gw, &id).await;
    assert_eq!(result, json!({"runs": 2, "attempt": 2}));
}

/// A webhook receiver on 127.0.0.1 that answers 200 and keeps the bodies.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(Instant, Bytes)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let got: Arc<Mutex<Vec<(Instant, Bytes)>>> = Arc::default();
        let log = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let body = req.into_body().collect().await;
                            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
                            log.lock()
                                .expect("receiver lock")
                                .push((Instant::now(), body));
                            let ok = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                            Ok::<_, Infallible>(ok)
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Receiver { port, got }
    }

    fn deliveries(&self) -> Vec<(Instant, Bytes)> {
        self.got.lock().expect("receiver lock").clone()
    }
}

#[tokio::test]
async fn retries_1_that_always_fails_ends_failed_on_attempt_2_with_one_webhook() {
    let gw = builder("retries = 1")
        .toml("[webhooks]\nsecret_env = \"FNGATE_WEBHOOK_SECRET\"\nallow_hosts = [\"127.0.0.1\"]\n")
        .env(
            "FNGATE_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        )
        .start()
        .await;
    let receiver = Receiver::start().await;
    let callback = format!("http://127.0.0.1:{}/hook", receiver.port);
    let body = json!({"count": "f.runs", "fail_runs": 10});
    let request = gw.client().post(gw.url("/r/flaky/spawn")).json(&body);
    let id = spawn_with(&gw, request.header("callback-url", callback)).await;
    assert_problem(get_call(&gw, &id, 30).await, 500, "function_error").await;
    let runs = runs(&gw, "f.runs");
    assert_eq!(attempts(&runs), [1, 2], "{runs:?}");
    // `retries = N` pauses a fixed second.
    assert!(runs[1].at - runs[0].at >= 1.0, "{runs:?}");
    let delivered = eventually(Duration::from_secs(20), || {
        !receiver.deliveries().is_empty()
    })
    .await;
    assert!(delivered, "no webhook\nlogs:\n{}", gw.logs.joined());
    // Nothing signals a delivery that does not come: give a second one
    // the time a retry's pause and run would take.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "one delivery, at the final outcome");
    let payload: Value = serde_json::from_slice(&deliveries[0].1).expect("webhook JSON");
    assert_eq!(payload["call_id"], id.as_str());
    assert_eq!(payload["status"], "failed", "{payload}");
    assert_eq!(payload["error"]["code"], "function_error", "{payload}");
}

#[tokio::test]
async fn a_cancel_during_the_pause_stops_further_attempts() {
    let gw = builder("retries = { max_retries = 3, initial_delay = \"2s\" }")
        .start()
        .await;
    let id = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "a.runs", "fail_runs": 10}),
    )
    .await;
    wait_for_pause(&gw, &id).await;
    assert_running(&gw, &id, 1).await;
    let resp = gw
        .client()
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 200);
    // A second call, spawned after the cancel, with the same backoff: its
    // run 2 comes later than the cancelled call's would have.
    let later = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "b.runs", "fail_runs": 1}),
    )
    .await;
    assert_eq!(result_of(&gw, &later).await["attempt"], 2);
    assert_eq!(
        attempts(&runs(&gw, "a.runs")),
        [1],
        "the cancelled call ran again"
    );
    assert_problem(get_call(&gw, &id, 0).await, 410, "call_cancelled").await;
}

#[tokio::test]
async fn a_cancel_during_a_retried_run_stops_it_and_further_attempts() {
    let gw = builder("retries = { max_retries = 3, initial_delay = \"100ms\" }")
        .start()
        .await;
    // Run 1 fails at once; run 2 sleeps until it is cancelled.
    let body = json!({"count": "m.runs", "fail_runs": 10, "sleeps": [0, 30]});
    let id = spawn(&gw, "/r/flaky/spawn", &body).await;
    let second = eventually(Duration::from_secs(20), || runs(&gw, "m.runs").len() == 2).await;
    assert!(second, "run 2 did not start\nlogs:\n{}", gw.logs.joined());
    assert_running(&gw, &id, 2).await;
    let resp = gw
        .client()
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 200);
    assert_problem(get_call(&gw, &id, 0).await, 410, "call_cancelled").await;
    let later = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "n.runs", "fail_runs": 1}),
    )
    .await;
    assert_eq!(result_of(&gw, &later).await["attempt"], 2);
    assert_eq!(
        attempts(&runs(&gw, "m.runs")),
        [1, 2],
        "the cancelled call ran again"
    );
}

#[tokio::test]
async fn a_timed_out_run_is_retried_with_a_fresh_timeout() {
    let gw = builder("timeout = \"1s\"\nretries = { max_retries = 1, initial_delay = \"100ms\" }")
        .start()
        .await;
    // Run 1 outlives its timeout; run 2 takes half of a fresh one, ending
    // past run 1's deadline.
    let body = json!({"count": "t.runs", "sleeps": [30, 0.5]});
    let id = spawn(&gw, "/r/flaky/spawn", &body).await;
    let result = result_of(&gw, &id).await;
    assert_eq!(result, json!({"runs": 2, "attempt": 2}));
    let runs = runs(&gw, "t.runs");
    assert_eq!(attempts(&runs), [1, 2]);
    let later = runs[1].deadline_ms - runs[0].deadline_ms;
    assert!(
        later >= 1_100,
        "run 2's deadline is {later} ms after run 1's"
    );
}

#[tokio::test]
async fn a_call_whose_retries_all_time_out_ends_timed_out() {
    let gw =
        builder("timeout = \"500ms\"\nretries = { max_retries = 1, initial_delay = \"100ms\" }")
            .start()
            .await;
    let body = json!({"count": "o.runs", "sleeps": [30, 30]});
    let id = spawn(&gw, "/r/flaky/spawn", &body).await;
    assert_problem(get_call(&gw, &id, 30).await, 504, "function_timeout").await;
    assert_eq!(attempts(&runs(&gw, "o.runs")), [1, 2]);
}

#[tokio::test]
async fn sync_calls_are_not_retried() {
    let gw = builder("retries = { max_retries = 3, initial_delay = \"100ms\" }")
        .start()
        .await;
    let body = json!({"count": "s.runs", "fail_runs": 10});
    let resp = gw
        .post_json(&gw.client(), "/r/flaky", &body.to_string())
        .await;
    assert_problem(resp, 500, "function_error").await;
    // A spawned call of the same function retries meanwhile.
    let spawned = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "x.runs", "fail_runs": 1}),
    )
    .await;
    assert_eq!(result_of(&gw, &spawned).await["attempt"], 2);
    assert_eq!(
        attempts(&runs(&gw, "s.runs")),
        [1],
        "the sync call ran again"
    );
}

#[tokio::test]
async fn a_call_killed_during_its_pause_runs_again_after_restart_with_its_attempts_counted() {
    let policy = "retries = { max_retries = 2, initial_delay = \"60s\" }";
    let mut gw = builder(policy).start().await;
    let id = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "k.runs", "fail_runs": 1}),
    )
    .await;
    wait_for_pause(&gw, &id).await;
    assert_running(&gw, &id, 1).await;
    gw.kill().await;
    let gw = builder(policy).in_dir(&gw.dir).start().await;
    // The pause is not kept across the restart: it runs at once.
    let result = result_of(&gw, &id).await;
    assert_eq!(result, json!({"runs": 2, "attempt": 2}));
    assert_eq!(attempts(&runs(&gw, "k.runs")), [1, 2]);
}

#[tokio::test]
async fn warm_functions_and_class_methods_are_retried_on_their_instances() {
    let policy = "retries = { max_retries = 2, initial_delay = \"100ms\" }";
    let command = r#"["python3", "lambda_runtime.py", "flaky.handler"]"#;
    let gw = Gateway::builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file("flaky.py", repo_file("tests/retries/flaky.py"))
        .toml(&format!(
            "[apps.r.functions.warm]\nbackend = \"lambda\"\ncommand = {command}\n{policy}\n\n\
             [apps.r.classes.model]\nbackend = \"lambda\"\ncommand = {command}\n\n\
             [apps.r.classes.model.functions.predict]\n{policy}\n"
        ))
        .start()
        .await;
    let body = json!({"count": "w.runs", "fail_runs": 2});
    let id = spawn(&gw, "/r/warm/spawn", &body).await;
    assert_eq!(result_of(&gw, &id).await, json!({"runs": 3, "attempt": 3}));
    assert_eq!(attempts(&runs(&gw, "w.runs")), [1, 2, 3]);
    let body = json!({"count": "m.runs", "fail_runs": 1});
    let id = spawn(&gw, "/r/model/predict/spawn", &body).await;
    assert_eq!(result_of(&gw, &id).await, json!({"runs": 2, "attempt": 2}));
    assert_eq!(attempts(&runs(&gw, "m.runs")), [1, 2]);
}

#[tokio::test]
async fn a_spawned_passthrough_call_whose_backend_is_down_is_retried() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let gw = Gateway::builder()
        .toml(&format!(
            "[apps.r.functions.pt]\nbackend = \"http\"\nurls = [\"{url}\"]\npassthrough = true\n\
             retries = {{ max_retries = 2, initial_delay = \"100ms\" }}\n"
        ))
        .start()
        .await;
    let request = gw.client().post(gw.url("/r/pt/anything")).body("hi");
    let id = spawn_with(&gw, request.header("prefer", "respond-async")).await;
    assert_problem(get_call(&gw, &id, 30).await, 502, "backend_error").await;
    // Each failed run but the last paused before the next.
    let lines = gw.logs.snapshot();
    let pauses = lines
        .iter()
        .filter(|l| l.contains(&id) && l.contains(PAUSING));
    assert_eq!(pauses.count(), 2, "logs:\n{}", gw.logs.joined());
}

#[tokio::test]
async fn a_run_lost_with_its_instance_runs_again_at_once_and_counts_as_an_attempt() {
    let command = r#"["python3", "lambda_runtime.py", "flaky.handler"]"#;
    let gw = Gateway::builder()
        .file("lambda_runtime.py", repo_file("examples/lambda_runtime.py"))
        .file("flaky.py", repo_file("tests/retries/flaky.py"))
        .toml(&format!(
            "[apps.r.functions.warm]\nbackend = \"lambda\"\ncommand = {command}\n\
             retries = {{ max_retries = 1, initial_delay = \"100ms\" }}\n"
        ))
        .start()
        .await;
    // Run 1 crashes its instance: lost, it runs again without a pause.
    // Run 2 fails: it was attempt 2, and `max_retries = 1` allows 2 runs.
    let body = json!({"count": "l.runs", "crash_runs": 1, "fail_runs": 2});
    let id = spawn(&gw, "/r/warm/spawn", &body).await;
    assert_problem(get_call(&gw, &id, 30).await, 500, "function_error").await;
    assert_eq!(attempts(&runs(&gw, "l.runs")), [1, 2]);
    let lines = gw.logs.snapshot();
    let pauses = lines
        .iter()
        .filter(|l| l.contains(&id) && l.contains(PAUSING));
    assert_eq!(pauses.count(), 0, "logs:\n{}", gw.logs.joined());
}

#[tokio::test]
async fn sigterm_during_a_pause_stops_at_once_and_the_call_runs_after_restart() {
    let policy = "retries = { max_retries = 2, initial_delay = \"60s\" }";
    let grace = "shutdown_grace = \"30s\"";
    let mut gw = builder(policy).server(grace).start().await;
    let id = spawn(
        &gw,
        "/r/flaky/spawn",
        &json!({"count": "g.runs", "fail_runs": 1}),
    )
    .await;
    wait_for_pause(&gw, &id).await;
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(5),
        "the pause held the shutdown for {took:?}"
    );
    let gw = builder(policy).server(grace).in_dir(&gw.dir).start().await;
    let result = result_of(&gw, &id).await;
    assert_eq!(result, json!({"runs": 2, "attempt": 2}));
}
