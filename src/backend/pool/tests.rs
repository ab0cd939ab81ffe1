use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

#[test]
fn only_plain_http_urls_get_a_replica_with_its_host_and_path() {
    let replica = |url: &str| Replica::for_url(&url.parse().unwrap());
    let plain = replica("http://127.0.0.1:9001/invoke?x=1").unwrap();
    assert_eq!(plain.authority, "127.0.0.1:9001");
    assert_eq!(plain.host, "127.0.0.1:9001");
    assert_eq!(plain.path.as_str(), "/invoke?x=1");
    let named = replica("http://user:secret@backend.internal/").unwrap();
    assert_eq!(named.authority, "backend.internal:80");
    assert_eq!(named.host, "backend.internal");
    let v6 = replica("http://[::1]:8080").unwrap();
    assert_eq!(v6.authority, "[::1]:8080");
    assert_eq!(v6.path.as_str(), "/");
    assert!(replica("https://127.0.0.1:9001/invoke").is_none());
}

/// A replica on loopback that answers each request with the next scripted
/// bytes (closing the connection after it when asked), and records the
/// requests and the connections it accepted.
struct Script {
    answers: Mutex<VecDeque<(&'static [u8], bool)>>,
    requests: Mutex<Vec<Vec<u8>>>,
    connections: AtomicUsize,
}

async fn replica(answers: &[(&'static [u8], bool)]) -> (Replica, Arc<Script>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Uri = format!("http://{}/invoke", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let script = Arc::new(Script {
        answers: Mutex::new(answers.iter().copied().collect()),
        requests: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
    });
    let serving = script.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serving.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, serving.clone()));
        }
    });
    (Replica::for_url(&url).unwrap(), script)
}

