//! Streaming results (`stream = true`): a function's items as they come,
//! one checked JSON value each, instead of one result. Backends turn what
//! their function writes (stdout lines, an NDJSON or Server-Sent Events
//! body, a Lambda streaming response) into an [`ItemStream`] with the
//! decoders here; the HTTP layer sends each item on the moment it comes.
//!
//! An item stream ends after its first error. Dropping it stops the
//! function: the process is killed, the request dropped, the instance
//! stopped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::Sleep;

use super::{Backend, BackendError, RESULT_RULES};
use crate::invocation::Invocation;
use crate::translate::json;

/// A function's items, each one JSON value on one line (no CR or LF in
/// it), or the error that ended them.
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send>>;

/// `application/x-ndjson`: one item a line.
pub const NDJSON: &str = "application/x-ndjson";

/// `text/event-stream`: Server-Sent Events.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Most bytes of items a spawned streaming call keeps (the default
/// `max_result`).
pub const STORED_LIMIT: u64 = 64 << 20;

/// Where a backend reads a call's items from, one at a time: a process's
/// stdout, an answer's body, an instance's mailbox.
pub(crate) trait ItemSource: Send + 'static {
    /// The next item, or `None` once the items have ended (after an error
    /// item, always).
    fn next(&mut self) -> impl Future<Output = Option<Result<Bytes, BackendError>>> + Send;
}

/// The items of `source` as a stream.
pub(crate) fn from_source(source: impl ItemSource) -> ItemStream {
    Box::pin(futures_util::stream::unfold(
        source,
        |mut source| async move {
            let item = source.next().await?;
            Some((item, source))
        },
    ))
}

/// A stream of the one item a non-streaming answer is.
pub fn single(item: Bytes) -> ItemStream {
    Box::pin(futures_util::stream::iter([Ok(compact(item))]))
}

/// Opens `invocation`'s item stream on `backend` within its deadline; the
/// stream ends with [`BackendError::Timeout`] at the deadline (the
/// function stopped with it).
pub async fn open(
    backend: &dyn Backend,
    invocation: &Invocation,
) -> Result<ItemStream, BackendError> {
    let items = tokio::time::timeout_at(invocation.deadline, backend.invoke_stream(invocation))
        .await
        .map_err(|_| BackendError::Timeout)??;
    Ok(Box::pin(Deadline {
        inner: Some(items),
        timer: Box::pin(tokio::time::sleep_until(invocation.deadline)),
    }))
}

/// Ends its stream with a timeout at the deadline, and after its first
/// error: the inner stream (and the function's work) is dropped then.
struct Deadline {
    inner: Option<ItemStream>,
    timer: Pin<Box<Sleep>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // The deadline first: a function that never pauses still ends.
        if this.timer.as_mut().poll(cx).is_ready() {
            this.inner = None;
            return Poll::Ready(Some(Err(BackendError::Timeout)));
        }
        let polled = inner.poll_next_unpin(cx);
        if !matches!(polled, Poll::Ready(Some(Ok(_))) | Poll::Pending) {
            self.inner = None;
        }
        polled
    }
}

/// Reads every item of `items` into NDJSON lines, at most `limit` bytes of
/// them (a spawned call keeps its items). The error that ended the stream
/// comes back with the lines read before it.
pub async fn collect(mut items: ItemStream, limit: u64) -> (Vec<u8>, Option<BackendError>) {
    let mut lines = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            Ok(item) => {
                if (lines.len() + item.len() + 1) as u64 > limit {
                    let why = format!("the items are larger than max_result ({limit} bytes)");
                    return (lines, Some(BackendError::Garbage(why)));
                }
                lines.extend_from_slice(&item);
                lines.push(b'\n');
            }
            Err(e) => return (lines, Some(e)),
        }
    }
    (lines, None)
}

/// How a byte stream is cut into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON value a line (blank lines skipped).
    Lines,
    /// Server-Sent Events: each event's `data` (its lines joined) is an
    /// item; an `error` event is the function's error; comments and other
    /// fields are ignored.
    Events,
}

