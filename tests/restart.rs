//! Restart safety of the embedded store: a gateway killed with SIGKILL or
//! stopped with SIGTERM loses no accepted call.
//!
//! Delivery is at-least-once: a call that was running when the gateway
//! died runs again after the restart, with `attempt` incremented in its
//! invocation request; pending calls run once, finished results stay
//! readable, cancelled calls stay cancelled.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, GatewayBuilder, WORK_PY, eventually, exec_fn};
use serde_json::{Value, json};

/// App `r`: `slow` (concurrency 16, so 12 slots for spawned calls) and
/// `one` (concurrency 1); `server` lines for `[server]`.
fn builder(server: &str) -> GatewayBuilder {
    Gateway::builder()
        .server(server)
        .file("work.py", WORK_PY)
        .toml(&exec_fn(
            "r",
            "slow",
            "work.py",
            "timeout = \"20s\"\nconcurrency = 16",
        ))
        .toml(&exec_fn(
            "r",
            "one",
            "work.py",
            "timeout = \"20s\"\nconcurrency = 1",
        ))
}

/// Starts the same config again on `gw`'s directory (and store).
async fn restart(gw: &Gateway, server: &str) -> Gateway {
    builder(server).in_dir(&gw.dir).start().await
}

async fn spawn(gw: &Gateway, client: &reqwest::Client, path: &str, body: &Value) -> String {
    let resp = gw.post_json(client, path, &body.to_string()).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("spawn body JSON");
    assert_eq!(status, 202, "spawn: {body}");
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

fn lines(dir: &Path, file: &str) -> usize {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn kill_9_mid_way_loses_no_spawned_call() {
    const CALLS: i64 = 200;
    const CLIENTS: i64 = 20;
    let mut gw = builder("").start().await;

    // 200 spawns of a 0.5 s function from 20 clients at once (h1 and h2).
    let spawned = Instant::now();
    let spawners = (0..CLIENTS).map(|c| {
        let client = if c % 2 == 0 {
            gw.client_h1()
        } else {
            gw.client_h2()
        };
        let gw = &gw;
        async move {
            let mut ids = Vec::new();
            for x in (c..CALLS).step_by(CLIENTS as usize) {
                let body = json!({"x": x, "seconds": 0.5});
                ids.push((x, spawn(gw, &client, "/r/slow/spawn", &body).await));
            }
            ids
        }
    });
    let calls: Vec<(i64, String)> = futures_util::future::join_all(spawners)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(calls.len(), CALLS as usize);
    println!(
        "{CALLS} spawns from {CLIENTS} clients took {:?}",
        spawned.elapsed()
    );

    // Quick polls until about a third has finished, then SIGKILL while
    // the next ones run.
    let client = gw.client_h2();
    let started = Instant::now();
    let finished_before: HashMap<String, Value> = loop {
        let polls = calls.iter().map(|(_, id)| {
            let client = &client;
            let gw = &gw;
            async move { (id.clone(), get_call(gw, client, id, None).await) }
        });
        let done: HashMap<String, Value> = futures_util::future::join_all(polls)
            .await
            .into_iter()
            .filter(|(_, (status, _))| *status == 200)
            .map(|(id, (_, body))| (id, body))
            .collect();
        if done.len() >= CALLS as usize / 3 {
            break done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a third of the calls did not finish within 30 s ({} did)",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    gw.kill().await;
    println!(
        "killed with {} of {CALLS} calls seen finished, after {:?}",
        finished_before.len(),
        started.elapsed()
    );
    assert!(finished_before.len() < CALLS as usize, "killed mid-way");

    let gw2 = restart(&gw, "").await;
    let client = gw2.client_h2();
    let finals = calls.iter().map(|(x, id)| {
        let client = &client;
        let gw2 = &gw2;
        async move { (*x, id.clone(), get_call(gw2, client, id, Some(30)).await) }
    });
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    for (x, id, (status, body)) in futures_util::future::join_all(finals).await {
        assert_eq!(status, 200, "call {id} (x = {x}) ends succeeded: {body}");
        assert_eq!(body["x"], x, "{id}: {body}");
        assert_eq!(body["square"], x * x, "{id}: {body}");
        let attempt = body["attempt"].as_u64().expect("attempt");
        assert!(
            (1..=2).contains(&attempt),
            "{id}: attempt {attempt} (killed once)"
        );
        *attempts.entry(attempt).or_default() += 1;
        if let Some(before) = finished_before.get(&id) {
            assert_eq!(&body, before, "{id}: a finished result stays as it was");
        }
    }
    println!("attempts after the restart: {attempts:?}");
    // Calls running at the SIGKILL ran again (at-least-once).
    assert!(
        attempts.keys().any(|&a| a >= 2),
        "calls running at the kill run again with attempt 2: {attempts:?}"
    );
}

#[tokio::test]
async fn sigterm_gives_a_running_spawned_call_the_grace_period() {
    let server = "shutdown_grace = \"5s\"";
    let mut gw = builder(server).start().await;
    let client = gw.client();
    let running = spawn(
        &gw,
        &client,
        "/r/one/spawn",
        &json!({"x": 3, "seconds": 1.5, "marker": "running.m", "count": "running.log"}),
    )
    .await;
    // Waits behind it (concurrency 1), stays pending through the shutdown.
    let pending = spawn(
        &gw,
        &client,
        "/r/one/spawn",
        &json!({"x": 4, "seconds": 0, "count": "pending.log"}),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || gw
            .dir
            .join("running.m")
            .exists())
        .await,
        "the first call started"
    );
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(10)).await;
    println!("SIGTERM -> exit {status} after {:?}", started.elapsed());

    let gw2 = restart(&gw, server).await;
    let client = gw2.client();
    let (status, body) = get_call(&gw2, &client, &running, Some(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"x": 3, "square": 9, "attempt": 1}),
        "finished within the grace period, not run again"
    );
    let (status, body) = get_call(&gw2, &client, &pending, Some(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"x": 4, "square": 16, "attempt": 1}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines(&gw2.dir, "running.log"),
        1,
        "the running call ran once"
    );
    assert_eq!(
        lines(&gw2.dir, "pending.log"),
        1,
        "the pending call ran once"
    );
}

#[tokio::test]
async fn sigterm_past_the_grace_period_runs_the_call_again() {
    let server = "shutdown_grace = \"1s\"";
    let mut gw = builder(server).start().await;
    let client = gw.client();
    let id = spawn(
        &gw,
        &client,
        "/r/one/spawn",
        &json!({"x": 5, "seconds": 4, "marker": "long.m", "count": "long.log"}),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || gw.dir.join("long.m").exists()).await,
        "the call started"
    );
    let started = Instant::now();
    gw.terminate(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the gateway stopped after the 1 s grace, not after {took:?}"
    );
    let gw2 = restart(&gw, server).await;
    let (status, body) = get_call(&gw2, &gw2.client(), &id, Some(15)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"x": 5, "square": 25, "attempt": 2}));
    assert_eq!(
        lines(&gw2.dir, "long.log"),
        2,
        "interrupted run, then one more"
    );
}

