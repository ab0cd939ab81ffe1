//! Connection timeouts on the paused clock, and verdicts checked against a
//! real hyper HTTP/1 connection fed through `Tracked`.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_idle_connection_expires_after_the_idle_timeout() {
    let activity = Activity::new();
    let started = tokio::time::Instant::now();
    let why = activity
        .expired(Duration::from_secs(60), Duration::from_secs(10), true)
        .await;
    assert_eq!(why, Expiry::Idle);
    assert!(started.elapsed() >= Duration::from_secs(59));
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_headers_trickle_in_expires_after_the_header_timeout() {
    let activity = Arc::new(Activity::new());
    let watch = {
        let activity = activity.clone();
        tokio::spawn(async move {
            activity
                .expired(Duration::from_secs(60), Duration::from_secs(10), true)
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    activity.read();
    let started = tokio::time::Instant::now();
    assert_eq!(watch.await.unwrap(), Expiry::SlowHeaders);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_keeps_the_connection() {
    let activity = Arc::new(Activity::new());
    let guard = RequestGuard::new(activity.clone());
    let wait = activity.expired(Duration::from_secs(1), Duration::from_secs(1), true);
    assert!(
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
    );
    drop(guard);
}

/// A request as a service saw it: its path, its verdict, and its body
/// (`<error>` when hyper could not decode it).
type Served = (String, bool, Vec<u8>);

/// What a real hyper HTTP/1 connection serves from `pieces` (written
/// one after the other), followed by a `GET /end` that closes it; the
/// service answers a refused request with `Connection: close`, as the
/// listener does.
async fn served(pieces: &[&[u8]]) -> Vec<Served> {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let activity = Arc::new(Activity::new());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let service = {
        let (activity, seen) = (activity.clone(), seen.clone());
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let ambiguous = activity.take_ambiguous();
            let seen = seen.clone();
            async move {
                let path = request.uri().path().to_owned();
                let mut response =
                    hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                let body = if ambiguous {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    Vec::new()
                } else {
                    match request.into_body().collect().await {
                        Ok(body) => body.to_bytes().to_vec(),
                        Err(_) => b"<error>".to_vec(),
                    }
                };
                seen.lock()
                    .expect("not poisoned")
                    .push((path, ambiguous, body));
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let io = hyper_util::rt::TokioIo::new(Tracked::new(server, activity, true));
    let connection =
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
    let talk = async {
        // The server may close early: later writes then fail.
        for piece in pieces {
            let _ = client.write_all(piece).await;
            tokio::task::yield_now().await;
        }
        let _ = client
            .write_all(b"GET /end HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await;
        let _ = client.read_to_end(&mut Vec::new()).await;
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .expect("the connection ends");
    let _ = connection.await;
    let seen = seen.lock().expect("not poisoned");
    seen.clone()
}

fn ok(path: &str, body: &str) -> Served {
    (path.to_owned(), false, body.as_bytes().to_vec())
}

fn refused(path: &str) -> Served {
    (path.to_owned(), true, Vec::new())
}

/// Valid requests, each with what hyper serves from it.
fn valid_requests() -> Vec<(String, Served)> {
    vec![
        (
            "GET /get HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            ok("/get", ""),
        ),
        (
            "POST /length HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".into(),
            ok("/length", "hello"),
        ),
        (
            "POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 1\r\n\r\n"
                .into(),
            ok("/chunked", "abcde"),
        ),
        (
            "POST /bare HTTP/1.1\nContent-Length: 2\nHost: x\n\nhi".into(),
            ok("/bare", "hi"),
        ),
        (
            "\r\nPOST /mixed HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\n\r\n\
             1\r\nz\r\n0\r\n\r\n"
                .into(),
            ok("/mixed", "z"),
        ),
        (
            format!(
                "POST /big HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
                1 << 20,
                "b".repeat(1 << 20)
            ),
            ok("/big", &"b".repeat(1 << 20)),
        ),
    ]
}

#[tokio::test]
async fn hyper_serves_every_valid_request_pipelined_and_none_is_refused() {
    let requests = valid_requests();
    let all: String = requests.iter().map(|(text, _)| text.as_str()).collect();
    let mut expected: Vec<Served> = requests.iter().map(|(_, s)| s.clone()).collect();
    expected.push(ok("/end", ""));
    assert_eq!(served(&[all.as_bytes()]).await, expected);
    // Each small one split at every byte, behind and before another.
    let get = "GET /get HTTP/1.1\r\nHost: x\r\n\r\n";
    for (text, served_as) in requests.iter().filter(|(text, _)| text.len() < 200) {
        let input = format!("{get}{text}");
        for at in 0..input.len() {
            let (a, b) = input.as_bytes().split_at(at);
            let expected = vec![ok("/get", ""), served_as.clone(), ok("/end", "")];
            assert_eq!(served(&[a, b]).await, expected, "{input:?} split at {at}");
        }
    }
}

/// A random valid request named `/r{i}`: line ends, headers, framing,
/// chunk sizes, extensions and trailers of every shape hyper serves.
fn random_request(rng: &mut impl rand::Rng, i: usize) -> (String, Served) {
    let eol = |rng: &mut dyn rand::RngCore| {
        if rng.next_u32() % 2 == 0 {
            "\r\n"
        } else {
            "\n"
        }
    };
    let mut text = String::new();
    for _ in 0..rng.random_range(0..3) {
        text += eol(rng);
    }
    text += &format!("POST /r{i} HTTP/1.1{}", eol(rng));
    let body: String = (0..rng.random_range(0..40))
        .map(|_| {
            let alphabet = b"aZ0 \r\n:;HTTP/1.1";
            alphabet[rng.random_range(0..alphabet.len())] as char
        })
        .collect();
    let headers = [
        "Host: x",
        "X-A-Rather-Long-Name: 1",
        "cookie: c=d",
        "Connection: keep-alive",
        "T: t",
        "C:",
    ];
    let framing = rng.random_range(0..5);
    let mut lines: Vec<String> = headers
        .iter()
        .filter(|_| rng.random_bool(0.5))
        .map(|h| h.to_string())
        .collect();
    let mut framing_lines = Vec::new();
    match framing {
        0 if body.is_empty() => {}
        0 | 1 => framing_lines.push(format!(
            "Content-Length:{}{}",
            " ".repeat(rng.random_range(0..2)),
            body.len()
        )),
        2 => {
            framing_lines.push(format!("content-length: {}", body.len()));
            framing_lines.push(format!("Content-Length: 0{} ", body.len()));
        }
        3 => framing_lines.push("Transfer-Encoding: chunked".into()),
        _ => framing_lines.push("transfer-encoding:\tgzip, CHUNKED ".into()),
    }
    for line in framing_lines {
        lines.insert(rng.random_range(0..=lines.len()), line);
    }
    for line in lines {
        text += &line;
        text += eol(rng);
    }
    text += eol(rng);
    if framing < 3 {
        text += &body;
    } else {
        let mut rest = body.as_str();
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len());
            let size = if rng.random_bool(0.5) {
                format!("{n:x}")
            } else {
                format!("00{n:X}")
            };
            let ext = [";", " ;a=b", ";q=\"x y\"", "\t"][rng.random_range(0..4)];
            let ext = if rng.random_bool(0.5) { ext } else { "" };
            text += &format!("{size}{ext}\r\n{}\r\n", &rest[..n]);
            rest = &rest[n..];
        }
        text += "0\r\n";
        if rng.random_bool(0.5) {
            text += "X-Trailer: 1\r\nY: 2\r\n";
        }
        text += "\r\n";
    }
    (text, ok(&format!("/r{i}"), &body))
}

#[tokio::test]
async fn random_valid_pipelines_are_all_served_and_a_request_framed_two_ways_ends_them() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..400 {
        let requests: Vec<_> = (0..rng.random_range(1..5))
            .map(|i| random_request(&mut rng, i))
            .collect();
        let mut all: String = requests.iter().map(|(text, _)| text.as_str()).collect();
        let mut expected: Vec<Served> = requests.into_iter().map(|(_, s)| s).collect();
        if round % 2 == 0 {
            expected.push(ok("/end", ""));
        } else {
            // Framed two ways, either order, either line end; what
            // follows never runs.
            let eol = ["\r\n", "\n"][rng.random_range(0..2)];
            let (first, second) = ("Content-Length: 5", "Transfer-Encoding: chunked");
            let (first, second) = if rng.random_bool(0.5) {
                (first, second)
            } else {
                (second, first)
            };
            all += &format!(
                "POST /smuggle HTTP/1.1{eol}{first}{eol}{second}{eol}{eol}0\r\n\r\nGET /hidden HTTP/1.1\r\n\r\n"
            );
            expected.push(refused("/smuggle"));
        }
        let (a, b) = all.as_bytes().split_at(rng.random_range(0..all.len()));
        assert_eq!(
            served(&[a, b]).await,
            expected,
            "{all:?} split at {}",
            a.len()
        );
    }
}

#[tokio::test]
async fn a_request_framed_two_ways_is_refused_wherever_it_comes() {
    let smuggle = "POST /smuggle HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                   0\r\n\r\nGET /hidden HTTP/1.1\r\n\r\n";
    let bare = "POST /smuggle HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 4\n\n";
    let get = "GET /get HTTP/1.1\r\n\r\n";
    let post = "POST /post HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    for input in [
        vec![get, smuggle],
        vec![post, get, smuggle],
        vec![bare, "0\r\n\r\n"],
        vec![get, bare, "0\r\n\r\n"],
    ] {
        let pieces: Vec<&[u8]> = input.iter().map(|p| p.as_bytes()).collect();
        let got = served(&pieces).await;
        assert_eq!(got.last(), Some(&refused("/smuggle")), "{input:?}");
        assert!(
            got[..got.len() - 1].iter().all(|(_, refused, _)| !refused),
            "{input:?}"
        );
        let joined = input.concat();
        assert_eq!(
            served(&[joined.as_bytes()]).await,
            got,
            "{input:?} in one write"
        );
    }
}

#[tokio::test]
async fn a_body_hyper_cannot_decode_ends_the_connection_and_nothing_after_runs() {
    let input = "POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\n\r\n";
    let got = served(&[input.as_bytes()]).await;
    assert_eq!(got, vec![ok("/chunked", "<error>")]);
}

#[tokio::test]
async fn a_request_hyper_would_swallow_as_trailers_ends_what_is_served() {
    // hyper reads the GET as a trailer line after the bare LF; another
    // reader would serve it. Nothing after it is served.
    let input = "POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 0\r\n\nGET /after HTTP/1.1\r\n\r\n";
    let got = served(&[input.as_bytes()]).await;
    assert_eq!(got, vec![ok("/chunked", ""), refused("/end")]);
}

#[test]
fn http2_connections_have_no_refusals() {
    let activity = Arc::new(Activity::new());
    let _tracked = Tracked::new(tokio::io::empty(), activity.clone(), false);
    assert!(!activity.take_ambiguous());
    let activity = Arc::new(Activity::new());
    let _tracked = Tracked::new(tokio::io::empty(), activity.clone(), true);
    activity.judged(Heads {
        http2: true,
        ..Heads::default()
    });
    assert!(!activity.take_ambiguous());
}
