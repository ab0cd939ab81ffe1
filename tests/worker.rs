//! `fngate worker` against a real gateway: the worker binary serves a
//! function's calls over HTTPS with a token scoped `work:{app}/{function}`
//! (or `work:*`); a credential the gateway refuses, a scope without the
//! function, an unknown function or one without instances stop it with
//! exit status 1; a worker killed mid-call has its spawned call run again
//! (`attempt` 2) and its sync call answered 502; a worker on one of two
//! replicas sharing a Redis serves the calls spawned on the other.
//!
//! The gateway's own instances of these functions answer `"served_by":
//! "gateway"`, the worker's `"served_by": "worker"` (from the worker's
//! environment, which its instance inherits): a polling worker is a free
//! instance, so calls go to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::RedisServer;
use common::{
    BIN, Gateway, GatewayBuilder, assert_problem, eventually, json_ok, process_alive, repo_file,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a worker may take to start polling, or to exit.
const PATIENCE: Duration = Duration::from_secs(20);

/// API keys and their hashes for the gateway's `[[auth.api_keys]]`.
struct Keys {
    /// Scoped to the two worker functions.
    worker: (String, String),
    /// `work:*`.
    any_work: (String, String),
    /// A valid key whose scope holds no `work:`.
    invoke_only: (String, String),
}

impl Keys {
    fn new() -> Keys {
        Keys {
            worker: fngate::auth::new_api_key(),
            any_work: fngate::auth::new_api_key(),
            invoke_only: fngate::auth::new_api_key(),
        }
    }
}

/// A gateway with `w/echo` (lambda), `w/api` (http with command) and
/// `w/plain` (exec, no instances), all public to callers; workers need a
/// key.
fn gateway(keys: &Keys) -> GatewayBuilder {
    gateway_with_echo(keys, "")
}

/// [`gateway`] with `echo` (TOML lines) added to `w/echo`'s table.
fn gateway_with_echo(keys: &Keys, echo: &str) -> GatewayBuilder {
    let key = |name: &str, (_, sha256): &(String, String), scopes: &str| {
        format!(
            "\n[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nscopes = {scopes}\n"
        )
    };
    let auth = [
        key("worker", &keys.worker, r#"["work:w/echo", "work:w/api"]"#),
        key("any-work", &keys.any_work, r#"["work:*"]"#),
        key("invoke-only", &keys.invoke_only, r#"["invoke:*"]"#),
    ]
    .concat();
    let functions = format!(
        r#"
[apps.w.functions.echo]
backend = "lambda"
command = ["python3", "runtime.py"]
env.SERVED_BY = "gateway"
public = true
{echo}

[apps.w.functions.api]
backend = "http"
command = ["python3", "server.py"]
path = "/invoke"
ready_path = "/healthz"
instance_concurrency = 2
env.SERVED_BY = "gateway"
public = true

[apps.w.functions.plain]
backend = "exec"
command = ["python3", "-c", "print(1)"]
public = true
"#
    );
    Gateway::builder()
        .file("runtime.py", repo_file("tests/instances/worker_runtime.py"))
        .file("server.py", repo_file("tests/instances/worker_server.py"))
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
        .toml(&auth)
        .toml(&functions)
}

/// A running `fngate worker`, killed on drop; its stderr is kept (and
/// printed when the test fails).
struct Worker {
    child: Option<Child>,
    pid: i32,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Reads stderr until the worker closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    /// `fngate worker --gateway https://127.0.0.1:PORT --function
    /// {function} --cacert certs/dev-ca.pem -- COMMAND`, with `token` in
    /// `FNGATE_WORKER_TOKEN`, run in the gateway's folder (where the
    /// scripts are) as a machine of its own would.
    fn start(gw: &Gateway, function: &str, token: &str, command: &[&str]) -> Worker {
        let gateway = format!("https://127.0.0.1:{}", gw.addr.port());
        let ca = gw.ca_path();
        let mut child = Command::new(BIN)
            .args(["worker", "--gateway", &gateway, "--function", function])
            .arg("--cacert")
            .arg(&ca)
            .arg("--")
            .args(command)
            .current_dir(&gw.dir)
            .env("FNGATE_WORKER_TOKEN", token)
            .env("SERVED_BY", "worker")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start fngate worker");
        let pid = child.id().expect("a worker pid") as i32;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let kept = stderr.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("stderr lock").push(line);
            }
        });
        Worker {
            child: Some(child),
            pid,
            stderr,
            reader: Some(reader),
        }
    }

    /// `fngate worker` running the Lambda runtime client for `w/echo`.
    fn echo(gw: &Gateway, token: &str) -> Worker {
        Worker::start(gw, "w/echo", token, &["python3", "runtime.py"])
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Waits until its instance is ready and it polls the gateway.
    async fn until_polling(&self) {
        let polling = eventually(PATIENCE, || self.stderr().contains("polling for calls")).await;
        assert!(
            polling,
            "the worker did not start polling; its stderr:\n{}",
            self.stderr()
        );
    }

    async fn exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the worker is running");
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker did not exit; its stderr:\n{}", self.stderr()))
            .expect("wait for the worker");
        // Its last lines are read once the reader meets the end of stderr.
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(PATIENCE, reader).await;
        }
        status
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal)
            .expect("signal the worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("---- fngate worker stderr ----\n{}\n----", self.stderr());
        }
    }
}

