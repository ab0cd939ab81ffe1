//! Calls and leases in the Redis store, through the `CallStore` trait:
//! stored and read back whole, idempotency, claims shared by replicas
//! (each call to one of them, oldest first), the compare-and-set ends,
//! leases that lapse and are taken over, the sweep, counts, and a Redis
//! that goes away and comes back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fngate::invocation::Principal;
use fngate::store::redis::{RedisSettings, RedisStore};
use fngate::store::{
    CallState, CallStore, Cancelled, FailureKind, Inserted, NewCall, Origin, Outcome, StoreError,
    now_ms,
};

use super::store_on;
use crate::common::redis::RedisServer;

#[path = "calls/leases.rs"]
mod leases;

const LONG: Duration = Duration::from_secs(30);

/// A store on `server` under `prefix`: two of them on one prefix are two
/// replicas sharing the store.
async fn replica(server: &RedisServer, prefix: &str, claim_timeout: Duration) -> Arc<RedisStore> {
    RedisStore::open(&RedisSettings {
        url: server.url(),
        prefix: prefix.to_owned(),
        claim_timeout,
    })
    .await
    .expect("the store opens on a running redis-server")
}

fn prefix() -> String {
    format!("c{}:", fngate::invocation::random_hex::<6>())
}

/// redis-cli on a test's server, for looks at the keys: a command split
/// at spaces, `@` standing for the store's prefix; answers the output
/// trimmed.
struct Cli<'a> {
    server: &'a RedisServer,
    prefix: &'a str,
}

impl<'a> Cli<'a> {
    fn new(server: &'a RedisServer, prefix: &'a str) -> Cli<'a> {
        Cli { server, prefix }
    }

    async fn run(&self, command: &str) -> String {
        let command = command.replace('@', self.prefix);
        let args: Vec<&str> = command.split_whitespace().collect();
        self.server.cli(&args).await.trim().to_owned()
    }
}

fn call(id: &str, function: &str) -> NewCall {
    NewCall {
        id: id.to_owned(),
        app: "demo".to_owned(),
        function: function.to_owned(),
        args: "[1]".to_owned(),
        kwargs: "{}".to_owned(),
        owner: None,
        idempotency: None,
        callback_url: None,
        state: CallState::Pending,
        from_sync: false,
        forward: None,
        principal: None,
        parameters: None,
        origin: None,
        created_ms: now_ms(),
    }
}

fn with_key(mut call: NewCall, key: &str, digest: &[u8]) -> NewCall {
    call.idempotency = Some((key.to_owned(), digest.to_vec()));
    call
}

async fn insert(store: &RedisStore, call: NewCall) {
    let inserted = store.insert(call).await.expect("the insert is stored");
    assert!(matches!(inserted, Inserted::Created), "{inserted:?}");
}

async fn get(store: &RedisStore, id: &str) -> fngate::store::CallRecord {
    store
        .get(id)
        .await
        .expect("the read answers")
        .unwrap_or_else(|| panic!("call {id} is stored"))
}

