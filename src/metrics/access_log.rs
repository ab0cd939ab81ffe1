//! The access log: one line per request, written off the request path.
//!
//! A request appends its entry (a few `Arc` clones, numbers and the call
//! id's bytes) to a buffer of its own thread's and goes on: an uncontended
//! lock, no channel, no clock read beyond the latency's, no wake-up of another thread. A thread
//! of its own takes every thread's buffer in turn (swapping in an empty
//! one), formats the lines and writes them. When the writer falls behind
//! and a thread's buffer is full, the line is dropped and counted
//! (`fngate_access_log_dropped_total`): a request never waits for stderr
//! or a disk.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method};

use super::FunctionMetrics;
use crate::config::{AccessSink, LogConfig, LogFormat};

/// Entries a thread's buffer holds before new ones are dropped.
const CAPACITY: usize = 16 * 1024;

/// The longest the writer sleeps between looks at idle buffers.
const IDLE_POLL_MAX: Duration = Duration::from_millis(50);

/// Pipes take writes of up to 4 KiB whole: lines written to stderr in
/// chunks of at most this size never interleave with other log lines.
const CHUNK: usize = 4096;

/// How long the writer dates entries from one reading of both clocks.
const CLOCK_READING_MAX_AGE: Duration = Duration::from_secs(60);

/// Room kept for one more line in a chunk: lines are far shorter (request
/// ids, names and call ids are all bounded well below this).
const LINE_MAX: usize = 1024;

/// What one request leaves for its access-log line. Nothing of the
/// request's body, query, headers or credentials is in it.
pub struct AccessEntry {
    /// When the response was ready (the writer turns it into wall-clock
    /// time, so a request reads no second clock).
    pub at: Instant,
    pub request_id: Arc<str>,
    pub method: Method,
    pub route: AccessRoute,
    pub status: u16,
    pub latency: Duration,
    /// The response's `X-Call-Id`.
    pub call_id: Option<CallIdText>,
}

/// The route a request took, by name only.
pub enum AccessRoute {
    Function(Arc<FunctionMetrics>),
    Fixed(&'static str),
    /// No route matched: `-`.
    Unmatched,
}

/// A call id's bytes, copied (call ids are 35 bytes: no allocation, no
/// reference count shared with the response).
pub struct CallIdText {
    len: u8,
    bytes: [u8; CallIdText::INLINE],
}

impl CallIdText {
    const INLINE: usize = 48;

    /// The header's value, when it is text that fits (the gateway's own
    /// ids always do; anything else is left out of the line).
    pub fn new(value: &HeaderValue) -> Option<CallIdText> {
        let text = value.to_str().ok()?;
        let mut bytes = [0u8; CallIdText::INLINE];
        bytes
            .get_mut(..text.len())?
            .copy_from_slice(text.as_bytes());
        Some(CallIdText {
            len: text.len() as u8,
            bytes,
        })
    }

