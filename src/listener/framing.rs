//! HTTP/1.1 request framing, followed byte by byte: where each request head
//! and body ends, and whether a head frames its body two ways.
//!
//! hyper keeps one framing when a head offers two (it prefers
//! `Transfer-Encoding`), so the gateway follows every byte of an HTTP/1
//! connection itself, the way hyper reads it: heads as httparse ends them,
//! bodies by hyper's `Content-Length` and chunked decoders. Each complete head
//! gets a verdict, in order; hyper serves HTTP/1 requests strictly in order,
//! so the n-th verdict is the n-th request's.
//!
//! Where the bytes are not what hyper would serve a request from, or could be
//! read another way, following stops and every later request is refused (the
//! refusal closes the connection). Bytes hyper refuses itself (a folded
//! header line, a bare LF in a chunk line) end the connection on hyper's side
//! too, so stopping there never refuses a request hyper serves; the one
//! exception is a bare LF in chunked trailers, which hyper takes as part of a
//! trailer line where others end the body. Faults that do not move a head's
//! end or its framing (a bad method, a line without a colon) are left to
//! hyper to refuse.

/// The HTTP/2 connection preface. hyper-util's auto builder serves a
/// connection whose first 24 bytes are this as HTTP/2 (h2c), and any other
/// as HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes of one request head followed (leading empty lines included).
/// Past the largest head hyper is let to buffer (its cap is four times
/// `server.max_header_bytes`, at most 1 MiB), so it never refuses a head
/// hyper would serve. Nothing of a head is kept but one short field value.
const HEAD_LIMIT: u64 = 8 << 20;

/// Most bytes of a `Content-Length` or `Transfer-Encoding` value kept; a
/// longer one is refused (no client sends one).
const FIELD_LIMIT: usize = 1024;

/// `transfer-encoding`, the longer of the two framing header names.
const LONGEST_NAME: usize = 17;

/// What one read completed, in order: `clean` heads, then possibly the end
/// of everything this connection may serve.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Heads that frame their body one way: requests hyper may serve.
    pub clean: u64,
    /// After those, a head framed two ways, or bytes that cannot be
    /// followed: every later request is to be refused.
    pub refuse_rest: bool,
    /// The connection started with the HTTP/2 preface: it carries no
    /// HTTP/1 requests, and nothing is followed.
    pub http2: bool,
}

/// Where the bytes of a connection stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// HTTP/2: nothing to follow.
    Off,
    /// Refused or lost: nothing more is followed.
    Stopped,
    /// Before a request line; httparse skips empty lines (CRLF or LF) here.
    Idle,
    /// `Idle` after a CR, which must be followed by LF.
    IdleCr,
    /// In the request line: only its end matters.
    RequestLine,
    /// At the start of a header line, or of the empty line ending the head.
    LineStart,
    /// `LineStart` after a CR: LF ends the head.
    LineStartCr,
    /// In a header name, kept in `line` while it may be a framing header.
    Name,
    /// In a header line that does not frame the body.
    OtherLine,
    /// In the value of a framing header, kept in `line`.
    Value(Field),
    /// `Content-Length` body bytes still to come.
    Length(u64),
    /// In a chunked body, in the states of hyper's decoder.
    Chunked(Chunk),
    /// Chunk data bytes still to come.
    ChunkData(u64),
}

/// The header fields that frame a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
}

/// hyper's `ChunkedState` (`proto/h1/decode.rs`), with the chunk size
/// carried along. hyper wants CRLF after a size line and after chunk data,
/// and CR before each LF in the trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What the framing headers of the current head said so far.
#[derive(Debug, Default, Clone, Copy)]
struct Fields {
    /// `Content-Length` lines seen.
    content_lengths: u32,
    /// Their value, when all were the same valid number.
    length: Option<u64>,
    /// `Transfer-Encoding` lines seen.
    transfer_encodings: u32,
    /// The last `Transfer-Encoding` ended in `chunked`, plainly.
    chunked: bool,
    /// A value hyper refuses, or that another reader could take otherwise.
    refused: bool,
}

