//! The embedded store when its file or its disk fails: a corrupt store or
//! an empty one beside a WAL that held calls stops the start with status
//! 2 naming the file; a full disk answers spawns `503 overloaded` with
//! `Retry-After` and takes them again once space is freed; a store that
//! breaks while serving fails `/_/ready` and the gateway exits non-zero.
//!
//! The full disk is real: a 2 MiB tmpfs, mounted in a mount namespace of
//! its own (`unshare`) in which this test binary runs the test again, so
//! the gateway it starts writes there. Where no namespace can be made the
//! test fails, saying so; it never passes without running.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Gateway, GatewayBuilder, assert_problem, header_str, run_bin};
use serde_json::Value;

/// An exec function that ends at once, and one the store keeps pending:
/// `[server] shutdown_grace` is short, so a failing store exits soon.
fn builder(store: &str) -> GatewayBuilder {
    Gateway::builder()
        .server("shutdown_grace = \"1s\"")
        .toml(&format!("[store]\n{store}\n"))
        .toml(
            "[apps.s.functions.quick]\nbackend = \"exec\"\n\
             command = [\"sh\", \"-c\", \"cat > /dev/null; echo 1\"]\n",
        )
}

/// A spawn's padding: calls of this size fill pages (and a small disk) fast.
fn padded() -> String {
    serde_json::json!({ "pad": "x".repeat(4000) }).to_string()
}

/// Spawns a call, returning the response.
async fn spawn(gw: &Gateway, client: &reqwest::Client) -> reqwest::Response {
    gw.post_json(client, "/s/quick/spawn", &padded()).await
}

async fn accepted_id(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.expect("spawn body is JSON");
    assert_eq!(status, 202, "spawn: {body}");
    body["call_id"].as_str().expect("call_id").to_owned()
}

