//! Request framing on HTTP/1.1 connections, over real TLS: every request
//! head is judged, however requests are pipelined, split or terminated, so
//! one framed two ways (Content-Length and Transfer-Encoding) never runs,
//! while valid pipelined requests are all served.

mod common;

use std::time::Duration;

use common::{COUNT_PY, Gateway, exec_fn, runs};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

async fn counting_gateway() -> Gateway {
    Gateway::builder()
        .server("http_listen = \"127.0.0.1:0\"")
        .file("count.py", COUNT_PY)
        .toml(&exec_fn("demo", "count", "count.py", "public = true"))
        .start()
        .await
}

/// The status codes of the HTTP/1.1 answers in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| answer.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// Reads up to the end of the first status line (or the end of the stream).
async fn read_status_line<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
            .await
            .expect("an answer within 10 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[tokio::test]
async fn a_request_framed_two_ways_behind_a_normal_one_is_refused_and_never_runs() {
    let gw = counting_gateway().await;
    let mut tls = common::raw_tls(&gw).await;
    // One write: the ambiguous head arrives while the first request is
    // being served, in the same read as it.
    let requests = "POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Content-Length: 2\r\n\r\n{}\
                    POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    tls.write_all(requests.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let (answer, closed) = common::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), [200, 400], "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert!(closed, "the connection stays open after the refusal");
    assert_eq!(runs(&gw), 1, "the request framed two ways ran");
}

#[tokio::test]
async fn a_bare_lf_head_framed_two_ways_is_refused_before_its_body_arrives() {
    let gw = counting_gateway().await;
    let mut tls = common::raw_tls(&gw).await;
    // Lines end in LF alone, which hyper accepts. `Expect: 100-continue`
    // makes the body wait for the gateway: a 100 says the head was taken
    // in and the body is wanted.
    let head = "POST /demo/count HTTP/1.1\nHost: localhost\nContent-Type: application/json\n\
                Content-Length: 2\nTransfer-Encoding: chunked\nExpect: 100-continue\n\n";
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = read_status_line(&mut tls).await;
    if answer.starts_with(b"HTTP/1.1 100") {
        tls.write_all(b"2\r\n{}\r\n0\r\n\r\n").await.unwrap();
        tls.flush().await.unwrap();
    }
    let (rest, closed) = common::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    answer.extend_from_slice(&rest);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), [400], "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert!(closed, "the connection stays open after the refusal");
    assert_eq!(runs(&gw), 0, "the request framed two ways ran");
}

#[tokio::test]
async fn valid_pipelined_requests_with_lengths_and_chunks_are_all_served() {
    let gw = counting_gateway().await;
    let mut tls = common::raw_tls(&gw).await;
    // A bare-LF head with a length, a chunked body with an extension and a
    // trailer, and a last request that closes the connection: one write.
    let requests = "POST /demo/count HTTP/1.1\nHost: localhost\nContent-Type: application/json\n\
                    Content-Length: 2\n\n{}\
                    POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n1;part=1\r\n{\r\n1\r\n}\r\n0\r\nX-Sum: 2\r\n\r\n\
                    POST /demo/count HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    tls.write_all(requests.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let (answer, closed) = common::read_until_closed(&mut tls, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), [200, 200, 200], "{answer}");
    assert!(closed, "the last request asked to close");
    assert_eq!(runs(&gw), 3);
}

#[tokio::test]
async fn http2_with_prior_knowledge_on_the_plain_listener_is_not_followed_as_http1() {
    let gw = counting_gateway().await;
    let plain = gw.http_addr.expect("http_listen address");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/demo/count", plain.port());
    for _ in 0..3 {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(runs(&gw), 3);
}
