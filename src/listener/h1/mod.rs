//! fngate's own HTTP/1.1 server connection loop (`server.http1_engine =
//! "fngate"`), on httparse: request heads parsed and framed once, bodies
//! decoded as the handler reads them, answers written with `Content-Length`
//! or chunked. hyper's behaviour is the reference (see the differential
//! tests).
//!
//! No buffer is held while a connection idles: bytes are read into one
//! scratch buffer per worker thread, only while a poll lasts, and a
//! connection keeps just the bytes read past what it used, in a buffer
//! sized to them. Answer heads go out through a buffer dropped once
//! written.

mod conn;
pub(crate) mod decode;
mod encode;
pub(crate) mod head;

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(in crate::listener) use conn::serve;

/// Bytes one read may bring: a few TLS records.
const SCRATCH_BYTES: usize = 32 << 10;

thread_local! {
    /// The read buffer of every connection served on this thread, used
    /// within one poll at a time.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// What a parse or decode step made of the bytes it was shown.
pub(crate) enum Step<R> {
    /// Done: the bytes used, and the outcome.
    Done(usize, R),
    /// The bytes used; more are needed.
    More(usize),
}

/// The connection's stream, shared by the loop (heads, answers) and the
/// request body being read (which may be polled from another task), with
/// the bytes read past what was used.
struct Wire<IO> {
    io: IO,
    /// Bytes read and not used yet (empty, with no allocation, when none).
    rest: Vec<u8>,
    /// The peer closed its side.
    eof: bool,
    /// The current request: its body's decoder and whether a `100
    /// Continue` is still to be sent before the body is read.
    request: u64,
    body: decode::Decoder,
    continue_due: Option<usize>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Wire<IO> {
    fn new(io: IO) -> Wire<IO> {
        Wire {
            io,
            rest: Vec::new(),
            eof: false,
            request: 0,
            body: decode::Decoder::done(),
            continue_due: None,
        }
    }

    /// Shows `step` the bytes read so far, reading more until it is done.
    /// At the end of the stream it is shown `eof: true` (with what is left).
    fn poll_step<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&[u8], bool) -> Step<R>,
    ) -> Poll<io::Result<R>> {
        // `rest` was shown to `step` already and needs more bytes.
        let mut seen = false;
        loop {
            if self.eof {
                return match step(&self.rest, true) {
                    Step::Done(used, outcome) => {
                        self.consume(used);
                        Poll::Ready(Ok(outcome))
                    }
                    Step::More(_) => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                };
            }
            if !self.rest.is_empty() && !seen {
                match step(&self.rest, false) {
                    Step::Done(used, outcome) => {
                        self.consume(used);
                        return Poll::Ready(Ok(outcome));
                    }
                    Step::More(used) => {
                        self.consume(used);
                        seen = true;
                        continue;
                    }
                }
            }
            let read = SCRATCH.with_borrow_mut(|scratch| -> Poll<io::Result<Option<R>>> {
                let mut buf = ReadBuf::new(scratch);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok(None));
                }
                let fresh = &scratch[..n];
                if !self.rest.is_empty() {
                    self.rest.extend_from_slice(fresh);
                    seen = false;
                    return Poll::Ready(Ok(None));
                }
                seen = true;
                // Straight from the scratch buffer: only what `step` does
                // not use is kept.
                Poll::Ready(Ok(match step(fresh, false) {
                    Step::Done(used, outcome) => {
                        self.rest = fresh[used..].to_vec();
                        Some(outcome)
                    }
                    Step::More(used) => {
                        self.rest = fresh[used..].to_vec();
                        None
                    }
                }))
            });
            if let Some(outcome) = ready!(read)? {
                return Poll::Ready(Ok(outcome));
            }
        }
    }

    /// Whether the peer went away while an answer is being made, watched
    /// as hyper watches a busy connection: once the request's body has
    /// been read, one read at a time until bytes of a next request come
    /// (kept for it; the watch then stops). Ready when the peer closed its
    /// side or the read failed.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.eof || !self.rest.is_empty() || self.body != decode::Decoder::Done {
            return Poll::Pending;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => {
                    self.eof = true;
                    Poll::Ready(())
                }
                Ok(()) => {
                    self.rest = buf.filled().to_vec();
                    Poll::Pending
                }
                Err(_) => Poll::Ready(()),
            }
        })
    }

    /// Drops the first `used` bytes of `rest`; an empty `rest` keeps no
    /// allocation, and a large one shrinks to what is left.
    fn consume(&mut self, used: usize) {
        if used == 0 {
            return;
        }
        if used >= self.rest.len() {
            self.rest = Vec::new();
        } else {
            self.rest.drain(..used);
            if self.rest.capacity() > 2 * self.rest.len() + 4096 {
                self.rest.shrink_to_fit();
            }
        }
    }

    /// Writes all of `bytes` from `*written` on.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
