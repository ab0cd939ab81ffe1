//! The connection loop: a head, its request handled (the same handling as
//! on hyper's paths), its answer written, and the next head, strictly in
//! order, until a side closes, a head is refused, or shutdown comes (an
//! idle connection closes at once, a busy one after its answer).

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, ready};

use bytes::Bytes;
use http::StatusCode;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::decode::{Decoder, IncomingBody};
use super::encode::{self, Asked, BodyFraming};
use super::head::{self, Framing, Head, Parsed, Refusal};
use super::{Step, Wire};
use crate::listener::activity::Activity;
use crate::listener::{Handler, hyper_header_cap, refuse_ambiguous_framing};

/// Answer bytes gathered before they are written: small bodies go out with
/// their head in one write (one TLS record).
const GATHER: usize = 16 << 10;

type Shared<IO> = Arc<Mutex<Wire<IO>>>;

/// Serves HTTP/1.1 on `io` until the connection ends.
pub(in crate::listener) async fn serve<IO>(
    io: IO,
    handler: Arc<Handler>,
    max_header_bytes: usize,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire = Arc::new(Mutex::new(Wire::new(io)));
    let cap = hyper_header_cap(max_header_bytes);
    loop {
        let parsed = tokio::select! {
            biased;
            parsed = next_head(&wire, &activity, cap, max_header_bytes) => parsed,
            () = shutdown.cancelled() => break,
        };
        let served = match parsed {
            // Boxed: a request's handling is most of a connection's state
            // (some 10 KiB), and an idle connection need not hold it.
            Ok(Some(Ok(head))) => Box::pin(serve_request(&wire, &handler, head)).await,
            Ok(Some(Err(refusal))) => refuse(&wire, refusal).await,
            Ok(None) => break,
            Err(e) => Err(e),
        };
        match served {
            Ok(true) if !shutdown.is_cancelled() => {}
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
                return;
            }
        }
    }
    let _ = poll_fn(|cx| lock(&wire).poll_shutdown(cx)).await;
}

fn lock<IO>(wire: &Shared<IO>) -> std::sync::MutexGuard<'_, Wire<IO>> {
    wire.lock().expect("no code panics while holding the wire")
}

/// The next request head: `None` when the connection ends first.
async fn next_head<IO: AsyncRead + AsyncWrite + Unpin>(
    wire: &Shared<IO>,
    activity: &Activity,
    cap: usize,
    max_header_bytes: usize,
) -> io::Result<Option<Result<Head, Refusal>>> {
    if !lock(wire).rest.is_empty() {
        // Its first bytes came with the previous request's: its header
        // time runs from now.
        activity.read();
    }
    poll_fn(|cx| {
        lock(wire).poll_step(cx, |bytes, eof| {
            match head::parse(bytes, cap, max_header_bytes) {
                Parsed::Complete(used, head) => Step::Done(used, Some(head)),
                // A head cut short by the end of the stream gets no answer.
                Parsed::Partial if eof => Step::Done(bytes.len(), None),
                Parsed::Partial => Step::More(0),
            }
        })
    })
    .await
}

/// A head that is not served: hyper's bare answer, or the gateway's 400
/// problem to an ambiguous framing. The connection closes after it.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    wire: &Shared<IO>,
    refusal: Refusal,
) -> io::Result<bool> {
    let status = match refusal {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
        Refusal::Ambiguous => {
            let asked = Asked {
                method: http::Method::POST,
                version: http::Version::HTTP_11,
                keep_alive: false,
            };
            answer(wire, refuse_ambiguous_framing(), &asked).await?;
            return Ok(false);
        }
    };
    let mut outbox = Outbox::new(encode::refusal(status));
    outbox.send(wire).await?;
    Ok(false)
}

/// Serves one request: true when the connection may serve the next.
async fn serve_request<IO>(
    wire: &Shared<IO>,
    handler: &Arc<Handler>,
    head: Head,
) -> io::Result<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let asked = Asked {
        method: head.request.method().clone(),
        version: head.request.version(),
        keep_alive: head.keep_alive,
    };
    let number = {
        let mut wire = lock(wire);
        wire.request += 1;
        wire.body = Decoder::new(head.body);
        wire.continue_due = (head.expect_continue && head.body != Framing::Length(0)).then_some(0);
        wire.request
    };
    let body = IncomingBody::new(wire.clone(), number, head.body);
    let response = tokio::select! {
        response = handler.handle(head.request.map(|()| body), false) => response,
        // As hyper: a client gone before its answer ends the request.
        () = poll_fn(|cx| lock(wire).poll_gone(cx)) => return Ok(false),
    };
    let close = answer(wire, response, &asked).await?;
    let read_through = lock(wire).body == Decoder::Done;
    Ok(!close && read_through)
}

