//! Spawned calls end to end over real TLS: spawn, poll, long-poll, cancel,
//! expiry, idempotency, the backlog bound, fair sharing of a function's
//! concurrency between spawned and sync callers, and dispatch: every
//! accepted call runs, taken from the store in batches that a crash does
//! not lose.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::StoreUnderTest;
use common::{
    Gateway, HttpBackend, WORK_PY, assert_problem, closed_port, eventually, exec_fn, http_fn,
    process_alive,
};
use serde_json::{Value, json};

/// A gateway with app `t`: `work` (WORK_PY, timeout 10 s), `one`
/// (concurrency 1), `four` (concurrency 4), `short` (timeout 1 s), `typed`
/// (an input schema) and `down` (an http backend nobody listens on), on
/// `store` with `lines` in its `[store]` table.
async fn gateway(store: &StoreUnderTest, lines: &str) -> Gateway {
    let down = format!("http://127.0.0.1:{}/invoke", closed_port());
    Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&store.toml(lines))
        .toml(&exec_fn("t", "work", "work.py", "timeout = \"10s\""))
        .toml(&exec_fn(
            "t",
            "one",
            "work.py",
            "timeout = \"10s\"\nconcurrency = 1",
        ))
        .toml(&exec_fn(
            "t",
            "four",
            "work.py",
            "timeout = \"10s\"\nconcurrency = 4",
        ))
        .toml(&exec_fn("t", "short", "work.py", "timeout = \"1s\""))
        .toml(&exec_fn(
            "t",
            "typed",
            "work.py",
            "input_schema = { type = \"object\", properties = { x = { type = \"integer\" } } }",
        ))
        .toml(&http_fn("t", "down", &[down], ""))
        .start()
        .await
}

