//! Answer bytes held until the client reads them. A client that opens many
//! HTTP/2 streams to a large result and never opens its flow-control
//! window would otherwise pin `h2_max_streams x max_result` bytes per
//! connection: each large answer is counted, per connection and over the
//! whole gateway, for as long as its body lives, and an answer that would
//! take either count past its bound becomes `503 overloaded` instead. The
//! first answer of a connection always goes through, so one result larger
//! than the per-connection bound is still served. Passthrough answers
//! stream from their backend as the client reads them (hyper's flow
//! control holds the backend back), so they are not counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};

use crate::backend::StreamedAnswer;
use crate::http::problem::ApiError;

/// Answers smaller than this are not counted: only large results can add
/// up to a lot, and small ones stay off the shared counter.
const COUNTED: u64 = 64 << 10;

/// The bounds, and what the whole gateway holds now.
pub struct ResultBudget {
    per_connection: u64,
    total: u64,
    held: AtomicU64,
}

impl ResultBudget {
    pub fn new(per_connection: u64, total: u64) -> ResultBudget {
        ResultBudget {
            per_connection,
            total,
            held: AtomicU64::new(0),
        }
    }

    /// `response`, counted against `connection`'s and the gateway's
    /// bounds while its body lives; a 503 when it would pass either.
    pub fn hold(
        self: &Arc<Self>,
        connection: &Arc<AtomicU64>,
        response: Response<Body>,
    ) -> Response<Body> {
        let bytes = http_body::Body::size_hint(response.body()).lower();
        let streamed = response.extensions().get::<StreamedAnswer>().is_some();
        if bytes < COUNTED || streamed {
            return response;
        }
        let before = connection.fetch_add(bytes, Ordering::AcqRel);
        let total = self.held.fetch_add(bytes, Ordering::AcqRel);
        let over_connection = before > 0 && before + bytes > self.per_connection;
        let over_total = total > 0 && total + bytes > self.total;
        if over_connection || over_total {
            connection.fetch_sub(bytes, Ordering::AcqRel);
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            tracing::debug!(
                bytes,
                held_by_connection = before,
                held_in_total = total,
                "answer refused: too many result bytes wait for their clients"
            );
            return overloaded(&response);
        }
        response.map(|body| {
            Body::new(HeldBody {
                inner: body,
                bytes,
                connection: connection.clone(),
                budget: self.clone(),
            })
        })
    }
}

/// The 503 that replaces an answer, with the request id it carried.
fn overloaded(original: &Response<Body>) -> Response<Body> {
    let request_id = original
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = ApiError::Overloaded.into_problem(&request_id);
    if let Some(id) = original.headers().get("x-request-id") {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}

/// A counted answer body: its bytes are given back when it is dropped
/// (sent, or abandoned with its connection).
struct HeldBody {
    inner: Body,
    bytes: u64,
    connection: Arc<AtomicU64>,
    budget: Arc<ResultBudget>,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.connection.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: usize) -> Response<Body> {
        Response::new(Body::from(vec![b'1'; bytes]))
    }

    #[test]
    fn a_connection_holds_one_large_answer_past_its_bound_but_not_two() {
        let budget = Arc::new(ResultBudget::new(1 << 20, 1 << 30));
        let connection = Arc::new(AtomicU64::new(0));
        let first = budget.hold(&connection, answer(4 << 20));
        assert_eq!(first.status(), 200);
        let second = budget.hold(&connection, answer(4 << 20));
        assert_eq!(second.status(), 503);
        assert_eq!(connection.load(Ordering::Acquire), 4 << 20);
        drop(first);
        assert_eq!(connection.load(Ordering::Acquire), 0);
        assert_eq!(budget.held.load(Ordering::Acquire), 0);
        assert_eq!(budget.hold(&connection, answer(4 << 20)).status(), 200);
    }

    #[test]
    fn the_total_bound_spans_connections_and_small_answers_are_free() {
        let budget = Arc::new(ResultBudget::new(64 << 20, 6 << 20));
        let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let held = budget.hold(&a, answer(4 << 20));
        assert_eq!(budget.hold(&b, answer(4 << 20)).status(), 503);
        assert_eq!(budget.hold(&b, answer(1000)).status(), 200);
        assert_eq!(b.load(Ordering::Acquire), 0);
        drop(held);
    }
}
