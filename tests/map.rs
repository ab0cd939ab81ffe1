//! Fan-out end to end: `POST /{app}/{function}/map` over a warm pool of
//! HTTP instances (`tests/map/map_server.py`) and a class's Lambda
//! instances, through real TLS on HTTP/1.1 and HTTP/2: every input answered
//! once on its own line, in input or completion order, as it ends; each
//! input failing alone; a client that leaves stopping the rest; the
//! function's sync callers keeping their slots; `max_map_inputs`; memory
//! bounded over 10,000 inputs.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Gateway, GatewayBuilder, assert_problem, repo_file};
use serde_json::{Value, json};

/// `[apps.m.functions.NAME]`: HTTP instances of `map_server.py`, plus
/// `extra` lines.
fn pool_fn(name: &str, extra: &str) -> String {
    format!(
        "\n[apps.m.functions.{name}]\nbackend = \"http\"\ncommand = [\"python3\", \"map_server.py\"]\n\
         path = \"/invoke\"\nready_path = \"/ready\"\n{extra}\n"
    )
}

fn builder() -> GatewayBuilder {
    Gateway::builder()
        .file("map_server.py", repo_file("tests/map/map_server.py"))
        .file("json_http.py", repo_file("tests/instances/json_http.py"))
}

/// POSTs `body` to `path` with `content_type` (and `accept`, when given).
async fn post(
    gw: &Gateway,
    client: &reqwest::Client,
    path: &str,
    content_type: &str,
    accept: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut request = client
        .post(gw.url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}\nlogs:\n{}", gw.logs.joined()))
}

/// A 200 NDJSON answer's lines, each parsed.
async fn lines(resp: reqwest::Response) -> Vec<Value> {
    let status = resp.status();
    let content_type = common::header_str(&resp, "content-type");
    let text = resp.text().await.expect("read the map's answer");
    assert_eq!(status, 200, "body: {text}");
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn indexes(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["index"].as_u64().expect("every line has an index"))
        .collect()
}

/// `key` of `/proc/PID/status` (VmRSS, VmHWM) in KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// Runs of `map_server.py` that appended to `file` so far.
fn runs(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |text| text.lines().count())
}

