//! The access log: one line per request, written off the request path.
//!
//! A request hands its entry (a few `Arc` clones and numbers) to a bounded
//! channel with `try_send` and goes on; a thread of its own formats the
//! lines and writes them. When the writer falls behind and the channel is
//! full, the line is dropped and counted (`fngate_access_log_dropped_total`):
//! a request never waits for stderr or a disk. The writer polls instead of
//! blocking on the channel, so no sender ever has a sleeping receiver to
//! wake (which would take the channel's lock).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};

use super::FunctionMetrics;
use crate::config::{AccessSink, LogConfig, LogFormat};

/// Entries the channel holds before new ones are dropped.
const CAPACITY: usize = 16 * 1024;

/// The longest the writer sleeps between looks at an idle channel.
const IDLE_POLL_MAX: Duration = Duration::from_millis(50);

/// Pipes take writes of up to 4 KiB whole: lines written to stderr in
/// chunks of at most this size never interleave with other log lines.
const CHUNK: usize = 4096;

/// What one request leaves for its access-log line. Nothing of the
/// request's body, query, headers or credentials is in it.
pub struct AccessEntry {
    pub time: SystemTime,
    pub request_id: Arc<str>,
    pub method: Method,
    pub route: AccessRoute,
    pub status: u16,
    pub latency: Duration,
    /// The response's `X-Call-Id`.
    pub call_id: Option<HeaderValue>,
}

