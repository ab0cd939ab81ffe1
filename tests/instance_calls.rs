//! Calls on warm instances seen from outside, beyond the pool mechanics of
//! tests/instances.rs: sync calls past `sync_wait` (303, then the result),
//! spawned and cancelled calls on http instances, passthrough to http
//! instances (sync and `Prefer: respond-async`), spawned class-method calls
//! on their parameter set (idempotency, a SIGKILL of the gateway), the
//! class's invoke scope, instance stdout kept out of answers, a 2 MiB
//! Runtime API result, `min_instances` at start and an instance that
//! ignores SIGTERM at shutdown.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Gateway, GatewayBuilder, assert_problem, eventually, header_str, json_ok, lambda_fn,
    process_alive, processes_with_env, repo_file, run_bin, set_up_pids,
};
use serde_json::{Value, json};

/// The Lambda handler (examples/lambda_runtime.py running
/// tests/instances/setup_counter.py) most lambda functions here run.
const RUNTIME: &str = r#"["python3", "lambda_runtime.py", "setup_counter.handler"]"#;

/// An HTTP instance on 127.0.0.1:$PORT (standard library only). At start
/// it appends its pid to `SETUP_COUNT_FILE` (when set). `GET /healthz`
/// answers 200. `POST /invoke` takes the invocation request: `started`
/// writes the pid to that file (atomically, by rename), `noise` writes
/// that many 512-byte lines to stdout and then the line `marker`,
/// `sleep` holds the call that many seconds; the answer is
/// `{"pid", "kwargs"}`.
const SLEEPY_SERVER_PY: &str = r#"
import json, os, sys, time
from http.server import ThreadingHTTPServer
from json_http import JsonHandler

if os.environ.get("SETUP_COUNT_FILE"):
    with open(os.environ["SETUP_COUNT_FILE"], "a") as f:
        f.write(f"{os.getpid()}\n")

class Handler(JsonHandler):

    def do_GET(self):
        self.answer(200 if self.path == "/healthz" else 404, {"path": self.path})

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        kw = event.get("kwargs") or {}
        if kw.get("started"):
            with open(kw["started"] + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(kw["started"] + ".tmp", kw["started"])
        if kw.get("noise"):
            for _ in range(int(kw["noise"])):
                sys.stdout.write("n" * 511 + "\n")
            sys.stdout.write(kw["marker"] + "\n")
            sys.stdout.flush()
        time.sleep(float(kw.get("sleep", 0)))
        self.answer(200, {"pid": os.getpid(), "kwargs": kw})

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A Lambda handler module: `noise` writes that many 512-byte lines to
/// stdout and then the line `marker` before answering `{"kwargs"}`;
/// `big` answers `{"blob"}`, a string of that many letters `a`..`z` in
/// turn.
const NOISY_PY: &str = r#"
import sys

def handler(event, context):
    kw = event.get("kwargs") or {}
    if kw.get("big"):
        return {"blob": "".join(chr(97 + i % 26) for i in range(int(kw["big"])))}
    if kw.get("noise"):
        for _ in range(int(kw["noise"])):
            sys.stdout.write("n" * 511 + "\n")
        print(kw["marker"], flush=True)
    return {"kwargs": kw}
"#;

/// A Lambda handler module whose set-up ignores SIGTERM and appends its
/// pid to `SETUP_COUNT_FILE`.
const STUBBORN_PY: &str = r#"
import os, signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.environ["SETUP_COUNT_FILE"], "a") as f:
    f.write(f"{os.getpid()}\n")

def handler(event, context):
    return {"pid": os.getpid()}
"#;

/// A gateway whose config dir holds the runtime client, the handler
/// modules and the HTTP instance fixtures.
fn builder() -> GatewayBuilder {
    common::instances_builder()
        .file("api.py", repo_file("examples/api.py"))
        .file("sleepy_server.py", SLEEPY_SERVER_PY)
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
        .file("noisy.py", NOISY_PY)
        .file("stubborn.py", STUBBORN_PY)
}

