//! Leases in the Redis store: a lapsed one is taken over by another
//! replica (a call back to its queue, a map input back to its map), a
//! heartbeat keeps one, a cancelled map drops its inputs' leases; and the
//! call-token key every replica shares.

use std::time::{Duration, Instant};

use fngate::store::redis::RedisStore;
use fngate::store::{CallState, CallStore, Cancelled, TakenOver, now_ms};

use super::{Cli, LONG, call, count, get, insert, prefix, replica, store_on};
use crate::common::redis::RedisServer;

/// Calls `take_over` on `store` until it takes something, for up to 10 s.
async fn taken_over(store: &RedisStore) -> TakenOver {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let taken = store.take_over().await.expect("take-over answers");
        if taken != TakenOver::default() {
            return taken;
        }
        assert!(Instant::now() < deadline, "no lease lapsed in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_lapsed_lease_puts_the_call_back_for_another_replica() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, Duration::from_secs(1)).await;
    let b = replica(&server, &prefix, Duration::from_secs(1)).await;
    insert(&a, call("fc-1", "Model.predict")).await;
    let claimed = a.claim_next("demo", "Model.predict").await.expect("claims");
    assert_eq!(claimed.map(|r| r.attempt), Some(1));
    assert_eq!(b.take_over().await.expect("answers"), TakenOver::default());

    // A never extends its lease.
    let taken = taken_over(&b).await;
    assert_eq!(
        taken.functions,
        [("demo".to_owned(), "Model.predict".to_owned())]
    );
    assert!(taken.maps.is_empty());
    assert_eq!(b.pending(), 1);
    assert_eq!(get(&b, "fc-1").await.state, CallState::Pending);
    let again = b.claim_next("demo", "Model.predict").await.expect("claims");
    assert_eq!(again.map(|r| r.attempt), Some(2));
    assert_eq!(count(&b, CallState::Running).await, 1);
    assert_eq!(count(&b, CallState::Pending).await, 0);
}

#[tokio::test]
async fn a_run_whose_lease_lapsed_cannot_end_the_call_claimed_again() {
    use fngate::store::Outcome;
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, Duration::from_secs(1)).await;
    let b = replica(&server, &prefix, Duration::from_secs(1)).await;
    insert(&a, call("fc-late", "square")).await;
    a.claim_next("demo", "square").await.expect("claims");
    taken_over(&b).await;
    let again = b.claim_next("demo", "square").await.expect("claims");
    assert_eq!(again.map(|r| r.attempt), Some(2));

    // A's run of attempt 1 ends late: the call is on attempt 2, B's.
    let late = a.finish(
        "fc-late".into(),
        Outcome::Succeeded(b"1".to_vec()),
        i64::MAX,
    );
    assert!(
        !late.await.expect("answers"),
        "the late run is not recorded"
    );
    assert_eq!(get(&b, "fc-late").await.state, CallState::Running);
    let ended = b.finish(
        "fc-late".into(),
        Outcome::Succeeded(b"2".to_vec()),
        i64::MAX,
    );
    assert!(ended.await.expect("answers"));
    let record = get(&a, "fc-late").await;
    assert_eq!(record.attempt, 2);
    assert_eq!(record.outcome, Some(Outcome::Succeeded(b"2".to_vec())));
}

#[tokio::test]
async fn a_heartbeat_keeps_a_lease_past_the_claim_timeout() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, Duration::from_secs(1)).await;
    let b = replica(&server, &prefix, Duration::from_secs(1)).await;
    insert(&a, call("fc-1", "square")).await;
    a.claim_next("demo", "square").await.expect("claims");
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        a.heartbeat(vec!["fc-1".to_owned(), "fc-none".to_owned()])
            .await
            .expect("extends");
        assert_eq!(b.take_over().await.expect("answers"), TakenOver::default());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(b.take_over().await.expect("answers"), TakenOver::default());
    assert_eq!(get(&b, "fc-1").await.state, CallState::Running);
    let none = Cli::new(&server, &prefix)
        .run("ZSCORE @leases fc-none")
        .await;
    assert_eq!(none, "", "a heartbeat makes no lease");
}

/// A map's hash as the maps part writes it: running, with `rest` (name
/// value pairs) after its identity.
fn map_hash(map: &str, rest: &str) -> String {
    format!(
        "HSET @call:{map} id {map} app demo function square state 1 attempt 0 created_ms 1 {rest}"
    )
}

