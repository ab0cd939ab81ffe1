//! The example clients of `examples/clients/` (Go, Java, Node, Python,
//! curl and wget), each run against a gateway started from the quick
//! start's `gateway.toml`, trusting only its dev CA: a sync call, a spawn
//! polled through its `Location`, a long poll and an error's `code`. A
//! missing toolchain fails its test (`bash .ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::Gateway;
use tokio::process::Command;

/// How long one client may take (Go's first build included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The lines every client prints, one per step, in order (`...` stands
/// for a call id).
const STEPS: [&str; 4] = [
    "sync: ",
    "spawn: 202 Location /calls/fc-",
    "long-poll: ",
    "error: ",
];

fn clients_dir() -> PathBuf {
    common::repo_dir().join("examples/clients")
}

/// A copy of the quick start served on a free port.
async fn quick_start() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().expect("temp dir");
    common::copy_quick_start(dir.path());
    let config = std::fs::read_to_string(dir.path().join("gateway.toml")).expect("gateway.toml");
    let gw = Gateway::builder()
        .in_dir(dir.path())
        .raw_config(&common::quick_start_on_port_0(&config))
        .start()
        .await;
    (dir, gw)
}

/// Runs `program args... URL CA` in examples/clients/ with `envs`, and
/// checks it printed a line per step and exited 0.
async fn run_client(program: &str, args: &[&str], envs: &[(&str, &Path)], install: &str) {
    let (_dir, gw) = quick_start().await;
    let url = gw.url("");
    let ca = gw.ca_path();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(&url)
        .arg(&ca)
        .current_dir(clients_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install {install} (bash .ci/run does)")
    });
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not end within {CLIENT_TIMEOUT:?}"))
        .expect("wait for the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "{program} {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(out.status.success(), "{report}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), STEPS.len(), "{report}");
    for (line, step) in lines.iter().zip(STEPS) {
        assert!(
            line.starts_with(step),
            "`{line}` is not step `{step}`\n{report}"
        );
    }
    assert_eq!(lines[0], r#"sync: POST /demo/square {"x": 7} -> 200 49"#);
    assert!(lines[1].ends_with("-> 200 49"), "{report}");
    assert!(
        lines[2].ends_with(r#"?wait=30 -> 200 {"slept": 1}"#),
        "{report}"
    );
    assert_eq!(lines[3], "error: POST /demo/nope -> 404 function_not_found");
}

#[tokio::test]
async fn the_python_client_works_against_the_quick_start() {
    run_client("python3", &["client.py"], &[], "python3").await;
}

#[tokio::test]
async fn the_node_client_works_against_the_quick_start() {
    run_client("node", &["client.mjs"], &[], "nodejs").await;
}

/// `go run` builds into GOCACHE: under target/, so nothing is written to
/// the repository or the home folder.
#[tokio::test]
async fn the_go_client_works_against_the_quick_start() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cache = tmp.join("go-cache");
    let path = tmp.join("go-path");
    run_client(
        "go",
        &["run", "client.go"],
        &[("GOCACHE", &cache), ("GOPATH", &path)],
        "golang-go",
    )
    .await;
}

#[tokio::test]
async fn the_java_client_works_against_the_quick_start() {
    run_client("java", &["Client.java"], &[], "default-jdk-headless").await;
}

#[tokio::test]
async fn the_curl_lines_work_against_the_quick_start() {
    run_client("bash", &["curl.sh"], &[], "curl").await;
}

#[tokio::test]
async fn the_wget_lines_work_against_the_quick_start() {
    let wget = std::process::Command::new("wget").arg("--version").output();
    assert!(
        wget.is_ok_and(|o| o.status.success()),
        "wget is missing: install wget (bash .ci/run does)"
    );
    run_client("bash", &["wget.sh"], &[], "wget").await;
}