/// Follows the requests of one HTTP/1 connection.
pub struct Framing {
    state: State,
    /// While the connection's first bytes match the HTTP/2 preface: how
    /// many did.
    preface: Option<usize>,
    /// Bytes of the current head so far.
    head_bytes: u64,
    fields: Fields,
    /// The current header name, then the value of a framing header (reused
    /// from line to line).
    line: Vec<u8>,
}

impl Framing {
    /// `http1: false` (an HTTP/2 connection by ALPN) follows nothing.
    pub fn new(http1: bool) -> Framing {
        Framing {
            state: if http1 { State::Idle } else { State::Off },
            preface: http1.then_some(0),
            head_bytes: 0,
            fields: Fields::default(),
            line: Vec::new(),
        }
    }

    /// Follows the next bytes read on the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Heads {
        let mut heads = Heads::default();
        if let Some(matched) = self.preface {
            let n = bytes.len().min(H2_PREFACE.len() - matched);
            if bytes[..n] == H2_PREFACE[matched..matched + n] {
                if matched + n < H2_PREFACE.len() {
                    self.preface = Some(matched + n);
                } else {
                    self.preface = None;
                    self.state = State::Off;
                    heads.http2 = true;
                }
                return heads;
            }
            // HTTP/1 after all: the bytes held back come first.
            self.preface = None;
            self.follow(&H2_PREFACE[..matched], &mut heads);
        }
        self.follow(bytes, &mut heads);
        heads
    }

    fn follow(&mut self, mut bytes: &[u8], heads: &mut Heads) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Off | State::Stopped => return,
                State::Length(left) => {
                    let (used, left) = skip(bytes, left);
                    self.state = if left == 0 {
                        State::Idle
                    } else {
                        State::Length(left)
                    };
                    used
                }
                State::ChunkData(left) => {
                    let (used, left) = skip(bytes, left);
                    self.state = if left == 0 {
                        State::Chunked(Chunk::BodyCr)
                    } else {
                        State::ChunkData(left)
                    };
                    used
                }
                State::Chunked(chunk) => self.chunked(chunk, bytes, heads),
                _ if self.head_bytes > HEAD_LIMIT => {
                    // hyper refuses a head this large itself.
                    return self.stop(heads);
                }
                _ => {
                    let used = self.head(bytes, heads);
                    self.head_bytes += used as u64;
                    used
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// One step in a request head; returns the bytes used (at least one).
    fn head(&mut self, bytes: &[u8], heads: &mut Heads) -> usize {
        let b = bytes[0];
        match self.state {
            State::Idle => match b {
                b'\n' => {}
                b'\r' => self.state = State::IdleCr,
                _ => {
                    self.head_bytes = 0;
                    self.state = State::RequestLine;
                }
            },
            State::IdleCr if b == b'\n' => self.state = State::Idle,
            State::RequestLine | State::OtherLine => {
                return match memchr_lf(bytes) {
                    Some(at) => {
                        self.state = State::LineStart;
                        at + 1
                    }
                    None => bytes.len(),
                };
            }
            State::LineStart => match b {
                b'\r' => self.state = State::LineStartCr,
                b'\n' => self.end_head(heads),
                // A folded line (obs-fold) or a name with a space before
                // it: httparse refuses both in requests.
                b' ' | b'\t' => self.stop(heads),
                // Neither framing header: skipped to its LF at once.
                _ if !matches!(b.to_ascii_lowercase(), b'c' | b't') => {
                    self.state = State::OtherLine
                }
                _ => return self.name(bytes, heads),
            },
            State::LineStartCr if b == b'\n' => self.end_head(heads),
            State::Name => match b {
                b':' => self.state = self.name_end(),
                b'\r' | b'\n' => self.stop(heads),
                _ if self.line.len() == LONGEST_NAME => self.state = State::OtherLine,
                _ => self.line.push(b),
            },
            State::Value(field) => return self.value(field, bytes, heads),
            // A CR not followed by LF, where httparse wants a line end.
            State::IdleCr | State::LineStartCr => self.stop(heads),
            State::Off
            | State::Stopped
            | State::Length(_)
            | State::Chunked(_)
            | State::ChunkData(_) => unreachable!("not in a head: {:?}", self.state),
        }
        1
    }

    /// Keeps the value of a framing header in `line` up to its LF; returns
    /// the bytes used.
    fn value(&mut self, field: Field, bytes: &[u8], heads: &mut Heads) -> usize {
        let end = memchr_lf(bytes);
        let value = &bytes[..end.unwrap_or(bytes.len())];
        if self.line.len() + value.len() > FIELD_LIMIT {
            self.stop(heads);
            return bytes.len();
        }
        self.line.extend_from_slice(value);
        let Some(at) = end else {
            return bytes.len();
        };
        self.field_end(field);
        self.state = State::LineStart;
        at + 1
    }

    /// At the start of a header name that may be a framing header's: reads
    /// it in place when the read holds it all, else keeps it in `line`.
    /// Returns the bytes used.
    fn name(&mut self, bytes: &[u8], heads: &mut Heads) -> usize {
        let window = &bytes[..bytes.len().min(LONGEST_NAME + 1)];
        match window
            .iter()
            .position(|&b| matches!(b, b':' | b'\r' | b'\n'))
        {
            Some(at) if window[at] == b':' => {
                self.line.clear();
                self.state = value_of(&window[..at]);
                at + 1
            }
            Some(_) => {
                self.stop(heads);
                bytes.len()
            }
            None if window.len() > LONGEST_NAME => {
                self.state = State::OtherLine;
                window.len()
            }
            None => {
                self.line.clear();
                self.line.extend_from_slice(window);
                self.state = State::Name;
                window.len()
            }
        }
    }

    /// The state after the colon of the header name in `line`.
    fn name_end(&mut self) -> State {
        let state = value_of(&self.line);
        self.line.clear();
        state
    }

    /// Takes in the value of a framing header, now in `line` (without its
    /// LF), as hyper reads it.
    fn field_end(&mut self, field: Field) {
        let value = trim(self.line.strip_suffix(b"\r").unwrap_or(&self.line));
        let fields = &mut self.fields;
        match field {
            Field::ContentLength => {
                fields.content_lengths += 1;
                // hyper: digits only, identical when repeated, below its
                // largest length.
                match content_length(value) {
                    Some(n) if fields.content_lengths == 1 || fields.length == Some(n) => {
                        fields.length = Some(n)
                    }
                    _ => fields.refused = true,
                }
            }
            Field::TransferEncoding => {
                fields.transfer_encodings += 1;
                fields.chunked = ends_in_chunked(value);
            }
        }
    }

    /// The head is complete: its verdict, and where its body goes.
    fn end_head(&mut self, heads: &mut Heads) {
        let fields = self.fields;
        let te = fields.transfer_encodings;
        // Two framings (hyper would take Transfer-Encoding, another reader
        // Content-Length), several Transfer-Encoding lines (hyper reads the
        // last, others the first or all), or one hyper reads as chunked
        // where another reader might not.
        if fields.refused || (te > 0 && fields.content_lengths > 0) || te > 1 {
            return self.stop(heads);
        }
        if te == 1 && !fields.chunked {
            return self.stop(heads);
        }
        heads.clean += 1;
        self.state = if te == 1 {
            State::Chunked(Chunk::Start)
        } else {
            match fields.length {
                Some(n) if n > 0 => State::Length(n),
                // No body: a request without framing headers has none.
                _ => State::Idle,
            }
        };
        self.head_bytes = 0;
        self.fields = Fields::default();
        self.line.clear();
    }

    /// One step in a chunked body, as hyper's decoder takes it; returns the
    /// bytes used.
    fn chunked(&mut self, chunk: Chunk, bytes: &[u8], heads: &mut Heads) -> usize {
        let b = bytes[0];
        let next = match (chunk, b, hex(b)) {
            (Chunk::Start, _, Some(digit)) => Some(Chunk::Size(digit)),
            // An overflowing size is an error to hyper.
            (Chunk::Size(n), _, Some(digit)) => n
                .checked_mul(16)
                .and_then(|n| n.checked_add(digit))
                .map(Chunk::Size),
            (Chunk::Size(n) | Chunk::SizeLws(n), b' ' | b'\t', _) => Some(Chunk::SizeLws(n)),
            (Chunk::Size(n) | Chunk::SizeLws(n), b';', _) => Some(Chunk::Extension(n)),
            (Chunk::Size(n) | Chunk::SizeLws(n), b'\r', _) => Some(Chunk::SizeLf(n)),
            // Extensions are skipped up to their CR; a bare LF in one is
            // an error to hyper.
            (Chunk::Extension(n), _, _) => return self.up_to_cr(bytes, Chunk::SizeLf(n), heads),
            (Chunk::SizeLf(0), b'\n', _) => Some(Chunk::EndCr),
            (Chunk::SizeLf(n), b'\n', _) => {
                self.state = State::ChunkData(n);
                return 1;
            }
            (Chunk::BodyCr, b'\r', _) => Some(Chunk::BodyLf),
            (Chunk::BodyLf, b'\n', _) => Some(Chunk::Start),
            (Chunk::EndCr, b'\r', _) => Some(Chunk::EndLf),
            // hyper takes a bare LF in trailers as part of a trailer line
            // (a request behind it would be swallowed); another reader ends
            // the line there. Nothing after it is served.
            (Chunk::EndCr, b'\n', _) => None,
            (Chunk::EndCr, _, _) => Some(Chunk::Trailer),
            (Chunk::Trailer, _, _) => return self.up_to_cr(bytes, Chunk::TrailerLf, heads),
            (Chunk::TrailerLf, b'\n', _) => Some(Chunk::EndCr),
            (Chunk::EndLf, b'\n', _) => {
                self.state = State::Idle;
                return 1;
            }
            _ => None,
        };
        match next {
            Some(chunk) => self.state = State::Chunked(chunk),
            // hyper ends the connection on a body it cannot decode; the
            // request it belongs to was judged already.
            None => self.stop(heads),
        }
        1
    }

    /// Skips up to and past the next CR, then goes on at `then`; a LF
    /// before it stops the following. Returns the bytes used.
    fn up_to_cr(&mut self, bytes: &[u8], then: Chunk, heads: &mut Heads) -> usize {
        match bytes.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(at) if bytes[at] == b'\r' => {
                self.state = State::Chunked(then);
                at + 1
            }
            Some(_) => {
                self.stop(heads);
                bytes.len()
            }
            None => bytes.len(),
        }
    }

    /// Stops following: the current head, if any, and every later one are
    /// refused.
    fn stop(&mut self, heads: &mut Heads) {
        self.state = State::Stopped;
        heads.refuse_rest = true;
        // The buffer of a long value is not kept for the rest of the
        // connection.
        self.line = Vec::new();
    }
}

