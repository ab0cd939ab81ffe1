//! Several gateway replicas on one real redis-server, black-box: a call
//! spawned on one replica is read, long-polled and cancelled on the
//! others; a killed replica's calls end on the others with `attempt` 2;
//! idempotency keys, webhook deliveries and deploys are shared; a Redis
//! outage loses no accepted call and costs only spawns (503), not sync
//! calls.

mod common;

#[path = "admin/support.rs"]
mod support;

#[path = "replicas/cluster.rs"]
mod cluster;
#[path = "replicas/outage.rs"]
mod outage;
#[path = "replicas/receiver.rs"]
mod receiver;
#[path = "replicas/shared.rs"]
mod shared;
#[path = "replicas/takeover.rs"]
mod takeover;

use std::time::{Duration, Instant};

use cluster::{Cluster, NAMES, accepted};
use common::{assert_problem, eventually, process_alive};
use serde_json::json;

#[tokio::test]
async fn a_call_spawned_on_one_replica_is_read_long_polled_and_cancelled_on_the_others() {
    let cluster = Cluster::start(3, "2s", |_, b| b).await;
    read_and_long_polled_elsewhere(&cluster).await;
    cancelled_elsewhere(&cluster).await;
}

/// Spawned on A, seen on B before it ends, and long-polled there: the
/// poll answers when the call ends, wherever it ran; C reads the same.
async fn read_and_long_polled_elsewhere(cluster: &Cluster) {
    let (a, b, c) = (0, 1, 2);
    let id = cluster
        .spawn(a, "/r/work/spawn", &json!({"x": 7, "seconds": 1}))
        .await;
    let early = cluster.get(b, &id, None).await;
    assert_eq!(early.status, 202, "B sees the call in progress: {early:?}");
    assert_eq!(early.body["call_id"], id.as_str(), "{early:?}");
    assert_eq!(early.retry_after.as_deref(), Some("1"), "{early:?}");
    assert!(
        matches!(early.body["status"].as_str(), Some("pending" | "running")),
        "{early:?}"
    );
    let polled = Instant::now();
    let done = cluster.get(b, &id, Some(20)).await;
    println!("B's long poll answered after {:?}", polled.elapsed());
    assert_eq!(
        done.status, 200,
        "the long poll on B ends with the result: {done:?}"
    );
    let runs = cluster.runs_of(&id);
    assert_eq!(runs.len(), 1, "the call ran once: {runs:?}");
    assert_eq!(
        done.body,
        json!({"x": 7, "replica": runs[0].replica, "attempt": 1}),
        "the result of its one run"
    );
    assert_eq!(done.attempt, Some(1), "X-Attempt: {done:?}");
    for i in [a, c] {
        let read = cluster.get(i, &id, None).await;
        assert_eq!(
            (read.status, &read.body),
            (200, &done.body),
            "{} reads the same result",
            NAMES[i]
        );
    }
}

/// A slow call spawned on A, cancelled on C while B long-polls it: its
/// process is stopped on whichever replica runs it, and every replica
/// answers 410.
async fn cancelled_elsewhere(cluster: &Cluster) {
    let (a, b, c) = (0, 1, 2);
    let slow = cluster
        .spawn(a, "/r/work/spawn", &json!({"seconds": 60}))
        .await;
    let started = eventually(Duration::from_secs(20), || {
        !cluster.runs_of(&slow).is_empty()
    });
    assert!(started.await, "the slow call starts within 20 s");
    let run = cluster.runs_of(&slow).remove(0);
    println!("the slow call runs on {} as pid {}", run.replica, run.pid);
    assert!(process_alive(run.pid), "the slow call's process runs");
    let poll = cluster.get(b, &slow, Some(20));
    let cancel = async { (cluster.cancel(c, &slow).await, Instant::now()) };
    let (polled, (cancelled, cancelled_at)) = tokio::join!(poll, cancel);
    assert_eq!(cancelled.status, 200, "C cancels it: {cancelled:?}");
    assert_eq!(
        cancelled.body,
        json!({"call_id": slow, "status": "cancelled"})
    );
    assert_eq!(
        polled.status, 410,
        "B's long poll ends with the cancel: {polled:?}"
    );
    assert_eq!(polled.body["code"], "call_cancelled", "{polled:?}");
    assert!(
        eventually(Duration::from_secs(10), || !process_alive(run.pid)).await,
        "the cancelled call's process (pid {} on {}) is gone within 10 s of the cancel",
        run.pid,
        run.replica
    );
    println!(
        "its process was gone {:?} after the cancel",
        cancelled_at.elapsed()
    );
    for i in [a, b, c] {
        let resp = cluster.get_response(i, &slow, None).await;
        assert_problem(resp, 410, "call_cancelled").await;
    }
    let runs = cluster.runs_of(&slow);
    assert_eq!(
        runs.len(),
        1,
        "the cancelled call never runs again: {runs:?}"
    );
}

#[tokio::test]
async fn an_idempotency_key_gives_the_same_call_on_every_replica() {
    let cluster = Cluster::start(3, "2s", |_, b| b).await;
    let key = [("idempotency-key", "order-42")];
    let body = json!({"x": 5});
    let first = accepted(cluster.post(0, "/r/work/spawn", &body, &key).await, "A").await;
    let again = accepted(cluster.post(1, "/r/work/spawn", &body, &key).await, "B").await;
    assert_eq!(again, first, "B gives the call A made for the key");
    let other = cluster
        .post(2, "/r/work/spawn", &json!({"x": 6}), &key)
        .await;
    assert_problem(other, 422, "idempotency_mismatch").await;

    // Two replicas given a new key at the same moment make one call.
    let racing = [("idempotency-key", "order-43")];
    let (on_a, on_c) = tokio::join!(
        cluster.post(0, "/r/work/spawn", &body, &racing),
        cluster.post(2, "/r/work/spawn", &body, &racing),
    );
    let (on_a, on_c) = (accepted(on_a, "A").await, accepted(on_c, "C").await);
    assert_eq!(on_a, on_c, "a key raced on two replicas makes one call");
    assert_ne!(on_a, first, "another key, another call");

    for id in [&first, &on_a] {
        let done = cluster.finish(1, id, Duration::from_secs(20)).await;
        assert_eq!(done.status, 200, "{done:?}");
        assert_eq!(done.body["x"], 5, "{done:?}");
        assert_eq!(cluster.runs_of(id).len(), 1, "call {id} ran once");
    }
    assert_eq!(cluster.runs().len(), 2, "two keys, two runs in all");

    // What the replicas wrote is under their prefix only.
    let keys = cluster.redis.cli(&["--scan"]).await;
    let keys: Vec<&str> = keys.lines().collect();
    assert!(
        keys.iter().any(|k| k.contains("idem")),
        "the keys are stored: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with(&cluster.prefix)),
        "every key starts with {}: {keys:?}",
        cluster.prefix
    );
}
