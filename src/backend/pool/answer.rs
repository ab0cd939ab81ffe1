//! An answer's body, read from its connection as it is polled. Read to its
//! end, it hands the connection back to the worker's idle ones (when the
//! answer let it be kept); dropped before, it closes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;

use super::{Conn, READ_BYTES, check_in};
use crate::listener::h1::decode::{BodyError, Decoded, Decoder, Step};
use crate::listener::h1::head::Framing;

/// How an answer's body is framed.
pub enum Mode {
    /// `Content-Length` or chunked; `reusable`: the connection may serve
    /// another request once the body has ended.
    Decode { decoder: Decoder, reusable: bool },
    /// Everything until the replica closes the connection.
    UntilClose,
}

impl Mode {
    pub(super) fn length(n: u64, reusable: bool) -> Mode {
        Mode::Decode {
            decoder: Decoder::new(Framing::Length(n)),
            reusable,
        }
    }

    pub(super) fn chunked(reusable: bool) -> Mode {
        Mode::Decode {
            decoder: Decoder::new(Framing::Chunked),
            reusable,
        }
    }
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("the connection closed before the answer's body ended")]
    Incomplete,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<BodyError> for AnswerError {
    fn from(e: BodyError) -> AnswerError {
        match e {
            BodyError::Chunked(why) => AnswerError::Chunked(why),
            BodyError::Incomplete => AnswerError::Incomplete,
            BodyError::Io(e) => AnswerError::Io(e),
        }
    }
}

/// The body of an answer from a pooled replica connection.
pub struct Answer {
    /// `None` once the body has ended (or failed).
    conn: Option<Conn>,
    mode: Mode,
    replica: usize,
    eof: bool,
}

impl Answer {
    pub(super) fn new(conn: Conn, mode: Mode, replica: usize) -> Answer {
        let mut answer = Answer {
            conn: Some(conn),
            mode,
            replica,
            eof: false,
        };
        answer.end_if_done();
        answer
    }

    /// Once the decoder has seen the body's end, the connection goes back
    /// to the idle ones (if it may serve another request and nothing was
    /// sent past the answer), else it is closed.
    fn end_if_done(&mut self) {
        let Mode::Decode { decoder, reusable } = &self.mode else {
            return;
        };
        if *decoder != Decoder::Done {
            return;
        }
        if let Some(conn) = self.conn.take()
            && *reusable
            && conn.buf.is_empty()
        {
            check_in(self.replica, conn);
        }
    }

    /// Decodes from the bytes read so far: a frame, the end, or `None`
    /// when more bytes are needed.
    fn decode(&mut self) -> Option<Option<Result<Frame<Bytes>, AnswerError>>> {
        let conn = self.conn.as_mut()?;
        match &mut self.mode {
            Mode::UntilClose => {
                if !conn.buf.is_empty() {
                    return Some(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                if self.eof {
                    self.conn = None;
                    return Some(None);
                }
                None
            }
            Mode::Decode { decoder, .. } => {
                if conn.buf.is_empty() && !self.eof {
                    return None;
                }
                match decoder.step(&conn.buf, self.eof) {
                    Step::More(used) => {
                        let _ = conn.buf.split_to(used);
                        None
                    }
                    Step::Done(used, decoded) => {
                        let _ = conn.buf.split_to(used.min(conn.buf.len()));
                        let frame = match decoded {
                            Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
                            Ok(Decoded::End) => None,
                            Err(e) => {
                                self.conn = None;
                                return Some(Some(Err(e.into())));
                            }
                        };
                        self.end_if_done();
                        Some(frame)
                    }
                }
            }
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = AnswerError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerError>>> {
        let this = self.get_mut();
        loop {
            if this.conn.is_none() {
                return Poll::Ready(None);
            }
            if let Some(frame) = this.decode() {
                return Poll::Ready(frame);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(READ_BYTES);
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(conn.stream.poll_read_ready(cx)) {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }
}
