//! Request heads: parsed by httparse as hyper parses them, and their body's
//! framing decided once, with the refusals the byte follower
//! (`listener/framing.rs`) makes on hyper's paths.

use std::mem::MaybeUninit;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

pub(crate) use crate::listener::framing::content_length;
use crate::listener::framing::{ends_in_chunked, trim};

/// Headers parsed on the stack; a head with more is parsed again with room
/// for as many as `max_header_bytes` can hold.
const STACK_HEADERS: usize = 64;

/// The longest request target hyper takes (longer: 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// A request head, read.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and headers (the body comes later).
    pub request: Request<()>,
    pub body: Framing,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: `100 Continue` goes out when the body is
    /// first read.
    pub expect_continue: bool,
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0: no body).
    Length(u64),
    Chunked,
}

/// A head that is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a request hyper reads: a bare 400.
    BadRequest,
    /// Larger than hyper's buffer (or with more headers than it holds): a
    /// bare 431.
    TooLarge,
    /// A target longer than hyper takes: a bare 414.
    UriTooLong,
    /// A head hyper would serve whose body is framed two ways, or in a way
    /// another reader could take otherwise: the gateway's 400 problem.
    Ambiguous,
}

/// What the bytes so far make of a head.
#[derive(Debug)]
// Returned once per head and taken apart at once: boxing the head would
// cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The head ends after this many bytes.
    Complete(usize, Result<Head, Refusal>),
}

/// Parses the head at the start of `bytes`. `cap` is the most bytes hyper
/// would buffer for one (`hyper_header_cap`), `max_header_bytes` the
/// configured limit, which sizes the room for headers.
pub fn parse(bytes: &[u8], cap: usize, max_header_bytes: usize) -> Parsed {
    // Uninitialised: httparse writes the slots it fills, and 64 slots
    // (2 KiB) need not be cleared for a head of a few lines.
    let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let parsed = match parse_into(bytes, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = Vec::new();
            headers.resize_with(max_header_bytes / 3 + 1, MaybeUninit::uninit);
            parse_into(bytes, &mut headers)
        }
        other => other,
    };
    match parsed {
        // hyper never holds a head this large to its end.
        Ok(Some((len, _))) if len > cap => Parsed::Complete(len, Err(Refusal::TooLarge)),
        Ok(Some((len, head))) => Parsed::Complete(len, head),
        Ok(None) if bytes.len() >= cap => Parsed::Complete(bytes.len(), Err(Refusal::TooLarge)),
        Ok(None) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Complete(bytes.len(), Err(Refusal::TooLarge))
        }
        Err(_) => Parsed::Complete(bytes.len(), Err(Refusal::BadRequest)),
    }
}

type HeadResult = Result<Head, Refusal>;

fn parse_into<'b>(
    bytes: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, HeadResult)>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(bytes, headers)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    Ok(Some((len, build(&request))))
}

/// The head httparse read, as hyper takes it.
fn build(parsed: &httparse::Request<'_, '_>) -> HeadResult {
    let target = parsed.path.expect("httparse completed the head");
    if target.len() > MAX_URI_LEN {
        return Err(Refusal::UriTooLong);
    }
    let method = Method::from_bytes(
        parsed
            .method
            .expect("httparse completed the head")
            .as_bytes(),
    )
    .map_err(|_| Refusal::BadRequest)?;
    let uri = Uri::try_from(target).map_err(|_| Refusal::BadRequest)?;
    let http11 = parsed.version.expect("httparse completed the head") == 1;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut fields = Fields {
        keep_alive: http11,
        ..Fields::default()
    };
    let headers = request.headers_mut();
    headers.reserve(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| Refusal::BadRequest)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| Refusal::BadRequest)?;
        if fields.take(&name, &value, http11)? {
            headers.append(name, value);
        }
    }
    let body = fields.framing()?;
    // A CONNECT is a tunnel to hyper: the connection does not serve
    // another request after it.
    let keep_alive = fields.keep_alive && request.method() != Method::CONNECT;
    Ok(Head {
        request,
        body,
        keep_alive,
        expect_continue: fields.expect_continue,
    })
}

/// What the framing and connection headers of a head said.
#[derive(Default)]
struct Fields {
    keep_alive: bool,
    saw_close: bool,
    expect_continue: bool,
    /// `Content-Length` lines, and their value while all agree.
    content_lengths: u32,
    length: Option<u64>,
    /// `Transfer-Encoding` lines; whether the last ends in `chunked` (as
    /// hyper asks), and plainly so (as every reader takes it).
    transfer_encodings: u32,
    chunked: bool,
    plainly_chunked: bool,
}

impl Fields {
    /// Takes in one header; false when the request does not keep it (a
    /// repeated `Content-Length`, as hyper drops it).
    fn take(
        &mut self,
        name: &HeaderName,
        value: &HeaderValue,
        http11: bool,
    ) -> Result<bool, Refusal> {
        match *name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(Refusal::BadRequest);
                }
                self.transfer_encodings += 1;
                self.chunked = last_is_chunked(value.as_bytes());
                self.plainly_chunked = ends_in_chunked(value.as_bytes());
            }
            header::CONTENT_LENGTH => {
                self.content_lengths += 1;
                // hyper reads no Content-Length after a Transfer-Encoding.
                if self.transfer_encodings == 0 {
                    let n = content_length(value.as_bytes()).ok_or(Refusal::BadRequest)?;
                    match self.length {
                        Some(prev) if prev != n => return Err(Refusal::BadRequest),
                        Some(_) => return Ok(false),
                        None => self.length = Some(n),
                    }
                }
            }
            header::CONNECTION => {
                if self.saw_close || has_token(value.as_bytes(), b"close") {
                    self.saw_close = true;
                    self.keep_alive = false;
                } else if !self.keep_alive {
                    self.keep_alive = has_token(value.as_bytes(), b"keep-alive");
                }
            }
            header::EXPECT => {
                self.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        Ok(true)
    }

    /// The body's framing: hyper's refusals first, then those of the byte
    /// follower on hyper's paths (two framings, several
    /// `Transfer-Encoding` lines, one another reader could take otherwise).
    fn framing(&self) -> Result<Framing, Refusal> {
        let te = self.transfer_encodings;
        if te > 0 && !self.chunked {
            return Err(Refusal::BadRequest);
        }
        if te > 1 || (te > 0 && self.content_lengths > 0) || (te > 0 && !self.plainly_chunked) {
            return Err(Refusal::Ambiguous);
        }
        Ok(if te == 1 {
            Framing::Chunked
        } else {
            Framing::Length(self.length.unwrap_or(0))
        })
    }
}

/// hyper's test: the last coding is `chunked`.
pub(crate) fn last_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|text| {
        text.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// A comma-separated header value holds `token` (any case), as hyper looks:
/// only in a value that is visible ASCII (`HeaderValue::to_str`), each
/// item trimmed of spaces and tabs. Bytes, not `str`: this runs on every
/// head, twice.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    let visible = value.iter().fold(true, |visible, &b| {
        visible & ((b.wrapping_sub(b' ') < 0x7f - b' ') | (b == b'\t'))
    });
    visible
        && value
            .split(|&b| b == b',')
            .any(|item| trim(item).eq_ignore_ascii_case(token))
}
