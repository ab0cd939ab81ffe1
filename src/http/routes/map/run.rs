//! Running a map's inputs: a task of its own reads the inputs, runs each
//! as a call of the function (its own call id and `attempt`, its own
//! timeout, retried as the function's `retries` say) in the function's
//! slots, taken as spawned calls take them (sync callers first), and hands
//! the answer's body each line as it may be written. At most `window`
//! inputs are started and not yet written. The body going away (the
//! client left) aborts the task, which drops every call still waiting or
//! running: an instance running one is stopped, as for a sync caller that
//! leaves.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body::Frame;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::inputs::Inputs;
use super::lines::{self, Framing, Writer};
use crate::backend::{Backend, BackendError, stream};
use crate::calls::{self, retry};
use crate::http::admission::Caller;
use crate::http::input;
use crate::http::problem::ApiError;
use crate::http::respond::backend_failure;
use crate::http::state::AppState;
use crate::invocation::{CallId, ClassCall, Invocation, Trace, random_hex};
use crate::registry::Function;
use crate::translate::{self, Arguments};

/// The order of the answer's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Input order: a finished input waits for the ones before it.
    Input,
    /// As the inputs end.
    Completion,
}

/// Lines handed to the body and not yet read by it: with the window, all
/// a map holds of its answer.
const HANDED_AHEAD: usize = 32;

/// What every input of one map shares.
pub struct MapCall {
    pub state: Arc<AppState>,
    pub function: Arc<Function>,
    pub backend: Arc<dyn Backend>,
    /// Who made the map: each input's call acts as them (a function's
    /// token included: its deadline, trace and depth go on).
    pub caller: Caller,
    pub trace: Trace,
    pub class: Option<Arc<ClassCall>>,
    /// The query the keyword arguments of every input come from (no
    /// `order`, no class parameters).
    pub query: Option<String>,
}

/// Starts running the map: its task, and the answer's body that the task
/// writes to.
pub fn start(
    call: MapCall,
    inputs: Inputs,
    order: Order,
    framing: Framing,
    window: usize,
) -> MapBody {
    let (lines, body) = mpsc::channel(HANDED_AHEAD);
    let task = tokio::spawn(drive(
        Arc::new(call),
        inputs,
        order,
        Writer::new(framing),
        window,
        lines,
    ));
    MapBody {
        lines: body,
        task: task.abort_handle(),
        ended: false,
    }
}

/// An input's call in flight: its index and line once it ends.
type Running = Pin<Box<dyn Future<Output = (usize, Bytes)> + Send>>;

/// Reads inputs while the window has room, runs them, and hands their
/// lines on in the map's order as the body takes them; ends once every
/// input is written, or at once when the body is gone.
async fn drive(
    call: Arc<MapCall>,
    mut inputs: Inputs,
    order: Order,
    mut writer: Writer,
    window: usize,
    lines: mpsc::Sender<Piece>,
) {
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    // Input order: one entry per input started and not yet written,
    // filled when it ends. Completion order: lines that ended, to write.
    let mut waiting: VecDeque<Option<Bytes>> = VecDeque::new();
    let mut written = 0usize;
    let mut started = 0usize;
    let mut read_all = false;
    loop {
        let held = match order {
            Order::Input => waiting.len(),
            Order::Completion => waiting.len() + running.len(),
        };
        let may_start = !read_all && held < window;
        let may_write = matches!(waiting.front(), Some(Some(_)));
        if read_all && running.is_empty() && waiting.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = lines.closed() => return,
            permit = lines.reserve(), if may_write => {
                let Ok(permit) = permit else { return };
                let line = waiting.pop_front().flatten().expect("the first line has ended");
                permit.send(Piece::Line(writer.item(line)));
                written += 1;
            }
            Some((index, line)) = running.next(), if !running.is_empty() => match order {
                Order::Input => waiting[index - written] = Some(line),
                Order::Completion => waiting.push_back(Some(line)),
            },
            input = inputs.next(), if may_start => match input {
                None => read_all = true,
                Some(text) => {
                    if order == Order::Input {
                        waiting.push_back(None);
                    }
                    running.push(Box::pin(call.clone().input(started, text)));
                    started += 1;
                }
            },
        }
    }
    // The body may be gone already; nothing is left to stop then.
    let _ = lines.send(Piece::End(writer.end())).await;
}

impl MapCall {
    /// One input, from its text to its line.
    async fn input(self: Arc<Self>, index: usize, text: Result<Bytes, ApiError>) -> (usize, Bytes) {
        let outcome = match text.and_then(|text| self.arguments(&text)) {
            Ok(arguments) => self.call(arguments).await,
            Err(error) => Err(error),
        };
        (index, lines::line(index, outcome, &self.trace.request_id))
    }

