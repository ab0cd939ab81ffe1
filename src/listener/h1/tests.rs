//! The differential test: the same random requests (valid and broken
//! request lines, odd header bytes, conflicting framing, bare LF, obs-fold,
//! huge heads, chunked bodies with odd sizes) read by fngate's parser and
//! decoder and by hyper's HTTP/1 server (with the byte follower that
//! refuses ambiguous framing on hyper's paths): both serve the first
//! request with the same method, target, headers and body, or both refuse
//! it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Step;
use super::decode::{Decoded, Decoder};
use super::head::{self, Parsed};
use crate::listener::framing::Framing as Follower;
use crate::listener::hyper_header_cap;

const MAX_HEADER_BYTES: usize = 16 << 10;

/// What became of the first request of a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Served {
        method: String,
        target: String,
        version: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    Refused,
}

fn served(parts: &http::request::Parts, body: Vec<u8>) -> Verdict {
    Verdict::Served {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
        body,
    }
}

/// fngate's reading of `bytes` (then the end of the stream).
fn fngate_verdict(bytes: &[u8]) -> Verdict {
    let cap = hyper_header_cap(MAX_HEADER_BYTES);
    let Parsed::Complete(used, Ok(head)) = head::parse(bytes, cap, MAX_HEADER_BYTES) else {
        return Verdict::Refused;
    };
    let mut decoder = Decoder::new(head.body);
    let mut rest = &bytes[used..];
    let mut body = Vec::new();
    loop {
        match decoder.step(rest, true) {
            Step::Done(used, Ok(Decoded::Data(data))) => {
                body.extend_from_slice(&data);
                rest = &rest[used..];
            }
            Step::Done(_, Ok(Decoded::End)) => break,
            Step::Done(_, Err(_)) | Step::More(_) => return Verdict::Refused,
        }
    }
    let (parts, ()) = head.request.into_parts();
    served(&parts, body)
}

