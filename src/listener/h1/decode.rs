//! Request bodies: `Content-Length` and chunked decoding (hyper's chunked
//! decoder, state for state), and the body the handler reads, which reads
//! the connection itself as it is polled.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use super::Step;
use super::Wire;
use super::head::Framing;

/// Most bytes of chunk extensions in one body, and of its trailers (as
/// hyper).
const EXTENSIONS_LIMIT: u64 = 16 << 10;
const TRAILERS_LIMIT: u64 = 16 << 10;

/// The answer to `100-continue`, sent when the body is first read.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where a request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// `Content-Length` bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Read to its end.
    Done,
    /// Undecodable, or cut short: the connection serves nothing more.
    Failed,
}

/// hyper's `ChunkedState`, with what each state carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: Chunk,
    /// Extension and trailer bytes so far.
    extensions: u64,
    trailers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What a decoding step gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    End,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("the connection ended before the request body did")]
    Incomplete,
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked {
                state: Chunk::Start,
                extensions: 0,
                trailers: 0,
            }),
        }
    }

    pub fn done() -> Decoder {
        Decoder::Done
    }

    /// Decodes from `bytes`: the bytes used, and data, the end, an error,
    /// or a need for more bytes.
    pub fn step(&mut self, bytes: &[u8], eof: bool) -> Step<Result<Decoded, BodyError>> {
        let outcome = match self {
            Decoder::Done => return Step::Done(0, Ok(Decoded::End)),
            Decoder::Failed => return Step::Done(0, Err(BodyError::Incomplete)),
            _ if bytes.is_empty() && eof => Step::Done(0, Err(BodyError::Incomplete)),
            Decoder::Length(left) => {
                let n = usize::try_from(*left).map_or(bytes.len(), |left| left.min(bytes.len()));
                *left -= n as u64;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Step::Done(n, Ok(Decoded::Data(Bytes::copy_from_slice(&bytes[..n]))))
            }
            Decoder::Chunked(chunked) => match chunked.step(bytes) {
                Ok((used, Some(decoded))) => {
                    if decoded == Decoded::End {
                        *self = Decoder::Done;
                    }
                    Step::Done(used, Ok(decoded))
                }
                Ok((used, None)) if eof => Step::Done(used, Err(BodyError::Incomplete)),
                Ok((used, None)) => Step::More(used),
                Err(why) => Step::Done(bytes.len(), Err(BodyError::Chunked(why))),
            },
        };
        if matches!(outcome, Step::Done(_, Err(_))) {
            *self = Decoder::Failed;
        }
        outcome
    }
}

impl Chunked {
    /// Runs the chunked states over `bytes` up to the next data (or the
    /// end): the bytes used and what came, `None` when they ran out first.
    fn step(&mut self, bytes: &[u8]) -> Result<(usize, Option<Decoded>), &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            if let Chunk::Data(left) = self.state {
                let available = bytes.len() - at;
                let n = usize::try_from(left).map_or(available, |left| left.min(available));
                self.state = match left - n as u64 {
                    0 => Chunk::BodyCr,
                    left => Chunk::Data(left),
                };
                let data = Bytes::copy_from_slice(&bytes[at..at + n]);
                return Ok((at + n, Some(Decoded::Data(data))));
            }
            let b = bytes[at];
            at += 1;
            match self.next(b)? {
                Some(state) => self.state = state,
                None => return Ok((at, Some(Decoded::End))),
            }
        }
        Ok((at, None))
    }

    /// The state after byte `b`, as hyper's decoder goes (`None`: the
    /// body ended).
    fn next(&mut self, b: u8) -> Result<Option<Chunk>, &'static str> {
        let hex = (b as char).to_digit(16).map(u64::from);
        Ok(Some(match (self.state, b, hex) {
            (Chunk::Start, _, Some(digit)) => Chunk::Size(digit),
            (Chunk::Start, _, None) => return Err("invalid chunk size"),
            (Chunk::Size(n), _, Some(digit)) => n
                .checked_mul(16)
                .and_then(|n| n.checked_add(digit))
                .map(Chunk::Size)
                .ok_or("chunk size overflows")?,
            (Chunk::Size(n) | Chunk::SizeLws(n), b' ' | b'\t', _) => Chunk::SizeLws(n),
            (Chunk::Size(n) | Chunk::SizeLws(n), b';', _) => Chunk::Extension(n),
            (Chunk::Size(n) | Chunk::SizeLws(n), b'\r', _) => Chunk::SizeLf(n),
            (Chunk::Size(_), _, _) => return Err("invalid chunk size"),
            (Chunk::SizeLws(_), _, _) => return Err("invalid chunk size whitespace"),
            (Chunk::Extension(n), b'\r', _) => Chunk::SizeLf(n),
            (Chunk::Extension(_), b'\n', _) => return Err("chunk extension contains a newline"),
            (Chunk::Extension(n), _, _) => {
                self.extensions += 1;
                if self.extensions >= EXTENSIONS_LIMIT {
                    return Err("chunk extensions over the limit");
                }
                Chunk::Extension(n)
            }
            (Chunk::SizeLf(0), b'\n', _) => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n', _) => Chunk::Data(n),
            (Chunk::SizeLf(_), _, _) => return Err("invalid chunk size line end"),
            (Chunk::Data(_), _, _) => unreachable!("data is taken whole"),
            (Chunk::BodyCr, b'\r', _) => Chunk::BodyLf,
            (Chunk::BodyCr, _, _) => return Err("invalid chunk data end"),
            (Chunk::BodyLf, b'\n', _) => Chunk::Start,
            (Chunk::BodyLf, _, _) => return Err("invalid chunk data end"),
            (Chunk::EndCr, b'\r', _) => Chunk::EndLf,
            // hyper reads a bare LF here as part of a trailer line, where
            // other readers end the body: refused.
            (Chunk::EndCr, b'\n', _) => return Err("bare LF in the trailers"),
            (Chunk::EndCr, _, _) => self.trailer()?,
            (Chunk::Trailer, b'\r', _) => Chunk::TrailerLf,
            (Chunk::Trailer, b'\n', _) => return Err("bare LF in the trailers"),
            (Chunk::Trailer, _, _) => self.trailer()?,
            (Chunk::TrailerLf, b'\n', _) => Chunk::EndCr,
            (Chunk::TrailerLf, _, _) => return Err("invalid trailer line end"),
            (Chunk::EndLf, b'\n', _) => return Ok(None),
            (Chunk::EndLf, _, _) => return Err("invalid end of the chunked body"),
        }))
    }

    fn trailer(&mut self) -> Result<Chunk, &'static str> {
        self.trailers += 1;
        if self.trailers >= TRAILERS_LIMIT {
            return Err("trailers over the limit");
        }
        Ok(Chunk::Trailer)
    }
}

