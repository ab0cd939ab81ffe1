//! A replica killed with SIGKILL while it runs calls: once their leases
//! lapse (`claim_timeout`), the other replicas run them again, with
//! `attempt` 2, and each ends once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{Answer, Cluster, NAMES};
use crate::common::eventually;

const CALLS: usize = 50;

#[tokio::test]
async fn calls_of_a_killed_replica_end_on_the_others_with_attempt_2() {
    let mut cluster = Cluster::start(3, "2s", |_, b| b).await;
    // Every run waits for the gate: all 50 are running when the replica
    // is killed, and none ends before.
    let gate = cluster.shared_path("gate");
    let ids = all_running_behind(&cluster, gate.to_str().expect("a UTF-8 temp path")).await;
    let before = cluster.runs();
    let mut per_replica: HashMap<&str, usize> = HashMap::new();
    for run in &before {
        *per_replica.entry(run.replica.as_str()).or_default() += 1;
    }
    println!("runs per replica before the kill: {per_replica:?}");
    let victim = (0..3)
        .max_by_key(|&i| per_replica.get(NAMES[i]).copied().unwrap_or(0))
        .expect("three replicas");
    let on_victim: Vec<&str> = before
        .iter()
        .filter(|r| r.replica == NAMES[victim])
        .map(|r| r.call.as_str())
        .collect();
    assert!(!on_victim.is_empty(), "the killed replica runs some calls");

    cluster.replicas[victim].kill().await;
    let killed = Instant::now();
    std::fs::write(&gate, "").expect("open the gate");

    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let finals = ids.iter().enumerate().map(|(n, id)| {
        let cluster = &cluster;
        let reader = survivors[n % survivors.len()];
        async move { cluster.finish(reader, id, Duration::from_secs(60)).await }
    });
    let finals = futures_util::future::join_all(finals).await;
    println!(
        "all {CALLS} ended {:?} after the kill of {} ({} of them ran there)",
        killed.elapsed(),
        NAMES[victim],
        on_victim.len()
    );
    for (x, (id, end)) in ids.iter().zip(&finals).enumerate() {
        assert_ended(
            &cluster,
            id,
            x,
            end,
            on_victim.contains(&id.as_str()),
            NAMES[victim],
        );
    }
}

/// Call `id` (of `x`) ended succeeded, started at most twice, its
/// `X-Attempt` the run its result came from: on a survivor with attempt
/// 2 when it ran on `victim`, else on its first run unless its lease
/// lapsed (a replica too slow to heartbeat for `claim_timeout`).
fn assert_ended(
    cluster: &Cluster,
    id: &str,
    x: usize,
    end: &Answer,
    on_victim: bool,
    victim: &str,
) {
    assert_eq!(end.status, 200, "call {id} ends succeeded: {end:?}");
    assert_eq!(end.body["x"], x, "{id}: {end:?}");
    assert_eq!(
        end.attempt,
        end.body["attempt"].as_u64(),
        "{id}: X-Attempt is the run the result came from: {end:?}"
    );
    let runs = cluster.runs_of(id);
    assert!(
        (1..=2).contains(&runs.len()),
        "{id} started at most twice: {runs:?}"
    );
    if on_victim {
        assert_eq!(
            end.body["attempt"], 2,
            "{id} ran again after the kill: {end:?}"
        );
        assert_ne!(end.body["replica"], victim, "{id}: {end:?}");
        assert_eq!(runs.len(), 2, "{id} started twice: {runs:?}");
        assert_eq!(runs[1].attempt, 2, "{id}: {runs:?}");
    } else if runs.len() == 1 {
        assert_eq!(end.body["attempt"], 1, "{id} ran once: {end:?}");
    } else {
        println!("{id} was taken over from a live replica: {runs:?}");
    }
}

/// Spawns the 50 calls (`x` 0 to 49, round robin over the replicas),
/// each waiting for `gate`, and waits until all of them run, each once:
/// their ids by `x`.
async fn all_running_behind(cluster: &Cluster, gate: &str) -> Vec<String> {
    let spawns = (0..CALLS).map(|x| {
        let body = json!({"x": x, "gate": gate});
        async move { cluster.spawn(x % 3, "/r/work/spawn", &body).await }
    });
    let ids: Vec<String> = futures_util::future::join_all(spawns).await;
    assert!(
        eventually(Duration::from_secs(60), || cluster.runs().len() >= CALLS).await,
        "all {CALLS} calls run within 60 s ({} do)",
        cluster.runs().len()
    );
    let runs = cluster.runs();
    assert_eq!(runs.len(), CALLS, "each call started once: {runs:?}");
    ids
}
