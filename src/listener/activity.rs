//! What a connection is doing, for closing it when it idles too long or
//! sends a request's headers too slowly (slowloris), and (HTTP/1) whether
//! each request's head framed its body one way. Reads and writes are seen
//! through `Tracked`, requests through `RequestGuard`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::{Framing, Heads};

/// Why a connection was closed by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    SlowHeaders,
}

pub struct Activity {
    origin: Instant,
    /// Last read or write, in ms since `origin` (plus one).
    last: AtomicU64,
    /// Requests being handled.
    active: AtomicUsize,
    /// When the first byte of a not yet parsed request arrived (0: none).
    reading_since: AtomicU64,
    /// The verdicts on the request heads read and not yet served, in
    /// order: `CLEAN` counts heads framed one way, then `REFUSE_REST`
    /// refuses every later request, and `FOLLOWED` says the bytes are
    /// followed at all (HTTP/1). A refused request closes the connection,
    /// so nothing after the first refusal needs a verdict of its own.
    verdicts: AtomicU64,
}

const CLEAN: u64 = (1 << 62) - 1;
const REFUSE_REST: u64 = 1 << 62;
const FOLLOWED: u64 = 1 << 63;

impl Activity {
    pub fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            reading_since: AtomicU64::new(0),
            verdicts: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Release);
        if self.active.load(Ordering::Acquire) == 0
            && self.reading_since.load(Ordering::Relaxed) == 0
        {
            let _ =
                self.reading_since
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn wrote(&self) {
        self.last.store(self.now(), Ordering::Release);
    }

    /// Resolves when the connection should be closed: no request and no
    /// traffic for `idle`, or (HTTP/1) a request whose headers have not
    /// all arrived `header_read` after its first byte.
    ///
    /// Nothing wakes this task when a request starts (that would cost a
    /// wake-up and a timer per request): it looks at least every
    /// `header_read` instead, and a head that started since then is given
    /// exactly `header_read` from its first byte.
    pub async fn expired(&self, idle: Duration, header_read: Duration, http1: bool) -> Expiry {
        let (idle, header_read) = (idle.as_millis() as u64, header_read.as_millis() as u64);
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let now = self.now();
            let due = if self.active.load(Ordering::Acquire) > 0 {
                now + header_read.min(idle)
            } else {
                let reading = self.reading_since.load(Ordering::Acquire);
                if http1 && reading != 0 {
                    if now >= reading + header_read {
                        return Expiry::SlowHeaders;
                    }
                    reading + header_read
                } else {
                    let last = self.last.load(Ordering::Acquire);
                    if now >= last + idle {
                        return Expiry::Idle;
                    }
                    (last + idle).min(now + header_read)
                }
            };
            let wait = Duration::from_millis(due.saturating_sub(now).max(1));
            sleep.as_mut().reset(tokio::time::Instant::now() + wait);
            sleep.as_mut().await;
        }
    }
}

impl Activity {
    /// Takes the verdict on the request about to be served (call once per
    /// request, in the order hyper serves them): true when its head framed
    /// its body two ways (say `Content-Length` and `Transfer-Encoding`), or
    /// the connection's bytes could not be followed up to it. hyper keeps
    /// one framing and never shows both. Always false on HTTP/2.
    pub fn take_ambiguous(&self) -> bool {
        let taken = self
            .verdicts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & CLEAN != 0).then(|| v - 1)
            });
        match taken {
            Ok(_) => false,
            // No head seen for this request although the bytes are
            // followed: they were not followed the way hyper read them.
            Err(v) => v & (REFUSE_REST | FOLLOWED) != 0,
        }
    }

    /// Records what a read completed.
    fn judged(&self, heads: Heads) {
        if heads.http2 {
            self.verdicts.store(0, Ordering::Release);
        }
        if heads.clean > 0 {
            self.verdicts.fetch_add(heads.clean, Ordering::AcqRel);
        }
        if heads.refuse_rest {
            self.verdicts.fetch_or(REFUSE_REST, Ordering::AcqRel);
        }
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    pub fn new(activity: Arc<Activity>) -> RequestGuard {
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.reading_since.store(0, Ordering::Release);
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.wrote();
    }
}

/// A stream whose reads and writes are recorded in an `Activity`.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// HTTP/1: every byte read, followed from head to body to next head.
    framing: Framing,
}

impl<S> Tracked<S> {
    /// `http1` turns on following the requests' framing.
    pub fn new(inner: S, activity: Arc<Activity>, http1: bool) -> Tracked<S> {
        if http1 {
            activity.verdicts.fetch_or(FOLLOWED, Ordering::AcqRel);
        }
        Tracked {
            inner,
            activity,
            framing: Framing::new(http1),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
            let this = &mut *self;
            let heads = this.framing.feed(&buf.filled()[before..]);
            if heads != Heads::default() {
                this.activity.judged(heads);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
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
}
