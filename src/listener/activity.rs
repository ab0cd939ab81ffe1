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

    /// Bytes of a request arrived (also called for bytes that came with
    /// the previous request, when the next one starts from them).
    pub fn read(&self) {
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
mod tests;
