//! Answers: the status line and headers as hyper writes them (header names
//! in lower case, a cached `Date`), and how the body is framed:
//! `Content-Length` when its size is exact, chunked otherwise (closed
//! after, to an HTTP/1.0 client), nothing for HEAD, 1xx, 204 and 304.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

use super::head::has_token;

/// What the answer is to: the request's method, version and whether it
/// lets the connection serve another request.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: Method,
    pub version: Version,
    pub keep_alive: bool,
}

/// How an answer's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body bytes at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, size unknown).
    UntilClose,
}

/// An answer's head, written.
#[derive(Debug)]
pub struct Written {
    pub head: Vec<u8>,
    pub body: BodyFraming,
    /// The connection closes after this answer.
    pub close: bool,
}

/// Writes the head of an answer with `status` and `headers` whose body's
/// size is `size`, to the request `asked`.
pub fn head(status: StatusCode, headers: &HeaderMap, size: &SizeHint, asked: &Asked) -> Written {
    let mut out = Vec::with_capacity(64 + headers.len() * 32);
    let http10 = asked.version == Version::HTTP_10;
    if !http10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let connect_ok = asked.method == Method::CONNECT && status.is_success();
    let no_length = status.is_informational()
        || connect_ok
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let no_body = no_length || asked.method == Method::HEAD;
    let mut close = !asked.keep_alive;
    let mut said_close = false;
    let mut said_keep_alive = false;
    let mut wrote_date = false;
    let mut declared = None;
    for (name, value) in headers {
        match *name {
            // The framing is the gateway's to write.
            header::TRANSFER_ENCODING => continue,
            header::CONTENT_LENGTH => {
                let length = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok());
                declared = declared.or(length);
                continue;
            }
            header::CONNECTION => {
                said_close |= has_token(value.as_bytes(), b"close");
                said_keep_alive |= has_token(value.as_bytes(), b"keep-alive");
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let exact = size.exact();
    let body = if no_length {
        BodyFraming::Empty
    } else if asked.method == Method::HEAD {
        // The length a GET would have had, when known.
        if let Some(n) = declared.or(exact.filter(|&n| n > 0)) {
            length_line(&mut out, n);
        }
        BodyFraming::Empty
    } else if let Some(n) = exact.or(declared) {
        length_line(&mut out, n);
        BodyFraming::Length(n)
    } else if http10 {
        close = true;
        BodyFraming::UntilClose
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        BodyFraming::Chunked
    };
    let body = if no_body { BodyFraming::Empty } else { body };
    close |= said_close;
    if close && !http10 && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !close && http10 && !said_keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Written {
        head: out,
        body,
        close,
    }
}

/// The bare answer to a head that cannot be served (400, 414, 431), as
/// hyper sends it; the connection closes after it.
pub fn refusal(status: StatusCode) -> Vec<u8> {
    let asked = Asked {
        method: Method::GET,
        version: Version::HTTP_11,
        keep_alive: false,
    };
    head(status, &HeaderMap::new(), &SizeHint::with_exact(0), &asked).head
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    crate::invocation::push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// The size line of a chunk of `len` bytes.
pub fn chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:X}\r\n");
}

thread_local! {
    /// The `Date` value of the current second.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an HTTP date (IMF-fixdate), formatted at
/// most once a second per thread.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(second, text)| {
        if *second != now {
            *second = now;
            *text = imf_fixdate(now);
        }
        out.extend_from_slice(&text[..]);
    });
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for `secs` after the Unix epoch.
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let in_day = secs % 86_400;
    let text = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        String::from_utf8_lossy(DAYS[(days % 7) as usize]),
        day,
        String::from_utf8_lossy(MONTHS[(month - 1) as usize]),
        year,
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    );
    let mut out = [b' '; 29];
    let n = text.len().min(29);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(method: Method, version: Version, keep_alive: bool) -> Asked {
        Asked {
            method,
            version,
            keep_alive,
        }
    }

    fn written(
        status: u16,
        headers: &[(&str, &str)],
        size: SizeHint,
        to: &Asked,
    ) -> (String, BodyFraming, bool) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        let w = head(status, &map, &size, to);
        let text = String::from_utf8(w.head).unwrap();
        let date_at = text.find("date: ").expect("a date header");
        let without_date = format!("{}{}", &text[..date_at], &text[date_at + 37..]);
        (without_date, w.body, w.close)
    }

    #[test]
    fn an_exact_body_gets_its_length_and_an_unknown_one_is_chunked() {
        let get = asked(Method::GET, Version::HTTP_11, true);
        let (text, body, close) = written(
            200,
            &[("content-type", "application/json")],
            SizeHint::with_exact(12),
            &get,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!((body, close), (BodyFraming::Length(12), false));
        let (text, body, _) = written(
            404,
            &[("transfer-encoding", "gzip"), ("content-length", "5")],
            SizeHint::default(),
            &get,
        );
        assert_eq!(text, "HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(body, BodyFraming::Length(5));
        let (text, body, _) = written(200, &[], SizeHint::default(), &get);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(body, BodyFraming::Chunked);
    }

    #[test]
    fn head_204_and_304_answers_have_no_body() {
        let head_request = asked(Method::HEAD, Version::HTTP_11, true);
        let (text, body, _) = written(200, &[], SizeHint::with_exact(42), &head_request);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n");
        assert_eq!(body, BodyFraming::Empty);
        let get = asked(Method::GET, Version::HTTP_11, true);
        for status in [204, 304] {
            let (text, body, _) = written(status, &[], SizeHint::default(), &get);
            assert!(!text.contains("content-length"), "{text}");
            assert!(!text.contains("transfer-encoding"), "{text}");
            assert_eq!(body, BodyFraming::Empty);
        }
    }

    #[test]
    fn closing_and_keep_alive_follow_the_request_version() {
        let closing = asked(Method::GET, Version::HTTP_11, false);
        let (text, _, close) = written(200, &[], SizeHint::with_exact(0), &closing);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert!(close);
        let get = asked(Method::GET, Version::HTTP_11, true);
        let (text, _, close) = written(
            400,
            &[("connection", "close")],
            SizeHint::with_exact(0),
            &get,
        );
        assert_eq!(
            text,
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(close);
        let old = asked(Method::GET, Version::HTTP_10, true);
        let (text, _, close) = written(200, &[], SizeHint::with_exact(2), &old);
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        assert!(!close);
        let (_, body, close) = written(200, &[], SizeHint::default(), &old);
        assert_eq!((body, close), (BodyFraming::UntilClose, true));
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