fn assert_call_id(id: &str) {
    let hex = id
        .strip_prefix("fc-")
        .unwrap_or_else(|| panic!("call id {id:?} starts with fc-"));
    assert!(
        hex.len() == 44 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "call id {id:?} is fc-, its creation time in 12 lowercase hex digits and 32 of random bits"
    );
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// POSTs `body` to `path` (a `/spawn` route), asserts the complete 202 of
/// DESIGN.md and returns the call id.
async fn spawn(gw: &Gateway, client: &reqwest::Client, path: &str, body: &Value) -> String {
    let resp = gw.post_json(client, path, &body.to_string()).await;
    accepted(gw, resp).await
}

/// Asserts a spawn's 202 (Location, X-Call-Id, body) and returns the id.
async fn accepted(gw: &Gateway, resp: reqwest::Response) -> String {
    let status = resp.status();
    let location = header(&resp, "location").map(str::to_owned);
    let call_header = header(&resp, "x-call-id").map(str::to_owned);
    let text = resp.text().await.expect("read spawn body");
    assert_eq!(status, 202, "spawn answers 202; body: {text}");
    let body: Value = serde_json::from_str(&text).expect("spawn body is JSON");
    let id = body["call_id"].as_str().expect("call_id").to_owned();
    assert_call_id(&id);
    assert_eq!(body["status"], "pending", "{text}");
    assert_eq!(location.as_deref(), Some(&*format!("/calls/{id}")));
    assert_eq!(call_header.as_deref(), Some(&*id));
    assert_eq!(
        body["status_url"],
        gw.url(&format!("/calls/{id}")),
        "{text}"
    );
    id
}

/// `GET /calls/{id}`, with `?wait=` when given.
async fn get_call(
    gw: &Gateway,
    client: &reqwest::Client,
    id: &str,
    wait: Option<f64>,
) -> reqwest::Response {
    let path = match wait {
        Some(w) => format!("/calls/{id}?wait={w}"),
        None => format!("/calls/{id}"),
    };
    client
        .get(gw.url(&path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
}

async fn delete_call(gw: &Gateway, client: &reqwest::Client, id: &str) -> reqwest::Response {
    client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .expect("DELETE /calls/{id}")
}

/// Long-polls until the call ends and returns the 200 result.
async fn result(gw: &Gateway, client: &reqwest::Client, id: &str) -> Value {
    let resp = get_call(gw, client, id, Some(20.0)).await;
    let status = resp.status();
    let text = resp.text().await.expect("read result");
    assert_eq!(status, 200, "call {id} ends 200; body: {text}");
    serde_json::from_str(&text).expect("result is JSON")
}

/// Asserts a 202 progress answer and returns its body.
async fn progress(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let retry = header(&resp, "retry-after").map(str::to_owned);
    let call_header = header(&resp, "x-call-id").map(str::to_owned);
    let text = resp.text().await.expect("read progress");
    assert_eq!(status, 202, "call still in progress; body: {text}");
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After; body: {text}");
    let body: Value = serde_json::from_str(&text).expect("progress is JSON");
    assert_eq!(call_header.as_deref(), body["call_id"].as_str());
    body
}

/// Spawns a call that holds `t/one`'s only slot for `seconds`, and waits
/// until it runs; returns its id.
async fn occupy_one(gw: &Gateway, client: &reqwest::Client, seconds: f64) -> String {
    let id = spawn(
        gw,
        client,
        "/t/one/spawn",
        &json!({"seconds": seconds, "marker": "blocker.m"}),
    )
    .await;
    pids_in(&gw.dir.join("blocker.m"), Duration::from_secs(10)).await;
    id
}

async fn pids_in(path: &Path, within: Duration) -> Vec<i32> {
    assert!(
        eventually(within, || path.exists()).await,
        "marker {} appears within {within:?}",
        path.display()
    );
    std::fs::read_to_string(path)
        .expect("read marker")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect()
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// The store's contract: each test below runs on the embedded store and on
// Redis (`NAME::embedded`, `NAME::redis`).
both_stores!(
    spawned_call_is_pending_then_gives_the_sync_result,
    prefer_respond_async_spawns_the_call,
    spawn_validates_like_a_sync_call_before_storing,
    long_poll_answers_the_moment_the_call_ends,
    long_poll_gives_202_when_the_wait_runs_out,
    wait_must_be_a_number_of_seconds,
    unknown_calls_are_404,
    failed_spawned_call_gives_the_sync_error_and_cannot_be_cancelled,
    unreachable_backend_gives_502_like_a_sync_call,
    timed_out_spawned_call_is_504_and_cannot_be_cancelled,
    succeeded_call_cannot_be_cancelled,
    cancelled_pending_call_never_runs,
    cancelling_a_running_call_kills_its_process_group,
    results_expire_after_result_ttl,
    idempotency_key_returns_the_same_call_for_the_same_body,
    backlog_over_max_pending_is_503,
    spawn_flood_does_not_starve_sync_calls,
    idempotency_key_is_scoped_to_its_function,
    idempotency_key_expires_with_its_call,
    long_poll_answers_when_the_call_is_cancelled,
    every_long_poller_of_a_call_wakes_when_it_ends,
    every_accepted_spawn_runs_even_when_clients_give_up_mid_spawn,
    a_spawn_with_a_free_slot_runs_at_once_and_a_later_one_waits_its_turn,
);

/// A spawn that finds its function's slot free is stored running (its
/// insert is its claim): it runs by the time the 202 is answered. The next
/// spawn finds the slot taken: it waits in the store, pending, and runs
/// after the first, each in its first attempt.
async fn a_spawn_with_a_free_slot_runs_at_once_and_a_later_one_waits_its_turn(
    store: StoreUnderTest,
) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    // A call run through first: the gateway has recovered its store (a
    // spawn before that always waits in the store).
    let warm = spawn(&gw, &client, "/t/one/spawn", &json!({})).await;
    result(&gw, &client, &warm).await;
    let first = spawn(
        &gw,
        &client,
        "/t/one/spawn",
        &json!({"x": 1, "seconds": 2, "stamp": true}),
    )
    .await;
    let body = progress(get_call(&gw, &client, &first, None).await).await;
    assert_eq!(body["status"], "running", "{body}");
    let second = spawn(
        &gw,
        &client,
        "/t/one/spawn",
        &json!({"x": 2, "stamp": true}),
    )
    .await;
    let body = progress(get_call(&gw, &client, &second, None).await).await;
    assert_eq!(body["status"], "pending", "the slot is taken: {body}");
    let (a, b) = (
        result(&gw, &client, &first).await,
        result(&gw, &client, &second).await,
    );
    assert_eq!(
        (a["square"].as_u64(), a["attempt"].as_u64()),
        (Some(1), Some(1)),
        "{a}"
    );
    assert_eq!(
        (b["square"].as_u64(), b["attempt"].as_u64()),
        (Some(4), Some(1)),
        "{b}"
    );
    assert!(
        a["end"].as_f64() <= b["end"].as_f64(),
        "the waiting call ends after the running one: {a} {b}"
    );
}

async fn spawned_call_is_pending_then_gives_the_sync_result(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    for (proto, client) in gw.clients() {
        let sync = gw.post_json(&client, "/t/work", r#"{"x": 7}"#).await;
        assert_eq!(sync.status(), 200, "{proto}");
        let sync_type = header(&sync, "content-type").map(str::to_owned);
        let sync_text = sync.text().await.unwrap();

        let before = epoch_now();
        let id = spawn(
            &gw,
            &client,
            "/t/work/spawn",
            &json!({"x": 7, "seconds": 1}),
        )
        .await;
        let body = progress(get_call(&gw, &client, &id, None).await).await;
        assert_eq!(body["call_id"], id.as_str(), "{proto}");
        assert!(
            body["status"] == "pending" || body["status"] == "running",
            "{proto}: {body}"
        );
        assert!(body["attempt"].is_u64(), "{proto}: attempt in {body}");
        let created = body["created_at"].as_str().expect("created_at");
        let created = humantime::parse_rfc3339(created)
            .unwrap_or_else(|e| panic!("created_at {created:?} is RFC 3339: {e}"))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (created - before).abs() < 5.0,
            "{proto}: created_at {created} near {before}"
        );

        let resp = get_call(&gw, &client, &id, Some(10.0)).await;
        assert_eq!(resp.status(), 200, "{proto}");
        assert_eq!(header(&resp, "x-call-id"), Some(&*id), "{proto}");
        assert_eq!(
            header(&resp, "content-type").map(str::to_owned),
            sync_type,
            "{proto}"
        );
        assert_eq!(resp.text().await.unwrap(), sync_text, "{proto}");
        // Reading it again gives the same.
        let resp = get_call(&gw, &client, &id, None).await;
        assert_eq!(resp.text().await.unwrap(), sync_text, "{proto}");
        assert_eq!(
            serde_json::from_str::<Value>(&sync_text).unwrap(),
            json!({"x": 7, "square": 49, "attempt": 1})
        );
    }
}

async fn prefer_respond_async_spawns_the_call(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let resp = client
        .post(gw.url("/t/work"))
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(r#"{"x": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "preference-applied"),
        Some("respond-async"),
        "Preference-Applied"
    );
    let id = accepted(&gw, resp).await;
    assert_eq!(
        result(&gw, &client, &id).await,
        json!({"x": 3, "square": 9, "attempt": 1})
    );
}

async fn spawn_validates_like_a_sync_call_before_storing(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    for (path, body, status, code) in [
        ("/t/work/spawn", "{\"x\": ", 400, "invalid_json"),
        ("/t/work/spawn", r#"{"x": 1, "x": 2}"#, 400, "invalid_json"),
        (
            "/t/typed/spawn",
            r#"{"x": "seven"}"#,
            400,
            "invalid_arguments",
        ),
        ("/t/nope/spawn", "{}", 404, "function_not_found"),
        ("/nope/work/spawn", "{}", 404, "app_not_found"),
    ] {
        let resp = gw.post_json(&client, path, body).await;
        assert!(
            resp.headers().get("x-call-id").is_none() && resp.headers().get("location").is_none(),
            "{path} {body}: no call is created"
        );
        assert_problem(resp, status, code).await;
    }
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = client
            .request(method.clone(), gw.url("/t/work/spawn"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "allow"), Some("POST"), "{method}");
        assert_problem(resp, 405, "method_not_allowed").await;
    }
}

async fn long_poll_answers_the_moment_the_call_ends(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let mut latencies = Vec::new();
    for round in 0..5 {
        let id = spawn(
            &gw,
            &client,
            "/t/work/spawn",
            &json!({"x": round, "seconds": 1, "stamp": true}),
        )
        .await;
        let started = Instant::now();
        let resp = get_call(&gw, &client, &id, Some(10.0)).await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("result JSON");
        let received = epoch_now();
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "round {round}: the long poll waited for the call"
        );
        let end = body["end"].as_f64().expect("end stamp");
        latencies.push(received - end);
    }
    latencies.sort_by(f64::total_cmp);
    let ms: Vec<String> = latencies
        .iter()
        .map(|l| format!("{:.1} ms", l * 1000.0))
        .collect();
    println!("long-poll wake-up latency (function end -> client has the result): {ms:?}");
    let median = latencies[latencies.len() / 2];
    assert!(
        median < 0.100,
        "median wake-up latency {median:.3} s is under 100 ms ({ms:?})"
    );
    assert!(
        latencies[latencies.len() - 1] < 0.300,
        "worst wake-up latency is under 300 ms ({ms:?})"
    );
}

async fn long_poll_gives_202_when_the_wait_runs_out(store: StoreUnderTest) {
    let gw = gateway(&store, "max_wait = \"1s\"").await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/t/work/spawn", &json!({"seconds": 5})).await;
    let started = Instant::now();
    let body = progress(get_call(&gw, &client, &id, Some(0.5)).await).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1500),
        "?wait=0.5 waited {waited:?}"
    );
    assert_eq!(body["status"], "running", "{body}");
    // The cap of [store] max_wait (1 s here) wins over a longer ?wait=.
    let started = Instant::now();
    progress(get_call(&gw, &client, &id, Some(30.0)).await).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "?wait=30 with max_wait 1s waited {waited:?}"
    );
}