async fn serve(mut stream: TcpStream, script: Arc<Script>) {
    let mut buf = Vec::new();
    loop {
        // One request: its head, then Content-Length bytes.
        let request = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if buf.len() >= end + 4 + length {
                    break buf.drain(..end + 4 + length).collect::<Vec<u8>>();
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        script.requests.lock().unwrap().push(request);
        let next = script.answers.lock().unwrap().pop_front();
        let Some((answer, close)) = next else { return };
        if stream.write_all(answer).await.is_err() || close {
            return;
        }
    }
}

/// A request head for a `len`-byte JSON body (a header whose value could
/// break the head is left out).
fn json_head(replica: &Replica, len: usize) -> RequestHead {
    let mut head = replica.head(len);
    head.set(&header::CONTENT_TYPE, "application/json", false);
    head.set(
        &HeaderName::from_static("x-split"),
        "a\r\nx-forged: 1",
        false,
    );
    head
}

/// POSTs `body`: the answer's status and body, or the error.
async fn post(replica: &Replica, body: &'static str) -> Result<(u16, String), String> {
    let answer = replica
        .post(
            json_head(replica, body.len()),
            Bytes::from_static(body.as_bytes()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

fn ok(status: u16, body: &str) -> Result<(u16, String), String> {
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn requests_are_framed_and_a_connection_serves_one_answer_after_another() {
    let (replica, script) = replica(&[
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nx-other: 1\r\ncontent-length: 4\r\n\r\n1764",
            false,
        ),
        (
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\n42\r\n1;x=y\r\n!\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false),
    ])
    .await;
    let answer = replica
        .post(json_head(&replica, 2), Bytes::from_static(b"42"))
        .await
        .unwrap();
    // Of the answer's headers, the content type is kept.
    assert_eq!(answer.headers()["content-type"], "application/x-ndjson");
    assert_eq!(answer.headers().len(), 1);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "1764");
    assert_eq!(post(&replica, "[1]").await, ok(201, "42!"));
    assert_eq!(post(&replica, "{}").await, ok(204, ""));
    assert_eq!(script.connections.load(Ordering::SeqCst), 1);
    let requests = script.requests.lock().unwrap();
    let first = String::from_utf8_lossy(&requests[0]);
    let host = replica.host.to_str().unwrap();
    assert_eq!(
        first,
        format!(
            "POST /invoke HTTP/1.1\r\nhost: {host}\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n42"
        )
    );
}

#[tokio::test]
async fn a_large_body_goes_out_whole() {
    let (replica, script) =
        replica(&[(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false)]).await;
    let body: &'static str = Box::leak("7".repeat(100_000).into_boxed_str());
    assert_eq!(post(&replica, body).await, ok(200, "ok"));
    let requests = script.requests.lock().unwrap();
    assert!(requests[0].ends_with(body.as_bytes()));
}

#[tokio::test]
async fn answers_that_end_their_connection_are_not_kept() {
    let (replica, script) = replica(&[
        // HTTP/1.0 without keep-alive, its body ending with the connection.
        (b"HTTP/1.0 200 OK\r\n\r\n\"until close\"", true),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n1", false),
        // Both framings: read as chunked, and the connection is not kept.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n1\r\n2\r\n0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n3", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n4", false),
    ])
    .await;
    assert_eq!(post(&replica, "1").await, ok(200, "\"until close\""));
    assert_eq!(post(&replica, "2").await, ok(200, "1"));
    assert_eq!(post(&replica, "3").await, ok(200, "2"));
    assert_eq!(script.connections.load(Ordering::SeqCst), 3);
    // An HTTP/1.0 answer that asks for keep-alive keeps its connection.
    assert_eq!(post(&replica, "4").await, ok(200, "3"));
    assert_eq!(post(&replica, "5").await, ok(200, "4"));
    assert_eq!(script.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_connection_the_replica_closed_while_idle_is_not_used() {
    let (replica, script) = replica(&[
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1", true),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2", false),
    ])
    .await;
    assert_eq!(post(&replica, "1").await, ok(200, "1"));
    // The answer said nothing of closing: the connection was kept, and
    // the replica closed it after. Wait for its end to be seen.
    let idle = IDLE.with(|idle| {
        idle.borrow_mut()
            .get_mut(&replica.id)
            .unwrap()
            .pop()
            .unwrap()
    });
    let mut probe = [0u8; 1];
    idle.stream.readable().await.unwrap();
    assert_eq!(idle.stream.try_read(&mut probe).unwrap(), 0);
    check_in(replica.id, idle);
    assert_eq!(post(&replica, "2").await, ok(200, "2"));
    assert_eq!(script.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_dropped_before_its_end_closes_its_connection() {
    let (replica, script) = replica(&[
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2", false),
    ])
    .await;
    let mut answer = replica
        .post(json_head(&replica, 1), Bytes::from_static(b"1"))
        .await
        .unwrap();
    let first = answer.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "12345");
    drop(answer);
    assert_eq!(post(&replica, "2").await, ok(200, "2"));
    assert_eq!(script.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn broken_answers_are_errors() {
    let cases: [(&'static [u8], &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n123",
            "closed before the answer's body ended",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n1",
            "two Content-Lengths",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-le",
            "closed within the answer's head",
        ),
    ];
    for (answer, expected) in cases {
        let (replica, _) = replica(&[(answer, true)]).await;
        let error = post(&replica, "1").await.unwrap_err();
        assert!(error.contains(expected), "{error} for {answer:?}");
    }
    let (replica, _) = replica(&[]).await;
    let error = post(&replica, "1").await.unwrap_err();
    assert!(error.contains("closed before an answer came"), "{error}");
}

#[tokio::test]
async fn an_unreachable_replica_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Uri = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(listener);
    let replica = Replica::for_url(&url).unwrap();
    match replica.post(json_head(&replica, 0), Bytes::new()).await {
        Err(PoolError::Connect { authority, .. }) => assert_eq!(authority, replica.authority),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("an answer from a closed port"),
    }
}

#[test]
fn header_values_are_visible_ascii_spaces_and_tabs() {
    // Every byte alone, at every place of a value of every length to 24.
    for b in 0..=255u8 {
        let valid = (0x20..0x7f).contains(&b) || b == b'\t';
        for len in 1..24 {
            for at in 0..len {
                let mut value = vec![b'a'; len];
                value[at] = b;
                assert_eq!(field_value(&value), valid, "byte {b:#x} at {at} of {len}");
            }
        }
    }
    assert!(field_value(b""));
    assert!(field_value(
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ));
    assert!(field_value(b"Bearer a.b\tc"));
    assert!(!field_value("caf\u{e9} au lait, with no end".as_bytes()));
}
