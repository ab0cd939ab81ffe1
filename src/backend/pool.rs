//! Keep-alive HTTP/1.1 connections to one plain-`http://` backend replica,
//! for invocation requests, spoken by fngate itself: the request is written
//! and its answer read in the calling task (no connection task, no channel
//! between them), with httparse for the answer's head and the listener's
//! body decoder for its body.
//!
//! Idle connections are kept per worker thread, so checking one out or in
//! takes no lock and a request never wakes another core. A connection goes
//! back once its answer's body has been read to its end; an answer dropped
//! before that closes it.
//!
//! This is the invocation fast path; `https://` and h2c replicas, and
//! passthrough forwarding, use hyper-util's pooled client.

mod answer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use answer::Answer;
use answer::Mode;

use crate::listener::h1::head::{content_length, has_token, last_is_chunked};

/// Idle connections a worker keeps per replica; more are closed.
const MAX_IDLE: usize = 1024;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest answer head read (status line and headers).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// The most header lines an answer head may have.
const MAX_HEADERS: usize = 128;

/// Bodies up to this size are written in one go with the head.
const INLINE_BODY: usize = 16 << 10;

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 8 << 10;

thread_local! {
    /// Idle connections of this worker thread, by replica.
    static IDLE: RefCell<HashMap<usize, Vec<Conn>, BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
}

/// Hashes a replica's id by one multiplication: the ids are the gateway's
/// own counter, never a client's input, so SipHash's defence (twice per
/// request) buys nothing here.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(FIBONACCI);
    }
}

/// 2^64 divided by the golden ratio: spreads consecutive ids over the
/// whole hash, its top bits included (which hashbrown's tags use).
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

/// Gives each replica's idle list its own key.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: nothing reached the replica.
    #[error("connecting to {authority}: {message}")]
    Connect { authority: String, message: String },
    /// The request was sent, or may have been, and no answer came.
    #[error("{0}")]
    Request(String),
}

/// One connection to a replica, with the bytes read past the last answer
/// used (none between answers: such a connection is not kept).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Whether an idle connection can take a request: the replica has not
    /// closed it (or sent anything unasked) meanwhile.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more bytes into `buf`; false at the end of the stream.
    async fn read_more(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_BYTES);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }
}

/// Where a request's headers go: a header map, or a request head being
/// written.
pub trait HeaderSink {
    /// Sets `name` to `value`, unless `value` is no valid header value
    /// (then nothing is set). `sensitive`: never indexed by HPACK.
    fn set(&mut self, name: &HeaderName, value: &str, sensitive: bool);
}

impl HeaderSink for HeaderMap {
    fn set(&mut self, name: &HeaderName, value: &str, sensitive: bool) {
        if let Ok(mut value) = HeaderValue::from_str(value) {
            value.set_sensitive(sensitive);
            self.insert(name.clone(), value);
        }
    }
}

/// A request head being written, its lines as they go on the wire.
pub struct RequestHead(Vec<u8>);

impl HeaderSink for RequestHead {
    fn set(&mut self, name: &HeaderName, value: &str, _sensitive: bool) {
        if !field_value(value.as_bytes()) {
            return;
        }
        let name = name.as_str().as_bytes();
        self.0.reserve(name.len() + value.len() + 4);
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }
}

/// Whether `value` is visible ASCII, spaces and tabs (what a request head
/// may carry as a header value). Eight bytes at a time: a value with no
/// byte below 0x20 and none above 0x7e is valid at once; only one with
/// such a byte (a tab, or worse) is looked at byte by byte. The values are
/// ids, tokens and URLs of some 20 to 60 bytes, six per call.
fn field_value(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let visible = |b: u8| b.wrapping_sub(b' ') < 0x7f - b' ';
    let mut chunks = value.chunks_exact(8);
    let mut outside = 0;
    for chunk in &mut chunks {
        let x = u64::from_ne_bytes(chunk.try_into().expect("chunks of eight"));
        // A byte's high bit is set in `below` when it is under 0x20 (and
        // under 0x80), in `above` when it is over 0x7e (adding one makes
        // 0x7f 0x80; 0x80 and up have it already).
        let below = x.wrapping_sub(ONES * 0x20) & !x;
        let above = x.wrapping_add(ONES) | x;
        outside |= (below | above) & HIGH;
    }
    outside == 0 && chunks.remainder().iter().all(|&b| visible(b))
        || value.iter().all(|&b| visible(b) || b == b'\t')
}

/// One plain-HTTP/1.1 replica.
pub struct Replica {
    id: usize,
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    path: PathAndQuery,
}