/// hyper's reading of `bytes`, as the gateway's hyper path has it: served
/// by hyper, and its head framed one way by the byte follower.
async fn hyper_verdict(bytes: &[u8]) -> Verdict {
    let mut follower = Follower::new(true);
    if follower.feed(bytes).clean == 0 {
        return Verdict::Refused;
    }
    let seen = Arc::new(Mutex::new(None));
    let reported = seen.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let reported = reported.clone();
        async move {
            let (parts, body) = request.into_parts();
            let verdict = match body.collect().await {
                Ok(body) => served(&parts, body.to_bytes().to_vec()),
                Err(_) => Verdict::Refused,
            };
            reported.lock().unwrap().get_or_insert(verdict);
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let (client, server) = tokio::io::duplex(1 << 20);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(hyper_header_cap(MAX_HEADER_BYTES))
        // The client sends everything, then ends its side: a request is
        // still served to its end.
        .half_close(true);
    let connection = builder.serve_connection(TokioIo::new(server), service);
    let (mut read, mut write) = tokio::io::split(client);
    let talk = async {
        let _ = write.write_all(bytes).await;
        let _ = write.shutdown().await;
        let mut answer = Vec::new();
        let _ = read.read_to_end(&mut answer).await;
    };
    let both = async { tokio::join!(connection, talk) };
    let (_ended, ()) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("hyper ends a connection whose client is done");
    seen.lock().unwrap().take().unwrap_or(Verdict::Refused)
}

/// Random requests, some valid, most odd in one way or several.
struct Requests {
    rng: StdRng,
    /// The current request is to be valid (half of them are).
    clean: bool,
}

impl Requests {
    /// One of `items`; of their first `valid` for a clean request.
    fn pick<'a>(&mut self, valid: usize, items: &[&'a str]) -> &'a str {
        let n = if self.clean { valid } else { items.len() };
        items[self.rng.random_range(0..n)]
    }

    /// An oddity, with chance `p` (never in a clean request).
    fn odd(&mut self, p: f64) -> bool {
        !self.clean && self.rng.random_bool(p)
    }

    fn eol(&mut self) -> &'static str {
        if !self.odd(0.1) { "\r\n" } else { "\n" }
    }

    fn request(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.clean = self.rng.random_bool(0.5);
        let method = self.pick(
            10,
            &[
                "GET", "GET", "POST", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "PATCH",
                "DELETE", "get", "X-CUSTOM", "G@T", "", "M\u{1}", "GET ",
            ],
        );
        let target = self.pick(
            7,
            &[
                "/",
                "/demo/square",
                "/a/b?x=1&y=%20",
                "*",
                "http://example.com/x?q",
                "example.com:443",
                "/%zz",
                "/a b",
                "",
                "//x",
                "/\u{7f}",
                "/ü",
                "/a#frag",
                "https://[::1]:8443/",
                "/a?b=c?d",
            ],
        );
        let version = self.pick(
            4,
            &[
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.0",
                "HTTP/2.0",
                "HTTP/1.2",
                "http/1.1",
                "HTTP/1.1 ",
                "HTTP/1",
            ],
        );
        if self.rng.random_bool(0.05) {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("{method} {target} {version}").as_bytes());
        if self.odd(0.01) {
            // Past hyper's buffer (it reads up to twice its cap before it
            // looks): refused by both.
            out.extend(std::iter::repeat_n(b'a', 200_000));
        }
        let eol = self.eol();
        out.extend_from_slice(eol.as_bytes());
        let mut chunked = false;
        let mut length = None;
        for _ in 0..self.rng.random_range(0..8) {
            let (name, value) = self.header();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().to_ascii_lowercase().ends_with("chunked");
            }
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b":");
            out.extend_from_slice(value.as_bytes());
            if self.odd(0.05) {
                // Odd bytes in a value: obs-text, controls.
                let odd = [0x80u8, 0xff, 0x01, 0x7f, b'\t', 0x00];
                out.push(odd[self.rng.random_range(0..odd.len())]);
            }
            let eol = self.eol();
            out.extend_from_slice(eol.as_bytes());
            if self.odd(0.02) {
                out.extend_from_slice(b" folded\r\n");
            }
        }
        if self.rng.random_bool(0.02) {
            // Within hyper's buffer, or well past it.
            let n = if self.odd(0.5) { 200_000 } else { 20_000 };
            out.extend_from_slice(b"x-huge: ");
            out.extend(std::iter::repeat_n(b'h', n));
            out.extend_from_slice(b"\r\n");
        }
        let eol = self.eol();
        out.extend_from_slice(eol.as_bytes());
        if chunked {
            self.chunks(&mut out);
        } else {
            let n = match length {
                Some(n) if self.rng.random_bool(0.8) => n.min(100),
                _ => self.rng.random_range(0..20),
            };
            out.extend((0..n).map(|i| b'a' + (i % 26) as u8));
        }
        if self.rng.random_bool(0.3) {
            out.extend_from_slice(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n");
        }
        out
    }

    fn header(&mut self) -> (String, String) {
        let name = self.pick(
            11,
            &[
                "host",
                "Host",
                "accept",
                "x-odd",
                "content-length",
                "Content-Length",
                "transfer-encoding",
                "Transfer-Encoding",
                "connection",
                "expect",
                "user-agent",
                "x y",
                "",
                "x\u{1}",
                "é",
                "content-length ",
                " content-length",
            ],
        );
        let value = match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => self.pick(
                6,
                &[
                    "0",
                    "5",
                    "05",
                    " 5",
                    "5 ",
                    "12",
                    "5,5",
                    "-1",
                    "+5",
                    "abc",
                    "",
                    "18446744073709551615",
                    "99999999999999999999",
                ],
            ),
            "transfer-encoding" => self.pick(
                4,
                &[
                    "chunked",
                    " chunked",
                    "CHUNKED",
                    "gzip, chunked",
                    "chunked, gzip",
                    "chunked;q=1",
                    "gzip",
                    "x y, chunked",
                    "chunked, chunked",
                    "",
                ],
            ),
            "connection" => self.pick(4, &["close", "keep-alive", "Keep-Alive, Upgrade", "x"]),
            "expect" => self.pick(3, &["100-continue", "100-Continue", "nothing"]),
            _ => self.pick(6, &["example.com", "", "a b", " spaced ", "*/*", "ü"]),
        };
        (name.to_owned(), value.to_owned())
    }

    fn chunks(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.rng.random_range(0..4) {
            let size: usize = self.rng.random_range(1..40);
            let kinds = if self.clean { 4 } else { 12 };
            let line = match self.rng.random_range(0..kinds) {
                0 => format!("{size:X}"),
                1 => format!("{size:x};ext=1"),
                2 => format!("{size:x} "),
                3 => format!("0{size:x}"),
                4 => format!("{:x}", size + 1),
                5 => format!("{:x}", size.saturating_sub(1)),
                6 => "zz".to_owned(),
                7 => format!("{size:x}\n"),
                _ => format!("{size:x}"),
            };
            out.extend_from_slice(line.as_bytes());
            if !line.ends_with('\n') {
                out.extend_from_slice(b"\r\n");
            }
            out.extend((0..size).map(|i| b'A' + (i % 26) as u8));
            let end = if !self.odd(0.05) { "\r\n" } else { "\n" };
            out.extend_from_slice(end.as_bytes());
        }
        match self.rng.random_range(0..10) {
            0 => out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n"),
            1 => out.extend_from_slice(b"0;last\r\n\r\n"),
            2 => {}
            _ => out.extend_from_slice(b"0\r\n\r\n"),
        }
    }
}

#[tokio::test]
async fn fngate_and_hyper_serve_and_refuse_the_same_requests() {
    let mut requests = Requests {
        rng: StdRng::seed_from_u64(0xf9_6a7e),
        clean: true,
    };
    let (mut served, mut refused) = (0, 0);
    for case in 0..5000 {
        let bytes = requests.request();
        let ours = fngate_verdict(&bytes);
        let theirs = hyper_verdict(&bytes).await;
        if ours != theirs {
            let short = |verdict: &Verdict| {
                let text = format!("{verdict:?}");
                text[..text.len().min(600)].to_owned()
            };
            panic!(
                "case {case}: {:?}\nfngate: {}\nhyper: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(400)]),
                short(&ours),
                short(&theirs)
            );
        }
        match ours {
            Verdict::Served { .. } => served += 1,
            Verdict::Refused => refused += 1,
        }
    }
    // Both kinds are well represented.
    assert!(
        served > 500 && refused > 500,
        "{served} served, {refused} refused"
    );
}
