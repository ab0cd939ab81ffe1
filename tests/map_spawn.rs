//! Spawned maps end to end: `POST /{app}/{function}/map/spawn` stores
//! every input before its `202`; `GET /calls/{id}` reports progress with
//! `202` and, once every input has ended, the NDJSON lines in input order
//! (`?wait=` long-polls); `DELETE` cancels the rest; a gateway killed
//! with SIGKILL mid-map answers every input after its restart; idempotency
//! keys, one webhook when the map ends, `max_map_inputs`, a bad input
//! stored as its 400, and a class method's map.
//!
//! The function (`tests/map_spawn/item.py`, an exec function) appends
//! "x attempt" to `runs` in the gateway's folder on every run.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::StoreUnderTest;
use common::{Gateway, GatewayBuilder, assert_problem, eventually, exec_fn, header_str, repo_file};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// App `m`: `item` (exec, `concurrency`, `extra` lines), plus `server`
/// lines, on `store`.
fn builder(store: &StoreUnderTest, server: &str, concurrency: u32, extra: &str) -> GatewayBuilder {
    Gateway::builder()
        .server(server)
        .toml(&store.toml(""))
        .file("item.py", repo_file("tests/map_spawn/item.py"))
        .toml(&exec_fn(
            "m",
            "item",
            "item.py",
            &format!("timeout = \"20s\"\nconcurrency = {concurrency}\n{extra}"),
        ))
}

/// POSTs `body` to `path` as `content_type`, with extra `headers`.
async fn post(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: String,
) -> reqwest::Response {
    let mut request = client
        .post(gw.url(path))
        .header("content-type", content_type)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}\nlogs:\n{}", gw.logs.joined()))
}

/// Spawns a map of `inputs` (a JSON array) on `path`: its call id, after
/// checking the 202's body and `Location`.
async fn spawn_map(gw: &Gateway, client: &reqwest::Client, path: &str, inputs: &Value) -> String {
    let resp = post(
        gw,
        client,
        path,
        "application/json",
        &[],
        inputs.to_string(),
    )
    .await;
    accepted(resp).await
}

/// The call id of a map's 202, after checking its body and `Location`.
async fn accepted(resp: reqwest::Response) -> String {
    let status = resp.status();
    let location = header_str(&resp, "location");
    let body: Value = resp.json().await.expect("202 body JSON");
    assert_eq!(status, 202, "{body}");
    let id = body["call_id"].as_str().expect("call_id").to_owned();
    assert!(id.starts_with("fc-"), "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    assert!(
        body["status_url"]
            .as_str()
            .is_some_and(|url| url.ends_with(&format!("/calls/{id}"))),
        "{body}"
    );
    assert_eq!(location.as_deref(), Some(format!("/calls/{id}").as_str()));
    id
}

/// `GET /calls/{id}` (with `?wait=` when given).
async fn get(
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

/// A finished map's lines, each parsed, after checking the 200.
async fn lines(resp: reqwest::Response) -> Vec<Value> {
    let status = resp.status();
    let content_type = header_str(&resp, "content-type");
    let text = resp.text().await.expect("read the map's lines");
    assert_eq!(status, 200, "body: {text}");
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Waits (long polls) until the map has ended: its lines.
async fn finished(gw: &Gateway, client: &reqwest::Client, id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let resp = get(gw, client, id, Some(30.0)).await;
        if resp.status() == 200 {
            return lines(resp).await;
        }
        let body: Value = resp.json().await.expect("progress JSON");
        assert!(
            Instant::now() < deadline,
            "the map did not end: {body}\nlogs:\n{}",
            gw.logs.joined()
        );
    }
}

/// Runs recorded in `runs`: how many per input (`x`, as JSON text).
fn runs(gw: &Gateway) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(gw.dir.join("runs")).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        let x = line.split(' ').next().unwrap_or(line);
        *counts.entry(x.to_owned()).or_insert(0) += 1;
    }
    counts
}

fn total_runs(gw: &Gateway) -> usize {
    runs(gw).values().sum()
}

fn indexes(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["index"].as_u64().expect("index"))
        .collect()
}

