//! The worker against a small stand-in for the gateway's work routes (real
//! TLS with a dev CA, HTTP/1.1 and h2), with real instances: a Lambda
//! runtime client and an HTTP server, both Python standard library. The
//! stand-in follows the wire protocol and records what the worker asked
//! and posted; the black-box tests against the real gateway are in
//! `tests/worker.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{WorkerArgs, WorkerError, WorkerOptions};

const TOKEN: &str = "worker-secret";

/// How long the stand-in holds a poll when no call is queued.
const HOLD: Duration = Duration::from_millis(300);

/// How long a test waits for what the worker should do.
const PATIENCE: Duration = Duration::from_secs(20);

/// A Lambda runtime client: each call's kwargs say what to do (`sleep`
/// seconds, `crash` with status 3, `fail` with a ValueError); a result
/// shows the pid, `x`, the headers and the environment it saw.
const RUNTIME_PY: &str = include_str!("../../tests/instances/worker_runtime.py");

/// An HTTP instance on $PORT: `GET /healthz`; `POST /invoke` sleeps
/// `kwargs.sleep`, then answers `{"pid", "x", "call_id"}`, or with `fail` a
/// reported TypeError.
const SERVER_PY: &str = include_str!("../../tests/instances/worker_server.py");
/// The handler `SERVER_PY` builds on, written beside it.
const JSON_HTTP_PY: &str = include_str!("../../tests/instances/json_http.py");

/// A call's end, as the worker posted it.
#[derive(Debug)]
struct Ended {
    id: String,
    /// `response` or `error`.
    kind: String,
    body: Value,
}

/// What the stand-in knows and records.
struct Work {
    spec: Value,
    queued: Mutex<VecDeque<(String, Value)>>,
    queued_more: Notify,
    /// Polls answered 503 before any is served.
    unavailable_polls: AtomicUsize,
    polls: AtomicUsize,
    polls_in_flight: AtomicUsize,
    most_polls_in_flight: AtomicUsize,
    heartbeats: Mutex<HashMap<String, usize>>,
    /// Calls whose heartbeats are answered 410.
    given_up: Mutex<HashSet<String>>,
    workers: Mutex<HashSet<String>>,
    ended: mpsc::UnboundedSender<Ended>,
}