#[tokio::test]
async fn a_lapsed_map_input_goes_back_to_its_map() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix, LONG).await;
    let cli = Cli::new(&server, &prefix);
    // Input 3 running (its lease lapsed long ago), input 4 ended (a
    // lease left over), 0 to 2 pending.
    let map = "fc-map-1";
    cli.run(&map_hash(
        map,
        "map_inputs 5 inputs_pending 3 inputs_running 1 inputs_succeeded 1",
    ))
    .await;
    cli.run(&format!("HSET @map:{map}:inputs 3:s 1 4:s 2"))
        .await;
    cli.run(&format!("RPUSH @map:{map}:pending 0 1 2")).await;
    cli.run(&format!("SADD @map:{map}:running 3")).await;
    cli.run(&format!("ZADD @leases 1 {map}-3 1 {map}-4")).await;

    let taken = store.take_over().await.expect("takes over");
    assert_eq!(taken.maps, [map.to_owned()]);
    assert!(taken.functions.is_empty());
    assert_eq!(cli.run(&format!("HGET @map:{map}:inputs 3:s")).await, "0");
    let ended = cli.run(&format!("HGET @map:{map}:inputs 4:s")).await;
    assert_eq!(ended, "2", "an ended input stays ended");
    let pending = cli.run(&format!("LRANGE @map:{map}:pending 0 -1")).await;
    assert_eq!(
        pending.split_whitespace().collect::<Vec<_>>(),
        ["3", "0", "1", "2"]
    );
    assert_eq!(cli.run(&format!("SCARD @map:{map}:running")).await, "0");
    assert_eq!(
        cli.run(&format!("HGET @call:{map} inputs_running")).await,
        "0"
    );
    assert_eq!(
        cli.run(&format!("HGET @call:{map} inputs_pending")).await,
        "4"
    );
    assert_eq!(cli.run("ZCARD @leases").await, "0", "both leases dropped");
    assert_eq!(
        get(&store, map).await.state,
        CallState::Running,
        "the map runs on"
    );
}

#[tokio::test]
async fn a_cancelled_map_drops_its_open_inputs_and_their_leases() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix, LONG).await;
    let cli = Cli::new(&server, &prefix);
    let map = "fc-map-2";
    let counts = "map_inputs 4 inputs_pending 2 inputs_running 1 inputs_succeeded 1";
    cli.run(&map_hash(
        map,
        &format!("{counts} callback_url https://hooks.example/m"),
    ))
    .await;
    cli.run("HINCRBY @states 1 1").await;
    cli.run(&format!("RPUSH @map:{map}:pending 1 2")).await;
    cli.run(&format!("SADD @map:{map}:running 0")).await;
    cli.run(&format!("SADD @maps {map}")).await;
    cli.run(&format!("ZADD @leases 99999999999999 {map}-0"))
        .await;

    let now = now_ms();
    let cancelled = store
        .cancel(map.to_owned(), now, now + 60_000)
        .await
        .expect("cancels");
    assert_eq!(cancelled, Cancelled::Now(CallState::Running));
    assert_eq!(
        cli.run("ZCARD @leases").await,
        "0",
        "the input's lease is dropped"
    );
    for gone in ["pending", "running"] {
        let exists = cli.run(&format!("EXISTS @map:{map}:{gone}")).await;
        assert_eq!(exists, "0", "{gone} is gone");
    }
    assert_eq!(cli.run(&format!("SISMEMBER @maps {map}")).await, "0");
    for (counter, value) in [
        ("inputs_pending", "0"),
        ("inputs_running", "0"),
        ("inputs_cancelled", "3"),
        ("inputs_succeeded", "1"),
    ] {
        let stored = cli.run(&format!("HGET @call:{map} {counter}")).await;
        assert_eq!(stored, value, "{counter}");
    }
    let record = get(&store, map).await;
    assert_eq!(record.state, CallState::Cancelled);
    assert_eq!(record.map_inputs, Some(4));
    let due = cli.run(&format!("ZSCORE @deliveries {map}")).await;
    assert!(!due.is_empty(), "its webhook is queued");
    assert_eq!(count(&store, CallState::Cancelled).await, 1);
    assert_eq!(count(&store, CallState::Running).await, 0);
}

#[tokio::test]
async fn every_replica_signs_call_tokens_with_one_key() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, LONG).await;
    let b = replica(&server, &prefix, LONG).await;
    let key = a.shared_secret().await.expect("answers").expect("a key");
    assert_eq!(key.len(), 32);
    assert_eq!(b.shared_secret().await.expect("answers"), Some(key.clone()));
    assert_eq!(a.shared_secret().await.expect("answers"), Some(key.clone()));
    let other = store_on(&server, LONG).await;
    assert_ne!(other.shared_secret().await.expect("answers"), Some(key));
}