impl Framing {
    /// The framing of an answer of type `content_type` that streams items
    /// (`None`: not a streaming type; the body is one result).
    pub fn of_content_type(content_type: &str) -> Option<Framing> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            NDJSON | "application/jsonl" => Some(Framing::Lines),
            EVENT_STREAM => Some(Framing::Events),
            _ => None,
        }
    }
}

/// Cuts bytes, as they arrive in chunks of any size, into checked items.
pub struct ItemDecoder {
    framing: Framing,
    buffer: BytesMut,
    /// How far `buffer` has been searched for a line end.
    searched: usize,
    /// Longest item (and line) taken.
    max_item: usize,
    /// Events: the current event's data lines, joined, and its name.
    data: Option<Vec<u8>>,
    event: Option<String>,
    /// Events: the last line ended with a CR (an LF right after it
    /// belongs to that line end).
    after_cr: bool,
}

/// What an item source over a reader does next: the decoder with where
/// the reader stands, so that each source only reads.
pub(crate) struct Decoding {
    decoder: ItemDecoder,
    /// The reader has ended: what is left in the decoder is the last.
    eof: bool,
    /// The stream has ended (its reader's end was answered, or an error).
    done: bool,
}

/// The next step of an item source.
pub(crate) enum Step {
    /// An item (or the error that ends the stream) to give.
    Item(Result<Bytes, BackendError>),
    /// The reader's end, reached now and every item given: the source
    /// says how the stream ends.
    End,
    /// The stream has ended already.
    Done,
    /// Read more.
    Read,
}

impl Decoding {
    pub fn new(framing: Framing, max_item: u64) -> Decoding {
        Decoding {
            decoder: ItemDecoder::new(framing, max_item),
            eof: false,
            done: false,
        }
    }

    pub fn step(&mut self) -> Step {
        if self.done {
            return Step::Done;
        }
        let item = if self.eof {
            self.decoder.finish()
        } else {
            self.decoder.next_item()
        };
        match item {
            Some(item) => {
                self.done = item.is_err();
                Step::Item(item)
            }
            None if self.eof => {
                self.done = true;
                Step::End
            }
            None => Step::Read,
        }
    }

    /// Bytes read.
    pub fn push(&mut self, chunk: &[u8]) {
        self.decoder.push(chunk);
    }

    /// The reader has ended.
    pub fn end_of_input(&mut self) {
        self.eof = true;
    }

    /// The stream ends with an error of the source's own.
    pub fn stop(&mut self) {
        self.done = true;
    }
}

impl ItemDecoder {
    pub fn new(framing: Framing, max_item: u64) -> ItemDecoder {
        ItemDecoder {
            framing,
            buffer: BytesMut::new(),
            searched: 0,
            max_item: usize::try_from(max_item).unwrap_or(usize::MAX),
            data: None,
            event: None,
            after_cr: false,
        }
    }

    /// Takes the next chunk of bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete item, if the bytes so far hold one.
    pub fn next_item(&mut self) -> Option<Result<Bytes, BackendError>> {
        while let Some(line) = self.next_line() {
            let line = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if let Some(item) = self.take_line(line) {
                return Some(item);
            }
        }
        if self.buffer.len() > self.max_item {
            // The line so far is dropped: the stream ends with this error.
            self.buffer.clear();
            self.searched = 0;
            return Some(Err(self.too_large()));
        }
        None
    }

    /// The last item, once the bytes have ended: a last line without its
    /// line end. (An event cut off before its blank line is dropped, as
    /// Server-Sent Events say.)
    pub fn finish(&mut self) -> Option<Result<Bytes, BackendError>> {
        if let Some(item) = self.next_item() {
            return Some(item);
        }
        let rest = self.buffer.split().freeze();
        self.searched = 0;
        match self.framing {
            Framing::Lines => self.take_line(rest),
            Framing::Events => None,
        }
    }