/// Moves whatever the WAL holds into the database file, as a second
/// connection may, so that the file itself holds every call.
fn checkpoint(db: &Path) {
    let connection = rusqlite::Connection::open(db).expect("open the store");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: i64 = connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .expect("checkpoint");
        if busy == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a reader held the checkpoint back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Overwrites every page after the first (the schema) with bytes no page
/// starts with, as a bad disk or a stray writer would.
fn overwrite_pages(db: &Path) {
    let size = std::fs::metadata(db).expect("the store file").len();
    assert!(size > 64 * 1024, "the store has many pages: {size} bytes");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .expect("open the store file");
    file.seek(SeekFrom::Start(4096)).expect("seek");
    file.write_all(&vec![0xA5; (size - 4096) as usize])
        .expect("overwrite");
    file.sync_all().expect("sync");
}

/// A gateway that stored `calls` spawned calls, stopped, and its store file.
async fn stopped_gateway_with_calls(calls: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gw = builder("path = \"data/calls.db\"")
        .in_dir(dir.path())
        .start()
        .await;
    let client = gw.client();
    for _ in 0..calls {
        accepted_id(spawn(&gw, &client).await).await;
    }
    gw.kill().await;
    let db = dir.path().join("data/calls.db");
    checkpoint(&db);
    (dir, db)
}

#[tokio::test]
async fn a_store_with_overwritten_pages_stops_the_start_with_status_2_naming_the_file() {
    let (dir, db) = stopped_gateway_with_calls(60).await;
    overwrite_pages(&db);
    let config = dir.path().join("gateway.toml");
    let started = Instant::now();
    let (code, _, stderr) =
        run_bin(&["serve", "--config", config.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(
        !stderr.contains("listening on"),
        "it must not start serving: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_empty_store_beside_a_wal_that_held_calls_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("data/calls.db");
    let wal = dir.path().join("data/calls.db-wal");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    // A store whose calls are all in its WAL (as after a crash), kept
    // aside before the connection's close would checkpoint it.
    {
        let connection = rusqlite::Connection::open(&db).unwrap();
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        connection
            .execute_batch("CREATE TABLE kept (x); INSERT INTO kept VALUES (1), (2);")
            .unwrap();
        std::fs::copy(&wal, dir.path().join("wal.saved")).unwrap();
    }
    std::fs::write(&db, b"").unwrap();
    std::fs::rename(dir.path().join("wal.saved"), &wal).unwrap();
    let held = std::fs::metadata(&wal).unwrap().len();
    assert!(held > 0);
    let gw = builder("path = \"data/calls.db\"");
    std::fs::write(dir.path().join("gateway.toml"), gw.config_text()).unwrap();
    let config = dir.path().join("gateway.toml");
    let (code, _, stderr) =
        run_bin(&["serve", "--config", config.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains(&wal.display().to_string()), "{stderr}");
    assert!(stderr.contains("move both files away"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        held,
        "the WAL is untouched"
    );
}

#[tokio::test]
async fn a_store_that_breaks_while_serving_fails_readiness_and_exits_non_zero() {
    let mut gw = builder("path = \"data/calls.db\"").start().await;
    let client = gw.client_h2();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(accepted_id(spawn(&gw, &client).await).await);
    }
    let ready = client.get(gw.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let db = gw.dir.join("data/calls.db");
    checkpoint(&db);
    overwrite_pages(&db);
    // Reading calls meets the damage (the gateway has not read them yet).
    let mut failed = None;
    for id in &ids {
        let response = client
            .get(gw.url(&format!("/calls/{id}")))
            .send()
            .await
            .unwrap();
        if !response.status().is_success() {
            failed = Some(response);
            break;
        }
    }
    let response = failed.expect("no read met the overwritten pages");
    assert_eq!(header_str(&response, "retry-after").as_deref(), Some("1"));
    assert_problem(response, 503, "overloaded").await;
    let ready = client.get(gw.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "store_failed", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("corrupt")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&gw.dir.display().to_string()),
        "no path reaches clients: {body}"
    );
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(1), "{status:?}");
    let logs = gw.logs.joined();
    assert!(
        logs.contains(&db.display().to_string()),
        "the log names the file:\n{logs}"
    );
}

/// Set in the copy of this test binary that runs inside a mount namespace.
const IN_NAMESPACE: &str = "FNGATE_TEST_IN_MOUNT_NAMESPACE";

#[tokio::test]
async fn a_full_disk_answers_503_with_retry_after_and_spawns_are_taken_again_once_space_is_freed() {
    let output = run_in_mount_namespace("full_disk_inside_a_mount_namespace").await;
    println!("{output}");
}

/// Runs the ignored test `name` of this binary again inside a new mount
/// namespace (a user namespace too, where the kernel allows it without
/// root), and fails unless it ran and passed there.
async fn run_in_mount_namespace(name: &str) -> String {
    let exe = std::env::current_exe().expect("this test binary");
    let mut tried = Vec::new();
    for unshare in [&["-r", "-m"][..], &["-m"][..]] {
        let output = tokio::process::Command::new("unshare")
            .args(unshare)
            .arg("--")
            .arg(&exe)
            .args([
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(IN_NAMESPACE, "1")
            .kill_on_drop(true)
            .output()
            .await;
        let output = match output {
            Ok(output) => output,
            Err(e) => panic!(
                "cannot run unshare(1) for a mount namespace: {e}; this test cannot run here"
            ),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if text.contains("unshare failed") {
            tried.push(format!("unshare {}: {}", unshare.join(" "), text.trim()));
            continue;
        }
        assert!(
            output.status.success(),
            "{name} failed in its mount namespace:\n{text}"
        );
        assert!(text.contains("1 passed"), "{name} did not run:\n{text}");
        return text;
    }
    panic!(
        "THIS TEST CANNOT RUN HERE: it needs a mount namespace for a 2 MiB tmpfs \
         (unprivileged user namespaces, or root):\n{}",
        tried.join("\n")
    );
}

/// Mounts a tmpfs of `size` on `dir` (inside the namespace: it goes with it).
fn mount_tmpfs(dir: &Path, size: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount(8)");
    assert!(
        status.success(),
        "mount -t tmpfs -o size={size} failed: {status}"
    );
}

#[tokio::test]
#[ignore = "run inside a mount namespace by a_full_disk_answers_503_..."]
async fn full_disk_inside_a_mount_namespace() {
    assert!(
        std::env::var_os(IN_NAMESPACE).is_some(),
        "run by a_full_disk_answers_503_with_retry_after_and_spawns_are_taken_again_once_space_is_freed, \
         inside a mount namespace of its own"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    mount_tmpfs(&data, "2m");
    // 1.2 MB of the 2 MiB are taken by something else.
    let filler = data.join("filler");
    std::fs::write(&filler, vec![0; 1_200_000]).unwrap();
    let gw = builder("path = \"data/calls.db\"")
        .in_dir(dir.path())
        .start()
        .await;
    let client = gw.client();
    let mut refused = None;
    for attempt in 0..400 {
        let response = spawn(&gw, &client).await;
        if response.status() != 202 {
            refused = Some((attempt, response));
            break;
        }
    }
    let (accepted, response) = refused.expect("400 spawns of 4 KB fitted in 800 KB of disk");
    println!("the disk was full after {accepted} spawns");
    assert_eq!(header_str(&response, "retry-after").as_deref(), Some("1"));
    assert_problem(response, 503, "overloaded").await;
    // The gateway still answers, and refuses again while the disk stays
    // full. A spawn or two may still fit right after the refusal (the
    // writer truncates its WAL to make room, and a failed write's pages
    // are reused), but the data only grows: 100 more spawns of 4 KB cannot
    // all fit in what is left, and every answer is an acceptance or the
    // same 503.
    let mut refused_again = false;
    for _ in 0..100 {
        let response = spawn(&gw, &client).await;
        if response.status() == 202 {
            continue;
        }
        assert_eq!(header_str(&response, "retry-after").as_deref(), Some("1"));
        assert_problem(response, 503, "overloaded").await;
        refused_again = true;
        break;
    }
    assert!(
        refused_again,
        "100 more spawns of 4 KB fitted on a full disk"
    );
    let ready = client.get(gw.url("/_/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a full disk is no broken store");

    std::fs::remove_file(&filler).unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        let response = spawn(&gw, &client).await;
        assert_eq!(
            response.status(),
            202,
            "spawn {i} of 30 after space was freed"
        );
        ids.push(accepted_id(response).await);
    }
    // And they run, their ends stored too.
    for id in &ids {
        let response = client
            .get(gw.url(&format!("/calls/{id}?wait=20")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "call {id}");
    }
    let wal = std::fs::metadata(data.join("calls.db-wal")).map_or(0, |m| m.len());
    println!("WAL after recovery: {wal} bytes");
}