async fn count(store: &RedisStore, state: CallState) -> u64 {
    let counts = store.count_by_state().await.expect("the counts read");
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

fn ids(records: &[fngate::store::CallRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn a_call_reads_back_with_every_field_it_was_stored_with() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    let mut full = call("fc-full-1", "Model.predict");
    full.kwargs = "{\"x\":2}".to_owned();
    full.owner = Some("alice".to_owned());
    full.callback_url = Some("https://hooks.example/x".to_owned());
    full.forward = Some(vec![0, 159, 255, 10, 13]);
    full.principal = Some(Principal {
        subject: "alice".to_owned(),
        issuer: Some("https://issuer.example".to_owned()),
    });
    full.parameters = Some("{\"size\":\"large\"}".to_owned());
    full.origin = Some(Origin {
        parent_call_id: Some("fc-parent".to_owned()),
        depth: 2,
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
        scopes: vec!["invoke:demo/*".to_owned()],
    });
    full = with_key(full, "k-1", &[1, 2, 255]);
    insert(&store, full.clone()).await;
    let record = get(&store, "fc-full-1").await;
    assert_eq!(record.id, full.id);
    assert_eq!(record.app, full.app);
    assert_eq!(record.function, full.function);
    assert_eq!(record.args, full.args);
    assert_eq!(record.kwargs, full.kwargs);
    assert_eq!(record.owner, full.owner);
    assert_eq!(record.callback_url, full.callback_url);
    assert_eq!(record.state, CallState::Pending);
    assert_eq!(record.attempt, 0);
    assert_eq!(record.created_ms, full.created_ms);
    assert_eq!(record.started_ms, None);
    assert_eq!(record.finished_ms, None);
    assert_eq!(record.expires_ms, None);
    assert_eq!(record.outcome, None);
    assert!(!record.from_sync);
    assert_eq!(record.forward, full.forward);
    assert_eq!(record.principal, full.principal);
    assert_eq!(record.parameters, full.parameters);
    assert_eq!(record.origin, full.origin);
    assert_eq!(record.map_inputs, None);
    assert_eq!(store.get("fc-none").await.expect("the read answers"), None);
}

#[tokio::test]
async fn an_adopted_sync_call_is_stored_running_in_its_first_attempt() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    insert(&store, call("fc-spawned", "cube")).await;
    let mut adopted = call("fc-adopted", "square");
    adopted.state = CallState::Running;
    adopted.from_sync = true;
    insert(&store, adopted.clone()).await;
    let record = get(&store, "fc-adopted").await;
    assert_eq!(record.state, CallState::Running);
    assert_eq!(record.attempt, 1);
    assert_eq!(record.started_ms, Some(adopted.created_ms));
    assert!(record.from_sync);
    assert_eq!(store.pending(), 1, "only the first call is pending");
    let taken = store
        .claim_batch("demo", "square", 10)
        .await
        .expect("claims");
    assert!(taken.is_empty(), "a running call is not in the queue");
}

#[tokio::test]
async fn an_idempotency_key_answers_the_call_it_made() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    insert(&store, with_key(call("fc-a", "square"), "k", b"digest-1")).await;

    let again = store
        .insert(with_key(call("fc-b", "square"), "k", b"digest-1"))
        .await
        .expect("answers");
    let Inserted::Existing {
        record,
        same_request,
    } = again
    else {
        panic!("the key made a call already: {again:?}");
    };
    assert_eq!(record.id, "fc-a");
    assert!(same_request);

    let other = store
        .insert(with_key(call("fc-c", "square"), "k", b"digest-2"))
        .await
        .expect("answers");
    assert!(
        matches!(&other, Inserted::Existing { record, same_request: false } if record.id == "fc-a"),
        "{other:?}"
    );

    // The key is the owner's: another owner's same key makes a new call,
    // and so does the same key for another function.
    let mut bob = with_key(call("fc-d", "square"), "k", b"digest-1");
    bob.owner = Some("bob".to_owned());
    insert(&store, bob).await;
    insert(&store, with_key(call("fc-e", "cube"), "k", b"digest-1")).await;
    assert_eq!(get(&store, "fc-d").await.owner.as_deref(), Some("bob"));
    assert!(store.get("fc-b").await.expect("answers").is_none());
    assert_eq!(store.pending(), 3);
}

#[tokio::test]
async fn a_claim_takes_the_oldest_first_counts_the_attempt_and_takes_each_once() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    for n in 0..5 {
        insert(&store, call(&format!("fc-{n}"), "square")).await;
    }
    insert(&store, call("fc-other", "cube")).await;
    assert!(store.has_pending("demo", "square").await.expect("answers"));
    assert_eq!(store.pending(), 6);

    let before = now_ms();
    let first = store
        .claim_batch("demo", "square", 2)
        .await
        .expect("claims");
    assert_eq!(ids(&first), ["fc-0", "fc-1"]);
    for record in &first {
        assert_eq!(record.state, CallState::Running);
        assert_eq!(record.attempt, 1);
        assert!(record.started_ms.is_some_and(|t| t >= before));
    }
    assert_eq!(store.pending(), 4);
    let rest = store
        .claim_batch("demo", "square", 10)
        .await
        .expect("claims");
    assert_eq!(ids(&rest), ["fc-2", "fc-3", "fc-4"], "fewer: none left");
    assert!(!store.has_pending("demo", "square").await.expect("answers"));
    let none = store.claim_next("demo", "square").await.expect("claims");
    assert_eq!(none, None);
    assert_eq!(get(&store, "fc-0").await.state, CallState::Running);
    assert!(store.has_pending("demo", "cube").await.expect("answers"));
    assert!(!store.has_pending("demo", "nothing").await.expect("answers"));
    assert_eq!(store.pending(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claiming_one_queue_at_once_share_it_without_overlap() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, LONG).await;
    let b = replica(&server, &prefix, LONG).await;
    let spawned: Vec<String> = (0..200).map(|n| format!("fc-{n:03}")).collect();
    for id in &spawned {
        insert(&a, call(id, "square")).await;
    }
    let all: HashSet<String> = spawned.into_iter().collect();
    let drain = |store: Arc<RedisStore>| async move {
        let mut taken = Vec::new();
        loop {
            let batch = store
                .claim_batch("demo", "square", 7)
                .await
                .expect("claims");
            let last = batch.len() < 7;
            taken.extend(batch.into_iter().map(|r| r.id));
            if last {
                return taken;
            }
        }
    };
    let (from_a, from_b) = tokio::join!(tokio::spawn(drain(a.clone())), tokio::spawn(drain(b)));
    let (from_a, from_b) = (from_a.expect("a drains"), from_b.expect("b drains"));
    let mut seen = HashSet::new();
    for id in from_a.iter().chain(&from_b) {
        assert!(seen.insert(id.clone()), "{id} was claimed twice");
    }
    assert_eq!(seen, all, "together they took every call");
    for taken in [&from_a, &from_b] {
        let mut sorted = taken.clone();
        sorted.sort();
        assert_eq!(&sorted, taken, "each replica takes the oldest first");
    }
    assert_eq!(count(&a, CallState::Running).await, 200);
    assert_eq!(count(&a, CallState::Pending).await, 0);
}

