//! What the listener does around a request's body and answer: early error
//! answers reach curl over HTTP/2 and keep HTTP/1.1 connections usable,
//! stalled and trickled bodies are cut with 408, a flood of them does not
//! lock new clients out, a client that never reads cannot pin many large
//! results, a taken address stops the start, and every `listen` address
//! is served.

mod common;

use std::time::{Duration, Instant};

use common::{COUNT_PY, Gateway, assert_problem, exec_fn, read_until_closed};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "an HS256 secret of at least thirty-two bytes";

/// A public counting function, one that needs credentials, a 1 KiB body
/// limit and a short body timeout.
async fn gateway(server: &str) -> Gateway {
    Gateway::builder()
        .server(&format!("max_body = \"1KiB\"\n{server}"))
        .env("FNGATE_JWT_SECRET", SECRET)
        .file("count.py", COUNT_PY)
        .toml("[auth]\njwt_secret_env = \"FNGATE_JWT_SECRET\"\n")
        .toml(&exec_fn("demo", "square", "count.py", "public = true"))
        .toml(&exec_fn("demo", "private", "count.py", ""))
        .start()
        .await
}

/// Runs the system's curl over HTTP/2 with `args`; returns (exit code,
/// HTTP version, status, body).
async fn curl_h2(gw: &Gateway, args: &[&str]) -> (Option<i32>, String, u16, String) {
    let port = gw.addr.port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = gw.ca_path();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, status) = trailer.split_once(' ').unwrap_or(("", "0"));
    (
        out.status.code(),
        version.to_owned(),
        status.parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test]
async fn curl_over_http2_sees_every_early_error_answer() {
    let gw = gateway("").await;
    let url = |path: &str| gw.url(path);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2048));
    let unknown_call = url("/calls/fc-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (
            vec!["--json".into(), r#"{"x": 42}"#.into(), url("/nope/square")],
            404,
            "app_not_found",
        ),
        (
            vec!["--json".into(), r#"{"x": 42}"#.into(), url("/demo/sq")],
            404,
            "function_not_found",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "--json".into(),
                r#"{"x": 42}"#.into(),
                url("/demo/square"),
            ],
            405,
            "method_not_allowed",
        ),
        (
            vec!["--json".into(), r#"{"x": 42}"#.into(), url("/demo/private")],
            401,
            "unauthorized",
        ),
        (
            vec!["--json".into(), big.clone(), url("/demo/square")],
            413,
            "payload_too_large",
        ),
        (
            vec![
                "-X".into(),
                "DELETE".into(),
                "--json".into(),
                r#"{"x": 42}"#.into(),
                unknown_call,
            ],
            404,
            "call_not_found",
        ),
    ];
    for (args, status, code) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for round in 0..10 {
            let (exit, version, got, body) = curl_h2(&gw, &args).await;
            assert_eq!(
                (exit, version.as_str(), got),
                (Some(0), "2", *status),
                "round {round} of {args:?}: {body}"
            );
            let problem: Value = serde_json::from_str(body.trim())
                .unwrap_or_else(|_| panic!("{args:?}: not a problem body: {body}"));
            assert_eq!(problem["code"], *code, "{args:?}");
        }
    }
    assert_eq!(common::runs(&gw), 0, "no early answer runs the function");
}

/// Reads one HTTP/1.1 response (head and Content-Length body) off `stream`.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(stream: &mut R) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8(got)
        .expect("ASCII head")
        .to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().expect("a length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the body");
    (head, body)
}

#[tokio::test]
async fn an_early_answer_keeps_the_http1_connection_when_the_body_comes_after_the_head() {
    let gw = gateway("").await;
    for (path, status) in [
        ("/nope/x", "404"),
        ("/demo/private", "401"),
        ("/demo/sq", "404"),
    ] {
        let mut tls = common::raw_tls(&gw).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // The body follows the head in a later packet, as pooled clients send it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tls.write_all(b"{\"x\": 42}").await.unwrap();
        tls.flush().await.unwrap();
        let (head, _) = read_response(&mut tls).await;
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{path}: {head}"
        );
        assert!(!head.contains("connection: close"), "{path}: {head}");
        // The same connection serves the next request.
        tls.write_all(b"GET /_/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut tls).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: then {head}");
        assert_eq!(body, br#"{"status":"ok"}"#);
    }
}