/// `[apps.w.functions.NAME]`: an http function whose instances run
/// `sleepy_server.py` (calls to /invoke, ready at /healthz; set-ups
/// written to `NAME.setup`), plus `extra` lines.
fn sleepy_fn(name: &str, extra: &str) -> String {
    format!(
        "\n[apps.w.functions.{name}]\nbackend = \"http\"\n\
         command = [\"python3\", \"sleepy_server.py\"]\npath = \"/invoke\"\n\
         ready_path = \"/healthz\"\nenv.SETUP_COUNT_FILE = \"{name}.setup\"\n{extra}\n"
    )
}

/// App `demo`, class `model`: lambda instances of setup_counter.py (set-ups
/// written to model.setup), parameter `size`, one instance per set,
/// methods `predict` and `embed`; `extra` lines go to the class table
/// (e.g. `env.MARKER = "..."`).
fn class_toml(extra: &str) -> String {
    format!(
        r#"
[apps.demo.classes.model]
backend = "lambda"
command = {RUNTIME}
parameters = ["size"]
max_parameter_sets = 4
max_instances = 1
exit_grace = "1s"
env.SETUP_COUNT_FILE = "model.setup"
{extra}

[apps.demo.classes.model.functions.predict]
timeout = "20s"

[apps.demo.classes.model.functions.embed]
"#
    )
}

/// A client that shows redirects instead of following them.
fn no_redirects(gw: &Gateway) -> reqwest::Client {
    gw.client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build client")
}

/// The `pid` an instance put in its answer.
fn pid(result: &Value) -> i32 {
    result["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {result}")) as i32
}

/// A value no other process's environment or log holds.
fn marker() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// POSTs `body` to `path` and returns the 200 result.
async fn call(gw: &Gateway, client: &reqwest::Client, path: &str, body: Value) -> Value {
    json_ok(gw.post_json(client, path, &body.to_string()).await).await
}

/// Spawns a call (`path` ends in `/spawn`) and returns its id.
async fn spawn(gw: &Gateway, client: &reqwest::Client, path: &str, body: Value) -> String {
    let resp = gw.post_json(client, path, &body.to_string()).await;
    accepted(resp, path).await
}

/// Asserts a 202 spawn answer and returns its `call_id`.
async fn accepted(resp: reqwest::Response, what: &str) -> String {
    let status = resp.status();
    let text = resp.text().await.expect("read spawn answer");
    assert_eq!(status, 202, "spawn {what}: {text}");
    let body: Value = serde_json::from_str(&text).expect("spawn answer is JSON");
    body["call_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no call_id in {text}"))
        .to_owned()
}