impl Replica {
    /// The replica at `url`, when it is a plain `http://` URL.
    pub fn for_url(url: &Uri) -> Option<Replica> {
        if url.scheme_str() != Some("http") {
            return None;
        }
        let authority = url.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // Host is the URL's host and port as written, without any userinfo.
        let host = match authority.port() {
            Some(given) => HeaderValue::from_str(&format!("{}:{given}", authority.host())),
            None => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some(Replica {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            authority: format!("{}:{port}", authority.host()),
            host,
            path,
        })
    }

    /// The head of a request to this replica for a `body_len`-byte body:
    /// its request line, `Host` and `Content-Length`; the caller adds the
    /// rest (see [`HeaderSink`]).
    pub fn head(&self, body_len: usize) -> RequestHead {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(self.path.as_str().as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(self.host.as_bytes());
        head.extend_from_slice(b"\r\ncontent-length: ");
        crate::invocation::push_decimal(&mut head, body_len as u64);
        head.extend_from_slice(b"\r\n");
        RequestHead(head)
    }

    /// Sends `head` and `body` on an idle connection, or a new one, and
    /// reads the answer's head; its body is read as the answer is polled.
    pub async fn post(
        &self,
        head: RequestHead,
        body: Bytes,
    ) -> Result<Response<Answer>, PoolError> {
        let mut head = head.0;
        head.extend_from_slice(b"\r\n");
        let mut conn = match self.idle() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let failed = |e: io::Error| PoolError::Request(e.to_string());
        if body.len() <= INLINE_BODY {
            head.extend_from_slice(&body);
            conn.stream.write_all(&head).await.map_err(failed)?;
        } else {
            conn.stream.write_all(&head).await.map_err(failed)?;
            conn.stream.write_all(&body).await.map_err(failed)?;
        }
        self.read_head(conn).await
    }

    /// An idle connection of this worker that can take a request.
    fn idle(&self) -> Option<Conn> {
        loop {
            let conn = IDLE.with(|idle| idle.borrow_mut().get_mut(&self.id)?.pop())?;
            if conn.usable() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let failed = |message: String| PoolError::Connect {
            authority: self.authority.clone(),
            message,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| failed("timed out".to_owned()))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// Reads the answer's head (passing over interim `1xx` answers).
    async fn read_head(&self, mut conn: Conn) -> Result<Response<Answer>, PoolError> {
        loop {
            match parse_head(&conn.buf)? {
                Some((used, head)) => {
                    let _ = conn.buf.split_to(used);
                    if head.status().is_informational() {
                        continue;
                    }
                    return Ok(head.map(|mode| Answer::new(conn, mode, self.id)));
                }
                None if conn.buf.len() > MAX_HEAD_BYTES => {
                    return Err(PoolError::Request("the answer's head is too large".into()));
                }
                None => match conn.read_more().await {
                    Ok(true) => {}
                    Ok(false) if conn.buf.is_empty() => {
                        return Err(PoolError::Request(
                            "the connection closed before an answer came".into(),
                        ));
                    }
                    Ok(false) => {
                        return Err(PoolError::Request(
                            "the connection closed within the answer's head".into(),
                        ));
                    }
                    Err(e) => return Err(PoolError::Request(e.to_string())),
                },
            }
        }
    }
}

/// An answer's head from `bytes` (the bytes it took, and the answer with
/// how its body is framed), `None` until all of it has come. Of its
/// headers the answer keeps `Content-Type` alone: an invocation's outcome
/// is its status and body, and a stream's framing its content type.
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Response<Mode>)>, PoolError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let invalid = |why: &str| PoolError::Request(format!("invalid answer head: {why}"));
    // Uninitialised: httparse writes the slots it fills, and filling 128
    // of them first cost more than the parse.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let used = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        bytes,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&e.to_string())),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| invalid("status"))?;
    let http11 = parsed.version == Some(1);
    let mut fields = Fields::default();
    let mut content_type = None;
    for line in parsed.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-type") {
            let value = HeaderValue::from_bytes(line.value).map_err(|_| invalid("value"))?;
            content_type = Some(value);
        } else {
            fields.take(name, line.value).map_err(invalid)?;
        }
    }
    let mut response = Response::new(fields.mode(status, http11));
    *response.status_mut() = status;
    *response.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    if let Some(value) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(Some((used, response)))
}

/// What an answer's head says of its framing and its connection.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    /// Takes in one header line (its name in any case).
    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(value).ok_or("Content-Length")?;
            if self.length.is_some_and(|prev| prev != n) {
                return Err("two Content-Lengths");
            }
            self.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            self.chunked = last_is_chunked(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.close |= has_token(value, b"close");
            self.keep_alive |= has_token(value, b"keep-alive");
        }
        Ok(())
    }

    /// The body's framing (RFC 9112 section 6.3), and whether the
    /// connection may serve another request after it.
    fn mode(&self, status: StatusCode, http11: bool) -> Mode {
        let reusable = !self.close && (http11 || self.keep_alive);
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Mode::length(0, reusable);
        }
        if self.transfer_encoding {
            // Both framings may be a smuggling attempt: chunked wins, and
            // the connection serves nothing more.
            let reusable = reusable && self.length.is_none();
            return if self.chunked {
                Mode::chunked(reusable)
            } else {
                Mode::UntilClose
            };
        }
        match self.length {
            Some(n) => Mode::length(n, reusable),
            None => Mode::UntilClose,
        }
    }
}

/// Keeps `conn` for the next request to `replica` on this thread.
fn check_in(replica: usize, mut conn: Conn) {
    if conn.buf.capacity() > 2 * READ_BYTES {
        conn.buf = BytesMut::new();
    }
    // `try_with`: a thread being torn down keeps nothing.
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(replica).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    });
}

#[cfg(test)]
mod tests;
