//! Containment of function processes: nothing a call starts outlives it,
//! not a `setsid` child holding stdout, not a double-fork daemon, not a
//! gateway that exits on a second SIGTERM or dies by SIGKILL.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, WORK_PY, eventually, exec_fn, json_ok, process_alive};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Starts `sleep 1000` in a session of its own that inherits stdout and
/// stderr, answers with its pid, and exits 0.
const SETSID_PY: &str = r#"
import json, subprocess, sys
sys.stdin.read()
p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
sys.stdout.write(json.dumps({"escapee": p.pid}))
"#;

/// A classic daemon: fork, setsid, fork again, stdio to /dev/null; the
/// function answers with the daemon's pid once it runs, and exits 0.
const DAEMON_PY: &str = r#"
import json, os, sys, time
sys.stdin.read()
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.write(w, b"%d" % os.getpid())
        time.sleep(1000)
    os._exit(0)
os.close(w)
os.wait()
pid = int(os.read(r, 32))
sys.stdout.write(json.dumps({"daemon": pid}))
"#;

/// Starts a `sleep 1000` in its group and one in a session of its own,
/// writes "PID GROUP_CHILD SESSION_CHILD" to pids.txt, then hangs.
const LINGER_PY: &str = r#"
import os, subprocess, sys, time
sys.stdin.read()
group = subprocess.Popen(["sleep", "1000"])
session = subprocess.Popen(["sleep", "1000"], start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open("pids.tmp", "w") as f:
    f.write("%d %d %d" % (os.getpid(), group.pid, session.pid))
os.rename("pids.tmp", "pids.txt")
time.sleep(1000)
"#;

/// Whether `pid` has been reaped (not even a zombie is left).
fn reaped(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The whitespace-separated pids in `path`, once it exists.
async fn pids_in(path: &Path) -> Vec<i32> {
    let written = eventually(Duration::from_secs(20), || path.exists()).await;
    assert!(written, "{} was not written", path.display());
    std::fs::read_to_string(path)
        .expect("read pids")
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

#[tokio::test]
async fn setsid_child_holding_stdout_does_not_hold_the_answer() {
    let gw = Gateway::builder()
        .file("setsid.py", SETSID_PY)
        .toml(&exec_fn("x", "setsid", "setsid.py", "timeout = \"20s\""))
        .start()
        .await;
    let started = Instant::now();
    let resp = gw.post_json(&gw.client(), "/x/setsid", "{}").await;
    let elapsed = started.elapsed();
    let result = json_ok(resp).await;
    assert!(
        elapsed < Duration::from_secs(5),
        "a call with a 20 s timeout answered after {elapsed:?}"
    );
    let escapee = result["escapee"].as_i64().expect("escapee pid") as i32;
    let gone = eventually(Duration::from_secs(5), || reaped(escapee)).await;
    assert!(
        gone,
        "setsid child {escapee} still there (alive: {})",
        process_alive(escapee)
    );
}

#[tokio::test]
async fn double_fork_daemon_is_gone_after_the_call() {
    let gw = Gateway::builder()
        .file("daemon.py", DAEMON_PY)
        .toml(&exec_fn("x", "daemon", "daemon.py", "timeout = \"20s\""))
        .start()
        .await;
    let result = json_ok(gw.post_json(&gw.client(), "/x/daemon", "{}").await).await;
    let daemon = result["daemon"].as_i64().expect("daemon pid") as i32;
    let gone = eventually(Duration::from_secs(5), || reaped(daemon)).await;
    assert!(
        gone,
        "daemon {daemon} still there (alive: {})",
        process_alive(daemon)
    );
}

#[tokio::test]
async fn second_sigterm_leaves_no_function_process_alive() {
    let mut gw = Gateway::builder()
        .server("shutdown_grace = \"60s\"")
        .file("linger.py", LINGER_PY)
        .toml(&exec_fn("x", "linger", "linger.py", "timeout = \"120s\""))
        .start()
        .await;
    let resp = gw.post_json(&gw.client(), "/x/linger/spawn", "{}").await;
    assert_eq!(resp.status(), 202);
    let pids = pids_in(&gw.dir.join("pids.txt")).await;
    assert_eq!(pids.len(), 3);
    let gateway = Pid::from_raw(gw.pid as i32);
    kill(gateway, Signal::SIGTERM).expect("first SIGTERM");
    let draining = gw
        .logs
        .wait_for("shutting down", Duration::from_secs(10))
        .await;
    assert!(draining, "the first SIGTERM started no drain");
    assert!(
        pids.iter().all(|&p| process_alive(p)),
        "the drain waits for the running call"
    );
    kill(gateway, Signal::SIGTERM).expect("second SIGTERM");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
    let dead = eventually(Duration::from_secs(2), || {
        pids.iter().all(|&p| !process_alive(p))
    })
    .await;
    let alive: Vec<i32> = pids.into_iter().filter(|&p| process_alive(p)).collect();
    assert!(
        dead,
        "alive after the forced exit: {alive:?} (function, group child, session child)"
    );
}

#[tokio::test]
async fn sigkill_of_the_gateway_kills_the_running_function() {
    let mut gw = Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("x", "work", "work.py", ""))
        .start()
        .await;
    let resp = gw
        .post_json(
            &gw.client(),
            "/x/work/spawn",
            r#"{"marker": "running", "seconds": 120}"#,
        )
        .await;
    assert_eq!(resp.status(), 202);
    let pids = pids_in(&gw.dir.join("running")).await;
    let function = pids[0];
    assert!(process_alive(function));
    gw.kill().await;
    let dead = eventually(Duration::from_secs(5), || !process_alive(function)).await;
    assert!(dead, "function {function} outlived the gateway's SIGKILL");
}