// The store's contract: each test below runs on the embedded store and on
// Redis (`NAME::embedded`, `NAME::redis`).
both_stores!(
    a_map_answers_202_then_its_progress_then_its_lines_in_input_order,
    wait_long_polls_until_the_map_ends,
    delete_cancels_the_rest_of_the_map,
    an_idempotency_key_gives_the_same_map_and_another_body_is_422,
    the_webhook_fires_once_when_the_map_ends,
    more_inputs_than_max_map_inputs_is_413,
    a_bad_input_line_is_stored_as_its_400,
    a_class_method_map_spawn_runs_on_its_parameter_set,
    a_failing_input_is_retried_as_the_functions_retries_say,
    someone_elses_map_is_404,
    a_sync_call_is_not_starved_by_a_running_map,
);
// Embedded only: its Redis twin doubled the suite's longest test (a minute
// of CPU on CI's two cores). The Redis store's large maps are in
// tests/redis_store/maps.rs (20,000 inputs stored in one write and paged
// back in order), and a replica's memory under a million pending calls in
// bench/redis-sizing.sh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_25000_inputs_runs_every_input_once_with_bounded_memory_embedded() {
    a_map_of_25000_inputs_runs_every_input_once_with_bounded_memory(StoreUnderTest::Embedded).await;
}

/// The 202 reports its inputs by state until all ended; then the lines
/// come in input order, one per input, a failing input as its error.
async fn a_map_answers_202_then_its_progress_then_its_lines_in_input_order(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "").start().await;
    let client = gw.client();
    let mut inputs: Vec<Value> = (0..12).map(|x| json!(x)).collect();
    inputs[5] = json!("five");
    let id = spawn_map(
        &gw,
        &client,
        "/m/item/map/spawn?seconds=0.3",
        &json!(inputs),
    )
    .await;
    let resp = get(&gw, &client, &id, None).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(header_str(&resp, "retry-after").as_deref(), Some("1"));
    let progress: Value = resp.json().await.unwrap();
    assert_eq!(progress["call_id"], id.as_str());
    assert_eq!(progress["inputs"], 12, "{progress}");
    let counts = ["succeeded", "failed", "pending"].map(|k| progress[k].as_u64().unwrap());
    assert_eq!(counts.iter().sum::<u64>(), 12, "{progress}");
    assert!(
        counts[2] > 0,
        "12 inputs of 0.3 s at 4 at a time are not all done at once: {progress}"
    );
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(indexes(&lines), (0..12).collect::<Vec<_>>());
    for (i, line) in lines.iter().enumerate() {
        if i == 5 {
            assert_eq!(line["error"]["status"], 500, "{line}");
            assert_eq!(line["error"]["code"], "function_error", "{line}");
            continue;
        }
        assert_eq!(line["result"]["square"], i * i, "{line}");
        // Each input's run has a call id of its own, under the map's.
        assert_eq!(line["result"]["call_id"], format!("{id}-{i}"), "{line}");
    }
    assert_eq!(total_runs(&gw), 12);
}

/// `?wait=` holds the answer until the map ends (or the wait passes: then
/// the progress).
async fn wait_long_polls_until_the_map_ends(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "").start().await;
    let client = gw.client();
    let id = spawn_map(
        &gw,
        &client,
        "/m/item/map/spawn?seconds=1.5",
        &json!([1, 2]),
    )
    .await;
    let started = Instant::now();
    let resp = get(&gw, &client, &id, Some(0.3)).await;
    assert_eq!(resp.status(), 202, "still running after 0.3 s");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let resp = get(&gw, &client, &id, Some(30.0)).await;
    let waited = started.elapsed();
    let lines = lines(resp).await;
    assert_eq!(indexes(&lines), vec![0, 1]);
    assert!(
        waited >= Duration::from_millis(1400),
        "answered at the end: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "answered when it ended, not at the wait's end: {waited:?}"
    );
}