    /// The next line of `buffer`, without its end (LF or CRLF; for events
    /// also a lone CR).
    fn next_line(&mut self) -> Option<Result<Bytes, BackendError>> {
        let events = self.framing == Framing::Events;
        if self.after_cr {
            // The LF of a CRLF whose CR ended the last line.
            match self.buffer.first() {
                None => return None,
                Some(b'\n') => self.buffer.advance(1),
                Some(_) => {}
            }
            self.after_cr = false;
            self.searched = 0;
        }
        let found = self.buffer[self.searched..]
            .iter()
            .position(|&b| b == b'\n' || (events && b == b'\r'));
        let Some(offset) = found else {
            self.searched = self.buffer.len();
            return None;
        };
        let at = self.searched + offset;
        self.after_cr = self.buffer[at] == b'\r';
        let mut line = self.buffer.split_to(at + 1);
        self.searched = 0;
        line.truncate(at);
        if line.last() == Some(&b'\r') {
            line.truncate(at - 1);
        }
        if line.len() > self.max_item {
            return Some(Err(self.too_large()));
        }
        Some(Ok(line.freeze()))
    }

    /// What one line adds: an item (lines), or an item or error when it
    /// ends an event (events).
    fn take_line(&mut self, line: Bytes) -> Option<Result<Bytes, BackendError>> {
        match self.framing {
            Framing::Lines => {
                if json::is_blank(&line) {
                    return None;
                }
                Some(checked(line))
            }
            Framing::Events => self.event_line(line),
        }
    }