struct Gateway {
    addr: SocketAddr,
    ca: PathBuf,
    work: Arc<Work>,
    ended: mpsc::UnboundedReceiver<Ended>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(spec: Value) -> Gateway {
        let dir = tempfile::tempdir().expect("a temp dir");
        let source = crate::config::TlsSource::Dev {
            dir: dir.path().join("certs"),
        };
        let (tls, ca) = crate::tls::server_config(&source, None, true).expect("dev TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        let (sender, ended) = mpsc::unbounded_channel();
        let work = Arc::new(Work {
            spec,
            queued: Mutex::new(VecDeque::new()),
            queued_more: Notify::new(),
            unavailable_polls: AtomicUsize::new(0),
            polls: AtomicUsize::new(0),
            polls_in_flight: AtomicUsize::new(0),
            most_polls_in_flight: AtomicUsize::new(0),
            heartbeats: Mutex::new(HashMap::new()),
            given_up: Mutex::new(HashSet::new()),
            workers: Mutex::new(HashSet::new()),
            ended: sender,
        });
        let serving = work.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, work) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let work = work.clone();
                        async move { Ok::<_, Infallible>(work.answer(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Gateway {
            addr,
            ca: ca.expect("a dev CA"),
            work,
            ended,
            _dir: dir,
        }
    }

    fn options(&self, command: Vec<String>) -> WorkerOptions {
        WorkerOptions::try_from(WorkerArgs {
            gateway: format!("https://localhost:{}/", self.addr.port()),
            function: "demo/fn".to_owned(),
            token_env: "FNGATE_TEST_WORKER_TOKEN".to_owned(),
            cacert: Some(self.ca.clone()),
            command,
        })
        .expect("good options")
    }

    fn queue(&self, id: &str, kwargs: Value) {
        let event = json!({"call_id": id, "app": "demo", "function": "fn",
                           "args": [], "kwargs": kwargs, "deadline_ms": 0, "attempt": 1});
        self.work
            .queued
            .lock()
            .unwrap()
            .push_back((id.to_owned(), event));
        self.work.queued_more.notify_waiters();
    }

    async fn next_end(&mut self) -> Ended {
        tokio::time::timeout(PATIENCE, self.ended.recv())
            .await
            .expect("the worker posted a call's end in time")
            .expect("the stand-in is running")
    }

    fn heartbeats(&self, id: &str) -> usize {
        self.work
            .heartbeats
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    async fn until(&self, what: &str, mut done: impl FnMut(&Gateway) -> bool) {
        let give_up = tokio::time::Instant::now() + PATIENCE;
        while !done(self) {
            assert!(tokio::time::Instant::now() < give_up, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Work {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if bearer != Some(&format!("Bearer {TOKEN}")) {
            return problem(401, "unauthorized", "the token is not known");
        }
        let worker = request
            .headers()
            .get("fngate-worker")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let well_formed = worker.len() == 35
            && worker.starts_with("wk-")
            && worker[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return problem(400, "bad_worker", &format!("worker id {worker:?}"));
        }
        self.workers.lock().unwrap().insert(worker);
        let path = request.uri().path().to_owned();
        let Some(route) = path.strip_prefix("/_/work/demo/fn") else {
            return problem(404, "function_not_found", "no such function");
        };
        let method = request.method().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        match (method, route) {
            (Method::GET, "") => answer(200, Bytes::from(self.spec.to_string())),
            (Method::POST, "/next") => self.next().await,
            (Method::POST, call) => {
                let Some((id, what)) = call.strip_prefix("/calls/").and_then(|c| c.split_once('/'))
                else {
                    return problem(404, "not_found", call);
                };
                if what == "heartbeat" {
                    *self
                        .heartbeats
                        .lock()
                        .unwrap()
                        .entry(id.to_owned())
                        .or_default() += 1;
                    let gone = self.given_up.lock().unwrap().contains(id);
                    return answer(if gone { 410 } else { 204 }, Bytes::new());
                }
                let body = serde_json::from_slice(&body).expect("an end is JSON");
                let ended = Ended {
                    id: id.to_owned(),
                    kind: what.to_owned(),
                    body,
                };
                let _ = self.ended.send(ended);
                answer(202, Bytes::new())
            }
            _ => problem(405, "method_not_allowed", &path),
        }
    }

    async fn next(&self) -> Response<Full<Bytes>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let unavailable =
            self.unavailable_polls
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if unavailable.is_ok() {
            return problem(503, "overloaded", "try again");
        }
        let in_flight = self.polls_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_polls_in_flight
            .fetch_max(in_flight, Ordering::SeqCst);
        let give_up = tokio::time::Instant::now() + HOLD;
        let call = loop {
            let more = self.queued_more.notified();
            if let Some(call) = self.queued.lock().unwrap().pop_front() {
                break Some(call);
            }
            if tokio::time::timeout_at(give_up, more).await.is_err() {
                break None;
            }
        };
        self.polls_in_flight.fetch_sub(1, Ordering::SeqCst);
        let Some((id, event)) = call else {
            return answer(204, Bytes::new());
        };
        let deadline = crate::invocation::deadline_ms_after(Duration::from_secs(30));
        let mut response = answer(200, Bytes::from(event.to_string()));
        let headers = response.headers_mut();
        headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
        headers.insert(
            "lambda-runtime-deadline-ms",
            deadline.to_string().parse().unwrap(),
        );
        headers.insert(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:local:000000000000:function:demo.fn"
                .parse()
                .unwrap(),
        );
        response
    }
}

fn answer(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

fn problem(status: u16, code: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = json!({"type": "about:blank", "title": "Problem", "status": status,
                      "code": code, "detail": detail, "request_id": "test"});
    answer(status, Bytes::from(body.to_string()))
}

fn python(dir: &Path, name: &str, script: &str) -> Vec<String> {
    let path = dir.join(name);
    std::fs::write(&path, script).expect("write the script");
    vec!["python3".to_owned(), path.display().to_string()]
}

fn lambda_spec(timeout_ms: u64) -> Value {
    json!({"protocol": "lambda", "path": null, "ready_path": null,
           "instance_concurrency": 1, "timeout_ms": timeout_ms})
}

/// Runs a worker until the returned token is cancelled; its end is the
/// handle's output.
fn worker(
    options: WorkerOptions,
    token: &'static str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(super::serve(options, token, shutdown.clone()));
    (shutdown, running)
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

async fn stops_cleanly(
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the worker stopped in time")
        .expect("the worker did not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_worker_posts_results_and_errors_and_replaces_a_crashed_instance() {
    let mut gateway = Gateway::start(lambda_spec(30_000)).await;
    // The gateway is overloaded at first: the worker polls again.
    gateway.work.unavailable_polls.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let options = gateway.options(python(dir.path(), "runtime.py", RUNTIME_PY));
    let (shutdown, running) = worker(options, TOKEN);

    gateway.queue("fc-1", json!({"x": 7}));
    let ended = gateway.next_end().await;
    assert_eq!(
        (ended.id.as_str(), ended.kind.as_str()),
        ("fc-1", "response")
    );
    assert_eq!(ended.body["x"], 7);
    assert_eq!(
        ended.body["arn"],
        "arn:aws:lambda:local:000000000000:function:demo.fn"
    );
    assert_eq!(ended.body["name"], "demo.fn");
    assert!(
        ended.body["handler"]
            .as_str()
            .is_some_and(|h| h.ends_with("runtime.py")),
        "the command's last word is the handler: {}",
        ended.body
    );
    assert!(
        ended.body["deadline"]
            .as_str()
            .is_some_and(|d| d.len() == 13)
    );
    let first_pid = ended.body["pid"].as_i64().unwrap();

    gateway.queue("fc-2", json!({"fail": "x must be positive"}));
    let ended = gateway.next_end().await;
    assert_eq!((ended.id.as_str(), ended.kind.as_str()), ("fc-2", "error"));
    assert_eq!(
        ended.body,
        json!({"errorType": "ValueError", "errorMessage": "x must be positive"})
    );

    gateway.queue("fc-3", json!({"crash": true}));
    let ended = gateway.next_end().await;
    assert_eq!((ended.id.as_str(), ended.kind.as_str()), ("fc-3", "error"));
    assert_eq!(ended.body["errorType"], "Runtime.ExitError");
    assert_eq!(
        ended.body["errorMessage"],
        "the instance exited: exit status: 3"
    );

    gateway.queue("fc-4", json!({"x": 3}));
    let ended = gateway.next_end().await;
    assert_eq!(
        (ended.id.as_str(), ended.kind.as_str()),
        ("fc-4", "response")
    );
    let second_pid = ended.body["pid"].as_i64().unwrap();
    assert_ne!(first_pid, second_pid, "a new instance took the next call");
    assert!(!alive(first_pid));
    assert!(gateway.work.polls.load(Ordering::SeqCst) > 2);
    assert_eq!(gateway.work.workers.lock().unwrap().len(), 1);

    stops_cleanly(shutdown, running).await;
    assert!(!alive(second_pid), "the instance stopped with the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_call_given_up_or_past_its_timeout_kills_its_instance() {
    let mut gateway = Gateway::start(lambda_spec(1_500)).await;
    let dir = tempfile::tempdir().unwrap();
    let options = gateway.options(python(dir.path(), "runtime.py", RUNTIME_PY));
    let (shutdown, running) = worker(options, TOKEN);

    gateway.queue("fc-warm", json!({}));
    let warm_pid = gateway.next_end().await.body["pid"].as_i64().unwrap();

    // Heartbeats say the call is no longer this worker's: it is stopped,
    // and nothing is posted for it.
    gateway.queue("fc-cancelled", json!({"sleep": 60}));
    gateway
        .until("heartbeats of the running call", |g| {
            g.heartbeats("fc-cancelled") >= 1
        })
        .await;
    gateway
        .work
        .given_up
        .lock()
        .unwrap()
        .insert("fc-cancelled".to_owned());
    gateway
        .until("the instance to be killed", |_| !alive(warm_pid))
        .await;

    // Past its timeout (1.5 s here): stopped, and a timeout error posted.
    gateway.queue("fc-slow", json!({"sleep": 60}));
    let ended = gateway.next_end().await;
    assert_eq!(
        (ended.id.as_str(), ended.kind.as_str()),
        ("fc-slow", "error")
    );
    assert_eq!(ended.body["errorType"], "Sandbox.Timedout");

    gateway.queue("fc-after", json!({"x": 1}));
    let ended = gateway.next_end().await;
    assert_eq!(
        ended.id, "fc-after",
        "nothing was posted for the cancelled call"
    );
    assert_eq!(ended.body["x"], 1);
    stops_cleanly(shutdown, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_the_running_call_finish_then_stops_the_instance() {
    let mut gateway = Gateway::start(lambda_spec(30_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let options = gateway.options(python(dir.path(), "runtime.py", RUNTIME_PY));
    let (shutdown, running) = worker(options, TOKEN);
    gateway.queue("fc-warm", json!({}));
    let pid = gateway.next_end().await.body["pid"].as_i64().unwrap();

    gateway.queue("fc-running", json!({"sleep": 1.5, "x": 5}));
    gateway
        .until("the call to run", |g| g.heartbeats("fc-running") >= 1)
        .await;
    shutdown.cancel();
    let ended = gateway.next_end().await;
    assert_eq!(
        (ended.id.as_str(), ended.kind.as_str()),
        ("fc-running", "response")
    );
    assert_eq!(ended.body["x"], 5);
    stops_cleanly(shutdown, running).await;
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_worker_polls_instance_concurrency_at_once_and_reads_answers_as_the_gateway() {
    let spec = json!({"protocol": "http", "path": "/invoke", "ready_path": "/healthz",
                      "instance_concurrency": 2, "timeout_ms": 30000});
    let mut gateway = Gateway::start(spec).await;
    let dir = tempfile::tempdir().unwrap();
    python(dir.path(), "json_http.py", JSON_HTTP_PY);
    let options = gateway.options(python(dir.path(), "server.py", SERVER_PY));
    let (shutdown, running) = worker(options, TOKEN);

    for i in 0..4 {
        gateway.queue(&format!("fc-{i}"), json!({"x": i, "sleep": 0.3}));
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ended = gateway.next_end().await;
        assert_eq!(ended.kind, "response", "{ended:?}");
        assert_eq!(ended.body["call_id"].as_str(), Some(ended.id.as_str()));
        seen.push(ended.body["x"].as_i64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3]);
    gateway
        .until("two polls in flight", |g| {
            g.work.polls_in_flight.load(Ordering::SeqCst) == 2
        })
        .await;
    assert_eq!(gateway.work.most_polls_in_flight.load(Ordering::SeqCst), 2);

    gateway.queue("fc-fail", json!({"fail": "x must be a number"}));
    let ended = gateway.next_end().await;
    assert_eq!(
        (ended.id.as_str(), ended.kind.as_str()),
        ("fc-fail", "error")
    );
    assert_eq!(
        ended.body,
        json!({"errorType": "TypeError", "errorMessage": "x must be a number"})
    );
    stops_cleanly(shutdown, running).await;
}

#[tokio::test]
async fn a_refused_credential_stops_the_worker_with_the_problem() {
    let gateway = Gateway::start(lambda_spec(30_000)).await;
    let options = gateway.options(vec!["true".to_owned()]);
    let (_shutdown, running) = worker(options, "wrong-token");
    let ended = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the worker stopped")
        .unwrap();
    match ended {
        Err(error @ WorkerError::Refused { status: 401, .. }) => {
            assert_eq!(error.exit_code(), 1);
            assert!(
                error.to_string().contains("the token is not known"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(gateway.work.polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_untrusted_gateway_certificate_stops_the_worker() {
    let gateway = Gateway::start(lambda_spec(30_000)).await;
    let other = Gateway::start(lambda_spec(30_000)).await;
    let mut options = gateway.options(vec!["true".to_owned()]);
    options.cacert = Some(other.ca.clone());
    let (_shutdown, running) = worker(options, TOKEN);
    let ended = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the worker stopped")
        .unwrap();
    assert!(matches!(ended, Err(WorkerError::Untrusted(_))), "{ended:?}");
}
