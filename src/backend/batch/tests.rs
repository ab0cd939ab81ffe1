use super::*;
use std::time::Duration;

/// An inner backend that records each invocation (with the time it
/// came) and answers with what `answer` makes of its `batch`.
struct Recorder {
    got: Mutex<Vec<(Instant, Invocation)>>,
    answer: fn(&serde_json::Value) -> Result<Bytes, BackendError>,
    /// How long each invocation takes.
    takes: Duration,
    aborted: Mutex<Vec<String>>,
    dropped: Arc<AtomicU64>,
}

struct CountDrop(Arc<AtomicU64>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder {
    fn new(answer: fn(&serde_json::Value) -> Result<Bytes, BackendError>) -> Arc<Recorder> {
        Recorder::taking(answer, Duration::ZERO)
    }

    fn taking(
        answer: fn(&serde_json::Value) -> Result<Bytes, BackendError>,
        takes: Duration,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            got: Mutex::new(Vec::new()),
            answer,
            takes,
            aborted: Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    fn got(&self) -> Vec<(Instant, Invocation)> {
        self.got.lock().unwrap().clone()
    }
}

impl Backend for Recorder {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(async move {
            let _dropped = CountDrop(self.dropped.clone());
            (self.got.lock().unwrap()).push((Instant::now(), invocation.clone()));
            tokio::time::sleep(self.takes).await;
            let batch: serde_json::Value =
                serde_json::from_str(invocation.batch.as_deref().unwrap()).unwrap();
            (self.answer)(&batch)
        })
    }

    fn describe(&self) -> String {
        "recorder".to_owned()
    }

    fn abort(&self, call_id: &str) {
        self.aborted.lock().unwrap().push(call_id.to_owned());
    }
}

/// Each call's `x` times ten.
fn tenfold(batch: &serde_json::Value) -> Result<Bytes, BackendError> {
    let out: Vec<serde_json::Value> = (batch.as_array().unwrap().iter())
        .map(|m| serde_json::json!(m["kwargs"]["x"].as_i64().unwrap() * 10))
        .collect();
    Ok(Bytes::from(serde_json::to_vec(&out).unwrap()))
}

fn call(x: i64) -> Invocation {
    Invocation {
        call_id: CallId::generate(),
        app: "demo".into(),
        function: "f".into(),
        args: "[]".into(),
        kwargs: format!("{{\"x\":{x}}}"),
        deadline_ms: 1,
        deadline: Instant::now() + Duration::from_secs(60),
        attempt: 1,
        trace: Trace {
            request_id: format!("r{x}").into(),
            traceparent: String::new(),
        },
        principal: None,
        class: None,
        call_token: None,
        parent: None,
        batch: None,
    }
}

fn batching(inner: Arc<Recorder>, max_size: usize, wait_ms: u64) -> Arc<BatchBackend> {
    let spec = BatchSpec {
        max_size,
        wait: Duration::from_millis(wait_ms),
    };
    Arc::new(BatchBackend::new(inner, spec))
}

/// Starts `invocation` on `backend` in a task, and lets it join its batch.
async fn start(
    backend: &Arc<BatchBackend>,
    invocation: Invocation,
) -> tokio::task::JoinHandle<Result<Bytes, BackendError>> {
    let backend = backend.clone();
    let task = tokio::spawn(async move { backend.invoke(&invocation).await });
    tokio::task::yield_now().await;
    task
}

#[tokio::test(start_paused = true)]
async fn a_lone_call_is_sent_when_the_wait_ends_and_not_later() {
    let inner = Recorder::new(tenfold);
    let backend = batching(inner.clone(), 8, 10);
    let began = Instant::now();
    let task = start(&backend, call(4)).await;
    tokio::time::advance(Duration::from_millis(9)).await;
    tokio::task::yield_now().await;
    assert!(inner.got().is_empty(), "sent before its wait ended");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(task.await.unwrap().unwrap(), "40");
    let got = inner.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0 - began, Duration::from_millis(10));
    assert_eq!(
        got[0].1.batch.as_deref(),
        Some("[{\"args\":[],\"kwargs\":{\"x\":4}}]")
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_sent_at_once_and_each_caller_gets_its_element() {
    let inner = Recorder::new(tenfold);
    let backend = batching(inner.clone(), 4, 10_000);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for x in 1..=4 {
        tasks.push(start(&backend, call(x)).await);
    }
    for (x, task) in (1..=4).zip(tasks) {
        assert_eq!(task.await.unwrap().unwrap(), (x * 10).to_string());
    }
    let got = inner.got();
    assert_eq!(got.len(), 1, "one invocation for the four calls");
    assert_eq!(got[0].0, began, "a full batch does not wait");
    let invocation = &got[0].1;
    assert_eq!(
        (invocation.args.as_str(), invocation.kwargs.as_str()),
        ("[]", "{}")
    );
    let batch: serde_json::Value =
        serde_json::from_str(invocation.batch.as_deref().unwrap()).unwrap();
    let xs: Vec<i64> = (batch.as_array().unwrap().iter())
        .map(|m| m["kwargs"]["x"].as_i64().unwrap())
        .collect();
    assert_eq!(xs, [1, 2, 3, 4], "arrival order");
    // A fifth call opens the next batch.
    let fifth = start(&backend, call(5)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(fifth.await.unwrap().unwrap(), "50");
    assert_eq!(inner.got().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_batch_carries_the_earliest_deadline_and_its_own_call_id() {
    let inner = Recorder::new(tenfold);
    let backend = batching(inner.clone(), 2, 10);
    let mut late = call(1);
    late.deadline += Duration::from_secs(5);
    late.deadline_ms = 2000;
    let mut early = call(2);
    early.deadline_ms = 1000;
    early.call_token = Some("early-token".into());
    early.attempt = 3;
    let ids = [late.call_id.clone(), early.call_id.clone()];
    let a = start(&backend, late).await;
    let b = start(&backend, early).await;
    assert_eq!(a.await.unwrap().unwrap(), "10");
    assert_eq!(b.await.unwrap().unwrap(), "20");
    let invocation = &inner.got()[0].1;
    assert_eq!(invocation.deadline_ms, 1000);
    assert_eq!(invocation.call_token.as_deref(), Some("early-token"));
    assert_eq!(invocation.attempt, 3);
    assert_eq!(
        &*invocation.trace.request_id, "r2",
        "the earliest call's trace"
    );
    assert!(!ids.contains(&invocation.call_id));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_length_or_a_non_array_fails_every_call_of_the_batch() {
    fn short(_: &serde_json::Value) -> Result<Bytes, BackendError> {
        Ok(Bytes::from_static(b"[1]"))
    }
    fn scalar(_: &serde_json::Value) -> Result<Bytes, BackendError> {
        Ok(Bytes::from_static(b"{\"a\": [1, 2]}"))
    }
    for answer in [short as fn(&_) -> _, scalar] {
        let backend = batching(Recorder::new(answer), 2, 10);
        let a = start(&backend, call(1)).await;
        let b = start(&backend, call(2)).await;
        for task in [a, b] {
            let error = task.await.unwrap().unwrap_err();
            assert!(matches!(error, BackendError::Garbage(_)), "{error:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_function_error_is_every_callers_error() {
    fn fail(_: &serde_json::Value) -> Result<Bytes, BackendError> {
        Err(BackendError::Function {
            kind: "ValueError".to_owned(),
            message: "no".to_owned(),
        })
    }
    let backend = batching(Recorder::new(fail), 2, 10);
    let a = start(&backend, call(1)).await;
    let b = start(&backend, call(2)).await;
    for task in [a, b] {
        let error = task.await.unwrap().unwrap_err();
        assert!(matches!(error, BackendError::Function { ref kind, .. } if kind == "ValueError"));
    }
}

#[tokio::test(start_paused = true)]
async fn different_parameter_sets_and_principals_never_share_a_batch() {
    let inner = Recorder::new(tenfold);
    let backend = batching(inner.clone(), 2, 10);
    let with_size = |x, size: &str| Invocation {
        class: Some(Arc::new(ClassCall::new(
            "model".into(),
            &["size".to_owned()],
            vec![size.to_owned()],
        ))),
        ..call(x)
    };
    let by = |x, subject: &str| Invocation {
        principal: Some(Principal {
            subject: subject.to_owned(),
            issuer: None,
        }),
        ..call(x)
    };
    let calls = [
        with_size(1, "small"),
        with_size(2, "large"),
        with_size(3, "small"),
        with_size(4, "large"),
        by(5, "ada"),
        by(6, "bob"),
        by(7, "ada"),
        by(8, "bob"),
    ];
    let mut tasks = Vec::new();
    for invocation in calls {
        tasks.push(start(&backend, invocation).await);
    }
    for (x, task) in (1..=8).zip(tasks) {
        assert_eq!(task.await.unwrap().unwrap(), (x * 10).to_string());
    }
    let mut batches: Vec<Vec<i64>> = (inner.got().iter())
        .map(|(_, invocation)| {
            let batch: serde_json::Value =
                serde_json::from_str(invocation.batch.as_deref().unwrap()).unwrap();
            (batch.as_array().unwrap().iter())
                .map(|m| m["kwargs"]["x"].as_i64().unwrap())
                .collect()
        })
        .collect();
    batches.sort();
    assert_eq!(batches, [[1, 3], [2, 4], [5, 7], [6, 8]]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_does_not_break_the_batch_for_the_others() {
    let inner = Recorder::taking(tenfold, Duration::from_millis(100));
    let backend = batching(inner.clone(), 3, 10);
    let a = start(&backend, call(1)).await;
    let b = start(&backend, call(2)).await;
    let c = start(&backend, call(3)).await;
    // The batch runs; one caller leaves.
    tokio::time::advance(Duration::from_millis(50)).await;
    b.abort();
    assert_eq!(a.await.unwrap().unwrap(), "10");
    assert_eq!(c.await.unwrap().unwrap(), "30");
    assert!(inner.aborted.lock().unwrap().is_empty());
    // A caller gone before the batch is sent is left out of it.
    let d = start(&backend, call(4)).await;
    let e = start(&backend, call(5)).await;
    d.abort();
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(e.await.unwrap().unwrap(), "50");
    let last = &inner.got()[1].1;
    assert_eq!(
        last.batch.as_deref(),
        Some("[{\"args\":[],\"kwargs\":{\"x\":5}}]")
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_callers_all_left_is_stopped() {
    let inner = Recorder::taking(tenfold, Duration::from_secs(30));
    let backend = batching(inner.clone(), 2, 10);
    let a = start(&backend, call(1)).await;
    let b = start(&backend, call(2)).await;
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(inner.got().len(), 1, "the full batch runs");
    a.abort();
    b.abort();
    let _ = (a.await, b.await);
    // The batch's task sees them gone, stops its run and drops its work.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let batch_id = inner.got()[0].1.call_id.as_str().to_owned();
    assert_eq!(*inner.aborted.lock().unwrap(), [batch_id]);
    assert_eq!(inner.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_when_the_batch_leaves_times_out_alone() {
    let inner = Recorder::new(tenfold);
    let backend = batching(inner.clone(), 4, 100);
    let mut short = call(1);
    short.deadline = Instant::now() + Duration::from_millis(50);
    let a = start(&backend, short).await;
    let b = start(&backend, call(2)).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(matches!(a.await.unwrap(), Err(BackendError::Timeout)));
    assert_eq!(b.await.unwrap().unwrap(), "20");
    assert_eq!(inner.got().len(), 1);
}

#[test]
fn array_elements_keep_their_text_and_ignore_nested_commas() {
    let body =
        br#" [ 1e400 , "a,]b\"," , {"k": [1, {"x": "}"}]}, [], 12345678901234567890123456789 ] "#;
    let ranges = elements(body, 5).unwrap();
    let texts: Vec<&str> = ranges
        .into_iter()
        .map(|r| std::str::from_utf8(&body[r]).unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "1e400",
            r#""a,]b\",""#,
            r#"{"k": [1, {"x": "}"}]}"#,
            "[]",
            "12345678901234567890123456789"
        ]
    );
    assert!(elements(b"[]", 0).unwrap().is_empty());
    assert!(matches!(
        elements(b"[1,2]", 3),
        Err(BackendError::Garbage(_))
    ));
    assert!(matches!(
        elements(b"nope", 1),
        Err(BackendError::Garbage(_))
    ));
    assert!(matches!(elements(b"7", 1), Err(BackendError::Garbage(_))));
}