/// The route a request took, by name only.
pub enum AccessRoute {
    Function(Arc<FunctionMetrics>),
    Fixed(&'static str),
    /// No route matched: `-`.
    Unmatched,
}

enum Message {
    Entry(AccessEntry),
    /// Answered once every entry sent before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

struct AccessLog {
    sender: SyncSender<Message>,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Starts the access log's writer as `config` says (once per process:
/// the first call wins; with `access = "off"` nothing is written).
pub fn install(config: &LogConfig) -> std::io::Result<()> {
    if ACCESS_LOG.get().is_some() {
        return Ok(());
    }
    let sink: Box<dyn Write + Send> = match &config.access {
        AccessSink::Off => return Ok(()),
        AccessSink::Stderr => Box::new(std::io::stderr()),
        AccessSink::File(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        }
    };
    let (sender, receiver) = std::sync::mpsc::sync_channel(CAPACITY);
    let format = config.format;
    std::thread::Builder::new()
        .name("fngate-access-log".into())
        .spawn(move || write_lines(receiver, sink, format))?;
    let _ = ACCESS_LOG.set(AccessLog { sender });
    Ok(())
}

/// Hands `entry` to the writer, or drops and counts it when the writer
/// is behind. Never blocks.
pub fn record(entry: AccessEntry) {
    if let Some(log) = ACCESS_LOG.get() {
        send(&log.sender, entry, &super::global().access_log_dropped);
    }
}

fn send(sender: &SyncSender<Message>, entry: AccessEntry, dropped: &AtomicU64) {
    match sender.try_send(Message::Entry(entry)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// True when an access log is being written (entries are worth making).
pub fn enabled() -> bool {
    ACCESS_LOG.get().is_some()
}

/// Waits (up to `within`) until every line recorded so far is written:
/// for the end of the process.
pub fn flush(within: Duration) {
    let Some(log) = ACCESS_LOG.get() else {
        return;
    };
    let (done, written) = std::sync::mpsc::channel();
    if log.sender.send(Message::Flush(done)).is_ok() {
        let _ = written.recv_timeout(within);
    }
}

/// The writer thread: drains the channel, writes what it drained, then
/// sleeps a little longer each time it finds nothing.
fn write_lines(receiver: Receiver<Message>, mut sink: Box<dyn Write + Send>, format: LogFormat) {
    let mut buffer = Vec::with_capacity(CHUNK * 2);
    let mut lines = Lines::default();
    let mut idle = Duration::from_millis(1);
    loop {
        let mut flushes = Vec::new();
        let mut ended = false;
        loop {
            match receiver.try_recv() {
                Ok(Message::Entry(entry)) => {
                    let start = buffer.len();
                    lines.push(&mut buffer, &entry, format);
                    if buffer.len() > CHUNK {
                        write_chunk(&mut sink, &buffer[..start]);
                        buffer.drain(..start);
                    }
                }
                Ok(Message::Flush(done)) => flushes.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        let wrote = !buffer.is_empty() || !flushes.is_empty();
        if !buffer.is_empty() {
            write_chunk(&mut sink, &buffer);
            buffer.clear();
        }
        let _ = sink.flush();
        for done in flushes {
            let _ = done.send(());
        }
        if ended {
            return;
        }
        idle = if wrote {
            Duration::from_millis(1)
        } else {
            (idle * 2).min(IDLE_POLL_MAX)
        };
        std::thread::sleep(idle);
    }
}

fn write_chunk(sink: &mut Box<dyn Write + Send>, lines: &[u8]) {
    // A failing sink (a full disk, a closed stderr) loses these lines;
    // nothing else can be done with them, and requests go on.
    let _ = sink.write_all(lines);
}

/// Appends `entry`'s line (with its newline) to `out`.
pub fn format_line(out: &mut Vec<u8>, entry: &AccessEntry, format: LogFormat) {
    Lines::default().push(out, entry, format);
}

/// Writes lines cheaply: no `fmt` machinery, and the date and time of
/// day formatted once per second (a busy gateway writes thousands of
/// lines a second, on the same core as its requests).
#[derive(Default)]
struct Lines {
    /// The second `stamp` is for, since the epoch.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    stamp: Vec<u8>,
}

impl Lines {
    fn push(&mut self, out: &mut Vec<u8>, entry: &AccessEntry, format: LogFormat) {
        let since = entry
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let call_id = entry.call_id.as_ref().and_then(|v| v.to_str().ok());
        let route: &str = match &entry.route {
            AccessRoute::Function(f) => &f.route,
            AccessRoute::Fixed(label) => label,
            AccessRoute::Unmatched => "-",
        };
        match format {
            LogFormat::Text => {
                self.time(out, since);
                // Request ids, names and call ids are from fixed
                // alphabets; the method is a client's token, but a valid
                // one (http's `Method` takes token characters only).
                out.extend_from_slice(b" access method=");
                out.extend_from_slice(entry.method.as_str().as_bytes());
                out.extend_from_slice(b" route=");
                out.extend_from_slice(route.as_bytes());
                out.extend_from_slice(b" status=");
                push_number(out, u64::from(entry.status));
                out.extend_from_slice(b" latency_ms=");
                push_millis(out, entry.latency);
                out.extend_from_slice(b" request_id=");
                out.extend_from_slice(entry.request_id.as_bytes());
                if let Some(id) = call_id {
                    out.extend_from_slice(b" call_id=");
                    out.extend_from_slice(id.as_bytes());
                }
                out.push(b'\n');
            }
            LogFormat::Json => {
                out.extend_from_slice(b"{\"time\":\"");
                self.time(out, since);
                out.extend_from_slice(b"\",\"request_id\":");
                json_str(out, &entry.request_id);
                out.extend_from_slice(b",\"method\":");
                json_str(out, entry.method.as_str());
                out.extend_from_slice(b",\"route\":");
                json_str(out, route);
                match &entry.route {
                    AccessRoute::Function(f) => {
                        out.extend_from_slice(b",\"app\":");
                        json_str(out, &f.app);
                        out.extend_from_slice(b",\"function\":");
                        json_str(out, &f.function);
                    }
                    AccessRoute::Fixed(_) | AccessRoute::Unmatched => {
                        out.extend_from_slice(b",\"app\":null,\"function\":null");
                    }
                }
                out.extend_from_slice(b",\"status\":");
                push_number(out, u64::from(entry.status));
                out.extend_from_slice(b",\"latency_ms\":");
                push_millis(out, entry.latency);
                out.extend_from_slice(b",\"call_id\":");
                match call_id {
                    Some(id) => json_str(out, id),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b"}\n");
            }
        }
    }

    /// `2025-11-24T16:00:00.000000Z` (RFC 3339, UTC, microseconds).
    fn time(&mut self, out: &mut Vec<u8>, since: Duration) {
        let second = since.as_secs();
        if self.second != Some(second) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(at).to_string();
            self.stamp.clear();
            self.stamp
                .extend_from_slice(text.trim_end_matches('Z').as_bytes());
            self.second = Some(second);
        }
        out.extend_from_slice(&self.stamp);
        out.push(b'.');
        push_padded(out, u64::from(since.subsec_micros()), 6);
        out.push(b'Z');
    }
}

/// `n` in decimal.
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` in decimal, with leading zeros to `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    push_number(out, n);
    let len = out.len() - start;
    if len < width {
        let zeros = width - len;
        out.splice(start..start, std::iter::repeat_n(b'0', zeros));
    }
}

/// `latency` in milliseconds with three decimals (`1.500`), rounded to
/// the microsecond.
fn push_millis(out: &mut Vec<u8>, latency: Duration) {
    let micros = (latency.as_nanos() + 500) / 1000;
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    push_number(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

fn json_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("a string always serialises into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(route: AccessRoute, call_id: Option<&'static str>) -> AccessEntry {
        AccessEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            request_id: "req-1".into(),
            method: Method::POST,
            route,
            status: 200,
            latency: Duration::from_micros(1500),
            call_id: call_id.map(HeaderValue::from_static),
        }
    }

    fn line(entry: &AccessEntry, format: LogFormat) -> String {
        let mut out = Vec::new();
        format_line(&mut out, entry, format);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        let dropped = AtomicU64::new(0);
        for _ in 0..5 {
            send(&sender, entry(AccessRoute::Unmatched, None), &dropped);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert_eq!(receiver.try_iter().count(), 2);
    }

    #[test]
    fn the_writer_writes_whole_lines_and_answers_a_flush() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let (sender, receiver) = std::sync::mpsc::sync_channel(CAPACITY);
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || write_lines(receiver, Box::new(sink), LogFormat::Text))
        };
        let dropped = AtomicU64::new(0);
        for _ in 0..500 {
            send(
                &sender,
                entry(AccessRoute::Unmatched, Some("fc-1")),
                &dropped,
            );
        }
        let (done, written) = std::sync::mpsc::channel();
        sender.send(Message::Flush(done)).unwrap();
        written.recv_timeout(Duration::from_secs(10)).unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 500);
        assert!(text.lines().all(|l| l.ends_with("call_id=fc-1")));
        drop(sender);
        writer.join().unwrap();
    }

