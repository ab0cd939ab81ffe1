//! Request bodies as the handlers see them, and what is left of them when
//! the answer is ready.
//!
//! A body whose client stalls it (no bytes for `body_read_timeout`, or
//! fewer than `body_min_rate` bytes a second once past that) ends in
//! [`BodyStalled`], which handlers answer with `408 request_timeout`; the
//! connection is closed after it. A body left unread by an early answer
//! (404, 401, 413, ...) comes back to the listener, which reads and
//! discards a little of it before the answer goes out, as nginx does: an
//! HTTP/1.1 connection then stays usable, and an HTTP/2 stream ends
//! without a reset that some clients (curl 7.88) report instead of the
//! answer. A body too large for that gets `Connection: close` on HTTP/1.1
//! (and a stream reset on HTTP/2).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use crate::http::BodyStalled;

/// How slowly a client may send a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// The longest wait for the next bytes.
    pub gap: Duration,
    /// Bytes a second the body must average once its waits add up to more
    /// than `gap` (0: no minimum rate).
    pub min_rate: u64,
}

/// Most bytes of an unread body read and discarded before an early answer.
const DRAIN_LIMIT: u64 = 1 << 20;

/// How long an early answer waits for the rest of an unread body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The errors of the request bodies the listener reads (hyper's, or the
/// fngate HTTP/1.1 engine's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request's body tells the listener once the handler is done.
pub struct BodyReturn<B> {
    /// The body, when the handler dropped it before its end.
    unread: Mutex<Option<B>>,
    /// The client stalled the body: the connection is to be closed.
    stalled: AtomicBool,
}

impl<B> Default for BodyReturn<B> {
    fn default() -> Self {
        BodyReturn {
            unread: Mutex::new(None),
            stalled: AtomicBool::new(false),
        }
    }
}

/// What became of a request body by the time its answer was ready.
#[derive(Debug, PartialEq, Eq)]
pub enum Leftover {
    /// Read to its end (or still in use by a streaming backend).
    Done,
    /// Not read to its end, and the connection cannot be reused for the
    /// next request (HTTP/1.1: the answer says `Connection: close`).
    Unusable,
}

impl<B> BodyReturn<B>
where
    B: Body + Unpin,
{
    /// Reads what the handler left of the body, within bounds.
    /// `expects_continue`: the client waits for `100 Continue` before it
    /// sends the body, so reading it would only invite it.
    pub async fn settle(&self, expects_continue: bool) -> Leftover {
        if self.stalled.load(Ordering::Acquire) {
            return Leftover::Unusable;
        }
        let unread = self
            .unread
            .lock()
            .expect("no code panics while holding the unread body")
            .take();
        let Some(body) = unread else {
            return Leftover::Done;
        };
        if expects_continue || body.size_hint().lower() > DRAIN_LIMIT {
            return Leftover::Unusable;
        }
        match tokio::time::timeout(DRAIN_TIMEOUT, discard(body, DRAIN_LIMIT)).await {
            Ok(true) => Leftover::Done,
            Ok(false) | Err(_) => Leftover::Unusable,
        }
    }
}

/// Reads `body` to its end, up to `limit` bytes; true when it ended.
async fn discard<B: Body + Unpin>(mut body: B, limit: u64) -> bool {
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                read += frame
                    .data_ref()
                    .map_or(0, |data| bytes::Buf::remaining(data) as u64);
                if read > limit {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A request body with its pace watched; see the module's documentation.
pub struct RequestBody<B: Body> {
    /// `None` once stalled (or handed back).
    inner: Option<B>,
    pace: BodyPace,
    /// Body bytes received so far.
    received: u64,
    /// Time spent waiting for bytes so far, the current wait excluded.
    waited: Duration,
    /// When the current wait for bytes began.
    waiting_since: Option<Instant>,
    /// Wakes the handler when the current wait runs out.
    timer: Option<Pin<Box<Sleep>>>,
    back: Arc<BodyReturn<B>>,
}

impl<B: Body> RequestBody<B> {
    pub fn new(inner: B, pace: BodyPace, back: Arc<BodyReturn<B>>) -> RequestBody<B> {
        RequestBody {
            inner: Some(inner),
            pace,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            back,
        }
    }

    /// Bytes arrived (or the body ended): the current wait, if any, is over.
    fn arrived(&mut self, bytes: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.received += bytes as u64;
    }

    /// No bytes yet: true when the wait is over its allowance. Otherwise
    /// the timer is armed to wake the handler when it will be.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let deadline = since + self.allowance();
        if now >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn allowance(&self) -> Duration {
        allowance(self.pace, self.received, self.waited)
    }
}

/// How long the current wait for bytes may last: at most `gap`, and no
/// longer than what the minimum rate leaves of the total waiting budget
/// (`gap`, plus one second per `min_rate` bytes received).
fn allowance(pace: BodyPace, received: u64, waited: Duration) -> Duration {
    if pace.min_rate == 0 {
        return pace.gap;
    }
    let earned = Duration::from_secs_f64(received as f64 / pace.min_rate as f64);
    let budget = pace.gap.saturating_add(earned);
    budget.saturating_sub(waited).min(pace.gap)
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let bytes = match &frame {
                    Some(Ok(frame)) => frame.data_ref().map_or(0, Bytes::len),
                    _ => 0,
                };
                this.arrived(bytes);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.stalled(cx) => {
                this.inner = None;
                this.back.stalled.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyStalled))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B: Body> Drop for RequestBody<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                *self
                    .back
                    .unread
                    .lock()
                    .expect("no code panics while holding the unread body") = Some(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(gap: u64, min_rate: u64) -> BodyPace {
        BodyPace {
            gap: Duration::from_secs(gap),
            min_rate,
        }
    }

    fn allowance_after(pace: BodyPace, received: u64, waited: u64) -> Duration {
        allowance(pace, received, Duration::from_secs(waited))
    }

    #[test]
    fn a_wait_never_exceeds_the_gap() {
        assert_eq!(
            allowance_after(pace(10, 1024), 1 << 30, 0),
            Duration::from_secs(10)
        );
        assert_eq!(
            allowance_after(pace(10, 0), 0, 1000),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_trickle_runs_out_of_waiting_budget() {
        // 1 byte a second for 9 s: 9 s waited, 9 bytes earned almost nothing.
        let left = allowance_after(pace(10, 1024), 9, 9);
        assert!(left < Duration::from_millis(1100), "{left:?}");
        // A body at 2 KiB/s earns more than it waits.
        assert_eq!(
            allowance_after(pace(10, 1024), 2048 * 60, 60),
            Duration::from_secs(10)
        );
    }
}
