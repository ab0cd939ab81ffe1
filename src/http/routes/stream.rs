//! Sync calls of a streaming function (`stream = true`): its items go to
//! the client the moment each comes, as `application/x-ndjson` lines, or
//! as Server-Sent Events when the client accepts `text/event-stream`.
//!
//! An error before the first item is the usual problem answer with its
//! status. After it the status is sent, so the stream ends with the
//! problem as its last line (`{"error": {...}}`) or an `error` event. A
//! client that leaves drops the answer's body, and with it the item stream:
//! the function is stopped. The call's concurrency slot is held until the
//! stream ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Frame;

use crate::backend::stream::{self, EVENT_STREAM, ItemStream, NDJSON};
use crate::backend::{Backend, BackendError, StreamedAnswer};
use crate::dispatch::Slot;
use crate::http::problem::ApiError;
use crate::http::respond::{backend_failure, insert_call_id};
use crate::invocation::{Invocation, Trace};
use crate::registry::Function;

/// How the items are written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One item a line; an error ends it as `{"error": {problem}}`.
    Lines,
    /// `data: <item>` events, then `event: end` (or `event: error` with
    /// the problem as its data).
    Events,
}

impl Encoding {
    /// Events when the request's `Accept` names `text/event-stream` (with
    /// no `q=0`), else lines.
    pub fn accepted(headers: &HeaderMap) -> Encoding {
        let events = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let essence = parts.next().unwrap_or_default();
                essence.eq_ignore_ascii_case(EVENT_STREAM)
                    && !parts.any(|p| {
                        p.strip_prefix("q=")
                            .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0))
                    })
            });
        if events {
            Encoding::Events
        } else {
            Encoding::Lines
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Lines => NDJSON,
            Encoding::Events => EVENT_STREAM,
        }
    }
}

/// Runs a streaming call in `slot`: waits for its first item (or its
/// error, answered as a problem), then answers `200` with a body that
/// sends each item as it comes.
pub async fn stream(
    function: &Arc<Function>,
    backend: &Arc<dyn Backend>,
    invocation: Arc<Invocation>,
    slot: Slot,
    encoding: Encoding,
) -> Result<Response<Body>, ApiError> {
    let failed = |e| backend_failure(function, &invocation.trace, e);
    let mut items = stream::open(backend.as_ref(), &invocation)
        .await
        .map_err(failed)?;
    let first = match items.next().await {
        Some(Ok(item)) => Some(item),
        Some(Err(e)) => return Err(failed(e)),
        None => None,
    };
    let work = Arc::new(Mutex::new(Shared {
        work: Some((items, slot)),
        waker: None,
    }));
    let body = ItemBody {
        first,
        watch: Watch(tokio::spawn(watch(
            Arc::downgrade(&work),
            invocation.deadline + WATCH_GRACE,
        ))),
        work,
        encoding,
        function: function.clone(),
        trace: invocation.trace.clone(),
        ended: false,
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    // Nothing between here and the client should hold items back.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    insert_call_id(&mut response, invocation.call_id.as_str());
    response.extensions_mut().insert(StreamedAnswer);
    Ok(response)
}

/// How long after its deadline a stream whose client stopped reading is
/// stopped (one whose client reads ends at the deadline itself).
const WATCH_GRACE: Duration = Duration::from_secs(1);

/// A streaming call's answer body: one frame per item, written as it comes.
struct ItemBody {
    /// The first item, read before the answer's head was sent.
    first: Option<Bytes>,
    /// The call's work, shared with its deadline's watch.
    work: Arc<Mutex<Shared>>,
    watch: Watch,
    encoding: Encoding,
    function: Arc<Function>,
    trace: Trace,
    ended: bool,
}

/// What a stream's body shares with the watch of its deadline: a client
/// that stops reading (a full flow-control window, a full socket) stops
/// polling the body, and so its stream's own deadline; the watch then
/// stops the function and frees its slot.
struct Shared {
    /// The items and the call's slot; `None` once the stream has ended.
    work: Option<(ItemStream, Slot)>,
    /// Woken when the watch stopped the work.
    waker: Option<Waker>,
}

/// The deadline's watch, stopped with the body.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the work at `at`, if the body has not ended it by then.
async fn watch(work: Weak<Mutex<Shared>>, at: tokio::time::Instant) {
    tokio::time::sleep_until(at).await;
    let Some(work) = work.upgrade() else {
        return;
    };
    let (stopped, waker) = {
        let mut shared = lock(&work);
        (shared.work.take(), shared.waker.take())
    };
    if stopped.is_some() {
        tracing::warn!("a stream's client stopped reading past its timeout; stopping its function");
    }
    drop(stopped);
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn lock(work: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    work.lock().expect("no code panics holding a stream's lock")
}

impl ItemBody {
    fn item(&self, item: &[u8]) -> Bytes {
        let mut frame = BytesMut::with_capacity(item.len() + 8);
        match self.encoding {
            Encoding::Lines => {
                frame.put_slice(item);
                frame.put_u8(b'\n');
            }
            Encoding::Events => {
                frame.put_slice(b"data: ");
                frame.put_slice(item);
                frame.put_slice(b"\n\n");
            }
        }
        frame.freeze()
    }

    /// The frame that ends the stream after `error`.
    fn error(&self, error: BackendError) -> Bytes {
        let problem = backend_failure(&self.function, &self.trace, error)
            .problem_json(&self.trace.request_id);
        let mut frame = BytesMut::with_capacity(problem.len() + 24);
        match self.encoding {
            Encoding::Lines => {
                frame.put_slice(b"{\"error\":");
                frame.put_slice(&problem);
                frame.put_slice(b"}\n");
            }
            Encoding::Events => {
                frame.put_slice(b"event: error\ndata: ");
                frame.put_slice(&problem);
                frame.put_slice(b"\n\n");
            }
        }
        frame.freeze()
    }

    /// The stream has ended: the function's work and its slot go now, not
    /// when the client has read the last bytes.
    fn end(&mut self) {
        let ended = lock(&self.work).work.take();
        drop(ended);
        self.watch.0.abort();
        self.ended = true;
    }
}

impl http_body::Body for ItemBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(this.item(&first)))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = {
            let mut shared = lock(&this.work);
            match shared.work.as_mut() {
                Some((items, _)) => {
                    let polled = items.poll_next_unpin(cx);
                    if polled.is_pending() {
                        shared.waker = Some(cx.waker().clone());
                    }
                    Some(polled)
                }
                None => None,
            }
        };
        let Some(polled) = polled else {
            // Stopped by the watch of its deadline.
            this.ended = true;
            return Poll::Ready(Some(Ok(Frame::data(this.error(BackendError::Timeout)))));
        };
        let frame = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(item))) => this.item(&item),
            Poll::Ready(Some(Err(e))) => {
                this.end();
                this.error(e)
            }
            Poll::Ready(None) => {
                this.end();
                match this.encoding {
                    Encoding::Lines => return Poll::Ready(None),
                    Encoding::Events => Bytes::from_static(b"event: end\ndata:\n\n"),
                }
            }
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Encoding {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Encoding::accepted(&headers)
    }

    #[test]
    fn event_streams_are_given_to_clients_that_accept_them() {
        assert_eq!(accept("text/event-stream"), Encoding::Events);
        assert_eq!(
            accept("application/json, Text/Event-Stream;q=0.5"),
            Encoding::Events
        );
        assert_eq!(accept("text/event-stream;q=0"), Encoding::Lines);
        assert_eq!(accept("*/*"), Encoding::Lines);
        assert_eq!(Encoding::accepted(&HeaderMap::new()), Encoding::Lines);
    }
}
