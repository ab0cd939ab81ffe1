//! The access log's unit tests: its writer, buffers, clock and lines.

use super::*;

/// 2025-11-24T16:00:00Z, as both clocks of the tests' `Lines` read it.
const WALL: Duration = Duration::from_secs(1_764_000_000);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn entry(route: AccessRoute, call_id: Option<&'static str>) -> AccessEntry {
    AccessEntry {
        at: base(),
        request_id: "req-1".into(),
        method: Method::POST,
        route,
        status: 200,
        latency: Duration::from_micros(1500),
        call_id: call_id.and_then(|id| CallIdText::new(&HeaderValue::from_static(id))),
    }
}

fn lines() -> Lines {
    Lines {
        clock: Clock {
            instant: base(),
            wall: WALL,
        },
        ..Lines::default()
    }
}

fn line(entry: &AccessEntry, format: LogFormat) -> String {
    let mut out = Vec::new();
    lines().push(&mut out, entry, format);
    String::from_utf8(out).unwrap()
}

#[test]
fn a_full_buffer_drops_and_counts_instead_of_waiting() {
    let buffer = Mutex::new(Vec::new());
    let dropped = AtomicU64::new(0);
    for _ in 0..CAPACITY + 3 {
        push(&buffer, entry(AccessRoute::Unmatched, None), &dropped);
    }
    assert_eq!(dropped.load(Ordering::Relaxed), 3);
    assert_eq!(buffer.lock().unwrap().len(), CAPACITY);
}

#[test]
fn the_writer_takes_every_threads_lines_and_answers_a_flush() {
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
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
    let buffers: Arc<Mutex<Vec<Buffer>>> = Arc::default();
    let (flushes, flush_requests) = std::sync::mpsc::channel();
    let writer = {
        let (sink, buffers) = (sink.clone(), buffers.clone());
        std::thread::spawn(move || {
            write_lines(&buffers, flush_requests, Box::new(sink), LogFormat::Text)
        })
    };
    let dropped = AtomicU64::new(0);
    // Two threads' buffers; the second's thread has ended (only the
    // list holds it) once its lines are in.
    let (first, second) = (Buffer::default(), Buffer::default());
    lock(&buffers).extend([first.clone(), second.clone()]);
    for i in 0..500 {
        let buffer = if i % 2 == 0 { &first } else { &second };
        push(
            buffer,
            entry(AccessRoute::Unmatched, Some("fc-1")),
            &dropped,
        );
    }
    drop(second);
    let (done, written) = std::sync::mpsc::channel();
    flushes.send(done).unwrap();
    written.recv_timeout(Duration::from_secs(10)).unwrap();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 500);
    assert!(text.lines().all(|l| l.ends_with("call_id=fc-1")));
    assert_eq!(
        lock(&buffers).len(),
        1,
        "the ended thread's buffer is let go"
    );
    drop(flushes);
    writer.join().unwrap();
}

#[test]
fn instants_become_wall_clock_time_on_either_side_of_the_reading() {
    let clock = Clock {
        instant: base() + Duration::from_secs(10),
        wall: WALL,
    };
    assert_eq!(clock.wall(base()), WALL - Duration::from_secs(10));
    assert_eq!(
        clock.wall(base() + Duration::from_millis(10_250)),
        WALL + Duration::from_millis(250)
    );
}

#[test]
fn call_ids_that_do_not_fit_are_left_out() {
    let id = "fc-0123456789abcdef0123456789abcdef";
    let text = CallIdText::new(&HeaderValue::from_static(id)).unwrap();
    assert_eq!(text.as_bytes(), id.as_bytes());
    let long = HeaderValue::from_str(&"x".repeat(CallIdText::INLINE + 1)).unwrap();
    assert!(CallIdText::new(&long).is_none());
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
    let mut lines = lines();
    let mut out = Vec::new();
    let at = WALL + Duration::from_micros(42);
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