/// `DELETE` cancels the inputs that have not ended: the running one is
/// stopped, the rest never run, and the map reads 410 from then on.
async fn delete_cancels_the_rest_of_the_map(store: StoreUnderTest) {
    // Concurrency 2: one slot for spawned work, so one input runs at a time.
    let gw = builder(&store, "", 2, "").start().await;
    let client = gw.client();
    let inputs: Vec<Value> = (0..8).map(|x| json!(x)).collect();
    let id = spawn_map(&gw, &client, "/m/item/map/spawn?seconds=5", &json!(inputs)).await;
    assert!(
        eventually(Duration::from_secs(20), || total_runs(&gw) >= 1).await,
        "the first input never ran"
    );
    let first = std::fs::read_to_string(gw.dir.join("runs")).unwrap();
    let pid: i32 = first
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(2))
        .and_then(|pid| pid.parse().ok())
        .expect("the first run's pid");
    let resp = client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    assert_problem(get(&gw, &client, &id, None).await, 410, "call_cancelled").await;
    assert!(
        eventually(Duration::from_secs(5), || !common::process_alive(pid)).await,
        "the running input's process was stopped"
    );
    // Long enough for two more inputs to have run had the cancel not stopped them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ran = total_runs(&gw);
    assert!(ran <= 2, "{ran} inputs ran after the cancel");
    assert_problem(
        get(&gw, &client, &id, Some(1.0)).await,
        410,
        "call_cancelled",
    )
    .await;
    let again = client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        200,
        "cancelling a cancelled map is no error"
    );
}

/// At-least-once per input: a gateway killed with SIGKILL mid-map, then
/// restarted on the same store, answers every input once, in order, and
/// every input ran at least once (those running at the kill again).
// Embedded only: a restart on the embedded store's file (on Redis a
// replica's lapsed leases are taken over instead).
#[tokio::test]
async fn a_map_killed_mid_way_answers_every_input_after_restart() {
    let store = StoreUnderTest::Embedded;
    let mut gw = builder(&store, "", 6, "").start().await;
    let client = gw.client();
    let inputs: Vec<Value> = (0..40).map(|x| json!(x)).collect();
    let id = spawn_map(
        &gw,
        &client,
        "/m/item/map/spawn?seconds=0.3",
        &json!(inputs),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(30), || total_runs(&gw) >= 8).await,
        "inputs never ran"
    );
    gw.kill().await;
    let before = total_runs(&gw);
    assert!(before < 40, "killed mid-way ({before} runs)");
    let gw = builder(&store, "", 6, "").in_dir(&gw.dir).start().await;
    let client = gw.client();
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(
        indexes(&lines),
        (0..40).collect::<Vec<_>>(),
        "every line once, in order"
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["result"]["square"], i * i, "{line}");
    }
    let runs = runs(&gw);
    for x in 0..40 {
        assert!(
            runs.get(&x.to_string()).copied().unwrap_or(0) >= 1,
            "input {x} never ran: {runs:?}"
        );
    }
    // The inputs running at the kill ran again, their attempt counted.
    let text = std::fs::read_to_string(gw.dir.join("runs")).unwrap();
    let again = text
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some("2"))
        .count();
    assert!(again >= 1, "no input ran again after the kill:\n{text}");
}

/// The same `Idempotency-Key` and body give the same map; another body
/// with it is 422.
async fn an_idempotency_key_gives_the_same_map_and_another_body_is_422(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "").start().await;
    let client = gw.client();
    let key = [("idempotency-key", "map-1")];
    let body = json!([1, 2, 3]).to_string();
    let first = accepted(
        post(
            &gw,
            &client,
            "/m/item/map/spawn",
            "application/json",
            &key,
            body.clone(),
        )
        .await,
    )
    .await;
    let resp = post(
        &gw,
        &client,
        "/m/item/map/spawn",
        "application/json",
        &key,
        body,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["call_id"], first.as_str());
    let other = json!([1, 2, 4]).to_string();
    let resp = post(
        &gw,
        &client,
        "/m/item/map/spawn",
        "application/json",
        &key,
        other,
    )
    .await;
    assert_problem(resp, 422, "idempotency_mismatch").await;
    let lines = finished(&gw, &client, &first).await;
    assert_eq!(indexes(&lines), vec![0, 1, 2]);
    assert_eq!(total_runs(&gw), 3, "the repeat ran nothing");
}