/// Spawns `body` on `path`; the call id.
async fn spawn(gw: &Gateway, client: &reqwest::Client, path: &str, body: Value) -> String {
    let resp = gw.post_json(client, path, &body.to_string()).await;
    let status = resp.status();
    let text = resp.text().await.expect("read the spawn answer");
    assert_eq!(status, 202, "spawn {path}: {text}");
    let answer: Value = serde_json::from_str(&text).expect("a JSON spawn answer");
    answer["call_id"].as_str().expect("a call_id").to_owned()
}

/// `GET /calls/{id}?wait=20`: its 200 result.
async fn result(gw: &Gateway, client: &reqwest::Client, id: &str) -> Value {
    let resp = client
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .send()
        .await
        .expect("GET /calls/{id}");
    json_ok(resp).await
}

/// A file path in the gateway's folder that a call's instance writes its
/// pid to once the call runs.
fn marker(gw: &Gateway, name: &str) -> PathBuf {
    gw.dir.join(name)
}

/// Waits until the instance wrote `marker`: its pid.
async fn started(marker: &Path) -> i32 {
    assert!(
        eventually(PATIENCE, || marker.exists()).await,
        "the call did not start on the worker's instance"
    );
    std::fs::read_to_string(marker)
        .expect("read the marker")
        .trim()
        .parse()
        .expect("a pid in the marker")
}

#[tokio::test]
async fn worker_serves_sync_and_spawned_calls_with_a_scoped_token_and_stops_on_sigterm() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    let mut worker = Worker::echo(&gw, &keys.worker.0);
    worker.until_polling().await;
    let client = gw.client();

    let answer = json_ok(gw.post_json(&client, "/w/echo", r#"{"x": 7}"#).await).await;
    assert_eq!(answer["served_by"], "worker", "{answer}");
    assert_eq!(answer["x"], 7);
    assert_eq!(answer["attempt"], 1);
    assert_eq!(
        answer["token_visible"], false,
        "the worker's token stays out of its instance's environment"
    );
    let pid = answer["pid"].as_i64().expect("a pid") as i32;

    let id = spawn(&gw, &client, "/w/echo/spawn", json!({"x": 9})).await;
    let answer = result(&gw, &client, &id).await;
    assert_eq!(answer["served_by"], "worker", "{answer}");
    assert_eq!(answer["x"], 9);
    assert_eq!(answer["pid"], pid, "the same warm instance served both");

    worker.signal(nix::sys::signal::Signal::SIGTERM);
    let status = worker.exit().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    assert!(
        eventually(Duration::from_secs(5), || !process_alive(pid)).await,
        "the instance stopped with the worker"
    );
}

#[tokio::test]
async fn http_worker_serves_calls_with_a_work_star_token() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    let worker = Worker::start(&gw, "w/api", &keys.any_work.0, &["python3", "server.py"]);
    worker.until_polling().await;
    let client = gw.client();
    let calls = (0..4).map(|x| {
        let (gw, client) = (&gw, client.clone());
        async move {
            json_ok(
                gw.post_json(&client, "/w/api", &json!({"x": x}).to_string())
                    .await,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (x, answer) in answers.iter().enumerate() {
        assert_eq!(answer["served_by"], "worker", "{answer}");
        assert_eq!(answer["x"], x);
        assert_eq!(answer["call_id"], answer["event_call_id"], "{answer}");
    }
}

#[tokio::test]
async fn a_wrong_token_is_401_and_the_worker_exits_1() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    let mut worker = Worker::echo(&gw, "fk_not-a-key-the-gateway-knows");
    let status = worker.exit().await;
    assert_eq!(status.code(), Some(1), "stderr:\n{}", worker.stderr());
    let stderr = worker.stderr();
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
}

#[tokio::test]
async fn a_token_without_the_work_scope_is_403_and_the_worker_exits_1() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    for (function, token) in [("w/echo", &keys.invoke_only.0), ("w/plain", &keys.worker.0)] {
        let mut worker = Worker::start(&gw, function, token, &["python3", "runtime.py"]);
        let status = worker.exit().await;
        assert_eq!(
            status.code(),
            Some(1),
            "{function}: stderr:\n{}",
            worker.stderr()
        );
        let stderr = worker.stderr();
        assert!(stderr.contains("403"), "{function}: {stderr}");
        assert!(stderr.contains("forbidden"), "{function}: {stderr}");
    }
}

#[tokio::test]
async fn an_unknown_function_is_404_and_one_without_instances_409_and_the_worker_exits_1() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    for (function, status) in [("w/nope", "404"), ("nope/echo", "404"), ("w/plain", "409")] {
        let mut worker = Worker::start(&gw, function, &keys.any_work.0, &["python3", "runtime.py"]);
        let exit = worker.exit().await;
        assert_eq!(
            exit.code(),
            Some(1),
            "{function}: stderr:\n{}",
            worker.stderr()
        );
        let stderr = worker.stderr();
        assert!(stderr.contains(status), "{function}: {stderr}");
    }
}

#[tokio::test]
async fn a_worker_killed_mid_call_has_its_spawned_call_run_again_with_attempt_2() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    let mut worker = Worker::echo(&gw, &keys.worker.0);
    worker.until_polling().await;
    let client = gw.client();
    let first = marker(&gw, "first-attempt");
    let kwargs = json!({"x": 5, "sleep": 60, "started": first.display().to_string()});
    let id = spawn(&gw, &client, "/w/echo/spawn", kwargs).await;
    let instance = started(&first).await;

    // The worker vanishes mid-call (its instance dies with it).
    worker.signal(nix::sys::signal::Signal::SIGKILL);
    worker.exit().await;
    assert!(
        eventually(Duration::from_secs(5), || !process_alive(instance)).await,
        "the instance died with its worker"
    );
    let again = Worker::echo(&gw, &keys.worker.0);
    again.until_polling().await;

    let answer = result(&gw, &client, &id).await;
    assert_eq!(answer["attempt"], 2, "{answer}");
    assert_eq!(answer["x"], 5);
}

