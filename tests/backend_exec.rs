//! The exec backend: one process per call, results, failures, crashes,
//! timeouts that kill the whole process group, cwd and env.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, INSPECT_PY, assert_problem, eventually, exec_fn, json_ok, process_alive};
use serde_json::json;

const FAIL_PY: &str = r#"
import sys
sys.stdin.read()
sys.stderr.write("Traceback (most recent call last):\n  File \"fail.py\", line 4\n")
sys.stderr.write("ValueError: bad x\n")
sys.exit(3)
"#;

/// Writes 100 KiB of noise to stderr, then a marker, then fails.
const LOUD_FAIL_PY: &str = r#"
import sys
sys.stdin.read()
sys.stderr.write("NOISE-START\n" + ("n" * 99 + "\n") * 1000)
sys.stderr.write("RuntimeError: the real reason END-MARKER\n")
sys.exit(1)
"#;

const GARBAGE_PY: &str = r#"
import sys
sys.stdin.read()
sys.stdout.write("this is not json")
"#;

const CRASH_PY: &str = r#"
import os, signal, sys
sys.stdin.read()
os.kill(os.getpid(), signal.SIGKILL)
"#;

/// Starts a grandchild `sleep 1000`, records both PIDs, then hangs.
const HANG_PY: &str = r#"
import os, subprocess, sys, time
sys.stdin.read()
p = subprocess.Popen(["sleep", "1000"])
with open("pids.tmp", "w") as f:
    f.write("%d %d\n" % (os.getpid(), p.pid))
os.rename("pids.tmp", "pids.txt")
time.sleep(1000)
"#;

/// Never reads stdin and answers at once: the gateway must cope with a
/// process that exits without consuming its request.
const NO_READ_PY: &str = r#"
import sys
sys.stdout.write('{"ignored": true}')
"#;

async fn gateway() -> Gateway {
    Gateway::builder()
        .file("inspect.py", INSPECT_PY)
        .file("fail.py", FAIL_PY)
        .file("loud.py", LOUD_FAIL_PY)
        .file("garbage.py", GARBAGE_PY)
        .file("crash.py", CRASH_PY)
        .file("hang.py", HANG_PY)
        .file("noread.py", NO_READ_PY)
        .toml(&exec_fn(
            "x",
            "inspect",
            "inspect.py",
            "[apps.x.functions.inspect.env]\nFN_GREETING = \"hello\"\nFN_OTHER = \"2\"",
        ))
        .toml(&exec_fn("x", "fail", "fail.py", ""))
        .toml(&exec_fn("x", "loud", "loud.py", ""))
        .toml(&exec_fn("x", "garbage", "garbage.py", ""))
        .toml(&exec_fn("x", "crash", "crash.py", ""))
        .toml(&exec_fn("x", "hang", "hang.py", "timeout = \"1s\""))
        .toml(&exec_fn("x", "noread", "noread.py", ""))
        .start()
        .await
}

#[tokio::test]
async fn exec_function_runs_in_config_dir_with_configured_env() {
    let gw = gateway().await;
    let inv = json_ok(
        gw.post_json(&gw.client(), "/x/inspect", r#"{"a": 1}"#)
            .await,
    )
    .await;
    let cwd = std::fs::canonicalize(inv["_cwd"].as_str().unwrap()).unwrap();
    assert_eq!(
        cwd,
        std::fs::canonicalize(&gw.dir).unwrap(),
        "cwd = config dir"
    );
    assert_eq!(inv["_env"]["FN_GREETING"], "hello");
    assert_eq!(inv["_env"]["FN_OTHER"], "2");
    assert_eq!(inv["kwargs"], json!({"a": 1}));
}

#[tokio::test]
async fn nonzero_exit_is_function_error_with_stderr_tail() {
    let gw = gateway().await;
    for (proto, client) in gw.clients() {
        let resp = gw.post_json(&client, "/x/fail", r#"{"x": 1}"#).await;
        let p = assert_problem(resp, 500, "function_error").await;
        let err = &p["error"];
        assert!(err["type"].is_string(), "{proto}: error.type in {p}");
        let msg = err["message"].as_str().expect("error.message");
        assert!(msg.contains("ValueError: bad x"), "{proto}: {msg}");
    }
}

#[tokio::test]
async fn function_error_message_is_the_last_4_kib_of_stderr() {
    let gw = gateway().await;
    let resp = gw.post_json(&gw.client(), "/x/loud", "{}").await;
    let p = assert_problem(resp, 500, "function_error").await;
    let msg = p["error"]["message"].as_str().expect("error.message");
    assert!(msg.contains("END-MARKER"), "the tail is kept: {msg}");
    assert!(!msg.contains("NOISE-START"), "the head is cut");
    assert!(msg.len() <= 4096, "message is {} bytes", msg.len());
    assert!(
        msg.len() >= 1024,
        "a real tail, not a stub: {} bytes",
        msg.len()
    );
}

#[tokio::test]
async fn non_json_stdout_is_backend_error() {
    let gw = gateway().await;
    let resp = gw.post_json(&gw.client(), "/x/garbage", "{}").await;
    let p = assert_problem(resp, 502, "backend_error").await;
    assert!(
        !p["detail"]
            .as_str()
            .unwrap()
            .contains(gw.dir.to_str().unwrap()),
        "no internal paths to clients: {p}"
    );
}

#[tokio::test]
async fn process_killed_by_signal_is_backend_error() {
    let gw = gateway().await;
    let resp = gw.post_json(&gw.client(), "/x/crash", "{}").await;
    assert_problem(resp, 502, "backend_error").await;
    // And the gateway keeps serving.
    let inv = json_ok(gw.post_json(&gw.client(), "/x/inspect", "[1]").await).await;
    assert_eq!(inv["args"], json!([1]));
}

#[tokio::test]
async fn process_that_ignores_stdin_still_answers() {
    let gw = gateway().await;
    // A body bigger than a pipe buffer, never read by the function.
    let big = format!("{{\"pad\": \"{}\"}}", "p".repeat(1 << 20));
    let resp = gw.post_json(&gw.client(), "/x/noread", &big).await;
    assert_eq!(json_ok(resp).await, json!({"ignored": true}));
}

#[tokio::test]
async fn missing_command_is_backend_error() {
    let gw = Gateway::builder()
        .toml(
            "[apps.x.functions.ghost]\nbackend = \"exec\"\ncommand = [\"/nonexistent/fngate-test-binary\"]\n",
        )
        .start()
        .await;
    let resp = gw.post_json(&gw.client(), "/x/ghost", "{}").await;
    let p = assert_problem(resp, 502, "backend_error").await;
    assert!(
        !p["detail"].as_str().unwrap().contains("/nonexistent"),
        "no internal paths to clients: {p}"
    );
}

#[tokio::test]
async fn exec_timeout_is_504_and_kills_the_process_group() {
    let gw = gateway().await;
    let started = Instant::now();
    let resp = gw.post_json(&gw.client(), "/x/hang", "{}").await;
    let elapsed = started.elapsed();
    assert_problem(resp, 504, "function_timeout").await;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "timeout of 1 s took {elapsed:?}"
    );
    let pids = std::fs::read_to_string(gw.dir.join("pids.txt")).expect("hang.py wrote its pids");
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    // The kill and reaping are asynchronous to the 504: allow a moment.
    let gone = eventually(Duration::from_secs(5), || {
        pids.iter().all(|&p| !process_alive(p))
    })
    .await;
    assert!(
        gone,
        "function process {} alive: {}, its child {} alive: {}",
        pids[0],
        process_alive(pids[0]),
        pids[1],
        process_alive(pids[1])
    );
    // The direct child is reaped by the gateway, not left as a zombie.
    let reaped = eventually(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists()
    })
    .await;
    assert!(reaped, "function process {} left as a zombie", pids[0]);
}