/// `GET /calls/{id}?wait=30`: the answer once the call has ended.
async fn get_call(gw: &Gateway, client: &reqwest::Client, id: &str) -> reqwest::Response {
    let path = format!("/calls/{id}?wait=30");
    client
        .get(gw.url(&path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
}

/// The 200 result of a spawned call, once it has ended.
async fn result(gw: &Gateway, client: &reqwest::Client, id: &str) -> Value {
    json_ok(get_call(gw, client, id).await).await
}

/// The file `name` in `dir` parsed as one pid, once it exists.
fn read_pid(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `/proc/PID/status` says the process ignores SIGTERM.
fn ignores_sigterm(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

/// A sync call of `path` that runs 2.5 s with `sync_wait = "1s"`: a 303
/// to `/calls/{id}` after about the sync wait, not at the call's end;
/// GETting the Location gives the call's own result; and a client that
/// follows redirects (reqwest's default) gets the result of another such
/// call in one go.
async fn assert_sync_call_overflows_to_its_result(gw: &Gateway, path: &str) {
    let nonce = marker();
    let client = no_redirects(gw);
    let started = Instant::now();
    let resp = gw
        .post_json(
            &client,
            path,
            &json!({"sleep": 2.5, "nonce": nonce}).to_string(),
        )
        .await;
    let took = started.elapsed();
    let status = resp.status();
    let location = header_str(&resp, "location");
    let call_id = header_str(&resp, "x-call-id");
    let text = resp.text().await.expect("read 303 body");
    assert_eq!(
        status, 303,
        "POST {path} sleeping 2.5 s with sync_wait 1 s (after {took:?}): {text}"
    );
    let call_id = call_id.expect("X-Call-Id on the 303");
    assert_eq!(
        location.as_deref(),
        Some(&*format!("/calls/{call_id}")),
        "Location of the 303"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "the 303 came after the 1 s sync wait, before the call's end: {took:?}"
    );
    // A GET of the Location without ?wait= is held until the call ends.
    let location = location.expect("Location");
    let resp = client
        .get(gw.url(&location))
        .send()
        .await
        .expect("GET the Location");
    let result = json_ok(resp).await;
    assert_eq!(
        result["kwargs"],
        json!({"sleep": 2.5, "nonce": nonce}),
        "the 303's call answered {result}"
    );

    let nonce = marker();
    let resp = gw
        .post_json(
            &gw.client(),
            path,
            &json!({"sleep": 1.5, "nonce": nonce}).to_string(),
        )
        .await;
    let landed = resp.url().path().to_owned();
    let result = json_ok(resp).await;
    assert!(
        landed.starts_with("/calls/fc-"),
        "the followed answer came from /calls/{{id}}: {landed}"
    );
    assert_eq!(result["kwargs"]["nonce"], nonce.as_str(), "{result}");
}

#[tokio::test]
async fn sync_lambda_call_past_sync_wait_is_303_then_its_result() {
    let gw = builder()
        .server("sync_wait = \"1s\"")
        .toml(&lambda_fn("slow", RUNTIME, "timeout = \"20s\""))
        .start()
        .await;
    assert_sync_call_overflows_to_its_result(&gw, "/w/slow").await;
}

#[tokio::test]
async fn sync_http_instance_call_past_sync_wait_is_303_then_its_result() {
    let gw = builder()
        .server("sync_wait = \"1s\"")
        .toml(&sleepy_fn("slow", "timeout = \"20s\""))
        .start()
        .await;
    assert_sync_call_overflows_to_its_result(&gw, "/w/slow").await;
}

#[tokio::test]
async fn spawned_call_on_an_http_instance_answers_its_result() {
    let gw = builder()
        .toml(
            "[apps.w.functions.api]\nbackend = \"http\"\ncommand = [\"python3\", \"api.py\"]\n\
             path = \"/invoke\"\nready_path = \"/healthz\"\n",
        )
        .start()
        .await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/w/api/spawn", json!({"x": 7})).await;
    assert_eq!(result(&gw, &client, &id).await, json!(49));
    let id = spawn(&gw, &client, "/w/api/spawn", json!({"x": "12"})).await;
    assert_eq!(result(&gw, &client, &id).await, json!(144));
}

#[tokio::test]
async fn cancelling_a_running_spawned_call_stops_its_http_instance() {
    let gw = builder()
        .toml(&sleepy_fn(
            "held",
            "max_instances = 1\nexit_grace = \"1s\"\ntimeout = \"60s\"",
        ))
        .start()
        .await;
    let client = gw.client();
    let id = spawn(
        &gw,
        &client,
        "/w/held/spawn",
        json!({"started": "held.pid", "sleep": 30}),
    )
    .await;
    let running = eventually(Duration::from_secs(15), || {
        read_pid(&gw.dir, "held.pid").is_some()
    })
    .await;
    assert!(running, "the spawned call never reached its instance");
    let first = read_pid(&gw.dir, "held.pid").expect("pid of the running call");
    assert!(process_alive(first), "instance {first} runs the call");

    let resp = client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("DELETE /calls/{id}");
    let status = resp.status();
    let body: Value = resp.json().await.expect("cancel answer is JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"call_id": id, "status": "cancelled"}));

    let gone = eventually(Duration::from_secs(5), || !process_alive(first)).await;
    assert!(
        gone,
        "the http instance {first} still runs 5 s after its call was cancelled"
    );
    assert_problem(get_call(&gw, &client, &id).await, 410, "call_cancelled").await;

    let next = call(&gw, &client, "/w/held", json!({"after": "cancel"})).await;
    assert_eq!(next["kwargs"], json!({"after": "cancel"}), "{next}");
    assert_ne!(pid(&next), first, "the cancelled instance answered: {next}");
    assert_eq!(
        set_up_pids(&gw.dir, "held.setup"),
        vec![first, pid(&next)],
        "a fresh instance replaced the stopped one"
    );
}

#[tokio::test]
async fn passthrough_to_http_instances_answers_as_the_instance_did() {
    let gw = builder()
        .toml(
            "[apps.w.functions.pt]\nbackend = \"http\"\ncommand = [\"python3\", \"api.py\"]\n\
             passthrough = true\nready_path = \"/healthz\"\n",
        )
        .start()
        .await;
    let client = gw.client();

    // Sync: the instance's own status, content type and body.
    for (path, status, body) in [
        ("/w/pt/healthz", 200, json!({"status": "ok"})),
        (
            "/w/pt/nowhere",
            404,
            json!({"error": {"type": "NotFound", "message": "no route GET /nowhere"}}),
        ),
    ] {
        let resp = client.get(gw.url(path)).send().await.expect("GET");
        assert_eq!(resp.status(), status, "GET {path}");
        assert_eq!(
            header_str(&resp, "content-type").as_deref(),
            Some("application/json"),
            "GET {path}"
        );
        let got: Value = resp.json().await.expect("instance's JSON");
        assert_eq!(got, body, "GET {path}");
    }

    // Spawned with Prefer: respond-async: stored as the instance answered.
    for (path, status, body) in [
        ("/w/pt/invoke", 200, json!(49)),
        (
            "/w/pt/missing",
            404,
            json!({"error": {"type": "NotFound", "message": "no route POST /missing"}}),
        ),
    ] {
        let resp = client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(r#"{"kwargs": {"x": 7}}"#)
            .send()
            .await
            .expect("POST with Prefer: respond-async");
        assert_eq!(
            header_str(&resp, "preference-applied").as_deref(),
            Some("respond-async"),
            "POST {path}"
        );
        let id = accepted(resp, path).await;
        let resp = get_call(&gw, &client, &id).await;
        assert_eq!(resp.status(), status, "GET /calls/{id} of POST {path}");
        assert_eq!(
            header_str(&resp, "content-type").as_deref(),
            Some("application/json"),
            "GET /calls/{id} of POST {path}"
        );
        let got: Value = resp.json().await.expect("stored JSON");
        assert_eq!(got, body, "GET /calls/{id} of POST {path}");
    }
}

#[tokio::test]
async fn spawned_class_method_runs_on_its_parameter_set() {
    let gw = builder().toml(&class_toml("")).start().await;
    let client = gw.client();
    let small = call(&gw, &client, "/demo/model/predict?size=small", json!({})).await;

    let id = spawn(
        &gw,
        &client,
        "/demo/model/predict/spawn?size=large",
        json!({"x": 1}),
    )
    .await;
    let large = result(&gw, &client, &id).await;
    assert_eq!(
        large["params"],
        json!({"FNGATE_PARAM_SIZE": "large"}),
        "{large}"
    );
    assert_eq!(large["parameters"], json!({"size": "large"}), "{large}");
    assert_eq!(
        large["kwargs"],
        json!({"x": 1}),
        "a parameter is never an argument: {large}"
    );
    assert_eq!(large["class"], "model", "{large}");
    assert_eq!(large["function"], "predict", "{large}");
    assert_ne!(pid(&large), pid(&small), "set large has its own instance");
    // The set's instance (max_instances = 1) serves its other methods too.
    let embed = call(&gw, &client, "/demo/model/embed?size=large", json!({})).await;
    assert_eq!(pid(&embed), pid(&large), "{embed}");
    let mut set_ups = set_up_pids(&gw.dir, "model.setup");
    set_ups.sort();
    let mut want = vec![pid(&small), pid(&large)];
    want.sort();
    assert_eq!(set_ups, want, "one set-up per parameter set");
}

#[tokio::test]
async fn one_idempotency_key_with_another_parameter_value_is_422() {
    let gw = builder().toml(&class_toml("")).start().await;
    let client = gw.client();
    let key = marker();
    let spawn_with_key = |size: &str| {
        client
            .post(gw.url(&format!("/demo/model/predict/spawn?size={size}")))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(r#"{"x": 1}"#)
            .send()
    };
    let first = accepted(spawn_with_key("large").await.expect("spawn"), "large").await;
    let again = accepted(spawn_with_key("large").await.expect("spawn"), "large").await;
    assert_eq!(again, first, "the same key, size and body: the same call");
    let resp = spawn_with_key("small").await.expect("spawn");
    assert_problem(resp, 422, "idempotency_mismatch").await;
    let done = result(&gw, &client, &first).await;
    assert_eq!(done["parameters"], json!({"size": "large"}), "{done}");
}

#[tokio::test]
async fn spawned_class_method_calls_survive_kill_9_on_their_parameter_sets() {
    let marker = marker();
    let config = || {
        builder().toml(&class_toml(&format!(
            "concurrency = 1\nenv.MARKER = \"{marker}\""
        )))
    };
    let mut gw = config().start().await;
    let client = gw.client();
    let sizes = ["small", "large", "small", "large"];
    let mut ids = Vec::new();
    for (n, size) in sizes.iter().enumerate() {
        let path = format!("/demo/model/predict/spawn?size={size}");
        ids.push(spawn(&gw, &client, &path, json!({"n": n, "sleep": 0.5})).await);
    }
    gw.kill().await;
    let none = eventually(Duration::from_secs(5), || {
        processes_with_env("MARKER", &marker).is_empty()
    })
    .await;
    assert!(none, "instances outlived the killed gateway");
    let before = set_up_pids(&gw.dir, "model.setup");

    let gw2 = config().in_dir(&gw.dir).start().await;
    let client = gw2.client();
    let mut after_restart = 0;
    for (n, (size, id)) in sizes.iter().zip(&ids).enumerate() {
        let body = result(&gw2, &client, id).await;
        assert_eq!(body["kwargs"]["n"], n, "{id}: {body}");
        assert_eq!(
            body["params"],
            json!({"FNGATE_PARAM_SIZE": size}),
            "call {n} ran on set {size}: {body}"
        );
        assert_eq!(body["parameters"], json!({"size": size}), "{body}");
        if !before.contains(&pid(&body)) {
            after_restart += 1;
        }
    }
    assert!(
        after_restart > 0,
        "no call ran after the restart (set-ups before the kill: {before:?})"
    );
}

/// A `fngate keygen --name NAME` key and its `[[auth.api_keys]]` entry,
/// narrowed to `scopes` (a TOML array).
async fn api_key(name: &str, scopes: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stdout, stderr) = run_bin(&["keygen", "--name", name], dir.path()).await;
    assert_eq!(code, Some(0), "keygen: {stderr}");
    let key = stdout
        .lines()
        .find(|l| l.starts_with("API key (") && l.contains(": fgk_"))
        .and_then(|l| l.rsplit(": ").next())
        .unwrap_or_else(|| panic!("an `API key (...): fgk_...` line: {stdout}"))
        .trim()
        .to_owned();
    let block = &stdout[stdout.find("[[auth.api_keys]]").expect("entry")..];
    let entry: String = block
        .lines()
        .map(|l| {
            if l.starts_with("scopes = ") {
                format!("scopes = {scopes}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(entry.contains(&format!("scopes = {scopes}")), "{entry}");
    (key, entry)
}

#[tokio::test]
async fn a_class_method_needs_the_class_invoke_scope() {
    let (model_key, model_entry) = api_key("model-caller", r#"["invoke:demo/model"]"#).await;
    let (other_key, other_entry) = api_key("other-caller", r#"["invoke:demo/other"]"#).await;
    let gw = builder()
        .toml(&class_toml(""))
        .toml(&model_entry)
        .toml(&other_entry)
        .start()
        .await;
    let client = gw.client();
    let post = |path: &str, key: &str| {
        client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(r#"{"x": 1}"#)
            .send()
    };
    for method in ["predict", "embed"] {
        let path = format!("/demo/model/{method}?size=large");
        let body = json_ok(post(&path, &model_key).await.expect("POST")).await;
        assert_eq!(body["function"], method, "{body}");

        for path in [path.clone(), format!("/demo/model/{method}/spawn")] {
            let resp = post(&path, &other_key).await.expect("POST");
            let challenge = header_str(&resp, "www-authenticate").unwrap_or_default();
            assert_eq!(
                resp.status(),
                403,
                "{path} with invoke:demo/other (challenge {challenge:?})"
            );
            assert!(
                challenge.starts_with("Bearer ")
                    && challenge.contains("error=\"insufficient_scope\"")
                    && challenge.contains("scope=\"invoke:demo/model\""),
                "{path}: WWW-Authenticate {challenge:?}"
            );
            assert_problem(resp, 403, "forbidden").await;
        }
    }
    // The class's scope spawns, and its key reads the call.
    let resp = post("/demo/model/embed/spawn", &model_key)
        .await
        .expect("spawn");
    let id = accepted(resp, "embed/spawn").await;
    let resp = client
        .get(gw.url(&format!("/calls/{id}?wait=30")))
        .header("authorization", format!("Bearer {model_key}"))
        .send()
        .await
        .expect("GET /calls/{id}");
    let body = json_ok(resp).await;
    assert_eq!(body["function"], "embed", "{body}");
}

#[tokio::test]
async fn instance_stdout_goes_to_the_log_not_into_answers() {
    let gw = builder()
        .toml(&lambda_fn(
            "noisy",
            r#"["python3", "lambda_runtime.py", "noisy.handler"]"#,
            "max_instances = 1",
        ))
        .toml(&sleepy_fn("noisy_http", "max_instances = 1"))
        .start()
        .await;
    let client = gw.client();
    // 512 lines of 512 bytes: more than a pipe holds, so an instance whose
    // stdout nobody reads would block before answering.
    for path in ["/w/noisy", "/w/noisy_http"] {
        for round in 0..2 {
            let marker = marker();
            let kwargs = json!({"noise": 512, "marker": marker});
            let resp = gw.post_json(&client, path, &kwargs.to_string()).await;
            let status = resp.status();
            let text = resp.text().await.expect("read answer");
            assert_eq!(status, 200, "{path}, round {round}: {text}");
            assert!(
                !text.contains("nnnnnnnn") && !text.contains(&format!("{marker}\n")),
                "{path}: the instance's stdout reached the client: {:.200}",
                text
            );
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:.200}"));
            assert_eq!(body["kwargs"], kwargs, "{path}, round {round}");
            assert!(
                gw.logs.wait_for(&marker, Duration::from_secs(5)).await,
                "{path}: the instance's stdout line {marker} is not in the gateway's log"
            );
        }
    }
}

#[tokio::test]
async fn a_two_mib_result_through_the_runtime_api_is_answered_whole() {
    let gw = builder()
        .toml(&lambda_fn(
            "big",
            r#"["python3", "lambda_runtime.py", "noisy.handler"]"#,
            "max_instances = 1",
        ))
        .start()
        .await;
    let size = 2 << 20;
    for (proto, client) in gw.clients() {
        let body = call(&gw, &client, "/w/big", json!({"big": size})).await;
        let blob = body["blob"]
            .as_str()
            .unwrap_or_else(|| panic!("{proto}: no blob in the answer"));
        assert_eq!(blob.len(), size, "{proto}: blob length");
        let wrong = blob
            .bytes()
            .enumerate()
            .find(|&(i, b)| b != b'a' + (i % 26) as u8);
        assert_eq!(wrong, None, "{proto}: the first byte that differs");
    }
}

#[tokio::test]
async fn min_instances_start_with_the_gateway_and_sigterm_stops_one_that_ignores_it() {
    let marker = marker();
    let mut gw = builder()
        .toml(&lambda_fn(
            "stubborn",
            r#"["python3", "lambda_runtime.py", "stubborn.handler"]"#,
            &format!("min_instances = 1\nexit_grace = \"1s\"\nenv.MARKER = \"{marker}\""),
        ))
        .start()
        .await;
    let started = eventually(Duration::from_secs(15), || {
        !set_up_pids(&gw.dir, "stubborn.setup").is_empty()
    })
    .await;
    assert!(
        started,
        "no instance set up within 15 s of start, no call made"
    );
    let set_ups = set_up_pids(&gw.dir, "stubborn.setup");
    assert_eq!(set_ups.len(), 1, "min_instances = 1: {set_ups:?}");
    let instance = set_ups[0];
    assert!(process_alive(instance), "the warm instance {instance} runs");
    assert!(
        ignores_sigterm(instance),
        "the instance {instance} ignores SIGTERM (the fixture's premise)"
    );
    assert_eq!(
        processes_with_env("MARKER", &marker),
        vec![instance],
        "the one instance carries the marker"
    );

    let stopping = Instant::now();
    let status = gw.terminate(Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(
        took < Duration::from_secs(6),
        "with exit_grace 1 s the gateway took {took:?} to exit"
    );
    let gone = eventually(Duration::from_secs(1), || !process_alive(instance)).await;
    assert!(
        gone,
        "the instance {instance} that ignores SIGTERM outlived the gateway"
    );
    assert!(
        processes_with_env("MARKER", &marker).is_empty(),
        "processes of the function left: {:?}",
        processes_with_env("MARKER", &marker)
    );
}
