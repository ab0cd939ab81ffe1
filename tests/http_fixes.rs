//! Fixes in the HTTP layer, each seen from outside: passthrough bodies obey
//! `max_body` (and a function's own), stalled passthrough bodies are 408,
//! dot-segments never reach a passthrough backend, a form-feed body is not
//! an empty one, `status_url` trusts forwarded headers only from
//! `http_listen`, unmatched paths reach the debug log without their query,
//! `expose_errors = false` keeps function errors in the log, and a client
//! following a long sync call's 303 is held as long as the sync call was.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Gateway, HttpBackend, INSPECT_PY, SLEEP_PY, assert_problem, exec_fn, header_str, http_fn,
    json_ok,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const KIB: usize = 1024;

// ---- a backend that counts what reaches it --------------------------------

/// A passthrough backend on loopback that counts its connections and, per
/// request, the body bytes it received (chunked encoding decoded) and
/// whether the body ended properly; a complete one is answered
/// `200 {"received": N}`.
struct CountingBackend {
    port: u16,
    connections: Arc<AtomicUsize>,
    reports: mpsc::UnboundedReceiver<(usize, bool)>,
}

impl CountingBackend {
    async fn start() -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, reports) = mpsc::unbounded_channel();
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_counted(stream, tx.clone()));
            }
        });
        CountingBackend {
            port,
            connections,
            reports,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/up", self.port)
    }

    /// The next request's (body bytes, complete?), once its body ended.
    async fn report(&mut self) -> (usize, bool) {
        tokio::time::timeout(Duration::from_secs(10), self.reports.recv())
            .await
            .expect("the backend saw its request end within 10 s")
            .expect("backend running")
    }
}

async fn serve_counted(stream: TcpStream, reports: mpsc::UnboundedSender<(usize, bool)>) {
    let mut reader = BufReader::new(stream);
    let mut content_length = 0;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            // Cut before its head ended (the gateway may drop a request
            // whose body failed before anything was flushed): no body.
            let _ = reports.send((0, false));
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
    }
    let (received, complete) = if chunked {
        read_chunked(&mut reader).await
    } else {
        read_exactly(&mut reader, content_length).await
    };
    let _ = reports.send((received, complete));
    if complete {
        let body = format!("{{\"received\":{received}}}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = reader.get_mut().write_all(answer.as_bytes()).await;
    }
}

/// Reads up to `length` bytes: (bytes read, all of them?).
async fn read_exactly<R: AsyncBufRead + Unpin>(reader: &mut R, length: usize) -> (usize, bool) {
    let mut got = 0;
    let mut buf = vec![0u8; 16 * KIB];
    while got < length {
        let want = (length - got).min(buf.len());
        match reader.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return (got, false),
            Ok(n) => got += n,
        }
    }
    (got, true)
}

async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> (usize, bool) {
    let mut got = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return (got, false);
        }
        let size = line.trim().split(';').next().unwrap_or("");
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (got, false);
        };
        if size == 0 {
            loop {
                let mut trailer = String::new();
                match reader.read_line(&mut trailer).await {
                    Ok(0) | Err(_) => return (got, false),
                    Ok(_) if trailer.trim().is_empty() => return (got, true),
                    Ok(_) => {}
                }
            }
        }
        let (n, whole) = read_exactly(reader, size).await;
        got += n;
        let mut crlf = String::new();
        if !whole || reader.read_line(&mut crlf).await.unwrap_or(0) == 0 {
            return (got, false);
        }
    }
}

/// A request body that sends `chunks`, then nothing ever again.
fn stalled_body(chunks: Vec<Vec<u8>>) -> reqwest::Body {
    let sent = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    reqwest::Body::wrap_stream(futures_util::StreamExt::chain(
        sent,
        futures_util::stream::pending(),
    ))
}

// ---- 1. passthrough bodies and max_body -------------------------------------

/// `max_body = "64KiB"`; `/p/pt` passthrough to `backend`, `/p/big` the
/// same with its own `max_body = "1MiB"`; `/p/json` (exec, the server's
/// limit) and `/p/json_big` (exec, `max_body = "1MiB"`).
async fn limited_gateway(backend: &str) -> Gateway {
    Gateway::builder()
        .server("max_body = \"64KiB\"\nbody_read_timeout = \"1s\"")
        .file("inspect.py", INSPECT_PY)
        .toml(&http_fn(
            "p",
            "pt",
            &[backend.to_owned()],
            "passthrough = true",
        ))
        .toml(&http_fn(
            "p",
            "big",
            &[backend.to_owned()],
            "passthrough = true\nmax_body = \"1MiB\"",
        ))
        .toml(&exec_fn("p", "json", "inspect.py", ""))
        .toml(&exec_fn(
            "p",
            "json_big",
            "inspect.py",
            "max_body = \"1MiB\"",
        ))
        .start()
        .await
}

