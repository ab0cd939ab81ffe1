//! Deploys without a restart: a deployed function serves at its stable
//! URL at once; a deploy, a redeploy and a rollback under load lose no
//! request and send every call started after each to the new version;
//! calls in flight finish on the version they started on; deploys survive
//! kill -9; `fngate deploy` pushes a file's apps.

mod common;
#[path = "admin/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, WORK_PY, assert_problem, eventually, exec_fn, json_ok};
use serde_json::{Value, json};
use support::{Admin, builder, version_table};

/// The version a call of `/demo/ver` answered.
async fn version_of(gw: &Gateway, client: &reqwest::Client, body: &str) -> String {
    let answer = json_ok(gw.post_json(client, "/demo/ver", body).await).await;
    answer["version"].as_str().expect("a version").to_owned()
}

#[tokio::test]
async fn a_deployed_function_serves_at_its_stable_url_at_once() {
    let gw = builder().start().await;
    let admin = Admin::of(&gw).await;
    let client = gw.client();
    let missing = gw.post_json(&client, "/demo/ver", "{}").await;
    assert_problem(missing, 404, "app_not_found").await;

    let (status, deployed) = admin
        .send(
            "PUT",
            "/admin/apps/demo/functions/ver",
            Some(&version_table("1")),
        )
        .await;
    assert_eq!(status, 201, "{deployed}");
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["changes"]["added"], json!(["demo/ver"]));
    // Served at once, by the first request after the answer.
    assert_eq!(version_of(&gw, &client, "{}").await, "1");
    let listed = admin.listed("demo", "ver").await.expect("listed");
    assert_eq!(listed["source"], "deploy");
    assert_eq!(listed["version"], 1);
    assert_eq!(listed["route"], "/demo/ver");
    assert_eq!(listed["backend"], "exec");
    assert_eq!(listed["table"], version_table("1"));

    // A redeploy answers 200 and says what it changed.
    let (status, redeployed) = admin
        .send(
            "PUT",
            "/admin/apps/demo/functions/ver",
            Some(&version_table("2")),
        )
        .await;
    assert_eq!(status, 200, "{redeployed}");
    assert_eq!(redeployed["version"], 2);
    assert_eq!(redeployed["changes"]["changed"], json!(["demo/ver"]));
    assert_eq!(version_of(&gw, &client, "{}").await, "2");

    // A delete is a version too, and can be rolled back.
    let (status, deleted) = admin
        .send("DELETE", "/admin/apps/demo/functions/ver", None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["version"], 3);
    assert_eq!(deleted["changes"]["removed"], json!(["demo/ver"]));
    let gone = gw.post_json(&client, "/demo/ver", "{}").await;
    assert_problem(gone, 404, "app_not_found").await;
    let (_, versions) = admin.get("/admin/apps/demo/functions/ver/versions").await;
    let versions = versions["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[0]["table"], version_table("1"));
    assert_eq!(versions[2]["deleted"], true);
    assert!(versions[2]["time"].as_str().unwrap().ends_with('Z'));
    let (status, rolled) = admin
        .send("POST", "/admin/apps/demo/functions/ver/rollback", None)
        .await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(
        (
            rolled["version"].as_u64(),
            rolled["rolled_back_to"].as_u64()
        ),
        (Some(4), Some(2))
    );
    assert_eq!(version_of(&gw, &client, "{}").await, "2");
    let (status, rolled) = admin
        .send(
            "POST",
            "/admin/apps/demo/functions/ver/rollback",
            Some(&json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(version_of(&gw, &client, "{}").await, "1");
    let (status, problem) = admin
        .send(
            "POST",
            "/admin/apps/demo/functions/ver/rollback",
            Some(&json!({"version": 9})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("version_not_found")),
        "{problem}"
    );
    // Version 0 is the file's: ver is in no file, so it is gone.
    let (status, rolled) = admin
        .send(
            "POST",
            "/admin/apps/demo/functions/ver/rollback",
            Some(&json!({"version": 0})),
        )
        .await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["changes"]["removed"], json!(["demo/ver"]));
    let gone = gw.post_json(&client, "/demo/ver", "{}").await;
    assert_problem(gone, 404, "app_not_found").await;
}

/// One call of the load: when it was sent, and what it answered.
struct Sample {
    sent: Instant,
    answer: Result<String, String>,
}

/// 16 connections (half h1, half h2) calling `/demo/ver` in a loop until
/// `stop`, counting the calls that ended in `done`; every call's sample.
fn load(
    gw: &Gateway,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..16)
        .map(|i| {
            let client = if i % 2 == 0 {
                gw.client_h1()
            } else {
                gw.client_h2()
            };
            let url = gw.url("/demo/ver");
            let stop = stop.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = match client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await
                    {
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            match serde_json::from_str::<Value>(&text) {
                                Ok(v) if status == 200 && v["version"].is_string() => {
                                    Ok(v["version"].as_str().unwrap().to_owned())
                                }
                                _ => Err(format!("{status}: {text}")),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    samples.push(Sample { sent, answer });
                    done.fetch_add(1, Ordering::Relaxed);
                }
                samples
            })
        })
        .collect()
}

