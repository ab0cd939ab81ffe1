//! Spawned maps in the Redis store: inputs claimed by several replicas at
//! once (each exactly once), each input's end, the map's end with the
//! embedded store's summary, refused inputs, idempotency, attempts,
//! cancels, open maps and a large map stored in one call.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fngate::store::embedded::EmbeddedStore;
use fngate::store::map::{InputEnded, MapInput, StoredInput};
use fngate::store::redis::{RedisSettings, RedisStore};
use fngate::store::{CallState, CallStore, FailureKind, Inserted, NewCall, Outcome, now_ms};

use super::store_on;
use crate::common::redis::RedisServer;

const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// When a map expires should it end: far off, so nothing is swept.
const FAR: i64 = 4_000_000_000_000;

fn map_call(id: &str) -> NewCall {
    NewCall {
        id: id.to_owned(),
        app: "demo".to_owned(),
        function: "square".to_owned(),
        args: "[]".to_owned(),
        kwargs: "{}".to_owned(),
        forward: None,
        principal: None,
        parameters: None,
        origin: None,
        owner: None,
        idempotency: None,
        callback_url: Some("https://hooks.example.com/done".to_owned()),
        state: CallState::Pending,
        from_sync: false,
        created_ms: now_ms(),
    }
}

fn with_key(mut call: NewCall, key: &str, digest: &[u8]) -> NewCall {
    call.idempotency = Some((key.to_owned(), digest.to_vec()));
    call
}

fn inputs(n: usize) -> Vec<MapInput> {
    (0..n)
        .map(|i| MapInput::Arguments {
            args: format!("[{i}]"),
            kwargs: "{}".to_owned(),
        })
        .collect()
}