    fn event_line(&mut self, line: Bytes) -> Option<Result<Bytes, BackendError>> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let data = data?;
            if event.as_deref() == Some("error") {
                return Some(Err(event_error(&data)));
            }
            if json::is_blank(&data) {
                return None;
            }
            return Some(checked(Bytes::from(data)));
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        match name {
            b"data" => {
                let data = self.data.get_or_insert_with(Vec::new);
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                if data.len() > self.max_item {
                    self.data = None;
                    return Some(Err(self.too_large()));
                }
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
        None
    }

    fn too_large(&self) -> BackendError {
        BackendError::Garbage(format!(
            "an item is larger than max_result ({} bytes)",
            self.max_item
        ))
    }
}

/// An item checked as one JSON value, without surrounding whitespace and
/// with no line end inside it.
fn checked(line: Bytes) -> Result<Bytes, BackendError> {
    match json::check(&line, RESULT_RULES) {
        Ok(doc) => Ok(compact(line.slice(doc.start..doc.end))),
        Err(e) => Err(BackendError::Garbage(format!("an item is not JSON: {e}"))),
    }
}

/// `item` with no CR or LF: in valid JSON they are whitespace between
/// tokens (never inside a string), so dropping them keeps the value.
fn compact(item: Bytes) -> Bytes {
    if !item.iter().any(|&b| b == b'\n' || b == b'\r') {
        return item;
    }
    let kept: Vec<u8> = item
        .iter()
        .copied()
        .filter(|&b| b != b'\n' && b != b'\r')
        .collect();
    Bytes::from(kept)
}

/// An `error` event's data as the function's error: `{"type",
/// "message"}`, `{"error": {"type", "message"}}`, or text.
fn event_error(data: &[u8]) -> BackendError {
    if let Some(reported) = super::reported_error(data) {
        return reported;
    }
    #[derive(serde::Deserialize)]
    struct Reported {
        #[serde(rename = "type")]
        kind: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Reported>(data) {
        Ok(reported) => BackendError::Function {
            kind: reported.kind.unwrap_or_else(|| "Error".to_owned()),
            message: reported.message.unwrap_or_default(),
        },
        Err(_) => BackendError::Function {
            kind: "Error".to_owned(),
            message: String::from_utf8_lossy(data).trim().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Every item and error the decoder gives for `chunks`, then at the end.
    fn decode(framing: Framing, chunks: &[&[u8]]) -> Vec<Result<String, String>> {
        let mut decoder = ItemDecoder::new(framing, 64);
        let mut out = Vec::new();
        let text = |item: Result<Bytes, BackendError>| {
            item.map(|b| String::from_utf8(b.to_vec()).unwrap())
                .map_err(|e| e.to_string())
        };
        for chunk in chunks {
            decoder.push(chunk);
            while let Some(item) = decoder.next_item() {
                out.push(text(item));
            }
        }
        while let Some(item) = decoder.finish() {
            out.push(text(item));
        }
        out
    }

    fn items(list: &[&str]) -> Vec<Result<String, String>> {
        list.iter().map(|s| Ok(s.to_string())).collect()
    }

    #[test]
    fn lines_become_items_whatever_the_chunks() {
        assert_eq!(
            decode(Framing::Lines, &[b"1\n{\"a\"", b": 2}\r\n\n  ", b"[3]"]),
            items(&["1", "{\"a\": 2}", "[3]"])
        );
        assert_eq!(decode(Framing::Lines, &[b"\n \n"]), items(&[]));
    }

    #[test]
    fn a_line_that_is_not_json_or_too_long_is_an_error() {
        let got = decode(Framing::Lines, &[b"1\nnope\n"]);
        assert_eq!(got[0], Ok("1".to_owned()));
        assert!(got[1].as_ref().unwrap_err().contains("not JSON"));
        let long = vec![b'1'; 100];
        let got = decode(Framing::Lines, &[&long]);
        assert!(got[0].as_ref().unwrap_err().contains("max_result"));
    }

    #[test]
    fn events_join_their_data_lines_and_skip_comments_and_other_fields() {
        let body: &[&[u8]] = &[
            b": a comment\nid: 1\nevent: item\ndata: {\"a\":\ndata:  1}\n\n",
            b"data: 2\r\n\r\nretry: 10\ndata:3\r\r",
            b"data: 4\n",
        ];
        // The last event has no blank line after it: never dispatched.
        assert_eq!(
            decode(Framing::Events, body),
            items(&["{\"a\": 1}", "2", "3"])
        );
    }

    #[test]
    fn an_error_event_is_the_functions_error() {
        let got = decode(
            Framing::Events,
            &[b"data: 1\n\nevent: error\ndata: {\"type\": \"ValueError\", \"message\": \"bad\"}\n\n"],
        );
        assert_eq!(got[0], Ok("1".to_owned()));
        assert_eq!(
            got[1].as_ref().unwrap_err(),
            "function error ValueError: bad"
        );
    }

    #[test]
    fn content_types_pick_the_framing() {
        assert_eq!(
            Framing::of_content_type("application/x-ndjson; charset=utf-8"),
            Some(Framing::Lines)
        );
        assert_eq!(
            Framing::of_content_type("Text/Event-Stream"),
            Some(Framing::Events)
        );
        assert_eq!(Framing::of_content_type("application/json"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_a_timeout() {
        let pending: ItemStream = Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(b"1"))])
                .chain(futures_util::stream::pending()),
        );
        let mut items: ItemStream = Box::pin(Deadline {
            inner: Some(pending),
            timer: Box::pin(tokio::time::sleep_until(
                Instant::now() + std::time::Duration::from_secs(5),
            )),
        });
        assert_eq!(items.next().await.unwrap().unwrap(), "1");
        let started = Instant::now();
        assert!(matches!(
            items.next().await,
            Some(Err(BackendError::Timeout))
        ));
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
        assert!(items.next().await.is_none());
    }

    #[tokio::test]
    async fn collected_items_stop_at_the_limit() {
        let many: ItemStream = Box::pin(futures_util::stream::iter(
            (0..10).map(|i| Ok(Bytes::from(i.to_string()))),
        ));
        let (lines, error) = collect(many, 7).await;
        assert_eq!(lines, b"0\n1\n2\n");
        assert!(matches!(error, Some(BackendError::Garbage(_))));
    }
}
