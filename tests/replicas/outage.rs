//! Redis killed (SIGKILL) and started again under the replicas: sync
//! calls keep working, spawns and reads answer 503 `overloaded` with
//! `Retry-After` while it is down, and every call accepted before or
//! after ends succeeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, accepted};
use crate::common::{HttpBackend, assert_problem, eventually, http_fn};

/// `r/sq`: an http function squaring `x` (cheaper than an exec run).
fn square_fn(backend: &HttpBackend) -> String {
    http_fn(
        "r",
        "sq",
        &[backend.url("/invoke/square")],
        "timeout = \"30s\"",
    )
}

#[tokio::test]
async fn with_redis_down_sync_calls_work_and_spawns_answer_503_then_recover() {
    let backend = HttpBackend::start().await;
    let sq = square_fn(&backend);
    let mut cluster = Cluster::start(2, "2s", |_, b| b.toml(&sq)).await;
    let earlier = cluster.spawn(0, "/r/sq/spawn", &json!({"x": 4})).await;
    let done = cluster.finish(1, &earlier, Duration::from_secs(20)).await;
    assert_eq!((done.status, &done.body), (200, &json!(16)), "{done:?}");

    cluster.redis.kill().await;
    for i in 0..2 {
        without_redis(&cluster, i, &earlier).await;
    }

    cluster.redis.restart().await;
    let restarted = Instant::now();
    let later = accepted_again(&cluster, Duration::from_secs(10)).await;
    println!(
        "spawns accepted again {:?} after the restart",
        restarted.elapsed()
    );
    for i in 0..2 {
        let read = cluster.get(i, &earlier, None).await;
        assert_eq!((read.status, &read.body), (200, &json!(16)), "{read:?}");
        let end = cluster.finish(i, &later, Duration::from_secs(20)).await;
        assert_eq!((end.status, &end.body), (200, &json!(36)), "{end:?}");
    }
}

/// With Redis down, replica `i` answers a sync call, refuses a spawn at
/// once and cannot read the `earlier` call: both 503 with `Retry-After`.
async fn without_redis(cluster: &Cluster, i: usize, earlier: &str) {
    let sync = cluster.post(i, "/r/sq", &json!({"x": 3}), &[]).await;
    assert_eq!(sync.status(), 200, "a sync call works without Redis");
    assert_eq!(sync.json::<Value>().await.expect("JSON"), json!(9));

    let sent = Instant::now();
    let spawn = cluster.post(i, "/r/sq/spawn", &json!({"x": 5}), &[]).await;
    let took = sent.elapsed();
    assert!(
        spawn.headers().contains_key("retry-after"),
        "a refused spawn says when to come back: {:?}",
        spawn.headers()
    );
    assert_problem(spawn, 503, "overloaded").await;
    assert!(
        took < Duration::from_secs(5),
        "a spawn is refused in {took:?}"
    );

    let read = cluster.get_response(i, earlier, None).await;
    assert!(
        read.headers().contains_key("retry-after"),
        "a refused read says when to come back: {:?}",
        read.headers()
    );
    assert_problem(read, 503, "overloaded").await;
}