fn refused(status: u16) -> MapInput {
    MapInput::Refused(format!(r#"{{"status":{status}}}"#).into_bytes())
}

/// Stores on `server` under one prefix of their own: two replicas of one
/// deployment, and the prefix for looking at their keys.
async fn replicas_on(server: &RedisServer, n: usize) -> (String, Vec<Arc<RedisStore>>) {
    let prefix = format!("m{}:", fngate::invocation::random_hex::<6>());
    let mut stores = Vec::new();
    for _ in 0..n {
        let settings = RedisSettings {
            url: server.url(),
            prefix: prefix.clone(),
            claim_timeout: CLAIM_TIMEOUT,
        };
        stores.push(RedisStore::open(&settings).await.expect("the store opens"));
    }
    (prefix, stores)
}

async fn insert(store: &dyn CallStore, call: NewCall, inputs: Vec<MapInput>, expires: i64) {
    let inserted = store.insert_map(call, inputs, expires).await.unwrap();
    assert!(matches!(inserted, Inserted::Created), "{inserted:?}");
}

/// The result a map ends with: the embedded store's summary.
fn summary(failed: u64, inputs: u64, succeeded: u64) -> Option<Outcome> {
    let text = format!(r#"{{"failed":{failed},"inputs":{inputs},"succeeded":{succeeded}}}"#);
    Some(Outcome::Succeeded(text.into_bytes()))
}

/// What `redis-cli` answers, trimmed.
async fn cli(server: &RedisServer, args: &[&str]) -> String {
    server.cli(args).await.trim().to_owned()
}

async fn open_ids(store: &dyn CallStore) -> Vec<String> {
    let open = store.open_maps().await.unwrap();
    open.into_iter().map(|map| map.id).collect()
}

async fn page(store: &dyn CallStore, id: &str) -> Vec<StoredInput> {
    store.map_page(id.to_owned(), 0, 1000).await.unwrap()
}

#[tokio::test]
async fn two_replicas_claim_a_maps_inputs_in_batches_lowest_first_each_exactly_once() {
    let server = RedisServer::start().await;
    let (_, stores) = replicas_on(&server, 2).await;
    insert(&*stores[0], map_call("fc-map"), inputs(600), FAR).await;
    let first = stores[1].claim_inputs("fc-map".into(), 3).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|i| (i.index, i.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1), (1, 1), (2, 1)]
    );
    assert_eq!(first[2].args, "[2]");
    assert_eq!(first[2].kwargs, "{}");
    let mut tasks = Vec::new();
    for (store, batch) in [(stores[0].clone(), 7), (stores[1].clone(), 11)] {
        tasks.push(tokio::spawn(async move {
            let mut taken: Vec<u64> = Vec::new();
            loop {
                let claimed = store.claim_inputs("fc-map".into(), batch).await.unwrap();
                let indexes: Vec<u64> = claimed.iter().map(|i| i.index).collect();
                assert!(
                    indexes.is_sorted(),
                    "a batch is in index order: {indexes:?}"
                );
                assert!(
                    taken
                        .last()
                        .is_none_or(|last| indexes.first().is_none_or(|i| i > last)),
                    "each batch takes lower inputs before higher ones"
                );
                assert!(claimed.iter().all(|i| i.attempt == 1));
                assert!(claimed.iter().all(|i| i.args == format!("[{}]", i.index)));
                taken.extend(&indexes);
                if claimed.len() < batch {
                    return taken;
                }
            }
        }));
    }
    let mut all: Vec<u64> = first.iter().map(|i| i.index).collect();
    let mut each = Vec::new();
    for task in tasks {
        let taken = task.await.unwrap();
        each.push(taken.len());
        all.extend(taken);
    }
    assert!(
        each.iter().all(|&n| n > 0),
        "both replicas took inputs: {each:?}"
    );
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 600, "no input was taken twice");
    assert_eq!(distinct, (0..600).collect::<BTreeSet<u64>>());
    let progress = stores[0].map_progress("fc-map".into()).await.unwrap();
    assert_eq!((progress.pending, progress.running), (0, 600));

    // Both replicas record ends at once: one of them ends the map.
    let mut ends = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let store = store.clone();
        ends.push(tokio::spawn(async move {
            let mut ended = 0;
            for index in (n as u64..600).step_by(2) {
                let outcome = Outcome::Succeeded(index.to_string().into_bytes());
                let end = store
                    .finish_input("fc-map".into(), index, outcome, FAR)
                    .await
                    .unwrap();
                assert!(end.recorded);
                ended += u32::from(end.map_ended);
            }
            ended
        }));
    }
    let mut map_ends = 0;
    for end in ends {
        map_ends += end.await.unwrap();
    }
    assert_eq!(map_ends, 1, "the map ends once, with its last input");
    let record = stores[1].get("fc-map").await.unwrap().unwrap();
    assert_eq!(record.state, CallState::Succeeded);
    assert_eq!(record.outcome, summary(0, 600, 600));
}

/// One sequence of a map's life, run against any store: what it answered
/// at each step, and the map as it ended.
async fn map_life(store: &dyn CallStore) -> (Vec<String>, Vec<StoredInput>) {
    let mut seen = Vec::new();
    let mut all = inputs(7);
    all[2] = refused(400);
    all[6] = refused(422);
    let mut call = map_call("fc-life");
    call.created_ms = 1_700_000_000_000;
    insert(store, call, all, FAR).await;
    let progress = |p: fngate::store::map::MapProgress| format!("{p:?}");
    seen.push(progress(
        store.map_progress("fc-life".into()).await.unwrap(),
    ));
    let claimed = store.claim_inputs("fc-life".into(), 2).await.unwrap();
    seen.push(format!("{claimed:?}"));
    let claimed = store.claim_inputs("fc-life".into(), 10).await.unwrap();
    seen.push(format!("{claimed:?}"));
    seen.push(progress(
        store.map_progress("fc-life".into()).await.unwrap(),
    ));
    let ends = [
        (4, Outcome::Succeeded(b"16".to_vec())),
        (
            0,
            Outcome::Answered {
                status: 201,
                content_type: Some("application/x-ndjson".into()),
                body: b"[0]".to_vec(),
            },
        ),
        (
            3,
            Outcome::Failed {
                kind: FailureKind::Function,
                error_type: "ValueError".into(),
                message: "three\nis bad".into(),
            },
        ),
        (1, Outcome::TimedOut),
        // Not running: not recorded.
        (2, Outcome::Succeeded(b"4".to_vec())),
        (5, Outcome::Succeeded(b"25".to_vec())),
        // Ended already: not recorded again.
        (5, Outcome::Succeeded(b"26".to_vec())),
    ];
    for (index, outcome) in ends {
        let ended = store
            .finish_input("fc-life".into(), index, outcome, FAR)
            .await
            .unwrap();
        seen.push(format!("{index}: {ended:?}"));
        seen.push(progress(
            store.map_progress("fc-life".into()).await.unwrap(),
        ));
    }
    let mut record = store.get("fc-life").await.unwrap().unwrap();
    assert!(record.finished_ms.is_some());
    record.finished_ms = None;
    seen.push(format!("{record:?}"));
    seen.push(format!(
        "{:?}",
        store.claim_inputs("fc-life".into(), 10).await.unwrap()
    ));
    (seen, page(store, "fc-life").await)
}