/// A webhook receiver on 127.0.0.1 that answers 200 and keeps the bodies.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let got: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let log = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let body = req.into_body().collect().await;
                            log.lock()
                                .expect("receiver lock")
                                .push(body.map(|b| b.to_bytes()).unwrap_or_default());
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"{}",
                            ))))
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Receiver { port, got }
    }

    fn deliveries(&self) -> Vec<Bytes> {
        self.got.lock().expect("receiver lock").clone()
    }
}

/// `Callback-Url`: one delivery, when the map ends, with a summary of its
/// inputs as the result.
async fn the_webhook_fires_once_when_the_map_ends(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "")
        .toml("[webhooks]\nsecret_env = \"FNGATE_WEBHOOK_SECRET\"\nallow_hosts = [\"127.0.0.1\"]\n")
        .env(
            "FNGATE_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        )
        .start()
        .await;
    let client = gw.client();
    let receiver = Receiver::start().await;
    let callback = format!("http://127.0.0.1:{}/hook", receiver.port);
    let headers = [("callback-url", callback.as_str())];
    let body = json!([1, "two", 3, 4]).to_string();
    let resp = post(
        &gw,
        &client,
        "/m/item/map/spawn?seconds=0.2",
        "application/json",
        &headers,
        body,
    )
    .await;
    let id = accepted(resp).await;
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(lines.len(), 4);
    assert!(
        eventually(Duration::from_secs(20), || !receiver
            .deliveries()
            .is_empty())
        .await,
        "no webhook\nlogs:\n{}",
        gw.logs.joined()
    );
    // Room for a second delivery, had there been one per input.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "one delivery per map");
    let payload: Value = serde_json::from_slice(&deliveries[0]).expect("webhook JSON");
    assert_eq!(
        payload,
        json!({"call_id": id, "status": "succeeded",
               "result": {"inputs": 4, "succeeded": 3, "failed": 1}})
    );
}

/// More inputs than `max_map_inputs` refuse the map whole (413), as a JSON
/// array or as NDJSON lines; nothing runs.
async fn more_inputs_than_max_map_inputs_is_413(store: StoreUnderTest) {
    let gw = builder(&store, "max_map_inputs = 3", 4, "").start().await;
    let client = gw.client();
    let resp = post(
        &gw,
        &client,
        "/m/item/map/spawn",
        "application/json",
        &[],
        json!([1, 2, 3, 4]).to_string(),
    )
    .await;
    assert_problem(resp, 413, "payload_too_large").await;
    let resp = post(
        &gw,
        &client,
        "/m/item/map/spawn",
        "application/x-ndjson",
        &[],
        "1\n2\n3\n4\n".to_owned(),
    )
    .await;
    assert_problem(resp, 413, "payload_too_large").await;
    let id = accepted(
        post(
            &gw,
            &client,
            "/m/item/map/spawn",
            "application/x-ndjson",
            &[],
            "1\n2\n3\n".to_owned(),
        )
        .await,
    )
    .await;
    assert_eq!(indexes(&finished(&gw, &client, &id).await), vec![0, 1, 2]);
    assert_eq!(total_runs(&gw), 3, "only the accepted map ran");
}

/// An input that is not JSON is stored as already failed, with its 400:
/// the map is accepted and its other inputs run.
async fn a_bad_input_line_is_stored_as_its_400(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "").start().await;
    let client = gw.client();
    let body = "1\n{not json\n3\n".to_owned();
    let id = accepted(
        post(
            &gw,
            &client,
            "/m/item/map/spawn",
            "application/x-ndjson",
            &[],
            body,
        )
        .await,
    )
    .await;
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(indexes(&lines), vec![0, 1, 2]);
    assert_eq!(lines[0]["result"]["square"], 1);
    assert_eq!(lines[1]["error"]["status"], 400, "{}", lines[1]);
    assert_eq!(lines[1]["error"]["code"], "invalid_json", "{}", lines[1]);
    assert_eq!(lines[2]["result"]["square"], 9);
    assert_eq!(total_runs(&gw), 2, "the bad input never ran");
}