#[tokio::test]
async fn deploy_redeploy_and_rollback_under_load_lose_nothing_and_route_new_calls_to_the_new_version()
 {
    let gw = builder().start().await;
    let admin = Admin::of(&gw).await;
    admin.deploy("demo", "ver", &version_table("1")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let tasks = load(&gw, stop.clone(), done.clone());
    // Each phase lasts until 48 calls ended in it: at most 16 of them (one
    // per connection) were sent before it began.
    let phase_of_calls = || {
        let done = done.clone();
        async move {
            let from = done.load(Ordering::Relaxed);
            let ended = eventually(Duration::from_secs(120), || {
                done.load(Ordering::Relaxed) >= from + 48
            })
            .await;
            assert!(ended, "the load made no progress");
        }
    };
    phase_of_calls().await;
    let redeploy_sent = Instant::now();
    let body = admin.deploy("demo", "ver", &version_table("2")).await;
    let redeployed = Instant::now();
    assert_eq!(body["changes"]["changed"], json!(["demo/ver"]));
    phase_of_calls().await;
    let rollback_sent = Instant::now();
    let (status, body) = admin
        .send("POST", "/admin/apps/demo/functions/ver/rollback", None)
        .await;
    let rolled_back = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rolled_back_to"], 1);
    phase_of_calls().await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("a load task"));
    }
    let failed: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.answer.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    let phase = |from: Instant, to: Option<Instant>| -> Vec<&str> {
        samples
            .iter()
            .filter(|s| s.sent >= from && to.is_none_or(|to| s.sent < to))
            .map(|s| s.answer.as_deref().unwrap())
            .collect()
    };
    let first = phase(
        Instant::now() - Duration::from_secs(3600),
        Some(redeploy_sent),
    );
    let second = phase(redeployed, Some(rollback_sent));
    let third = phase(rolled_back, None);
    for (name, answers, want) in [
        ("before the redeploy", &first, "1"),
        ("after the redeploy", &second, "2"),
        ("after the rollback", &third, "1"),
    ] {
        assert!(answers.len() >= 16, "{name}: only {} calls", answers.len());
        let wrong: Vec<&&str> = answers.iter().filter(|a| **a != want).collect();
        assert!(
            wrong.is_empty(),
            "{name}: {} of {} calls answered another version: {:?}",
            wrong.len(),
            answers.len(),
            wrong
        );
    }
}

#[tokio::test]
async fn a_call_in_flight_finishes_on_the_version_it_started_on() {
    let gw = builder().start().await;
    let admin = Admin::of(&gw).await;
    admin.deploy("demo", "ver", &version_table("1")).await;
    let slow = {
        let client = gw.client();
        let url = gw.url("/demo/ver");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 3, "marker": "started"}"#)
                .send()
                .await
                .expect("the slow call");
            json_ok(response).await
        })
    };
    let marker = gw.dir.join("started");
    assert!(
        eventually(Duration::from_secs(10), || marker.exists()).await,
        "the slow call never ran"
    );
    let body = admin.deploy("demo", "ver", &version_table("2")).await;
    assert_eq!(body["version"], 2);
    let started = Instant::now();
    assert_eq!(version_of(&gw, &gw.client(), "{}").await, "2");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the new version waited for the old call"
    );
    let old = slow.await.expect("the slow call's task");
    assert_eq!(old["version"], "1", "the call in flight changed version");
}