#[tokio::test]
async fn a_cancelled_pending_call_is_never_claimed() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    let mut hooked = call("fc-1", "square");
    hooked.callback_url = Some("https://hooks.example/1".to_owned());
    insert(&store, hooked).await;
    insert(&store, call("fc-2", "square")).await;
    assert_eq!(store.pending(), 2);
    let now = now_ms();
    let cancelled = store
        .cancel("fc-1".to_owned(), now, now + 60_000)
        .await
        .expect("cancels");
    assert_eq!(cancelled, Cancelled::Now(CallState::Pending));
    assert_eq!(store.pending(), 1);
    let record = get(&store, "fc-1").await;
    assert_eq!(record.state, CallState::Cancelled);
    assert_eq!(record.finished_ms, Some(now));
    assert_eq!(record.expires_ms, Some(now + 60_000));

    let claimed = store
        .claim_batch("demo", "square", 10)
        .await
        .expect("claims");
    assert_eq!(ids(&claimed), ["fc-2"]);
    assert_eq!(store.pending(), 0);
    assert_eq!(
        store
            .cancel("fc-1".to_owned(), now, now + 1)
            .await
            .expect("answers"),
        Cancelled::AlreadyFinished(CallState::Cancelled)
    );
    assert_eq!(
        store
            .cancel("fc-2".to_owned(), now, now + 60_000)
            .await
            .expect("answers"),
        Cancelled::Now(CallState::Running)
    );
    assert_eq!(
        store
            .cancel("fc-x".to_owned(), now, now + 1)
            .await
            .expect("answers"),
        Cancelled::NotFound
    );
    assert!(
        !store
            .finish("fc-2".to_owned(), Outcome::TimedOut, now)
            .await
            .expect("answers")
    );
    assert_eq!(count(&store, CallState::Cancelled).await, 2);
    assert_eq!(count(&store, CallState::Running).await, 0);
}

#[tokio::test]
async fn an_end_is_written_once_and_only_to_a_running_call() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix, LONG).await;
    let mut hooked = call("fc-1", "square");
    hooked.callback_url = Some("https://hooks.example/1".to_owned());
    insert(&store, hooked).await;
    let expires = now_ms() + 60_000;
    let pending_end = store
        .finish("fc-1".to_owned(), Outcome::TimedOut, expires)
        .await
        .expect("answers");
    assert!(!pending_end, "a pending call does not end by a finish");
    store.claim_next("demo", "square").await.expect("claims");
    let answer = Outcome::Answered {
        status: 201,
        content_type: Some("text/plain".to_owned()),
        body: b"made".to_vec(),
    };
    assert!(
        store
            .finish("fc-1".to_owned(), answer.clone(), expires)
            .await
            .expect("ends")
    );
    let failed = Outcome::Failed {
        kind: FailureKind::Function,
        error_type: "ValueError".to_owned(),
        message: "bad".to_owned(),
    };
    assert!(
        !store
            .finish("fc-1".to_owned(), failed, expires)
            .await
            .expect("answers")
    );
    let record = get(&store, "fc-1").await;
    assert_eq!(record.state, CallState::Succeeded);
    assert_eq!(record.outcome, Some(answer));
    assert_eq!(record.expires_ms, Some(expires));
    assert!(record.finished_ms.is_some());
    // Its webhook is queued (once) and its lease is gone.
    let cli = Cli::new(&server, &prefix);
    assert!(!cli.run("ZSCORE @deliveries fc-1").await.is_empty());
    let url = cli.run("HGET @delivery:fc-1 url").await;
    assert_eq!(url, "https://hooks.example/1");
    assert_eq!(cli.run("ZSCORE @leases fc-1").await, "", "no lease left");

    // An end after a cancel is not written either.
    insert(&store, call("fc-2", "square")).await;
    store.claim_next("demo", "square").await.expect("claims");
    let now = now_ms();
    store
        .cancel("fc-2".to_owned(), now, now + 60_000)
        .await
        .expect("cancels");
    let late = store
        .finish(
            "fc-2".to_owned(),
            Outcome::Succeeded(b"1".to_vec()),
            expires,
        )
        .await
        .expect("answers");
    assert!(!late);
    assert_eq!(get(&store, "fc-2").await.state, CallState::Cancelled);
}