async fn wait_must_be_a_number_of_seconds(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/t/work/spawn", &json!({})).await;
    for bad in ["abc", "-1", "1s", "NaN"] {
        let resp = client
            .get(gw.url(&format!("/calls/{id}?wait={bad}")))
            .send()
            .await
            .unwrap();
        assert_problem(resp, 400, "invalid_arguments").await;
    }
}

async fn unknown_calls_are_404(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let unknown = format!("fc-{}", "0".repeat(32));
    for id in [unknown.as_str(), "nope", "fc-"] {
        assert_problem(
            get_call(&gw, &client, id, None).await,
            404,
            "call_not_found",
        )
        .await;
        assert_problem(delete_call(&gw, &client, id).await, 404, "call_not_found").await;
    }
    assert_problem(
        get_call(&gw, &client, &unknown, Some(1.0)).await,
        404,
        "call_not_found",
    )
    .await;
}

async fn failed_spawned_call_gives_the_sync_error_and_cannot_be_cancelled(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let args = json!({"fail": "x must be positive"});
    let sync = gw.post_json(&client, "/t/work", &args.to_string()).await;
    let sync = assert_problem(sync, 500, "function_error").await;
    assert_eq!(sync["error"]["type"], "ValueError", "{sync}");
    assert!(
        sync["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("x must be positive")),
        "{sync}"
    );

    let id = spawn(&gw, &client, "/t/work/spawn", &args).await;
    let spawned = assert_problem(
        get_call(&gw, &client, &id, Some(10.0)).await,
        500,
        "function_error",
    )
    .await;
    assert_eq!(spawned["error"], sync["error"]);
    assert_eq!(spawned["title"], sync["title"]);
    assert_problem(delete_call(&gw, &client, &id).await, 409, "call_finished").await;
    // Still readable afterwards.
    assert_problem(
        get_call(&gw, &client, &id, None).await,
        500,
        "function_error",
    )
    .await;
}

async fn unreachable_backend_gives_502_like_a_sync_call(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let sync = gw.post_json(&client, "/t/down", "{}").await;
    assert_problem(sync, 502, "backend_error").await;
    let id = spawn(&gw, &client, "/t/down/spawn", &json!({})).await;
    assert_problem(
        get_call(&gw, &client, &id, Some(10.0)).await,
        502,
        "backend_error",
    )
    .await;
}

async fn timed_out_spawned_call_is_504_and_cannot_be_cancelled(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/t/short/spawn", &json!({"seconds": 5})).await;
    let started = Instant::now();
    assert_problem(
        get_call(&gw, &client, &id, Some(10.0)).await,
        504,
        "function_timeout",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timed out after about 1 s"
    );
    assert_problem(delete_call(&gw, &client, &id).await, 409, "call_finished").await;
}

async fn succeeded_call_cannot_be_cancelled(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/t/work/spawn", &json!({"x": 2})).await;
    assert_eq!(result(&gw, &client, &id).await["square"], 4);
    assert_problem(delete_call(&gw, &client, &id).await, 409, "call_finished").await;
    assert_eq!(result(&gw, &client, &id).await["square"], 4);
}

async fn cancelled_pending_call_never_runs(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    // `one` has concurrency 1: the blocker holds the only slot.
    let blocker = occupy_one(&gw, &client, 1.5).await;
    let id = spawn(
        &gw,
        &client,
        "/t/one/spawn",
        &json!({"marker": "cancelled.m"}),
    )
    .await;
    let body = progress(get_call(&gw, &client, &id, None).await).await;
    assert_eq!(body["status"], "pending", "{body}");

    for _ in 0..2 {
        let resp = delete_call(&gw, &client, &id).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"call_id": id, "status": "cancelled"}));
    }
    assert_problem(
        get_call(&gw, &client, &id, None).await,
        410,
        "call_cancelled",
    )
    .await;
    assert_problem(
        get_call(&gw, &client, &id, Some(5.0)).await,
        410,
        "call_cancelled",
    )
    .await;

    // The blocker and a call spawned after the cancelled one both run;
    // the cancelled one never does.
    let after = spawn(&gw, &client, "/t/one/spawn", &json!({"marker": "after.m"})).await;
    assert_eq!(result(&gw, &client, &blocker).await["attempt"], 1);
    assert_eq!(result(&gw, &client, &after).await["attempt"], 1);
    assert!(gw.dir.join("after.m").exists());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !gw.dir.join("cancelled.m").exists(),
        "the cancelled pending call ran"
    );
    assert_problem(
        get_call(&gw, &client, &id, None).await,
        410,
        "call_cancelled",
    )
    .await;
}