#[tokio::test]
async fn deploys_survive_kill_9() {
    let file = exec_fn("demo", "square", "work.py", "");
    let mut gw = builder().file("work.py", WORK_PY).toml(&file).start().await;
    {
        let admin = Admin::of(&gw).await;
        admin.deploy("demo", "ver", &version_table("1")).await;
        admin.deploy("demo", "ver", &version_table("2")).await;
        let (status, body) = admin
            .send("DELETE", "/admin/apps/demo/functions/square", None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // SIGKILL: nothing gets to flush or say goodbye.
    gw.kill().await;
    let again = builder()
        .file("work.py", WORK_PY)
        .toml(&file)
        .in_dir(&gw.dir)
        .start()
        .await;
    let admin = Admin::of(&again).await;
    let client = again.client();
    assert_eq!(version_of(&again, &client, "{}").await, "2");
    let square = again
        .post_json(&client, "/demo/square", r#"{"x": 3}"#)
        .await;
    assert_problem(square, 404, "function_not_found").await;
    let listed = admin.listed("demo", "ver").await.expect("ver is listed");
    assert_eq!(
        (listed["source"].as_str(), listed["version"].as_u64()),
        (Some("deploy"), Some(2)),
        "{listed}"
    );
    assert!(admin.listed("demo", "square").await.is_none());
    // Its history came back too: a rollback goes on from it.
    let (status, body) = admin
        .send("POST", "/admin/apps/demo/functions/ver/rollback", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(version_of(&again, &client, "{}").await, "1");
    // The deleted file function's version 0 is the file's table again.
    let (status, body) = admin
        .send("POST", "/admin/apps/demo/functions/square/rollback", None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["rolled_back_to"].as_u64()),
        (Some(2), Some(0))
    );
    let square = again
        .post_json(&client, "/demo/square", r#"{"x": 3}"#)
        .await;
    assert_eq!(json_ok(square).await["square"], 9);
    let listed = admin
        .listed("demo", "square")
        .await
        .expect("square is back");
    assert_eq!(listed["source"], "file", "{listed}");
    let (_, versions) = admin
        .get("/admin/apps/demo/functions/square/versions")
        .await;
    assert_eq!(versions["versions"][1]["file"], true, "{versions}");
}

#[tokio::test]
async fn fngate_deploy_pushes_a_files_apps() {
    let gw = builder().start().await;
    let admin = Admin::of(&gw).await;
    let apps = gw.dir.join("apps.toml");
    std::fs::write(
        &apps,
        "[apps.demo.functions.ver]\nbackend = \"exec\"\ncommand = [\"python3\", \"version.py\", \"from-file\"]\n\n\
         [apps.tools.functions.ver]\nbackend = \"exec\"\ncommand = [\"python3\", \"version.py\", \"tools\"]\ntimeout = \"5s\"\n",
    )
    .unwrap();
    let config = gw.dir.join("gateway.toml");
    let gateway = format!("https://localhost:{}", admin.addr.port());
    let args = |file: &std::path::Path| {
        vec![
            "deploy".to_owned(),
            file.to_str().unwrap().to_owned(),
            "--gateway".to_owned(),
            gateway.clone(),
            "--config".to_owned(),
            config.to_str().unwrap().to_owned(),
        ]
    };
    let run = |args: Vec<String>, envs: Vec<(&'static str, &'static str)>| {
        let dir = gw.dir.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_bin_env(&args, &dir, &envs).await
        }
    };
    let token = vec![(support::TOKEN_ENV, support::TOKEN)];
    let (code, stdout, stderr) = run(args(&apps), token.clone()).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("apps.demo.functions.ver: version 1 (new): added demo/ver"),
        "{stdout}"
    );
    assert!(
        stdout.contains("apps.tools.functions.ver: version 1 (new): added tools/ver"),
        "{stdout}"
    );
    let client = gw.client();
    assert_eq!(version_of(&gw, &client, "{}").await, "from-file");
    let tools = json_ok(gw.post_json(&client, "/tools/ver", "{}").await).await;
    assert_eq!(tools["version"], "tools");
    assert_eq!(
        admin.listed("tools", "ver").await.unwrap()["table"]["timeout"],
        "5s"
    );

    // Pushed again unchanged: a new version that changes nothing.
    let (code, stdout, _) = run(args(&apps), token.clone()).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("apps.demo.functions.ver: version 2: unchanged"),
        "{stdout}"
    );

    // A refused table names its key; the tables before it are deployed.
    let bad = gw.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[apps.demo.functions.ok]\nbackend = \"exec\"\ncommand = [\"python3\", \"version.py\", \"ok\"]\n\n\
         [apps.demo.functions.zzz]\nbackend = \"exec\"\ncommand = [\"python3\", \"version.py\"]\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(args(&bad), token.clone()).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("apps.demo.functions.zzz.timeout"),
        "{stderr}"
    );
    assert!(admin.listed("demo", "ok").await.is_some());
    assert!(admin.listed("demo", "zzz").await.is_none());

    // No token, a wrong one, and a file with more than apps.
    let (code, _, stderr) = run(args(&apps), vec![]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("FNGATE_ADMIN_TOKEN"), "{stderr}");
    let (code, _, stderr) = run(args(&apps), vec![(support::TOKEN_ENV, "wrong")]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, stderr) = run(args(&bad), token).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("[server]"), "{stderr}");
}