#[tokio::test]
async fn example_functions_work_through_exec() {
    let examples = common::repo_dir().join("examples");
    let ex = |name: &str| examples.join(name).to_str().unwrap().to_owned();
    let gw = Gateway::builder()
        .toml(&format!(
            r#"
[apps.demo.functions.square]
backend = "exec"
command = ["python3", {square:?}]

[apps.demo.functions.echo]
backend = "exec"
command = ["python3", {echo:?}]

[apps.demo.functions.slow]
backend = "exec"
command = ["python3", {slow:?}]
timeout = "1s"

[apps.demo.functions.fail]
backend = "exec"
command = ["python3", {fail:?}]
"#,
            square = ex("square.py"),
            echo = ex("echo.py"),
            slow = ex("slow.py"),
            fail = ex("fail.py"),
        ))
        .start()
        .await;
    let client = gw.client();
    let r = gw.post_json(&client, "/demo/square", r#"{"x": 7}"#).await;
    assert_eq!(json_ok(r).await, json!(49));
    let r = gw.post_json(&client, "/demo/square", "[12]").await;
    assert_eq!(json_ok(r).await, json!(144));

    let r = gw
        .post_json(
            &client,
            "/demo/echo",
            r#"{"big": 1234567890123456789012345678901234567890}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("1234567890123456789012345678901234567890"),
        "{text}"
    );

    let r = gw.post_json(&client, "/demo/fail", "{}").await;
    let p = assert_problem(r, 500, "function_error").await;
    assert!(
        p["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ValueError"),
        "{p}"
    );

    let r = gw
        .post_json(&client, "/demo/slow", r#"{"seconds": 5}"#)
        .await;
    assert_problem(r, 504, "function_timeout").await;
}

/// Writes 1 MiB to stderr and a 5 MiB JSON string to stdout, interleaved.
const BIG_OUTPUT_PY: &str = r#"
import sys
sys.stdin.read()
sys.stdout.write('"')
for i in range(80):
    sys.stderr.write("e" * 13107 + "\n")
    sys.stdout.write("o" * 65536)
sys.stdout.write('"')
"#;

#[tokio::test]
async fn large_stdout_and_stderr_do_not_deadlock() {
    let gw = Gateway::builder()
        .file("big.py", BIG_OUTPUT_PY)
        .toml(&exec_fn("x", "big", "big.py", "timeout = \"20s\""))
        .start()
        .await;
    let r = gw.post_json(&gw.client(), "/x/big", "{}").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(text.trim_end().len(), 80 * 65536 + 2);
    assert!(text.starts_with("\"ooo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_one_function_run_in_parallel() {
    let gw = Gateway::builder()
        .file("sleep.py", common::SLEEP_PY)
        .toml(&exec_fn("x", "sleep", "sleep.py", "concurrency = 4"))
        .start()
        .await;
    let client = gw.client();
    let started = Instant::now();
    let calls = (0..4).map(|_| {
        let client = client.clone();
        let url = gw.url("/x/sleep");
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 0.6}"#)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, [200; 4]);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(2000),
        "4 calls of 0.6 s with concurrency 4 took {elapsed:?}"
    );
}