#[tokio::test]
async fn an_unread_body_too_large_to_read_closes_the_http1_connection_saying_so() {
    let gw = gateway("").await;
    let mut tls = common::raw_tls(&gw).await;
    let head = "POST /nope/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{";
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (head, _) = read_response(&mut tls).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(closed, "the connection is closed after the answer");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_its_connection_closed() {
    let gw = gateway("body_read_timeout = \"1s\"").await;
    // HTTP/1.1: the head and part of the body, then silence.
    let mut tls = common::raw_tls(&gw).await;
    let head = "POST /demo/square HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"x\": ";
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (head, body) = read_response(&mut tls).await;
    let waited = started.elapsed();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "request_timeout");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(closed);
    // HTTP/2: a stream that never ends its body.
    let client = gw.client_h2();
    let body = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(b"{\"x\": ".to_vec())]),
        futures_util::stream::pending(),
    );
    let started = Instant::now();
    let r = client
        .post(gw.url("/demo/square"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_problem(r, 408, "request_timeout").await;
    // The HTTP/2 connection goes on serving other streams.
    let r = client.get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(common::runs(&gw), 0);
}

#[tokio::test]
async fn a_trickled_body_is_cut_by_the_minimum_rate() {
    let gw = gateway("body_read_timeout = \"2s\"\nbody_min_rate = \"1KiB\"").await;
    let mut tls = common::raw_tls(&gw).await;
    let head = "POST /demo/square HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n";
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 200 ms: never a gap of 2 s, but far below 1 KiB/s.
    let (mut reader, mut writer) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        for _ in 0..900 {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (head, _) = read_response(&mut reader).await;
    let waited = started.elapsed();
    trickle.abort();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(waited < Duration::from_secs(6), "cut after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_uploads_does_not_lock_out_new_clients() {
    const STALLED: usize = 60;
    let gw = gateway(&format!(
        "body_read_timeout = \"2s\"\nmax_connections = {STALLED}"
    ))
    .await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut tls = common::raw_tls(&gw).await;
        let head = "POST /demo/square HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        stalled.push(tls);
    }
    let started = Instant::now();
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let client = gw.client();
        let began = Instant::now();
        let r = client.get(gw.url("/_/health")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            served += 1;
            slowest = slowest.max(began.elapsed());
        }
    }
    eprintln!(
        "{STALLED} stalled uploads: {served} of 5 new clients served, the slowest in {slowest:?} ({:?} in all)",
        started.elapsed()
    );
    assert_eq!(served, 5);
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    drop(stalled);
}

/// Prints a 10 MiB JSON string.
const BIG_PY: &str = r#"
import sys
sys.stdin.read()
sys.stdout.write('"' + "a" * (10 << 20) + '"')
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_pin_many_large_results() {
    const STREAMS: usize = 40;
    let gw = Gateway::builder()
        .server("idle_timeout = \"20s\"")
        .file("big.py", BIG_PY)
        .toml(&exec_fn(
            "demo",
            "big",
            "big.py",
            "public = true\nconcurrency = 8\nqueue = 40\ntimeout = \"60s\"",
        ))
        .start()
        .await;
    let before = gw.rss_kib();
    let tls = common::raw_tls_alpn(&gw, b"h2").await;
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let mut pending = Vec::new();
    for _ in 0..STREAMS {
        let request = http::Request::post(gw.url("/demo/big"))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        h2 = h2.ready().await.expect("stream slot");
        let (response, _) = h2.send_request(request, true).expect("send");
        pending.push(response);
    }
    // The answers are kept (never read): dropping one would reset its stream.
    let mut kept = Vec::new();
    let mut statuses = Vec::new();
    for response in pending {
        let response = tokio::time::timeout(Duration::from_secs(120), response)
            .await
            .expect("every stream gets an answer head")
            .expect("a response");
        statuses.push(response.status().as_u16());
        kept.push(response);
    }
    let after = gw.rss_kib();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    eprintln!(
        "{STREAMS} streams of 10 MiB with a closed window: {ok} answered, {refused} refused; RSS {before} -> {after} KiB"
    );
    assert_eq!(ok + refused, STREAMS, "{statuses:?}");
    assert!(ok <= 4, "{ok} large answers held by one connection");
    assert!(after < before + 200 * 1024, "RSS {before} -> {after} KiB");
    drop(kept);
}

#[tokio::test]
async fn a_second_gateway_on_a_taken_address_fails_with_address_in_use() {
    let first = Gateway::builder().server("workers = 2").start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"{}\"\nworkers = 2\n", first.addr),
    )
    .unwrap();
    let (code, _, stderr) =
        common::run_bin(&["serve", "--config", config.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    // The first one goes on serving alone.
    let r = first
        .client()
        .get(first.url("/_/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_listen_address_is_served() {
    let gw = Gateway::builder()
        .raw_config("[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\n")
        .start()
        .await;
    assert!(
        gw.logs
            .wait_for("listening on https://[::1]", Duration::from_secs(10))
            .await
    );
    let logs = gw.logs.snapshot();
    let addrs: Vec<std::net::SocketAddr> = logs
        .iter()
        .filter_map(|line| common::addr_after(line, "listening on https://"))
        .collect();
    assert_eq!(addrs.len(), 2, "{logs:?}");
    assert!(addrs[1].is_ipv6());
    for addr in addrs {
        let client = common::client_builder_with_ca(&gw.ca_pem())
            .resolve("localhost", addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/_/health", addr.port());
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{addr}");
    }
}

#[tokio::test]
async fn streamed_passthrough_answers_are_not_counted_as_held_results() {
    let backend = common::HttpBackend::start().await;
    let gw = Gateway::builder()
        .server("result_buffer_per_connection = \"256KiB\"")
        .toml(&common::http_fn(
            "web",
            "site",
            &[backend.url("/")],
            "passthrough = true\npublic = true",
        ))
        .start()
        .await;
    // Over one HTTP/2 connection, two large passthrough answers (the
    // backend echoes the 6 MiB body, more than the client's HTTP/2
    // windows take unread), the first one left unread while the
    // second is asked for: both stream from the backend, neither is held.
    let client = gw.client_h2();
    let body = "x".repeat(6 << 20);
    let first = client
        .post(gw.url("/web/site/one"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = client
        .post(gw.url("/web/site/two"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200, "the second answer was refused");
    let answer: Value = second.json().await.unwrap();
    assert_eq!(answer["body"].as_str().map(str::len), Some(6 << 20));
    drop(first);
}
