use super::*;
use std::process::Stdio;

fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

async fn gone(pid: Pid) -> bool {
    for _ in 0..250 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `sh -c script` with stdout piped; the script prints pids.
fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

async fn first_line(process: &mut FunctionProcess) -> Pid {
    use tokio::io::AsyncBufReadExt;
    let (_, stdout, _) = process.take_stdio();
    let mut lines = tokio::io::BufReader::new(stdout.expect("piped")).lines();
    let line = lines.next_line().await.expect("read").expect("a line");
    Pid::from_raw(line.trim().parse().expect("a pid"))
}

#[tokio::test]
async fn a_process_is_tagged_and_leads_its_own_group() {
    let mut process = FunctionProcess::start(sh("echo $$; cat /proc/self/environ >&2"))
        .await
        .expect("start");
    let pid = first_line(&mut process).await;
    assert_eq!(pid, process.id());
    assert_eq!(nix::unistd::getpgid(Some(pid)).ok(), Some(pid));
    assert!(process.tag().starts_with(&format!("{:016x}-", nonce())));
    assert!(process.wait().await.expect("wait").success());
}

#[tokio::test]
async fn finish_kills_an_escaped_session_and_reaps_it() {
    let mut process = FunctionProcess::start(sh(
        "setsid sh -c 'echo $$; exec sleep 1000' </dev/null 2>/dev/null & wait",
    ))
    .await
    .expect("start");
    let escapee = first_line(&mut process).await;
    assert_ne!(nix::unistd::getpgid(Some(escapee)).ok(), Some(process.id()));
    process.kill();
    let _ = process.wait().await;
    assert!(alive(escapee), "killing the group leaves the escapee");
    process.finish().await;
    assert!(gone(escapee).await, "escapee {escapee} survived finish");
    // Re-parented to this process (a subreaper) and reaped by the sweep.
    let mut reaped = false;
    for _ in 0..250 {
        if !std::path::Path::new(&format!("/proc/{escapee}")).exists() {
            reaped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reaped, "escapee {escapee} left as a zombie");
}

#[tokio::test]
async fn processes_without_the_tag_are_left_alone() {
    // Started as tokio children of this test process, not through
    // FunctionProcess: one with no tag, one with another gateway's tag.
    let mut plain = Command::new("sleep")
        .arg("1000")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    let mut foreign = Command::new("sleep")
        .arg("1000")
        .env(TAG_VAR, format!("{:016x}-1", nonce() ^ 1))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    let process = FunctionProcess::start(sh("exit 0")).await.expect("start");
    process.finish().await;
    assert!(
        matches!(plain.try_wait(), Ok(None)),
        "an untagged process was killed"
    );
    assert!(
        matches!(foreign.try_wait(), Ok(None)),
        "another gateway's process was killed"
    );
    let _ = plain.kill().await;
    let _ = foreign.kill().await;
}

#[tokio::test]
async fn dropping_a_process_kills_its_group() {
    let mut process = FunctionProcess::start(sh("sleep 1000 & echo $!; wait"))
        .await
        .expect("start");
    let member = first_line(&mut process).await;
    let leader = process.id();
    drop(process);
    assert!(
        gone(member).await,
        "group member {member} survived the drop"
    );
    assert!(gone(leader).await, "leader {leader} survived the drop");
}

#[tokio::test]
async fn stop_kills_after_the_grace_a_process_that_ignores_sigterm() {
    let mut process = FunctionProcess::start(sh("trap '' TERM; echo $$; sleep 1000 & wait"))
        .await
        .expect("start");
    let pid = first_line(&mut process).await;
    let started = Instant::now();
    let status = process
        .stop(Duration::from_millis(200))
        .await
        .expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(200));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    assert!(!alive(pid));
}

#[tokio::test]
async fn stop_lets_a_process_end_on_sigterm() {
    let mut process = FunctionProcess::start(sh(
        "trap 'exit 7' TERM; echo $$; while :; do sleep 0.05; done",
    ))
    .await
    .expect("start");
    let _ = first_line(&mut process).await;
    let status = process.stop(Duration::from_secs(20)).await.expect("stop");
    assert_eq!(status.code(), Some(7));
}

#[test]
fn tag_entries_match_exactly() {
    let entry = tag_entry("00000000000000ab-1");
    assert_eq!(entry, b"FNGATE_PROCESS_TAG=00000000000000ab-1");
    let wanted: HashSet<Vec<u8>> = [entry].into();
    assert!(!wanted.contains(&b"FNGATE_PROCESS_TAG=00000000000000ab-12"[..]));
}