/// The answer to `request` within `secs` seconds; panics with `what` if none.
async fn answer_within(
    secs: u64,
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    what: &str,
) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(secs), request)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
}

#[tokio::test]
async fn passthrough_content_length_over_max_body_is_413_before_the_backend() {
    let backend = CountingBackend::start().await;
    let gw = limited_gateway(&backend.url()).await;
    for (proto, client) in gw.clients() {
        // The body never comes: only the declared length can refuse it.
        let answer = client
            .post(gw.url("/p/pt/upload"))
            .header("content-length", (100 << 20).to_string())
            .body(stalled_body(vec![b"x".repeat(KIB)]))
            .send();
        let r = answer_within(
            5,
            answer,
            &format!("{proto}: no answer while the body was still coming"),
        )
        .await;
        assert_problem(r, 413, "payload_too_large").await;
        // Spawned too.
        let r = client
            .post(gw.url("/p/pt/upload"))
            .header("prefer", "respond-async")
            .body(vec![b'x'; 65 * KIB])
            .send()
            .await
            .unwrap();
        assert_problem(r, 413, "payload_too_large").await;
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        0,
        "the backend was contacted"
    );
}

#[tokio::test]
async fn streamed_passthrough_body_is_cut_at_max_body_with_413() {
    let mut backend = CountingBackend::start().await;
    let gw = limited_gateway(&backend.url()).await;
    for (proto, client) in gw.clients() {
        // 128 KiB, then the client waits: past 64 KiB the gateway must
        // answer by itself.
        let body = stalled_body(vec![vec![b'x'; 64 * KIB], vec![b'y'; 64 * KIB]]);
        let answer = client.post(gw.url("/p/pt/upload")).body(body).send();
        let r = answer_within(10, answer, &format!("{proto}: no answer past the limit")).await;
        assert_problem(r, 413, "payload_too_large").await;
        let (received, complete) = backend.report().await;
        assert!(!complete, "{proto}: the backend saw a whole body");
        assert!(
            received <= 64 * KIB,
            "{proto}: the backend got {received} bytes (limit 64 KiB)"
        );
    }
}