#[tokio::test]
async fn a_requeued_call_is_claimed_again_in_its_second_attempt() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    insert(&store, call("fc-1", "square")).await;
    insert(&store, call("fc-2", "square")).await;
    store.claim_next("demo", "square").await.expect("claims");
    assert!(store.requeue("fc-1".to_owned()).await.expect("requeues"));
    assert!(
        !store.requeue("fc-1".to_owned()).await.expect("answers"),
        "pending now"
    );
    assert!(!store.requeue("fc-x".to_owned()).await.expect("answers"));
    assert_eq!(store.pending(), 2);
    // Back at the end of its queue.
    let again = store
        .claim_batch("demo", "square", 5)
        .await
        .expect("claims");
    assert_eq!(ids(&again), ["fc-2", "fc-1"]);
    assert_eq!(again[1].attempt, 2);
    assert!(store.retrying("fc-1".to_owned()).await.expect("counts"));
    assert_eq!(get(&store, "fc-1").await.attempt, 3);
    store
        .finish("fc-1".to_owned(), Outcome::TimedOut, now_ms())
        .await
        .expect("ends");
    assert!(!store.retrying("fc-1".to_owned()).await.expect("answers"));
}

#[tokio::test]
async fn the_sweep_deletes_an_expired_call_with_its_idempotency_key() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let store = replica(&server, &prefix, LONG).await;
    let mut hooked = with_key(call("fc-1", "square"), "k", b"d");
    hooked.callback_url = Some("https://hooks.example/1".to_owned());
    insert(&store, hooked).await;
    insert(&store, call("fc-kept", "square")).await;
    let claimed = store
        .claim_batch("demo", "square", 2)
        .await
        .expect("claims");
    assert_eq!(claimed.len(), 2);
    let now = now_ms();
    store
        .finish("fc-1".to_owned(), Outcome::TimedOut, now + 1_000)
        .await
        .expect("ends");
    store
        .finish("fc-kept".to_owned(), Outcome::TimedOut, now + 3_600_000)
        .await
        .expect("ends");
    assert_eq!(count(&store, CallState::TimedOut).await, 2);

    assert_eq!(
        store.sweep(now).await.expect("sweeps"),
        0,
        "not expired yet"
    );
    assert_eq!(store.sweep(now + 1_000).await.expect("sweeps"), 1);
    assert_eq!(store.get("fc-1").await.expect("answers"), None);
    assert!(store.get("fc-kept").await.expect("answers").is_some());
    assert_eq!(count(&store, CallState::TimedOut).await, 1);
    let cli = Cli::new(&server, &prefix);
    for key in ["idem:demo/square//k", "call:fc-1", "delivery:fc-1"] {
        assert_eq!(
            cli.run(&format!("EXISTS @{key}")).await,
            "0",
            "{key} is gone"
        );
    }
    for set in ["expiry", "deliveries"] {
        let member = cli.run(&format!("ZSCORE @{set} fc-1")).await;
        assert_eq!(member, "", "fc-1 left {set}");
    }
    // The key is free again: a new spawn with it makes a new call.
    insert(&store, with_key(call("fc-2", "square"), "k", b"d")).await;
    assert_eq!(get(&store, "fc-2").await.state, CallState::Pending);
}

#[tokio::test]
async fn an_expired_call_is_gone_before_the_sweep_comes() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    insert(&store, with_key(call("fc-1", "square"), "k", b"d")).await;
    store.claim_next("demo", "square").await.expect("claims");
    let expired = now_ms() - 1;
    let ended = store.finish("fc-1".to_owned(), Outcome::TimedOut, expired);
    assert!(ended.await.expect("ends"));
    let cancelled = store.cancel("fc-1".to_owned(), now_ms(), now_ms() + 1);
    assert_eq!(cancelled.await.expect("answers"), Cancelled::NotFound);
    // Its key is free again: the expired call goes, a new one is made.
    insert(&store, with_key(call("fc-2", "square"), "k", b"d")).await;
    assert_eq!(store.get("fc-1").await.expect("answers"), None);
    assert_eq!(count(&store, CallState::TimedOut).await, 0);
    assert_eq!(count(&store, CallState::Pending).await, 1);
}

