//! Dynamic batching end to end (`batch = { max_size, wait }`): concurrent
//! callers of an `http` function (a real service, `tests/batching/
//! recorder.py`, that records every invocation it gets) and of a `lambda`
//! pool (the stdlib runtime client with `tests/batching/batch_handler.py`)
//! reach the function as one invocation whose `batch` lists them, and each
//! gets its own element; a wrong-length or non-array result is 502 for all
//! of them; a lone call leaves after `wait`, a full batch at once; calls
//! of different parameter sets or principals never share a batch; spawned
//! calls batch too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Gateway, GatewayBuilder, assert_problem, json_ok, repo_dir, repo_file};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// The recorder service, started by a test (for `urls` functions), killed
/// on drop.
struct Recorder {
    port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl Recorder {
    async fn start() -> Recorder {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = dir.path().join("invocations.jsonl");
        let mut child = Command::new("python3")
            .arg(repo_dir().join("tests/batching/recorder.py"))
            .env("RECORD_FILE", &record)
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3 recorder.py");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(common::START_TIMEOUT, lines.next_line())
            .await
            .expect("recorder.py prints LISTENING in time")
            .expect("read recorder.py's stdout")
            .expect("a LISTENING line");
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a LISTENING line: {line}"));
        Recorder {
            port,
            record,
            _dir: dir,
            _child: child,
        }
    }

    /// `[apps.b.functions.NAME]` calling this recorder, plus `extra`.
    fn function(&self, name: &str, extra: &str) -> String {
        let url = format!("http://127.0.0.1:{}/invoke", self.port);
        common::http_fn("b", name, &[url], extra)
    }

    fn invocations(&self) -> Vec<Value> {
        invocations(&self.record)
    }
}

/// The invocations recorded in `file`, one JSON line each.
fn invocations(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a recorded invocation is JSON"))
        .collect()
}

/// The `x` of each call of a recorded invocation's `batch`, in order.
fn batch_xs(invocation: &Value) -> Vec<i64> {
    invocation["batch"]
        .as_array()
        .unwrap_or_else(|| panic!("no batch in {invocation}"))
        .iter()
        .map(|call| call["kwargs"]["x"].as_i64().expect("an integer x"))
        .collect()
}

/// POSTs each body of `bodies` to `path` at once (each from its own task)
/// and returns the answers' statuses and bodies, in the order of `bodies`.
async fn post_all(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    bodies: Vec<(Option<String>, Value)>,
) -> Vec<(u16, Value)> {
    let mut tasks = JoinSet::new();
    for (i, (bearer, body)) in bodies.into_iter().enumerate() {
        let request = client.post(gw.url(path)).json(&body);
        let request = match bearer {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        tasks.spawn(async move {
            let response = request.send().await.expect("send a call");
            let status = response.status().as_u16();
            let text = response.text().await.expect("read an answer");
            let body = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
            (i, status, body)
        });
    }
    let mut answers: Vec<(usize, u16, Value)> = tasks.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    answers.into_iter().map(|(_, s, b)| (s, b)).collect()
}

/// `n` bodies `{"x": 0..n}` with no credentials.
fn xs(n: i64) -> Vec<(Option<String>, Value)> {
    (0..n).map(|x| (None, json!({ "x": x }))).collect()
}

fn builder() -> GatewayBuilder {
    Gateway::builder()
}

#[tokio::test]
async fn thirty_two_concurrent_callers_reach_the_backend_as_one_invocation() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 32, wait = \"30s\" }"))
        .start()
        .await;
    let client = gw.client();
    let began = Instant::now();
    let answers = post_all(&gw, &client, "/b/square", xs(32)).await;
    let took = began.elapsed();
    let mut batch_ids = BTreeSet::new();
    for (x, (status, body)) in (0..32).zip(&answers) {
        assert_eq!(*status, 200, "call {x}: {body}");
        assert_eq!(body["x"], x, "each caller gets its own element: {body}");
        assert_eq!(body["square"], x * x);
        assert_eq!(body["batch_size"], 32);
        batch_ids.insert(body["batch_call_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(batch_ids.len(), 1, "one invocation: {batch_ids:?}");
    let recorded = recorder.invocations();
    assert_eq!(recorded.len(), 1, "the backend got one invocation");
    let invocation = &recorded[0];
    let mut got = batch_xs(invocation);
    got.sort();
    assert_eq!(got, (0..32).collect::<Vec<_>>());
    assert_eq!(invocation["args"], json!([]));
    assert_eq!(invocation["kwargs"], json!({}));
    assert!(batch_ids.contains(invocation["call_id"].as_str().unwrap()));
    assert!(
        took < Duration::from_secs(15),
        "a full batch leaves at once, not after its 30 s wait: {took:?}"
    );
}

#[tokio::test]
async fn a_full_batch_is_sent_at_once() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 4, wait = \"60s\" }"))
        .start()
        .await;
    let client = gw.client();
    let began = Instant::now();
    let answers = post_all(&gw, &client, "/b/square", xs(4)).await;
    let took = began.elapsed();
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b["batch_size"] == 4),
        "{answers:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the full batch waited: {took:?}"
    );
    assert_eq!(recorder.invocations().len(), 1);
}

