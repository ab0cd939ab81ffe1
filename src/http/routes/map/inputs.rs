//! A map's inputs as the request gives them: the elements of a JSON array
//! body (read whole, within the function's body limit, and counted before
//! anything runs), or the lines of an `application/x-ndjson` body, read as
//! it streams in. Each input is its raw JSON text; translating it into
//! arguments is the input's own business, so a bad one fails alone.

use std::ops::Range;

use axum::body::Body;
use axum::extract::Request;
use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;

use crate::http::input;
use crate::http::problem::ApiError;
use crate::http::state::AppState;
use crate::registry::Function;
use crate::translate::{self, json};

/// Where a map's inputs come from.
pub enum Inputs {
    /// A JSON array body and the byte ranges of its elements.
    Array {
        body: Bytes,
        elements: std::vec::IntoIter<Range<usize>>,
    },
    /// An NDJSON body, one input per line.
    Lines(Box<LineReader>),
}

impl Inputs {
    /// The inputs of `request`, by its content type. A JSON body is read
    /// and split now: unreadable JSON, a value that is not an array, or
    /// more than `max_map_inputs` elements refuse the whole map.
    pub async fn read(
        state: &AppState,
        function: &Function,
        request: Request,
    ) -> Result<Inputs, ApiError> {
        let limit = input::body_limit(state, function);
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
        match content_type.as_deref() {
            Some(ct) if translate::is_json_media_type(ct) => {
                let (parts, body) = request.into_parts();
                let body = input::read_body(parts.headers.get(header::CONTENT_LENGTH), body, limit)
                    .await?;
                let elements = elements(&body, state.max_json_depth, state.max_map_inputs)?;
                Ok(Inputs::Array {
                    body,
                    elements: elements.into_iter(),
                })
            }
            Some(ct) if is_ndjson(ct) => Ok(Inputs::Lines(Box::new(LineReader::new(
                request.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
                state.max_map_inputs,
            )))),
            Some(ct) => Err(ApiError::UnsupportedMediaType(format!(
                "a map's body is a JSON array (application/json) or one input per line \
                 (application/x-ndjson), not '{ct}'"
            ))),
            None => Err(ApiError::UnsupportedMediaType(
                "the map's body has no Content-Type: send a JSON array as application/json, \
                 or one input per line as application/x-ndjson"
                    .to_owned(),
            )),
        }
    }

    /// The next input's JSON text, or why it cannot be read (that input's
    /// error); `None` once there are no more. Cancel-safe: what was read
    /// stays in the reader.
    pub async fn next(&mut self) -> Option<Result<Bytes, ApiError>> {
        match self {
            Inputs::Array { body, elements } => elements.next().map(|range| Ok(body.slice(range))),
            Inputs::Lines(reader) => reader.next().await,
        }
    }
}

/// `application/x-ndjson`, with any parameters.
fn is_ndjson(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-ndjson")
}

/// The byte ranges of the elements of the JSON array `body`, at most
/// `most` of them. The array is read as JSON, with one level more than
/// `max_depth` for the array itself; duplicate keys and nesting within an
/// element are that element's to fail, when it is translated.
fn elements(body: &[u8], max_depth: usize, most: usize) -> Result<Vec<Range<usize>>, ApiError> {
    if json::is_blank(body) {
        return Err(ApiError::InvalidArguments(
            "a map's body is a JSON array of inputs; this one is empty".to_owned(),
        ));
    }
    let rules = json::Rules {
        max_depth: max_depth.saturating_add(1),
        reject_duplicate_keys: false,
    };
    let document = json::check(body, rules)
        .map_err(|e| ApiError::InvalidJson(format!("invalid JSON body: {e}")))?;
    if document.kind != json::Kind::Array {
        return Err(ApiError::InvalidArguments(
            "a map's body must be a JSON array, one element per call's input".to_owned(),
        ));
    }
    split_array(&body[document.start..document.end], document.start, most)
}

/// Splits a checked JSON array (`text`, which starts at `offset` in the
/// body) into its elements' ranges, without their surrounding whitespace.
fn split_array(text: &[u8], offset: usize, most: usize) -> Result<Vec<Range<usize>>, ApiError> {
    let mut ranges = Vec::new();
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut start: Option<usize> = None;
    let mut end = 0;
    // Byte 0 is the array's `[`; the last byte its `]`.
    for (i, &byte) in text.iter().enumerate().skip(1) {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            end = i + 1;
            continue;
        }
        if json::is_json_whitespace(byte) {
            continue;
        }
        if depth == 0 && matches!(byte, b',' | b']') {
            if let Some(first) = start.take() {
                if ranges.len() == most {
                    return Err(ApiError::TooManyInputs { limit: most });
                }
                ranges.push(offset + first..offset + end);
            }
            continue;
        }
        match byte {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            b'"' => in_string = true,
            _ => {}
        }
        start.get_or_insert(i);
        end = i + 1;
    }
    Ok(ranges)
}

/// Reads an NDJSON body line by line as it comes: each line that is not
/// blank is one input (a trailing `\r` is dropped). A line over the body
/// limit is that input's `413`, and the reader skips to the next line. A
/// line past `most` inputs, or a body that stalls or fails, ends the
/// inputs with one last input's error (the map has answered `200` by
/// then, so it cannot refuse the whole request any more).
pub struct LineReader {
    body: Body,
    buffer: BytesMut,
    /// How much of `buffer` holds no newline.
    scanned: usize,
    limit: usize,
    most: usize,
    given: usize,
    /// The rest of an over-long line is being dropped.
    skipping: bool,
    body_ended: bool,
    /// Nothing more is given.
    done: bool,
}