#[tokio::test]
async fn a_sweep_deletes_more_than_one_script_takes() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    for n in 0..1_203 {
        insert(&store, call(&format!("fc-{n}"), "square")).await;
    }
    let now = now_ms();
    for record in store
        .claim_batch("demo", "square", 2_000)
        .await
        .expect("claims")
    {
        store
            .finish(record.id, Outcome::TimedOut, now)
            .await
            .expect("ends");
    }
    assert_eq!(store.sweep(now).await.expect("sweeps"), 1_203);
    assert!(store.count_by_state().await.expect("reads").is_empty());
}

#[tokio::test]
async fn counts_by_state_follow_each_call_through_its_life() {
    let server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    assert!(store.count_by_state().await.expect("reads").is_empty());
    for n in 0..3 {
        insert(&store, call(&format!("fc-{n}"), "square")).await;
    }
    let counts = store.count_by_state().await.expect("reads");
    assert_eq!(counts, [(CallState::Pending, 3)]);
    store
        .claim_batch("demo", "square", 2)
        .await
        .expect("claims");
    assert_eq!(
        store.count_by_state().await.expect("reads"),
        [(CallState::Pending, 1), (CallState::Running, 2)]
    );
    store
        .finish(
            "fc-0".to_owned(),
            Outcome::Succeeded(b"1".to_vec()),
            now_ms() + 60_000,
        )
        .await
        .expect("ends");
    store.requeue("fc-1".to_owned()).await.expect("requeues");
    assert_eq!(
        store.count_by_state().await.expect("reads"),
        [(CallState::Pending, 2), (CallState::Succeeded, 1)]
    );
}

#[tokio::test]
async fn recover_counts_the_pending_calls_per_function_and_leaves_running_ones() {
    let server = RedisServer::start().await;
    let prefix = prefix();
    let a = replica(&server, &prefix, LONG).await;
    let none = a
        .recover()
        .await
        .expect("a store with no queue yet recovers");
    assert!(none.is_empty());
    for n in 0..3 {
        insert(&a, call(&format!("fc-p{n}"), "Model.predict")).await;
    }
    insert(&a, call("fc-s", "square")).await;
    insert(&a, call("fc-c", "cube")).await;
    a.claim_next("demo", "cube").await.expect("claims");
    a.claim_next("demo", "Model.predict").await.expect("claims");
    let b = replica(&server, &prefix, LONG).await;
    let mut counts = b.recover().await.expect("counts");
    counts.sort();
    assert_eq!(
        counts,
        [
            (("demo".to_owned(), "Model.predict".to_owned()), 2),
            (("demo".to_owned(), "square".to_owned()), 1),
        ]
    );
    assert_eq!(b.pending(), 3);
    assert_eq!(
        get(&b, "fc-c").await.state,
        CallState::Running,
        "another replica runs it"
    );
}

/// Polls `attempt` until it answers, for up to 20 s (Redis loads its AOF).
async fn once_back<T>(mut attempt: impl AsyncFnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store is not back: {e}"),
        }
    }
}

#[tokio::test]
async fn a_redis_that_goes_away_fails_fast_and_keeps_what_it_acknowledged() {
    let mut server = RedisServer::start().await;
    let store = store_on(&server, LONG).await;
    insert(&store, call("fc-kept", "square")).await;

    server.kill().await;
    let started = Instant::now();
    let refused = store.insert(call("fc-lost", "square")).await;
    assert!(
        matches!(&refused, Err(e @ StoreError::Unavailable(_)) if e.is_transient()),
        "{refused:?}"
    );
    let unread = store.get("fc-kept").await;
    assert!(
        matches!(unread, Err(StoreError::Unavailable(_))),
        "{unread:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed in {:?}",
        started.elapsed()
    );

    server.restart().await;
    let record = once_back(async || store.get("fc-kept").await).await;
    assert_eq!(record.map(|r| r.state), Some(CallState::Pending));
    insert(&store, call("fc-new", "square")).await;
    let claimed = store
        .claim_batch("demo", "square", 5)
        .await
        .expect("claims");
    assert_eq!(ids(&claimed), ["fc-kept", "fc-new"]);
}
