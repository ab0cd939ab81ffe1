//! What a connection is doing, for closing it when it idles too long or
//! sends a request's headers too slowly (slowloris). Reads and writes are
//! seen through `Tracked`, requests through `RequestGuard`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// The request head just read framed its body two ways.
    ambiguous: AtomicBool,
    /// A request started: the next head is to be scanned afresh.
    new_head: AtomicBool,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            reading_since: AtomicU64::new(0),
            ambiguous: AtomicBool::new(false),
            new_head: AtomicBool::new(false),
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
    /// True (once) when the request about to be served came with both
    /// `Content-Length` and `Transfer-Encoding` (HTTP/1 only: hyper keeps
    /// one of them and never shows both).
    pub fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::AcqRel)
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    pub fn new(activity: Arc<Activity>) -> RequestGuard {
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.reading_since.store(0, Ordering::Release);
        activity.new_head.store(true, Ordering::Release);
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
    scan: HeadScan,
    /// HTTP/1: the bytes of the request head read so far (the buffer is
    /// kept from one request to the next).
    head: Vec<u8>,
}

/// HTTP/1: where the scan of the next request head stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadScan {
    /// HTTP/2: nothing to scan.
    Off,
    /// Collecting a request head.
    Reading,
    /// The head is complete (or too large to keep); what follows is its
    /// body, until the next request starts.
    Done,
}

/// Most bytes of a request head kept for the framing check.
const HEAD_SCAN_LIMIT: usize = 256 << 10;

impl<S> Tracked<S> {
    /// `http1` turns on the scan of request heads for ambiguous framing.
    pub fn new(inner: S, activity: Arc<Activity>, http1: bool) -> Tracked<S> {
        Tracked {
            inner,
            activity,
            scan: if http1 {
                HeadScan::Reading
            } else {
                HeadScan::Off
            },
            head: Vec::new(),
        }
    }

    /// Looks at bytes read while no request is in flight: the head of the
    /// next one.
    fn scan(&mut self, bytes: &[u8]) {
        if self.scan == HeadScan::Off {
            return;
        }
        if self.activity.new_head.swap(false, Ordering::AcqRel) {
            self.head.clear();
            self.scan = HeadScan::Reading;
        }
        if self.scan == HeadScan::Done || self.activity.active.load(Ordering::Acquire) > 0 {
            return;
        }
        let head = &mut self.head;
        let old = head.len();
        head.extend_from_slice(&bytes[..bytes.len().min(HEAD_SCAN_LIMIT - old)]);
        let from = old.saturating_sub(3);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let text = &head[..from + end];
            let has = |name: &[u8]| {
                text.split(|b| *b == b'\n').any(|line| {
                    line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name)
                })
            };
            if has(b"content-length:") && has(b"transfer-encoding:") {
                self.activity.ambiguous.store(true, Ordering::Release);
            }
            self.scan = HeadScan::Done;
        } else if head.len() >= HEAD_SCAN_LIMIT {
            // hyper refuses a head this large itself.
            self.scan = HeadScan::Done;
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
            this.scan(&buf.filled()[before..]);
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
}
