//! Limits that protect the gateway: body size (Content-Length and streamed),
//! per-function concurrency and queue, header size.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, INSPECT_PY, SLEEP_PY, assert_problem, exec_fn, json_ok};
use serde_json::json;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

async fn gateway(max_body: &str) -> Gateway {
    Gateway::builder()
        .server(&format!("max_body = \"{max_body}\""))
        .file("inspect.py", INSPECT_PY)
        .file("sleep.py", SLEEP_PY)
        .toml(&exec_fn("l", "inspect", "inspect.py", ""))
        .toml(&exec_fn(
            "l",
            "slow",
            "sleep.py",
            "concurrency = 1\nqueue = 1\ntimeout = \"10s\"",
        ))
        .toml(&exec_fn(
            "l",
            "solo",
            "sleep.py",
            "concurrency = 1\nqueue = 0\ntimeout = \"10s\"",
        ))
        .start()
        .await
}

#[tokio::test]
async fn body_over_max_body_is_413() {
    let gw = gateway("1KiB").await;
    for (proto, client) in gw.clients() {
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2048));
        let r = gw.post_json(&client, "/l/inspect", &big).await;
        assert_problem(r, 413, "payload_too_large").await;
        // Just under the limit is fine.
        let ok = format!("{{\"pad\": \"{}\"}}", "x".repeat(900));
        let r = gw.post_json(&client, "/l/inspect", &ok).await;
        assert_eq!(
            json_ok(r).await["kwargs"]["pad"].as_str().unwrap().len(),
            900,
            "{proto}"
        );
    }
}

/// A request body that sends one chunk, then nothing ever again.
fn stalled_body(first: Vec<u8>) -> reqwest::Body {
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(first)]);
    reqwest::Body::wrap_stream(futures_util::StreamExt::chain(
        first,
        futures_util::stream::pending(),
    ))
}