#[tokio::test]
async fn a_functions_own_max_body_overrides_the_servers() {
    let mut backend = CountingBackend::start().await;
    let gw = limited_gateway(&backend.url()).await;
    let client = gw.client();
    // Passthrough: 512 KiB passes /p/big (1 MiB), streamed or declared.
    for body in [
        reqwest::Body::from(vec![b'x'; 512 * KIB]),
        reqwest::Body::wrap_stream(futures_util::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * KIB])),
        )),
    ] {
        let r = client
            .post(gw.url("/p/big/upload"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(json_ok(r).await, json!({"received": 512 * KIB}));
        assert_eq!(backend.report().await, (512 * KIB, true));
    }
    let r = client
        .post(gw.url("/p/big/upload"))
        .body(vec![b'x'; 1100 * KIB])
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "payload_too_large").await;

    // JSON functions: the same 200 KiB is over the server's limit and
    // within the function's own.
    let big = json!({"pad": "x".repeat(200 * KIB)}).to_string();
    let r = gw.post_json(&client, "/p/json", &big).await;
    assert_problem(r, 413, "payload_too_large").await;
    let r = gw.post_json(&client, "/p/json_big", &big).await;
    assert_eq!(
        json_ok(r).await["kwargs"]["pad"].as_str().map(str::len),
        Some(200 * KIB)
    );
    let r = client
        .post(gw.url("/p/json_big/spawn"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "spawn within the function's own limit");
}

#[tokio::test]
async fn stalled_passthrough_body_is_408() {
    let backend = CountingBackend::start().await;
    let gw = limited_gateway(&backend.url()).await;
    for (proto, client) in gw.clients() {
        let answer = client
            .post(gw.url("/p/pt/upload"))
            .body(stalled_body(vec![b"first bytes".to_vec()]))
            .send();
        let r = answer_within(
            10,
            answer,
            &format!("{proto}: a stalled body got no answer"),
        )
        .await;
        assert_problem(r, 408, "request_timeout").await;
    }
}

// ---- 2. dot-segments --------------------------------------------------------

/// Runs curl with `--path-as-is` (so the path goes out as written):
/// (status, body).
async fn curl_as_is(gw: &Gateway, proto: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let port = gw.addr.port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--path-as-is", proto, "--cacert"])
        .arg(gw.ca_path())
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(gw.url(path))
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

#[tokio::test]
async fn passthrough_refuses_dot_segments() {
    let backend = HttpBackend::start().await;
    let gw = Gateway::builder()
        .toml(&http_fn(
            "w",
            "pt",
            &[backend.url("/site")],
            "passthrough = true",
        ))
        .start()
        .await;
    for proto in ["--http1.1", "--http2"] {
        for path in [
            "/w/pt/../headers",
            "/w/pt/a/../../headers",
            "/w/pt/./x",
            "/w/pt/x/..",
            "/w/pt/%2e%2e/headers",
            "/w/pt/%2E./headers",
            "/w/pt/.%2e/headers",
            "/w/pt/..%2fheaders",
        ] {
            let (status, body) = curl_as_is(&gw, proto, path, &[]).await;
            assert_eq!(status, 400, "{proto} {path}: {body}");
            let problem: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["code"], "bad_request", "{proto} {path}");
        }
        // Spawned too: nothing is stored.
        let (status, _) =
            curl_as_is(&gw, proto, "/w/pt/../x", &["-H", "prefer: respond-async"]).await;
        assert_eq!(status, 400, "{proto}: spawned dot-segment");
        // Dots inside names are not dot-segments.
        let (status, body) = curl_as_is(&gw, proto, "/w/pt/.well-known/a..b/...", &[]).await;
        assert_eq!(status, 200, "{proto}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["path"], "/site/.well-known/a..b/...");
    }
}

// ---- 3. form feed is not whitespace -----------------------------------------

#[tokio::test]
async fn a_form_feed_body_is_invalid_json_not_empty() {
    let gw = Gateway::builder()
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("j", "inspect", "inspect.py", ""))
        .start()
        .await;
    let client = gw.client();
    for body in ["\x0c", " \x0c\r\n", "\x0b"] {
        for path in ["/j/inspect", "/j/inspect/spawn"] {
            let r = gw.post_json(&client, path, body).await;
            assert_problem(r, 400, "invalid_json").await;
        }
    }
    // Without a content type it is a body all the same.
    let r = client
        .post(gw.url("/j/inspect"))
        .body("\x0c")
        .send()
        .await
        .unwrap();
    assert_problem(r, 415, "unsupported_media_type").await;
    // RFC 8259 whitespace alone still means no arguments.
    let r = gw.post_json(&client, "/j/inspect", " \t\r\n").await;
    let request = json_ok(r).await;
    assert_eq!(
        (&request["args"], &request["kwargs"]),
        (&json!([]), &json!({}))
    );
}

// ---- 4. status_url ------------------------------------------------------------

async fn status_url(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> String {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    body["status_url"].as_str().expect("status_url").to_owned()
}

#[tokio::test]
async fn status_url_ignores_forwarded_headers_on_the_tls_listener() {
    let gw = Gateway::builder()
        .server("http_listen = \"127.0.0.1:0\"")
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("s", "inspect", "inspect.py", ""))
        .start()
        .await;
    let base = format!("https://localhost:{}/calls/fc-", gw.addr.port());
    let forged = [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
    ];
    for (proto, client) in gw.clients() {
        let url = status_url(&client, &gw.url("/s/inspect/spawn"), &forged).await;
        assert!(url.starts_with(&base), "{proto}: {url}");
    }
    // A Host that is not a host[:port] is not echoed.
    let url = status_url(
        &gw.client_h1(),
        &gw.url("/s/inspect/spawn"),
        &[("host", "evil.example/x?y")],
    )
    .await;
    assert!(url.starts_with("https://localhost/calls/fc-"), "{url}");
}

#[tokio::test]
async fn status_url_follows_the_load_balancer_on_http_listen() {
    let gw = Gateway::builder()
        .server("http_listen = \"127.0.0.1:0\"")
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("s", "inspect", "inspect.py", ""))
        .start()
        .await;
    let plain = gw.http_addr.expect("http_listen address");
    let url = format!("http://127.0.0.1:{}/s/inspect/spawn", plain.port());
    let client = reqwest::Client::new();
    let lb = [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let got = status_url(&client, &url, &lb).await;
    assert!(got.starts_with("http://api.example.com/calls/fc-"), "{got}");
    let lb = [
        ("x-forwarded-proto", "https"),
        ("host", "api.example.com:8443"),
    ];
    let got = status_url(&client, &url, &lb).await;
    assert!(
        got.starts_with("https://api.example.com:8443/calls/fc-"),
        "{got}"
    );
    // Values no load balancer sends are ignored.
    let odd = [
        ("x-forwarded-proto", "javascript"),
        ("x-forwarded-host", "evil.example/x"),
        ("host", "api.example.com"),
    ];
    let got = status_url(&client, &url, &odd).await;
    assert!(
        got.starts_with("https://api.example.com/calls/fc-"),
        "{got}"
    );
}

// ---- 5. unmatched paths in the log --------------------------------------------

#[tokio::test]
async fn unmatched_paths_are_logged_without_their_query() {
    let gw = Gateway::builder()
        .env("RUST_LOG", "info,fngate=debug")
        .file("inspect.py", INSPECT_PY)
        .toml(&exec_fn("d", "inspect", "inspect.py", ""))
        .start()
        .await;
    let client = gw.client();
    for (id, path) in [
        ("unmatched-1", "/nope/some-path"),
        ("unmatched-2", "/d/missing"),
        ("unmatched-3", "/justone"),
    ] {
        let r = client
            .get(gw.url(&format!("{path}?token=s3cret")))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let wanted = format!("path={path}");
        let logged = gw.logs.wait_for(&wanted, Duration::from_secs(5)).await;
        assert!(logged, "{path} not logged");
        let line = gw
            .logs
            .snapshot()
            .into_iter()
            .find(|l| l.contains(&wanted))
            .unwrap();
        assert!(line.contains(id), "request id in {line}");
    }
    let long = format!("/nope/{}", "a".repeat(3000));
    let r = client
        .get(gw.url(&format!("{long}?token=s3cret")))
        .header("x-request-id", "unmatched-long")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        gw.logs
            .wait_for("path=/nope/aaa", Duration::from_secs(5))
            .await
    );
    let line = gw
        .logs
        .snapshot()
        .into_iter()
        .find(|l| l.contains("path=/nope/aaa"))
        .unwrap();
    assert!(line.len() < 600, "the path is cut: {} bytes", line.len());
    assert!(!gw.logs.joined().contains("s3cret"), "a query was logged");
}

