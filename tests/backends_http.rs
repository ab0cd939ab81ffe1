//! The http backend against a real HTTP server process
//! (`tests/backends/http_backend.py`): results, function errors, garbage,
//! crashes, timeouts, load balancing, header propagation and passthrough.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Gateway, HttpBackend, assert_problem, closed_port, http_fn, json_ok};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A gateway with app `h` whose functions call routes of `backend`.
async fn gateway(backend: &HttpBackend) -> Gateway {
    let mut b = Gateway::builder();
    for route in ["echo", "square", "error", "garbage", "die", "exit", "count"] {
        b = b.toml(&http_fn(
            "h",
            route,
            &[backend.url(&format!("/invoke/{route}"))],
            "",
        ));
    }
    b.toml(&http_fn(
        "h",
        "slow",
        &[backend.url("/invoke/slow?seconds=5")],
        "timeout = \"1s\"",
    ))
    .toml(&http_fn(
        "h",
        "pass",
        &[backend.url("/base")],
        "passthrough = true\nmethods = [\"GET\", \"POST\", \"PUT\", \"DELETE\"]",
    ))
    .toml(&http_fn(
        "h",
        "root",
        &[backend.url("")],
        "passthrough = true\nmethods = [\"GET\"]",
    ))
    .toml(&http_fn(
        "h",
        "unreachable",
        &[format!("http://127.0.0.1:{}/invoke/echo", closed_port())],
        "",
    ))
    .start()
    .await
}

#[tokio::test]
async fn http_backend_result_is_returned() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    for (proto, client) in gw.clients() {
        let r = gw.post_json(&client, "/h/square", r#"{"x": 12}"#).await;
        assert_eq!(json_ok(r).await, json!(144), "{proto}");
        let r = gw.post_json(&client, "/h/square", "[3]").await;
        assert_eq!(json_ok(r).await, json!(9), "{proto}");
    }
}

#[tokio::test]
async fn http_backend_receives_the_invocation_request_verbatim() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let r = gw
        .post_json(
            &gw.client(),
            "/h/echo",
            r#"{"n": 1234567890123456789012345678901234567890, "f": 1e400}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        squeezed.contains(r#""kwargs":{"n":1234567890123456789012345678901234567890,"f":1e400}"#),
        "{text}"
    );
    for field in [
        r#""app":"h""#,
        r#""function":"echo""#,
        r#""args":[]"#,
        r#""attempt":1"#,
        r#""call_id":"fc-"#,
        r#""deadline_ms":"#,
    ] {
        assert!(squeezed.contains(field), "{field} missing in {text}");
    }
}

#[tokio::test]
async fn backend_gets_request_id_and_traceparent_but_no_client_fngate_headers() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let client = gw.client();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .post(gw.url("/h/echo"))
        .header("content-type", "application/json")
        .header("x-request-id", "my-req-42")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-fngate-subject", "admin")
        .header("X-Fngate-Issuer", "https://evil.example")
        .header("x-fngate-call-id", "fc-forged")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "my-req-42");
    let body = json_ok(r).await;
    let headers = &body["headers"];
    assert_eq!(headers["x-request-id"], "my-req-42", "{headers}");
    let tp = headers["traceparent"].as_str().expect("traceparent sent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp}");
    assert_eq!(parts[1], trace_id, "trace id propagated: {tp}");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "a new span id for the hop: {tp}"
    );
    // The gateway may set its own X-Fngate-* headers; the client's never
    // get through.
    for (name, value) in headers.as_object().unwrap() {
        assert!(
            !["admin", "https://evil.example", "fc-forged"].contains(&value.as_str().unwrap()),
            "client header {name} forwarded: {headers}"
        );
    }
    if let Some(id) = headers.get("x-fngate-call-id") {
        assert_eq!(id, &body["received"]["call_id"], "{headers}");
    }

    // Without client ids: fresh, well-formed ones.
    let r = gw.post_json(&client, "/h/echo", "{}").await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = json_ok(r).await;
    assert_eq!(body["headers"]["x-request-id"], id.as_str());
    let tp = body["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(is_traceparent(tp), "new traceparent is well-formed: {tp}");
    assert!(!tp.contains(trace_id));

    // An invalid traceparent is replaced.
    let r = client
        .post(gw.url("/h/echo"))
        .header("traceparent", "garbage")
        .send()
        .await
        .unwrap();
    let body = json_ok(r).await;
    let tp = body["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(is_traceparent(tp), "{tp}");
}

fn is_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[tokio::test]
async fn http_backend_error_is_function_error_with_its_error_object() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    for (proto, client) in gw.clients() {
        let r = gw.post_json(&client, "/h/error", "{}").await;
        let p = assert_problem(r, 500, "function_error").await;
        assert_eq!(
            p["error"],
            json!({"type": "ValueError", "message": "bad x"}),
            "{proto}"
        );
    }
}