async fn cancelling_a_running_call_kills_its_process_group(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let id = spawn(
        &gw,
        &client,
        "/t/work/spawn",
        &json!({"seconds": 30, "marker": "running.m", "child": true}),
    )
    .await;
    let pids = pids_in(&gw.dir.join("running.m"), Duration::from_secs(10)).await;
    assert_eq!(pids.len(), 2, "function and its child");
    assert!(pids.iter().all(|&p| process_alive(p)), "both run: {pids:?}");
    let body = progress(get_call(&gw, &client, &id, None).await).await;
    assert_eq!(body["status"], "running", "{body}");

    let resp = delete_call(&gw, &client, &id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"call_id": id, "status": "cancelled"})
    );
    assert!(
        eventually(Duration::from_secs(3), || pids
            .iter()
            .all(|&p| !process_alive(p)))
        .await,
        "function process and its child are gone after cancel: {pids:?}"
    );
    assert_problem(
        get_call(&gw, &client, &id, None).await,
        410,
        "call_cancelled",
    )
    .await;
    assert_problem(
        get_call(&gw, &client, &id, Some(2.0)).await,
        410,
        "call_cancelled",
    )
    .await;
    let resp = delete_call(&gw, &client, &id).await;
    assert_eq!(resp.status(), 200, "cancelling again is still 200");
}