/// Writes `response`: true when the connection closes after it.
async fn answer<IO: AsyncRead + AsyncWrite + Unpin>(
    wire: &Shared<IO>,
    response: http::Response<axum::body::Body>,
    asked: &Asked,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let written = encode::head(parts.status, &parts.headers, &body.size_hint(), asked);
    let mut outbox = Outbox::new(written.head);
    let framing = written.body;
    if framing == BodyFraming::Empty {
        drop(body);
        outbox.send(wire).await?;
        return Ok(written.close);
    }
    let mut sent = 0u64;
    while let Some(frame) = outbox.next_frame(wire, &mut body).await? {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            // Trailers are not sent.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            BodyFraming::Length(n) => {
                let room = usize::try_from(n - sent).unwrap_or(usize::MAX);
                if data.len() > room {
                    outbox.put(wire, data.slice(..room)).await?;
                    outbox.send(wire).await?;
                    return Err(io::Error::other(
                        "the answer's body is longer than its length",
                    ));
                }
                sent += data.len() as u64;
                outbox.put(wire, data).await?;
            }
            BodyFraming::Chunked => {
                encode::chunk_size(&mut outbox.buf, data.len());
                outbox.put(wire, data).await?;
                outbox.buf.extend_from_slice(b"\r\n");
            }
            BodyFraming::UntilClose | BodyFraming::Empty => outbox.put(wire, data).await?,
        }
    }
    if framing == BodyFraming::Chunked {
        outbox.buf.extend_from_slice(b"0\r\n\r\n");
    }
    outbox.send(wire).await?;
    if matches!(framing, BodyFraming::Length(n) if sent < n) {
        return Err(io::Error::other(
            "the answer's body ended before its length",
        ));
    }
    Ok(written.close)
}

/// Answer bytes not written yet; dropped with the answer.
struct Outbox {
    buf: Vec<u8>,
    written: usize,
    /// Everything so far is written and flushed.
    flushed: bool,
}

impl Outbox {
    fn new(head: Vec<u8>) -> Outbox {
        Outbox {
            buf: head,
            written: 0,
            flushed: false,
        }
    }

    /// Adds `data`: gathered when small, else written at once after what
    /// is gathered.
    async fn put<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &Shared<IO>,
        data: Bytes,
    ) -> io::Result<()> {
        self.flushed = false;
        if self.buf.len() + data.len() <= GATHER {
            self.buf.extend_from_slice(&data);
            return Ok(());
        }
        self.write(wire, false).await?;
        let mut written = 0;
        poll_fn(|cx| lock(wire).poll_write_all(cx, &data, &mut written)).await
    }

    /// Writes and flushes what is gathered.
    async fn send<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &Shared<IO>,
    ) -> io::Result<()> {
        self.write(wire, true).await
    }

    async fn write<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &Shared<IO>,
        flush: bool,
    ) -> io::Result<()> {
        poll_fn(|cx| self.poll_write(&mut lock(wire), cx, flush)).await
    }

    fn poll_write<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<IO>,
        cx: &mut std::task::Context<'_>,
        flush: bool,
    ) -> Poll<io::Result<()>> {
        ready!(wire.poll_write_all(cx, &self.buf, &mut self.written))?;
        self.buf.clear();
        self.written = 0;
        if flush && !self.flushed {
            ready!(wire.poll_flush(cx))?;
            self.flushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// The body's next frame; while it is not ready, what is gathered goes
    /// out (a streamed answer's items are sent as they come).
    async fn next_frame<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &Shared<IO>,
        body: &mut axum::body::Body,
    ) -> io::Result<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        poll_fn(|cx| {
            if let Poll::Ready(frame) = std::pin::Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(Ok(frame));
            }
            let mut wire = lock(wire);
            if !self.flushed {
                ready!(self.poll_write(&mut wire, cx, true))?;
            }
            ready!(wire.poll_gone(cx));
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client went away before its answer ended",
            )))
        })
        .await
    }
}