    /// An input's arguments, checked as a call's body is (with the map's
    /// query as keyword arguments).
    fn arguments(&self, text: &[u8]) -> Result<Arguments, ApiError> {
        let rules = input::input_rules(&self.state, &self.function);
        Ok(translate::arguments(
            Some("application/json"),
            text,
            self.query.as_deref(),
            &rules,
        )?)
    }

    /// Runs one input's call in a slot taken as a spawned call takes one,
    /// with a fresh timeout per run, again after a failure while the
    /// function's `retries` allow (no slot is held through the pause).
    async fn call(&self, arguments: Arguments) -> Result<Bytes, ApiError> {
        let function = &self.function;
        let timeout = function.spec.timeout;
        let trace = self.caller.trace(&self.trace);
        let mut invocation = Invocation {
            call_id: CallId::generate(),
            app: function.app.clone(),
            function: function.name.clone(),
            args: arguments.args,
            kwargs: arguments.kwargs,
            deadline_ms: 0,
            deadline: tokio::time::Instant::now(),
            attempt: 1,
            trace: Trace {
                traceparent: child_span(&trace.traceparent),
                request_id: trace.request_id,
            },
            principal: self.caller.principal(),
            class: self.class.clone(),
            call_token: None,
            parent: self.caller.parent(),
            batch: None,
        };
        loop {
            let slot = function.limiter.acquire_background().await;
            (invocation.deadline_ms, invocation.deadline) = self.caller.deadline(timeout);
            let token = self.caller.call_token(&self.state, function, &invocation);
            invocation.call_token = Some(token);
            let outcome = self.run_once(&invocation).await;
            drop(slot);
            let error = match outcome {
                Ok(result) => return Ok(result),
                Err(error) => error,
            };
            let Some(delay) = retry_delay(function, invocation.attempt, &error) else {
                return Err(backend_failure(function, &invocation.trace, error));
            };
            tracing::debug!(
                request_id = %invocation.trace.request_id,
                call_id = %invocation.call_id,
                attempt = invocation.attempt,
                error = ?error.to_string(),
                "map input failed; it runs again"
            );
            tokio::time::sleep(delay).await;
            invocation.attempt += 1;
        }
    }

    /// One run of an input: its result, or, for a streaming function
    /// (`stream = true`), the JSON array of its items; an error at any
    /// point is the input's error.
    async fn run_once(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        if !self.function.spec.stream {
            return self.backend.invoke(invocation).await;
        }
        let items = stream::open(self.backend.as_ref(), invocation).await?;
        match stream::collect(items, self.state.max_result).await {
            (_, Some(error)) => Err(error),
            (lines, None) => Ok(array_of_lines(lines)),
        }
    }
}

/// NDJSON lines (each item on one line, each line ended) as one JSON array.
fn array_of_lines(mut lines: Vec<u8>) -> Bytes {
    for byte in lines.iter_mut().filter(|b| **b == b'\n') {
        *byte = b',';
    }
    lines.pop();
    let mut array = Vec::with_capacity(lines.len() + 2);
    array.push(b'[');
    array.extend_from_slice(&lines);
    array.push(b']');
    Bytes::from(array)
}

/// The pause before another run of an input whose run `attempt` failed
/// with `error`, by the rule spawned calls follow (the function's
/// `retries`); `None` when no run is left.
fn retry_delay(function: &Function, attempt: u32, error: &BackendError) -> Option<Duration> {
    let outcome = calls::outcome_of(Err(error.clone()));
    retry::retry_delay(function.spec.retries.as_ref(), attempt, &outcome)
}

/// The map's `traceparent` with a span of the input's own: every input's
/// call continues the client's trace.
fn child_span(traceparent: &str) -> String {
    let mut parts = traceparent.split('-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(version), Some(trace), Some(_), Some(flags)) => {
            format!("{version}-{trace}-{}-{flags}", random_hex::<8>())
        }
        _ => traceparent.to_owned(),
    }
}

/// What the map's task hands the answer's body.
enum Piece {
    Line(Bytes),
    /// The last piece: what ends the body, if anything.
    End(Option<Bytes>),
}

/// The map's task stopped before its end (it panicked): the answer breaks
/// off (HTTP/1.1 without its last chunk, HTTP/2 with a reset) rather than
/// end as if every input had been answered.
#[derive(Debug, thiserror::Error)]
#[error("the map stopped before its end")]
pub struct MapBroken;

