//! `/_/metrics` end to end: counters move by exactly what known requests
//! did (200s, 404s, a bad body, a spawn, a failing call, a warm
//! instance's cold start), label values never carry a client's path, an
//! independent parser (Python's `prometheus_client`) reads the whole
//! exposition, and a real Prometheus server scrapes it over HTTPS.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Gateway, WORK_PY, assert_problem, closed_port, exec_fn, instances_builder, json_ok, lambda_fn,
};
use serde_json::{Value, json};

/// A gateway with `m/sq` (squares `x`, fails with `fail`) and `m/other`.
async fn gateway() -> Gateway {
    Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("m", "sq", "work.py", ""))
        .toml(&exec_fn("m", "other", "work.py", ""))
        .start()
        .await
}

async fn scrape(gw: &Gateway) -> String {
    let response = gw.client().get(gw.url("/_/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.unwrap()
}

/// Every sample of the exposition: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<(String, Vec<(String, String)>), f64> {
    let mut all = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        labels.sort();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("a number"),
        };
        all.insert((name.to_owned(), labels), value);
    }
    all
}

/// The value of `name` with exactly `labels` (0 when absent).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples(text)
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn requests(text: &str, app: &str, function: &str, status: &str) -> f64 {
    value(
        text,
        "fngate_requests_total",
        &[("app", app), ("function", function), ("status", status)],
    )
}

