//! Warm instance pools end to end: `backend = "lambda"` (instances speak
//! the Lambda Runtime API, under the repository's stdlib runtime client,
//! the real `awslambdaric` and the real `aws-lambda-ric`) and `backend =
//! "http"` with `command`. Set-up runs once per instance; crashed, timed
//! out and cancelled instances are replaced; pools scale up to
//! `max_instances` and back to `min_instances`; init errors answer at
//! once; nothing outlives the gateway; spawned calls survive a SIGKILL.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Gateway, GatewayBuilder, assert_problem, eventually, json_ok, lambda_fn, process_alive,
    processes_with_env, repo_dir, repo_file, set_up_pids,
};
use serde_json::{Value, json};

/// The Lambda runtime client every lambda function here runs under
/// (`python3 lambda_runtime.py MODULE.FUNCTION`), unless it names another.
const RUNTIME: &str = r#"["python3", "lambda_runtime.py", "setup_counter.handler"]"#;

/// A Lambda handler module: writes its pid to the file `kwargs.started`
/// (atomically, by rename) when a call starts, sleeps `kwargs.sleep`
/// seconds, then answers `{"pid", "kwargs"}`.
const STARTED_PY: &str = r#"
import os, time

def handler(event, context):
    kwargs = event.get("kwargs") or {}
    if kwargs.get("started"):
        with open(kwargs["started"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(kwargs["started"] + ".tmp", kwargs["started"])
    time.sleep(float(kwargs.get("sleep", 0)))
    return {"pid": os.getpid(), "kwargs": kwargs}
"#;

/// A Lambda runtime client of its own (standard library only) that shows
/// what an instance sees of the Runtime API: each call's result is the
/// headers of its `invocation/next` answer, the event, the instance's
/// clock when it came, and what a response and an error report for a call
/// that does not exist were answered (posted before the real response).
const CONTRACT_RUNTIME_PY: &str = r#"
import http.client, json, os, time

HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
API = "/2018-06-01/runtime"
STRAY = "fc-00000000000000000000000000000000"

def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=60)
    conn.request(method, API + path, body, headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data

while True:
    status, headers, body = request("GET", "/invocation/next")
    received_ms = int(time.time() * 1000)
    request_id = headers.get("lambda-runtime-aws-request-id", "")
    json_headers = {"Content-Type": "application/json"}
    stray_response, _, stray_response_body = request(
        "POST", f"/invocation/{STRAY}/response", b'{"stray": true}', json_headers)
    stray_error, _, _ = request(
        "POST", f"/invocation/{STRAY}/error",
        b'{"errorType": "Stray", "errorMessage": "not a call"}', json_headers)
    answer = {
        "next_status": status,
        "headers": headers,
        "event": json.loads(body),
        "received_ms": received_ms,
        "stray_response": stray_response,
        "stray_response_body": stray_response_body.decode(),
        "stray_error": stray_error,
    }
    request("POST", f"/invocation/{request_id}/response", json.dumps(answer).encode(),
            json_headers)
"#;

/// An HTTP instance (started with PORT) whose POST /invoke holds each call
/// until 4 are in flight (a barrier with a timeout), then answers how many
/// were in flight together, whether GET /ready had said ready before the
/// call came, and how often /ready was asked. /ready answers 503 to its
/// first 3 probes, 200 after.
const BARRIER_SERVER_PY: &str = r#"
import json, os, threading
from http.server import ThreadingHTTPServer
from json_http import JsonHandler

meet = threading.Barrier(4, timeout=5)
leave = threading.Barrier(4, timeout=5)
lock = threading.Lock()
state = {"in_flight": 0, "probes": 0, "ready": False}

class Handler(JsonHandler):

    def do_GET(self):
        if self.path != "/ready":
            return self.answer(404, {"error": {"type": "NotFound", "message": self.path}})
        with lock:
            state["probes"] += 1
            ready = state["probes"] > 3
            state["ready"] = state["ready"] or ready
        self.answer(200 if ready else 503, {"ready": ready})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/invoke":
            return self.answer(404, {"error": {"type": "NotFound", "message": self.path}})
        with lock:
            state["in_flight"] += 1
            ready_before = state["ready"]
        together = True
        try:
            meet.wait()
        except threading.BrokenBarrierError:
            together = False
        with lock:
            in_flight = state["in_flight"]
        try:
            leave.wait()
        except threading.BrokenBarrierError:
            together = False
        with lock:
            state["in_flight"] -= 1
            probes = state["probes"]
        self.answer(200, {"pid": os.getpid(), "in_flight": in_flight, "together": together,
                          "ready_before": ready_before, "probes": probes})

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn builder() -> GatewayBuilder {
    common::instances_builder()
}

/// The `pid` an instance put in its answer.
fn pid(result: &Value) -> i32 {
    result["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {result}")) as i32
}

/// POSTs `body` to `path` and returns the 200 result.
async fn call(gw: &Gateway, client: &reqwest::Client, path: &str, body: Value) -> Value {
    json_ok(gw.post_json(client, path, &body.to_string()).await).await
}

/// Makes `total` calls to `path` from `parallel` callers at once, the
/// body of call `i` being `body(i)`; returns (i, status, body) per call.
async fn call_many(
    gw: &Gateway,
    path: &str,
    total: usize,
    parallel: usize,
    body: fn(usize) -> Value,
) -> Vec<(usize, u16, Value)> {
    let next = Arc::new(AtomicUsize::new(0));
    let callers = (0..parallel).map(|_| {
        let next = next.clone();
        let client = gw.client();
        async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return answers;
                }
                let resp = gw.post_json(&client, path, &body(i).to_string()).await;
                let status = resp.status().as_u16();
                let text = resp.text().await.expect("read answer");
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("call {i}: not JSON ({e}): {text}"));
                answers.push((i, status, value));
            }
        }
    });
    futures_util::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Spawns a call and returns its id.
