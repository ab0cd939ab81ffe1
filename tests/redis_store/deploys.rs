//! Deploys and webhook deliveries in the Redis store: versions numbered
//! as the embedded store numbers them, shared by every replica on one
//! prefix and announced to them; a due delivery goes to one replica at a
//! time, leased until its attempt must be over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fngate::config::{OverlayKey, OverlayKind};
use fngate::store::deploys::DeployedTable;
use fngate::store::redis::{RedisSettings, RedisStore};
use fngate::store::{CallStore, StoreEvent};
use serde_json::json;

use crate::common::redis::RedisServer;

const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

fn key(kind: OverlayKind, name: &str) -> OverlayKey {
    OverlayKey {
        app: "demo".to_owned(),
        kind,
        name: name.to_owned(),
    }
}

/// A store on `server` under `prefix`: two of them on one prefix are two
/// replicas sharing the store.
async fn replica(server: &RedisServer, prefix: &str) -> Arc<RedisStore> {
    RedisStore::open(&RedisSettings {
        url: server.url(),
        prefix: prefix.to_owned(),
        claim_timeout: CLAIM_TIMEOUT,
    })
    .await
    .expect("the store opens on a running redis-server")
}

/// A fresh prefix, so tests sharing nothing never meet.
fn prefix() -> String {
    format!("d{}:", fngate::invocation::random_hex::<6>())
}

/// Queues a webhook delivery as the call scripts do when a call with a
/// `Callback-Url` ends: due at `due_ms`, no attempt made.
async fn queue_delivery(server: &RedisServer, prefix: &str, id: &str, due_ms: i64) {
    let due = due_ms.to_string();
    server
        .cli(&["ZADD", &format!("{prefix}deliveries"), &due, id])
        .await;
    let hash = format!("{prefix}delivery:{id}");
    let url = format!("http://hooks.test/{id}");
    server
        .cli(&["HSET", &hash, "url", &url, "attempts", "0"])
        .await;
}

/// Waits until `count` replicas listen on `prefix`'s event channel (a
/// store subscribes in the background after it opens).
async fn wait_for_listeners(server: &RedisServer, prefix: &str, count: u64) {
    let channel = format!("{prefix}events");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = server.cli(&["PUBSUB", "NUMSUB", &channel]).await;
        let listening: u64 = answer
            .lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if listening >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} replicas never listened on {channel} ({answer:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn versions_are_numbered_per_key_and_read_back_oldest_first() {
    let server = RedisServer::start().await;
    let store = super::store_on(&server, CLAIM_TIMEOUT).await;
    let cube = key(OverlayKind::Function, "cube");
    let one = json!({"backend": "exec", "command": ["a"], "timeout": "1.5s"});
    let two = json!({"backend": "exec", "command": ["b"], "big": 12345678901234567u64});
    let deploys = [
        (DeployedTable::Table(one.clone()), 10),
        (DeployedTable::Table(two.clone()), 20),
        (DeployedTable::Deleted, 30),
        (DeployedTable::File, 40),
        (DeployedTable::Table(one.clone()), 50),
    ];
    for (expected, (table, at)) in (1..).zip(deploys) {
        let version = store.record_deploy(cube.clone(), table, at).await.unwrap();
        assert_eq!(version, expected);
    }
    // Another key counts from 1 on its own; a class of the same name too.
    let square = key(OverlayKind::Function, "square");
    assert_eq!(
        store
            .record_deploy(square, DeployedTable::Deleted, 60)
            .await
            .unwrap(),
        1
    );
    let model = key(OverlayKind::Class, "cube");
    assert_eq!(
        store
            .record_deploy(model, DeployedTable::File, 70)
            .await
            .unwrap(),
        1
    );

    let versions = store.deploy_versions(cube.clone()).await.unwrap();
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert!(versions.iter().all(|v| v.key == cube));
    let times: Vec<i64> = versions.iter().map(|v| v.created_ms).collect();
    assert_eq!(times, [10, 20, 30, 40, 50]);
    assert_eq!(versions[0].table, DeployedTable::Table(one.clone()));
    assert_eq!(versions[1].table, DeployedTable::Table(two));
    assert_eq!(versions[2].table, DeployedTable::Deleted);
    assert_eq!(versions[3].table, DeployedTable::File);
    assert_eq!(versions[4].table, DeployedTable::Table(one));

    let never = key(OverlayKind::Function, "never");
    assert!(store.deploy_versions(never).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_latest_version_of_every_key_is_read_in_key_order() {
    let server = RedisServer::start().await;
    let store = super::store_on(&server, CLAIM_TIMEOUT).await;
    assert!(store.latest_deploys().await.unwrap().is_empty());
    let cube = key(OverlayKind::Function, "cube");
    let model = key(OverlayKind::Class, "Model");
    let other = OverlayKey {
        app: "alpha".to_owned(),
        kind: OverlayKind::Function,
        name: "echo".to_owned(),
    };
    let table = json!({"backend": "http", "url": "http://127.0.0.1:9/"});
    store
        .record_deploy(cube.clone(), DeployedTable::Table(table.clone()), 1)
        .await
        .unwrap();
    store
        .record_deploy(cube.clone(), DeployedTable::Deleted, 2)
        .await
        .unwrap();
    store
        .record_deploy(model.clone(), DeployedTable::Table(table.clone()), 3)
        .await
        .unwrap();
    store
        .record_deploy(other.clone(), DeployedTable::File, 4)
        .await
        .unwrap();
    store
        .record_deploy(other.clone(), DeployedTable::Table(table.clone()), 5)
        .await
        .unwrap();
    store
        .record_deploy(other.clone(), DeployedTable::File, 6)
        .await
        .unwrap();

    let latest = store.latest_deploys().await.unwrap();
    let seen: Vec<(&OverlayKey, u64, &DeployedTable, i64)> = latest
        .iter()
        .map(|v| (&v.key, v.version, &v.table, v.created_ms))
        .collect();
    assert_eq!(
        seen,
        [
            (&other, 3, &DeployedTable::File, 6),
            (&model, 1, &DeployedTable::Table(table), 3),
            (&cube, 2, &DeployedTable::Deleted, 2),
        ]
    );
}

#[tokio::test]
async fn a_deploy_of_a_kind_this_version_does_not_know_is_left_alone() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix).await;
    let cube = key(OverlayKind::Function, "cube");
    store
        .record_deploy(cube.clone(), DeployedTable::Deleted, 1)
        .await
        .unwrap();
    // As a later version, with a kind of table this one lacks, stores it.
    server
        .cli(&["SADD", &format!("{prefix}deploys"), "widget/demo/cube"])
        .await;
    server
        .cli(&[
            "RPUSH",
            &format!("{prefix}deploy:widget/demo/cube"),
            r#"{"created_ms":2}"#,
        ])
        .await;
    let latest = store.latest_deploys().await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].key, cube);
}