#[tokio::test]
async fn content_length_over_max_body_is_answered_at_once() {
    let gw = gateway("1KiB").await;
    for (proto, client) in gw.clients() {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client
                .post(gw.url("/l/inspect"))
                .header("content-type", "application/json")
                .header("content-length", (100 * MIB).to_string())
                .body(stalled_body(b"{\"pad\": \"".to_vec()))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{proto}: no answer while the body was still coming"))
        .unwrap();
        assert_problem(r, 413, "payload_too_large").await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// An endless generated body of 64 KiB chunks (up to `total` bytes),
/// counting what was handed to the connection.
fn generated_body(total: u64, sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = futures_util::stream::unfold(0u64, move |done| {
        let chunk = chunk.clone();
        let sent = sent.clone();
        async move {
            if done >= total {
                return None;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Some((
                Ok::<_, std::io::Error>(chunk.clone()),
                done + chunk.len() as u64,
            ))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_gib_chunked_upload_is_cut_at_413_with_flat_memory() {
    let gw = gateway("1MiB").await;
    // Warm up the connection machinery before measuring.
    let client = gw.client_h1();
    let _ = json_ok(gw.post_json(&client, "/l/inspect", "{}").await).await;
    let rss_before = gw.rss_kib();

    for (proto, client) in [("http/1.1", gw.client_h1()), ("h2", gw.client_h2())] {
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            client
                .post(gw.url("/l/inspect"))
                .header("content-type", "application/json")
                .body(generated_body(10 * GIB, sent.clone()))
                .send(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{proto}: still uploading after 30 s ({} MiB sent): the body is not cut off",
                sent.load(Ordering::Relaxed) / MIB
            )
        });
        let sent = sent.load(Ordering::Relaxed);
        match result {
            Ok(r) => {
                assert_problem(r, 413, "payload_too_large").await;
            }
            // A reset after the limit is acceptable on HTTP/1.1 (the client
            // may still be writing when the 413 comes and the socket closes).
            Err(e) if proto == "http/1.1" => {
                eprintln!("{proto}: upload ended with {e:?} after {} MiB", sent / MIB)
            }
            Err(e) => panic!("{proto}: want 413, got {e:?}"),
        }
        eprintln!("{proto}: {} KiB sent before the cut", sent / 1024);
        assert!(
            sent < 256 * MIB,
            "{proto}: {} MiB accepted before the cut (limit 1 MiB)",
            sent / MIB
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let rss_after = gw.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Still serving.
    let r = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_flood_gets_503_with_retry_after() {
    let gw = gateway("16MiB").await;
    let client = gw.client();
    // concurrency 1 + queue 1: of three simultaneous 1 s calls, one runs,
    // one waits, and one is turned away at once.
    let calls = (0..3).map(|_| {
        let client = client.clone();
        let url = gw.url("/l/slow");
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 1}"#)
                .send()
                .await
                .unwrap();
            (r, started.elapsed())
        })
    });
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("no caller hangs");
    let mut ok = 0;
    let mut overloaded = 0;
    for result in results {
        let (r, elapsed) = result.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert!(elapsed >= Duration::from_millis(900));
            }
            503 => {
                overloaded += 1;
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .expect("Retry-After on 503")
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(
                    retry_after.parse::<u64>().is_ok(),
                    "Retry-After is delay-seconds: {retry_after:?}"
                );
                assert!(
                    elapsed < Duration::from_millis(900),
                    "503 came at once, not after waiting: {elapsed:?}"
                );
                assert_problem(r, 503, "overloaded").await;
            }
            other => panic!("unexpected status {other}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!((ok, overloaded), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_caller_runs_when_the_slot_frees() {
    let gw = gateway("16MiB").await;
    let client = gw.client();
    let first = {
        let client = client.clone();
        let url = gw.url("/l/slow");
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 0.7, "marker": "first-started"}"#)
                .send()
                .await
                .unwrap()
        })
    };
    let marker = gw.dir.join("first-started");
    assert!(
        common::eventually(Duration::from_secs(10), || marker.exists()).await,
        "first call started"
    );
    let started = Instant::now();
    let r = gw
        .post_json(&client, "/l/slow", r#"{"seconds": 0.1}"#)
        .await;
    assert_eq!(json_ok(r).await, json!({"slept": 0.1}));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the second call waited for the first: {:?}",
        started.elapsed()
    );
    assert_eq!(json_ok(first.await.unwrap()).await, json!({"slept": 0.7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_queue_rejects_the_second_caller_and_recovers() {
    let gw = gateway("16MiB").await;
    let client = gw.client();
    let first = {
        let client = client.clone();
        let url = gw.url("/l/solo");
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"seconds": 0.8, "marker": "solo-started"}"#)
                .send()
                .await
                .unwrap()
        })
    };
    let marker = gw.dir.join("solo-started");
    assert!(common::eventually(Duration::from_secs(10), || marker.exists()).await);
    let r = gw.post_json(&client, "/l/solo", r#"{"seconds": 0}"#).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, 503, "overloaded").await;
    // Other functions are not affected by this one's limit.
    let r = gw.post_json(&client, "/l/inspect", "{}").await;
    assert_eq!(r.status(), 200);
    assert_eq!(first.await.unwrap().status(), 200);
    // The slot is free again.
    let r = gw.post_json(&client, "/l/solo", r#"{"seconds": 0}"#).await;
    assert_eq!(json_ok(r).await, json!({"slept": 0.0}));
}

#[tokio::test]
async fn headers_over_max_header_bytes_are_431() {
    let gw = Gateway::builder()
        .server("max_header_bytes = \"8KiB\"")
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("l", "inspect", "inspect.py", ""))
        .start()
        .await;
    for (proto, client) in gw.clients() {
        let r = client
            .post(gw.url("/l/inspect"))
            .header("x-big", "b".repeat(16 * 1024))
            .send()
            .await;
        let r = r.unwrap_or_else(|e| panic!("{proto}: want 431, got {e:?}"));
        assert_problem(r, 431, "headers_too_large").await;
        // Normal headers still work (on a new connection if needed).
        let r = gw
            .client()
            .post(gw.url("/l/inspect"))
            .header("x-small", "s".repeat(100))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{proto}");
    }
}

#[tokio::test]
async fn stalled_tls_handshake_is_dropped_and_does_not_block_others() {
    use tokio::io::AsyncReadExt;
    let gw = Gateway::builder()
        .server("handshake_timeout = \"2s\"")
        .start()
        .await;
    // A client that connects and never says anything.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    // Others are served meanwhile.
    let r = gw.client().get(gw.url("/_/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The silent one is closed after the handshake timeout.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("stalled handshake closed within 10 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection closed, got {read:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(6),
        "closed after {elapsed:?} with a 2 s handshake timeout"
    );
}

#[tokio::test]
async fn slow_request_headers_are_cut_off_after_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::builder()
        .server("header_read_timeout = \"1s\"")
        .start()
        .await;
    let mut tls = common::raw_tls(&gw).await;
    let started = Instant::now();
    tls.write_all(b"GET /_/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let (_, closed) = common::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(
        closed,
        "connection with unfinished headers still open after 10 s"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?} with a 1 s header read timeout"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::builder()
        .server("idle_timeout = \"1s\"\nheader_read_timeout = \"30s\"")
        .start()
        .await;
    let mut tls = common::raw_tls(&gw).await;
    tls.write_all(b"GET /_/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let (got, closed) = common::read_until_closed(&mut tls, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "answered first: {text}");
    assert!(
        closed,
        "idle keep-alive connection still open 5 s after its answer"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?} with a 1 s idle timeout"
    );
}