    #[test]
    fn text_lines_name_the_route_and_the_call() {
        let f = Arc::new(FunctionMetrics::new("demo", "square"));
        let text = line(
            &entry(AccessRoute::Function(f), Some("fc-abc")),
            LogFormat::Text,
        );
        assert_eq!(
            text,
            "2025-11-24T16:00:00.000000Z access method=POST route=/demo/square status=200 \
             latency_ms=1.500 request_id=req-1 call_id=fc-abc\n"
        );
        let text = line(&entry(AccessRoute::Unmatched, None), LogFormat::Text);
        assert!(text.contains(" route=- "), "{text}");
        assert!(!text.contains("call_id"), "{text}");
    }

    #[test]
    fn numbers_and_times_are_written_in_full() {
        let mut out = Vec::new();
        push_millis(&mut out, Duration::from_nanos(12_345_678_901));
        assert_eq!(out, b"12345.679");
        out.clear();
        push_millis(&mut out, Duration::from_nanos(40_400));
        assert_eq!(out, b"0.040");
        out.clear();
        push_padded(&mut out, 7, 6);
        assert_eq!(out, b"000007");
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let at = Duration::from_secs(1_764_000_000) + Duration::from_micros(42);
        lines.time(&mut out, at);
        out.push(b' ');
        lines.time(&mut out, at + Duration::from_millis(1_500));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2025-11-24T16:00:00.000042Z 2025-11-24T16:00:01.500042Z"
        );
    }

    #[test]
    fn json_lines_have_every_key() {
        let f = Arc::new(FunctionMetrics::new("demo", "model.predict"));
        let json = line(&entry(AccessRoute::Function(f), None), LogFormat::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["route"], "/demo/model/predict");
        assert_eq!(value["app"], "demo");
        assert_eq!(value["function"], "model.predict");
        assert_eq!(value["status"], 200);
        assert_eq!(value["latency_ms"], 1.5);
        assert_eq!(value["call_id"], serde_json::Value::Null);
        assert_eq!(value["time"], "2025-11-24T16:00:00.000000Z");
        let mut odd = entry(AccessRoute::Fixed("/_/health"), Some("fc-x"));
        odd.method = Method::from_bytes(b"GE\"T").unwrap_or(Method::GET);
        let value: serde_json::Value = serde_json::from_str(&line(&odd, LogFormat::Json)).unwrap();
        assert_eq!(value["app"], serde_json::Value::Null);
        assert_eq!(value["call_id"], "fc-x");
    }
}