#[tokio::test]
async fn counters_move_by_exactly_the_known_requests() {
    let gw = gateway().await;
    let client = gw.client();
    let before = scrape(&gw).await;
    assert_eq!(requests(&before, "m", "sq", "200"), 0.0);
    for x in 1..=3 {
        let answer = gw
            .post_json(&client, "/m/sq", &json!({"x": x}).to_string())
            .await;
        assert_eq!(json_ok(answer).await["square"], x * x);
    }
    // An unknown function and an unknown app: counted, never by name.
    assert_problem(
        client.post(gw.url("/m/nope")).send().await.unwrap(),
        404,
        "function_not_found",
    )
    .await;
    assert_problem(
        client.post(gw.url("/zz/sq")).send().await.unwrap(),
        404,
        "app_not_found",
    )
    .await;
    // A body that is not JSON: the function's own 400.
    let bad = client
        .post(gw.url("/m/sq"))
        .header("content-type", "application/json")
        .body("{\"x\": ")
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400, "invalid_json").await;
    // A failing call: 500, and a backend error of kind function_error.
    let failed = gw
        .post_json(&client, "/m/other", &json!({"fail": "no"}).to_string())
        .await;
    assert_problem(failed, 500, "function_error").await;
    // A spawn, then its result.
    let spawned = gw
        .post_json(&client, "/m/sq/spawn", &json!({"x": 5}).to_string())
        .await;
    assert_eq!(spawned.status(), 202);
    let id = spawned.json::<Value>().await.unwrap()["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let result = client
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(result).await["square"], 25);

    let after = scrape(&gw).await;
    assert_eq!(requests(&after, "m", "sq", "200"), 3.0);
    assert_eq!(requests(&after, "m", "sq", "400"), 1.0);
    assert_eq!(requests(&after, "m", "sq", "202"), 1.0);
    assert_eq!(requests(&after, "m", "other", "500"), 1.0);
    assert_eq!(requests(&after, "-", "-", "404"), 2.0);
    assert_eq!(requests(&after, "-", "/calls/{id}", "200"), 1.0);
    // The scrape before this one (this one counts once it is answered).
    assert_eq!(requests(&after, "-", "/_/metrics", "200"), 1.0);
    let latency = |name: &str| value(&after, name, &[("app", "m"), ("function", "sq")]);
    assert_eq!(latency("fngate_request_duration_seconds_count"), 5.0);
    assert!(latency("fngate_request_duration_seconds_sum") > 0.0);
    let inf = value(
        &after,
        "fngate_request_duration_seconds_bucket",
        &[("app", "m"), ("function", "sq"), ("le", "+Inf")],
    );
    assert_eq!(inf, 5.0);
    let errors = |kind: &str| {
        value(
            &after,
            "fngate_backend_errors_total",
            &[("app", "m"), ("function", "other"), ("kind", kind)],
        )
    };
    assert_eq!(errors("function_error"), 1.0);
    assert_eq!(errors("crashed"), 0.0);
    // TLS: every client connection so far was one handshake or more.
    assert!(value(&after, "fngate_tls_handshakes_total", &[]) >= 1.0);
    assert_eq!(
        value(
            &after,
            "fngate_tls_handshake_failures_total",
            &[("reason", "error")]
        ),
        0.0
    );
    assert_eq!(value(&after, "fngate_access_log_dropped_total", &[]), 0.0);
    // Idle now: nobody waits, nothing runs.
    let labels = [("app", "m"), ("function", "sq")];
    assert_eq!(value(&after, "fngate_queue_depth", &labels), 0.0);
    assert_eq!(value(&after, "fngate_running_calls", &labels), 0.0);
    // The spawned call is in the store, succeeded (counted at most a
    // second ago).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&gw).await;
        if value(&text, "fngate_calls", &[("state", "succeeded")]) == 1.0 {
            assert_eq!(value(&text, "fngate_calls", &[("state", "pending")]), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "no succeeded call in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_failed_tls_handshake_is_counted() {
    let gw = gateway().await;
    // Plain HTTP to the TLS port: the handshake fails.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    let text = scrape(&gw).await;
    assert_eq!(
        value(
            &text,
            "fngate_tls_handshake_failures_total",
            &[("reason", "error")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_warm_instance_cold_start_is_counted_with_its_duration() {
    let gw = instances_builder()
        .toml(&lambda_fn(
            "warm",
            r#"["python3", "lambda_runtime.py", "setup_counter.handler"]"#,
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    let before = scrape(&gw).await;
    let labels = [("app", "w"), ("function", "warm")];
    assert_eq!(value(&before, "fngate_cold_starts_total", &labels), 0.0);
    for _ in 0..3 {
        let answer = gw
            .post_json(&client, "/w/warm", &json!({"x": 1}).to_string())
            .await;
        assert_eq!(answer.status(), 200);
    }
    let after = scrape(&gw).await;
    // Three calls one after the other: one instance, started once.
    assert_eq!(value(&after, "fngate_cold_starts_total", &labels), 1.0);
    assert_eq!(
        value(&after, "fngate_cold_start_duration_seconds_count", &labels),
        1.0
    );
    assert!(value(&after, "fngate_cold_start_duration_seconds_sum", &labels) > 0.0);
    let state = |s: &str| {
        value(
            &after,
            "fngate_instances",
            &[("app", "w"), ("function", "warm"), ("state", s)],
        )
    };
    assert_eq!(
        (state("starting"), state("idle"), state("busy")),
        (0.0, 1.0, 0.0)
    );
}

/// Requests a path exactly as written (curl, `--path-as-is`: no `..`
/// folded away), returning the status.
async fn curl_status(gw: &Gateway, path: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
        ])
        .arg("--cacert")
        .arg(gw.ca_path())
        .arg(gw.url(path))
        .output()
        .await
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn label_values_never_carry_a_clients_path() {
    let gw = gateway().await;
    let token = format!("zq{}", std::process::id());
    for path in [
        "/x/../../etc/passwd".to_owned(),
        format!("/nope/{token}"),
        format!("/m/{token}"),
        format!("/m/sq/{token}"),
        format!("/_/{token}"),
        format!("/{token}"),
        format!("/calls/fc-{token}"),
        format!("/m/sq?{token}=1"),
    ] {
        let status = curl_status(&gw, &path).await;
        assert!(status.starts_with('4'), "{path}: {status}");
    }
    let text = scrape(&gw).await;
    assert!(!text.contains(&token), "a client's path in:\n{text}");
    assert!(!text.contains("etc") && !text.contains("passwd"), "{text}");
    for (name, labels) in samples(&text).keys() {
        for (key, value) in labels {
            match key.as_str() {
                "app" => assert!(value == "m" || value == "-", "{name}: app={value}"),
                "function" => assert!(
                    ["sq", "other", "-"].contains(&value.as_str())
                        || value.starts_with("/_/")
                        || value == "/calls/{id}",
                    "{name}: function={value}"
                ),
                _ => {}
            }
        }
    }
    // Each of the eight is counted once, under a bounded label.
    let counted: f64 = samples(&text)
        .iter()
        .filter(|((name, labels), _)| {
            name == "fngate_requests_total"
                && !labels.contains(&("function".to_owned(), "/_/metrics".to_owned()))
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counted, 8.0, "{text}");
    assert_eq!(requests(&text, "-", "-", "404"), 5.0, "{text}");
}

/// Reads an exposition on stdin with Python's `prometheus_client` parser
/// and prints every family: name, type and samples.
const PARSE_PY: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    })
print(json.dumps(families))
"#;

#[tokio::test]
async fn an_independent_parser_reads_the_whole_exposition() {
    let gw = gateway().await;
    let client = gw.client();
    gw.post_json(&client, "/m/sq", &json!({"x": 3}).to_string())
        .await;
    gw.post_json(&client, "/m/other", &json!({"fail": "x"}).to_string())
        .await;
    client.get(gw.url("/nope/x")).send().await.unwrap();
    let text = scrape(&gw).await;
    let mut parser = tokio::process::Command::new("python3")
        .args(["-c", PARSE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    use tokio::io::AsyncWriteExt;
    let mut stdin = parser.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = parser.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the exposition (pip install prometheus_client):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_name: HashMap<&str, &Value> = families
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f))
        .collect();
    for (name, kind) in [
        ("fngate_requests", "counter"),
        ("fngate_request_duration_seconds", "histogram"),
        ("fngate_backend_errors", "counter"),
        ("fngate_queue_depth", "gauge"),
        ("fngate_running_calls", "gauge"),
        ("fngate_calls", "gauge"),
        ("fngate_instances", "gauge"),
        ("fngate_cold_starts", "counter"),
        ("fngate_cold_start_duration_seconds", "histogram"),
        ("fngate_tls_handshakes", "counter"),
        ("fngate_tls_handshake_failures", "counter"),
        ("fngate_webhook_deliveries", "counter"),
        ("fngate_store_commit_duration_seconds", "histogram"),
        ("fngate_access_log_dropped", "counter"),
    ] {
        let family = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{text}"));
        assert_eq!(family["type"], kind, "{name}");
    }
    // The parser's numbers are ours.
    let sq_ok = by_name["fngate_requests"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[1] == json!({"app": "m", "function": "sq", "status": "200"}))
        .expect("the 200 of m/sq");
    assert_eq!(sq_ok[0], "fngate_requests_total");
    assert_eq!(sq_ok[2], 1.0);
    // Every histogram's buckets rise to its count.
    let latency = by_name["fngate_request_duration_seconds"]["samples"]
        .as_array()
        .unwrap();
    let buckets: Vec<f64> = latency
        .iter()
        .filter(|s| s[0] == "fngate_request_duration_seconds_bucket" && s[1]["function"] == "sq")
        .map(|s| s[2].as_f64().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&1.0));
    // The store committed the calls' writes at least... none: sync calls
    // are not stored; the histogram is there, with its +Inf bucket.
    assert!(
        by_name["fngate_store_commit_duration_seconds"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s[1]["le"] == "+Inf")
    );
}

/// A Prometheus server on a loopback port with its own temp folder,
/// scraping `target` every second; killed on drop.
struct Prometheus {
    port: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(gw: &Gateway) -> Prometheus {
        let binary = "prometheus";
        let found = std::process::Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the Prometheus server is not installed: `apt-get install prometheus` (CI's .ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: fngate\n    scheme: https\n    metrics_path: /_/metrics\n\
             \x20   tls_config:\n      ca_file: {}\n\
             \x20   static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            gw.ca_path().display(),
            gw.addr.port()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = closed_port();
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            port,
            child,
            _dir: dir,
        }
    }

    /// The result of an instant query, or None while the server is not
    /// answering yet.
    async fn query(&self, client: &reqwest::Client, query: &str) -> Option<Vec<Value>> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = client
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        Some(body["data"]["result"].as_array()?.clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_over_https() {
    let gw = gateway().await;
    let client = gw.client();
    for x in 1..=2 {
        gw.post_json(&client, "/m/sq", &json!({"x": x}).to_string())
            .await;
    }
    let prometheus = Prometheus::start(&gw).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Polling its HTTP API is the signal: the series appears once a scrape
    // went through.
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        if let Some(result) = prometheus
            .query(
                &http,
                r#"fngate_requests_total{app="m",function="sq",status="200"}"#,
            )
            .await
            && let Some(first) = result.first()
        {
            break first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not get fngate_requests_total within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(series["metric"]["job"], "fngate");
    assert_eq!(series["value"][1], "2");
    // The scrape itself was healthy.
    let up = prometheus
        .query(&http, r#"up{job="fngate"}"#)
        .await
        .unwrap();
    assert_eq!(up[0]["value"][1], "1");
}

/// A webhook receiver on 127.0.0.1 answering its n-th request with
/// `statuses[n]` (200 once they run out); returns its port.
async fn receiver(statuses: Vec<u16>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            // Read the head and the body its content-length announces.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..read]);
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let status = statuses.get(n).copied().unwrap_or(200);
            n += 1;
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    port
}

#[tokio::test]
async fn webhook_deliveries_are_counted_by_outcome() {
    let port = receiver(vec![500]).await;
    let gw = Gateway::builder()
        .file("work.py", WORK_PY)
        .toml(&exec_fn("m", "sq", "work.py", ""))
        .toml(
            "[webhooks]\nsecret_env = \"FNGATE_WEBHOOK_SECRET\"\n\
             allow_hosts = [\"127.0.0.1\"]\nmax_attempts = 3\n",
        )
        .env(
            "FNGATE_WEBHOOK_SECRET",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",
        )
        .start()
        .await;
    let spawned = gw
        .client()
        .post(gw.url("/m/sq/spawn"))
        .header("content-type", "application/json")
        .header("callback-url", format!("http://127.0.0.1:{port}/hook"))
        .body(r#"{"x": 4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(spawned.status(), 202);
    // The first attempt gets a 500, the retry (about a second later) a 200.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&gw).await;
        let outcome = |o: &str| value(&text, "fngate_webhook_deliveries_total", &[("outcome", o)]);
        if outcome("delivered") == 1.0 {
            assert_eq!(outcome("failed"), 1.0, "{text}");
            assert_eq!(outcome("gave_up"), 0.0, "{text}");
            // The spawn, its start and its end were committed.
            assert!(value(&text, "fngate_store_commit_duration_seconds_count", &[]) >= 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "no delivery counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