/// A class method's map/spawn runs every input on the instances its
/// class parameters pick; the parameters never become keyword arguments.
async fn a_class_method_map_spawn_runs_on_its_parameter_set(store: StoreUnderTest) {
    let gw = common::instances_builder()
        .toml(&store.toml(""))
        .toml(
            "\n[apps.m.classes.model]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"setup_counter.handler\"]\n\
             parameters = [\"size\"]\nenv.SETUP_COUNT_FILE = \"model.setup\"\n\
             [apps.m.classes.model.functions.predict]\n",
        )
        .start()
        .await;
    let client = gw.client();
    let id = spawn_map(
        &gw,
        &client,
        "/m/model/predict/map/spawn?size=large&y=1",
        &json!([{"x": 1}, {"x": 2}, {"x": 3}]),
    )
    .await;
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(indexes(&lines), vec![0, 1, 2]);
    for (i, line) in lines.iter().enumerate() {
        let result = &line["result"];
        assert_eq!(result["class"], "model", "{line}");
        assert_eq!(result["function"], "predict", "{line}");
        assert_eq!(result["parameters"], json!({"size": "large"}), "{line}");
        assert_eq!(result["kwargs"], json!({"y": "1", "x": i + 1}), "{line}");
    }
}

/// A function's `retries` apply to each input: a failing input runs again
/// (attempt 2, after the fixed second) and its line is its last run's;
/// the others run once.
async fn a_failing_input_is_retried_as_the_functions_retries_say(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "retries = 1").start().await;
    let client = gw.client();
    let id = spawn_map(&gw, &client, "/m/item/map/spawn", &json!([1, "two", 3])).await;
    let lines = finished(&gw, &client, &id).await;
    assert_eq!(indexes(&lines), vec![0, 1, 2]);
    assert_eq!(lines[1]["error"]["code"], "function_error", "{}", lines[1]);
    let text = std::fs::read_to_string(gw.dir.join("runs")).unwrap();
    let mut attempts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("\"two\""))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, vec!["1", "2"]);
    let runs = runs(&gw);
    assert_eq!((runs["1"], runs["3"]), (1, 1), "{runs:?}");
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A map of an authenticated function belongs to whoever spawned it:
/// anyone else reading or cancelling it gets 404, as for an unknown id.
async fn someone_elses_map_is_404(store: StoreUnderTest) {
    let keys: String = ["alice-key-0123456789abcdef", "bob-key-0123456789abcdef"]
        .iter()
        .map(|key| {
            let name = key.split('-').next().unwrap();
            format!(
                "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"invoke:m/*\"]\n",
                sha256_hex(key.as_bytes())
            )
        })
        .collect();
    let gw = builder(&store, "", 4, "").toml(&keys).start().await;
    let client = gw.client();
    let resp = client
        .post(gw.url("/m/item/map/spawn?seconds=2"))
        .bearer_auth("alice-key-0123456789abcdef")
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    let id = accepted(resp).await;
    let path = format!("/calls/{id}");
    for request in [client.get(gw.url(&path)), client.delete(gw.url(&path))] {
        let resp = request
            .bearer_auth("bob-key-0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_problem(resp, 404, "call_not_found").await;
    }
    let resp = client
        .get(gw.url(&format!("{path}?wait=30")))
        .bearer_auth("alice-key-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(
        indexes(&lines(resp).await),
        vec![0, 1],
        "bob's DELETE cancelled nothing"
    );
}

/// `key` of `/proc/PID/status` (VmRSS, VmHWM) in KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// `max_map_inputs` (25,000) inputs to a warm pool of HTTP instances, each
/// answered with 1 KiB (25 MiB of results in all): every input runs and
/// is answered once, in order, and the gateway's resident set grows by
/// far less than the results: inputs are claimed in batches as slots free
/// up and the lines are read back from the store a page at a time. (The
/// bound, 20 MiB, leaves room for the request body and its inputs while
/// they are stored, TLS and HTTP/2 buffers and the allocator's arenas.)
async fn a_map_of_25000_inputs_runs_every_input_once_with_bounded_memory(store: StoreUnderTest) {
    const INPUTS: usize = 25_000;
    let gw = Gateway::builder()
        .toml(&store.toml(""))
        .file("map_server.py", repo_file("tests/map/map_server.py"))
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
        .toml(
            "\n[apps.m.functions.sq]\nbackend = \"http\"\ncommand = [\"python3\", \"map_server.py\"]\n\
             path = \"/invoke\"\nready_path = \"/ready\"\nconcurrency = 8\ninstance_concurrency = 4\n\
             max_instances = 2\nmin_instances = 2\n",
        )
        .start()
        .await;
    let client = gw
        .client_builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("build client");
    // Warm: both instances up.
    let warm = spawn_map(
        &gw,
        &client,
        "/m/sq/map/spawn",
        &json!([{"x": 1}, {"x": 2}]),
    )
    .await;
    assert_eq!(finished(&gw, &client, &warm).await.len(), 2);
    let before = vm_kib(gw.pid, "VmRSS");
    let inputs: Vec<Value> = (0..INPUTS).map(|x| json!({"x": x, "pad": 1024})).collect();
    let started = Instant::now();
    let id = spawn_map(&gw, &client, "/m/sq/map/spawn", &json!(inputs)).await;
    drop(inputs);
    let stored = started.elapsed();
    let mut peak_while = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let resp = get(&gw, &client, &id, Some(2.0)).await;
        peak_while = peak_while.max(vm_kib(gw.pid, "VmRSS"));
        if resp.status() == 200 {
            let mut resp = resp;
            let (mut pending, mut next) = (Vec::new(), 0u64);
            while let Some(chunk) = resp.chunk().await.expect("read the lines") {
                pending.extend_from_slice(&chunk);
                while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    let value: Value = serde_json::from_slice(&line).expect("a JSON line");
                    assert_eq!(value["index"], next, "input order");
                    assert_eq!(value["result"]["square"], next * next, "{value}");
                    next += 1;
                    if next % 5000 == 0 {
                        peak_while = peak_while.max(vm_kib(gw.pid, "VmRSS"));
                    }
                }
            }
            assert!(pending.is_empty());
            assert_eq!(next, INPUTS as u64, "every index once");
            break;
        }
        let progress: Value = resp.json().await.unwrap();
        assert!(Instant::now() < deadline, "not done: {progress}");
    }
    let peak = vm_kib(gw.pid, "VmHWM").max(peak_while);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "25,000 inputs stored in {stored:?}, answered in {:?}: VmRSS before {before} KiB, peak {peak} KiB (+{growth} KiB)",
        started.elapsed()
    );
    assert!(
        growth < 20 * 1024,
        "the gateway grew by {growth} KiB over 25,000 inputs"
    );
}

/// A map's inputs take the function's slots as spawned calls do: a sync
/// call of the same function still finds its slot at once.
async fn a_sync_call_is_not_starved_by_a_running_map(store: StoreUnderTest) {
    let gw = builder(&store, "", 4, "").start().await;
    let client = gw.client();
    let inputs: Vec<Value> = (0..30).map(|x| json!(x)).collect();
    let id = spawn_map(&gw, &client, "/m/item/map/spawn?seconds=2", &json!(inputs)).await;
    assert!(
        eventually(Duration::from_secs(20), || total_runs(&gw) >= 3).await,
        "the map's inputs never ran"
    );
    let started = Instant::now();
    let resp = gw.post_json(&client, "/m/item", "[7]").await;
    let took = started.elapsed();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["square"], 49, "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "the sync call waited {took:?} behind the map"
    );
    let progress: Value = get(&gw, &client, &id, None).await.json().await.unwrap();
    assert!(
        progress["pending"].as_u64().unwrap() > 0,
        "the map still runs: {progress}"
    );
    client
        .delete(gw.url(&format!("/calls/{id}")))
        .send()
        .await
        .unwrap();
}
