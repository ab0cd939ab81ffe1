//! Attacks on the connection level, each refused while a normal client
//! keeps being served: request smuggling with Content-Length and
//! Transfer-Encoding together, encoded path tricks, and more streams on one
//! HTTP/2 connection than allowed.

mod common;

use std::time::Duration;

use common::{Gateway, exec_fn, json_ok};
use tokio::io::AsyncWriteExt;

/// An exec function that appends one line per run to `runs` next to it.
const COUNT_PY: &str = r#"
import os, sys
sys.stdin.read()
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs"), "a") as f:
    f.write("run\n")
sys.stdout.write("1")
"#;

fn runs(gw: &Gateway) -> usize {
    std::fs::read_to_string(gw.dir.join("runs")).map_or(0, |text| text.lines().count())
}

async fn counting_gateway() -> Gateway {
    Gateway::builder()
        .file("count.py", COUNT_PY)
        .toml(&exec_fn("demo", "count", "count.py", "public = true"))
        .start()
        .await
}

#[tokio::test]
async fn a_request_with_content_length_and_transfer_encoding_is_refused_and_nothing_runs() {
    let gw = counting_gateway().await;
    let mut tls = common::raw_tls(&gw).await;
    // A front end trusting Content-Length would see one request with a
    // 4-byte body; the smuggled GET hides in what follows.
    let attack = "POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                  Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                  POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                  Content-Length: 2\r\n\r\n{}";
    tls.write_all(attack.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let (answer, closed) = common::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        closed,
        "the connection stays open after an ambiguously framed request"
    );
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "more than one answer:\n{answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "not refused:\n{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert_eq!(runs(&gw), 0, "a request framed two ways ran");
    // A normal client is served.
    let ok = gw.post_json(&gw.client(), "/demo/count", "{}").await;
    assert_eq!(json_ok(ok).await, serde_json::json!(1));
}

#[tokio::test]
async fn encoded_names_never_reach_another_function() {
    let gw = counting_gateway().await;
    // Sent as written (an HTTP client library would normalise some of them).
    for path in [
        "/demo/co%75nt",
        "/demo%2Fcount",
        "/demo/count%00",
        "/demo/%2e%2e/demo/count",
        "/demo/./count",
        "/x/../demo/count",
        "/demo/%c0%afcount",
        "/DEMO/count",
    ] {
        let mut tls = common::raw_tls(&gw).await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let (answer, _) = common::read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}:\n{answer}");
    }
    assert_eq!(runs(&gw), 0);
}

#[tokio::test]
async fn an_http2_client_over_the_stream_limit_waits_and_all_its_streams_are_served() {
    let gw = Gateway::builder()
        .server("h2_max_streams = 4")
        .file("count.py", COUNT_PY)
        .toml(&exec_fn(
            "demo",
            "count",
            "count.py",
            "public = true\nconcurrency = 64",
        ))
        .start()
        .await;
    let client = gw.client_h2();
    // 16 requests on one connection with room for 4 at a time: the
    // server's SETTINGS hold the rest back, none is lost or refused.
    let calls = (0..16).map(|_| gw.post_json(&client, "/demo/count", "{}"));
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
    }
    assert_eq!(runs(&gw), 16);
}