#[tokio::test]
async fn a_lone_call_is_sent_when_the_wait_ends() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 32, wait = \"700ms\" }"))
        .start()
        .await;
    let client = gw.client();
    let began = Instant::now();
    let body = json_ok(gw.post_json(&client, "/b/square", r#"{"x": 9}"#).await).await;
    let took = began.elapsed();
    assert_eq!(body["square"], 81);
    assert_eq!(body["batch_size"], 1);
    assert!(
        took >= Duration::from_millis(700),
        "it waited for company first: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "then it left: {took:?}");
    assert_eq!(batch_xs(&recorder.invocations()[0]), [9]);
}

#[tokio::test]
async fn a_wrong_length_or_non_array_result_is_502_for_every_caller() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 3, wait = \"30s\" }"))
        .start()
        .await;
    let client = gw.client();
    for bad in ["short", "scalar"] {
        let bodies = vec![
            (None, json!({"x": 1})),
            (None, json!({"x": 2, bad: true})),
            (None, json!({"x": 3})),
        ];
        let answers = post_all(&gw, &client, "/b/square", bodies).await;
        for (status, body) in &answers {
            assert_eq!(*status, 502, "{bad}: {body}");
            assert_eq!(body["code"], "backend_error", "{bad}: {body}");
        }
    }
    assert_eq!(recorder.invocations().len(), 2);
    // What reaches a client is a complete problem.
    let tasks: Vec<_> = (1..=3)
        .map(|x| {
            let request = client
                .post(gw.url("/b/square"))
                .json(&json!({"x": x, "short": x == 3}));
            tokio::spawn(request.send())
        })
        .collect();
    for task in tasks {
        assert_problem(task.await.unwrap().unwrap(), 502, "backend_error").await;
    }
}

#[tokio::test]
async fn a_function_error_is_every_callers_error() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 2, wait = \"30s\" }"))
        .start()
        .await;
    let bodies = vec![
        (None, json!({"x": 1, "fail": true})),
        (None, json!({"x": 2})),
    ];
    let answers = post_all(&gw, &gw.client(), "/b/square", bodies).await;
    for (status, body) in &answers {
        assert_eq!(*status, 500, "{body}");
        assert_eq!(body["code"], "function_error");
        assert_eq!(body["error"]["type"], "ValueError", "{body}");
    }
}