#[tokio::test]
async fn finished_and_cancelled_calls_survive_kill_9() {
    let mut gw = builder("").start().await;
    let client = gw.client();
    let done = spawn(&gw, &client, "/r/slow/spawn", &json!({"x": 6})).await;
    let (status, before) = get_call(&gw, &client, &done, Some(10)).await;
    assert_eq!(status, 200, "{before}");
    let blocker = spawn(
        &gw,
        &client,
        "/r/one/spawn",
        &json!({"x": 7, "seconds": 1, "marker": "blocker.m"}),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || gw
            .dir
            .join("blocker.m")
            .exists())
        .await,
        "the blocker started"
    );
    let cancelled = spawn(
        &gw,
        &client,
        "/r/one/spawn",
        &json!({"x": 8, "marker": "cancelled.m"}),
    )
    .await;
    let resp = client
        .delete(gw.url(&format!("/calls/{cancelled}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.kill().await;

    let gw2 = restart(&gw, "").await;
    let client = gw2.client();
    let (status, after) = get_call(&gw2, &client, &done, None).await;
    assert_eq!((status, &after), (200, &before));
    let (status, body) = get_call(&gw2, &client, &blocker, Some(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"x": 7, "square": 49, "attempt": 2}));
    let (status, body) = get_call(&gw2, &client, &cancelled, Some(2)).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "call_cancelled");
    assert!(
        !gw2.dir.join("cancelled.m").exists(),
        "the cancelled call never ran"
    );
}