#[tokio::test]
async fn non_json_answer_is_backend_error() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let r = gw.post_json(&gw.client(), "/h/garbage", "{}").await;
    assert_problem(r, 502, "backend_error").await;
}

#[tokio::test]
async fn unreachable_backend_is_backend_error() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let started = Instant::now();
    let r = gw.post_json(&gw.client(), "/h/unreachable", "{}").await;
    let p = assert_problem(r, 502, "backend_error").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !p["detail"].as_str().unwrap().contains("127.0.0.1"),
        "backend addresses stay out of client answers: {p}"
    );
}

#[tokio::test]
async fn backend_closing_the_connection_is_backend_error() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let r = gw.post_json(&gw.client(), "/h/die", "{}").await;
    assert_problem(r, 502, "backend_error").await;
    let r = gw.post_json(&gw.client(), "/h/square", "[5]").await;
    assert_eq!(json_ok(r).await, json!(25));
}

#[tokio::test]
async fn backend_killed_mid_request_is_502_and_gateway_keeps_serving() {
    let mut backend = HttpBackend::start().await;
    let other = HttpBackend::start().await;
    let gw = Gateway::builder()
        .toml(&http_fn("h", "exit", &[backend.url("/invoke/exit")], ""))
        .toml(&http_fn("h", "square", &[other.url("/invoke/square")], ""))
        .start()
        .await;
    for (proto, client) in gw.clients() {
        let r = gw.post_json(&client, "/h/exit", "{}").await;
        if proto == "http/1.1" {
            assert_problem(r, 502, "backend_error").await;
            let died = common::eventually(Duration::from_secs(5), || !backend.alive()).await;
            assert!(died, "the backend process ended mid-request");
        } else {
            // The backend is gone now: still a 502, never a hang.
            assert_problem(r, 502, "backend_error").await;
        }
        let r = gw.post_json(&client, "/h/square", r#"{"x": 4}"#).await;
        assert_eq!(json_ok(r).await, json!(16), "{proto}");
        let r = client.get(gw.url("/_/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn http_backend_timeout_is_504() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    let started = Instant::now();
    let r = gw.post_json(&gw.client(), "/h/slow", "{}").await;
    let elapsed = started.elapsed();
    assert_problem(r, 504, "function_timeout").await;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "1 s timeout took {elapsed:?}"
    );
}

#[tokio::test]
async fn connect_failure_tries_the_next_url() {
    let backend = HttpBackend::start().await;
    let dead = format!("http://127.0.0.1:{}/invoke/square", closed_port());
    let gw = Gateway::builder()
        .toml(&http_fn(
            "h",
            "square",
            &[dead.clone(), backend.url("/invoke/square"), dead],
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    for i in 0..6 {
        let r = gw.post_json(&client, "/h/square", &format!("[{i}]")).await;
        assert_eq!(json_ok(r).await, json!(i * i), "call {i}");
    }
}

#[tokio::test]
async fn urls_are_balanced_round_robin() {
    let a = HttpBackend::start().await;
    let b = HttpBackend::start().await;
    let gw = Gateway::builder()
        .toml(&http_fn(
            "h",
            "count",
            &[a.url("/invoke/count"), b.url("/invoke/count")],
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    let mut counts = Vec::new();
    for _ in 0..6 {
        let r = gw.post_json(&client, "/h/count", "{}").await;
        counts.push(json_ok(r).await["count"].as_u64().unwrap());
    }
    // Each backend counts its own calls: alternating gives 1,1,2,2,3,3.
    counts.sort();
    assert_eq!(counts, [1, 1, 2, 2, 3, 3]);
}

#[tokio::test]
async fn a_call_that_reached_a_backend_is_not_retried() {
    let a = HttpBackend::start().await;
    let b = HttpBackend::start().await;
    // die closes the connection after reading the request: the call
    // reached a backend, so it must not be replayed on the other one.
    let gw = Gateway::builder()
        .toml(&http_fn(
            "h",
            "die",
            &[a.url("/invoke/die"), b.url("/invoke/count")],
            "",
        ))
        .start()
        .await;
    let client = gw.client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = gw.post_json(&client, "/h/die", "{}").await;
        statuses.push(r.status().as_u16());
    }
    statuses.sort();
    // Two calls went to the dying backend (502), two to the counter (200).
    assert_eq!(statuses, [200, 200, 502, 502]);
    let probe = Gateway::builder()
        .toml(&http_fn("h", "count", &[b.url("/invoke/count")], ""))
        .start()
        .await;
    let r = probe.post_json(&probe.client(), "/h/count", "{}").await;
    assert_eq!(
        json_ok(r).await["count"],
        3,
        "the counter saw exactly the two balanced calls (no retried ones)"
    );
}

#[tokio::test]
async fn passthrough_forwards_method_path_query_headers_and_body() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    for (proto, client) in gw.clients() {
        let r = client
            .put(gw.url("/h/pass/some/deep/path?a=1&b=two%20words"))
            .header("content-type", "text/plain")
            .header("x-custom", "kept")
            .header("x-fngate-subject", "forged")
            .header("x-request-id", "pass-id-1")
            .body("raw body, not JSON {")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{proto}");
        assert_eq!(r.headers()["x-backend"], "yes", "{proto}");
        let body = json_ok(r).await;
        assert_eq!(body["method"], "PUT", "{proto}");
        assert_eq!(
            body["path"], "/base/some/deep/path?a=1&b=two%20words",
            "{proto}"
        );
        assert_eq!(body["body"], "raw body, not JSON {", "{proto}");
        let headers = &body["headers"];
        assert_eq!(headers["x-custom"], "kept", "{proto}");
        assert_eq!(headers["content-type"], "text/plain", "{proto}");
        assert_eq!(headers["x-request-id"], "pass-id-1", "{proto}");
        for name in headers.as_object().unwrap().keys() {
            assert!(!name.starts_with("x-fngate-"), "{proto}: {name} forwarded");
        }

        let r = client.get(gw.url("/h/pass")).send().await.unwrap();
        let body = json_ok(r).await;
        assert_eq!(body["method"], "GET", "{proto}");
        assert_eq!(body["path"], "/base", "{proto}");
    }
}

#[tokio::test]
async fn passthrough_returns_backend_status_and_headers_unchanged() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    for (proto, client) in gw.clients() {
        let r = client
            .delete(gw.url("/h/pass/teapot"))
            .header("x-status", "418")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 418, "{proto}");
        assert_eq!(r.headers()["x-backend"], "yes", "{proto}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{proto}"
        );
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["method"], "DELETE");
        // A 5xx from a passthrough backend is its answer, not a gateway error.
        let r = client
            .post(gw.url("/h/pass"))
            .header("x-status", "503")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{proto}");
        assert_eq!(r.headers()["x-backend"], "yes", "{proto}");
    }
}

#[tokio::test]
async fn passthrough_streams_the_response() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    for (proto, client) in gw.clients() {
        // `root` forwards to the backend's root, so /h/root/stream is its
        // /stream: `a`, `b`, `c` 100 ms apart.
        let r = client.get(gw.url("/h/root/stream")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{proto}");
        assert_eq!(r.headers()["x-backend"], "yes", "{proto}");
        let started = Instant::now();
        let mut arrivals: BTreeMap<u128, Vec<u8>> = BTreeMap::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            arrivals
                .entry(started.elapsed().as_millis())
                .or_default()
                .extend_from_slice(&chunk);
        }
        let all: Vec<u8> = arrivals.values().flatten().copied().collect();
        assert_eq!(all, b"abc", "{proto}");
        let first = *arrivals.keys().next().unwrap();
        let last = *arrivals.keys().last().unwrap();
        assert!(
            last - first >= 100,
            "{proto}: chunks arrived together (not streamed): {arrivals:?}"
        );
    }
}

#[tokio::test]
async fn passthrough_streams_large_request_bodies() {
    let backend = HttpBackend::start().await;
    let gw = gateway(&backend).await;
    // 4 MiB of non-JSON bytes in small chunks, with no Content-Length.
    let chunks = (0..64).map(|i| Ok::<_, std::io::Error>(vec![b'a' + (i % 26) as u8; 65536]));
    let r = gw
        .client()
        .post(gw.url("/h/pass/upload"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let body = json_ok(r).await;
    let text = body["body"].as_str().unwrap();
    assert_eq!(text.len(), 64 * 65536);
    assert!(text.starts_with("aaaa") && text.ends_with("llll"));
}

/// An in-process backend that speaks only HTTP/2 over plain TCP (h2c with
/// prior knowledge) and answers with the protocol version it saw and the
/// request body it received.
async fn h2c_only_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        let body = req.into_body().collect().await?.to_bytes();
                        let answer = format!(
                            "{{\"version\":{version:?},\"received\":{}}}",
                            String::from_utf8_lossy(&body)
                        );
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                .expect("valid response"),
                        )
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn http2_backend_is_called_over_h2c() {
    let (addr, server) = h2c_only_backend().await;
    let gw = Gateway::builder()
        .toml(&http_fn(
            "h",
            "h2",
            &[format!("http://{addr}/invoke")],
            "http2 = true",
        ))
        .start()
        .await;
    for (proto, client) in gw.clients() {
        let r = gw.post_json(&client, "/h/h2", r#"{"x": 1}"#).await;
        let body = json_ok(r).await;
        assert_eq!(body["version"], "HTTP/2.0", "{proto}");
        assert_eq!(body["received"]["kwargs"], json!({"x": 1}), "{proto}");
        assert_eq!(body["received"]["function"], "h2", "{proto}");
    }
    server.abort();
}

/// A raw HTTP/1.1 backend on loopback answering every request with `1`:
/// counts the connections it accepts, and with `close` answers
/// `Connection: close` and closes each one after its answer.
async fn counting_backend(close: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/invoke", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then Content-Length bytes of body.
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buffer.len() < end + 4 + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..end + 4 + length);
                    let connection = if close { "close" } else { "keep-alive" };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\nconnection: {connection}\r\n\r\n1"
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (url, connections)
}

/// Makes 20 sequential calls through a one-worker gateway to a
/// `counting_backend(close)`, each answered `1`; returns how many
/// connections the backend accepted.
async fn connections_for_twenty_calls(close: bool) -> usize {
    let (url, connections) = counting_backend(close).await;
    let gw = Gateway::builder()
        .server("workers = 1")
        .toml(&http_fn("h", "one", &[url], ""))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..20 {
        let r = gw.post_json(&client, "/h/one", "{}").await;
        assert_eq!(json_ok(r).await, json!(1));
    }
    connections.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn invocations_reuse_keep_alive_connections_to_a_backend() {
    assert_eq!(connections_for_twenty_calls(false).await, 1);
}

#[tokio::test]
async fn a_backend_closing_each_connection_still_answers_every_call() {
    assert_eq!(connections_for_twenty_calls(true).await, 20);
}
