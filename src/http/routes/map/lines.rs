//! A map's answer, line by line: `{"index": i, "result": ...}` or
//! `{"index": i, "error": {problem members}}`, framed as NDJSON (the
//! default) or, for `Accept: application/json`, as the elements of one
//! JSON array. A result is spliced in as the backend gave it (numbers
//! exactly as written), on one line.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, header};

use crate::http::problem::ApiError;
use crate::translate::json;

/// How the lines are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/x-ndjson`: one line each.
    Ndjson,
    /// `application/json`: one array of them.
    Array,
}

impl Framing {
    /// The framing the client's `Accept` asks for: the array when it names
    /// `application/json` and not `application/x-ndjson`; NDJSON otherwise.
    pub fn accepted(headers: &HeaderMap) -> Framing {
        let mut json = false;
        let ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges {
            let essence = range.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/x-ndjson") {
                return Framing::Ndjson;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
        }
        if json {
            Framing::Array
        } else {
            Framing::Ndjson
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => "application/x-ndjson",
            Framing::Array => "application/json",
        }
    }
}

/// Frames the lines of one answer, in the order they are written.
pub struct Writer {
    framing: Framing,
    written: usize,
}

impl Writer {
    pub fn new(framing: Framing) -> Writer {
        Writer {
            framing,
            written: 0,
        }
    }

    /// `line` as the next piece of the body.
    pub fn item(&mut self, line: Bytes) -> Bytes {
        let mut out = BytesMut::with_capacity(line.len() + 1);
        match self.framing {
            Framing::Ndjson => {
                out.put_slice(&line);
                out.put_u8(b'\n');
            }
            Framing::Array => {
                out.put_u8(if self.written == 0 { b'[' } else { b',' });
                out.put_slice(&line);
            }
        }
        self.written += 1;
        out.freeze()
    }

    /// What ends the body, if anything.
    pub fn end(&self) -> Option<Bytes> {
        match (self.framing, self.written) {
            (Framing::Ndjson, _) => None,
            (Framing::Array, 0) => Some(Bytes::from_static(b"[]")),
            (Framing::Array, _) => Some(Bytes::from_static(b"]")),
        }
    }
}

/// One input's line, without its framing.
pub fn line(index: usize, outcome: Result<Bytes, ApiError>, request_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"{\"index\":");
    out.put_slice(index.to_string().as_bytes());
    match outcome {
        Ok(result) => {
            out.put_slice(b",\"result\":");
            put_compact(&mut out, &result);
        }
        Err(error) => {
            out.put_slice(b",\"error\":");
            out.put_slice(&error.problem_json(request_id));
        }
    }
    out.put_u8(b'}');
    out.freeze()
}

/// Appends a checked JSON document without the whitespace between its
/// tokens, so that it takes one line; the tokens stay as written. (A
/// string holds no raw line break in valid JSON.)
fn put_compact(out: &mut BytesMut, document: &[u8]) {
    if !document.iter().any(|&b| b == b'\n' || b == b'\r') {
        out.put_slice(document);
        return;
    }
    let (mut in_string, mut escaped) = (false, false);
    for &byte in document {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if json::is_json_whitespace(byte) {
            continue;
        }
        out.put_u8(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn results_are_spliced_on_one_line() {
        let result = Bytes::from_static(b"{\n  \"a b\": [1e400,\n 2],\n \"c\": \"x\\\" y\"\n}");
        assert_eq!(
            line(3, Ok(result), "r"),
            "{\"index\":3,\"result\":{\"a b\":[1e400,2],\"c\":\"x\\\" y\"}}"
        );
        assert_eq!(
            line(0, Ok(Bytes::from_static(b"12345678901234567890123")), "r"),
            "{\"index\":0,\"result\":12345678901234567890123}"
        );
    }

    #[test]
    fn errors_carry_the_problem_members() {
        let text = line(7, Err(ApiError::InvalidJson("bad".into())), "req-1");
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["index"], 7);
        assert_eq!(
            value["error"],
            serde_json::json!({"type": "about:blank", "title": "Bad Request", "status": 400,
                "code": "invalid_json", "detail": "bad", "request_id": "req-1"})
        );
    }

    #[test]
    fn the_array_framing_makes_one_array() {
        let mut writer = Writer::new(Framing::Array);
        assert_eq!(writer.end().unwrap(), "[]");
        let mut body = writer.item(Bytes::from_static(b"1")).to_vec();
        body.extend_from_slice(&writer.item(Bytes::from_static(b"2")));
        body.extend_from_slice(&writer.end().unwrap());
        assert_eq!(body, b"[1,2]");
        let mut lines = Writer::new(Framing::Ndjson);
        assert_eq!(lines.item(Bytes::from_static(b"1")), "1\n");
        assert!(lines.end().is_none());
    }

    #[test]
    fn accept_picks_the_framing() {
        let framing = |accept: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(accept) = accept {
                headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            }
            Framing::accepted(&headers)
        };
        assert_eq!(framing(None), Framing::Ndjson);
        assert_eq!(framing(Some("*/*")), Framing::Ndjson);
        assert_eq!(framing(Some("Application/JSON")), Framing::Array);
        assert_eq!(
            framing(Some("text/html, application/json;q=0.9")),
            Framing::Array
        );
        assert_eq!(
            framing(Some("application/json, application/x-ndjson")),
            Framing::Ndjson
        );
    }
}