/// Set in the copy of this test binary that runs inside a mount namespace.
const IN_NAMESPACE: &str = "FNGATE_TEST_IN_MOUNT_NAMESPACE";

#[tokio::test]
async fn a_deploy_the_store_cannot_take_is_503_and_changes_nothing() {
    let exe = std::env::current_exe().expect("this test binary");
    let name = "full_store_inside_a_mount_namespace";
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
            .await
            .expect("run unshare(1)");
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
        return;
    }
    panic!(
        "THIS TEST CANNOT RUN HERE: it needs a mount namespace for a 2 MiB tmpfs \
         (unprivileged user namespaces, or root):\n{}",
        tried.join("\n")
    );
}

#[tokio::test]
#[ignore = "run inside a mount namespace by a_deploy_the_store_cannot_take_is_503_..."]
async fn full_store_inside_a_mount_namespace() {
    assert!(
        std::env::var_os(IN_NAMESPACE).is_some(),
        "run inside a mount namespace"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&data)
        .status()
        .expect("run mount(8)");
    assert!(status.success(), "mount -t tmpfs failed: {status}");
    let gw = builder()
        .toml("[store]\npath = \"data/calls.db\"\n")
        .in_dir(dir.path())
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    admin.deploy("demo", "ver", &version_table("1")).await;
    let client = gw.client();
    // Fill the disk to its last byte before each deploy: a refused write
    // checkpoints the WAL and truncates it, which gives room back, and a
    // WAL that was reset takes writes in the space it already holds.
    let mut fillers = 0;
    let mut fill = || {
        fillers += 1;
        fill_up(&data.join(format!("filler-{fillers}")));
    };
    let mut serving = "1".to_owned();
    let mut refused = None;
    for attempt in 2..40 {
        fill();
        let (_, before) = admin.get("/admin/functions").await;
        let table = padded(&attempt.to_string());
        let (status, body) = admin
            .send("PUT", "/admin/apps/demo/functions/ver", Some(&table))
            .await;
        if status == 503 {
            refused = Some((body, before, table));
            break;
        }
        assert_eq!(status, 200, "{body}");
        serving = attempt.to_string();
    }
    let (problem, before, table) = refused.expect("a deploy on a full disk was refused");
    assert_eq!(problem["code"], "overloaded", "{problem}");
    // The swap was undone: the version before serves, as the list says.
    assert_eq!(version_of(&gw, &client, "{}").await, serving);
    let (_, after) = admin.get("/admin/functions").await;
    assert_eq!(before, after);
    let mut new_refused = false;
    for _ in 0..20 {
        fill();
        let (status, body) = admin
            .send("PUT", "/admin/apps/demo/functions/new", Some(&table))
            .await;
        if status == 503 {
            new_refused = true;
            break;
        }
        // Stored after all: take it away again for the next try.
        assert_eq!(status, 201, "{body}");
        let (status, body) = admin
            .send(
                "POST",
                "/admin/apps/demo/functions/new/rollback",
                Some(&json!({"version": 0})),
            )
            .await;
        assert!(status == 200 || status == 503, "{body}");
    }
    assert!(
        new_refused,
        "a new function's deploy on a full disk was refused"
    );
    let missing = gw.post_json(&client, "/demo/new", "{}").await;
    assert_problem(missing, 404, "function_not_found").await;

    // With room again, the same deploy goes through.
    for filler in 1..=fillers {
        std::fs::remove_file(data.join(format!("filler-{filler}"))).unwrap();
    }
    let version = table["command"][2].as_str().unwrap().to_owned();
    admin.deploy("demo", "ver", &table).await;
    assert_eq!(version_of(&gw, &client, "{}").await, version);
}