async fn results_expire_after_result_ttl(store: StoreUnderTest) {
    let gw = gateway(&store, "result_ttl = \"1s\"").await;
    let client = gw.client();
    let id = spawn(&gw, &client, "/t/work/spawn", &json!({"x": 5})).await;
    assert_eq!(result(&gw, &client, &id).await["square"], 25);
    let finished = Instant::now();
    assert_eq!(result(&gw, &client, &id).await["square"], 25);
    let mut last = 0;
    let deadline = finished + Duration::from_secs(5);
    while Instant::now() < deadline {
        last = get_call(&gw, &client, &id, None).await.status().as_u16();
        if last == 404 {
            break;
        }
        assert_eq!(last, 200, "before expiry the result stays readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired_after = finished.elapsed();
    assert_eq!(last, 404, "result expired within 5 s of a 1 s TTL");
    assert!(
        expired_after >= Duration::from_millis(700),
        "expired only after the TTL, not after {expired_after:?}"
    );
    println!("result with result_ttl 1s expired after {expired_after:?}");
    assert_problem(
        get_call(&gw, &client, &id, None).await,
        404,
        "call_not_found",
    )
    .await;
    assert_problem(delete_call(&gw, &client, &id).await, 404, "call_not_found").await;
}

async fn idempotency_key_returns_the_same_call_for_the_same_body(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let spawn_keyed = |key: String, body: &'static str| {
        let client = client.clone();
        let url = gw.url("/t/work/spawn");
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = accepted(&gw, spawn_keyed("order-1".into(), r#"{"x": 4}"#).await).await;
    // Same key and body: the same call (in whatever state it is now), also
    // once it finished.
    for round in ["running", "finished"] {
        let resp = spawn_keyed("order-1".into(), r#"{"x": 4}"#).await;
        assert_eq!(resp.status(), 202, "{round}");
        assert_eq!(header(&resp, "x-call-id"), Some(&*first), "{round}");
        assert_eq!(
            header(&resp, "location"),
            Some(&*format!("/calls/{first}")),
            "{round}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["call_id"], first.as_str(), "{round}");
        assert_eq!(result(&gw, &client, &first).await["square"], 16);
    }
    let ran = result(&gw, &client, &first).await;
    assert_eq!(ran["attempt"], 1, "ran once");

    // Same key, other body: 422.
    let resp = spawn_keyed("order-1".into(), r#"{"x": 5}"#).await;
    assert_problem(resp, 422, "idempotency_mismatch").await;
    // Another key: another call.
    let other = accepted(&gw, spawn_keyed("order-2".into(), r#"{"x": 4}"#).await).await;
    assert_ne!(other, first);

    // Keys: 1 to 255 visible ASCII characters.
    let longest = accepted(&gw, spawn_keyed("k".repeat(255), r#"{"x": 4}"#).await).await;
    assert_ne!(longest, first);
    for bad in ["k".repeat(256), "a b".to_owned(), "caf\u{e9}".to_owned()] {
        let resp = client
            .post(gw.url("/t/work/spawn"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .body(r#"{"x": 4}"#)
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get("x-call-id").is_none(), "{bad:?}");
        assert_problem(resp, 400, "invalid_arguments").await;
    }
}

async fn backlog_over_max_pending_is_503(store: StoreUnderTest) {
    let gw = gateway(&store, "max_pending = 3").await;
    let client = gw.client();
    let blocker = occupy_one(&gw, &client, 3.0).await;
    let mut pending = Vec::new();
    for i in 0..3 {
        pending.push(spawn(&gw, &client, "/t/one/spawn", &json!({"x": i})).await);
    }
    let resp = gw.post_json(&client, "/t/one/spawn", r#"{"x": 9}"#).await;
    assert!(
        header(&resp, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok()),
        "Retry-After seconds on 503"
    );
    assert!(resp.headers().get("x-call-id").is_none());
    assert_problem(resp, 503, "overloaded").await;
    // The bound is per gateway, not per function.
    let resp = gw.post_json(&client, "/t/work/spawn", "{}").await;
    assert_problem(resp, 503, "overloaded").await;
    // Sync calls do not wait in the store and are not refused.
    let resp = gw.post_json(&client, "/t/work", r#"{"x": 3}"#).await;
    assert_eq!(resp.status(), 200);

    // A cancelled pending call frees its place.
    assert_eq!(delete_call(&gw, &client, &pending[0]).await.status(), 200);
    spawn(&gw, &client, "/t/one/spawn", &json!({"x": 10})).await;
    assert_eq!(delete_call(&gw, &client, &blocker).await.status(), 200);
}

async fn spawn_flood_does_not_starve_sync_calls(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    // `four` has concurrency 4: spawned calls get 3 slots, the fourth is
    // reserved for sync callers. 40 spawned calls of 4 s are a backlog of
    // about 50 s, each slot busy for 4 s at a time.
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = json!({"x": i, "seconds": 4, "marker": format!("s{i}.m")});
        ids.push(spawn(&gw, &client, "/t/four/spawn", &body).await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started_spawned = (0..40)
        .filter(|i| gw.dir.join(format!("s{i}.m")).exists())
        .count();
    assert_eq!(
        started_spawned, 3,
        "spawned calls take 3 of 4 slots, never the reserved one"
    );
    // Sync callers get the reserved slot at once (and queue for it), not
    // after the spawned calls holding the others, which would be >= 3 s.
    let started = Instant::now();
    let sync_calls = (0..4).map(|i| {
        let client = client.clone();
        let url = gw.url("/t/four");
        async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"x": 100 + i, "seconds": 0.2}).to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            (status, body, started.elapsed())
        }
    });
    for (i, (status, body, took)) in futures_util::future::join_all(sync_calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "sync call {i}: {body}");
        assert_eq!(body["x"], 100 + i);
        println!("sync call {i} during a spawn flood took {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "sync call {i} waited {took:?} behind the spawned backlog"
        );
    }
    // The backlog is still there: the sync calls went first.
    let last = progress(get_call(&gw, &client, &ids[39], None).await).await;
    assert_eq!(last["status"], "pending", "{last}");
}

async fn idempotency_key_is_scoped_to_its_function(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let keyed = |path: &str| {
        gw.client()
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("idempotency-key", "same-key")
            .body(r#"{"x": 4}"#)
            .send()
    };
    let work = accepted(&gw, keyed("/t/work/spawn").await.unwrap()).await;
    let four = accepted(&gw, keyed("/t/four/spawn").await.unwrap()).await;
    assert_ne!(work, four, "another function's call is never returned");
}

async fn idempotency_key_expires_with_its_call(store: StoreUnderTest) {
    let gw = gateway(&store, "result_ttl = \"1s\"").await;
    let client = gw.client();
    let keyed = || {
        client
            .post(gw.url("/t/work/spawn"))
            .header("content-type", "application/json")
            .header("idempotency-key", "k1")
            .body(r#"{"x": 4}"#)
            .send()
    };
    let first = accepted(&gw, keyed().await.unwrap()).await;
    assert_eq!(result(&gw, &client, &first).await["square"], 16);
    let mut expired = false;
    for _ in 0..50 {
        if get_call(&gw, &client, &first, None).await.status() == 404 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "the call expired");
    let again = accepted(&gw, keyed().await.unwrap()).await;
    assert_ne!(again, first, "an expired key starts a new call");
    assert_eq!(result(&gw, &client, &again).await["square"], 16);
}

async fn long_poll_answers_when_the_call_is_cancelled(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    occupy_one(&gw, &client, 3.0).await;
    let running = spawn(&gw, &client, "/t/work/spawn", &json!({"seconds": 30})).await;
    let pending = spawn(&gw, &client, "/t/one/spawn", &json!({})).await;
    for id in [running, pending] {
        let poll = {
            let client = client.clone();
            let url = gw.url(&format!("/calls/{id}?wait=10"));
            tokio::spawn(async move {
                let resp = client.get(url).send().await.unwrap();
                (resp.status().as_u16(), Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(delete_call(&gw, &client, &id).await.status(), 200);
        let cancelled = Instant::now();
        let (status, answered) = poll.await.unwrap();
        assert_eq!(status, 410, "the long poll ends with call_cancelled");
        let late = answered.saturating_duration_since(cancelled);
        println!("long poll answered {late:?} after the cancel");
        assert!(
            late < Duration::from_millis(500),
            "the long poll answered the cancel at once, not {late:?} later"
        );
    }
}

async fn every_long_poller_of_a_call_wakes_when_it_ends(store: StoreUnderTest) {
    let gw = gateway(&store, "").await;
    let client = gw.client();
    let id = spawn(
        &gw,
        &client,
        "/t/work/spawn",
        &json!({"x": 8, "seconds": 1}),
    )
    .await;
    let started = Instant::now();
    let polls = (0..5).map(|n| {
        // Separate connections as well as streams on one.
        let client = if n % 2 == 0 {
            gw.client()
        } else {
            client.clone()
        };
        let gw = &gw;
        let id = &id;
        async move {
            let resp = get_call(gw, &client, id, Some(10.0)).await;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            (status, body, started.elapsed())
        }
    });
    for (status, body, took) in futures_util::future::join_all(polls).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["square"], 64);
        assert!(took < Duration::from_secs(4), "woke after {took:?}");
    }
}

/// How many calls `gw`'s store holds, by state, as its `/_/metrics` counts
/// them (`fngate_calls`, at most a second old); states none are in are
/// left out.
async fn stored_states(gw: &Gateway) -> HashMap<String, u64> {
    let resp = gw.client().get(gw.url("/_/metrics")).send().await;
    let text = resp.expect("GET /_/metrics").text().await.expect("read");
    text.lines()
        .filter_map(|line| line.strip_prefix("fngate_calls{state=\""))
        .filter_map(|rest| {
            let (state, n) = rest.split_once("\"} ")?;
            Some((state.to_owned(), n.trim().parse().ok()?))
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

async fn every_accepted_spawn_runs_even_when_clients_give_up_mid_spawn(store: StoreUnderTest) {
    let backend = HttpBackend::start().await;
    let square = backend.url("/invoke/square");
    let gw = Gateway::builder()
        .toml(&store.toml(""))
        .toml(&http_fn("t", "square", &[square], "concurrency = 64"))
        .start()
        .await;
    // 400 spawns over h2 from 40 tasks, each given up after 1 to 20 ms:
    // some calls are stored although their client never hears of them.
    let impatient = gw.client_h2();
    let health = impatient.get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the connection is up first");
    let give_ups = (0..40u64).map(|task| {
        let client = impatient.clone();
        let url = gw.url("/t/square/spawn");
        async move {
            let mut answered = 0;
            for i in 0..10u64 {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"x": {i}}}"#))
                    .timeout(Duration::from_millis(1 + (task * 10 + i) % 20))
                    .send()
                    .await;
                answered += usize::from(sent.is_ok_and(|r| r.status() == 202));
            }
            answered
        }
    });
    let answered: usize = futures_util::future::join_all(give_ups).await.iter().sum();
    // Patient clients' calls all run...
    let client = gw.client();
    let patient = (0..50).map(|x| {
        let client = &client;
        let gw = &gw;
        async move {
            let id = spawn(gw, client, "/t/square/spawn", &json!({ "x": x })).await;
            (x, result(gw, client, &id).await)
        }
    });
    for (x, square) in futures_util::future::join_all(patient).await {
        assert_eq!(square, json!(x * x));
    }
    // ...and so did every call stored for the impatient ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = stored_states(&gw).await;
        if !states.contains_key("pending") && !states.contains_key("running") {
            let unheard = states.values().sum::<u64>() as usize - 50 - answered;
            println!("calls by state: {states:?}; {unheard} whose client gave up on the answer");
            assert_eq!(
                states.keys().collect::<Vec<_>>(),
                ["succeeded"],
                "{states:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls left pending or running: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends "ATTEMPT PID" to `kwargs.count`, then sleeps 60 s unless the
/// file `restarted` exists: runs that a kill interrupts, quick ones after.
const FIRST_RUN_HANGS_PY: &str = r#"
import json, os, sys, time
req = json.loads(sys.stdin.read())
kw = req["kwargs"]
with open(kw["count"], "a") as f:
    f.write("%d %d\n" % (req["attempt"], os.getpid()))
if not os.path.exists("restarted"):
    time.sleep(60)
sys.stdout.write(json.dumps({"x": kw["x"], "attempt": req["attempt"]}))
"#;

// Embedded only: a restart on the embedded store's file after a crash
// mid-batch (on Redis a replica's lapsed leases are taken over instead).
#[tokio::test]
async fn calls_claimed_together_run_again_after_kill_9() {
    const CALLS: usize = 30;
    // `wide` has concurrency 16: 12 slots for spawned calls, filled by
    // taking several pending calls from the store at once.
    const SLOTS: usize = 12;
    let builder = || {
        Gateway::builder()
            .file("hang.py", FIRST_RUN_HANGS_PY)
            .toml(&exec_fn(
                "t",
                "wide",
                "hang.py",
                "timeout = \"90s\"\nconcurrency = 16",
            ))
    };
    let mut gw = builder().start().await;
    let client = gw.client();
    let spawns = (0..CALLS).map(|x| {
        let client = &client;
        let gw = &gw;
        let body = json!({"x": x, "count": format!("c{x}.log")});
        async move { spawn(gw, client, "/t/wide/spawn", &body).await }
    });
    let ids = futures_util::future::join_all(spawns).await;
    let started = |dir: &Path| {
        (0..CALLS)
            .filter(|x| dir.join(format!("c{x}.log")).exists())
            .count()
    };
    assert!(
        eventually(Duration::from_secs(30), || started(&gw.dir) >= SLOTS).await,
        "{SLOTS} calls start"
    );
    gw.kill().await;

    std::fs::write(gw.dir.join("restarted"), "").expect("write restarted");
    let gw2 = builder().in_dir(&gw.dir).start().await;
    let client = gw2.client();
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    let mut orphans = Vec::new();
    for (x, id) in ids.iter().enumerate() {
        let body = result(&gw2, &client, id).await;
        let attempt = body["attempt"].as_u64().expect("attempt");
        assert_eq!(body["x"], x, "{id}: {body}");
        *attempts.entry(attempt).or_default() += 1;
        // One run per attempt: none ran twice in one gateway's lifetime.
        let log = std::fs::read_to_string(gw2.dir.join(format!("c{x}.log"))).expect("count log");
        let runs: Vec<(u64, i32)> = log
            .lines()
            .map(|line| {
                let (attempt, pid) = line.split_once(' ').expect("ATTEMPT PID");
                (attempt.parse().expect("attempt"), pid.parse().expect("pid"))
            })
            .collect();
        let numbers: Vec<u64> = runs.iter().map(|(attempt, _)| *attempt).collect();
        assert_eq!(numbers, (1..=attempt).collect::<Vec<_>>(), "call {x}");
        orphans.extend(
            runs.iter()
                .filter(|(a, _)| *a < attempt)
                .map(|(_, pid)| *pid),
        );
    }
    // The first gateway's hanging runs outlived it; they are this test's.
    for pid in orphans {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    println!("attempts after the restart: {attempts:?}");
    assert_eq!(
        attempts,
        HashMap::from([(2, SLOTS), (1, CALLS - SLOTS)]),
        "exactly the calls running at the kill ran again"
    );
}