/// The state after the colon of a header named `name`.
fn value_of(name: &[u8]) -> State {
    if name.eq_ignore_ascii_case(b"content-length") {
        State::Value(Field::ContentLength)
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        State::Value(Field::TransferEncoding)
    } else {
        State::OtherLine
    }
}

/// Skips up to `left` bytes: (bytes used, bytes still to come).
fn skip(bytes: &[u8], left: u64) -> (usize, u64) {
    let used = usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
    (used, left - used as u64)
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Without the spaces and tabs httparse strips around a value.
pub(super) fn trim(value: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |at| at + 1);
    &value[start..end]
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// A `Content-Length` as hyper takes it: decimal digits only (no sign, no
/// list), at most hyper's largest length.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, &b| {
            let digit = (b as char).to_digit(10)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        })
        .filter(|&n| n <= u64::MAX - 2)
}

/// A `Transfer-Encoding` every reader takes as chunked: a list of plain
/// codings (tokens, no parameters) whose last is `chunked` and no other is.
/// hyper only asks that the last be `chunked`; `chunked, chunked` or a
/// coding with odd bytes could be read otherwise elsewhere.
pub(super) fn ends_in_chunked(value: &[u8]) -> bool {
    let mut codings = value.split(|&b| b == b',').map(trim);
    let last_is_chunked = codings
        .next_back()
        .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
    last_is_chunked
        && codings.all(|coding| {
            coding.iter().copied().all(is_token) && !coding.eq_ignore_ascii_case(b"chunked")
        })
}

/// A `tchar` (RFC 9110), as httparse's token map.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