#[tokio::test]
async fn a_map_ends_with_its_last_input_as_the_embedded_store_ends_it() {
    let server = RedisServer::start().await;
    let (prefix, stores) = replicas_on(&server, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("calls.db")).unwrap();
    let (redis_steps, redis_page) = map_life(&*stores[0]).await;
    let (embedded_steps, embedded_page) = map_life(&embedded).await;
    for (redis, embedded) in redis_steps.iter().zip(&embedded_steps) {
        assert_eq!(redis, embedded);
    }
    assert_eq!(redis_steps.len(), embedded_steps.len());
    assert_eq!(redis_page, embedded_page);
    assert_eq!(redis_page.len(), 7);
    assert_eq!(
        redis_page[2].problem.as_deref(),
        Some(&br#"{"status":400}"#[..])
    );
    assert_eq!(redis_page[1].outcome, Some(Outcome::TimedOut));
    let record = stores[0].get("fc-life").await.unwrap().unwrap();
    assert_eq!(record.outcome, summary(4, 7, 3));
    // Its webhook is queued, it expires, it is no longer open, and no
    // lease of its inputs is left.
    let key = |name: &str| format!("{prefix}{name}");
    let url = cli(&server, &["HGET", &key("delivery:fc-life"), "url"]).await;
    assert_eq!(url, "https://hooks.example.com/done");
    let due = cli(&server, &["ZSCORE", &key("deliveries"), "fc-life"]).await;
    assert!(!due.is_empty(), "its delivery is due");
    let expiry = cli(&server, &["ZSCORE", &key("expiry"), "fc-life"]).await;
    assert_eq!(expiry, FAR.to_string());
    assert!(open_ids(&*stores[0]).await.is_empty());
    assert_eq!(cli(&server, &["ZCARD", &key("leases")]).await, "0");
    let states = cli(&server, &["HGETALL", &key("states")]).await;
    assert_eq!(states.lines().collect::<Vec<_>>(), ["1", "0", "2", "1"]);
}

#[tokio::test]
async fn a_claimed_input_is_leased_until_it_ends() {
    let server = RedisServer::start().await;
    let (prefix, stores) = replicas_on(&server, 1).await;
    let store = &stores[0];
    insert(&**store, map_call("fc-lease"), inputs(2), FAR).await;
    let leases = format!("{prefix}leases");
    store.claim_inputs("fc-lease".into(), 1).await.unwrap();
    let lapses: i64 = cli(&server, &["ZSCORE", &leases, "fc-lease-0"])
        .await
        .parse()
        .expect("input 0 is leased");
    let expected = now_ms() + CLAIM_TIMEOUT.as_millis() as i64;
    assert!((lapses - expected).abs() < 5_000, "{lapses} vs {expected}");
    assert_eq!(cli(&server, &["ZSCORE", &leases, "fc-lease-1"]).await, "");
    store
        .finish_input("fc-lease".into(), 0, Outcome::TimedOut, FAR)
        .await
        .unwrap();
    assert_eq!(cli(&server, &["ZCARD", &leases]).await, "0");
}

#[tokio::test]
async fn refused_inputs_are_stored_failed_with_their_problem_and_never_run() {
    let server = RedisServer::start().await;
    let store = store_on(&server, CLAIM_TIMEOUT).await;
    let all = vec![
        refused(400),
        MapInput::Arguments {
            args: "[1]".into(),
            kwargs: r#"{"x":"a:b"}"#.into(),
        },
        refused(422),
        MapInput::Arguments {
            args: "[3]".into(),
            kwargs: "{}".into(),
        },
    ];
    insert(&*store, map_call("fc-refused"), all, FAR).await;
    let progress = store.map_progress("fc-refused".into()).await.unwrap();
    assert_eq!(
        (progress.inputs, progress.pending, progress.failed),
        (4, 2, 2)
    );
    let stored = page(&*store, "fc-refused").await;
    assert_eq!(stored[0].state, CallState::Failed);
    assert_eq!(
        stored[0].problem.as_deref(),
        Some(&br#"{"status":400}"#[..])
    );
    assert_eq!(stored[0].outcome, None);
    assert_eq!(stored[1].state, CallState::Pending);
    assert_eq!(
        stored[2].problem.as_deref(),
        Some(&br#"{"status":422}"#[..])
    );
    let claimed = store.claim_inputs("fc-refused".into(), 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(claimed[0].kwargs, r#"{"x":"a:b"}"#);
    let late = store
        .finish_input("fc-refused".into(), 0, Outcome::TimedOut, FAR)
        .await
        .unwrap();
    assert!(!late.recorded, "a refused input has ended already");
}

#[tokio::test]
async fn a_map_with_no_input_to_run_has_ended_when_stored() {
    let server = RedisServer::start().await;
    let (prefix, stores) = replicas_on(&server, 1).await;
    let store = &stores[0];
    let expires = now_ms() + 60_000;
    insert(&**store, map_call("fc-none"), Vec::new(), expires).await;
    insert(
        &**store,
        map_call("fc-refused"),
        vec![refused(400), refused(400)],
        expires,
    )
    .await;
    for (id, inputs) in [("fc-none", 0), ("fc-refused", 2)] {
        let record = store.get(id).await.unwrap().unwrap();
        assert_eq!(record.state, CallState::Succeeded);
        assert_eq!(record.map_inputs, Some(inputs));
        assert_eq!(record.expires_ms, Some(expires));
        assert!(record.finished_ms.is_some());
        assert_eq!(record.outcome, summary(inputs, inputs, 0));
        assert!(store.claim_inputs(id.into(), 10).await.unwrap().is_empty());
        let due = cli(&server, &["ZSCORE", &format!("{prefix}deliveries"), id]).await;
        assert!(!due.is_empty(), "{id}: its webhook is queued");
    }
    assert!(open_ids(&**store).await.is_empty());
    let counts = store.count_by_state().await.unwrap();
    assert!(counts.contains(&(CallState::Succeeded, 2)), "{counts:?}");
    assert!(
        !counts
            .iter()
            .any(|(state, n)| *state == CallState::Running && *n > 0)
    );
}

#[tokio::test]
async fn a_maps_idempotency_key_finds_the_map_it_made() {
    let server = RedisServer::start().await;
    let store = store_on(&server, CLAIM_TIMEOUT).await;
    insert(
        &*store,
        with_key(map_call("fc-a"), "k1", b"digest"),
        inputs(3),
        FAR,
    )
    .await;
    let again = store
        .insert_map(with_key(map_call("fc-b"), "k1", b"digest"), inputs(3), FAR)
        .await
        .unwrap();
    let Inserted::Existing {
        record,
        same_request,
    } = again
    else {
        panic!("the key is taken: {again:?}")
    };
    assert!(same_request);
    assert_eq!(record.id, "fc-a");
    assert_eq!(record.map_inputs, Some(3));
    assert_eq!(record.state, CallState::Running);
    let other = store
        .insert_map(with_key(map_call("fc-c"), "k1", b"other"), inputs(3), FAR)
        .await
        .unwrap();
    assert!(matches!(
        other,
        Inserted::Existing { record, same_request: false } if record.id == "fc-a"
    ));
    // Nothing of the refused maps was stored.
    assert!(store.get("fc-b").await.unwrap().is_none());
    assert_eq!(store.map_progress("fc-b".into()).await.unwrap().inputs, 0);
    // Another owner's key is another key.
    let mut owned = with_key(map_call("fc-d"), "k1", b"digest");
    owned.owner = Some("alice".into());
    insert(&*store, owned, inputs(1), FAR).await;
    // A key whose map has expired is free again.
    insert(
        &*store,
        with_key(map_call("fc-old"), "k2", b"digest"),
        Vec::new(),
        1,
    )
    .await;
    insert(
        &*store,
        with_key(map_call("fc-new"), "k2", b"digest"),
        inputs(1),
        FAR,
    )
    .await;
    assert!(
        store.get("fc-old").await.unwrap().is_none(),
        "deleted with its key"
    );
    assert_eq!(open_ids(&*store).await, ["fc-a", "fc-d", "fc-new"]);
}

#[tokio::test]
async fn input_retrying_counts_the_attempts_of_a_running_input_only() {
    let server = RedisServer::start().await;
    let (prefix, stores) = replicas_on(&server, 1).await;
    let store = &stores[0];
    insert(&**store, map_call("fc-retry"), inputs(3), FAR).await;
    assert!(!store.input_retrying("fc-retry".into(), 0).await.unwrap());
    store.claim_inputs("fc-retry".into(), 2).await.unwrap();
    assert!(store.input_retrying("fc-retry".into(), 0).await.unwrap());
    assert!(store.input_retrying("fc-retry".into(), 0).await.unwrap());
    let inputs_key = format!("{prefix}map:fc-retry:inputs");
    assert_eq!(cli(&server, &["HGET", &inputs_key, "0:a"]).await, "3");
    assert_eq!(cli(&server, &["HGET", &inputs_key, "1:a"]).await, "1");
    store
        .finish_input("fc-retry".into(), 0, Outcome::TimedOut, FAR)
        .await
        .unwrap();
    assert!(!store.input_retrying("fc-retry".into(), 0).await.unwrap());
    assert!(!store.input_retrying("fc-retry".into(), 2).await.unwrap());
    assert!(!store.input_retrying("fc-nothing".into(), 0).await.unwrap());
}

#[tokio::test]
async fn an_input_ending_after_its_maps_cancel_is_not_recorded() {
    let server = RedisServer::start().await;
    let store = store_on(&server, CLAIM_TIMEOUT).await;
    insert(&*store, map_call("fc-map"), inputs(4), FAR).await;
    store.claim_inputs("fc-map".into(), 2).await.unwrap();
    store
        .finish_input("fc-map".into(), 0, Outcome::Succeeded(b"0".to_vec()), FAR)
        .await
        .unwrap();
    let cancelled = store.cancel("fc-map".into(), now_ms(), FAR).await.unwrap();
    assert_eq!(cancelled, fngate::store::Cancelled::Now(CallState::Running));
    let progress = store.map_progress("fc-map".into()).await.unwrap();
    assert_eq!(
        (progress.succeeded, progress.cancelled, progress.open()),
        (1, 3, 0)
    );
    assert!(
        store
            .claim_inputs("fc-map".into(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let late = store
        .finish_input("fc-map".into(), 1, Outcome::Succeeded(b"1".to_vec()), FAR)
        .await
        .unwrap();
    assert_eq!(
        late,
        InputEnded {
            recorded: false,
            map_ended: false
        }
    );
    assert!(!store.input_retrying("fc-map".into(), 1).await.unwrap());
    let states: Vec<CallState> = page(&*store, "fc-map")
        .await
        .iter()
        .map(|input| input.state)
        .collect();
    assert_eq!(
        states,
        [
            CallState::Succeeded,
            CallState::Cancelled,
            CallState::Cancelled,
            CallState::Cancelled
        ]
    );
    let record = store.get("fc-map").await.unwrap().unwrap();
    assert_eq!(record.state, CallState::Cancelled);
    assert!(open_ids(&*store).await.is_empty());
}

#[tokio::test]
async fn open_maps_lists_the_maps_with_open_inputs_and_not_the_ended_ones() {
    let server = RedisServer::start().await;
    let store = store_on(&server, CLAIM_TIMEOUT).await;
    let mut other = map_call("fc-open-2");
    other.app = "shop".into();
    other.function = "Model.predict".into();
    other.created_ms += 1;
    insert(&*store, map_call("fc-open-1"), inputs(2), FAR).await;
    insert(&*store, other, inputs(1), FAR).await;
    insert(&*store, map_call("fc-empty"), Vec::new(), FAR).await;
    insert(&*store, map_call("fc-done"), inputs(1), FAR).await;
    store.claim_inputs("fc-done".into(), 1).await.unwrap();
    let end = store
        .finish_input("fc-done".into(), 0, Outcome::TimedOut, FAR)
        .await
        .unwrap();
    assert!(end.map_ended);
    // All of fc-open-1's inputs running: it is still open.
    store.claim_inputs("fc-open-1".into(), 2).await.unwrap();
    let open: Vec<(String, String, String)> = store
        .open_maps()
        .await
        .unwrap()
        .into_iter()
        .map(|map| (map.id, map.app, map.function))
        .collect();
    assert_eq!(
        open,
        [
            ("fc-open-1".into(), "demo".into(), "square".into()),
            ("fc-open-2".into(), "shop".into(), "Model.predict".into())
        ]
    );
}

#[tokio::test]
async fn a_map_of_20000_inputs_is_stored_in_one_call_and_pages_back_in_order() {
    let server = RedisServer::start().await;
    let store = store_on(&server, CLAIM_TIMEOUT).await;
    let mut all = inputs(20_000);
    for index in (0..20_000).step_by(1000) {
        all[index] = refused(400);
    }
    let started = Instant::now();
    insert(&*store, map_call("fc-big"), all, FAR).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "stored in {took:?}");
    let progress = store.map_progress("fc-big".into()).await.unwrap();
    assert_eq!(
        (progress.inputs, progress.pending, progress.failed),
        (20_000, 19_980, 20)
    );
    let mut from = 0;
    let mut read = 0;
    loop {
        let chunk = store.map_page("fc-big".into(), from, 777).await.unwrap();
        for input in &chunk {
            assert_eq!(input.index, read);
            let state = if read % 1000 == 0 {
                CallState::Failed
            } else {
                CallState::Pending
            };
            assert_eq!(input.state, state, "input {read}");
            read += 1;
        }
        if chunk.len() < 777 {
            break;
        }
        from += 777;
    }
    assert_eq!(read, 20_000);
    let whole = store.map_page("fc-big".into(), 0, 20_000).await.unwrap();
    assert_eq!(whole.len(), 20_000);
    assert!(
        whole
            .iter()
            .enumerate()
            .all(|(i, input)| input.index == i as u64)
    );
    let tail = store.map_page("fc-big".into(), 19_990, 100).await.unwrap();
    assert_eq!(tail.len(), 10);
    assert!(
        store
            .map_page("fc-big".into(), 20_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_inputs("fc-big".into(), 128).await.unwrap();
    let indexes: Vec<u64> = claimed.iter().map(|i| i.index).collect();
    let expected: Vec<u64> = (1..=129).filter(|i| i % 1000 != 0).take(128).collect();
    assert_eq!(indexes, expected);
    assert_eq!(claimed[0].args, "[1]");
}