    /// Visible ASCII (`HeaderValue::to_str` let it through).
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One thread's entries, waiting for the writer.
type Buffer = Arc<Mutex<Vec<AccessEntry>>>;

struct AccessLog {
    /// Every thread's buffer that has recorded a request.
    buffers: Mutex<Vec<Buffer>>,
    /// Each is answered once every entry recorded before it is written.
    flushes: Mutex<Sender<Sender<()>>>,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

thread_local! {
    static BUFFER: std::cell::OnceCell<Buffer> = const { std::cell::OnceCell::new() };
}

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
    let (flushes, flush_requests) = std::sync::mpsc::channel();
    if ACCESS_LOG
        .set(AccessLog {
            buffers: Mutex::new(Vec::new()),
            flushes: Mutex::new(flushes),
        })
        .is_err()
    {
        return Ok(());
    }
    let format = config.format;
    std::thread::Builder::new()
        .name("fngate-access-log".into())
        .spawn(move || {
            if let Some(log) = ACCESS_LOG.get() {
                write_lines(&log.buffers, flush_requests, sink, format);
            }
        })?;
    Ok(())
}

/// Keeps `entry` for the writer, or drops and counts it when the writer
/// is behind. Never blocks on the writer.
pub fn record(entry: AccessEntry) {
    let Some(log) = ACCESS_LOG.get() else {
        return;
    };
    let dropped = &super::global().access_log_dropped;
    let kept = BUFFER.try_with(|buffer| {
        let buffer = buffer.get_or_init(|| {
            let buffer = Buffer::default();
            lock(&log.buffers).push(buffer.clone());
            buffer
        });
        push(buffer, entry, dropped);
    });
    if kept.is_err() {
        // The thread is ending: its buffer is gone.
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn push(buffer: &Mutex<Vec<AccessEntry>>, entry: AccessEntry, dropped: &AtomicU64) {
    let mut entries = lock(buffer);
    if entries.len() < CAPACITY {
        entries.push(entry);
    } else {
        drop(entries);
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A poisoned lock still guards whole entries (pushes and swaps do not
/// panic halfway).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    if lock(&log.flushes).send(done).is_ok() {
        let _ = written.recv_timeout(within);
    }
}

/// The writer thread: takes every thread's buffer, writes what it took,
/// answers flushes, then sleeps a little longer each time it finds
/// nothing (polling, so no request ever has a sleeping writer to wake).
fn write_lines(
    buffers: &Mutex<Vec<Buffer>>,
    flush_requests: Receiver<Sender<()>>,
    mut sink: Box<dyn Write + Send>,
    format: LogFormat,
) {
    let mut out = Vec::with_capacity(CHUNK * 2);
    let mut taken = Vec::new();
    let mut lines = Lines::default();
    let mut idle = Duration::from_millis(1);
    loop {
        // Flushes asked before this pass are answered after it: every
        // entry recorded before them is in a buffer by now.
        let mut flushes = Vec::new();
        let ended = loop {
            match flush_requests.try_recv() {
                Ok(done) => flushes.push(done),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        // Read well before the entries it dates, so dating one takes a
        // single subtraction; read again now and then, so the wall clock's
        // adjustments show within a minute.
        if lines.clock.instant.elapsed() > CLOCK_READING_MAX_AGE {
            lines.clock = Clock::now();
        }
        let mut wrote = !flushes.is_empty();
        let mut all = lock(buffers);
        for buffer in all.iter() {
            std::mem::swap(&mut *lock(buffer), &mut taken);
            wrote |= !taken.is_empty();
            for entry in taken.drain(..) {
                if out.len() > CHUNK - LINE_MAX {
                    write_chunk(&mut sink, &out);
                    out.clear();
                }
                lines.push(&mut out, &entry, format);
            }
        }
        // A buffer only the list still holds belongs to a thread that
        // ended; it was just emptied.
        all.retain(|buffer| Arc::strong_count(buffer) > 1 || !lock(buffer).is_empty());
        drop(all);
        if !out.is_empty() {
            write_chunk(&mut sink, &out);
            out.clear();
        }
        if wrote {
            let _ = sink.flush();
        }
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

/// Writes lines cheaply: no `fmt` machinery, and the date and time of
/// day formatted once per second (a busy gateway writes thousands of
/// lines a second, on the same core as its requests).
#[derive(Default)]
struct Lines {
    /// Turns entries' instants into wall-clock time.
    clock: Clock,
    /// The second `stamp` is for, since the epoch.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    stamp: [u8; STAMP],
}

/// The length of `YYYY-MM-DDTHH:MM:SS` (years up to 9999).
const STAMP: usize = 19;

/// One reading of both clocks: an instant near it is that much before or
/// after the wall-clock time read with it.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    /// The wall-clock time at `instant`, since the epoch.
    wall: Duration,
}

impl Clock {
    fn now() -> Clock {
        let instant = Instant::now();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Clock { instant, wall }
    }

    /// `at` as time since the epoch.
    fn wall(&self, at: Instant) -> Duration {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.wall + after,
            None => self.wall.saturating_sub(self.instant.duration_since(at)),
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::now()
    }
}

impl Lines {
    fn push(&mut self, out: &mut Vec<u8>, entry: &AccessEntry, format: LogFormat) {
        let since = self.clock.wall(entry.at);
        let call_id = entry.call_id.as_ref().map(CallIdText::as_bytes);
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
                push_status(out, entry.status);
                out.extend_from_slice(b" latency_ms=");
                push_millis(out, entry.latency);
                out.extend_from_slice(b" request_id=");
                out.extend_from_slice(entry.request_id.as_bytes());
                if let Some(id) = call_id {
                    out.extend_from_slice(b" call_id=");
                    out.extend_from_slice(id);
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
                push_status(out, entry.status);
                out.extend_from_slice(b",\"latency_ms\":");
                push_millis(out, entry.latency);
                out.extend_from_slice(b",\"call_id\":");
                match call_id.map(std::str::from_utf8) {
                    Some(Ok(id)) => json_str(out, id),
                    Some(Err(_)) | None => out.extend_from_slice(b"null"),
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
            let text = text.trim_end_matches('Z').as_bytes();
            if let Some(stamp) = self.stamp.get_mut(..STAMP) {
                if text.len() == STAMP {
                    stamp.copy_from_slice(text);
                }
            }
            self.second = Some(second);
        }
        // `YYYY-MM-DDTHH:MM:SS` `.` six digits `Z`, written at once.
        let mut time = [0u8; STAMP + 8];
        time[..STAMP].copy_from_slice(&self.stamp);
        time[STAMP] = b'.';
        let mut micros = since.subsec_micros();
        for digit in time[STAMP + 1..STAMP + 7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        time[STAMP + 7] = b'Z';
        out.extend_from_slice(&time);
    }
}

/// A status code: three digits (http's `StatusCode` is 100 to 999).
fn push_status(out: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        let digit = |n: u16| b'0' + (n % 10) as u8;
        out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status)]);
    } else {
        push_number(out, u64::from(status));
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

/// `n` in decimal, with leading zeros to `width` digits (at most 20).
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 && at > 0 {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let from = at.min(digits.len().saturating_sub(width));
    out.extend_from_slice(&digits[from..]);
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
mod tests;