/// The answer's body: the lines the map's task hands it. Dropped (the
/// client left, or the connection ended), it aborts the task.
pub struct MapBody {
    lines: mpsc::Receiver<Piece>,
    task: AbortHandle,
    ended: bool,
}

impl http_body::Body for MapBody {
    type Data = Bytes;
    type Error = MapBroken;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MapBroken>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let piece = match self.lines.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(piece) => piece,
        };
        Poll::Ready(match piece {
            Some(Piece::Line(line)) => Some(Ok(Frame::data(line))),
            Some(Piece::End(last)) => {
                self.ended = true;
                last.map(|last| Ok(Frame::data(last)))
            }
            None => {
                self.ended = true;
                tracing::error!("a map's task stopped before its end; its answer breaks off");
                Some(Err(MapBroken))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Drop for MapBody {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::state;
    use crate::registry::Lookup;
    use http_body_util::BodyExt;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Input `x` (a bare number) runs 10 s when it is 0, else 1 ms; the
    /// backend notes when each starts.
    struct Timed {
        origin: Instant,
        starts: Mutex<Vec<(u64, Duration)>>,
    }

    impl Backend for Timed {
        fn invoke<'a>(
            &'a self,
            invocation: &'a Invocation,
        ) -> crate::backend::BoxFuture<'a, Result<Bytes, BackendError>> {
            Box::pin(async move {
                let args: Vec<u64> = serde_json::from_str(&invocation.args).unwrap();
                let x = args[0];
                let started = self.origin.elapsed();
                self.starts.lock().unwrap().push((x, started));
                let run = if x == 0 { 10_000 } else { 1 };
                tokio::time::sleep(Duration::from_millis(run)).await;
                Ok(Bytes::from(x.to_string()))
            })
        }

        fn describe(&self) -> String {
            "timed".to_owned()
        }
    }

    /// Maps 0..10 with a window of 4: the indexes as written, and when
    /// each input started.
    async fn map_ten(order: Order) -> (Vec<u64>, Vec<(u64, Duration)>) {
        let state = state::for_tests();
        let registry = state.registry.current();
        let Lookup::Found(function) = registry.lookup("demo", "square") else {
            panic!("the test registry has demo/square");
        };
        let backend = Arc::new(Timed {
            origin: Instant::now(),
            starts: Mutex::new(Vec::new()),
        });
        let call = MapCall {
            state: state.clone(),
            function: function.clone(),
            backend: backend.clone(),
            caller: Caller {
                credentials: None,
                client: None,
                nested: None,
            },
            trace: Trace {
                request_id: Arc::from("req-1"),
                traceparent: String::new(),
            },
            class: None,
            query: None,
        };
        let body = Bytes::from_static(b"[0,1,2,3,4,5,6,7,8,9]");
        let inputs = Inputs::Array {
            body,
            elements: (0..10)
                .map(|i| 1 + 2 * i..2 + 2 * i)
                .collect::<Vec<_>>()
                .into_iter(),
        };
        let answer = start(call, inputs, order, Framing::Ndjson, 4);
        let text = answer.collect().await.unwrap().to_bytes();
        let indexes = std::str::from_utf8(&text)
            .unwrap()
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["index"].as_u64().unwrap()
            })
            .collect();
        let starts = backend.starts.lock().unwrap().clone();
        (indexes, starts)
    }

    #[tokio::test(start_paused = true)]
    async fn in_input_order_no_input_starts_a_window_past_one_not_written() {
        let (indexes, starts) = map_ten(Order::Input).await;
        assert_eq!(indexes, (0..10).collect::<Vec<_>>());
        assert_eq!(starts.len(), 10);
        for (x, at) in starts {
            // Inputs 1..4 fit the window beside 0; 4 and on wait for it.
            let waited = at >= Duration::from_secs(10);
            assert_eq!(waited, x >= 4, "input {x} started at {at:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_completion_order_the_window_bounds_only_what_runs() {
        let (indexes, starts) = map_ten(Order::Completion).await;
        assert_eq!(indexes.last(), Some(&0), "{indexes:?}");
        assert_eq!(indexes.len(), 10);
        // The slow input holds one place: the others go on around it.
        assert!(
            starts.iter().all(|(_, at)| *at < Duration::from_secs(1)),
            "{starts:?}"
        );
    }

    #[test]
    fn a_streams_items_make_one_array() {
        assert_eq!(array_of_lines(b"1\n{\"a\":2}\n".to_vec()), "[1,{\"a\":2}]");
        assert_eq!(array_of_lines(Vec::new()), "[]");
    }

    #[test]
    fn each_input_gets_a_span_of_its_own_in_the_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_span(parent);
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert_eq!(child.len(), parent.len());
    }
}