#[tokio::test]
async fn replicas_on_one_prefix_share_deploys_and_hear_of_each_new_one() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let first = replica(&server, &prefix).await;
    let second = replica(&server, &prefix).await;
    // A store under another prefix shares nothing.
    let stranger = super::store_on(&server, CLAIM_TIMEOUT).await;
    let mut heard = second.events().expect("a shared store has events");
    let mut own = first.events().expect("a shared store has events");
    wait_for_listeners(&server, &prefix, 2).await;

    let cube = key(OverlayKind::Function, "cube");
    let table = json!({"backend": "exec", "command": ["x"]});
    let version = first
        .record_deploy(cube.clone(), DeployedTable::Table(table.clone()), 7)
        .await
        .unwrap();
    assert_eq!(version, 1);
    for receiver in [&mut heard, &mut own] {
        let event = tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("the deploy is announced")
            .unwrap();
        assert_eq!(event, StoreEvent::Deployed);
    }

    let versions = second.deploy_versions(cube.clone()).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].table, DeployedTable::Table(table));
    // The second replica's deploy numbers on from the first one's.
    let version = second
        .record_deploy(cube.clone(), DeployedTable::Deleted, 8)
        .await
        .unwrap();
    assert_eq!(version, 2);
    let latest = first.latest_deploys().await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(
        (latest[0].version, &latest[0].table),
        (2, &DeployedTable::Deleted)
    );
    assert!(stranger.latest_deploys().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_taken_delivery_goes_to_no_other_replica_until_its_lease_lapses() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let first = replica(&server, &prefix).await;
    let second = replica(&server, &prefix).await;
    let now = 1_000_000;
    queue_delivery(&server, &prefix, "fc-hook", now).await;

    let (due, next) = first.due_deliveries(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].call_id, "fc-hook");
    assert_eq!(due[0].url, "http://hooks.test/fc-hook");
    assert_eq!(due[0].attempts, 0);
    // Due again when the lease lapses, which outlasts one attempt (10 s)
    // with room to wait for a slot.
    let lapses = next.expect("the leased delivery is due again later");
    assert!(lapses - now >= 60_000, "a lease of {} ms", lapses - now);

    let (due, next) = second.due_deliveries(now, 10).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(lapses));
    let (due, _) = second.due_deliveries(lapses - 1, 10).await.unwrap();
    assert!(due.is_empty(), "taken before its lease lapsed");
    // The first replica died mid-attempt: the second sends it.
    let (due, _) = second.due_deliveries(lapses, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].call_id.as_str(), due[0].attempts), ("fc-hook", 0));
    let (due, _) = first.due_deliveries(lapses, 10).await.unwrap();
    assert!(due.is_empty(), "the second replica holds it now");
}

