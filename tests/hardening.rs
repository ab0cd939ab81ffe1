//! Attacks on the connection level, each refused while a normal client
//! keeps being served: request smuggling with Content-Length and
//! Transfer-Encoding together, encoded path tricks, and more streams on one
//! HTTP/2 connection than allowed.

mod common;

use std::time::Duration;

use common::{COUNT_PY, Gateway, exec_fn, json_ok, runs};
use tokio::io::AsyncWriteExt;

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

/// One HTTP/2 frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

#[tokio::test]
async fn an_http2_client_ignoring_the_stream_limit_is_refused_and_others_are_served() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const REFUSED_STREAM: u32 = 0x7;
    let gw = Gateway::builder()
        .server("h2_max_streams = 2")
        .file(
            "slow.py",
            "import sys, time\nsys.stdin.read()\ntime.sleep(2)\nprint(1)\n",
        )
        .toml(&exec_fn(
            "demo",
            "slow",
            "slow.py",
            "public = true\nmethods = [\"GET\"]\nconcurrency = 64",
        ))
        .start()
        .await;
    let mut tls = common::raw_tls_alpn(&gw, b"h2").await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // Acknowledge the server's SETTINGS, so its stream limit is in force.
    loop {
        let (kind, flags, _, _) = read_frame(&mut tls).await.expect("server SETTINGS");
        if kind == SETTINGS && flags & 0x1 == 0 {
            tls.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            break;
        }
    }
    // Six GET /demo/slow at once where two are allowed: HPACK with static
    // indexes (:method GET, :scheme https) and literal :path and :authority.
    let mut block = vec![0x82, 0x87];
    block.extend_from_slice(&[0x04, 10]);
    block.extend_from_slice(b"/demo/slow");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    for stream in [1u32, 3, 5, 7, 9, 11] {
        tls.write_all(&frame(HEADERS, 0x4 | 0x1, stream, &block))
            .await
            .unwrap();
    }
    tls.flush().await.unwrap();
    let mut refused = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused.len() < 4 {
        let Ok(Some((kind, _, stream, payload))) =
            tokio::time::timeout_at(deadline, read_frame(&mut tls)).await
        else {
            break;
        };
        if kind == RST_STREAM
            && u32::from_be_bytes(payload[..4].try_into().unwrap()) == REFUSED_STREAM
        {
            refused.push(stream);
        }
    }
    assert!(
        !refused.is_empty(),
        "streams over the limit were not refused"
    );
    assert!(
        !refused.contains(&1) && !refused.contains(&3),
        "streams within the limit were refused: {refused:?}"
    );
    // A well-behaved client is served meanwhile.
    let ok = gw
        .client_h2()
        .get(gw.url("/demo/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