impl LineReader {
    pub fn new(body: Body, limit: usize, most: usize) -> LineReader {
        LineReader {
            body,
            buffer: BytesMut::new(),
            scanned: 0,
            limit,
            most,
            given: 0,
            skipping: false,
            body_ended: false,
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, ApiError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(line) = self.take_line() {
                if self.skipping {
                    self.skipping = false;
                    continue;
                }
                let line = trim_line(line);
                if json::is_blank(&line) {
                    continue;
                }
                if line.len() > self.limit {
                    return self.give(Err(self.too_large()));
                }
                return self.give(Ok(line));
            }
            if self.buffer.len() > self.limit && !self.skipping {
                self.drop_buffer();
                self.skipping = true;
                return self.give(Err(self.too_large()));
            }
            if self.skipping {
                self.drop_buffer();
            }
            match self.body.frame().await {
                None => self.body_ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    let error = if input::is_stalled(&e) {
                        ApiError::RequestTimeout
                    } else {
                        ApiError::BadRequest(format!("could not read the request body: {e}"))
                    };
                    return Some(Err(error));
                }
            }
        }
    }

    /// The next whole line in the buffer, newline included; at the body's
    /// end, whatever is left.
    fn take_line(&mut self) -> Option<Bytes> {
        match self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let line = self.buffer.split_to(self.scanned + at + 1).freeze();
                self.scanned = 0;
                Some(line)
            }
            None if self.body_ended => {
                self.done = self.buffer.is_empty();
                self.scanned = 0;
                (!self.done).then(|| self.buffer.split().freeze())
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }

    fn drop_buffer(&mut self) {
        self.buffer.clear();
        self.scanned = 0;
    }

    fn too_large(&self) -> ApiError {
        ApiError::InputTooLarge {
            limit: self.limit as u64,
        }
    }

    /// Gives one input, unless it is one more than a map takes: then the
    /// inputs end with that error.
    fn give(&mut self, input: Result<Bytes, ApiError>) -> Option<Result<Bytes, ApiError>> {
        if self.given == self.most {
            self.done = true;
            return Some(Err(ApiError::TooManyInputs { limit: self.most }));
        }
        self.given += 1;
        Some(input)
    }
}

/// A line without its `\n` and the `\r` before it.
fn trim_line(mut line: Bytes) -> Bytes {
    for end in [b'\n', b'\r'] {
        if line.last() == Some(&end) {
            line.truncate(line.len() - 1);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<&str> {
        elements(body.as_bytes(), 128, 100)
            .unwrap()
            .into_iter()
            .map(|r| &body[r])
            .collect()
    }

    #[test]
    fn an_array_splits_into_its_elements_as_written() {
        assert_eq!(
            texts(r#" [ {"x": [1, {"y": "]"}]} , 2e400,"a\",b" ,[], null ] "#),
            vec![
                r#"{"x": [1, {"y": "]"}]}"#,
                "2e400",
                r#""a\",b""#,
                "[]",
                "null"
            ]
        );
        assert_eq!(texts("[]"), Vec::<&str>::new());
        assert_eq!(texts("[\n1\n]"), vec!["1"]);
        assert_eq!(texts(r#"["\\"]"#), vec![r#""\\""#]);
    }

    #[test]
    fn a_body_that_is_no_array_or_too_long_is_refused() {
        let refused = |body: &str, most| elements(body.as_bytes(), 128, most).unwrap_err();
        assert!(matches!(refused("", 10), ApiError::InvalidArguments(_)));
        assert!(matches!(
            refused("{\"x\":1}", 10),
            ApiError::InvalidArguments(_)
        ));
        assert!(matches!(refused("[1,", 10), ApiError::InvalidJson(_)));
        assert!(matches!(
            refused("[1,2,3]", 2),
            ApiError::TooManyInputs { limit: 2 }
        ));
        assert_eq!(elements(b"[1,2]", 128, 2).unwrap().len(), 2);
        // Duplicate keys are the element's to fail, not the array's.
        assert_eq!(elements(br#"[{"a":1,"a":2}]"#, 128, 2).unwrap().len(), 1);
    }

    async fn lines(chunks: &[&'static str], limit: usize, most: usize) -> Vec<Result<String, u16>> {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        let stream = futures_util::stream::iter(chunks);
        let mut reader = LineReader::new(Body::from_stream(stream), limit, most);
        let mut out = Vec::new();
        while let Some(input) = reader.next().await {
            out.push(match input {
                Ok(text) => Ok(String::from_utf8(text.to_vec()).unwrap()),
                Err(e) => Err(e.status_and_code().0.as_u16()),
            });
        }
        out
    }

    #[tokio::test]
    async fn lines_come_whole_across_chunks_and_blank_ones_are_skipped() {
        let got = lines(&["{\"x\":", "1}\n\n  \r\n[2]\r", "\n3"], 100, 10).await;
        assert_eq!(
            got,
            vec![Ok("{\"x\":1}".into()), Ok("[2]".into()), Ok("3".into())]
        );
    }

    #[tokio::test]
    async fn an_over_long_line_is_its_own_413_and_the_next_line_still_runs() {
        let got = lines(
            &["1\n", "0123456789", "0123456789\n2\n", "012345678901\n"],
            8,
            10,
        )
        .await;
        assert_eq!(
            got,
            vec![Ok("1".into()), Err(413), Ok("2".into()), Err(413)]
        );
    }

    #[tokio::test]
    async fn a_line_past_the_most_inputs_ends_them_with_a_413() {
        let got = lines(&["1\n2\n3\n4\n"], 100, 2).await;
        assert_eq!(got, vec![Ok("1".into()), Ok("2".into()), Err(413)]);
        let exactly = lines(&["1\n2\n"], 100, 2).await;
        assert_eq!(exactly, vec![Ok("1".into()), Ok("2".into())]);
    }
}