/// 10,000 inputs, each answered with a 4 KiB result (40 MiB in all). The
/// first input runs a second while the others take a millisecond, so in
/// input order every later result waits for it: only the window (16
/// inputs here, twice the concurrency) may be started meanwhile. Bounded,
/// the gateway's peak resident set stays within about a MiB of what it was
/// before the map; the bound of 8 MiB leaves room for TLS and HTTP/2
/// buffers and the allocator's arenas. The same map with the window taken
/// away (every input started at once) grew the gateway by 28 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_inputs_answer_every_index_once_in_order_with_bounded_memory() {
    const INPUTS: usize = 10_000;
    let gw = builder()
        .toml(&pool_fn(
            "sq",
            "concurrency = 8\ninstance_concurrency = 4\nmax_instances = 2\nmin_instances = 2",
        ))
        .start()
        .await;
    // The whole answer within one timeout: longer than the harness's 30 s
    // for a busy machine.
    let client = gw
        .client_builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("build h2 client");
    // Warm: both instances up, the connections to them open.
    let warm = post(
        &gw,
        &client,
        "/m/sq/map",
        "application/json",
        None,
        json!((0..16).map(|x| json!({"x": x})).collect::<Vec<_>>()).to_string(),
    )
    .await;
    assert_eq!(lines(warm).await.len(), 16);
    let before = vm_kib(gw.pid, "VmRSS");
    let inputs: Vec<Value> = (0..INPUTS)
        .map(|x| match x {
            0 => json!({"x": x, "pad": 4096, "sleep": 1}),
            _ => json!({"x": x, "pad": 4096}),
        })
        .collect();
    let started = Instant::now();
    let resp = post(
        &gw,
        &client,
        "/m/sq/map",
        "application/json",
        None,
        json!(inputs).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut pending = Vec::new();
    let mut next = 0u64;
    let mut call_ids = HashSet::new();
    let mut peak_while = 0;
    while let Some(chunk) = resp.chunk().await.unwrap_or_else(|e| {
        panic!(
            "read the answer after {next} lines, {:?}: {e:?}",
            started.elapsed()
        )
    }) {
        pending.extend_from_slice(&chunk);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let value: Value = serde_json::from_slice(&line).expect("a JSON line");
            assert_eq!(
                value["index"],
                next,
                "input order: {}",
                String::from_utf8_lossy(&line)
            );
            let result = &value["result"];
            assert_eq!(result["square"], next * next, "{value}");
            assert_eq!(result["pad"].as_str().map(str::len), Some(4096));
            assert!(call_ids.insert(result["call_id"].as_str().expect("call id").to_owned()));
            next += 1;
            if next % 1000 == 0 {
                peak_while = peak_while.max(vm_kib(gw.pid, "VmRSS"));
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(pending.is_empty());
    assert_eq!(next, INPUTS as u64, "every index once");
    let peak = vm_kib(gw.pid, "VmHWM").max(peak_while);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "10,000 inputs in {elapsed:?}: VmRSS before {before} KiB, peak {peak} KiB (+{growth} KiB)"
    );
    assert!(
        growth < 8 * 1024,
        "the gateway grew by {growth} KiB (from {before} KiB) over 10,000 inputs of 4 KiB results"
    );
}

/// Three inputs that take 1.2 s, 0.6 s and no time, run at once: in
/// completion order the last comes first; in input order (the default)
/// they keep their order.
#[tokio::test]
async fn completion_order_follows_the_inputs_durations() {
    let gw = builder()
        .toml(&pool_fn(
            "slow",
            "concurrency = 4\ninstance_concurrency = 4\nmax_instances = 1",
        ))
        .start()
        .await;
    let client = gw.client_h1();
    let body = json!([{"x": 0, "sleep": 1.2}, {"x": 1, "sleep": 0.6}, {"x": 2}]).to_string();
    let completion = post(
        &gw,
        &client,
        "/m/slow/map?order=completion",
        "application/json",
        None,
        body.clone(),
    )
    .await;
    let completion = lines(completion).await;
    assert_eq!(indexes(&completion), vec![2, 1, 0], "{completion:?}");
    let input =
        lines(post(&gw, &client, "/m/slow/map", "application/json", None, body).await).await;
    assert_eq!(indexes(&input), vec![0, 1, 2], "{input:?}");
    for (i, line) in input.iter().enumerate() {
        assert_eq!(line["result"]["x"], i, "{line}");
    }
}

/// An NDJSON body whose lines fail each in its own way: each failure is
/// its line's problem, the others run.
#[tokio::test]
async fn each_input_fails_on_its_own_line() {
    let schema = r#"{"type": "object", "properties": {"x": {"type": "integer"}}}"#;
    let gw = builder()
        .file("schema.json", schema)
        .toml(&pool_fn(
            "checked",
            "input_schema = \"schema.json\"\nconcurrency = 4",
        ))
        .start()
        .await;
    let body = [
        r#"{"x": 3}"#,
        r#"{"x": "#,
        r#"{"x": "three"}"#,
        r#"{"fail": "boom"}"#,
        r#"{"x": 1, "x": 2}"#,
        r#"{"x": 4}"#,
    ]
    .join("\n");
    for (protocol, client) in gw.clients() {
        let resp = post(
            &gw,
            &client,
            "/m/checked/map",
            "application/x-ndjson",
            None,
            body.clone(),
        )
        .await;
        let request_id = common::header_str(&resp, "x-request-id").expect("a request id");
        let lines = lines(resp).await;
        assert_eq!(
            indexes(&lines),
            vec![0, 1, 2, 3, 4, 5],
            "{protocol}: {lines:?}"
        );
        assert_eq!(lines[0]["result"]["square"], 9, "{protocol}");
        assert_eq!(lines[5]["result"]["square"], 16, "{protocol}");
        let failures = [
            (1, 400, "invalid_json"),
            (2, 400, "invalid_arguments"),
            (3, 500, "function_error"),
            (4, 400, "invalid_json"),
        ];
        for (i, status, code) in failures {
            let error = &lines[i]["error"];
            assert!(lines[i].get("result").is_none(), "{protocol}: {}", lines[i]);
            assert_eq!(
                (error["status"].as_u64(), error["code"].as_str()),
                (Some(status), Some(code)),
                "{protocol}, line {i}: {error}"
            );
            assert_eq!(error["type"], "about:blank");
            assert!(
                error["title"].as_str().is_some_and(|t| !t.is_empty()),
                "{error}"
            );
            assert!(
                error["detail"].as_str().is_some_and(|t| !t.is_empty()),
                "{error}"
            );
            assert_eq!(error["request_id"], request_id.as_str(), "{error}");
        }
        assert_eq!(
            lines[3]["error"]["error"],
            json!({"type": "ValueError", "message": "boom"})
        );
        assert!(
            lines[2]["error"]["detail"].as_str().unwrap().contains("/x"),
            "{}",
            lines[2]
        );
    }
}

/// A client that reads the first line and goes away: the inputs that had
/// not started never run (each run is a line in a file).
#[tokio::test]
async fn a_client_that_leaves_mid_map_stops_the_rest() {
    const INPUTS: usize = 40;
    let gw = builder()
        .toml(&pool_fn(
            "counted",
            "concurrency = 2\ninstance_concurrency = 2\nmax_instances = 1",
        ))
        .start()
        .await;
    for (protocol, client) in gw.clients() {
        let file = gw.dir.join(format!("runs-{}", protocol.replace('/', "")));
        let count = file.to_str().expect("utf-8 path");
        let inputs: Vec<Value> = (0..INPUTS)
            .map(|x| json!({"x": x, "sleep": 0.3, "count": count}))
            .collect();
        let mut resp = post(
            &gw,
            &client,
            "/m/counted/map",
            "application/json",
            None,
            json!(inputs).to_string(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.expect("read").expect("a first line");
        assert!(
            first.starts_with(b"{\"index\":0,"),
            "{}",
            String::from_utf8_lossy(&first)
        );
        drop(resp);
        let at_leaving = runs(&file);
        // Long enough for three more rounds of two inputs, had they gone on.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let after = runs(&file);
        assert!(
            after <= at_leaving + 2 && after < INPUTS / 4,
            "{protocol}: {at_leaving} inputs had run when the client left, {after} ran in all"
        );
    }
}

/// A map keeps to the slots spawned calls may take: a sync call of the
/// same function, made while the map has every other slot busy, runs at
/// once in the quarter kept for sync callers.
#[tokio::test]
async fn a_map_leaves_sync_callers_their_slots() {
    let gw = builder()
        .toml(&pool_fn(
            "shared",
            "concurrency = 4\ninstance_concurrency = 4\nmax_instances = 1",
        ))
        .start()
        .await;
    let client = gw.client();
    let inputs: Vec<Value> = (0..12).map(|x| json!({"x": x, "sleep": 1})).collect();
    let mut map = post(
        &gw,
        &client,
        "/m/shared/map?order=completion",
        "application/json",
        None,
        json!(inputs).to_string(),
    )
    .await;
    assert_eq!(map.status(), 200);
    // The map runs: its first lines come.
    map.chunk().await.expect("read").expect("a first line");
    let started = Instant::now();
    let sync = gw.post_json(&client, "/m/shared", r#"{"x": 7}"#).await;
    let took = started.elapsed();
    assert_eq!(common::json_ok(sync).await["square"], 49);
    assert!(
        took < Duration::from_millis(800),
        "the sync call waited {took:?} behind the map"
    );
}

/// `max_map_inputs`: a JSON array over it is refused whole (413) before
/// anything runs; an NDJSON body, already answered when the line past it
/// comes, ends with that line's 413 after the inputs within it.
#[tokio::test]
async fn more_inputs_than_max_map_inputs_is_413() {
    let gw = builder()
        .server("max_map_inputs = 3")
        .toml(&pool_fn("few", "concurrency = 4"))
        .start()
        .await;
    let client = gw.client();
    let file = gw.dir.join("runs");
    let count = file.to_str().expect("utf-8 path");
    let four: Vec<Value> = (0..4).map(|x| json!({"x": x, "count": count})).collect();
    let resp = post(
        &gw,
        &client,
        "/m/few/map",
        "application/json",
        None,
        json!(four).to_string(),
    )
    .await;
    let problem = assert_problem(resp, 413, "payload_too_large").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("3 inputs"),
        "{problem}"
    );
    assert_eq!(runs(&file), 0, "nothing ran");
    let three = json!(four[..3]).to_string();
    assert_eq!(
        lines(post(&gw, &client, "/m/few/map", "application/json", None, three).await)
            .await
            .len(),
        3
    );
    let ndjson: Vec<String> = (0..5).map(|x| json!({"x": x}).to_string()).collect();
    let lines = lines(
        post(
            &gw,
            &client,
            "/m/few/map",
            "application/x-ndjson",
            None,
            ndjson.join("\n"),
        )
        .await,
    )
    .await;
    assert_eq!(indexes(&lines), vec![0, 1, 2, 3], "{lines:?}");
    assert_eq!(lines[2]["result"]["square"], 4);
    assert_eq!(
        lines[3]["error"]["code"], "payload_too_large",
        "{}",
        lines[3]
    );
    assert_eq!(lines[3]["error"]["status"], 413);
}

/// `Accept: application/json`: one JSON array of the same objects.
#[tokio::test]
async fn accept_json_answers_one_array() {
    // may_call: its calls' tokens are their own (a function that may call
    // nothing has one token for all its calls).
    let gw = builder()
        .toml(&pool_fn("arr", "concurrency = 4\nmay_call = [\"m/arr\"]"))
        .start()
        .await;
    let client = gw.client();
    let body = r#"[{"x": 2}, [5], 6, {"x": 2, "x": 3}]"#.to_owned();
    let resp = post(
        &gw,
        &client,
        "/m/arr/map?y=1",
        "application/json",
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::header_str(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let array: Value = resp.json().await.expect("one JSON array");
    let array = array.as_array().expect("an array");
    assert_eq!(indexes(array), vec![0, 1, 2, 3]);
    assert_eq!(array[0]["result"]["square"], 4);
    // An array is positional arguments, any other value one argument; the
    // query's keys are keyword arguments of every input.
    assert_eq!(array[1]["result"]["args"], json!([5]));
    assert_eq!(array[2]["result"]["args"], json!([6]));
    assert_eq!(array[3]["error"]["code"], "invalid_json", "{}", array[3]);
    // Each input is a call of its own, with a call token of its own.
    let tokens: HashSet<&str> = array[..3]
        .iter()
        .map(|line| line["result"]["token"].as_str().expect("a call token"))
        .collect();
    assert_eq!(tokens.len(), 3, "{array:?}");
    let empty = post(
        &gw,
        &client,
        "/m/arr/map",
        "application/json",
        Some("application/json"),
        "[]".to_owned(),
    )
    .await;
    assert_eq!(empty.text().await.unwrap(), "[]");
}

/// A class method's map: every input runs on the instance set its class
/// parameters pick; the parameters never become keyword arguments.
#[tokio::test]
async fn a_class_method_maps_on_its_parameter_set() {
    let gw = common::instances_builder()
        .toml(
            "\n[apps.m.classes.model]\nbackend = \"lambda\"\n\
             command = [\"python3\", \"lambda_runtime.py\", \"setup_counter.handler\"]\n\
             parameters = [\"size\"]\nenv.SETUP_COUNT_FILE = \"model.setup\"\n\
             [apps.m.classes.model.functions.predict]\n",
        )
        .start()
        .await;
    let client = gw.client();
    let resp = post(
        &gw,
        &client,
        "/m/model/predict/map?size=large&y=1",
        "application/json",
        None,
        json!([{"x": 1}, {"x": 2}, {"x": 3}]).to_string(),
    )
    .await;
    let lines = lines(resp).await;
    assert_eq!(indexes(&lines), vec![0, 1, 2]);
    for (i, line) in lines.iter().enumerate() {
        let result = &line["result"];
        assert_eq!(result["class"], "model", "{line}");
        assert_eq!(result["function"], "predict", "{line}");
        assert_eq!(result["parameters"], json!({"size": "large"}), "{line}");
        assert_eq!(result["params"]["FNGATE_PARAM_SIZE"], "large", "{line}");
        assert_eq!(result["kwargs"], json!({"y": "1", "x": i + 1}), "{line}");
    }
}

/// An NDJSON body sent a line at a time, each only once the line before
/// it was answered: the answers go out while the body is still coming,
/// each line flushed as it is ready, on HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn ndjson_lines_are_answered_while_the_body_still_streams() {
    let gw = builder()
        .toml(&pool_fn("live", "concurrency = 4"))
        .start()
        .await;
    for (protocol, client) in gw.clients() {
        let (send, receive) = tokio::sync::mpsc::channel::<String>(1);
        let stream = futures_util::stream::unfold(receive, |mut receive| async move {
            let line = receive.recv().await?;
            Some((Ok::<_, std::io::Error>(line), receive))
        });
        send.send(json!({"x": 0}).to_string() + "\n").await.unwrap();
        let request = client
            .post(gw.url("/m/live/map"))
            .header("content-type", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        let mut resp = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap_or_else(|_| panic!("{protocol}: no answer head while the body streams"))
            .expect("the map answers");
        assert_eq!(resp.status(), 200);
        let mut got = Vec::new();
        for x in 0..3u64 {
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("{protocol}: line {x} did not come"))
                    .expect("read")
                    .expect("the answer goes on");
                line.extend_from_slice(&chunk);
            }
            let value: Value = serde_json::from_slice(&line).expect("a JSON line");
            assert_eq!(value["index"], x, "{protocol}: {value}");
            assert_eq!(value["result"]["square"], x * x, "{protocol}: {value}");
            got.push(value);
            if x < 2 {
                send.send(json!({"x": x + 1}).to_string() + "\n")
                    .await
                    .unwrap();
            }
        }
        drop(send);
        // The end (HTTP/2 may close the stream with an empty DATA frame).
        while let Some(rest) = resp.chunk().await.expect("read the end") {
            assert!(
                rest.is_empty(),
                "{protocol}: nothing after the last line: {rest:?}"
            );
        }
    }
}

/// Map inputs run again as the function's `retries` say, each with its
/// own `attempt`; one that keeps failing answers its last failure.
#[tokio::test]
async fn map_inputs_are_retried_per_the_functions_retries() {
    let gw = builder()
        .toml(&pool_fn("flaky", "concurrency = 4\nretries = 1"))
        .start()
        .await;
    let client = gw.client();
    let file = gw.dir.join("runs");
    let count = file.to_str().expect("utf-8 path");
    let body = json!([
        {"x": 1, "fail_below": 2, "count": count},
        {"x": 2},
        {"fail": "always", "count": count},
    ]);
    let started = Instant::now();
    let lines = lines(
        post(
            &gw,
            &client,
            "/m/flaky/map",
            "application/json",
            None,
            body.to_string(),
        )
        .await,
    )
    .await;
    assert_eq!(lines[0]["result"]["attempt"], 2, "{}", lines[0]);
    assert_eq!(lines[1]["result"]["attempt"], 1, "{}", lines[1]);
    assert_eq!(lines[2]["error"]["code"], "function_error", "{}", lines[2]);
    assert_eq!(runs(&file), 4, "two runs each for the failing inputs");
    // `retries = 1`: the second run comes a second after the first.
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The runs of one input share its call id.
    let ids: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 2, "{ids:?}");
}

/// What a map refuses whole, before anything runs.
#[tokio::test]
async fn a_bad_map_request_is_refused_whole() {
    let gw = builder().toml(&pool_fn("strict", "")).start().await;
    let client = gw.client();
    let get = client.get(gw.url("/m/strict/map")).send().await.unwrap();
    assert_eq!(common::header_str(&get, "allow").as_deref(), Some("POST"));
    assert_problem(get, 405, "method_not_allowed").await;
    let text = post(
        &gw,
        &client,
        "/m/strict/map",
        "text/plain",
        None,
        "1".into(),
    )
    .await;
    assert_problem(text, 415, "unsupported_media_type").await;
    let object = post(
        &gw,
        &client,
        "/m/strict/map",
        "application/json",
        None,
        r#"{"x": 1}"#.into(),
    )
    .await;
    assert_problem(object, 400, "invalid_arguments").await;
    let broken = post(
        &gw,
        &client,
        "/m/strict/map",
        "application/json",
        None,
        "[1, 2".into(),
    )
    .await;
    assert_problem(broken, 400, "invalid_json").await;
    let order = post(
        &gw,
        &client,
        "/m/strict/map?order=random",
        "application/json",
        None,
        "[1]".into(),
    )
    .await;
    assert_problem(order, 400, "bad_request").await;
    // `map/spawn` is a spawned map (tests/map_spawn.rs): accepted whole.
    let spawn = post(
        &gw,
        &client,
        "/m/strict/map/spawn",
        "application/json",
        None,
        "[1]".into(),
    )
    .await;
    assert_eq!(spawn.status(), 202);
}

/// A streaming function's input answers the array of its items.
#[tokio::test]
async fn a_streaming_functions_inputs_answer_the_arrays_of_their_items() {
    let gw = Gateway::builder()
        .file(
            "items.py",
            "import json, sys\nx = json.load(sys.stdin)[\"kwargs\"][\"x\"]\n\
             for i in range(x):\n    print(json.dumps({\"i\": i}), flush=True)\n",
        )
        .toml(&common::exec_fn("m", "items", "items.py", "stream = true"))
        .start()
        .await;
    let client = gw.client();
    let body = json!([{"x": 2}, {"x": 0}, {"x": 3}]).to_string();
    let lines =
        lines(post(&gw, &client, "/m/items/map", "application/json", None, body).await).await;
    assert_eq!(lines[0]["result"], json!([{"i": 0}, {"i": 1}]), "{lines:?}");
    assert_eq!(lines[1]["result"], json!([]), "{lines:?}");
    assert_eq!(
        lines[2]["result"],
        json!([{"i": 0}, {"i": 1}, {"i": 2}]),
        "{lines:?}"
    );
}

/// A client that leaves while a warm Lambda instance runs one of its
/// inputs: the instance is stopped, as for a sync caller that leaves,
/// long before the input would have ended.
#[tokio::test]
async fn a_client_that_leaves_stops_the_instance_running_its_input() {
    let gw = common::instances_builder()
        .file("started.py", repo_file("tests/map/started.py"))
        .toml(&common::lambda_fn(
            "held",
            r#"["python3", "lambda_runtime.py", "started.handler"]"#,
            "concurrency = 1",
        ))
        .start()
        .await;
    let client = gw.client();
    let started = gw.dir.join("started");
    let marker = started.to_str().expect("utf-8 path");
    let inputs: Vec<Value> = (0..5)
        .map(|_| json!({"sleep": 30, "started": marker}))
        .collect();
    let resp = post(
        &gw,
        &client,
        "/w/held/map",
        "application/json",
        None,
        json!(inputs).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        common::eventually(Duration::from_secs(15), || started.exists()).await,
        "the first input did not start"
    );
    let pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(common::process_alive(pid));
    drop(resp);
    assert!(
        common::eventually(Duration::from_secs(5), || !common::process_alive(pid)).await,
        "the instance {pid} still runs the input of a client that left"
    );
}