/// `version_table(version)` with 4 KB more to store.
fn padded(version: &str) -> Value {
    let mut table = version_table(version);
    table["env"] = json!({ "PAD": "y".repeat(4000) });
    table
}

/// Writes `path` until its filesystem is full.
fn fill_up(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create a filler");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test]
async fn a_class_is_deployed_with_its_methods_and_removed_whole() {
    let gw = builder()
        .file(
            "lambda_runtime.py",
            common::repo_file("examples/lambda_runtime.py"),
        )
        .file(
            "setup_counter.py",
            common::repo_file("tests/instances/setup_counter.py"),
        )
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    let mut class = json!({
        "backend": "lambda",
        "command": ["python3", "lambda_runtime.py", "setup_counter.handler"],
        "max_instances": 1,
        "exit_grace": "1s",
        "env": {"SETUP_COUNT_FILE": "model.setup"},
        "functions": {"predict": {"timeout": "10s"}},
    });
    let (status, body) = admin
        .send("PUT", "/admin/apps/demo/classes/model", Some(&class))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["kind"].as_str(), body["version"].as_u64()),
        (Some("class"), Some(1))
    );
    assert_eq!(body["changes"]["added"], json!(["demo/model/predict"]));
    let client = gw.client();
    let predict = json_ok(
        gw.post_json(&client, "/demo/model/predict", r#"{"x": 1}"#)
            .await,
    )
    .await;
    assert_eq!(
        (predict["class"].as_str(), predict["function"].as_str()),
        (Some("model"), Some("predict")),
        "{predict}"
    );
    let listed = admin
        .listed("demo", "predict")
        .await
        .expect("the method is listed");
    assert_eq!(listed["class"], "model");
    assert_eq!(listed["route"], "/demo/model/predict");
    assert_eq!(listed["backend"], "lambda");
    assert_eq!(
        (listed["source"].as_str(), listed["version"].as_u64()),
        (Some("deploy"), Some(1))
    );
    assert_eq!(listed["table"], class);

    // A method more: the class's new version serves both.
    class["functions"]["embed"] = json!({"methods": ["POST", "GET"]});
    let (status, body) = admin
        .send("PUT", "/admin/apps/demo/classes/model", Some(&class))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["changes"]["added"],
        json!(["demo/model/embed"]),
        "{body}"
    );
    let embed = json_ok(gw.post_json(&client, "/demo/model/embed", "{}").await).await;
    assert_eq!(embed["function"], "embed", "{embed}");

    // A method's bad value is refused, naming the method's key.
    let (status, problem) = admin
        .send("PUT", "/admin/apps/demo/classes/model", Some(&json!({"backend": "lambda", "command": ["x"], "functions": {"predict": {"timeout": "later"}}})))
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        problem["key"], "apps.demo.classes.model.functions.predict.timeout",
        "{problem}"
    );

    let (status, body) = admin
        .send("DELETE", "/admin/apps/demo/classes/model", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut removed: Vec<String> =
        serde_json::from_value(body["changes"]["removed"].clone()).unwrap();
    removed.sort();
    assert_eq!(removed, ["demo/model/embed", "demo/model/predict"]);
    let gone = gw.post_json(&client, "/demo/model/predict", "{}").await;
    assert_problem(gone, 404, "app_not_found").await;
    let (_, versions) = admin.get("/admin/apps/demo/classes/model/versions").await;
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(3),
        "{versions}"
    );
    assert_eq!(versions["kind"], "class");
}

#[tokio::test]
async fn stored_deploys_that_no_longer_fit_the_file_stop_the_start_naming_the_key() {
    let mut gw = builder().start().await;
    Admin::of(&gw)
        .await
        .deploy("demo", "ver", &version_table("1"))
        .await;
    gw.kill().await;
    // The file now has a class of the deployed function's name.
    let config = gw.dir.join("gateway.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[apps.demo.classes.ver]\nbackend = \"lambda\"\ncommand = [\"python3\", \"version.py\"]\n\
         [apps.demo.classes.ver.functions.run]\n",
    );
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = common::run_bin_env(
        &["serve", "--config", config.to_str().unwrap()],
        &gw.dir,
        &[(support::TOKEN_ENV, support::TOKEN)],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the stored deploys over the configuration file"),
        "{stderr}"
    );
    assert!(stderr.contains("apps.demo"), "{stderr}");
}