#[tokio::test]
async fn a_lambda_pool_batches_calls_too() {
    let gw = common::instances_builder()
        .file(
            "batch_handler.py",
            repo_file("tests/batching/batch_handler.py"),
        )
        .toml(
            "[apps.w.functions.double]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"batch_handler.handler\"]\n\
             batch = { max_size = 8, wait = \"30s\" }\n",
        )
        .start()
        .await;
    let answers = post_all(&gw, &gw.client(), "/w/double", xs(8)).await;
    let mut pids = BTreeSet::new();
    let mut batch_ids = BTreeSet::new();
    for (x, (status, body)) in (0..8).zip(&answers) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["x"], x, "{body}");
        assert_eq!(body["double"], 2 * x);
        assert_eq!(body["batch_size"], 8);
        pids.insert(body["pid"].as_i64().unwrap());
        batch_ids.insert(body["batch_call_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(pids.len(), 1, "one instance ran them");
    assert_eq!(batch_ids.len(), 1, "as one invocation");
}

#[tokio::test]
async fn calls_of_different_parameter_sets_never_share_a_batch() {
    let gw = builder()
        .file("recorder.py", repo_file("tests/batching/recorder.py"))
        .toml(
            "[apps.c.classes.model]\nbackend = \"http\"\n\
             command = [\"python3\", \"recorder.py\"]\nparameters = [\"size\"]\n\
             [apps.c.classes.model.functions.predict]\n\
             batch = { max_size = 3, wait = \"30s\" }\n",
        )
        .start()
        .await;
    let client = gw.client();
    let mut tasks = JoinSet::new();
    for (x, size) in [
        (1, "small"),
        (2, "large"),
        (3, "small"),
        (4, "large"),
        (5, "small"),
        (6, "large"),
    ] {
        let request = client
            .post(gw.url(&format!("/c/model/predict?size={size}")))
            .json(&json!({ "x": x }));
        tasks.spawn(async move {
            let answer = request.send().await.expect("send a call");
            (
                size,
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap(),
            )
        });
    }
    let mut batches: std::collections::BTreeMap<String, BTreeSet<&str>> = Default::default();
    for (size, status, body) in tasks.join_all().await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["parameters"], json!({ "size": size }), "{body}");
        assert_eq!(body["batch_size"], 3, "{body}");
        let id = body["batch_call_id"].as_str().unwrap().to_owned();
        batches.entry(id).or_default().insert(size);
    }
    assert_eq!(batches.len(), 2, "one batch per parameter set: {batches:?}");
    assert!(
        batches.values().all(|sizes| sizes.len() == 1),
        "{batches:?}"
    );
    let recorded: Vec<Value> = invocations(&gw.dir.join("invocations.jsonl"));
    assert_eq!(recorded.len(), 2);
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn calls_of_different_principals_never_share_a_batch() {
    let recorder = Recorder::start().await;
    let keys: String = ["ada", "bob"]
        .iter()
        .map(|name| {
            format!(
                "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"invoke:*\"]\n",
                sha256_hex(format!("key-of-{name}").as_bytes())
            )
        })
        .collect();
    let gw = builder()
        .toml(&keys)
        .toml(&recorder.function("square", "batch = { max_size = 2, wait = \"30s\" }"))
        .start()
        .await;
    let bodies = ["ada", "bob", "ada", "bob"]
        .iter()
        .enumerate()
        .map(|(x, name)| (Some(format!("key-of-{name}")), json!({ "x": x })))
        .collect();
    let answers = post_all(&gw, &gw.client(), "/b/square", bodies).await;
    for ((status, body), name) in answers.iter().zip(["ada", "bob", "ada", "bob"]) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["subject"], name, "the batch was its caller's: {body}");
        assert_eq!(body["batch_size"], 2);
    }
    let subjects: BTreeSet<String> = recorder
        .invocations()
        .iter()
        .map(|i| i["_subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from(["ada".to_owned(), "bob".to_owned()])
    );
    assert_eq!(recorder.invocations().len(), 2);
}

#[tokio::test]
async fn spawned_calls_batch_too() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 4, wait = \"30s\" }"))
        .start()
        .await;
    let client = gw.client();
    let mut ids = Vec::new();
    for x in 0..4 {
        let response = gw
            .post_json(&client, "/b/square/spawn", &json!({ "x": x }).to_string())
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["call_id"].as_str().unwrap().to_owned());
    }
    let mut batch_ids = BTreeSet::new();
    for (x, id) in (0..4).zip(&ids) {
        let response = client
            .get(gw.url(&format!("/calls/{id}?wait=25")))
            .send()
            .await
            .unwrap();
        let body = json_ok(response).await;
        assert_eq!(body["square"], x * x, "{body}");
        assert_eq!(body["batch_size"], 4, "{body}");
        batch_ids.insert(body["batch_call_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(batch_ids.len(), 1);
    assert_eq!(recorder.invocations().len(), 1);
}

#[tokio::test]
async fn a_caller_that_leaves_does_not_break_the_batch_for_the_others() {
    let recorder = Recorder::start().await;
    let gw = builder()
        .toml(&recorder.function("square", "batch = { max_size = 3, wait = \"30s\" }"))
        .start()
        .await;
    let client = gw.client_h1();
    // The batch takes a second; one caller gives up after a fifth of it.
    let impatient = client
        .post(gw.url("/b/square"))
        .timeout(Duration::from_millis(200))
        .json(&json!({"x": 1, "sleep": 1}))
        .send();
    let others = post_all(
        &gw,
        &client,
        "/b/square",
        vec![(None, json!({"x": 2})), (None, json!({"x": 3}))],
    );
    let (impatient, others) = tokio::join!(impatient, others);
    let error = impatient.expect_err("the impatient caller timed out");
    assert!(error.is_timeout(), "{error:?}");
    for ((status, body), x) in others.iter().zip([2, 3]) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["square"], x * x);
        assert_eq!(body["batch_size"], 3, "the batch went on with all three");
    }
    assert_eq!(recorder.invocations().len(), 1);
}