#[tokio::test]
async fn a_worker_killed_mid_call_makes_its_sync_call_502() {
    let keys = Keys::new();
    let gw = gateway(&keys).start().await;
    let worker = Worker::echo(&gw, &keys.worker.0);
    worker.until_polling().await;
    let client = gw.client();
    let running = marker(&gw, "sync-call");
    let kwargs = json!({"x": 5, "sleep": 60, "started": running.display().to_string()});
    let call = {
        let (gw, client) = (&gw, client.clone());
        async move { gw.post_json(&client, "/w/echo", &kwargs.to_string()).await }
    };
    let killed = async {
        started(&running).await;
        worker.signal(nix::sys::signal::Signal::SIGKILL);
        tokio::time::Instant::now()
    };
    let (resp, killed_at) = tokio::join!(call, killed);
    let waited = killed_at.elapsed();
    assert_problem(resp, 502, "backend_error").await;
    assert!(
        waited < Duration::from_secs(15),
        "the 502 came {waited:?} after the worker vanished (it is treated as gone after 5 s)"
    );
}

/// A replica of [`gateway`] on `redis` under `prefix` (the same for every
/// replica of a test), with `w/echo` taking one call at a time, as every
/// replica has it: a replica whose slot is taken claims none of its
/// spawned calls, and one with a worker gives each call it claims to the
/// worker (free again before the slot is), never to an instance of its own.
fn replica(keys: &Keys, redis: &RedisServer, prefix: &str) -> GatewayBuilder {
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
         claim_timeout = \"2s\"\n",
        redis.url()
    );
    gateway_with_echo(keys, "concurrency = 1").toml(&store)
}

#[tokio::test]
async fn a_worker_on_one_replica_serves_calls_spawned_on_another() {
    let keys = Keys::new();
    let redis = RedisServer::start().await;
    let prefix = format!("worker-{}:", std::process::id());
    let (a, b) = tokio::join!(
        replica(&keys, &redis, &prefix).start(),
        replica(&keys, &redis, &prefix).start(),
    );
    let worker = Worker::echo(&b, &keys.worker.0);

    // A sync call on A holds A's one slot of w/echo (on an instance A
    // runs), so A claims none of the calls spawned on it: only B, for
    // its worker, can.
    let holding = marker(&a, "holding");
    let hold = {
        let (client, url) = (a.client(), a.url("/w/echo"));
        let kwargs = json!({"sleep": 60, "started": holding.display().to_string()});
        tokio::spawn(async move {
            let request = client.post(url).header("content-type", "application/json");
            request.body(kwargs.to_string()).send().await
        })
    };
    let holder = started(&holding).await;
    worker.until_polling().await;
    // B's pool counts the worker from its first poll on.
    assert!(
        b.logs.wait_for("a worker joined", PATIENCE).await,
        "B did not attach the worker"
    );

    let client = a.client();
    let spawns = (0..4).map(|x| spawn(&a, &client, "/w/echo/spawn", json!({"x": x})));
    let ids = futures_util::future::join_all(spawns).await;
    let results = ids.iter().map(|id| {
        let request = client.get(a.url(&format!("/calls/{id}?wait=10")));
        async move {
            let resp = request.send().await;
            json_ok(resp.unwrap_or_else(|e| panic!("GET /calls/{id} on A: {e:?}"))).await
        }
    });
    let answers = futures_util::future::join_all(results).await;

    let pid = &answers[0]["pid"];
    for (x, answer) in answers.iter().enumerate() {
        assert_eq!(answer["served_by"], "worker", "call {x}: {answer}");
        assert_eq!(answer["x"], x, "{answer}");
        assert_eq!(answer["attempt"], 1, "{answer}");
        assert_eq!(&answer["pid"], pid, "the worker's one instance: {answer}");
    }
    assert_ne!(pid, &json!(holder), "A's own instance holds its slot");
    assert!(
        !hold.is_finished(),
        "the sync call held A's slot throughout: {:?}",
        hold.await
    );
    hold.abort();
}