// ---- 6. expose_errors -----------------------------------------------------------

/// An exec function whose error message names its own absolute path, as a
/// traceback would.
const FAIL_PY: &str = r#"
import os, sys
sys.stdin.read()
raise ValueError("boom in " + os.path.abspath(__file__))
"#;

#[tokio::test]
async fn withheld_function_errors_stay_in_the_log() {
    let gw = Gateway::builder()
        .file("fail.py", FAIL_PY)
        .toml(&exec_fn("e", "open", "fail.py", ""))
        .toml(&exec_fn("e", "closed", "fail.py", "expose_errors = false"))
        .start()
        .await;
    let client = gw.client();
    let dir = gw.dir.to_str().unwrap().to_owned();

    // The quick-start default: the client sees the message.
    let r = gw.post_json(&client, "/e/open", "{}").await;
    let problem = assert_problem(r, 500, "function_error").await;
    assert!(problem["error"]["message"].as_str().unwrap().contains(&dir));

    // Sync call.
    let r = client
        .post(gw.url("/e/closed"))
        .header("x-request-id", "withheld-sync")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(r, 500, "function_error").await;
    assert_withheld(&problem, &dir);
    assert_logged(&gw, "withheld-sync", &dir).await;

    // Spawned call, read back.
    let r = client.post(gw.url("/e/closed/spawn")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = header_str(&r, "x-call-id").expect("X-Call-Id");
    let r = client
        .get(gw.url(&format!("/calls/{id}?wait=20")))
        .header("x-request-id", "withheld-spawned")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(r, 500, "function_error").await;
    assert_withheld(&problem, &dir);
    assert_logged(&gw, "withheld-spawned", &dir).await;
}

fn assert_withheld(problem: &Value, dir: &str) {
    assert_eq!(problem["error"]["type"], "ValueError", "{problem}");
    let text = problem.to_string();
    assert!(
        !text.contains(dir),
        "the server path reached the client: {text}"
    );
    assert!(
        !text.contains("boom"),
        "the message reached the client: {text}"
    );
}

/// Some log line holds both the request id and the function's message.
async fn assert_logged(gw: &Gateway, request_id: &str, dir: &str) {
    let found = common::eventually(Duration::from_secs(5), || {
        gw.logs
            .snapshot()
            .iter()
            .any(|l| l.contains(request_id) && l.contains(dir))
    })
    .await;
    assert!(found, "no log line with {request_id} and the message");
}

// ---- 7. a redirected GET is held for sync_wait ------------------------------------

#[tokio::test]
async fn a_followed_303_is_held_for_sync_wait_not_max_wait() {
    // sync_wait 3 s, max_wait 1 s, a 5 s call: a client following one
    // redirect gets the result only if the GET is held for sync_wait
    // (3 + 3 > 5), not for max_wait (3 + 1 < 5).
    let gw = Gateway::builder()
        .server("sync_wait = \"3s\"")
        .toml("[store]\nmax_wait = \"1s\"\n")
        .file("sleep.py", SLEEP_PY)
        .toml(&exec_fn("r", "sleep", "sleep.py", "timeout = \"20s\""))
        .start()
        .await;
    let client = gw
        .client_builder()
        .redirect(reqwest::redirect::Policy::limited(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = gw.post_json(&client, "/r/sleep", r#"{"seconds": 5}"#).await;
    assert!(r.url().path().starts_with("/calls/fc-"), "{}", r.url());
    assert_eq!(json_ok(r).await, json!({"slept": 5.0}));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "answered after {took:?}"
    );
}