#[tokio::test]
async fn attempts_are_recorded_and_a_delivery_that_ends_is_gone() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix).await;
    let now = 5_000_000;
    queue_delivery(&server, &prefix, "fc-retry", now).await;
    let (due, _) = store.due_deliveries(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);

    // The first attempt failed: due again in 2 s, one attempt made.
    let retry_at = now + 2_000;
    store
        .delivery_attempted("fc-retry".to_owned(), 1, Some(retry_at))
        .await
        .unwrap();
    let (due, next) = store.due_deliveries(retry_at - 1, 10).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(retry_at));
    let (due, _) = store.due_deliveries(retry_at, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);

    // Delivered: nothing is left of it.
    store
        .delivery_attempted("fc-retry".to_owned(), 2, None)
        .await
        .unwrap();
    let (due, next) = store.due_deliveries(i64::MAX / 2, 10).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, None);
    let hash = format!("{prefix}delivery:fc-retry");
    assert_eq!(server.cli(&["EXISTS", &hash]).await.trim(), "0");
    let queue = format!("{prefix}deliveries");
    assert_eq!(server.cli(&["ZCARD", &queue]).await.trim(), "0");

    // A late record of an attempt at a delivery that ended brings
    // nothing back.
    store
        .delivery_attempted("fc-retry".to_owned(), 3, Some(retry_at))
        .await
        .unwrap();
    assert_eq!(server.cli(&["EXISTS", &hash]).await.trim(), "0");
    assert_eq!(server.cli(&["ZCARD", &queue]).await.trim(), "0");
}

#[tokio::test]
async fn due_deliveries_come_oldest_first_up_to_the_limit_with_the_next_due_time() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix).await;
    let now = 9_000_000;
    queue_delivery(&server, &prefix, "fc-b", now - 100).await;
    queue_delivery(&server, &prefix, "fc-a", now - 200).await;
    queue_delivery(&server, &prefix, "fc-c", now).await;
    queue_delivery(&server, &prefix, "fc-later", now + 3_000).await;

    let (due, next) = store.due_deliveries(now, 2).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.call_id.as_str()).collect();
    assert_eq!(ids, ["fc-a", "fc-b"]);
    // fc-c is due and was left for the next read: the next due time is
    // the earliest above now, fc-later's.
    assert_eq!(next, Some(now + 3_000));
    let (due, next) = store.due_deliveries(now, 2).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.call_id.as_str()).collect();
    assert_eq!(ids, ["fc-c"]);
    assert_eq!(next, Some(now + 3_000));
    let (due, _) = store.due_deliveries(now + 3_000, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.call_id.as_str()).collect();
    assert_eq!(ids, ["fc-later"]);
}

#[tokio::test]
async fn a_delivery_whose_call_was_swept_is_dropped_unsent() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix).await;
    let now = 7_000_000;
    queue_delivery(&server, &prefix, "fc-gone", now).await;
    server
        .cli(&["DEL", &format!("{prefix}delivery:fc-gone")])
        .await;
    let (due, next) = store.due_deliveries(now, 10).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, None);
    let queue = format!("{prefix}deliveries");
    assert_eq!(server.cli(&["ZCARD", &queue]).await.trim(), "0");
}

#[tokio::test]
async fn deploys_and_deliveries_fail_as_unavailable_while_redis_is_down() {
    let mut server = RedisServer::start().await;
    let store = super::store_on(&server, CLAIM_TIMEOUT).await;
    server.kill().await;
    let cube = key(OverlayKind::Function, "cube");
    let started = Instant::now();
    let deploy = store.record_deploy(cube.clone(), DeployedTable::Deleted, 1);
    assert!(deploy.await.unwrap_err().is_transient());
    assert!(
        store
            .deploy_versions(cube)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(store.latest_deploys().await.unwrap_err().is_transient());
    assert!(
        store
            .due_deliveries(1, 10)
            .await
            .unwrap_err()
            .is_transient()
    );
    let attempted = store.delivery_attempted("fc-1".to_owned(), 1, None);
    assert!(attempted.await.unwrap_err().is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