/// Spawns `r/sq` with `x` 6 on A until one is accepted (within `within`):
/// its call id.
async fn accepted_again(cluster: &Cluster, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let resp = cluster.post(0, "/r/sq/spawn", &json!({"x": 6}), &[]).await;
        if resp.status() == 202 {
            return accepted(resp, "A").await;
        }
        let answer = resp.text().await.unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "spawns are accepted again within {within:?} of the restart: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One spawn of the load: what it asked, when, and what it got.
struct Spawned {
    x: u64,
    sent: Instant,
    answered: Instant,
    status: u16,
    body: Value,
}

/// `tasks` loops spawning `r/sq` on the replicas (round robin), each
/// counting its 202s in `accepted` and its other answers in its
/// replica's `refused[i]`, until `stop`.
fn spawn_load(
    cluster: &Cluster,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    accepted: &Arc<AtomicUsize>,
    refused: &[Arc<AtomicUsize>],
) -> Vec<tokio::task::JoinHandle<Vec<Spawned>>> {
    (0..tasks)
        .map(|t| {
            let i = t % cluster.replicas.len();
            let client = cluster.client(i).clone();
            let url = cluster.replicas[i].url("/r/sq/spawn");
            let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused[i].clone());
            tokio::spawn(async move {
                let mut spawned = Vec::new();
                let mut x = t as u64 * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    x += 1;
                    let sent = Instant::now();
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(json!({"x": x}).to_string())
                        .send()
                        .await
                        .expect("the replica answers");
                    let status = resp.status().as_u16();
                    let body = resp.json().await.expect("a JSON answer");
                    let counter = if status == 202 { &accepted } else { &refused };
                    counter.fetch_add(1, Ordering::Relaxed);
                    spawned.push(Spawned {
                        x,
                        sent,
                        answered: Instant::now(),
                        status,
                        body,
                    });
                    // Paced, so a refusing replica is not flooded.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                spawned
            })
        })
        .collect()
}

#[tokio::test]
async fn a_redis_restart_mid_load_loses_no_accepted_call() {
    let backend = HttpBackend::start().await;
    let sq = square_fn(&backend);
    let mut cluster = Cluster::start(2, "2s", |_, b| b.toml(&sq)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let load = spawn_load(&cluster, 8, &stop, &accepted, &refused);
    let count = |c: &Arc<AtomicUsize>| c.load(Ordering::Relaxed);

    assert!(
        eventually(Duration::from_secs(30), || count(&accepted) >= 40).await,
        "40 spawns accepted within 30 s"
    );
    cluster.redis.kill().await;
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || refused
            .iter()
            .all(|r| count(r) >= 8))
        .await,
        "spawns are refused on both replicas while Redis is down"
    );
    let restarting = Instant::now();
    cluster.redis.restart().await;
    let after_restart = count(&accepted);
    assert!(
        eventually(Duration::from_secs(30), || count(&accepted)
            >= after_restart + 40)
        .await,
        "40 more spawns accepted within 30 s of the restart"
    );
    stop.store(true, Ordering::Relaxed);
    let mut spawned = Vec::new();
    for task in load {
        spawned.extend(task.await.expect("a spawning task"));
    }
    println!(
        "{} spawns: {} accepted, {} refused; Redis down for {:?}",
        spawned.len(),
        count(&accepted),
        refused.iter().map(count).sum::<usize>(),
        restarting - killed
    );

    let calls = accepted_calls(&spawned, killed, restarting);
    let cluster = &cluster;
    let ends = calls.iter().enumerate().map(|(n, (x, id))| async move {
        (*x, cluster.finish(n % 2, id, Duration::from_secs(60)).await)
    });
    for (x, end) in futures_util::future::join_all(ends).await {
        assert_eq!(end.status, 200, "an accepted call ends succeeded: {end:?}");
        assert_eq!(end.body, json!(x * x), "{end:?}");
    }
}

/// The accepted spawns' `x` and call id, once every answer is checked:
/// 202 or 503 `overloaded`, and 503 for each spawn sent after `killed`
/// and answered before `restarting`.
fn accepted_calls(spawned: &[Spawned], killed: Instant, restarting: Instant) -> Vec<(u64, String)> {
    let mut calls = Vec::new();
    for s in spawned {
        match s.status {
            202 => calls.push((
                s.x,
                s.body["call_id"].as_str().expect("a call_id").to_owned(),
            )),
            503 => assert_eq!(s.body["code"], "overloaded", "{}", s.body),
            status => panic!("a spawn answered {status}: {}", s.body),
        }
        if s.sent >= killed && s.answered <= restarting {
            assert_eq!(s.status, 503, "a spawn while Redis is down: {}", s.body);
        }
    }
    calls
}