/// A request body as the handler sees it. It reads the connection when
/// polled, so it works from any task; once the connection has moved on
/// to another request (this one's answer sent), it has ended.
pub struct IncomingBody<IO> {
    wire: Arc<Mutex<Wire<IO>>>,
    /// Which request of the connection it belongs to.
    request: u64,
    framing: Framing,
    received: u64,
    ended: bool,
}

impl<IO> IncomingBody<IO> {
    pub(super) fn new(wire: Arc<Mutex<Wire<IO>>>, request: u64, framing: Framing) -> Self {
        IncomingBody {
            wire,
            request,
            framing,
            received: 0,
            ended: framing == Framing::Length(0),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> http_body::Body for IncomingBody<IO> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut wire = this
            .wire
            .lock()
            .expect("no code panics while holding the wire");
        if wire.request != this.request {
            this.ended = true;
            return Poll::Ready(None);
        }
        if let Some(mut written) = wire.continue_due {
            let sent = wire.poll_write_all(cx, CONTINUE, &mut written);
            wire.continue_due = Some(written);
            let sent = match sent {
                Poll::Ready(Ok(())) => ready!(wire.poll_flush(cx)),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => return Poll::Pending,
            };
            if let Err(e) = sent {
                this.ended = true;
                wire.body = Decoder::Failed;
                return Poll::Ready(Some(Err(e.into())));
            }
            wire.continue_due = None;
        }
        let mut decoder = wire.body;
        let decoded = wire.poll_step(cx, |bytes, eof| decoder.step(bytes, eof));
        wire.body = decoder;
        let decoded = match ready!(decoded) {
            Ok(decoded) => decoded,
            Err(e) => {
                wire.body = Decoder::Failed;
                Err(BodyError::Io(e))
            }
        };
        Poll::Ready(match decoded {
            Ok(Decoded::Data(data)) => {
                this.received += data.len() as u64;
                if wire.body == Decoder::Done && this.framing != Framing::Chunked {
                    this.ended = true;
                }
                Some(Ok(Frame::data(data)))
            }
            Ok(Decoded::End) => {
                this.ended = true;
                None
            }
            Err(e) => {
                this.ended = true;
                Some(Err(e))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n - self.received.min(n)),
            Framing::Chunked => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed `piece` bytes at a time: the data, or the error.
    fn decode(input: &[u8], piece: usize) -> Result<Vec<u8>, String> {
        let mut decoder = Decoder::new(Framing::Chunked);
        let mut data = Vec::new();
        let mut rest: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let eof = fed == input.len();
            match decoder.step(&rest, eof) {
                Step::Done(used, Ok(Decoded::Data(bytes))) => {
                    data.extend_from_slice(&bytes);
                    rest.drain(..used);
                }
                Step::Done(_, Ok(Decoded::End)) => return Ok(data),
                Step::Done(_, Err(e)) => return Err(e.to_string()),
                Step::More(used) => {
                    rest.drain(..used);
                    let end = (fed + piece).min(input.len());
                    rest.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let body = b"5\r\nhello\r\n9;ext=1\r\n, world!!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, body.len()] {
            assert_eq!(decode(body, piece).unwrap(), b"hello, world!!", "{piece}");
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap(), b"");
        assert_eq!(
            decode(b"A  \r\n0123456789\r\n0\r\n\r\n", 4).unwrap(),
            b"0123456789"
        );
    }

    #[test]
    fn chunked_bodies_hyper_refuses_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5;a\nb\r\n",
            b"1 2\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\n\n",
            b"0\r\nx: y\n\r\n",
            b"0\r\n\rX",
            b"5\r\nhel",
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_length_body_ends_after_its_bytes() {
        let mut decoder = Decoder::new(Framing::Length(5));
        match decoder.step(b"hel", false) {
            Step::Done(3, Ok(Decoded::Data(data))) => assert_eq!(&data[..], b"hel"),
            _ => panic!("the first bytes are data"),
        }
        match decoder.step(b"lo GET /", false) {
            Step::Done(2, Ok(Decoded::Data(data))) => assert_eq!(&data[..], b"lo"),
            _ => panic!("only the body's bytes are used"),
        }
        assert_eq!(decoder, Decoder::Done);
        assert!(matches!(
            Decoder::new(Framing::Length(5)).step(b"", true),
            Step::Done(0, Err(BodyError::Incomplete))
        ));
    }
}