async fn spawn(gw: &Gateway, client: &reqwest::Client, path: &str, body: Value) -> String {
    let resp = gw.post_json(client, path, &body.to_string()).await;
    let status = resp.status();
    let text = resp.text().await.expect("read spawn answer");
    assert_eq!(status, 202, "spawn {path}: {text}");
    let body: Value = serde_json::from_str(&text).expect("spawn answer is JSON");
    body["call_id"].as_str().expect("call_id").to_owned()
}

/// `GET /calls/{id}` (with `?wait=` when given): status and JSON body.
async fn get_call(
    gw: &Gateway,
    client: &reqwest::Client,
    id: &str,
    wait: Option<u32>,
) -> (u16, Value) {
    let path = match wait {
        Some(w) => format!("/calls/{id}?wait={w}"),
        None => format!("/calls/{id}"),
    };
    let resp = client
        .get(gw.url(&path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
    (status, body)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A value no other process's environment holds.
fn marker() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `detail` names `kind` as a word of its own (not inside
/// another word: "Error" is not in "backend_error").
fn names_type(detail: &str, kind: &str) -> bool {
    detail
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
        .map(|word| word.trim_end_matches('.'))
        .any(|word| word == kind)
}

/// How long a call to a function whose set-up fails may take: the start
/// of an instance and its init error report, well under its 30 s
/// `init_timeout`.
const PROMPT: Duration = Duration::from_secs(5);

/// Two functions running the same `command`, whose set-up fails: NAME
/// (called one call at a time) and NAME_together (called by 4 callers at
/// once, before any other call).
fn failing_fns(name: &str, command: &str, extra: &str) -> String {
    let extra = format!("init_timeout = \"30s\"\n{extra}");
    lambda_fn(name, command, &extra) + &lambda_fn(&format!("{name}_together"), command, &extra)
}

/// POSTs `{}` to `path` (a function whose set-up fails): what is wrong
/// with the answer, when it is not a prompt 502 `backend_error` whose
/// detail names `kind`.
async fn init_error_fault(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    kind: &str,
) -> Option<String> {
    let started = Instant::now();
    let Ok(resp) = tokio::time::timeout(PROMPT, gw.post_json(client, path, "{}")).await else {
        return Some(format!("no answer within {PROMPT:?} (init_timeout 30 s)"));
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read answer");
    let elapsed = started.elapsed();
    let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status != 502 || problem["code"] != "backend_error" {
        return Some(format!(
            "want 502 backend_error, got {status} after {elapsed:?}: {text}"
        ));
    }
    let detail = problem["detail"].as_str().unwrap_or("");
    (!names_type(detail, kind)).then(|| format!("the detail does not name {kind:?}: {text}"))
}

/// Asserts that calls to the two functions of [`failing_fns`] answer 502
/// naming `kind`, promptly: NAME's one after the other while its starts
/// keep failing, and NAME_together's 4 first calls at once.
async fn assert_init_errors_answer_promptly(gw: &Gateway, name: &str, kind: &str) {
    let client = gw.client();
    let mut faults = Vec::new();
    let path = format!("/w/{name}");
    for i in 0..4 {
        if let Some(fault) = init_error_fault(gw, &client, &path, kind).await {
            faults.push(format!(
                "{path}, call {i} of 4 one after the other: {fault}"
            ));
        }
    }
    let together = format!("/w/{name}_together");
    let calls = (0..4).map(|_| init_error_fault(gw, &client, &together, kind));
    for (i, fault) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        if let Some(fault) = fault {
            faults.push(format!("{together}, call {i} of 4 at once: {fault}"));
        }
    }
    assert!(
        faults.is_empty(),
        "calls to functions whose set-up fails with {kind}:\n{}",
        faults.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_up_runs_once_per_instance_across_200_calls() {
    let gw = builder()
        .toml(&lambda_fn("counted", RUNTIME, "max_instances = 2"))
        .start()
        .await;
    let answers = call_many(&gw, "/w/counted", 200, 8, |i| json!({"i": i})).await;
    let set_ups = set_up_pids(&gw.dir, "counted.setup");
    assert!(
        (1..=2).contains(&set_ups.len()),
        "200 calls on at most 2 instances ran {} set-ups: {set_ups:?}",
        set_ups.len()
    );
    let mut served = BTreeSet::new();
    for (i, status, body) in &answers {
        assert_eq!(*status, 200, "call {i}: {body}");
        assert_eq!(body["kwargs"]["i"], *i, "call {i} answered {body}");
        served.insert(pid(body));
    }
    assert_eq!(answers.len(), 200);
    let set_up: BTreeSet<i32> = set_ups.iter().copied().collect();
    assert!(
        served.is_subset(&set_up),
        "calls answered by {served:?}, set up: {set_up:?}"
    );
}

#[tokio::test]
async fn crashed_instance_is_replaced_and_the_next_call_succeeds() {
    let gw = builder()
        .toml(&lambda_fn("crashy", RUNTIME, "max_instances = 1"))
        .start()
        .await;
    let client = gw.client();
    let first = pid(&call(&gw, &client, "/w/crashy", json!({})).await);
    let resp = gw
        .post_json(&client, "/w/crashy", r#"{"crash": true}"#)
        .await;
    assert_problem(resp, 502, "backend_error").await;
    let next = call(&gw, &client, "/w/crashy", json!({"after": "crash"})).await;
    assert_ne!(pid(&next), first, "the crashed instance answered: {next}");
    assert_eq!(next["kwargs"], json!({"after": "crash"}));
    let gone = eventually(Duration::from_secs(5), || !process_alive(first)).await;
    assert!(gone, "the crashed instance {first} is still alive");
    assert_eq!(
        set_up_pids(&gw.dir, "crashy.setup"),
        vec![first, pid(&next)]
    );
}

#[tokio::test]
async fn init_error_answers_502_naming_its_type_at_once() {
    let gw = builder()
        .toml(&failing_fns(
            "broken",
            r#"["python3", "lambda_runtime.py", "init_error.handler"]"#,
            "",
        ))
        .start()
        .await;
    // lambda_runtime.py posts the exception's class name as the errorType.
    assert_init_errors_answer_promptly(&gw, "broken", "RuntimeError").await;
}

/// A gateway whose function `failing` keeps starting instances that fail
/// their set-up (min_instances = 1), with a growing backoff between
/// starts; each start appends a line to starts.txt, and each instance
/// carries `MARKER=marker`.
async fn failing_pool(marker: &str) -> Gateway {
    builder()
        .toml(&lambda_fn(
            "failing",
            r#"["sh", "-c", "echo start >> starts.txt; exec python3 lambda_runtime.py init_error.handler"]"#,
            &format!("min_instances = 1\ninit_timeout = \"30s\"\nenv.MARKER = \"{marker}\""),
        ))
        .start()
        .await
}

/// Waits until the `n`th instance of [`failing_pool`] has started and
/// exited: the pool then waits 0.1 s × 2^(n-1) before the next start.
async fn backing_off_after(gw: &Gateway, marker: &str, n: usize) {
    let starts = || {
        std::fs::read_to_string(gw.dir.join("starts.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let failed = eventually(Duration::from_secs(30), || {
        starts() >= n && processes_with_env("MARKER", marker).is_empty()
    })
    .await;
    assert!(
        failed,
        "the pool started its failing instance {} times in 30 s",
        starts()
    );
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let (_, rest) = stat
        .rsplit_once(')')
        .expect("stat has the command in parentheses");
    // After the command: state is field 3, utime 14, stime 15 (in ticks).
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields[10] + fields[11]) * 10)
}

#[tokio::test]
async fn a_pool_backing_off_its_failing_starts_stays_idle() {
    let marker = marker();
    let gw = failing_pool(&marker).await;
    // The fifth failure holds the next start back 1.6 s.
    backing_off_after(&gw, &marker, 5).await;
    // Idleness is measured over a window of the backoff: nothing happens
    // in it to wait for.
    let before = cpu_time(gw.pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time(gw.pid) - before;
    let elapsed = window.elapsed();
    assert!(
        used < Duration::from_millis(100),
        "the gateway used {used:?} of CPU in {elapsed:?} with no call, while backing off"
    );
}

#[tokio::test]
async fn sigterm_stops_the_gateway_promptly_while_a_pool_backs_off() {
    let marker = marker();
    let mut gw = failing_pool(&marker).await;
    // The seventh failure holds the next start back 6.4 s.
    backing_off_after(&gw, &marker, 7).await;
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(40)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} to stop a gateway whose function is backing off its restarts"
    );
}

#[tokio::test]
async fn call_past_its_timeout_is_504_and_its_instance_is_replaced() {
    let gw = builder()
        .toml(&lambda_fn(
            "slow",
            RUNTIME,
            "max_instances = 1\ntimeout = \"1s\"\nexit_grace = \"1s\"",
        ))
        .start()
        .await;
    let client = gw.client();
    let first = pid(&call(&gw, &client, "/w/slow", json!({})).await);
    let started = Instant::now();
    let resp = gw.post_json(&client, "/w/slow", r#"{"sleep": 30}"#).await;
    assert_problem(resp, 504, "function_timeout").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "a 1 s timeout answered after {elapsed:?}"
    );
    let next = pid(&call(&gw, &client, "/w/slow", json!({})).await);
    assert_ne!(next, first, "the timed-out instance took the next call");
    let gone = eventually(Duration::from_secs(5), || !process_alive(first)).await;
    assert!(gone, "the timed-out instance {first} is still alive");
}

#[tokio::test]
async fn cancelling_a_running_spawned_call_kills_its_instance() {
    let gw = builder()
        .file("started.py", STARTED_PY)
        .toml(&lambda_fn(
            "cancel",
            r#"["python3", "lambda_runtime.py", "started.handler"]"#,
            "max_instances = 1\ntimeout = \"60s\"\nexit_grace = \"1s\"",
        ))
        .start()
        .await;
    let client = gw.client();
    let id = spawn(
        &gw,
        &client,
        "/w/cancel/spawn",
        json!({"sleep": 60, "started": "started.pid"}),
    )
    .await;
    let running = eventually(Duration::from_secs(10), || {
        gw.dir.join("started.pid").exists()
    })
    .await;
    assert!(running, "the spawned call never started on an instance");
    let (status, body) = get_call(&gw, &client, &id, None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    let instance: i32 = std::fs::read_to_string(gw.dir.join("started.pid"))
        .expect("read started.pid")
        .parse()
        .expect("a pid");
    assert!(process_alive(instance));

    let resp = client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("DELETE /calls/{id}");
    assert_eq!(resp.status(), 200, "cancel answers 200");
    let gone = eventually(Duration::from_secs(5), || !process_alive(instance)).await;
    assert!(gone, "instance {instance} still runs the cancelled call");
    let resp = client
        .get(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("GET /calls/{id}");
    assert_problem(resp, 410, "call_cancelled").await;
    let next = call(&gw, &client, "/w/cancel", json!({"sleep": 0})).await;
    assert_ne!(pid(&next), instance, "the killed instance answered: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_scales_up_to_max_instances_and_back_to_min_instances() {
    let gw = builder()
        .toml(&lambda_fn(
            "elastic",
            RUNTIME,
            "min_instances = 1\nmax_instances = 3\nidle_timeout = \"1s\"\nexit_grace = \"1s\"",
        ))
        .start()
        .await;
    let answers = call_many(&gw, "/w/elastic", 12, 12, |i| json!({"sleep": 0.3, "i": i})).await;
    let mut pids = BTreeSet::new();
    for (i, status, body) in &answers {
        assert_eq!(*status, 200, "call {i}: {body}");
        pids.insert(pid(body));
    }
    assert_eq!(
        pids.len(),
        3,
        "12 concurrent 0.3 s calls ran on {pids:?} (max_instances = 3)"
    );
    let set_ups = set_up_pids(&gw.dir, "elastic.setup");
    assert_eq!(set_ups.len(), 3, "never more than 3 instances: {set_ups:?}");

    let alive = || -> Vec<i32> { pids.iter().copied().filter(|&p| process_alive(p)).collect() };
    let shrunk = eventually(Duration::from_secs(10), || alive().len() == 1).await;
    assert!(
        shrunk,
        "idle_timeout 1 s: alive of {pids:?} after 10 s: {:?}",
        alive()
    );
    let survivor = alive()[0];
    let again = call(&gw, &gw.client(), "/w/elastic", json!({})).await;
    assert_eq!(pid(&again), survivor, "min_instances = 1 stays warm");
    assert_eq!(set_up_pids(&gw.dir, "elastic.setup").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_through_four_instances_each_get_their_own_answer() {
    let gw = builder()
        .toml(&lambda_fn(
            "many",
            RUNTIME,
            "min_instances = 4\nmax_instances = 4\nconcurrency = 32\nqueue = 32",
        ))
        .start()
        .await;
    let started = Instant::now();
    let answers = call_many(
        &gw,
        "/w/many",
        1000,
        32,
        |i| json!({"id": format!("call-{i}"), "x": i}),
    )
    .await;
    println!("1000 calls from 32 clients took {:?}", started.elapsed());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut pids = BTreeSet::new();
    for (i, status, body) in &answers {
        assert_eq!(*status, 200, "call {i}: {body}");
        let kwargs = &body["kwargs"];
        assert_eq!(kwargs["id"], format!("call-{i}"), "call {i} got {body}");
        assert_eq!(kwargs["x"], *i, "call {i} got {body}");
        *seen
            .entry(kwargs["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
        pids.insert(pid(body));
    }
    assert_eq!(answers.len(), 1000);
    assert_eq!(seen.len(), 1000, "every call answered once");
    assert!(seen.values().all(|&n| n == 1));
    assert!(
        pids.len() <= 4,
        "answered by {} instances: {pids:?}",
        pids.len()
    );
    assert!(set_up_pids(&gw.dir, "many.setup").len() <= 4);
}

/// The config of the containment tests: a lambda function and an http
/// instance function (examples/api.py), both with `MARKER` in their
/// instances' environment and one instance kept warm.
fn marked(marker: &str) -> GatewayBuilder {
    let env = format!("env.MARKER = \"{marker}\"\nmin_instances = 1\nexit_grace = \"2s\"");
    builder()
        .file("api.py", repo_file("examples/api.py"))
        .toml(&lambda_fn("marked", RUNTIME, &env))
        .toml(&format!(
            "\n[apps.w.functions.api]\nbackend = \"http\"\ncommand = [\"python3\", \"api.py\"]\n\
             path = \"/invoke\"\nready_path = \"/healthz\"\n{env}\n"
        ))
}

/// Calls both functions of [`marked`] and returns the instances that
/// carry the marker (at least one of each).
async fn marked_instances(gw: &Gateway, marker: &str) -> Vec<i32> {
    let client = gw.client();
    let lambda = pid(&call(gw, &client, "/w/marked", json!({})).await);
    assert_eq!(call(gw, &client, "/w/api", json!({"x": 7})).await, 49);
    let found = processes_with_env("MARKER", marker);
    assert!(
        found.contains(&lambda) && found.len() >= 2,
        "the lambda instance {lambda} and an http instance carry the marker: {found:?}"
    );
    found
}

#[tokio::test]
async fn no_instance_outlives_a_sigterm_of_the_gateway() {
    let marker = marker();
    let mut gw = marked(&marker).start().await;
    let instances = marked_instances(&gw, &marker).await;
    let status = gw.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let left = processes_with_env("MARKER", &marker);
    assert!(
        left.is_empty(),
        "instances left after the gateway exited: {left:?} (of {instances:?})"
    );
}

#[tokio::test]
async fn no_instance_outlives_a_sigkill_of_the_gateway() {
    let marker = marker();
    let mut gw = marked(&marker).start().await;
    let instances = marked_instances(&gw, &marker).await;
    gw.kill().await;
    let none = eventually(Duration::from_secs(5), || {
        processes_with_env("MARKER", &marker).is_empty()
    })
    .await;
    assert!(
        none,
        "instances left 5 s after the gateway's SIGKILL: {:?} (of {instances:?})",
        processes_with_env("MARKER", &marker)
    );
}

/// Whether `python3 -c "import awslambdaric"` works.
fn awslambdaric_installed() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import awslambdaric"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[tokio::test]
async fn awslambdaric_serves_calls_errors_and_init_errors() {
    assert!(
        awslambdaric_installed(),
        "this test needs awslambdaric: pip install awslambdaric"
    );
    let gw = builder()
        .toml(&lambda_fn(
            "ric",
            r#"["python3", "-m", "awslambdaric", "setup_counter.handler"]"#,
            "max_instances = 1",
        ))
        .toml(&failing_fns(
            "ric_broken",
            r#"["python3", "-m", "awslambdaric", "init_error.handler"]"#,
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    let first = call(&gw, &client, "/w/ric", json!({"x": 1})).await;
    assert_eq!(first["function"], "ric", "{first}");
    assert_eq!(first["kwargs"], json!({"x": 1}), "{first}");
    let second = call(&gw, &client, "/w/ric", json!({"x": 2})).await;
    assert_eq!(pid(&second), pid(&first), "one warm instance serves both");

    let resp = gw.post_json(&client, "/w/ric", r#"{"fail": true}"#).await;
    let problem = assert_problem(resp, 500, "function_error").await;
    assert_eq!(
        problem["error"],
        json!({"type": "ValueError", "message": "asked to fail"}),
        "{problem}"
    );
    // An error report leaves the instance warm.
    let after = call(&gw, &client, "/w/ric", json!({})).await;
    assert_eq!(pid(&after), pid(&first));
    assert_eq!(set_up_pids(&gw.dir, "ric.setup"), vec![pid(&first)]);

    // awslambdaric reports an exception at import as its class name.
    assert_init_errors_answer_promptly(&gw, "ric_broken", "RuntimeError").await;
}

#[tokio::test]
async fn aws_lambda_ric_for_node_serves_calls_errors_and_init_errors() {
    let node = repo_dir().join("tests/instances/node");
    let ric = node.join("node_modules/.bin/aws-lambda-ric");
    assert!(
        ric.exists(),
        "this test needs aws-lambda-ric: npm install in {}",
        node.display()
    );
    // Run unchanged, as `aws-lambda-ric MODULE.FUNCTION`: it loads the
    // module from LAMBDA_TASK_ROOT (the config folder).
    let command = |handler: &str| format!("[{:?}, \"{handler}\"]", ric.to_str().unwrap());
    let gw = builder()
        .file("handler.js", repo_file("tests/instances/node/handler.js"))
        .file(
            "init_error.js",
            repo_file("tests/instances/node/init_error.js"),
        )
        .toml(&lambda_fn(
            "node",
            &command("handler.handler"),
            "max_instances = 1",
        ))
        .toml(&failing_fns(
            "node_broken",
            &command("init_error.handler"),
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    let first = call(&gw, &client, "/w/node", json!({"x": 1})).await;
    assert_eq!(first["function"], "node", "{first}");
    assert_eq!(first["kwargs"], json!({"x": 1}), "{first}");
    let second = call(&gw, &client, "/w/node", json!({"x": 2})).await;
    assert_eq!(pid(&second), pid(&first), "one warm instance serves both");

    let resp = gw.post_json(&client, "/w/node", r#"{"fail": true}"#).await;
    let problem = assert_problem(resp, 500, "function_error").await;
    assert_eq!(
        problem["error"],
        json!({"type": "Error", "message": "asked to fail"}),
        "{problem}"
    );
    let after = call(&gw, &client, "/w/node", json!({})).await;
    assert_eq!(pid(&after), pid(&first), "an error report leaves it warm");
    assert_eq!(set_up_pids(&gw.dir, "node.setup"), vec![pid(&first)]);

    // aws-lambda-ric reports a thrown Error by its name.
    assert_init_errors_answer_promptly(&gw, "node_broken", "Error").await;
}

#[tokio::test]
async fn http_instance_takes_instance_concurrency_calls_at_once_once_ready() {
    let gw = Gateway::builder()
        .file("barrier.py", BARRIER_SERVER_PY)
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
        .toml(
            "[apps.w.functions.together]\nbackend = \"http\"\n\
             command = [\"python3\", \"barrier.py\"]\npath = \"/invoke\"\n\
             ready_path = \"/ready\"\ninstance_concurrency = 4\nmax_instances = 1\n",
        )
        .start()
        .await;
    let answers = call_many(&gw, "/w/together", 4, 4, |i| json!({"i": i})).await;
    let mut pids = BTreeSet::new();
    for (i, status, body) in &answers {
        assert_eq!(*status, 200, "call {i}: {body}");
        assert_eq!(body["together"], true, "call {i} waited alone: {body}");
        assert_eq!(body["in_flight"], 4, "call {i}: {body}");
        assert_eq!(
            body["ready_before"], true,
            "call {i} came before ready_path said ready: {body}"
        );
        assert!(
            body["probes"].as_u64().is_some_and(|n| n >= 4),
            "ready_path was probed until it answered 200: {body}"
        );
        pids.insert(pid(body));
    }
    assert_eq!(pids.len(), 1, "one instance (max_instances = 1): {pids:?}");
}

#[tokio::test]
async fn runtime_api_gives_an_instance_the_lambda_headers_and_refuses_stray_posts() {
    let gw = Gateway::builder()
        .file("contract_runtime.py", CONTRACT_RUNTIME_PY)
        .toml(
            "[apps.demo.functions.contract]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"contract_runtime.py\"]\nmax_instances = 1\ntimeout = \"10s\"\n",
        )
        .start()
        .await;
    let client = gw.client();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut arns = Vec::new();
    for x in [1, 2] {
        let sent_ms = now_ms();
        let resp = client
            .post(gw.url("/demo/contract"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
            .body(json!({"x": x}).to_string())
            .send()
            .await
            .expect("POST /demo/contract");
        let call_id = common::header_str(&resp, "x-call-id").expect("X-Call-Id");
        let seen = json_ok(resp).await;
        let headers = &seen["headers"];
        let header = |name: &str| {
            headers[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} on invocation/next: {seen}"))
                .to_owned()
        };

        assert_eq!(seen["next_status"], 200, "{seen}");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("lambda-runtime-aws-request-id"), call_id);
        assert_eq!(seen["event"]["call_id"], call_id.as_str(), "{seen}");
        assert_eq!(seen["event"]["kwargs"], json!({"x": x}), "{seen}");

        let deadline: u64 = header("lambda-runtime-deadline-ms")
            .parse()
            .expect("Lambda-Runtime-Deadline-Ms is a number of ms");
        let received = seen["received_ms"].as_u64().expect("received_ms");
        assert!(
            deadline > received && deadline <= sent_ms + 11_000,
            "deadline {deadline} is in the future ({received}) and within the 10 s timeout of {sent_ms}"
        );
        assert_eq!(seen["event"]["deadline_ms"], deadline, "{seen}");

        let arn = header("lambda-runtime-invoked-function-arn");
        assert!(
            arn.starts_with("arn:aws:lambda:")
                && arn.split(':').count() >= 7
                && arn.contains("demo")
                && arn.contains("contract"),
            "the ARN names app and function: {arn}"
        );
        arns.push(arn);

        let trace_id = header("lambda-runtime-trace-id");
        assert!(
            trace_id.contains(&format!("Root=1-{}-{}", &trace[..8], &trace[8..])),
            "the X-Ray trace id carries the caller's trace: {trace_id}"
        );

        let context: Value = serde_json::from_str(&header("lambda-runtime-client-context"))
            .expect("Lambda-Runtime-Client-Context is JSON");
        assert_eq!(context["call_id"], call_id.as_str(), "{context}");
        assert_eq!(context["app"], "demo", "{context}");
        assert_eq!(context["function"], "contract", "{context}");

        let stray = seen["stray_response"].as_u64().expect("stray status");
        assert!(
            (400..500).contains(&stray),
            "a response for a call that does not exist is refused: {seen}"
        );
        let stray_error = seen["stray_error"].as_u64().expect("stray error status");
        assert!(
            (400..500).contains(&stray_error),
            "an error for a call that does not exist is refused: {seen}"
        );
    }
    assert_eq!(arns[0], arns[1], "the ARN is stable across calls");
}

#[tokio::test]
async fn spawned_lambda_call_answers_its_result() {
    let gw = builder()
        .toml(&lambda_fn("spawned", RUNTIME, ""))
        .start()
        .await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/w/spawned/spawn", json!({"x": 5})).await;
    let (status, body) = get_call(&gw, &client, &id, Some(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kwargs"], json!({"x": 5}), "{body}");
    assert_eq!(body["function"], "spawned", "{body}");
}

#[tokio::test]
async fn pending_lambda_calls_survive_kill_9_of_the_gateway() {
    let config = || {
        builder().toml(&lambda_fn(
            "durable",
            RUNTIME,
            "concurrency = 1\nmax_instances = 1",
        ))
    };
    let mut gw = config().start().await;
    let client = gw.client();
    let mut ids = Vec::new();
    for n in 0..4 {
        let id = spawn(
            &gw,
            &client,
            "/w/durable/spawn",
            json!({"n": n, "sleep": 0.5}),
        )
        .await;
        ids.push((n, id));
    }
    gw.kill().await;

    let gw2 = config().in_dir(&gw.dir).start().await;
    let client = gw2.client();
    for (n, id) in &ids {
        let (status, body) = get_call(&gw2, &client, id, Some(30)).await;
        assert_eq!(status, 200, "call {id} (n = {n}) ends succeeded: {body}");
        assert_eq!(body["kwargs"]["n"], *n, "{id}: {body}");
    }
}
